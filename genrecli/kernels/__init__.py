"""Elementary kernels (linear, poly2, rbf, histogram intersection) and their explicit maps (spec section 4).

This module holds the one kernel registry, :data:`KERNELS`: the names in canonical order
(:data:`KERNEL_NAMES`, the order of Gram stacks, tables and figures), each kernel's default options, whether
its explicit map is exact, and a one-line description (``genre list kernels``). Importing it is instant (no
torch): the estimators and Gram functions (:class:`ElementaryKernel`, :class:`ExplicitMap`,
:func:`kpca_projection`, ...) are imported from :mod:`genrecli.kernels.elementary` and
:mod:`genrecli.kernels.maps` on first use.

Every kernel's own preprocessing (``KernelSpec.preprocessing``) follows the per-input feature scaling of
:mod:`genrecli.kernels.scaling` (:class:`InputScaler`; ``ElementaryKernel(scale=...)``, default 'none'), which
the kernel models set per input name (``scale='auto'``: :func:`default_scaling`).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterable, Mapping

from genrecli._lazy import lazy_exports
from genrecli.errors import UsageError

SIGMA_RULES = ("total-variance", "median", "mean")
QUANTIZATIONS = ("round", "floor")

# Defaults of the kernels' own options; the registry and every estimator take them from here.
DEFAULT_OFFSET = 1.0  # poly2: c of (<x, y> + c)^2
DEFAULT_SIGMA = "total-variance"  # rbf: width rule, sigma^2 = mean_i |x_i - mean|^2
DEFAULT_ENERGY = 0.99  # rbf map: eigenvalue energy kept by the Nystrom / kernel PCA projection
DEFAULT_LEVELS = 10  # hist map: quantization levels Q
DEFAULT_QUANTIZATION = "round"  # hist map: level of v is floor(Q v + 1/2)


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """One elementary kernel of the registry :data:`KERNELS`.

    Attributes
    ----------
    name : str
        The name used everywhere (``--kernels``, stores, model parameters).
    formula : str
        The kernel of two preprocessed rows.
    preprocessing : str
        The train-only preprocessing of :class:`ElementaryKernel` (then unit mean-diagonal scaling).
    exact_map : bool
        Whether :class:`ExplicitMap` reproduces the kernel exactly.
    map : str
        How the explicit map is built.
    defaults : mapping of str to object
        The kernel's own options and their defaults (keywords of :class:`ElementaryKernel` and
        :class:`ExplicitMap`).
    """

    name: str
    formula: str
    preprocessing: str
    exact_map: bool
    map: str
    defaults: Mapping[str, object]

    @property
    def description(self) -> str:
        """One line for ``genre list kernels``."""
        return f"{self.formula} on {self.preprocessing}; {'exact' if self.exact_map else 'approximate'} map: {self.map}"

    @property
    def function(self) -> Callable:
        """The pure Gram function ``f(X, Y=None, *, device='cpu', **options)`` (e.g. :func:`rbf_kernel`)."""
        return getattr(importlib.import_module("genrecli.kernels.elementary"), f"{self.name}_kernel")


KERNELS: Mapping[str, KernelSpec] = {
    spec.name: spec
    for spec in (
        KernelSpec("linear", "<x, y>", "l2-normalised features", True, "identity", {}),
        KernelSpec(
            "poly2", f"(<x, y> + {DEFAULT_OFFSET:g})^2", "l2-normalised features", True, "degree-2 monomials",
            {"offset": DEFAULT_OFFSET},
        ),
        KernelSpec(
            "rbf", "exp(-|x-y|^2 / 2 sigma^2)", "l2-normalised features (sigma^2: their training total variance)",
            False, f"Nystrom / kernel PCA on landmarks, {100 * DEFAULT_ENERGY:g}% energy",
            {"sigma": DEFAULT_SIGMA, "energy": DEFAULT_ENERGY},
        ),
        KernelSpec(
            "hist", "histogram intersection sum_j min(x_j, y_j)", "[0, 1]-scaled features", False,
            f"Q={DEFAULT_LEVELS} unary quantization", {"levels": DEFAULT_LEVELS, "quantization": DEFAULT_QUANTIZATION},
        ),
    )
}

KERNEL_NAMES: tuple[str, ...] = tuple(KERNELS)
"""Every elementary kernel, in canonical order."""


def get_kernel(name: str) -> KernelSpec:
    """The registry entry of ``name``; a one-line :class:`UsageError` for an unknown name."""
    if name not in KERNELS:
        raise UsageError(f"unknown kernel {name!r}: choose one of {', '.join(KERNEL_NAMES)}")
    return KERNELS[name]


def check_kernel_names(names: str | Iterable[str]) -> tuple[str, ...]:
    """Validate kernel names (an iterable, or one comma-separated string such as ``"linear,rbf"``).

    Returns them as a tuple in the order given, duplicates dropped; a :class:`UsageError` naming every unknown
    one (and the known ones) otherwise, or when none is given.
    """
    if isinstance(names, str):
        names = [part.strip() for part in names.split(",") if part.strip()]
    names = tuple(dict.fromkeys(str(n) for n in names))
    if not names:
        raise UsageError(f"no kernel given: choose among {', '.join(KERNEL_NAMES)}")
    unknown = [n for n in names if n not in KERNELS]
    if unknown:
        raise UsageError(f"unknown kernel(s) {', '.join(unknown)} (known: {', '.join(KERNEL_NAMES)})")
    return names


def kernel_order(names: Iterable[str]) -> tuple[str, ...]:
    """Kernel names sorted in the registry's canonical order (unknown names last, in the order given)."""
    names = list(dict.fromkeys(names))
    rank = {n: i for i, n in enumerate(KERNEL_NAMES)}
    return tuple(sorted(names, key=lambda n: (rank.get(n, len(rank)), names.index(n))))


def describe_kernels() -> list[str]:
    """``genre list kernels``: one line per kernel, ``name  description``."""
    return [f"{spec.name:8s} {spec.description}" for spec in KERNELS.values()]


# Heavy names (torch, scikit-learn), imported on first use.
_LAZY = {
    "ElementaryKernel": "elementary",
    "hist_kernel": "elementary",
    "linear_kernel": "elementary",
    "pairwise_kernel": "elementary",
    "poly2_kernel": "elementary",
    "rbf_kernel": "elementary",
    "ExplicitMap": "maps",
    "kpca_projection": "maps",
    "InputScaler": "scaling",
    "SCALINGS": "scaling",
    "default_scaling": "scaling",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)


__all__ = [
    "DEFAULT_ENERGY",
    "DEFAULT_LEVELS",
    "DEFAULT_OFFSET",
    "DEFAULT_QUANTIZATION",
    "DEFAULT_SIGMA",
    "KERNELS",
    "KERNEL_NAMES",
    "QUANTIZATIONS",
    "SCALINGS",
    "SIGMA_RULES",
    "ElementaryKernel",
    "ExplicitMap",
    "InputScaler",
    "KernelSpec",
    "check_kernel_names",
    "default_scaling",
    "describe_kernels",
    "get_kernel",
    "hist_kernel",
    "kernel_order",
    "kpca_projection",
    "linear_kernel",
    "pairwise_kernel",
    "poly2_kernel",
    "rbf_kernel",
]
