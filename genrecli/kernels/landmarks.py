"""Landmark selection and row-block streaming for the kernel models at scale (issue 15).

With N landmarks Z among n training rows, the DM2KMN needs only n x N input-map Grams, and those one row
block at a time. This module holds what does not depend on the model:

* :func:`select_landmarks`: the landmark rows, drawn uniformly (seeded) or by k-means++ seeding, optionally
  stratified by class;
* :func:`row_blocks`, :func:`read_rows`, :func:`take_rows`: row blocks of any row-sliceable array-like (a NumPy
  array or memmap, an ``h5py.Dataset``, a :class:`genrecli.pipeline.features.FeatureView`), read as float32,
  so that a model can stream rows from an HDF5 store without loading all n of them.

Choices [I] (documented defaults; the alternatives are options):

* k-means++ runs on a uniform candidate pool of ``pool`` rows (default ``min(n, max(20 N, 10000))``): D^2
  sampling costs N passes over its candidates, so on all n = 10^6 rows it would cost N full passes over the
  data; on the pool it is independent of n.
* k-means++ distances are on the scaled, concatenated inputs: every column standardised on the pool (mean 0,
  std 1; constant columns 0), then every modality block (``input_dims``) divided by sqrt(its width), so each
  modality weighs the same in the distance whatever its dimension (1000-d audio next to 1024-d text, or an
  80-d MFCC block next to a 1024-d text block). One seeding over the concatenation, not one per modality:
  a landmark is a whole row, and every input map of every modality uses the same landmarks.
* Not stratified by default: uniform draws match the class proportions in expectation, and the DM2KMN's
  class weights correct the rest. ``stratify=True`` gives each class ``round(N n_c / n)`` landmarks
  (largest remainders, at least one per class when N allows) and seeds k-means++ within each class.
* ``method='uniform'`` without stratification draws exactly as before this module existed
  (``np.sort(RandomState(seed).choice(n, N, replace=False))``), so existing fits keep their landmarks.
"""

from __future__ import annotations

import numbers

import numpy as np

from genrecli.errors import UsageError

SELECTIONS = ("uniform", "kmeans++")


def row_blocks(n: int, block_size: int | None):
    """(start, stop) row ranges covering ``range(n)`` in order; ``block_size=None`` gives one block.

    Parameters
    ----------
    n : int
        Number of rows.
    block_size : int or None
        Rows per block (the last block may be shorter).

    Yields
    ------
    (start, stop) : tuple of int
    """
    step = n if block_size is None else int(block_size)
    if step < 1:
        raise UsageError(f"block_size {block_size!r}: expected a positive integer or None")
    for start in range(0, n, max(step, 1)):
        yield start, min(start + step, n)


def read_rows(X, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of a row-sliceable array-like as a C-ordered float32 array, shape (stop-start, d).

    Only that slice is read: an ``h5py.Dataset`` or a memmap is not loaded whole.
    """
    return np.ascontiguousarray(np.asarray(X[start:stop]), dtype=np.float32)


def take_rows(X, index) -> np.ndarray:
    """Rows ``index`` (sorted, unique int) of a row-sliceable array-like as float32, shape (len(index), d).

    h5py needs increasing indices for a point selection; NumPy arrays take any order.
    """
    index = np.asarray(index, dtype=np.int64)
    if isinstance(X, np.ndarray):
        return np.ascontiguousarray(X[index], dtype=np.float32)
    if len(index) > 1 and np.any(np.diff(index) <= 0):
        raise ValueError("take_rows: the row index must be strictly increasing")
    return np.ascontiguousarray(np.asarray(X[index]), dtype=np.float32)


def _allocation(y_idx: np.ndarray, n_landmarks: int) -> np.ndarray:
    """Landmarks per class, proportional to the class sizes (largest remainders, >= 1 per class if possible)."""
    counts = np.bincount(y_idx)
    n = counts.sum()
    share = n_landmarks * counts / n
    alloc = np.floor(share).astype(np.int64)
    if n_landmarks >= np.count_nonzero(counts):
        alloc[(counts > 0) & (alloc == 0)] = 1
    while alloc.sum() > n_landmarks:  # the >= 1 floor overshot: take from the largest allocations
        alloc[np.argmax(alloc)] -= 1
    order = np.argsort(-(share - np.floor(share)), kind="stable")
    i = 0
    while alloc.sum() < n_landmarks:
        c = order[i % len(order)]
        if alloc[c] < counts[c]:
            alloc[c] += 1
        i += 1
    return np.minimum(alloc, counts)


def _scaled(A: np.ndarray, input_dims) -> np.ndarray:
    """Columns standardised on A, each modality block divided by sqrt(its width) (float32)."""
    A = np.asarray(A, dtype=np.float32)
    A = np.where(np.isfinite(A), A, np.float32(0.0))
    mu = A.mean(0)
    sd = A.std(0)
    sd[sd == 0] = 1.0
    A = (A - mu) / sd
    dims = [A.shape[1]] if input_dims is None else [int(d) for d in input_dims]
    if sum(dims) != A.shape[1]:
        raise UsageError(f"input_dims {tuple(dims)} sum to {sum(dims)}, but the rows have {A.shape[1]} columns")
    start = 0
    for d in dims:
        A[:, start:start + d] /= np.float32(np.sqrt(max(d, 1)))
        start += d
    return A


def kmeanspp(A: np.ndarray, k: int, rng: np.random.RandomState) -> np.ndarray:
    """Positions of k rows of A chosen by k-means++ seeding (D^2 sampling; Arthur and Vassilvitskii 2007).

    Parameters
    ----------
    A : np.ndarray, shape (m, d)
        Candidate rows (already scaled).
    k : int
        Number of seeds, ``k <= m``.
    rng : np.random.RandomState

    Returns
    -------
    np.ndarray, shape (k,), int64, in the order chosen (distinct).
    """
    m = A.shape[0]
    if k >= m:
        return np.arange(m)
    A = np.asarray(A, dtype=np.float64)
    sq = np.einsum("ij,ij->i", A, A)
    chosen = [int(rng.randint(m))]
    d2 = np.maximum(sq + sq[chosen[0]] - 2.0 * (A @ A[chosen[0]]), 0.0)
    d2[chosen[0]] = 0.0
    for _ in range(1, k):
        total = d2.sum()
        if total <= 0:  # every candidate coincides with a seed: take the rest uniformly
            rest = np.setdiff1d(np.arange(m), chosen)
            chosen.extend(rng.choice(rest, k - len(chosen), replace=False).tolist())
            break
        c = int(np.searchsorted(np.cumsum(d2), rng.random_sample() * total, side="right"))
        c = min(c, m - 1)
        while d2[c] <= 0:  # round-off at the cumsum's end: step back to a candidate with mass
            c -= 1
        chosen.append(c)
        d2 = np.minimum(d2, np.maximum(sq + sq[c] - 2.0 * (A @ A[c]), 0.0))
        d2[c] = 0.0
    return np.asarray(chosen, dtype=np.int64)


def select_landmarks(X, n_landmarks, *, method="uniform", y_idx=None, stratify=False, input_dims=None,
                     pool=None, random_state=None) -> np.ndarray:
    """Indices of the landmark rows among the n rows of X.

    Parameters
    ----------
    X : array-like, shape (n, d)
        Row-sliceable (NumPy array, memmap, ``h5py.Dataset``); read only for ``method='kmeans++'``, and then
        only the candidate pool's rows.
    n_landmarks : int or 'all'
        N; 'all' or N >= n gives every row.
    method : {'uniform', 'kmeans++'}
        'uniform': N rows drawn without replacement; 'kmeans++': k-means++ seeding on the scaled concatenated
        inputs of a uniform candidate pool (module docstring).
    y_idx : np.ndarray of int, shape (n,), optional
        Class index of every row; needed with ``stratify=True``.
    stratify : bool
        Draw ``round(N n_c / n)`` landmarks in every class c (at least one per class when N >= number of
        classes).
    input_dims : sequence of int, optional
        Modality widths of the columns (k-means++ weighs each modality equally); None = one block.
    pool : int, optional
        k-means++ candidate pool size (default ``min(n, max(20 N, 10000))``); ``pool >= n`` seeds on all rows.
    random_state : int or None
        Seed of every draw: the same seed gives the same landmarks.

    Returns
    -------
    np.ndarray, shape (N,), int64, sorted increasing.
    """
    n = int(X.shape[0]) if y_idx is None else len(y_idx)
    if isinstance(n_landmarks, str):
        if n_landmarks != "all":
            raise UsageError(f"landmarks {n_landmarks!r}: expected 'all' or a positive integer")
        return np.arange(n, dtype=np.int64)
    if not isinstance(n_landmarks, numbers.Integral) or isinstance(n_landmarks, bool) or n_landmarks < 1:
        raise UsageError(f"landmarks {n_landmarks!r}: expected 'all' or a positive integer")
    if method not in SELECTIONS:
        raise UsageError(f"landmark_selection {method!r}: expected one of {', '.join(SELECTIONS)}")
    N = int(n_landmarks)
    if N >= n:
        return np.arange(n, dtype=np.int64)
    seed = 0 if random_state is None else int(random_state)
    rng = np.random.RandomState(seed)
    if stratify:
        if y_idx is None:
            raise UsageError("stratified landmark selection needs the class labels")
        y_idx = np.asarray(y_idx, dtype=np.int64)
        groups = [(np.flatnonzero(y_idx == c), a) for c, a in enumerate(_allocation(y_idx, N)) if a > 0]
    else:
        groups = [(None, N)]
    out = []
    for rows, k in groups:
        size = n if rows is None else len(rows)
        if method == "uniform":
            pick = rng.choice(size, k, replace=False)
        else:
            m = min(size, int(pool) if pool is not None else max(20 * k, 10_000))
            cand = np.arange(size) if m >= size else np.sort(rng.choice(size, m, replace=False))
            glob = cand if rows is None else rows[cand]
            A = _scaled(take_rows(X, glob), input_dims)
            pick = cand[kmeanspp(A, k, rng)]
        out.append(pick if rows is None else rows[pick])
    return np.sort(np.concatenate(out)).astype(np.int64)
