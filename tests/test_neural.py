"""The neural training harness and its first models (mlp, cnn): learning, patches from HDF5 views,
validation and early stopping, schedules, determinism, checkpoints and resume (also after kill -9), artifacts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from genrecli.errors import UsageError
from genrecli.models import get_model
from genrecli.models.base import load_model
from genrecli.models.neural.cnn import CNNModel
from genrecli.models.neural.harness import CHECKPOINT_FILE, _carve, _fixed_crop, _score, take_rows
from genrecli.models.neural.mlp import MLPModel
from genrecli.pipeline.features import FeatureView

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks on a shared 2-core machine run several times faster on one intra-op thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------------- synthetic data
def blobs(n=240, d=6, n_classes=3, sep=2.5, seed=0):
    """Two inputs of Gaussian class blobs: the class is readable from either (early fusion helps)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    rng.shuffle(y)
    centres = rng.normal(size=(n_classes, d)) * sep
    a = (centres[y] + rng.normal(size=(n, d))).astype(np.float32) * 10 + 5  # off-scale: standardisation matters
    b = (centres[y][:, ::-1] + rng.normal(size=(n, d))).astype(np.float32)
    return {"text/b": b, "audio/a": a}, y


def band_patches(n=72, height=16, frames=48, seed=0):
    """(n, height, frames) noise with a horizontal band at a class-dependent frequency, in random time spans."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.normal(size=(n, height, frames)).astype(np.float32)
    for i, c in enumerate(y):
        lo = 2 + 5 * c
        on = rng.random(frames) < 0.6
        x[i, lo:lo + 3, on] += 3.0
    return x + 20.0, y


def write_h5(path: Path, x: np.ndarray, group="audio/mel") -> Path:
    with h5py.File(path, "w") as h5:
        h5.create_group(group).create_dataset("data", data=x, chunks=(1, *x.shape[1:]))
    return path


class CountingView(FeatureView):
    """A FeatureView that records how many rows every read asks for and refuses to be read whole."""

    reads: list

    def __getitem__(self, index):
        n = 1 if isinstance(index, (int, np.integer)) else len(self.rows[index])
        self.reads.append(n)
        return super().__getitem__(index)

    def __array__(self, dtype=None, copy=None):
        raise AssertionError("the whole view was materialised")


def counting_view(path, rows):
    view = CountingView(path, "audio/mel", rows)
    view.reads = []
    return view


def fast_mlp(**kw):
    params = dict(hidden=(32,), max_epochs=40, lr=1e-2, batch_size=32, patience=8, random_state=0)
    return MLPModel(**{**params, **kw})


def fast_cnn(**kw):
    params = dict(channels=(8, 16), patch_frames=16, max_epochs=12, lr=3e-3, batch_size=16, patience=20,
                  dropout=0.1, random_state=0)
    return CNNModel(**{**params, **kw})


def states_equal(a, b) -> bool:
    sa, sb = a.get_state(), b.get_state()
    return sa.keys() == sb.keys() and all(np.array_equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------------------------- learning
def test_mlp_learns_separable_three_classes():
    inputs, y = blobs(n=300)
    tr, te = np.arange(200), np.arange(200, 300)
    model = fast_mlp().fit({k: v[tr] for k, v in inputs.items()}, y[tr])
    assert model.input_names_ == ["audio/a", "text/b"]
    pred = model.predict({k: v[te] for k, v in inputs.items()})
    assert (pred == y[te]).mean() > 0.9
    proba = model.predict_proba({k: v[te] for k, v in inputs.items()})
    assert proba.shape == (100, 3) and np.allclose(proba.sum(axis=1), 1)
    assert model.history_ and model.history_[0]["val_loss"] is not None
    mean, std = model.scalers_["audio/a"]
    assert mean.shape == (6,) and abs(float(mean.mean()) - 5) < 20 and np.all(std > 1)


def test_mlp_classes_are_the_labels_seen_in_training():
    inputs, y = blobs(n=120)
    y = np.array([0, 2, 5])[y]  # class indices with gaps: columns follow classes_
    model = fast_mlp(max_epochs=30).fit(inputs, y)
    assert model.classes_.tolist() == [0, 2, 5]
    assert model.decision_function(inputs).shape == (120, 3)
    assert set(np.unique(model.predict(inputs))) <= {0, 2, 5}
    assert (model.predict(inputs) == y).mean() > 0.9


def test_cnn_learns_band_patches_from_a_feature_view(tmp_path):
    x, y = band_patches(n=108)
    path = write_h5(tmp_path / "features.h5", x)
    train, test = counting_view(path, np.arange(72)), counting_view(path, np.arange(72, 108))
    model = fast_cnn().fit({"audio/mel": train}, y[:72])
    assert max(train.reads) <= 16  # read batch by batch, never whole
    pred = model.predict({"audio/mel": test})
    assert (pred == y[72:]).mean() > 0.9
    assert max(test.reads) <= 16
    mean, std = model.scalers_["audio/mel"]
    assert mean.shape == (1,) and abs(float(mean[0]) - 20) < 0.5 and 1 < float(std[0]) < 2
    assert model.get_meta()["architecture"]["input"] == [16, 16]


def test_cnn_test_time_crops_cover_the_track():
    block = np.arange(431, dtype=np.float32)[None, None, :].repeat(2, 0)
    crops = [_fixed_crop(block, 128, i, 4) for i in range(4)]
    assert [int(c[0, 0, 0]) for c in crops] == [0, 101, 202, 303] and int(crops[-1][0, 0, -1]) == 430
    assert int(_fixed_crop(block, 128, 0, 1)[0, 0, 0]) == (431 - 128) // 2
    x, y = band_patches(n=30, frames=40)
    model = fast_cnn(max_epochs=1).fit({"audio/mel": x}, y)
    views = model._batch_tensors({"audio/mel": x}, np.arange(5), train=False, rng=None)
    assert len(views) == 3 and views[0][0].shape == (5, 16, 16)  # ceil(40 / 16) crops by default
    model.set_params(test_crops=5)
    assert len(model._batch_tensors({"audio/mel": x}, np.arange(5), train=False, rng=None)) == 5
    # a longer track at prediction time is fine (more crops), a shorter one is padded
    assert model.decision_function({"audio/mel": np.concatenate([x, x], axis=2)}).shape == (30, 3)
    assert model.decision_function({"audio/mel": x[:, :, :10]}).shape == (30, 3)
    with pytest.raises(UsageError, match="trained on"):
        model.decision_function({"audio/mel": x[:, :8]})


def test_multilabel_mlp_sigmoid_and_macro_auc():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 8)).astype(np.float32)
    w = rng.normal(size=(8, 4))
    y = (x @ w + 0.3 * rng.normal(size=(400, 4))) > 0.5
    model = fast_mlp(max_epochs=40, monitor="score").fit({"audio/x": x[:300]}, y[:300])
    assert model.multilabel_ and model.classes_.tolist() == [0, 1, 2, 3]
    proba = model.predict_proba({"audio/x": x[300:]})
    assert proba.shape == (100, 4) and proba.min() >= 0 and proba.max() <= 1
    assert model.predict({"audio/x": x[300:]}).dtype == bool
    assert roc_auc_score(y[300:], proba, average="macro") > 0.8
    assert model.history_[0]["val_score"] is not None
    # multi-label with balanced pos_weight trains too
    fast_mlp(max_epochs=2, class_weight="balanced").fit({"audio/x": x}, y.astype(int))


# ----------------------------------------------------------------------------------------------- validation
def test_validation_is_carved_stratified_and_seeded():
    y = np.array([0] * 50 + [1] * 30 + [2] * 1)
    tr, va = _carve(y, False, 0.2, np.random.default_rng(0))
    assert sorted(np.bincount(y[va], minlength=3)) == [0, 6, 10] and len(np.intersect1d(tr, va)) == 0
    assert len(tr) + len(va) == 81 and 80 in tr  # a class of one row stays in training
    tr2, va2 = _carve(y, False, 0.2, np.random.default_rng(0))
    assert np.array_equal(va, va2)
    tr, va = _carve(np.zeros((50, 3)), True, 0.1, np.random.default_rng(0))
    assert len(va) == 5 and len(tr) == 45
    assert len(_carve(y, False, 0.0, np.random.default_rng(0))[1]) == 0


def test_scores():
    logits = np.array([[2, 0], [0, 1], [0, 1], [1, 0]], dtype=np.float32)
    assert _score(logits, np.array([0, 1, 1, 1]), False) == pytest.approx((1 + 2 / 3) / 2)
    targets = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=np.float32)
    from sklearn.metrics import roc_auc_score

    assert _score(logits, targets, True) == pytest.approx(roc_auc_score(targets, logits, average="macro"))
    assert _score(logits, np.ones((4, 2)), True) is None


def test_early_stopping_on_a_plateau_restores_the_best_epoch():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(160, 10)).astype(np.float32)
    y = rng.integers(0, 2, 160)  # no signal: validation loss only gets worse
    model = fast_mlp(hidden=(64,), max_epochs=200, patience=3, lr=3e-2).fit({"audio/x": x}, y)
    assert model.n_epochs_ < 200 and model.n_epochs_ == model.best_epoch_ + 3
    losses = [r["val_loss"] for r in model.history_]
    assert losses[model.best_epoch_ - 1] == min(losses)
    # the restored weights are the best epoch's: their validation loss is the best one
    va = _carve(np.searchsorted(model.classes_, y), False, 0.1, np.random.default_rng(np.random.SeedSequence(0).spawn(2)[0]))[1]
    logits = torch.from_numpy(model.decision_function({"audio/x": x[va]}).astype(np.float32))
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y[va]))
    assert float(loss) == pytest.approx(min(losses), rel=1e-5)


def test_given_validation_part_is_used_and_val_fraction_zero_trains_all_epochs():
    inputs, y = blobs(n=150)
    tr = {k: v[:100] for k, v in inputs.items()}
    va = {k: v[100:] for k, v in inputs.items()}
    model = fast_mlp(max_epochs=5).fit(tr, y[:100], validation=(va, y[100:]))
    assert model.history_[-1]["val_score"] is not None
    model = fast_mlp(max_epochs=4, val_fraction=0.0).fit(tr, y[:100])
    assert model.n_epochs_ == 4 and model.best_epoch_ == 4 and model.history_[0]["val_loss"] is None
    with pytest.raises(UsageError, match="validation inputs lack"):
        fast_mlp(max_epochs=1).fit(tr, y[:100], validation=({"audio/a": va["audio/a"]}, y[100:]))


@pytest.mark.parametrize(("optimizer", "schedule"), [("sgd", "step"), ("rmsprop", "cosine"), ("adamw", "constant")])
def test_optimisers_and_schedules(optimizer, schedule):
    inputs, y = blobs(n=90)
    model = fast_mlp(optimizer=optimizer, lr_schedule=schedule, lr=0.01, lr_step_size=2, lr_gamma=0.5,
                     max_epochs=4, weight_decay=1e-4, class_weight="balanced").fit(inputs, y)
    lrs = [r["lr"] for r in model.history_]
    expected = {"step": [0.01, 0.01, 0.005, 0.005], "constant": [0.01] * 4,
                "cosine": [0.01 * (1 + np.cos(np.pi * e / 4)) / 2 for e in range(4)]}[schedule]
    assert np.allclose(lrs, expected)


def test_bad_options_are_one_line_usage_errors():
    inputs, y = blobs(n=30)
    for bad in ({"optimizer": "lbfgs"}, {"lr_schedule": "cyclic"}, {"monitor": "f1"}, {"val_fraction": 1.0},
                {"hidden": "a,b"}):
        with pytest.raises(UsageError) as exc:
            fast_mlp(**bad).fit(inputs, y)
        assert "\n" not in str(exc.value)
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA is not available"):
            fast_mlp(device="cuda").fit(inputs, y)


# ----------------------------------------------------------------------------------------------- reproducibility
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_same_seed_gives_bit_identical_weights(kind):
    if kind == "mlp":
        inputs, y = blobs(n=90)
        make = lambda s: fast_mlp(max_epochs=4, random_state=s)  # noqa: E731
    else:
        x, y = band_patches(n=36)
        inputs = {"audio/mel": x}
        make = lambda s: fast_cnn(max_epochs=3, random_state=s)  # noqa: E731
    a, b, c = make(7).fit(inputs, y), make(7).fit(inputs, y), make(8).fit(inputs, y)
    assert states_equal(a, b)
    assert not states_equal(a, c)


class Killed(Exception):
    pass


def _raise_after(epoch):
    def hook(e, record):
        if e == epoch:
            raise Killed(e)
    return hook


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_resume_after_interrupt_gives_the_uninterrupted_weights(tmp_path, kind):
    if kind == "mlp":
        inputs, y = blobs(n=90)
        make = lambda: fast_mlp(max_epochs=5, lr_schedule="cosine")  # noqa: E731
    else:
        x, y = band_patches(n=36)
        path = write_h5(tmp_path / "f.h5", x)
        inputs = {"audio/mel": FeatureView(path, "audio/mel", np.arange(36))}
        make = lambda: fast_cnn(max_epochs=4, lr_schedule="step", lr_step_size=2)  # noqa: E731
    reference = make().fit(inputs, y)
    interrupted = make().set_checkpoint_dir(tmp_path / "ck")
    with pytest.raises(Killed):
        interrupted.fit(inputs, y, on_epoch_end=_raise_after(2))
    assert (tmp_path / "ck" / CHECKPOINT_FILE).exists()
    resumed = make().set_checkpoint_dir(tmp_path / "ck")
    epochs = []
    resumed.fit(inputs, y, on_epoch_end=lambda e, r: epochs.append(e))
    assert resumed.resumed_from_ == 2 and epochs == list(range(3, reference.n_epochs_ + 1))
    assert states_equal(reference, resumed)
    assert [r["train_loss"] for r in resumed.history_] == [r["train_loss"] for r in reference.history_]
    # a finished checkpoint is reused as is; a checkpoint of other parameters is not
    again = make().fit(inputs, y, checkpoint_dir=tmp_path / "ck", on_epoch_end=lambda e, r: epochs.append(-e))
    assert states_equal(reference, again) and min(epochs) > 0
    other = make().set_params(lr=0.5).fit(inputs, y, checkpoint_dir=tmp_path / "ck")
    assert other.resumed_from_ == 0 and not states_equal(reference, other)


def test_checkpoint_loads_with_weights_only(tmp_path):
    inputs, y = blobs(n=60)
    fast_mlp(max_epochs=2).fit(inputs, y, checkpoint_dir=tmp_path)
    doc = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    assert doc["epoch"] == 2 and doc["done"] and len(json.loads(doc["history"])) == 2
    assert not list(tmp_path.glob(".*.tmp"))


# ----------------------------------------------------------------------------------------------- artifacts
def test_save_load_round_trip_mlp(tmp_path):
    inputs, y = blobs(n=90)
    model = fast_mlp(max_epochs=5).fit(inputs, y)
    model.save(tmp_path / "m", registry_name="mlp")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.json", "model.safetensors"]
    loaded = load_model(tmp_path / "m")
    assert isinstance(loaded, MLPModel) and loaded.get_params() == model.get_params()
    assert np.array_equal(loaded.decision_function(inputs), model.decision_function(inputs))
    assert np.array_equal(loaded.scalers_["audio/a"][0], model.scalers_["audio/a"][0])
    meta = json.loads((tmp_path / "m" / "model.json").read_text())["meta"]
    assert meta["architecture"]["hidden"] == [32] and len(meta["history"]) == model.n_epochs_


def test_save_load_round_trip_cnn_from_views(tmp_path):
    x, y = band_patches(n=36)
    path = write_h5(tmp_path / "f.h5", x)
    view = FeatureView(path, "audio/mel", np.arange(36))
    model = fast_cnn(max_epochs=2).fit({"audio/mel": view}, y)
    loaded = load_model(model.save(tmp_path / "m"))
    assert isinstance(loaded, CNNModel)
    assert np.array_equal(loaded.decision_function({"audio/mel": view}), model.decision_function({"audio/mel": x}))
    assert np.array_equal(loaded.predict_proba({"audio/mel": view}), model.predict_proba({"audio/mel": view}))


def test_registry_builds_both_models():
    mlp = get_model("mlp").build(seed=3, hidden="64,32")
    assert isinstance(mlp, MLPModel) and mlp.random_state == 3 and mlp.hidden == "64,32"
    assert {"patch_frames", "test_crops", "channels", "patience"} <= set(get_model("cnn").option_names())
    inputs, y = blobs(n=60)
    mlp.set_params(max_epochs=1).fit(inputs, y)
    assert mlp.get_meta()["architecture"]["hidden"] == [64, 32]


def test_take_rows_any_order():
    x = np.arange(20, dtype=np.float32).reshape(10, 2)

    class Lazy:  # an h5py-like dataset: increasing indices only
        shape = x.shape

        def __getitem__(self, idx):
            assert np.all(np.diff(idx) > 0)
            return x[idx]

    rows = np.array([3, 1, 3, 7])
    assert np.array_equal(take_rows(Lazy(), rows), x[rows]) and np.array_equal(take_rows(x, rows), x[rows])


# ----------------------------------------------------------------------------------------------- devices
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("amp_dtype", ["bfloat16", "float16"])
def test_cuda_training_with_mixed_precision(tmp_path, amp_dtype):
    inputs, y = blobs(n=300)
    model = fast_mlp(device="cuda", amp_dtype=amp_dtype).fit({k: v[:200] for k, v in inputs.items()}, y[:200])
    test = {k: v[200:] for k, v in inputs.items()}
    assert next(model.network_.parameters()).is_cuda
    assert (model.predict(test) == y[200:]).mean() > 0.9
    x, yb = band_patches(n=108)
    path = write_h5(tmp_path / "f.h5", x)
    cnn = fast_cnn(device="cuda:0", amp_dtype=amp_dtype, max_epochs=15)
    cnn.fit({"audio/mel": FeatureView(path, "audio/mel", np.arange(72))}, yb[:72], checkpoint_dir=tmp_path / "ck")
    assert (cnn.predict({"audio/mel": x[72:]}) == yb[72:]).mean() > 0.9
    loaded = load_model(cnn.save(tmp_path / "m")).set_params(device="cpu")
    on_cpu = loaded.decision_function({"audio/mel": x[72:]})
    assert np.abs(on_cpu - cnn.decision_function({"audio/mel": x[72:]})).max() < 0.1 * np.abs(on_cpu).max() + 0.1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_resume_after_interrupt(tmp_path):
    inputs, y = blobs(n=120)
    ref = fast_mlp(device="cuda", max_epochs=4).fit(inputs, y)
    with pytest.raises(Killed):
        fast_mlp(device="cuda", max_epochs=4).fit(inputs, y, checkpoint_dir=tmp_path, on_epoch_end=_raise_after(2))
    resumed = fast_mlp(device="cuda", max_epochs=4).fit(inputs, y, checkpoint_dir=tmp_path)
    assert resumed.resumed_from_ == 2 and resumed.n_epochs_ == ref.n_epochs_
    assert (resumed.predict(inputs) == ref.predict(inputs)).mean() > 0.9


# ----------------------------------------------------------------------------------------------- kill -9
_TRAIN_SCRIPT = textwrap.dedent("""
    import sys, time
    import numpy as np, torch
    torch.set_num_threads(1)
    from genrecli import ui
    from genrecli.models.neural.mlp import MLPModel
    ui.configure(quiet=False)

    class SlowMLP(MLPModel):
        def _batch_tensors(self, inputs, rows, *, train, rng):
            time.sleep(0.03)  # slow enough to be killed mid-epoch
            return super()._batch_tensors(inputs, rows, train=train, rng=rng)

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int)
    model = SlowMLP(hidden=(16,), max_epochs=8, batch_size=20, patience=100, random_state=0)
    model.fit({"audio/x": x}, y, checkpoint_dir=sys.argv[1])
    np.savez(sys.argv[2], **model.get_state())
    print("finished", model.n_epochs_, flush=True)
""")


@pytest.mark.slow
def test_kill_minus_nine_mid_epoch_then_resume(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(_TRAIN_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def run(ckdir, out):
        return subprocess.run([sys.executable, str(script), str(ckdir), str(out)], capture_output=True, text=True,
                              env=env, timeout=300)

    ref = run(tmp_path / "ref", tmp_path / "ref.npz")
    assert ref.returncode == 0, ref.stderr
    ckdir = tmp_path / "ck"
    proc = subprocess.Popen([sys.executable, str(script), str(ckdir), str(tmp_path / "out.npz")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 240
    while not (ckdir / CHECKPOINT_FILE).exists():
        assert proc.poll() is None and time.monotonic() < deadline, "training ended before its first checkpoint"
        time.sleep(0.02)
    time.sleep(0.2)  # into the next epoch (10 batches of 30 ms)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL and not (tmp_path / "out.npz").exists()
    done = run(ckdir, tmp_path / "out.npz")
    assert done.returncode == 0, done.stderr
    assert "resuming from epoch" in done.stderr and "finished 8" in done.stdout
    resumed_from = int(done.stderr.split("resuming from epoch ")[1].split()[0])
    assert 1 <= resumed_from < 8
    assert f"epoch {resumed_from + 1}/8" in done.stderr and f"epoch {resumed_from}/8" not in done.stderr
    a, b = np.load(tmp_path / "ref.npz"), np.load(tmp_path / "out.npz")
    assert all(np.array_equal(a[k], b[k]) for k in a.files)
