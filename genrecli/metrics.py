"""Classification metrics.

Single-label: accuracy, balanced accuracy, macro precision/recall/F1, confusion matrix.
Multi-label (Oramas et al., Ru et al.): macro AUC-ROC, example-based F-measure, micro/macro F1 of the
thresholded predictions, and aggregated diversity ADiv@N.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)


def single_label_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict:
    """Accuracy, balanced accuracy, macro P/R/F1 and the (n_classes x n_classes) confusion matrix."""
    labels = np.arange(n_classes)
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    with warnings.catch_warnings():
        # a small test part may lack a class the model predicts; balanced accuracy is still defined
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        balanced = balanced_accuracy_score(y_true, y_pred)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced),
        "macro_precision": float(p),
        "macro_recall": float(r),
        "macro_f1": float(f),
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def mean_std(values) -> dict:
    arr = np.asarray(list(values), dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=0)), "n": int(arr.size)}


def macro_auc(Y: np.ndarray, scores: np.ndarray) -> float:
    """Mean AUC-ROC over the labels that have positives and negatives in ``Y`` (NaN if none has)."""
    Y = np.asarray(Y, dtype=bool)
    usable = [j for j in range(Y.shape[1]) if 0 < Y[:, j].sum() < len(Y)]
    if not usable:
        return float("nan")
    return float(np.mean([roc_auc_score(Y[:, j], scores[:, j]) for j in usable]))


def example_f_measure(Y: np.ndarray, P: np.ndarray) -> float:
    """Example-based F-measure: mean over items of 2|Y ∩ P| / (|Y| + |P|) (1 when both are empty)."""
    Y, P = np.asarray(Y, dtype=bool), np.asarray(P, dtype=bool)
    inter = (Y & P).sum(1)
    denom = Y.sum(1) + P.sum(1)
    return float(np.mean(np.where(denom > 0, 2.0 * inter / np.maximum(denom, 1), 1.0)))


def aggregated_diversity(scores: np.ndarray, n: int) -> float:
    """ADiv@N: the share of all labels that appear among some item's N highest-scored labels."""
    top = np.argsort(-scores, axis=1)[:, :n]
    return float(len(np.unique(top)) / scores.shape[1])


def multi_label_metrics(Y: np.ndarray, P: np.ndarray, scores: np.ndarray, *, adiv_at: tuple[int, ...] = (1, 3, 5)) -> dict:
    Y, P = np.asarray(Y, dtype=bool), np.asarray(P, dtype=bool)
    out = {
        "auc_roc": macro_auc(Y, scores),
        "example_f": example_f_measure(Y, P),
        "micro_f1": float(f1_score(Y, P, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(Y, P, average="macro", zero_division=0)),
    }
    for n in adiv_at:
        if n <= scores.shape[1]:
            out[f"adiv@{n}"] = aggregated_diversity(scores, n)
    return out
