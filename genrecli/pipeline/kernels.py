"""``genre kernels``: elementary Gram matrices and explicit maps, fitted on the training part only.

``kernels.h5:/<split>/fold<k>/<input>/<kernel>/`` (one file per group under ``kernels.d/``, linked from the
small index ``kernels.h5``: see :mod:`genrecli.store`) holds, over all tracks in manifest order (NaN rows and
columns for tracks whose feature failed):

* ``gram``      (n, n) the exact elementary kernel, preprocessing and scale fitted on the fold's training rows;
* ``map_gram``  (n, n) inner products of the explicit maps (a hard link to ``gram`` where the map is exact);
* ``map``       (n, D) the explicit map itself when D <= ``max_map_dim`` (the exact degree-2 map of a
  384-d embedding has 74,305 dimensions, so it is kept implicit: its inner products are the Gram);
* ``state/*``   the fitted preprocessing (scale, sigma, min/max, landmarks' projection).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genrecli import store, ui
from genrecli.errors import UsageError
from genrecli.kernels import DEFAULT_ENERGY, DEFAULT_LEVELS, DEFAULT_OFFSET, KERNEL_NAMES, check_kernel_names
from genrecli.layout import DatasetPaths
from genrecli.manifest import read_manifest
from genrecli.pipeline import StageResult
from genrecli.pipeline.features import EXTRACT_HINT, check_inputs, feature_groups, read_input
from genrecli.pipeline.ingest import resolve_split
from genrecli.splits import train_test_indices


def available_inputs(paths: DatasetPaths) -> list[str]:
    with store.open_read(paths.features(), what="features", hint=EXTRACT_HINT) as h5:
        return feature_groups(h5)


def kernel_group(split: str, fold: int, input_name: str, kernel: str) -> str:
    return f"{split}/fold{fold}/{input_name}/{kernel}"


def compute_kernels(
    data: str,
    *,
    inputs: tuple[str, ...] | None = None,
    kernels: tuple[str, ...] = KERNEL_NAMES,
    split: str = "standard",
    landmarks: str | int = "all",
    energy: float = DEFAULT_ENERGY,
    levels: int = DEFAULT_LEVELS,
    offset: float = DEFAULT_OFFSET,
    max_map_dim: int = 20_000,
    seed: int = 0,
    device: str = "cpu",
    data_home: str | Path | None = None,
    force: bool = False,
) -> StageResult:
    from genrecli.kernels.maps import ExplicitMap

    kernels = check_kernel_names(kernels)
    paths = DatasetPaths.of(data, data_home)
    split_id = resolve_split(paths, split)  # read-only: splits are written by `genre ingest` / `genre split`
    manifest = read_manifest(paths.manifest)
    assignment = manifest.split(split_id)
    inputs = tuple(inputs) if inputs else tuple(available_inputs(paths))
    if not inputs:
        raise UsageError(f"{paths.features()}: no features to build kernels from")
    check_inputs(paths, inputs, manifest)  # all of them, before the first is computed
    result = StageResult()
    for input_name in inputs:
        pending: dict[str, store.GroupData] = {}  # one atomic store write per input
        X, valid, feat_params, feat_content = read_input(paths, input_name, manifest)
        X = X.reshape(len(X), -1)
        feat_digest = store.params_hash(feat_params)
        for fold in range(assignment.shape[0]):
            train, _ = train_test_indices(assignment, fold)
            train = train[valid[train]]
            rows = np.flatnonzero(valid)
            if len(train) < 2:
                raise UsageError(f"{input_name}: fewer than 2 valid training tracks in {split_id} fold {fold}")
            for kernel in kernels:
                group = kernel_group(split_id, fold, input_name, kernel)
                params = {
                    "kernel": kernel, "input": input_name, "feature": feat_digest, "feature_content": feat_content,
                    "manifest": manifest.content_hash(), "split": split_id, "fold": fold,
                    "assignment": store.params_hash({"a": assignment[fold].tolist()}),
                    "landmarks": landmarks, "energy": energy, "levels": levels, "offset": offset,
                    "max_map_dim": max_map_dim, "seed": seed, "eigensolver": "auto",
                }
                digest = store.params_hash(params)
                status = store.group_status(paths.kernels, group, digest)
                if status == "fresh" and not force:
                    result.up_to_date.append(group)
                    continue
                emap = ExplicitMap(
                    kernel, offset=offset, energy=energy, landmarks=landmarks, levels=levels,
                    max_dim=max(max_map_dim, 1), eigensolver="auto", random_state=seed, device=device,
                ).fit(X[train])
                n = len(X)
                gram = np.full((n, n), np.nan, dtype=np.float32)
                gram[np.ix_(rows, rows)] = emap.kernel_.gram(X[rows])
                map_gram = None
                if not emap.exact_:
                    map_gram = np.full((n, n), np.nan, dtype=np.float32)
                    map_gram[np.ix_(rows, rows)] = emap.map_gram(X[rows], X[rows])
                phi = None
                if emap.dim_ <= max_map_dim:
                    phi = np.full((n, emap.dim_), np.nan, dtype=np.float32)
                    phi[rows] = emap.transform(X[rows])
                pending[group] = store.kernel_data(
                    gram, params, map_gram=map_gram, phi=phi, state=emap.get_state(),
                    attrs={"map_dim": int(emap.dim_), "map_exact": bool(emap.exact_), "n_train": len(train)},
                )
                result.written.append(group)
                ui.info(f"{group}: gram {len(rows)}x{len(rows)}, map dim {emap.dim_}{'' if emap.exact_ else ' (approximate)'}")
        if pending:
            store.write_kernel_groups(paths.kernels, pending)
    if result.up_to_date and not result.written:
        ui.info(f"kernels for {', '.join(inputs)} on {split_id}: up to date; nothing to do")
    elif result.up_to_date:
        ui.info(f"{len(result.up_to_date)} kernel groups were up to date")
    return result


def load_grams(
    paths: DatasetPaths, split: str, fold: int, pairs: list[tuple[str, str]], *, which: str = "gram"
) -> np.ndarray:
    """Stack ``which`` ('gram' or 'map_gram') of (input, kernel) pairs into an (m, n, n) float32 array."""
    with store.open_read(paths.kernels, what="kernel store", hint="run `genre kernels` first") as h5:
        out = []
        for input_name, kernel in pairs:
            group = kernel_group(split, fold, input_name, kernel)
            if group not in h5:
                raise UsageError(
                    f"{paths.kernels}: no kernel {kernel} of {input_name} for split {split} fold {fold} "
                    f"— run `genre kernels --data {paths.name} --inputs {input_name} --kernels {kernel} --split {split}`"
                )
            out.append(h5[group][which][()])
        return np.stack(out)


def kernel_digest(paths: DatasetPaths, split: str, fold: int, pairs: list[tuple[str, str]]) -> str:
    """Combined params hash of the kernel groups a model reads (a run recomputes when it changes)."""
    with store.open_read(paths.kernels, what="kernel store", hint="run `genre kernels` first") as h5:
        return store.params_hash(
            {f"{i}|{k}": str(h5[kernel_group(split, fold, i, k)].attrs["params_hash"]) for i, k in pairs}
        )
