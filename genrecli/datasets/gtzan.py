"""``gtzan``: Tzanetakis' 1000 30-s clips in 10 genres, ``genres/<genre>/<genre>.000NN.{au,wav}``.

The ``genres/`` level is optional. Folder names are normalised (``hip-hop``/``hip_hop``/``HipHop`` ->
``hiphop``) and must be the ten GTZAN genres. ``jazz.00054`` is a known-corrupt file in most copies and is
skipped with a warning. Group ``artist`` comes from an optional ``artists.csv`` (``id,artist``) in the root.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from genrecli import store
from genrecli.datasets import DatasetSpec, Listing, register, require_root
from genrecli.errors import UsageError
from genrecli.manifest import Track

GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock")
AUDIO_SUFFIXES = (".au", ".wav")
KNOWN_CORRUPT = {"jazz.00054": "known-corrupt GTZAN file (unreadable in most copies), skipped"}
_CLIP = re.compile(r"^(?P<genre>[a-z]+)\.(?P<num>\d{5})$")


def normalise_genre(name: str) -> str:
    return re.sub(r"[^a-z]", "", name.lower())


def list_tracks(root: Path | None) -> Listing:
    root = require_root("gtzan", root)
    base = root / "genres" if (root / "genres").is_dir() else root
    folders = {normalise_genre(p.name): p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")}
    unknown = sorted(set(folders) - set(GENRES))
    missing = sorted(set(GENRES) - set(folders))
    if unknown or missing:
        raise UsageError(
            f"--root {root}: expected the 10 GTZAN genre folders ({', '.join(GENRES)}) under {base}; "
            f"missing: {', '.join(missing) or 'none'}; unexpected: {', '.join(unknown) or 'none'}"
        )
    artists = {}
    if (root / "artists.csv").exists():
        with open(root / "artists.csv", newline="", encoding="utf-8") as fh:
            artists = {row["id"]: row["artist"] for row in csv.DictReader(fh)}
    tracks, skipped, notes = [], {}, []
    for genre in GENRES:
        for path in sorted(folders[genre].iterdir()):
            if not path.is_file() or path.name.startswith("."):
                continue
            stem = path.stem.lower()
            if path.suffix.lower() not in AUDIO_SUFFIXES or not _CLIP.match(stem):
                skipped[str(path)] = "not a GTZAN clip (<genre>.000NN.au|.wav)"
                continue
            if stem in KNOWN_CORRUPT:
                skipped[str(path)] = KNOWN_CORRUPT[stem]
                notes.append(f"{path}: {KNOWN_CORRUPT[stem]}")
                continue
            if path.stat().st_size == 0:
                skipped[str(path)] = "empty file"
                continue
            groups = {"artist": artists[stem]} if stem in artists else {}
            tracks.append(
                Track(id=stem, label=genre, groups=groups, audio=str(path.resolve()), checksum=store.file_sha256(path))
            )
    return Listing(tracks, skipped, label_names=list(GENRES), notes=notes)


register(
    DatasetSpec(
        name="gtzan",
        description="GTZAN: 1000 30-s clips, 10 genres",
        layout="genres/<genre>/<genre>.000NN.{au,wav} (or the genre folders directly)",
        standard_split="random:0.7",
        needs_root=True,
        list_tracks=list_tracks,
    )
)
