"""The statistics behind the report: bootstrap intervals and paired tests over test items.

What is resampled
-----------------
A run's predictions are first *pooled* (:func:`pool_predictions`): for every (repeat, seed) of the run, the test
predictions of the folds of that repeat are put side by side, so that each test item has at most one prediction
per (repeat, seed) -- exactly one under (repeated) K-fold, where every item is tested once per repeat; under a
hold-out split the items are those of the one test part. This gives ``y_true`` (n items) and ``y_pred``
(m prediction sets x n items, ``-1`` where a set has no prediction for an item, e.g. a track without features).

A metric of the pooled predictions is computed per prediction set and averaged over the m sets (over seeds and
repeats): ``accuracy`` is the mean over sets of the share of correct items; ``macro_f1`` is the mean over sets of
the unweighted mean of the per-class F1 over the classes present among the items (a class never predicted and
never true in a resample counts 0, so the class count stays fixed).

The bootstrap resamples the n **test items** with replacement (B = 2000 resamples by default, seeded), each
resample weighting every prediction set of an item alike: the interval reflects the finite test set, with the
variation over seeds and repeats averaged in, not added. ``clusters=`` resamples whole groups instead (a cluster
bootstrap, e.g. over tune titles or composers), for test items that are not independent. Intervals are percentile
intervals (``level`` = 95 % by default). Everything is vectorised: a resample is a row of item weights (a
multinomial count vector), and every metric is a product of those weights with per-item indicators.

Paired tests
------------
Two systems are compared on their common test items only (the intersection of their pooled items; both must be
runs of the same split to be comparable).

* :func:`paired_bootstrap` -- the same item resamples for both systems; the difference d = metric(A) - metric(B),
  its percentile interval, and the two-sided p-value of the bootstrap shifted to the null,
  p = (1 + #{b : |d*_b - d| >= |d|}) / (B + 1) (identical systems: p = 1). Works for accuracy and macro F1.
* :func:`mcnemar_exact` -- the exact (binomial) McNemar test on per-item correctness, for accuracy. With several
  prediction sets per item an item counts as correct when it is right in more than half of them
  (:func:`item_correct`).

Multiple comparisons: the report compares every system with the best one of its table (m - 1 comparisons) and
adjusts those p-values with Holm's step-down method (:func:`holm`), which controls the family-wise error rate;
a system whose adjusted p is >= alpha (0.05) is "not significantly different from the best". Each fusion row is
one further comparison (against the best single-modality run of its model family) and is not adjusted.
"""

from __future__ import annotations

import math

import numpy as np

METRICS = ("accuracy", "macro_f1")
DEFAULT_RESAMPLES = 2000
DEFAULT_LEVEL = 0.95


# --------------------------------------------------------------------------------------------- pooling
def pool_predictions(entries: list[dict], folds_per_repeat: int) -> dict:
    """Pool fold x seed test predictions into one prediction per item and (repeat, seed).

    ``entries``: dicts with ``fold`` (int), ``seed`` (int), ``test_index``, ``y_pred`` (and ``y_true``) arrays;
    fold ``f`` belongs to repeat ``f // folds_per_repeat``. Returns ``index`` (the manifest rows of the items,
    sorted), ``y_true`` (n,), ``y_pred`` (m, n; -1 where missing) and ``sets`` (the m (repeat, seed) pairs).
    An item tested twice in one (repeat, seed) -- overlapping hold-out folds -- keeps its last prediction.
    """
    index = np.unique(np.concatenate([np.asarray(e["test_index"], dtype=np.int64) for e in entries]))
    sets = sorted({(int(e["fold"]) // folds_per_repeat, int(e["seed"])) for e in entries})
    row = {s: j for j, s in enumerate(sets)}
    y_true = np.full(len(index), -1, dtype=np.int64)
    y_pred = np.full((len(sets), len(index)), -1, dtype=np.int64)
    for e in sorted(entries, key=lambda e: (int(e["fold"]), int(e["seed"]))):
        pos = np.searchsorted(index, np.asarray(e["test_index"], dtype=np.int64))
        y_true[pos] = np.asarray(e["y_true"], dtype=np.int64)
        y_pred[row[(int(e["fold"]) // folds_per_repeat, int(e["seed"]))], pos] = np.asarray(e["y_pred"], dtype=np.int64)
    return {"index": index, "y_true": y_true, "y_pred": y_pred, "sets": [list(s) for s in sets]}


def common_items(a: dict, b: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y_true, y_pred of a, y_pred of b) restricted to the items both pooled predictions hold."""
    common, ia, ib = np.intersect1d(np.asarray(a["index"]), np.asarray(b["index"]), return_indices=True)
    return np.asarray(a["y_true"])[ia], np.asarray(a["y_pred"])[:, ia], np.asarray(b["y_pred"])[:, ib]


# --------------------------------------------------------------------------------------------- metrics
def _check(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_pred.ndim == 1:
        y_pred = y_pred[None, :]
    if y_pred.shape[1] != len(y_true) or len(y_true) == 0:
        raise ValueError(f"y_pred {y_pred.shape} does not match {len(y_true)} test items")
    return y_true, y_pred


def weighted_metric(y_true, y_pred, weights: np.ndarray, metric: str = "accuracy") -> np.ndarray:
    """``metric`` of the pooled predictions under item weights (B x n; a row of ones is the plain metric): (B,)."""
    y_true, y_pred = _check(y_true, y_pred)
    W = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    present = y_pred >= 0  # (m, n)
    if metric == "accuracy":
        correct = (y_pred == y_true[None, :]) & present
        num = W @ correct.T.astype(np.float64)  # (B, m)
        den = W @ present.T.astype(np.float64)
        return np.nanmean(np.where(den > 0, num / np.maximum(den, 1e-300), np.nan), axis=1)
    if metric == "macro_f1":
        classes = np.unique(y_true)
        m, n = y_pred.shape
        true_1h = (y_true[:, None] == classes[None, :]).astype(np.float64)  # (n, C)
        out = np.zeros((W.shape[0], m))
        for j in range(m):  # m (repeats x seeds) is small; items and resamples are vectorised
            pj, mask = y_pred[j], present[j].astype(np.float64)
            pred_1h = (pj[:, None] == classes[None, :]) * mask[:, None]
            tp = W @ (pred_1h * true_1h)
            n_pred = W @ pred_1h
            n_true = W @ (true_1h * mask[:, None])
            denom = n_pred + n_true
            f1 = np.where(denom > 0, 2.0 * tp / np.maximum(denom, 1e-300), 0.0)
            out[:, j] = f1.mean(axis=1)
        return out.mean(axis=1)
    raise ValueError(f"unknown metric '{metric}' (expected one of {', '.join(METRICS)})")


def metric(y_true, y_pred, name: str = "accuracy") -> float:
    """The pooled ``name`` metric (mean over prediction sets)."""
    y_true, _ = _check(y_true, y_pred)
    return float(weighted_metric(y_true, y_pred, np.ones((1, len(y_true))), name)[0])


def resample_weights(n: int, n_boot: int = DEFAULT_RESAMPLES, seed: int = 0, clusters=None) -> np.ndarray:
    """(n_boot, n) multinomial item counts of n_boot bootstrap resamples of n items (or of whole clusters)."""
    rng = np.random.default_rng(seed)
    if clusters is None:
        draws = rng.integers(0, n, size=(n_boot, n))
        flat = draws + (np.arange(n_boot) * n)[:, None]
        return np.bincount(flat.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)
    _, cl = np.unique(np.asarray(clusters), return_inverse=True)
    g = int(cl.max()) + 1
    draws = rng.integers(0, g, size=(n_boot, g))
    flat = draws + (np.arange(n_boot) * g)[:, None]
    counts = np.bincount(flat.ravel(), minlength=n_boot * g).reshape(n_boot, g).astype(np.float64)
    return counts[:, cl]


def bootstrap_ci(y_true, y_pred, metric_name: str = "accuracy", *, n_boot: int = DEFAULT_RESAMPLES,
                 level: float = DEFAULT_LEVEL, seed: int = 0, clusters=None) -> dict:
    """Point estimate and percentile bootstrap interval of a pooled metric over the test items.

    Returns ``{"estimate", "low", "high", "level", "n_items", "n_sets", "n_boot", "unit"}``.
    """
    y_true, y_pred = _check(y_true, y_pred)
    estimate = metric(y_true, y_pred, metric_name)
    boot = weighted_metric(y_true, y_pred, resample_weights(len(y_true), n_boot, seed, clusters), metric_name)
    alpha = (1.0 - level) / 2.0
    low, high = np.nanquantile(boot, [alpha, 1.0 - alpha])
    return {"estimate": estimate, "low": float(low), "high": float(high), "level": level, "n_items": int(len(y_true)),
            "n_sets": int(y_pred.shape[0]), "n_boot": int(n_boot), "unit": "item" if clusters is None else "cluster"}


def paired_bootstrap(y_true, pred_a, pred_b, metric_name: str = "accuracy", *, n_boot: int = DEFAULT_RESAMPLES,
                     level: float = DEFAULT_LEVEL, seed: int = 0, clusters=None) -> dict:
    """Paired bootstrap of metric(A) - metric(B) on common items: difference, interval, two-sided p.

    Both systems are scored on the same resamples of items; p is the share of resampled differences at least as
    far from the observed difference as the observed difference is from 0 (the bootstrap shifted to the null),
    with the +1 correction: (1 + count) / (B + 1).
    """
    y_true, pred_a = _check(y_true, pred_a)
    _, pred_b = _check(y_true, pred_b)
    W = resample_weights(len(y_true), n_boot, seed, clusters)
    diff = metric(y_true, pred_a, metric_name) - metric(y_true, pred_b, metric_name)
    boot = weighted_metric(y_true, pred_a, W, metric_name) - weighted_metric(y_true, pred_b, W, metric_name)
    boot = boot[np.isfinite(boot)]
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(boot, [alpha, 1.0 - alpha])
    extreme = np.abs(boot - diff) >= abs(diff) - 1e-12
    p = (1.0 + extreme.sum()) / (len(boot) + 1.0)
    return {"diff": float(diff), "low": float(low), "high": float(high), "p": float(min(1.0, p)),
            "n_items": int(len(y_true)), "test": "paired bootstrap"}


def item_correct(y_true, y_pred) -> np.ndarray:
    """Per item: right in more than half of its prediction sets (items without any prediction: False)."""
    y_true, y_pred = _check(y_true, y_pred)
    present = y_pred >= 0
    right = ((y_pred == y_true[None, :]) & present).sum(0)
    return right * 2 > present.sum(0)


def mcnemar_exact(correct_a, correct_b) -> dict:
    """Exact two-sided McNemar test on paired per-item correctness.

    b = items A gets right and B wrong, c = the reverse; under H0 b ~ Binomial(b + c, 1/2), and
    p = min(1, 2 * P[X <= min(b, c)]) (p = 1 when b + c = 0).
    """
    a = np.asarray(correct_a, dtype=bool)
    b_ = np.asarray(correct_b, dtype=bool)
    b = int((a & ~b_).sum())
    c = int((~a & b_).sum())
    n = b + c
    if n == 0:
        p = 1.0
    else:
        k = min(b, c)
        tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
        p = min(1.0, 2.0 * tail)
    return {"b": b, "c": c, "p": float(p), "diff": (b - c) / max(len(a), 1), "n_items": int(len(a)), "test": "exact McNemar"}


def paired_test(y_true, pred_a, pred_b, metric_name: str = "accuracy", *, test: str = "bootstrap", **kw) -> dict:
    """:func:`paired_bootstrap` (``test='bootstrap'``) or :func:`mcnemar_exact` (``'mcnemar'``, accuracy only)."""
    if test == "bootstrap":
        return paired_bootstrap(y_true, pred_a, pred_b, metric_name, **kw)
    if test == "mcnemar":
        if metric_name != "accuracy":
            raise ValueError("McNemar's test compares per-item correctness: accuracy only")
        return mcnemar_exact(item_correct(y_true, pred_a), item_correct(y_true, pred_b))
    raise ValueError(f"unknown paired test '{test}' (expected bootstrap or mcnemar)")


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values (same order as given), capped at 1 and monotone."""
    p = np.asarray(list(pvalues), dtype=np.float64)
    m = len(p)
    if m == 0:
        return p
    order = np.argsort(p)
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out
