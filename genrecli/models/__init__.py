"""Model registry: every model trainable with ``genre train --model NAME``.

A model works on stacks of precomputed Gram matrices (what ``genre kernels`` stores): it implements
``fit_gram(grams, y, *, map_grams=None, modalities=None)`` with ``grams`` of shape (m, n_train, n_train),
``decision_gram(grams_test, *, map_grams_test=None)`` -> (n_test, n_classes), ``state_dict()`` /
``load_state_dict()`` (plain arrays, saved with safetensors) and scikit-learn ``get_params()``. It may
implement ``extra_metrics(grams_test, *, map_grams_test=None)`` -> dict (RE, RI, timings).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from genrecli.errors import UsageError


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    per_kernel: bool  # True: one run per (input, kernel) pair; False: one model over all pairs
    needs_map_grams: bool
    build: Callable[..., object]  # (seed: int, device: str, **options) -> estimator


def _svm(*, seed: int, device: str, **options):
    from genrecli.models.svm import KernelSVM

    return KernelSVM(random_state=seed, **options)


def _dkn(*, seed: int, device: str, **options):
    from genrecli.models.dkn import DKNClassifier

    return DKNClassifier(random_state=seed, device=device, **options)


def _dm2kmn(finetune: bool):
    def build(*, seed: int, device: str, **options):
        from genrecli.models.dm2kmn import DM2KMNClassifier

        return DM2KMNClassifier(finetune=finetune, random_state=seed, device=device, **options)

    return build


MODELS: dict[str, ModelSpec] = {
    "svm": ModelSpec("svm", "one-vs-rest class-weighted SVM on one elementary kernel (C by 5-fold CV)", True, False, _svm),
    "dkn": ModelSpec("dkn", "deep kernel network over all (input, kernel) pairs, one-vs-rest SVMs on its output kernel", False, False, _dkn),
    "dm2kmn-init": ModelSpec("dm2kmn-init", "explicit kernel-map network built layer-wise from a trained DKN (no fine-tuning)", False, True, _dm2kmn(False)),
    "dm2kmn": ModelSpec("dm2kmn", "DM2KMN: the kernel-map network fine-tuned end to end (the paper's method)", False, True, _dm2kmn(True)),
}


def register(spec: ModelSpec) -> ModelSpec:
    MODELS[spec.name] = spec
    return spec


def get_model(name: str) -> ModelSpec:
    if name not in MODELS:
        raise UsageError(f"unknown model '{name}' (known: {', '.join(sorted(MODELS))})")
    return MODELS[name]
