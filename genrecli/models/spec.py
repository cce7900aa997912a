"""Registry entries of the models (:class:`ModelSpec`) and what a model can take (:class:`Capabilities`).

Kept apart from :mod:`genrecli.models.base` (the model contract, a scikit-learn estimator) so that the
registry, and ``genre list models``, import neither scikit-learn nor NumPy: a model's module is imported only
when the model is built or its options are asked for.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Mapping

from genrecli.errors import UsageError

TASKS = ("single", "multi")
INPUT_KINDS = ("vector", "patch", "sequence")


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What a model can be trained on.

    tasks : 'single' and/or 'multi' (multi-label).
    modalities : the modalities it accepts ('audio', 'text', 'image').
    input_kinds : 'vector' (one vector per track), 'patch' (a 2-D map per track), 'sequence' (T x d).
    devices : device types it runs on.
    min_inputs, max_inputs : how many inputs one model takes (None: no upper bound).
    """

    tasks: tuple[str, ...] = ("single",)
    modalities: tuple[str, ...] = ("audio", "text")
    input_kinds: tuple[str, ...] = ("vector",)
    devices: tuple[str, ...] = ("cpu", "cuda")
    min_inputs: int = 1
    max_inputs: int | None = None

    def check(self, model: str, *, multilabel: bool, inputs: Mapping[str, tuple[int, ...]]) -> None:
        """Raise a one-line :class:`UsageError` when the model cannot take this task or these inputs.

        ``inputs`` maps each input name to its per-track shape.
        """
        task = "multi" if multilabel else "single"
        if task not in self.tasks:
            kind = "multi-label" if multilabel else "single-label"
            raise UsageError(f"model '{model}' does not handle {kind} corpora (it supports: {', '.join(self.tasks)}-label)")
        if len(inputs) < self.min_inputs:
            raise UsageError(f"model '{model}' needs at least {self.min_inputs} inputs, got {len(inputs)}: {', '.join(inputs) or 'none'}")
        if self.max_inputs is not None and len(inputs) > self.max_inputs:
            raise UsageError(f"model '{model}' takes at most {self.max_inputs} input(s), got {len(inputs)}: {', '.join(inputs)}")
        for name, shape in inputs.items():
            modality = name.split("/", 1)[0]
            if modality not in self.modalities:
                raise UsageError(f"model '{model}' does not take {modality} inputs ({name}); it takes {', '.join(self.modalities)}")
            kind = input_kind(shape)
            if kind not in self.input_kinds:
                raise UsageError(
                    f"model '{model}' takes {'/'.join(self.input_kinds)} inputs, but {name} is a {kind} "
                    f"of shape {tuple(shape)} per track"
                )


def input_kind(shape: tuple[int, ...]) -> str:
    """'vector' for (d,), 'patch' for (h, w) or (c, h, w); sequences are stored as (T, d) with kind metadata."""
    return "vector" if len(shape) <= 1 else "patch"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registry entry: ``factory`` is ``"module:Class"``, imported only when the model is built.

    ``fixed`` are constructor arguments the entry sets and a user cannot override (``dm2kmn-init`` is the
    DM2KMN with ``finetune=False``). ``per_pair``: one run per (input, kernel) pair (the single-kernel SVM).
    ``uses_kernels``: the model takes ``--kernels``.
    """

    name: str
    description: str
    factory: str
    capabilities: Capabilities = Capabilities()
    fixed: Mapping[str, object] = dataclasses.field(default_factory=dict)
    per_pair: bool = False
    uses_kernels: bool = False

    def model_class(self) -> type:
        module, _, cls = self.factory.partition(":")
        return getattr(importlib.import_module(module), cls)

    def build(self, *, seed: int = 0, device: str = "cpu", kernels: tuple[str, ...] | None = None, **options) -> "GenreModel":
        """The unfitted model with ``options`` (checked by :meth:`check_options`) plus seed, device and kernels.

        ``kernels`` (``--kernels``) sets a kernel model's ``kernels`` (or, for a one-kernel model, ``kernel``).
        """
        self.check_options(options)
        cls = self.model_class()
        params = {**options, **self.fixed}
        if kernels is not None:
            accepted = set(cls._param_names())
            if "kernels" in accepted:
                params["kernels"] = tuple(kernels)
            elif "kernel" in accepted and len(kernels) == 1:
                params["kernel"] = kernels[0]
            else:
                raise UsageError(f"model '{self.name}' takes no kernels (given: {', '.join(kernels)})")
        accepted = set(cls._param_names())
        if "random_state" in accepted:
            params["random_state"] = seed
        if "device" in accepted:
            params["device"] = device
        model = cls(**{k: v for k, v in params.items() if k in accepted})
        nested = {k: v for k, v in params.items() if k not in accepted}
        if nested:
            model.set_options(nested)
        return model

    def default_kernels(self) -> tuple[str, ...]:
        """The kernels a kernel model uses when ``--kernels`` is not given (one run per kernel when per_pair)."""
        from genrecli.kernels.elementary import KERNEL_NAMES

        if self.per_pair:
            return tuple(KERNEL_NAMES)
        default = inspect.signature(self.model_class()).parameters.get("kernels")
        return tuple(default.default) if default is not None and default.default is not inspect.Parameter.empty else tuple(KERNEL_NAMES)

    def option_names(self) -> list[str]:
        """Every option ``-o KEY=VALUE`` accepts: the model's parameters and those of its parts.

        A model with a ``scale`` parameter (feature scaling, :mod:`genrecli.kernels.scaling`) also takes
        ``INPUT.scale`` (e.g. ``audio/mfcc.scale=robust``), listed as ``INPUT.scale``.
        """
        cls = self.model_class()
        names = set(cls._param_names()) | set(cls.nested_option_names())
        hidden = set(self.fixed) | set(cls.part_names()) | {"random_state", "device"}
        if self.uses_kernels:
            hidden |= {"kernels", "kernel"}  # given by --kernels
        names -= hidden
        if "scale" in names:
            names.add("INPUT.scale")
        return sorted(names)

    def check_options(self, options: Mapping[str, object]) -> None:
        """One-line :class:`UsageError` for an unknown option, or a ``scale`` / ``INPUT.scale`` value that is
        not a scaling method."""
        from genrecli.kernels.scaling import check_scale, check_scale_option, is_scale_option

        known = self.option_names()
        scalable = "scale" in known
        unknown = [k for k in options if k not in known and not (scalable and is_scale_option(k))]
        if unknown:
            raise UsageError(f"unknown option '{unknown[0]}' for {self.name}; known: {', '.join(known)}")
        for key, value in options.items():
            if scalable and key == "scale":
                check_scale(value)
            elif scalable and is_scale_option(key):
                check_scale_option(key, value)
