"""The single-stage networks of Oramas et al. (2018), each a :class:`~genrecli.models.neural.harness.NeuralModel`:
one per modality (audio CNN, text VSM network, image head) and the fusion network that the two-stage models of
:mod:`genrecli.models.neural.oramas` train on their representations.

They add to the harness

* a ``target``: 'softmax' (cross-entropy, single-label), 'logistic' (sigmoid + binary cross-entropy; on
  single-label data against one-hot targets) or 'cosine' (regress the item's PPMI-SVD label factors,
  :mod:`genrecli.models.labelfactor`; the scores are the cosines of the predicted vector to every label's
  vector, see :class:`~genrecli.models.neural.oramas_nets.CosineFactorLoss`);
* :meth:`OramasNet.transform`: the representation (the body's output, the paper's "last hidden layer") of
  every row, averaged over the test crops of patch inputs like the harness averages logits.

They are building blocks, not registered models (the registered ``oramas-*`` models wrap them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from genrecli.errors import UsageError
from genrecli.models.labelfactor import LabelFactorisation
from genrecli.models.neural.harness import NeuralModel, _as_rows, _pad_to, as_int_tuple, store_params
from genrecli.models.neural.oramas_nets import (
    ARCHS, CosineFactorLoss, CosineToLabels, DenseBody, FusionBody, MSDTimeCNN, MuMuCNN, OneHotBCE, OutputNet,
)

TARGETS = ("softmax", "logistic", "cosine")
FACTOR_FITS = ("train+valid", "train")


def resolve_target(target: str | None, multilabel: bool) -> str:
    """'auto' / None: softmax for single-label, logistic for multi-label; softmax on multi-label is refused."""
    if target in (None, "auto"):
        return "logistic" if multilabel else "softmax"
    if target not in TARGETS:
        raise UsageError(f"target={target!r}; expected auto, {', '.join(TARGETS)}")
    if target == "softmax" and multilabel:
        raise UsageError("target='softmax' is single-label; use 'logistic' or 'cosine' for a multi-label corpus")
    return target


def multi_hot(y, classes: np.ndarray) -> np.ndarray:
    """(n, L) 0/1 from class indices (positions into ``classes``; unknown classes give an all-zero row) or a
    multi-hot matrix (returned as float)."""
    y = np.asarray(y)
    if y.ndim == 2:
        return (y > 0.5).astype(np.float64)
    out = np.zeros((len(y), len(classes)))
    pos = np.searchsorted(classes, y).clip(0, max(len(classes) - 1, 0))
    known = np.asarray(classes)[pos] == y if len(classes) else np.zeros(len(y), bool)
    out[np.flatnonzero(known), pos[known]] = 1.0
    return out


class OramasNet(NeuralModel):
    """Base of the Oramas networks: a body (:meth:`_build_body`) plus the output layer of ``target``.

    Extra parameters (besides the harness's)
    ----------------------------------------
    target : 'softmax' | 'logistic' | 'cosine' | 'auto' (softmax single-label, logistic multi-label).
    factor_dim : int, dimensions ``d`` of the label factorisation (COSINE; the paper: 50).
    factor_fit : 'train+valid' (the paper factorises the training and validation annotations) or 'train'.
    standardize : bool, standardise the inputs with training statistics (the harness's scalers) or feed them raw.
    """

    _scaling = "column"

    # -- hooks for subclasses -------------------------------------------------------------------------------
    def _build_body(self, input_shapes: Mapping[str, tuple[int, ...]]) -> nn.Module:
        raise NotImplementedError

    # -- target ---------------------------------------------------------------------------------------------
    def _check_params(self) -> None:
        super()._check_params()
        if self.target not in (None, "auto", *TARGETS):
            raise UsageError(f"{type(self).__name__}: target={self.target!r}; expected auto, {', '.join(TARGETS)}")
        if self.factor_fit not in FACTOR_FITS:
            raise UsageError(f"{type(self).__name__}: factor_fit={self.factor_fit!r}; expected {', '.join(FACTOR_FITS)}")
        if int(self.factor_dim) < 1:
            raise UsageError(f"{type(self).__name__}: factor_dim must be >= 1 (got {self.factor_dim})")

    def fit(self, inputs, y, *, validation=None, **kwargs) -> "OramasNet":
        y = np.asarray(y)
        multilabel = y.ndim == 2
        self.target_ = resolve_target(self.target, multilabel)
        self.label_factors_ = None
        if self.target_ == "cosine":
            classes = np.arange(y.shape[1]) if multilabel else np.unique(y)
            M = multi_hot(y, classes)
            if validation is not None and self.factor_fit == "train+valid":
                M = np.concatenate([M, multi_hot(validation[1], classes)])
            self.label_factors_ = LabelFactorisation(int(self.factor_dim)).fit(M).label_factors_.astype(np.float32)
        return super().fit(inputs, y, validation=validation, **kwargs)

    def _build_network(self, input_shapes: Mapping[str, tuple[int, ...]], n_outputs: int) -> nn.Module:
        body = self._build_body(input_shapes)
        if self.target_ == "cosine":
            factors = torch.from_numpy(np.asarray(self.label_factors_, dtype=np.float32))
            if factors.shape[0] != n_outputs:
                raise UsageError(f"{type(self).__name__}: {factors.shape[0]} label factors for {n_outputs} outputs")
            return OutputNet(body, CosineToLabels(body.out_dim, factors))
        return OutputNet(body, nn.Linear(body.out_dim, n_outputs))

    def _criterion(self, train_targets: np.ndarray, n_outputs: int) -> nn.Module:
        if self.target_ == "cosine":
            return CosineFactorLoss(torch.from_numpy(np.asarray(self.label_factors_, dtype=np.float32)))
        if self.target_ == "logistic" and not self.multilabel_:
            return OneHotBCE(n_outputs)
        return super()._criterion(train_targets, n_outputs)

    def _fit_scalers(self, part):
        if self.standardize:
            return super()._fit_scalers(part)
        one, zero = np.ones(1, np.float32), np.zeros(1, np.float32)
        return {name: (zero, one) for name in self.input_names_}

    # -- representation ---------------------------------------------------------------------------------------
    @property
    def representation_dim_(self) -> int:
        return int(self.network_.body.out_dim)

    def transform(self, inputs: Mapping[str, object]) -> np.ndarray:
        """(n, representation_dim_) float32: the body's output (eval mode), averaged over the test crops of
        patch inputs (the same crops whose logits :meth:`decision_function` averages)."""
        if not hasattr(self, "network_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit first")
        from genrecli.device import resolve_device

        names = self._check_inputs(inputs, fitting=False)
        inputs = {name: _as_rows(inputs[name]) for name in names}
        device = resolve_device(self.device)
        net = self.network_
        if next(net.parameters()).device != device:
            net.to(device)
        net.eval()
        autocast, _ = self._amp(device)
        shapes = self._network_shapes()
        n = self._n_rows(inputs)
        out = np.empty((n, self.representation_dim_), dtype=np.float32)
        rows = np.arange(n)
        with torch.no_grad():
            for start in range(0, n, int(self.batch_size)):
                views = self._batch_tensors(inputs, rows[start:start + int(self.batch_size)], train=False, rng=None)
                acc = None
                for view in views:
                    xs = [_pad_to(t, shapes[name]).to(device) for t, name in zip(view, self.input_names_)]
                    with autocast():
                        z = net.embed(*xs).float()
                    acc = z if acc is None else acc + z
                out[start:start + len(acc)] = (acc / len(views)).cpu().numpy()
        return out

    # -- persistence ------------------------------------------------------------------------------------------
    def get_state(self) -> dict[str, np.ndarray]:
        state = super().get_state()
        if self.target_ == "cosine":
            state["labelfactor/C"] = np.asarray(self.label_factors_, dtype=np.float32)
        return state

    def get_meta(self) -> dict:
        return {**super().get_meta(), "target": self.target_}

    def set_state(self, state, meta) -> "OramasNet":
        self.target_ = meta["target"]
        self.label_factors_ = np.asarray(state["labelfactor/C"]) if "labelfactor/C" in state else None
        return super().set_state(state, meta)

    def predict_proba(self, inputs) -> np.ndarray:
        """Softmax / sigmoid of the logits; for COSINE, ``(cos + 1) / 2`` (a score in [0, 1], not a probability)."""
        if getattr(self, "target_", None) == "cosine" and self.multilabel_:
            return (self.decision_function(inputs) + 1.0) / 2.0
        return super().predict_proba(inputs)


# ------------------------------------------------------------------------------------------------ the networks
_HARNESS_DOC = """The other parameters are the harness's (:class:`~genrecli.models.neural.harness.NeuralModel`)."""


def resolve_arch(arch: str, multilabel: bool, target: str) -> str:
    """'auto': 'msd' single-label; multi-label the paper's best of Table 6 for the target (HIGH-4x70 for
    COSINE, LOW-4x70 for LOGISTIC)."""
    if arch in (None, "auto"):
        if not multilabel:
            return "msd"
        return "high-4x70" if target == "cosine" else "low-4x70"
    arch = str(arch).lower().replace("×", "x")
    if arch not in ARCHS:
        raise UsageError(f"arch={arch!r}; expected auto, {', '.join(ARCHS)}")
    return arch


def resolve_audio_dropout(dropout, arch: str, target: str) -> float:
    """None: 0.5 for the MSD-I net (all layers) and HIGH + COSINE; 0 otherwise (Section 7.3.1)."""
    if dropout is not None:
        return float(dropout)
    if arch == "msd" or (arch.startswith("high") and target == "cosine"):
        return 0.5
    return 0.0


class AudioNet(OramasNet):
    """Audio CNN on one (bins, frames) patch input (``audio/logcqt-oramas``: 96 x 323).

    Parameters: ``arch`` ('auto', 'msd' or one of LOW/HIGH x 3x3/4x96/4x70, see :func:`resolve_arch`),
    ``dropout`` (None: :func:`resolve_audio_dropout`), ``batch_norm``, ``patch_frames`` (training crop;
    the harness's random crop), ``test_crops`` (crops averaged at prediction), plus the target parameters of
    :class:`OramasNet`. Inputs are standardised with one global mean and std. """

    _scaling = "global"

    def __init__(self, *, arch="auto", dropout=None, batch_norm=False, patch_frames=323, test_crops=None,
                 target="auto", factor_dim=50, factor_fit="train+valid", standardize=True, max_epochs=100,
                 batch_size=32, optimizer="adam", lr=1e-3, momentum=0.9, weight_decay=0.0, lr_schedule="constant",
                 lr_step_size=30, lr_gamma=0.1, class_weight=None, val_fraction=0.1, monitor="loss", patience=10,
                 amp=True, amp_dtype="bfloat16", random_state=None, device="cpu"):
        store_params(self, locals())

    def _build_body(self, input_shapes):
        if len(self.input_names_) != 1:
            raise UsageError(f"the Oramas audio CNN takes one patch input, got {', '.join(self.input_names_)}")
        shape = input_shapes[self.input_names_[0]]
        if len(shape) == 3 and shape[0] == 1:
            shape = shape[1:]
        if len(shape) != 2:
            raise UsageError(f"the Oramas audio CNN needs a (bins, frames) input per track, got {self.input_names_[0]} "
                             f"of shape {tuple(shape)}")
        bins, frames = shape
        arch = resolve_arch(self.arch, self.multilabel_, self.target_)
        dropout = resolve_audio_dropout(self.dropout, arch, self.target_)
        if arch == "msd":
            return MSDTimeCNN(bins, frames, dropout=dropout, batch_norm=bool(self.batch_norm))
        width, kernels = arch.split("-")
        return MuMuCNN(bins, frames, width=width, kernels=kernels, dropout=dropout, batch_norm=bool(self.batch_norm))

    def _architecture(self) -> dict:
        arch = resolve_arch(self.arch, self.multilabel_, self.target_)
        body = self.network_.body
        return {"arch": arch, "dropout": resolve_audio_dropout(self.dropout, arch, self.target_),
                "map": list(body.map_shape), "representation": body.out_dim, "target": self.target_,
                "outputs": len(self.classes_)}


class TextNet(OramasNet):
    """Section 3.3 VSM network on a TF-IDF vector (``text/tfidf``): input dropout, ``hidden`` ReLU layers
    (2 x 2048) each followed by dropout (0.5), then the output layer. Inputs are fed raw by default (the
    TF-IDF rows are already l2-normalised). """

    def __init__(self, *, hidden=(2048, 2048), dropout=0.5, input_dropout=0.5, target="auto", factor_dim=50,
                 factor_fit="train+valid", standardize=False, max_epochs=100, batch_size=32, optimizer="adam",
                 lr=1e-3, momentum=0.9, weight_decay=0.0, lr_schedule="constant", lr_step_size=30, lr_gamma=0.1,
                 class_weight=None, val_fraction=0.1, monitor="loss", patience=10, amp=True, amp_dtype="bfloat16",
                 random_state=None, device="cpu"):
        store_params(self, locals())

    def _build_body(self, input_shapes):
        n_in = sum(math.prod(input_shapes[n]) for n in self.input_names_)
        return DenseBody(n_in, as_int_tuple(self.hidden, "hidden"), dropout=float(self.dropout),
                         input_dropout=float(self.input_dropout))

    def _architecture(self) -> dict:
        return {"hidden": list(as_int_tuple(self.hidden, "hidden")), "representation": self.network_.body.out_dim,
                "target": self.target_, "outputs": len(self.classes_)}


class ImageHeadNet(TextNet):
    """Head on a frozen image embedding (``image/<backbone>``): ``hidden`` ReLU layers with dropout, then
    the output layer; inputs standardised per column by default. It stands in for the paper's fine-tuned
    ResNet-101 (whose last hidden layer, 2048-d, is the image representation)."""

    def __init__(self, *, hidden=(2048,), dropout=0.5, input_dropout=0.0, target="auto", factor_dim=50,
                 factor_fit="train+valid", standardize=True, max_epochs=100, batch_size=32, optimizer="adam",
                 lr=1e-3, momentum=0.9, weight_decay=0.0, lr_schedule="constant", lr_step_size=30, lr_gamma=0.1,
                 class_weight=None, val_fraction=0.1, monitor="loss", patience=10, amp=True, amp_dtype="bfloat16",
                 random_state=None, device="cpu"):
        store_params(self, locals())


class FusionNet(OramasNet):
    """Section 4: every input l2-normalised, concatenated, dropout, one output layer (softmax / sigmoid /
    COSINE). Inputs are fed raw (``standardize=False``) so that the l2-normalisation sees the vectors as given."""

    def __init__(self, *, dropout=0.5, target="auto", factor_dim=50, factor_fit="train+valid", standardize=False,
                 max_epochs=100, batch_size=32, optimizer="adam", lr=1e-3, momentum=0.9, weight_decay=0.0,
                 lr_schedule="constant", lr_step_size=30, lr_gamma=0.1, class_weight=None, val_fraction=0.1,
                 monitor="loss", patience=10, amp=True, amp_dtype="bfloat16", random_state=None, device="cpu"):
        store_params(self, locals())

    def _build_body(self, input_shapes):
        widths = tuple(math.prod(input_shapes[n]) for n in self.input_names_)
        return FusionBody(widths, dropout=float(self.dropout))

    def _architecture(self) -> dict:
        return {"inputs": {n: list(s) for n, s in self.input_shapes_.items()}, "dropout": float(self.dropout),
                "target": self.target_, "outputs": len(self.classes_)}


for _cls in (AudioNet, TextNet, ImageHeadNet, FusionNet):
    _cls.__doc__ = (_cls.__doc__ or "") + "\n\n    " + _HARNESS_DOC
