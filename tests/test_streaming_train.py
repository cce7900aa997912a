"""`genre train --model dm2kmn --landmarks N` streams its rows from the store (issue 15, CLI side).

With N < n (``DM2KMNModel.streams_rows``) the pipeline hands the model FeatureViews instead of loaded
arrays and the model joins the modalities lazily (``RowConcat``): the predictions are those of the
in-memory path, and no read of a view ever takes all n training rows at once.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from conftest import invoke_cli
from corpus_fixtures import vector_table
from genrecli.models.kernel import RowConcat, _vectors
from genrecli.pipeline import features, train as train_mod

N_ROWS, BLOCK = 300, 32
TRAIN_ARGS = ("--model", "dm2kmn", "--split", "random:0.8", "--landmarks", "40", "--seeds", "1",
              "--kernels", "linear,rbf", "-o", f"block_size={BLOCK}", "-o", "ft_epochs=2", "-o", "ft_lr=0.001",
              "-o", "max_iter=15", "-o", "C=1", "-o", "batch_size=64", "-q")


@pytest.fixture
def spy(monkeypatch):
    """Records the number of rows of every FeatureView read (and whether it came from disk)."""
    reads = []
    original = features.FeatureView.__getitem__

    def getitem(self, index):
        out = original(self, index)
        reads.append((1 if out.ndim == len(self.row_shape) else len(out), isinstance(self._data, h5py.Dataset)))
        return out

    monkeypatch.setattr(features.FeatureView, "__getitem__", getitem)
    return reads


def _train(tmp_path, monkeypatch, name, *extra):
    home = tmp_path / name
    monkeypatch.setenv("GENRE_DATA_HOME", str(home))
    table = vector_table(tmp_path / "t.npz", n=N_ROWS)
    assert invoke_cli("ingest", "table", "--root", table, "--name", "t", "--split", "random:0.8", "-q") == 0
    assert invoke_cli("train", "--data", "t", *TRAIN_ARGS, *extra) == 0
    (run,) = (home / "t" / "runs").iterdir()
    with h5py.File(run / "predictions.h5", "r") as h5:
        g = h5["fold0/seed0"]
        return {k: g[k][()] for k in ("test_index", "y_pred", "scores")}, g.attrs["extra"]


def test_streamed_cli_fit_matches_in_memory_and_never_reads_all_rows(tmp_path, monkeypatch, spy):
    features._RESIDENT.clear()
    real = train_mod._streams_rows
    monkeypatch.setattr(train_mod, "_streams_rows", lambda *a: False)  # today's path: loaded arrays
    memory, _ = _train(tmp_path, monkeypatch, "memory")
    assert spy == []  # the in-memory path never touches a view
    monkeypatch.setattr(train_mod, "_streams_rows", real)
    monkeypatch.setenv("GENRE_RESIDENT_BYTES", "0")  # every group stays on disk: read per block
    streamed, extra = _train(tmp_path, monkeypatch, "streamed")
    assert spy, "the streamed path read no FeatureView: the model got loaded arrays"
    assert all(on_disk for _, on_disk in spy), "a view was served from memory despite a zero resident budget"
    n_train = int(0.8 * N_ROWS)
    largest = max(rows for rows, _ in spy)
    assert largest <= 2 * BLOCK < n_train, f"a read of {largest} rows (training rows {n_train}, block {BLOCK})"
    assert np.array_equal(memory["test_index"], streamed["test_index"])
    assert np.array_equal(memory["y_pred"], streamed["y_pred"])
    np.testing.assert_allclose(streamed["scores"], memory["scores"], rtol=1e-4, atol=1e-5)
    assert '"n_test"' in extra


def test_dm2kmn_without_landmarks_keeps_loaded_arrays(tmp_path, monkeypatch, spy):
    monkeypatch.setenv("GENRE_DATA_HOME", str(tmp_path / "home"))
    assert invoke_cli("ingest", "table", "--root", vector_table(tmp_path / "t.npz", n=60), "--name", "t",
                      "--split", "random:0.8", "-q") == 0
    args = [a if a != "40" else "all" for a in TRAIN_ARGS]
    assert invoke_cli("train", "--data", "t", *args) == 0
    assert spy == []


def test_streams_rows_rule():
    from genrecli.models import get_model

    spec = get_model("dm2kmn")
    assert spec.build(seed=0, landmarks=40).streams_rows(41)
    assert not spec.build(seed=0, landmarks=40).streams_rows(40)
    assert not spec.build(seed=0).streams_rows(10**6)  # landmarks='all'
    assert not spec.build(seed=0, landmarks=40, selection_rows="all").streams_rows(1000)
    assert not hasattr(get_model("dkn").build(seed=0), "streams_rows")


def test_row_concat_is_the_lazy_vectors_join():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 3)).astype(np.float32), rng.normal(size=(50, 2, 2))
    X, dims = _vectors({"a": a, "b": b}, ["a", "b"])
    view = RowConcat([a, b])
    assert view.shape == X.shape and len(view) == 50 and view.ndim == 2 and view.dtype == np.float32
    assert view.dims == dims == [3, 4]
    for index in (slice(5, 17), np.array([3, 1, 40]), slice(None)):
        assert np.array_equal(view[index], X[index])
    assert np.array_equal(view[7], X[7]) and np.array_equal(np.asarray(view), X)
