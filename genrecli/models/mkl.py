"""Kernel-side baselines of the DM2KMN comparison: early fusion, late fusion and multiple kernel learning.

Every model here ends in :class:`~genrecli.models.svm.KernelSVM` (one-vs-rest, class weights n / (C n_c), C by
k-fold CV on the training rows; one binary SVM per label for a multi-hot ``y``) and owns its elementary kernels
like :mod:`genrecli.models.kernel`'s models: one :class:`~genrecli.kernels.elementary.ElementaryKernel` per
(input, kernel) pair, fitted on the training rows only (preprocessing, RBF width, unit mean diagonal), kept
with only the rows some SVM gives a dual weight, so a saved model needs no store to predict.

* ``svm-concat`` (:class:`ConcatSVMModel`) -- early fusion: the inputs concatenated (sorted input-name order),
  z-scored per column with training statistics, one kernel, one SVM.
* ``svm-late`` (:class:`LateFusionSVMModel`) -- late fusion: one SVM per (input, kernel) pair, their
  calibrated class probabilities averaged (or their scaled decision values, ``combine='decision'``).
* ``mkl-average`` (:class:`AverageMKLModel`) -- one SVM on the uniform mean of every elementary kernel.
* ``easymkl`` (:class:`EasyMKLModel`) -- EasyMKL (Aiolli & Donini, Neurocomputing 2015) kernel weights, then one
  SVM on the weighted sum; :func:`easymkl_weights` is the algorithm on Grams, in NumPy (no MKLpy needed).

Inner SVM options (``-o C=10``, ``C_grid``, ``cv``, ``class_weight``) reach the KernelSVM of every model;
``random_state`` seeds its CV folds and the calibration folds of ``svm-late``.

Every model takes ``scale`` (``-o scale=METHOD``, ``-o INPUT.scale=METHOD``; default 'auto'), the per-input
feature scaling of :mod:`genrecli.kernels.scaling`, as :mod:`genrecli.models.kernel`'s models do: resolved per
input name at fit, fitted on the training rows inside each input's kernels (in ``svm-concat``, on each input
before the concatenation), recorded in the meta as ``scaling``.

A :class:`~genrecli.models.kernel.GramCache` (``genre kernels``'s store) may hand ``svm-late``, ``mkl-average``
and ``easymkl`` their training Grams; ``svm-concat``'s kernel is on the concatenated features, never cached.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.base import clone

from genrecli.errors import UsageError
from genrecli.kernels.scaling import AUTO, InputScaler, warn_once
from genrecli.models.base import GenreModel
from genrecli.models.kernel import (
    DEFAULT_KERNELS, GramCache, SVMPart, _check_y, _loaded_scaling, _prefixed, _scale_options, _scaling, _vectors,
)

COMBINE_RULES = ("proba", "decision")
_T_BOUNDS = (1e-2, 1e2)  # svm-late: range of the softmax temperature
_LOG_FLOOR = 1e-12  # svm-late: probabilities are clipped here before the log / logit of the scores


# ------------------------------------------------------------------------------------------- algorithms
def combine_grams(grams, weights) -> np.ndarray:
    """sum_r weights[r] * grams[r] in float64: the combined Gram of a kernel combination.

    ``grams`` is a sequence (or (m, n, n') stack) of Grams of the same shape, ``weights`` (m,).
    """
    weights = np.asarray(weights, dtype=np.float64)
    if len(grams) != len(weights) or len(weights) == 0:
        raise ValueError(f"{len(grams)} Grams for {len(weights)} weights")
    out = np.zeros(np.shape(grams[0]), dtype=np.float64)
    for w, K in zip(weights, grams):
        out += w * np.asarray(K, dtype=np.float64)
    return out


def centroid_margin_qp(K, target, *, tol: float = 1e-6, max_iter: int | None = None) -> np.ndarray:
    """The EasyMKL inner problem: ``min_g  g^T Y K Y g`` over ``g >= 0`` summing to 1 on each class.

    ``target`` is in {-1, +1} (n,); ``K`` is the (n, n) kernel (EasyMKL passes ``(1 - lam) sum_r K_r + lam I``).
    ``Y K Y`` is the squared distance of two points of the classes' convex hulls, so the solution is their
    closest pair (the hard-margin SVM's). Solved by SMO: move mass between two rows of one class (the most
    violating pair, second-order choice as in libsvm) until no pair improves the objective by more than
    ``tol`` times the largest diagonal entry.

    Returns
    -------
    gamma : np.ndarray (n,) float64, non-negative, summing to 1 over each class.
    """
    K = np.asarray(K, dtype=np.float64)
    y = np.where(np.asarray(target) > 0, 1.0, -1.0)
    n = len(y)
    n_pos = int((y > 0).sum())
    if n_pos == 0 or n_pos == n:
        raise ValueError("the centroid margin needs rows of both classes")
    # Positives first, so that each class is one contiguous slice (views, not gathers, in the loop).
    order = np.argsort(-y, kind="stable")
    K = np.ascontiguousarray(K[np.ix_(order, order)])
    y = y[order]
    gamma = np.where(y > 0, 1.0 / n_pos, 1.0 / (n - n_pos))
    h = K @ (y * gamma)  # K u with the signed weights u = Y gamma
    diag = np.diag(K).copy()
    scale = max(float(diag.max()), 1e-300)
    floor = 1e-12 * scale
    limit = max_iter if max_iter is not None else max(10_000, 200 * n)
    slices = [slice(0, n_pos), slice(n_pos, n)]
    for _ in range(limit):
        best = None
        for part in slices:
            gr = 2.0 * y[part] * h[part]  # the gradient of g^T Y K Y g on this class
            a = int(np.argmin(gr))  # mass goes to the row of least gradient ...
            gap = gr - gr[a]
            movable = (gamma[part] > 0) & (gap > 0)  # ... from a row of larger gradient that has mass
            if not movable.any():
                continue
            i = part.start + a
            curvature = np.maximum(diag[i] + diag[part] - 2.0 * K[i, part], floor)
            gain = np.where(movable, gap * gap / curvature, -1.0)  # libsvm's second-order choice
            b = int(np.argmax(gain))
            if best is None or gap[b] > best[3]:
                best = (i, part.start + b, curvature[b], gap[b])
        if best is None or best[3] <= tol * scale:
            break
        i, j, curvature, gap = best
        t = gap / (2.0 * curvature)  # the exact line minimum ...
        if t >= gamma[j] * (1.0 - 1e-12):  # ... within gamma_j >= 0
            t = gamma[j]
        gamma[i] += t
        gamma[j] -= t
        h += (y[i] * t) * (K[i] - K[j])  # y_i == y_j; K symmetric, so rows instead of columns
    out = np.empty(n)
    out[order] = gamma
    gamma = out
    return gamma


def easymkl_weights(grams, y, lam: float = 0.1, *, tol: float = 1e-6) -> np.ndarray:
    """EasyMKL kernel weights (Aiolli & Donini 2015), normalised to sum to 1.

    For one binary problem with targets ``t`` (Y = diag(t)): ``gamma`` solves :func:`centroid_margin_qp` on
    ``(1 - lam) sum_r K_r + lam I`` -- the margin between the class centroids in the kernels' joint feature
    space, regularised towards uniform weights by ``lam`` (0: the hulls' closest points, 1: the plain class
    centroids) -- and each kernel's weight is its own squared centroid distance ``d_r = (Y gamma)^T K_r (Y
    gamma)``, normalised (``d / sum(d)``; the paper's ``d / ||d||_2`` differs by one factor for all kernels).

    Multi-class ``y`` (n,): one-vs-rest problems, their weight vectors averaged (MKLpy instead keeps one
    combination per binary problem). Multi-hot ``y`` (n, L): one problem per label present on some but not
    all rows, averaged likewise. A problem whose class hulls meet in every kernel (only possible with
    ``lam = 0``) has no margin to share and gives uniform weights.

    Parameters
    ----------
    grams : sequence of m (n, n) training Grams (here unit mean diagonal)
    y : (n,) labels or (n, L) multi-hot
    lam : float in [0, 1]
    tol : float, the QP tolerance (relative to the largest diagonal entry)

    Returns
    -------
    weights : np.ndarray (m,) float64, non-negative, summing to 1.
    """
    lam = float(lam)
    if not 0.0 <= lam <= 1.0:
        raise UsageError(f"easymkl lam={lam!r}: expected a number in [0, 1]")
    m = len(grams)
    y = np.asarray(y)
    n = len(y)
    if y.ndim == 2:
        targets = [np.where(col, 1.0, -1.0) for col in y.T.astype(bool) if 0 < col.sum() < n]
    else:
        classes = np.unique(y)
        targets = [np.where(y == c, 1.0, -1.0) for c in classes]
        if len(classes) == 2:  # both one-vs-rest problems are the same problem
            targets = targets[1:]
    if m == 1 or not targets:
        return np.full(m, 1.0 / m)
    K = (1.0 - lam) * combine_grams(grams, np.ones(m))
    K[np.diag_indices(n)] += lam
    scale = max(float(np.max(np.diag(K))), 1e-300)
    per_problem = []
    for target in targets:
        u = target * centroid_margin_qp(K, target, tol=tol)
        d = np.array([max(float(u @ (np.asarray(Kr, dtype=np.float64) @ u)), 0.0) for Kr in grams])
        # Hulls that meet in every kernel (possible only for lam = 0) leave no margin to share: uniform.
        per_problem.append(d / d.sum() if d.sum() > 1e-8 * scale else np.full(m, 1.0 / m))
    weights = np.mean(per_problem, axis=0)
    return weights / weights.sum()


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))


def fit_temperature(scores: np.ndarray, y: np.ndarray, classes: np.ndarray) -> float:
    """The T minimising the log-loss of ``softmax(scores / T)`` on labels ``y`` (T within [0.01, 100])."""
    from scipy.optimize import minimize_scalar

    index = np.searchsorted(classes, y)
    scores = np.asarray(scores, dtype=np.float64)

    def nll(log_t):
        z = scores / math.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(z)), index]))

    res = minimize_scalar(nll, bounds=tuple(math.log(b) for b in _T_BOUNDS), method="bounded", options={"xatol": 1e-4})
    return float(math.exp(res.x))


def fit_platt(scores: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """Platt scaling of one binary score: (a, b) of ``sigmoid(a * s + b)``, with Platt's smoothed targets."""
    from scipy.optimize import minimize

    s = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    t = np.where(positive, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))

    def loss(p):
        z = p[0] * s + p[1]
        # log(1 + e^z) - t z, computed stably; its gradient is (sigmoid(z) - t) [s, 1]
        value = np.mean(np.logaddexp(0.0, z) - t * z)
        r = sigmoid(z) - t
        return value, np.array([np.mean(r * s), np.mean(r)])

    res = minimize(loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
    return float(res.x[0]), float(res.x[1])


# ----------------------------------------------------------------------------------------------- models
class _KernelSVMBaseline(SVMPart, GenreModel):
    """Shared by every model here: the inner KernelSVM (options), elementary kernels, support-row pruning."""

    def _new_svm(self, **params):
        from genrecli.models.svm import KernelSVM

        base = clone(self.svm) if self.svm is not None else KernelSVM()
        return base.set_params(random_state=self.random_state, **params)

    def _loaded_svm(self, state):
        from genrecli.models.svm import KernelSVM

        return (clone(self.svm) if self.svm is not None else KernelSVM()).load_state_dict(state)

    def _kernel_names(self) -> tuple[str, ...]:
        from genrecli.kernels import check_kernel_names

        return check_kernel_names(self.kernels)

    def _make_kernel(self, name: str, input_name: str | None = None, method: str = "none"):
        from genrecli.kernels.elementary import ElementaryKernel

        return ElementaryKernel(name, offset=self.offset, sigma=self.sigma, scale=method, input_name=input_name)

    def _pair_grams(self, inputs, names, cache: GramCache | None):
        """[(input, kernel, fitted ElementaryKernel, training Gram)] for every input x kernel.

        Also sets ``scaling_``, the resolved scaling of every input.
        """
        self.scaling_ = scaling = _scaling(self, names)
        out = []
        with warn_once():
            for name in names:
                X = None
                for k in self._kernel_names():
                    cached = (cache.get(name, k, offset=self.offset, sigma=self.sigma, scale=scaling[name])
                              if cache is not None else None)
                    kernel = self._make_kernel(k, name, scaling[name])
                    if cached is not None:
                        K, state = cached
                        kernel.set_state(state)
                    else:
                        X = _vectors(inputs, [name])[0] if X is None else X
                        K = kernel.fit_transform(X)
                    out.append((name, k, kernel, K))
        return out

    def _pair_kernels(self, state, meta) -> list:
        """The fitted kernels of ``pairs_`` restored from a saved state (``pair<p>.kernel.*``)."""
        self.scaling_ = _loaded_scaling(meta, self.input_names_)
        return [self._make_kernel(k, name, self.scaling_[name]).set_state(_prefixed(state, f"pair{p}.kernel."))
                for p, (name, k) in enumerate(self.pairs_)]

    def get_meta(self):
        return {**super().get_meta(), "scaling": dict(self.scaling_)}

    @staticmethod
    def _prune(kernels, svm) -> np.ndarray:
        """Keep only the training rows with a dual weight in some binary problem (in kernels and SVM alike)."""
        support = np.flatnonzero(np.any(svm.alpha_ != 0, axis=0))
        for kernel in kernels:
            kernel.X_fit_ = np.ascontiguousarray(kernel.X_fit_[support])
        svm.alpha_ = np.ascontiguousarray(svm.alpha_[:, support])
        svm.n_features_in_ = len(support)
        return support

    def _finish(self, svm, names):
        self.classes_, self.multilabel_, self.input_names_ = np.asarray(svm.classes_), bool(svm.multilabel_), list(names)


class ConcatSVMModel(_KernelSVMBaseline):
    """Early fusion (``svm-concat``): one SVM on the concatenated, standardised features of every input.

    Each input is first scaled by its ``scale`` method (fitted on the training rows; constant and all-NaN
    columns dropped), then the inputs are concatenated in sorted input-name order and z-scored per column with
    the training rows' mean and standard deviation (a column constant on the training rows keeps scale 1, so it
    is 0 on them and never divides by zero); then one elementary kernel, fitted on those rows, and one
    KernelSVM. As the z-score follows, a per-column scale (standard, robust, minmax) only drops columns here;
    'l2' (per row) changes the result.

    Parameters
    ----------
    kernels : exactly one kernel name ('linear', 'poly2', 'rbf', 'hist'; default ``('rbf',)``; a string is
        accepted). It is what ``genre train --kernels K`` sets, and it takes a single kernel for this model:
        several kernels are what ``mkl-average``, ``easymkl`` and ``svm-late`` combine.
    offset, sigma : poly2 offset c and RBF width rule, as in :class:`ElementaryKernel`.
    scale : 'auto', a method or a mapping {input: method, '*': method}: per-input scaling before the
        concatenation (:mod:`genrecli.kernels.scaling`).
    svm : :class:`~genrecli.models.svm.KernelSVM` or None (options ``C``, ``C_grid``, ``cv``, ``class_weight``).
    random_state : int, seed of the CV folds.

    Attributes
    ----------
    scalers_ : {input: InputScaler} for the inputs whose scaling is not 'none'.
    mean_, scale_ : (d,) float32, the training column means and standard deviations (1 where constant) of the
        concatenated, scaled inputs.
    kernel_ : ElementaryKernel on the standardised features, support rows only.  svm_ : KernelSVM.
    input_dims_ : the width of each input, in order.
    """

    def __init__(self, kernels=("rbf",), *, offset=1.0, sigma="total-variance", scale=AUTO, svm=None,
                 random_state=None):
        self.kernels = kernels
        self.offset = offset
        self.sigma = sigma
        self.scale = scale
        self.svm = svm
        self.random_state = random_state

    def _kernel_name(self) -> str:
        names = self._kernel_names()
        if len(names) != 1:
            raise UsageError(f"svm-concat uses exactly one kernel on the concatenated inputs (e.g. --kernels rbf), "
                             f"got {len(names)}: {', '.join(names)}; mkl-average, easymkl and svm-late combine several")
        return names[0]

    def standardise(self, X) -> np.ndarray:
        """Rows z-scored with the training statistics: ``(X - mean_) / scale_``, float32."""
        return ((np.asarray(X, dtype=np.float32) - self.mean_) / self.scale_).astype(np.float32, copy=False)

    def _scaled_inputs(self, inputs, names) -> tuple[np.ndarray, list[int]]:
        """The inputs after their fitted scalers, concatenated (float32), and the raw width of each input."""
        blocks, dims = [], []
        for name in names:
            X, (d,) = _vectors(inputs, [name])
            scaler = self.scalers_.get(name)
            blocks.append(X if scaler is None else scaler.transform(X))
            dims.append(d)
        X = blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1)
        return np.ascontiguousarray(X, dtype=np.float32), dims

    def fit(self, inputs, y, *, validation=None, cache=None):
        names = self._check_inputs(inputs, fitting=True)
        kernel_name = self._kernel_name()
        y = _check_y(y)
        self.scaling_ = _scaling(self, names)
        self.scalers_ = {}
        with warn_once():
            for name in names:
                if self.scaling_[name] != "none":
                    self.scalers_[name] = InputScaler(self.scaling_[name], name=name).fit(_vectors(inputs, [name])[0])
        X, dims = self._scaled_inputs(inputs, names)
        X64 = X.astype(np.float64)
        mean, std = X64.mean(axis=0), X64.std(axis=0)
        # Constant columns (or constant up to float32 rounding) keep scale 1: no division by (almost) zero.
        constant = std <= 10.0 * np.finfo(np.float32).eps * np.abs(mean)
        constant |= std == 0.0
        self.mean_ = mean.astype(np.float32)
        self.scale_ = np.where(constant, 1.0, std).astype(np.float32)
        kernel = self._make_kernel(kernel_name)
        K = kernel.fit_transform(self.standardise(X))
        svm = self._new_svm().fit(K, y)
        self._prune([kernel], svm)
        self.kernel_, self.svm_, self.input_dims_ = kernel, svm, dims
        self._finish(svm, names)
        return self

    def decision_function(self, inputs) -> np.ndarray:
        names = self._check_inputs(inputs, fitting=False)
        dims = [int(np.prod(np.shape(inputs[name])[1:])) for name in names]
        if dims != list(self.input_dims_):
            raise UsageError(f"inputs have widths {dims}, the model was trained on {list(self.input_dims_)}")
        X, _ = self._scaled_inputs(inputs, names)
        return np.asarray(self.svm_.decision_function(self.kernel_.transform(self.standardise(X))), dtype=np.float32)

    def get_state(self):
        state = {"mean": self.mean_, "scale": self.scale_}
        for i, name in enumerate(self.input_names_):
            if name in self.scalers_:
                state.update({f"scaler{i}.{k}": v for k, v in self.scalers_[name].get_state().items()})
        state.update({f"kernel.{k}": v for k, v in self.kernel_.get_state().items()})
        state.update({f"svm.{k}": v for k, v in self.svm_.state_dict().items()})
        return state

    def get_meta(self):
        return {**super().get_meta(), "input_dims": list(self.input_dims_)}

    def set_state(self, state, meta):
        super().set_state(state, meta)
        self.input_dims_ = list(meta["input_dims"])
        self.scaling_ = _loaded_scaling(meta, self.input_names_)
        self.scalers_ = {name: InputScaler(self.scaling_[name], name=name).set_state(_prefixed(state, f"scaler{i}."))
                         for i, name in enumerate(self.input_names_) if self.scaling_[name] != "none"}
        self.mean_ = np.asarray(state["mean"], dtype=np.float32)
        self.scale_ = np.asarray(state["scale"], dtype=np.float32)
        self.kernel_ = self._make_kernel(self._kernel_name()).set_state(_prefixed(state, "kernel."))
        self.svm_ = self._loaded_svm(_prefixed(state, "svm."))
        return self


class LateFusionSVMModel(_KernelSVMBaseline):
    """Late fusion (``svm-late``): one SVM per (input, kernel) pair, their class probabilities averaged.

    SVM decision values are not probabilities, so each pair's SVM is calibrated on out-of-fold decision
    values of its training rows (``svm.cv`` folds, seeded by ``random_state``, at the C the SVM selected; the
    in-sample values when the training part is too small to fold):

    * single-label: ``softmax(d / T)`` over the classes, with one temperature T per SVM fitted by log-loss
      (temperature scaling: one parameter, it keeps each SVM's ranking of the classes);
    * multi-label: Platt scaling per label, ``sigmoid(a d + b)`` (smoothed targets), as the labels are
      independent binary problems.

    ``decision_function`` returns ``log`` (single-label) or ``logit`` (multi-label) of the averaged
    probabilities, so ``predict_proba`` gives the averaged probabilities themselves and ``predict`` their
    argmax (their > 0.5 labels).

    Parameters
    ----------
    kernels : elementary kernels applied to every input.
    combine : {'proba', 'decision'}
        'proba' (default): average the calibrated probabilities, as above. 'decision': average the decision
        values, each SVM's class column divided by the standard deviation of its out-of-fold values (not
        centred, so 0 stays every SVM's decision threshold); ``predict_proba`` is then the contract's plain
        softmax / sigmoid of that average, not a calibrated probability.
    offset, sigma, scale, svm, random_state : as in ``svm-concat`` (``scale`` inside each input's kernels); the
        SVM options apply to every pair's SVM.

    Attributes
    ----------
    pairs_ : [(input, kernel)], kernels_ : fitted ElementaryKernels, svms_ : KernelSVMs (support rows only).
    temperature_ : (P,) softmax temperatures; platt_ : (P, L, 2) Platt (a, b) per label (multi-label).
    decision_scale_ : (P, C) standard deviations of the out-of-fold decision values.
    """

    def __init__(self, kernels=DEFAULT_KERNELS, *, combine="proba", offset=1.0, sigma="total-variance", scale=AUTO,
                 svm=None, random_state=None):
        self.kernels = kernels
        self.combine = combine
        self.offset = offset
        self.sigma = sigma
        self.scale = scale
        self.svm = svm
        self.random_state = random_state

    def _check_combine(self):
        if self.combine not in COMBINE_RULES:
            raise UsageError(f"svm-late combine={self.combine!r}: choose one of {', '.join(COMBINE_RULES)}")

    def _out_of_fold(self, K, y, svm) -> np.ndarray:
        from genrecli.models.selection import cv_folds

        folds = cv_folds(y, svm.cv, seed=self.random_state)
        if not folds:
            return np.asarray(svm.decision_function(K), dtype=np.float64)
        out = np.zeros((len(y), len(svm.classes_)), dtype=np.float64)
        for tr, va in folds:
            part = self._new_svm(C=svm.C_).fit(K[np.ix_(tr, tr)], y[tr])
            scores = part.decision_function(K[np.ix_(va, tr)])
            if not svm.multilabel_ and len(part.classes_) != len(svm.classes_):  # a class absent from the fold
                full = np.full((len(va), len(svm.classes_)), -1.0)
                full[:, np.searchsorted(svm.classes_, part.classes_)] = scores
                scores = full
            out[va] = scores
        return out

    def fit(self, inputs, y, *, validation=None, cache: GramCache | None = None):
        self._check_combine()
        names = self._check_inputs(inputs, fitting=True)
        y = _check_y(y)
        self.pairs_, self.kernels_, self.svms_ = [], [], []
        temperatures, platts, scales = [], [], []
        for name, k, kernel, K in self._pair_grams(inputs, names, cache):
            K = np.asarray(K, dtype=np.float64)
            svm = self._new_svm().fit(K, y)
            oof = self._out_of_fold(K, y, svm)
            sd = oof.std(axis=0)
            scales.append(np.where(sd > 0, sd, 1.0))
            if svm.multilabel_:
                platts.append([fit_platt(oof[:, l], y[:, l]) for l in range(y.shape[1])])
                temperatures.append(1.0)
            else:
                temperatures.append(fit_temperature(oof, y, np.asarray(svm.classes_)))
            self._prune([kernel], svm)
            self.pairs_.append((name, k))
            self.kernels_.append(kernel)
            self.svms_.append(svm)
        self.temperature_ = np.asarray(temperatures, dtype=np.float32)
        self.platt_ = np.asarray(platts, dtype=np.float32).reshape(len(self.pairs_), -1, 2)
        self.decision_scale_ = np.asarray(scales, dtype=np.float32)
        self._finish(self.svms_[0], names)
        return self

    def pair_decisions(self, inputs) -> list[np.ndarray]:
        """Each pair's SVM decision values (n, C), in ``pairs_`` order."""
        names = self._check_inputs(inputs, fitting=False)
        X = {name: _vectors(inputs, [name])[0] for name in names}
        return [np.asarray(svm.decision_function(kernel.transform(X[name])), dtype=np.float64)
                for (name, _), kernel, svm in zip(self.pairs_, self.kernels_, self.svms_)]

    def pair_probabilities(self, inputs) -> list[np.ndarray]:
        """Each pair's calibrated probabilities (n, C), in ``pairs_`` order."""
        out = []
        for p, d in enumerate(self.pair_decisions(inputs)):
            if self.multilabel_:
                ab = self.platt_[p].astype(np.float64)
                out.append(sigmoid(ab[:, 0] * d + ab[:, 1]))
            else:
                out.append(softmax(d / float(self.temperature_[p])))
        return out

    def decision_function(self, inputs) -> np.ndarray:
        self._check_combine()
        if self.combine == "decision":
            scaled = [d / self.decision_scale_[p] for p, d in enumerate(self.pair_decisions(inputs))]
            return np.mean(scaled, axis=0).astype(np.float32)
        proba = np.clip(np.mean(self.pair_probabilities(inputs), axis=0), _LOG_FLOOR, 1.0 - _LOG_FLOOR)
        scores = np.log(proba) - np.log1p(-proba) if self.multilabel_ else np.log(proba)
        return scores.astype(np.float32)

    def get_state(self):
        state = {"temperature": self.temperature_, "platt": self.platt_, "decision_scale": self.decision_scale_}
        for p, (kernel, svm) in enumerate(zip(self.kernels_, self.svms_)):
            state.update({f"pair{p}.kernel.{k}": v for k, v in kernel.get_state().items()})
            state.update({f"pair{p}.svm.{k}": v for k, v in svm.state_dict().items()})
        return state

    def get_meta(self):
        return {**super().get_meta(), "pairs": [list(p) for p in self.pairs_]}

    def set_state(self, state, meta):
        super().set_state(state, meta)
        self.pairs_ = [tuple(p) for p in meta["pairs"]]
        self.kernels_ = self._pair_kernels(state, meta)
        self.svms_ = [self._loaded_svm(_prefixed(state, f"pair{p}.svm.")) for p in range(len(self.pairs_))]
        self.temperature_ = np.asarray(state["temperature"], dtype=np.float32)
        self.platt_ = np.asarray(state["platt"], dtype=np.float32)
        self.decision_scale_ = np.asarray(state["decision_scale"], dtype=np.float32)
        return self


class _CombinedKernelModel(_KernelSVMBaseline):
    """One SVM on ``sum_r weights_[r] K_r`` over every (input, kernel) pair; subclasses choose the weights."""

    def _weights(self, grams, y) -> np.ndarray:
        raise NotImplementedError

    def fit(self, inputs, y, *, validation=None, cache: GramCache | None = None):
        names = self._check_inputs(inputs, fitting=True)
        y = _check_y(y)
        pairs = self._pair_grams(inputs, names, cache)
        grams = [K for *_, K in pairs]
        weights = np.asarray(self._weights(grams, y), dtype=np.float64)
        svm = self._new_svm().fit(combine_grams(grams, weights), y)
        kernels = [kernel for _, _, kernel, _ in pairs]
        self._prune(kernels, svm)
        self.pairs_ = [(name, k) for name, k, _, _ in pairs]
        self.kernels_, self.svm_, self.weights_ = kernels, svm, weights.astype(np.float32)
        self._finish(svm, names)
        return self

    def combined_gram(self, inputs) -> np.ndarray:
        """``sum_r weights_[r] K_r(X, support rows)`` (n, n_support), float64."""
        names = self._check_inputs(inputs, fitting=False)
        X = {name: _vectors(inputs, [name])[0] for name in names}
        grams = [kernel.transform(X[name]) for (name, _), kernel in zip(self.pairs_, self.kernels_)]
        return combine_grams(grams, self.weights_)

    def decision_function(self, inputs) -> np.ndarray:
        return np.asarray(self.svm_.decision_function(self.combined_gram(inputs)), dtype=np.float32)

    def kernel_weights(self) -> dict[str, float]:
        """{'input|kernel': weight}: what the combination learned (for reports)."""
        return {f"{name}|{k}": float(w) for (name, k), w in zip(self.pairs_, self.weights_)}

    def get_state(self):
        state = {"weights": self.weights_}
        for p, kernel in enumerate(self.kernels_):
            state.update({f"pair{p}.kernel.{k}": v for k, v in kernel.get_state().items()})
        state.update({f"svm.{k}": v for k, v in self.svm_.state_dict().items()})
        return state

    def get_meta(self):
        return {**super().get_meta(), "pairs": [list(p) for p in self.pairs_]}

    def set_state(self, state, meta):
        super().set_state(state, meta)
        self.pairs_ = [tuple(p) for p in meta["pairs"]]
        self.kernels_ = self._pair_kernels(state, meta)
        self.weights_ = np.asarray(state["weights"], dtype=np.float32)
        self.svm_ = self._loaded_svm(_prefixed(state, "svm."))
        return self


class AverageMKLModel(_CombinedKernelModel):
    """``mkl-average``: one SVM on the uniform mean of every elementary kernel (every input x every kernel).

    Each elementary kernel has unit mean diagonal on the training rows (:class:`ElementaryKernel`), so no
    kernel dominates the mean by its scale; the mean has unit mean diagonal too.

    Parameters
    ----------
    kernels : elementary kernels applied to every input.
    offset, sigma, scale, svm, random_state : as in ``svm-late``.

    Attributes
    ----------
    pairs_, kernels_ : the (input, kernel) pairs and their fitted kernels (support rows only).
    weights_ : (m,) all 1/m.  svm_ : KernelSVM on the mean kernel.
    """

    def __init__(self, kernels=DEFAULT_KERNELS, *, offset=1.0, sigma="total-variance", scale=AUTO, svm=None,
                 random_state=None):
        self.kernels = kernels
        self.offset = offset
        self.sigma = sigma
        self.scale = scale
        self.svm = svm
        self.random_state = random_state

    def _weights(self, grams, y):
        return np.full(len(grams), 1.0 / len(grams))


class EasyMKLModel(_CombinedKernelModel):
    """``easymkl``: EasyMKL kernel weights (Aiolli & Donini 2015) learned on the training Grams, then one SVM.

    The weights are :func:`easymkl_weights` (one-vs-rest problems averaged, or one per label), normalised to
    sum 1, so the weighted sum of the unit-mean-diagonal kernels keeps unit mean diagonal; the KernelSVM then
    selects C by CV on that sum. (EasyMKL's own classifier, KOMD, is replaced by the class-weighted SVM every
    kernel baseline here shares.)

    Parameters
    ----------
    kernels : elementary kernels applied to every input.
    lam : float in [0, 1], default 0.1
        EasyMKL's lambda: ``(1 - lam) sum_r K_r + lam I`` in the margin problem; 0 maximises the distance
        between the classes' convex hulls, 1 between their centroids.
    offset, sigma, scale, svm, random_state : as in ``svm-late``.

    Attributes
    ----------
    pairs_, kernels_, svm_ : as in ``mkl-average``.  weights_ : (m,) the learned weights.
    """

    def __init__(self, kernels=DEFAULT_KERNELS, *, lam=0.1, offset=1.0, sigma="total-variance", scale=AUTO, svm=None,
                 random_state=None):
        self.kernels = kernels
        self.lam = lam
        self.offset = offset
        self.sigma = sigma
        self.scale = scale
        self.svm = svm
        self.random_state = random_state

    def _weights(self, grams, y):
        return easymkl_weights(grams, y, lam=self.lam)
