"""``ismir2004``: the ISMIR 2004 genre contest collection (Magnatune; 6 classes), with its given split.

Layout under ``--root`` (the MTG re-release "ISMIR04 Genre Identification task dataset", Zenodo;
confirmed from its README): ``audio/<subset>/...mp3`` and ``metadata/<subset>/tracklist.csv`` for the
subsets ``training``, ``development`` and ``evaluation`` (729 files each). ``tracklist.csv`` has the
columns ``class, artist, album, track, track number, file path`` (quoted; a header row is optional;
the evaluation list has one more column, the Magnatune id); the file path is relative to the subset's
audio folder (a leading ``./`` or ``/`` is ignored). The contest's own distribution, with
``tracklist.csv`` inside each subset folder (``training/tracklist.csv`` next to the audio), is
accepted too.

Classes: classical, electronic, jazz_blues, metal_punk, rock_pop, world (spellings such as
``jazz-blues``, ``Jazz/Blues`` or an original genre ``punk`` are mapped to them).

Protocol (as in the contest and Ng et al.): train on ``training``, test on ``development``
(1,458 tracks, 50/50). Each track carries the group ``split`` (``train`` or ``test``; ``evaluation``
tracks, listed only with ``subsets=training,development,evaluation``, carry ``evaluation`` and are
unused by the standard split) and ``artist``. The standard split is ``given:split`` (train/valid/test
read from the ``split`` group).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from genrecli import store
from genrecli.datasets import DatasetSpec, Listing, register, require_root
from genrecli.errors import UsageError
from genrecli.manifest import Track

CLASSES = ("classical", "electronic", "jazz_blues", "metal_punk", "rock_pop", "world")
ORIGINAL = {"jazz": "jazz_blues", "blues": "jazz_blues", "metal": "metal_punk", "punk": "metal_punk", "rock": "rock_pop", "pop": "rock_pop"}
SUBSETS = {"training": "train", "development": "test", "evaluation": "evaluation"}
AUDIO_SUFFIXES = (".mp3", ".wav", ".au", ".flac", ".ogg")


def _found(path: Path) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir() if not p.name.startswith("."))
    return ", ".join(names[:8]) + (f" (+{len(names) - 8} more)" if len(names) > 8 else "") if names else "nothing"


def normalise_class(raw: str) -> str | None:
    name = re.sub(r"[^a-z]+", "_", raw.strip().lower()).strip("_")
    if name in CLASSES:
        return name
    return ORIGINAL.get(name)


def _locate(root: Path, subset: str) -> tuple[Path | None, Path]:
    """The subset's tracklist and its audio folder."""
    for tracklist, audio in (
        (root / "metadata" / subset / "tracklist.csv", root / "audio" / subset),
        (root / subset / "tracklist.csv", root / subset),
        (root / "audio" / subset / "tracklist.csv", root / "audio" / subset),
    ):
        if tracklist.is_file():
            return tracklist, audio
    return None, root / "audio" / subset


def read_tracklist(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        rows = [r for r in csv.reader(fh) if any(c.strip() for c in r)]
    if rows and rows[0] and rows[0][0].strip().lower() == "class":
        rows = rows[1:]
    return rows


def list_tracks(root: Path | None, *, subsets: str | tuple[str, ...] = ("training", "development")) -> Listing:
    root = require_root("ismir2004", root)
    subsets = tuple(s.strip() for s in subsets.split(",") if s.strip()) if isinstance(subsets, str) else tuple(subsets)
    if bad := [s for s in subsets if s not in SUBSETS]:
        raise UsageError(f"subsets={','.join(subsets)}: expected names among {', '.join(SUBSETS)}; got {', '.join(bad)}")
    located = {s: _locate(root, s) for s in subsets}
    if missing := [s for s, (tl, _) in located.items() if tl is None]:
        raise UsageError(
            f"--root {root}: expected metadata/<subset>/tracklist.csv and audio/<subset>/ for subsets "
            f"{', '.join(subsets)} (ISMIR04 genre release); no tracklist for {', '.join(missing)}; found {_found(root)}"
        )
    tracks, skipped, seen = [], {}, set()
    for subset, (tracklist, audio_dir) in located.items():
        for n, row in enumerate(read_tracklist(tracklist), 1):
            where = f"{tracklist}:{n}"
            if len(row) < 6:
                raise UsageError(
                    f"{where}: expected 6 columns (class, artist, album, track, track number, file path); found {len(row)}: "
                    f"{','.join(row)[:80]}"
                )
            label = normalise_class(row[0])
            rel = row[5].strip().replace("\\", "/")
            rel = re.sub(r"^(\./|/)+", "", rel)
            if label is None:
                skipped[where] = f"unknown class '{row[0]}' (expected {', '.join(CLASSES)})"
                continue
            path = next((p for p in (audio_dir / rel, tracklist.parent / rel, root / rel) if p.is_file()), None)
            if path is None:
                skipped[where] = f"listed file {rel} not found under {audio_dir}"
                continue
            if path.suffix.lower() not in AUDIO_SUFFIXES or path.stat().st_size == 0:
                skipped[str(path)] = "not an audio file or empty"
                continue
            tid = f"{subset}/{Path(rel).with_suffix('').as_posix()}"
            if tid in seen:
                skipped[where] = f"{rel} listed twice"
                continue
            seen.add(tid)
            tracks.append(
                Track(
                    id=tid, label=label, groups={"split": SUBSETS[subset], "artist": row[1].strip() or f"?{tid}"},
                    audio=str(path.resolve()), checksum=store.files_sha256(path),
                )
            )
    notes = ["ISMIR 2004: " + ", ".join(f"{s} {sum(t.id.startswith(s + '/') for t in tracks)}" for s in subsets)]
    return Listing(tracks, skipped, label_names=[c for c in CLASSES if any(t.label == c for t in tracks)], notes=notes)


register(
    DatasetSpec(
        name="ismir2004",
        description="ISMIR 2004 genre contest: 6 classes, train on training, test on development (given split)",
        layout="audio/{training,development}/... + metadata/{training,development}/tracklist.csv",
        standard_split="given:split",
        needs_root=True,
        list_tracks=list_tracks,
    )
)
