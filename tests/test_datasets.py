"""Every registered loader on a fixture with its documented layout, plus wrong layouts."""

from pathlib import Path

import numpy as np
import pytest

from conftest import KERN_ERAS, write_kern, write_wav
from genrecli.datasets import DATASETS, get_dataset
from genrecli.datasets.gtzan import GENRES
from genrecli.errors import UsageError
from genrecli.layout import DatasetPaths
from genrecli.manifest import read_manifest
from genrecli.pipeline.ingest import ingest
from genrecli.splits import train_test_indices


def make_piano(root: Path) -> Path:
    for era, composers in {"Baroque": ["Bach", "Handel"], "Classical": ["Mozart", "Haydn"], "Romantic": ["Chopin", "Liszt"]}.items():
        for c in composers:
            for i in range(3):
                write_kern(root / era / f"{c.lower()}__piece{i}-1.krn", composer=c, n=i)
    return root


def make_gtzan(root: Path) -> Path:
    for g in GENRES:
        for i in range(5):
            write_wav(root / "genres" / g / f"{g}.{i:05d}.wav", seconds=0.2)
    write_wav(root / "genres" / "jazz" / "jazz.00054.wav", seconds=0.2)
    return root


def make_folder(root: Path) -> Path:
    for label in ("calm", "loud"):
        for i in range(4):
            write_wav(root / label / f"t{i}.wav", seconds=0.2)
            (root / label / f"t{i}.txt").write_text(f"lyrics of {label} song {i}\n")
    return root


FIXTURES = {"piano": make_piano, "gtzan": make_gtzan, "folder": make_folder, "folk-dances": None}


def test_every_loader_has_a_fixture():
    assert set(DATASETS) == set(FIXTURES)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_loader_sweep(name, tmp_path, data_home):
    root = FIXTURES[name](tmp_path / "corpus") if FIXTURES[name] else None
    spec = get_dataset(name)
    ingest(name, root=root)
    m = read_manifest(DatasetPaths.of(name).manifest)
    assert len(m) > 0 and len(set(m.ids)) == len(m)
    assert all(t.checksum and len(t.checksum) == 64 for t in m.tracks)
    assert set(m.label_names) == {t.label for t in m.tracks}
    assignment = m.splits[next(iter(m.splits))]
    tr, te = train_test_indices(assignment, 0)
    assert len(tr) and len(te) and not set(tr) & set(te)
    if spec.standard_split.startswith("group:"):
        key = spec.standard_split.split(":")[1]
        g = m.group_values(key)
        assert not set(g[tr]) & set(g[te])
    # second ingest with unchanged inputs does no work
    assert ingest(name, root=root).up_to_date == ["manifest"]


def test_gtzan_skips_known_corrupt_and_normalises(tmp_path, data_home):
    root = make_gtzan(tmp_path / "g")
    (root / "genres" / "hiphop").rename(root / "genres" / "Hip-Hop")
    listing = get_dataset("gtzan").list_tracks(root)
    assert "jazz.00054" not in [t.id for t in listing.tracks]
    assert any("known-corrupt" in r for r in listing.skipped.values())
    assert {t.label for t in listing.tracks} == set(GENRES)


@pytest.mark.parametrize("name", ["piano", "gtzan", "folder"])
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
