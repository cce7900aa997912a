"""One-vs-rest class-weighted SVMs on a precomputed kernel (the paper's SVM baseline and DKN classifier).

``KernelSVM`` follows scikit-learn's ``kernel="precomputed"`` convention: ``fit(K_train, y)`` with the
(n, n) training Gram and ``predict(K_test)`` with the (n_test, n_train) Gram against the training rows,
so ``Pipeline([("k", ElementaryKernel("rbf")), ("svm", KernelSVM())])`` works. The learned model is a
dense dual matrix ``alpha_`` (C x n_train) and ``intercept_`` (C,): scores are ``K_test @ alpha_.T + b``.

Class weights are scikit-learn's ('balanced' = n / (C n_c)); C is selected by
:mod:`genrecli.models.selection` (the folds and scorer every model uses).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.svm import SVC
from sklearn.utils.class_weight import compute_class_weight, compute_sample_weight
from sklearn.utils.multiclass import check_classification_targets

from genrecli.errors import UsageError
from genrecli.models.selection import cv_folds, select_by_cv, task_score

C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)


def balanced_sample_weights(y: np.ndarray) -> np.ndarray:
    """Per-sample weights n / (C n_c), inversely proportional to the class counts (scikit-learn's 'balanced')."""
    return compute_sample_weight("balanced", np.asarray(y)).astype(np.float64)


def class_weight_vector(y, classes, class_weight) -> np.ndarray:
    """(len(classes),) weight of every class: 'balanced' n / (C n_c), None ones, or a dict {label: weight}.

    'balanced' is scikit-learn's :func:`~sklearn.utils.class_weight.compute_class_weight` (every class of
    ``classes`` must occur in ``y``); a dict gives 1.0 to the classes it does not name and ignores labels that
    are not classes.
    """
    classes = np.asarray(classes)
    if class_weight is None:
        return np.ones(len(classes))
    if isinstance(class_weight, Mapping):
        # Not compute_class_weight: it casts labels to int (1.5 -> 1) and rejects dicts naming other labels.
        return np.array([float(class_weight.get(c.item() if hasattr(c, "item") else c, 1.0)) for c in classes])
    if class_weight != "balanced":
        raise UsageError(f"class_weight={class_weight!r}: expected 'balanced', None or a dict {{label: weight}}")
    return compute_class_weight("balanced", classes=classes, y=np.asarray(y)).astype(np.float64)


def binary_targets(y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """(C, n) targets in {-1, +1}: one-vs-rest for class indices, one binary problem per label for multi-hot."""
    if y.ndim == 2:
        return np.where(y.T.astype(bool), 1, -1)
    return np.where(y[None, :] == classes[:, None], 1, -1)


def target_weights(targets: np.ndarray, y: np.ndarray, class_weight) -> np.ndarray | None:
    """(C, n) sample weights of every binary problem.

    Single-label: the class weight (:func:`class_weight_vector`: the paper's n / (C n_c) for 'balanced') of
    each sample's class, shared by all problems. Multi-label ('balanced' only): each label's positives and
    negatives balanced, n / (2 n_pos) and n / (2 n_neg) (scikit-learn's 'balanced' sample weights of that
    label's binary problem).
    """
    if class_weight is None:
        return None
    if y.ndim == 1:
        classes, inverse = np.unique(y, return_inverse=True)
        return np.broadcast_to(class_weight_vector(y, classes, class_weight)[inverse], targets.shape)
    if class_weight != "balanced":
        raise UsageError(f"class_weight={class_weight!r}: multi-label SVMs take 'balanced' or None")
    # A label constant on these rows gets weights 1: its problem is not solved (fit_one_vs_rest skips it).
    return np.stack([compute_sample_weight("balanced", target) for target in targets]).astype(np.float64)


def fit_one_vs_rest(K: np.ndarray, targets: np.ndarray, C: float, weights: np.ndarray | None, *, tol: float = 1e-4):
    """Dual coefficients (C x n) and intercepts (C,) of one binary SVM per row of ``targets`` (libsvm).

    ``K`` is the (n, n) training Gram shared by every problem, or one (n, n) Gram per problem (C, n, n);
    ``weights`` scale each sample's bound C: shape (C, n), (n,) for all problems, or None.
    """
    K = np.asarray(K)
    alpha = np.zeros(targets.shape, dtype=np.float64)
    bias = np.zeros(len(targets), dtype=np.float64)
    for c, target in enumerate(targets):
        if np.all(target == target[0]):  # a label absent from (or everywhere in) this training part
            bias[c] = float(target[0])
            continue
        Kc = np.asarray(K[c] if K.ndim == 3 else K, dtype=np.float64)
        sw = None if weights is None else np.ascontiguousarray(weights[c] if np.ndim(weights) == 2 else weights, dtype=np.float64)
        svc = SVC(kernel="precomputed", C=C, tol=tol, cache_size=500).fit(Kc, np.ascontiguousarray(target), sample_weight=sw)
        alpha[c, svc.support_] = svc.dual_coef_[0]
        bias[c] = svc.intercept_[0]
    return alpha, bias


class KernelSVM(ClassifierMixin, BaseEstimator):
    """One-vs-rest SVMs on a precomputed Gram matrix, class weights n/(C n_c), C by k-fold CV.

    Also multi-label: with a multi-hot ``y`` (n, L) it trains one binary SVM per label (positives and
    negatives balanced) and ``predict`` returns the (n, L) indicator of positive scores.

    Parameters
    ----------
    C : float or "cv"
        Soft-margin penalty; "cv" picks it from ``C_grid`` by ``cv``-fold cross-validation on the training
        Gram (balanced accuracy; macro AUC-ROC for multi-label), as the paper selects models on training
        data only.
    class_weight : "balanced", None or a dict {label: weight} (single-label)
    random_state : int, RandomState or None
        Seed of the CV folds.
    """

    def __init__(self, C="cv", *, class_weight="balanced", C_grid=C_GRID, cv=5, random_state=None):
        self.C = C
        self.class_weight = class_weight
        self.C_grid = C_grid
        self.cv = cv
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.pairwise = True
        return tags

    def fit(self, X, y, *, cv_groups=None):
        """Fit on the (n, n) training Gram X; ``cv_groups`` (n,): groups of the C-selection CV
        (:func:`~genrecli.models.selection.cv_folds`), None for stratified folds."""
        self._cv_groups = None if cv_groups is None else np.asarray(cv_groups)
        K = np.asarray(X, dtype=np.float64)
        y = np.asarray(y)
        if K.ndim != 2 or K.shape[0] != K.shape[1] or K.shape[0] != len(y):
            raise ValueError(f"KernelSVM.fit expects the (n, n) training Gram, got shape {K.shape} for {len(y)} labels")
        if not np.all(np.isfinite(K)):
            raise ValueError("Input contains NaN or infinity in the Gram matrix.")
        self.multilabel_ = y.ndim == 2
        if self.multilabel_:
            y = y.astype(bool)
            self.classes_ = np.arange(y.shape[1])
        else:
            check_classification_targets(y)
            self.classes_ = np.unique(y)
            if len(self.classes_) < 2:
                raise ValueError("KernelSVM needs at least 2 classes in the training labels")
        self.C_ = self._select_C(K, y) if self.C == "cv" else float(self.C)
        targets = binary_targets(y, self.classes_)
        alpha, bias = fit_one_vs_rest(K, targets, self.C_, target_weights(targets, y, self.class_weight))
        self.alpha_, self.intercept_ = alpha.astype(np.float32), bias.astype(np.float32)
        self.n_features_in_ = K.shape[1]
        return self

    def _select_C(self, K, y) -> float:
        """C of ``C_grid`` with the best mean CV score (:mod:`genrecli.models.selection`); 1.0 without folds."""

        def fold_scores(tr, va):
            classes = self.classes_ if self.multilabel_ else np.unique(y[tr])
            targets = binary_targets(y[tr], classes)
            weights = target_weights(targets, y[tr], self.class_weight)
            out = []
            for C in self.C_grid:
                alpha, bias = fit_one_vs_rest(K[np.ix_(tr, tr)], targets, C, weights)
                scores = K[np.ix_(va, tr)] @ alpha.T + bias
                out.append(task_score(y[va], scores, classes=None if self.multilabel_ else classes))
            return out

        folds = cv_folds(y, self.cv, seed=self.random_state, groups=getattr(self, "_cv_groups", None))
        result = select_by_cv(self.C_grid, fold_scores, folds, default=1.0)
        if result.n_folds:
            self.cv_scores_ = result.scores
        return float(result.best)

    def decision_function(self, X):
        K = np.asarray(X, dtype=np.float32)
        if K.ndim != 2 or K.shape[1] != self.alpha_.shape[1]:
            raise ValueError(f"expected a Gram against the {self.alpha_.shape[1]} training rows, got shape {K.shape}")
        return K @ self.alpha_.T + self.intercept_

    def predict(self, X):
        scores = self.decision_function(X)
        if getattr(self, "multilabel_", False):
            return scores > 0
        return self.classes_[np.argmax(scores, axis=1)]

    # Gram-stack interface used by the CLI pipeline (one elementary kernel: m == 1).
    def fit_gram(self, grams, y, **_):
        return self.fit(_single(grams), y)

    def decision_gram(self, grams_test, **_):
        return self.decision_function(_single(grams_test))

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"alpha": self.alpha_, "intercept": self.intercept_, "classes": np.asarray(self.classes_),
                "C": np.array([self.C_], dtype=np.float64), "multilabel": np.array([self.multilabel_])}

    def load_state_dict(self, state) -> "KernelSVM":
        self.alpha_, self.intercept_ = np.asarray(state["alpha"]), np.asarray(state["intercept"])
        self.classes_, self.C_ = np.asarray(state["classes"]), float(np.asarray(state["C"])[0])
        self.multilabel_ = bool(np.asarray(state["multilabel"])[0])
        self.n_features_in_ = self.alpha_.shape[1]
        return self


def _single(grams) -> np.ndarray:
    grams = np.asarray(grams)
    if grams.ndim == 3:
        if grams.shape[0] != 1:
            raise UsageError(f"svm takes one elementary kernel, got {grams.shape[0]}")
        return grams[0]
    return grams
