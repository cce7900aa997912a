"""Store layer: parameter hashes, freshness, atomic transactions, the writer lock, failures, checkpoints.

The properties of the indexed layout (bytes written, crashes, relocation, concurrent writers) are in
test_store_layer.py.
"""

import multiprocessing as mp
import time

import h5py
import numpy as np
import pytest

from genrecli import store
from genrecli.errors import UsageError


def test_params_hash_is_order_independent_and_sensitive():
    a = store.params_hash({"x": 1, "y": [1, 2]})
    assert a == store.params_hash({"y": [1, 2], "x": 1})
    assert a != store.params_hash({"x": 2, "y": [1, 2]})


def test_group_status_fresh_stale_missing(tmp_path):
    path = tmp_path / "s.h5"
    assert store.group_status(path, "audio/mfcc", "abc") == "missing"
    with store.write_transaction(path) as h5:
        digest = store.set_group_params(h5.create_group("audio/mfcc"), {"n_mfcc": 20})
    assert store.group_status(path, "audio/mfcc", digest) == "fresh"
    assert store.group_status(path, "audio/mfcc", store.params_hash({"n_mfcc": 13})) == "stale"
    with h5py.File(path) as h5:
        g = h5["audio/mfcc"]
        assert {"params", "params_hash", "version", "created"} <= set(g.attrs)


def test_failed_transaction_leaves_store_untouched(tmp_path):
    path = tmp_path / "s.h5"
    with store.write_transaction(path) as h5:
        h5.create_group("a")["x"] = np.arange(3)
    with pytest.raises(RuntimeError):
        with store.write_transaction(path) as h5:
            h5.create_group("b")["x"] = np.arange(4)
            del h5["a"]
            raise RuntimeError("killed mid-write")
    with h5py.File(path) as h5:
        assert list(h5) == ["a"] and h5["a/x"][()].tolist() == [0, 1, 2]
    assert not list(tmp_path.glob(".s.h5.tmp-*"))
    assert [p.name.split(".")[0] for p in store.data_dir(path).rglob("*.h5")] == ["a"]  # b's file is gone


def test_typed_feature_round_trip_and_failures(tmp_path):
    path = tmp_path / "features.h5"
    data = np.arange(12, dtype=np.float32).reshape(4, 3)
    valid = np.array([True, True, False, True])
    digest = store.write_feature(path, "audio/mfcc", data, valid, {"n": 3}, {"t2": "bad  file\n"})
    store.write_texts(path, "text/source", ["a", "b", "", "d"], valid, {"k": 1}, {"t2": "no notes"})
    back, v, params = store.read_feature(path, "audio/mfcc")
    assert np.array_equal(back, data) and np.array_equal(v, valid) and params == {"n": 3}
    assert store.group_status(path, "audio/mfcc", digest) == "fresh"
    assert store.read_texts(path, "text/source")[0] == ["a", "b", "", "d"]
    assert sorted(store.read_failures(path)) == [("t2", "audio/mfcc", "bad file"), ("t2", "text/source", "no notes")]
    assert store.read_failures(path, "text/source") == [("t2", "text/source", "no notes")]
    assert store.list_groups(path) == ["audio/mfcc", "text/source"]
    with pytest.raises(UsageError, match=r"no feature 'audio/chroma' \(have: audio/mfcc\)"):
        store.read_feature(path, "audio/chroma")
    store.write_feature(path, "audio/mfcc", data[:, :2], valid, {"n": 2})  # replaced, its failure rows too
    assert store.read_feature(path, "audio/mfcc")[0].shape == (4, 2)
    assert store.read_failures(path) == [("t2", "text/source", "no notes")]
    assert len(list(store.data_dir(path).rglob("*.h5"))) == 2  # the replaced group's file is deleted


def _hold_lock(path, seconds, ready):
    with store.writer_lock(path):
        ready.set()
        time.sleep(seconds)


def test_second_writer_fails_with_clear_message(tmp_path, monkeypatch):
    path = tmp_path / "s.h5"
    ready = mp.Event()
    proc = mp.Process(target=_hold_lock, args=(path, 3, ready))
    proc.start()
    try:
        assert ready.wait(10)
        with pytest.raises(UsageError, match="another genre process is writing"):
            with store.writer_lock(path, timeout=0.5):
                pass
    finally:
        proc.join()
    with store.writer_lock(path, timeout=0.5):  # released when the holder exits
        pass


@pytest.mark.parametrize("transaction", [store.write_transaction, store.file_transaction])
def test_failures_are_replaced_per_stage(tmp_path, transaction):
    path = tmp_path / "s.h5"
    with transaction(path) as h5:
        store.record_failures(h5, "audio/mfcc", {"t1": "corrupt", "t2": "empty"})
        store.record_failures(h5, "text/source", {"t3": "no notes"})
        store.record_failures(h5, "audio/mfcc", {"t2": "empty"})
    with h5py.File(path) as h5:
        assert sorted(store.read_failures(h5)) == [("t2", "audio/mfcc", "empty"), ("t3", "text/source", "no notes")]


def test_checkpoint_resumes_rows(tmp_path):
    cp = store.RowCheckpoint(tmp_path / "partial", "digest1")
    cp.save({0: {"v": np.ones(3)}, 2: {"v": np.zeros(3)}}, {1: "bad file"})
    cp.save({3: {"v": np.full(3, 7.0)}}, {})
    done, failed = store.RowCheckpoint(tmp_path / "partial", "digest1").load()
    assert sorted(done) == [0, 2, 3] and failed == {1: "bad file"}
    np.testing.assert_array_equal(done[3]["v"], np.full(3, 7.0))
    assert store.RowCheckpoint(tmp_path / "partial", "other").load() == ({}, {})
    cp.clear()
    assert cp.load() == ({}, {})
