"""``4mula``: the 4MuLA parquet release (da Silva et al., WebMedia 2020): mel spectrograms + lyrics.

Layout under ``--root`` (a folder, or the parquet file itself), confirmed from the release's README
(github.com/4mulaDataset/4mula) and the mirdata loader:

* ``4mula_tiny.parquet``  (1,988 songs, 93 artists, 27 genres; Zenodo 4585498);
* ``4mula_small.parquet`` (9,661 songs, 491 artists, 51 genres; Zenodo 4636802);
* full: ``melspectrogram_part_<k>.parquet`` (the per-feature parts "with metadata" of 4MuLA Large).

Columns: ``music_id, music_name, music_lang, music_lyrics, art_id, art_name, art_rank, main_genre,
related_genre, related_art, related_music, musicnn_tags, melspectrogram``. The first README spells two
of them ``music_lyric`` and ``musicnn``; both spellings are accepted. A ``melspectrogram`` cell is a
list of 128 mel bands, each a list of frame values (the release's own code does
``np.concatenate(m).reshape(128, -1)`` and pads to 1292 frames); a flat list of ``n_mels * frames``
values is accepted too.

Labels: ``main_genre`` (the artist's main genre on Vagalume). Groups: ``artist`` (``art_id``). Lyrics
are kept inline (``score_format='lyrics'``) and the mel spectrograms are stored as the precomputed
feature ``audio/melspectrogram`` (n, 128, frames), zero-padded or cut to ``frames`` (default: the
longest in the file, at most 1292 = 30 s at 22,050 Hz, hop 512). Options:

* ``variant``: ``tiny``, ``small`` or ``full`` (default: the one present; small, then tiny, then full when
  several are);
* ``genres``: comma-separated ``main_genre`` values to keep, or ``dm2kmn`` for the five genres of the
  DM2KMN paper (Rock, Indie, Pop, Hip Hop, Heavy Metal: 5,980 tracks of the small set);
* ``min_count`` (2): genres with fewer tracks are dropped;
* ``mel``: ``full`` (default), ``stats`` (mean and std over time, 2 x 128; what fits in memory for the
  full variant) or ``none``;
* ``frames``: the number of frames kept with ``mel=full``.

Standard split: the paper's random 8:1:1 (``random:0.8:0.1``). Tracks without lyrics or without a mel
spectrogram are skipped with the reason; a repeated ``music_id`` keeps its first row.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from genrecli import store
from genrecli.datasets import DatasetSpec, Listing, inline_text_problem, register, require_root
from genrecli.errors import UsageError
from genrecli.manifest import Track

VARIANTS = {"tiny": "4mula_tiny.parquet", "small": "4mula_small.parquet", "full": "melspectrogram_part_*.parquet"}
PREFERENCE = ("small", "tiny", "full")
DM2KMN_GENRES = ("Rock", "Indie", "Pop", "Hip Hop", "Heavy Metal")
ALIASES = {"lyrics": ("music_lyrics", "music_lyric"), "artist": ("art_id", "art_name")}
REQUIRED = ("music_id", "lyrics", "artist", "main_genre", "melspectrogram")
N_MELS = 128
MAX_FRAMES = 1292


def _found(path: Path) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir() if not p.name.startswith("."))
    return ", ".join(names[:8]) + (f" (+{len(names) - 8} more)" if len(names) > 8 else "") if names else "nothing"


def _pyarrow():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError("dataset '4mula' reads parquet files: install pyarrow (pip install pyarrow)") from None
    return pq


def parquet_files(root: Path | None, variant: str | None) -> tuple[str, list[Path]]:
    """The variant and its parquet files under ``root`` (or ``root`` itself when it is a file)."""
    if root is not None and Path(root).is_file():
        path = Path(root)
        if path.suffix != ".parquet":
            raise UsageError(f"--root {path}: expected a 4MuLA .parquet file or the folder holding it")
        guess = next((v for v, pat in VARIANTS.items() if path.match(pat)), "file")
        return guess, [path]
    root = require_root("4mula", root)
    present = {v: sorted(root.glob(pat)) for v, pat in VARIANTS.items()}
    present = {v: files for v, files in present.items() if files}
    expected = ", ".join(VARIANTS.values())
    if variant is not None:
        if variant not in VARIANTS:
            raise UsageError(f"variant={variant}: expected one of {', '.join(VARIANTS)}")
        if variant not in present:
            raise UsageError(f"--root {root}: expected {VARIANTS[variant]} for variant={variant}; found {_found(root)}")
        return variant, present[variant]
    if not present:
        raise UsageError(f"--root {root}: expected one of {expected} (the 4MuLA parquet release); found {_found(root)}")
    chosen = next(v for v in PREFERENCE if v in present)
    return chosen, present[chosen]


def _columns(pq, path: Path) -> dict[str, str]:
    names = pq.ParquetFile(path).schema_arrow.names
    out = {}
    for key in REQUIRED:
        candidates = ALIASES.get(key, (key,))
        hit = next((c for c in candidates if c in names), None)
        if hit is not None:
            out[key] = hit
    missing = [" or ".join(ALIASES.get(k, (k,))) for k in REQUIRED if k not in out]
    if missing:
        raise UsageError(
            f"{path}: expected the 4MuLA columns music_id, music_lyrics, art_id, main_genre, melspectrogram; "
            f"missing {', '.join(missing)}; found {', '.join(names)}"
        )
    return out


def _mel_rows(array, n_mels: int) -> list[np.ndarray | None]:
    """Decode one batch of the ``melspectrogram`` column into (n_mels, frames) float32 arrays."""
    import pyarrow as pa

    if isinstance(array, pa.ChunkedArray):
        array = pa.concat_arrays(array.chunks) if array.num_chunks else pa.array([], type=array.type)
    out: list[np.ndarray | None] = []
    if not (pa.types.is_list(array.type) or pa.types.is_large_list(array.type)):
        raise UsageError(f"melspectrogram: expected a list column of mel bands, found type {array.type}")
    outer = array.offsets.to_numpy()
    valid = array.is_valid().to_numpy(zero_copy_only=False)
    child = array.values
    nested = pa.types.is_list(child.type) or pa.types.is_large_list(child.type)
    if nested:
        inner = child.offsets.to_numpy()
        flat = child.values.cast(pa.float32()).to_numpy(zero_copy_only=False)
    else:
        flat = child.cast(pa.float32()).to_numpy(zero_copy_only=False)
    for i in range(len(array)):
        if not valid[i] or outer[i + 1] == outer[i]:
            out.append(None)
            continue
        if nested:
            b0, b1 = outer[i], outer[i + 1]
            lengths = np.diff(inner[b0 : b1 + 1])
            if len(set(lengths.tolist())) != 1 or lengths[0] == 0:
                out.append(None)
                continue
            out.append(flat[inner[b0] : inner[b1]].reshape(b1 - b0, int(lengths[0])))
        else:
            values = flat[outer[i] : outer[i + 1]]
            out.append(values.reshape(n_mels, -1) if len(values) % n_mels == 0 else None)
    return out


def _pool(mel: np.ndarray, mode: str, frames: int) -> np.ndarray:
    if mode == "stats":
        return np.stack([mel.mean(axis=1), mel.std(axis=1)])
    out = np.zeros((mel.shape[0], frames), dtype=np.float32)
    out[:, : min(frames, mel.shape[1])] = mel[:, :frames]
    return out


def list_tracks(
    root: Path | None,
    *,
    variant: str | None = None,
    genres: str | list[str] | tuple[str, ...] | None = None,
    min_count: int | str = 2,
    mel: str = "full",
    frames: int | str | None = None,
    n_mels: int | str = N_MELS,
) -> Listing:
    pq = _pyarrow()
    variant, files = parquet_files(root, variant)
    if mel not in ("full", "stats", "none"):
        raise UsageError(f"mel={mel}: expected full, stats or none")
    min_count, n_mels = int(min_count), int(n_mels)
    if isinstance(genres, str):
        genres = DM2KMN_GENRES if genres.lower() == "dm2kmn" else tuple(g.strip() for g in genres.split(",") if g.strip())
    keep_genres = {g.casefold() for g in genres} if genres else None
    rows, mels, skipped, failed, seen = [], [], {}, {}, set()
    for path in files:
        cols = _columns(pq, path)
        pf = pq.ParquetFile(path)
        wanted = [cols[k] for k in ("music_id", "lyrics", "artist", "main_genre")] + ([cols["melspectrogram"]] if mel != "none" else [])
        for batch in pf.iter_batches(columns=wanted, batch_size=256):
            data = {k: batch.column(batch.schema.get_field_index(cols[k])) for k in ("music_id", "lyrics", "artist", "main_genre")}
            ids, lyrics, artists, labels = (data[k].to_pylist() for k in ("music_id", "lyrics", "artist", "main_genre"))
            batch_mels = _mel_rows(batch.column(batch.schema.get_field_index(cols["melspectrogram"])), n_mels) if mel != "none" else [None] * len(ids)
            for mid, text, artist, label, m in zip(ids, lyrics, artists, labels, batch_mels):
                mid = str(mid or "").strip()
                where = f"{path.name}:{mid or '?'}"
                if not mid:
                    skipped[where] = "no music_id"
                elif mid in seen:
                    skipped[where] = "repeated music_id (first row kept)"
                elif not label:
                    skipped[where] = "no main_genre"
                elif keep_genres is not None and str(label).casefold() not in keep_genres:
                    continue
                elif not (text or "").strip():
                    skipped[where] = "no lyrics"
                elif problem := inline_text_problem(str(text)):  # NUL / lone surrogate: this row fails, not ingest
                    failed[where] = f"music_lyrics: {problem}"
                elif mel != "none" and m is None:
                    skipped[where] = "no usable melspectrogram (expected 128 bands of equal length)"
                else:
                    seen.add(mid)
                    digest = hashlib.sha256(np.ascontiguousarray(m).tobytes()).hexdigest() if m is not None else ""
                    rows.append((mid, str(text), str(artist or f"?{mid}"), str(label).strip(), path, digest))
                    # keep a copy (not a view of the whole batch); pool at once when only statistics are kept
                    mels.append(None if m is None else (_pool(m, "stats", 0) if mel == "stats" else m.copy()))
    counts: dict[str, int] = {}
    for r in rows:
        counts[r[3]] = counts.get(r[3], 0) + 1
    rare = {g for g, c in counts.items() if c < min_count}
    notes = [f"4MuLA {variant}: {len(files)} parquet file(s), {len(rows)} tracks with lyrics and mel spectrogram"]
    if keep_genres is not None:
        missing = sorted(g for g in (genres or ()) if g.casefold() not in {c.casefold() for c in counts})
        notes.append(f"kept genres {', '.join(genres)}" + (f" (absent: {', '.join(missing)})" if missing else ""))
    if rare:
        notes.append(f"dropped genres with fewer than {min_count} tracks: {', '.join(sorted(rare))}")
    tracks, kept_mels = [], []
    for (mid, text, artist, label, path, mel_digest), m in zip(rows, mels):
        if label in rare:
            skipped[f"{path.name}:{mid}"] = f"genre '{label}' has {counts[label]} tracks (< {min_count})"
            continue
        tracks.append(
            Track(
                id=mid, label=label, groups={"artist": artist}, score=str(path.resolve()), score_format="lyrics",
                score_text=text, checksum=store.text_sha256(f"{mid}\n{text}\n{mel_digest}"),
            )
        )
        kept_mels.append(m)
    features = {}
    if mel != "none" and tracks:
        n_bands = kept_mels[0].shape[-1 if mel == "stats" else 0]
        if any(m.shape[-1 if mel == "stats" else 0] != n_bands for m in kept_mels):
            raise UsageError(f"4MuLA {variant}: mel spectrograms with different numbers of bands")
        if mel == "stats":
            n_frames = 0
            data = np.stack(kept_mels).astype(np.float32)
        else:
            n_frames = int(frames) if frames else min(MAX_FRAMES, max(m.shape[1] for m in kept_mels))
            data = np.zeros((len(kept_mels), n_bands, n_frames), dtype=np.float32)
            for i, m in enumerate(kept_mels):
                data[i] = _pool(m, "full", n_frames)
        params = {"source": f"4MuLA {variant} parquet melspectrogram", "n_mels": n_bands,
                  "frames": n_frames if mel == "full" else None, "pool": mel}
        features["audio/melspectrogram" if mel == "full" else "audio/melspectrogram-stats"] = (data, params)
    return Listing(tracks, skipped, failed=failed, notes=notes, features=features)


register(
    DatasetSpec(
        name="4mula",
        description="4MuLA parquet release (tiny/small/full): mel spectrograms + lyrics, artist main genre; 8:1:1",
        layout="4mula_tiny.parquet | 4mula_small.parquet | melspectrogram_part_<k>.parquet (columns music_id, music_lyrics, art_id, main_genre, melspectrogram)",
        standard_split="random:0.8:0.1",
        needs_root=True,
        list_tracks=list_tracks,
    )
)
