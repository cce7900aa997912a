"""Every kind of model through `genre train`: kernel, neural (with kill -9 and resume), the report beside each other."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from corpus_fixtures import vector_table


def genre(*args, home, check_rc=None, **kw):
    env = {**os.environ, "GENRE_DATA_HOME": str(home), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "genrecli", *args], capture_output=True, text=True, env=env, **kw)
    if check_rc is not None:
        assert proc.returncode == check_rc, (args, proc.returncode, proc.stdout, proc.stderr)
    return proc


def _patch_table(path: Path, n=90, seed=0) -> Path:
    """(n, 16, 40) 'spectrograms': a horizontal band whose height depends on the class."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    X = rng.normal(scale=0.5, size=(n, 16, 40)).astype(np.float32)
    for i, c in enumerate(y):
        X[i, 2 + 5 * c : 4 + 5 * c, :] += 2.0
    np.savez(path, X=X, y=np.array(["low", "mid", "high"])[y])
    return path


@pytest.fixture
def vector_corpus(tmp_path):
    home = tmp_path / "home"
    genre("ingest", "table", "--root", str(vector_table(tmp_path / "t.npz")), "--name", "t", home=home, check_rc=0)
    return home


def test_kernel_neural_and_majority_models_side_by_side(vector_corpus):
    home = vector_corpus
    for model, extra in (("svm", ["--kernels", "rbf"]), ("dkn", ["-o", "hidden=4", "-o", "max_iter=30"]),
                         ("majority", []), ("mlp", ["-o", "max_epochs=30"])):
        genre("train", "--data", "t", "--model", model, "--seeds", "1", *extra, home=home, check_rc=0)
    genre("evaluate", "--data", "t", home=home, check_rc=0)
    genre("report", "--data", "t", home=home, check_rc=0)
    results = (home / "t" / "report" / "results.md").read_text()
    for model in ("svm", "dkn", "majority", "mlp"):
        assert f"| {model} |" in results or f"| {model} [" in results, results  # [options] label the runs with -o
    accs = {}
    for run in (home / "t" / "runs").iterdir():
        metrics = json.loads((run / "metrics.json").read_text())
        accs[metrics["config"]["model"]] = metrics["summary"]["accuracy"]["mean"]
    assert accs["mlp"] > accs["majority"] + 0.3 and accs["svm"] > accs["majority"] + 0.3


def test_unknown_option_and_kernels_for_a_neural_model_are_refused_before_any_work(vector_corpus):
    proc = genre("train", "--data", "t", "--model", "dkn", "-o", "hiden=4", home=vector_corpus, check_rc=1)
    assert "unknown option 'hiden' for dkn; known:" in proc.stderr and "hidden" in proc.stderr
    proc = genre("train", "--data", "t", "--model", "mlp", "--kernels", "rbf", home=vector_corpus, check_rc=1)
    assert "--kernels applies to kernel models" in proc.stderr
    assert not (vector_corpus / "t" / "runs").exists()


@pytest.mark.slow
def test_mlp_resumes_after_kill_9_mid_epoch(vector_corpus, tmp_path):
    home = vector_corpus
    args = ["train", "--data", "t", "--model", "mlp", "--seeds", "1", "-o", "max_epochs=400", "-o", "patience=400",
            "-o", "batch_size=8"]
    env = {**os.environ, "GENRE_DATA_HOME": str(home), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "genrecli", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    checkpoint = None
    while time.monotonic() < deadline and proc.poll() is None:
        found = list((home / "t" / "runs").glob("*/.checkpoints/*/checkpoint.pt"))
        if found:
            checkpoint = found[0]
            time.sleep(0.5)  # some epochs later, mid-epoch
            break
        time.sleep(0.2)
    assert checkpoint is not None and proc.poll() is None, "training ended before its first checkpoint"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    run_dir = checkpoint.parents[2]
    assert not (run_dir / "predictions.h5").exists()
    again = genre(*args, home=home, check_rc=0)
    assert "resuming from epoch" in again.stderr, again.stderr
    assert (run_dir / "predictions.h5").exists() and (run_dir / "fold0-seed0" / "model.safetensors").exists()
    assert not list(run_dir.glob(".checkpoints/*/checkpoint.pt"))  # the artifact superseded the checkpoint


@pytest.mark.slow
def test_cnn_on_patch_features_through_the_cli(tmp_path):
    home = tmp_path / "home"
    genre("ingest", "table", "--root", str(_patch_table(tmp_path / "p.npz")), "--name", "p", "--split", "random:0.7:0.15",
          home=home, check_rc=0)
    proc = genre("train", "--data", "p", "--model", "cnn", "--split", "random:0.7:0.15", "--seeds", "1", "-o", "max_epochs=25", "-o", "patch_frames=24",
                 "-o", "channels=[8,16]", home=home, check_rc=0)
    assert "epoch" in proc.stderr  # one progress line per epoch when not on a TTY
    genre("evaluate", "--data", "p", home=home, check_rc=0)
    (run,) = (home / "p" / "runs").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["summary"]["accuracy"]["mean"] > 0.6
    # kernel models flatten patches; the cnn takes patches only
    genre("ingest", "table", "--root", str(vector_table(tmp_path / "t.npz")), "--name", "t", home=home, check_rc=0)
    proc = genre("train", "--data", "t", "--model", "cnn", home=home, check_rc=1)
    assert "patch" in proc.stderr
