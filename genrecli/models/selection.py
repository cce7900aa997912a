"""Hyper-parameter selection on training data only, shared by every model.

* :func:`cv_folds` -- the cross-validation folds: stratified k-fold for single-label ``y`` (n,), plain k-fold
  for multi-hot ``y`` (n, L), shuffled and seeded, k capped by the smallest class (single-label) or by n.
* :func:`task_score` / :func:`label_score` -- the one scorer per task: balanced accuracy for single-label,
  macro AUC-ROC (:func:`genrecli.metrics.macro_auc`) for multi-label. Higher is better.
* :func:`select_by_cv` -- the candidate with the best mean validation score over the folds; ties (within
  ``tie_tol``) go to the first candidate in the order given, so list candidates simplest first (smallest C,
  fewest epochs).
* :func:`validation_split` -- a stratified validation part carved from the training rows (neural models:
  early stopping).

Kernel models (:class:`~genrecli.models.svm.KernelSVM`, the DKN, the DM2KMN) select C, and the DM2KMN its
fine-tuning rate and epochs, with these; none of them ever sees test rows.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import KFold, ShuffleSplit, StratifiedGroupKFold, StratifiedKFold, StratifiedShuffleSplit

from genrecli.errors import UsageError
from genrecli.metrics import macro_auc

Folds = list[tuple[np.ndarray, np.ndarray]]


def is_multilabel(y) -> bool:
    """True for a multi-hot (n, L) target, False for a (n,) vector of labels."""
    return np.ndim(y) == 2


def cv_folds(y, n_splits: int = 5, *, seed=None, groups=None) -> Folds:
    """(train_rows, val_rows) index pairs of a shuffled, seeded k-fold split of the training rows.

    Single-label ``y`` (n,): :class:`~sklearn.model_selection.StratifiedKFold` with
    ``k = min(n_splits, smallest class count)``; multi-label ``y`` (n, L):
    :class:`~sklearn.model_selection.KFold` with ``k = min(n_splits, n)``. An empty list when ``k < 2``
    (too few rows to cross-validate: callers then fall back to a default).

    With ``groups`` (single-label): :class:`~sklearn.model_selection.StratifiedGroupKFold`, no group on both
    sides of a fold, ``k = min(n_splits, distinct groups)`` -- the inner CV of a model trained on a grouped
    split (composer, work, tune title), which otherwise validates on the very groups it trained on and
    overrates what memorises them (kern-eras composer split: DM2KMN CV 0.91 balanced accuracy, test 0.33).
    Folds whose training part lacks a class are dropped (a class with one group cannot be held out);
    with fewer than 2 folds left the stratified folds are used instead.

    Parameters
    ----------
    y : array-like, shape (n,) or (n, L)
    n_splits : int
    seed : int, RandomState or None
        ``random_state`` of the splitter (None: not reproducible).
    groups : array-like, shape (n,), optional
        The group of each row.
    """
    y = np.asarray(y)
    n = len(y)
    if groups is not None and not is_multilabel(y):
        folds = grouped_folds(y, np.asarray(groups), n_splits, seed=seed)
        if folds:
            return folds
    if is_multilabel(y):
        k = int(min(int(n_splits), n))
        if k < 2:
            return []
        return list(KFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(n)))
    counts = np.unique(y, return_counts=True)[1]
    k = int(min(int(n_splits), counts.min())) if counts.size else 0
    if k < 2:
        return []
    return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(n), y))


def grouped_folds(y: np.ndarray, groups: np.ndarray, n_splits: int, *, seed=None) -> Folds:
    """The stratified group folds of :func:`cv_folds` (``[]`` when fewer than 2 usable folds)."""
    if len(groups) != len(y):
        raise ValueError(f"groups: {len(groups)} values for {len(y)} rows")
    _, codes = np.unique(groups.astype(str), return_inverse=True)
    k = int(min(int(n_splits), codes.max() + 1)) if len(codes) else 0
    if k < 2:
        return []
    classes = np.unique(y)
    folds = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y, codes)
    kept = [(tr, va) for tr, va in folds if len(np.unique(y[tr])) == len(classes) and len(va)]
    return kept if len(kept) >= 2 else []


def label_score(y_true, y_pred) -> float:
    """Single-label score of predicted labels: balanced accuracy (mean per-class recall over the classes of
    ``y_true``; a grouped validation fold may lack a class, and predicting it is then simply wrong)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return float(balanced_accuracy_score(np.asarray(y_true), np.asarray(y_pred)))


def task_score(y_true, scores, *, classes=None) -> float:
    """The task's score of decision values: balanced accuracy of the argmax (single-label), macro AUC-ROC
    (multi-label).

    Parameters
    ----------
    y_true : array-like, shape (n,) labels, or (n, L) multi-hot
    scores : array-like, shape (n, C) (or (n, L)): one column per class (per label)
    classes : array-like, shape (C,), optional
        Single-label: the label of each column (default: column indices).
    """
    y_true = np.asarray(y_true)
    scores = np.asarray(scores)
    if is_multilabel(y_true):
        return float(macro_auc(y_true, scores))
    pred = np.argmax(scores, axis=1)
    if classes is not None:
        pred = np.asarray(classes)[pred]
    return label_score(y_true, pred)


@dataclasses.dataclass
class CVResult:
    """What :func:`select_by_cv` chose and why.

    best : the chosen candidate.
    candidates : the candidates, in the order given.
    scores : np.ndarray (len(candidates),), the mean validation score of each over the folds (NaN when it
        has none; empty when there were no folds and ``best`` is the default).
    n_folds : number of folds.
    """

    best: object
    candidates: list
    scores: np.ndarray
    n_folds: int

    def as_dict(self) -> dict:
        """{candidate: mean score} ({} without folds)."""
        return {c: float(s) for c, s in zip(self.candidates, self.scores)}


def select_by_cv(
    candidates: Sequence,
    fold_scores: Callable[[np.ndarray, np.ndarray], Sequence[float]],
    folds: Folds,
    *,
    default=None,
    tie_tol: float = 1e-12,
) -> CVResult:
    """Pick the candidate with the best mean validation score over ``folds``.

    Parameters
    ----------
    candidates : sequence
        Hyper-parameter values (any objects), simplest first: ties go to the earliest.
    fold_scores : callable ``(train_rows, val_rows) -> scores``
        Trains on ``train_rows`` and returns one validation score per candidate (higher is better), so that
        work shared by the candidates of one fold is done once. NaN scores are ignored in the mean.
    folds : list of (train_rows, val_rows), e.g. from :func:`cv_folds`
    default : object
        The choice when ``folds`` is empty (no cross-validation possible).
    tie_tol : float
        Means within ``tie_tol`` of the best count as ties.

    Returns
    -------
    CVResult
    """
    candidates = list(candidates)
    if not candidates:
        raise UsageError("model selection needs at least one candidate value")
    if not folds:
        return CVResult(default, candidates, np.array([], dtype=np.float64), 0)
    table = np.empty((len(folds), len(candidates)), dtype=np.float64)
    for f, (tr, va) in enumerate(folds):
        row = np.asarray(fold_scores(tr, va), dtype=np.float64).reshape(-1)
        if row.shape[0] != len(candidates):
            raise ValueError(f"fold_scores returned {row.shape[0]} scores for {len(candidates)} candidates")
        table[f] = row
    valid = ~np.isnan(table)
    counts = valid.sum(0)
    means = np.where(counts > 0, np.where(valid, table, 0.0).sum(0) / np.maximum(counts, 1), np.nan)
    finite = means[~np.isnan(means)]
    if finite.size == 0:
        return CVResult(candidates[0], candidates, means, len(folds))
    best = float(finite.max())
    index = next(i for i, m in enumerate(means) if not math.isnan(m) and m >= best - tie_tol)
    return CVResult(candidates[index], candidates, means, len(folds))


def validation_split(y, fraction: float = 0.1, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Carve a validation part from the training rows: (train_rows, val_rows), sorted int64 indices.

    Single-label: stratified (:class:`~sklearn.model_selection.StratifiedShuffleSplit`), every class keeping
    its share; a class with a single row stays in training. Multi-label (n, L): a seeded random split. The
    validation part has ``round(fraction * n)`` rows (at least 1), and training keeps at least one row.

    Parameters
    ----------
    y : array-like, shape (n,) or (n, L)
    fraction : float in (0, 1)
    seed : int, RandomState or None
    """
    y = np.asarray(y)
    n = len(y)
    if not 0 < float(fraction) < 1:
        raise UsageError(f"validation fraction must be in (0, 1), got {fraction!r}")
    if n < 2:
        raise UsageError(f"a validation part needs at least 2 training rows, got {n}")
    n_val = min(n - 1, max(1, int(round(float(fraction) * n))))
    rows = np.arange(n)
    if is_multilabel(y):
        tr, va = next(ShuffleSplit(n_splits=1, test_size=n_val, random_state=seed).split(rows))
        return np.sort(tr).astype(np.int64), np.sort(va).astype(np.int64)
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    pool = rows[counts[inverse] >= 2]  # singletons cannot be in both parts
    n_classes = len(np.unique(y[pool])) if pool.size else 0
    n_val = min(n_val, pool.size - 1) if pool.size > 1 else 0
    if n_val < 1:
        raise UsageError(f"no validation part can be carved from {n} rows of {len(classes)} classes")
    if n_val >= n_classes and pool.size - n_val >= n_classes:
        splitter = StratifiedShuffleSplit(n_splits=1, test_size=n_val, random_state=seed)
        tr, va = next(splitter.split(pool, y[pool]))
    else:  # fewer validation rows than classes: a class share cannot be kept, split at random
        tr, va = next(ShuffleSplit(n_splits=1, test_size=n_val, random_state=seed).split(pool))
    val = np.sort(pool[va]).astype(np.int64)
    train = np.setdiff1d(rows, val).astype(np.int64)
    return train, val
