"""Issue 13, section 2: the DM2KMN at its best, every choice made on the training part.

For each corpus and split this trains, through ``genre train`` (one run per system, one seed: the folds of a
grouped K-fold carry the variation), the floor, every single-kernel SVM, the multi-modal DKN and a set of
DM2KMN variants: the spec's alternatives to the paper's fine-tuning (beta > 0, unfrozen projections, Adam,
cross-entropy, a long constant-rate schedule, a Gaussian-initialised classifier, larger rates, mini-batches),
the initial (not fine-tuned)
map network, and the same on a stronger input set (several inputs per modality). It then evaluates them and
writes one table per split:

* every system's pooled test accuracy and macro F1 with 95 % bootstrap intervals over the test items;
* for the DM2KMN variants, the CV estimate on the training part (``finetune_cv_best``: balanced accuracy of
  the CV that chose the learning rate and the epochs) and the epochs chosen;
* paired bootstrap tests of each DM2KMN against the DKN and against the best single-kernel SVM (on the
  common test items);
* ``selected``: the DM2KMN variant with the best CV estimate on the training part. It is the one the goal
  is judged on; the test figures of the others are shown, never used to choose;
* the fine-tuning evidence of the paper's variant: the CV fold-mean curves at epoch 0 and at the last
  checkpoint (training accuracy, share of active hinge terms, share of validation predictions changed).

Usage (after ``genre ingest`` and the feature extraction of the inputs used)::

    python experiments/dm2kmn_study.py --data piano --split group:composer:0.7 --split group:work:0.7
    python experiments/dm2kmn_study.py --data folk-demo --split groupkfold:title:5 --no-strong

Runs already trained are kept (``genre train`` is cache-aware), so a rerun only adds what is missing. With
``--jobs 2`` two trainings run side by side, each single-threaded (on 2 cores this beats one two-threaded
run: the thread pools of NumPy, numba and torch spin against each other on small calls).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
GENRE = [sys.executable, "-m", "genrecli"]

# The map network every variant shares: the DKN of the issue's tables (hidden 16) and pivoted map columns at
# RE <= 3 % (issue 13 section 3: the paper's approximation error at a fraction of the columns, which makes the
# grid affordable on a CPU). ``paper-all-columns`` is the paper's construction (every landmark a column).
BASE = {"hidden": 16, "map_columns": "re", "re_target": 3.0}
VARIANTS = {
    "paper": {},
    "paper-all-columns": {"map_columns": "all"},
    "beta": {"beta": 1.0},
    "projections": {"train_projections": True},
    "adam": {"optimizer": "adam"},
    "xent": {"loss": "xent"},
    "long": {"ft_max_epochs": 150, "ft_eval_every": 25},
    "gaussian-init": {"classifier_init": "gaussian"},
    # full-batch SGD takes one step per epoch, and at the default rates (<= 1e-2) the maps barely move (the
    # curves: loss -4 %, no validation prediction changed in 150 epochs); larger rates, and mini-batches
    "large-lr": {"ft_lr_grid": [0.1, 1.0, 10.0]},
    "minibatch": {"batch_size": 64, "ft_lr_grid": [0.01, 0.1, 1.0], "ft_max_epochs": 10, "ft_eval_every": 2},
}
INPUTS = {"base": ["audio/mfcc", "text/minilm"],
          "strong": ["audio/mfcc", "audio/timbre", "audio/rhythm", "text/minilm"]}
# the variants also trained on the strong input set (the others only on the base set, for time)
STRONG_VARIANTS = ("paper", "xent")


def jobs_for(data: str, split: str, *, strong: bool, variants: list[str]) -> list[list[str]]:
    """The ``genre train`` argument lists of one corpus and split."""
    def train(model, inputs, options=None, seeds=1):
        cmd = ["train", "--data", data, "--model", model, "--inputs", ",".join(inputs), "--split", split,
               "--seeds", str(seeds)]
        for k, v in (options or {}).items():
            cmd += ["-o", f"{k}={json.dumps(v, separators=(',', ':')) if not isinstance(v, str) else v}"]
        return cmd

    sets = ["base"] + (["strong"] if strong else [])
    out = []
    for s in sets:
        inputs = INPUTS[s]
        if s == "base":
            out.append(train("majority", inputs))
        out.append(train("svm", [i for i in inputs if s == "base" or i not in INPUTS["base"]]))  # one SVM per pair
        out.append(train("dkn", inputs, {"hidden": BASE["hidden"]}))
        out.append(train("dm2kmn-init", inputs, BASE))
        for name in variants:
            if s == "strong" and name not in STRONG_VARIANTS:
                continue
            out.append(train("dm2kmn", inputs, {**BASE, **VARIANTS[name]}))
    return out


def run_all(commands: list[list[str]], *, data_home: str, jobs: int, log) -> None:
    env = dict(os.environ, GENRE_DATA_HOME=data_home)
    if jobs > 1:  # one thread per job (see the module docstring)
        env.update({k: "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")})

    def one(cmd):
        t0 = time.perf_counter()
        proc = subprocess.run(GENRE + cmd, env=env, capture_output=True, text=True)
        line = f"[{time.perf_counter() - t0:7.1f} s rc {proc.returncode}] genre {shlex.join(cmd)}"
        log(line)
        if proc.returncode not in (0, 2):
            log(proc.stdout[-2000:] + proc.stderr[-4000:])
        return proc.returncode

    # the longest first, so that the workers finish together
    def cost(cmd):
        text = " ".join(cmd)
        model = cmd[cmd.index("--model") + 1]
        return (("ft_max_epochs=150" in text) * 4 + ("batch_size" in text) * 3 + ("map_columns=all" in text) * 3 + (model == "dm2kmn") * 2
                + (model in ("dkn", "dm2kmn-init")))

    order = sorted(commands, key=cost, reverse=True)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        codes = list(pool.map(one, order))
    if any(c not in (0, 2) for c in codes):
        raise SystemExit("a training failed (see the log above)")


def _variant_of(config: dict) -> str:
    """The study's name of a DM2KMN run from its options."""
    opts = {k: v for k, v in (config.get("options") or {}).items() if k not in BASE or BASE[k] != v}
    for name, extra in VARIANTS.items():
        if opts == {k: v for k, v in extra.items() if k not in BASE or BASE[k] != v}:
            return name
    return json.dumps(opts, sort_keys=True)


def study_tables(data: str, data_home: str, splits: list[str], *, resamples: int) -> dict:
    """Per split: the rows of the study table and the selected variant (see the module docstring)."""
    from genrecli.layout import DatasetPaths
    from genrecli.pipeline import protocol
    from genrecli.pipeline.report import _manifest, load_metrics

    paths = DatasetPaths.of(data, data_home)
    metrics, _, pending = load_metrics(paths)
    if pending:
        print("\n".join(pending.values()), file=sys.stderr)
    manifest = _manifest(paths)
    opts = protocol.StatsOptions(resamples=resamples)
    from genrecli.splits import split_name

    out = {}
    for split in splits:
        table = protocol.protocol_table(metrics, split_name(split), manifest, opts)
        if not table:
            continue
        systems = [s for s in table["systems"] if not s["floor"]]
        floor = [s for s in table["systems"] if s["floor"]]

        def family(s):
            return s["m"]["config"]["model"]

        def inset(s):
            ins = protocol.inputs_of(s["m"]["config"])
            return next((k for k, v in INPUTS.items() if sorted(v) == ins), ",".join(ins))

        svms = [s for s in systems if family(s) == "svm"]
        best_svm = max(svms, key=lambda s: s["ci"]["accuracy"]["estimate"]) if svms else None
        dkns = {inset(s): s for s in systems if family(s) == "dkn"}
        rows = []
        for s in floor + systems:
            c, summary = s["m"]["config"], s["m"].get("summary", {})  # a computed floor has no summary
            e = summary.get("extra", {})
            row = {"system": family(s), "inputs": inset(s) if family(s) != "svm" else ",".join(protocol.inputs_of(c)),
                   "kernels": ",".join(protocol.kernels_of(c)),
                   "variant": _variant_of(c) if family(s) == "dm2kmn" else "",
                   "acc": s["ci"]["accuracy"], "f1": s["ci"]["macro_f1"], "n_items": len(s["pooled"]["index"]),
                   "cv": (e.get("finetune_cv_best") or {}).get("mean"),
                   "epochs": (e.get("finetune_epochs") or {}).get("mean"),
                   "map_columns": (e.get("map_columns") or {}).get("mean"),
                   "fit_s": (summary.get("fit_seconds") or {}).get("mean")}
            if family(s).startswith("dm2kmn"):
                ref = dkns.get(inset(s))
                if ref is not None:
                    row["vs_dkn"] = protocol._compare(s, ref, opts, manifest, split)
                if best_svm is not None:
                    row["vs_svm"] = protocol._compare(s, best_svm, opts, manifest, split)
                curves = e.get("finetune_curves") or {}
                row["curves"] = _curve_summary(curves)
                row["lr"] = (e.get("finetune_lr") or {}).get("mean")
            rows.append(row)
        selected = select_variant(rows)
        out[split] = {"rows": rows, "selected": selected, "best_svm": _row_name(best_svm) if best_svm else None}
    return out


def select_variant(rows: list[dict]) -> dict | None:
    """The fine-tuned DM2KMN row with the best CV estimate on the training part (``cv``); ties (within 1e-9) go
    to the earlier, simpler variant of VARIANTS, then to the base inputs. The test figures play no part."""
    order = {name: i for i, name in enumerate(VARIANTS)}
    dm = [r for r in rows if r["system"] == "dm2kmn" and r["cv"] is not None]
    if not dm:
        return None
    return max(dm, key=lambda r: (round(r["cv"], 9), -order.get(r["variant"], len(order)), r["inputs"] == "base"))


def _row_name(s) -> str:
    from genrecli.pipeline import protocol

    c = s["m"]["config"]
    return f"svm {','.join(protocol.inputs_of(c))} / {','.join(protocol.kernels_of(c))}"


def _curve_summary(curves: dict) -> dict:
    """Per rate: epoch-0 and last-checkpoint fold means of train acc, active hinge share, val acc, val changed."""
    out = {}
    for lr, c in curves.items():
        point = lambda key, j: c.get(key, {}).get("mean", [np.nan])[j]  # noqa: E731
        out[lr] = {key: [point(key, 0), point(key, -1)] for key in ("train_acc", "active", "val_acc", "val_changed", "re", "loss")}
        out[lr]["last_epoch"] = c.get("epoch", {}).get("mean", [0])[-1]
    return out


def _num(x, digits):
    return "" if x is None else f"{x:.{digits}f}"


def _pct(x, digits=1):
    from genrecli.pipeline.protocol import _pct as pct  # the report's own formatting

    return pct(x, digits)


def _ci(ci):
    return f"{_pct(ci['estimate'])} [{_pct(ci['low'])}, {_pct(ci['high'])}]"


def _vs(v):
    if not v:
        return "—"
    p = v["p"]
    return f"{100 * v['diff']:+.1f} (p {'< 0.001' if p < 0.001 else f'{p:.3f}'})"


def markdown(data: str, tables: dict) -> str:
    md = [f"## {data}", ""]
    for split, t in tables.items():
        md += [f"### split {split}", "",
               "| system | inputs | kernels | variant | CV bal. acc % (train part) | epochs | columns | test accuracy % [95 % CI] | "
               "macro F1 % [95 % CI] | Δ vs DKN pp (p) | Δ vs best SVM pp (p) | fit s |",
               "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in t["rows"]:
            sel = " **(selected)**" if r is t["selected"] else ""
            md.append(f"| {r['system']}{sel} | {r['inputs']} | {r['kernels'] if r['system'] == 'svm' else ''} | "
                      f"{r['variant']} | {_pct(r['cv'])} | {_num(r['epochs'], 1)} | {_num(r['map_columns'], 0)} | "
                      f"{_ci(r['acc'])} | {_ci(r['f1'])} | {_vs(r.get('vs_dkn'))} | {_vs(r.get('vs_svm'))} | "
                      f"{_num(r['fit_s'], 1)} |")
        md += ["", f"Best single-kernel SVM: {t['best_svm']}. Selected DM2KMN: the variant with the best CV estimate "
               "on the training part (the test part is not used to choose).", ""]
        md.append("")
        paper = [r for r in t["rows"] if r["system"] == "dm2kmn"
                 and (r["variant"] in ("paper", "paper-all-columns") or r is t["selected"])]
        if paper:
            md += ["Fine-tuning evidence (CV fold means on the training part, epoch 0 → last checkpoint), per rate:", "",
                   "| variant | inputs | lr | last epoch | train acc % | active hinge % | val acc % | val changed % | RE % |",
                   "|---|---|---:|---:|---|---|---|---|---|"]
            for r in paper:
                for lr, c in sorted(r["curves"].items(), key=lambda kv: float(kv[0])):
                    fmt = lambda key, scale=100: " → ".join(  # noqa: E731
                        "—" if not np.isfinite(v) else f"{scale * v:.1f}" for v in c[key])
                    md.append(f"| {r['variant']} | {r['inputs']} | {lr} | {c['last_epoch']:g} | {fmt('train_acc')} | "
                              f"{fmt('active')} | {fmt('val_acc')} | {fmt('val_changed')} | {fmt('re', 1)} |")
            md.append("")
    return "\n".join(md)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", action="append", required=True)
    ap.add_argument("--data-home", default=os.environ.get("GENRE_DATA_HOME", "data"))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--no-strong", action="store_true", help="only the base inputs (MFCC + MiniLM)")
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--out", default=str(HERE / "dm2kmn-study-results"))
    ap.add_argument("--tables-only", action="store_true", help="no training: evaluate and tabulate what is there")
    args = ap.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    log_path = Path(args.out + f"-{args.data}.log")

    def log(line):
        print(line, flush=True)
        with open(log_path, "a") as fh:
            fh.write(line + "\n")

    t0 = time.perf_counter()
    if not args.tables_only:
        commands = [c for s in args.split for c in jobs_for(args.data, s, strong=not args.no_strong, variants=variants)]
        run_all(commands, data_home=args.data_home, jobs=args.jobs, log=log)
    subprocess.run(GENRE + ["evaluate", "--data", args.data, "-q"], env=dict(os.environ, GENRE_DATA_HOME=args.data_home),
                   check=False)
    tables = study_tables(args.data, args.data_home, args.split, resamples=args.resamples)
    md = markdown(args.data, tables)
    Path(args.out + f"-{args.data}.md").write_text(md + "\n")
    Path(args.out + f"-{args.data}.json").write_text(json.dumps(tables, indent=1, default=_json_default))
    log(md)
    log(f"study of {args.data}: {time.perf_counter() - t0:.0f} s")
    return 0


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


if __name__ == "__main__":
    raise SystemExit(main())
