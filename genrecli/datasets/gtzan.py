"""``gtzan``: Tzanetakis' 1000 30-s clips in 10 genres, ``genres/<genre>/<genre>.000NN.{au,wav}``.

Layout: the ``genres/`` level of the original ``genres.tar.gz`` is optional (``genres_original/`` of the
Kaggle copy is accepted too). Folder names are normalised (``hip-hop``/``hip_hop``/``HipHop`` ->
``hiphop``) and must be the ten GTZAN genres. Track ids are the clip stems (``blues.00005``), so the
published split lists match them by stem whatever the audio suffix.

``jazz.00054`` is a known-corrupt file in most copies and is skipped with a warning.

Protocols:

* standard ``random:0.7``: the random 70/30 split of the DM2KMN paper;
* ``kfold:10``: the 10-fold cross-validation of most GTZAN papers;
* the fault-filtered artist split of Kereliuk, Sturm & Larsen (2015), published as
  ``train_filtered.txt``, ``valid_filtered.txt``, ``test_filtered.txt`` (github.com/coreyker/dnn-mgr,
  folder ``gtzan/``; one ``<genre>/<genre>.000NN.wav`` per line, confirmed from the published lists):
  ``--split file:DIR`` with the three lists in DIR (tracks outside the lists are unused);
* with an artist index, ``group:artist:0.7`` / ``groupkfold:artist:K`` (no artist in two parts).

Artist index (optional): ``artists.csv`` (``id,artist``; ``id`` a clip stem or file name) or Sturm's
GTZAN index ``index.txt`` (``<clip file> ::: <artist> ::: <title>`` per line, ``#`` comments; the
format as used by published GTZAN tooling, file name inferred), in the root or given with
``artists=PATH``. With an index, every track gets an ``artist`` group; clips whose artist is unknown
get a group of their own (``?<id>``).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from genrecli import store, ui
from genrecli.datasets import DatasetSpec, Listing, register, require_root
from genrecli.errors import UsageError
from genrecli.manifest import Track

GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock")
AUDIO_SUFFIXES = (".au", ".wav")
KNOWN_CORRUPT = {"jazz.00054": "known-corrupt GTZAN file (unreadable in most copies), skipped"}
INDEX_NAMES = ("artists.csv", "index.txt")
_CLIP = re.compile(r"^(?P<genre>[a-z]+)\.(?P<num>\d{5})$")


def normalise_genre(name: str) -> str:
    return re.sub(r"[^a-z]", "", name.lower())


def _clip_key(name: str) -> str:
    """``blues/blues.00005.wav`` -> ``blues.00005``."""
    name = Path(name.strip()).name.lower()
    for suffix in AUDIO_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_artist_index(path: Path) -> dict[str, str]:
    """Clip stem -> artist ('' when the index marks it unknown), from either index format."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if " ::: " in text:
        out = {}
        for line in text.splitlines():
            if line.startswith("#") or " ::: " not in line:
                continue
            clip, artist = line.split(" ::: ", 2)[:2]
            out[_clip_key(clip)] = " ".join(artist.strip(" :").split())
        return out
    rows = list(csv.DictReader(text.splitlines()))
    if not rows or "artist" not in rows[0] or not ({"id", "file"} & set(rows[0])):
        found = ", ".join(rows[0]) if rows else "no rows"
        raise UsageError(
            f"{path}: expected an artist index with columns id,artist (or Sturm's '<file> ::: <artist> ::: <title>' "
            f"lines); found columns {found}"
        )
    key = "id" if "id" in rows[0] else "file"
    return {_clip_key(r[key]): " ".join((r["artist"] or "").split()) for r in rows if r.get(key)}


def genre_base(root: Path) -> Path:
    for sub in ("genres", "genres_original", "Data/genres_original"):
        if (root / sub).is_dir():
            return root / sub
    return root


def list_tracks(root: Path | None, *, artists: str | Path | None = None) -> Listing:
    root = require_root("gtzan", root)
    base = genre_base(root)
    folders = {normalise_genre(p.name): p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")}
    unknown = sorted(set(folders) - set(GENRES))
    missing = sorted(set(GENRES) - set(folders))
    if unknown or missing:
        raise UsageError(
            f"--root {root}: expected the 10 GTZAN genre folders ({', '.join(GENRES)}) under {base}; "
            f"missing: {', '.join(missing) or 'none'}; unexpected: {', '.join(unknown) or 'none'}"
        )
    index_path = Path(artists).expanduser() if artists else next((root / n for n in INDEX_NAMES if (root / n).is_file()), None)
    if index_path is not None and not index_path.is_file():
        raise UsageError(f"artists={index_path}: expected an artist index file (artists.csv or index.txt), found none")
    index = read_artist_index(index_path) if index_path else None
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
                ui.warn(f"{path}: {KNOWN_CORRUPT[stem]}")
                continue
            if path.stat().st_size == 0:
                skipped[str(path)] = "empty file"
                continue
            groups = {}
            if index is not None:
                groups["artist"] = index.get(stem) or f"?{stem}"
            tracks.append(
                Track(id=stem, label=genre, groups=groups, audio=str(path.resolve()), checksum=store.files_sha256(path))
            )
    if index is not None:
        unknown_artist = sum(t.groups["artist"].startswith("?") for t in tracks)
        notes.append(f"artist index {index_path}: {len(tracks) - unknown_artist} clips with an artist, {unknown_artist} unknown")
    return Listing(tracks, skipped, label_names=list(GENRES), notes=notes)


register(
    DatasetSpec(
        name="gtzan",
        description="GTZAN: 1000 30-s clips, 10 genres (random 70/30; kfold:10; Kereliuk fault-filtered lists via file:DIR)",
        layout="genres/<genre>/<genre>.000NN.{au,wav} (or the genre folders directly); optional artists.csv or index.txt",
        standard_split="random:0.7",
        needs_root=True,
        list_tracks=list_tracks,
    )
)
