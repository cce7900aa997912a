"""``genre train``: fit a model on every fold and seed of a split; save models, config and predictions.

``<data>/runs/<run-id>/`` holds ``config.json`` (model, inputs, options, the hashes of everything it read),
``model-fold<k>-seed<s>.safetensors`` (plain tensors, never pickles) and ``predictions.h5`` with, per fold
and seed, the test rows, true and predicted labels, class scores and timings. Hyper-parameters are chosen
on training data only (inside each model's fit).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import h5py
import numpy as np
from safetensors.numpy import save_file

from genrecli import store, ui
from genrecli.errors import UsageError
from genrecli.layout import DatasetPaths
from genrecli.manifest import read_manifest
from genrecli.metrics import macro_auc
from genrecli.models import get_model
from genrecli.pipeline import StageResult
from genrecli.pipeline.ingest import ensure_split
from genrecli.pipeline.kernels import available_inputs, kernel_digest, load_grams
from genrecli.splits import train_test_indices


def run_id(model: str, pairs: list[tuple[str, str]], split: str, options: dict) -> str:
    inputs = "+".join(sorted({i.replace("/", "-") for i, _ in pairs}))
    kernels = "+".join(sorted({k for _, k in pairs}, key=["linear", "poly2", "rbf", "hist"].index))
    tag = f"{model}__{inputs}__{kernels}__{split}"
    if options:
        tag += "__" + store.params_hash(options)[:8]
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", tag)


def train(
    model: str,
    data: str,
    *,
    inputs: tuple[str, ...] | None = None,
    kernels: tuple[str, ...] = ("linear", "poly2", "rbf", "hist"),
    split: str = "standard",
    seeds: int = 3,
    options: dict | None = None,
    device: str = "cpu",
    data_home: str | Path | None = None,
    force: bool = False,
) -> StageResult:
    spec = get_model(model)
    options = dict(options or {})
    paths = DatasetPaths.of(data, data_home)
    split_id = ensure_split(paths, split)
    manifest = read_manifest(paths.manifest)
    y_all = manifest.targets()
    assignment = manifest.split(split_id)
    inputs = tuple(inputs) if inputs else tuple(available_inputs(paths))
    if seeds < 1:
        raise UsageError(f"--seeds {seeds}: need at least one seed")
    groups = [[(i, k)] for i in inputs for k in kernels] if spec.per_kernel else [[(i, k) for i in inputs for k in kernels]]
    result = StageResult()
    for pairs in groups:
        rid = run_id(model, pairs, split_id, options)
        run_dir = paths.runs / rid
        # The estimator's full parameters (defaults included), so a changed default retrains too.
        model_params = _jsonable(spec.build(seed=0, device=device, **options).get_params())
        model_params.pop("random_state", None)
        model_params.pop("device", None)
        config = {
            "model": model, "pairs": pairs, "split": split_id, "seeds": seeds, "options": options,
            "model_params": model_params,
            "kernels": [kernel_digest(paths, split_id, f, pairs) for f in range(assignment.shape[0])],
            "labels": manifest.label_names,
            "multilabel": manifest.multilabel,
        }
        digest = store.params_hash(config)
        cfg_path = run_dir / "config.json"
        if not force and cfg_path.exists() and (run_dir / "predictions.h5").exists():
            if json.loads(cfg_path.read_text()).get("params_hash") == digest:
                ui.info(f"run {rid}: up to date (params {digest}); nothing to do")
                result.up_to_date.append(rid)
                continue
            ui.info(f"run {rid}: inputs or options changed; retraining")
        run_dir.mkdir(parents=True, exist_ok=True)
        _train_run(spec, pairs, paths, split_id, assignment, y_all, seeds, options, device, run_dir, manifest)
        cfg_path.write_text(json.dumps({**config, "params_hash": digest, "device": device}, indent=2))
        result.written.append(rid)
    return result


def _train_run(spec, pairs, paths, split_id, assignment, y_all, seeds, options, device, run_dir: Path, manifest) -> None:
    modalities = [i.split("/")[0] for i, _ in pairs]
    tmp = run_dir / ".predictions.h5.tmp"
    with h5py.File(tmp, "w") as h5:
        for fold in range(assignment.shape[0]):
            grams = load_grams(paths, split_id, fold, pairs)
            map_grams = load_grams(paths, split_id, fold, pairs, which="map_gram") if spec.needs_map_grams else None
            valid = np.isfinite(np.einsum("mii->mi", grams)).all(axis=0)
            train, test = train_test_indices(assignment, fold)
            tr, te = train[valid[train]], test[valid[test]]
            excluded = [manifest.ids[i] for i in np.concatenate([train, test]) if not valid[i]]
            if excluded:
                ui.warn(f"{len(excluded)} tracks without features are left out of {run_dir.name} (e.g. {excluded[0]})")
            g_tr, g_te = grams[:, tr][:, :, tr], grams[:, te][:, :, tr]
            m_tr = m_te = None
            if map_grams is not None:
                m_tr, m_te = map_grams[:, tr][:, :, tr], map_grams[:, te][:, :, tr]
            for seed in range(seeds):
                label = f"{run_dir.name} fold {fold} seed {seed}"
                est = spec.build(seed=seed, device=device, **options)
                t0 = time.perf_counter()
                est.fit_gram(g_tr, y_all[tr], map_grams=m_tr, modalities=modalities)
                fit_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                scores = np.asarray(est.decision_gram(g_te, map_grams_test=m_te), dtype=np.float32)
                predict_s = time.perf_counter() - t0
                y_pred = scores > 0 if y_all.ndim == 2 else np.asarray(est.classes_)[np.argmax(scores, axis=1)]
                extra = {}
                if hasattr(est, "extra_metrics"):
                    extra = est.extra_metrics(g_te, map_grams_test=m_te)
                grp = h5.create_group(f"fold{fold}/seed{seed}")
                grp.create_dataset("test_index", data=te)
                grp.create_dataset("y_true", data=y_all[te])
                grp.create_dataset("y_pred", data=y_pred)
                grp.create_dataset("scores", data=scores)
                grp.attrs.update(fit_seconds=fit_s, predict_seconds=predict_s, n_train=len(tr),
                                 extra=store.canonical_json(extra), params=store.canonical_json(_jsonable(est.get_params())))
                save_file({k: np.ascontiguousarray(v) for k, v in est.state_dict().items()},
                          str(run_dir / f"model-fold{fold}-seed{seed}.safetensors"))
                if y_all.ndim == 2:
                    ui.info(f"{label}: AUC-ROC {macro_auc(y_all[te], scores):.3f} on {len(te)} test tracks (fit {fit_s:.1f} s)")
                else:
                    acc = float(np.mean(y_pred == y_all[te])) if len(te) else float("nan")
                    ui.info(f"{label}: accuracy {acc:.3f} on {len(te)} test tracks (fit {fit_s:.1f} s)")
    tmp.replace(run_dir / "predictions.h5")


def _jsonable(params: dict) -> dict:
    return {k: (v if isinstance(v, (int, float, str, bool, type(None), list, tuple)) else repr(v)) for k, v in params.items()}
