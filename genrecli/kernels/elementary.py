"""Elementary kernels of the DM2KMN input layer (spec sections 4.0-4.4).

Four kernels per feature: linear, polynomial of degree 2, RBF and histogram intersection. The pure functions
compute Gram matrices of raw rows; :class:`ElementaryKernel` adds the train-only preprocessing and the unit
mean-diagonal scaling of spec 4.0 and follows scikit-learn's 'precomputed' kernel convention.

Everything is float32 with NumPy arrays in and out. On the CPU the linear, poly2 and RBF Grams are one BLAS
call of OpenBLAS written straight into the result (``ssyrk`` for a Gram of X with itself: half the products,
and then half the function evaluations, copied onto the other triangle in square tiles, so that Gram is exactly
symmetric; ``sgemm`` through NumPy otherwise), then the kernel's function in place, in row blocks of
``_CACHE_ELEMENTS`` that stay in cache: faster here than torch's CPU matmul and than scikit-learn's
``pairwise_kernels`` (bench/bench_kernels.py). Histogram intersection is a compiled cache-blocked loop (numba).
On other devices ('cuda', ...) everything is torch, in row blocks of about ``_BLOCK_ELEMENTS`` working elements.
Either way memory beyond the (n, m) result stays bounded whatever n and m are.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import check_array
from sklearn.utils.validation import check_is_fitted, validate_data

from genrecli.device import resolve_device
from genrecli.errors import InputError, UsageError
from genrecli.kernels import (  # the registry lives in the package (importable without torch)
    DEFAULT_OFFSET,
    DEFAULT_SIGMA,
    KERNEL_NAMES,  # noqa: F401  (re-exported: genrecli.kernels.elementary.KERNEL_NAMES)
    KERNELS,  # noqa: F401
    SIGMA_RULES,
    get_kernel,
)
from genrecli.kernels.scaling import InputScaler, check_method

# Working elements per block (64 MiB of float32): bounds temporaries on the CPU and on a GPU alike.
_BLOCK_ELEMENTS = 1 << 24
# Elements per row block of the elementwise pass of the CPU Grams (256 KiB of float32: stays in L2).
_CACHE_ELEMENTS = 1 << 16
# Side of the square tiles that copy the lower triangle of a CPU Gram onto the upper one (256 KiB each).
_MIRROR_TILE = 256


class _FeatureError(InputError, ValueError):
    """Unusable feature values. Also a ValueError, so scikit-learn tooling treats it as it treats its own."""


# ----------------------------------------------------------------------------------------------- inputs


def _check_finite(X: np.ndarray) -> None:
    # A float64 sum of float32 values cannot overflow, and NaN/inf propagate: finite means every entry is (no
    # (n, d) boolean temporary, as scikit-learn checks). Only then are the bad rows looked for.
    if X.dtype == np.float32 and np.isfinite(np.add.reduce(X, axis=None, dtype=np.float64)):
        return
    bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
    if bad.size:
        shown = ", ".join(map(str, bad[:10])) + (f", ... ({bad.size} rows)" if bad.size > 10 else "")
        raise _FeatureError(
            f"features contain NaN/inf in rows [{shown}]: impute or drop them before computing kernels"
        )


def _features(X) -> np.ndarray:
    """Validate X (numpy, torch or array-like) as a finite, C-ordered float32 (n, d) array."""
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    X = check_array(X, dtype=np.float32, order="C", ensure_all_finite=False)
    _check_finite(X)
    return X


def _estimator_features(estimator, X, *, reset: bool, finite: bool = True) -> np.ndarray:
    """Like :func:`_features`, also recording or checking ``n_features_in_`` as scikit-learn does.

    ``finite=False`` leaves NaN/inf in place (an :class:`~genrecli.kernels.scaling.InputScaler` drops all-NaN
    columns first; what is left is checked after it).
    """
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    X = validate_data(estimator, X, dtype=np.float32, order="C", ensure_all_finite=False, reset=reset)
    if finite:
        _check_finite(X)
    return X


def _tensor(A: np.ndarray, device: torch.device) -> torch.Tensor:
    # torch.from_numpy shares memory but warns on read-only arrays (memmaps), so those are copied.
    if not A.flags.writeable:
        A = A.copy()
    return torch.from_numpy(np.ascontiguousarray(A, dtype=np.float32)).to(device)


def _as_array(value) -> np.ndarray:
    """A state value (NumPy array, torch tensor or scalar) as a NumPy array."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


# ----------------------------------------------------------------------------------------------- blocks


def _blocked(n: int, m: int, width: int, device: torch.device, fill) -> np.ndarray:
    """Assemble a float32 (n, m) NumPy result from row blocks.

    ``fill(start, stop, out)`` writes rows ``start:stop`` into the float32 tensor ``out`` (stop - start, m) on
    ``device``; ``width`` is its working elements per row, which sets the block height. On the CPU ``out`` is a
    view of the result itself, so nothing is copied.
    """
    result = np.empty((n, m), dtype=np.float32)
    host = torch.from_numpy(result)
    rows = max(1, _BLOCK_ELEMENTS // max(1, width))
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        if device.type == "cpu":
            fill(start, stop, host[start:stop])
        else:
            out = torch.empty((stop - start, m), dtype=torch.float32, device=device)
            fill(start, stop, out)
            host[start:stop].copy_(out)
    return result


def _kernel_fill(kernel: str, A: torch.Tensor, B: torch.Tensor, *, same: bool, offset: float, sigma: float):
    """The ``fill`` of :func:`_blocked` and its row width for K(A, B), A (n, d) and B (m, d) on one device.

    ``same`` says B is A, so the RBF diagonal is set to exactly 1 (float32 cancellation would leave ~1e-7).
    """
    m, d = B.shape
    if kernel == "hist":

        def fill(start, stop, out):
            # The (rows, cols, d) broadcast minimum is the working set: split columns when one row is too wide.
            cols = max(1, _BLOCK_ELEMENTS // ((stop - start) * max(1, d)))
            a = A[start:stop, None, :]
            for c in range(0, m, cols):
                out[:, c : c + cols] = torch.minimum(a, B[None, c : c + cols, :]).sum(-1)

        return fill, m * max(1, d)

    if kernel == "rbf":
        sq_a = (A * A).sum(1)
        sq_b = sq_a if same else (B * B).sum(1)
        gamma = -0.5 / sigma**2

    def fill(start, stop, out):
        torch.matmul(A[start:stop], B.T, out=out)
        if kernel == "poly2":
            out.add_(offset).square_()
        elif kernel == "rbf":
            out.mul_(-2.0).add_(sq_a[start:stop, None]).add_(sq_b).clamp_(min=0.0)
            if same:
                out.diagonal(start).zero_()
            out.mul_(gamma).exp_()

    return fill, m


@functools.cache
def _numba_hist():
    """The compiled CPU histogram-intersection kernel, or None when numba is missing (torch is used then).

    Torch has no fused minimum-sum: its broadcast needs an (n, m, d) temporary and ``cdist(p=1)`` is untiled,
    both ~30x slower on the CPU than this cache-blocked loop (16 rows x 64 columns kept in L2).
    """
    try:
        import numba
    except ImportError:
        return None

    @numba.njit(parallel=True, fastmath=True, cache=True)
    def hist_rows(A, B, out):
        n, d = A.shape
        m = B.shape[0]
        for block in numba.prange((n + 15) // 16):
            for k0 in range(0, m, 64):
                for i in range(block * 16, min(block * 16 + 16, n)):
                    a = A[i]
                    for k in range(k0, min(k0 + 64, m)):
                        b = B[k]
                        s = np.float32(0.0)
                        for j in range(d):
                            s += min(a[j], b[j])
                        out[i, k] = s

    return hist_rows


def _mirror_lower(K: np.ndarray) -> None:
    """Copy the lower triangle of the square C-ordered K onto its upper one, in square tiles (no temporary)."""
    n = K.shape[0]
    tile = _MIRROR_TILE
    for i0 in range(0, n, tile):
        i1 = min(n, i0 + tile)
        for i in range(i0, i1 - 1):  # the diagonal tile, row by row: no temporary
            K[i, i + 1 : i1] = K[i + 1 : i1, i]
        for j0 in range(i1, n, tile):
            j1 = min(n, j0 + tile)
            K[i0:i1, j0:j1] = K[j0:j1, i0:i1].T


@functools.cache
def _numba_popcount_gram():
    """The compiled CPU inner products of bit-packed rows, or None when numba is missing.

    ``popcount_gram(A, B, out, lower)``: A (n, w) and B (m, w) uint64 words; ``out[i, k]`` (float32) is the
    number of bits set in both rows, ``sum_j popcount(A[i, j] & B[k, j])``, an exact integer. ``lower`` (B is
    A): only the tiles on or below the diagonal are computed (the caller mirrors them). 2 x 2 rows per inner
    loop (half the loads; LLVM vectorises the popcounts with AVX-512 VPOPCNTQ where there is one), 16 rows x
    64 columns per tile, and the row tiles handed out in pairs (first, last), so that the triangle's work is
    shared evenly by numba's static schedule.
    """
    try:
        import numba
        from numba import types
        from numba.extending import intrinsic
    except ImportError:  # pragma: no cover - numba is a dependency; torch is used without it
        return None

    @intrinsic
    def popcount(typingctx, x):
        def codegen(context, builder, signature, args):
            return builder.ctpop(args[0])

        return types.uint64(types.uint64), codegen

    @numba.njit(fastmath=True, cache=True, inline="always")
    def row_tile(A, B, out, block, lower):
        n, w = A.shape
        i0 = block * 16
        i1 = min(i0 + 16, n)
        m = min(B.shape[0], i1) if lower else B.shape[0]
        for k0 in range(0, m, 64):
            k1 = min(k0 + 64, m)
            for i in range(i0, i1, 2):
                i2 = min(i + 1, i1 - 1)
                a0 = A[i]
                a1 = A[i2]
                for k in range(k0, k1, 2):
                    k2 = min(k + 1, k1 - 1)
                    b0 = B[k]
                    b1 = B[k2]
                    s00 = np.uint64(0)
                    s01 = np.uint64(0)
                    s10 = np.uint64(0)
                    s11 = np.uint64(0)
                    for j in range(w):
                        x0 = a0[j]
                        x1 = a1[j]
                        y0 = b0[j]
                        y1 = b1[j]
                        s00 += popcount(x0 & y0)
                        s01 += popcount(x0 & y1)
                        s10 += popcount(x1 & y0)
                        s11 += popcount(x1 & y1)
                    out[i, k] = s00
                    out[i, k2] = s01
                    out[i2, k] = s10
                    out[i2, k2] = s11

    @numba.njit(parallel=True, fastmath=True, cache=True)
    def popcount_gram(A, B, out, lower):
        blocks = (A.shape[0] + 15) // 16
        for p in numba.prange((blocks + 1) // 2):
            row_tile(A, B, out, p, lower)
            if blocks - 1 - p != p:
                row_tile(A, B, out, blocks - 1 - p, lower)

    return popcount_gram


def _squared_norms(A: np.ndarray) -> np.ndarray:
    """Row squared norms, accumulated in float64 and rounded to float32."""
    return np.einsum("ij,ij->i", A, A, dtype=np.float64).astype(np.float32)


def _apply(kernel: str, block: np.ndarray, sq_rows, sq_cols, *, offset: float, g: np.float32) -> None:
    """The kernel's function of inner products, in place on a block of the product (no temporary)."""
    if kernel == "poly2":
        block += np.float32(offset)
        np.square(block, out=block)
    elif kernel == "rbf":
        block *= np.float32(-2.0)
        block += sq_rows[:, None]
        block += sq_cols
        np.maximum(block, np.float32(0.0), out=block)
        block *= -g
        np.exp(block, out=block)


def _cpu_gram(kernel: str, A: np.ndarray, B: np.ndarray | None, *, offset: float, sigma: float) -> np.ndarray:
    """Linear, poly2 or RBF kernel matrix of C-ordered float32 rows on the CPU (B None: of A with itself).

    B None: one ``ssyrk`` (SciPy's OpenBLAS) writes the lower triangle of the C-ordered result, the kernel's
    function is applied to that triangle in row blocks that stay in cache, and square tiles copy it onto the
    upper one: half the products and half the function evaluations of ``A @ A.T``, an exactly symmetric Gram,
    no temporary beyond a tile. Otherwise one ``sgemm`` (NumPy's matmul) into the result, then the function in
    row blocks.
    """
    n = A.shape[0]
    g = np.float32(0.5 / sigma**2)
    sq_a = _squared_norms(A) if kernel == "rbf" else None
    if B is not None:
        K = np.empty((n, B.shape[0]), dtype=np.float32)
        np.matmul(A, B.T, out=K)
        if kernel != "linear":
            sq_b = _squared_norms(B) if kernel == "rbf" else None
            rows = max(1, _CACHE_ELEMENTS // K.shape[1])
            for i0 in range(0, n, rows):
                i1 = min(n, i0 + rows)
                _apply(kernel, K[i0:i1], None if sq_a is None else sq_a[i0:i1], sq_b, offset=offset, g=g)
        return K

    from scipy.linalg import blas

    # Zeros, so the triangle ssyrk leaves alone holds finite values while the blocks below pass over it.
    K = np.zeros((n, n), dtype=np.float32)
    # C-ordered A (n, d) is the Fortran array A.T (d, n): trans=1 gives (A.T)^T (A.T) = A A^T in Fortran order,
    # whose upper triangle is the lower one of the C-ordered K.
    out = blas.ssyrk(1.0, A.T, beta=0.0, c=K.T, trans=1, lower=0, overwrite_c=1)
    if not np.shares_memory(out, K):  # pragma: no cover - f2py copies only arrays that are not Fortran-ordered
        K.T[...] = out
    if kernel != "linear":
        rows = max(1, _CACHE_ELEMENTS // n)
        for i0 in range(0, n, rows):
            i1 = min(n, i0 + rows)
            _apply(kernel, K[i0:i1, :i1], None if sq_a is None else sq_a[i0:i1], None if sq_a is None else sq_a[:i1],
                   offset=offset, g=g)
    _mirror_lower(K)
    if kernel == "rbf":
        np.fill_diagonal(K, 1.0)
    return K


def _host(T: torch.Tensor) -> np.ndarray:
    """A CPU tensor as a C-ordered float32 NumPy array (a view when it already is one)."""
    return np.ascontiguousarray(T.detach().numpy(), dtype=np.float32)


def _pairwise(
    kernel: str, A: torch.Tensor, B: torch.Tensor, *, same: bool = False, offset: float = 1.0, sigma: float = 1.0
) -> np.ndarray:
    """Unscaled kernel matrix (n, m) float32 between the rows of the tensors A (n, d) and B (m, d).

    ``same`` says B is A: on the CPU the Gram is then exactly symmetric (one ``ssyrk``), and the RBF diagonal is
    exactly 1 on every device.
    """
    if A.device.type == "cpu":
        if kernel == "hist":
            compiled = _numba_hist()
            if compiled is not None:
                out = np.empty((A.shape[0], B.shape[0]), dtype=np.float32)
                compiled(_host(A), _host(B), out)
                return out
        else:
            return _cpu_gram(kernel, _host(A), None if same else _host(B), offset=offset, sigma=sigma)
    fill, width = _kernel_fill(kernel, A, B, same=same, offset=offset, sigma=sigma)
    return _blocked(A.shape[0], B.shape[0], width, A.device, fill)


def _check_sigma(sigma) -> float:
    sigma = float(sigma)
    if not (math.isfinite(sigma) and sigma > 0):
        raise UsageError(f"rbf sigma must be a positive number, got {sigma!r}")
    return sigma


def _check_offset(offset) -> float:
    # (<x, y> + c)^2 = <x,y>^2 + 2c<x,y> + c^2 is PSD (and has a real map) only for c >= 0.
    offset = float(offset)
    if not (math.isfinite(offset) and offset >= 0):
        raise UsageError(f"poly2 offset must be a number >= 0 (a PSD kernel), got {offset!r}")
    return offset


# ------------------------------------------------------------------------------------------ pure kernels


def _gram_inputs(X, Y, device):
    device = resolve_device(device)
    A = _tensor(_features(X), device)
    if Y is None:
        return A, A, True
    B = _tensor(_features(Y), device)
    if B.shape[1] != A.shape[1]:
        raise UsageError(f"X has {A.shape[1]} features but Y has {B.shape[1]}")
    return A, B, False


def linear_kernel(X, Y=None, *, device="cpu") -> np.ndarray:
    """Linear kernel ``<x, y>``.

    Parameters
    ----------
    X : array-like or torch.Tensor, shape (n, d)
    Y : array-like or torch.Tensor, shape (m, d), optional
        Defaults to X.
    device : str or torch.device, keyword-only

    Returns
    -------
    K : np.ndarray, shape (n, m), float32
    """
    A, B, same = _gram_inputs(X, Y, device)
    return _pairwise("linear", A, B, same=same)


def poly2_kernel(X, Y=None, *, offset=DEFAULT_OFFSET, device="cpu") -> np.ndarray:
    """Polynomial kernel of degree 2, ``(<x, y> + offset)^2`` (spec 4.2).

    Parameters
    ----------
    X : array-like or torch.Tensor, shape (n, d)
    Y : array-like or torch.Tensor, shape (m, d), optional
        Defaults to X.
    offset : float >= 0, keyword-only
    device : str or torch.device, keyword-only

    Returns
    -------
    K : np.ndarray, shape (n, m), float32
    """
    offset = _check_offset(offset)
    A, B, same = _gram_inputs(X, Y, device)
    return _pairwise("poly2", A, B, same=same, offset=offset)


def rbf_kernel(X, Y=None, *, sigma, device="cpu") -> np.ndarray:
    """Gaussian kernel ``exp(-|x - y|^2 / (2 sigma^2))`` (spec 4.3).

    Parameters
    ----------
    X : array-like or torch.Tensor, shape (n, d)
    Y : array-like or torch.Tensor, shape (m, d), optional
        Defaults to X; the diagonal is then exactly 1.
    sigma : float > 0, keyword-only
    device : str or torch.device, keyword-only

    Returns
    -------
    K : np.ndarray, shape (n, m), float32
    """
    sigma = _check_sigma(sigma)
    A, B, same = _gram_inputs(X, Y, device)
    return _pairwise("rbf", A, B, same=same, sigma=sigma)


def hist_kernel(X, Y=None, *, device="cpu") -> np.ndarray:
    """Histogram intersection ``sum_j min(x_j, y_j)`` (spec 4.4).

    Exact, in blocks, so memory stays bounded: a cache-blocked compiled loop on the CPU (numba), a blocked
    broadcast minimum on other devices.

    Parameters
    ----------
    X : array-like or torch.Tensor, shape (n, d)
        Usually non-negative (histograms, or the [0, 1]-scaled features of :class:`ElementaryKernel`).
    Y : array-like or torch.Tensor, shape (m, d), optional
        Defaults to X.
    device : str or torch.device, keyword-only

    Returns
    -------
    K : np.ndarray, shape (n, m), float32
    """
    A, B, same = _gram_inputs(X, Y, device)
    return _pairwise("hist", A, B, same=same)


def pairwise_kernel(X, Y=None, *, kernel, device="cpu", **params) -> np.ndarray:
    """Dispatch to the elementary kernel named ``kernel`` (one of :data:`KERNEL_NAMES`).

    Parameters
    ----------
    X : array-like or torch.Tensor, shape (n, d)
    Y : array-like or torch.Tensor, shape (m, d), optional
    kernel : str, keyword-only
    device : str or torch.device, keyword-only
    **params
        The kernel's own options: ``offset`` for poly2, ``sigma`` for rbf.

    Returns
    -------
    K : np.ndarray, shape (n, m), float32
    """
    return get_kernel(kernel).function(X, Y, device=device, **params)


# -------------------------------------------------------------------------------------------- estimator


def _upper_distances(X: torch.Tensor) -> torch.Tensor:
    """Euclidean distances of all pairs i < j of the rows of X, shape (n (n - 1) / 2,), computed in row blocks."""
    n = X.shape[0]
    sq = (X * X).sum(1)
    parts = []
    rows = max(1, _BLOCK_ELEMENTS // max(1, n))
    for start in range(0, n - 1, rows):
        stop = min(n, start + rows)
        # Columns start at row `start`, so the pairs j > i of this block are its strict upper triangle.
        D = X[start:stop] @ X[start:].T
        D.mul_(-2.0).add_(sq[start:stop, None]).add_(sq[start:]).clamp_(min=0.0).sqrt_()
        parts.append(D[torch.ones_like(D, dtype=torch.bool).triu_(1)])
    return torch.cat(parts) if parts else X.new_empty(0)


def _row_sum(X: torch.Tensor, reduce):
    """Sum over float64 row blocks of X of ``reduce(block)``: the float64 accuracy of ``reduce(X.double())``
    with at most a block (``4 * _CACHE_ELEMENTS`` elements) of float64 at a time instead of an (n, d) copy."""
    # On the CPU the blocks are NumPy: small torch ops there leave its OpenMP threads spinning, which costs
    # more than the arithmetic (and slows the OpenBLAS calls that follow).
    if X.device.type == "cpu":
        X, cast = X.numpy(), lambda block: block.astype(np.float64)
    else:
        cast = torch.Tensor.double
    n, d = X.shape
    rows = max(1, 4 * _CACHE_ELEMENTS // max(1, d))
    total = 0.0
    for start in range(0, n, rows):
        total = total + reduce(cast(X[start : start + rows]))
    return total


def _fit_sigma(Xp: torch.Tensor, rule) -> float:
    """RBF width from preprocessed training rows: a number, or a rule of :data:`SIGMA_RULES`."""
    if not isinstance(rule, str):
        return _check_sigma(rule)
    n = Xp.shape[0]
    if rule == "total-variance":
        # sigma^2 = mean_i |x_i - mean|^2 (spec 4.3): the mean pairwise squared distance is then 2 sigma^2.
        # Two float64 passes over row blocks: no (n, d) float64 copy.
        mean = _row_sum(Xp, lambda block: block.sum(0)) / n
        sigma = math.sqrt(float(_row_sum(Xp, lambda block: ((block - mean) ** 2).sum())) / n) if n else 0.0
    else:
        dist = _upper_distances(Xp).double()
        if dist.numel() == 0:
            sigma = 0.0
        elif rule == "mean":
            sigma = float(dist.mean())
        else:
            ordered = torch.sort(dist).values
            sigma = float(0.5 * (ordered[(dist.numel() - 1) // 2] + ordered[dist.numel() // 2]))
    if not sigma > 0:
        raise _FeatureError(
            f"rbf sigma={rule!r} is 0 on the training rows (n_samples={n}, n_features={Xp.shape[1]}): "
            "they are identical after l2 normalisation"
        )
    return sigma


class ElementaryKernel(TransformerMixin, BaseEstimator):
    """One elementary kernel with train-only preprocessing and unit mean-diagonal scaling (spec 4.0).

    ``transform(X)`` returns ``K(X, X_train) / scale_`` (n, n_train), scikit-learn's 'precomputed' convention,
    so ``Pipeline([("k", ElementaryKernel("rbf")), ("svm", SVC(kernel="precomputed"))])`` works.

    Parameters
    ----------
    kernel : {'linear', 'poly2', 'rbf', 'hist'}
    offset : float >= 0, keyword-only
        The c of poly2, ``(<x, y> + c)^2``.
    sigma : {'total-variance', 'median', 'mean'} or float > 0, keyword-only
        RBF width: ``sigma^2 = mean_i |x_i - mean|^2`` (spec 4.3), the median or mean pairwise distance, or a
        given value; always measured on the preprocessed training rows.
    unit_diagonal : bool, keyword-only
        Divide the kernel by the mean of its training diagonal, so that it has unit mean diagonal.
    scale : {'none', 'standard', 'robust', 'minmax', 'l2'}, keyword-only
        Per-input feature scaling (:class:`~genrecli.kernels.scaling.InputScaler`), fitted on the training
        rows and applied to every row before the kernel's own preprocessing; every method but 'none' drops
        the columns constant or all-NaN on the training rows (with a warning). 'none' (default): no scaler.
    input_name : str or None, keyword-only
        The input's name, for that warning.
    device : str or torch.device, keyword-only

    Attributes
    ----------
    scaler_ : InputScaler or None
        The fitted scaling (None for ``scale='none'``).
    X_fit_ : np.ndarray, shape (n_train, d'), float32
        Preprocessed training rows (d' kept columns: d without scaling).
    scale_ : float
        Mean training diagonal (1.0 when ``unit_diagonal`` is False).
    sigma_ : float
        rbf only: the fitted width.
    min_, max_ : np.ndarray, shape (d,), float32
        hist only: per-dimension training minimum and maximum, which scale the features to [0, 1].
    n_features_in_ : int

    Notes
    -----
    Preprocessing, after ``scale``: hist scales each dimension to [0, 1] with the training min/max and clips
    (dimensions constant on the training rows become 0; a standard, robust or minmax ``scale`` before it, an
    increasing affine map per column, leaves that result unchanged), linear, poly2 and rbf l2-normalise each
    row (zero rows stay zero). ``min_``, ``max_``, ``sigma_`` and ``X_fit_`` are of the scaled rows.
    """

    def __init__(self, kernel="rbf", *, offset=DEFAULT_OFFSET, sigma=DEFAULT_SIGMA, unit_diagonal=True, scale="none",
                 input_name=None, device="cpu"):
        self.kernel = kernel
        self.offset = offset
        self.sigma = sigma
        self.unit_diagonal = unit_diagonal
        self.scale = scale
        self.input_name = input_name
        self.device = device

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags

    def _check_params(self) -> None:
        get_kernel(self.kernel)
        check_method(self.scale, what="scale", allow_auto=False)
        if self.kernel == "poly2":
            _check_offset(self.offset)
        if self.kernel == "rbf":
            if isinstance(self.sigma, str):
                if self.sigma not in SIGMA_RULES:
                    raise UsageError(f"unknown rbf sigma {self.sigma!r}: a number or one of {', '.join(SIGMA_RULES)}")
            else:
                _check_sigma(self.sigma)

    def fit(self, X, y=None):
        """Learn the preprocessing, the RBF width and the scale from the training rows.

        Parameters
        ----------
        X : array-like or torch.Tensor, shape (n_train, d)
        y : ignored

        Returns
        -------
        self
        """
        self._fit(X)
        return self

    def fit_transform(self, X, y=None):
        """Fit, then return the scaled training Gram matrix (with an exactly unit RBF diagonal).

        Parameters
        ----------
        X : array-like or torch.Tensor, shape (n_train, d)
        y : ignored

        Returns
        -------
        K : np.ndarray, shape (n_train, n_train), float32
        """
        Xp = self._fit(X)
        return self._scaled(Xp, Xp, same=True)

    def _fit(self, X) -> torch.Tensor:
        """Fit and return the preprocessed training rows as a tensor on the device."""
        self._check_params()
        X = _estimator_features(self, X, reset=True, finite=self.scale == "none")
        if self.scale == "none":
            self.scaler_ = None
        else:
            self.scaler_ = InputScaler(self.scale, name=self.input_name).fit(X)
            X = self.scaler_.transform(X)
            _check_finite(X)
        device = resolve_device(self.device)
        if self.kernel == "hist":
            self.min_ = X.min(axis=0)
            self.max_ = X.max(axis=0)
        Xp = self._prep(X, device)
        if self.kernel == "rbf":
            self.sigma_ = _fit_sigma(Xp, self.sigma)
        self.scale_ = self._mean_diagonal(Xp) if self.unit_diagonal else 1.0
        self.X_fit_ = Xp.cpu().numpy()
        return Xp

    def _input(self, X) -> np.ndarray:
        """Validated rows (checked against ``n_features_in_``) after the fitted scaling, float32 and finite."""
        if self.scaler_ is None:
            return _estimator_features(self, X, reset=False)
        X = self.scaler_.transform(_estimator_features(self, X, reset=False, finite=False))
        _check_finite(X)
        return X

    @property
    def n_kernel_features_(self) -> int:
        """The number of columns the kernel itself sees: ``n_features_in_`` less the columns the scaling dropped."""
        return int(self.X_fit_.shape[1])

    def _prep(self, X: np.ndarray, device: torch.device) -> torch.Tensor:
        """The fitted preprocessing (the kernel's own) of validated, scaled rows, as a float32 tensor on ``device``."""
        X = _tensor(X, device)
        if self.kernel == "hist":
            low = torch.from_numpy(self.min_).to(device)
            span = torch.from_numpy(self.max_ - self.min_).to(device)
            # One (n, d) result, worked in place (the same float32 operations as where((X - low) / span, 0)).
            constant = span <= 0
            out = (X - low).div_(torch.where(constant, 1.0, span))
            return out.masked_fill_(constant, 0.0).clamp_(0.0, 1.0)
        norms = torch.linalg.vector_norm(X, dim=1, keepdim=True)
        return X / torch.where(norms > 0, norms, 1.0)

    def _mean_diagonal(self, Xp: torch.Tensor) -> float:
        n = Xp.shape[0]
        if self.kernel == "rbf":
            diagonal = 1.0
        elif n == 0:
            diagonal = float("nan")
        elif self.kernel == "hist":
            diagonal = float(_row_sum(Xp, lambda block: block.sum())) / n
        elif self.kernel == "linear":
            diagonal = float(_row_sum(Xp, lambda block: (block * block).sum())) / n
        else:
            c = float(self.offset)
            diagonal = float(_row_sum(Xp, lambda block: (((block * block).sum(1) + c) ** 2).sum())) / n
        if not diagonal > 0:
            raise _FeatureError(
                f"{self.kernel} kernel is 0 on every training row (n_samples={n}): nothing to scale to unit diagonal"
            )
        return diagonal

    def _scaled(self, A: torch.Tensor, B: torch.Tensor, *, same: bool) -> np.ndarray:
        """``K(A, B) / scale_`` for preprocessed rows A (n, d) and B (m, d) on one device."""
        sigma = self.sigma_ if self.kernel == "rbf" else 1.0
        K = _pairwise(self.kernel, A, B, same=same, offset=float(self.offset), sigma=sigma)
        if self.scale_ != 1.0:
            K /= np.float32(self.scale_)
        return K

    def preprocess(self, X) -> np.ndarray:
        """Apply the fitted preprocessing.

        Parameters
        ----------
        X : array-like or torch.Tensor, shape (n, d)

        Returns
        -------
        Xp : np.ndarray, shape (n, d), float32
        """
        check_is_fitted(self)
        return self._prep(self._input(X), resolve_device(self.device)).cpu().numpy()

    def transform(self, X) -> np.ndarray:
        """Scaled kernel against the training rows, ``K(X, X_train) / scale_``.

        Parameters
        ----------
        X : array-like or torch.Tensor, shape (n, d)

        Returns
        -------
        K : np.ndarray, shape (n, n_train), float32
        """
        check_is_fitted(self)
        device = resolve_device(self.device)
        return self._scaled(self._prep(self._input(X), device), _tensor(self.X_fit_, device), same=False)

    def gram(self, X, Y=None) -> np.ndarray:
        """Scaled kernel between any two sets of rows, with the fitted preprocessing.

        Parameters
        ----------
        X : array-like or torch.Tensor, shape (n, d)
        Y : array-like or torch.Tensor, shape (m, d), optional
            Defaults to X (then the RBF diagonal is exactly 1 / scale_).

        Returns
        -------
        K : np.ndarray, shape (n, m), float32
        """
        check_is_fitted(self)
        device = resolve_device(self.device)
        A = self._prep(self._input(X), device)
        if Y is None:
            return self._scaled(A, A, same=True)
        B = self._prep(self._input(Y), device)
        return self._scaled(A, B, same=False)

    def _state_keys(self) -> tuple[str, ...]:
        extra = {"hist": ("min_", "max_"), "rbf": ("sigma_",)}.get(self.kernel, ())
        return ("X_fit_", "scale_", "n_features_in_", *extra)

    def get_state(self) -> dict[str, np.ndarray]:
        """Fitted attributes as plain arrays (scalars as 0-d arrays), e.g. for safetensors.

        With a ``scale`` other than 'none', the scaler's arrays follow under ``scaler.`` (``scaler.columns``,
        ``scaler.center``, ``scaler.scale``, ``scaler.n_features_in``).

        Returns
        -------
        state : dict of str to np.ndarray
        """
        check_is_fitted(self)
        # C order: safetensors writes the raw buffer.
        state = {key: np.asarray(getattr(self, key), order="C") for key in self._state_keys()}
        if self.scaler_ is not None:
            state.update({f"scaler.{key}": np.ascontiguousarray(v) for key, v in self.scaler_.get_state().items()})
        return state

    def set_state(self, state) -> ElementaryKernel:
        """Restore the fitted attributes written by :meth:`get_state` (NumPy arrays or torch tensors).

        Parameters
        ----------
        state : mapping of str to array

        Returns
        -------
        self
        """
        self._check_params()
        missing = [key for key in self._state_keys() if key not in state]
        if missing:
            raise InputError(f"state of a {self.kernel} ElementaryKernel lacks {', '.join(missing)}")
        X_fit = np.ascontiguousarray(_as_array(state["X_fit_"]), dtype=np.float32)
        n_features = int(_as_array(state["n_features_in_"]).item())
        if self.scale == "none":
            self.scaler_ = None
            width = n_features
        else:
            prefix = "scaler."
            scaler_state = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
            if not scaler_state:
                raise InputError(f"state of a {self.kernel} ElementaryKernel with scale={self.scale!r} has no scaler "
                                 "(scaler.*): it was fitted with another scale")
            self.scaler_ = InputScaler(self.scale, name=self.input_name).set_state(scaler_state)
            if self.scaler_.n_features_in_ != n_features:
                raise InputError(f"{self.kernel} kernel state: the scaler takes {self.scaler_.n_features_in_} "
                                 f"features, the kernel {n_features}")
            width = len(self.scaler_.columns_)
        if X_fit.ndim != 2 or X_fit.shape[1] != width:
            raise InputError(f"{self.kernel} kernel state: X_fit_ has shape {X_fit.shape}, expected (n, {width})")
        self.X_fit_ = X_fit
        self.n_features_in_ = n_features
        self.scale_ = float(_as_array(state["scale_"]).item())
        if self.kernel == "hist":
            self.min_ = np.asarray(_as_array(state["min_"]), dtype=np.float32)
            self.max_ = np.asarray(_as_array(state["max_"]), dtype=np.float32)
        if self.kernel == "rbf":
            self.sigma_ = float(_as_array(state["sigma_"]).item())
        return self
