"""HDF5 stores: the one layer that writes them — locking, atomic writes, parameter hashes, failure records.

Every stage writes one or more *groups* of a store (``features.h5:/audio/mfcc``, ...). A group carries
attributes ``params`` (JSON), ``params_hash``, ``version`` and ``created``. A stage compares the hash of the
parameters it would use (upstream hashes included) with the stored one:

* ``fresh``   same hash: nothing to do unless ``--force``;
* ``stale``   different hash: the inputs or parameters changed, so the group is recomputed and replaced;
* ``missing`` never computed.

"Upstream hashes" are content keys, not parameters: every group also carries ``content_hash`` (a digest of
its data, :func:`write_group_data`) or at least ``write_id`` (the id of the write that made it), and a
stage that reads a group puts :func:`content_key` of it into its own parameters. So a group recomputed
with the same parameters but different data (``extract-audio --force`` after an extractor changed)
makes its consumers stale, while a recomputation that gives the same bytes does not.

Layout of an *indexed* store (``features.h5``, ``features.k-of-N.h5``, ``kernels.h5``)::

    features.h5                     the index: small; root attribute genre_layout = "genre-index/1"
      /audio/mfcc  -> ExternalLink("features.d/audio/mfcc.<token>.h5", "/")
      /text/minilm -> ExternalLink("features.d/text/minilm.<token>.h5", "/")
      /failed/track_id, stage, message
    features.d/audio/mfcc.<token>.h5  one file per group: its datasets at the root, its attributes on the root
    features.h5.lock                the single-writer lock

Readers need nothing special: ``h5py.File("features.h5")["audio/mfcc"]["data"]`` follows the link. Link
targets are relative to the index's folder (HDF5 resolves them against the folder of the file holding the
link, whatever the current directory), so a data home can be moved or copied as a whole.

Writes cost the size of what changed: :func:`write_transaction` (or the typed writers built on it,
:func:`write_groups`, :func:`write_feature`, :func:`write_texts`, :func:`write_kernel_groups`,
:func:`write_failures`) writes each new group into a new file of its own (a fresh ``<token>``, never a name in
use), then rewrites the small index to a temporary file and renames it over the index: that rename is the
commit. A run killed at any moment leaves the old index, pointing to the old, complete group files; the
half-written new files are referenced by nothing and are deleted by the next write (as are the files of
replaced groups, right after the commit). A store of the old layout (plain groups inside ``features.h5``) is
read as it is; its first write hard-links the old file into ``features.d/legacy-<token>.h5`` and links its
groups there, so no data is copied.

The manifest (``manifest.h5``) is a small single-file store rewritten as a whole (:func:`file_transaction`:
copy, modify, rename) through :func:`write_file_store` / :func:`update_file_store`.

One writer at a time: an ``fcntl`` lock on ``<store>.lock`` (released by the kernel when the process dies, so
no stale locks); the index is read after the lock is taken, so concurrent writers of different groups never
lose each other's groups. Long per-track stages also keep :class:`RowCheckpoint` files, so a killed run resumes
where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

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


# ------------------------------------------------------------------------------------ on-disk helpers
LAYOUT_ATTR = "genre_layout"
CONTENT_ATTR = "content_hash"  # a group's data digest (see content_key): what downstream caches are keyed on
WRITE_ID = "write_id"
INDEX_LAYOUT = "genre-index/1"
FAILED = "failed"
_FAILED_COLUMNS = ("track_id", "stage", "message")


def data_dir(store_path: str | os.PathLike) -> Path:
    """The folder holding the group files of an indexed store: ``features.h5`` -> ``features.d``."""
    store_path = Path(store_path)
    return store_path.with_name(store_path.stem + ".d")


def _fsync_path(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on directories
        if not directory:
            raise
    finally:
        os.close(fd)


def _norm(group_path: str) -> str:
    """``/audio/mfcc/`` -> ``audio/mfcc``; ``/`` -> ``""``."""
    parts = [p for p in str(group_path).split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"group path {group_path!r}: '..' is not allowed")
    return "/".join(parts)


def _within(path: str, unit: str) -> str | None:
    """The path relative to ``unit`` when ``path`` is ``unit`` or inside it, else None."""
    if path == unit:
        return ""
    if path.startswith(unit + "/"):
        return path[len(unit) + 1 :]
    return None


def _is_unit(obj) -> bool:
    """A group of a plain (old-layout) file that a stage wrote as one unit."""
    return isinstance(obj, h5py.Dataset) or "params_hash" in obj.attrs


def _scan_index(h5: h5py.File) -> tuple[dict[str, tuple[str | None, str]], list[tuple[str, str, str]], dict]:
    """Group links of a store file: ``{group: (file relative to the store's folder, object path)}``.

    Groups stored inside the file itself (the old layout) get ``file=None`` and their object path. Links
    are read without being followed, so this is cheap whatever the groups hold.
    """
    links: dict[str, tuple[str | None, str]] = {}

    def walk(group: h5py.Group, prefix: str) -> None:
        for name in group:
            path = prefix + name
            if path == FAILED:
                continue
            link = group.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                links[path] = (link.filename, link.path)
                continue
            obj = group.get(name)
            if obj is None:  # a dangling soft link
                continue
            if _is_unit(obj):
                links[path] = (None, obj.name)
            else:
                walk(obj, path + "/")

    walk(h5, "")
    attrs = {k: v for k, v in h5.attrs.items() if k != LAYOUT_ATTR}
    return links, read_failures(h5), attrs


def _write_failed_table(h5: h5py.File, rows: list[tuple[str, str, str]]) -> None:
    if FAILED in h5:
        del h5[FAILED]
    grp = h5.create_group(FAILED)
    for col, name in enumerate(_FAILED_COLUMNS):
        write_strings(grp, name, [r[col] for r in rows])


# ------------------------------------------------------------------------------------------ transaction
class _Pending:
    """A group file being written: open while it is written to, closed (and reopened on demand) after."""

    def __init__(self, rel: str, fh: h5py.File):
        self.rel, self._fh, self._path = rel, fh, fh.filename

    @property
    def file(self) -> h5py.File:
        if self._fh is None:
            self._fh = h5py.File(self._path, "r+")
        return self._fh

    def close(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(Exception):
                self._fh.close()
            self._fh = None


class Transaction:
    """A write to an indexed store (``features.h5``, ``kernels.h5``), committed atomically on success.

    It answers the parts of the ``h5py.File`` interface the stages use: ``create_group``, ``require_group``,
    ``h5[path]``, ``path in h5``, ``del h5[path]``, ``keys()``, ``attrs`` (the index's own attributes), and,
    through :func:`replace_group` / :func:`record_failures` / :func:`read_failures`, the group and failure
    helpers. A group created here is a new file of its own (the root group of it is what ``create_group``
    returns; write datasets, subgroups and attributes into it as into any h5py group). Groups already in the
    store are read-only here: replace them (:func:`replace_group`) rather than edit them in place.
    """

    def __init__(self, store_path: str | os.PathLike):
        self.path = Path(store_path)
        self.root = self.path.parent
        self.data_dir = data_dir(self.path)
        self._links: dict[str, tuple[str | None, str]] = {}
        self._failures: list[tuple[str, str, str]] = []
        self.attrs: dict = {}
        self._pending: dict[str, _Pending] = {}
        self._removed: set[str] = set()
        self._reader: h5py.File | None = None

    # -- lifecycle
    def _load(self) -> None:
        if not self.path.exists():
            return
        self._reader = _open(self.path)
        self._links, self._failures, self.attrs = _scan_index(self._reader)

    def _abort(self) -> None:
        for pending in self._pending.values():
            pending.close()
            with contextlib.suppress(FileNotFoundError):
                (self.root / pending.rel).unlink()
        self._pending.clear()
        self._close_reader()

    def _close_reader(self) -> None:
        if self._reader is not None:
            with contextlib.suppress(Exception):
                self._reader.close()
            self._reader = None

    def _commit(self) -> None:
        for pending in self._pending.values():
            pending.close()
            _fsync_path(self.root / pending.rel)
        for folder in {(self.root / p.rel).parent for p in self._pending.values()}:
            _fsync_path(folder, directory=True)  # the new files' names are durable before the index names them
        links = {g: l for g, l in self._links.items() if g not in self._removed}
        if any(f is None for f, _ in links.values()):  # old layout: keep its groups where they are, no copy
            rel = f"{self.data_dir.name}/legacy-{secrets.token_hex(4)}.h5"
            self.data_dir.mkdir(parents=True, exist_ok=True)
            try:
                os.link(self.path, self.root / rel)
            except OSError:  # no hard links on this file system: one copy, once
                shutil.copyfile(self.path, self.root / rel)
                _fsync_path(self.root / rel)
            _fsync_path(self.data_dir, directory=True)
            links = {g: ((rel, o) if f is None else (f, o)) for g, (f, o) in links.items()}
        links.update({g: (p.rel, "/") for g, p in self._pending.items()})
        self._close_reader()
        tmp = self.root / f".{self.path.name}.tmp-{os.getpid()}"
        try:
            with h5py.File(tmp, "w") as h5:
                h5.attrs[LAYOUT_ATTR] = INDEX_LAYOUT
                for key, value in self.attrs.items():
                    h5.attrs[key] = value
                for group, (filename, obj) in sorted(links.items()):
                    h5[group] = h5py.ExternalLink(filename, obj)
                if self._failures:
                    _write_failed_table(h5, self._failures)
            _fsync_path(tmp)
            _before_index_replace(self.path)
            os.replace(tmp, self.path)  # the commit
            self._pending.clear()  # referenced now: an error from here on must not delete them
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        _fsync_path(self.root, directory=True)
        with contextlib.suppress(OSError):  # left-overs are collected by the next write as well
            collect_garbage(self.path, links)

    # -- groups
    def _visible(self) -> list[str]:
        return [g for g in self._links if g not in self._removed] + list(self._pending)

    def _pending_of(self, path: str) -> tuple[h5py.File, str] | None:
        for unit, pending in self._pending.items():
            rel = _within(path, unit)
            if rel is not None:
                return pending.file, rel
        return None

    def close_group(self, path: str) -> None:
        """Close the file of a group created here (it is reopened if written to again); saves descriptors."""
        self._pending[_norm(path)].close()

    def _committed_of(self, path: str) -> str | None:
        for unit in self._links:
            if unit not in self._removed and _within(path, unit) is not None:
                return unit
        return None

    def create_group(self, path: str) -> h5py.Group:
        path = _norm(path)
        if not path:
            raise ValueError("the root of an indexed store is not a group to write; create a named group")
        inside = self._pending_of(path)
        if inside is not None:
            fh, rel = inside
            return fh.create_group(rel) if rel else fh["/"]
        if path in self:
            raise ValueError(f"{self.path}: group '{path}' already exists (replace it with store.replace_group)")
        if self._committed_of(path) is not None:
            raise ValueError(f"{self.path}: '{path}' is inside the stored group '{self._committed_of(path)}'; replace that group")
        if any(_within(u, path) is not None for u in self._visible()):
            raise ValueError(f"{self.path}: '{path}' holds other groups; delete them first")
        token = secrets.token_hex(6)
        rel = f"{self.data_dir.name}/{path}.{token}.h5"
        (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
        fh = h5py.File(self.root / rel, "w")
        fh.attrs[WRITE_ID] = token  # what content_key() falls back on when the writer recorded no content hash
        self._pending[path] = _Pending(rel, fh)
        return fh["/"]

    def require_group(self, path: str) -> h5py.Group:
        path = _norm(path)
        inside = self._pending_of(path)
        if inside is not None:
            fh, rel = inside
            return fh.require_group(rel) if rel else fh["/"]
        return self.create_group(path)

    def replace_group(self, path: str) -> h5py.Group:
        """Delete ``path`` (a pending or stored group, or a subgroup of a pending one) and create it anew."""
        path = _norm(path)
        if any(_within(u, path) is not None for u in self._visible()):
            del self[path]
        else:
            inside = self._pending_of(path)
            if inside is not None and inside[1] and inside[1] in inside[0]:
                del inside[0][inside[1]]
        return self.create_group(path)

    def __delitem__(self, path: str) -> None:
        path = _norm(path)
        found = False
        for unit in list(self._pending):
            if _within(unit, path) is not None:
                pending = self._pending.pop(unit)
                pending.close()
                (self.root / pending.rel).unlink(missing_ok=True)
                found = True
        for unit in self._links:
            if unit not in self._removed and _within(unit, path) is not None:
                self._removed.add(unit)
                found = True
        if found:
            return
        inside = self._pending_of(path)
        if inside is not None:
            fh, rel = inside
            del fh[rel]
            return
        if self._committed_of(path) is not None:
            raise ValueError(f"{self.path}: '{path}' is inside the stored group '{self._committed_of(path)}'; replace that group")
        raise KeyError(path)

    def __contains__(self, path: str) -> bool:
        path = _norm(path)
        if path == FAILED:
            return bool(self._failures)
        inside = self._pending_of(path)
        if inside is not None:
            fh, rel = inside
            return not rel or rel in fh
        unit = self._committed_of(path)
        if unit is not None:
            return path in self._reader
        return bool(path) and any(_within(u, path) is not None for u in self._visible())

    def __getitem__(self, path: str):
        path = _norm(path)
        inside = self._pending_of(path)
        if inside is not None:
            fh, rel = inside
            return fh[rel] if rel else fh["/"]
        if self._committed_of(path) is not None:
            return self._reader[path]
        if path and path in self and self._reader is not None and path in self._reader:
            return self._reader[path]  # an intermediate group of stored groups (read-only)
        raise KeyError(f"{self.path}: no '{path}'")

    def __setitem__(self, path: str, value) -> None:
        path = _norm(path)
        inside = self._pending_of(path)
        if inside is None or not inside[1]:
            raise TypeError(f"{self.path}: write '{path}' inside a group (create_group / replace_group first)")
        fh, rel = inside
        fh[rel] = value

    def create_dataset(self, path: str, **kwargs) -> h5py.Dataset:
        path = _norm(path)
        inside = self._pending_of(path)
        if inside is None or not inside[1]:
            raise TypeError(f"{self.path}: write '{path}' inside a group (create_group / replace_group first)")
        fh, rel = inside
        return fh.create_dataset(rel, **kwargs)

    def keys(self) -> list[str]:
        return sorted({g.split("/")[0] for g in self._visible()} | ({FAILED} if self._failures else set()))

    def __iter__(self):
        return iter(self.keys())

    def groups(self) -> list[str]:
        """The stored groups as they will be after the commit."""
        return sorted(self._visible())

    # -- failures
    def set_failures(self, stage: str, failures: Mapping[str, str]) -> None:
        self._failures = [r for r in self._failures if r[1] != stage]
        self._failures += [(str(tid), stage, " ".join(str(msg).split())) for tid, msg in failures.items()]

    def failures(self) -> list[tuple[str, str, str]]:
        return list(self._failures)


def _before_index_replace(store_path: Path) -> None:
    """Hook between writing the new index and renaming it into place (tests inject crashes here)."""


def collect_garbage(store_path: str | os.PathLike, links: Mapping[str, tuple[str | None, str]] | None = None) -> list[Path]:
    """Delete the group files of an indexed store that its index no longer references; returns them.

    Called by every commit with the writer lock held: what is left over is a crashed write's half-written
    files, the files of groups that were replaced, and stale temporary indexes.
    """
    store_path = Path(store_path)
    if links is None:
        if not store_path.exists():
            return []
        with _open(store_path) as h5:
            links, _, _ = _scan_index(h5)
    keep = {os.path.abspath(store_path.parent / f) for f, _ in links.values() if f is not None}
    removed = []
    directory = data_dir(store_path)
    if directory.is_dir():
        for p in sorted(directory.rglob("*"), key=lambda q: len(q.parts), reverse=True):
            if p.is_dir():
                with contextlib.suppress(OSError):
                    p.rmdir()  # only when empty
            elif os.path.abspath(p) not in keep:
                p.unlink(missing_ok=True)
                removed.append(p)
        with contextlib.suppress(OSError):
            directory.rmdir()
    for p in store_path.parent.glob(f".{store_path.name}.tmp-*"):
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed


@contextlib.contextmanager
def write_transaction(store_path: str | os.PathLike, *, lock: bool = True) -> Iterator[Transaction]:
    """Write groups of an indexed store; on success the new index replaces the old one atomically.

    On any exception the new group files are deleted and the store is left exactly as it was. Only the
    groups created in the transaction are written (each to a file of its own); the others are untouched.
    """
    store_path = Path(store_path)
    store_path.parent.mkdir(parents=True, exist_ok=True)
    ctx = writer_lock(store_path) if lock else contextlib.nullcontext()
    with ctx:
        txn = Transaction(store_path)
        txn._load()
        try:
            yield txn
        except BaseException:
            txn._abort()
            raise
        try:
            txn._commit()
        except BaseException:
            txn._abort()
            raise


@contextlib.contextmanager
def file_transaction(store_path: str | os.PathLike, *, lock: bool = True) -> Iterator[h5py.File]:
    """Rewrite a small single-file store (the manifest): copy, modify the copy, rename it over the original.

    On any exception the copy is deleted and the store is left exactly as it was. Meant for stores that are
    small and rewritten as a whole; large stores are indexed (:func:`write_transaction`).
    """
    store_path = Path(store_path)
    store_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = store_path.with_name(f".{store_path.name}.tmp-{os.getpid()}")
    if store_path.is_dir():
        raise UsageError(f"{store_path}: is a directory, not an HDF5 store; move it away and rerun")
    ctx = writer_lock(store_path) if lock else contextlib.nullcontext()
    with ctx:
        if store_path.exists():
            shutil.copyfile(store_path, tmp)
        try:
            with h5py.File(tmp, "a") as h5:
                yield h5
            _fsync_path(tmp)
            os.replace(tmp, store_path)
            _fsync_path(store_path.parent, directory=True)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def open_read(store_path: str | os.PathLike, *, what: str = "store", hint: str = "") -> h5py.File:
    """Open a store read-only, with a one-line error when it does not exist or is unreadable."""
    store_path = Path(store_path)
    if not store_path.exists():
        raise UsageError(f"{store_path}: no {what} yet{(' — ' + hint) if hint else ''}")
    return _open(store_path)


def _open(store_path: Path) -> h5py.File:
    """``h5py.File(store_path, "r")`` of an existing path; a directory, an empty or a corrupt file is a
    one-line :class:`UsageError` naming the path (h5py's own message spans lines and names no cause)."""
    if store_path.is_dir():
        raise UsageError(f"{store_path}: is a directory, not an HDF5 store; move it away and rerun the stage that writes it")
    try:
        return h5py.File(store_path, "r")
    except OSError as exc:
        if store_path.is_file() and store_path.stat().st_size == 0:
            cause = "an empty file (0 bytes)"
        else:
            cause = "not a readable HDF5 file (" + " ".join(str(exc).split()) + ")"
        raise UsageError(f"{store_path}: {cause}; delete it and rerun the stage that writes it") from None


def is_indexed(store_path: str | os.PathLike) -> bool:
    """True for a store of the indexed layout (False for an old-layout file or a missing one)."""
    store_path = Path(store_path)
    if not store_path.exists():
        return False
    with _open(store_path) as h5:
        return h5.attrs.get(LAYOUT_ATTR) == INDEX_LAYOUT


def store_files(store_path: str | os.PathLike) -> list[Path]:
    """The files a store is made of: the index (or single file) and the group files it references."""
    store_path = Path(store_path)
    if not store_path.exists():
        return []
    with _open(store_path) as h5:
        links, _, _ = _scan_index(h5)
    files = {os.path.normpath(store_path.parent / f) for f, _ in links.values() if f is not None}
    return [store_path, *sorted(Path(f) for f in files)]


def store_size(store_path: str | os.PathLike) -> int:
    """Bytes on disk of a store: its index plus the group files it references."""
    return sum(p.stat().st_size for p in store_files(store_path) if p.exists())


def remove_store(store_path: str | os.PathLike) -> None:
    """Delete a store: its index (or single file), its group files and its lock file."""
    store_path = Path(store_path)
    with writer_lock(store_path):
        store_path.unlink(missing_ok=True)
        shutil.rmtree(data_dir(store_path), ignore_errors=True)
    store_path.with_name(store_path.name + ".lock").unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------- group attrs
def set_group_params(group, params: Mapping) -> str:
    """Stamp a group with its parameters, their hash, the toolkit version and the creation time."""
    digest = params_hash(params)
    group.attrs["params"] = canonical_json(params)
    group.attrs["params_hash"] = digest
    group.attrs["version"] = __version__
    group.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return digest


def group_params(group) -> dict:
    return json.loads(group.attrs.get("params", "{}"))


def content_hash(item: "GroupData") -> str:
    """SHA-256 (16 hex digits) of what a group holds: every array's name, dtype, shape and bytes, and its strings."""
    h = hashlib.sha256()
    for name in sorted(item.arrays):
        value = np.ascontiguousarray(item.arrays[name])
        h.update(f"{name}\0{value.dtype.str}\0{value.shape}\0".encode())
        h.update(value.data if value.dtype.kind != "O" else canonical_json([str(v) for v in value.ravel()]).encode())
    for name in sorted(item.strings):
        h.update(f"{name}\0str\0".encode() + canonical_json([str(v) for v in item.strings[name]]).encode())
    return h.hexdigest()[:16]


def content_key(group) -> str:
    """The key a downstream cache records for a group it read: changes whenever the group's data changed.

    The group's content hash (:func:`write_group_data` records one); for a group written otherwise, the id
    of the write that made it (every group file of an indexed store has one); for a group of the old
    single-file layout, its params hash and creation time.
    """
    attrs = group.attrs
    for key in (CONTENT_ATTR, WRITE_ID):
        if key in attrs:
            return f"{key}:{attrs[key]}"
    return f"created:{attrs.get('params_hash', '')}@{attrs.get('created', '')}"


def group_status(store_path: str | os.PathLike, group_path: str, digest: str) -> str:
    """'fresh', 'stale' or 'missing' for a group of a store, compared with the wanted params hash."""
    store_path = Path(store_path)
    if not store_path.exists():
        return "missing"
    with _open(store_path) as h5:
        if group_path not in h5:
            return "missing"
        return "fresh" if h5[group_path].attrs.get("params_hash") == digest else "stale"


def replace_group(h5, group_path: str) -> h5py.Group:
    """Delete ``group_path`` if present and create it anew (in a :class:`Transaction`: a new group file)."""
    if isinstance(h5, Transaction):
        return h5.replace_group(group_path)
    if group_path in h5:
        del h5[group_path]
    return h5.create_group(group_path)


def write_strings(group: h5py.Group, name: str, values) -> None:
    group.create_dataset(name, data=np.asarray(list(values), dtype=object), dtype=_STR)


def read_strings(dataset: h5py.Dataset) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in dataset[()]]


def list_groups(source) -> list[str]:
    """The groups a stage wrote as units (``audio/mfcc``, ``<split>/fold0/audio/mfcc/rbf``), sorted.

    ``source`` is a store path, an open ``h5py.File`` or a :class:`Transaction`. Links are not followed.
    """
    if isinstance(source, Transaction):
        return source.groups()
    if isinstance(source, (str, os.PathLike)):
        if not Path(source).exists():
            return []
        with _open(Path(source)) as h5:
            return list_groups(h5)
    links, _, _ = _scan_index(source)
    return sorted(links)


# ------------------------------------------------------------------------------------------- failures
def record_failures(h5, stage: str, failures: Mapping[str, str]) -> None:
    """Replace the ``/failed`` rows of ``stage`` by ``failures`` (track id -> message)."""
    if isinstance(h5, Transaction):
        h5.set_failures(stage, failures)
        return
    rows = [r for r in read_failures(h5) if r[1] != stage]
    rows += [(str(tid), stage, " ".join(str(msg).split())) for tid, msg in failures.items()]
    _write_failed_table(h5, rows)


def read_failures(source, stage: str | None = None) -> list[tuple[str, str, str]]:
    """``(track id, stage, message)`` rows of a store (a path, an open file or a transaction)."""
    if isinstance(source, Transaction):
        rows = source.failures()
    elif isinstance(source, (str, os.PathLike)):
        if not Path(source).exists():
            return []
        with _open(Path(source)) as h5:
            return read_failures(h5, stage)
    elif FAILED not in source:
        rows = []
    else:
        grp = source[FAILED]
        cols = [read_strings(grp[name]) for name in _FAILED_COLUMNS]
        rows = list(zip(*cols))
    return [r for r in rows if stage is None or r[1] == stage]


def write_failures(store_path: str | os.PathLike, stage: str, failures: Mapping[str, str]) -> None:
    """Replace the failures of one stage in an indexed store (rewrites the small index only)."""
    with write_transaction(store_path) as txn:
        txn.set_failures(stage, failures)


# ---------------------------------------------------------------------------------------- typed writers
@dataclasses.dataclass
class GroupData:
    """One group to write: its datasets, string datasets, hard-linked aliases and attributes.

    Names may have slashes (``state/idf``): subgroups are created. Arrays named in ``compress`` are written
    chunked with gzip level 1.
    """

    params: Mapping
    arrays: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    strings: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)
    aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)  # name -> existing dataset name
    attrs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    compress: Collection[str] = ()
    subgroups: Collection[str] = ()  # (possibly empty) subgroups to create, e.g. ``state``


CHUNK_BYTES = 1 << 18  # target chunk size of compressed row data (h5py's default chunk cache is 1 MiB)


def row_chunks(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...] | None:
    """HDF5 chunks of whole rows: ``(k, *shape[1:])`` with k rows making about :data:`CHUNK_BYTES` (at least 1).

    Why not h5py's automatic chunks: they cut a (n, bins, frames) patch group into blocks of a few rows by
    a few bins by a few frames, so reading one row decompresses dozens of chunks, each holding dozens of
    other rows; mini-batches of random rows then cost ~10x a sequential read of everything.
    """
    if len(shape) < 2 or shape[0] == 0:
        return None
    row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * itemsize)
    return (int(min(shape[0], max(1, CHUNK_BYTES // row_bytes))), *(int(v) for v in shape[1:]))


def write_group_data(group: h5py.Group, item: GroupData) -> str:
    """Write ``item`` into an (empty) h5py group; returns its params hash."""
    for name in item.subgroups:
        group.require_group(name)
    for name, value in item.arrays.items():
        value = np.asarray(value)
        if name in item.compress:
            group.create_dataset(name, data=value, chunks=row_chunks(value.shape, value.dtype.itemsize),
                                 compression="gzip", compression_opts=1)
        else:
            group.create_dataset(name, data=value)
    for name, values in item.strings.items():
        write_strings(group, name, values)
    for name, target in item.aliases.items():
        group[name] = group[target]
    for key, value in item.attrs.items():
        group.attrs[key] = value
    group.attrs[CONTENT_ATTR] = content_hash(item)
    return set_group_params(group, item.params)


def write_groups(
    store_path: str | os.PathLike,
    groups: Mapping[str, GroupData],
    *,
    failures: Mapping[str, Mapping[str, str]] | None = None,
    delete: Iterable[str] = (),
) -> dict[str, str]:
    """Write (replace) groups of an indexed store in one atomic commit; returns ``{group: params hash}``.

    ``failures`` maps a stage name (by convention the group's path) to its ``{track id: message}``; the
    stage's previous failure rows are replaced. ``delete`` names groups to remove in the same commit.
    """
    digests = {}
    with write_transaction(store_path) as txn:
        for path in delete:
            if path in txn:
                del txn[path]
        for path, item in groups.items():
            digests[path] = write_group_data(txn.replace_group(path), item)
            txn.close_group(path)
        for stage, rows in (failures or {}).items():
            txn.set_failures(stage, rows)
    return digests


def feature_data(
    data: np.ndarray,
    valid: np.ndarray,
    params: Mapping,
    *,
    extras: Mapping[str, np.ndarray] | None = None,
    strings: Mapping[str, Sequence[str]] | None = None,
    compression: str | None = "gzip",
) -> GroupData:
    """A feature group: ``data`` (n x shape, float32, NaN rows where invalid), ``valid`` (bool, n), extras."""
    data = np.asarray(data, dtype=np.float32)
    valid = np.asarray(valid, dtype=bool)
    if valid.shape != (len(data),):
        raise ValueError(f"valid has shape {valid.shape}, expected ({len(data)},)")
    return GroupData(
        params=params, arrays={"data": data, "valid": valid, **(extras or {})}, strings=dict(strings or {}),
        compress=("data",) if compression == "gzip" else (),
    )


def write_feature(
    store_path: str | os.PathLike,
    group: str,
    data: np.ndarray,
    valid: np.ndarray,
    params: Mapping,
    failures: Mapping[str, str] | None = None,
    *,
    extras: Mapping[str, np.ndarray] | None = None,
    strings: Mapping[str, Sequence[str]] | None = None,
    compression: str | None = "gzip",
) -> str:
    """Write one feature group (and replace its failure rows) in one commit; returns its params hash.

    Several feature groups in one commit: ``write_groups(path, {g: feature_data(...)}, failures={g: ...})``.
    """
    item = feature_data(data, valid, params, extras=extras, strings=strings, compression=compression)
    return write_groups(store_path, {group: item}, failures={group: dict(failures or {})})[group]


def write_feature_into(h5, group: str, data, valid, params: Mapping, failures: Mapping[str, str]) -> str:
    """Inside an open :func:`write_transaction`: replace one feature group and its failure rows."""
    digest = write_group_data(replace_group(h5, group), feature_data(data, valid, params))
    record_failures(h5, group, failures)
    return digest


def write_texts(
    store_path: str | os.PathLike,
    group: str,
    texts: Sequence[str],
    valid: np.ndarray,
    params: Mapping,
    failures: Mapping[str, str] | None = None,
) -> str:
    """Write a text group (``text/source``: ``text`` (str, n) and ``valid`` (bool, n)); returns its hash."""
    item = GroupData(params=params, arrays={"valid": np.asarray(valid, dtype=bool)}, strings={"text": list(texts)})
    return write_groups(store_path, {group: item}, failures={group: dict(failures or {})})[group]


def kernel_data(
    gram: np.ndarray,
    params: Mapping,
    *,
    map_gram: np.ndarray | None = None,
    phi: np.ndarray | None = None,
    state: Mapping[str, np.ndarray] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> GroupData:
    """A kernel group: ``gram``, ``map_gram`` (a hard link to ``gram`` when None: the map is exact),
    ``map`` (the explicit map, when given), ``state/*`` (the fitted preprocessing) and attributes."""
    arrays = {"gram": np.asarray(gram, dtype=np.float32)}
    aliases = {}
    if map_gram is None:
        aliases["map_gram"] = "gram"
    else:
        arrays["map_gram"] = np.asarray(map_gram, dtype=np.float32)
    if phi is not None:
        arrays["map"] = np.asarray(phi, dtype=np.float32)
    for key, value in (state or {}).items():
        arrays[f"state/{key}"] = np.asarray(value)
    return GroupData(params=params, arrays=arrays, aliases=aliases, attrs=dict(attrs or {}),
                     compress=("map",) if phi is not None else (), subgroups=("state",))


def write_kernel_groups(store_path: str | os.PathLike, groups: Mapping[str, GroupData]) -> dict[str, str]:
    """Write kernel groups (made by :func:`kernel_data`) in one commit; returns ``{group: params hash}``."""
    return write_groups(store_path, groups)


# ---------------------------------------------------------------------------------------- typed readers
def read_feature(
    store_path: str | os.PathLike, group: str, *, what: str = "features", hint: str = ""
) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(data, valid, params)`` of a feature group; a one-line error naming what the store has instead."""
    with open_read(store_path, what=what, hint=hint) as h5:
        if group not in h5 or "data" not in h5[group]:
            have = [g for g in list_groups(h5) if "data" in h5[g]]
            raise UsageError(f"{store_path}: no feature '{group}' (have: {', '.join(have) or 'none'})")
        grp = h5[group]
        return grp["data"][()], grp["valid"][()], group_params(grp)


def read_texts(store_path: str | os.PathLike, group: str) -> tuple[list[str], np.ndarray, dict]:
    """``(texts, valid, params)`` of a text group such as ``text/source``."""
    with open_read(store_path, what="features") as h5:
        if group not in h5 or "text" not in h5[group]:
            raise UsageError(f"{store_path}: no texts '{group}'")
        grp = h5[group]
        return read_strings(grp["text"]), grp["valid"][()], group_params(grp)


def read_group(
    store_path: str | os.PathLike, group: str, names: Iterable[str] | None = None, *, what: str = "store", hint: str = ""
) -> tuple[dict[str, np.ndarray], dict]:
    """Arrays of a group (all its datasets, subgroups included, or ``names``) and its attributes."""
    with open_read(store_path, what=what, hint=hint) as h5:
        if group not in h5:
            raise UsageError(f"{store_path}: no group '{group}'{(' — ' + hint) if hint else ''}")
        grp = h5[group]
        if names is None:
            found: list[str] = []
            grp.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) else None)
            names = found
        out = {}
        for name in names:
            ds = grp[name]
            out[name] = read_strings(ds) if h5py.check_string_dtype(ds.dtype) else ds[()]
        return out, dict(grp.attrs)


def group_attrs(store_path: str | os.PathLike, group: str) -> dict:
    """The attributes of a group (``params``, ``params_hash``, ...); empty when it does not exist."""
    store_path = Path(store_path)
    if not store_path.exists():
        return {}
    with _open(store_path) as h5:
        return dict(h5[group].attrs) if group in h5 else {}


def describe(store_path: str | os.PathLike) -> list[tuple[str, dict[str, tuple], dict]]:
    """``(group, {dataset: shape}, attrs)`` of every group of a store (datasets directly in the group)."""
    out = []
    with open_read(store_path) as h5:
        for group in list_groups(h5):
            obj = h5.get(group)
            if obj is None:
                continue
            if isinstance(obj, h5py.Dataset):
                out.append((group, {"": obj.shape}, dict(obj.attrs)))
                continue
            shapes = {k: obj[k].shape for k in obj if isinstance(obj.get(k), h5py.Dataset)}
            out.append((group, shapes, dict(obj.attrs)))
    return out


# -------------------------------------------------------------------------------- single-file stores
def _is_strings(value) -> bool:
    if isinstance(value, np.ndarray):
        return value.dtype.kind in ("U", "O", "S")
    return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)


def _write_tree(h5: h5py.File, datasets: Mapping[str, Any], dataset_attrs: Mapping[str, Mapping]) -> None:
    for name, value in datasets.items():
        if name in h5:
            del h5[name]
        if _is_strings(value):
            parent, _, leaf = name.rpartition("/")
            write_strings(h5.require_group(parent) if parent else h5, leaf, [str(v) for v in value])
        else:
            h5.create_dataset(name, data=np.asarray(value))
    for name, attrs in dataset_attrs.items():
        for key, value in attrs.items():
            h5[name].attrs[key] = value


def write_file_store(
    store_path: str | os.PathLike,
    datasets: Mapping[str, Any],
    *,
    params: Mapping | None = None,
    attrs: Mapping[str, Any] | None = None,
    dataset_attrs: Mapping[str, Mapping] | None = None,
    groups: Iterable[str] = (),
    failures: Mapping[str, Mapping[str, str]] | None = None,
) -> None:
    """Write a whole single-file store (the manifest) atomically, replacing any previous one.

    ``datasets`` maps paths (``tracks/id``) to arrays or lists of strings; ``params`` stamp the root (see
    :func:`set_group_params`); ``groups`` are (possibly empty) groups to create; ``failures`` as in
    :func:`write_groups`.
    """
    with file_transaction(store_path) as h5:
        for key in list(h5.keys()):
            del h5[key]
        for key in list(h5.attrs):
            del h5.attrs[key]
        if params is not None:
            set_group_params(h5, params)
        for key, value in (attrs or {}).items():
            h5.attrs[key] = value
        for name in groups:
            h5.require_group(name)
        _write_tree(h5, datasets, dataset_attrs or {})
        for stage, rows in (failures or {}).items():
            record_failures(h5, stage, rows)


def update_file_store(
    store_path: str | os.PathLike,
    datasets: Mapping[str, Any] | None = None,
    *,
    dataset_attrs: Mapping[str, Mapping] | None = None,
    delete: Iterable[str] = (),
    failures: Mapping[str, Mapping[str, str]] | None = None,
) -> None:
    """Add or replace datasets, delete paths and replace stages' failure rows of a single-file store."""
    if not Path(store_path).exists():
        raise UsageError(f"{store_path}: no store to update")
    with file_transaction(store_path) as h5:
        for name in delete:
            if name in h5:
                del h5[name]
        _write_tree(h5, datasets or {}, dataset_attrs or {})
        for stage, rows in (failures or {}).items():
            record_failures(h5, stage, rows)


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
