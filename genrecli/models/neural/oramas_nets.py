"""Torch modules of Oramas et al. (2018): the audio CNNs, the text VSM network, the image head, the fusion
layer, the COSINE output and loss, and the audio-visual joint space with its cosine loss with negatives.

Every *body* maps its input(s) to the representation the paper passes on to the fusion network (its "last
hidden layer") and has an ``out_dim``; :class:`OutputNet` puts one output layer on it. The models that train
them are in :mod:`genrecli.models.neural.oramas_branches` and :mod:`genrecli.models.neural.oramas`.

Shapes follow the paper's notation where a kernel or a pooling is written (time x frequency): "4x96" is
4 frames by 96 bins; torch's Conv2d takes (frequency, time) on a (batch, 1, bins, frames) input, so the
tables below are swapped when the layers are made.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genrecli.errors import UsageError

#: Single-label MSD-I audio CNN (Section 6.2): time-only convolutions of width 4 over all bins.
MSD_FILTERS = (64, 128, 256)
MSD_POOLS = (4, 4, 2)
#: Multi-label MuMu audio CNNs (Section 7.3.1, Table 5): filters per layer ...
WIDTHS = {"low": (64, 128, 128, 64), "high": (256, 512, 1024, 1024)}
#: ... and per kernel family, the (time, frequency) kernel and max pooling of each of the 4 layers.
#: "all" spans every remaining frequency bin; "70" is 70 of 96 bins (scaled for other heights).
KERNELS = {
    "3x3": (((3, 3), (4, 2)), ((3, 3), (4, 2)), ((3, 3), (4, 1)), ((1, 1), (4, 5))),
    "4x96": (((4, "all"), (4, 1)), ((4, 1), (4, 1)), ((4, 1), (4, 1)), ((1, 1), None)),
    "4x70": (((4, "70"), (4, 4)), ((4, "all"), (4, 1)), ((4, 1), (4, 1)), ((1, 1), None)),
}
ARCHS = ("msd", *(f"{w}-{k}" for w in WIDTHS for k in KERNELS))


def _check_size(size: int, what: str, arch: str, frames: int, bins: int) -> int:
    if size < 1:
        raise UsageError(f"audio arch {arch!r}: a {bins} x {frames} input is too small ({what}); "
                         f"use longer patches (patch_frames) or another arch")
    return size


class MSDTimeCNN(nn.Module):
    """Section 6.2: three 1-D convolutions over time (96 input channels = the CQT bins, width 4), ReLU,
    max pooling over time 4/4/2 and dropout after every layer; the flattened last map is the representation
    (256 filters x 8 frames = 2048 for the 323-frame 15 s patch)."""

    def __init__(self, bins: int, frames: int, *, filters=MSD_FILTERS, pools=MSD_POOLS, width: int = 4,
                 dropout: float = 0.5, batch_norm: bool = False):
        super().__init__()
        layers, c, t = [], bins, frames
        for out, pool in zip(filters, pools):
            layers.append(nn.Conv1d(c, out, width, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(out))
            layers += [nn.ReLU(), nn.MaxPool1d(pool)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            t = _check_size((t - width + 1) // pool, f"{out}-filter layer", "msd", frames, bins)
            c = out
        self.layers = nn.Sequential(*layers)
        self.out_dim = c * t
        self.map_shape = (c, t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:  # (batch, 1, bins, frames)
            x = x.flatten(1, 2)
        return self.layers(x).flatten(1)


class MuMuCNN(nn.Module):
    """Section 7.3.1 / Table 5: four 2-D convolutions (ReLU, max pooling after each listed layer), filters
    LOW 64/128/128/64 or HIGH 256/512/1024/1024, kernels 3x3, 4x96 (time only) or 4x70; the flattened last
    map is the representation. Convolutions are unpadded ('valid'): Table 5's second 4x70 kernel spans the
    6 bins that a 70-bin kernel and a pooling of 4 leave of 96, which only holds without padding."""

    def __init__(self, bins: int, frames: int, *, width: str = "low", kernels: str = "4x70", dropout: float = 0.0,
                 batch_norm: bool = False):
        super().__init__()
        if width not in WIDTHS or kernels not in KERNELS:
            raise UsageError(f"unknown audio arch {width}-{kernels}; expected one of {', '.join(ARCHS)}")
        arch = f"{width}-{kernels}"
        layers, c, f, t = [], 1, bins, frames
        for out, ((kt, kf), pool) in zip(WIDTHS[width], KERNELS[kernels]):
            if kf == "all":
                kf = f
            elif kf == "70":
                kf = max(1, min(f, round(bins * 70 / 96)))
            layers.append(nn.Conv2d(c, out, (kf, kt), bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU())
            f = _check_size(f - kf + 1, f"{out}-filter layer", arch, frames, bins)
            t = _check_size(t - kt + 1, f"{out}-filter layer", arch, frames, bins)
            if pool is not None:
                pt, pf = pool
                layers.append(nn.MaxPool2d((pf, pt)))
                f = _check_size(f // pf, f"pooling after the {out}-filter layer", arch, frames, bins)
                t = _check_size(t // pt, f"pooling after the {out}-filter layer", arch, frames, bins)
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            c = out
        self.layers = nn.Sequential(*layers)
        self.out_dim = c * f * t
        self.map_shape = (c, f, t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:  # (batch, bins, frames) -> one channel
            x = x.unsqueeze(1)
        return self.layers(x).flatten(1)


class DenseBody(nn.Module):
    """Optional input dropout, then ``hidden`` ReLU layers each followed by dropout (the text VSM network:
    input dropout 0.5, 2 x 2048 ReLU, dropout 0.5); the last hidden layer is the representation (the input
    itself when ``hidden`` is empty)."""

    def __init__(self, n_in: int, hidden: tuple[int, ...], *, dropout: float, input_dropout: float = 0.0):
        super().__init__()
        layers, width = [], n_in
        if input_dropout > 0:
            layers.append(nn.Dropout(input_dropout))
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        self.layers = nn.Sequential(*layers)
        self.out_dim = width

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.layers(torch.cat([x.flatten(1) for x in xs], dim=1))


class FusionBody(nn.Module):
    """Section 4: every input vector l2-normalised, concatenated, dropout (the output layer follows)."""

    def __init__(self, widths: tuple[int, ...], *, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out_dim = int(sum(widths))

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.dropout(torch.cat([F.normalize(x.flatten(1).float(), dim=1, eps=1e-12) for x in xs], dim=1))


class CosineToLabels(nn.Module):
    """Linear map to the ``d``-dim label-factor space, then the cosine to each of the L label vectors
    (a non-trainable buffer, not saved in the state dict: the model stores the factors itself)."""

    def __init__(self, n_in: int, label_factors: torch.Tensor):
        super().__init__()
        self.project = nn.Linear(n_in, label_factors.shape[1])
        self.register_buffer("label_factors", label_factors.float(), persistent=False)

    def vector(self, h: torch.Tensor) -> torch.Tensor:
        return self.project(h)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        p = self.project(h)
        with torch.autocast(device_type=p.device.type, enabled=False):
            p = F.normalize(p.float(), dim=1, eps=1e-12)
            c = F.normalize(self.label_factors, dim=1, eps=1e-12)
            return p @ c.T


class OutputNet(nn.Module):
    """A body and its output layer: ``forward`` gives the scores, ``embed`` the representation."""

    def __init__(self, body: nn.Module, out: nn.Module):
        super().__init__()
        self.body, self.out = body, out

    def embed(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.body(*xs)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(*xs))


# ------------------------------------------------------------------------------------------------- losses
def _as_multi_hot(target: torch.Tensor, n_labels: int) -> torch.Tensor:
    if target.dim() == 1:  # class indices (single-label)
        return F.one_hot(target.long(), n_labels).float()
    return target.float()


class CosineFactorLoss(nn.Module):
    """COSINE target: mean over items of ``1 - cos(p, f)``, ``f = m C`` the item's label-factor vector.

    The network's output is the cosine ``s_j = cos(p, c_j)`` of its predicted vector ``p`` to every label
    vector ``c_j`` (what the harness averages and stores), and ``cos(p, f) = sum_j m_j |c_j| s_j / |m C|``
    exactly, so the loss is computed from those cosines. Items whose ``f`` is zero (no label with a non-zero
    factor) are left out. The paper's Keras "cosine proximity" is ``-cos``: the same gradient.
    """

    def __init__(self, label_factors: torch.Tensor):
        super().__init__()
        self.register_buffer("label_factors", label_factors.float())
        self.register_buffer("label_norms", label_factors.float().norm(dim=1))

    def forward(self, cosines: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        m = _as_multi_hot(target, self.label_factors.shape[0])
        f_norm = (m @ self.label_factors).norm(dim=1)
        num = (cosines.float() * m * self.label_norms).sum(dim=1)
        ok = f_norm > 1e-12
        if not bool(ok.any()):
            return cosines.sum() * 0.0
        return (1.0 - num[ok] / f_norm[ok]).mean()


class OneHotBCE(nn.Module):
    """LOGISTIC target on single-label data: sigmoid + binary cross-entropy against one-hot targets."""

    def __init__(self, n_outputs: int):
        super().__init__()
        self.n_outputs = n_outputs

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), _as_multi_hot(target, self.n_outputs))


# ------------------------------------------------------------------------------------------------- joint space
class Projection(nn.Module):
    """Section 3.4: ``e(x) = W2 tanh(W1 x)`` (no biases, as the formula)."""

    def __init__(self, n_in: int, hidden: int, n_out: int):
        super().__init__()
        self.w1 = nn.Linear(n_in, hidden, bias=False)
        self.w2 = nn.Linear(hidden, n_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(torch.tanh(self.w1(x)))


def cosine_negative_loss(ea: torch.Tensor, ev: torch.Tensor, ea_neg: torch.Tensor, ev_neg: torch.Tensor,
                         margin: float = 0.5) -> torch.Tensor:
    """Section 3.4, per item and averaged: ``L = (1 - cos(ea, ev)) + max(0, cos(ea_neg, ev) - m)
    + max(0, cos(ea, ev_neg) - m)``; ``ea_neg`` embeds another item's audio, ``ev_neg`` another item's image.

    Zero exactly when every pair is aligned (cosine 1) and every negative pair's cosine is at most ``m``.
    """
    pos = 1.0 - F.cosine_similarity(ea, ev, dim=1, eps=1e-12)
    neg_a = torch.clamp(F.cosine_similarity(ea_neg, ev, dim=1, eps=1e-12) - margin, min=0.0)
    neg_v = torch.clamp(F.cosine_similarity(ea, ev_neg, dim=1, eps=1e-12) - margin, min=0.0)
    return (pos + neg_a + neg_v).mean()


def n_parameters(module: nn.Module) -> int:
    return int(sum(math.prod(p.shape) for p in module.parameters()))
