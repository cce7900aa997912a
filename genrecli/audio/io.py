"""Decoding audio files to float32 arrays at a requested sample rate."""

from __future__ import annotations

import contextlib
import os
import pathlib

import numpy as np

from genrecli.errors import InputError
from genrecli.formats import AUDIO_SUFFIXES  # noqa: F401  (re-exported)


def one_line(exc: BaseException) -> str:
    """Return ``exc`` as a single short line (library messages may span lines or be empty)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def load_audio(
    path: str | pathlib.Path,
    *,
    sr: int,
    mono: bool = True,
    offset: float = 0.0,
    max_seconds: float | None = None,
) -> np.ndarray:
    """Decode an audio file and resample it to ``sr``.

    Parameters
    ----------
    path : str or pathlib.Path
        Any format libsndfile reads (WAV, AU, FLAC, OGG, AIFF, MP3); audioread is tried
        when libsndfile cannot decode the file.
    sr : int
        Target sample rate in Hz.
    mono : bool
        Average the channels.
    offset : float
        Start reading this many seconds into the file.
    max_seconds : float or None
        Read at most this many seconds (None: to the end).

    Returns
    -------
    y : np.ndarray, float32, shape (n_samples,) or (n_channels, n_samples) when ``mono=False``

    Raises
    ------
    InputError
        Missing, empty, undecodable file, or non-finite samples.
    """
    y, native_sr = decode_audio(path, mono=mono, offset=offset, max_seconds=max_seconds)
    return resample(y, orig_sr=native_sr, sr=sr)


def decode_audio(
    path: str | pathlib.Path,
    *,
    mono: bool = True,
    offset: float = 0.0,
    max_seconds: float | None = None,
) -> tuple[np.ndarray, int]:
    """Decode an audio file at its own sample rate.

    Returns
    -------
    y : np.ndarray, float32, shape (n_samples,) or (n_channels, n_samples) when ``mono=False``
    sr : int
        The file's sample rate.

    Raises
    ------
    InputError
        As :func:`load_audio`.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise InputError(f"{path}: audio file not found")
    try:
        with _native_stderr_silenced():
            y, native_sr = _decode_soundfile(path, offset, max_seconds)
    except Exception as exc:  # libsndfile reports every decoding problem as one of several types
        try:
            with _native_stderr_silenced():
                y, native_sr = _decode_audioread(path, offset, max_seconds)
        except Exception:
            raise InputError(f"{path}: cannot decode audio ({_decode_cause(exc, path)})") from None
    if y.shape[-1] == 0:
        raise InputError(f"{path}: no audio samples (empty file, or offset past the end)")
    if not np.isfinite(y).all():
        raise InputError(f"{path}: audio contains NaN or infinite samples")
    if mono and y.ndim == 2:
        y = y.mean(axis=0)
    return np.ascontiguousarray(y, dtype=np.float32), int(native_sr)


def _decode_cause(exc: BaseException, path: pathlib.Path) -> str:
    """libsndfile's reason without its repeat of the path; its "File does not exist or is not a regular file"
    (what it says of some unrecognised formats, e.g. random bytes named .wav/.mp3) said of a file that exists is
    wrong, so it becomes "format not recognised"."""
    text = one_line(exc).replace(f"Error opening {str(path)!r}: ", "")
    if "File does not exist or is not a regular file" in text:
        return "Format not recognised."
    return text


@contextlib.contextmanager
def _native_stderr_silenced():
    """Discard what C decoders write straight to file descriptor 2 while they run (libmpg123 prints several
    "Note: Illegal Audio-MPEG-Header ..." lines per broken MP3): a bad file is reported by our one line alone."""
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 (a daemon): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _decode_soundfile(path, offset, max_seconds):
    import soundfile

    with soundfile.SoundFile(path) as f:
        # Seek instead of decoding the whole file: GTZAN-style clips are short, full songs are not.
        start = int(round(offset * f.samplerate))
        if start:
            f.seek(min(start, f.frames))
        frames = -1 if max_seconds is None else int(round(max_seconds * f.samplerate))
        data = f.read(frames=frames, dtype="float32", always_2d=True)
        return data.T, f.samplerate


def _decode_audioread(path, offset, max_seconds):
    # librosa.load falls back to audioread (ffmpeg, GStreamer, ...) for containers libsndfile lacks.
    import warnings

    import librosa

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # librosa warns that the audioread path is deprecated
        y, native_sr = librosa.load(path, sr=None, mono=False, offset=offset, duration=max_seconds)
    return np.atleast_2d(y), native_sr


def resample(y: np.ndarray, *, orig_sr: int, sr: int) -> np.ndarray:
    """Resample along the last axis with soxr (high quality).

    Parameters
    ----------
    y : np.ndarray, shape (n_samples,) or (n_channels, n_samples)
    orig_sr, sr : int
        Source and target sample rates in Hz.

    Returns
    -------
    np.ndarray, float32, shape (..., round(n_samples * sr / orig_sr))
    """
    if orig_sr == sr:
        return np.asarray(y, dtype=np.float32)
    import soxr

    # soxr expects (n_samples, n_channels)
    out = soxr.resample(np.asarray(y, dtype=np.float32).T, orig_sr, sr, quality="HQ")
    return np.ascontiguousarray(out.T, dtype=np.float32)
