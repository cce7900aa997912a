"""Kernel models at scale (issue 15): landmark selection, the streamed / blocked DM2KMN fit and forward, DKN blocks."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from test_dkn import oneill_dances

from genrecli.kernels.landmarks import _allocation, kmeanspp, row_blocks, select_landmarks
from genrecli.models.dkn import DKNClassifier
from genrecli.models.dm2kmn import DM2KMNClassifier


@pytest.fixture(scope="module")
def data():
    X, y, dims = oneill_dances(30)
    perm = np.random.RandomState(1).permutation(len(y))
    return X[perm].astype(np.float32), y[perm], dims


def _net(dims, **kw):
    dkn = DKNClassifier(input_dims=dims, modality_names=("melody", "rhythm"), hidden=6, max_iter=15, C=1.0,
                        kernels=("linear", "rbf"))
    base = dict(landmarks=20, ft_lr=1e-3, ft_epochs=3, random_state=0)
    base.update(kw)
    return DM2KMNClassifier(dkn, **base)


# -- landmark selection ------------------------------------------------------------------------------------


def _clusters():
    """Five tight clusters far apart, very unequal: 900, 40, 30, 20, 10 rows."""
    rng = np.random.RandomState(0)
    centres = rng.standard_normal((5, 6)) * 50.0
    sizes = [900, 40, 30, 20, 10]
    X = np.concatenate([c + 0.01 * rng.standard_normal((k, 6)) for c, k in zip(centres, sizes)]).astype(np.float32)
    labels = np.repeat(np.arange(5), sizes)
    return X, labels


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_kmeanspp_puts_a_landmark_in_every_cluster(seed):
    X, labels = _clusters()
    idx = select_landmarks(X, 5, method="kmeans++", random_state=seed)
    assert len(idx) == 5 and np.all(np.diff(idx) > 0)
    assert sorted(labels[idx].tolist()) == [0, 1, 2, 3, 4]
    # a uniform draw of 5 rows almost never does (P(all 5 clusters) ~ 1e-4)
    assert len(set(labels[select_landmarks(X, 5, random_state=seed)])) < 5


def test_kmeanspp_on_a_pool_and_per_modality_weights():
    X, labels = _clusters()
    idx = select_landmarks(X, 5, method="kmeans++", pool=600, input_dims=(2, 4), random_state=0)
    assert len(idx) == 5 and len(np.unique(idx)) == 5
    assert kmeanspp(np.zeros((4, 3)), 3, np.random.RandomState(0)).tolist() != []  # coincident rows: no hang


def test_uniform_is_seeded_and_deterministic():
    X = np.zeros((500, 3), dtype=np.float32)
    a = select_landmarks(X, 40, random_state=7)
    assert np.array_equal(a, select_landmarks(X, 40, random_state=7))
    assert not np.array_equal(a, select_landmarks(X, 40, random_state=8))
    # the draw of earlier versions, so existing fits keep their landmarks
    assert np.array_equal(a, np.sort(np.random.RandomState(7).choice(500, 40, replace=False)))
    assert np.array_equal(select_landmarks(X, "all"), np.arange(500))
    assert np.array_equal(select_landmarks(X, 900), np.arange(500))


def test_stratified_allocation():
    y = np.repeat(np.arange(3), [80, 15, 5])
    idx = select_landmarks(np.zeros((100, 2)), 10, y_idx=y, stratify=True, random_state=0)
    assert np.bincount(y[idx], minlength=3).tolist() == [8, 1, 1]  # every class represented
    assert _allocation(y, 20).sum() == 20
    idx = select_landmarks(np.random.RandomState(0).rand(100, 2), 10, method="kmeans++", y_idx=y, stratify=True,
                           random_state=0)
    assert len(idx) == 10 and np.bincount(y[idx], minlength=3).min() >= 1


def test_row_blocks():
    assert list(row_blocks(10, 4)) == [(0, 4), (4, 8), (8, 10)]
    assert list(row_blocks(10, None)) == [(0, 10)]


# -- the streamed DM2KMN -----------------------------------------------------------------------------------


def test_blocked_fit_equals_unblocked(data):
    """block_size 7 (with mini-batches of 16 rows accumulated over blocks) vs one block: same model."""
    X, y, dims = data
    a = _net(dims, block_size=7, batch_size=16).fit(X[:80], y[:80])
    b = _net(dims, block_size=None, batch_size=16).fit(X[:80], y[:80])
    assert a.ft_epochs_ == 3 and len(a.ft_history_) == 3
    # Equal up to float32 round-off: the hidden maps' P = U Lambda^-1/2 make the gradient a sum of large terms
    # that cancel, so summing it over 7-row blocks instead of 16 rows moves it by ~0.3 % (in float64 the two
    # gradients agree to 1e-15); the fine-tuned weights then differ by ~2e-5 and the scores by ~1e-3.
    for wa, wb in zip(a.weights_, b.weights_):
        np.testing.assert_allclose(wa, wb, atol=1e-4)
    np.testing.assert_allclose(a.decision_function(X[80:]), b.decision_function(X[80:]), atol=5e-3)
    assert np.array_equal(a.predict(X[80:]), b.predict(X[80:]))
    # full-batch fine-tuning, accumulated over blocks of 7, is also the one-block step
    c = _net(dims, block_size=7, batch_size=None).fit(X[:80], y[:80])
    d = _net(dims, block_size=None, batch_size=None).fit(X[:80], y[:80])
    np.testing.assert_allclose(c.decision_function(X[80:]), d.decision_function(X[80:]), atol=5e-3)
    assert np.array_equal(c.predict(X[80:]), d.predict(X[80:]))


def test_blocked_transform_never_holds_all_rows(data, monkeypatch):
    """The (m, rows, N) input-map Grams are built block_size rows at a time, in the fit and the forward."""
    X, y, dims = data
    net = _net(dims, block_size=7, batch_size=16)
    seen = []
    original = DM2KMNClassifier._map_grams

    def tracking(self, rows, **kw):
        out = original(self, rows, **kw)
        seen.append(out.shape)
        return out

    monkeypatch.setattr(DM2KMNClassifier, "_map_grams", tracking)
    net.fit(X[:80], y[:80])
    m, N = len(net.maps_), 20
    fit_calls = list(seen)
    assert (m, N, N) in fit_calls  # the landmarks among themselves, once
    assert max(s[1] for s in fit_calls if s[1] != N) <= 7 and all(s[0] == m and s[2] == N for s in fit_calls)
    seen.clear()
    net.predict(X[80:])
    assert seen and max(s[1] for s in seen) <= 7 and sum(s[1] for s in seen) == len(X) - 80


def test_streamed_fit_from_an_h5py_dataset(data, tmp_path):
    """X as an h5py dataset (read in slices) gives the model of the in-memory array."""
    X, y, dims = data
    with h5py.File(tmp_path / "x.h5", "w") as h5:
        h5["X"] = X
    with h5py.File(tmp_path / "x.h5", "r") as h5:
        a = _net(dims, block_size=9, landmark_selection="kmeans++").fit(h5["X"], y)
        s_h5 = a.decision_function(h5["X"])
    b = _net(dims, block_size=9, landmark_selection="kmeans++").fit(X, y)
    assert np.array_equal(a.landmarks_, b.landmarks_)
    np.testing.assert_allclose(s_h5, b.decision_function(X), rtol=1e-4, atol=1e-5)
    assert a.n_features_in_ == X.shape[1]


def test_selection_rows_all_keeps_the_in_memory_fit(data):
    X, y, dims = data
    net = _net(dims, selection_rows="all").fit(X[:80], y[:80])
    assert net.predict(X[80:]).shape == (len(X) - 80,)
    with pytest.raises(Exception, match="selection_rows"):
        _net(dims, selection_rows="nope").fit(X[:80], y[:80])
    with pytest.raises(Exception, match="landmark_selection"):
        _net(dims, landmark_selection="nope").fit(X[:80], y[:80])


def test_dkn_blocked_predictions_equal_unblocked(data):
    """The DKN inside a landmark DM2KMN (trained on the landmarks) scores the same in blocks of 7 and at once."""
    X, y, dims = data
    net = _net(dims, finetune=False).fit(X[:80], y[:80])
    dkn = net.dkn_
    whole = dkn.set_params(block_size=None).decision_function(X)
    blocked = dkn.set_params(block_size=7).decision_function(X)
    np.testing.assert_allclose(blocked, whole, rtol=1e-4, atol=1e-5)
    assert np.array_equal(dkn.set_params(block_size=7).predict(X), dkn.set_params(block_size=None).predict(X))
