"""``ballroom`` and ``extended-ballroom``: dance-style corpora, one folder per dance, 10-fold CV.

``ballroom`` (Gouyon et al., ISMIR 2004 rhythm contest; MTG): ``BallroomData/<Dance>/<file>.wav``
(the ``BallroomData/`` level is optional), dance folders ``ChaChaCha, Jive, Quickstep,
Rumba-American, Rumba-International, Rumba-Misc, Samba, Tango, VienneseWaltz, Waltz`` (confirmed from
published readers), files ``Albums-<Album>-<NN>.wav`` or ``Media-<NNNNNN>.wav``. The three Rumba
folders are merged into ``Rumba`` (the usual 8 classes, 698 excerpts; ``merge_rumba=false`` keeps 10).
Group ``album``: the ``<Album>`` of ``Albums-`` files, the id without its last two digits for
``Media-`` files (a heuristic: consecutive media ids come from one source).

``extended-ballroom`` (Marchand & Peeters, ISMIR 2016 LBD): ``extendedballroom_v1.1/<Genre>/<id>.mp3``
(the ``extendedballroom_v1.1/`` level is optional; ``.wav`` conversions are accepted), genre folders
``Chacha, Foxtrot, Jive, Pasodoble, Quickstep, Rumba, Salsa, Samba, Slowwaltz, Tango, Viennesewaltz,
Waltz, Wcswing`` (13 classes, 4,180 excerpts; confirmed from published readers). The optional
``extendedballroom_v1.1.xml`` (root node, one node per genre, one song node per track with ``id``,
``artist``, ``album``, ``title``, ``bpm``, ``hash`` and duplicate markers ``exact``/``version``/
``time``/``karaoke``) gives the ``artist`` and ``album`` groups; ``drop_duplicates=true`` skips the
tracks marked ``exact`` duplicates of another (kept by default, as in the papers' 4,180).

Folder names are matched ignoring case and ``-``/``_``/spaces; a folder of audio with any other name
is a layout error; folders without audio are ignored. Standard split: stratified ``kfold:10``
(Ng et al.).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from genrecli import store
from genrecli.datasets import DatasetSpec, Listing, register, require_root
from genrecli.errors import UsageError
from genrecli.manifest import Track

BALLROOM = ("ChaChaCha", "Jive", "Quickstep", "Rumba-American", "Rumba-International", "Rumba-Misc", "Samba", "Tango", "VienneseWaltz", "Waltz")
EXTENDED = ("Chacha", "Foxtrot", "Jive", "Pasodoble", "Quickstep", "Rumba", "Salsa", "Samba", "Slowwaltz", "Tango", "Viennesewaltz", "Waltz", "Wcswing")
AUDIO_SUFFIXES = (".wav", ".mp3", ".au", ".flac", ".ogg")


def _key(name: str) -> str:
    return re.sub(r"[^a-z]", "", name.lower())


def _bool(value) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes", "on")


def _audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES and not p.name.startswith("."))


def dance_folders(name: str, root: Path, base_names: tuple[str, ...], expected: tuple[str, ...]) -> tuple[Path, dict[str, Path]]:
    """The folder holding the dance folders and {canonical dance: folder}; raises on a wrong layout."""
    base = next((root / b for b in base_names if (root / b).is_dir()), root)
    known = {_key(d): d for d in expected}
    folders, unknown = {}, []
    for p in sorted(base.iterdir()):
        if not p.is_dir() or p.name.startswith("."):
            continue
        if _key(p.name) in known:
            folders[known[_key(p.name)]] = p
        elif _audio_files(p):
            unknown.append(p.name)
    if unknown or not folders:
        raise UsageError(
            f"--root {root}: expected {name} dance folders ({', '.join(expected)}) under {base}; "
            f"found {', '.join(sorted(folders)) or 'none of them'}" + (f"; unexpected folders with audio: {', '.join(unknown)}" if unknown else "")
        )
    return base, folders


def ballroom_album(stem: str) -> str:
    if m := re.fullmatch(r"Albums-(.+)-\d+", stem):
        return m.group(1)
    if m := re.fullmatch(r"Media-(\d+)", stem):
        return f"media-{m.group(1)[:-2]}"
    return stem


def list_ballroom(root: Path | None, *, merge_rumba: bool | str = True) -> Listing:
    root = require_root("ballroom", root)
    base, folders = dance_folders("Ballroom", root, ("BallroomData",), BALLROOM)
    merge = _bool(merge_rumba)
    tracks, skipped = [], {}
    for dance, folder in folders.items():
        label = "Rumba" if merge and dance.startswith("Rumba") else dance
        for path in _audio_files(folder):
            if path.stat().st_size == 0:
                skipped[str(path)] = "empty file"
                continue
            tracks.append(
                Track(
                    id=f"{dance}/{path.relative_to(folder).with_suffix('').as_posix()}", label=label,
                    groups={"album": ballroom_album(path.stem)}, audio=str(path.resolve()), checksum=store.files_sha256(path),
                )
            )
    missing = [d for d in BALLROOM if d not in folders]
    notes = [f"Ballroom: missing dance folders {', '.join(missing)}"] if missing else []
    return Listing(tracks, skipped, notes=notes)


def read_extended_xml(path: Path) -> dict[str, dict[str, str]]:
    """Song id -> attributes (artist, album, title, bpm, hash, exact, ...) of the Extended Ballroom XML."""
    try:
        tree = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise UsageError(f"{path}: expected the Extended Ballroom XML (root > genre > song nodes); {exc}") from None
    out = {}
    for genre in tree:
        for song in genre:
            if song.get("id"):
                out[song.get("id")] = {**song.attrib, "genre": genre.tag}
    return out


def list_extended(root: Path | None, *, drop_duplicates: bool | str = False) -> Listing:
    root = require_root("extended-ballroom", root)
    base, folders = dance_folders("Extended Ballroom", root, ("extendedballroom_v1.1", "extendedballroom"), EXTENDED)
    xml_path = next(iter(sorted(base.glob("extendedballroom*.xml")) + sorted(root.glob("extendedballroom*.xml"))), None)
    meta = read_extended_xml(xml_path) if xml_path else {}
    drop = _bool(drop_duplicates)
    tracks, skipped = [], {}
    for dance, folder in folders.items():
        for path in _audio_files(folder):
            info = meta.get(path.stem, {})
            if path.stat().st_size == 0:
                skipped[str(path)] = "empty file"
                continue
            if drop and info.get("exact"):
                skipped[str(path)] = f"exact duplicate of {info['exact']} (drop_duplicates)"
                continue
            groups = {}
            if meta:
                groups = {"artist": info.get("artist") or f"?{path.stem}", "album": info.get("album") or f"?{path.stem}"}
            tracks.append(
                Track(
                    id=f"{dance}/{path.relative_to(folder).with_suffix('').as_posix()}", label=dance, groups=groups,
                    audio=str(path.resolve()), checksum=store.files_sha256(path),
                )
            )
    notes = [] if xml_path else ["no extendedballroom_v1.1.xml: no artist/album groups"]
    if missing := [d for d in EXTENDED if d not in folders]:
        notes.append(f"Extended Ballroom: missing genre folders {', '.join(missing)}")
    return Listing(tracks, skipped, notes=notes)


register(
    DatasetSpec(
        name="ballroom",
        description="Ballroom (ISMIR 2004 rhythm contest): 698 excerpts, 8 dances (Rumba folders merged); 10-fold CV",
        layout="BallroomData/<Dance>/<file>.wav (ChaChaCha, Jive, Quickstep, Rumba-*, Samba, Tango, VienneseWaltz, Waltz)",
        standard_split="kfold:10",
        needs_root=True,
        list_tracks=list_ballroom,
    )
)
register(
    DatasetSpec(
        name="extended-ballroom",
        description="Extended Ballroom: 4180 excerpts, 13 dances; 10-fold CV",
        layout="extendedballroom_v1.1/<Genre>/<id>.mp3 (13 genre folders), optional extendedballroom_v1.1.xml",
        standard_split="kfold:10",
        needs_root=True,
        list_tracks=list_extended,
    )
)
