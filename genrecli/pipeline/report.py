"""``genre report``: paper-style tables (mean ± std over seeds and folds), confusion matrices, RI plots.

Writes ``<data>/report/results.md``, ``index.html`` and PNG figures from every evaluated run.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from genrecli import store, ui
from genrecli.errors import UsageError
from genrecli.kernels import KERNEL_NAMES
from genrecli.layout import DatasetPaths
from genrecli.pipeline import StageResult
from genrecli.pipeline.evaluate import list_runs

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


def load_metrics(paths: DatasetPaths) -> list[dict]:
    out = []
    for run_dir in list_runs(paths):
        f = run_dir / "metrics.json"
        if f.exists():
            out.append(json.loads(f.read_text()))
    return out


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
        rows.append([c["model"], inputs, _pm(s["accuracy"]), _pm(s["macro_f1"]),
                     _pm(extra.get("re_train", {}).get("re_abs"), 1.0, 3), _pm(extra.get("re_test", {}).get("re_abs"), 1.0, 3),
                     _pm(s["fit_seconds"], 1.0, 1), _pm(own, 1.0, 4), _pm(dkn, 1.0, 4)])
    return rows if len(rows) > 1 else []


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
            ax.text(j, i, f"{norm[i, j]:.0%}", ha="center", va="center", fontsize=7, color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(m["run"].replace("__", "\n"), fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def report(data: str, *, data_home: str | Path | None = None, force: bool = False) -> StageResult:
    paths = DatasetPaths.of(data, data_home)
    metrics = load_metrics(paths)
    if not metrics:
        raise UsageError(f"{paths.runs}: no evaluated runs — run `genre train` and `genre evaluate` first")
    result = StageResult()
    digest = store.params_hash({m["run"]: m["predictions_sha256"] for m in metrics})
    stamp = paths.report / ".params_hash"
    if not force and stamp.exists() and stamp.read_text().strip() == digest and (paths.report / "results.md").exists():
        ui.info(f"{paths.report}: up to date ({len(metrics)} runs); nothing to do")
        result.up_to_date.append("report")
        print((paths.report / "results.md").read_text())
        return result
    paths.report.mkdir(parents=True, exist_ok=True)
    md = [f"# Results: {paths.name}", ""]
    body = [f"<h1>Results: {html.escape(paths.name)}</h1>"]
    for split in sorted({m["config"]["split"] for m in metrics}):
        pivot = svm_pivot(metrics, split)
        if pivot:
            md += [f"## SVM accuracy % per elementary kernel and input — split {split}", "", markdown(pivot), ""]
            body += [f"<h2>SVM accuracy % per kernel and input — split {html.escape(split)}</h2>", html_table(pivot)]
        models = model_table(metrics, split)
        if models:
            md += [f"## Models on all their inputs (Table-5 analogue) — split {split}", "", markdown(models), ""]
            body += [f"<h2>Models on all their inputs (Table-5 analogue) — split {html.escape(split)}</h2>", html_table(models)]
    runs = runs_table(metrics)
    if len(runs) > 1:
        md += ["## All runs (mean ± std over folds × seeds)", "", markdown(runs), ""]
        body += ["<h2>All runs (mean ± std over folds × seeds)</h2>", html_table(runs)]
    multi = multilabel_table(metrics)
    if multi:
        md += ["## Multi-label runs (mean ± std over folds × seeds)", "", markdown(multi), ""]
        body += ["<h2>Multi-label runs (mean ± std over folds × seeds)</h2>", html_table(multi)]
    body.append("<h2>Figures</h2>")
    for m in metrics:
        if "confusion" in m:
            png = f"confusion-{m['run']}.png"
            _confusion_png(m, paths.report / png)
            body.append(f"<figure><img src='{html.escape(png)}' alt='confusion matrix'><figcaption>{html.escape(m['run'])}</figcaption></figure>")
        ri_png = f"importance-{m['run']}.png"
        if _importance_png(m, paths.report / ri_png):
            body.append(f"<figure><img src='{html.escape(ri_png)}' alt='relative importance'></figure>")
            md.append(f"![relative importance]({ri_png})")
    (paths.report / "results.md").write_text("\n".join(md) + "\n")
    style = "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;font-size:13px}figure{display:inline-block;margin:8px}"
    (paths.report / "index.html").write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>genre report: {html.escape(paths.name)}</title>"
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
    stamp.write_text(digest)
    ui.info(f"{paths.report}: results.md, index.html and figures of {len(metrics)} runs")
    print("\n".join(md))
    result.written.append("report")
    return result
