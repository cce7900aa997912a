"""``genre ingest`` and ``genre split``: list a corpus, check its files, write the manifest and its splits.

Splits are written here only: ``genre ingest --split SPEC`` (at ingest, or added to an up-to-date manifest)
and ``genre split --data NAME SPEC`` (:func:`split`). The later stages look a split up read-only with
:func:`resolve_split` and say how to add it when it is missing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from genrecli import store, ui
from genrecli.datasets import get_dataset
from genrecli.errors import GenreError, UsageError
from genrecli.layout import DatasetPaths
from genrecli.manifest import TEST, TRAIN, VALID, Manifest, add_split, read_manifest, write_manifest
from genrecli.pipeline import StageResult
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
    manifest = Manifest(paths.name, tracks, label_names, skipped={**listing.skipped, **listing.failed})
    specs = [resolve_split_spec(s, dataset) for s in splits]
    params = {
        "dataset": dataset,
        "root": str(Path(root).resolve()) if root is not None else None,
        "limit": limit,
        "seed": seed,
        "options": options,
        "content": manifest.content_hash(),
    }
    result = StageResult()
    digest = store.params_hash(params)
    old = _previous_manifest(paths)
    if not force and old is not None and store.group_status(paths.manifest, "/", digest) == "fresh":
        added = _add_missing_splits(paths, old, specs, seed)
        if not added:
            ui.info(f"{paths.manifest}: up to date ({len(tracks)} tracks, params {digest}); nothing to do")
            result.up_to_date.append("manifest")
        result.written += [f"split {name}" for name in added]
        return result
    for s in specs:
        name = split_name(s)
        manifest.splits[name] = checked_split(s, manifest, seed=seed)
        manifest.split_specs[name], manifest.split_seeds[name] = s, seed
    if old is not None and old.content_hash() == manifest.content_hash():
        kept = [n for n in old.splits if n not in manifest.splits]
        for name in kept:  # same tracks: splits added earlier (`genre split`) stay valid
            manifest.splits[name] = old.splits[name]
            manifest.split_specs[name] = old.split_specs.get(name, name)
            if name in old.split_seeds:
                manifest.split_seeds[name] = old.split_seeds[name]
        if kept:
            ui.info(f"{paths.manifest}: kept split(s) {', '.join(kept)} of the previous manifest (same tracks)")
    elif old is not None and (dropped := [n for n in old.splits if n not in manifest.splits]):
        ui.info(f"{paths.manifest}: the tracks changed, so the previous split(s) {', '.join(dropped)} are dropped")
    write_manifest(paths.manifest, manifest, params)
    result.failures.update(listing.failed)
    if listing.features:
        result.failures.update(_write_precomputed(paths, listing.features, manifest))
    counts = ", ".join(f"{n} {c}" for n, c in zip(label_names, manifest.Y.sum(0)))
    ui.info(f"{paths.manifest}: {len(tracks)} tracks ({counts}); splits: {', '.join(manifest.splits)}")
    if manifest.skipped:
        ui.info(f"{len(manifest.skipped)} files or items skipped (listed by `genre info --data {paths.name}`)")
    result.written.append("manifest")
    return result


def _previous_manifest(paths: DatasetPaths) -> Manifest | None:
    if not paths.manifest.exists():
        return None
    try:
        return read_manifest(paths.manifest)
    except (GenreError, OSError, KeyError, ValueError):  # unreadable or of another layout: rewritten
        return None


def _add_missing_splits(paths: DatasetPaths, manifest: Manifest, specs: list[str], seed: int) -> list[str]:
    """Add the splits of ``specs`` an up-to-date manifest lacks (those it has are kept as they are)."""
    added = []
    for spec in specs:
        name = split_name(spec)
        if name in manifest.splits:
            continue
        assignment = checked_split(spec, manifest, seed=seed)
        add_split(paths.manifest, name, spec, assignment, seed=seed)
        manifest.splits[name] = assignment
        ui.info(f"{paths.manifest}: added split {name} [{spec}, seed {seed}] ({_split_summary(assignment)})")
        added.append(name)
    return added


def _write_precomputed(paths: DatasetPaths, features: dict, manifest: Manifest) -> dict[str, str]:
    """Store features that ship with the corpus (one row per manifest track); rows with NaN/inf are marked
    invalid and recorded by track id. Returns those failures (track id -> message)."""
    groups, failures, masked, ids = {}, {}, {}, manifest.ids
    for group, (array, params) in features.items():
        data = np.asarray(array, dtype=np.float32)
        valid = np.isfinite(data.reshape(len(data), -1)).all(axis=1)
        failures[group] = {ids[i]: "precomputed feature has NaN/inf values" for i in np.flatnonzero(~valid)}
        masked.update({tid: f"{group}: {msg}" for tid, msg in failures[group].items()})
        data[~valid] = np.nan
        groups[group] = store.feature_data(data, valid, {**params, "precomputed": True, "manifest": manifest.content_hash()})
    store.write_groups(paths.features(), groups, failures=failures)
    for group, item in groups.items():
        data, valid = item.arrays["data"], item.arrays["valid"]
        ui.info(f"{paths.features()}: wrote precomputed {group} {data.shape[1:]} ({int(valid.sum())} valid rows)")
    return masked


def checked_split(spec: str, manifest: Manifest, *, seed: int = 0) -> np.ndarray:
    """:func:`~genrecli.splits.make_split`, refusing a split with an empty training or test part."""
    assignment = make_split(spec, manifest, seed=seed)
    for fold, row in enumerate(assignment):
        n_train = int(np.isin(row, (TRAIN, VALID)).sum())
        n_test = int((row == TEST).sum())
        where = f" fold {fold}" if len(assignment) > 1 else ""
        for part, count in (("test", n_test), ("training", n_train)):
            if count == 0:
                raise UsageError(
                    f"split '{spec}'{where}: the {part} part is empty ({n_train} training and {n_test} test tracks "
                    f"of {len(row)}); choose another fraction or list, or ingest more tracks"
                )
    return assignment


def _split_summary(assignment: np.ndarray) -> str:
    folds = f"{assignment.shape[0]} folds, fold 0: " if assignment.shape[0] > 1 else ""
    row = assignment[0]
    valid = int((row == VALID).sum())
    return (f"{folds}train {int((row == TRAIN).sum())}" + (f", valid {valid}" if valid else "")
            + f", test {int((row == TEST).sum())}")


def split(
    data: str, spec: str, *, seed: int = 0, data_home: str | Path | None = None, force: bool = False
) -> StageResult:
    """``genre split``: add a split to a dataset's manifest (an existing one with other parts needs ``force``)."""
    paths = DatasetPaths.of(data, data_home)
    manifest = read_manifest(paths.manifest)
    full = resolve_split_spec(spec, manifest.attrs.get("dataset", manifest.dataset))
    name = split_name(full)
    assignment = checked_split(full, manifest, seed=seed)
    result = StageResult()
    existing = manifest.splits.get(name)
    if existing is not None:
        if np.array_equal(existing, assignment):
            ui.info(f"{paths.manifest}: split {name} is up to date; nothing to do")
            result.up_to_date.append(name)
            return result
        if not force:
            made = manifest.split_seeds.get(name)
            raise UsageError(
                f"split '{name}' is already in the manifest of '{paths.name}' with other parts "
                f"({'seed ' + str(made) if made is not None else manifest.split_specs.get(name, name)}); "
                "add --force to replace it (kernels and runs made with it are then recomputed)"
            )
    add_split(paths.manifest, name, full, assignment, seed=seed)
    ui.info(f"{paths.manifest}: {'replaced' if existing is not None else 'added'} split {name} "
            f"[{full}, seed {seed}] ({_split_summary(assignment)})")
    result.written.append(name)
    return result


def resolve_split(paths: DatasetPaths, spec: str) -> str:
    """The stored name of a split given by name or spec; read-only (a missing split is a usage error)."""
    manifest = read_manifest(paths.manifest)
    if spec in manifest.splits:
        return spec
    full = resolve_split_spec(spec, manifest.attrs.get("dataset", manifest.dataset))
    name = split_name(full)
    if name in manifest.splits:
        return name
    shown = f"'{spec}' ({full})" if full != spec else f"'{spec}'"
    raise UsageError(
        f"split {shown} is not in the manifest of '{paths.name}' (have: {', '.join(manifest.splits) or 'none'}); "
        f"add it with `genre split --data {paths.name} {spec}`"
    )


def ensure_split(paths: DatasetPaths, spec: str, *, seed: int = 0) -> str:
    """Deprecated name of :func:`resolve_split` (read-only now: it never writes the manifest)."""
    return resolve_split(paths, spec)
