"""Audio for every track: decoding, synthesis from scores and MIDI, and per-track features.

The names below are imported from their modules on first use, so ``import genrecli.audio`` (and listing the
features) imports neither torch nor librosa.
"""

from __future__ import annotations

from genrecli._lazy import lazy_exports

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


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)


__all__ = sorted(_LAZY)
