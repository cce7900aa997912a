"""``cnn``: a mel-spectrogram CNN trained on random time patches, scored on evenly spaced crops."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from genrecli.errors import UsageError
from genrecli.models.neural.harness import NeuralModel, as_int_tuple, store_params

TIME_POOLS = ("max", "avg")


class _MelCNN(nn.Module):
    """Conv blocks (3x3 conv, batch norm, ReLU, 2x2 max-pool) -> pool over time -> dropout -> linear."""

    def __init__(self, in_channels: int, height: int, channels: tuple[int, ...], dropout: float, n_outputs: int,
                 time_pool: str):
        super().__init__()
        blocks, c, h = [], in_channels, height
        for out in channels:
            blocks += [nn.Conv2d(c, out, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2, ceil_mode=True)]
            c, h = out, math.ceil(h / 2)
        self.features = nn.Sequential(*blocks)
        self.time_pool = time_pool
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(c * h, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:  # (batch, mels, frames) -> one channel
            x = x.unsqueeze(1)
        z = self.features(x)  # (batch, C, mels', frames')
        z = z.amax(dim=3) if self.time_pool == "max" else z.mean(dim=3)  # (batch, C, mels')
        return self.head(self.dropout(z.flatten(1)))


class CNNModel(NeuralModel):
    """Mel-spectrogram CNN on one patch input, e.g. ``audio/mel`` (128, 431) or ``audio/logmel-ru`` (128, 1292).

    The DM2KMN paper compares with a CNN on mel-spectrograms (its ref. 34) but gives no architecture for
    it (no layer count, sizes, input length or training schedule), so this one is our choice: the
    standard VGG-like stack of music-tagging CNNs (Choi et al., 2016, "Automatic tagging using deep
    convolutional neural networks": 3x3 convolutions with batch norm, ReLU and 2x2 max-pooling), with
    ``channels`` = (32, 64, 128, 128) four blocks, which keeps it small enough (~0.3 M weights) for
    corpora of a few thousand tracks. After the blocks the feature map is pooled over *time only*
    (``time_pool``: max or mean over frames) and the frequency axis is kept: genre cues live at given
    frequencies (bass lines, cymbals), and pooling over frequency too would make the network blind to
    where a pattern sits. Then dropout and a linear layer give one logit per class (softmax cross-entropy,
    so :meth:`predict_proba` is calibrated) or per label (sigmoid, multi-label).

    Inputs are standardised with one mean and std over all training patches (computed in batches from the
    view). Training uses one random crop of ``patch_frames`` frames per track and epoch (~3 s at 22 050 Hz
    and a hop of 512 for the default 128: short patches are both data augmentation and the usual input
    length of such CNNs, Dieleman & Schrauwen 2014); prediction averages the logits of ``test_crops`` evenly
    spaced crops covering the track (None: the fewest that cover it, ``ceil(frames / patch_frames)``).
    An input of (channels, mels, frames) per track is taken as a multi-channel image.

    Parameters
    ----------
    channels : tuple of int, output channels of the conv blocks (also "32,64,128,128").
    dropout : float, dropout before the linear head.
    time_pool : 'max' or 'avg', the global pooling over time.
    patch_frames : int, frames per training crop.
    test_crops : int or None, crops averaged at prediction time.
    The other parameters are the harness's (:class:`~genrecli.models.neural.harness.NeuralModel`):
    max_epochs=60, batch_size=32, optimizer='adam', lr=1e-3, momentum=0.9, weight_decay=1e-4,
    lr_schedule='cosine', lr_step_size=30, lr_gamma=0.1, class_weight=None, val_fraction=0.1,
    monitor='loss', patience=10, amp=True, amp_dtype='bfloat16', random_state=None, device='cpu'.
    """

    _scaling = "global"

    def __init__(self, *, channels=(32, 64, 128, 128), dropout=0.3, time_pool="max", patch_frames=128,
                 test_crops=None, max_epochs=60, batch_size=32, optimizer="adam", lr=1e-3, momentum=0.9,
                 weight_decay=1e-4, lr_schedule="cosine", lr_step_size=30, lr_gamma=0.1, class_weight=None,
                 val_fraction=0.1, monitor="loss", patience=10, amp=True, amp_dtype="bfloat16",
                 random_state=None, device="cpu"):
        store_params(self, locals())

    def _check_params(self) -> None:
        super()._check_params()
        if self.time_pool not in TIME_POOLS:
            raise UsageError(f"CNNModel: time_pool={self.time_pool!r}; expected one of {', '.join(TIME_POOLS)}")

    def _build_network(self, input_shapes: Mapping[str, tuple[int, ...]], n_outputs: int) -> nn.Module:
        if len(self.input_names_) != 1:
            raise UsageError(f"cnn takes exactly one patch input, got {', '.join(self.input_names_)}")
        shape = input_shapes[self.input_names_[0]]
        if len(shape) not in (2, 3):
            raise UsageError(f"cnn needs a (mels, frames) or (channels, mels, frames) input per track, "
                             f"got {self.input_names_[0]} of shape {tuple(shape)}")
        in_channels = 1 if len(shape) == 2 else shape[0]
        return _MelCNN(in_channels, shape[-2], as_int_tuple(self.channels, "channels"), float(self.dropout),
                       n_outputs, self.time_pool)

    def _architecture(self) -> dict:
        shape = self._network_shapes()[self.input_names_[0]]
        return {"input": list(shape), "channels": list(as_int_tuple(self.channels, "channels")),
                "time_pool": self.time_pool, "outputs": len(self.classes_)}
