"""Model registry: every model trainable with ``genre train --model NAME``.

Each entry is a :class:`~genrecli.models.base.ModelSpec`: a factory ``"module:Class"`` of a
:class:`~genrecli.models.base.GenreModel` (imported only when used, so listing models is instant) and its
capabilities. Adding a model is one module plus one entry here.
"""

from __future__ import annotations

from genrecli.errors import UsageError
from genrecli.models.base import Capabilities, GenreModel, ModelSpec, load_model

__all__ = ["MODELS", "Capabilities", "GenreModel", "ModelSpec", "get_model", "load_model", "register"]

# Kernel models take patches too, flattened to vectors (the feature-suite tables run SVMs on flattened mel patches).
_VECTORS = Capabilities(tasks=("single", "multi"), modalities=("audio", "text", "image"), input_kinds=("vector", "patch"))
_KERNEL_NET = Capabilities(tasks=("single",), modalities=("audio", "text", "image"), input_kinds=("vector", "patch"))

MODELS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    MODELS[spec.name] = spec
    return spec


register(ModelSpec("svm", "one-vs-rest class-weighted SVM on one elementary kernel of one input (C by 5-fold CV)",
                   "genrecli.models.kernel:SVMModel", _VECTORS, per_pair=True, uses_kernels=True))
register(ModelSpec("dkn", "deep kernel network over all (input, kernel) pairs, one-vs-rest SVMs on its output kernel",
                   "genrecli.models.kernel:DKNModel", _KERNEL_NET, uses_kernels=True))
register(ModelSpec("dm2kmn-init", "explicit kernel-map network built layer-wise from a trained DKN (no fine-tuning)",
                   "genrecli.models.kernel:DM2KMNModel", _KERNEL_NET, fixed={"finetune": False}, uses_kernels=True))
register(ModelSpec("dm2kmn", "DM2KMN: the kernel-map network fine-tuned end to end (the paper's method)",
                   "genrecli.models.kernel:DM2KMNModel", _KERNEL_NET, fixed={"finetune": True}, uses_kernels=True))
register(ModelSpec("svm-concat", "early fusion: one SVM with one kernel (--kernels K) on the concatenated, z-scored inputs",
                   "genrecli.models.mkl:ConcatSVMModel", _VECTORS, uses_kernels=True))
register(ModelSpec("svm-late", "late fusion: one SVM per (input, kernel) pair, calibrated class probabilities averaged",
                   "genrecli.models.mkl:LateFusionSVMModel", _VECTORS, uses_kernels=True))
register(ModelSpec("mkl-average", "one SVM on the uniform mean of every elementary kernel of every input",
                   "genrecli.models.mkl:AverageMKLModel", _VECTORS, uses_kernels=True))
register(ModelSpec("easymkl", "EasyMKL kernel weights (Aiolli & Donini 2015) on every (input, kernel) pair, then one SVM",
                   "genrecli.models.mkl:EasyMKLModel", _VECTORS, uses_kernels=True))
register(ModelSpec("majority", "the most frequent training class: the floor of every comparison",
                   "genrecli.models.majority:MajorityModel",
                   Capabilities(tasks=("single", "multi"), modalities=("audio", "text", "image"), input_kinds=("vector", "patch"))))
register(ModelSpec("mlp", "multi-layer perceptron on the concatenated, standardised inputs (early fusion)",
                   "genrecli.models.neural.mlp:MLPModel", _VECTORS))  # patches are flattened
register(ModelSpec("cnn", "mel-spectrogram CNN (the DM2KMN paper's audio baseline), random patches in training",
                   "genrecli.models.neural.cnn:CNNModel",
                   Capabilities(tasks=("single", "multi"), modalities=("audio",), input_kinds=("patch",), max_inputs=1)))


def get_model(name: str) -> ModelSpec:
    if name not in MODELS:
        raise UsageError(f"unknown model '{name}' (known: {', '.join(sorted(MODELS))})")
    return MODELS[name]
