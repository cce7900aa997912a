"""``music4all``: Music4All (Santana et al., IWSSIP 2020), multi-label genres, audio + lyrics.

Layout under ``--root`` (the release as obtained from the authors; file names and the tab separator
confirmed from several published loaders, e.g. ``pd.read_csv('id_genres.csv', sep='\\t')``):

* ``id_information.csv``: tab-separated, header ``id  artist  song  album_name``;
* ``id_genres.csv``: tab-separated, header ``id  genres``, genres comma-separated (``rock,indie rock``);
* ``id_lang.csv``: tab-separated, header ``id  lang`` (ISO code, ``en`` for English);
* ``audios/<id>.mp3`` (30-s clips) and ``lyrics/<id>.txt``;
* ``id_metadata.csv``, ``id_tags.csv``, ``listening_history.csv`` may be present and are not read.

The filters of Ru et al. (ICASSP 2023): tracks with missing data (no information, genre or language
row, no audio file, no or empty lyrics) and tracks whose lyrics are not English are dropped; then
genres annotated on fewer than ``min_count`` of the remaining tracks are dropped, and tracks left
without a genre with them. Ru et al. end with 43,650 tracks and 87 genres but do not give the
threshold: ``min_count`` defaults to 200 (inferred, not confirmed), ``top=87`` keeps the 87 most
frequent genres instead. Options: ``min_count``, ``top``, ``english_only`` (true).

Labels: the kept genres (multi-label). Groups: ``artist``. Lyrics are the track's ``score``
(``score_format='lyrics'``). Standard split: Ru et al.'s 70/10/20 (``random:0.7:0.1``, stratified by
each track's rarest label).
"""

from __future__ import annotations

import csv
from pathlib import Path

from genrecli import store
from genrecli.datasets import DatasetSpec, Listing, register, require_root
from genrecli.errors import UsageError
from genrecli.manifest import Track

FILES = {
    "id_information.csv": ("id", "artist"),
    "id_genres.csv": ("id", "genres"),
    "id_lang.csv": ("id", "lang"),
}
FOLDERS = ("audios", "lyrics")
MIN_COUNT = 200
AUDIO_SUFFIXES = (".mp3", ".wav", ".ogg", ".flac")


def _found(path: Path) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir() if not p.name.startswith("."))
    return ", ".join(names[:8]) + (f" (+{len(names) - 8} more)" if len(names) > 8 else "") if names else "nothing"


def _bool(value) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes", "on")


def read_tsv(path: Path, columns: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """Rows of a Music4All tab-separated file keyed by ``id``; checks the separator and the columns."""
    with open(path, newline="", encoding="utf-8") as fh:
        header = fh.readline().rstrip("\r\n")
        names = header.split("\t")
        if not set(columns) <= set(names):
            hint = " (comma-separated? Music4All files are tab-separated)" if "," in header and "\t" not in header else ""
            raise UsageError(f"{path}: expected tab-separated columns {', '.join(columns)}; found header '{header[:80]}'{hint}")
        reader = csv.DictReader(fh, fieldnames=names, delimiter="\t", quoting=csv.QUOTE_NONE)
        return {row["id"].strip(): row for row in reader if row.get("id")}


def list_tracks(
    root: Path | None, *, min_count: int | str = MIN_COUNT, top: int | str | None = None, english_only: bool | str = True
) -> Listing:
    root = require_root("music4all", root)
    missing = [n for n in FILES if not (root / n).is_file()] + [f"{d}/" for d in FOLDERS if not (root / d).is_dir()]
    if missing:
        raise UsageError(
            f"--root {root}: expected the Music4All release ({', '.join(FILES)} tab-separated, audios/<id>.mp3, "
            f"lyrics/<id>.txt); missing {', '.join(missing)}; found {_found(root)}"
        )
    info, genres_rows, langs = (read_tsv(root / n, cols) for n, cols in FILES.items())
    audio_files = {}
    for p in (root / "audios").iterdir():
        if p.suffix.lower() in AUDIO_SUFFIXES and p.stem not in audio_files:
            audio_files[p.stem] = p
    english_only = _bool(english_only)
    skipped, candidates = {}, []
    for tid in sorted(set(info) | set(genres_rows) | set(langs) | set(audio_files)):
        lyrics = root / "lyrics" / f"{tid}.txt"
        genres = [g.strip() for g in (genres_rows.get(tid, {}).get("genres") or "").split(",") if g.strip()]
        lang = (langs.get(tid, {}).get("lang") or "").strip()
        reason = None
        if tid not in info:
            reason = "missing data: no row in id_information.csv"
        elif not genres:
            reason = "missing data: no genres in id_genres.csv"
        elif not lang:
            reason = "missing data: no language in id_lang.csv"
        elif english_only and lang.lower() not in ("en", "english"):
            reason = f"lyrics not English (lang {lang})"
        elif tid not in audio_files:
            reason = "missing data: no audio file audios/<id>.mp3"
        elif not lyrics.is_file() or not lyrics.read_text(encoding="utf-8", errors="replace").strip():
            reason = "missing data: no or empty lyrics/<id>.txt"
        if reason:
            skipped[tid] = reason
        else:
            candidates.append((tid, list(dict.fromkeys(genres)), audio_files[tid], lyrics))
    counts: dict[str, int] = {}
    for _, genres, _, _ in candidates:
        for g in genres:
            counts[g] = counts.get(g, 0) + 1
    if top is not None:
        ranked = sorted(counts, key=lambda g: (-counts[g], g))
        kept = set(ranked[: int(top)])
        rule = f"the {int(top)} most frequent genres"
    else:
        kept = {g for g, c in counts.items() if c >= int(min_count)}
        rule = f"genres on at least {int(min_count)} tracks"
    tracks = []
    for tid, genres, audio, lyrics in candidates:
        labels = tuple(g for g in genres if g in kept)
        if not labels:
            skipped[tid] = f"no genre left after keeping {rule}"
            continue
        tracks.append(
            Track(
                id=tid, labels=labels, groups={"artist": " ".join(info[tid]["artist"].split()) or f"?{tid}"},
                audio=str(audio.resolve()), score=str(lyrics.resolve()), score_format="lyrics",
                checksum=store.track_checksum(audio=audio, score=lyrics),
            )
        )
    notes = [
        f"Music4All: {len(candidates)} tracks pass the missing-data{' and English-lyrics' if english_only else ''} filters; "
        f"kept {len(kept)} of {len(counts)} genres ({rule}); {len(tracks)} tracks"
    ]
    return Listing(tracks, skipped, notes=notes)


register(
    DatasetSpec(
        name="music4all",
        description="Music4All: audio + lyrics, multi-label genres; Ru et al. filters (English, complete); 70/10/20",
        layout="id_information.csv, id_genres.csv, id_lang.csv (tab-separated), audios/<id>.mp3, lyrics/<id>.txt",
        standard_split="random:0.7:0.1",
        needs_root=True,
        list_tracks=list_tracks,
    )
)
