"""The indexed store layout: a write costs what changed, a kill at any moment leaves old or new, links are
relative (a data home can move; any current directory works), old-layout stores still read, one writer."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from genrecli import store
from genrecli.errors import UsageError
from genrecli.pipeline.features import FeatureView, feature_groups

REPO = Path(__file__).resolve().parents[1]
MB = 1 << 20


def _feature(rows=6, dim=4, value=1.0):
    return np.full((rows, dim), value, dtype=np.float32), np.ones(rows, dtype=bool)


def _written_bytes() -> int | None:
    """Bytes this process has passed to write() so far (Linux /proc/self/io), or None elsewhere."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


# ------------------------------------------------------------------------------------ cost of a write
def test_small_write_next_to_a_200_mb_group_writes_kilobytes(tmp_path):
    path = tmp_path / "ds" / "features.h5"
    big = np.ones((800, 65536), dtype=np.float32)  # 200 MiB, stored uncompressed
    store.write_feature(path, "audio/patches", big, np.ones(800, bool), {"big": True}, compression=None)
    del big
    (big_file,) = store.store_files(path)[1:]
    before = big_file.stat()
    assert before.st_size > 200 * MB

    wrote = _written_bytes()
    store.write_feature(path, "audio/mfcc", *_feature(800, 20), {"n_mfcc": 20}, {"t1": "empty file"})
    wrote = None if wrote is None else _written_bytes() - wrote

    after = big_file.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
    index = path.stat().st_size
    new_files = [p for p in store.store_files(path)[1:] if p != big_file]
    assert len(new_files) == 1
    written_on_disk = index + new_files[0].stat().st_size
    assert written_on_disk < 1 * MB, written_on_disk  # vs. > 200 MiB for a copy of the store
    if wrote is not None:
        assert wrote < 2 * MB, f"{wrote} bytes written for a 64 KiB group next to a 200 MiB one"
    with h5py.File(path) as h5:
        assert h5["audio/patches"]["data"].shape == (800, 65536) and h5["audio/mfcc/data"].shape == (800, 20)
    assert store.read_failures(path) == [("t1", "audio/mfcc", "empty file")]


def test_failures_only_rewrite_the_index(tmp_path):
    path = tmp_path / "features.h5"
    store.write_feature(path, "audio/mfcc", *_feature(), {"n": 1})
    files = store.store_files(path)
    stats = [p.stat().st_mtime_ns for p in files[1:]]
    store.write_failures(path, "audio/mfcc", {"t3": "corrupt"})
    assert store.store_files(path) == files and [p.stat().st_mtime_ns for p in files[1:]] == stats
    assert store.read_failures(path) == [("t3", "audio/mfcc", "corrupt")]


# ------------------------------------------------------------------------------------------- atomicity
def test_exception_inside_the_writer_keeps_the_old_group(tmp_path):
    path = tmp_path / "features.h5"
    store.write_feature(path, "audio/mfcc", *_feature(value=1.0), {"v": 1}, {"t1": "v1"})
    files = store.store_files(path)
    with pytest.raises(RuntimeError, match="crash"):
        with store.write_transaction(path) as h5:
            store.write_feature_into(h5, "audio/mfcc", *_feature(value=2.0), {"v": 2}, {"t1": "v2"})
            h5.create_group("audio/chroma")["data"] = np.zeros(3)
            raise RuntimeError("crash while writing")
    data, _, params = store.read_feature(path, "audio/mfcc")
    assert params == {"v": 1} and (data == 1.0).all()
    assert store.read_failures(path) == [("t1", "audio/mfcc", "v1")]
    assert store.list_groups(path) == ["audio/mfcc"]
    assert sorted(p for p in store.data_dir(path).rglob("*") if p.is_file()) == files[1:]  # nothing left over


def test_crash_at_the_commit_point_keeps_the_old_group(tmp_path, monkeypatch):
    path = tmp_path / "features.h5"
    store.write_feature(path, "audio/mfcc", *_feature(value=1.0), {"v": 1})

    def crash(_):
        raise OSError("disk vanished")

    monkeypatch.setattr(store, "_before_index_replace", crash)
    with pytest.raises(OSError, match="disk vanished"):
        store.write_feature(path, "audio/mfcc", *_feature(value=2.0), {"v": 2})
    monkeypatch.undo()
    assert store.read_feature(path, "audio/mfcc")[2] == {"v": 1}
    assert len(list(store.data_dir(path).rglob("*.h5"))) == 1
    assert not list(tmp_path.glob(".features.h5.tmp-*"))


KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from genrecli import store

    path, mode = sys.argv[1], sys.argv[2]
    if mode == "hang-at-commit":
        def hang(_):
            print("ready", flush=True)
            time.sleep(60)
        store._before_index_replace = hang
    if mode == "hang-after-commit":
        def hang(*args, **kwargs):
            print("ready", flush=True)
            time.sleep(60)
        store.collect_garbage = hang
    if mode == "loop":
        print("ready", flush=True)
    v = 2
    while True:
        data = np.full((64, 2048), v, dtype=np.float32)
        store.write_feature(path, "audio/mfcc", data, np.ones(64, bool), {"v": v}, {"t1": f"v{v}"}, compression=None)
        v += 1
        if mode != "loop":
            break
    """
)


def _start_writer(path: Path, mode: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path), mode], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _check_consistent(path: Path) -> int:
    """The store reads; the group is one whole version, and its failure rows are of that same version."""
    data, valid, params = store.read_feature(path, "audio/mfcc")
    v = params["v"]
    assert valid.all() and (data == v).all()
    assert store.read_failures(path) == [("t1", "audio/mfcc", f"v{v}")]
    return v


@pytest.mark.parametrize("mode, version", [("hang-at-commit", 1), ("hang-after-commit", 2)])
def test_sigkill_before_or_after_the_commit(tmp_path, mode, version):
    path = tmp_path / "features.h5"
    store.write_feature(path, "audio/mfcc", np.full((64, 2048), 1, np.float32), np.ones(64, bool), {"v": 1},
                        {"t1": "v1"}, compression=None)
    proc = _start_writer(path, mode)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert _check_consistent(path) == version
    assert len(list(store.data_dir(path).rglob("*.h5"))) == 2  # an orphan: the new file, or the replaced one
    store.write_feature(path, "text/x", *_feature(), {})  # the next write collects it
    assert len(list(store.data_dir(path).rglob("*.h5"))) == 2
    assert _check_consistent(path) == version


def test_sigkill_at_random_moments_leaves_old_or_new(tmp_path):
    path = tmp_path / "features.h5"
    store.write_feature(path, "audio/mfcc", np.full((64, 2048), 1, np.float32), np.ones(64, bool), {"v": 1},
                        {"t1": "v1"}, compression=None)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(6):
        proc = _start_writer(path, "loop")
        time.sleep(float(rng.uniform(0.05, 0.6)))
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        seen.add(_check_consistent(path))
    assert max(seen) > 1  # the writer did commit versions between kills
    store.write_failures(path, "other", {})
    referenced = set(store.store_files(path)[1:])
    assert set(store.data_dir(path).rglob("*.h5")) == referenced  # no garbage after one more write


# ------------------------------------------------------------------------- relative links, relocation
def test_reads_from_any_current_directory(tmp_path, monkeypatch):
    ds = tmp_path / "home" / "ds"
    ds.mkdir(parents=True)
    monkeypatch.chdir(ds)
    store.write_feature("features.h5", "audio/mfcc", *_feature(value=3.0), {"n": 1})  # written via a relative path
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert (store.read_feature(ds / "features.h5", "audio/mfcc")[0] == 3.0).all()
    with h5py.File(ds / "features.h5", "r") as h5:
        assert feature_groups(h5) == ["audio/mfcc"] and h5["audio/mfcc"]["data"][0, 0] == 3.0
    monkeypatch.chdir(tmp_path / "home")
    h5 = h5py.File("ds/features.h5", "r")  # opened relative to one directory, read from another
    monkeypatch.chdir("/")
    try:
        assert h5["audio/mfcc/data"][1, 1] == 3.0
    finally:
        h5.close()
    view = FeatureView(ds / "features.h5", "audio/mfcc", np.array([2, 0]))
    assert np.asarray(view).shape == (2, 4) and (view[0] == 3.0).all()


def test_a_data_home_can_be_moved_and_copied(tmp_path):
    home = tmp_path / "home"
    path = home / "ds" / "features.h5"
    store.write_feature(path, "audio/mfcc", *_feature(value=1.0), {"n": 1})
    store.write_kernel_groups(home / "ds" / "kernels.h5", {
        "random-0.7/fold0/audio/mfcc/linear": store.kernel_data(np.eye(6), {"k": "linear"}, state={"scale": np.ones(4)}),
    })
    moved = tmp_path / "moved"
    shutil.move(str(home), str(moved))
    assert (store.read_feature(moved / "ds" / "features.h5", "audio/mfcc")[0] == 1.0).all()
    with h5py.File(moved / "ds" / "kernels.h5", "r") as h5:
        grp = h5["random-0.7/fold0/audio/mfcc/linear"]
        assert np.array_equal(grp["map_gram"][()], np.eye(6)) and list(grp["state"]) == ["scale"]
    copy = tmp_path / "copy"
    shutil.copytree(moved, copy)
    store.write_feature(copy / "ds" / "features.h5", "audio/mfcc", *_feature(value=2.0), {"n": 2})
    assert (store.read_feature(moved / "ds" / "features.h5", "audio/mfcc")[0] == 1.0).all()  # the original is untouched
    assert (store.read_feature(copy / "ds" / "features.h5", "audio/mfcc")[0] == 2.0).all()


# ------------------------------------------------------------------------------------ old-layout stores
def _old_layout_store(path: Path) -> None:
    with h5py.File(path, "w") as h5:
        for name, value in (("mfcc", 1.0), ("chroma", 2.0)):
            grp = h5.create_group(f"audio/{name}")
            grp["data"], grp["valid"] = _feature(value=value)
            store.set_group_params(grp, {"feature": name})
        store.record_failures(h5, "audio/mfcc", {"t1": "old failure"})


def test_old_layout_is_read_and_migrated_without_copying(tmp_path):
    path = tmp_path / "features.h5"
    _old_layout_store(path)
    inode = path.stat().st_ino
    assert store.read_feature(path, "audio/chroma")[2] == {"feature": "chroma"}
    with h5py.File(path) as h5:
        assert feature_groups(h5) == ["audio/chroma", "audio/mfcc"]
    assert store.list_groups(path) == ["audio/chroma", "audio/mfcc"] and not store.is_indexed(path)

    store.write_feature(path, "text/tfidf", *_feature(value=5.0), {"enc": "tfidf"})
    assert store.is_indexed(path)
    (legacy,) = store.data_dir(path).glob("legacy-*.h5")
    assert legacy.stat().st_ino == inode  # the old file itself (a hard link), not a copy
    assert store.list_groups(path) == ["audio/chroma", "audio/mfcc", "text/tfidf"]
    assert (store.read_feature(path, "audio/mfcc")[0] == 1.0).all()
    assert store.read_failures(path) == [("t1", "audio/mfcc", "old failure")]

    store.write_feature(path, "audio/mfcc", *_feature(value=7.0), {"feature": "mfcc", "v": 2})
    store.write_feature(path, "audio/chroma", *_feature(value=8.0), {"feature": "chroma", "v": 2})
    assert not legacy.exists()  # no group points into it any more
    assert (store.read_feature(path, "audio/chroma")[0] == 8.0).all()


def test_transaction_supports_the_h5py_calls_stages_make(tmp_path):
    path = tmp_path / "features.h5"
    with store.write_transaction(path) as h5:
        grp = store.replace_group(h5, "text/source")
        store.write_strings(grp, "text", ["x", "y"])
        grp.create_dataset("valid", data=np.ones(2, bool))
        store.set_group_params(grp, {"k": 1})
        store.record_failures(h5, "text/source", {"t": "no notes"})
        store.write_feature_into(h5, "text/tfidf", *_feature(2, 3), {"e": 1}, {})
        state = h5["text/tfidf"].create_group("state")
        store.write_strings(state, "vocabulary", ["a", "b", "c"])
        h5["text/tfidf"].create_dataset("label_embeddings", data=np.zeros((2, 3), np.float32))
        assert "text/tfidf/state/vocabulary" in h5 and "text/source" in h5 and "text/nope" not in h5
    with h5py.File(path) as h5:
        assert store.read_strings(h5["text/tfidf/state/vocabulary"]) == ["a", "b", "c"]
        assert h5["text/tfidf/label_embeddings"].shape == (2, 3)
        assert store.read_strings(h5["text/source/text"]) == ["x", "y"]
    with store.write_transaction(path) as h5:
        assert h5["text/source"].attrs["params_hash"] == store.params_hash({"k": 1})  # stored groups read
        with pytest.raises(ValueError, match="already exists"):
            h5.create_group("text/source")
        del h5["text"]
    assert store.list_groups(path) == [] and not list(store.data_dir(path).rglob("*.h5"))


# ----------------------------------------------------------------------------------------- one writer
WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from genrecli import store

    path, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    for i in range(n):
        with store.write_transaction(path) as h5:
            time.sleep(0.05)  # widen the read-modify-write window of the index
            store.write_feature_into(h5, f"audio/{who}{i}", np.zeros((4, 2), np.float32), np.ones(4, bool), {"i": i},
                                     {f"{who}{i}": "x"})
    """
)


def test_the_lock_serialises_concurrent_writers(tmp_path):
    path = tmp_path / "features.h5"
    env = {**os.environ, "PYTHONPATH": str(REPO), "GENRE_LOCK_TIMEOUT": "120"}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), who, "6"], env=env) for who in ("a", "b")]
    assert [p.wait(180) for p in procs] == [0, 0]
    expected = sorted(f"audio/{w}{i}" for w in "ab" for i in range(6))
    assert store.list_groups(path) == expected  # no writer lost the other's groups
    assert sorted(r[0] for r in store.read_failures(path)) == sorted(g.split("/")[1] for g in expected)
    assert len(list(store.data_dir(path).rglob("*.h5"))) == 12


def test_a_held_lock_makes_a_writer_fail_clearly(tmp_path, monkeypatch):
    path = tmp_path / "features.h5"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom genrecli import store\nwith store.writer_lock(sys.argv[1]):\n"
         "    print('ready', flush=True)\n    time.sleep(30)\n", str(path)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        monkeypatch.setenv(store.LOCK_TIMEOUT_ENV, "0.3")
        with pytest.raises(UsageError, match="another genre process is writing"):
            store.write_feature(path, "audio/mfcc", *_feature(), {})
    finally:
        holder.kill()
        holder.wait(30)
    assert not path.exists()


def test_merge_joins_shard_stores_and_removes_them(tmp_path):
    from genrecli.layout import DatasetPaths
    from genrecli.pipeline.features import merge_shards

    paths = DatasetPaths(tmp_path / "ds")
    store.write_feature(paths.features(), "text/minilm", *_feature(value=9.0), {"enc": 1})  # kept as it is
    for k in (1, 2):
        data = np.full((6, 4), np.nan, np.float32)
        valid = np.zeros(6, bool)
        data[k - 1 :: 2], valid[k - 1 :: 2] = k, True
        store.write_feature(paths.features((k, 2)), "audio/mfcc", data, valid, {"n": 1, "shard": [k, 2]}, {f"t{k}": "bad"})
    assert merge_shards(paths) == ["audio/mfcc"]
    data, valid, params = store.read_feature(paths.features(), "audio/mfcc")
    assert valid.all() and data[:, 0].tolist() == [1, 2, 1, 2, 1, 2] and params == {"n": 1}
    assert sorted(store.read_failures(paths.features())) == [("t1", "audio/mfcc", "bad"), ("t2", "audio/mfcc", "bad")]
    assert store.list_groups(paths.features()) == ["audio/mfcc", "text/minilm"]
    assert sorted(p.name for p in paths.root.iterdir()) == ["features.d", "features.h5", "features.h5.lock"]
