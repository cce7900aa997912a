"""Shared machinery of the feature stages: per-track loops with checkpoints, and the feature store.

A feature group ``/<modality>/<name>`` of ``features.h5`` holds ``data`` (n x shape, float32, NaN rows for
failed tracks) and ``valid`` (bool, n). Failed tracks are recorded in ``/failed`` under the group's name.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import h5py
import numpy as np

from genrecli import store, ui
from genrecli.errors import GenreError, UsageError
from genrecli.layout import DatasetPaths

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


def run_per_track(
    func: Callable,
    items: Mapping[int, object],
    *,
    checkpoint: store.RowCheckpoint,
    jobs: int = 1,
    description: str,
    ids: list[str],
) -> tuple[dict[int, dict[str, np.ndarray]], dict[int, str]]:
    """Apply ``func(item) -> {name: array}`` to every row, resuming from and saving to ``checkpoint``.

    A :class:`GenreError` from one track is recorded as that track's failure (one line) and the loop goes
    on; any other exception is unexpected and is also recorded, with its type, so one bad file never
    stops the stage.
    """
    done, failed = checkpoint.load()
    todo = [r for r in items if r not in done and r not in failed]
    if done or failed:
        ui.info(f"{description}: resuming, {len(done) + len(failed)} tracks already done")
    pending_values: dict[int, dict[str, np.ndarray]] = {}
    pending_failed: dict[int, str] = {}

    def finish(row: int, outcome) -> None:
        if isinstance(outcome, BaseException):
            msg = str(outcome) if isinstance(outcome, GenreError) else f"{type(outcome).__name__}: {outcome}"
            msg = " ".join(msg.split())
            pending_failed[row] = failed[row] = msg
            ui.warn(f"{ids[row]}: {msg}")
        elif bad := [k for k, v in outcome.items() if not np.all(np.isfinite(v))]:
            finish(row, GenreError(f"feature {', '.join(bad)} has NaN/inf values"))
            return
        else:
            pending_values[row] = done[row] = outcome
        if len(pending_values) + len(pending_failed) >= CHECKPOINT_EVERY:
            checkpoint.save(pending_values, pending_failed)
            pending_values.clear()
            pending_failed.clear()

    with ui.progress(len(todo), description) as advance:
        if jobs <= 1 or len(todo) <= 1:
            for row in todo:
                try:
                    outcome = func(items[row])
                except Exception as exc:  # noqa: BLE001 - isolate each track
                    outcome = exc
                finish(row, outcome)
                advance(1)
        else:
            threads = max(1, (os.cpu_count() or 1) // jobs)  # N workers x all-core BLAS would oversubscribe
            with cf.ProcessPoolExecutor(max_workers=jobs, initializer=_limit_threads, initargs=(threads,)) as pool:
                futures = {pool.submit(func, items[row]): row for row in todo}
                for fut in cf.as_completed(futures):
                    row = futures[fut]
                    exc = fut.exception()
                    finish(row, exc if exc is not None else fut.result())
                    advance(1)
    checkpoint.save(pending_values, pending_failed)
    return done, failed


def _limit_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


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
    h5: h5py.File, group_path: str, data: np.ndarray, valid: np.ndarray, params: dict, failures: Mapping[str, str]
) -> None:
    grp = store.replace_group(h5, group_path)
    grp.create_dataset("data", data=data, chunks=True if data.ndim > 1 and data.shape[0] > 0 else None, compression="gzip", compression_opts=1)
    grp.create_dataset("valid", data=valid)
    store.set_group_params(grp, params)
    store.record_failures(h5, group_path, failures)


def read_feature(paths: DatasetPaths, group_path: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(data, valid, params) of one feature group; a clear error when it was never extracted."""
    with store.open_read(paths.features(), what="features", hint="run `genre extract-audio` / `genre extract-text` first") as h5:
        if group_path not in h5 or "data" not in h5[group_path]:
            have = [g for g in feature_groups(h5)]
            raise UsageError(
                f"{paths.features()}: no feature '{group_path}' (have: {', '.join(have) or 'none'})"
            )
        grp = h5[group_path]
        return grp["data"][()], grp["valid"][()], store.group_params(grp)


def feature_groups(h5: h5py.File) -> list[str]:
    out = []
    for modality in ("audio", "text"):
        if modality in h5:
            out += [f"{modality}/{k}" for k, v in h5[modality].items() if isinstance(v, h5py.Group) and "data" in v]
    return out


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
    with store.write_transaction(paths.features()) as h5:
        for group, (data, valid, params, fails) in merged.items():
            write_feature_group(h5, group, data, valid, params, fails)
    for shard in shards:
        Path(shard).unlink()
    return sorted(merged)
