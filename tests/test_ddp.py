"""Data-parallel training under torchrun (issue 15): the launch environment, sharding, refusals, and real
``torchrun --nproc_per_node 2`` launches on the CPU (gloo) of the harness and of `genre train` (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import invoke_cli, one_line
from corpus_fixtures import vector_table
from test_train_models_cli import _patch_table
from genrecli import distributed
from genrecli.distributed import Launch, launch_from_env, local_device, rank_generator, shard
from genrecli.errors import UsageError
from genrecli.models.neural.mlp import MLPModel

REPO = Path(__file__).resolve().parents[1]
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def no_launch(monkeypatch):
    for name in LAUNCH_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def torchrun(*args, cwd, home=None, timeout=300):
    """``torchrun --nproc_per_node 2 ARGS`` on the CPU with this checkout's package first on the path."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    if home is not None:
        env["GENRE_DATA_HOME"] = str(home)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


# ----------------------------------------------------------------------------------------------- the launch
def test_launch_from_env(no_launch):
    assert launch_from_env({}) is None
    assert launch_from_env({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}) is None  # --nproc_per_node 1
    launch = launch_from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert launch == Launch(rank=3, world_size=4, local_rank=1) and not launch.primary
    assert launch_from_env({"WORLD_SIZE": "2", "RANK": "1"}).local_rank == 1  # one node: LOCAL_RANK = RANK
    assert launch_from_env({"WORLD_SIZE": "2", "RANK": "0"}).primary
    with pytest.raises(UsageError) as exc:
        launch_from_env({"WORLD_SIZE": "two", "RANK": "0"})
    one_line(exc, "$WORLD_SIZE='two'")
    with pytest.raises(UsageError) as exc:
        launch_from_env({"WORLD_SIZE": "2", "RANK": "2"})
    one_line(exc, "RANK=2", "WORLD_SIZE=2")
    assert launch_from_env() is None and distributed.is_primary() and distributed.current() is None


def test_cuda_without_index_is_the_local_rank_gpu():
    launch = Launch(rank=3, world_size=4, local_rank=1)
    assert local_device(torch.device("cuda"), launch) == torch.device("cuda", 1)
    assert local_device(torch.device("cuda", 0), launch) == torch.device("cuda", 0)  # explicit: as given
    assert local_device(torch.device("cpu"), launch) == torch.device("cpu")
    assert local_device(torch.device("cuda"), None) == torch.device("cuda")


@pytest.mark.parametrize("n,world", [(1, 1), (7, 2), (32, 2), (33, 3), (5, 4)])
def test_shards_split_every_batch_exactly_once(n, world):
    rows = np.random.default_rng(n).permutation(100)[:n]
    parts = [shard(rows, Launch(rank=r, world_size=world, local_rank=r)) for r in range(world)]
    assert np.array_equal(np.concatenate(parts), rows)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert shard(rows, None) is rows


def test_rank_generators_are_reproducible_and_independent():
    a0, b0 = (rank_generator(7, 3, Launch(0, 2, 0)).integers(1 << 30, size=4) for _ in range(2))
    torch_a = (rank_generator(7, 3, Launch(1, 2, 1)), torch.rand(3))[1]
    torch_b = (rank_generator(7, 3, Launch(1, 2, 1)), torch.rand(3))[1]
    assert np.array_equal(a0, b0) and torch.equal(torch_a, torch_b)  # (seed, epoch, rank) fixes both streams
    other_rank = rank_generator(7, 3, Launch(1, 2, 1)).integers(1 << 30, size=4)
    other_epoch = rank_generator(7, 4, Launch(0, 2, 0)).integers(1 << 30, size=4)
    assert not np.array_equal(a0, other_rank) and not np.array_equal(a0, other_epoch)


def test_a_batch_smaller_than_the_launch_is_a_usage_error():
    model = MLPModel(batch_size=4)
    model._check_shards(40, Launch(0, 4, 0))  # batches of 4 rows: one per process
    with pytest.raises(UsageError) as exc:
        model._check_shards(40, Launch(0, 8, 0))
    one_line(exc, "batch_size=4", "8 processes", "4 rows")


def test_a_launch_without_a_rendezvous_is_one_line(no_launch):
    """WORLD_SIZE without torchrun's MASTER_ADDR: a clear error, not torch's traceback."""
    no_launch.setenv("WORLD_SIZE", "2")
    no_launch.setenv("RANK", "0")
    x = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
    with pytest.raises(UsageError) as exc:
        MLPModel(max_epochs=1, random_state=0).fit({"audio/a": x}, np.arange(20) % 2)
    one_line(exc, "torchrun environment", "MASTER_ADDR")
    assert not torch.distributed.is_initialized()


def test_models_outside_the_harness_are_refused_under_torchrun_before_any_work(tmp_path, data_home, no_launch):
    from genrecli.pipeline.train import train

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "t.npz", X=rng.normal(size=(30, 4)).astype(np.float32), y=np.array(["a", "b", "c"])[np.arange(30) % 3])
    assert invoke_cli("ingest", "table", "--root", tmp_path / "t.npz", "--name", "t", "-q") == 0
    no_launch.setenv("WORLD_SIZE", "2")
    no_launch.setenv("RANK", "1")
    for model, extra in (("svm", {"kernels": ("rbf",)}), ("majority", {}), ("oramas-audio", {})):
        with pytest.raises(UsageError) as exc:
            train(model, "t", seeds=1, **extra)
        one_line(exc, f"model '{model}' does not train data-parallel under torchrun", "as one process")
    assert not (data_home / "t" / "runs").exists() and not torch.distributed.is_initialized()


# ----------------------------------------------------------------------------------------------- real launches
# The data and models of the launch below; also run in the test's own process for the one-process fit.
HARNESS_SETUP = textwrap.dedent("""
    import hashlib, json, sys
    import h5py, numpy as np, torch
    from genrecli import distributed
    from genrecli.models.neural.cnn import CNNModel
    from genrecli.models.neural.mlp import MLPModel
    from genrecli.pipeline.features import FeatureView

    rng = np.random.default_rng(0)
    y = np.arange(240) % 3
    x = (rng.normal(size=(3, 6))[y] * 2.5 + rng.normal(size=(240, 6))).astype(np.float32)
    bands = rng.normal(size=(60, 12, 40)).astype(np.float32)
    for i, c in enumerate(y[:60]):
        bands[i, 2 + 3 * c:4 + 3 * c] += 2.0

    def mlp(**kw):
        return MLPModel(**{"hidden": (16,), "max_epochs": 12, "batch_size": 32, "random_state": 0, "patience": 100, **kw})

    def cnn():
        return CNNModel(channels=(4, 8), patch_frames=16, max_epochs=6, batch_size=12, random_state=0)

    class Stop(Exception):
        pass

    def stop_at_4(epoch, record):
        if epoch == 4:
            raise Stop

    def digest(model):
        return hashlib.sha256(b"".join(v.numpy().tobytes() for v in model.network_.state_dict().values())).hexdigest()
""")
HARNESS_SCRIPT = HARNESS_SETUP + textwrap.dedent("""
    out = sys.argv[1]
    report = {}
    plain = mlp(dropout=0.0).fit({"audio/a": x}, y)  # what one process computes too, up to float rounding
    report["plain"] = {k: v.numpy().tolist() for k, v in plain.network_.state_dict().items()}
    report["plain_val_loss"] = [h["val_loss"] for h in plain.history_]
    if distributed.is_primary():
        with h5py.File(f"{out}-bands.h5", "w") as h5:
            h5.create_group("audio/mel").create_dataset("data", data=bands, chunks=(1, 12, 40))
    distributed.barrier()
    data = {"mlp": ({"audio/a": x}, y, lambda: mlp(dropout=0.3)),
            "cnn": ({"audio/mel": FeatureView(f"{out}-bands.h5", "audio/mel", np.arange(60))}, y[:60], cnn)}
    for kind, (inputs, targets, make) in data.items():  # uninterrupted vs interrupted after epoch 4 and resumed
        whole = make().fit(inputs, targets)
        try:
            make().fit(inputs, targets, checkpoint_dir=f"{out}-ck-{kind}", on_epoch_end=stop_at_4)
        except Stop:
            pass
        resumed = make().fit(inputs, targets, checkpoint_dir=f"{out}-ck-{kind}")
        report[kind] = {"whole": digest(whole), "resumed": digest(resumed), "resumed_from": resumed.resumed_from_,
                        "epochs": whole.n_epochs_}
    rank = distributed.launch_from_env().rank
    json.dump(report, open(f"{out}-rank{rank}.json", "w"))
""")


@pytest.mark.slow
def test_torchrun_harness_equals_one_process_and_resumes_bit_identically(tmp_path, no_launch):
    """One 2-process launch: without dropout the DDP weights are the one-process weights up to float
    rounding (batch_size is the global batch); with dropout / random crops / batch norm a launch interrupted
    after epoch 4 and resumed ends bit-identical to an uninterrupted launch; both ranks end identical."""
    script = tmp_path / "harness_ddp.py"
    script.write_text(HARNESS_SCRIPT)
    proc = torchrun(script, tmp_path / "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"out-rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]  # the ranks never diverge: same weights, histories, epochs
    assert not list(tmp_path.glob("out-ck-*/.*tmp*"))
    for kind in ("mlp", "cnn"):
        got = ranks[0][kind]
        assert got["resumed_from"] == 4 and got["resumed"] == got["whole"], (kind, got)

    # the same fit in this process
    setup: dict = {}
    exec(compile(HARNESS_SETUP, "harness_setup", "exec"), setup)
    one = setup["mlp"](dropout=0.0).fit({"audio/a": setup["x"]}, setup["y"])
    for name, value in one.network_.state_dict().items():
        ddp = np.asarray(ranks[0]["plain"][name], dtype=np.float32)
        assert ddp.shape == tuple(value.shape)
        np.testing.assert_allclose(ddp, value.numpy(), rtol=0, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(ranks[0]["plain_val_loss"], [h["val_loss"] for h in one.history_], rtol=1e-5)


def _run_results(home: Path, data: str) -> tuple[Path, list[dict]]:
    (run,) = (home / data / "runs").iterdir()  # exactly one run
    out = []
    for seed_dir in sorted(run.glob("fold*-seed*")):
        with np.load(seed_dir / "result.npz") as r:
            out.append({"acc": float(np.mean(r["y_pred"] == r["y_true"])), "y_pred": r["y_pred"], "scores": r["scores"]})
    return run, out


# Tolerance on the 3-seed mean test accuracy. Single-process seeds 0-4 of these two runs: mlp 0.861-0.903
# (sd 0.015, 72 test tracks), cnn 1.0 every time (28 test tracks); 0.05 is 3.6 mlp / 1.4 cnn test tracks.
ACCURACY_TOLERANCE = 0.05
TRAIN_CASES = {
    # mlp without dropout: DDP is the one-process optimisation up to rounding, so the predictions are the same
    "mlp": ("t", vector_table, [], ["-o", "max_epochs=30", "-o", "dropout=0"]),
    # cnn: per-rank crops and batch-norm statistics, so the same accuracy within seed noise only
    "cnn": ("p", _patch_table, ["--split", "random:0.7:0.15"],
            ["--split", "random:0.7:0.15", "-o", "max_epochs=25", "-o", "patch_frames=24", "-o", "channels=[8,16]"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(TRAIN_CASES))
def test_torchrun_genre_train_matches_one_process(model, tmp_path, data_home, no_launch):
    data, table, ingest_args, train_args = TRAIN_CASES[model]
    assert invoke_cli("ingest", "table", "--root", table(tmp_path / f"{data}.npz"), "--name", data, *ingest_args, "-q") == 0
    args = ["train", "--data", data, "--model", model, "--seeds", "3", *train_args]
    proc = torchrun("-m", "genrecli", *args, cwd=tmp_path, home=data_home)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("epoch 1/") == 3  # rank 0's progress only: one line per seed
    run, ddp = _run_results(data_home, data)
    config = json.loads((run / "config.json").read_text())
    assert config["predictions_sha256"] and len(ddp) == 3 and (run / "predictions.h5").exists()
    assert not list(run.rglob("*.tmp*")) and not list(run.rglob("checkpoint.pt"))
    if model == "mlp":  # rank 0's "up to date" decision reaches rank 1: nothing is retrained or rewritten
        again = torchrun("-m", "genrecli", *args, cwd=tmp_path, home=data_home)
        assert again.returncode == 0 and "up to date" in again.stderr and "epoch 1/" not in again.stderr, again.stderr[-2000:]
        assert json.loads((run / "config.json").read_text()) == config

    torch.set_num_threads(1)
    assert invoke_cli(*args, "--force", "-q") == 0  # the same run, one process
    _, one = _run_results(data_home, data)
    ddp_acc, one_acc = np.mean([r["acc"] for r in ddp]), np.mean([r["acc"] for r in one])
    assert ddp_acc > 0.8 and abs(ddp_acc - one_acc) <= ACCURACY_TOLERANCE, (ddp_acc, one_acc)
    if model == "mlp":
        for a, b in zip(ddp, one):
            assert np.array_equal(a["y_pred"], b["y_pred"])
            np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-4)


def test_resuming_with_another_number_of_processes_warns(tmp_path, capsys, no_launch):
    from genrecli.models.neural.harness import CHECKPOINT_FILE

    x = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    y = np.arange(40) % 2

    def stop_at_2(epoch, record):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        MLPModel(max_epochs=4, random_state=0).fit({"audio/a": x}, y, checkpoint_dir=tmp_path, on_epoch_end=stop_at_2)
    doc = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    assert doc["world_size"] == 1
    MLPModel(max_epochs=4, random_state=0).fit({"audio/a": x}, y, checkpoint_dir=tmp_path)
    assert "process(es)" not in capsys.readouterr().err  # same size: silent
    with pytest.raises(KeyboardInterrupt):
        MLPModel(max_epochs=4, random_state=1).fit({"audio/a": x}, y, checkpoint_dir=tmp_path, on_epoch_end=stop_at_2)
    torch.save({**torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True), "world_size": 2}, tmp_path / CHECKPOINT_FILE)
    model = MLPModel(max_epochs=4, random_state=1).fit({"audio/a": x}, y, checkpoint_dir=tmp_path)
    assert model.resumed_from_ == 2
    assert "written by 2 process(es), resumed by 1" in capsys.readouterr().err
