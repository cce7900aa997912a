"""Per-track audio features: the registry the extract-audio stage reads, and the extraction driver.

Registered features (``genre list features``; shapes are per track):

=================  ===============  ==========================================================
name               shape            what
=================  ===============  ==========================================================
mfcc               (80,)            MFCC statistics, 0.03 s frames (DM2KMN's hand-crafted view)
mfcc-image         (1000,)          MFCC image (224x224 viridis) -> ImageNet CNN logits (DM2KMN):
                                    EfficientNet-Lite0 by default, HF ResNet-101 with weights=DIR
vggish             (128,)           VGGish embedding, mean over 0.96 s examples; weights=FILE
musicnn            (200,)           musicnn MTT penultimate layer, mean over 3 s patches
musicnn-tags       (50,)            musicnn MTT tag probabilities, mean over patches
musicnn-pool       (753,)           musicnn MTT temporal max-pool, mean over patches
mel                (128, 431)       log-mel patch, 10 s (Ng et al.)
cqt                (84, 431)        log-CQT patch, 10 s (Ng et al.)
harmonic           (128, 431)       log-mel of the HPSS harmonic part, 10 s (Ng et al.)
percussive         (128, 431)       log-mel of the HPSS percussive part, 10 s (Ng et al.)
scattering         (299, 512)       log scattering transform, J=9 Q=8, 11.9 s (Ng et al.)
timbre             (33,)            centroid, flux, zero crossings, 13 MFCCs, low energy (Ng et al.)
rhythm             (228,)           rhythm histogram + SSD on 24 Bark bands (Ng et al.)
logcqt-oramas      (96, 323)        log-CQT, hop 1024, 15 s (Oramas et al.)
logmel-ru          (128, 1292)      log-mel, 128 bands, hop 512, 30 s (Ru et al.)
=================  ===============  ==========================================================

Options a user must supply (weights) come through :func:`configure_feature`; they become part of the
feature's ``params`` (with the sha256 of the weight files), so the store's parameter hash follows them.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator, Mapping

import numpy as np

from genrecli.audio import handcrafted
from genrecli.audio.base import SILENCE_RMS, AudioFeature
from genrecli.errors import InputError, UsageError

__all__ = [
    "AUDIO_FEATURES",
    "SILENCE_RMS",
    "AudioFeature",
    "configure_feature",
    "describe_features",
    "extract_track",
    "mfcc_summary",
]
_DELTA_WIDTH = 9  # librosa's default delta window, in frames
_PLAIN_TEXT = ("lyrics", "text")  # manifest score formats that are plain text, not scores


def mfcc_summary(
    y: np.ndarray,
    *,
    sr: int = 22050,
    n_mfcc: int = 20,
    window_seconds: float = 0.03,
    hop_seconds: float = 0.015,
    n_mels: int = 40,
    device="cpu",
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
    device : str or torch.device
        CUDA devices compute the MFCCs with the torch front end (:mod:`genrecli.audio.frontend`).

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

    from genrecli.audio.frontend import mfcc as mfcc_frames

    n_fft, hop = _frames(sr, window_seconds, hop_seconds)
    y = np.asarray(y, dtype=np.float32)
    n_frames = 1 + len(y) // hop
    if n_frames < _DELTA_WIDTH:
        need = _DELTA_WIDTH * hop / sr
        raise InputError(f"audio too short for MFCCs ({len(y) / sr:.3f} s; need {need:.3f} s)")
    if float(np.sqrt(np.mean(np.square(y, dtype=np.float64)))) < SILENCE_RMS:
        raise InputError("audio is silent")
    mfcc = mfcc_frames(y, sr=sr, n_mfcc=n_mfcc, n_fft=n_fft, hop_length=hop, n_mels=n_mels, device=device)
    delta = librosa.feature.delta(mfcc, width=_DELTA_WIDTH)
    stats = [mfcc.mean(axis=1), mfcc.std(axis=1), delta.mean(axis=1), delta.std(axis=1)]
    return np.concatenate(stats).astype(np.float32)


def _frames(sr: int, window_seconds: float, hop_seconds: float) -> tuple[int, int]:
    return int(round(window_seconds * sr)), int(round(hop_seconds * sr))


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
    return AudioFeature("mfcc", sr, params, shape, description, function, device_aware=True)


def _encoder(builder: str, *args):
    """A builder of :mod:`genrecli.audio.encoders` (which imports torch), imported when a feature is built."""

    def build(**options) -> AudioFeature:
        from genrecli.audio import encoders

        return getattr(encoders, builder)(*args, **options)

    return build


# name -> builder(**options) -> AudioFeature; the registry holds each builder's default feature, built on first use
_BUILDERS = {
    "mfcc": _mfcc_feature,
    "mfcc-image": _encoder("mfcc_image_feature"),
    "vggish": _encoder("vggish_feature"),
    "musicnn": _encoder("musicnn_feature", "musicnn", "penultimate"),
    "musicnn-tags": _encoder("musicnn_feature", "musicnn-tags", "taggram"),
    "musicnn-pool": _encoder("musicnn_feature", "musicnn-pool", "max_pool"),
    "mel": handcrafted.mel_feature,
    "cqt": handcrafted.cqt_feature,
    "harmonic": functools.partial(handcrafted.hpss_feature, "harmonic"),
    "percussive": functools.partial(handcrafted.hpss_feature, "percussive"),
    "scattering": handcrafted.scattering_feature,
    "timbre": handcrafted.timbre_feature,
    "rhythm": handcrafted.rhythm_feature,
    "logcqt-oramas": handcrafted.logcqt_oramas_feature,
    "logmel-ru": handcrafted.logmel_ru_feature,
}
# Options users may set per feature (the rest of each builder's keywords are fixed by the papers).
_USER_OPTIONS = {
    "mfcc-image": {"weights", "representation"},
    "vggish": {"weights", "pca", "final_relu", "pooling"},
    "musicnn": {"model"},
    "musicnn-tags": {"model"},
    "musicnn-pool": {"model"},
}

# What `genre list features` prints of the default features that are costly to build: (shape, sample rate,
# description), so that listing builds no model (the neural encoders import torch, the scattering shape needs
# kymatio). tests/test_startup.py checks every entry against the built feature.
FEATURE_LISTING: dict[str, tuple[tuple[int, ...], int, str]] = {
    "mfcc-image": ((1000,), 22050, "mfcc image (224x224 viridis) -> EfficientNet-Lite0 ImageNet logits (1000 values)"),
    "vggish": ((128,), 16000, "VGGish 128-d embedding, mean over examples (128 values; needs --weights FILE)"),
    "musicnn": ((200,), 16000, "musicnn MTT_musicnn: penultimate layer (200-d), mean over 3 s patches"),
    "musicnn-tags": ((50,), 16000, "musicnn MTT_musicnn: tag probabilities (50), mean over 3 s patches"),
    "musicnn-pool": (
        (753,), 16000, "musicnn MTT_musicnn: temporal max-pool of the 753 mid-end channels, mean over 3 s patches",
    ),
    "scattering": ((299, 512), 22050, "log scattering transform (J=9, Q=8, orders 1-2), 299 x 512"),
}


class _LazyFeatures(Mapping):
    """The registry of default features: every name known at import, each feature built on first access."""

    def __init__(self, builders: Mapping):
        self._builders = builders
        self._built: dict[str, AudioFeature] = {}
        self._lock = threading.RLock()

    def __getitem__(self, name: str) -> AudioFeature:
        feature = self._built.get(name)
        if feature is None:
            build = self._builders[name]  # KeyError for an unknown name, as a dict
            with self._lock:
                feature = self._built.get(name)
                if feature is None:
                    feature = self._built[name] = build()
        return feature

    def __iter__(self) -> Iterator[str]:
        return iter(self._builders)

    def __len__(self) -> int:
        return len(self._builders)

    def __contains__(self, name) -> bool:
        return name in self._builders

    def __repr__(self) -> str:
        return f"AUDIO_FEATURES({', '.join(self._builders)})"


AUDIO_FEATURES: Mapping[str, AudioFeature] = _LazyFeatures(_BUILDERS)


def describe_features() -> list[str]:
    """``genre list features``: one line per default audio feature, building none of them."""
    lines = []
    for name in _BUILDERS:
        if name in FEATURE_LISTING:
            shape, sample_rate, description = FEATURE_LISTING[name]
        else:  # building the other hand-crafted features imports nothing beyond NumPy
            feature = AUDIO_FEATURES[name]
            shape, sample_rate, description = feature.shape, feature.sample_rate, feature.description
        lines.append(f"audio/{name:14s} shape {tuple(shape)} @ {sample_rate} Hz  {description}")
    return lines


def configure_feature(name: str, **options) -> AudioFeature:
    """Return feature ``name`` with user options applied (their values go into ``params``).

    Parameters
    ----------
    name : str
        A key of :data:`AUDIO_FEATURES`.
    **options
        ``mfcc-image``: ``weights=DIR`` (local Hugging Face ResNet-101 directory; default the bundled
        EfficientNet-Lite0), ``representation="mfcc"|"logmel"``. ``vggish``: ``weights=FILE``
        (torchvggish ``.pth``/``.safetensors``, required), ``pca=FILE``, ``final_relu=True``,
        ``pooling="mean"|"meanstd"``. ``musicnn*``: ``model="MTT_musicnn"|"MSD_musicnn"``.
        Options whose value is None are ignored.

    Raises
    ------
    UsageError
        Unknown feature or option, missing weights file, bad option value.
    """
    if name not in _BUILDERS:
        raise UsageError(f"unknown audio feature {name} (known: {', '.join(_BUILDERS)})")
    options = {k: v for k, v in options.items() if v is not None}
    allowed = _USER_OPTIONS.get(name, set())
    unknown = sorted(set(options) - allowed)
    if unknown:
        takes = f"takes {', '.join(sorted(allowed))}" if allowed else "takes no options"
        raise UsageError(f"audio feature {name} {takes}, not {', '.join(unknown)}")
    if not options:
        return AUDIO_FEATURES[name]
    return _BUILDERS[name](**options)


def extract_track(
    source: dict,
    feature_names: list,
    *,
    max_seconds: float | None = 30.0,
    soundfont=None,
    device="cpu",
    options: dict[str, dict] | None = None,
) -> dict[str, np.ndarray]:
    """Compute audio features of one track (a top-level function, so worker processes can run it).

    The track's audio is decoded once, or its score converted to MIDI once, and then resampled or
    rendered once per distinct sample rate the requested features need.

    Parameters
    ----------
    source : dict
        Keys ``audio``, ``midi``, ``score``, ``score_text``, ``score_format`` (None when absent), as
        for :func:`genrecli.audio.synth.load_track_audio`; an optional ``name`` labels error messages.
    feature_names : list of str or AudioFeature
        Keys of :data:`AUDIO_FEATURES`, or features made by :func:`configure_feature`.
    max_seconds : float or None
        Use at most this many seconds of audio.
    soundfont : path, optional
        SoundFont for synthesis.
    device : str or torch.device
        Where neural encoders and torch front ends run ("cpu", "cuda", "cuda:1", "auto").
    options : dict, optional
        ``{feature name: {option: value}}`` passed to :func:`configure_feature`.

    Returns
    -------
    dict
        ``{name: np.ndarray float32 of AUDIO_FEATURES[name].shape}``.

    Raises
    ------
    UsageError
        Unknown feature name or option, a feature without its weights, an unavailable device.
    InputError
        Unusable source, or audio a feature cannot describe (silent, too short); the message names
        the track's file.
    """
    features = resolve_features(feature_names, options)
    from genrecli.audio.synth import track_audio
    from genrecli.device import resolve_device

    device = resolve_device(device)
    name = _source_name(source)
    keys = ("audio", "midi", "score", "score_text", "score_format")
    if source.get("audio") is None and source.get("midi") is None and source.get("score_format") in _PLAIN_TEXT:
        # a lyrics (or review) track: text only, a per-track failure of the audio stage, not a usage error
        raise InputError(f"{name}: {source['score_format']} only: no audio, MIDI or score to make audio from")
    audio_at = track_audio(
        **{k: source.get(k) for k in keys}, max_seconds=max_seconds, soundfont=soundfont, name=name
    )

    out = {}
    for sr in sorted({f.sample_rate for f in features}):
        y = audio_at(sr)
        for feature in (f for f in features if f.sample_rate == sr):
            try:
                out[feature.name] = feature.compute(y, device=device)
            except InputError as exc:
                raise InputError(f"{name}: {feature.name}: {exc}") from None
    return out


def resolve_features(feature_names: list, options: dict[str, dict] | None = None) -> list[AudioFeature]:
    """Features for names (with ``options`` applied) or ready :class:`AudioFeature` objects; checks them.

    Raises
    ------
    UsageError
        Unknown names or options, or a feature that cannot run as configured (VGGish without weights).
    """
    options = options or {}
    unknown = [n for n in feature_names if isinstance(n, str) and n not in AUDIO_FEATURES]
    if unknown:
        known = ", ".join(AUDIO_FEATURES)
        raise UsageError(f"unknown audio feature(s) {', '.join(unknown)} (known: {known})")
    features = [n if isinstance(n, AudioFeature) else configure_feature(n, **options.get(n, {})) for n in feature_names]
    for feature in features:
        feature.check()
    return features


def _source_name(source: dict) -> str:
    for key in ("name", "audio", "midi", "score"):
        if source.get(key) is not None and not isinstance(source[key], bytes):
            return str(source[key])
    if source.get("midi") is not None:
        return "MIDI data"
    return "inline score" if source.get("score_text") is not None else "track"
