"""``mumu``: MuMu (Oramas et al., ISMIR 2017 / TISMIR 2018), album-level multi-label genres.

Layout under ``--root``:

* ``MuMu_dataset_multi-label.csv`` (confirmed): comma-separated with a header, one row per MSD track:
  ``amazon_id, album_mbid, MSD_track_id, release_group_mbid, artist_mbid, genres``; ``genres`` is a
  quoted comma-separated list of Amazon genre names (column order inferred from published readers:
  first column ``amazon_id``, third the MSD track id, sixth the genres);
* ``amazon_metadata_MuMu.json`` (optional, confirmed name): a JSON array of album records with
  ``amazon_id`` and ``categories`` (the Amazon taxonomy branches, e.g.
  ``[["CDs & Vinyl", "Pop", "Oldies", "Traditional Pop"]]``), used for the taxonomy expansion;
* reviews (name inferred): one JSON file whose name contains ``review`` (``.json``, ``.jsonl`` or
  ``.json.gz``), Amazon review records (one object per line, or an array) with ``asin`` (or
  ``amazon_id``), ``reviewText`` (or ``text``) and optionally ``unixReviewTime``;
* cover images (inferred; the release has only URLs): ``images/<amazon_id>.{jpg,jpeg,png}``;
* track audio (inferred; the release has none): ``audio/<MSD_track_id>.{mp3,wav,ogg,flac,au}``.

One track per album (``amazon_id``). Labels: the album's genres with the taxonomy expansion of the
paper (a label implies its ancestors: "Jazz/Vocal Jazz and Pop/Vocal Pop" gives Jazz, Vocal Jazz,
Pop, Vocal Pop): every node of the album's own category branches is added, and a label found on a
single branch anywhere in the metadata adds that branch's ancestors; the store root ``CDs & Vinyl``
is not a label. Then labels on fewer than ``min_count`` albums (default 12, as in the paper: 250
genres) are dropped, and albums left without a label. Text: all reviews of the album in
chronological order (``unixReviewTime``; file order otherwise), joined and cut at about
``max_chars`` = 1500 characters with the incomplete sentence at the end removed (inline,
``score_format='text'``). Audio: the first of the album's tracks with an audio file (in CSV order).
An album needs at least one of audio, cover and review; ``require=audio,image,text`` asks for more.

Groups: ``artist`` (``artist_mbid``). Standard split: artist-disjoint 80/10/10
(``group:artist:0.8:0.1``).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from pathlib import Path

from genrecli import store
from genrecli.datasets import DatasetSpec, Listing, inline_text_problem, read_text_file, register, require_root
from genrecli.errors import UsageError
from genrecli.manifest import Track

LABELS_CSV = "MuMu_dataset_multi-label.csv"
METADATA_JSON = "amazon_metadata_MuMu.json"
COLUMNS = ("amazon_id", "MSD_track_id", "artist_mbid", "genres")
TAXONOMY_ROOTS = {"CDs & Vinyl", "Music", "Digital Music"}
AUDIO_SUFFIXES = (".mp3", ".wav", ".ogg", ".flac", ".au")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MIN_COUNT = 12
MAX_CHARS = 1500
MODALITIES = ("audio", "image", "text")
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s|$)")


def _found(path: Path) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir() if not p.name.startswith("."))
    return ", ".join(names[:8]) + (f" (+{len(names) - 8} more)" if len(names) > 8 else "") if names else "nothing"


def split_genres(text: str) -> list[str]:
    return list(dict.fromkeys(g.strip() for g in (text or "").split(",") if g.strip()))


def truncate_review(text: str, max_chars: int = MAX_CHARS) -> str:
    """Cut ``text`` at about ``max_chars``, dropping the incomplete sentence at the end (as the paper does)."""
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    ends = [m.end() for m in _SENTENCE_END.finditer(head)]
    if ends and ends[-1] >= max_chars // 3:
        return head[: ends[-1]].strip()
    cut = head.rsplit(" ", 1)[0] if " " in head else head  # one huge sentence: cut at a word boundary
    return cut.strip()


def read_taxonomy(path: Path) -> tuple[dict[str, list[list[str]]], dict[str, set[str]]]:
    """Per album its category branches (roots removed), and each genre's parents over all albums."""
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if isinstance(records, dict):
        records = list(records.values())
    branches, parents = {}, {}
    for rec in records:
        aid = str(rec.get("amazon_id") or rec.get("asin") or "").strip()
        cats = rec.get("categories") or []
        album = []
        for branch in cats:
            if isinstance(branch, str):
                branch = [b.strip() for b in branch.split("/")]
            nodes = [str(b).strip() for b in branch if str(b).strip() and str(b).strip() not in TAXONOMY_ROOTS]
            if not nodes:
                continue
            album.append(nodes)
            for parent, child in zip(nodes, nodes[1:]):
                parents.setdefault(child, set()).add(parent)
            parents.setdefault(nodes[0], set())
        if aid:
            branches[aid] = album
    return branches, parents


def expand(labels: list[str], branches: list[list[str]], parents: dict[str, set[str]]) -> list[str]:
    """The labels with their taxonomy ancestors (unambiguous parents only) and the album's own branches."""
    out = list(labels)
    for branch in branches:
        out += branch
    stack = list(out)
    while stack:
        label = stack.pop()
        up = parents.get(label, set())
        if len(up) == 1:
            parent = next(iter(up))
            if parent not in out:
                out.append(parent)
                stack.append(parent)
    return list(dict.fromkeys(out))


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def read_reviews(path: Path) -> dict[str, list[str]]:
    """Album id -> review texts in chronological order."""
    with _open_text(path) as fh:
        head = fh.read(1)
        fh.seek(0)
        if head == "[":
            records = json.load(fh)
        else:
            records = []
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise UsageError(f"{path}:{n}: expected one JSON review per line ({exc.msg})") from None
    by_album: dict[str, list[tuple[float, int, str]]] = {}
    for i, rec in enumerate(records):
        aid = str(rec.get("asin") or rec.get("amazon_id") or "").strip()
        text = rec.get("reviewText") or rec.get("text") or rec.get("review") or ""
        if aid and text.strip():
            by_album.setdefault(aid, []).append((float(rec.get("unixReviewTime") or 0), i, text))
    return {aid: [t for _, _, t in sorted(items)] for aid, items in by_album.items()}


def index_folder(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """Stem -> file of a folder (the preferred suffix first); empty when the folder does not exist."""
    if not folder.is_dir():
        return {}
    rank = {s: i for i, s in enumerate(suffixes)}
    files = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in rank), key=lambda p: (p.stem, rank[p.suffix.lower()]))
    out: dict[str, Path] = {}
    for p in files:
        out.setdefault(p.stem, p)
    return out


def list_tracks(
    root: Path | None,
    *,
    min_count: int | str = MIN_COUNT,
    max_chars: int | str = MAX_CHARS,
    require: str | tuple[str, ...] = (),
) -> Listing:
    root = require_root("mumu", root)
    labels_csv = root / LABELS_CSV
    if not labels_csv.is_file():
        raise UsageError(
            f"--root {root}: expected {LABELS_CSV} (MuMu release; with optional {METADATA_JSON}, a *review*.json, "
            f"images/<amazon_id>.jpg, audio/<MSD_track_id>.mp3); found {_found(root)}"
        )
    require = tuple(r.strip() for r in require.split(",") if r.strip()) if isinstance(require, str) else tuple(require)
    if bad := [r for r in require if r not in MODALITIES]:
        raise UsageError(f"require={','.join(require)}: expected a subset of {', '.join(MODALITIES)}, got {', '.join(bad)}")
    # Read through read_text_file like the other loaders' own CSVs: a Latin-1 export aborted with a
    # UnicodeDecodeError naming no file (an internal error); NUL bytes are one line naming the file.
    labels_text, labels_note = read_text_file(labels_csv)
    with io.StringIO(labels_text, newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        if missing := [c for c in COLUMNS if c not in header]:
            raise UsageError(
                f"{labels_csv}: expected comma-separated columns {', '.join(COLUMNS)}; missing {', '.join(missing)}; "
                f"found header {','.join(header)[:120]}"
            )
        albums: dict[str, dict] = {}
        for row in reader:
            aid = (row["amazon_id"] or "").strip()
            if not aid:
                continue
            album = albums.setdefault(aid, {"artist": (row["artist_mbid"] or "").strip(), "genres": [], "msd": []})
            album["genres"] += [g for g in split_genres(row["genres"]) if g not in album["genres"]]
            if (row["MSD_track_id"] or "").strip():
                album["msd"].append(row["MSD_track_id"].strip())
    notes = [labels_note] if labels_note else []
    branches, parents = {}, {}
    if (root / METADATA_JSON).is_file():
        branches, parents = read_taxonomy(root / METADATA_JSON)
    else:
        notes.append(f"no {METADATA_JSON}: genres used as listed, without taxonomy expansion")
    review_files = sorted(p for p in root.iterdir() if p.is_file() and "review" in p.name.lower() and p.name.lower().endswith((".json", ".jsonl", ".json.gz")))
    if len(review_files) > 1:
        raise UsageError(f"--root {root}: expected one reviews JSON file, found {', '.join(p.name for p in review_files)}")
    reviews_path = review_files[0] if review_files else None
    reviews = read_reviews(reviews_path) if reviews_path else {}
    if reviews_path is None:
        notes.append("no reviews file (*review*.json): albums have no text")
    audio_index = index_folder(root / "audio", AUDIO_SUFFIXES)
    image_index = index_folder(root / "images", IMAGE_SUFFIXES)
    skipped, failed, candidates = {}, {}, []
    for aid, album in albums.items():
        labels = expand(album["genres"], branches.get(aid, []), parents)
        audio = next((audio_index[m] for m in album["msd"] if m in audio_index), None)
        image = image_index.get(aid)
        texts = reviews.get(aid, [])
        text = truncate_review(" ".join(texts), int(max_chars)) if texts else None
        if text and (problem := inline_text_problem(text)):  # one album's defect, not the ingest's
            failed[aid] = f"{reviews_path}: review text of {aid}: {problem}; the album is kept without text"
            text = None
        have = {"audio": audio is not None, "image": image is not None, "text": bool(text)}
        if lacking := [m for m in require if not have[m]]:
            skipped[aid] = f"no {', '.join(lacking)} (required)"
        elif not any(have.values()):
            skipped[aid] = "no audio, cover image or review"
        elif not album["artist"]:
            skipped[aid] = "no artist_mbid"
        elif not labels:
            skipped[aid] = "no genres"
        else:
            candidates.append((aid, album["artist"], labels, audio, image, text))
    counts: dict[str, int] = {}
    for _, _, labels, *_ in candidates:
        for g in labels:
            counts[g] = counts.get(g, 0) + 1
    kept = {g for g, c in counts.items() if c >= int(min_count)}
    tracks = []
    for aid, artist, labels, audio, image, text in candidates:
        labels = tuple(g for g in labels if g in kept)
        if not labels:
            skipped[aid] = f"no genre on at least {min_count} albums"
            continue
        tracks.append(
            Track(
                id=aid, labels=labels, groups={"artist": artist},
                audio=str(audio.resolve()) if audio else None, image=str(image.resolve()) if image else None,
                score=str(reviews_path.resolve()) if text else None, score_format="text" if text else None,
                score_text=text, checksum=store.track_checksum(audio=audio, image=image, score_text=text),
            )
        )
    notes.append(
        f"MuMu: {len(albums)} albums, {len(tracks)} kept; {len(kept)} of {len(counts)} genres on at least {min_count} albums; "
        f"{sum(t.audio is not None for t in tracks)} with audio, {sum(t.image is not None for t in tracks)} with a cover, "
        f"{sum(t.score_text is not None for t in tracks)} with reviews"
    )
    return Listing(tracks, skipped, failed=failed, notes=notes)


register(
    DatasetSpec(
        name="mumu",
        description="MuMu: albums with multi-label Amazon genres (taxonomy-expanded), reviews, covers, audio; artist-disjoint 80/10/10",
        layout=f"{LABELS_CSV}, optional {METADATA_JSON}, *review*.json, images/<amazon_id>.jpg, audio/<MSD_track_id>.mp3",
        standard_split="group:artist:0.8:0.1",
        needs_root=True,
        list_tracks=list_tracks,
    )
)
