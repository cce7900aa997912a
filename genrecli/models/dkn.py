"""Deep Kernel Network (DKN): a multi-layer network of kernels trained with SVMs.

Method: /work/shared/spec/dm2kmn-method.md, section 5 (Jiu & Sahbi's DKN as used by the DM2KMN article).

Layer 1 holds the m elementary Gram matrices (any number of modalities; the input->hidden connections are
dense, so a hidden unit mixes modalities). Every further unit is

    K_p^(l) = g( sum_q w_qp^(l-1) K_q^(l-1) ),     w >= 0 (per-unit simplex),  g PSD-preserving   (DKN-1)

and the output kernel feeds one-vs-rest class-weighted soft-margin SVMs. The weights minimise the SVM dual
value J(w) (MKL criterion) by alternating an SVM step with projected gradient steps (Danskin's gradient,
obtained by autograd through DKN-1 on the n x n Gram stack).

All heavy math is torch float32 on ``device``; estimators take and return numpy arrays. Two interfaces:

* feature level, scikit-learn style: ``DKNClassifier(...).fit(X, y)`` with X the column concatenation of
  the modalities (``input_dims`` splits it) -> one ElementaryKernel per (modality, kernel);
* Gram level (used by the CLI pipeline on stored Grams): ``fit_gram(grams, y)``,
  ``decision_gram(grams_test)``, ``predict_gram(grams_test)``.

[I] choices (spec section 5) and the defaults taken here:
  activation exp (options expm1, cosh, poly with non-negative coefficients); weights per-unit simplex by
  projection (option softplus parametrisation, normalised per unit); output width 1 (option one per class);
  init |N(1/m, 0.1/m)| projected; SVM re-solve every T=10 steps; constant learning rate, by default set once
  as lr_scale / max|grad| at the first step (scale-free); stop when the best J has not improved by a relative
  ``tol`` over ``patience`` re-solves, or after ``max_iter`` steps; the weights with the lowest J are kept.
  SVM C by 5-fold stratified CV (balanced accuracy; genrecli.models.selection) of the SVMs on the output
  kernel, once with the initial weights (for training) and again on the trained kernel (for the final SVMs);
  class weights w_c = n / (C n_c).
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from genrecli.device import resolve_device
from genrecli.errors import UsageError
from genrecli.kernels import DEFAULT_OFFSET, DEFAULT_SIGMA, KERNEL_NAMES
from genrecli.models.selection import cv_folds, select_by_cv, task_score
from genrecli.models.svm import class_weight_vector, fit_one_vs_rest

ACTIVATIONS = ("exp", "expm1", "cosh", "poly")
WEIGHT_PARAMS = ("simplex", "softplus")
OUTPUT_MODES = ("single", "per-class")
DEFAULT_KERNELS = KERNEL_NAMES  # every elementary kernel of the registry, in its order

# Largest number of float32 elements one chunk of a layer may hold (128 MiB).
_CHUNK_ELEMS = 1 << 25


# ----------------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------------


class Activation:
    """A PSD-preserving elementwise activation g (a power series with non-negative coefficients)."""

    def __init__(self, name: str = "exp", coefs=(1.0, 1.0, 0.5)):
        if name not in ACTIVATIONS:
            raise UsageError(f"activation {name!r}: expected one of {', '.join(ACTIVATIONS)}")
        self.name = name
        self.coefs = tuple(float(c) for c in coefs)
        if name == "poly":
            if not self.coefs or any(c < 0 or not math.isfinite(c) for c in self.coefs):
                raise UsageError(f"poly activation coefficients {coefs!r}: must be finite and >= 0 (PSD)")

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        if self.name == "exp":
            return torch.exp(u)
        if self.name == "expm1":
            return torch.expm1(u)
        if self.name == "cosh":
            return torch.cosh(u)
        out = torch.full_like(u, self.coefs[-1])  # Horner
        for c in reversed(self.coefs[:-1]):
            out = out * u + c
        return out

    def apply_(self, u: torch.Tensor) -> torch.Tensor:
        """g(u) written over u (inference: no graph), the same values as ``g(u)``; poly allocates as ``g(u)``."""
        if self.name == "exp":
            return u.exp_()
        if self.name == "expm1":
            return u.expm1_()
        if self.name == "cosh":
            return u.cosh_()
        return self(u)

    def derivative(self, u: torch.Tensor, gu: torch.Tensor) -> torch.Tensor:
        """g'(u), given u and gu = g(u)."""
        if self.name == "exp":
            return gu
        if self.name == "expm1":
            return gu + 1.0
        if self.name == "cosh":
            return torch.sinh(u)
        d = [k * c for k, c in enumerate(self.coefs)][1:] or [0.0]
        out = torch.full_like(u, d[-1])
        for c in reversed(d[:-1]):
            out = out * u + c
        return out


def project_simplex(W: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of every column of W (m_in, m_out) onto {w >= 0, sum w = 1}."""
    m = W.shape[0]
    u, _ = torch.sort(W, dim=0, descending=True)
    css = u.cumsum(0) - 1.0
    k = torch.arange(1, m + 1, dtype=W.dtype, device=W.device).unsqueeze(1)
    cond = (u - css / k) > 0
    rho = (cond * k).amax(0)  # last index (1-based) where the condition holds; >= 1 always
    theta = css.gather(0, (rho.long() - 1).unsqueeze(0)) / rho.unsqueeze(0)
    return torch.clamp(W - theta, min=0.0)


def layer_widths(m_in: int, n_out: int, depth: int, hidden) -> list[int]:
    """Unit counts per layer: [m_in, hidden..., n_out] (depth layers in all)."""
    if not isinstance(depth, numbers.Integral) or depth < 2:
        raise UsageError(f"depth {depth!r}: must be an integer >= 2 (input and output layers)")
    n_hidden = depth - 2
    if hidden is None:
        hid = [2 * m_in] * n_hidden
    elif isinstance(hidden, numbers.Integral):
        hid = [int(hidden)] * n_hidden
    else:
        hid = [int(h) for h in hidden]
        if len(hid) != n_hidden:
            raise UsageError(f"hidden {hidden!r}: depth {depth} needs {n_hidden} hidden widths")
    if any(h < 1 for h in hid):
        raise UsageError(f"hidden {hidden!r}: widths must be >= 1")
    return [m_in, *hid, n_out]


def dkn_forward(weights, K: torch.Tensor, g: Activation, *, row_chunk: int | None = None,
                return_all: bool = False):
    """Apply DKN-1 to a Gram stack K (m, a, b) -> output kernels (m_L, a, b) (no gradient, chunked rows).

    With ``return_all`` the list of every layer's kernels (input included) is returned instead.
    """
    m, a, b = K.shape
    widest = max(W.shape[1] for W in weights)
    if row_chunk is None:
        row_chunk = max(1, _CHUNK_ELEMS // max(1, widest * b))
    if return_all:
        outs = [K] + [torch.empty(W.shape[1], a, b, dtype=K.dtype, device=K.device) for W in weights]
    else:
        outs = [torch.empty(weights[-1].shape[1], a, b, dtype=K.dtype, device=K.device)]
    with torch.no_grad():
        for r0 in range(0, a, row_chunk):
            A = K[:, r0:r0 + row_chunk]
            for li, W in enumerate(weights):
                A = combine(W, A, g, in_place=True)
                if return_all:
                    outs[li + 1][:, r0:r0 + row_chunk] = A
            if not return_all:
                outs[0][:, r0:r0 + row_chunk] = A
    return outs if return_all else outs[0]


def combine(W: torch.Tensor, A: torch.Tensor, g: Activation, *, in_place: bool = False) -> torch.Tensor:
    """g( sum_q W[q, p] A[q] ) for every unit p: (m_in, a, b) -> (m_out, a, b).

    ``in_place`` (no autograd): g is applied over the product instead of into a new tensor."""
    q, a, b = A.shape
    u = (W.T @ A.reshape(q, a * b)).reshape(W.shape[1], a, b)
    return g.apply_(u) if in_place else g(u)


def class_weights(y_idx: np.ndarray, n_classes: int, mode, classes=None) -> np.ndarray:
    """Per-class weights (n_classes,): 'balanced' -> n / (C n_c) (spec 5.3), None -> ones, dict {label: weight}.

    ``y_idx`` holds class indices 0..n_classes-1; a dict is keyed by the labels ``classes`` (default: the
    indices). 'balanced' is scikit-learn's (:func:`genrecli.models.svm.class_weight_vector`).
    """
    if isinstance(mode, dict):
        labels = np.asarray(classes) if classes is not None else np.arange(n_classes)
        return class_weight_vector(None, labels, mode)
    y_idx = np.asarray(y_idx)
    counts = np.bincount(y_idx, minlength=n_classes)
    if mode == "balanced" and not np.all(counts > 0):  # a class absent from y_idx: weighted as if it had 1 row
        return len(y_idx) / (n_classes * np.maximum(counts, 1.0))
    return class_weight_vector(y_idx, np.arange(n_classes), mode)


def ovr_targets(y_idx: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_heads, n) +-1 targets: one head for 2 classes (class 1 positive), else one per class."""
    if n_classes == 2:
        return np.where(y_idx == 1, 1.0, -1.0)[None, :]
    return np.where(y_idx[None, :] == np.arange(n_classes)[:, None], 1.0, -1.0)


def heads_to_scores(S: np.ndarray, n_classes: int) -> np.ndarray:
    """Head scores (n, n_heads) -> class scores (n, C); binary -> [-s, s]."""
    if n_classes == 2:
        return np.concatenate([-S, S], axis=1)
    return S


def solve_svms(Kout: np.ndarray, Yb: np.ndarray, sample_weight: np.ndarray, C: float, *, tol: float = 1e-3):
    """C one-vs-rest soft-margin SVMs on precomputed kernels (libsvm, :func:`genrecli.models.svm.fit_one_vs_rest`).

    Kout: (m_L, n, n) output kernels (head h uses Kout[h] when m_L > 1, else Kout[0]); Yb: (n_heads, n) +-1.
    Bounds 0 <= alpha_i <= C * omega_{y_i} via sample_weight. Returns beta (n_heads, n) = alpha * y (signed
    dual coefficients, decision = K beta + b) and b (n_heads,).
    """
    return fit_one_vs_rest(Kout if Kout.shape[0] > 1 else Kout[0], Yb, float(C), sample_weight, tol=tol)


def dual_objective(Kout: torch.Tensor, beta: np.ndarray) -> float:
    """J = sum_h [ sum_i alpha_hi - 1/2 beta_h^T K beta_h ]  (alpha = |beta|)."""
    B = torch.as_tensor(beta, dtype=Kout.dtype, device=Kout.device)
    total = float(np.abs(beta).sum())
    for h in range(B.shape[0]):
        K = Kout[h if Kout.shape[0] > 1 else 0]
        total -= 0.5 * float(B[h] @ (K @ B[h]))
    return total


def cv_select_C(Kout: np.ndarray, y_idx: np.ndarray, n_classes: int, omega: np.ndarray, grid, folds: int,
                seed: int, groups=None):
    """C of ``grid`` by ``folds``-fold stratified CV of the one-vs-rest SVMs on a fixed output kernel
    (stratified group folds with ``groups``, see :func:`~genrecli.models.selection.cv_folds`).

    Folds and scorer (balanced accuracy) of :mod:`genrecli.models.selection`; ties go to the smallest C.
    Returns (C, {C: mean validation score}); (grid[0], {}) when there are too few rows per class to fold.
    """
    Yb = ovr_targets(y_idx, n_classes)
    sw = omega[y_idx]
    candidates = sorted(float(C) for C in grid)

    def fold_scores(tr, va):
        Ktr = Kout[:, tr][:, :, tr]
        Kva = Kout[:, va][:, :, tr]
        out = []
        for C in candidates:
            beta, b = solve_svms(Ktr, Yb[:, tr], sw[tr], C)
            out.append(task_score(y_idx[va], heads_to_scores(svm_scores(Kva, beta, b), n_classes)))
        return out

    result = select_by_cv(candidates, fold_scores, cv_folds(y_idx, folds, seed=seed, groups=groups),
                          default=float(grid[0]))
    scores = result.as_dict()
    return float(result.best), {float(C): scores[float(C)] for C in grid if float(C) in scores}


def svm_scores(Kout_test: np.ndarray, beta: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(m_L, n_test, n_train) kernels -> (n_test, n_heads) SVM decision values."""
    n_heads = beta.shape[0]
    out = np.empty((Kout_test.shape[1], n_heads))
    for h in range(n_heads):
        out[:, h] = Kout_test[h if Kout_test.shape[0] > 1 else 0] @ beta[h] + b[h]
    return out


# ----------------------------------------------------------------------------------------------------------
# DKN training (alternating SVM step / projected-gradient step)
# ----------------------------------------------------------------------------------------------------------


@dataclass
class DKNTrainResult:
    weights: list  # list of (m_l, m_{l+1}) float32 numpy arrays
    history: list = field(default_factory=list)  # [(step, J)] at every SVM re-solve
    lr: float = 0.0
    steps: int = 0


def _theta_to_weights(thetas, mode):
    if mode == "simplex":
        return list(thetas)
    out = []
    for t in thetas:
        s = torch.nn.functional.softplus(t)
        out.append(s / s.sum(0, keepdim=True))
    return out


def _danskin_grad(thetas, mode, K, B, g, out_per_head: bool):
    """Gradient of f(theta) = -1/2 sum_h beta_h^T K_out(w(theta)) beta_h with alpha fixed (Danskin).

    Hand-written back-propagation through DKN-1, chunked over rows of the n x n Gram stack (autograd only for
    the tiny weights -> theta map of the softplus parametrisation).
    """
    with torch.no_grad():
        Ws = [w.detach() for w in _theta_to_weights(thetas, mode)]
    m, n, _ = K.shape
    row_chunk = max(1, _CHUNK_ELEMS // (2 * sum(W.shape[1] for W in Ws) * n))
    gW = [torch.zeros_like(W) for W in Ws]
    with torch.no_grad():
        for r0 in range(0, n, row_chunk):
            rows = slice(r0, r0 + row_chunk)
            A = K[:, rows]
            acts, pre = [A.reshape(m, -1)], []
            for W in Ws:
                Z = W.T @ acts[-1]
                pre.append(Z)
                acts.append(g(Z))
            # dF/dK_out for the rows of this chunk: -1/2 sum_h beta_h[rows] beta_h^T
            if out_per_head:
                dA = -0.5 * (B[:, rows].unsqueeze(2) * B.unsqueeze(1)).reshape(B.shape[0], -1)
            else:
                dA = (-0.5 * (B[:, rows].T @ B)).reshape(1, -1)
            for li in range(len(Ws) - 1, -1, -1):
                dZ = dA * g.derivative(pre[li], acts[li + 1])
                gW[li] += acts[li] @ dZ.T
                if li > 0:
                    dA = Ws[li] @ dZ
            del acts, pre, dA
    if mode == "simplex":
        return gW
    for t in thetas:
        t.grad = None
    Wt = _theta_to_weights(thetas, mode)
    torch.autograd.backward(Wt, gW)
    return [t.grad.detach().clone() for t in thetas]


def train_dkn(K: torch.Tensor, y_idx: np.ndarray, n_classes: int, *, widths, g: Activation, C: float,
              omega: np.ndarray, weight_param="simplex", lr="auto", lr_scale=0.05, max_iter=300,
              svm_every=10, patience=5, tol=1e-4, seed=0, init_weights=None) -> DKNTrainResult:
    """Alternating optimisation of the DKN weights (spec 5.4) on a training Gram stack K (m, n, n)."""
    if weight_param not in WEIGHT_PARAMS:
        raise UsageError(f"weights {weight_param!r}: expected one of {', '.join(WEIGHT_PARAMS)}")
    dev, dt = K.device, K.dtype
    gen = torch.Generator().manual_seed(int(seed))
    if init_weights is None:
        init_weights = init_dkn_weights(widths, gen)
    thetas = []
    for W0 in init_weights:
        W0 = torch.as_tensor(W0, dtype=dt)
        if weight_param == "softplus":  # inverse softplus of the (projected) initial weights
            W0 = torch.log(torch.expm1(torch.clamp(W0, min=1e-6)))
        thetas.append(W0.to(dev).clone().requires_grad_(True))
    Yb = ovr_targets(y_idx, n_classes)
    sw = omega[y_idx]
    per_head = widths[-1] > 1

    def current_weights():
        with torch.no_grad():
            return [w.detach().clone() for w in _theta_to_weights(thetas, weight_param)]

    def svm_step():
        Ws = current_weights()
        Kout = dkn_forward(Ws, K, g)
        beta, b = solve_svms(Kout.double().cpu().numpy(), Yb, sw, C)
        return Ws, beta, dual_objective(Kout, beta)

    Ws, beta, J = svm_step()
    history = [(0, J)]
    best_J, best_W, since_best = J, Ws, 0
    B = torch.as_tensor(beta, dtype=dt, device=dev)
    lr_ = None if lr == "auto" else float(lr)
    step = 0
    for step in range(1, int(max_iter) + 1):
        grads = _danskin_grad(thetas, weight_param, K, B, g, per_head)
        if lr_ is None:
            gmax = max(float(gr.abs().max()) for gr in grads)
            lr_ = float(lr_scale) / max(gmax, 1e-12) if gmax > 0 else 0.0
        with torch.no_grad():
            for t, gr in zip(thetas, grads):
                t -= lr_ * gr
                if weight_param == "simplex":
                    t.copy_(project_simplex(t))
        if step % int(svm_every) == 0 or step == int(max_iter):
            Ws, beta, J = svm_step()
            history.append((step, J))
            B = torch.as_tensor(beta, dtype=dt, device=dev)
            if not math.isfinite(J):
                break
            if J < best_J - tol * abs(best_J):
                best_J, best_W, since_best = J, Ws, 0
            else:
                if J < best_J:
                    best_J, best_W = J, Ws
                since_best += 1
                if since_best >= int(patience):
                    break
    return DKNTrainResult([w.cpu().numpy().astype(np.float32) for w in best_W], history, lr_ or 0.0, step)


def init_dkn_weights(widths, gen: torch.Generator):
    """|N(1/m, 0.1/m)| per layer (m = fan-in), projected onto the per-unit simplex (spec 5.4)."""
    out = []
    for m_in, m_out in zip(widths[:-1], widths[1:]):
        W = (1.0 / m_in + (0.1 / m_in) * torch.randn(m_in, m_out, generator=gen)).abs()
        out.append(project_simplex(W).numpy().astype(np.float32))
    return out


def relative_importance(weights, modalities=None) -> dict:
    """Garson's relative importance (spec 7.3) of every input kernel, in percent, and per-modality totals.

    For depth 3: RI_q = sum_p (|w1_qp| / sum_k |w1_kp|) |w2_po|, normalised to 100 % and averaged over the
    output units o. Deeper nets chain the column-normalised matrices of the inner layers.
    """
    Ws = [np.abs(np.asarray(W, dtype=np.float64)) for W in weights]
    contrib = np.eye(Ws[0].shape[0])
    for W in Ws[:-1]:
        contrib = contrib @ (W / np.maximum(W.sum(0, keepdims=True), 1e-300))
    contrib = contrib @ Ws[-1]  # (m_in, n_out)
    contrib = contrib / np.maximum(contrib.sum(0, keepdims=True), 1e-300)
    ri = 100.0 * contrib.mean(1)
    out = {"per_kernel": ri.tolist()}
    if modalities is not None:
        if len(modalities) != len(ri):
            raise UsageError(f"modalities: {len(modalities)} names for {len(ri)} input kernels")
        totals: dict = {}
        for name, v in zip(modalities, ri):
            totals[str(name)] = totals.get(str(name), 0.0) + float(v)
        out["per_modality"] = totals
    return out


# ----------------------------------------------------------------------------------------------------------
# Estimator helpers shared with the DM2KMN
# ----------------------------------------------------------------------------------------------------------


def split_columns(n_features: int, input_dims) -> list[slice]:
    if input_dims is None:
        return [slice(0, n_features)]
    dims = [int(d) for d in input_dims]
    if any(d < 1 for d in dims) or sum(dims) != n_features:
        raise ValueError(f"input_dims {tuple(dims)} must be positive and sum to the {n_features} features of X")
    out, s = [], 0
    for d in dims:
        out.append(slice(s, s + d))
        s += d
    return out


def pack_json(obj) -> np.ndarray:
    return np.frombuffer(json.dumps(obj).encode("utf-8"), dtype=np.uint8).copy()


def unpack_json(arr):
    return json.loads(np.asarray(arr, dtype=np.uint8).tobytes().decode("utf-8"))


def _best_time(fn, repeats) -> float:
    """Seconds of the fastest of ``repeats`` calls of ``fn`` after one warm-up call."""
    import time

    fn()  # warm-up
    best = math.inf
    for _ in range(max(1, int(repeats))):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def seed_of(random_state) -> int:
    if random_state is None:
        return 0
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**31 - 1))
    return int(random_state)


def finite_mode(scale):
    """``ensure_all_finite`` of the feature-level ``validate_data``: NaN passes only to a scaling, which drops
    all-NaN columns (what is left is checked by the kernels); without scaling, scikit-learn's check as before."""
    scales = (scale,) if isinstance(scale, str) or scale is None else tuple(scale)
    return True if all(s in (None, "none") for s in scales) else "allow-nan"


class _KernelInputsMixin:
    """Feature-level input of the DKN: one ElementaryKernel per (modality, kernel name)."""

    def _block_scales(self, n_blocks: int) -> tuple[str, ...]:
        """``scale`` as one method per input block (a single method applies to every block)."""
        from genrecli.kernels.scaling import check_method

        scale = self.scale
        if isinstance(scale, str):
            scales = (scale,) * n_blocks
        else:
            scales = tuple(scale)
            if len(scales) != n_blocks:
                raise UsageError(f"scale {scale!r}: {len(scales)} methods for {n_blocks} input blocks (input_dims)")
        return tuple(check_method(s, what="scale", allow_auto=False) for s in scales)

    def _block_labels(self, n_blocks: int) -> list[str]:
        """A name per input block for messages: ``input_names``, else the modality names."""
        if self.input_names is not None and len(self.input_names) == n_blocks:
            return [str(n) for n in self.input_names]
        return self._modality_names(n_blocks)

    def _block_kernel(self, kname: str, block: int, n_blocks: int):
        """The unfitted ElementaryKernel of kernel ``kname`` on input block ``block``."""
        from genrecli.kernels.elementary import ElementaryKernel

        return ElementaryKernel(kname, offset=self.kernel_offset, sigma=self.sigma,
                                scale=self._block_scales(n_blocks)[block],
                                input_name=self._block_labels(n_blocks)[block], device=self.device)

    def _modality_names(self, n_mod):
        if self.modality_names is not None:
            names = [str(s) for s in self.modality_names]
            if len(names) != n_mod:
                raise ValueError(f"modality_names has {len(names)} names for {n_mod} modalities")
            return names
        return [f"m{i}" for i in range(n_mod)]

    def _fit_kernels(self, X):
        self.slices_ = split_columns(X.shape[1], self.input_dims)
        names = self._modality_names(len(self.slices_))
        kernels, modalities, labels = [], [], []
        for block, (sl, mod) in enumerate(zip(self.slices_, names)):
            for kname in self.kernels:
                ek = self._block_kernel(kname, block, len(self.slices_))
                ek.fit(X[:, sl])
                kernels.append(ek)
                modalities.append(mod)
                labels.append(f"{mod}/{kname}")
        self.kernels_ = kernels
        self.input_names_ = labels
        return modalities

    def _grams(self, X, fitted_rows=None):
        """Stack of scaled elementary Grams of X against the training set: (m, n_x, n_train) float32."""
        out = None
        for i, ek in enumerate(self.kernels_):
            sl = self.slices_[i // len(self.kernels)]
            G = np.asarray(ek.transform(X[:, sl]), dtype=np.float32)
            if out is None:
                out = np.empty((len(self.kernels_),) + G.shape, dtype=np.float32)
            out[i] = G
        return out


def _to_labels(y):
    check_classification_targets(y)
    enc = LabelEncoder().fit(y)
    return enc.classes_, enc.transform(y).astype(np.int64)


def _check_grams(grams, name="grams", n_train=None, m=None) -> np.ndarray:
    G = np.asarray(grams, dtype=np.float32)
    if G.ndim != 3:
        raise ValueError(f"{name}: expected a (m, n, n_train) stack of Gram matrices, got shape {G.shape}")
    if not np.all(np.isfinite(G)):
        raise ValueError(f"{name}: contains NaN or infinite values")
    if n_train is not None and G.shape[2] != n_train:
        raise ValueError(f"{name}: {G.shape[2]} columns, the model was trained on {n_train} tracks")
    if m is not None and G.shape[0] != m:
        raise ValueError(f"{name}: {G.shape[0]} kernels, the model was trained on {m}")
    return G


# ----------------------------------------------------------------------------------------------------------
# The estimator
# ----------------------------------------------------------------------------------------------------------


class DKNClassifier(_KernelInputsMixin, ClassifierMixin, BaseEstimator):
    """Deep kernel network + one-vs-rest SVMs (spec section 5).

    Parameters
    ----------
    kernels : elementary kernel names applied to every modality (genrecli.kernels.KERNEL_NAMES: linear, poly2,
        rbf, hist).
    input_dims : feature count of each modality in the columns of X (None: one modality).
    modality_names : a name per modality (for relative-importance totals); default m0, m1, ...
    hidden : hidden width (int, or a tuple with one width per hidden layer); None = 2 x number of inputs.
    depth : number of layers, input and output included (3 = input, hidden, output).
    activation : 'exp' (default), 'expm1', 'cosh' or 'poly' (coefficients ``poly_coefs``, all >= 0).
    output : 'single' (one output kernel shared by the C SVMs) or 'per-class' (one output kernel per SVM).
    weights : 'simplex' (projected gradient, per-unit simplex) or 'softplus' (w = softplus(v), normalised).
    C : SVM C, or 'cv' (``cv``-fold stratified CV over ``C_grid``, balanced accuracy, ties -> smallest C).
    class_weight : 'balanced' (w_c = n / (C n_c)), None, or a dict {class label: weight}.
    lr : constant learning rate of the weight steps, or 'auto' (= lr_scale / max|grad| at the first step).
    max_iter, svm_every, patience, tol : projected-gradient steps, SVM re-solve period T, plateau rule.
    kernel_offset, sigma : poly2 offset c and RBF bandwidth rule, passed to ElementaryKernel.
    scale : feature scaling of the inputs (genrecli.kernels.scaling: 'none', 'standard', 'robust', 'minmax',
        'l2'), fitted on the training rows by each ElementaryKernel: one method for every block, or a tuple
        with one per block of ``input_dims``. Default 'none'. (The model-level DKNModel resolves 'auto'.)
    input_names : a name per input block, for scaling warnings (default: modality_names).
    random_state : seed (weights initialisation, CV folds). device : 'cpu', 'cuda', 'auto'.
    block_size : rows of X scored at a time by :meth:`decision_function` / :meth:`predict` (their elementary
        Grams against the n_train training rows are (m, block_size, n_train)); None = all rows at once.
        Scores do not depend on it (up to float32 round-off). A row-sliceable array-like (memmap,
        ``h5py.Dataset``) is read one block at a time.
    """

    def __init__(self, kernels=DEFAULT_KERNELS, *, input_dims=None, modality_names=None, hidden=None, depth=3,
                 activation="exp", poly_coefs=(1.0, 1.0, 0.5), output="single", weights="simplex", C="cv",
                 C_grid=(0.1, 1.0, 10.0, 100.0), cv=5, class_weight="balanced", lr="auto", lr_scale=0.05,
                 max_iter=300, svm_every=10, patience=5, tol=1e-4, kernel_offset=DEFAULT_OFFSET, sigma=DEFAULT_SIGMA,
                 scale="none", input_names=None, random_state=None, device="cpu", block_size=8192):
        self.block_size = block_size
        self.kernels = kernels
        self.input_dims = input_dims
        self.modality_names = modality_names
        self.hidden = hidden
        self.depth = depth
        self.activation = activation
        self.poly_coefs = poly_coefs
        self.output = output
        self.weights = weights
        self.C = C
        self.C_grid = C_grid
        self.cv = cv
        self.class_weight = class_weight
        self.lr = lr
        self.lr_scale = lr_scale
        self.max_iter = max_iter
        self.svm_every = svm_every
        self.patience = patience
        self.tol = tol
        self.kernel_offset = kernel_offset
        self.sigma = sigma
        self.scale = scale
        self.input_names = input_names
        self.random_state = random_state
        self.device = device

    # -- sklearn plumbing ------------------------------------------------------------------------------------
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        tags.non_deterministic = False
        return tags

    def _activation(self):
        return Activation(self.activation, self.poly_coefs)

    def _device(self):
        return resolve_device(self.device)

    # -- feature-level interface -----------------------------------------------------------------------------
    def fit(self, X, y, *, cv_groups=None):
        """Fit the elementary kernels on X (train only), then train the DKN and its SVMs.

        ``cv_groups`` (n,): the group of each row for the C-selection CV (grouped folds), None: stratified."""
        X, y = validate_data(self, X, y, dtype=np.float64, ensure_min_samples=2, ensure_all_finite=finite_mode(self.scale))
        classes, y_idx = _to_labels(y)
        if len(classes) < 2:
            raise ValueError("y has a single class; a classifier needs at least 2 classes")
        modalities = self._fit_kernels(X)
        grams = self._grams(X)
        self._fit_gram_idx(grams, y_idx, classes, modalities, cv_groups)
        return self

    def _heads_features(self, X) -> np.ndarray:
        """Head decision values (n_x, n_heads) of feature rows X, ``block_size`` rows at a time."""
        from genrecli.kernels.landmarks import read_rows, row_blocks

        if (not isinstance(X, np.ndarray) and not hasattr(X, "iloc") and getattr(X, "ndim", 0) == 2
                and hasattr(X, "__getitem__")):  # a store dataset or view: read block by block
            n, read = int(X.shape[0]), lambda a, b: read_rows(X, a, b)
        else:
            X = validate_data(self, X, dtype=np.float32, reset=False, ensure_all_finite=finite_mode(self.scale))
            n, read = X.shape[0], lambda a, b: X[a:b]
        out = []
        for a, b in row_blocks(n, self.block_size):
            A = validate_data(self, read(a, b), dtype=np.float32, reset=False, ensure_all_finite=finite_mode(self.scale))
            out.append(self._decision_heads(self._grams(A)))
        return out[0] if len(out) == 1 else np.concatenate(out, 0)

    def decision_function(self, X):
        """Decision values of feature rows X (n_x, n_features_in_): (n_x,) for two classes, else (n_x, C)."""
        check_is_fitted(self, "kernels_")
        S = self._heads_features(X)
        return S[:, 0] if len(self.classes_) == 2 else S

    def predict(self, X):
        """Labels (n_x,) of feature rows X (n_x, n_features_in_), ``block_size`` rows at a time."""
        check_is_fitted(self, "kernels_")
        return self.classes_[heads_to_scores(self._heads_features(X), len(self.classes_)).argmax(1)]

    # -- Gram-level interface --------------------------------------------------------------------------------
    def fit_gram(self, grams, y, *, map_grams=None, modalities=None, cv_groups=None):
        """Train on a stack of exact elementary training Grams (m, n_train, n_train) (map_grams unused);
        ``cv_groups`` as in :meth:`fit`."""
        G = _check_grams(grams)
        if G.shape[1] != G.shape[2]:
            raise ValueError(f"grams: training Grams must be square, got {G.shape}")
        classes, y_idx = _to_labels(np.asarray(y))
        if len(classes) < 2:
            raise ValueError("y has a single class; a classifier needs at least 2 classes")
        if len(y_idx) != G.shape[1]:
            raise ValueError(f"y has {len(y_idx)} labels for {G.shape[1]} training tracks")
        self._fit_gram_idx(G, y_idx, classes, modalities, cv_groups)
        return self

    def decision_gram(self, grams_test, *, map_grams_test=None):
        """(m, n_test, n_train) exact elementary Grams -> (n_test, C) class scores."""
        check_is_fitted(self, "weights_")
        G = _check_grams(grams_test, "grams_test", self.n_train_, len(self.weights_[0]))
        return self._scores(G)

    def predict_gram(self, grams_test, *, map_grams_test=None):
        return self.classes_[self.decision_gram(grams_test).argmax(1)]

    def relative_importance(self):
        check_is_fitted(self, "weights_")
        return relative_importance(self.weights_, self.modalities_)

    def extra_metrics(self, grams_test=None, *, map_grams_test=None, repeats=3) -> dict:
        """RI of the input kernels and, with grams_test, the forward time of the test set (best of repeats).

        grams_test: exact elementary Grams test x train (m, n_test, n_train). See :meth:`extra_metrics_features`
        for test feature rows.
        """
        check_is_fitted(self, "weights_")
        out = {"ri_dkn": self.relative_importance(), "support_vectors": int(len(self.support_))}
        if grams_test is not None:
            G = _check_grams(grams_test, "grams_test", self.n_train_, len(self.weights_[0]))
            out.update({"forward_time_dkn_s": _best_time(lambda: self._scores(G), repeats), "n_test": int(G.shape[1])})
        return out

    def extra_metrics_features(self, X_test, *, repeats=3) -> dict:
        """:meth:`extra_metrics` from test FEATURE rows, after a feature-level :meth:`fit` (or a load of its state).

        Parameters
        ----------
        X_test : array-like, shape (n_test, n_features_in_)
            Test rows, columns as in :meth:`fit` (modalities side by side, split by ``input_dims``).
        repeats : int
            Each time is the best of ``repeats`` runs after one warm-up.

        Returns
        -------
        dict
            ``ri_dkn``, ``support_vectors``, ``n_test``; ``forward_time_dkn_s``: seconds to score the test rows
            from their features (:meth:`decision_function`: elementary Grams against the training rows, then
            the network and the SVMs); ``network_time_dkn_s``: the network and SVMs alone on those Grams (what
            the Gram-level :meth:`extra_metrics` calls ``forward_time_dkn_s``).
        """
        check_is_fitted(self, "kernels_")
        X = validate_data(self, X_test, dtype=np.float64, reset=False, ensure_all_finite=finite_mode(self.scale))
        G = self._grams(X)
        out = self.extra_metrics(G, repeats=repeats)
        out["network_time_dkn_s"] = out["forward_time_dkn_s"]
        out["forward_time_dkn_s"] = _best_time(lambda: self.decision_function(X), repeats)
        return out

    # -- internals -------------------------------------------------------------------------------------------
    def _fit_gram_idx(self, G: np.ndarray, y_idx, classes, modalities, cv_groups=None):
        if self.output not in OUTPUT_MODES:
            raise UsageError(f"output {self.output!r}: expected one of {', '.join(OUTPUT_MODES)}")
        dev = self._device()
        g = self._activation()
        seed = seed_of(self.random_state)
        n_classes = len(classes)
        n_heads = 1 if n_classes == 2 else n_classes
        widths = layer_widths(G.shape[0], 1 if self.output == "single" else n_heads, self.depth, self.hidden)
        omega = class_weights(y_idx, n_classes, self.class_weight, classes)
        K = torch.from_numpy(G).to(dev)
        gen = torch.Generator().manual_seed(seed)
        W0 = init_dkn_weights(widths, gen)
        grid = tuple(float(c) for c in self.C_grid)
        if self.C == "cv":
            Kout0 = dkn_forward([torch.as_tensor(w, device=dev) for w in W0], K, g).double().cpu().numpy()
            C_train, _ = cv_select_C(Kout0, y_idx, n_classes, omega, grid, int(self.cv), seed, cv_groups)
            del Kout0
        elif isinstance(self.C, numbers.Real) and self.C > 0:
            C_train = float(self.C)
        else:
            raise UsageError(f"C {self.C!r}: expected a positive number or 'cv'")
        res = train_dkn(K, y_idx, n_classes, widths=widths, g=g, C=C_train, omega=omega, weight_param=self.weights,
                        lr=self.lr, lr_scale=self.lr_scale, max_iter=self.max_iter, svm_every=self.svm_every,
                        patience=self.patience, tol=self.tol, seed=seed, init_weights=W0)
        Ws = [torch.as_tensor(w, device=dev) for w in res.weights]
        Kout = dkn_forward(Ws, K, g).double().cpu().numpy()
        if self.C == "cv":
            C_final, self.cv_scores_ = cv_select_C(Kout, y_idx, n_classes, omega, grid, int(self.cv), seed, cv_groups)
        else:
            C_final, self.cv_scores_ = C_train, {}
        beta, b = solve_svms(Kout, ovr_targets(y_idx, n_classes), omega[y_idx], C_final)
        self.classes_ = classes
        self.weights_ = res.weights
        self.widths_ = widths
        self.history_ = res.history
        self.lr_ = res.lr
        self.n_iter_ = res.steps
        self.C_train_ = C_train
        self.C_ = C_final
        self.class_weight_ = omega
        self.n_train_ = G.shape[1]
        support = np.flatnonzero(np.any(beta != 0, axis=0))
        self.support_ = support
        self.dual_coef_ = np.ascontiguousarray(beta[:, support], dtype=np.float32)
        self.intercept_ = b
        self.dual_objective_ = dual_objective(torch.from_numpy(Kout), beta)
        self.modalities_ = list(modalities) if modalities is not None else None
        return self

    def _decision_heads(self, G: np.ndarray) -> np.ndarray:
        """(m, n_test, n_train) -> (n_test, n_heads) decision values (only support columns are propagated)."""
        dev = self._device()
        g = self._activation()
        Ws = [torch.as_tensor(w, device=dev) for w in self.weights_]
        sup = torch.as_tensor(self.support_, device="cpu")
        K = torch.from_numpy(np.ascontiguousarray(G))
        if len(self.support_) < G.shape[2]:
            K = K.index_select(2, sup)
        K = K.to(dev)
        beta = torch.as_tensor(self.dual_coef_, device=dev)
        b = torch.as_tensor(self.intercept_, dtype=torch.float32, device=dev)
        n_heads = beta.shape[0]
        n_test, n_sup = K.shape[1], K.shape[2]
        out = torch.empty(n_test, n_heads, device=dev)
        widest = max(w.shape[1] for w in Ws)
        chunk = max(1, _CHUNK_ELEMS // max(1, widest * n_sup))
        with torch.no_grad():
            for r0 in range(0, n_test, chunk):
                A = K[:, r0:r0 + chunk]
                for W in Ws:
                    A = combine(W, A, g, in_place=True)
                if A.shape[0] == 1:
                    out[r0:r0 + chunk] = A[0] @ beta.T + b
                else:
                    out[r0:r0 + chunk] = torch.einsum("hij,hj->ih", A, beta) + b
        return out.cpu().numpy().astype(np.float64)

    def _scores(self, G):
        return heads_to_scores(self._decision_heads(G), len(self.classes_))

    def output_gram(self, grams) -> np.ndarray:
        """The DKN output kernel(s) (m_L, a, b) for an elementary Gram stack (m, a, b)."""
        check_is_fitted(self, "weights_")
        dev = self._device()
        Ws = [torch.as_tensor(w, device=dev) for w in self.weights_]
        K = torch.from_numpy(_check_grams(grams, m=len(self.weights_[0]))).to(dev)
        return dkn_forward(Ws, K, self._activation()).cpu().numpy()

    # -- persistence -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """All learned arrays (numeric numpy, safetensors-ready; classes and names as UTF-8 JSON bytes)."""
        check_is_fitted(self, "weights_")
        d = {f"dkn.w{i}": np.asarray(w, dtype=np.float32) for i, w in enumerate(self.weights_)}
        d.update({
            "svm.support": np.asarray(self.support_, dtype=np.int64),
            "svm.dual_coef": np.asarray(self.dual_coef_, dtype=np.float32),
            "svm.intercept": np.asarray(self.intercept_, dtype=np.float64),
            "svm.C": np.asarray([self.C_, self.C_train_], dtype=np.float64),
            "meta.n_train": np.asarray([self.n_train_], dtype=np.int64),
            "meta.classes_json": pack_json(np.asarray(self.classes_).tolist()),
            "meta.modalities_json": pack_json(self.modalities_),
        })
        if hasattr(self, "kernels_"):
            d["meta.n_features_in"] = np.asarray([self.n_features_in_], dtype=np.int64)
            for i, ek in enumerate(self.kernels_):
                for k, v in ek.get_state().items():
                    d[f"kernel.{i}.{k}"] = np.asarray(v)
        return {k: np.ascontiguousarray(v) for k, v in d.items()}  # safetensors writes raw C-order buffers

    def load_state_dict(self, d: dict):
        """Restore a model saved by :meth:`state_dict` (constructor parameters must match)."""
        n_layers = len([k for k in d if k.startswith("dkn.w")])
        self.weights_ = [np.asarray(d[f"dkn.w{i}"], dtype=np.float32) for i in range(n_layers)]
        self.widths_ = [self.weights_[0].shape[0]] + [w.shape[1] for w in self.weights_]
        self.support_ = np.asarray(d["svm.support"], dtype=np.int64)
        self.dual_coef_ = np.asarray(d["svm.dual_coef"], dtype=np.float32)
        self.intercept_ = np.asarray(d["svm.intercept"], dtype=np.float64)
        self.C_, self.C_train_ = (float(v) for v in d["svm.C"])
        self.n_train_ = int(d["meta.n_train"][0])
        self.classes_ = np.asarray(unpack_json(d["meta.classes_json"]))
        self.modalities_ = unpack_json(d["meta.modalities_json"])
        self._load_kernels(d)
        return self

    def _load_kernels(self, d):
        idx = sorted({int(k.split(".")[1]) for k in d if k.startswith("kernel.")})
        if not idx:
            return
        self.n_features_in_ = int(d["meta.n_features_in"][0])
        self.slices_ = split_columns(self.n_features_in_, self.input_dims)
        kernels = []
        for i in idx:
            kname = self.kernels[i % len(self.kernels)]
            ek = self._block_kernel(kname, i // len(self.kernels), len(self.slices_))
            pre = f"kernel.{i}."
            ek.set_state({k[len(pre):]: v for k, v in d.items() if k.startswith(pre)})
            kernels.append(ek)
        self.kernels_ = kernels
        names = self._modality_names(len(self.slices_))
        self.input_names_ = [f"{mod}/{kname}" for mod in names for kname in self.kernels][: len(kernels)]
