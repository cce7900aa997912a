"""Explicit feature maps of the elementary kernels (spec sections 4.1-4.4) and the kernel-PCA projection.

A map phi has ``<phi(x), phi(y)> ~= k(x, y)``: exactly for linear and poly2, by Nystrom / uncentred kernel PCA
on landmarks for RBF (spec 4.3), by Q-level unary codes for histogram intersection (spec 4.4). The maps carry
the same preprocessing and unit-diagonal scale as :class:`~genrecli.kernels.elementary.ElementaryKernel`, so
they approximate its :meth:`~genrecli.kernels.elementary.ElementaryKernel.gram`.
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from genrecli.device import resolve_device
from genrecli.errors import InputError, UsageError
from genrecli.kernels import (
    DEFAULT_ENERGY,
    DEFAULT_LEVELS,
    DEFAULT_OFFSET,
    DEFAULT_QUANTIZATION,
    DEFAULT_SIGMA,
    QUANTIZATIONS,
    get_kernel,
)
from genrecli.kernels.elementary import (
    _CACHE_ELEMENTS,
    ElementaryKernel,
    _apply,
    _as_array,
    _blocked,
    _estimator_features,
    _kernel_fill,
    _mirror_lower,
    _numba_popcount_gram,
    _pairwise,
    _squared_norms,
    _tensor,
)

# Landmark counts up to which the CPU eigendecomposition runs on one BLAS thread: its tridiagonal reduction is
# memory-bound, and on shared cores a 2-thread dsyevd of N = 1000 took 0.5-9 s against a steady 0.3 s on one.
_EIGH_ONE_THREAD = 2048
# The rbf map's float32 decomposition ('auto') is kept when every kept eigenvalue is at least this fraction of the
# largest: float32 resolves eigenvalues to about 1e-7 of the largest, so these to about 1 %.
_FLOAT32_EIGEN_FLOOR = 1e-5
EIGENSOLVERS = ("auto", "float64")
# Rows per block of the CPU rbf map: its (rows, N) kernel block and (rows, d) preprocessed rows stay near 4 MiB
# (1024 rows at N, d ~ 1000: smaller blocks cut OpenBLAS sgemm from ~77 to ~16 GFLOP/s on 2 shared cores).
_MAP_ELEMENTS = 16 * _CACHE_ELEMENTS
# Most kernel floats the rbf fit_transform computes beside the landmarks' eigensolve (16 MiB: at 1000 landmarks
# and d = 1024, 4096 rows, about what one core multiplies while a 1000 x 1000 ssyevd runs on the other).
_BESIDE_ELEMENTS = 1 << 22
# Smallest training kernel product (n N d multiply-adds) worth a second thread beside the eigensolve.
_BESIDE_MIN_PRODUCT = 1 << 26
# Largest Q of the bit-packed histogram map_gram (its popcount sums, Q d at most, stay exact in float32).
_PACKED_LEVELS = 255


def _l2_rows(X: np.ndarray) -> np.ndarray:
    """The rbf preprocessing (:meth:`ElementaryKernel._prep`: each row l2-normalised, zero rows kept) in NumPy,
    for the CPU row blocks (torch's small CPU ops leave its OpenMP threads spinning against OpenBLAS)."""
    norms = np.sqrt(np.einsum("ij,ij->i", X, X, dtype=np.float64)).astype(np.float32)
    return X / np.where(norms > 0, norms, np.float32(1.0))[:, None]


def _torch_matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``a @ b`` of float32 NumPy arrays by torch's CPU GEMM, into ``out`` (C-ordered) when given.

    For the products of a DM2KMN forward (:func:`map_grams_block`, :func:`column_grams_block`), which sit
    between torch's network and numba's popcounts: after an OpenBLAS (NumPy) GEMM its threads spin for a while,
    and on 2 cores they slowed the torch and numba steps after it; with every product in torch's thread pool
    the forward of 5000 rows took 0.40 s instead of 0.58 (bench/bench_dm2kmn.py --gflops, 2-core Xeon).
    """
    with warnings.catch_warnings():  # read-only inputs (a loaded model's arrays) are only read
        warnings.simplefilter("ignore", UserWarning)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    if out is None:
        return torch.matmul(ta, tb).numpy()
    torch.matmul(ta, tb, out=torch.from_numpy(out))
    return out


def _normalised_product(rows: np.ndarray, Zc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(l2-normalised rows) @ Zc^T, computed as the raw product with its rows divided by the norms after: an
    (n, s) pass instead of an (n, d) normalised copy. Returns the product and the rows' squared norms after
    normalisation (1, or 0 for a zero row)."""
    norms = np.sqrt(np.einsum("ij,ij->i", rows, rows, dtype=np.float64)).astype(np.float32)
    nonzero = norms > 0
    G = _torch_matmul(rows, Zc.T)
    G *= np.where(nonzero, np.float32(1.0) / np.where(nonzero, norms, np.float32(1.0)), np.float32(0.0))[:, None]
    return G, nonzero.astype(np.float32)


def _one_cpu_scaling(maps) -> bool:
    """Whether the maps of a block run on the CPU and scale their input alike (the same ``scale`` and equal
    fitted scalers): then one validated, scaled copy of a block serves them all."""
    if resolve_device(maps[0].device).type != "cpu" or any(em.scale != maps[0].scale for em in maps):
        return False
    if maps[0].kernel_.scaler_ is None:  # scale 'none' in every map
        return True
    states = [em.kernel_.scaler_.get_state() for em in maps]
    return all(np.array_equal(state[key], states[0][key]) for state in states[1:] for key in states[0])


def share_training_rows(maps) -> None:
    """Let the fitted maps of one input block whose preprocessed training rows are equal hold one array.

    A DM2KMN's linear, poly2 and rbf maps of a block each keep the same l2-normalised training rows (and its
    all-row rbf landmarks are those rows); with one array, :func:`map_grams_block` sees that they share their
    product by identity instead of comparing (n, d) arrays on every forward (about 1 ms of a 385-row forward).
    Values, and so every result, are unchanged.
    """
    kept: list[np.ndarray] = []

    def shared(rows: np.ndarray) -> np.ndarray:
        same = next((other for other in kept if other is rows or (other.shape == rows.shape
                     and other.dtype == rows.dtype and np.array_equal(other, rows))), None)
        if same is None:
            kept.append(rows)
            return rows
        return same

    for em in maps:
        em.kernel_.X_fit_ = shared(em.kernel_.X_fit_)
        if em.kernel == "rbf":  # all-row landmarks (a loaded model holds them as a separate copy)
            em.landmarks_ = shared(em.landmarks_)


def column_grams_block(maps, X, rows, out) -> None:
    """:meth:`ExplicitMap.column_gram` of every map of one input block into ``out`` (len(maps), n, s).

    The maps of a block are fitted on the same rows with the same feature scaling: on the CPU the block is
    validated and scaled once, and linear, poly2 and rbf, which see the same l2-normalised rows, share one
    product with the column rows, each kernel applying its function to a copy. Equal to the maps' own
    ``column_gram`` (same operations; tested). Elsewhere (another scaling per map, :func:`_one_cpu_scaling`;
    a GPU) each map on its own.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if not _one_cpu_scaling(maps):
        for i, em in enumerate(maps):
            out[i] = em.column_gram(X, rows)
        return
    A = maps[0]._validated(X)
    product = None
    for i, em in enumerate(maps):
        Zc = np.ascontiguousarray(em.kernel_.X_fit_[rows])
        if em.kernel == "hist":
            out[i] = em._column_gram_cpu(A, Zc)
            continue
        if product is None:  # the l2-normalised column rows are the same in linear, poly2 and rbf
            product = _normalised_product(A, Zc)
        out[i] = product[0]
        em._apply_to_product(out[i], product[1], Zc)


def map_grams_block(maps, X, out) -> None:
    """:meth:`ExplicitMap.map_gram` of every map of one input block against its training rows, into ``out``
    (len(maps), n, N): a DM2KMN's input Grams of new rows against its N landmarks.

    On the CPU, where the maps share their feature scaling, the block is validated and scaled once and the
    kernels that see l2-normalised rows share one product with the training rows: linear and poly2 (exact
    kernels against ``X_fit_``) and rbf (its kernel against its landmarks, when they are the training rows,
    then one operator folding the projection and the training rows' map,
    :meth:`ExplicitMap._rbf_gram_operator`). Before, each of the 4 maps of a block validated X and ran its
    own (n, d) x (d, N) product. The values equal the maps' own ``map_gram`` to float32 rounding (the row
    norms are divided out of the product instead of into the rows; tests/test_kernels_maps.py bounds the
    difference). On a GPU, or with another scaling per map (:func:`_one_cpu_scaling`), each map runs its own
    ``map_gram``.
    """
    if not _one_cpu_scaling(maps):
        for i, em in enumerate(maps):
            out[i] = em.map_gram(X)
        return
    A = maps[0]._validated(X)
    shared: list[tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]] = []  # (columns, their product with A)

    def product(Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        for columns, done in shared:
            if columns is Z or (columns.shape == Z.shape and np.array_equal(columns, Z)):
                return done
        done = _normalised_product(A, Z)
        shared.append((Z, done))
        return done

    for i, em in enumerate(maps):
        if em.kernel == "hist":
            out[i] = em._hist_map_gram(X, None, validated=A) if em._packed_ok() else em.map_gram(X)
            continue
        Z = em.landmarks_ if em.kernel == "rbf" else em.kernel_.X_fit_
        G, nonzero = product(Z)
        if em.kernel != "rbf":
            out[i] = G
            em._apply_to_product(out[i], nonzero, Z)
            continue
        k = em._apply_to_product(G.copy(), nonzero, Z)  # the rbf kernel against the landmarks
        operator = em._rbf_gram_operator()
        if operator is None:
            _torch_matmul(_torch_matmul(k, em.projection_), em._training_map(torch.device("cpu")).T, out=out[i])
        else:
            _torch_matmul(k, operator, out=out[i])


_PARALLEL_MIN_WORK = 1 << 24


@functools.cache
def _numba_hist_level():
    """The compiled hist level of one raw value, or None without numba: v = clip((x - low) / span, 0, 1) in
    float32 (0 where span <= 0), level = floor(Q v (+ 1/2)) in float64 (as :meth:`ExplicitMap._levels`, so a
    value on a level boundary stays on it). Preprocessed rows (already v) take low 0 and span 1, which leave
    them as they are."""
    try:
        import numba
    except ImportError:
        return None

    @numba.njit(cache=True, inline="always")
    def hist_level(x, low, span, Q, rounding):
        if span <= 0:
            v = np.float32(0.0)
        else:
            v = np.float32(np.float32(x - low) / span)
            v = min(max(v, np.float32(0.0)), np.float32(1.0))
        t = np.float64(v) * Q
        if rounding:
            t += 0.5
        return math.floor(t)

    return hist_level


@functools.cache
def _numba_pack_levels():
    """Compiled CPU kernel writing the bit-packed unary hist levels of rows (:meth:`ExplicitMap._packed_levels`)
    in one pass per row, or None without numba: bits j of word blocks 0 .. level - 1 set, the level of each
    value from :func:`_numba_hist_level`. The NumPy passes it replaces (subtract, divide, clip, upcast, scale,
    floor, one comparison and packbits per level) were 10-15 % of a DM2KMN forward.
    """
    level_of = _numba_hist_level()
    if level_of is None:
        return None
    import numba

    @numba.njit(cache=True)
    def pack_row(x, low, span, Q, rounding, words, out):
        level = np.empty(64, dtype=np.int64)
        d = x.shape[0]
        for w in range(words):
            j0 = w * 64
            width = min(64, d - j0)
            for b in range(width):
                level[b] = level_of(x[j0 + b], low[j0 + b], span[j0 + b], Q, rounding)
            for k in range(Q):  # one word per level: bit b set where feature j0 + b reaches level k + 1
                word = np.uint64(0)
                for b in range(width):
                    word |= np.uint64(level[b] > k) << np.uint64(b)
                out[k * words + w] = word

    @numba.njit(parallel=True, cache=True)
    def pack_parallel(X, low, span, Q, rounding, out):
        words = (X.shape[1] + 63) // 64
        for i in numba.prange(X.shape[0]):
            pack_row(X[i], low, span, Q, rounding, words, out[i])

    @numba.njit(cache=True)
    def pack_serial(X, low, span, Q, rounding, out):
        words = (X.shape[1] + 63) // 64
        for i in range(X.shape[0]):
            pack_row(X[i], low, span, Q, rounding, words, out[i])

    def pack(X, low, span, Q, rounding):
        out = np.zeros((X.shape[0], Q * ((X.shape[1] + 63) // 64)), dtype=np.uint64)
        kernel = pack_parallel if X.size * Q >= _PARALLEL_MIN_WORK else pack_serial
        kernel(X, low, span, int(Q), bool(rounding), out)
        return out

    return pack


@functools.cache
def _numba_level_minsum():
    """Compiled CPU kernel: hist levels of raw rows and their min-sum against column levels in one pass, or
    None without numba.

    Per row: v = clip((x - low) / span, 0, 1) in float32 (0 where span <= 0), level = floor(Q v (+ 1/2)) in
    float64 (as :meth:`ExplicitMap._levels`, so a value on a level boundary stays on it), then
    ``sum_j min(level_j, qb_kj)`` for every column k. No (n, d) temporary.
    """
    level_of = _numba_hist_level()
    if level_of is None:
        return None
    import numba

    @numba.njit(cache=True)
    def levels_row(x, low, span, Q, rounding, out):
        for j in range(x.shape[0]):
            out[j] = np.float32(level_of(x[j], low[j], span[j], Q, rounding))

    # fastmath only on the min-sum (it vectorises), in a function of its own that takes the levels: with the
    # levels computed inside the fastmath function (levels_row inlined into it), numba 0.68 put a value on a
    # level boundary a level down (x / span = 183/244 = 0.75 of a span gave level 7, not round(7.5) = 8).
    @numba.njit(fastmath=True, cache=True)
    def minsum_row(q, qb, out_row):
        for k in range(qb.shape[0]):
            b = qb[k]
            s = np.float32(0.0)
            for j in range(q.shape[0]):
                s += min(q[j], b[j])
            out_row[k] = s

    @numba.njit(cache=True)
    def row_minsum(X, low, span, Q, rounding, qb, out, i):
        q = np.empty(X.shape[1], dtype=np.float32)
        levels_row(X[i], low, span, Q, rounding, q)
        minsum_row(q, qb, out[i])

    @numba.njit(parallel=True, cache=True)
    def parallel(X, low, span, Q, rounding, qb, out):
        for i in numba.prange(X.shape[0]):
            row_minsum(X, low, span, Q, rounding, qb, out, i)

    @numba.njit(cache=True)
    def serial(X, low, span, Q, rounding, qb, out):
        for i in range(X.shape[0]):
            row_minsum(X, low, span, Q, rounding, qb, out, i)

    def level_minsum(X, low, span, Q, rounding, qb, out):
        # below ~16M min-adds numba's thread pool costs more than it saves: on 2 shared cores its workers,
        # OpenBLAS's and torch's spin against each other between the small calls of one forward pass
        work = X.shape[0] * X.shape[1] * qb.shape[0]
        (serial if work < _PARALLEL_MIN_WORK else parallel)(X, low, span, Q, rounding, qb, out)

    return level_minsum


def _eigh_in_place(K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and eigenvectors (columns) of the symmetric C-ordered K, overwriting it.

    LAPACK ?syevd (SciPy's OpenBLAS) in K's precision, float64 or float32, as torch.linalg.eigh on the CPU, but
    in place: the vectors are written over K (its transpose is the same Fortran-ordered matrix), so nothing
    beyond the solver's workspace is allocated. The BLAS thread limit changes no call already running, such as
    the product :func:`_beside_eigensolve` runs beside it, and is undone on return.
    """
    from scipy.linalg import eigh
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1 if K.shape[0] <= _EIGH_ONE_THREAD else None, user_api="blas"):
        return eigh(K.T, overwrite_a=True, check_finite=False, driver="evd")


@functools.lru_cache(maxsize=1)
def _blas_libraries():
    """threadpoolctl controllers of NumPy's BLAS and of SciPy's (the one its LAPACK calls), or None where they
    are not two separate libraries found in the packages' own folders (the PyPI wheels each bundle one
    OpenBLAS; a conda or system install shares one BLAS, which cannot be limited for one caller alone)."""
    import os

    import scipy.linalg  # loads SciPy's BLAS, so that threadpoolctl sees it
    from threadpoolctl import ThreadpoolController

    blas = ThreadpoolController().select(user_api="blas").lib_controllers

    def owned_by(package_file: str):
        folder = os.path.dirname(package_file)  # the package, and the wheel's "<package>.libs" beside it
        roots = tuple(os.path.realpath(f) + os.sep for f in (folder, folder + ".libs"))
        found = [c for c in blas if os.path.realpath(c.filepath).startswith(roots)]
        return found[0] if len(found) == 1 else None

    ours, theirs = owned_by(np.__file__), owned_by(scipy.__file__)
    if ours is None or theirs is None:  # a library under both packages' folders cannot be: not the same one
        return None
    return ours, theirs


def _beside_eigensolve(solve, product):
    """``solve()`` (the landmarks' kernel and its eigensolve, on one thread of SciPy's BLAS) in this thread while
    ``product()``, one NumPy matrix product, runs in a second thread on NumPy's BLAS with the remaining threads;
    returns ``solve()``'s result and whether ``product`` ran (False: the caller computes it afterwards).

    Why: SciPy's tridiagonal reduction is memory-bound and runs on one thread, so on 2 cores the second core
    idled through it; now it computes training rows' kernel against the landmarks, which needs no eigenvector
    (the rbf map's fit_transform). SciPy's LAPACK wrappers hold the GIL for the whole solve, so the second
    thread can run only one call that releases it, started before the solve: a single product, not a loop of
    Python steps. Where the split is impossible (one BLAS shared by NumPy and SciPy, or one BLAS thread in all)
    ``product`` is not run.
    """
    import threading

    libraries = _blas_libraries()
    threads = libraries[0].num_threads if libraries is not None else 1
    if libraries is None or threads < 2:
        return solve(), False
    started, failure = threading.Event(), []

    def run():
        started.set()
        try:
            product()
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    worker = threading.Thread(target=run, name="genre-kernel-rows", daemon=True)
    lapack_threads = libraries[1].num_threads
    libraries[0].set_num_threads(threads - 1)
    libraries[1].set_num_threads(1)
    try:
        worker.start()
        started.wait()  # the product holds no GIL once it runs, which it does before the solve takes the GIL
        try:
            solved = solve()
        finally:
            worker.join()
    finally:
        libraries[0].set_num_threads(threads)
        libraries[1].set_num_threads(lapack_threads)
    if failure:
        raise failure[0]
    return solved, True


def _projection_cpu(K: np.ndarray, energy: float, rel_eps: float, allow_empty: bool, dtype) -> np.ndarray | None:
    """:func:`kpca_projection` of an owned C-ordered K on the CPU, decomposed in K's precision (float64 or
    float32; K is overwritten); None: no positive eigenvalue and ``allow_empty`` (the caller returns its zero
    projection)."""
    if not np.isfinite(K).all():
        raise InputError("kernel PCA: the kernel matrix contains NaN/inf")
    if not np.array_equal(K, K.T):
        # Symmetrising removes float32 round-off (eigh reads one triangle only); an exactly symmetric K (every
        # CPU self-Gram of the toolkit) is left as it is, which is the same.
        K += K.T
        K *= 0.5
    w, U = _eigh_in_place(K)
    N = w.shape[0]
    eigenvalues = w[::-1].astype(np.float64)
    top = float(eigenvalues[0])
    if not top > 0:
        if allow_empty:
            return None
        raise InputError("kernel PCA: the kernel matrix has no positive eigenvalue, so there is no map to build")
    eigenvalues = np.maximum(eigenvalues, 0.0)
    rank = _kept_rank(eigenvalues, energy, rel_eps)
    # The top-rank vectors in decreasing order, divided and rounded in one pass into the C-ordered result.
    P = np.empty((N, rank), dtype=dtype)
    np.divide(U[:, N - rank :][:, ::-1], np.sqrt(eigenvalues[:rank]), out=P, casting="same_kind")
    return P


def _kept_rank(eigenvalues: np.ndarray, energy: float, rel_eps: float) -> int:
    """The kernel PCA's rank r of decreasing non-negative float64 eigenvalues (see :func:`kpca_projection`)."""
    cumulative = np.cumsum(eigenvalues)
    rank = int(np.searchsorted(cumulative, energy * cumulative[-1])) + 1
    usable = int(((eigenvalues > 0) & (eigenvalues >= rel_eps * eigenvalues[0])).sum())
    return min(rank, usable)


def _projection_cpu_auto(K: np.ndarray, energy: float, rel_eps: float) -> np.ndarray:
    """The rbf map's projection of the float32 C-ordered K (not overwritten), ``eigensolver='auto'``.

    LAPACK ssyevd first (half dsyevd's time, half its memory); the float64 solve of :func:`_projection_cpu`
    instead when the kept rank reaches an eigenvalue below ``_FLOAT32_EIGEN_FLOOR`` of the largest, where
    float32's eigenvalue error (about 1e-7 of the largest) is no longer small against the eigenvalue the map
    divides by. Above it the two maps differ by float32 rounding and, within clusters of close eigenvalues, by a
    rotation, which leaves their inner products alone: their map Grams agree to ~1e-4 of the kernel's
    scale, two orders below the Nystrom approximation's own error (tests/test_kernels_maps.py).
    """
    K32 = np.array(K, dtype=np.float32, order="C")
    P = _projection_cpu(K32, energy, rel_eps, False, np.float32)
    del K32
    # The eigenvalue the last kept column was divided by: the squared reciprocal of that column's norm.
    smallest = 1.0 / float(np.dot(P[:, -1].astype(np.float64), P[:, -1]))
    largest = 1.0 / float(np.dot(P[:, 0].astype(np.float64), P[:, 0]))
    if smallest >= _FLOAT32_EIGEN_FLOOR * largest:
        return P
    del P
    return _projection_cpu(K.astype(np.float64), energy, rel_eps, False, np.float32)


def kpca_projection(K_landmarks, *, energy=DEFAULT_ENERGY, rel_eps=1e-10, allow_empty=False):
    """Projection of the uncentred kernel PCA (Nystrom) map on N landmarks (spec 4.3 and 6.3).

    With ``K_Z = U Lambda U^T`` (eigenvalues in decreasing order), keeps the smallest rank r whose eigenvalues
    hold ``energy`` of the eigenvalue sum, less any eigenvalue below ``rel_eps * lambda_1``, and returns
    ``P = U_r Lambda_r^{-1/2}``. The map of x is then ``phi(x) = k_Z(x) @ P`` and on the landmarks
    ``Phi_Z Phi_Z^T = U_r Lambda_r U_r^T``, the best rank-r approximation of K_Z. K_Z is not centred: the map
    must approximate the kernel itself.

    The one kernel-PCA of the toolkit: the rbf input map (:class:`ExplicitMap`) and every unit of the DM2KMN
    (:func:`genrecli.models.dm2kmn.build_projections`) use it. The decomposition is float64 (``rel_eps`` of
    1e-10 is far below float32 resolution) on the input's device, of ``(K + K^T) / 2``; on the CPU it is
    LAPACK dsyevd in place on one float64 copy of K (one BLAS thread up to 2048 landmarks). The rbf map on the
    CPU decomposes in float32 first by default (its ``eigensolver='auto'``, ``_projection_cpu_auto``).

    Parameters
    ----------
    K_landmarks : array-like or torch.Tensor, shape (N, N)
        Symmetric PSD kernel matrix of the landmarks. A torch tensor is decomposed on its own device.
    energy : float in (0, 1], keyword-only
    rel_eps : float >= 0, keyword-only
    allow_empty : bool, keyword-only
        When K_Z has no positive eigenvalue: return an (N, 1) zero projection (a map that is identically 0)
        instead of raising :class:`InputError`.

    Returns
    -------
    P : np.ndarray (N, r) float32 for array-like input; torch.Tensor (N, r) on the input's device, in its
        floating dtype (float32 for integer tensors), for tensor input. C-ordered.
    """
    if not 0 < energy <= 1:
        raise UsageError(f"kernel PCA energy must be in (0, 1], got {energy!r}")
    if not rel_eps >= 0:
        raise UsageError(f"kernel PCA rel_eps must be >= 0, got {rel_eps!r}")
    as_tensor = isinstance(K_landmarks, torch.Tensor)
    if as_tensor:
        out_dtype = K_landmarks.dtype if K_landmarks.is_floating_point() else torch.float32
    else:
        K_landmarks, out_dtype = np.asarray(K_landmarks), torch.float32
    shape = tuple(K_landmarks.shape)
    if len(shape) != 2 or shape[0] != shape[1] or shape[0] == 0:
        raise InputError(f"kernel PCA needs a non-empty square kernel matrix, got shape {shape}")
    if not as_tensor or K_landmarks.device.type == "cpu":
        # On the CPU: one float64 copy, decomposed in place (no separate eigenvector matrix).
        host = K_landmarks.detach().numpy() if as_tensor else K_landmarks
        np_dtype = {torch.float64: np.float64, torch.float16: np.float16}.get(out_dtype, np.float32)
        P = _projection_cpu(np.array(host, dtype=np.float64, order="C"), energy, rel_eps, allow_empty, np_dtype)
        P = torch.zeros(shape[0], 1, dtype=out_dtype) if P is None else torch.from_numpy(P).to(out_dtype)
        return P if as_tensor else P.numpy()
    K = K_landmarks.detach().to(torch.float64)
    if not bool(torch.isfinite(K).all()):
        raise InputError("kernel PCA: the kernel matrix contains NaN/inf")
    # Symmetrising removes float32 round-off (eigh reads one triangle only).
    eigenvalues, U = torch.linalg.eigh(0.5 * (K + K.T))
    eigenvalues, U = eigenvalues.flip(0), U.flip(1)
    top = float(eigenvalues[0])
    if not top > 0:
        if allow_empty:
            P = torch.zeros(K.shape[0], 1, dtype=out_dtype, device=K.device)
            return P if as_tensor else P.cpu().numpy()
        raise InputError("kernel PCA: the kernel matrix has no positive eigenvalue, so there is no map to build")
    # Negative eigenvalues of a PSD matrix are round-off: they hold no energy.
    eigenvalues = eigenvalues.clamp(min=0.0)
    cumulative = torch.cumsum(eigenvalues, 0)
    rank = int(torch.searchsorted(cumulative, energy * cumulative[-1])) + 1
    usable = int(((eigenvalues > 0) & (eigenvalues >= rel_eps * top)).sum())
    rank = min(rank, usable)
    # eigh returns column-major vectors; the projection is handed out C-ordered, as safetensors expects.
    P = (U[:, :rank] / eigenvalues[:rank].sqrt()).to(out_dtype).contiguous()
    return P if as_tensor else P.cpu().numpy()


class ExplicitMap(TransformerMixin, BaseEstimator):
    """Explicit map phi of an elementary kernel: ``<phi(x), phi(y)> ~= ElementaryKernel.gram(x, y)``.

    =========  =================================================================  ==========
    kernel     map (divided by sqrt(scale_))                                      exact
    =========  =================================================================  ==========
    linear     preprocessed x                                                     yes
    poly2      ``[x_j^2, sqrt(2) x_j x_k (j < k), sqrt(2c) x_j, c]``              yes
    rbf        ``K(x, Z) @ P``, Nystrom / kernel PCA on landmarks Z (``energy``)  no
    hist       Q-level unary (thermometer) code of the [0, 1]-scaled features     no
    =========  =================================================================  ==========

    Parameters
    ----------
    kernel, offset, sigma, unit_diagonal, scale, input_name, device
        As in :class:`~genrecli.kernels.elementary.ElementaryKernel`: ``scale`` is the per-input feature
        scaling fitted on the training rows (default 'none'), applied before the kernel's preprocessing; the
        map is of the scaled rows (its dimension counts the kept columns).
    energy : float in (0, 1], keyword-only
        rbf: eigenvalue energy kept by the kernel PCA.
    landmarks : 'all' or int, keyword-only
        rbf: all training rows, or that many drawn with ``random_state`` (all when at least n_train).
    levels : int, keyword-only
        hist: the number Q of quantization levels.
    quantization : {'round', 'floor'}, keyword-only
        hist: level of v is ``floor(Q v + 1/2)`` (at most d / (2Q) kernel error) or ``floor(Q v)`` (under by
        at most d / Q).
    max_dim : int, keyword-only
        poly2: largest map :meth:`transform` materialises; :meth:`map_gram` has no limit.
    eigensolver : {'auto', 'float64'}, keyword-only
        rbf on the CPU: how the landmarks' kernel is decomposed. 'auto' (the default): in float32, and again in
        float64 when a kept eigenvalue is below 1e-5 of the largest (``_projection_cpu_auto``); 'float64':
        always in float64, as :func:`kpca_projection` and before 'auto' existed. On other devices: float64.
    random_state : int, RandomState or None, keyword-only

    Attributes
    ----------
    kernel_ : ElementaryKernel
        The fitted kernel: preprocessing, ``sigma_`` and ``scale_``.
    dim_ : int
        Map dimension.
    exact_ : bool
        True for linear and poly2.
    landmarks_ : np.ndarray, shape (N, d), float32
        rbf only: preprocessed landmark rows.
    landmark_indices_ : np.ndarray, shape (N,), int64
        rbf only: their training-row indices.
    projection_ : np.ndarray, shape (N, dim_), float32
        rbf only: the :func:`kpca_projection` of the scaled landmark Gram matrix.
    n_features_in_ : int
    """

    def __init__(
        self,
        kernel="rbf",
        *,
        offset=DEFAULT_OFFSET,
        sigma=DEFAULT_SIGMA,
        unit_diagonal=True,
        scale="none",
        input_name=None,
        energy=DEFAULT_ENERGY,
        landmarks="all",
        levels=DEFAULT_LEVELS,
        quantization=DEFAULT_QUANTIZATION,
        max_dim=200_000,
        eigensolver="auto",
        random_state=None,
        device="cpu",
    ):
        self.kernel = kernel
        self.offset = offset
        self.sigma = sigma
        self.unit_diagonal = unit_diagonal
        self.scale = scale
        self.input_name = input_name
        self.energy = energy
        self.landmarks = landmarks
        self.levels = levels
        self.quantization = quantization
        self.max_dim = max_dim
        self.eigensolver = eigensolver
        self.random_state = random_state
        self.device = device

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags

    def _check_params(self) -> None:
        if not 0 < self.energy <= 1:
            raise UsageError(f"energy must be in (0, 1], got {self.energy!r}")
        if self.landmarks != "all" and not (
            isinstance(self.landmarks, numbers.Integral) and not isinstance(self.landmarks, bool) and self.landmarks > 0
        ):
            raise UsageError(f"landmarks must be 'all' or a positive integer, got {self.landmarks!r}")
        if not (isinstance(self.levels, numbers.Integral) and self.levels > 0):
            raise UsageError(f"hist levels must be a positive integer, got {self.levels!r}")
        if self.quantization not in QUANTIZATIONS:
            raise UsageError(f"unknown quantization {self.quantization!r}: choose one of {', '.join(QUANTIZATIONS)}")
        if self.eigensolver not in EIGENSOLVERS:
            raise UsageError(f"unknown eigensolver {self.eigensolver!r}: choose one of {', '.join(EIGENSOLVERS)}")

    def _make_kernel(self) -> ElementaryKernel:
        return ElementaryKernel(
            self.kernel, offset=self.offset, sigma=self.sigma, unit_diagonal=self.unit_diagonal, scale=self.scale,
            input_name=self.input_name, device=self.device,
        )

    def fit(self, X, y=None):
        """Fit the kernel on the training rows and, for rbf, the landmarks and their projection.

        Parameters
        ----------
        X : array-like or torch.Tensor, shape (n_train, d)
        y : ignored

        Returns
        -------
        self
        """
        return self._fit(X)

    def _fit(self, X, _training_kernel: dict | None = None):
        """:meth:`fit`; with a dict ``_training_kernel`` (rbf, CPU), kernel blocks of the training rows against
        the landmarks computed beside the eigensolve (:func:`_beside_eigensolve`) are added to it for
        :meth:`_rbf_rows`."""
        self._check_params()
        X = _estimator_features(self, X, reset=True, finite=False)  # the kernel checks them, after its scaling
        self.kernel_ = self._make_kernel().fit(X)
        if self.kernel == "rbf":
            n = X.shape[0]
            if self.landmarks == "all" or self.landmarks >= n:
                indices = np.arange(n)
            else:
                indices = np.sort(check_random_state(self.random_state).choice(n, self.landmarks, replace=False))
            device = resolve_device(self.device)
            self.landmark_indices_ = indices.astype(np.int64)
            # All rows: the training rows themselves (no copy; a DM2KMN's forward then sees at once that the rbf
            # map's product with its landmarks is the one linear and poly2 share, without comparing them).
            self.landmarks_ = self.kernel_.X_fit_ if len(indices) == n else self.kernel_.X_fit_[indices]
            Z = _tensor(self.landmarks_, device)
            if device.type != "cpu":
                K_Z = self.kernel_._scaled(Z, Z, same=True)
                self.projection_ = kpca_projection(torch.from_numpy(K_Z).to(device), energy=self.energy).cpu().numpy()
            else:
                solve = functools.partial(self._cpu_projection, Z)
                d = self.landmarks_.shape[1]
                if (_training_kernel is None or len(indices) > _EIGH_ONE_THREAD
                        or n * len(indices) * d < _BESIDE_MIN_PRODUCT):
                    self.projection_ = solve()
                else:
                    product, blocks = self._training_kernel_beside()
                    self.projection_, ran = _beside_eigensolve(solve, product)
                    if ran:
                        _training_kernel.update(blocks())
        self._training_rbf_map = self._rbf_operator = None
        self._set_dims()
        return self

    def _cpu_projection(self, Z) -> np.ndarray:
        """The projection of the landmarks ``Z`` (preprocessed, a CPU tensor): their scaled kernel, decomposed
        as ``eigensolver`` says."""
        K_Z = self.kernel_._scaled(Z, Z, same=True)
        if self.eigensolver == "auto":
            return _projection_cpu_auto(K_Z, self.energy, 1e-10)
        # The float32 K_Z is dropped before the decomposition, which works in place on its float64 copy.
        K_Z = K_Z.astype(np.float64)
        return _projection_cpu(K_Z, self.energy, 1e-10, False, np.float32)

    def fit_transform(self, X, y=None):
        """``fit(X).transform(X)``, the rbf map on the CPU from the rows the fit prepared (not checked and
        scaled again). With up to ``_EIGH_ONE_THREAD`` landmarks, while the landmarks' kernel is decomposed on
        one core, the other cores multiply the first training rows by the landmarks (up to ``_BESIDE_ELEMENTS``
        kernel floats, 16 MiB, held until the map is done; :func:`_beside_eigensolve`): same result, about
        0.18 s instead of 0.22 s at n = 5000, d = 1024 and 1000 landmarks on 2 cores.

        Parameters
        ----------
        X : array-like or torch.Tensor, shape (n_train, d)
        y : ignored

        Returns
        -------
        Phi : np.ndarray, shape (n_train, dim_), float32
        """
        device = resolve_device(self.device)
        if self.kernel != "rbf" or device.type != "cpu":
            return self.fit(X).transform(X)
        # The kernel blocks a second thread computes during the landmarks' eigensolve are the ones _rbf_rows would
        # compute (the same rows, products and operations), so the result is the same as without them.
        computed = {}
        return self._fit(X, computed)._rbf_rows(None, device, computed=computed)

    def _set_dims(self) -> None:
        d = self.kernel_.n_kernel_features_
        self.exact_ = get_kernel(self.kernel).exact_map
        if self.kernel == "linear":
            self.dim_ = d
        elif self.kernel == "poly2":
            # With c = 0 the linear and constant parts of the map are 0 and left out.
            self.dim_ = d * (d + 1) // 2 + (d + 1 if float(self.offset) > 0 else 0)
        elif self.kernel == "rbf":
            self.dim_ = self.projection_.shape[1]
        else:
            self.dim_ = d * self.levels

    def _rows(self, X, device: torch.device) -> torch.Tensor:
        """Preprocessed rows of X, or the training rows when X is None."""
        if X is None:
            return _tensor(self.kernel_.X_fit_, device)
        return self._prepared(X, device)

    def _prepared(self, X, device: torch.device) -> torch.Tensor:
        """Rows of X after the kernel's scaling and preprocessing."""
        X = _estimator_features(self, X, reset=False, finite=False)
        return self.kernel_._prep(self.kernel_._input(X), device)

    def _packed_levels(self, X, *, validated=None) -> np.ndarray:
        """The hist map of X (the training rows when None) bit-packed: (n, Q * ceil(d / 64)) uint64 words.

        Word block t of a row has bit j set where feature j's level is at least t + 1: the unary code, level by
        level, so ``popcount(a & b)`` summed over the words is ``sum_j min(q(x_j), q(y_j))``. One compiled
        pass per row (:func:`_numba_pack_levels`; callers check :meth:`_packed_ok`): no (n, d) intermediate.
        """
        if X is None:  # the training rows, preprocessed already: low 0 and span 1 leave them as they are
            rows = self.kernel_.X_fit_
            low, span = np.zeros(rows.shape[1], np.float32), np.ones(rows.shape[1], np.float32)
        else:
            rows = validated if validated is not None else self._validated(X)
            low = np.ascontiguousarray(self.kernel_.min_, dtype=np.float32)
            span = np.ascontiguousarray(self.kernel_.max_ - self.kernel_.min_, dtype=np.float32)
        return _numba_pack_levels()(np.ascontiguousarray(rows, dtype=np.float32), low, span, self.levels,
                                    self.quantization == "round")

    def _packed_ok(self) -> bool:
        """Whether the CPU hist map_gram can use bit-packed levels (Q <= 255, numba present)."""
        return self.levels <= _PACKED_LEVELS and _numba_popcount_gram() is not None and _numba_pack_levels() is not None

    def _packed_training_levels(self) -> np.ndarray:
        """:meth:`_packed_levels` of the training rows, computed once per ``kernel_.X_fit_`` (a fit, set_state or
        a replaced X_fit_ brings a new array): a DM2KMN scores block after block against the same rows."""
        cached = getattr(self, "_packed_training", None)
        if cached is None or cached[0] is not self.kernel_.X_fit_:
            cached = self._packed_training = (self.kernel_.X_fit_, self._packed_levels(None))
        return cached[1]

    def _hist_map_gram(self, X, Y, *, validated=None) -> np.ndarray:
        """CPU hist map_gram from bit-packed unary codes: exact integer counts, half of them when X is Y.
        ``validated``: the rows of X already checked and scaled (:meth:`_validated`)."""
        A = self._packed_levels(X, validated=validated)
        B = A if X is None and Y is None else self._packed_training_levels() if Y is None else self._packed_levels(Y)
        same = B is A or (A.shape == B.shape and np.array_equal(A, B))
        G = np.empty((A.shape[0], B.shape[0]), dtype=np.float32)
        _numba_popcount_gram()(A, A if same else B, G, same)
        if same:
            _mirror_lower(G)
        G /= np.float32(self.levels * self.kernel_.scale_)
        return G

    def _levels(self, A: torch.Tensor) -> torch.Tensor:
        # float64: Q * v is then exact for float32 v, so a value on a level boundary is never pushed across it.
        scaled = A.double() * self.levels
        levels = torch.floor(scaled + 0.5) if self.quantization == "round" else torch.floor(scaled)
        return levels.float()

    def _validated(self, X) -> np.ndarray:
        """Rows of X checked and scaled as the kernel's input, before its preprocessing (NumPy, float32)."""
        return self.kernel_._input(_estimator_features(self, X, reset=False, finite=False))

    def _rbf_rows(self, X, device: torch.device, *, computed: dict | None = None) -> np.ndarray:
        """The rbf map of X, or of the training rows when X is None.

        On the CPU in row blocks of about ``_MAP_ELEMENTS``: each block is preprocessed, its kernel against
        the landmarks computed by one sgemm and the RBF function in place, then multiplied by the projection
        straight into the result: beyond the (n, dim_) result only a block is allocated. ``computed`` (X None
        only): kernel blocks of the training rows computed already (:meth:`_training_kernel_beside`), by their
        first row; each is taken out of the dict as it is used.
        """
        prepared = X is None
        rows = self.kernel_.X_fit_ if prepared else self._validated(X)
        if device.type != "cpu":
            return self._rbf_map(_tensor(rows, device) if prepared else self.kernel_._prep(rows, device))
        P = self.projection_
        (N, r), n = P.shape, rows.shape[0]
        block, product, finish = self._rbf_blocks(rows.shape)
        computed = {} if computed is None else computed
        k = None
        out = np.empty((n, r), dtype=np.float32)
        for start in range(0, n, block):
            stop = min(n, start + block)
            kb = computed.pop(start, None)  # popped: the blocks' buffer is freed once all are multiplied
            if kb is None:
                k = np.empty((block, N), dtype=np.float32) if k is None else k
                kb = k[: stop - start]
                a = rows[start:stop] if prepared else _l2_rows(rows[start:stop])
                product(a, kb)
                finish(a, kb)
            np.matmul(kb, P, out=out[start:stop])
        return out

    def _rbf_blocks(self, shape):
        """Rows per block of the CPU rbf map of ``shape`` (n, d) rows, ``product(a, out)``, the product of
        preprocessed rows ``a`` with the landmarks into ``out`` (len(a), N), and ``finish(a, out)``, which turns
        that product into the scaled rbf kernel in place."""
        Z = self.landmarks_
        sq_z = _squared_norms(Z)
        g = np.float32(0.5 / self.kernel_.sigma_**2)
        scale = np.float32(self.kernel_.scale_)

        def product(a, out):
            np.matmul(a, Z.T, out=out)

        def finish(a, out):
            _apply("rbf", out, _squared_norms(a), sq_z, offset=0.0, g=g)
            if scale != 1:
                out /= scale

        n, d = shape
        return max(1, min(n, _MAP_ELEMENTS // max(1, Z.shape[0], d))), product, finish

    def _training_kernel_beside(self):
        """The work :func:`_beside_eigensolve` can do for :meth:`_rbf_rows` of the training rows: ``product()``,
        one product of the first rows with the landmarks (whole blocks of :meth:`_rbf_rows`, at most
        ``_BESIDE_ELEMENTS`` floats), and ``blocks()``, which afterwards finishes it into kernel blocks
        ``{start row: (rows, N) block}`` (views of one buffer)."""
        rows = self.kernel_.X_fit_
        n, N = rows.shape[0], self.landmarks_.shape[0]
        block, product, finish = self._rbf_blocks(rows.shape)
        m = min(n, max(block, _BESIDE_ELEMENTS // max(1, N) // block * block))
        K = np.empty((m, N), dtype=np.float32)

        def blocks() -> dict:
            out = {}
            for start in range(0, m, block):
                stop = min(m, start + block)
                finish(rows[start:stop], K[start:stop])
                out[start] = K[start:stop]
            return out

        return functools.partial(product, rows[:m], K), blocks

    def _training_map(self, device: torch.device) -> np.ndarray:
        """The rbf map of the training rows, (n_train, dim_), computed once per fit or set_state: a DM2KMN
        calls map_gram(X) against its landmarks once per block of rows, and recomputing this side was about
        0.3 s of every call at N = 1000 (n_train x dim_ floats of memory, the size of the projection)."""
        cached = getattr(self, "_training_rbf_map", None)
        if cached is None or cached[0] != str(device):
            cached = self._training_rbf_map = (str(device), self._rbf_rows(None, device))
        return cached[1]

    def _rbf_gram_operator(self) -> np.ndarray | None:
        """``projection_ @ training map^T`` (n_landmarks, n_train) on the CPU, or None where it costs more.

        The rbf map_gram of new rows is their kernel against the landmarks times the projection times the
        training rows' map transposed; folding the last two into one operator turns two GEMMs (2 n Nz r +
        2 n r N flops) into one (2 n Nz N) and is used when Nz N < r (Nz + N), which also bounds its memory
        by that of the projection and the training map together. Computed once per fit or set_state."""
        (Nz, r), N = self.projection_.shape, self.kernel_.X_fit_.shape[0]
        if Nz * N >= r * (Nz + N):
            return None
        if getattr(self, "_rbf_operator", None) is None:
            self._rbf_operator = np.ascontiguousarray(self.projection_ @ self._training_map(torch.device("cpu")).T)
        return self._rbf_operator

    def _rbf_map(self, A: torch.Tensor) -> np.ndarray:
        """The rbf map of preprocessed rows on a torch device (the CPU uses :meth:`_rbf_rows`)."""
        device = A.device
        Z = _tensor(self.landmarks_, device)
        P = _tensor(self.projection_, device)
        fill_k, _ = _kernel_fill("rbf", A, Z, same=False, offset=0.0, sigma=self.kernel_.sigma_)
        N, r = P.shape
        scale = np.float32(self.kernel_.scale_)

        def fill(start, stop, out):
            k = torch.empty((stop - start, N), dtype=torch.float32, device=device)
            fill_k(start, stop, k)
            torch.matmul(k.div_(scale), P, out=out)

        return _blocked(A.shape[0], r, N + r, device, fill)

    def _poly2_map(self, A: torch.Tensor) -> np.ndarray:
        device = A.device
        d = A.shape[1]
        first, second = torch.triu_indices(d, d, 1, device=device)
        c = float(self.offset)
        coef = 1.0 / math.sqrt(self.kernel_.scale_)
        pairs = first.numel()

        def fill(start, stop, out):
            a = A[start:stop]
            out[:, :d] = a * a * coef
            out[:, d : d + pairs] = a[:, first] * a[:, second] * (math.sqrt(2.0) * coef)
            if c > 0:
                out[:, d + pairs : 2 * d + pairs] = a * (math.sqrt(2.0 * c) * coef)
                out[:, -1] = c * coef

        return _blocked(A.shape[0], self.dim_, 4 * self.dim_, device, fill)

    def _hist_map(self, A: torch.Tensor) -> np.ndarray:
        device = A.device
        q = self._levels(A)
        thresholds = torch.arange(1, self.levels + 1, dtype=torch.float32, device=device)
        coef = 1.0 / math.sqrt(self.levels * self.kernel_.scale_)

        def fill(start, stop, out):
            # Unary code: Q entries per feature, the first q of them set.
            code = q[start:stop, :, None] >= thresholds
            out.copy_(code.reshape(stop - start, -1)).mul_(coef)

        return _blocked(A.shape[0], self.dim_, 2 * self.dim_, device, fill)

    def transform(self, X) -> np.ndarray:
        """Explicit map of the rows of X.

        Parameters
        ----------
        X : array-like or torch.Tensor, shape (n, d)

        Returns
        -------
        Phi : np.ndarray, shape (n, dim_), float32
        """
        check_is_fitted(self)
        device = resolve_device(self.device)
        if self.kernel == "poly2" and self.dim_ > self.max_dim:
            raise UsageError(
                f"the poly2 map of {self.kernel_.n_kernel_features_} features has {self.dim_} dimensions, over "
                f"max_dim={self.max_dim}: use map_gram for its inner products, or raise max_dim"
            )
        if self.kernel == "rbf":
            return self._rbf_rows(X, device)
        A = self._prepared(X, device)
        if self.kernel == "linear":
            return (A / math.sqrt(self.kernel_.scale_)).cpu().numpy()
        if self.kernel == "poly2":
            return self._poly2_map(A)
        return self._hist_map(A)

    def map_gram(self, X, Y=None) -> np.ndarray:
        """Inner products of the maps, ``Phi(X) Phi(Y)^T``, without materialising the maps.

        poly2 and linear give the exact scaled kernel, hist ``(1/Q) sum_j min(q(x_j), q(y_j)) / scale_``, rbf
        ``K(X, Z) P P^T K(Z, Y)``.

        Parameters
        ----------
        X : array-like or torch.Tensor, shape (n, d)
        Y : array-like or torch.Tensor, shape (m, d), optional
            Defaults to the training rows.

        Returns
        -------
        G : np.ndarray, shape (n, m), float32
        """
        check_is_fitted(self)
        device = resolve_device(self.device)
        if self.kernel == "rbf":
            return _pairwise("linear", _tensor(self._rbf_rows(X, device), device),
                             _tensor(self._training_map(device) if Y is None else self._rbf_rows(Y, device), device))
        if self.kernel == "hist" and device.type == "cpu" and self._packed_ok():
            return self._hist_map_gram(X, Y)
        A, B = self._rows(X, device), self._rows(Y, device)
        if self.exact_:
            return self.kernel_._scaled(A, B, same=False)
        G = _pairwise("hist", self._levels(A), self._levels(B))
        G /= np.float32(self.levels * self.kernel_.scale_)
        return G

    def column_gram(self, X, rows) -> np.ndarray:
        """Kernel values of X against a few training rows: the DM2KMN's pivot columns.

        linear, poly2 and hist give the map inner products (exact, exact, Q-level quantised min-sum), as
        :meth:`map_gram` does against those rows. rbf gives the exact kernel: it is what a Nystrom map whose
        landmarks include those rows gives against them, so a map network that only ever evaluates its input
        kernels against a column subset S never needs the rbf map of all N landmarks.

        Parameters
        ----------
        X : array-like, shape (n, d)
        rows : array-like of int, shape (s,)
            Indices into the training rows (the rows this map was fitted on).

        Returns
        -------
        G : np.ndarray, shape (n, s), float32
        """
        check_is_fitted(self)
        device = resolve_device(self.device)
        rows = np.asarray(rows, dtype=np.int64)
        Zc = np.ascontiguousarray(self.kernel_.X_fit_[rows])  # preprocessed column rows
        if device.type == "cpu":
            return self._column_gram_cpu(self._validated(X), Zc)
        A = self._prepared(X, device)
        B = _tensor(Zc, device)
        if self.kernel == "hist":
            G = _pairwise("hist", self._levels(A), self._levels(B))
            G /= np.float32(self.levels * self.kernel_.scale_)
            return G
        return self.kernel_._scaled(A, B, same=False)

    def _column_gram_cpu(self, rows: np.ndarray, Zc: np.ndarray) -> np.ndarray:
        """:meth:`column_gram` on the CPU in NumPy (validated, scaled rows; preprocessed columns Zc): one sgemm
        and the kernel function in place, or the min-sum of the hist levels; no torch op, whose small CPU
        calls cost more than the product itself at a few dozen columns."""
        k = self.kernel_
        if self.kernel == "hist":
            qb = self._levels_np(Zc)
            G = np.empty((rows.shape[0], Zc.shape[0]), dtype=np.float32)
            fused = _numba_level_minsum()
            low, span = k.min_.astype(np.float32), (k.max_ - k.min_).astype(np.float32)
            if fused is not None:
                fused(np.ascontiguousarray(rows, dtype=np.float32), low, span, float(self.levels),
                      self.quantization == "round", qb, G)
            else:
                constant = span <= 0
                a = rows - low
                a /= np.where(constant, np.float32(1.0), span)
                a[:, constant] = 0.0
                np.clip(a, 0.0, 1.0, out=a)
                G[...] = np.minimum(self._levels_np(a)[:, None, :], qb[None, :, :]).sum(2, dtype=np.float32)
            G /= np.float32(self.levels * k.scale_)
            return G
        G, nonzero = _normalised_product(rows, Zc)
        return self._apply_to_product(G, nonzero, Zc)

    def _apply_to_product(self, G: np.ndarray, nonzero: np.ndarray, Zc: np.ndarray) -> np.ndarray:
        """linear / poly2 / rbf values, in place, from the product G of l2-normalised rows with the columns Zc."""
        k = self.kernel_
        if self.kernel == "rbf":
            g = np.float32(0.5 / k.sigma_**2)
            _apply(self.kernel, G, nonzero, self._column_squared_norms(Zc), offset=0.0, g=g)
        elif self.kernel == "poly2":  # no norms: (G + c)^2
            _apply(self.kernel, G, None, None, offset=float(self.offset), g=np.float32(0.0))
        if k.scale_ != 1.0:
            G /= np.float32(k.scale_)
        return G

    def _column_squared_norms(self, Zc: np.ndarray) -> np.ndarray:
        """:func:`_squared_norms` of column rows, kept for the landmarks (the columns of every forward block)."""
        if Zc is not getattr(self, "landmarks_", None):
            return _squared_norms(Zc)
        cached = getattr(self, "_landmark_norms", None)
        if cached is None or cached[0] is not Zc:
            cached = self._landmark_norms = (Zc, _squared_norms(Zc))
        return cached[1]

    def _levels_np(self, a: np.ndarray) -> np.ndarray:
        """:meth:`_levels` in NumPy: float64 Q v (exact for float32 v), floored, as float32 (n, d)."""
        scaled = a.astype(np.float64)
        scaled *= self.levels
        if self.quantization == "round":
            scaled += 0.5
        return np.floor(scaled, out=scaled).astype(np.float32)

    def get_state(self) -> dict[str, np.ndarray]:
        """Fitted attributes as plain arrays: the kernel's under ``kernel_.``, then the rbf landmarks.

        Returns
        -------
        state : dict of str to np.ndarray
        """
        check_is_fitted(self)
        state = {f"kernel_.{key}": value for key, value in self.kernel_.get_state().items()}
        if self.kernel == "rbf":
            state.update(
                landmarks_=self.landmarks_, landmark_indices_=self.landmark_indices_, projection_=self.projection_
            )
        return state

    def set_state(self, state) -> ExplicitMap:
        """Restore the fitted attributes written by :meth:`get_state` (NumPy arrays or torch tensors).

        Parameters
        ----------
        state : mapping of str to array

        Returns
        -------
        self
        """
        self._check_params()
        prefix = "kernel_."
        self.kernel_ = self._make_kernel().set_state(
            {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
        )
        self.n_features_in_ = self.kernel_.n_features_in_
        if self.kernel == "rbf":
            missing = [key for key in ("landmarks_", "landmark_indices_", "projection_") if key not in state]
            if missing:
                raise InputError(f"state of an rbf ExplicitMap lacks {', '.join(missing)}")
            self.landmarks_ = np.ascontiguousarray(_as_array(state["landmarks_"]), dtype=np.float32)
            self.landmark_indices_ = np.asarray(_as_array(state["landmark_indices_"]), dtype=np.int64)
            self.projection_ = np.ascontiguousarray(_as_array(state["projection_"]), dtype=np.float32)
        self._training_rbf_map = self._rbf_operator = None
        self._set_dims()
        return self
