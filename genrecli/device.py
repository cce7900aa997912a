"""Torch device selection shared by every GPU-capable stage."""

from __future__ import annotations

import torch

from genrecli.errors import UsageError


def resolve_device(name: str | torch.device | None = "cpu") -> torch.device:
    """Return a :class:`torch.device` for ``name`` ('cpu', 'cuda', 'cuda:1', 'auto').

    'auto' picks CUDA when available. Asking for CUDA on a machine without it is a usage error,
    never a silent fall-back to the CPU.
    """
    if isinstance(name, torch.device):
        return name
    name = (name or "cpu").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"--device {name}: not a torch device ({exc})") from None
