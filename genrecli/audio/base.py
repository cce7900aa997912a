"""The :class:`AudioFeature` record shared by every feature module, and small helpers."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import pathlib
from typing import Callable

import numpy as np

from genrecli.errors import InputError, UsageError

# Below this RMS a track is treated as silent: descriptors would only describe the noise floor.
SILENCE_RMS = 1e-5


@dataclasses.dataclass(frozen=True)
class AudioFeature:
    """A per-track audio descriptor: what it needs, what it returns, and how to compute it.

    Attributes
    ----------
    name : str
        Registry key (``/audio/<name>`` in the feature store).
    sample_rate : int
        Rate in Hz the audio must have when passed to :meth:`compute`.
    params : dict
        JSON-serialisable parameters the store records and hashes (sample rate, window, hop, shape,
        user options such as weights and their sha256, ...).
    shape : tuple of int
        Shape of the array :meth:`compute` returns.
    description : str
        One line for ``genre list features``.
    function : callable
        ``function(y) -> array`` (``function(y, device=...)`` when ``device_aware``); a picklable
        top-level function or :func:`functools.partial` of one.
    device_aware : bool
        The function takes a ``device`` keyword (neural encoders, torch front ends).
    unusable : str or None
        When set, the feature cannot run as configured (e.g. VGGish without weights); :meth:`check`
        raises it as a :class:`UsageError`.
    """

    name: str
    sample_rate: int
    params: dict
    shape: tuple[int, ...]
    description: str
    function: Callable[..., np.ndarray] = dataclasses.field(repr=False)
    device_aware: bool = False
    unusable: str | None = None

    def check(self) -> None:
        """Raise :class:`UsageError` when the feature lacks a prerequisite (weights)."""
        if self.unusable:
            raise UsageError(self.unusable)

    def compute(self, y: np.ndarray, *, device="cpu") -> np.ndarray:
        """Compute the descriptor.

        Parameters
        ----------
        y : np.ndarray, shape (n_samples,)
            Mono audio at ``self.sample_rate``.
        device : str or torch.device
            Where neural encoders and torch front ends run.

        Returns
        -------
        np.ndarray, float32, shape ``self.shape``
        """
        self.check()
        out = self.function(y, device=device) if self.device_aware else self.function(y)
        out = np.asarray(out, dtype=np.float32)
        if out.shape != self.shape:
            raise RuntimeError(f"feature {self.name} returned shape {out.shape}, declared {self.shape}")
        if not np.isfinite(out).all():
            raise InputError(f"{self.name} is not finite for this audio")
        return out


def require_sound(y: np.ndarray, sr: int, *, min_seconds: float = 0.0) -> np.ndarray:
    """Return ``y`` as float32, or raise :class:`InputError` when it is silent or too short."""
    y = np.asarray(y, dtype=np.float32)
    if len(y) < min_seconds * sr or len(y) == 0:
        raise InputError(f"audio too short ({len(y) / sr:.3f} s; need {min_seconds:.3f} s)")
    if float(np.sqrt(np.mean(np.square(y, dtype=np.float64)))) < SILENCE_RMS:
        raise InputError("audio is silent")
    return y


def middle_excerpt(y: np.ndarray, n_samples: int) -> np.ndarray:
    """The middle ``n_samples`` of ``y`` (all of it when shorter)."""
    if len(y) <= n_samples:
        return y
    start = (len(y) - n_samples) // 2
    return y[start : start + n_samples]


def middle_patch(rep: np.ndarray, n_frames: int, pad_value: float | None = None) -> np.ndarray:
    """Fixed-width patch of a (bands, frames) representation: the middle ``n_frames`` frames.

    A shorter representation is centred in the patch and padded on both sides with ``pad_value``
    (default: its minimum, i.e. the floor a silent frame gets).
    """
    bands, frames = rep.shape
    if frames >= n_frames:
        start = (frames - n_frames) // 2
        return np.ascontiguousarray(rep[:, start : start + n_frames], dtype=np.float32)
    fill = float(rep.min()) if pad_value is None else pad_value
    out = np.full((bands, n_frames), fill, dtype=np.float32)
    start = (n_frames - frames) // 2
    out[:, start : start + frames] = rep
    return out


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, cached per (path, size, mtime) within the process."""
    path = pathlib.Path(path).resolve()
    stat = path.stat()
    return _sha256(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_identity(path: str | os.PathLike) -> dict:
    """JSON-serialisable identity of a weights file or Hugging Face directory (path and sha256s)."""
    path = pathlib.Path(path).expanduser()
    if path.is_file():
        return {"path": str(path.resolve()), "sha256": file_sha256(path)}
    names = ("config.json", "model.safetensors", "pytorch_model.bin", "preprocessor_config.json")
    files = {n: file_sha256(path / n) for n in names if (path / n).is_file()}
    return {"path": str(path.resolve()), "sha256": files}
