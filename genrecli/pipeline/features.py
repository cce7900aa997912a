"""Shared machinery of the feature stages: per-track loops with checkpoints, and the feature store.

A feature group ``/<modality>/<name>`` of ``features.h5`` holds ``data`` (n x shape, float32, NaN rows for
failed tracks) and ``valid`` (bool, n). Failed tracks are recorded in ``/failed`` under the group's name.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import h5py
import numpy as np

from genrecli import store, ui
from genrecli.errors import GenreError, InputError, UsageError
from genrecli.layout import DatasetPaths
from genrecli.pipeline.executors import Executor, as_executor, check_available, run_rows
from genrecli.pipeline.workers import TracksUndone, track_bounds

CHECKPOINT_EVERY = 32  # tracks per checkpoint chunk: a kill loses at most this much work


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"2/4"`` -> ``(2, 4)``; shards are 1-based."""
    if not text:
        return None
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard {text}: expected k/N, e.g. 1/4") from None
    if not 1 <= k <= n:
        raise UsageError(f"--shard {text}: k must be between 1 and N")
    return k, n


def shard_rows(n: int, shard: tuple[int, int] | None) -> np.ndarray:
    rows = np.arange(n)
    return rows if shard is None else rows[shard[0] - 1 :: shard[1]]


class TrackInternalError(RuntimeError):
    """A bug (not a bad input) met on one track of a per-track stage; the original is ``__cause__``.

    The stage stops (finished tracks stay in the checkpoint, so a rerun resumes); the CLI prints
    ``internal error in <stage> on <track id>: <Type>: <message>`` and, with --verbose, the traceback.
    """

    def __init__(self, stage: str, track_id: str, exc: BaseException):
        self.stage, self.track_id = stage, track_id
        super().__init__(f"internal error in {stage} on {track_id}: {type(exc).__name__}: {' '.join(str(exc).split())}")


def is_track_failure(exc: BaseException) -> bool:
    """True for an error that makes one track unusable (the stage records it and goes on).

    That is a :class:`GenreError` other than :class:`UsageError` (an :class:`InputError`: the extractors
    wrap the decode/parse errors of third-party readers into it). A UsageError (bad SoundFont, missing
    weights) concerns every track and stops the stage; any other exception is a bug and stops it too.
    """
    return isinstance(exc, GenreError) and not isinstance(exc, UsageError)


def run_per_track(
    func: Callable,
    items: Mapping[int, object],
    *,
    checkpoint: store.RowCheckpoint,
    jobs: int | None = 1,
    description: str,
    ids: list[str],
    track_timeout: float | None = None,
    track_memory: int | float | str | None = None,
    executor: Executor | str | None = None,
) -> tuple[dict[int, dict[str, np.ndarray]], dict[int, str]]:
    """Apply ``func(item) -> {name: array}`` to every row, resuming from and saving to ``checkpoint``.

    The rows run in ``jobs`` worker processes (one also for ``jobs=1``; see :mod:`genrecli.pipeline.workers`),
    or, with ``executor="ray"`` (an :class:`~genrecli.pipeline.executors.Executor` for a cluster's address),
    in ``jobs`` Ray actors (None: one per CPU of the cluster); the rows come back here either way, so the
    checkpoint, the failure records and the resume below are the same for both. ``func`` and the items must
    be picklable and ``func`` importable by a fresh interpreter. An
    :class:`InputError` (see :func:`is_track_failure`) from one track is recorded as that track's failure
    (one line) and the loop goes on; so is a track that runs longer than ``track_timeout`` seconds or whose
    worker holds more than ``track_memory`` (bytes or a size such as ``"4G"``; None: the defaults of
    :func:`~genrecli.pipeline.workers.track_bounds`). A :class:`UsageError` is re-raised, and any other
    exception is re-raised as :class:`TrackInternalError` naming the stage (``description``) and the track:
    a bug in our code must not turn into N "failed tracks". Either way the tracks finished so far are saved to
    the checkpoint first (also on Ctrl-C), so a rerun resumes, and the tracks not yet started are cancelled.

    A track whose worker dies (killed from outside, a crash, the OOM killer) is retried on a fresh worker; if
    it keeps dying it is recorded nowhere, and after every other track is done
    :class:`~genrecli.pipeline.workers.TracksUndone` is raised: the stage writes nothing, the rerun resumes
    from the checkpoint and computes only those tracks, never "up to date" with them missing.
    """
    executor = as_executor(executor)
    if jobs is not None and jobs < 1:
        raise UsageError(f"--jobs must be >= 1 (got {jobs})")
    check_available(executor)
    bounds = track_bounds(track_timeout, track_memory)
    done, failed = checkpoint.load()
    todo = [r for r in items if r not in done and r not in failed]
    if done or failed:
        ui.info(f"{description}: resuming, {len(done) + len(failed)} tracks already done")
    pending_values: dict[int, dict[str, np.ndarray]] = {}
    pending_failed: dict[int, str] = {}

    def finish(row: int, outcome) -> None:
        if isinstance(outcome, BaseException):
            if isinstance(outcome, UsageError):
                raise outcome
            if not is_track_failure(outcome):
                raise TrackInternalError(description, ids[row], outcome) from outcome
            msg = " ".join(str(outcome).split())
            pending_failed[row] = failed[row] = msg
            ui.warn(f"{ids[row]}: {msg}")
        elif bad := [k for k, v in outcome.items() if np.asarray(v).dtype.kind in "fc" and not np.all(np.isfinite(v))]:
            finish(row, InputError(f"feature {', '.join(bad)} has NaN/inf values"))
            return
        else:
            pending_values[row] = done[row] = outcome
        if len(pending_values) + len(pending_failed) >= CHECKPOINT_EVERY:
            checkpoint.save(pending_values, pending_failed)
            pending_values.clear()
            pending_failed.clear()

    try:
        with ui.progress(len(todo), description) as advance:
            undone = run_rows(executor, func, items, todo, jobs=jobs, bounds=bounds, finish=finish, advance=advance,
                              ids=ids) if todo else {}
    finally:  # a bug, a usage error or Ctrl-C keeps every finished track
        checkpoint.save(pending_values, pending_failed)
    if undone:
        raise TracksUndone(description, {ids[r]: why for r, why in undone.items()}, len(done) + len(failed))
    return done, failed


def assemble(n: int, rows_done: Mapping[int, Mapping[str, np.ndarray]], name: str, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    data = np.full((n, *shape), np.nan, dtype=np.float32)
    valid = np.zeros(n, dtype=bool)
    for row, values in rows_done.items():
        value = np.asarray(values[name], dtype=np.float32)
        if value.shape != tuple(shape):
            raise RuntimeError(f"{name}: row {row} has shape {value.shape}, expected {tuple(shape)}")
        data[row] = value
        valid[row] = True
    return data, valid


def write_feature_group(
    h5, group_path: str, data: np.ndarray, valid: np.ndarray, params: dict, failures: Mapping[str, str]
) -> None:
    """Inside an open ``store.write_transaction``: replace one feature group and its failure rows.

    Prefer :func:`genrecli.store.write_feature` (one group, one commit) or ``store.write_groups`` with
    ``store.feature_data`` (several groups, one commit).
    """
    store.write_feature_into(h5, group_path, data, valid, params, failures)


def read_feature(paths: DatasetPaths, group_path: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(data, valid, params) of one feature group; a clear error when it was never extracted."""
    return store.read_feature(paths.features(), group_path, what="features", hint=EXTRACT_HINT)


EXTRACT_HINT = "run `genre extract-audio` / `genre extract-text` / `genre extract-image` first"
FEATURE_MODALITIES = ("audio", "image", "text")  # the top-level groups of features.h5 that hold features
_STAGE_OF = {"audio": "extract-audio", "image": "extract-image", "text": "extract-text"}


def check_for_manifest(paths: DatasetPaths, name: str, group: h5py.Group, manifest) -> None:
    """Refuse a feature group computed for another manifest of the dataset (a re-ingest since)."""
    rows = group["data"].shape[0]
    recorded = store.group_params(group).get("manifest", manifest.content_hash())
    if rows != len(manifest) or recorded != manifest.content_hash():
        stage = _STAGE_OF.get(name.split("/", 1)[0], "extract-audio")
        raise UsageError(
            f"{paths.features()}: '{name}' was computed for another manifest of '{paths.name}' "
            f"({rows} rows, the manifest has {len(manifest)} tracks): rerun `genre {stage} --data {paths.name}`"
        )


def check_inputs(paths: DatasetPaths, names, manifest) -> None:
    """Every named feature group exists and was computed for this manifest (read before any is used)."""
    with store.open_read(paths.features(), what="features", hint=EXTRACT_HINT) as h5:
        have = feature_groups(h5)
        for name in names:
            if name not in have:
                raise UsageError(f"{paths.features()}: no feature '{name}' (have: {', '.join(have) or 'none'})")
            check_for_manifest(paths, name, h5[name], manifest)


def read_input(paths: DatasetPaths, name: str, manifest) -> tuple[np.ndarray, np.ndarray, dict, str]:
    """``(data, valid, params, content key)`` of a feature group a downstream stage reads.

    Refused (one line) when the group is missing or was computed for another manifest; the content key
    (:func:`genrecli.store.content_key`) is what the reader's cache must be keyed on.
    """
    check_inputs(paths, [name], manifest)
    with store.open_read(paths.features(), what="features", hint=EXTRACT_HINT) as h5:
        grp = h5[name]
        return grp["data"][()], grp["valid"][()], store.group_params(grp), store.content_key(grp)


def resident_budget() -> int:
    """Bytes of feature data a process may hold whole in memory (:class:`FeatureView`): ``$GENRE_RESIDENT_BYTES``,
    else an eighth of the physical memory, at most 4 GiB."""
    if (text := os.environ.get("GENRE_RESIDENT_BYTES")) is not None:
        try:
            return max(0, int(float(text)))
        except ValueError:
            raise UsageError(f"GENRE_RESIDENT_BYTES={text!r}: expected a number of bytes") from None
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX
        physical = 8 << 30
    return min(4 << 30, physical // 8)


_RESIDENT: dict[tuple[str, str, str], np.ndarray] = {}  # (store, group, content key) -> the whole data


def _resident(path: Path, group: str, grp: h5py.Group) -> h5py.Dataset | np.ndarray:
    """The group's data as an in-memory array when it fits what is left of :func:`resident_budget`, else the
    on-disk dataset.

    Why: a random mini-batch of a chunked, compressed dataset decompresses every chunk its rows touch, and a
    store written with h5py's automatic chunks (several rows per chunk, each row split over many chunks)
    makes that ~10x slower than reading the whole group once (measured: 4.4 s per batch of 32 log-CQT rows
    vs 5 s for all 777). Small groups are therefore read once per process, sequentially; a group larger
    than the budget stays on disk and is read per batch (new stores chunk it by whole rows, see
    :func:`genrecli.store.row_chunks`), so memory stays bounded for corpora that do not fit.
    """
    data = grp["data"]
    key = (str(Path(path).resolve()), group, store.content_key(grp))
    if key in _RESIDENT:
        return _RESIDENT[key]
    for old in [k for k in _RESIDENT if k[:2] == key[:2]]:  # an older version of the same group
        del _RESIDENT[old]
    nbytes = int(np.prod(data.shape, dtype=np.int64)) * 4
    if nbytes > resident_budget() - sum(a.nbytes for a in _RESIDENT.values()):
        return data
    _RESIDENT[key] = np.asarray(data[()], dtype=np.float32)
    return _RESIDENT[key]


class FeatureView:
    """Rows of one feature group of a store, read lazily: what models get for patch inputs.

    ``view[i]`` (an int, slice, or array of row positions into ``rows``) reads only those rows; ``len``,
    ``shape`` and ``np.asarray(view)`` behave like the (len(rows), *shape) array. The file is opened on first
    use in each process (so a view survives ``fork`` into data-loader workers) and read-only.

    Parameters
    ----------
    path : path of the HDF5 store
    group : feature group, e.g. ``audio/mel``
    rows : np.ndarray of int, the manifest rows this view exposes, in order
    """

    def __init__(self, path: str | os.PathLike, group: str, rows: np.ndarray):
        self.path, self.group = Path(path), group
        self.rows = np.asarray(rows, dtype=np.int64)
        with h5py.File(self.path, "r") as h5:
            self.row_shape = tuple(h5[group]["data"].shape[1:])
        self._h5 = self._pid = self._data = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.row_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.row_shape)

    dtype = np.dtype(np.float32)

    def _dataset(self) -> h5py.Dataset | np.ndarray:
        # opened once per process (resolving the index's external link costs ~0.5 ms a call)
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = h5py.File(self.path, "r")
            self._pid = os.getpid()
            self._data = _resident(self.path, self.group, self._h5[self.group])
        return self._data

    def subset(self, positions) -> "FeatureView":
        """A view of some of this view's rows (positions into it), without reading them."""
        out = object.__new__(FeatureView)
        out.path, out.group, out.row_shape = self.path, self.group, self.row_shape
        out.rows = self.rows[np.asarray(positions, dtype=np.int64)]
        out._h5 = out._pid = out._data = None
        return out

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            return np.asarray(self._dataset()[int(self.rows[index])], dtype=np.float32)
        rows = self.rows[index]
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        unique, inverse = np.unique(sorted_rows, return_inverse=True)
        data = self._dataset()
        if not len(unique):
            block = np.empty((0, *self.row_shape), np.float32)
        elif not isinstance(data, np.ndarray) and unique[-1] - unique[0] < 2 * len(unique) + 64:
            # dense rows (a block of a fold's sorted rows): one contiguous read of their span, then a NumPy
            # take -- a point selection of thousands of rows costs much more in h5py than the span
            block = np.asarray(data[int(unique[0]):int(unique[-1]) + 1])[unique - unique[0]]
        else:
            block = data[unique]
        out = np.empty((len(rows), *self.row_shape), dtype=np.float32)
        out[order] = block[inverse]
        return out

    def __array__(self, dtype=None, copy=None):
        out = self[np.arange(len(self.rows))]
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getstate__(self):
        return {"path": self.path, "group": self.group, "rows": self.rows, "row_shape": self.row_shape}

    def __setstate__(self, state):
        self.__dict__.update(state, _h5=None, _pid=None, _data=None)


def feature_groups(h5: h5py.File) -> list[str]:
    """The feature groups (``audio/<name>``, ``image/<name>``, ``text/<name>`` holding ``data``) of an open store, sorted."""
    return [
        g for g in store.list_groups(h5)
        if g.count("/") == 1 and g.split("/")[0] in FEATURE_MODALITIES and f"{g}/data" in h5
    ]


def default_jobs() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def iter_chunks(seq: list, size: int) -> Iterable[list]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


def merge_shards(paths: DatasetPaths) -> list[str]:
    """Join ``features.k-of-N.h5`` shards into ``features.h5`` (rows are disjoint; valid rows win)."""
    shards = sorted(paths.root.glob("features.*-of-*.h5"))
    if not shards:
        raise UsageError(f"{paths.root}: no shard stores (features.k-of-N.h5) to merge")
    merged: dict[str, tuple[np.ndarray, np.ndarray, dict, dict]] = {}
    for shard in shards:
        with h5py.File(shard, "r") as h5:
            failures = store.read_failures(h5)
            for group in feature_groups(h5):
                g = h5[group]
                params = store.group_params(g)
                params.pop("shard", None)
                data, valid = g["data"][()], g["valid"][()]
                fails = {tid: msg for tid, stage, msg in failures if stage == group}
                if group not in merged:
                    merged[group] = (data, valid, params, fails)
                    continue
                m_data, m_valid, m_params, m_fails = merged[group]
                if store.params_hash(m_params) != store.params_hash(params):
                    raise UsageError(f"{shard}: '{group}' was computed with other parameters than the other shards")
                m_data[valid] = data[valid]
                m_valid |= valid
                m_fails.update(fails)
    store.write_groups(
        paths.features(),
        {group: store.feature_data(data, valid, params) for group, (data, valid, params, _) in merged.items()},
        failures={group: fails for group, (_, _, _, fails) in merged.items()},
    )
    for shard in shards:
        store.remove_store(shard)
    return sorted(merged)
