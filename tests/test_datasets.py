"""Every registered loader on a fixture with its documented layout, plus wrong layouts, splits and validate."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import KERN_ERAS
from corpus_fixtures import (
    FIXTURE_OPTIONS,
    FIXTURES,
    LONG_REVIEW,
    fourmula_rows,
    make_4mula,
    make_extended_ballroom,
    make_gtzan,
    make_ismir2004,
    make_mumu,
    make_music4all,
    make_table,
    table_data,
    write_4mula_parquet,
    write_audio,
    write_gtzan_index,
    write_kereliuk_lists,
)
from genrecli.catalog import dataset_info
from genrecli.datasets import DATASETS, get_dataset
from genrecli.datasets.gtzan import GENRES
from genrecli.datasets.mumu import expand, read_taxonomy, truncate_review
from genrecli.errors import UsageError
from genrecli.layout import DatasetPaths
from genrecli.manifest import TEST, TRAIN, UNUSED, VALID, read_manifest
from genrecli.pipeline.features import read_feature
from genrecli.pipeline.ingest import ingest
from genrecli.pipeline.validate import ROOT_ITEM, track_files, validate
from genrecli.splits import train_test_indices

def sweep_spec(name: str) -> str:
    return get_dataset(name).standard_split


# --------------------------------------------------------------------------------------------- invariants
def check_split(spec: str, manifest, assignment: np.ndarray) -> None:
    """No track in two parts, groups disjoint where promised, stratified within +-1 per class."""
    n = len(manifest)
    assert assignment.shape[1] == n and set(np.unique(assignment)) <= {TRAIN, VALID, TEST, UNUSED}
    parts = spec.split(":")
    kind = parts[0]
    for fold in range(assignment.shape[0]):
        tr, te = train_test_indices(assignment, fold)
        assert len(tr) and len(te) and not set(tr) & set(te)
        assert len(set(manifest.ids)) == n
        if kind in ("group", "groupkfold"):
            g = manifest.group_values(parts[1])
            sets = [set(g[assignment[fold] == code]) for code in (TRAIN, VALID, TEST)]
            assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    if manifest.multilabel:
        return
    y = manifest.y
    if kind == "random":
        frac, valid = float(parts[1]), float(parts[2]) if len(parts) > 2 else 0.0
        for c in np.unique(y):
            n_c = int((y == c).sum())
            assert abs(int(((assignment[0] == TEST) & (y == c)).sum()) - (1 - frac) * n_c) <= 1
            assert abs(int(((assignment[0] == VALID) & (y == c)).sum()) - valid * n_c) <= 1
    if kind == "kfold":
        k = int(parts[1])
        assert assignment.shape[0] == k
        for fold in range(k):
            for c in np.unique(y):
                n_c = int((y == c).sum())
                assert abs(int(((assignment[fold] == TEST) & (y == c)).sum()) - n_c / k) <= 1


def corrupt(path: str) -> None:
    with open(path, "ab") as fh:
        fh.write(b"\x00corrupted")


# ----------------------------------------------------------------------------------------------- sweep
def test_every_loader_has_a_fixture():
    assert set(DATASETS) == set(FIXTURES)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_loader_sweep(name, tmp_path, data_home):
    root = FIXTURES[name](tmp_path / "corpus") if FIXTURES[name] else None
    options = {k: str(v) for k, v in FIXTURE_OPTIONS.get(name, {}).items()}  # as `--option KEY=VALUE` gives them
    spec = sweep_spec(name)
    ingest(name, root=root, splits=(spec,), options=options)
    m = read_manifest(DatasetPaths.of(name).manifest)
    assert len(m) > 0 and len(set(m.ids)) == len(m)
    assert all(t.checksum and len(t.checksum) == 64 for t in m.tracks)
    assert set(m.label_names) == {label for t in m.tracks for label in (t.labels or (t.label,))}
    # info
    lines = dataset_info(name)
    assert lines[0].startswith(f"dataset {name}: {len(m)} tracks")
    assert any("split" in line for line in lines)
    # split invariants
    check_split(spec, m, m.splits[next(iter(m.splits))])
    # second ingest with unchanged inputs does no work
    assert ingest(name, root=root, splits=(spec,), options=options).up_to_date == ["manifest"]
    # validate: clean, then one file deleted and another corrupted
    assert validate(name).failures == {}
    if name == "folk-dances":
        return  # its files belong to the installed music21
    with_files = [t for t in m.tracks if track_files(t)]
    if with_files:
        a, b = with_files[0], with_files[-1]
        gone, changed = track_files(a)[0], track_files(b)[0]
        Path(gone).unlink()
        corrupt(changed)
        failures = validate(name).failures
        assert set(failures) == {a.id, b.id}
        assert failures[a.id].startswith(f"missing: {gone}")
        assert failures[b.id].startswith("changed: ") and changed in failures[b.id]
    else:
        source = Path(m.tracks[0].score) if m.tracks[0].score else Path(m.attrs["root"])
        source.unlink()
        failures = validate(name).failures
        if m.tracks[0].score:  # 4mula: every track's source parquet is gone
            assert set(failures) == set(m.ids) and all(v == f"missing: {source}" for v in failures.values())
        else:  # table: the table file given as --root is gone
            assert set(failures) == {ROOT_ITEM}
    assert any("[validate]" in line for line in dataset_info(name))


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_wrong_layout_says_what_was_expected(name, tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    (root / "stray.txt").write_text("x")
    with pytest.raises(UsageError, match="expected"):
        get_dataset(name).list_tracks(root)


def test_missing_root_and_unknown_dataset(tmp_path):
    with pytest.raises(UsageError, match="no such directory"):
        get_dataset("piano").list_tracks(tmp_path / "nope")
    with pytest.raises(UsageError, match="needs --root"):
        get_dataset("gtzan").list_tracks(None)
    with pytest.raises(UsageError, match="unknown dataset"):
        get_dataset("nope")


# ----------------------------------------------------------------------------------------------- validate
def test_validate_reports_unreadable_and_missing_root(tmp_path, data_home):
    root = make_gtzan(tmp_path / "g", per_genre=2)
    ingest("gtzan", root=root, splits=("random:0.5",))
    m = read_manifest(DatasetPaths.of("gtzan").manifest)
    victim = Path(m.tracks[0].audio)
    victim.unlink()
    victim.mkdir()  # a folder where the file was: it exists but cannot be read
    failures = validate("gtzan").failures
    assert list(failures) == [m.tracks[0].id] and failures[m.tracks[0].id].startswith(f"unreadable: {victim} (")
    shutil.rmtree(root)
    failures = validate("gtzan").failures
    assert failures[ROOT_ITEM].startswith("missing:") and len(failures) == len(m) + 1


def test_validate_piano_score_and_midi(tmp_path, data_home):
    """A piano track with a MIDI of the same stem is checksummed over both files, by the common rule."""
    from conftest import write_kern
    from genrecli import store

    root = tmp_path / "p"
    for era in ("Baroque", "Romantic"):
        for i in range(2):
            write_kern(root / era / f"x__p{i}.krn", n=i)
            (root / era / f"x__p{i}.mid").write_bytes(b"MThd-not-really-midi")  # any bytes will do for the checksum
    listing = get_dataset("piano").list_tracks(root)
    t = listing.tracks[0]
    assert t.midi and t.checksum == store.files_sha256(t.midi, t.score)
    from genrecli.pipeline.validate import check_track

    assert check_track(t) == []
    Path(t.midi).write_bytes(b"changed")
    assert check_track(t) and "changed" in check_track(t)[0]


# ---------------------------------------------------------------------------------------------- GTZAN
def test_gtzan_skips_known_corrupt_and_normalises(tmp_path, data_home):
    root = make_gtzan(tmp_path / "g")
    (root / "genres" / "hiphop").rename(root / "genres" / "Hip-Hop")
    listing = get_dataset("gtzan").list_tracks(root)
    assert "jazz.00054" not in [t.id for t in listing.tracks]
    assert any("known-corrupt" in r for r in listing.skipped.values())
    assert {t.label for t in listing.tracks} == set(GENRES)


def test_gtzan_kereliuk_lists_and_artist_index(tmp_path, data_home):
    root = make_gtzan(tmp_path / "g")  # .au files; the published lists name .wav files
    parts = write_kereliuk_lists(tmp_path / "kereliuk")
    write_gtzan_index(root)
    ingest("gtzan", root=root, splits=(f"file:{tmp_path / 'kereliuk'}", "group:artist:0.7", "kfold:5"))
    m = read_manifest(DatasetPaths.of("gtzan").manifest)
    a = m.splits["file-kereliuk"][0]
    for part, code in (("train", TRAIN), ("valid", VALID), ("test", TEST)):
        assert sorted(np.array(m.ids)[a == code]) == sorted(Path(e).stem for e in parts[part])
    assert m.tracks[0].groups["artist"] == "blues artist 0" and m.group_values("artist")[4] == "?blues.00004"
    check_split("group:artist:0.7", m, m.splits["group-artist-0.7"])
    check_split("kfold:5", m, m.splits["kfold-5"])


def test_gtzan_wrong_layout_and_bad_index(tmp_path):
    root = make_gtzan(tmp_path / "g", per_genre=1)
    shutil.rmtree(root / "genres" / "reggae")
    with pytest.raises(UsageError, match="expected the 10 GTZAN genre folders.*missing: reggae"):
        get_dataset("gtzan").list_tracks(root)
    root = make_gtzan(tmp_path / "h", per_genre=1)
    (root / "artists.csv").write_text("clip,who\nblues.00000,x\n")
    with pytest.raises(UsageError, match="expected an artist index with columns id,artist"):
        get_dataset("gtzan").list_tracks(root)


# ---------------------------------------------------------------------------------------------- 4MuLA
def test_4mula_variants_filters_and_features(tmp_path, data_home):
    root = make_4mula(tmp_path / "m", "small")
    write_4mula_parquet(root / "4mula_tiny.parquet", fourmula_rows(per_genre=4)[:12])
    spec = get_dataset("4mula")
    small = spec.list_tracks(root)
    assert small.notes[0].startswith("4MuLA small") and len(small.tracks) == 30
    reasons = set(small.skipped.values())
    assert {"no lyrics", "repeated music_id (first row kept)"} <= reasons
    assert any(r.startswith("no usable melspectrogram") for r in reasons) and any("Polka" in r for r in reasons)
    mel, params = small.features["audio/melspectrogram"]
    assert mel.shape == (30, 128, 13) and params["n_mels"] == 128 and mel.dtype == np.float32
    assert small.tracks[0].score_text.startswith("line one") and small.tracks[0].groups["artist"].startswith("3ade")
    assert len(spec.list_tracks(root, variant="tiny").tracks) == 12
    assert len(spec.list_tracks(root / "4mula_tiny.parquet").tracks) == 12
    assert {t.label for t in spec.list_tracks(root, genres="dm2kmn").tracks} == {"Rock", "Pop", "Hip Hop"}
    stats = spec.list_tracks(root, mel="stats").features["audio/melspectrogram-stats"][0]
    assert stats.shape == (30, 2, 128)
    with pytest.raises(UsageError, match="expected melspectrogram_part"):
        spec.list_tracks(root, variant="full")
    # the full variant: feature parts with metadata; a flat mel list is accepted too
    full = tmp_path / "full"
    write_4mula_parquet(full / "melspectrogram_part_1.parquet", fourmula_rows(per_genre=3))
    flat_rows = [{**r, "music_id": r["music_id"] + "b", "melspectrogram": np.ravel(r["melspectrogram"]).tolist() if r["melspectrogram"] else None}
                 for r in fourmula_rows(per_genre=3, seed=1)]
    write_4mula_parquet(full / "melspectrogram_part_2.parquet", flat_rows, nested=False)
    listing = spec.list_tracks(full)
    # 9 + 9 tracks, plus the two "Polka" rows (one per part: 2 tracks reach min_count=2)
    assert listing.notes[0].startswith("4MuLA full: 2 parquet") and len(listing.tracks) == 20
    # ingest writes the mel spectrograms into features.h5, rows in manifest order
    ingest("4mula", root=root, splits=("random:0.8:0.1",))
    X, valid, fparams = read_feature(DatasetPaths.of("4mula"), "audio/melspectrogram")
    assert X.shape == (30, 128, 13) and valid.all() and fparams["precomputed"] is True
    assert np.allclose(X, mel)


def test_4mula_wrong_columns(tmp_path):
    rows = fourmula_rows(per_genre=2)
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "m").mkdir()
    pq.write_table(pa.table({"music_id": [r["music_id"] for r in rows], "genre": [r["main_genre"] for r in rows]}), tmp_path / "m" / "4mula_small.parquet")
    with pytest.raises(UsageError, match="expected the 4MuLA columns.*missing music_lyrics or music_lyric"):
        get_dataset("4mula").list_tracks(tmp_path / "m")


# ------------------------------------------------------------------------------------------ Music4All
def test_music4all_filters_and_multilabel_round_trip(tmp_path, data_home):
    root = make_music4all(tmp_path / "m4a")
    listing = get_dataset("music4all").list_tracks(root, min_count=3)
    assert len(listing.tracks) == 40
    reasons = sorted(listing.skipped.values())
    assert any(r.startswith("lyrics not English") for r in reasons)
    assert sum(r.startswith("missing data: no or empty lyrics") for r in reasons) == 2
    assert any(r.startswith("missing data: no audio") for r in reasons)
    assert any(r.startswith("missing data: no genres") for r in reasons)
    assert any(r.startswith("no genre left") for r in reasons)  # polka only, below min_count
    assert {g for t in listing.tracks for g in t.labels} == {"rock", "pop", "indie rock"}
    assert all(t.label == "" and t.score.endswith(".txt") and t.audio.endswith(".mp3") for t in listing.tracks)
    counts = {g: sum(g in t.labels for t in listing.tracks) for g in ("rock", "pop", "indie rock")}
    top1 = get_dataset("music4all").list_tracks(root, top=1)
    assert {g for t in top1.tracks for g in t.labels} == {min(counts, key=lambda g: (-counts[g], g))}  # ties: alphabetical
    ingest("music4all", root=root, options={"min_count": "3"})
    m = read_manifest(DatasetPaths.of("music4all").manifest)
    assert m.multilabel and m.Y.shape == (40, 3) and m.Y.dtype == bool
    by_id = {t.id: set(t.labels) for t in listing.tracks}
    for i, t in enumerate(m.tracks):
        assert {m.label_names[j] for j in np.flatnonzero(m.Y[i])} == by_id[t.id] == set(t.labels)


def test_music4all_comma_separated_is_rejected(tmp_path):
    root = make_music4all(tmp_path / "m4a", n=3)
    (root / "id_genres.csv").write_text("id,genres\nx,rock\n")
    with pytest.raises(UsageError, match="expected tab-separated columns id, genres.*comma-separated"):
        get_dataset("music4all").list_tracks(root, min_count=1)


# ----------------------------------------------------------------------------------------------- MuMu
def test_mumu_taxonomy_reviews_round_trip(tmp_path, data_home):
    root = make_mumu(tmp_path / "mumu")
    listing = get_dataset("mumu").list_tracks(root, min_count=3)
    album = {t.id: t for t in listing.tracks}["B000000000"]
    assert {"Traditional Pop", "Oldies", "Pop", "Vocal Jazz", "Jazz"} <= set(album.labels)
    assert "CDs & Vinyl" not in {g for t in listing.tracks for g in t.labels}
    # reviews: chronological, aggregated, cut at ~1500 characters at a sentence end
    assert album.score_text.startswith("Earlier review of album 0. Later review of album 0. Sentence number 0")
    assert 1400 <= len(album.score_text) <= 1500 and album.score_text.endswith(".")
    assert album.score_format == "text" and album.image.endswith(".png") and album.audio.endswith(".mp3")
    assert sum(t.audio is None for t in listing.tracks) > 0 and sum(t.image is None for t in listing.tracks) > 0
    assert len(get_dataset("mumu").list_tracks(root, min_count=3, require="audio,image").tracks) < len(listing.tracks)
    ingest("mumu", root=root, options={"min_count": "3"})
    m = read_manifest(DatasetPaths.of("mumu").manifest)
    assert m.multilabel and m.Y.shape == (len(listing.tracks), len(m.label_names))
    by_id = {t.id: set(t.labels) for t in listing.tracks}
    for i, t in enumerate(m.tracks):
        assert {m.label_names[j] for j in np.flatnonzero(m.Y[i])} == by_id[t.id]
        assert t.score_text == {x.id: x for x in listing.tracks}[t.id].score_text
    check_split("group:artist:0.8:0.1", m, m.splits["group-artist-0.8-0.1"])


def test_mumu_expansion_and_truncation_units(tmp_path):
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps([{"amazon_id": "A", "categories": [["CDs & Vinyl", "Pop", "Oldies", "Traditional Pop"]]},
                                {"amazon_id": "B", "categories": [["CDs & Vinyl", "Jazz", "Traditional"], ["CDs & Vinyl", "Folk", "Traditional"]]}]))
    branches, parents = read_taxonomy(meta)
    assert expand(["Traditional Pop"], [], parents) == ["Traditional Pop", "Oldies", "Pop"]
    assert expand(["Traditional"], [], parents) == ["Traditional"]  # two parents: ambiguous, not expanded
    assert branches["A"] == [["Pop", "Oldies", "Traditional Pop"]]
    text = truncate_review(LONG_REVIEW)
    assert text.endswith("album.") and len(text) <= 1500 and LONG_REVIEW.startswith(text)
    assert truncate_review("short. text") == "short. text"
    assert truncate_review("word " * 600).endswith("word") and len(truncate_review("word " * 600)) <= 1500


def test_mumu_wrong_csv(tmp_path):
    root = tmp_path / "mumu"
    root.mkdir()
    (root / "MuMu_dataset_multi-label.csv").write_text("amazon_id;genres\nB1;Pop\n")
    with pytest.raises(UsageError, match="expected comma-separated columns amazon_id, MSD_track_id, artist_mbid, genres"):
        get_dataset("mumu").list_tracks(root)


# ------------------------------------------------------------------------------------------ ISMIR 2004
def test_ismir2004_given_lists(tmp_path, data_home):
    root = make_ismir2004(tmp_path / "i")
    listing = get_dataset("ismir2004").list_tracks(root)
    assert len(listing.tracks) == 36 and {t.groups["split"] for t in listing.tracks} == {"train", "test"}
    assert listing.label_names == ["classical", "electronic", "jazz_blues", "metal_punk", "rock_pop", "world"]
    ingest("ismir2004", root=root)
    m = read_manifest(DatasetPaths.of("ismir2004").manifest)
    a = m.splits[next(iter(m.splits))][0]
    assert all((a[i] == TRAIN) == t.id.startswith("training/") for i, t in enumerate(m.tracks))
    assert all((a[i] == TEST) == t.id.startswith("development/") for i, t in enumerate(m.tracks))


def test_ismir2004_malformed_tracklist(tmp_path):
    root = make_ismir2004(tmp_path / "i", per_class=1)
    (root / "metadata" / "development" / "tracklist.csv").write_text('"classical","a","b"\n')
    with pytest.raises(UsageError, match="expected 6 columns"):
        get_dataset("ismir2004").list_tracks(root)


# ------------------------------------------------------------------------------------------- Ballroom
def test_ballroom_merges_rumba_and_groups_albums(tmp_path):
    from corpus_fixtures import make_ballroom

    root = make_ballroom(tmp_path / "b")
    listing = get_dataset("ballroom").list_tracks(root)
    counts = {}
    for t in listing.tracks:
        counts[t.label] = counts.get(t.label, 0) + 1
    assert counts["Rumba"] == 12 and len(counts) == 8
    assert len({t.label for t in get_dataset("ballroom").list_tracks(root, merge_rumba="false").tracks}) == 10
    assert {t.groups["album"] for t in listing.tracks if "Albums-Latin_Jam0" in t.id} == {"Latin_Jam0"}


def test_extended_ballroom_xml_groups_and_wrong_folder(tmp_path):
    root = make_extended_ballroom(tmp_path / "e", per_genre=2)
    listing = get_dataset("extended-ballroom").list_tracks(root)
    assert len(listing.tracks) == 26 and listing.tracks[0].groups["artist"].startswith("Artist")
    assert len(get_dataset("extended-ballroom").list_tracks(root, drop_duplicates=True).tracks) == 13
    write_audio(root / "extendedballroom_v1.1" / "Polka" / "1.mp3")
    with pytest.raises(UsageError, match="expected Extended Ballroom dance folders.*unexpected folders with audio: Polka"):
        get_dataset("extended-ballroom").list_tracks(root)


# ---------------------------------------------------------------------------------------------- table
@pytest.mark.parametrize("fmt", ["csv", "npz", "h5"])
def test_table_formats_land_in_features(fmt, tmp_path, data_home):
    path = make_table(tmp_path / "t", fmt)
    X, labels, ids, artists, split = table_data()
    ingest("table", root=path, name=f"t{fmt}", splits=("random:0.7", "group:artist:0.7"))
    m = read_manifest(DatasetPaths.of(f"t{fmt}").manifest)
    assert m.ids == list(ids) and [t.label for t in m.tracks] == list(labels)
    assert [t.groups["artist"] for t in m.tracks] == list(artists) and [t.groups["split"] for t in m.tracks] == list(split)
    F, valid, params = read_feature(DatasetPaths.of(f"t{fmt}"), "audio/table")
    assert F.shape == X.shape and valid.all() and np.allclose(F, X, atol=1e-5) and params["source"] == path.name
    check_split("group:artist:0.7", m, m.splits["group-artist-0.7"])
    from genrecli.splits import make_split

    a = make_split("given:split", m)[0]
    assert [{TRAIN: "train", VALID: "valid", TEST: "test"}[v] for v in a] == list(split)


def test_table_end_to_end_kernels_and_svm(tmp_path, data_home):
    from genrecli.pipeline.kernels import compute_kernels
    from genrecli.pipeline.train import train

    path = make_table(tmp_path / "t", "csv")
    ingest("table", root=path)
    assert compute_kernels("table", inputs=("audio/table",), kernels=("linear",)).written
    result = train("svm", "table", inputs=("audio/table",), kernels=("linear",), seeds=1)
    assert result.written and (DatasetPaths.of("table").runs / result.written[0] / "predictions.h5").exists()


def test_table_wrong_inputs(tmp_path):
    root = tmp_path / "t"
    root.mkdir()
    (root / "a.csv").write_text("id,label,f0,mood\n1,x,0.5,happy\n")
    with pytest.raises(UsageError, match="expected numeric feature columns; column 'mood'"):
        get_dataset("table").list_tracks(root)
    (root / "a.csv").write_text("id,genre,f0\n1,x,0.5\n")
    with pytest.raises(UsageError, match="expected a 'label' column"):
        get_dataset("table").list_tracks(root)
    assert get_dataset("table").list_tracks(root, label="genre").tracks[0].label == "x"
    np.savez(root / "b.npz", X=np.zeros((2, 2)))
    with pytest.raises(UsageError, match="expected exactly one table file"):
        get_dataset("table").list_tracks(root)
    with pytest.raises(UsageError, match=r"expected arrays X \(or features\) and y"):
        get_dataset("table").list_tracks(root / "b.npz")


# ------------------------------------------------------------------------------------ bundled / real sets
def test_folk_dances_removes_rhythm_field():
    listing = get_dataset("folk-dances").list_tracks(None)
    assert len(listing.tracks) > 1000
    assert {"reel", "jig", "hornpipe"} <= {t.label for t in listing.tracks}
    for t in listing.tracks[:200]:
        assert not any(line.startswith("R:") for line in t.score_text.splitlines())
        assert "K:" in t.score_text


def test_limit_is_stratified(data_home):
    ingest("folk-dances", name="small", limit=60, seed=3)
    m = read_manifest(DatasetPaths.of("small").manifest)
    assert len(m) == 60
    counts = np.bincount(m.y)
    assert counts.min() >= 1


@pytest.mark.skipif(not KERN_ERAS.exists(), reason="../shared/data/kern-eras not present")
def test_real_kern_eras_listing():
    listing = get_dataset("piano").list_tracks(KERN_ERAS)
    assert len(listing.tracks) == 777
    composers = {t.groups["composer"] for t in listing.tracks}
    assert "Chopin, Fryderyk" in composers and len(composers) > 50
    works = [t.groups["work"] for t in listing.tracks if t.id.startswith("Classical/beethoven__sonata08")]
    assert len(set(works)) == 1 and len(works) == 3
