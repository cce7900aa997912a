"""The report's protocol tables: every system with intervals and paired-test marks, per-class tables, dataset and
split statistics, provenance and the tidy CSV (see :mod:`genrecli.pipeline.report` for what each shows and
:mod:`genrecli.stats` for the statistics)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import time
from pathlib import Path

import numpy as np

from genrecli import stats
from genrecli.manifest import TEST, TRAIN, VALID

FLOOR_MODEL = "majority"
# Model families for the fusion comparison: a fusion run is compared with the best single-modality run of its family.
FAMILY = {"svm-concat": "svm", "svm-late": "svm", "mkl-average": "svm", "easymkl": "svm", "dm2kmn-init": "dm2kmn",
          # Oramas et al.: the fusion network against the best of its own single-modality branches
          **{f"oramas-{m}": "oramas" for m in ("audio", "text", "image", "mm-audio", "fusion")}}
TEST_NAMES = ("bootstrap", "mcnemar")
UNITS = ("item", "group")
MARK_BEST, MARK_TIED = "★", "†"
MARK_UP, MARK_DOWN, MARK_SAME = "▲", "▼", "≈"


@dataclasses.dataclass
class StatsOptions:
    """The report's statistics settings (all recorded in the report's content key)."""

    resamples: int = stats.DEFAULT_RESAMPLES
    level: float = stats.DEFAULT_LEVEL
    test: str = "bootstrap"  # paired test: bootstrap (accuracy or macro F1) or mcnemar (accuracy)
    metric: str = "accuracy"  # primary metric: the best system and the paired tests
    alpha: float = 0.05
    unit: str = "item"  # bootstrap unit: item, or group (the split's group key: a cluster bootstrap)
    seed: int = 0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def inputs_of(config: dict) -> list[str]:
    return sorted(config.get("inputs") or {i for i, _ in config["pairs"]})


def kernels_of(config: dict) -> list[str]:
    kernels = config.get("kernels") if "kernels" in config else {k for _, k in config["pairs"]}
    return sorted(k for k in kernels if k)


def options_label(config: dict) -> str:
    options = config.get("options") or {}
    return " [" + ", ".join(f"{k}={v}" for k, v in sorted(options.items())) + "]" if options else ""


def modalities(config: dict) -> set[str]:
    return {i.split("/", 1)[0] for i in inputs_of(config)}


def system_name(m: dict) -> str:
    c = m["config"]
    return c["model"] + options_label(c)


def _pct(x: float | None, digits: int = 1) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{100 * x:.{digits}f}"


def _p(p: float | None) -> str:
    if p is None:
        return "—"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _pooled(m: dict) -> dict:
    p = m["pooled"]
    return {"index": np.asarray(p["index"], dtype=np.int64), "y_true": np.asarray(p["y_true"], dtype=np.int64),
            "y_pred": np.asarray(p["y_pred"], dtype=np.int64).reshape(len(p["sets"]), -1), "sets": p["sets"]}


# ------------------------------------------------------------------------------------------- floor
def floor_metrics(manifest, split: str, labels: list[str]) -> dict | None:
    """A majority floor 'run' computed from the manifest: each fold predicts its training part's majority class."""
    from genrecli.splits import fold_layout

    if manifest is None or split not in manifest.splits or manifest.multilabel or list(manifest.label_names) != list(labels):
        return None
    assignment = manifest.split(split)
    y = manifest.y
    k, _ = fold_layout(manifest.split_specs.get(split, split), assignment.shape[0])
    entries = []
    for f, row in enumerate(assignment):
        train, test = np.flatnonzero(np.isin(row, (TRAIN, VALID))), np.flatnonzero(row == TEST)
        if not len(train) or not len(test):
            continue
        majority = int(np.bincount(y[train], minlength=len(labels)).argmax())
        entries.append({"fold": f, "seed": 0, "test_index": test, "y_true": y[test], "y_pred": np.full(len(test), majority)})
    if not entries:
        return None
    pooled = stats.pool_predictions(entries, k)
    return {"run": f"(majority floor of {split}, from the manifest)", "computed_floor": True,
            "config": {"model": FLOOR_MODEL, "inputs": [], "pairs": [], "kernels": [], "split": split, "labels": list(labels), "options": {}},
            "pooled": {key: np.asarray(v).tolist() for key, v in pooled.items()}, "spread": {}}


# ------------------------------------------------------------------------------------------- main table
def _clusters(m: dict, manifest, split: str, unit: str):
    if unit == "item":
        return None
    spec = manifest.split_specs.get(split, split) if manifest is not None else split
    parts = spec.split(":")
    if manifest is None or parts[0] not in ("group", "groupkfold"):
        return None
    groups = manifest.group_values(parts[1])
    index = np.asarray(m["pooled"]["index"], dtype=np.int64)
    return groups[index] if index.max(initial=-1) < len(groups) else None


def protocol_table(metrics: list[dict], split: str, manifest=None, opts: StatsOptions | None = None) -> dict:
    """The main table of one split: ``{"rows": [...], "systems": [...], "best": name, "notes": [...]}``.

    Every system gets ``acc``/``f1`` intervals, spread, and (against the best) the paired-test p (raw and Holm).
    """
    opts = opts or StatsOptions()
    chosen = [m for m in metrics if m["config"]["split"] == split and not m["config"].get("multilabel") and "pooled" in m]
    if not chosen:
        return {}
    labels = chosen[0]["config"]["labels"]
    floors = [m for m in chosen if m["config"]["model"] == FLOOR_MODEL]
    if not floors and (computed := floor_metrics(manifest, split, labels)) is not None:
        chosen = [computed, *chosen]
    systems = []
    for m in chosen:
        pooled = _pooled(m)
        clusters = _clusters(m, manifest, split, opts.unit)
        ci = {name: stats.bootstrap_ci(pooled["y_true"], pooled["y_pred"], name, n_boot=opts.resamples, level=opts.level,
                                       seed=opts.seed, clusters=clusters) for name in stats.METRICS}
        systems.append({"m": m, "pooled": pooled, "ci": ci, "floor": m["config"]["model"] == FLOOR_MODEL,
                        "name": system_name(m), "clusters": clusters})
    contenders = [s for s in systems if not s["floor"]]
    best = max(contenders, key=lambda s: s["ci"][opts.metric]["estimate"]) if contenders else None
    if best is not None:
        others = [s for s in contenders if s is not best]
        for s in [*others, *[f for f in systems if f["floor"]]]:
            s["vs_best"] = _compare(s, best, opts, manifest, split)
        adjusted = stats.holm([s["vs_best"]["p"] for s in others])
        for s, p in zip(others, adjusted):
            s["vs_best"]["p_holm"] = float(p)
        best["vs_best"] = None
    singles = [s for s in contenders if len(modalities(s["m"]["config"])) == 1]
    for s in contenders:
        if len(modalities(s["m"]["config"])) < 2:
            continue
        family = FAMILY.get(s["m"]["config"]["model"], s["m"]["config"]["model"])
        same = [t for t in singles if FAMILY.get(t["m"]["config"]["model"], t["m"]["config"]["model"]) == family]
        pool, scope = (same, "family") if same else (singles, "any model")
        if pool:
            ref = max(pool, key=lambda t: t["ci"][opts.metric]["estimate"])
            s["vs_single"] = {**_compare(s, ref, opts, manifest, split), "ref": ref, "scope": scope}
    order = sorted(systems, key=lambda s: (not s["floor"], -s["ci"][opts.metric]["estimate"], s["m"]["run"]))
    return {"systems": order, "best": best, "labels": labels, "split": split, "opts": opts}


def _compare(a: dict, b: dict, opts: StatsOptions, manifest, split: str) -> dict:
    common, ia, ib = np.intersect1d(a["pooled"]["index"], b["pooled"]["index"], return_indices=True)
    if not len(common):
        return {"p": 1.0, "diff": float("nan"), "n_items": 0, "test": opts.test}
    y = a["pooled"]["y_true"][ia]
    clusters = a["clusters"][ia] if a.get("clusters") is not None else None
    kw = {"n_boot": opts.resamples, "level": opts.level, "seed": opts.seed, "clusters": clusters} if opts.test == "bootstrap" else {}
    res = stats.paired_test(y, a["pooled"]["y_pred"][:, ia], b["pooled"]["y_pred"][:, ib], opts.metric, test=opts.test, **kw)
    if opts.test == "mcnemar":  # the difference shown is that of the metric on the common items
        res["diff"] = stats.metric(y, a["pooled"]["y_pred"][:, ia], opts.metric) - stats.metric(y, b["pooled"]["y_pred"][:, ib], opts.metric)
    return res


def main_rows(table: dict) -> list[list[str]]:
    """The rendered main table (header first)."""
    if not table:
        return []
    opts: StatsOptions = table["opts"]
    lvl = f"{opts.level:.0%}"
    rows = [["", "system", "inputs", "kernels", f"accuracy % [{lvl} CI]", "std seeds", "std folds", "std repeats",
             f"macro F1 % [{lvl} CI]", "std seeds (F1)", "std folds (F1)", f"Δ vs best ({opts.metric}, pp)",
             "p (Holm)", "fusion vs best single modality"]]
    for s in table["systems"]:
        c, spread = s["m"]["config"], s["m"].get("spread", {})
        mark = "floor" if s["floor"] else (MARK_BEST if s is table["best"] else "")
        vs = s.get("vs_best")
        if vs is not None and not s["floor"] and vs.get("p_holm", 0.0) >= opts.alpha:
            mark = MARK_TIED
        acc, f1 = s["ci"]["accuracy"], s["ci"]["macro_f1"]
        sa, sf = spread.get("accuracy", {}), spread.get("macro_f1", {})
        rows.append([
            mark, s["name"] + (" (computed)" if s["m"].get("computed_floor") else ""), ", ".join(inputs_of(c)) or "—",
            ", ".join(kernels_of(c)) or "—",
            f"{_pct(acc['estimate'])} [{_pct(acc['low'])}, {_pct(acc['high'])}]",
            _pct(sa.get("std_seeds")), _pct(sa.get("std_folds")), _pct(sa.get("std_repeats")),
            f"{_pct(f1['estimate'])} [{_pct(f1['low'])}, {_pct(f1['high'])}]",
            _pct(sf.get("std_seeds")), _pct(sf.get("std_folds")),
            "—" if vs is None else f"{100 * vs['diff']:+.1f}",
            "—" if vs is None else (_p(vs["p"]) + ("" if s["floor"] else f" ({_p(vs.get('p_holm'))})")),
            _single_cell(s, opts),
        ])
    return rows


def _single_cell(s: dict, opts: StatsOptions) -> str:
    vs = s.get("vs_single")
    if not vs:
        return ""
    ref = vs["ref"]
    mark = MARK_SAME if vs["p"] >= opts.alpha else (MARK_UP if vs["diff"] > 0 else MARK_DOWN)
    scope = "" if vs["scope"] == "family" else ", any model"
    return f"{mark} {100 * vs['diff']:+.1f} pp, p {_p(vs['p'])} vs {ref['name']} on {', '.join(inputs_of(ref['m']['config']))}{scope}"


def legend(table: dict) -> str:
    opts: StatsOptions = table["opts"]
    unit = "test items" if opts.unit == "item" else "groups of the split's key (cluster bootstrap)"
    test = ("paired bootstrap of the difference" if opts.test == "bootstrap"
            else "exact McNemar test on per-item correctness (majority over seeds/repeats)")
    n = table["systems"][0]["ci"]["accuracy"]
    return (f"Pooled test predictions (each item once per repeat and seed; n = {n['n_items']} items); "
            f"{opts.level:.0%} percentile bootstrap intervals over {unit}, {opts.resamples} resamples (seed {opts.seed}). "
            f"{MARK_BEST} best by {opts.metric}; {MARK_TIED} not significantly different from the best "
            f"({test} on common items, Holm-adjusted over the {max(sum(not s['floor'] for s in table['systems']) - 1, 0)} comparisons with the best, "
            f"α = {opts.alpha}); fusion rows: {MARK_UP} / {MARK_DOWN} significantly better / worse than the best "
            f"single-modality run of the same model family, {MARK_SAME} not different (unadjusted). "
            "std seeds: within a fold, averaged over folds; std folds: of the seed-averaged fold metric; "
            "std repeats: of each repeat's pooled metric.")


def per_class_rows(table: dict) -> list[list[str]]:
    """Per-class F1 % of every system (support = distinct test items of the class)."""
    if not table:
        return []
    labels = table["labels"]
    ref = table["best"] or table["systems"][0]
    support = np.bincount(ref["pooled"]["y_true"], minlength=len(labels))  # the best system's test items
    rows = [["system", "inputs", "kernels", *[f"{lab} (n={int(support[i])})" for i, lab in enumerate(labels)]]]
    for s in table["systems"]:
        pooled = s["pooled"]
        f1 = _per_class_f1(pooled["y_true"], pooled["y_pred"], len(labels))
        rows.append([s["name"] + (" (computed)" if s["m"].get("computed_floor") else ""),
                     ", ".join(inputs_of(s["m"]["config"])) or "—", ", ".join(kernels_of(s["m"]["config"])) or "—",
                     *[_pct(v) for v in f1]])
    return rows


def _per_class_f1(y_true, y_pred, n_classes: int) -> np.ndarray:
    present = y_pred >= 0
    yt = np.broadcast_to(y_true, y_pred.shape)[present]
    yp = y_pred[present]
    cm = np.zeros((n_classes, n_classes))
    np.add.at(cm, (yt, yp), 1)
    tp, pred, true = np.diag(cm), cm.sum(0), cm.sum(1)
    return np.where(pred + true > 0, 2 * tp / np.maximum(pred + true, 1), 0.0)


def run_class_rows(m: dict) -> list[list[str]]:
    """One run's precision / recall / F1 % and support per class."""
    pc = m.get("per_class")
    if not pc:
        return []
    rows = [["class", "precision %", "recall %", "F1 %", "support"]]
    for i, lab in enumerate(pc["labels"]):
        rows.append([lab, _pct(pc["precision"][i]), _pct(pc["recall"][i]), _pct(pc["f1"][i]), str(pc["support"][i])])
    return rows


def confusion_rows(m: dict) -> list[list[str]]:
    """Count confusion matrix (rows true, columns predicted), summed over folds x seeds."""
    if "confusion" not in m:
        return []
    labels = m["config"]["labels"]
    return [["true \\ predicted", *labels], *[[lab, *map(str, row)] for lab, row in zip(labels, m["confusion"])]]


# ------------------------------------------------------------------------------------------- dataset statistics
def split_rows(manifest, split: str) -> tuple[list[list[str]], str]:
    """(per fold: class counts per part and groups per part, a one-line summary) of one stored split."""
    from genrecli.splits import fold_layout

    if manifest is None or split not in manifest.splits:
        return [], f"split {split}: not in the manifest (re-ingested since?)"
    a = manifest.split(split)
    spec = manifest.split_specs.get(split, split)
    k, r = fold_layout(spec, a.shape[0])
    parts = spec.split(":")
    key = parts[1] if parts[0] in ("group", "groupkfold") else None
    groups = manifest.group_values(key) if key else None
    labels = manifest.label_names
    multi = manifest.multilabel
    counts = manifest.Y.sum(0) if multi else np.bincount(manifest.y, minlength=len(labels))
    head = ["repeat", "fold", "part", "tracks", *labels] + ([f"{key} groups"] if key else [])
    rows = [head, ["—", "—", "all", str(len(manifest)), *map(str, counts)] + ([str(len(set(groups)))] if key else [])]
    for f, row in enumerate(a):
        for part, codes in (("train", (TRAIN,)), ("valid", (VALID,)), ("test", (TEST,))):
            idx = np.flatnonzero(np.isin(row, codes))
            if part == "valid" and not len(idx):
                continue
            per = manifest.Y[idx].sum(0) if multi else np.bincount(manifest.y[idx], minlength=len(labels))
            rows.append([str(f // k), str(f % k), part, str(len(idx)), *map(str, per)]
                        + ([str(len(set(groups[idx])))] if key else []))
    seed = manifest.split_seeds.get(split)
    summary = (f"split {split}: spec {spec}" + (f", seed {seed}" if seed is not None else "") + f"; {a.shape[0]} fold(s)"
               + (f" = {r} repeats x {k} folds" if r > 1 else "") + f"; {len(manifest)} tracks, {len(labels)} classes"
               + (f"; {len(set(groups))} '{key}' groups, no group in two parts of a fold" if key else ""))
    return rows, summary


# ------------------------------------------------------------------------------------------- provenance
def provenance(m: dict, run_dir: Path | None = None, manifest=None) -> dict:
    """What a run was made with: version, date, split, seeds, options, model parameters, feature parameters.

    Runs trained before the split spec and seed were recorded in their config get those of the manifest's split
    of that name (marked so)."""
    c = m["config"]
    spec, seed = c.get("split_spec"), c.get("split_seed")
    if spec is None and manifest is not None and c["split"] in manifest.split_specs:
        spec = manifest.split_specs[c["split"]] + " (from the manifest)"
        seed = manifest.split_seeds.get(c["split"])
    date = c.get("trained_at")
    if date is None and run_dir is not None and (run_dir / "config.json").exists():
        date = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime((run_dir / "config.json").stat().st_mtime)) + " (file date)"
    from genrecli import store

    return {
        "run": m["run"], "toolkit_version": c.get("toolkit_version", "— (not recorded)"), "trained_at": date or "—",
        "split": c["split"], "split_spec": spec or "—", "split_seed": seed,
        "seeds": c.get("seeds"), "model": c["model"], "options": c.get("options") or {}, "inputs": inputs_of(c),
        "kernels": kernels_of(c), "device": c.get("device"), "params_hash": c.get("params_hash"),
        "model_params_hash": store.params_hash(c.get("model_params") or {})[:12],
        "features": {n: {"params_hash": f.get("params_hash"), "content": f.get("content"), "params": f.get("params")}
                     for n, f in (c.get("features") or {}).items()},
        "manifest": c.get("manifest"), "assignment": c.get("assignment"),
    }


def provenance_markdown(p: dict) -> str:
    feats = "; ".join(f"{n} (params {f['params_hash']}, content {f['content']}): {json.dumps(f['params'], sort_keys=True)}"
                      for n, f in p["features"].items())
    return (f"- **{p['run']}** — genre {p['toolkit_version']}, trained {p['trained_at']}; model {p['model']}, options "
            f"{json.dumps(p['options'], sort_keys=True)}, model params hash {p['model_params_hash']}, run params hash "
            f"{p['params_hash']}; split {p['split']} ({p['split_spec']}, seed {p['split_seed']}), {p['seeds']} seed(s); "
            f"manifest {p['manifest']}; features: {feats or '—'}")


# ------------------------------------------------------------------------------------------- tidy CSV
CSV_FIELDS = ("dataset", "split", "run", "model", "inputs", "kernels", "options", "fold", "repeat", "fold_in_repeat",
              "seed", "metric", "value")
CSV_METRICS = ("accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1", "auc_roc", "example_f",
               "micro_f1", "adiv@1", "adiv@3", "adiv@5", "fit_seconds", "predict_seconds", "n_test")


def tidy_csv(dataset: str, metrics: list[dict]) -> str:
    from genrecli.pipeline.evaluate import _index
    from genrecli.splits import fold_layout

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for m in metrics:
        c = m["config"]
        n_folds = len({e["fold"] for e in m["entries"]})
        k = m.get("layout", {}).get("folds_per_repeat") or fold_layout(str(c.get("split_spec") or c["split"]), n_folds)[0]
        for e in m["entries"]:
            f = e.get("fold_index", _index(str(e["fold"])))
            seed = e.get("seed_index", _index(str(e["seed"])))
            for key in CSV_METRICS:
                if isinstance(e.get(key), (int, float)):
                    writer.writerow([dataset, c["split"], m["run"], c["model"], "+".join(inputs_of(c)), "+".join(kernels_of(c)),
                                     json.dumps(c.get("options") or {}, sort_keys=True), f, f // k, f % k, seed, key, repr(float(e[key]))])
    return out.getvalue()
