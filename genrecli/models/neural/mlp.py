"""``mlp``: a multi-layer perceptron on the concatenated, standardised inputs (early fusion)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from genrecli.models.neural.harness import NeuralModel, as_int_tuple, store_params


class _MLP(nn.Module):
    def __init__(self, n_in: int, hidden: tuple[int, ...], dropout: float, n_outputs: int):
        super().__init__()
        layers, width = [], n_in
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, n_outputs))
        self.layers = nn.Sequential(*layers)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.layers(torch.cat([x.flatten(1) for x in xs], dim=1))


class MLPModel(NeuralModel):
    """Multi-layer perceptron with ReLU and dropout on every input flattened to a vector and concatenated.

    Each input (name -> (n, d) array, or (n, ...) flattened) is standardised per column with the mean and
    std of the training rows (stored in the model's state); the vectors are concatenated in sorted input-name
    order (``input_names_``) and fed to ``hidden`` fully connected ReLU layers with dropout, then a linear
    layer giving one logit per class (single-label, softmax cross-entropy) or per label (multi-label, sigmoid
    binary cross-entropy). :meth:`predict_proba` is therefore a calibrated probability (log-loss training).
    ``hidden=()`` is a (multinomial) logistic regression.

    Parameters
    ----------
    hidden : tuple of int, widths of the hidden layers (also accepted as "512,256").
    dropout : float, dropout probability after every hidden layer.
    The other parameters are the harness's (:class:`~genrecli.models.neural.harness.NeuralModel`):
    max_epochs=200, batch_size=64, optimizer='adam', lr=1e-3, momentum=0.9, weight_decay=0.0,
    lr_schedule='constant', lr_step_size=30, lr_gamma=0.1, class_weight=None, val_fraction=0.1,
    monitor='loss', patience=20, amp=True, amp_dtype='bfloat16', random_state=None, device='cpu'.
    """

    _scaling = "column"

    def __init__(self, *, hidden=(256,), dropout=0.2, max_epochs=200, batch_size=64, optimizer="adam", lr=1e-3,
                 momentum=0.9, weight_decay=0.0, lr_schedule="constant", lr_step_size=30, lr_gamma=0.1,
                 class_weight=None, val_fraction=0.1, monitor="loss", patience=20, amp=True, amp_dtype="bfloat16",
                 random_state=None, device="cpu"):
        store_params(self, locals())

    def _build_network(self, input_shapes: Mapping[str, tuple[int, ...]], n_outputs: int) -> nn.Module:
        n_in = sum(math.prod(input_shapes[name]) for name in self.input_names_)
        return _MLP(n_in, as_int_tuple(self.hidden, "hidden"), float(self.dropout), n_outputs)

    def _architecture(self) -> dict:
        n_in = sum(math.prod(s) for s in self.input_shapes_.values())
        return {"input_width": n_in, "hidden": list(as_int_tuple(self.hidden, "hidden")),
                "outputs": len(self.classes_)}
