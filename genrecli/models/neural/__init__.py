"""Neural models: the shared torch training harness (:mod:`.harness`) and the models built on it.

``mlp`` (:class:`~genrecli.models.neural.mlp.MLPModel`) and ``cnn``
(:class:`~genrecli.models.neural.cnn.CNNModel`) are registered in :mod:`genrecli.models`; a new neural model is
one module subclassing :class:`~genrecli.models.neural.harness.NeuralModel`.
"""

from genrecli.models.neural.harness import HARNESS_DEFAULTS, NeuralModel

__all__ = ["HARNESS_DEFAULTS", "NeuralModel"]
