"""Ng et al. 2020, "Multi-Level Local Feature Coding Fusion for Music Genre Recognition" (IEEE Access): FusionNet.

Two registered models (``genre train --model ...``):

``fusionnet-feature`` -- :class:`FeatureCodingModel`, one feature coding network on one input.
``fusionnet`` -- :class:`FusionNetModel`, the whole method inside one model: one coding network per input,
    the sum rule and the meta-classifier over their outputs, and the search for the best feature subset,
    all selected on the validation part; its artifact holds every sub-network.

The paper's eight inputs and this toolkit's features (``genre extract-audio --features ...``):
timbre -> ``audio/timbre`` (33,), rhythm (RH + SSD) -> ``audio/rhythm`` (228,), Mel -> ``audio/mel``
(128, 431), constant-Q -> ``audio/cqt`` (84, 431), harmonic -> ``audio/harmonic`` (128, 431), percussive ->
``audio/percussive`` (128, 431), scattering -> ``audio/scattering`` (299, 512), and the transfer feature of
Choi et al. 2017 -> ``audio/musicnn`` (200,): **musicnn's penultimate layer is our offline stand-in for Choi
et al.'s transfer feature** (their convnet's weights are not part of this toolkit); it is a different
pretrained network (MagnaTagATune, not the Million Song Dataset) with a different layer layout.

Feature coding network (Section III-C, Fig. 2)
    A VGG-style backbone of 5 blocks, each a 3x3 convolution (stride 1, padding 1), batch norm, ELU and a
    2x2 max-pooling, with ``channels`` = 32/32/32/64/64 maps. Every block's output map (D maps of H x W)
    is a set of H*W local descriptors coded by its own NetVLAD (``clusters`` K = 20) into a K x D coding
    (:class:`~genrecli.models.neural.netvlad.NetVLAD`). The five codings are stacked as the paper's
    ``X in R^{M x K}``: one token per descriptor dimension of every level (M = 32+32+32+64+64 = 224 tokens
    of width K), so the self-attention (``heads`` N = 10, concatenated; Eqs. 6-10,
    :class:`~genrecli.models.neural.netvlad.MultiHeadSelfAttention`) relates the codings of the five
    levels. Its output (M x N*K) is flattened into two fully connected layers (``fc_hidden`` units, ELU,
    dropout, batch norm, then the class layer). This layout reproduces the paper's 23.03 M parameters:
    224 * 10 * 20 = 44,800 inputs times 512 hidden units is 22.94 M, the rest of the network 0.09 M.
    Vector inputs (timbre, rhythm, musicnn) are not maps: they go through the two fully connected layers
    only (fc -> ELU -> dropout -> batch norm -> class layer), with the same loss and training.
Loss (Section III-D)
    Softmax cross-entropy plus ``center_loss_weight`` (lambda = 0.001) times the center loss on the input of
    the class layer (the learned high-level feature ``F_c``); the validation loss used for early stopping
    is the cross-entropy alone.
Training (Section IV-B)
    RMSProp with smoothing constant ``rmsprop_alpha`` = 0.9 and L2 penalty 4e-5, learning rate 1e-3 times
    0.94 every 2 epochs (the harness's step schedule). Segments: the paper cuts every track into 10 s
    segments (30 s for ISMIR2004) and its released code scores a track by its three central 10 s segments.
    Our patch features hold the central 10 s of each track (one segment), so by default the network trains
    on random ``patch_frames`` = 144-frame crops (3.3 s at hop 512) and scores a track by averaging the
    logits of ``test_crops`` = 3 segments spanning the stored 10 s (the harness's test crops: the first
    starting at frame 0, the last ending at the last frame; for 431 frames the three barely overlap).
    ``patch_frames=null`` trains and scores on the whole stored patch (one 10 s segment, the paper's segment
    length). Three whole 10 s segments per track would need 30 s patch features, which the feature registry
    does not offer.
Fusion (Section III-E, Algorithm 1)
    Every coding network gives class probabilities. The sum rule adds the probabilities of the networks of a
    feature subset. The meta-classifier (:class:`MetaClassifierModel`) takes the z-normalised stacked
    probabilities of a subset (``meta_input='proba'``, one vector of n_features x n_classes per track)
    through three 1-D convolution blocks (conv k=3, batch norm, ELU, max-pool 2; 32/64/32 maps), the same
    multi-head self-attention over the positions of the last map, and two fully connected layers (as the
    coding network's), trained with RMSProp at a fixed ``meta_lr`` = 1e-5. It is trained on **out-of-fold**
    probabilities of the training part: inside ``fit`` the training rows are split into ``meta_folds`` = 3
    stratified folds, one extra coding network per feature and fold is trained on the other folds and
    predicts the held-out one; the coding networks used at prediction time are trained on all training rows.
    ``meta_input='embedding'`` is the paper's own input, the learned high-level features ``F_c`` (the
    ``fc_hidden`` values before the class layer) of the full networks on the training rows, in sample (the
    out-of-fold networks' embeddings live in different spaces and cannot be stacked); no fold networks
    are trained then.
Feature-subset search
    Every subset of at least ``min_subset`` = 2 of the inputs (247 of 8) is scored by the sum rule on the
    validation part; the ``n_candidates`` = 6 best get a meta-classifier each (Algorithm 1, steps 9-15),
    and the best of the sum-rule and meta results on the validation part is kept (step 16): its subset,
    its fusion and, for the meta, its meta-classifier. Ranking: validation accuracy, then the lower
    validation log-loss of the fused probabilities, then the smaller subset, then the sum rule before the
    meta-classifier. ``fusion='sum'`` or ``'meta'`` restricts the final choice to one kind;
    ``subset_search=False`` uses all inputs.
Cost
    ``n_inputs`` coding networks (``fusion='sum'`` or ``meta_input='embedding'``), otherwise
    ``n_inputs * (meta_folds + 1)`` (32 for the eight features with ``meta_folds=3``), plus ``n_candidates``
    meta-classifiers: about ``meta_folds + 1`` times the cost of the eight ``fusionnet-feature`` runs. The
    subset search itself is cheap (sums of stored probability matrices).

**Protocol flag.** The paper and its released code pick the feature combination (and the checkpoint) by
TEST accuracy. Here every choice -- early stopping, the subset, sum rule vs meta -- is made on the
validation part (the split's VALID rows given by ``genre train``, else ``val_fraction`` of the training rows
carved stratified). ``select_on='test'`` names the paper's protocol, but a model never sees test rows in
``fit``, so it is refused with a UsageError: the pipeline would have to pass the test part as the
selection part and label the run and its report rows as test-selected.

Choices not stated by the paper
-------------------------------
* Pooling: 2x2 max-pooling (a side already of length 1 is not pooled), ceil mode; convolutions without bias
  (batch norm follows); batch norm before ELU as the paper says.
* Fully connected part: ``fc_hidden`` = 512 (the value that reproduces the paper's parameter count), ELU
  after the first layer, dropout 0.5, then batch norm (the paper: "a dropout layer and a batch
  normalization layer are applied between two fully connected layers").
* Standardisation: one mean/std over all training patches of a patch input, per column for vector inputs
  (the meta-classifier's per-column z-normalisation is the paper's).
* NetVLAD, attention and center-loss details: see :mod:`genrecli.models.neural.netvlad`.
* Epochs: ``max_epochs`` = 60 with early stopping on the validation loss (``patience`` 10) for the coding
  networks, 200 (patience 20) for the meta-classifier; batch size 32; RMSProp without momentum.
* The meta-classifier has no center loss and no weight decay (the paper states neither for it); it uses the
  coding networks' smoothing constant.
* "Scored per track": the mean of the segment logits (the harness's test crops).
* Selection is by plain accuracy on the validation part (the paper's criterion, on test).
"""

from __future__ import annotations

import itertools
import math
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from genrecli import ui
from genrecli.device import resolve_device
from genrecli.errors import UsageError
from genrecli.models.base import GenreModel
from genrecli.models.neural.harness import NeuralModel, _as_rows, _carve, _pad_to, as_int_tuple, store_params
from genrecli.models.neural.netvlad import MultiHeadSelfAttention, NetVLAD, center_loss, pool_size, pooled

FUSIONS = ("auto", "sum", "meta")
META_INPUTS = ("proba", "embedding")
SELECT_ON = ("validation", "test")
STACK = "stack"  # the meta-classifier's one input name

TEST_SELECTION_REFUSED = (
    "select_on='test' is the paper's protocol (Ng et al. pick the feature subset and the checkpoint on TEST "
    "accuracy), but a model never sees test rows in fit, so it cannot be done inside fusionnet: the pipeline "
    "would have to pass the test part as the selection part and label the run and its report rows as "
    "test-selected; use select_on='validation' (the default)"
)


# ------------------------------------------------------------------------------------------------ networks
class _FCHead(nn.Module):
    """fc -> ELU -> dropout -> batch norm (the embedding F_c) -> class layer; holds the center-loss centres."""

    def __init__(self, n_in: int, hidden: int, dropout: float, n_outputs: int):
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(n_in, hidden), nn.ELU(), nn.Dropout(dropout), nn.BatchNorm1d(hidden))
        self.out = nn.Linear(hidden, n_outputs)
        self.centers = nn.Parameter(torch.zeros(n_outputs, hidden))
        self.embedding: torch.Tensor | None = None  # the last training batch's embedding (for the center loss)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        e = self.hidden(z)
        self.embedding = e if self.training else None
        return self.out(e)


class _CodingNet(nn.Module):
    """VGG blocks -> a NetVLAD per block -> multi-head self-attention over the stacked codings -> FC head."""

    def __init__(self, in_channels: int, height: int, width: int, channels: Sequence[int], clusters: int,
                 heads: int, hidden: int, dropout: float, n_outputs: int, attention: bool, normalize_input: bool):
        super().__init__()
        blocks, vlads, c, h, w = [], [], in_channels, height, width
        for out in channels:
            ph, pw = pool_size(h), pool_size(w)
            blocks.append(nn.Sequential(nn.Conv2d(c, out, kernel_size=3, stride=1, padding=1, bias=False),
                                        nn.BatchNorm2d(out), nn.ELU(), nn.MaxPool2d((ph, pw), ceil_mode=True)))
            vlads.append(NetVLAD(out, clusters, normalize_input=normalize_input))
            c, h, w = out, pooled(h, ph), pooled(w, pw)
        self.blocks, self.vlads = nn.ModuleList(blocks), nn.ModuleList(vlads)
        tokens = sum(channels)
        self.attention = MultiHeadSelfAttention(clusters, heads) if attention else None
        self.head = _FCHead(tokens * clusters * (heads if attention else 1), hidden, dropout, n_outputs)

    def coded(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:  # (batch, bins, frames) -> one channel
            x = x.unsqueeze(1)
        codes = []
        for block, vlad in zip(self.blocks, self.vlads):
            x = block(x)
            codes.append(vlad(NetVLAD.from_map(x)).transpose(1, 2))  # (B, D, K): one token per dimension
        z = torch.cat(codes, dim=1)  # (B, M, K)
        if self.attention is not None:
            z = self.attention(z)
        return z.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.coded(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.hidden(self.coded(x))


class _VectorNet(nn.Module):
    """A vector feature through the two fully connected layers only."""

    def __init__(self, n_in: int, hidden: int, dropout: float, n_outputs: int):
        super().__init__()
        self.head = _FCHead(n_in, hidden, dropout, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.hidden(x.flatten(1))


class _MetaNet(nn.Module):
    """Three 1-D conv blocks over the stacked vector -> self-attention over positions -> FC head."""

    def __init__(self, length: int, channels: Sequence[int], heads: int, hidden: int, dropout: float, n_outputs: int):
        super().__init__()
        blocks, c, n = [], 1, length
        for out in channels:
            p = pool_size(n)
            blocks += [nn.Conv1d(c, out, kernel_size=3, padding=1, bias=False), nn.BatchNorm1d(out), nn.ELU(),
                       nn.MaxPool1d(p, ceil_mode=True)]
            c, n = out, pooled(n, p)
        self.blocks = nn.Sequential(*blocks)
        self.attention = MultiHeadSelfAttention(c, heads) if heads else None
        self.head = _FCHead(n * c * (heads or 1), hidden, dropout, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.blocks(x.flatten(1).unsqueeze(1)).transpose(1, 2)  # (B, positions, channels)
        if self.attention is not None:
            z = self.attention(z)
        return self.head(z.flatten(1))


class _CenterLossCriterion(nn.Module):
    """The harness's cross-entropy plus ``weight`` x center loss on the head's embedding while training.

    In eval mode (the harness's validation loss) it is the cross-entropy alone.
    """

    def __init__(self, base: nn.Module, net: nn.Module, weight: float):
        super().__init__()
        self.base, self.weight = base, float(weight)
        self._net = [net]  # not a registered submodule: the criterion must not own (or move) the network

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = self.base(logits, targets)
        head = self._net[0].head
        if self._net[0].training and head.embedding is not None:
            loss = loss + self.weight * center_loss(head.embedding.float(), targets, head.centers.float())
        return loss


class _PaperTraining:
    """RMSProp with the paper's smoothing constant, and the center loss (mixin before NeuralModel)."""

    def _make_optimizer(self, net: nn.Module) -> torch.optim.Optimizer:
        if self.optimizer != "rmsprop":
            return super()._make_optimizer(net)
        return torch.optim.RMSprop(net.parameters(), lr=float(self.lr), alpha=float(self.rmsprop_alpha),
                                   momentum=float(self.momentum), weight_decay=float(self.weight_decay))

    def _criterion(self, train_targets: np.ndarray, n_outputs: int) -> nn.Module:
        base = super()._criterion(train_targets, n_outputs)
        weight = float(getattr(self, "center_loss_weight", 0.0) or 0.0)
        if self.multilabel_ or weight == 0.0:
            return base
        return _CenterLossCriterion(base, self.network_, weight)

    def _check_common(self) -> None:
        name = type(self).__name__
        if not 0.0 < float(self.rmsprop_alpha) < 1.0:
            raise UsageError(f"{name}: rmsprop_alpha must be in (0, 1) (got {self.rmsprop_alpha})")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise UsageError(f"{name}: dropout must be in [0, 1) (got {self.dropout})")
        for key in ("heads", "fc_hidden"):
            if int(getattr(self, key)) < 1:
                raise UsageError(f"{name}: {key} must be >= 1 (got {getattr(self, key)})")


# ---------------------------------------------------------------------------------------- one feature network
class FeatureCodingModel(_PaperTraining, NeuralModel):
    """Ng et al.'s feature coding network on one input (``fusionnet-feature``); see the module docstring.

    A patch input ((bins, frames) or (channels, bins, frames) per track) goes through the VGG + NetVLAD +
    self-attention + FC network; a vector input through the two FC layers only. Trained with softmax
    cross-entropy + ``center_loss_weight`` x center loss, so :meth:`predict_proba` is a calibrated softmax.

    Parameters
    ----------
    channels : tuple of int, maps of the 5 conv blocks (32, 32, 32, 64, 64).
    clusters : int, NetVLAD's K (20; the paper tests 5-40).
    heads : int, self-attention heads N (10; the paper tests 5-35).
    fc_hidden : int, width of the first fully connected layer (512).
    dropout : float, dropout between the two fully connected layers (0.5).
    center_loss_weight : float, lambda of the center loss (0.001; 0 turns it off).
    attention : bool, the self-attention layer (False: the ablation without it, Fig. 7).
    vlad_input_norm : bool, L2-normalise descriptors before NetVLAD's assignment.
    rmsprop_alpha : float, RMSProp's smoothing constant (0.9).
    patch_frames : int or None, frames per training crop (144); None: the whole stored patch.
    test_crops : int or None, segments averaged per track at prediction time (3).
    The other parameters are the harness's (:class:`~genrecli.models.neural.harness.NeuralModel`), with the
    paper's training: max_epochs=60, batch_size=32, optimizer='rmsprop', lr=1e-3, momentum=0.0,
    weight_decay=4e-5, lr_schedule='step', lr_step_size=2, lr_gamma=0.94, class_weight=None,
    val_fraction=0.1, monitor='loss', patience=10, amp=True, amp_dtype='bfloat16', random_state=None,
    device='cpu'.
    """

    def __init__(self, *, channels=(32, 32, 32, 64, 64), clusters=20, heads=10, fc_hidden=512, dropout=0.5,
                 center_loss_weight=1e-3, attention=True, vlad_input_norm=True, rmsprop_alpha=0.9,
                 patch_frames=144, test_crops=3, max_epochs=60, batch_size=32, optimizer="rmsprop", lr=1e-3,
                 momentum=0.0, weight_decay=4e-5, lr_schedule="step", lr_step_size=2, lr_gamma=0.94,
                 class_weight=None, val_fraction=0.1, monitor="loss", patience=10, amp=True, amp_dtype="bfloat16",
                 random_state=None, device="cpu"):
        store_params(self, locals())

    def _check_params(self) -> None:
        super()._check_params()
        self._check_common()
        if int(self.clusters) < 1:
            raise UsageError(f"FeatureCodingModel: clusters must be >= 1 (got {self.clusters})")
        if float(self.center_loss_weight) < 0:
            raise UsageError(f"FeatureCodingModel: center_loss_weight must be >= 0 (got {self.center_loss_weight})")
        if len(as_int_tuple(self.channels, "channels")) < 1:
            raise UsageError("FeatureCodingModel: channels needs at least one block")

    def _fit_scalers(self, part):
        # one mean/std over a patch input (like the cnn), per column for a vector input
        self._scaling = "global" if len(self.input_shapes_[self.input_names_[0]]) >= 2 else "column"
        return super()._fit_scalers(part)

    def _build_network(self, input_shapes: Mapping[str, tuple[int, ...]], n_outputs: int) -> nn.Module:
        if len(self.input_names_) != 1:
            raise UsageError(f"fusionnet-feature takes exactly one input, got {', '.join(self.input_names_)}")
        shape = tuple(input_shapes[self.input_names_[0]])
        if len(shape) == 1:
            return _VectorNet(shape[0], int(self.fc_hidden), float(self.dropout), n_outputs)
        if len(shape) not in (2, 3):
            raise UsageError(f"fusionnet-feature needs a vector, a (bins, frames) or a (channels, bins, frames) "
                             f"input per track, got {self.input_names_[0]} of shape {shape}")
        in_channels = 1 if len(shape) == 2 else shape[0]
        return _CodingNet(in_channels, shape[-2], shape[-1], as_int_tuple(self.channels, "channels"),
                          int(self.clusters), int(self.heads), int(self.fc_hidden), float(self.dropout), n_outputs,
                          bool(self.attention), bool(self.vlad_input_norm))

    def _architecture(self) -> dict:
        shape = self._network_shapes()[self.input_names_[0]]
        kind = "fc" if len(shape) == 1 else "vgg-netvlad-attention"
        n_params = sum(int(p.numel()) for p in self.network_.parameters()) if hasattr(self, "network_") else None
        return {"kind": kind, "input": list(shape), "channels": list(as_int_tuple(self.channels, "channels")),
                "clusters": int(self.clusters), "heads": int(self.heads), "fc_hidden": int(self.fc_hidden),
                "attention": bool(self.attention), "outputs": len(self.classes_), "parameters": n_params}

    def embed(self, inputs: Mapping[str, object]) -> np.ndarray:
        """The learned high-level feature F_c (n, fc_hidden): the class layer's input, averaged over test crops."""
        names = self._check_inputs(inputs, fitting=False)
        inputs = {name: _as_rows(inputs[name]) for name in names}
        device = resolve_device(self.device)
        net = self.network_.to(device).eval()
        shapes = self._network_shapes()
        n, bs = self._n_rows(inputs), int(self.batch_size)
        out = np.empty((n, int(self.fc_hidden)), dtype=np.float32)
        with torch.no_grad():
            for start in range(0, n, bs):
                views = self._batch_tensors(inputs, np.arange(start, min(n, start + bs)), train=False, rng=None)
                acc = None
                for view in views:
                    xs = [_pad_to(t, shapes[name]).to(device) for t, name in zip(view, self.input_names_)]
                    e = net.embed(*xs).float()
                    acc = e if acc is None else acc + e
                out[start:start + len(acc)] = (acc / len(views)).cpu().numpy()
        return out


# ------------------------------------------------------------------------------------------ meta-classifier
class MetaClassifierModel(_PaperTraining, NeuralModel):
    """The meta-CNN of Section III-E on one vector input (stacked probabilities or embeddings), z-normalised.

    Parameters
    ----------
    channels : tuple of int, maps of the three 1-D conv blocks (32, 64, 32).
    heads : int, self-attention heads (10; 0 drops the attention layer).
    fc_hidden, dropout, rmsprop_alpha : as :class:`FeatureCodingModel`.
    The harness's parameters with the paper's meta training: optimizer='rmsprop', lr=1e-5,
    lr_schedule='constant', max_epochs=200, patience=20, batch_size=32, momentum=0.0, weight_decay=0.0.
    """

    _scaling = "column"  # z-normalisation of every stacked value over the training rows

    def __init__(self, *, channels=(32, 64, 32), heads=10, fc_hidden=512, dropout=0.5, rmsprop_alpha=0.9,
                 max_epochs=200, batch_size=32, optimizer="rmsprop", lr=1e-5, momentum=0.0, weight_decay=0.0,
                 lr_schedule="constant", lr_step_size=30, lr_gamma=0.1, class_weight=None, val_fraction=0.1,
                 monitor="loss", patience=20, amp=True, amp_dtype="bfloat16", random_state=None, device="cpu"):
        store_params(self, locals())

    def _check_params(self) -> None:
        super()._check_params()
        if int(self.heads) < 0:
            raise UsageError(f"MetaClassifierModel: heads must be >= 0 (got {self.heads})")
        if not 0.0 < float(self.rmsprop_alpha) < 1.0 or not 0.0 <= float(self.dropout) < 1.0 or int(self.fc_hidden) < 1:
            raise UsageError("MetaClassifierModel: need 0 < rmsprop_alpha < 1, 0 <= dropout < 1 and fc_hidden >= 1")

    def _build_network(self, input_shapes: Mapping[str, tuple[int, ...]], n_outputs: int) -> nn.Module:
        length = math.prod(input_shapes[self.input_names_[0]])
        return _MetaNet(length, as_int_tuple(self.channels, "channels"), int(self.heads), int(self.fc_hidden),
                        float(self.dropout), n_outputs)

    def _architecture(self) -> dict:
        return {"input": list(self.input_shapes_[self.input_names_[0]]),
                "channels": list(as_int_tuple(self.channels, "channels")), "heads": int(self.heads),
                "fc_hidden": int(self.fc_hidden), "outputs": len(self.classes_)}


# --------------------------------------------------------------------------------------------- fusion helpers
def sum_rule(probas: Sequence[np.ndarray]) -> np.ndarray:
    """The sum rule: the element-wise sum of the (n, C) class-probability matrices of the fused networks."""
    return np.sum(np.stack([np.asarray(p, dtype=np.float64) for p in probas]), axis=0)


def candidate_subsets(names: Sequence[str], min_size: int = 2) -> list[tuple[str, ...]]:
    """Every subset of ``names`` with at least ``min_size`` members (247 of 8 for 2), smallest first;
    the whole set when there are fewer than ``min_size`` names."""
    names = list(names)
    if len(names) < min_size:
        return [tuple(names)]
    return [s for k in range(max(1, min_size), len(names) + 1) for s in itertools.combinations(names, k)]


def fused_scores(proba: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(accuracy, mean log-loss) of fused class scores ``proba`` (rows normalised) against positions ``y``."""
    p = np.asarray(proba, dtype=np.float64)
    p = p / np.maximum(p.sum(axis=1, keepdims=True), 1e-300)
    y = np.asarray(y, dtype=np.int64)
    acc = float(np.mean(p.argmax(axis=1) == y)) if len(y) else 0.0
    nll = float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)))) if len(y) else math.inf
    return acc, nll


def rank_sum_rule(val_proba: Mapping[str, np.ndarray], y_val: np.ndarray,
                  subsets: Sequence[tuple[str, ...]]) -> list[dict]:
    """Every subset scored by the sum rule on the selection part, best first (accuracy, then log-loss, then
    fewer features, then the order of ``subsets``). Reads nothing but ``val_proba`` and ``y_val``."""
    rows = []
    for order, subset in enumerate(subsets):
        acc, nll = fused_scores(sum_rule([val_proba[n] for n in subset]), y_val)
        rows.append({"subset": list(subset), "fusion": "sum", "val_accuracy": acc, "val_nll": nll, "_order": order})
    rows.sort(key=_rank_key)
    for r in rows:
        r.pop("_order")
    return rows


def _rank_key(r: dict):
    return (-r["val_accuracy"], r["val_nll"], len(r["subset"]), 0 if r["fusion"] == "sum" else 1, r.get("_order", 0))


def _subset_rows(x, rows: np.ndarray):
    """Rows ``rows`` (sorted positions) of an array or a lazily read view, without reading a view."""
    if isinstance(x, np.ndarray):
        return x[rows]
    if hasattr(x, "subset"):
        return x.subset(rows)
    return _RowSubset(x, rows)


class _RowSubset:
    """Some rows of a row-indexable dataset (``len``, ``shape``, ``x[array]``), read on demand."""

    def __init__(self, x, rows: np.ndarray):
        self.x, self.rows = x, np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.x.shape[1:])

    def __getitem__(self, index):
        return self.x[self.rows[index]]


def _aligned_proba(model: GenreModel, inputs: Mapping[str, object], n_classes: int) -> np.ndarray:
    """(n, n_classes) probabilities of a sub-model trained on class positions (absent classes: 0)."""
    p = np.asarray(model.predict_proba(inputs), dtype=np.float64)
    out = np.zeros((len(p), n_classes))
    out[:, np.asarray(model.classes_, dtype=np.int64)] = p
    return out


def _sub_seed(seed: int, *keys) -> int:
    words = [int(seed) % (2**32)] + [zlib.crc32(str(k).encode()) for k in keys]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)


# ------------------------------------------------------------------------------------------------ the model
class FusionNetModel(GenreModel):
    """Ng et al.'s FusionNet (``fusionnet``): coding networks, sum rule, meta-classifier and subset search.

    See the module docstring for the method, the choices and the cost. After ``fit``:

    Attributes
    ----------
    feature_models_ : name -> :class:`FeatureCodingModel` trained on all training rows (every input, or the
        chosen subset's with ``keep_all_networks=False``).
    meta_model_ : the chosen subset's :class:`MetaClassifierModel` when the meta-classifier won, else None.
    subset_ : tuple of input names, the chosen feature subset; ``fusion_``: 'sum' or 'meta'.
    val_scores_ : name -> validation accuracy of each coding network alone.
    candidates_ : the ranked candidate results on the validation part (subset, fusion, accuracy, log-loss).
    n_subsets_ : how many subsets the sum rule scored.

    Parameters
    ----------
    channels, clusters, heads, fc_hidden, dropout, center_loss_weight, attention, vlad_input_norm,
    patch_frames, test_crops, max_epochs, batch_size, optimizer, lr, rmsprop_alpha, momentum, weight_decay,
    lr_schedule, lr_step_size, lr_gamma, class_weight, monitor, patience, amp, amp_dtype :
        the coding networks' (:class:`FeatureCodingModel`).
    meta_channels, meta_heads, meta_fc_hidden, meta_dropout, meta_lr, meta_max_epochs, meta_patience,
    meta_batch_size : the meta-classifier's (:class:`MetaClassifierModel`).
    meta_input : 'proba' (out-of-fold stacked probabilities) or 'embedding' (the paper's F_c, in sample).
    meta_folds : int >= 2, folds of the out-of-fold predictions (3).
    fusion : 'auto' (sum rule or meta, whichever wins on validation), 'sum' or 'meta'.
    subset_search : bool, search the feature subsets (False: fuse every input).
    n_candidates : int, subsets (best by the sum rule) that get a meta-classifier (6).
    min_subset : int, the smallest subset searched (2, the paper's 247 of 8; 1 adds single features).
    select_on : 'validation' (default) or 'test' (the paper's protocol: refused in fit, see the module doc).
    val_fraction : float in (0, 1), the part of the training rows carved for selection when ``fit`` gets no
        validation part.
    keep_all_networks : bool, keep every input's coding network in the artifact (True; a full-size patch
        network is ~92 MB, 23 M float32 weights); False keeps only the chosen subset's.
    random_state : int or None; device : 'cpu', 'cuda', 'cuda:N' or 'auto'.
    """

    def __init__(self, *, channels=(32, 32, 32, 64, 64), clusters=20, heads=10, fc_hidden=512, dropout=0.5,
                 center_loss_weight=1e-3, attention=True, vlad_input_norm=True, patch_frames=144, test_crops=3,
                 max_epochs=60, batch_size=32, optimizer="rmsprop", lr=1e-3, rmsprop_alpha=0.9, momentum=0.0,
                 weight_decay=4e-5, lr_schedule="step", lr_step_size=2, lr_gamma=0.94, class_weight=None,
                 monitor="loss", patience=10, amp=True, amp_dtype="bfloat16",
                 meta_channels=(32, 64, 32), meta_heads=10, meta_fc_hidden=512, meta_dropout=0.5, meta_lr=1e-5,
                 meta_max_epochs=200, meta_patience=20, meta_batch_size=32, meta_input="proba", meta_folds=3,
                 fusion="auto", subset_search=True, n_candidates=6, min_subset=2, select_on="validation",
                 val_fraction=0.1, keep_all_networks=True, random_state=None, device="cpu"):
        store_params(self, locals())

    _FEATURE_KEYS = ("channels", "clusters", "heads", "fc_hidden", "dropout", "center_loss_weight", "attention",
                     "vlad_input_norm", "patch_frames", "test_crops", "max_epochs", "batch_size", "optimizer", "lr",
                     "rmsprop_alpha", "momentum", "weight_decay", "lr_schedule", "lr_step_size", "lr_gamma",
                     "class_weight", "monitor", "patience", "amp", "amp_dtype", "device")

    # -- sub-models -----------------------------------------------------------------------------------------
    def _feature_model(self, seed: int | None) -> FeatureCodingModel:
        params = {k: getattr(self, k) for k in self._FEATURE_KEYS}
        return FeatureCodingModel(**params, val_fraction=0.1, random_state=seed)

    def _meta_model(self, seed: int | None) -> MetaClassifierModel:
        return MetaClassifierModel(
            channels=self.meta_channels, heads=self.meta_heads, fc_hidden=self.meta_fc_hidden,
            dropout=self.meta_dropout,
            rmsprop_alpha=self.rmsprop_alpha, max_epochs=self.meta_max_epochs, batch_size=self.meta_batch_size,
            lr=self.meta_lr, patience=self.meta_patience, monitor=self.monitor, class_weight=self.class_weight,
            amp=self.amp, amp_dtype=self.amp_dtype, random_state=seed, device=self.device)

    def set_checkpoint_dir(self, path) -> "FusionNetModel":
        """Checkpoint every sub-network of the next ``fit`` under ``path`` (one folder each), and resume."""
        self._checkpoint_dir = None if path is None else Path(path)
        return self

    def _ckpt(self, *parts: str) -> Path | None:
        root = getattr(self, "_checkpoint_dir", None)
        return None if root is None else Path(root, *(_slug(p) for p in parts))

    # -- checks ---------------------------------------------------------------------------------------------
    def _check_params(self) -> None:
        name = "FusionNetModel"
        if self.select_on not in SELECT_ON:
            raise UsageError(f"{name}: select_on={self.select_on!r}; expected one of {', '.join(SELECT_ON)}")
        if self.select_on == "test":
            raise UsageError(TEST_SELECTION_REFUSED)
        if self.fusion not in FUSIONS:
            raise UsageError(f"{name}: fusion={self.fusion!r}; expected one of {', '.join(FUSIONS)}")
        if self.meta_input not in META_INPUTS:
            raise UsageError(f"{name}: meta_input={self.meta_input!r}; expected one of {', '.join(META_INPUTS)}")
        if int(self.meta_folds) < 2:
            raise UsageError(f"{name}: meta_folds must be >= 2 (got {self.meta_folds})")
        if int(self.n_candidates) < 1 or int(self.min_subset) < 1:
            raise UsageError(f"{name}: n_candidates and min_subset must be >= 1")
        if not 0.0 < float(self.val_fraction) < 1.0:
            raise UsageError(f"{name}: val_fraction must be in (0, 1): the subset and the fusion are chosen on "
                             f"a validation part (got {self.val_fraction})")
        self._feature_model(0)._check_params()
        self._meta_model(0)._check_params()

    # -- fit ------------------------------------------------------------------------------------------------
    def fit(self, inputs: Mapping[str, object], y, *, validation=None, checkpoint_dir=None) -> "FusionNetModel":
        """Train every coding network, the meta-classifiers of the candidate subsets, and choose on validation.

        Parameters
        ----------
        inputs : name -> (n, ...) arrays or lazily read views (vectors and patches).
        y : (n,) class indices (single-label only).
        validation : optional ``(inputs_val, y_val)``, the selection part; else ``val_fraction`` of the
            training rows is carved (stratified, seeded).
        checkpoint_dir : overrides :meth:`set_checkpoint_dir` for this fit.
        """
        self._check_params()
        if checkpoint_dir is not None:
            self.set_checkpoint_dir(checkpoint_dir)
        names = self._check_inputs(inputs, fitting=True)
        y = np.asarray(y)
        if y.ndim != 1:
            raise UsageError("fusionnet is single-label: y must be (n,) class indices")
        if len(y) != self._n_rows(inputs):
            raise UsageError(f"inputs have {self._n_rows(inputs)} rows but y has {len(y)} labels")
        if self.random_state is not None:
            seed = int(self.random_state)
        else:
            seed = int(np.random.SeedSequence().entropy % (2**63))
        self.seed_ = seed
        if validation is not None:
            classes = np.unique(y)
            tr_in, tr_t = {n: inputs[n] for n in names}, np.searchsorted(classes, y).astype(np.int64)
            va_in, va_t = self._selection_part(validation, names, classes)
        else:
            classes = np.unique(y)
            targets = np.searchsorted(classes, y).astype(np.int64)
            tr, va = _carve(targets, False, float(self.val_fraction), np.random.default_rng(_sub_seed(seed, "carve")))
            if len(va) == 0:
                raise UsageError("fusionnet: no validation rows could be carved (too few training tracks)")
            tr_in = {n: _subset_rows(inputs[n], tr) for n in names}
            va_in = {n: _subset_rows(inputs[n], va) for n in names}
            tr_t, va_t = targets[tr], targets[va]
        self.classes_, self.multilabel_, self.input_names_ = classes, False, names
        n_classes = len(classes)
        need_meta = self.fusion in ("auto", "meta")
        oof = need_meta and self.meta_input == "proba"
        if oof and len(tr_t) < int(self.meta_folds):
            raise UsageError(f"fusionnet: {len(tr_t)} training rows cannot be split into meta_folds={self.meta_folds}")

        # 1. one coding network per input on all training rows (+ out-of-fold ones for the meta-classifier)
        self.feature_models_, val_proba, train_source, val_source = {}, {}, {}, {}
        for i, name in enumerate(names, 1):
            ui.info(f"fusionnet: coding network {i}/{len(names)} on {name}")
            model = self._feature_model(_sub_seed(seed, name, "full"))
            model.set_checkpoint_dir(self._ckpt(name, "full"))
            model.fit({name: tr_in[name]}, tr_t, validation=({name: va_in[name]}, va_t))
            self.feature_models_[name] = model
            val_proba[name] = _aligned_proba(model, {name: va_in[name]}, n_classes)
            if need_meta and self.meta_input == "embedding":
                train_source[name] = model.embed({name: tr_in[name]})
                val_source[name] = model.embed({name: va_in[name]})
            elif oof:
                train_source[name] = self._out_of_fold(name, tr_in[name], tr_t, va_in[name], va_t, n_classes, seed)
                val_source[name] = val_proba[name]
        self.val_scores_ = {n: fused_scores(val_proba[n], va_t)[0] for n in names}

        # 2. the sum rule over every subset, on the validation part
        subsets = candidate_subsets(names, int(self.min_subset)) if self.subset_search else [tuple(names)]
        ranked = rank_sum_rule(val_proba, va_t, subsets)
        self.n_subsets_ = len(subsets)
        top = ranked[:int(self.n_candidates)]
        results, metas = [dict(r, _order=k) for k, r in enumerate(top)], {}

        # 3. a meta-classifier on each of the best subsets
        if need_meta:
            for k, cand in enumerate(top):
                subset = tuple(cand["subset"])
                ui.info(f"fusionnet: meta-classifier {k + 1}/{len(top)} on {{{', '.join(subset)}}}")
                meta = self._meta_model(_sub_seed(seed, "meta", *subset))
                meta.set_checkpoint_dir(self._ckpt("meta", "+".join(subset)))
                x_tr = np.concatenate([train_source[n] for n in subset], axis=1).astype(np.float32)
                x_va = np.concatenate([val_source[n] for n in subset], axis=1).astype(np.float32)
                meta.fit({STACK: x_tr}, tr_t, validation=({STACK: x_va}, va_t))
                acc, nll = fused_scores(_aligned_proba(meta, {STACK: x_va}, n_classes), va_t)
                results.append({"subset": list(subset), "fusion": "meta", "val_accuracy": acc, "val_nll": nll,
                                "_order": k})
                metas[subset] = meta

        # 4. the best result on the validation part
        allowed = ("sum", "meta") if self.fusion == "auto" else (self.fusion,)
        results.sort(key=_rank_key)
        best = next(r for r in results if r["fusion"] in allowed)
        for r in results:
            r.pop("_order", None)
        self.candidates_ = results
        self.subset_, self.fusion_ = tuple(best["subset"]), best["fusion"]
        self.val_accuracy_, self.val_nll_ = best["val_accuracy"], best["val_nll"]
        self.meta_model_ = metas[self.subset_] if self.fusion_ == "meta" else None
        if not self.keep_all_networks:
            self.feature_models_ = {n: m for n, m in self.feature_models_.items() if n in self.subset_}
        ui.info(f"fusionnet: chose {self.fusion_} fusion of {{{', '.join(self.subset_)}}} "
                f"(validation accuracy {self.val_accuracy_:.4f})")
        return self

    def _selection_part(self, validation, names, classes) -> tuple[dict, np.ndarray]:
        try:
            val_inputs, val_y = validation
        except (TypeError, ValueError):
            raise UsageError("validation must be a pair (inputs, y)") from None
        missing = [n for n in names if n not in val_inputs]
        if missing:
            raise UsageError(f"validation inputs lack {', '.join(missing)}")
        val_y = np.asarray(val_y)
        if val_y.ndim != 1 or len(val_y) != len(val_inputs[names[0]]):
            raise UsageError(f"validation labels of shape {val_y.shape} for {len(val_inputs[names[0]])} rows")
        known = np.isin(val_y, classes)
        if not known.any():
            raise UsageError("fusionnet: no validation row has a class seen in training")
        rows = np.flatnonzero(known)
        if len(rows) < len(val_y):
            ui.warn(f"{len(val_y) - len(rows)} validation rows have classes unseen in training; they are not used")
            val_inputs = {n: _subset_rows(val_inputs[n], rows) for n in names}
        return {n: val_inputs[n] for n in names}, np.searchsorted(classes, val_y[rows]).astype(np.int64)

    def _out_of_fold(self, name, x_tr, t_tr, x_va, t_va, n_classes, seed) -> np.ndarray:
        """Probabilities of every training row from a network that did not train on it (meta_folds folds)."""
        import warnings

        from sklearn.model_selection import StratifiedKFold

        folds = StratifiedKFold(n_splits=int(self.meta_folds), shuffle=True,
                                random_state=_sub_seed(seed, "folds") % (2**31))
        out = np.zeros((len(t_tr), n_classes))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The least populated class")
            splits = list(folds.split(np.zeros(len(t_tr)), t_tr))
        for k, (fit_rows, held) in enumerate(splits):
            ui.info(f"fusionnet: {name} out-of-fold network {k + 1}/{len(splits)}")
            model = self._feature_model(_sub_seed(seed, name, "fold", k))
            model.set_checkpoint_dir(self._ckpt(name, f"fold{k}"))
            model.fit({name: _subset_rows(x_tr, np.sort(fit_rows))}, t_tr[np.sort(fit_rows)],
                      validation=({name: x_va}, t_va))
            held = np.sort(held)
            out[held] = _aligned_proba(model, {name: _subset_rows(x_tr, held)}, n_classes)
        return out

    # -- prediction -----------------------------------------------------------------------------------------
    def _require_fitted(self) -> None:
        if not hasattr(self, "feature_models_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError("this FusionNetModel is not fitted yet; call fit first")

    def feature_scores(self, inputs: Mapping[str, object], names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """name -> (n, len(classes_)) class probabilities of each coding network alone (default: every one kept)."""
        self._require_fitted()
        names = list(self.feature_models_ if names is None else names)
        missing = [n for n in names if n not in inputs]
        if missing:
            raise UsageError(f"the model was trained on {', '.join(self.input_names_)}; missing {', '.join(missing)}")
        return {n: _aligned_proba(self.feature_models_[n], {n: inputs[n]}, len(self.classes_)) for n in names}

    def decision_function(self, inputs: Mapping[str, object]) -> np.ndarray:
        """The chosen fusion's scores: log of the mean probability of the subset's networks (sum rule; its
        softmax is that mean), or the meta-classifier's logits."""
        self._require_fitted()
        self._check_inputs(inputs, fitting=False)
        probas = self.feature_scores(inputs, self.subset_)
        if self.fusion_ == "sum":
            mean = sum_rule([probas[n] for n in self.subset_]) / len(self.subset_)
            return np.log(np.clip(mean, 1e-30, None))
        if self.meta_input == "embedding":
            stack = np.concatenate([self.feature_models_[n].embed({n: inputs[n]}) for n in self.subset_], axis=1)
        else:
            stack = np.concatenate([probas[n] for n in self.subset_], axis=1)
        logits = self.meta_model_.decision_function({STACK: stack.astype(np.float32)})
        out = np.full((len(stack), len(self.classes_)), -1e30)
        out[:, np.asarray(self.meta_model_.classes_, dtype=np.int64)] = logits
        return out

    def predict_proba(self, inputs) -> np.ndarray:
        """The sum rule's mean probability, or the meta-classifier's softmax (both trained with log loss)."""
        return super().predict_proba(inputs)

    def extra_metrics(self, inputs) -> dict:
        """What was chosen on the validation part (the same for every test row): the subset, the fusion, the
        per-feature validation accuracies, and a 0/1 indicator per input (its mean over folds and seeds is how
        often a feature was selected)."""
        self._require_fitted()
        return {"subset": list(self.subset_), "fusion": self.fusion_, "meta_won": int(self.fusion_ == "meta"),
                "val_accuracy": float(self.val_accuracy_), "val_scores": dict(self.val_scores_),
                "selected": {n: int(n in self.subset_) for n in self.input_names_}}

    # -- persistence ----------------------------------------------------------------------------------------
    def get_state(self) -> dict[str, np.ndarray]:
        self._require_fitted()
        state = {}
        for name, model in self.feature_models_.items():
            state.update({f"feature|{name}|{k}": v for k, v in model.get_state().items()})
        if self.meta_model_ is not None:
            state.update({f"meta|{k}": v for k, v in self.meta_model_.get_state().items()})
        return state

    def get_meta(self) -> dict:
        return {**super().get_meta(), "seed": self.seed_, "subset": list(self.subset_), "fusion": self.fusion_,
                "val_accuracy": self.val_accuracy_, "val_nll": self.val_nll_, "val_scores": dict(self.val_scores_),
                "candidates": self.candidates_, "n_subsets": self.n_subsets_, "select_on": self.select_on,
                "features": {n: m.get_meta() for n, m in self.feature_models_.items()},
                "meta_model": None if self.meta_model_ is None else self.meta_model_.get_meta()}

    def set_state(self, state: Mapping[str, np.ndarray], meta: Mapping) -> "FusionNetModel":
        super().set_state(state, meta)
        self.seed_ = meta.get("seed")
        self.feature_models_ = {}
        for name, sub_meta in meta["features"].items():
            prefix = f"feature|{name}|"
            sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            self.feature_models_[name] = self._feature_model(None).set_state(sub, sub_meta)
        self.meta_model_ = None
        if meta.get("meta_model") is not None:
            sub = {k[len("meta|"):]: v for k, v in state.items() if k.startswith("meta|")}
            self.meta_model_ = self._meta_model(None).set_state(sub, meta["meta_model"])
        self.subset_, self.fusion_ = tuple(meta["subset"]), meta["fusion"]
        self.val_accuracy_, self.val_nll_ = meta["val_accuracy"], meta["val_nll"]
        self.val_scores_, self.candidates_ = dict(meta["val_scores"]), list(meta["candidates"])
        self.n_subsets_ = meta.get("n_subsets")
        return self
