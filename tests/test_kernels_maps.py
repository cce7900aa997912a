"""The CPU explicit maps of issue 14: the blocked rbf map, the in-place kernel PCA and the bit-packed hist
map_gram, against scikit-learn's Nystroem, the previous (torch) construction and the NumPy unary map."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from sklearn.kernel_approximation import Nystroem

from genrecli.kernels import ElementaryKernel, ExplicitMap, elementary, kpca_projection, maps
from genrecli.errors import UsageError


def features(n, d, seed):
    rng = np.random.default_rng(seed)
    return np.maximum(rng.standard_normal((n, 4)) @ rng.standard_normal((4, d)) + rng.standard_normal((n, d)),
                      0).astype(np.float32)


def old_kpca(K, energy=0.99, rel_eps=1e-10):
    """The previous kpca_projection: torch.linalg.eigh of (K + K^T) / 2 in float64, flipped."""
    K = torch.from_numpy(np.asarray(K, dtype=np.float64))
    w, U = torch.linalg.eigh(0.5 * (K + K.T))
    w, U = w.flip(0).clamp(min=0.0), U.flip(1)
    c = torch.cumsum(w, 0)
    rank = min(int(torch.searchsorted(c, energy * c[-1])) + 1, int(((w > 0) & (w >= rel_eps * w[0])).sum()))
    return (U[:, :rank] / w[:rank].sqrt()).float().numpy()


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.fixture(params=["default", "small"])
def blocks(request, monkeypatch):
    """Default blocks, and row blocks of a few rows: every size split, unevenly."""
    if request.param == "small":
        monkeypatch.setattr(maps, "_MAP_ELEMENTS", 700)
        monkeypatch.setattr(elementary, "_CACHE_ELEMENTS", 300)
        monkeypatch.setattr(elementary, "_MIRROR_TILE", 16)
    return request.param


# ------------------------------------------------------------------------------------------------ kernel PCA


@pytest.mark.parametrize("n", [1, 2, 37, 200])
def test_kpca_projection_matches_the_previous_torch_construction(n):
    X = features(n, 30, 0)
    K = ElementaryKernel("rbf", sigma=0.5).fit(X).fit_transform(X)
    reference = old_kpca(K)
    asymmetric = K + np.float32(1e-6) * np.triu(np.ones_like(K), 1)  # symmetrised, as before
    for value in (K, K.astype(np.float64), torch.from_numpy(K), asymmetric):
        P = kpca_projection(value, energy=0.99)
        P = P.numpy() if isinstance(P, torch.Tensor) else P
        expected = reference if value is not asymmetric else old_kpca(asymmetric)
        assert P.dtype == np.float32 and P.flags.c_contiguous and P.shape == expected.shape
        np.testing.assert_allclose(P, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    T64 = kpca_projection(torch.from_numpy(K.astype(np.float64)))
    assert T64.dtype == torch.float64 and T64.shape == reference.shape


def test_kpca_projection_leaves_its_input_alone():
    X = features(50, 20, 1)
    K64 = ElementaryKernel("rbf").fit(X).fit_transform(X).astype(np.float64)
    before = K64.copy()
    kpca_projection(K64)
    kpca_projection(torch.from_numpy(K64))
    np.testing.assert_array_equal(K64, before)


# ---------------------------------------------------------------------------------------------------- rbf map


@pytest.mark.parametrize("n, m, d, landmarks", [(2, 1, 3, "all"), (40, 7, 60, "all"), (300, 130, 64, 90),
                                                (257, 33, 129, 256)])
def test_rbf_map_inner_products_match_sklearn_nystroem_on_the_same_landmarks(blocks, n, m, d, landmarks):
    train, test = features(n, d, 2), features(m, d, 3)
    model = ExplicitMap("rbf", energy=1.0, landmarks=landmarks, random_state=0).fit(train)
    gamma = 0.5 / model.kernel_.sigma_**2
    Z = model.landmarks_
    # Nystroem on exactly these landmarks: fitted on them with as many components (their order is irrelevant).
    reference = Nystroem(kernel="rbf", gamma=gamma, n_components=len(Z), random_state=0).fit(Z.astype(np.float64))
    prepared = model.kernel_.preprocess(test).astype(np.float64)
    F, F_ref = model.transform(test), reference.transform(prepared)
    assert F.dtype == np.float32 and F.shape == (m, model.dim_)
    assert rel(F @ F.T, F_ref @ F_ref.T) < 1e-5
    assert rel(model.map_gram(test), F_ref @ reference.transform(model.kernel_.X_fit_.astype(np.float64)).T) < 1e-5


@pytest.mark.parametrize("scale", ["none", "standard"])
def test_rbf_map_matches_the_previous_construction_at_99_percent(blocks, scale):
    train, test = features(400, 48, 4), features(150, 48, 5)
    model = ExplicitMap("rbf", landmarks=120, random_state=1, scale=scale, eigensolver="float64").fit(train)
    K_Z = model.kernel_.gram(train[model.landmark_indices_])
    P = old_kpca(K_Z)
    assert model.projection_.shape == P.shape
    np.testing.assert_allclose(model.projection_, P, rtol=1e-4, atol=1e-5 * np.abs(P).max())
    K = model.kernel_.gram(test, train[model.landmark_indices_]).astype(np.float64)
    F = model.transform(test)
    np.testing.assert_allclose(F, K @ P, rtol=1e-4, atol=1e-5 * np.abs(K @ P).max())
    assert rel(model.map_gram(test, test), F @ F.T) < 1e-5


@pytest.mark.parametrize("scale", ["none", "standard"])
def test_the_float32_eigensolver_gives_the_float64_maps_inner_products(monkeypatch, scale):
    train, test = features(600, 64, 4), features(150, 64, 5)
    solved = []
    real = maps._eigh_in_place
    monkeypatch.setattr(maps, "_eigh_in_place", lambda K: solved.append(K.dtype) or real(K))
    auto = ExplicitMap("rbf", landmarks=300, random_state=1, scale=scale).fit(train)
    assert solved == [np.float32]  # well conditioned at 99 %: no float64 solve
    exact = ExplicitMap("rbf", landmarks=300, random_state=1, scale=scale, eigensolver="float64").fit(train)
    assert auto.dim_ == exact.dim_ and np.array_equal(auto.landmark_indices_, exact.landmark_indices_)
    F, F64 = auto.transform(test).astype(np.float64), exact.transform(test).astype(np.float64)
    K = auto.kernel_.gram(test).astype(np.float64)
    # Their Grams agree far more closely than either approximates the kernel.
    assert rel(F @ F.T, F64 @ F64.T) < 1e-4 < 1e-2 * rel(F64 @ F64.T, K)
    assert rel(auto.map_gram(test), exact.map_gram(test)) < 1e-4


def test_the_float32_eigensolver_falls_back_to_float64_under_its_floor(monkeypatch):
    train = features(200, 32, 8)
    train[100:] = train[:100]  # duplicated rows: K_Z is singular, and energy 1 keeps its smallest eigenvalues
    solved = []
    real = maps._eigh_in_place
    monkeypatch.setattr(maps, "_eigh_in_place", lambda K: solved.append(K.dtype) or real(K))
    auto = ExplicitMap("rbf", energy=1.0, random_state=0).fit(train)
    assert solved == [np.float32, np.float64]
    exact = ExplicitMap("rbf", energy=1.0, random_state=0, eigensolver="float64").fit(train)
    assert np.array_equal(auto.projection_, exact.projection_)


def test_rbf_fit_transform_is_fit_then_transform():
    train = features(300, 40, 9)
    for eigensolver in ("auto", "float64"):
        model = ExplicitMap("rbf", landmarks=100, random_state=2, eigensolver=eigensolver)
        F = model.fit_transform(train)
        np.testing.assert_allclose(F, model.transform(train), rtol=1e-5, atol=1e-6)
    with pytest.raises(UsageError, match="eigensolver"):
        ExplicitMap("rbf", eigensolver="float16").fit(train)


@pytest.mark.parametrize("eigensolver", ["auto", "float64"])
def test_rbf_fit_transform_beside_the_eigensolve_is_the_plain_map(monkeypatch, eigensolver):
    """The kernel blocks computed in a second thread during the eigensolve give the map the plain path gives;
    where NumPy and SciPy have separate BLAS libraries with two threads (the PyPI wheels), that thread ran."""
    monkeypatch.setattr(maps, "_BESIDE_MIN_PRODUCT", 0)
    monkeypatch.setattr(maps, "_MAP_ELEMENTS", 40 * 64)  # blocks of 40 rows: 200 rows beside, uneven tail
    monkeypatch.setattr(maps, "_BESIDE_ELEMENTS", 200 * 60)
    train = features(430, 64, 3)
    ran, real = [], maps._beside_eigensolve

    def spy(solve, product):
        result = real(solve, product)
        ran.append(result[1])
        return result

    monkeypatch.setattr(maps, "_beside_eigensolve", spy)
    model = ExplicitMap("rbf", landmarks=60, random_state=4, eigensolver=eigensolver)
    F = model.fit_transform(train)
    assert len(ran) == 1
    libraries = maps._blas_libraries()
    if libraries is not None and libraries[0].num_threads >= 2:
        assert ran == [True]
    plain = ExplicitMap("rbf", landmarks=60, random_state=4, eigensolver=eigensolver).fit(train)
    np.testing.assert_allclose(F, plain._rbf_rows(None, torch.device("cpu")), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(model.projection_, plain.projection_, rtol=1e-6, atol=1e-7)


class _FakeBlas:
    def __init__(self, threads):
        self.num_threads, self.history = threads, []

    def set_num_threads(self, n):
        self.num_threads = n
        self.history.append(n)


def test_beside_eigensolve_splits_the_threads_and_restores_them(monkeypatch):
    ours, scipys = _FakeBlas(4), _FakeBlas(4)
    monkeypatch.setattr(maps, "_blas_libraries", lambda: (ours, scipys))
    during = []
    result, ran = maps._beside_eigensolve(lambda: during.append((ours.num_threads, scipys.num_threads)) or "P",
                                          lambda: during.append("product"))
    assert (result, ran) == ("P", True)
    # The solve ran with NumPy's BLAS at 3 threads (the product's) and SciPy's at 1; the product ran once.
    assert (3, 1) in during and during.count("product") == 1
    assert (ours.num_threads, scipys.num_threads) == (4, 4)


def test_beside_eigensolve_raises_the_products_error_in_the_caller(monkeypatch):
    ours, scipys = _FakeBlas(2), _FakeBlas(2)
    monkeypatch.setattr(maps, "_blas_libraries", lambda: (ours, scipys))

    def product():
        raise MemoryError("kernel rows")

    with pytest.raises(MemoryError, match="kernel rows"):
        maps._beside_eigensolve(lambda: "P", product)
    assert (ours.num_threads, scipys.num_threads) == (2, 2)


@pytest.mark.parametrize("libraries", [None, (_FakeBlas(1), _FakeBlas(1))])
def test_beside_eigensolve_runs_the_solve_alone_without_a_split(monkeypatch, libraries):
    """One BLAS shared by NumPy and SciPy (None), or one thread in all: no second thread, nothing limited."""
    monkeypatch.setattr(maps, "_blas_libraries", lambda: libraries)
    called = []
    assert maps._beside_eigensolve(lambda: "P", lambda: called.append(1)) == ("P", False)
    assert not called
    assert libraries is None or all(not lib.history for lib in libraries)


def test_rbf_transform_allocates_no_row_sized_temporary(monkeypatch):
    monkeypatch.setattr(maps, "_MAP_ELEMENTS", 1 << 16)
    train = features(2000, 256, 6)
    model = ExplicitMap("rbf", landmarks=300, random_state=0).fit(train)
    result = 2000 * model.dim_ * 4
    tracemalloc.start()
    model.transform(train)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # The result, one (rows, N) kernel block and the landmark norms; an (n, N) kernel would be 2.4 MB more.
    assert peak < result + 4 * maps._MAP_ELEMENTS + (1 << 20), (peak, result)


def test_rbf_sigma_is_the_float64_total_variance_in_any_blocks(monkeypatch):
    X = features(333, 70, 7) + 5
    Xp = X / np.linalg.norm(X, axis=1, keepdims=True)
    X64 = Xp.astype(np.float32).astype(np.float64)
    expected = np.sqrt(((X64 - X64.mean(0)) ** 2).sum(1).mean())
    for cache in (elementary._CACHE_ELEMENTS, 50):
        monkeypatch.setattr(elementary, "_CACHE_ELEMENTS", cache)
        assert abs(ElementaryKernel("rbf").fit(X).sigma_ - expected) <= 1e-6 * expected
        for kernel in ("linear", "poly2", "hist"):
            K = ElementaryKernel(kernel, unit_diagonal=False).fit(X).fit_transform(X).astype(np.float64)
            assert abs(ElementaryKernel(kernel).fit(X).scale_ - np.diag(K).mean()) <= 1e-5 * np.diag(K).mean()


# ----------------------------------------------------------------------------------------------- hist map_gram


def unary_reference(model, X):
    """The NumPy unary (thermometer) map of the fitted hist model, float64, and its 1 / (Q scale_) factor."""
    scaled = model.kernel_.preprocess(X).astype(np.float64)  # float32 [0, 1]-scaled features, exact in float64
    Q = model.levels
    q = np.floor(scaled * Q + 0.5) if model.quantization == "round" else np.floor(scaled * Q)
    return (q[:, :, None] >= np.arange(1, Q + 1)).reshape(len(X), -1).astype(np.float64)


@pytest.mark.parametrize("quantization", ["round", "floor"])
@pytest.mark.parametrize("n, m, d, levels", [(6, 3, 2, 1), (17, 5, 63, 3), (33, 40, 64, 10), (70, 19, 65, 10),
                                             (129, 64, 130, 7), (50, 31, 9, 255)])
def test_hist_map_gram_is_exactly_the_unary_map_inner_product(blocks, quantization, n, m, d, levels):
    train, test = features(n, d, 8), features(m, d, 9)
    model = ExplicitMap("hist", levels=levels, quantization=quantization).fit(train)
    factor = np.float32(levels * model.kernel_.scale_)
    Phi_train, Phi_test = unary_reference(model, train), unary_reference(model, test)
    cases = {
        "test x train": (model.map_gram(test), Phi_test @ Phi_train.T),
        "train (None)": (model.map_gram(train), Phi_train @ Phi_train.T),
        "test x test": (model.map_gram(test, test), Phi_test @ Phi_test.T),
        "train x test": (model.map_gram(None, test), Phi_train @ Phi_test.T),
    }
    for name, (G, counts) in cases.items():
        assert G.dtype == np.float32 and G.shape == counts.shape, name
        np.testing.assert_array_equal(G, (counts.astype(np.float32) / factor), err_msg=name)
    G = cases["test x test"][0]
    np.testing.assert_array_equal(G, G.T)


def test_hist_map_gram_falls_back_to_torch_above_255_levels_or_without_numba(monkeypatch):
    train, test = features(40, 20, 10), features(15, 20, 11)
    packed = ExplicitMap("hist").fit(train)
    expected = packed.map_gram(test)
    monkeypatch.setattr(maps, "_numba_popcount_gram", lambda: None)
    np.testing.assert_array_equal(ExplicitMap("hist").fit(train).map_gram(test), expected)
    monkeypatch.undo()
    model = ExplicitMap("hist", levels=300).fit(train)
    counts = unary_reference(model, test) @ unary_reference(model, train).T
    np.testing.assert_allclose(model.map_gram(test), counts / (300 * model.kernel_.scale_), rtol=1e-6)


def test_hist_map_gram_allocates_no_unary_map():
    X = features(600, 300, 12)
    model = ExplicitMap("hist").fit(X)
    tracemalloc.start()
    model.map_gram(X[:500])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # Result 500 x 600 float32 (1.2 MB) and the packed codes (1100 rows x 10 levels x 5 words); a float32
    # unary map of the 500 rows alone would be 6 MB.
    assert peak < 500 * 600 * 4 + 1100 * 10 * 5 * 8 + (1 << 20), peak


def test_rbf_map_gram_against_the_training_rows_maps_them_once_per_fit(monkeypatch):
    """map_gram(X) against the training rows (the DM2KMN's landmarks) computes their map once, not per call;
    the cached side equals a fresh computation, and set_state or a refit computes it again."""
    X, Y = features(120, 16, 0), features(30, 16, 1)
    em = ExplicitMap("rbf", landmarks=40, random_state=0).fit(X)
    calls = []
    rows = ExplicitMap._rbf_rows
    monkeypatch.setattr(ExplicitMap, "_rbf_rows", lambda self, A, device: calls.append(A is None) or rows(self, A, device))
    first, second = em.map_gram(Y), em.map_gram(Y[:7])
    assert calls.count(True) == 1 and calls.count(False) == 2
    fresh = em.transform(Y) @ em.transform(X).T
    np.testing.assert_allclose(first, fresh, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(second, first[:7], rtol=1e-5, atol=1e-6)  # BLAS rounding varies with the rows
    other = ExplicitMap("rbf", landmarks=40, random_state=1).fit(features(120, 16, 2))
    em.set_state(other.get_state())  # another map: the cached training side must not survive
    np.testing.assert_allclose(em.map_gram(Y), other.map_gram(Y), rtol=1e-6, atol=1e-7)
    assert calls.count(True) == 3  # em after set_state, and other


# ------------------------------------------------------------------- a DM2KMN block's maps against its landmarks


def block_maps(X, *, scale="none", energy=0.99, landmarks="all", levels=10):
    kw = dict(scale=scale, random_state=0)
    return [ExplicitMap("linear", **kw).fit(X), ExplicitMap("poly2", **kw).fit(X),
            ExplicitMap("rbf", energy=energy, landmarks=landmarks, **kw).fit(X),
            ExplicitMap("hist", levels=levels, **kw).fit(X)]


@pytest.mark.parametrize("scale", ["none", "standard"])
@pytest.mark.parametrize("energy, landmarks", [(1.0, "all"), (0.6, "all"), (0.99, 50)])
def test_map_grams_block_equals_each_maps_own_map_gram(blocks, scale, energy, landmarks):
    """The shared validation and product (linear, poly2, rbf on the training rows as landmarks) and the
    folded rbf operator (high rank) or the two-step product (low rank, or landmarks a subset) give each
    map's map_gram to float32 rounding; hist exactly."""
    X, Y = features(140, 40, 6), features(33, 40, 7)
    ems = block_maps(X, scale=scale, energy=energy, landmarks=landmarks)
    out = np.full((len(ems), len(Y), len(X)), np.nan, dtype=np.float32)
    maps.map_grams_block(ems, Y, out)
    for em, got in zip(ems, out):
        assert rel(got, em.map_gram(Y)) < 1e-5, em.kernel
    np.testing.assert_array_equal(out[3], ems[3].map_gram(Y))
    rbf = ems[2]
    folded = rbf._rbf_gram_operator() is not None
    Nz, r = rbf.projection_.shape
    assert folded == (Nz * len(X) < r * (Nz + len(X)))
    if energy == 1.0 and landmarks == "all":
        assert folded  # r near N: one (Nz, N) GEMM instead of two


def test_map_grams_block_runs_each_map_gram_where_the_scalings_differ(monkeypatch):
    X, Y = features(60, 12, 8), features(9, 12, 9)
    ems = block_maps(X)[:2] + block_maps(X, scale="standard")[2:]
    calls = []
    own = ExplicitMap.map_gram
    monkeypatch.setattr(ExplicitMap, "map_gram", lambda self, A, B=None: calls.append(self.kernel) or own(self, A, B))
    out = np.empty((4, 9, 60), dtype=np.float32)
    maps.map_grams_block(ems, Y, out)
    assert calls == ["linear", "poly2", "rbf", "hist"]
    monkeypatch.setattr(ExplicitMap, "map_gram", own)
    for em, got in zip(ems, out):
        np.testing.assert_array_equal(got, em.map_gram(Y))


def test_rbf_gram_operator_is_rebuilt_after_set_state_and_refit():
    X, Y = features(80, 16, 10), features(11, 16, 11)
    em = ExplicitMap("rbf", energy=1.0, random_state=0).fit(X)
    first = em._rbf_gram_operator()
    assert first is not None and em._rbf_gram_operator() is first  # cached per fit
    other = ExplicitMap("rbf", energy=1.0, random_state=0).fit(features(80, 16, 12))
    em.set_state(other.get_state())
    assert em._rbf_gram_operator() is not first
    out = np.empty((1, 11, 80), dtype=np.float32)
    maps.map_grams_block([em], Y, out)
    assert rel(out[0], other.map_gram(Y)) < 1e-5
    em.fit(X)
    maps.map_grams_block([em], Y, out)
    assert rel(out[0], ExplicitMap("rbf", energy=1.0, random_state=0).fit(X).map_gram(Y)) < 1e-5


def test_map_grams_block_runs_each_map_gram_where_the_fitted_scalers_differ(monkeypatch):
    """The same scale option fitted on other rows is another scaling: one validated block cannot serve both."""
    X, Y = features(60, 12, 13), features(9, 12, 14)
    ems = [ExplicitMap("linear", scale="standard").fit(X), ExplicitMap("poly2", scale="standard").fit(X[:30])]
    assert not maps._one_cpu_scaling(ems) and maps._one_cpu_scaling(ems[:1] * 2)
    calls = []
    own = ExplicitMap.map_gram
    monkeypatch.setattr(ExplicitMap, "map_gram", lambda self, A, B=None: calls.append(self.kernel) or own(self, A, B))
    out = [np.empty((9, 60), dtype=np.float32), np.empty((9, 30), dtype=np.float32)]  # N: 60 and 30 training rows
    maps.map_grams_block(ems, Y, out)
    assert calls == ["linear", "poly2"]
    monkeypatch.setattr(ExplicitMap, "map_gram", own)
    for em, got in zip(ems, out):
        np.testing.assert_array_equal(got, em.map_gram(Y))


def test_hist_packed_levels_are_the_same_from_the_parallel_and_the_serial_kernel(monkeypatch):
    train, test = features(90, 130, 13), features(40, 130, 14)
    model = ExplicitMap("hist", levels=7).fit(train)
    serial = model._packed_levels(test), model._packed_levels(None)
    monkeypatch.setattr(maps, "_PARALLEL_MIN_WORK", 0)
    parallel = model._packed_levels(test), model._packed_levels(None)
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("parallel", [False, True])
def test_hist_column_gram_is_the_map_grams_columns_on_level_boundaries(monkeypatch, parallel):
    """Rhythm histograms are fractions k / n: many scaled values sit on a level boundary (183/244 of a span is
    0.75, Q v + 1/2 = 8 at Q = 10). The fused level + min-sum kernel of column_gram puts them on the level the
    packed map_gram and the float32 division give (numba 0.68 had put one a level down with fastmath on the
    levels: 30 instead of 31 intersecting levels on an O'Neill tune)."""
    if maps._numba_level_minsum() is None:
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(21)
    counts = rng.integers(0, 40, size=(120, 28)).astype(np.float64)
    counts[:, 0] += 1
    rows = (counts / counts.sum(1, keepdims=True)).astype(np.float32)
    rows[7, 24], rows[8, 24] = np.float32(1 / 244), np.float32(1 / 183)
    rows[:, 24] = np.minimum(rows[:, 24], np.float32(1 / 183))
    rows[9, 24] = 0.0
    train, test = rows[:80], rows[80:]
    test[0, 24] = np.float32(1 / 244)
    model = ExplicitMap("hist", levels=10).fit(train)
    if parallel:
        monkeypatch.setattr(maps, "_PARALLEL_MIN_WORK", 0)
    columns = np.arange(0, 80, 3)
    np.testing.assert_array_equal(model.column_gram(test, columns), model.map_gram(test)[:, columns])
    # the levels as NumPy's IEEE float32 division and float64 rounding give them
    k = model.kernel_
    span = (k.max_ - k.min_).astype(np.float32)
    v = np.clip((model._validated(test) - k.min_.astype(np.float32)) / np.where(span > 0, span, 1), 0, 1)
    levels = np.floor(v.astype(np.float64) * 10 + 0.5)
    reference = np.minimum(levels[:, None, :], model._levels_np(k.X_fit_[columns])[None]).sum(2)
    np.testing.assert_array_equal(model.column_gram(test, columns), reference.astype(np.float32) / np.float32(10 * k.scale_))


def test_hist_map_gram_packs_the_training_rows_once_per_fit(monkeypatch):
    """map_gram(X) against the training rows packs their levels once, not per call; set_state, a refit or a
    replaced X_fit_ packs them again, and every result equals the unary reference."""
    X, Y = features(60, 20, 15), features(25, 20, 16)
    em = ExplicitMap("hist").fit(X)
    calls = []
    pack = ExplicitMap._packed_levels
    monkeypatch.setattr(ExplicitMap, "_packed_levels",
                        lambda self, A, **kw: calls.append(A is None) or pack(self, A, **kw))

    def expected(model, rows):
        counts = unary_reference(model, Y) @ unary_reference(model, rows).T
        return counts.astype(np.float32) / np.float32(model.levels * model.kernel_.scale_)

    np.testing.assert_array_equal(em.map_gram(Y), expected(em, X))
    np.testing.assert_array_equal(em.map_gram(Y), expected(em, X))
    assert calls.count(True) == 1
    em.set_state(ExplicitMap("hist").fit(X[:30]).get_state())
    np.testing.assert_array_equal(em.map_gram(Y), expected(em, X[:30]))
    em.fit(X[10:])
    np.testing.assert_array_equal(em.map_gram(Y), expected(em, X[10:]))
    assert calls.count(True) == 3
