"""Split specs: invariants of every protocol (disjoint parts, groups, stratification)."""

import numpy as np
import pytest

from genrecli.errors import UsageError
from genrecli.manifest import TEST, TRAIN, VALID, Manifest, Track
from genrecli.splits import make_split, split_name, train_test_indices


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


def test_file_split(tmp_path):
    m = _manifest()
    (tmp_path / "train.txt").write_text("c0-0\nc0-1\n")
    (tmp_path / "test.txt").write_text("some/folder/c1-0.wav\n")
    a = make_split(f"file:{tmp_path}", m)
    assert (a == TRAIN).sum() == 2 and (a == TEST).sum() == 1
    (tmp_path / "test.txt").write_text("nope\n")
    with pytest.raises(UsageError, match="match no track"):
        make_split(f"file:{tmp_path}", m)


@pytest.mark.parametrize("spec", ["random:1.5", "random:x", "kfold:1", "kfold:50", "group:artist:0.7", "bogus:3"])
def test_bad_specs_are_usage_errors(spec):
    with pytest.raises(UsageError):
        make_split(spec, _manifest())


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
