"""``genre ingest``: list a corpus, check its files, write the manifest and its splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from genrecli import store, ui
from genrecli.datasets import get_dataset
from genrecli.errors import UsageError
from genrecli.layout import DatasetPaths
from genrecli.manifest import Manifest, add_split, read_manifest, write_manifest
from genrecli.pipeline import StageResult
from genrecli.pipeline.features import write_feature_group
from genrecli.splits import make_split, split_name


def resolve_split_spec(spec: str, dataset: str) -> str:
    return get_dataset(dataset).standard_split if spec == "standard" else spec


def ingest(
    dataset: str,
    *,
    root: str | Path | None = None,
    name: str | None = None,
    splits: tuple[str, ...] = ("standard",),
    seed: int = 0,
    limit: int | None = None,
    options: dict | None = None,
    data_home: str | Path | None = None,
    force: bool = False,
) -> StageResult:
    """Write ``<data-home>/<name>/manifest.h5`` for a corpus; returns what was done.

    ``limit`` keeps a stratified, seeded sample of that many tracks (for quick runs); ``options`` are
    the loader's own options (e.g. ``min_count`` of music4all), recorded in the manifest's parameters.
    """
    spec = get_dataset(dataset)
    paths = DatasetPaths.of(name or dataset, data_home)
    options = dict(options or {})
    try:
        listing = spec.list_tracks(Path(root) if root is not None else None, **options)
    except TypeError as exc:
        if options and "unexpected keyword" in str(exc):
            raise UsageError(f"dataset '{dataset}': unknown loader option ({exc})") from None
        raise
    for note in listing.notes:
        ui.info(note)
    tracks = listing.tracks
    if not tracks:
        raise UsageError(f"{dataset}: the corpus lists no usable tracks")
    label_names = listing.label_names or sorted({name for t in tracks for name in (t.labels or (t.label,))})
    if limit is not None and limit < len(tracks):
        if limit < len(label_names):
            raise UsageError(f"--limit {limit}: fewer tracks than the {len(label_names)} labels")
        strata = Manifest(paths.name, tracks, label_names).strata()
        keep, _ = train_test_split(np.arange(len(tracks)), train_size=limit, random_state=seed, stratify=strata)
        keep = np.sort(keep)
        tracks = [tracks[i] for i in keep]
        listing.features = {g: (arr[keep], p) for g, (arr, p) in listing.features.items()}
    used = {name for t in tracks for name in (t.labels or (t.label,))}
    label_names = [n for n in label_names if n in used]
    manifest = Manifest(paths.name, tracks, label_names, skipped=dict(listing.skipped))
    specs = [resolve_split_spec(s, dataset) for s in splits]
    for s in specs:
        manifest.splits[split_name(s)] = make_split(s, manifest, seed=seed)
        manifest.split_specs[split_name(s)] = s
    params = {
        "dataset": dataset,
        "root": str(Path(root).resolve()) if root is not None else None,
        "limit": limit,
        "seed": seed,
        "splits": specs,
        "options": options,
        "content": manifest.content_hash(),
    }
    result = StageResult()
    digest = store.params_hash(params)
    if not force and paths.manifest.exists() and store.group_status(paths.manifest, "/", digest) == "fresh":
        ui.info(f"{paths.manifest}: up to date ({len(tracks)} tracks, params {digest}); nothing to do")
        result.up_to_date.append("manifest")
        return result
    write_manifest(paths.manifest, manifest, params)
    with store.write_transaction(paths.manifest) as h5:
        store.record_failures(h5, "ingest", listing.skipped)
    if listing.features:
        _write_precomputed(paths, listing.features, manifest.content_hash())
    counts = ", ".join(f"{n} {c}" for n, c in zip(label_names, manifest.Y.sum(0)))
    ui.info(f"{paths.manifest}: {len(tracks)} tracks ({counts}); splits: {', '.join(manifest.splits)}")
    if listing.skipped:
        ui.info(f"{len(listing.skipped)} files or items skipped (listed by `genre info --data {paths.name}`)")
    result.written.append("manifest")
    return result


def _write_precomputed(paths: DatasetPaths, features: dict, content: str) -> None:
    """Store features that ship with the corpus; rows with NaN/inf are marked invalid and recorded."""
    with store.write_transaction(paths.features()) as h5:
        for group, (array, params) in features.items():
            data = np.asarray(array, dtype=np.float32)
            valid = np.isfinite(data.reshape(len(data), -1)).all(axis=1)
            failures = {f"row {i}": "precomputed feature has NaN/inf values" for i in np.flatnonzero(~valid)}
            data[~valid] = np.nan
            write_feature_group(h5, group, data, valid, {**params, "precomputed": True, "manifest": content}, failures)
            ui.info(f"{paths.features()}: wrote precomputed {group} {data.shape[1:]} ({int(valid.sum())} valid rows)")


def ensure_split(paths: DatasetPaths, spec: str, *, seed: int = 0) -> str:
    """Return the stored name of a split, computing and adding it to the manifest when new."""
    manifest = read_manifest(paths.manifest)
    if spec in manifest.splits:
        return spec
    dataset = manifest.attrs.get("dataset", manifest.dataset)
    spec = resolve_split_spec(spec, dataset)
    name = split_name(spec)
    if name not in manifest.splits:
        add_split(paths.manifest, name, spec, make_split(spec, manifest, seed=seed))
        ui.info(f"{paths.manifest}: added split {name}")
    return name
