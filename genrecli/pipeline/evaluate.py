"""``genre evaluate``: metrics of every run (mean ± std over folds and seeds) into ``metrics.json``."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from genrecli import store, ui
from genrecli.errors import UsageError
from genrecli.layout import DatasetPaths
from genrecli.metrics import mean_std, multi_label_metrics, single_label_metrics
from genrecli.pipeline import StageResult

SCALARS = ("accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1")
MULTI_SCALARS = ("auc_roc", "example_f", "micro_f1", "macro_f1", "adiv@1", "adiv@3", "adiv@5")


def list_runs(paths: DatasetPaths) -> list[Path]:
    if not paths.runs.is_dir():
        return []
    return sorted(p for p in paths.runs.iterdir() if (p / "predictions.h5").exists() and (p / "config.json").exists())


def evaluate(data: str, *, run: str | None = None, data_home: str | Path | None = None, force: bool = False) -> StageResult:
    paths = DatasetPaths.of(data, data_home)
    runs = list_runs(paths)
    if run is not None:
        runs = [r for r in runs if r.name == run]
        if not runs:
            raise UsageError(f"no finished run '{run}' under {paths.runs} (see `genre info --data {data}`)")
    if not runs:
        raise UsageError(f"{paths.runs}: no finished runs — run `genre train` first")
    result = StageResult()
    for run_dir in runs:
        digest = store.file_sha256(run_dir / "predictions.h5")
        out = run_dir / "metrics.json"
        if not force and out.exists() and json.loads(out.read_text()).get("predictions_sha256") == digest:
            result.up_to_date.append(run_dir.name)
            continue
        metrics = run_metrics(run_dir)
        metrics["predictions_sha256"] = digest
        out.write_text(json.dumps(metrics, indent=2))
        key = "auc_roc" if metrics["config"].get("multilabel") else "accuracy"
        stat = metrics["summary"][key]
        ui.info(f"{run_dir.name}: {key} {stat['mean']:.3f} ± {stat['std']:.3f} over {stat['n']} fold/seed runs")
        result.written.append(run_dir.name)
    if result.up_to_date:
        ui.info(f"{len(result.up_to_date)} runs already evaluated (unchanged predictions); nothing to do for them")
    return result


def run_metrics(run_dir: Path) -> dict:
    config = json.loads((run_dir / "config.json").read_text())
    n_classes = len(config["labels"])
    multilabel = bool(config.get("multilabel"))
    entries, confusion = [], np.zeros((n_classes, n_classes), dtype=np.int64)
    with h5py.File(run_dir / "predictions.h5", "r") as h5:
        for fold in sorted(h5):
            for seed in sorted(h5[fold]):
                g = h5[fold][seed]
                if multilabel:
                    m = multi_label_metrics(g["y_true"][()], g["y_pred"][()], g["scores"][()])
                else:
                    m = single_label_metrics(g["y_true"][()], g["y_pred"][()], n_classes)
                    confusion += np.asarray(m["confusion"])
                m.update(fold=fold, seed=seed, fit_seconds=float(g.attrs["fit_seconds"]),
                         predict_seconds=float(g.attrs["predict_seconds"]), n_test=int(len(g["y_true"])),
                         extra=json.loads(g.attrs.get("extra", "{}")))
                entries.append(m)
    scalars = [k for k in MULTI_SCALARS if k in entries[0]] if multilabel else list(SCALARS)
    summary = {k: mean_std(e[k] for e in entries) for k in (*scalars, "fit_seconds", "predict_seconds")}
    summary["extra"] = _aggregate_extra([e["extra"] for e in entries])
    out = {"run": run_dir.name, "config": config, "summary": summary, "entries": entries}
    if not multilabel:
        out["confusion"] = confusion.tolist()
    return out


def _aggregate_extra(extras: list[dict]) -> dict:
    """Mean ± std of every numeric extra metric; element-wise for lists (e.g. RI per kernel)."""
    out = {}
    keys = sorted({k for e in extras for k in e})
    for key in keys:
        values = [e[key] for e in extras if key in e]
        if all(isinstance(v, (int, float)) for v in values):
            out[key] = mean_std(values)
        elif all(isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v) for v in values):
            arr = np.asarray(values, dtype=np.float64)
            out[key] = {"mean": arr.mean(0).tolist(), "std": arr.std(0).tolist(), "n": len(values)}
        elif all(isinstance(v, dict) for v in values):
            out[key] = _aggregate_extra(values)
        else:
            out[key] = values[0]
    return out
