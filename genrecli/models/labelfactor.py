"""Label factorisation for multi-label targets: PPMI of label co-occurrence, then a truncated SVD (pure numpy).

Oramas et al. (2018, TISMIR), Section 5.1, after Chollet (2016) and Levy & Goldberg (2014). With ``M`` the
binary item x label matrix (n items, L labels) and ``G_i`` the items annotated with label i,

    P(G_i, G_j) = |G_i & G_j| / n,     P(G_i) = |G_i| / n,
    X(g_i, g_j) = max(0, log(P(G_i, G_j) / (P(G_i) P(G_j))))          (the PPMI matrix, L x L)

``X = U S V^T`` (SVD); the label factors are ``C_d = U_d S_d`` (the top ``d`` singular values), and the item
factors ``F_d = M C_d`` (the paper writes ``C_d M^T``, the same vectors as columns): an item's vector is the sum
of its labels' vectors, so items and labels share one space and the cosine between an item's (predicted)
vector and every label vector ranks the labels (the COSINE target).

Choices not stated by the paper
-------------------------------
* The natural logarithm (the base only scales ``X`` and leaves every cosine unchanged).
* The diagonal of ``X`` is kept (``X(g_i, g_i) = log(1 / P(G_i))``, the formula applied to ``i = j``).
* Pairs that never co-occur, and labels without items, get ``X = 0`` (the limit of ``max(0, log 0)``).
* ``d = min(dim, L)``; the sign of every singular vector is fixed (its largest-magnitude entry positive), so a
  factorisation is reproducible across LAPACK builds up to rounding.
* A label or item vector of zero norm has cosine 0 to everything.
"""

from __future__ import annotations

import numpy as np

from genrecli.errors import UsageError

__all__ = ["LabelFactorisation", "cosine_scores", "ppmi"]


def _binary(M) -> np.ndarray:
    M = np.asarray(M)
    if M.ndim != 2:
        raise UsageError(f"label matrix must be (items, labels), got shape {M.shape}")
    return (M > 0.5).astype(np.float64) if M.dtype != bool else M.astype(np.float64)


def ppmi(M) -> np.ndarray:
    """The (L, L) positive pointwise mutual information of the label columns of a binary (n, L) matrix."""
    M = _binary(M)
    n = M.shape[0]
    if n == 0:
        raise UsageError("label factorisation needs at least one item")
    joint = (M.T @ M) / n  # P(G_i, G_j); its diagonal is P(G_i)
    marginal = np.diag(joint).copy()
    expected = np.outer(marginal, marginal)
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(joint / expected)
    pmi[~np.isfinite(pmi)] = 0.0  # never co-occurring (log 0) or a label without items (0 / 0)
    return np.maximum(pmi, 0.0)


def _unit_rows(A: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(A, axis=1, keepdims=True)
    return np.divide(A, norms, out=np.zeros_like(A, dtype=np.float64), where=norms > 1e-12)


def cosine_scores(P, C) -> np.ndarray:
    """(n, L) cosine similarity of each row of ``P`` (n, d) to each label vector (row of ``C``, (L, d))."""
    return _unit_rows(np.asarray(P, dtype=np.float64)) @ _unit_rows(np.asarray(C, dtype=np.float64)).T


class LabelFactorisation:
    """PPMI -> SVD label factors (see the module docstring).

    Parameters
    ----------
    dim : int, the number of factors ``d`` (the paper: 50); at most the number of labels is kept.

    Attributes
    ----------
    ppmi_ : (L, L) the PPMI matrix of the fitted labels.
    label_factors_ : (L, d) ``U_d S_d``.
    singular_values_ : (d,) the top singular values.
    """

    def __init__(self, dim: int = 50):
        self.dim = dim

    def fit(self, M) -> "LabelFactorisation":
        if int(self.dim) < 1:
            raise UsageError(f"label factorisation: dim must be >= 1 (got {self.dim})")
        X = ppmi(M)
        U, s, _ = np.linalg.svd(X)
        d = min(int(self.dim), X.shape[0])
        U = U[:, :d]
        flip = np.sign(U[np.argmax(np.abs(U), axis=0), np.arange(d)])
        U = U * np.where(flip == 0, 1.0, flip)
        self.ppmi_ = X
        self.singular_values_ = s[:d]
        self.label_factors_ = U * s[:d]
        return self

    @classmethod
    def from_factors(cls, label_factors) -> "LabelFactorisation":
        """A fitted factorisation from stored label factors (e.g. a model artifact)."""
        out = cls(dim=int(np.asarray(label_factors).shape[1]))
        out.label_factors_ = np.asarray(label_factors, dtype=np.float64)
        out.singular_values_ = np.linalg.norm(out.label_factors_, axis=0)
        return out

    def item_factors(self, M) -> np.ndarray:
        """(n, d) item vectors ``M C_d``: the sum of each item's label vectors."""
        return _binary(M) @ self.label_factors_

    def scores(self, P) -> np.ndarray:
        """(n, L) cosine of predicted item vectors ``P`` (n, d) to every label vector."""
        return cosine_scores(P, self.label_factors_)

    def rank(self, P) -> np.ndarray:
        """(n, L) label indices from the nearest (highest cosine) to the farthest, per row of ``P``."""
        return np.argsort(-self.scores(P), axis=1, kind="stable")
