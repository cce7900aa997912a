"""Model registry: every model trainable with ``genre train --model NAME``.

Each entry is a :class:`~genrecli.models.spec.ModelSpec`: a factory ``"module:Class"`` of a
:class:`~genrecli.models.base.GenreModel` (imported only when used, so listing models is instant) and its
capabilities. Adding a model is one module plus one entry here. Listing the registry imports neither
scikit-learn nor NumPy (:mod:`genrecli.models.spec`).
"""

from __future__ import annotations

from genrecli.errors import UsageError
from genrecli.models.spec import Capabilities, ModelSpec

__all__ = ["MODELS", "Capabilities", "GenreModel", "ModelSpec", "get_model", "load_model", "register"]

# Kernel models take patches too, flattened to vectors (the feature-suite tables run SVMs on flattened mel patches).
_VECTORS = Capabilities(tasks=("single", "multi"), modalities=("audio", "text", "image"), input_kinds=("vector", "patch"))
_KERNEL_NET = Capabilities(tasks=("single",), modalities=("audio", "text", "image"), input_kinds=("vector", "patch"))

MODELS: dict[str, ModelSpec] = {}


def __getattr__(name: str):
    # the model contract imports scikit-learn; only what uses it pays for it (not `genre list models`)
    if name in ("GenreModel", "load_model"):
        from genrecli.models import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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

# The DM2KMN paper's neural fusion baselines (genrecli/models/neural/fusion.py, cnn_bow.py).
_FUSION = Capabilities(tasks=("single", "multi"), modalities=("audio", "text", "image"), input_kinds=("vector", "patch"),
                       min_inputs=2)
_PAIR = Capabilities(tasks=("single", "multi"), modalities=("audio", "text", "image"), input_kinds=("vector", "patch"),
                     min_inputs=2, max_inputs=2)
register(ModelSpec("cnn-bow", "early fusion: audio CNN embedding (MLP on an audio vector) + the text BOW/TF-IDF vector, then an MLP",
                   "genrecli.models.neural.cnn_bow:CNNBoWModel", _PAIR))
register(ModelSpec("dcn", "fully symmetric two-branch network: identical branches, fused by [a+t, a*t], then a classifier",
                   "genrecli.models.neural.fusion:DCNModel", _PAIR))
register(ModelSpec("fusion-concat", "one network per input; a joint classifier on the concatenated embeddings (Li et al.)",
                   "genrecli.models.neural.fusion:FusionModel", _FUSION, fixed={"fusion": "concat"}))
register(ModelSpec("fusion-decision", "one network per input; class probabilities averaged with weights chosen on validation (Li et al.)",
                   "genrecli.models.neural.fusion:FusionModel", _FUSION, fixed={"fusion": "decision"}))
register(ModelSpec("fusion-hybrid", "concatenation head and weighted per-input probabilities, mixed by a validation-chosen weight (Li et al.)",
                   "genrecli.models.neural.fusion:FusionModel", _FUSION, fixed={"fusion": "hybrid"}))
register(ModelSpec("ru", "Ru et al. 2023: mel CNN + frozen-transformer lyrics tokens, symmetric cross-modal attention, "
                   "audio-lyrics contrastive loss, genre-correlation GCN", "genrecli.models.neural.ru:RuModel",
                   Capabilities(tasks=("single", "multi"), modalities=("audio", "text"),
                                input_kinds=("vector", "patch", "sequence"), min_inputs=2, max_inputs=2)))

register(ModelSpec("fusionnet-feature", "Ng et al. 2020: one feature coding network (VGG + NetVLAD per block + self-attention; "
                   "vectors: the FC layers), softmax + center loss", "genrecli.models.neural.fusionnet:FeatureCodingModel",
                   Capabilities(tasks=("single",), modalities=("audio", "text", "image"), input_kinds=("vector", "patch"),
                                max_inputs=1)))
register(ModelSpec("fusionnet", "Ng et al. 2020 FusionNet: a coding network per input, sum rule and out-of-fold meta-classifier, "
                   "feature subset and fusion chosen on validation", "genrecli.models.neural.fusionnet:FusionNetModel",
                   Capabilities(tasks=("single",), modalities=("audio", "text", "image"), input_kinds=("vector", "patch"))))

register(ModelSpec("oramas-audio", "Oramas et al. 2018: log-CQT CNN (MSD-I time-only net; MuMu LOW/HIGH x 3x3/4x96/4x70), "
                   "then the l2-normalised fusion layer; targets softmax / logistic / cosine (PPMI-SVD label factors)",
                   "genrecli.models.neural.oramas:OramasAudio",
                   Capabilities(tasks=("single", "multi"), modalities=("audio",), input_kinds=("patch", "vector"), max_inputs=1)))
register(ModelSpec("oramas-text", "Oramas et al. 2018: TF-IDF VSM network (2 x 2048 ReLU, dropout 0.5; no entity linking)",
                   "genrecli.models.neural.oramas:OramasText",
                   Capabilities(tasks=("single", "multi"), modalities=("text",), input_kinds=("vector",), max_inputs=1)))
register(ModelSpec("oramas-image", "Oramas et al. 2018: a trained head on a frozen cover-art embedding (image/<backbone>)",
                   "genrecli.models.neural.oramas:OramasImage",
                   Capabilities(tasks=("single", "multi"), modalities=("image",), input_kinds=("vector",), max_inputs=1)))
register(ModelSpec("oramas-mm-audio", "Oramas et al. 2018: audio CNN + joint audio-visual space (tanh, 200-d, cosine loss with "
                   "negatives) trained on audio + image; predicts from audio alone (MM_AUDIO)",
                   "genrecli.models.neural.oramas:OramasMMAudio",
                   Capabilities(tasks=("single", "multi"), modalities=("audio", "image"), input_kinds=("patch", "vector"),
                                min_inputs=2, max_inputs=2)))
register(ModelSpec("oramas-fusion", "Oramas et al. 2018: one network per audio / text / image input, then the fusion layer on "
                   "their l2-normalised representations (optionally + the joint audio-visual space)",
                   "genrecli.models.neural.oramas:OramasFusion",
                   Capabilities(tasks=("single", "multi"), modalities=("audio", "text", "image"), input_kinds=("patch", "vector"))))


def get_model(name: str) -> ModelSpec:
    if name not in MODELS:
        raise UsageError(f"unknown model '{name}' (known: {', '.join(sorted(MODELS))})")
    return MODELS[name]
