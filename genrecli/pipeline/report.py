"""``genre report``: paper-style tables (mean ± std over seeds and folds), confusion matrices, RI plots.

Writes ``<data>/report/results.md``, ``index.html``, ``results.csv`` and PNG figures from every evaluated run.
A run whose metrics are unreadable is reported in one line (a failure: exit 2) and left out; a run not
evaluated since its last training (or evaluated by an older version) is named and left out; the others are
reported.

Per split of the corpus (single-label runs; the statistics are those of :mod:`genrecli.stats`):

* **Main table** -- every system (run) with its pooled accuracy and macro F1, each with a 95 % bootstrap
  interval over the test items, the std over seeds and the std over folds (and over repeats under a repeated
  K-fold); the ``majority`` floor row first (the ``majority`` run of that split, or, when there is none, the
  majority class of each fold's training part computed from the manifest). Marks: ``★`` the best system by the
  primary metric (``metric``, accuracy by default; the floor never counts); ``†`` a system not significantly
  different from the best (paired test on the common test items, Holm-adjusted over the comparisons with the
  best, adjusted p >= ``alpha``). Fusion rows (inputs of two or more modalities) are compared with the best
  single-modality run of the same model family (``FAMILY``: the SVM fusions and the MKL models are of the
  ``svm`` family, ``dm2kmn-init`` of ``dm2kmn``; any model when the family has no single-modality run):
  ``▲`` significantly better, ``▼`` significantly worse, ``≈`` not different (p >= alpha, not adjusted).
* **Per-class F1** of every system, with the support of every class; per-run precision / recall / F1 /
  support tables and count confusion matrices (summed over folds x seeds) in the per-run section.
* **Dataset and split statistics** from the manifest: class counts per part of every fold, groups per part.
* **Provenance** of every run: toolkit version and training date (for runs trained before these were
  recorded: the date of config.json), split spec and seed, seeds, options, the model's full parameters
  (hash), and every input's feature parameters with their hash and content key.

* **DM2KMN fine-tuning curves** of every fine-tuned DM2KMN run whose learning rate / epochs were chosen by CV:
  per rate and checkpoint, the CV fold means of the training loss and accuracy, the share of active hinge
  terms, RE against the DKN kernel, the validation accuracy and the share of validation predictions changed
  since epoch 0 (table and PNG).

``results.csv`` is tidy: one row per run x fold x repeat x seed x metric.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import numpy as np

import genrecli
from genrecli import store, ui
from genrecli.errors import InputError, UsageError
from genrecli.kernels import KERNEL_NAMES
from genrecli.layout import DatasetPaths
from genrecli.pipeline import StageResult
from genrecli.pipeline.evaluate import METRICS_VERSION, damaged_runs, list_runs, read_json, write_text_atomic

KERNEL_ORDER = list(KERNEL_NAMES)


def _inputs(config: dict) -> list[str]:
    """A run's inputs (runs written before the model contract list (input, kernel) pairs instead)."""
    return sorted(config.get("inputs") or {i for i, _ in config["pairs"]})


def _kernels(config: dict) -> list[str]:
    kernels = config.get("kernels") if "kernels" in config else {k for _, k in config["pairs"]}
    return sorted((k for k in kernels if k), key=lambda k: KERNEL_ORDER.index(k) if k in KERNEL_ORDER else 99)


def _pm(stat: dict | None, scale: float = 100.0, digits: int = 1) -> str:
    if not stat:
        return "—"
    return f"{stat['mean'] * scale:.{digits}f} ± {stat['std'] * scale:.{digits}f}"


SUMMARY_KEYS = {False: ("accuracy", "balanced_accuracy", "macro_f1", "fit_seconds", "predict_seconds"),
                True: ("auc_roc", "example_f", "micro_f1", "fit_seconds", "predict_seconds")}


def load_metrics(paths: DatasetPaths) -> tuple[list[dict], dict[str, str], dict[str, str]]:
    """(the metrics of every evaluated run, unreadable runs -> one line, runs not evaluated -> one line).

    The metrics of a run carry the content key of what they were computed from (``predictions_sha256``);
    a run whose predictions changed since (retrained, not evaluated again) counts as not evaluated.
    """
    metrics, failed, pending = [], damaged_runs(paths), {}
    for run_dir in list_runs(paths):
        f = run_dir / "metrics.json"
        if not f.exists():
            pending[run_dir.name] = f"{run_dir.name}: not evaluated; run `genre evaluate --data {paths.name}`"
            continue
        try:
            m = _checked_metrics(read_json(f, "metrics"), f)
            current = store.file_sha256(run_dir / "predictions.h5")
        except InputError as exc:
            failed[run_dir.name] = str(exc)
            continue
        except OSError as exc:
            failed[run_dir.name] = f"{run_dir / 'predictions.h5'}: cannot read ({exc.strerror or exc})"
            continue
        if m.get("predictions_sha256") != current:
            pending[run_dir.name] = (f"{run_dir.name}: its predictions changed (retrained) since it was evaluated; "
                                     f"run `genre evaluate --data {paths.name}`")
            continue
        if m.get("metrics_version") != METRICS_VERSION:
            pending[run_dir.name] = (f"{run_dir.name}: evaluated by an older version (no pooled predictions); "
                                     f"run `genre evaluate --data {paths.name}`")
            continue
        m["run"] = run_dir.name  # a run folder copied or renamed is reported (and keyed) under its folder name
        metrics.append(m)
    return metrics, failed, pending


def _checked_metrics(m: dict, path: Path) -> dict:
    """``m`` when it holds what the tables read; else :class:`InputError` (written by another version)."""
    config, summary = m.get("config"), m.get("summary")
    ok = isinstance(config, dict) and isinstance(summary, dict) and isinstance(m.get("entries"), list) and "run" in m
    ok = ok and all(k in config for k in ("model", "split", "labels")) and ("inputs" in config or "pairs" in config)
    ok = ok and all(k in summary for k in SUMMARY_KEYS[bool(config.get("multilabel"))])
    if not ok:
        raise InputError(f"{path}: metrics without the fields the report reads; rerun `genre evaluate --force`")
    return m


def _content_key(paths: DatasetPaths, metrics: list[dict], failed: dict, pending: dict, options: dict | None = None) -> str:
    """What the report is made of: the bytes of every metrics.json it reads (they carry the hash of their
    run's predictions), the runs it leaves out, the manifest, the statistics options and the toolkit version
    (which renders them)."""
    read = {m["run"]: store.file_sha256(paths.runs / m["run"] / "metrics.json") for m in metrics}
    from genrecli.pipeline.experiment import recorded_experiments

    manifest = store.file_sha256(paths.manifest) if paths.manifest.exists() else None
    return store.params_hash({"metrics": read, "failed": sorted(failed), "pending": sorted(pending),
                              "version": genrecli.__version__, "options": options or {}, "manifest": manifest,
                              "experiments": recorded_experiments(paths.root)})


def multilabel_table(metrics: list[dict]) -> list[list[str]]:
    """Multi-label runs: macro AUC-ROC, example-based F-measure, ADiv@N (Oramas et al.'s metrics)."""
    rows = [["run", "model", "inputs", "split", "AUC-ROC %", "example F %", "micro F1 %", "ADiv@1 %", "ADiv@3 %", "ADiv@5 %"]]
    for m in metrics:
        c, s = m["config"], m["summary"]
        if not c.get("multilabel"):
            continue
        inputs = ", ".join(_inputs(c))
        rows.append([m["run"], c["model"], inputs, c["split"], _pm(s["auc_roc"]), _pm(s["example_f"]), _pm(s["micro_f1"]),
                     *[_pm(s.get(f"adiv@{n}")) for n in (1, 3, 5)]])
    return rows if len(rows) > 1 else []


def runs_table(metrics: list[dict]) -> list[list[str]]:
    rows = [["run", "model", "inputs", "kernels", "split", "test n", "accuracy %", "balanced acc %", "macro F1 %", "fit s"]]
    for m in metrics:
        c, s = m["config"], m["summary"]
        if c.get("multilabel"):
            continue
        inputs = ", ".join(_inputs(c))
        kernels = ", ".join(_kernels(c)) or "—"
        n_test = int(np.mean([e["n_test"] for e in m["entries"]]))
        rows.append([m["run"], c["model"], inputs, kernels, c["split"], str(n_test), _pm(s["accuracy"]),
                     _pm(s["balanced_accuracy"]), _pm(s["macro_f1"]), f"{s['fit_seconds']['mean']:.2f}"])
    return rows


def svm_pivot(metrics: list[dict], split: str) -> list[list[str]]:
    """Kernel x input accuracy table of the single-kernel SVM runs of one split (the paper's Table 3)."""
    cells, inputs = {}, set()
    for m in metrics:
        c = m["config"]
        if c["model"] != "svm" or c["split"] != split or len(_inputs(c)) != 1 or c.get("multilabel"):
            continue
        (inp,), (ker,) = _inputs(c), _kernels(c)
        inp += _options_label(c)  # runs of one input with other options (e.g. -o scale=none) get their own column
        inputs.add(inp)
        cells[(ker, inp)] = m["summary"]["accuracy"]
    if not cells:
        return []
    inputs = sorted(inputs)
    rows = [["kernel", *inputs]]
    for ker in KERNEL_ORDER:
        if any((ker, i) in cells for i in inputs):
            rows.append([ker, *[_pm(cells.get((ker, i))) for i in inputs]])
    return rows


def _options_label(config: dict) -> str:
    """`` [k=v, ...]`` of a run's ``-o`` options ('' without), so that runs differing only in options are told apart."""
    options = config.get("options") or {}
    return " [" + ", ".join(f"{k}={v}" for k, v in sorted(options.items())) + "]" if options else ""


def model_table(metrics: list[dict], split: str) -> list[list[str]]:
    """Every model but the single-kernel SVM on one split, with the DM2KMN metrics (the paper's Table 5 analogue).

    RE is the relative approximation error (spec 7.2, absolute-sum form, %) of the map network against its
    DKN; forward times are of the whole test set, DM2KMN and its DKN timed in the same run.
    """
    rows = [["model", "inputs", "accuracy %", "macro F1 %", "RE train %", "RE test %", "fit s", "forward s (test set)", "DKN forward s (same run)"]]
    order = {"majority": -1, "dkn": 10, "dm2kmn-init": 11, "dm2kmn": 12}  # baselines first, the paper's method last
    chosen = [m for m in metrics if m["config"]["split"] == split and m["config"]["model"] != "svm" and not m["config"].get("multilabel")]
    for m in sorted(chosen, key=lambda m: (order.get(m["config"]["model"], 9), len(_inputs(m["config"])), m["run"])):
        c, s = m["config"], m["summary"]
        extra = s.get("extra", {})
        inputs = ", ".join(_inputs(c))
        if not c["model"].startswith("dm2kmn"):  # its own forward time; no map network to compare with
            own, dkn = extra.get("forward_time_dkn_s") or s["predict_seconds"], None
        else:
            own, dkn = extra.get("forward_time_dm2kmn_s") or s["predict_seconds"], extra.get("forward_time_dkn_s")
        rows.append([c["model"] + _options_label(c), inputs, _pm(s["accuracy"]), _pm(s["macro_f1"]),
                     _pm(extra.get("re_train", {}).get("re_abs"), 1.0, 3), _pm(extra.get("re_test", {}).get("re_abs"), 1.0, 3),
                     _pm(s["fit_seconds"], 1.0, 1), _pm(own, 1.0, 4), _pm(dkn, 1.0, 4)])
    return rows if len(rows) > 1 else []


CURVE_COLUMNS = (("loss", "train loss", 1.0, 4), ("train_acc", "train acc %", 100.0, 1),
                 ("active", "active hinge %", 100.0, 1), ("re", "RE %", 1.0, 2),
                 ("val_acc", "val acc %", 100.0, 1), ("val_changed", "val changed %", 100.0, 1))


def finetune_curve_rows(m: dict) -> list[list[str]]:
    """The DM2KMN fine-tuning curves of one run: per learning rate and checkpoint epoch, the CV fold means
    (mean ± std over the run's folds × seeds) of the training loss, training accuracy, share of active hinge
    terms, RE against the DKN kernel, validation accuracy and share of validation predictions changed since
    epoch 0 (:attr:`DM2KMNClassifier.ft_curves_`). [] for a run without curves."""
    curves = m["summary"].get("extra", {}).get("finetune_curves")
    if not isinstance(curves, dict) or not curves:
        return []
    rows = [["lr", "epoch", *[label for _, label, _, _ in CURVE_COLUMNS]]]
    for lr in sorted(curves, key=float):
        c = curves[lr]
        epochs = c.get("epoch", {}).get("mean", [])
        for j, ep in enumerate(epochs):
            cells = []
            for key, _, scale, digits in CURVE_COLUMNS:
                v = c.get(key, {})
                mean, std = v.get("mean", []), v.get("std", [])
                cells.append("—" if j >= len(mean) or not np.isfinite(mean[j])
                             else f"{mean[j] * scale:.{digits}f} ± {std[j] * scale:.{digits}f}")
            rows.append([lr, f"{ep:g}", *cells])
    return rows


def _curves_png(m: dict, path: Path) -> bool:
    """Fine-tuning curves of one DM2KMN run: training and validation accuracy (left) and RE (right) against
    the epoch, one colour per learning rate (CV fold means)."""
    curves = m["summary"].get("extra", {}).get("finetune_curves")
    if not isinstance(curves, dict) or not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_re) = plt.subplots(1, 2, figsize=(8, 3.2))
    for i, lr in enumerate(sorted(curves, key=float)):
        c, colour = curves[lr], f"C{i}"
        ep = c["epoch"]["mean"]
        ax_acc.plot(ep, 100 * np.asarray(c["train_acc"]["mean"]), "--", color=colour, label=f"train, lr {lr}")
        ax_acc.plot(ep, 100 * np.asarray(c["val_acc"]["mean"]), "-", color=colour, label=f"validation, lr {lr}")
        ax_re.plot(ep, c["re"]["mean"], "-", color=colour, label=f"lr {lr}")
    ax_acc.set(xlabel="epoch", ylabel="accuracy % (CV fold mean)")
    ax_re.set(xlabel="epoch", ylabel="RE % (Frobenius, vs DKN)", yscale="log")  # a diverging rate spans decades
    ax_acc.legend(fontsize=6)
    ax_re.legend(fontsize=6)
    fig.suptitle(f"{m['run']}: fine-tuning curves", fontsize=8)
    fig.tight_layout()
    _save_png(fig, path)
    plt.close(fig)
    return True


def markdown(rows: list[list[str]]) -> str:
    if not rows:
        return ""
    head, *body = rows
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def html_table(rows: list[list[str]]) -> str:
    if not rows:
        return ""
    head, *body = rows
    out = ["<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    out += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body]
    return "\n".join(out) + "</tbody></table>"


def _confusion_png(m: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = m["config"]["labels"]
    cm = np.asarray(m["confusion"], dtype=np.float64)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = 1.2 + 0.55 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{int(cm[i, j])}\n{norm[i, j]:.0%}", ha="center", va="center", fontsize=6,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(m["run"].replace("__", "\n") + "\n(counts summed over folds x seeds; row %)", fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    _save_png(fig, path)
    plt.close(fig)


def _save_png(fig, path: Path) -> None:
    """Save a figure atomically (temporary file, then rename)."""
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _importance_png(m: dict, path: Path) -> bool:
    """Relative importance (Garson, %) of every input kernel for the DKN and the DM2KMN, with modality totals."""
    extra = m["summary"].get("extra", {})
    series = {k: extra[k] for k in ("ri_dkn", "ri_dm2kmn") if isinstance(extra.get(k), dict) and "per_kernel" in extra[k]}
    if not series:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{i}:{k}" for i, k in m["config"]["pairs"]]
    x = np.arange(len(names))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(1.5 + 0.7 * len(names), 3.8))
    titles = []
    for j, (key, ri) in enumerate(series.items()):
        label = "DKN" if key == "ri_dkn" else "DM2KMN"
        ax.bar(x + (j - (len(series) - 1) / 2) * width, ri["per_kernel"]["mean"], width, yerr=ri["per_kernel"]["std"], label=label)
        totals = ri.get("per_modality", {})
        titles.append(f"{label}: " + ", ".join(f"{k} {v['mean']:.1f}%" for k, v in totals.items()))
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("relative importance %")
    ax.legend(fontsize=7)
    ax.set_title(f"{m['run']}\n" + "; ".join(titles), fontsize=7)
    fig.tight_layout()
    _save_png(fig, path)
    plt.close(fig)
    return True


def _manifest(paths: DatasetPaths):
    """The dataset's manifest (for the split statistics and the computed floor), or None when unreadable."""
    from genrecli.errors import GenreError
    from genrecli.manifest import read_manifest

    try:
        return read_manifest(paths.manifest)
    except (GenreError, OSError, KeyError, ValueError) as exc:
        ui.warn(f"{paths.manifest}: {exc} (the report goes on without split statistics or a computed floor)")
        return None


def report(data: str, *, data_home: str | Path | None = None, force: bool = False, resamples: int = 2000,
           level: float = 0.95, test: str = "bootstrap", metric: str = "accuracy", alpha: float = 0.05,
           unit: str = "item", seed: int = 0) -> StageResult:
    """Write the report of every evaluated run of ``data`` (see the module docstring).

    ``resamples``, ``level``, ``unit`` (item or group) and ``seed``: the bootstrap; ``test`` (bootstrap or
    mcnemar), ``metric`` (accuracy or macro_f1) and ``alpha``: the paired tests and the marks.
    """
    from genrecli.pipeline import protocol
    from genrecli.stats import METRICS

    if test not in protocol.TEST_NAMES:
        raise UsageError(f"--test {test}: expected one of {', '.join(protocol.TEST_NAMES)}")
    if metric not in METRICS:
        raise UsageError(f"--metric {metric}: expected one of {', '.join(METRICS)}")
    if test == "mcnemar" and metric != "accuracy":
        raise UsageError("--test mcnemar compares per-item correctness: use it with --metric accuracy")
    if unit not in protocol.UNITS:
        raise UsageError(f"--unit {unit}: expected one of {', '.join(protocol.UNITS)}")
    if resamples < 100:
        raise UsageError(f"--resamples {resamples}: use at least 100 bootstrap resamples")
    if not 0.5 <= level < 1.0 or not 0.0 < alpha < 1.0:
        raise UsageError(f"--level {level} / --alpha {alpha}: expected 0.5 <= level < 1 and 0 < alpha < 1")
    opts = protocol.StatsOptions(resamples=resamples, level=level, test=test, metric=metric, alpha=alpha, unit=unit, seed=seed)
    paths = DatasetPaths.of(data, data_home)
    metrics, failed, pending = load_metrics(paths)
    for message in (*failed.values(), *pending.values()):
        ui.warn(message)
    if not metrics:
        raise UsageError(f"{paths.runs}: no evaluated runs — run `genre train` and `genre evaluate` first")
    result = StageResult(failures=dict(failed))
    digest = _content_key(paths, metrics, failed, pending, opts.as_dict())
    stamp = paths.report / ".params_hash"
    if not force and stamp.exists() and stamp.read_text().strip() == digest and (paths.report / "results.md").exists():
        ui.info(f"{paths.report}: up to date ({len(metrics)} runs); nothing to do")
        result.up_to_date.append("report")
        print((paths.report / "results.md").read_text())
        return result
    paths.report.mkdir(parents=True, exist_ok=True)
    manifest = _manifest(paths)
    md = [f"# Results: {paths.name}", ""]
    body = [f"<h1>Results: {html.escape(paths.name)}</h1>"]

    def section(title: str, rows: list[list[str]], note: str = "", level_: int = 2) -> None:
        if not rows:
            return
        md.extend([f"{'#' * level_} {title}", ""] + ([note, ""] if note else []) + [markdown(rows), ""])
        body.extend([f"<h{level_}>{html.escape(title)}</h{level_}>"] + ([f"<p>{html.escape(note)}</p>"] if note else [])
                    + [html_table(rows)])

    from genrecli.pipeline.experiment import recorded_experiments

    experiments = recorded_experiments(paths.root)
    if experiments:
        section("Experiments", [["experiment file", "description", "sha256"], *[list(e) for e in experiments]],
                f"Recorded by `genre run` under {paths.root / 'experiments'}.")
    splits = sorted({m["config"]["split"] for m in metrics})
    for split in splits:
        table = protocol.protocol_table(metrics, split, manifest, opts)
        if table:
            section(f"Every system — split {split}", protocol.main_rows(table), protocol.legend(table))
            section(f"Per-class F1 % — split {split}", protocol.per_class_rows(table),
                    "F1 of each class from the pooled predictions (all folds, repeats and seeds); n = distinct test items "
                    "of the best system (runs whose features failed on a few tracks have a few less).")
        rows, summary = protocol.split_rows(manifest, split)
        section(f"Dataset and split statistics — split {split}", rows, summary)
    for split in splits:
        pivot = svm_pivot(metrics, split)
        if pivot:
            section(f"SVM accuracy % per elementary kernel and input — split {split}", pivot)
        models = model_table(metrics, split)
        if models:
            section(f"Models on all their inputs (Table-5 analogue) — split {split}", models)
        for m in metrics:
            if m["config"]["split"] != split:
                continue
            rows = finetune_curve_rows(m)
            section(f"DM2KMN fine-tuning curves — {m['run']}", rows,
                    "CV on the training part (the folds that choose the learning rate and the epochs), fold means "
                    "± std over folds × seeds. Active hinge %: share of one-vs-rest hinge terms with margin < 1, "
                    "the only terms the hinge gradient comes from; val changed %: validation predictions that "
                    "differ from epoch 0's.", level_=3)
            png = f"curves-{m['run']}.png"
            if rows and _curves_png(m, paths.report / png):
                md.extend([f"![fine-tuning curves]({png})", ""])
                body.append(f"<figure><img src='{html.escape(png)}' alt='fine-tuning curves'></figure>")
    runs = runs_table(metrics)
    if len(runs) > 1:
        section("All runs (mean ± std over folds × seeds)", runs)
    multi = multilabel_table(metrics)
    if multi:
        section("Multi-label runs (mean ± std over folds × seeds)", multi)
    md += ["## Per run: classes, confusion counts, provenance", ""]
    body.append("<h2>Per run: classes, confusion counts, provenance</h2>")
    figures = []
    for m in metrics:
        prov = protocol.provenance(m, paths.runs / m["run"], manifest)
        md += [f"### {m['run']}", "", protocol.provenance_markdown(prov), ""]
        body += [f"<h3>{html.escape(m['run'])}</h3>", f"<p>{html.escape(protocol.provenance_markdown(prov)[2:])}</p>",
                 f"<details><summary>full provenance (JSON)</summary><pre>{html.escape(json.dumps({**prov, 'model_params': m['config'].get('model_params')}, indent=1, sort_keys=True))}</pre></details>"]
        for rows, caption in ((protocol.run_class_rows(m), "per class (precision and recall of the confusion summed over folds × seeds; support: distinct test items)"),
                              (protocol.confusion_rows(m), "confusion counts, summed over folds × seeds (each test item counted once per repeat and seed)")):
            if rows:
                md += [caption + ":", "", markdown(rows), ""]
                body += [f"<p>{html.escape(caption)}</p>", html_table(rows)]
        if "confusion" in m:
            png = f"confusion-{m['run']}.png"
            _confusion_png(m, paths.report / png)
            figures.append(f"<figure><img src='{html.escape(png)}' alt='confusion matrix'><figcaption>{html.escape(m['run'])}</figcaption></figure>")
            md.append(f"![confusion counts]({png})")
            md.append("")
        ri_png = f"importance-{m['run']}.png"
        if _importance_png(m, paths.report / ri_png):
            figures.append(f"<figure><img src='{html.escape(ri_png)}' alt='relative importance'></figure>")
            md += [f"![relative importance]({ri_png})", ""]
    body.append("<h2>Figures</h2>")
    body += figures
    write_text_atomic(paths.report / "results.csv", protocol.tidy_csv(paths.name, metrics))
    write_text_atomic(paths.report / "results.md", "\n".join(md) + "\n")
    style = "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;font-size:13px}figure{display:inline-block;margin:8px}"
    write_text_atomic(
        paths.report / "index.html",
        f"<!doctype html><html><head><meta charset='utf-8'><title>genre report: {html.escape(paths.name)}</title>"
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
    write_text_atomic(stamp, digest)  # last: a report killed before here is rebuilt next time
    ui.info(f"{paths.report}: results.md, results.csv, index.html and figures of {len(metrics)} runs")
    print("\n".join(md))
    result.written.append("report")
    return result
