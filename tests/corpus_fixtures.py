"""Tiny corpora generated in code with each loader's documented layout (names, columns, encodings).

Each ``make_<name>(root)`` writes a fixture under ``root`` and returns the path to give as ``--root``.
``FIXTURE_OPTIONS`` holds the loader options a fixture needs (thresholds scaled down to its size).
Audio is a short sine (WAV, AU or MP3 written with soundfile), images are tiny PNGs, parquet is written
with pyarrow.
"""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np

from conftest import write_kern

SR = 8000


def write_audio(path: Path, *, seconds: float = 0.05, freq: float = 440.0, fmt: str | None = None) -> Path:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SR)) / SR
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), SR, format=fmt or path.suffix[1:].upper())
    return path


def write_png(path: Path, seed: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    plt.imsave(path, np.random.default_rng(seed).random((4, 4, 3)))
    return path


# ----------------------------------------------------------------------------------------- existing sets
def make_piano(root: Path) -> Path:
    for era, composers in {"Baroque": ["Bach", "Handel"], "Classical": ["Mozart", "Haydn"], "Romantic": ["Chopin", "Liszt"]}.items():
        for c in composers:
            for i in range(3):
                write_kern(root / era / f"{c.lower()}__piece{i}-1.krn", composer=c, n=i)
    return root


def make_folder(root: Path) -> Path:
    for label in ("calm", "loud"):
        for i in range(4):
            write_audio(root / label / f"t{i}.wav")
            (root / label / f"t{i}.txt").write_text(f"lyrics of {label} song {i}\n")
    return root


# ---------------------------------------------------------------------------------------------- GTZAN
GTZAN_GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock")


def make_gtzan(root: Path, per_genre: int = 5, suffix: str = ".au") -> Path:
    """``genres/<genre>/<genre>.000NN.au`` (the original tarball) plus the corrupt ``jazz.00054``."""
    for g, genre in enumerate(GTZAN_GENRES):
        for i in range(per_genre):
            write_audio(root / "genres" / genre / f"{genre}.{i:05d}{suffix}", freq=200 + 40 * g + i)
    write_audio(root / "genres" / "jazz" / f"jazz.00054{suffix}")
    return root


def write_gtzan_index(root: Path, per_genre: int = 5) -> Path:
    """Sturm's index format: ``<file> ::: <artist> ::: <title>``; the last clip of each genre is unknown."""
    lines = ["# GTZAN index (fixture)"]
    for genre in GTZAN_GENRES:
        for i in range(per_genre):
            artist = "" if i == per_genre - 1 else f"{genre} artist {i % 2}"
            lines.append(f"{genre}.{i:05d}.wav ::: {artist} ::: song {i}")
    (root / "index.txt").write_text("\n".join(lines) + "\n")
    return root / "index.txt"


def write_kereliuk_lists(directory: Path, per_genre: int = 5) -> dict[str, list[str]]:
    """Lists in the published format (``<genre>/<genre>.000NN.wav``), by clip number: 0-2 train, 3 valid, 4 test."""
    directory.mkdir(parents=True, exist_ok=True)
    parts = {"train": [], "valid": [], "test": []}
    for genre in GTZAN_GENRES:
        for i in range(per_genre):
            part = "train" if i < per_genre - 2 else ("valid" if i == per_genre - 2 else "test")
            parts[part].append(f"{genre}/{genre}.{i:05d}.wav")
    for part, lines in parts.items():
        (directory / f"{part}.txt").write_text("\n".join(lines) + "\n")
    return parts


# ---------------------------------------------------------------------------------------------- 4MuLA
def write_4mula_parquet(path: Path, rows: list[dict], *, nested: bool = True) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = ["music_id", "music_name", "music_lang", "music_lyrics", "art_id", "art_name", "art_rank",
            "main_genre", "related_genre", "related_art", "related_music", "musicnn_tags", "melspectrogram"]
    data = {c: [r.get(c) for r in rows] for c in cols}
    types = {c: pa.string() for c in cols}
    types["art_rank"] = pa.int64()
    types["related_genre"] = pa.list_(pa.string())
    types["musicnn_tags"] = pa.list_(pa.string())
    types["related_art"] = pa.list_(pa.struct([("id", pa.string()), ("name", pa.string())]))
    types["related_music"] = pa.list_(pa.struct([("id", pa.string()), ("name", pa.string())]))
    types["melspectrogram"] = pa.list_(pa.list_(pa.float64())) if nested else pa.list_(pa.float64())
    table = pa.table({c: pa.array(data[c], type=types[c]) for c in cols})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def fourmula_rows(genres=("Rock", "Pop", "Hip Hop"), per_genre: int = 10, seed: int = 0, n_mels: int = 128) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for g, genre in enumerate(genres):
        for i in range(per_genre):
            frames = 10 + (i % 4)
            mel = (rng.random((n_mels, frames)) + g).tolist()
            art = f"3ade68b{g}g{i % 3:04d}eda3"
            rows.append({
                "music_id": f"3ade68b{g}g{i:05d}fa3", "music_name": f"Song {g}-{i}", "music_lang": "en" if i % 3 else "pt-br",
                "music_lyrics": f"line one of {genre} song {i}\nline two\n", "art_id": art, "art_name": f"Artist {g}{i % 3}",
                "art_rank": 10 * g + i % 3, "main_genre": genre, "related_genre": [genre, "Pop/Rock"],
                "related_art": [{"id": "x", "name": "Other"}], "related_music": [], "musicnn_tags": ["rock", "guitar", "drums"],
                "melspectrogram": mel,
            })
    # rows the loader must skip: no lyrics, no mel spectrogram, a repeated id, a one-track genre
    rows.append({**rows[0], "music_id": "nolyrics", "music_lyrics": ""})
    rows.append({**rows[1], "music_id": "nomel", "melspectrogram": None})
    rows.append(dict(rows[2]))
    rows.append({**rows[3], "music_id": "raregenre", "main_genre": "Polka"})
    return rows


def make_4mula(root: Path, variant: str = "small") -> Path:
    name = {"tiny": "4mula_tiny.parquet", "small": "4mula_small.parquet", "full": "melspectrogram_part_1.parquet"}[variant]
    write_4mula_parquet(root / name, fourmula_rows())
    return root


# ------------------------------------------------------------------------------------------ Music4All
M4A_GENRES = ("rock", "pop", "indie rock")


def make_music4all(root: Path, n: int = 40) -> Path:
    """The Music4All release: tab-separated id_*.csv files, audios/<id>.mp3, lyrics/<id>.txt."""
    (root / "audios").mkdir(parents=True, exist_ok=True)
    (root / "lyrics").mkdir(parents=True, exist_ok=True)
    info, genres, langs, meta = [], [], [], []
    ids = [f"{i:04d}{'ABCDEFGHIJKL'[i % 12]}xYz{i:07d}" for i in range(n + 6)]
    for i, tid in enumerate(ids):
        g = [M4A_GENRES[i % 3]] + ([M4A_GENRES[(i + 1) % 3]] if i % 4 == 0 else [])
        info.append((tid, f"Artist {i % 9}", f"Song {i}", f"Album {i % 5}"))
        genres.append((tid, ",".join(g)))
        langs.append((tid, "en"))
        meta.append((tid, f"spotify{i}", "55", "2001", "0.5"))
        write_audio(root / "audios" / f"{tid}.mp3", freq=300 + 10 * i)
        (root / "lyrics" / f"{tid}.txt").write_text(f"verse {i}\nchorus of {g[0]}\n", encoding="utf-8")
    bad = ids[n:]
    langs[n] = (bad[0], "pt")  # non-English lyrics
    (root / "lyrics" / f"{bad[1]}.txt").unlink()  # lyrics missing
    (root / "lyrics" / f"{bad[2]}.txt").write_text("  \n")  # lyrics empty
    (root / "audios" / f"{bad[3]}.mp3").unlink()  # audio missing
    genres[n + 4] = (bad[4], "")  # no genres
    genres[n + 5] = (bad[5], "polka")  # a genre below min_count only

    def tsv(name, header, rows):
        with open(root / name, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh, delimiter="\t", lineterminator="\n")
            w.writerow(header)
            w.writerows(rows)

    tsv("id_information.csv", ("id", "artist", "song", "album_name"), info)
    tsv("id_genres.csv", ("id", "genres"), genres)
    tsv("id_lang.csv", ("id", "lang"), langs)
    tsv("id_metadata.csv", ("id", "spotify_id", "popularity", "release", "danceability"), meta)
    return root


# ----------------------------------------------------------------------------------------------- MuMu
MUMU_BRANCHES = (
    ["CDs & Vinyl", "Pop", "Oldies", "Traditional Pop"],
    ["CDs & Vinyl", "Jazz", "Vocal Jazz"],
    ["CDs & Vinyl", "Rock", "Hard Rock"],
    ["CDs & Vinyl", "Pop", "Vocal Pop"],
)
LONG_REVIEW = " ".join(f"Sentence number {k} of a very long review praises the album." for k in range(60))


def make_mumu(root: Path, n_artists: int = 16, albums_per_artist: int = 2) -> Path:
    """MuMu_dataset_multi-label.csv, amazon_metadata_MuMu.json, a reviews JSON, images/, audio/."""
    root.mkdir(parents=True, exist_ok=True)
    rows, meta, reviews = [], [], []
    k = 0
    for a in range(n_artists):
        for b in range(albums_per_artist):
            aid = f"B00{k:07d}"
            branches = [MUMU_BRANCHES[k % 4]] + ([MUMU_BRANCHES[(k + 1) % 4]] if k % 3 == 0 else [])
            leaves = [br[-1] for br in branches]  # the CSV lists leaves; the taxonomy adds their ancestors
            for t in range(2):
                msd = f"TR{k:06d}{t}ABCDEFG"
                rows.append((aid, f"mb-album-{k}", msd, f"rg-{k}", f"artist-mbid-{a}", ",".join(leaves)))
                if k % 5 != 4 and t == 1:  # one album in five has no audio; the second track has it
                    write_audio(root / "audio" / f"{msd}.mp3", freq=220 + 5 * k)
            meta.append({"amazon_id": aid, "categories": branches, "imUrl": f"http://example.org/{aid}.jpg", "title": f"Album {k}"})
            if k % 4 != 3:
                write_png(root / "images" / f"{aid}.png", k)
            texts = [(200 + k, f"Later review of album {k}."), (100 + k, f"Earlier review of album {k}.")]
            if k == 0:
                texts.append((300, LONG_REVIEW))
            for when, text in texts:
                reviews.append({"reviewerID": f"R{k}{when}", "asin": aid, "reviewText": text, "overall": 4.0,
                                "summary": "ok", "unixReviewTime": when, "reviewTime": "01 1, 2010"})
            k += 1
    with open(root / "MuMu_dataset_multi-label.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(("amazon_id", "album_mbid", "MSD_track_id", "release_group_mbid", "artist_mbid", "genres"))
        w.writerows(rows)
    (root / "amazon_metadata_MuMu.json").write_text(json.dumps(meta), encoding="utf-8")
    with gzip.open(root / "amazon_reviews_MuMu.json.gz", "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in reviews)
    return root


# ------------------------------------------------------------------------------------------- ISMIR 2004
ISMIR_CLASSES = ("classical", "electronic", "jazz_blues", "metal_punk", "rock_pop", "world")


def make_ismir2004(root: Path, per_class: int = 3) -> Path:
    """audio/{training,development}/<class>/<artist>/<album>/NN-track.mp3 + metadata/<subset>/tracklist.csv."""
    for s, subset in enumerate(("training", "development")):
        lines = []
        for c, cls in enumerate(ISMIR_CLASSES):
            for i in range(per_class):
                artist = f"artist_{cls}_{i % 2}" if subset == "training" else f"anon{c}{i}"
                rel = f"{cls}/{artist}/album_{i}/0{i + 1}-track_{i}.mp3"
                write_audio(root / "audio" / subset / rel, freq=250 + 30 * c + 7 * i + s)
                lines.append([cls, artist, f"album_{i}", f"track_{i}", str(i + 1), f"./{rel}"])
        path = root / "metadata" / subset / "tracklist.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh, quoting=csv.QUOTE_ALL)
            if subset == "training":
                w.writerow(["class", "artist", "album", "track", "track number", "file path"])
            w.writerows(lines)
    return root


# --------------------------------------------------------------------------------------------- Ballroom
BALLROOM_FOLDERS = ("ChaChaCha", "Jive", "Quickstep", "Rumba-American", "Rumba-International", "Rumba-Misc", "Samba", "Tango", "VienneseWaltz", "Waltz")
EXTENDED_FOLDERS = ("Chacha", "Foxtrot", "Jive", "Pasodoble", "Quickstep", "Rumba", "Salsa", "Samba", "Slowwaltz", "Tango", "Viennesewaltz", "Waltz", "Wcswing")


def make_ballroom(root: Path, per_dance: int = 10) -> Path:
    base = root / "BallroomData"
    for d, dance in enumerate(BALLROOM_FOLDERS):
        n = 4 if dance.startswith("Rumba") else per_dance
        for i in range(n):
            name = f"Albums-Latin_Jam{d}-{i:02d}.wav" if i % 2 else f"Media-10{d:02d}{i:02d}.wav"
            write_audio(base / dance / name, freq=300 + 20 * d + i)
    (base / "nada").mkdir(parents=True, exist_ok=True)  # a folder without audio is ignored
    return root


def make_extended_ballroom(root: Path, per_genre: int = 10) -> Path:
    base = root / "extendedballroom_v1.1"
    xml = ['<?xml version="1.0" encoding="UTF-8"?>', "<extendedballroom>"]
    for g, genre in enumerate(EXTENDED_FOLDERS):
        xml.append(f"  <{genre}>")
        for i in range(per_genre):
            sid = f"1{g:02d}{i:03d}"
            write_audio(base / genre / f"{sid}.mp3", freq=300 + 15 * g + i)
            extra = f' exact="1{g:02d}000"' if i == 1 else ""
            xml.append(f'    <song id="{sid}" artist="Artist {g}-{i % 3}" album="Album {g}" title="T{i}" bpm="{100 + i}" hash="0"{extra}/>')
        xml.append(f"  </{genre}>")
    xml.append("</extendedballroom>")
    (base / "extendedballroom_v1.1.xml").write_text("\n".join(xml) + "\n", encoding="utf-8")
    return root


# ------------------------------------------------------------------------------------------------ table
def table_data(n_per_class: int = 8, d: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(["calm", "loud", "odd"], n_per_class)
    X = rng.normal(size=(len(labels), d)) + 3.0 * np.repeat(np.eye(3, d), n_per_class, axis=0)
    ids = np.array([f"item{i:03d}" for i in range(len(labels))])
    artists = np.array([f"artist{i % 6}" for i in range(len(labels))])
    split = np.array(["test" if i % 4 == 3 else ("valid" if i % 8 == 2 else "train") for i in range(len(labels))])
    return X, labels, ids, artists, split


def make_table(root: Path, fmt: str = "csv") -> Path:
    X, labels, ids, artists, split = table_data()
    root.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        path = root / "features.csv"
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "artist", "label", "split", *[f"mfcc{j}" for j in range(X.shape[1])]])
            for i in range(len(X)):
                w.writerow([ids[i], artists[i], labels[i], split[i], *[f"{v:.6f}" for v in X[i]]])
    elif fmt == "npz":
        path = root / "features.npz"
        np.savez(path, X=X, y=labels, id=ids, artist=artists, split=split)
    else:
        import h5py

        path = root / "features.h5"
        with h5py.File(path, "w") as h5:
            h5["X"] = X
            for key, values in (("y", labels), ("id", ids), ("artist", artists), ("split", split)):
                h5.create_dataset(key, data=values.astype(object), dtype=h5py.string_dtype("utf-8"))
    return path


# ----------------------------------------------------------------------------------------------- sweep
FIXTURES = {
    "piano": make_piano,
    "gtzan": make_gtzan,
    "folder": make_folder,
    "folk-dances": None,
    "4mula": make_4mula,
    "music4all": make_music4all,
    "mumu": make_mumu,
    "ismir2004": make_ismir2004,
    "ballroom": make_ballroom,
    "extended-ballroom": make_extended_ballroom,
    "table": make_table,
}
FIXTURE_OPTIONS = {
    "music4all": {"min_count": 3},
    "mumu": {"min_count": 3},
}


def vector_table(path: Path, n: int = 240, seed: int = 0) -> Path:
    """An NPZ table for ``genre ingest table``: n rows of 12 features, three classes (jig / reel / waltz)
    separated along the first two columns."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    X = rng.normal(size=(n, 12)).astype(np.float32)
    X[:, 0] += 2.5 * y
    X[:, 1] -= 2.0 * (y == 1)
    np.savez(path, X=X, y=np.array(["jig", "reel", "waltz"])[y])
    return path
