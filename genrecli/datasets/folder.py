"""``folder``: any ``<label>/<files>`` tree of audio and/or scores or lyrics.

Files with the same stem in one label folder belong to one track: an audio file, a MIDI file, a score
(kern, MusicXML, ABC) and/or a lyrics ``.txt``. Labels are the folder names.
"""

from __future__ import annotations

import errno
import re
from pathlib import Path

from genrecli import store
from genrecli.datasets import DatasetSpec, Listing, register, require_root
from genrecli.errors import UsageError
from genrecli.formats import AUDIO_SUFFIXES as AUDIO
from genrecli.formats import LYRICS_SUFFIXES, SCORE_FORMATS
from genrecli.formats import MIDI_SUFFIXES as MIDI
from genrecli.manifest import Track

SCORES = {**SCORE_FORMATS, **{s: "lyrics" for s in LYRICS_SUFFIXES}}


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _shown(path: Path) -> str:
    """A path as one printable line: control characters escaped (``new\\nline.wav``)."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(path))


def _broken_link(path: Path) -> str:
    try:
        path.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 raises RuntimeError for a loop
        return "symbolic link loop"
    except OSError as exc:
        return "symbolic link loop" if exc.errno == errno.ELOOP else "dangling symbolic link (its target does not exist)"
    return "symbolic link that cannot be followed"


def list_tracks(root: Path | None) -> Listing:
    root = require_root("folder", root)
    label_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not label_dirs:
        raise UsageError(f"--root {root}: expected one folder per label (<label>/<files>), found no folders")
    tracks, skipped, failed = [], {}, {}
    for label_dir in label_dirs:
        by_stem: dict[str, dict[str, Path]] = {}
        for path in sorted(p for p in label_dir.rglob("*") if not p.name.startswith(".")):
            if not path.is_file():
                # A symbolic link that leads nowhere (dangling, or a loop) used to be dropped silently: it is
                # a file the user put in the corpus, so it is listed as failed with the cause.
                if path.is_symlink() and not path.exists():
                    failed[_shown(path)] = _broken_link(path)
                continue
            if _CONTROL.search(str(path.relative_to(root))):
                # A newline (or other control character) in a name would split every message and listing
                # line that names the track, and the id is written into the stores: refused, named escaped.
                failed[_shown(path)] = "control character in the file name (rename the file)"
                continue
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
            if empty:  # a defective file of the corpus (failed: ingest exits 2), unlike a README (skipped)
                failed[str(empty[0])] = "empty file"
                continue
            try:
                checksum = store.track_checksum(audio=audio, midi=midi, score=score)
            except OSError as exc:  # an unreadable file (permissions) is one skipped file, not a traceback
                where = exc.filename or (audio or midi or score)
                failed[str(where)] = f"cannot read ({exc.strerror or type(exc).__name__})"
                continue
            tracks.append(
                Track(
                    id=f"{label_dir.name}/{stem}",
                    label=label_dir.name,
                    audio=str(audio.resolve()) if audio else None,
                    midi=str(midi.resolve()) if midi else None,
                    score=str(score.resolve()) if score else None,
                    score_format=SCORES[score.suffix.lower()] if score else None,
                    checksum=checksum,
                )
            )
    if not tracks:
        raise UsageError(f"--root {root}: no audio, MIDI, score or lyrics files under the label folders")
    return Listing(tracks, skipped, failed=failed)


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
