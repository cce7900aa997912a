"""``cnn-bow``: an audio CNN embedding concatenated with the text's bag-of-words vector, then an MLP (early fusion).

The DM2KMN paper's "CNN network for the audio and Bag-of-Word (BOW) features from the texts with early fusion"
(its ref. 91); the paper gives no architecture, so this is a reconstruction (see the class docstring).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from genrecli.errors import UsageError
from genrecli.models.neural.cnn import TIME_POOLS
from genrecli.models.neural.fusion import MixedScaling, _check_choice, branch_kind, is_patch, make_branch
from genrecli.models.neural.harness import NeuralModel, as_int_tuple, store_params
from genrecli.models.neural.mlp import _MLP

AUDIO_BRANCHES = ("auto", "cnn", "mlp")


class _CNNBoWNet(nn.Module):
    """Audio branch -> embedding; text vector (raw, or through ``text`` layers); concatenation; MLP head."""

    def __init__(self, audio: nn.Module, text: nn.Module, head: nn.Module, audio_position: int):
        super().__init__()
        self.audio, self.text, self.head = audio, text, head
        self.audio_position = audio_position

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        xa, xt = (x0, x1) if self.audio_position == 0 else (x1, x0)
        return self.head(torch.cat([self.audio(xa), self.text(xt).flatten(1)], dim=1))


class CNNBoWModel(MixedScaling, NeuralModel):
    """Early fusion of an audio CNN embedding and a text bag-of-words vector, classified by an MLP.

    Two inputs: one audio *patch* (a mel spectrogram such as ``audio/mel`` (128, 431), or an MFCC matrix stored
    as a patch; note that this toolkit's ``audio/mfcc-image`` is a vector of ImageNet-CNN outputs, not a patch)
    and one text *vector* (the bag-of-words / TF-IDF vector ``text/tfidf``, or any text embedding).
    Which is which is decided by the per-track shape: the 2-D (or 3-D) input is the audio patch, the 1-D
    input the text vector. The patch goes through the conv trunk of the ``cnn`` model
    (:class:`~genrecli.models.neural.cnn._MelCNN`: 3x3 conv + batch norm + ReLU + 2x2 max-pool blocks,
    pooling over time, dropout, a linear layer) to an embedding of ``embed_dim`` values, then ReLU. That
    embedding is concatenated with the standardised text vector itself (``text_hidden=()``; or with its
    projection through ``text_hidden`` ReLU layers), and an MLP (``hidden`` ReLU layers with dropout, then
    linear) gives the logits. Training uses random crops of ``patch_frames`` frames; prediction averages the
    logits of ``test_crops`` evenly spaced crops (as ``cnn``).

    **Without a patch input** (e.g. the acceptance runs' ``audio/mfcc`` vectors + ``text/minilm``) the audio
    branch is an MLP on the audio vector (``branch_hidden`` layers, then ``embed_dim``, ReLU, dropout):
    ``audio_branch='auto'`` chooses 'cnn' for a patch and 'mlp' for a vector ('cnn' or 'mlp' force it; a
    forced 'mlp' flattens a patch crop). With two vectors the audio one is the input named ``audio/...``
    (else the first in name order) and the other is the text vector.

    Choices not stated by the paper
        * The CNN is this toolkit's ``cnn`` trunk (``channels=(32, 64, 128, 128)``, max-pool over time), its
          embedding ``embed_dim=128`` wide; the BOW vector enters the fusion unprojected (early fusion of the
          raw features), standardised per column like every vector input; ``hidden=(256,)``, dropout 0.3.
        * The MLP audio branch for vector-only inputs (the paper's CNN needs a spectrogram).
        * Training: the schedule of ``mlp`` (Adam 1e-3, <= 200 epochs, patience 20), shared by all fusion
          baselines so their rows of a table are trained alike.

    Parameters
    ----------
    audio_branch : 'auto', 'cnn' or 'mlp'.
    embed_dim : int, width of the audio embedding.
    channels, time_pool : the CNN branch's conv blocks and time pooling (as in ``cnn``).
    branch_hidden : tuple of int, hidden layers of the MLP audio branch.
    text_hidden : tuple of int, layers projecting the text vector before the fusion; () uses it as is.
    hidden : tuple of int, hidden layers of the fusion MLP.
    dropout : float.
    patch_frames, test_crops : training crop width and test-time crops of the patch (as in ``cnn``).
    The other parameters are the harness's (:class:`~genrecli.models.neural.harness.NeuralModel`):
    max_epochs=200, batch_size=64, optimizer='adam', lr=1e-3, momentum=0.9, weight_decay=0.0,
    lr_schedule='constant', lr_step_size=30, lr_gamma=0.1, class_weight=None, val_fraction=0.1,
    monitor='loss', patience=20, amp=True, amp_dtype='bfloat16', random_state=None, device='cpu'.
    """

    def __init__(self, *, audio_branch="auto", embed_dim=128, channels=(32, 64, 128, 128), time_pool="max",
                 branch_hidden=(256,), text_hidden=(), hidden=(256,), dropout=0.3, patch_frames=128, test_crops=None,
                 max_epochs=200, batch_size=64, optimizer="adam", lr=1e-3, momentum=0.9, weight_decay=0.0,
                 lr_schedule="constant", lr_step_size=30, lr_gamma=0.1, class_weight=None, val_fraction=0.1,
                 monitor="loss", patience=20, amp=True, amp_dtype="bfloat16", random_state=None, device="cpu"):
        store_params(self, locals())

    def _check_params(self) -> None:
        super()._check_params()
        _check_choice(self, "audio_branch", AUDIO_BRANCHES)
        _check_choice(self, "time_pool", TIME_POOLS)
        if int(self.embed_dim) < 1:
            raise UsageError(f"CNNBoWModel: embed_dim must be >= 1 (got {self.embed_dim})")

    def roles(self, shapes: Mapping[str, tuple[int, ...]] | None = None) -> tuple[str, str, str]:
        """(audio input, text input, audio branch kind) for the fitted inputs (or ``shapes``)."""
        shapes = self.input_shapes_ if shapes is None else shapes
        names = sorted(shapes)
        if len(names) != 2:
            raise UsageError(f"cnn-bow takes two inputs (an audio patch or vector and a text vector), got "
                             f"{len(names)}: {', '.join(names)}")
        patches = [n for n in names if is_patch(shapes[n])]
        if len(patches) == 2:
            raise UsageError(f"cnn-bow takes one patch (audio) and one vector (text); {names[0]} and {names[1]} "
                             f"are both patches")
        if patches:
            audio = patches[0]
        else:
            named = [n for n in names if n.startswith("audio/")]
            audio = named[0] if len(named) == 1 else names[0]
        text = names[1] if audio == names[0] else names[0]
        return audio, text, branch_kind(self.audio_branch, shapes[audio], audio)

    def _build_network(self, input_shapes: Mapping[str, tuple[int, ...]], n_outputs: int) -> nn.Module:
        audio, text, kind = self.roles(input_shapes)
        embed, dropout = int(self.embed_dim), float(self.dropout)
        audio_net = make_branch(input_shapes[audio], kind, embed_dim=embed,
                                hidden=as_int_tuple(self.branch_hidden, "branch_hidden"), dropout=dropout,
                                channels=as_int_tuple(self.channels, "channels"), time_pool=self.time_pool)
        text_layers = as_int_tuple(self.text_hidden, "text_hidden")
        if text_layers:
            text_net, text_width = make_branch(input_shapes[text], "mlp", embed_dim=text_layers[-1],
                                               hidden=text_layers[:-1], dropout=dropout, channels=(),
                                               time_pool=self.time_pool), text_layers[-1]
        else:
            text_net, text_width = nn.Flatten(1), math.prod(input_shapes[text])
        head = _MLP(embed + text_width, as_int_tuple(self.hidden, "hidden"), dropout, n_outputs)
        return _CNNBoWNet(audio_net, text_net, head, self.input_names_.index(audio))

    def _architecture(self) -> dict:
        shapes = self._network_shapes()
        audio, text, kind = self.roles(shapes)
        return {"audio": audio, "text": text, "audio_branch": kind, "audio_input": list(shapes[audio]),
                "text_width": math.prod(shapes[text]), "embed_dim": int(self.embed_dim),
                "text_hidden": list(as_int_tuple(self.text_hidden, "text_hidden")),
                "hidden": list(as_int_tuple(self.hidden, "hidden")), "outputs": len(self.classes_)}
