"""``piano``: the DM2KMN piano set layout, ``<Era>/<id>.{krn,musicxml,xml,mxl,abc,mid}``.

A track is a score (Humdrum **kern preferred, then MusicXML, then ABC) with, optionally, a MIDI file of the
same stem; without one, the audio stage renders MIDI from the score. An era folder may mix formats (real
collections do); ``genre info`` then shows the format counts per era and warns when the format goes with the
label, and ``genre extract-text`` reads every score in one canonical encoding by default (issue 18). Labels
are the era folder names. Groups: ``composer`` (from ``metadata.csv`` when present, else the kern ``!!!COM``
record, the MusicXML ``<creator type="composer">`` or the ABC ``C:`` field) and ``work`` (movements and
numbers of one work share it).
"""

from __future__ import annotations

import csv
import io
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from genrecli import store
from genrecli.datasets import DatasetSpec, Listing, read_text_file, register, require_root
from genrecli.errors import UsageError
from genrecli.formats import MIDI_SUFFIXES, SCORE_FORMATS
from genrecli.manifest import Track

SCORE_PREFERENCE = (".krn", ".kern", ".musicxml", ".xml", ".mxl", ".abc")  # kern first, as the paper's text is kern
FORMATS = {s: SCORE_FORMATS[s] for s in SCORE_PREFERENCE}


def work_group(track_id: str) -> str:
    """Work key of a piece id, so that movements or numbers of one work never straddle a split.

    ``beethoven__sonata08-2`` -> ``beethoven__sonata08``; ``chopin-first-editions__025_7-12-1a-BH-009`` ->
    ``chopin-first-editions__025`` (the opus); Polish-archive ids keep the source shelf mark before ``_``.
    """
    source, sep, piece = track_id.partition("__")
    if not sep:
        source, piece = "", track_id
    if source == "chopin-first-editions":
        piece = re.split(r"[-_]", piece)[0]
    elif "_" in piece:
        piece = re.sub(r"(--\d{3})(-\d{3})*$", "", piece.split("_")[0])
    else:
        piece = re.sub(r"-\d+[a-z]?$", "", piece)
    return f"{source}{sep}{piece}"


def _kern_composer(path: Path) -> str | None:
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith("!!!COM"):
                return line.split(":", 1)[-1].strip() or None
            if not line.startswith("!"):
                break
    return None


def _abc_composer(path: Path) -> str | None:
    """The first ``C:`` (composer) field of an ABC file's header."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith("C:"):
                return line[2:].strip() or None
            if line.startswith("K:"):  # the header ends with the key field
                break
    return None


def _score_composer(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in (".krn", ".kern"):
        return _kern_composer(path)
    if suffix == ".abc":
        return _abc_composer(path)
    return _musicxml_composer(path)


def _musicxml_composer(path: Path) -> str | None:
    """The ``<creator type="composer">`` of a MusicXML file; None when it has none or cannot be read (the
    text stage reports an unreadable score; ingest only loses its composer)."""
    if path.suffix == ".mxl":
        return None
    try:
        for event, elem in ET.iterparse(path, events=("start", "end")):
            if event == "start" and elem.tag == "part":  # <identification> precedes the music: stop reading
                return None
            if event == "end" and elem.tag == "creator" and elem.get("type") == "composer" and elem.text:
                return elem.text.strip()
    except (ET.ParseError, LookupError, UnicodeError):  # malformed XML; unknown or unusable declared encoding
        return None
    return None


def list_tracks(root: Path | None) -> Listing:
    root = require_root("piano", root)
    era_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not era_dirs:
        found = ", ".join(sorted(p.name for p in root.iterdir())[:8]) or "nothing"
        raise UsageError(f"--root {root}: expected one folder per era (<Era>/<id>.krn|.musicxml|.abc|.mid), found {found}")
    metadata, notes = {}, []
    if (root / "metadata.csv").exists():
        text, note = read_text_file(root / "metadata.csv")
        notes += [note] if note else []
        try:
            metadata = {row["id"]: row for row in csv.DictReader(io.StringIO(text, newline="")) if "id" in row}
        except csv.Error as exc:
            raise UsageError(f"{root / 'metadata.csv'}: not a CSV file ({exc})") from None
    tracks, skipped = [], {}
    for era in era_dirs:
        by_stem: dict[str, dict[str, Path]] = {}
        for path in sorted(era.iterdir()):
            suffix = path.suffix.lower()
            if path.is_file() and (suffix in FORMATS or suffix in MIDI_SUFFIXES):
                by_stem.setdefault(path.stem, {})[suffix] = path
            elif path.is_file() and not path.name.startswith("."):
                skipped[str(path)] = "not a score or MIDI file (expected .krn, .musicxml, .xml, .mxl, .abc, .mid)"
        for stem, files in sorted(by_stem.items()):
            score = next((files[s] for s in SCORE_PREFERENCE if s in files), None)
            midi = next((files[s] for s in MIDI_SUFFIXES if s in files), None)
            if score is None:
                skipped[str(midi)] = "MIDI without a score of the same name (the text modality needs a score)"
                continue
            if score.stat().st_size == 0:
                skipped[str(score)] = "empty file"
                continue
            meta = metadata.get(stem, {})
            composer = meta.get("composer") or _score_composer(score)
            tracks.append(
                Track(
                    id=f"{era.name}/{stem}",
                    label=era.name,
                    groups={"composer": composer or "unknown", "work": work_group(stem)},
                    score=str(score.resolve()),
                    score_format=FORMATS[score.suffix.lower()],
                    midi=str(midi.resolve()) if midi else None,
                    checksum=store.track_checksum(midi=midi, score=score),
                )
            )
    if not tracks:
        raise UsageError(f"--root {root}: no score files found under the era folders ({', '.join(p.name for p in era_dirs)})")
    return Listing(tracks, skipped, notes=notes)


register(
    DatasetSpec(
        name="piano",
        description="four-era piano set (DM2KMN): kern/MusicXML/ABC scores (formats may mix) with optional MIDI",
        layout="<Era>/<id>.{krn,musicxml,xml,mxl,abc} [+ <Era>/<id>.mid]",
        standard_split="random:0.6",
        needs_root=True,
        list_tracks=list_tracks,
    )
)
