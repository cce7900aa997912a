"""Manifest round trips: single- and multi-label, groups, sources, splits."""

import numpy as np

from genrecli.manifest import Manifest, Track, read_manifest, write_manifest


def test_single_label_round_trip(tmp_path):
    tracks = [Track(id="a/1", label="x", groups={"artist": "p"}, audio="/x/1.wav", checksum="c1"),
              Track(id="a/2", label="y", score_text="K:C\nCDE|\n", score_format="abc", checksum="c2")]
    m = Manifest("toy", tracks, ["x", "y"], splits={"s": np.array([[0, 2]], dtype=np.int8)}, split_specs={"s": "random:0.5"})
    write_manifest(tmp_path / "m.h5", m, {"p": 1})
    back = read_manifest(tmp_path / "m.h5")
    assert back.tracks == tracks and back.label_names == ["x", "y"]
    assert np.array_equal(back.splits["s"], m.splits["s"]) and back.split_specs == {"s": "random:0.5"}
    assert back.content_hash() == m.content_hash()
    assert not back.multilabel and back.y.tolist() == [0, 1]


def test_multilabel_round_trip(tmp_path):
    tracks = [Track(id="1", labels=("rock", "indie"), image="/c/1.jpg"), Track(id="2", labels=("pop",)),
              Track(id="3", labels=("rock",))]
    names = ["indie", "pop", "rock"]
    m = Manifest("ml", tracks, names)
    write_manifest(tmp_path / "m.h5", m, {})
    back = read_manifest(tmp_path / "m.h5")
    assert back.multilabel
    assert np.array_equal(back.Y, [[True, False, True], [False, True, False], [False, False, True]])
    assert [set(t.labels) for t in back.tracks] == [{"rock", "indie"}, {"pop"}, {"rock"}]
    assert back.tracks[0].image == "/c/1.jpg"
    assert np.array_equal(back.targets(), back.Y)


def test_splits_seeds_and_failures_round_trip(tmp_path):
    from genrecli import store
    from genrecli.manifest import add_split, record_manifest_failures

    tracks = [Track(id=f"t{i}", label="xy"[i % 2]) for i in range(4)]
    m = Manifest("toy", tracks, ["x", "y"], splits={"a": np.array([[0, 0, 2, 2]], np.int8)}, split_specs={"a": "random:0.5"},
                 split_seeds={"a": 3}, skipped={"bad.wav": "empty"})
    path = tmp_path / "m.h5"
    write_manifest(path, m, {"p": 1})
    add_split(path, "b", "kfold:2", np.array([[0, 2, 0, 2], [2, 0, 2, 0]], np.int8), seed=7)
    record_manifest_failures(path, "validate", {"t1": "missing: /x.wav"})
    back = read_manifest(path)
    assert back.split_seeds == {"a": 3, "b": 7} and back.split_specs == {"a": "random:0.5", "b": "kfold:2"}
    assert back.splits["b"].shape == (2, 4) and back.skipped == {"bad.wav": "empty"}
    assert sorted(store.read_failures(path)) == [("bad.wav", "ingest", "empty"), ("t1", "validate", "missing: /x.wav")]
    assert back.attrs == {"p": 1} and store.group_status(path, "/", store.params_hash({"p": 1})) == "fresh"
    assert not list(tmp_path.glob(".m.h5.tmp-*"))
