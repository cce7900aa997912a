"""Audio for every track: decoding, synthesis from scores and MIDI, and per-track features."""

from genrecli.audio.features import AUDIO_FEATURES, AudioFeature, configure_feature, extract_track, mfcc_summary
from genrecli.audio.io import AUDIO_SUFFIXES, decode_audio, load_audio, resample
from genrecli.audio.synth import (
    SCORE_FORMATS,
    default_soundfont,
    load_track_audio,
    midi_events,
    render_midi,
    score_to_midi,
    track_audio,
)

__all__ = [
    "AUDIO_FEATURES",
    "AUDIO_SUFFIXES",
    "SCORE_FORMATS",
    "AudioFeature",
    "configure_feature",
    "decode_audio",
    "default_soundfont",
    "extract_track",
    "load_audio",
    "load_track_audio",
    "mfcc_summary",
    "midi_events",
    "render_midi",
    "resample",
    "score_to_midi",
    "track_audio",
]
