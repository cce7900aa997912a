"""Lazy package attributes: a package lists heavy names and the submodule defining each; they are imported on
first use (PEP 562), so importing the package (and the CLI's listing commands) stays cheap."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping


def lazy_exports(package: str, names: Mapping[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` whose attribute ``name`` lives in ``package.<names[name]>``.

    Usage, at the end of a package's ``__init__``: ``__getattr__, __dir__ = lazy_exports(__name__, _LAZY)``. A
    name is imported once and then cached in the package's namespace.
    """

    def __getattr__(name: str):
        if name in names:
            value = getattr(importlib.import_module(f"{package}.{names[name]}"), name)
            setattr(sys.modules[package], name, value)
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(names))

    return __getattr__, __dir__
