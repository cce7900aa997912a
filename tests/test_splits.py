"""Split specs: invariants of every protocol (disjoint parts, groups, stratification)."""

import numpy as np
import pytest

from corpus_fixtures import make_table
from genrecli.errors import UsageError
from genrecli.layout import DatasetPaths
from genrecli.manifest import TEST, TRAIN, VALID, Manifest, Track
from genrecli.splits import fold_layout, make_split, split_name, train_test_indices


def _manifest(n_per_class=(30, 20, 10), groups_per_class=5):
    tracks = []
    for c, n in enumerate(n_per_class):
        for i in range(n):
            tracks.append(Track(id=f"c{c}-{i}", label=f"L{c}", groups={"composer": f"g{c}-{i % groups_per_class}"}))
    return Manifest("toy", tracks, sorted({t.label for t in tracks}))


def test_random_split_is_stratified_and_seeded():
    m = _manifest()
    a = make_split("random:0.7", m, seed=1)
    assert a.shape == (1, len(m))
    tr, te = train_test_indices(a, 0)
    assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == len(m)
    for c, n in enumerate((30, 20, 10)):
        assert abs((m.y[tr] == c).sum() - 0.7 * n) <= 1
    assert np.array_equal(a, make_split("random:0.7", m, seed=1))
    assert not np.array_equal(a, make_split("random:0.7", m, seed=2))


def test_group_split_keeps_groups_disjoint():
    m = _manifest()
    a = make_split("group:composer:0.7", m, seed=0)
    tr, te = train_test_indices(a, 0)
    g = m.group_values("composer")
    assert not set(g[tr]) & set(g[te])
    assert 0.15 < len(te) / len(m) < 0.45
    assert set(m.y[te]) == {0, 1, 2}  # stratified as far as the groups allow


def test_kfold_every_track_tested_once():
    m = _manifest()
    a = make_split("kfold:5", m, seed=0)
    assert a.shape == (5, len(m))
    assert np.array_equal((a == TEST).sum(0), np.ones(len(m)))
    g = make_split("groupkfold:composer:5", m, seed=0)
    comp = m.group_values("composer")
    for f in range(5):
        tr, te = train_test_indices(g, f)
        assert not set(comp[tr]) & set(comp[te])


def test_repeated_group_kfold_is_disjoint_per_repeat_and_repeats_differ():
    m = _manifest(groups_per_class=8)
    a = make_split("groupkfold:composer:4:3", m, seed=5)
    assert a.shape == (12, len(m))
    assert fold_layout("groupkfold:composer:4:3", 12) == (4, 3) and fold_layout("groupkfold-composer-4-3", 12) == (4, 3)
    comp = m.group_values("composer")
    for r in range(3):
        block = a[r * 4:(r + 1) * 4]
        assert np.array_equal((block == TEST).sum(0), np.ones(len(m)))  # every track tested once per repeat
        for f in range(4):
            tr, te = train_test_indices(a, r * 4 + f)
            assert not set(comp[tr]) & set(comp[te])
            assert len(set(m.y[te])) == 3  # stratified as far as the groups allow
    assert not np.array_equal(a[:4], a[4:8])  # repeats are fresh partitions (seed + r)
    assert np.array_equal(a[:4], make_split("groupkfold:composer:4", m, seed=5))  # repeat 0 = the unrepeated split
    assert np.array_equal(a, make_split("groupkfold:composer:4:3", m, seed=5))
    k = make_split("kfold:5:2", m, seed=0)
    assert k.shape == (10, len(m)) and np.array_equal((k == TEST).sum(0), np.full(len(m), 2))
    assert fold_layout("kfold:5:2", 10) == (5, 2) and fold_layout("kfold-5", 5) == (5, 1)
    assert fold_layout("group:composer:0.7", 1) == (1, 1) and fold_layout("kfold:5:2", 5) == (5, 1)


def test_file_split(tmp_path):
    m = _manifest()
    (tmp_path / "train.txt").write_text("c0-0\nc0-1\n")
    (tmp_path / "test.txt").write_text("some/folder/c1-0.wav\n")
    a = make_split(f"file:{tmp_path}", m)
    assert (a == TRAIN).sum() == 2 and (a == TEST).sum() == 1
    (tmp_path / "test.txt").write_text("nope\n")
    with pytest.raises(UsageError, match="match no track"):
        make_split(f"file:{tmp_path}", m)


@pytest.mark.parametrize("spec", ["random:1.5", "random:x", "kfold:1", "kfold:50", "group:artist:0.7", "bogus:3",
                                  "kfold:5:0", "groupkfold:composer:3:x", "kfold:5:2:1"])
def test_bad_specs_are_usage_errors(spec):
    with pytest.raises(UsageError):
        make_split(spec, _manifest())


@pytest.mark.parametrize("spec", ["group:composer:0.8:0.1", "groupkfold:composer:5"])
def test_too_small_a_corpus_for_group_folds_is_one_usage_error(spec):
    """Every class smaller than the fold count: scikit-learn's ValueError becomes one line naming the split."""
    tiny = _manifest(n_per_class=(2, 2, 2), groups_per_class=2)
    with pytest.raises(UsageError, match=r"too few for \d+ group folds") as err:
        make_split(spec, tiny)
    assert spec in str(err.value) and "\n" not in str(err.value)


def test_split_names_are_store_safe():
    assert split_name("group:composer:0.7") == "group-composer-0.7"
    assert "/" not in split_name("file:/a/b/lists")


def test_validation_fraction_8_1_1():
    m = _manifest((40, 30, 30))
    a = make_split("random:0.8:0.1", m, seed=0)
    assert (a == TRAIN).sum() == 70 and (a == VALID).sum() == 10 and (a == TEST).sum() == 20
    g = make_split("group:composer:0.8:0.1", m, seed=0)
    comp = m.group_values("composer")
    parts = [set(comp[g[0] == code]) for code in (TRAIN, VALID, TEST)]
    assert all(parts) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])


def test_multilabel_manifest_strata_and_split():
    tracks = [Track(id=f"t{i}", labels=("rock",) if i % 3 else ("rock", "punk")) for i in range(30)]
    m = Manifest("ml", tracks, ["punk", "rock"])
    assert m.multilabel and m.Y.shape == (30, 2) and m.Y[:, 1].all()
    assert (m.strata() == 0).sum() == 10  # the rarer label decides the stratum
    a = make_split("random:0.7", m, seed=0)
    assert abs((m.Y[a[0] == TRAIN, 0]).sum() - 7) <= 1
    with pytest.raises(UsageError, match="multi-label"):
        m.y


# ------------------------------------------------------------- who writes splits: ingest and `genre split` only
def _ingest_table(tmp_path, splits=("random:0.7",)):
    from genrecli.pipeline.ingest import ingest

    ingest("table", root=make_table(tmp_path / "t", "csv"), name="tab", splits=splits)
    return DatasetPaths.of("tab")


def test_resolve_split_is_read_only_and_says_how_to_add_one(tmp_path, data_home):
    from conftest import one_line
    from genrecli.pipeline.ingest import resolve_split

    paths = _ingest_table(tmp_path)
    assert resolve_split(paths, "random:0.7") == "random-0.7" == resolve_split(paths, "random-0.7")
    assert resolve_split(paths, "standard") == "random-0.7"  # the table loader's standard split
    before = paths.manifest.stat().st_mtime_ns
    with pytest.raises(UsageError) as exc:
        resolve_split(paths, "group:artist:0.7")
    one_line(exc, "split 'group:artist:0.7' is not in the manifest of 'tab' (have: random-0.7)",
             "add it with `genre split --data tab group:artist:0.7`")
    assert paths.manifest.stat().st_mtime_ns == before


def test_kernels_stage_does_not_write_the_manifest(tmp_path, data_home):
    from genrecli.pipeline.kernels import compute_kernels

    paths = _ingest_table(tmp_path)
    before = paths.manifest.read_bytes()
    with pytest.raises(UsageError, match="genre split --data tab kfold:3"):
        compute_kernels("tab", inputs=("audio/table",), kernels=("linear",), split="kfold:3")
    assert paths.manifest.read_bytes() == before


def test_split_adds_is_idempotent_and_replaces_only_with_force(tmp_path, data_home):
    from genrecli.manifest import read_manifest
    from genrecli.pipeline.ingest import split

    paths = _ingest_table(tmp_path)
    assert split("tab", "group:artist:0.7", seed=1).written == ["group-artist-0.7"]
    m = read_manifest(paths.manifest)
    assert m.split_specs["group-artist-0.7"] == "group:artist:0.7" and m.split_seeds["group-artist-0.7"] == 1
    assert "random-0.7" in m.splits  # the other splits are kept
    assert split("tab", "group:artist:0.7", seed=1).up_to_date == ["group-artist-0.7"]
    different = next(s for s in range(2, 20) if not np.array_equal(
        make_split("group:artist:0.7", m, seed=s), m.splits["group-artist-0.7"]))
    with pytest.raises(UsageError, match=r"already in the manifest of 'tab' with other parts \(seed 1\); add --force"):
        split("tab", "group:artist:0.7", seed=different)
    assert split("tab", "group:artist:0.7", seed=different, force=True).written == ["group-artist-0.7"]
    assert read_manifest(paths.manifest).split_seeds["group-artist-0.7"] == different


def test_split_refuses_an_empty_test_part(tmp_path, data_home):
    from conftest import one_line
    from genrecli.pipeline.ingest import split

    paths = _ingest_table(tmp_path)
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train.txt").write_text("item000\nitem001\n")
    (lists / "test.txt").write_text("\n")
    before = paths.manifest.read_bytes()
    with pytest.raises(UsageError) as exc:
        split("tab", f"file:{lists}")
    one_line(exc, f"split 'file:{lists}': the test part is empty (2 training and 0 test tracks of 24)")
    assert paths.manifest.read_bytes() == before


def test_ingest_adds_splits_to_an_up_to_date_manifest_and_keeps_added_ones(tmp_path, data_home):
    from genrecli.manifest import read_manifest
    from genrecli.pipeline.ingest import ingest, split

    root = make_table(tmp_path / "t", "csv")
    assert ingest("table", root=root, name="tab", splits=("random:0.7",)).written == ["manifest"]
    split("tab", "kfold:3")
    result = ingest("table", root=root, name="tab", splits=("random:0.7", "group:artist:0.7"))
    assert result.written == ["split group-artist-0.7"]
    assert set(read_manifest(DatasetPaths.of("tab").manifest).splits) == {"random-0.7", "kfold-3", "group-artist-0.7"}
    assert ingest("table", root=root, name="tab", splits=("random:0.7",)).up_to_date == ["manifest"]
    ingest("table", root=root, name="tab", splits=("random:0.7",), force=True)  # rewritten: same tracks, splits kept
    assert set(read_manifest(DatasetPaths.of("tab").manifest).splits) == {"random-0.7", "kfold-3", "group-artist-0.7"}


def test_genre_split_command(tmp_path, data_home):
    import os
    import subprocess
    import sys

    _ingest_table(tmp_path)
    env = {**os.environ, "GENRE_DATA_HOME": str(data_home), "PYTHONWARNINGS": "ignore"}

    def genre(*args):
        return subprocess.run([sys.executable, "-m", "genrecli", *args], capture_output=True, text=True, env=env, timeout=300)

    ok = genre("split", "--data", "tab", "group:artist:0.7", "--seed", "2")
    assert ok.returncode == 0 and "added split group-artist-0.7" in ok.stderr, ok.stderr
    bad = genre("kernels", "--data", "tab", "--split", "kfold:4")
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert bad.returncode == 1 and len(lines) == 1 and "genre split --data tab kfold:4" in lines[0], bad.stderr
