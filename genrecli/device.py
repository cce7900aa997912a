"""Torch device selection shared by every GPU-capable stage, and how CPU memory is allocated in hot loops."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import threading

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


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
# Where freed_memory_kept leaves malloc: the state glibc's own dynamic rule reaches in a process that frees
# large blocks (mmap threshold raised up to 32 MiB, trim threshold twice that); glibc's default mmap count.
_RESTORED = {_M_MMAP_MAX: 65536, _M_MMAP_THRESHOLD: 32 << 20, _M_TRIM_THRESHOLD: 64 << 20}
_KEPT = {_M_MMAP_MAX: 0, _M_TRIM_THRESHOLD: 1 << 30}
_KEEP_LOCK = threading.Lock()
_keep_depth = 0


@functools.lru_cache(maxsize=1)
def _glibc():
    """glibc's C library where this process runs on it (mallopt and malloc_trim), else None."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version, libc.mallopt, libc.malloc_trim  # noqa: B018  (AttributeError off glibc)
    except (OSError, AttributeError):
        return None
    return libc


def _malloc_tuned_by_user() -> bool:
    """Whether the user set glibc malloc's options or preloaded another allocator: then they are left alone."""
    env = os.environ
    return (any(k.startswith("MALLOC_") for k in env) or "malloc" in env.get("GLIBC_TUNABLES", "")
            or any(a in env.get("LD_PRELOAD", "") for a in ("jemalloc", "tcmalloc", "mimalloc")))


@contextlib.contextmanager
def freed_memory_kept(*, libc=None):
    """Context in which glibc's malloc keeps freed memory for reuse instead of returning it to the system.

    A transformer batch allocates and frees tens of large float tensors (up to 50 MB each); glibc serves blocks
    above its mmap threshold with fresh pages and returns them on free, so every such tensor is page-faulted
    in again. On a 2-core Zen 4 EPYC that cost 12 % of an fp32 MiniLM batch and 15 % of an int8 one
    (BENCHMARKS.md, text section): inside this context malloc uses no mmap and does not trim, and on exit
    (of the outermost context) it is set to :data:`_RESTORED` and trimmed, so the memory kept is given back.
    Peak memory is that of the work inside. A no-op off glibc, where ``GENRE_KEEP_FREED_MEMORY=0``, and where
    the user tuned malloc (``MALLOC_*``, ``GLIBC_TUNABLES``) or preloaded jemalloc/tcmalloc/mimalloc.
    ``libc``: the C library to call (tests).
    """
    global _keep_depth
    if os.environ.get("GENRE_KEEP_FREED_MEMORY", "1") == "0" or _malloc_tuned_by_user():
        yield
        return
    libc = libc if libc is not None else _glibc()
    if libc is None:
        yield
        return
    with _KEEP_LOCK:
        _keep_depth += 1
        if _keep_depth == 1:
            for param, value in _KEPT.items():
                libc.mallopt(param, value)
    try:
        yield
    finally:
        with _KEEP_LOCK:
            _keep_depth -= 1
            if _keep_depth == 0:
                for param, value in _RESTORED.items():
                    libc.mallopt(param, value)
                libc.malloc_trim(0)
