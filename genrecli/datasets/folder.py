"""``folder``: any ``<label>/<files>`` tree of audio and/or scores or lyrics.

Files with the same stem in one label folder belong to one track: an audio file, a MIDI file, a score
(kern, MusicXML, ABC) and/or a lyrics ``.txt``. Labels are the folder names.
"""

from __future__ import annotations

from pathlib import Path

from genrecli import store
from genrecli.datasets import DatasetSpec, Listing, register, require_root
from genrecli.errors import UsageError
from genrecli.formats import AUDIO_SUFFIXES as AUDIO
from genrecli.formats import LYRICS_SUFFIXES, SCORE_FORMATS
from genrecli.formats import MIDI_SUFFIXES as MIDI
from genrecli.manifest import Track

SCORES = {**SCORE_FORMATS, **{s: "lyrics" for s in LYRICS_SUFFIXES}}


def list_tracks(root: Path | None) -> Listing:
    root = require_root("folder", root)
    label_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not label_dirs:
        raise UsageError(f"--root {root}: expected one folder per label (<label>/<files>), found no folders")
    tracks, skipped = [], {}
    for label_dir in label_dirs:
        by_stem: dict[str, dict[str, Path]] = {}
        for path in sorted(p for p in label_dir.rglob("*") if p.is_file() and not p.name.startswith(".")):
            suffix = path.suffix.lower()
            if suffix in AUDIO or suffix in MIDI or suffix in SCORES:
                key = str(path.relative_to(label_dir).with_suffix(""))
                by_stem.setdefault(key, {})[suffix] = path
            else:
                skipped[str(path)] = "unsupported file type"
        for stem, files in sorted(by_stem.items()):
            audio = next((files[s] for s in AUDIO if s in files), None)
            midi = next((files[s] for s in MIDI if s in files), None)
            score = next((files[s] for s in SCORES if s in files), None)
            paths = [p for p in (audio, midi, score) if p is not None]
            empty = [p for p in paths if p.stat().st_size == 0]
            if empty:
                skipped[str(empty[0])] = "empty file"
                continue
            tracks.append(
                Track(
                    id=f"{label_dir.name}/{stem}",
                    label=label_dir.name,
                    audio=str(audio.resolve()) if audio else None,
                    midi=str(midi.resolve()) if midi else None,
                    score=str(score.resolve()) if score else None,
                    score_format=SCORES[score.suffix.lower()] if score else None,
                    checksum=store.track_checksum(audio=audio, midi=midi, score=score),
                )
            )
    if not tracks:
        raise UsageError(f"--root {root}: no audio, MIDI, score or lyrics files under the label folders")
    return Listing(tracks, skipped)


register(
    DatasetSpec(
        name="folder",
        description="any <label>/<files> tree of audio, MIDI, scores or lyrics",
        layout="<label>/<stem>.{wav,au,mp3,flac,mid,krn,musicxml,abc,txt}",
        standard_split="random:0.7",
        needs_root=True,
        list_tracks=list_tracks,
    )
)
