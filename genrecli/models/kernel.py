"""Kernel models on features: the single-kernel SVM, the DKN and the DM2KMN under the model contract.

Each model owns its kernels: it fits one :class:`~genrecli.kernels.elementary.ElementaryKernel` per
(input, kernel) pair on the training rows (preprocessing, RBF width and unit-diagonal scale from those rows
only) and computes the Grams it needs from features -- exact n x n Grams for the SVM and the DKN, n x N
landmark blocks for the DM2KMN with ``landmarks=N`` (memory O(n N)). Every fitted kernel state (training or
support rows, scales, widths, landmarks, map matrices) is part of the model's state, so a saved model needs
no store to predict.

Vector inputs are concatenated in sorted input-name order; each input is one modality block of the DKN
(``input_dims``), named by its modality (``audio``, ``text``), which is what relative importance sums over.

A :class:`GramCache` (``genre kernels``'s store) may hand the SVM and the DKN precomputed training Grams with
the kernel states they were computed with; the result is the same model, computed faster.

Feature scaling (:mod:`genrecli.kernels.scaling`): every model takes ``scale``, a method for all inputs or a
mapping ``{input: method, '*': method}`` (``-o scale=robust``, ``-o audio/mfcc.scale=robust``), default 'auto':
each input's :func:`~genrecli.kernels.scaling.default_scaling` (z-score for descriptor tables, none for
embeddings). It is resolved per input name at fit, given to that input's ElementaryKernels (fitted on the
training rows, stored in their states), and recorded in the model's meta as ``scaling`` ``{input: method}``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from sklearn.base import clone

from genrecli.errors import UsageError
from genrecli.kernels import DEFAULT_OFFSET, DEFAULT_SIGMA, KERNEL_NAMES
from genrecli.kernels.scaling import AUTO, check_scale, merge_scale, resolve_scaling, split_scale_options, warn_once
from genrecli.models.base import GenreModel

DEFAULT_KERNELS = KERNEL_NAMES


class GramCache:
    """Precomputed training Grams: ``get(input, kernel) -> (K_train (n, n) float32, kernel state) or None``.

    The pipeline builds one per fold from ``kernels.h5`` when its groups are fresh for the features and
    split at hand; ``offset`` and ``sigma`` are the kernel settings the cache was computed with, ``scale``
    the feature scaling of its kernels (``genre kernels`` computes them unscaled: 'none'), or a mapping
    ``{input: method}`` when it differs per input. A model whose resolved scaling differs gets nothing.
    """

    def __init__(self, entries: Mapping[tuple[str, str], tuple[np.ndarray, dict]], *, offset=DEFAULT_OFFSET, sigma=DEFAULT_SIGMA,
                 scale="none"):
        self.entries = dict(entries)
        self.offset = offset
        self.sigma = sigma
        self.scale = scale

    def _scale_of(self, input_name: str) -> str:
        return self.scale.get(input_name, "none") if isinstance(self.scale, Mapping) else self.scale

    def get(self, input_name: str, kernel: str, *, offset, sigma, scale="none"):
        if offset != self.offset or sigma != self.sigma or scale != self._scale_of(input_name):
            return None
        return self.entries.get((input_name, kernel))


def _vectors(inputs: Mapping[str, object], names: list[str]) -> tuple[np.ndarray, list[int]]:
    """Concatenate inputs (flattened per row) into one float32 (n, sum d) matrix, with each block's width."""
    blocks = [np.asarray(inputs[name], dtype=np.float32) for name in names]
    blocks = [b.reshape(len(b), -1) for b in blocks]
    dims = [b.shape[1] for b in blocks]
    X = blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1)
    return np.ascontiguousarray(X), dims


def _is_lazy(value) -> bool:
    """A row view read on demand (a :class:`~genrecli.pipeline.features.FeatureView`, an ``h5py.Dataset``, a
    :class:`RowConcat`), not an in-memory array."""
    return (not isinstance(value, np.ndarray) and hasattr(value, "__getitem__") and hasattr(value, "shape")
            and not hasattr(value, "iloc"))


class RowConcat:
    """Modality blocks side by side, read lazily: the (n, sum d) float32 matrix :func:`_vectors` would build,
    without building it.

    ``view[rows]`` (a slice or an array of row positions) reads those rows of every block (each flattened per
    row) and returns them concatenated as one C-ordered float32 array; an int gives one row (d,). ``shape``,
    ``len``, ``dtype`` and ``ndim`` are those of the whole matrix; ``np.asarray(view)`` reads every row (what
    the streamed fits never do). ``dims`` holds each block's width.
    """

    dtype = np.dtype(np.float32)
    ndim = 2

    def __init__(self, blocks):
        self.blocks = list(blocks)
        lengths = {len(b) for b in self.blocks}
        if len(lengths) != 1:
            raise UsageError(f"inputs have different numbers of rows: {sorted(lengths)}")
        self.n = lengths.pop()
        self.dims = [int(np.prod(b.shape[1:], dtype=np.int64)) for b in self.blocks]

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, sum(self.dims))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            return self[np.asarray([index])][0]
        parts = [np.asarray(b[index], dtype=np.float32) for b in self.blocks]
        parts = [p.reshape(len(p), -1) for p in parts]
        out = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
        return np.ascontiguousarray(out, dtype=np.float32)

    def __array__(self, dtype=None, copy=None):
        out = self[slice(None)]
        return out if dtype is None else out.astype(dtype, copy=False)


def _lazy_vectors(inputs: Mapping[str, object], names: list[str]) -> tuple[RowConcat, list[int]]:
    """The modality join of :func:`_vectors` as a lazy :class:`RowConcat` (no n-sized copy)."""
    X = RowConcat([inputs[name] for name in names])
    return X, list(X.dims)


def _prefixed(state: Mapping[str, np.ndarray], prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _scaling(model, names: list[str]) -> dict[str, str]:
    """The resolved ``{input: method}`` of ``model.scale`` for these inputs (validated)."""
    return resolve_scaling(check_scale(model.scale), names)


def _loaded_scaling(meta: Mapping, names: list[str]) -> dict[str, str]:
    """The scaling a saved model was fitted with: its meta's record (artifacts from before scaling: 'none')."""
    recorded = meta.get("scaling") or {}
    return {name: recorded.get(name, "none") for name in names}


def _scale_options(model, options: Mapping) -> dict:
    """Route the ``INPUT.scale`` options into ``model.scale``; return the other options."""
    per_input, rest = split_scale_options(options)
    if per_input:
        model.scale = merge_scale(model.scale, per_input)
    return rest


# ``inner_cv`` of the kernel models: how their model-selection CV (C; the DM2KMN's fine-tuning) folds the
# training part. 'grouped' (default): by the groups of a grouped split (``group:KEY:F``, ``groupkfold:KEY:K``),
# so that validation, like the test, is on unseen composers / works / titles; on other splits, and with
# 'stratified', stratified folds (as before).
GROUPED, STRATIFIED = "grouped", "stratified"
INNER_CV = (GROUPED, STRATIFIED)


def _inner_groups(model, cv_groups):
    """The groups the model's selection CV uses: ``cv_groups`` (the split's groups of the training rows, None
    on an ungrouped split) with inner_cv='grouped', else None."""
    if model.inner_cv not in INNER_CV:
        raise UsageError(f"inner_cv {model.inner_cv!r}: expected one of {', '.join(INNER_CV)}")
    return None if cv_groups is None or model.inner_cv == STRATIFIED else np.asarray(cv_groups)


def _check_y(y) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 1 and len(np.unique(y)) < 2:
        raise UsageError(f"the training part has a single class ({y[0] if len(y) else 'none'}); a classifier needs two")
    return y


class SVMPart:
    """Models with an inner :class:`~genrecli.models.svm.KernelSVM` in their ``svm`` parameter: its options
    (``C``, ``C_grid``, ``cv``, ``class_weight``) are ``-o`` options of the model; ``scale`` options are the model's."""

    @classmethod
    def part_names(cls) -> list[str]:
        return ["svm"]

    @classmethod
    def nested_option_names(cls) -> list[str]:
        from genrecli.models.svm import KernelSVM

        return sorted(set(KernelSVM._get_param_names()) - {"random_state"})

    def set_options(self, options):
        from genrecli.models.svm import KernelSVM

        options = _scale_options(self, options)
        if options:
            self.svm = (clone(self.svm) if self.svm is not None else KernelSVM()).set_params(**options)
        return self


class SVMModel(SVMPart, GenreModel):
    """One-vs-rest class-weighted SVM on one elementary kernel of one input (the paper's SVM baseline).

    Parameters
    ----------
    kernel : {'linear', 'poly2', 'rbf', 'hist'}
    offset, sigma : poly2 offset c and RBF width rule, as in :class:`ElementaryKernel`.
    scale : 'auto', a scaling method, or a mapping {input: method, '*': method}
        Feature scaling of the input (:mod:`genrecli.kernels.scaling`), fitted on the training rows;
        'auto' (default): :func:`~genrecli.kernels.scaling.default_scaling` of the input's name.
    svm : :class:`~genrecli.models.svm.KernelSVM` or None
        The classifier (C by 5-fold CV on the training Gram, class weights n / (C n_c)); None: defaults.
        Options ``C``, ``C_grid``, ``cv``, ``class_weight`` configure it.
    inner_cv : 'grouped' | 'stratified'
        Folds of the model-selection CV on the training part: 'grouped' (default) holds out whole groups of
        a grouped split (``group:KEY:F``, ``groupkfold:KEY:K``: the groups ``genre train`` passes as
        ``cv_groups``), as the split's test part does; 'stratified' ignores them (the choice before issue 13;
        on an ungrouped split both are stratified).
    random_state : int, seed of the CV folds.

    Attributes
    ----------
    kernel_ : ElementaryKernel, fitted on the training rows (its scaler included), keeping only the support rows.
    svm_ : KernelSVM, its dual coefficients over those rows.
    scaling_ : {input: method}, the resolved scaling (also in the saved meta).
    """

    def __init__(self, kernel="rbf", *, offset=DEFAULT_OFFSET, sigma=DEFAULT_SIGMA, scale=AUTO, svm=None,
                 inner_cv=GROUPED, random_state=None):
        self.kernel = kernel
        self.offset = offset
        self.sigma = sigma
        self.scale = scale
        self.svm = svm
        self.inner_cv = inner_cv
        self.random_state = random_state


    def _make_kernel(self, name: str | None = None, method: str = "none"):
        from genrecli.kernels.elementary import ElementaryKernel

        return ElementaryKernel(self.kernel, offset=self.offset, sigma=self.sigma, scale=method, input_name=name)

    def fit(self, inputs, y, *, validation=None, cache: GramCache | None = None, cv_groups=None):
        from genrecli.models.svm import KernelSVM

        names = self._check_inputs(inputs, fitting=True)
        if len(names) != 1:
            raise UsageError(f"svm takes one input, got {len(names)}: {', '.join(names)}")
        y = _check_y(y)
        scaling = _scaling(self, names)
        method = scaling[names[0]]
        X, _ = _vectors(inputs, names)
        cached = cache.get(names[0], self.kernel, offset=self.offset, sigma=self.sigma, scale=method) if cache else None
        kernel = self._make_kernel(names[0], method)
        if cached is not None:
            K, state = cached
            kernel.set_state(state)
        else:
            with warn_once():
                K = kernel.fit_transform(X)
        svm = (clone(self.svm) if self.svm is not None else KernelSVM()).set_params(random_state=self.random_state)
        svm.fit(K, y, cv_groups=_inner_groups(self, cv_groups))
        # Rows with no dual weight in any one-vs-rest problem never contribute to a score: drop them.
        support = np.flatnonzero(np.any(svm.alpha_ != 0, axis=0))
        kernel.X_fit_ = np.ascontiguousarray(kernel.X_fit_[support])
        svm.alpha_ = np.ascontiguousarray(svm.alpha_[:, support])
        svm.n_features_in_ = len(support)
        self.kernel_, self.svm_, self.scaling_ = kernel, svm, scaling
        self.classes_, self.multilabel_, self.input_names_ = np.asarray(svm.classes_), bool(svm.multilabel_), names
        return self

    def decision_function(self, inputs) -> np.ndarray:
        names = self._check_inputs(inputs, fitting=False)
        X, _ = _vectors(inputs, names)
        return np.asarray(self.svm_.decision_function(self.kernel_.transform(X)), dtype=np.float32)

    def get_state(self):
        state = {f"kernel.{k}": v for k, v in self.kernel_.get_state().items()}
        state.update({f"svm.{k}": v for k, v in self.svm_.state_dict().items()})
        return state

    def get_meta(self):
        return {**super().get_meta(), "scaling": dict(self.scaling_)}

    def set_state(self, state, meta):
        from genrecli.models.svm import KernelSVM

        super().set_state(state, meta)
        self.scaling_ = _loaded_scaling(meta, self.input_names_)
        name = self.input_names_[0]
        self.kernel_ = self._make_kernel(name, self.scaling_[name]).set_state(_prefixed(state, "kernel."))
        self.svm_ = (clone(self.svm) if self.svm is not None else KernelSVM()).load_state_dict(_prefixed(state, "svm."))
        return self


class _MultiKernelModel(GenreModel):
    """Shared by the DKN and the DM2KMN: inputs -> one matrix with modality blocks."""

    def _blocks(self, inputs, *, fitting: bool, lazy: bool = False):
        """(names, X, dims): X the inputs side by side -- a :class:`RowConcat` view when ``lazy`` and some input
        is a row view (nothing is read here), else the concatenated float32 array of :func:`_vectors`."""
        names = self._check_inputs(inputs, fitting=fitting)
        if lazy and any(_is_lazy(inputs[name]) for name in names):
            X, dims = _lazy_vectors(inputs, names)
        else:
            X, dims = _vectors(inputs, names)
        if not fitting and dims != list(self.input_dims_):
            raise UsageError(f"inputs have widths {dims}, the model was trained on {list(self.input_dims_)}")
        return names, X, dims

    @staticmethod
    def _modalities(names: list[str]) -> list[str]:
        return [name.split("/", 1)[0] for name in names]

    def get_meta(self):
        return {**super().get_meta(), "input_dims": list(self.input_dims_), "scaling": dict(self.scaling_)}

    def set_state(self, state, meta):
        super().set_state(state, meta)
        self.input_dims_ = list(meta["input_dims"])
        self.scaling_ = _loaded_scaling(meta, self.input_names_)
        return self

    def _block_scales(self, names, scaling=None) -> tuple[str, ...]:
        """The DKN's ``scale``: one resolved method per input block, in input order."""
        scaling = _scaling(self, names) if scaling is None else scaling
        return tuple(scaling[name] for name in names)


# ``scale`` is the model's own (resolved per input name into the DKN's per-block tuple).
_DKN_CONTROLLED = {"kernels", "input_dims", "modality_names", "input_names", "scale", "random_state", "device"}


class DKNModel(_MultiKernelModel):
    """Deep kernel network over every (input, kernel) pair with one-vs-rest SVMs on its output kernel.

    Parameters
    ----------
    kernels : elementary kernels applied to every input.
    scale : 'auto', a scaling method, or a mapping {input: method, '*': method}
        Feature scaling per input (as in :class:`SVMModel`), given to the DKN as one method per block.
    dkn : :class:`~genrecli.models.dkn.DKNClassifier` or None
        Its settings (``hidden``, ``depth``, ``activation``, ``C``, ...); ``kernels``, the input blocks, their
        ``scale``, ``random_state`` and ``device`` are set from this model. Every DKN option is accepted by ``-o``.
    inner_cv : 'grouped' | 'stratified'
        Folds of the model-selection CV on the training part: 'grouped' (default) holds out whole groups of
        a grouped split (``group:KEY:F``, ``groupkfold:KEY:K``: the groups ``genre train`` passes as
        ``cv_groups``), as the split's test part does; 'stratified' ignores them (the choice before issue 13;
        on an ungrouped split both are stratified).
    random_state, device
    """

    def __init__(self, kernels=DEFAULT_KERNELS, *, scale=AUTO, dkn=None, inner_cv=GROUPED, random_state=None,
                 device="cpu"):
        self.kernels = kernels
        self.scale = scale
        self.dkn = dkn
        self.inner_cv = inner_cv
        self.random_state = random_state
        self.device = device

    @classmethod
    def part_names(cls) -> list[str]:
        return ["dkn"]

    @classmethod
    def nested_option_names(cls) -> list[str]:
        from genrecli.models.dkn import DKNClassifier

        return sorted(set(DKNClassifier._get_param_names()) - _DKN_CONTROLLED)

    def set_options(self, options):
        from genrecli.models.dkn import DKNClassifier

        options = _scale_options(self, options)
        if options:
            self.dkn = (clone(self.dkn) if self.dkn is not None else DKNClassifier()).set_params(**options)
        return self

    def _estimator(self, names, dims, scaling=None):
        from genrecli.models.dkn import DKNClassifier

        base = clone(self.dkn) if self.dkn is not None else DKNClassifier()
        return base.set_params(kernels=tuple(self.kernels), input_dims=tuple(dims), modality_names=tuple(self._modalities(names)),
                               scale=self._block_scales(names, scaling), input_names=tuple(names),
                               random_state=self.random_state, device=self.device)

    def fit(self, inputs, y, *, validation=None, cache: GramCache | None = None, cv_groups=None):
        names, X, dims = self._blocks(inputs, fitting=True)
        y = _check_y(y)
        if y.ndim != 1:
            raise UsageError("dkn is single-label only; use svm or mlp on a multi-label corpus")
        scaling = _scaling(self, names)
        est = self._estimator(names, dims, scaling)
        cached = self._cached(cache, est, names, scaling)
        groups = _inner_groups(self, cv_groups)
        if cached is None:
            with warn_once():
                est.fit(X, y, cv_groups=groups)
        else:
            self._fit_cached(est, X, y, dims, names, cached, groups)
        self.dkn_, self.input_names_, self.input_dims_, self.scaling_ = est, names, dims, scaling
        self.classes_, self.multilabel_ = np.asarray(est.classes_), False
        return self

    def _cached(self, cache, est, names, scaling):
        if cache is None:
            return None
        entries = [cache.get(n, k, offset=est.kernel_offset, sigma=est.sigma, scale=scaling[n])
                   for n in names for k in self.kernels]
        return None if any(e is None for e in entries) else entries

    def _fit_cached(self, est, X, y, dims, names, entries, cv_groups=None):
        from genrecli.kernels.elementary import ElementaryKernel
        from genrecli.models.dkn import split_columns

        grams = np.stack([K for K, _ in entries]).astype(np.float32, copy=False)
        modalities = [m for m in self._modalities(names) for _ in self.kernels]
        est.fit_gram(grams, y, modalities=modalities, cv_groups=cv_groups)
        # Cached Grams are of unscaled kernels only (GramCache.get checks the scaling).
        est.kernels_ = [ElementaryKernel(k, offset=est.kernel_offset, sigma=est.sigma, device=est.device).set_state(state)
                        for (_, state), k in zip(entries, [k for _ in names for k in self.kernels])]
        est.slices_ = split_columns(X.shape[1], est.input_dims)
        est.n_features_in_ = X.shape[1]

    def decision_function(self, inputs) -> np.ndarray:
        _, X, _ = self._blocks(inputs, fitting=False)
        return np.asarray(self.dkn_.decision_gram(self.dkn_._grams(X)), dtype=np.float32)

    def extra_metrics(self, inputs) -> dict:
        _, X, _ = self._blocks(inputs, fitting=False)
        return self.dkn_.extra_metrics_features(X)

    def get_state(self):
        return dict(self.dkn_.state_dict())

    def set_state(self, state, meta):
        super().set_state(state, meta)
        self.dkn_ = self._estimator(self.input_names_, self.input_dims_, self.scaling_)
        self.dkn_.load_state_dict(dict(state))
        if not hasattr(self.dkn_, "kernels_"):
            raise UsageError("this DKN artifact holds no kernel states (it was trained on Grams only)")
        return self


# Test rows the streamed path's extra metrics are measured on (DM2KMNModel.extra_metrics).
EXTRA_ROWS = 4096

_DM2KMN_CONTROLLED = {"dkn", "finetune", "random_state", "device"}


class DM2KMNModel(_MultiKernelModel):
    """Deep multi-modal kernel map network: explicit maps built from a DKN, optionally fine-tuned end to end.

    Parameters
    ----------
    kernels : elementary kernels applied to every input.
    scale : 'auto', a scaling method, or a mapping {input: method, '*': method}
        Feature scaling per input (as in :class:`SVMModel`), set on its DKN (one method per block), from
        which the explicit maps take it.
    dm2kmn : :class:`~genrecli.models.dm2kmn.DM2KMNClassifier` or None
        Its map and fine-tuning settings, and its DKN (``dm2kmn.dkn``). ``-o`` options are routed by name:
        a DM2KMN parameter (``landmarks``, ``energy``, ``ft_lr``, ...) to the map network, a DKN parameter
        (``hidden``, ``depth``, ``C``, ...) to its DKN.
    finetune : bool
        False: the initial DM2KMN (registry entry ``dm2kmn-init``); True: fine-tuned (``dm2kmn``).
    inner_cv : 'grouped' | 'stratified'
        Folds of the model-selection CV on the training part: 'grouped' (default) holds out whole groups of
        a grouped split (``group:KEY:F``, ``groupkfold:KEY:K``: the groups ``genre train`` passes as
        ``cv_groups``), as the split's test part does; 'stratified' ignores them (the choice before issue 13;
        on an ungrouped split both are stratified).
    random_state, device
    """

    def __init__(self, kernels=DEFAULT_KERNELS, *, scale=AUTO, dm2kmn=None, finetune=True, inner_cv=GROUPED,
                 random_state=None, device="cpu"):
        self.kernels = kernels
        self.scale = scale
        self.dm2kmn = dm2kmn
        self.finetune = finetune
        self.inner_cv = inner_cv
        self.random_state = random_state
        self.device = device

    @classmethod
    def part_names(cls) -> list[str]:
        return ["dm2kmn"]

    @classmethod
    def nested_option_names(cls) -> list[str]:
        from genrecli.models.dkn import DKNClassifier
        from genrecli.models.dm2kmn import DM2KMNClassifier

        own = set(DM2KMNClassifier._get_param_names()) - _DM2KMN_CONTROLLED
        return sorted(own | (set(DKNClassifier._get_param_names()) - _DKN_CONTROLLED))

    def set_options(self, options):
        from genrecli.models.dkn import DKNClassifier
        from genrecli.models.dm2kmn import DM2KMNClassifier

        options = _scale_options(self, options)
        if not options:
            return self
        est = clone(self.dm2kmn) if self.dm2kmn is not None else DM2KMNClassifier()
        own = set(DM2KMNClassifier._get_param_names()) - _DM2KMN_CONTROLLED
        mine = {k: v for k, v in options.items() if k in own}
        theirs = {k: v for k, v in options.items() if k not in own}
        est.set_params(**mine)
        if theirs:
            dkn = clone(est.dkn) if est.dkn is not None else DKNClassifier()
            est.set_params(dkn=dkn.set_params(**theirs))
        self.dm2kmn = est
        return self

    def _estimator(self, names, dims, scaling=None):
        from genrecli.models.dkn import DKNClassifier
        from genrecli.models.dm2kmn import DM2KMNClassifier

        est = clone(self.dm2kmn) if self.dm2kmn is not None else DM2KMNClassifier()
        dkn = clone(est.dkn) if est.dkn is not None else DKNClassifier()
        dkn.set_params(kernels=tuple(self.kernels), input_dims=tuple(dims), modality_names=tuple(self._modalities(names)),
                       scale=self._block_scales(names, scaling), input_names=tuple(names),
                       random_state=self.random_state, device=self.device)
        return est.set_params(dkn=dkn, finetune=self.finetune, random_state=self.random_state, device=self.device)

    def streams_rows(self, n: int) -> bool:
        """Whether a fit on ``n`` training rows reads its inputs in row blocks (landmarks N < n with
        ``selection_rows='landmarks'``, the streamed fit of :class:`~genrecli.models.dm2kmn.DM2KMNClassifier`).

        ``genre train`` then hands this model its vector inputs as lazy row views of the store
        (:class:`~genrecli.pipeline.features.FeatureView`) instead of loaded arrays; fit, scoring and the test
        metrics read them ``block_size`` rows at a time through a :class:`RowConcat`, never all n at once.
        """
        from genrecli.models.dm2kmn import DM2KMNClassifier

        est = self.dm2kmn if self.dm2kmn is not None else DM2KMNClassifier()
        lm = est.landmarks
        return (est.selection_rows == "landmarks" and isinstance(lm, (int, np.integer)) and not isinstance(lm, bool)
                and int(lm) < int(n))

    def fit(self, inputs, y, *, validation=None, cache=None, cv_groups=None):
        names, X, dims = self._blocks(inputs, fitting=True, lazy=self.streams_rows(self._n_rows(inputs)))
        y = _check_y(y)
        if y.ndim != 1:
            raise UsageError("dm2kmn is single-label only; use svm or mlp on a multi-label corpus")
        scaling = _scaling(self, names)
        est = self._estimator(names, dims, scaling)
        with warn_once():
            est.fit(X, y, cv_groups=_inner_groups(self, cv_groups))
        self.dm2kmn_, self.input_names_, self.input_dims_, self.scaling_ = est, names, dims, scaling
        self.classes_, self.multilabel_ = np.asarray(est.classes_), False
        return self

    def decision_function(self, inputs) -> np.ndarray:
        from genrecli.models.dkn import heads_to_scores

        _, X, _ = self._blocks(inputs, fitting=False, lazy=True)
        est = self.dm2kmn_
        if isinstance(X, RowConcat):  # row views: scored block_size rows at a time, never read whole
            return np.asarray(heads_to_scores(est._heads_features(X), len(est.classes_)), dtype=np.float32)
        return np.asarray(heads_to_scores(est._heads(est._map_grams(X, shared=True)), len(est.classes_)), dtype=np.float32)

    def extra_metrics(self, inputs) -> dict:
        """The DM2KMN's test metrics (:meth:`DM2KMNClassifier.extra_metrics_features`). On row views (the
        streamed path) they are measured on the first ``EXTRA_ROWS`` test rows only (recorded as ``n_test``):
        they hold (m, n_test, N) Grams and time whole forward passes, so on all rows they would grow with n."""
        _, X, _ = self._blocks(inputs, fitting=False, lazy=True)
        if isinstance(X, RowConcat):
            X = X[slice(0, min(len(X), EXTRA_ROWS))]
        return self.dm2kmn_.extra_metrics_features(X)

    def get_state(self):
        return dict(self.dm2kmn_.state_dict())

    def set_state(self, state, meta):
        super().set_state(state, meta)
        self.dm2kmn_ = self._estimator(self.input_names_, self.input_dims_, self.scaling_)
        self.dm2kmn_.load_state_dict(dict(state))
        return self
