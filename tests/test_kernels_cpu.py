"""The CPU BLAS path of the linear, poly2 and RBF Grams (issue 14) against the previous torch path and sklearn."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from sklearn.metrics.pairwise import pairwise_kernels

from genrecli.kernels import elementary
from genrecli.kernels import linear_kernel, poly2_kernel, rbf_kernel

# Around the mirror tiles and cache row blocks (made small below) and one above the default 256-row tile.
SHAPES = [(1, 1, 1), (2, 3, 1), (37, 41, 13), (64, 17, 9), (130, 200, 64), (300, 70, 33)]
PARAMS = {"linear": {}, "poly2": {"offset": 0.5}, "rbf": {"sigma": 1.7}}
FUNCTIONS = {"linear": linear_kernel, "poly2": poly2_kernel, "rbf": rbf_kernel}


def features(n, d, seed):
    rng = np.random.default_rng(seed)
    return np.maximum(rng.standard_normal((n, 4)) @ rng.standard_normal((4, d)) + rng.standard_normal((n, d)),
                      0).astype(np.float32)


def torch_path(kernel, X, Y, **params):
    """The previous CPU implementation: torch matmul in row blocks (still the path of every other device)."""
    A = torch.from_numpy(X)
    B = A if Y is None else torch.from_numpy(Y)
    fill, width = elementary._kernel_fill(kernel, A, B, same=Y is None, offset=params.get("offset", 1.0),
                                          sigma=params.get("sigma", 1.0))
    return elementary._blocked(A.shape[0], B.shape[0], width, torch.device("cpu"), fill)


def sklearn_path(kernel, X, Y, **params):
    X64, Y64 = X.astype(np.float64), None if Y is None else Y.astype(np.float64)
    if kernel == "linear":
        return pairwise_kernels(X64, Y64, metric="linear")
    if kernel == "poly2":
        return pairwise_kernels(X64, Y64, metric="poly", degree=2, gamma=1.0, coef0=params["offset"])
    return pairwise_kernels(X64, Y64, metric="rbf", gamma=0.5 / params["sigma"] ** 2)


def close(K, reference, rtol):
    assert K.dtype == np.float32 and K.shape == reference.shape
    np.testing.assert_allclose(K, reference, rtol=rtol, atol=rtol * max(1.0, float(np.abs(reference).max())))


@pytest.fixture(params=["default", "small"])
def blocks(request, monkeypatch):
    """Default blocks, and tiles of 16 with row blocks of ~1000 elements: every size split, unevenly."""
    if request.param == "small":
        monkeypatch.setattr(elementary, "_MIRROR_TILE", 16)
        monkeypatch.setattr(elementary, "_CACHE_ELEMENTS", 1000)
        monkeypatch.setattr(elementary, "_BLOCK_ELEMENTS", 1000)
    return request.param


@pytest.mark.parametrize("kernel", list(FUNCTIONS))
@pytest.mark.parametrize("n, m, d", SHAPES)
def test_cpu_grams_match_the_torch_path_and_sklearn(blocks, kernel, n, m, d):
    X, Y = features(n, d, 0), features(m, d, 1)
    params = PARAMS[kernel]
    for other in (None, Y):
        K = FUNCTIONS[kernel](X, other, **params)
        close(K, torch_path(kernel, X, other, **params), rtol=2e-6)  # float32 against float32
        close(K, sklearn_path(kernel, X, other, **params), rtol=1e-5)  # float32 against float64


@pytest.mark.parametrize("kernel", list(FUNCTIONS))
def test_self_grams_are_exactly_symmetric(blocks, kernel):
    X = features(300, 40, 2) * 10
    K = FUNCTIONS[kernel](X, **PARAMS[kernel])
    np.testing.assert_array_equal(K, K.T)
    if kernel == "rbf":
        assert np.all(np.diag(K) == 1.0)
    else:
        close(np.diag(K), np.diag(sklearn_path(kernel, X, None, **PARAMS[kernel])), rtol=1e-5)


@pytest.mark.parametrize("kernel", list(FUNCTIONS))
@pytest.mark.parametrize("cross", [False, True])
def test_cpu_grams_allocate_no_result_sized_temporary(kernel, cross):
    """Peak traced NumPy memory stays within the result plus row vectors (a copy of the result would double it)."""
    X, Y = features(1200, 30, 0), features(1000, 30, 1)
    FUNCTIONS[kernel](X[:50], Y[:40] if cross else None, **PARAMS[kernel])  # imports, first calls
    tracemalloc.start()
    try:
        K = FUNCTIONS[kernel](X, Y if cross else None, **PARAMS[kernel])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Beyond the result: row norms (float64) and NumPy's ufunc buffers on non-contiguous blocks, ~0.1 MiB here.
    assert peak <= K.nbytes + 2 * X.nbytes + (256 << 10), (peak, K.nbytes)


def test_estimator_on_the_cpu_path_matches_the_torch_path():
    """ElementaryKernel's Grams (unit mean diagonal, preprocessing) go through the same path: unchanged outputs."""
    train, test = features(150, 20, 0), features(60, 20, 1)
    for kernel in FUNCTIONS:
        model = elementary.ElementaryKernel(kernel).fit(train)
        Xp, Tp = (torch.from_numpy(model.preprocess(a)) for a in (train, test))
        sigma = getattr(model, "sigma_", 1.0)
        for A, B, same, got in ((Tp, Xp, False, model.transform(test)), (Xp, Xp, True, model.gram(train))):
            fill, width = elementary._kernel_fill(kernel, A, B, same=same, offset=1.0, sigma=sigma)
            before = elementary._blocked(A.shape[0], B.shape[0], width, torch.device("cpu"), fill) / model.scale_
            close(got, before.astype(np.float32), rtol=2e-6)


def test_nonfinite_input_is_still_found_by_the_fast_check():
    X = features(20, 5, 0)
    for bad in (np.nan, np.inf, -np.inf):
        Z = X.copy()
        Z[7, 3] = bad
        with pytest.raises(ValueError, match=r"rows \[7\]"):
            linear_kernel(Z)
    huge = np.full((4, 3), np.finfo(np.float32).max, dtype=np.float32)  # finite: the float64 sum cannot overflow
    assert np.isinf(linear_kernel(huge)).all()
