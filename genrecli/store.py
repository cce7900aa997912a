"""HDF5 stores: parameter hashes, skip-if-done, atomic writes, a writer lock, failure records, checkpoints.

Every stage writes one or more *groups* of a store (``features.h5:/audio/mfcc``, ...). A group carries
attributes ``params`` (JSON), ``params_hash``, ``version`` and ``created``. A stage compares the hash of the
parameters it would use (upstream hashes included) with the stored one:

* ``fresh``   same hash: nothing to do unless ``--force``;
* ``stale``   different hash: the inputs or parameters changed, so the group is recomputed and replaced;
* ``missing`` never computed.

Writes are atomic: :func:`write_transaction` copies the store to a temporary file next to it, lets the
caller modify the copy and renames it over the original, so a run killed at any moment leaves the old,
readable store. Long per-track stages also keep :class:`RowCheckpoint` files, so a killed run resumes
where it stopped. One writer at a time: an ``fcntl`` lock on ``<store>.lock`` (released by the kernel
when the process dies, so no stale locks).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import h5py
import numpy as np

from genrecli import __version__
from genrecli.errors import UsageError

LOCK_TIMEOUT_ENV = "GENRE_LOCK_TIMEOUT"
_STR = h5py.string_dtype("utf-8")


def canonical_json(obj) -> str:
    """JSON with sorted keys and no whitespace: the form that is hashed and stored."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (Path,)):
        return str(obj)
    if isinstance(obj, (tuple, set)):
        return list(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def params_hash(params: Mapping) -> str:
    """Short, stable hash of a parameter dictionary (16 hex digits of SHA-256)."""
    return hashlib.sha256(canonical_json(params).encode()).hexdigest()[:16]


def file_sha256(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def combine_digests(digests: list[str]) -> str:
    """One digest as is; several joined and hashed again."""
    if not digests:
        raise ValueError("a checksum needs at least one file or text")
    return digests[0] if len(digests) == 1 else text_sha256("".join(digests))


def files_sha256(*paths: str | os.PathLike) -> str:
    """Checksum of one file, or of several files taken together."""
    return combine_digests([file_sha256(p) for p in paths])


def track_checksum(*, audio=None, midi=None, score=None, image=None, score_text: str | None = None) -> str:
    """The checksum of a track that loaders record and ``genre validate`` recomputes.

    SHA-256 of each of the track's files in the order audio, midi, score, image (the score only when it is
    not given inline), plus that of the inline text when the track also has files.
    """
    files = [p for p in (audio, midi, score if score_text is None else None, image) if p]
    digests = [file_sha256(p) for p in files]
    if score_text is not None:
        digests.append(text_sha256(score_text))
    return combine_digests(digests)


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------------------------- locking
@contextlib.contextmanager
def writer_lock(store_path: str | os.PathLike, *, timeout: float | None = None) -> Iterator[None]:
    """Hold the single-writer lock of a store; wait up to ``timeout`` seconds, then fail clearly."""
    store_path = Path(store_path)
    store_path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = store_path.with_name(store_path.name + ".lock")
    if timeout is None:
        timeout = float(os.environ.get(LOCK_TIMEOUT_ENV, "30"))
    fh = open(lock_path, "a+")
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise UsageError(
                        f"{store_path}: another genre process is writing this store "
                        f"(lock {lock_path}); waited {timeout:.0f} s — retry when it has finished"
                    ) from None
                time.sleep(0.2)
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        fh.close()


@contextlib.contextmanager
def write_transaction(store_path: str | os.PathLike, *, lock: bool = True) -> Iterator[h5py.File]:
    """Open a writable copy of a store; on success it atomically replaces the store.

    On any exception the copy is deleted and the store is left exactly as it was.
    """
    store_path = Path(store_path)
    store_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = store_path.with_name(f".{store_path.name}.tmp-{os.getpid()}")
    ctx = writer_lock(store_path) if lock else contextlib.nullcontext()
    with ctx:
        if store_path.exists():
            shutil.copyfile(store_path, tmp)
        try:
            with h5py.File(tmp, "a") as h5:
                yield h5
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, store_path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def open_read(store_path: str | os.PathLike, *, what: str = "store", hint: str = "") -> h5py.File:
    """Open a store read-only, with a one-line error when it does not exist or is unreadable."""
    store_path = Path(store_path)
    if not store_path.exists():
        raise UsageError(f"{store_path}: no {what} yet{(' — ' + hint) if hint else ''}")
    try:
        return h5py.File(store_path, "r")
    except OSError as exc:
        raise UsageError(f"{store_path}: unreadable HDF5 store ({exc})") from None


# ---------------------------------------------------------------------------------------- group attrs
def set_group_params(group: h5py.Group, params: Mapping) -> str:
    """Stamp a group with its parameters, their hash, the toolkit version and the creation time."""
    digest = params_hash(params)
    group.attrs["params"] = canonical_json(params)
    group.attrs["params_hash"] = digest
    group.attrs["version"] = __version__
    group.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return digest


def group_params(group: h5py.Group) -> dict:
    return json.loads(group.attrs.get("params", "{}"))


def group_status(store_path: str | os.PathLike, group_path: str, digest: str) -> str:
    """'fresh', 'stale' or 'missing' for a group of a store, compared with the wanted params hash."""
    store_path = Path(store_path)
    if not store_path.exists():
        return "missing"
    with h5py.File(store_path, "r") as h5:
        if group_path not in h5:
            return "missing"
        return "fresh" if h5[group_path].attrs.get("params_hash") == digest else "stale"


def replace_group(h5: h5py.File, group_path: str) -> h5py.Group:
    """Delete ``group_path`` if present and create it anew."""
    if group_path in h5:
        del h5[group_path]
    return h5.create_group(group_path)


def write_strings(group: h5py.Group, name: str, values) -> None:
    group.create_dataset(name, data=np.asarray(list(values), dtype=object), dtype=_STR)


def read_strings(dataset: h5py.Dataset) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in dataset[()]]


# ------------------------------------------------------------------------------------------- failures
def record_failures(h5: h5py.File, stage: str, failures: Mapping[str, str]) -> None:
    """Replace the ``/failed`` rows of ``stage`` by ``failures`` (track id -> message)."""
    rows = [r for r in read_failures(h5) if r[1] != stage]
    rows += [(tid, stage, msg) for tid, msg in failures.items()]
    if "failed" in h5:
        del h5["failed"]
    grp = h5.create_group("failed")
    for col, name in enumerate(("track_id", "stage", "message")):
        write_strings(grp, name, [r[col] for r in rows])


def read_failures(h5: h5py.File) -> list[tuple[str, str, str]]:
    if "failed" not in h5:
        return []
    grp = h5["failed"]
    cols = [read_strings(grp[name]) for name in ("track_id", "stage", "message")]
    return list(zip(*cols))


# ---------------------------------------------------------------------------------------- checkpoints
class RowCheckpoint:
    """Finished rows of a long per-track computation, kept in atomically written chunk files.

    A killed run leaves complete chunk files only (each is written to a temporary name and renamed),
    so the next run with the same parameters hash loads them and computes only the missing rows.
    """

    def __init__(self, directory: str | os.PathLike, digest: str):
        self.directory = Path(directory) / digest
        self._count = 0

    def load(self) -> tuple[dict[int, dict[str, np.ndarray]], dict[int, str]]:
        """Return (row -> {name: value}) for finished rows and (row -> message) for failed rows."""
        done: dict[int, dict[str, np.ndarray]] = {}
        failed: dict[int, str] = {}
        if not self.directory.exists():
            return done, failed
        for chunk in sorted(self.directory.glob("chunk-*.npz")):
            try:
                with np.load(chunk, allow_pickle=False) as data:
                    rows = data["rows"]
                    names = [k[len("value__"):] for k in data.files if k.startswith("value__")]
                    for i, row in enumerate(rows):
                        done[int(row)] = {n: data["value__" + n][i] for n in names}
                    for row, msg in zip(data["failed_rows"], data["failed_messages"]):
                        failed[int(row)] = str(msg)
            except (OSError, ValueError, KeyError):
                chunk.unlink(missing_ok=True)  # a torn chunk cannot exist (atomic rename), but be safe
            self._count += 1
        return done, failed

    def save(self, values: Mapping[int, Mapping[str, np.ndarray]], failed: Mapping[int, str]) -> None:
        """Append one chunk of finished rows (all rows must have the same value names and shapes)."""
        if not values and not failed:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        rows = np.array(sorted(values), dtype=np.int64)
        arrays: dict[str, np.ndarray] = {"rows": rows}
        if len(rows):
            for name in values[int(rows[0])]:
                arrays["value__" + name] = np.stack([np.asarray(values[int(r)][name]) for r in rows])
        arrays["failed_rows"] = np.array(sorted(failed), dtype=np.int64)
        arrays["failed_messages"] = np.array([failed[r] for r in sorted(failed)], dtype=str)
        self._count += 1
        final = self.directory / f"chunk-{time.time_ns():020d}-{os.getpid()}.npz"
        tmp = final.with_name("." + final.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, final)

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.directory.parent.rmdir()
