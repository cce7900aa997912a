"""Fixed-length audio descriptors per track, and the registry the extract-audio stage reads."""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import numpy as np

from genrecli.audio.synth import track_audio
from genrecli.errors import InputError, UsageError

# Below this RMS a track is treated as silent: its MFCCs would only describe the dB floor.
SILENCE_RMS = 1e-5
_DELTA_WIDTH = 9  # librosa's default delta window, in frames


def mfcc_summary(
    y: np.ndarray,
    *,
    sr: int = 22050,
    n_mfcc: int = 20,
    window_seconds: float = 0.03,
    hop_seconds: float = 0.015,
    n_mels: int = 40,
) -> np.ndarray:
    """MFCC statistics of a track, as in the DM2KMN paper (0.03 s frames).

    Parameters
    ----------
    y : np.ndarray, shape (n_samples,)
        Mono audio at ``sr``.
    sr : int
        Sample rate in Hz.
    n_mfcc : int
        Number of cepstral coefficients.
    window_seconds, hop_seconds : float
        Frame length (also the FFT size) and hop, in seconds.
    n_mels : int
        Mel bands before the DCT.

    Returns
    -------
    np.ndarray, float32, shape (4 * n_mfcc,)
        ``[mean(mfcc), std(mfcc), mean(delta), std(delta)]`` over frames.

    Raises
    ------
    InputError
        Silent audio, or fewer frames than the delta window needs.
    """
    import librosa

    n_fft, hop = _frames(sr, window_seconds, hop_seconds)
    y = np.asarray(y, dtype=np.float32)
    n_frames = 1 + len(y) // hop
    if n_frames < _DELTA_WIDTH:
        need = _DELTA_WIDTH * hop / sr
        raise InputError(f"audio too short for MFCCs ({len(y) / sr:.3f} s; need {need:.3f} s)")
    if float(np.sqrt(np.mean(np.square(y, dtype=np.float64)))) < SILENCE_RMS:
        raise InputError("audio is silent")
    mfcc = librosa.feature.mfcc(y=y, sr=sr, n_mfcc=n_mfcc, n_fft=n_fft, hop_length=hop, n_mels=n_mels)
    delta = librosa.feature.delta(mfcc, width=_DELTA_WIDTH)
    stats = [mfcc.mean(axis=1), mfcc.std(axis=1), delta.mean(axis=1), delta.std(axis=1)]
    return np.concatenate(stats).astype(np.float32)


def _frames(sr: int, window_seconds: float, hop_seconds: float) -> tuple[int, int]:
    return int(round(window_seconds * sr)), int(round(hop_seconds * sr))


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
        JSON-serialisable parameters the store records and hashes (sample rate, window, hop, shape, ...).
    shape : tuple of int
        Shape of the vector :meth:`compute` returns.
    description : str
        One line for ``genre list features``.
    function : callable
        ``function(y) -> array``; a picklable top-level function or :func:`functools.partial` of one.
    """

    name: str
    sample_rate: int
    params: dict
    shape: tuple[int, ...]
    description: str
    function: Callable[[np.ndarray], np.ndarray] = dataclasses.field(repr=False)

    def compute(self, y: np.ndarray) -> np.ndarray:
        """Compute the descriptor.

        Parameters
        ----------
        y : np.ndarray, shape (n_samples,)
            Mono audio at ``self.sample_rate``.

        Returns
        -------
        np.ndarray, float32, shape ``self.shape``
        """
        out = np.asarray(self.function(y), dtype=np.float32)
        if out.shape != self.shape:
            raise RuntimeError(f"feature {self.name} returned shape {out.shape}, declared {self.shape}")
        return out


def _mfcc_feature(*, sr=22050, n_mfcc=20, window_seconds=0.03, hop_seconds=0.015, n_mels=40) -> AudioFeature:
    n_fft, hop = _frames(sr, window_seconds, hop_seconds)
    shape = (4 * n_mfcc,)
    params = {
        "sample_rate": sr,
        "n_mfcc": n_mfcc,
        "n_mels": n_mels,
        "window": "hann",
        "window_seconds": window_seconds,
        "hop_seconds": hop_seconds,
        "n_fft": n_fft,
        "hop_length": hop,
        "delta_width": _DELTA_WIDTH,
        "summary": "mean, std of MFCC; mean, std of delta-MFCC",
        "shape": list(shape),
    }
    function = functools.partial(
        mfcc_summary,
        sr=sr,
        n_mfcc=n_mfcc,
        window_seconds=window_seconds,
        hop_seconds=hop_seconds,
        n_mels=n_mels,
    )
    description = (
        f"{n_mfcc} MFCCs on {window_seconds * 1000:g} ms frames: mean and std of MFCC and delta "
        f"({shape[0]} values)"
    )
    return AudioFeature("mfcc", sr, params, shape, description, function)


AUDIO_FEATURES: dict[str, AudioFeature] = {feature.name: feature for feature in [_mfcc_feature()]}


def extract_track(
    source: dict,
    feature_names: list[str],
    *,
    max_seconds: float | None = 30.0,
    soundfont=None,
) -> dict[str, np.ndarray]:
    """Compute audio features of one track (a top-level function, so worker processes can run it).

    The track's audio is decoded once, or its score converted to MIDI once, and then resampled or
    rendered once per distinct sample rate the requested features need.

    Parameters
    ----------
    source : dict
        Keys ``audio``, ``midi``, ``score``, ``score_text``, ``score_format`` (None when absent), as
        for :func:`genrecli.audio.synth.load_track_audio`; an optional ``name`` labels error messages.
    feature_names : list of str
        Keys of :data:`AUDIO_FEATURES`.
    max_seconds : float or None
        Use at most this many seconds of audio.
    soundfont : path, optional
        SoundFont for synthesis.

    Returns
    -------
    dict
        ``{name: np.ndarray float32 of AUDIO_FEATURES[name].shape}``.

    Raises
    ------
    UsageError
        Unknown feature name.
    InputError
        Unusable source, or audio a feature cannot describe (silent, too short); the message names
        the track's file.
    """
    unknown = [n for n in feature_names if n not in AUDIO_FEATURES]
    if unknown:
        known = ", ".join(AUDIO_FEATURES)
        raise UsageError(f"unknown audio feature(s) {', '.join(unknown)} (known: {known})")
    features = [AUDIO_FEATURES[n] for n in feature_names]
    name = _source_name(source)
    keys = ("audio", "midi", "score", "score_text", "score_format")
    audio_at = track_audio(
        **{k: source.get(k) for k in keys}, max_seconds=max_seconds, soundfont=soundfont, name=name
    )

    out = {}
    for sr in sorted({f.sample_rate for f in features}):
        y = audio_at(sr)
        for feature in (f for f in features if f.sample_rate == sr):
            try:
                out[feature.name] = feature.compute(y)
            except InputError as exc:
                raise InputError(f"{name}: {feature.name}: {exc}") from None
    return out


def _source_name(source: dict) -> str:
    for key in ("name", "audio", "midi", "score"):
        if source.get(key) is not None and not isinstance(source[key], bytes):
            return str(source[key])
    if source.get("midi") is not None:
        return "MIDI data"
    return "inline score" if source.get("score_text") is not None else "track"
