"""DM2KMN map columns (issue 13 section 3): a few pivoted landmarks as the columns of every map.

Real data: the O'Neill 1850 dance tunes of test_dkn.py (melody + rhythm histograms of ABC tune bodies).
"""

from __future__ import annotations

import numpy as np
import pytest
from test_dkn import oneill_dances

from genrecli.errors import UsageError
from genrecli.kernels.maps import ExplicitMap, column_grams_block
from genrecli.models.dkn import DKNClassifier
from genrecli.models.dm2kmn import DM2KMNClassifier, column_schedule, pivot_order


@pytest.fixture(scope="module")
def data():
    X, y, dims = oneill_dances(30)
    perm = np.random.RandomState(1).permutation(len(y))
    return X[perm].astype(np.float32), y[perm], dims


def _dkn(dims, **kw):
    return DKNClassifier(input_dims=dims, modality_names=("melody", "rhythm"), hidden=8, max_iter=20, C=1.0, **kw)


@pytest.fixture(scope="module")
def dkn(data):
    X, y, dims = data
    return _dkn(dims).fit(X[:60], y[:60])


def test_pivot_order_spans_a_low_rank_kernel_first():
    """On a rank-5 PSD matrix the first 5 pivots reproduce it exactly (Nystrom on them), no pivot twice."""
    rng = np.random.default_rng(0)
    F = rng.standard_normal((40, 5))
    K = F @ F.T
    order = pivot_order(K, 12)
    assert len(order) == 12 and len(set(order.tolist())) == 12
    S = order[:5]
    approx = K[:, S] @ np.linalg.pinv(K[np.ix_(S, S)]) @ K[S, :]
    np.testing.assert_allclose(approx, K, atol=1e-8 * np.abs(K).max())
    S4 = order[:4]
    approx4 = K[:, S4] @ np.linalg.pinv(K[np.ix_(S4, S4)]) @ K[S4, :]
    assert np.abs(approx4 - K).max() > 1e-3  # 4 columns cannot
    # a stack is pivoted on the trace-normalised sum
    assert np.array_equal(pivot_order(np.stack([K, 3 * K]), 5)[:5], order[:5])


def test_column_schedule():
    assert column_schedule(600) == [16, 24, 40, 64, 96, 144, 216, 328, 496, 600]
    assert column_schedule(10) == [10]


@pytest.mark.parametrize("kernel", ["linear", "poly2", "rbf", "hist"])
def test_column_gram_is_the_map_inner_product_against_those_rows(data, kernel):
    """linear / poly2 / hist: the map_gram columns (hist bit for bit); rbf: the exact kernel against them."""
    X, _, dims = data
    A = X[:, : dims[0]]
    em = ExplicitMap(kernel, random_state=0).fit(A[:60])
    rows = np.array([7, 0, 33, 59, 12])
    G = em.column_gram(A[60:], rows)
    assert G.shape == (30, 5) and G.dtype == np.float32
    ref = em.kernel_.gram(A[60:], A[:60][rows]) if kernel == "rbf" else em.map_gram(A[60:], A[:60][rows])
    if kernel == "hist":
        assert np.array_equal(G, ref)
    else:
        np.testing.assert_allclose(G, ref, rtol=1e-5, atol=1e-6)


def test_column_grams_block_equals_each_map(data):
    """The shared per-block product gives exactly each map's own column_gram."""
    X, _, dims = data
    A = X[:, dims[0]:]
    maps = [ExplicitMap(k, random_state=0).fit(A[:60]) for k in ("linear", "poly2", "rbf", "hist")]
    rows = np.array([3, 50, 21])
    out = np.empty((4, 30, 3), dtype=np.float32)
    column_grams_block(maps, A[60:], rows, out)
    for i, em in enumerate(maps):
        assert np.array_equal(out[i], em.column_gram(A[60:], rows)), em.kernel


def test_fixed_columns_fit_predict_and_round_trip(data, dkn, tmp_path):
    """map_columns=s: input Grams (m, n, s) against s pivots, every layer's maps rank <= s (deep_columns
    'first'), scores from features equal to scores from the same Grams, and the state scores identically."""
    from safetensors.numpy import load_file, save_file

    X, y, dims = data
    net = DM2KMNClassifier(dkn, map_columns=12, deep_columns="first", finetune=False, random_state=0).fit(X[:60], y[:60])
    assert len(net.columns_) == 12 and len(set(net.columns_.tolist())) == 12
    assert net._map_grams(X[60:]).shape == (8, 30, 12)
    assert all(p.shape[1] == 12 for p in net.projections_) and max(max(r) for r in net.ranks_) <= 12
    assert net.extra_metrics()["map_columns"] == 12
    heads = net._heads(net._map_grams(X[60:]))
    np.testing.assert_allclose(net.decision_function(X[60:]), heads, rtol=1e-6, atol=1e-6)
    save_file(net.state_dict(), tmp_path / "m.safetensors")
    loaded = DM2KMNClassifier(dkn, map_columns=12, deep_columns="first", finetune=False,
                              random_state=0).load_state_dict(load_file(tmp_path / "m.safetensors"))
    assert np.array_equal(loaded.columns_, net.columns_)
    assert np.array_equal(loaded.decision_function(X[60:]), net.decision_function(X[60:]))


def test_every_landmark_as_a_column_is_the_paper_construction(data):
    """With every landmark a column (in pivot order) and no rbf (the one input map that changes: exact
    against the columns instead of Nystrom), the map network is the paper's: same RE, same predictions."""
    X, y, dims = data
    kw = dict(kernels=("linear", "poly2", "hist"))
    dkn = _dkn(dims, **kw).fit(X[:60], y[:60])
    paper = DM2KMNClassifier(dkn, finetune=False, random_state=0).fit(X[:60], y[:60])
    cols = DM2KMNClassifier(dkn, map_columns=60, finetune=False, random_state=0).fit(X[:60], y[:60])
    assert paper.columns_ is None and len(cols.columns_) == 60
    assert cols.re_train_initial_["re_abs"] == pytest.approx(paper.re_train_initial_["re_abs"], abs=0.05)
    np.testing.assert_allclose(cols.map_inner(cols._map_grams(X[60:])), paper.map_inner(paper._map_grams(X[60:])),
                               atol=2e-3 * np.abs(paper.map_inner(paper._map_grams(X[60:]))).max())
    assert np.mean(cols.predict(X[60:]) == paper.predict(X[60:])) >= 0.9


def test_re_search_takes_the_fewest_columns_within_the_target(data, dkn):
    """map_columns='re': the counts of column_schedule in order until the train RE is within re_target."""
    X, y, _ = data
    loose = DM2KMNClassifier(dkn, map_columns="re", re_target=20.0, finetune=False, random_state=0).fit(X[:60], y[:60])
    strict = DM2KMNClassifier(dkn, map_columns="re", re_target=0.5, finetune=False, random_state=0).fit(X[:60], y[:60])
    for net in (loose, strict):
        counts = [c for c, _ in net.column_search_]
        assert counts == column_schedule(60)[: len(counts)]
        assert len(net.columns_) == counts[-1]
        # every count before the chosen one missed the target
        assert all(re > net.re_target for _, re in net.column_search_[:-1])
        last_re = net.column_search_[-1][1]
        assert last_re <= net.re_target or counts[-1] == 60
        assert net.re_train_initial_["re_abs"] == pytest.approx(last_re, rel=1e-6)
    assert len(loose.columns_) < len(strict.columns_)
    assert loose.column_search_[0][1] > strict.column_search_[-1][1]


def test_columns_with_finetuning_and_libsvm_top(data, dkn):
    """Fine-tuning runs on the column network (weights move, loss finite); the libsvm top solver gives the
    same hinge problem's solution as liblinear (predictions agree)."""
    X, y, _ = data
    kw = dict(map_columns=16, finetune=False, random_state=0)
    a = DM2KMNClassifier(dkn, top_solver="libsvm", **kw).fit(X[:60], y[:60])
    b = DM2KMNClassifier(dkn, top_solver="liblinear", **kw).fit(X[:60], y[:60])
    assert np.mean(a.predict(X[60:]) == b.predict(X[60:])) >= 0.8
    ft = DM2KMNClassifier(dkn, map_columns=16, top_solver="libsvm", ft_lr=1e-2, ft_epochs=5, random_state=0)
    ft.fit(X[:60], y[:60])
    assert ft.ft_epochs_ == 5 and all(np.isfinite(h["loss"]) for h in ft.ft_history_)
    assert any(not np.allclose(w1, w0) for w1, w0 in zip(ft.weights_, a.weights_))
    assert ft.predict(X[60:]).shape == (30,)


def test_columns_in_the_streamed_fit(data):
    """landmarks < n: the columns are pivots among the landmarks; blocks do not change the scores."""
    X, y, dims = data
    kw = dict(landmarks=40, map_columns=10, ft_lr=1e-3, ft_epochs=2, random_state=0)
    a = DM2KMNClassifier(_dkn(dims), block_size=7, **kw).fit(X[:60], y[:60])
    b = DM2KMNClassifier(_dkn(dims), block_size=None, **kw).fit(X[:60], y[:60])
    assert len(a.columns_) == 10 and set(a.columns_.tolist()) <= set(range(40))
    assert np.array_equal(a.columns_, b.columns_)
    # Blocks change only the float32 rounding of the Grams (scores within 1e-5 before fine-tuning); two
    # epochs of Adam amplify it to a few 1e-4 (measured 2.7e-4 with numpy 2.4, torch 2.13).
    np.testing.assert_allclose(a.decision_function(X[60:]), b.decision_function(X[60:]), rtol=1e-3, atol=1e-3)


def test_gram_level_fit_with_columns(data, dkn):
    """fit_gram / decision_gram read the column landmarks out of the full Grams."""
    from test_dkn import elementary_grams

    X, y, dims = data
    G = elementary_grams(X, dims, n_train=60)
    gdkn = DKNClassifier(hidden=8, max_iter=20, C=1.0, random_state=0).fit_gram(G[:, :60], y[:60])
    net = DM2KMNClassifier(gdkn, map_columns=12, finetune=False, random_state=0).fit_gram(G[:, :60], y[:60])
    assert len(net.columns_) == 12
    S = net.decision_gram(G[:, 60:])
    assert S.shape == (30, 3) and np.all(np.isfinite(S))
    assert net.extra_metrics(G[:, 60:])["map_columns"] == 12


@pytest.mark.parametrize("kw", [dict(map_columns=0), dict(map_columns="some"), dict(re_target=0),
                                dict(deep_columns="none"), dict(top_solver="sag"), dict(max_columns=0)])
def test_bad_column_options_are_one_line(data, dkn, kw):
    X, y, _ = data
    with pytest.raises(UsageError):
        DM2KMNClassifier(dkn, finetune=False, **kw).fit(X[:60], y[:60])


def test_cli_train_with_map_columns_records_them(tmp_path, monkeypatch):
    """`genre train --model dm2kmn -o map_columns=... -o deep_columns=... -o top_solver=...` reaches the
    model (unknown keys are refused, these are not), and the run's extra metrics name the columns."""
    import h5py
    from conftest import invoke_cli
    from corpus_fixtures import vector_table

    monkeypatch.setenv("GENRE_DATA_HOME", str(tmp_path / "home"))
    table = vector_table(tmp_path / "t.npz", n=150)
    assert invoke_cli("ingest", "table", "--root", table, "--name", "t", "--split", "random:0.8", "-q") == 0
    assert invoke_cli("train", "--data", "t", "--model", "dm2kmn", "--split", "random:0.8", "--seeds", "1",
                      "--kernels", "linear,rbf",
                      "-o", "map_columns=10", "-o", "deep_columns=first", "-o", "top_solver=libsvm",
                      "-o", "ft_epochs=2", "-o", "ft_lr=0.001", "-o", "max_iter=15", "-o", "C=1", "-q") == 0
    (run,) = (tmp_path / "home" / "t" / "runs").iterdir()
    with h5py.File(run / "predictions.h5", "r") as h5:
        g = h5["fold0/seed0"]
        extra = g.attrs["extra"]
        assert len(g["y_pred"][()]) == 30
    import json

    extra = json.loads(extra) if isinstance(extra, (str, bytes)) else extra
    assert extra["map_columns"] == 10
    assert extra["forward_time_dm2kmn_s"] > 0 and extra["forward_time_dkn_s"] > 0
