"""``genre evaluate``: metrics of every run (mean ± std over folds and seeds) into ``metrics.json``.

``metrics.json`` of a single-label run holds, besides the per fold x seed ``entries`` and their ``summary``:

* ``layout`` -- folds per repeat, repeats and seeds of the run (:func:`genrecli.splits.fold_layout`); every entry
  carries its ``repeat``, ``fold_in_repeat`` and ``seed_index``;
* ``spread`` -- per metric, the std over seeds (within a fold, averaged over folds), over folds (of the
  seed-averaged fold metric, all folds of all repeats; null with one fold) and over repeats (of the
  seed-averaged metric of each repeat's pooled predictions; null with one repeat);
* ``pooled`` -- the test predictions pooled per (repeat, seed) (:func:`genrecli.stats.pool_predictions`): what
  the report's bootstrap intervals and paired tests resample;
* ``per_class`` -- precision, recall, F1 (from the confusion summed over every fold x seed) and support (the
  number of distinct test items of each class); ``confusion`` -- counts summed over every fold x seed.

Metrics written by an older version (``metrics_version`` below :data:`METRICS_VERSION`) are recomputed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np

from genrecli import store, ui
from genrecli.errors import InputError, UsageError
from genrecli.layout import DatasetPaths
from genrecli.metrics import mean_std, multi_label_metrics, single_label_metrics
from genrecli.pipeline import StageResult

SCALARS = ("accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1")
MULTI_SCALARS = ("auc_roc", "example_f", "micro_f1", "macro_f1", "adiv@1", "adiv@3", "adiv@5")
CONFIG_KEYS = ("model", "split", "labels")  # what evaluate and report read of a run's config.json
METRICS_VERSION = 2  # 2: layout, spread, pooled predictions, per-class table


def list_runs(paths: DatasetPaths) -> list[Path]:
    """The finished runs: those with their predictions and their config (train writes the config last)."""
    if not paths.runs.is_dir():
        return []
    return sorted(p for p in paths.runs.iterdir() if (p / "predictions.h5").exists() and (p / "config.json").exists())


def damaged_runs(paths: DatasetPaths) -> dict[str, str]:
    """Run folders that lost a file train writes (config.json or predictions.h5), run id -> one line.

    A run still training (or killed) has neither, only its partial config: it is not listed.
    """
    if not paths.runs.is_dir():
        return {}
    out = {}
    for run_dir in sorted(p for p in paths.runs.iterdir() if p.is_dir()):
        has = {name: (run_dir / name).exists() for name in ("config.json", "predictions.h5")}
        if any(has.values()) and not all(has.values()):
            missing = next(name for name, there in has.items() if not there)
            out[run_dir.name] = f"{run_dir / missing}: missing; retrain the run (`genre train ... --force`)"
    return out


def write_text_atomic(path: Path, text: str) -> None:
    """Write a temporary file next to ``path``, then rename it: a killed writer leaves the old file or none."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_json(path: Path, what: str) -> dict:
    """A JSON object file, or :class:`InputError` naming it (missing, truncated, not an object)."""
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no {what}") from None
    except (OSError, ValueError) as exc:  # ValueError: truncated or garbled JSON, bytes that are not UTF-8
        raise InputError(f"{path}: unreadable {what} ({type(exc).__name__}: {exc})") from None
    if not isinstance(value, dict):
        raise InputError(f"{path}: unreadable {what} (a JSON {type(value).__name__}, not an object)")
    return value


def evaluate(data: str, *, run: str | None = None, data_home: str | Path | None = None, force: bool = False) -> StageResult:
    """Write ``metrics.json`` of every finished run (or of ``run``); a run whose files are unreadable is
    reported in one line and recorded in the result's failures, and the others are evaluated."""
    paths = DatasetPaths.of(data, data_home)
    runs = list_runs(paths)
    damaged = damaged_runs(paths)
    if run is not None:
        runs = [r for r in runs if r.name == run]
        damaged = {k: v for k, v in damaged.items() if k == run}
        if not runs and not damaged:
            raise UsageError(f"no finished run '{run}' under {paths.runs} (see `genre info --data {data}`)")
    if not runs and not damaged:
        raise UsageError(f"{paths.runs}: no finished runs — run `genre train` first")
    result = StageResult()
    result.failures.update(damaged)
    for run_dir in runs:
        try:
            _evaluate_run(run_dir, force=force, result=result)
        except InputError as exc:
            result.failures[run_dir.name] = str(exc)
    for message in result.failures.values():
        ui.warn(message)
    if result.up_to_date:
        ui.info(f"{len(result.up_to_date)} runs already evaluated (unchanged predictions); nothing to do for them")
    return result


def _evaluate_run(run_dir: Path, *, force: bool, result: StageResult) -> None:
    try:
        digest = store.file_sha256(run_dir / "predictions.h5")
    except OSError as exc:
        raise InputError(f"{run_dir / 'predictions.h5'}: cannot read ({exc.strerror or exc})") from None
    out = run_dir / "metrics.json"
    if not force and out.exists():
        try:
            old = read_json(out, "metrics")
            fresh = old.get("predictions_sha256") == digest and old.get("metrics_version") == METRICS_VERSION
        except InputError:  # our own output, truncated: recomputed below
            fresh = False
        if fresh:
            result.up_to_date.append(run_dir.name)
            return
    metrics = run_metrics(run_dir)
    metrics["predictions_sha256"] = digest
    metrics["metrics_version"] = METRICS_VERSION
    write_text_atomic(out, json.dumps(metrics, indent=2))
    key = "auc_roc" if metrics["config"].get("multilabel") else "accuracy"
    stat = metrics["summary"][key]
    ui.info(f"{run_dir.name}: {key} {stat['mean']:.3f} ± {stat['std']:.3f} over {stat['n']} fold/seed runs")
    result.written.append(run_dir.name)


def read_config(run_dir: Path) -> dict:
    """A run's ``config.json``, checked for the keys evaluate and report read."""
    path = run_dir / "config.json"
    config = read_json(path, "run config")
    if missing := [k for k in CONFIG_KEYS if k not in config]:
        raise InputError(f"{path}: run config without {', '.join(missing)} (written by another version?)")
    return config


def read_predictions(run_dir: Path, multilabel: bool) -> list[dict]:
    """Every fold x seed of a run's ``predictions.h5``, read into memory (arrays and timings)."""
    path = run_dir / "predictions.h5"
    names = ("y_true", "y_pred", "scores") if multilabel else ("y_true", "y_pred", "test_index")
    out = []
    try:
        with h5py.File(path, "r") as h5:
            for fold in sorted(h5):
                for seed in sorted(h5[fold]):
                    g = h5[fold][seed]
                    entry = {name: g[name][()] for name in names}
                    entry.update(fold=fold, seed=seed, fit_seconds=float(g.attrs["fit_seconds"]),
                                 predict_seconds=float(g.attrs["predict_seconds"]),
                                 extra=json.loads(g.attrs.get("extra", "{}")))
                    out.append(entry)
    except (OSError, KeyError, ValueError) as exc:  # truncated or not HDF5; a missing dataset; garbled extra JSON
        raise InputError(f"{path}: unreadable predictions ({type(exc).__name__}: {exc})") from None
    if not out:
        raise InputError(f"{path}: no fold/seed predictions in the file")
    return out


def _index(name: str) -> int:
    """``fold3`` / ``seed1`` -> 3 / 1."""
    return int("".join(ch for ch in name if ch.isdigit()) or 0)


def run_metrics(run_dir: Path) -> dict:
    from genrecli.splits import fold_layout
    from genrecli.stats import pool_predictions

    config = read_config(run_dir)
    n_classes = len(config["labels"])
    multilabel = bool(config.get("multilabel"))
    entries, confusion = [], np.zeros((n_classes, n_classes), dtype=np.int64)
    predictions = read_predictions(run_dir, multilabel)
    n_folds = len({p["fold"] for p in predictions})
    k, repeats = fold_layout(str(config.get("split_spec") or config["split"]), n_folds)
    for p in predictions:
        if multilabel:
            m = multi_label_metrics(p["y_true"], p["y_pred"], p["scores"])
        else:
            m = single_label_metrics(p["y_true"], p["y_pred"], n_classes)
            confusion += np.asarray(m["confusion"])
        f = _index(p["fold"])
        m.update(fold=p["fold"], seed=p["seed"], fold_index=f, seed_index=_index(p["seed"]), repeat=f // k,
                 fold_in_repeat=f % k, fit_seconds=p["fit_seconds"], predict_seconds=p["predict_seconds"],
                 n_test=int(len(p["y_true"])), extra=p["extra"])
        entries.append(m)
    scalars = [k for k in MULTI_SCALARS if k in entries[0]] if multilabel else list(SCALARS)
    summary = {k: mean_std(e[k] for e in entries) for k in (*scalars, "fit_seconds", "predict_seconds")}
    summary["extra"] = _aggregate_extra([e["extra"] for e in entries])
    out = {"run": run_dir.name, "config": config, "summary": summary, "entries": entries,
           "layout": {"folds_per_repeat": k, "repeats": repeats, "folds": n_folds,
                      "seeds": len({p["seed"] for p in predictions})}}
    if not multilabel:
        out["confusion"] = confusion.tolist()
        pooled = pool_predictions([{**p, "fold": _index(p["fold"]), "seed": _index(p["seed"])} for p in predictions], k)
        out["pooled"] = {key: np.asarray(v).tolist() for key, v in pooled.items()}
        out["per_class"] = per_class_table(confusion, pooled["y_true"], config["labels"])
        out["spread"] = _spread(entries, pooled, scalars)
    return out


def per_class_table(confusion: np.ndarray, y_true: np.ndarray, labels: list[str]) -> dict:
    """Per class: precision, recall and F1 of the summed confusion (0 where undefined) and the support
    (distinct test items of the class)."""
    cm = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(cm)
    predicted, true = cm.sum(0), cm.sum(1)
    precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
    recall = np.where(true > 0, tp / np.maximum(true, 1), 0.0)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0.0)
    support = np.bincount(np.asarray(y_true, dtype=np.int64), minlength=len(labels))[:len(labels)]
    return {"labels": list(labels), "precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist(),
            "support": support.tolist()}


def _spread(entries: list[dict], pooled: dict, scalars: list[str]) -> dict:
    """Per metric: std over seeds (within a fold, averaged over folds), over folds and over repeats (see above)."""
    from genrecli.stats import metric as pooled_metric

    out = {}
    folds = sorted({e["fold_index"] for e in entries})
    for key in scalars:
        per_fold = [[e[key] for e in entries if e["fold_index"] == f] for f in folds]
        std_seeds = float(np.mean([np.std(v) for v in per_fold]))
        std_folds = float(np.std([np.mean(v) for v in per_fold])) if len(per_fold) > 1 else None
        out[key] = {"std_seeds": std_seeds, "std_folds": std_folds}
    sets = np.asarray(pooled["sets"]).reshape(-1, 2)
    for key in ("accuracy", "macro_f1"):
        per_repeat = [pooled_metric(pooled["y_true"], pooled["y_pred"][sets[:, 0] == r], key) for r in np.unique(sets[:, 0])]
        out[key]["std_repeats"] = float(np.std(per_repeat)) if len(per_repeat) > 1 else None
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
