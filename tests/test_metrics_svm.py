"""KernelSVM (single- and multi-label) and the multi-label metrics against direct computations."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline

from genrecli.metrics import aggregated_diversity, example_f_measure, macro_auc, multi_label_metrics
from genrecli.models.svm import KernelSVM, balanced_sample_weights


def _blobs(n_per=30, d=6, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(3, d)) * 3
    X = np.concatenate([c + rng.normal(size=(n_per, d)) for c in centers]).astype(np.float32)
    return X, np.repeat(np.arange(3), n_per)


def test_balanced_weights():
    w = balanced_sample_weights(np.array([0, 0, 0, 1]))
    assert np.allclose(w, [4 / 6, 4 / 6, 4 / 6, 2.0])


def test_kernel_svm_separates_and_round_trips():
    X, y = _blobs()
    K = X @ X.T
    clf = KernelSVM(random_state=0).fit(K, y)
    assert clf.C_ in clf.C_grid and (clf.predict(K) == y).mean() > 0.95
    clone = KernelSVM().load_state_dict(clf.state_dict())
    assert np.array_equal(clone.predict(K[:5]), clf.predict(K[:5]))
    with pytest.raises(ValueError, match="Gram"):
        clf.decision_function(K[:, :3])


def test_kernel_svm_in_sklearn_pipeline():
    from genrecli.kernels.elementary import ElementaryKernel

    X, y = _blobs(seed=1)
    pipe = make_pipeline(ElementaryKernel("rbf"), KernelSVM(random_state=0))
    assert pipe.fit(X[::2], y[::2]).score(X[1::2], y[1::2]) > 0.9


def test_multilabel_svm_and_metrics():
    X, y = _blobs(seed=2)
    Y = np.stack([y == 0, y != 2, y == 2], axis=1)  # overlapping labels
    K = X @ X.T
    clf = KernelSVM(random_state=0).fit(K, Y)
    P = clf.predict(K)
    assert P.shape == Y.shape and P.dtype == bool
    m = multi_label_metrics(Y, P, clf.decision_function(K))
    assert m["auc_roc"] > 0.95 and m["example_f"] > 0.9


def test_multilabel_metrics_against_direct_computation():
    rng = np.random.default_rng(0)
    Y = rng.random((40, 5)) < 0.4
    S = rng.normal(size=(40, 5)) + Y
    P = S > 0.5
    direct = np.mean([roc_auc_score(Y[:, j], S[:, j]) for j in range(5)])
    assert macro_auc(Y, S) == pytest.approx(direct)
    ef = np.mean([2 * (y & p).sum() / (y.sum() + p.sum()) if (y.sum() + p.sum()) else 1.0 for y, p in zip(Y, P)])
    assert example_f_measure(Y, P) == pytest.approx(ef)
    top1 = {int(np.argmax(s)) for s in S}
    assert aggregated_diversity(S, 1) == pytest.approx(len(top1) / 5)
    assert aggregated_diversity(S, 5) == 1.0


# ------------------------------------------------------------------------------ weights and model selection


def test_weights_are_sklearn_balanced():
    from sklearn.utils.class_weight import compute_sample_weight

    from genrecli.models.svm import binary_targets, class_weight_vector, target_weights

    y = np.array(["b", "a", "b", "c", "b", "a"])
    np.testing.assert_array_equal(balanced_sample_weights(y), compute_sample_weight("balanced", y))
    classes = np.unique(y)
    T = binary_targets(y, classes)
    W = target_weights(T, y, "balanced")
    assert W.shape == (3, 6) and all(np.array_equal(w, balanced_sample_weights(y)) for w in W)
    assert np.allclose(class_weight_vector(y, classes, "balanced"), [6 / 6, 6 / 9, 6 / 3])
    # the dict option: named classes get their weight, the others 1
    assert np.allclose(target_weights(T, y, {"c": 3.0})[1], [1, 1, 1, 3, 1, 1])
    assert target_weights(T, y, None) is None
    # multi-label: each label's positives and negatives balanced, n / (2 n_pos) and n / (2 n_neg)
    Y = np.array([[1, 0], [1, 1], [0, 1], [0, 1], [0, 1], [1, 1]], dtype=bool)
    T = binary_targets(Y, np.arange(2))
    W = target_weights(T, Y, "balanced")
    pos = Y.sum(0)
    expected = np.where(Y.T, 6 / (2.0 * pos[:, None]), 6 / (2.0 * (6 - pos[:, None])))
    np.testing.assert_array_equal(W, expected)
    with pytest.raises(Exception, match="class_weight"):
        target_weights(T, Y, "uniform")


def _former_select_C(K, y, grid, cv, seed):
    """The hand-written CV loop KernelSVM used before genrecli.models.selection (single-label)."""
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold

    from genrecli.models.svm import binary_targets, fit_one_vs_rest, target_weights

    n_splits = int(min(cv, np.bincount(np.unique(y, return_inverse=True)[1]).min()))
    folds = list(StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(K, y))
    scores = []
    for C in grid:
        fold_scores = []
        for tr, va in folds:
            classes = np.unique(y[tr])
            targets = binary_targets(y[tr], classes)
            alpha, bias = fit_one_vs_rest(K[np.ix_(tr, tr)], targets, C, target_weights(targets, y[tr], "balanced"))
            s = K[np.ix_(va, tr)] @ alpha.T + bias
            fold_scores.append(balanced_accuracy_score(y[va], classes[np.argmax(s, axis=1)]))
        scores.append(np.nanmean(fold_scores))
    return float(grid[int(np.nanargmax(scores))]), np.array(scores)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kernel_svm_C_selection_is_the_former_one(seed):
    """Same folds, same seeds -> the same C (and CV scores) as the former hand-written loop."""
    rng = np.random.default_rng(seed)
    X, y = _blobs(n_per=20, d=6, seed=seed)
    X = X + rng.normal(scale=2.5, size=X.shape).astype(np.float32)  # overlapping classes: C matters
    y = y[: 50]  # unbalanced: 20, 20, 10
    K = np.exp(-((X[:50, None] - X[None, :50]) ** 2).sum(-1) / 40.0)
    clf = KernelSVM(random_state=seed).fit(K, y)
    C, scores = _former_select_C(K, y, clf.C_grid, 5, seed)
    assert clf.C_ == C
    np.testing.assert_allclose(clf.cv_scores_, scores, rtol=1e-12)


def test_cv_folds():
    from sklearn.model_selection import KFold, StratifiedKFold

    from genrecli.models.selection import cv_folds

    y = np.array([0] * 12 + [1] * 7 + [2] * 4)
    folds = cv_folds(y, 5, seed=3)
    assert len(folds) == 4  # capped by the smallest class
    for (tr, va), (tr2, va2) in zip(folds, StratifiedKFold(4, shuffle=True, random_state=3).split(np.zeros(23), y)):
        assert np.array_equal(tr, tr2) and np.array_equal(va, va2)
    assert np.array_equal(np.sort(np.concatenate([va for _, va in folds])), np.arange(23))
    assert cv_folds(np.array([0, 0, 0, 1]), 5, seed=0) == []  # a class with one row: no folds
    Y = np.random.default_rng(0).random((9, 3)) < 0.5
    ml = cv_folds(Y, 5, seed=1)
    ref = list(KFold(5, shuffle=True, random_state=1).split(np.zeros(9)))
    assert len(ml) == 5 and all(np.array_equal(a[1], b[1]) for a, b in zip(ml, ref))
    assert len(cv_folds(Y[:3], 5, seed=1)) == 3


def test_select_by_cv_and_task_scores():
    from genrecli.models.selection import select_by_cv, task_score

    folds = [(np.arange(2), np.arange(2, 4)), (np.arange(2, 4), np.arange(2))]
    table = {0: [0.5, 0.6, 0.8, np.nan], 1: [0.8, 0.8, 0.6, np.nan]}
    calls = iter(range(2))
    result = select_by_cv(["a", "b", "c", "d"], lambda tr, va: table[next(calls)], folds)
    assert result.best == "b"  # b and c tie at 0.7: the first one; d (NaN everywhere) is never chosen
    assert np.allclose(result.scores[:3], [0.65, 0.7, 0.7]) and np.isnan(result.scores[3])
    assert result.as_dict()["a"] == pytest.approx(0.65)
    empty = select_by_cv([1, 2], lambda tr, va: [0, 0], [], default=5)
    assert empty.best == 5 and empty.n_folds == 0 and empty.as_dict() == {}
    with pytest.raises(ValueError):
        select_by_cv([1, 2], lambda tr, va: [0.0], folds)
    # single-label: balanced accuracy of the argmax, mapped through the column labels
    S = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [1.0, 0.0]])
    assert task_score(np.array(["x", "y", "x", "y"]), S, classes=np.array(["x", "y"])) == pytest.approx(0.75)
    # multi-label: macro AUC
    Y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=bool)
    assert task_score(Y, Y.astype(float)) == pytest.approx(macro_auc(Y, Y.astype(float)))


def test_validation_split():
    from genrecli.errors import UsageError
    from genrecli.models.selection import validation_split

    y = np.array([0] * 50 + [1] * 30 + [2] * 20)
    tr, va = validation_split(y, 0.2, seed=0)
    assert len(va) == 20 and len(tr) == 80 and not set(tr) & set(va)
    assert np.array_equal(np.sort(np.concatenate([tr, va])), np.arange(100))
    assert np.array_equal(np.bincount(y[va]), [10, 6, 4])  # stratified
    tr2, va2 = validation_split(y, 0.2, seed=0)
    assert np.array_equal(va, va2) and not np.array_equal(va, validation_split(y, 0.2, seed=1)[1])
    # a class with a single row stays in training
    y1 = np.array([0] * 10 + [1] * 10 + [2])
    tr, va = validation_split(y1, 0.3, seed=0)
    assert 20 in tr and len(va) == 6
    # multi-label: a seeded random split
    Y = np.random.default_rng(0).random((30, 4)) < 0.3
    tr, va = validation_split(Y, 0.1, seed=0)
    assert len(va) == 3 and len(tr) == 27
    with pytest.raises(UsageError):
        validation_split(y, 1.5)
