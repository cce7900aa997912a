"""Audio for every track: decoding, synthesis from scores and MIDI, and per-track features.

The names below are imported from their modules on first use, so ``import genrecli.audio`` (and listing the
features) imports neither torch nor librosa.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "AUDIO_FEATURES": "features",
    "AudioFeature": "features",
    "configure_feature": "features",
    "extract_track": "features",
    "mfcc_summary": "features",
    "AUDIO_SUFFIXES": "io",
    "decode_audio": "io",
    "load_audio": "io",
    "resample": "io",
    "SCORE_FORMATS": "synth",
    "default_soundfont": "synth",
    "load_track_audio": "synth",
    "midi_events": "synth",
    "render_midi": "synth",
    "score_to_midi": "synth",
    "track_audio": "synth",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"genrecli.audio.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = sorted(_LAZY)
