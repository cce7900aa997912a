"""DM2KMN with landmarks through the CLI on a large ``table`` corpus: wall time and peak memory per stage.

    python bench/bench_scale.py [--n 50000] [--landmarks 1000] [--device cpu] [--keep DIR]

Data: SYNTHETIC rows of the paper's shapes (the features of bench_dm2kmn.py: 1000 ResNet-like "audio" logits
next to 1024 RoBERTa-like "text" dimensions, 5 classes), written as one NPZ table and ingested with
``genre ingest table`` as one 2024-d input (``audio/table``), so the model sees 4 elementary kernels. Each
stage runs as its own ``genre`` process; its peak RSS is that process's ``ru_maxrss`` (children included).
The DM2KMN runs with ``--landmarks N`` (its DKN is trained on the N landmark rows, every Gram is n x N), a
fixed fine-tuning schedule (5 epochs, lr 1e-3) and a fixed C = 1 (DKN and map-network SVMs), so no CV grid
-- 5-fold CV of C over liblinear on 40,000 rows alone ran past 50 minutes on 2 busy cores -- DKN
``max_iter=60``, fine-tuning in mini-batches of 2048 rows (full-batch autograd over 40,000 x 1000 maps passed
8 GiB), one seed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def run_stage(args: list[str], env: dict) -> tuple[float, float, str]:
    """(seconds, peak RSS GiB, stderr tail) of one `genre` command in a fresh interpreter."""
    code = (
        "import resource, subprocess, sys, json, time\n"
        "t0 = time.perf_counter()\n"
        f"p = subprocess.run({[sys.executable, '-m', 'genrecli', *args]!r}, capture_output=True, text=True)\n"
        "took = time.perf_counter() - t0\n"
        "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20\n"
        "print(json.dumps({'rc': p.returncode, 's': took, 'rss': rss, 'err': p.stderr[-1500:]}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    if doc["rc"] not in (0, 2):
        raise SystemExit(f"genre {' '.join(args)} failed (exit {doc['rc']}):\n{doc['err']}")
    return doc["s"], doc["rss"], doc["err"]


def main() -> None:
    import numpy as np

    from bench_dm2kmn import make_data

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--landmarks", type=int, default=1000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temporary one)")
    opts = ap.parse_args()
    work = opts.keep or Path(tempfile.mkdtemp(prefix="genre-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        X, y = make_data(opts.n, 5)
        table = work / "table.npz"
        np.savez(table, X=X, y=np.array([f"genre{c}" for c in y]))
        mb = table.stat().st_size / 2**20
        del X, y
        env = {**os.environ, "GENRE_DATA_HOME": str(work / "home")}
        rows = []
        stages = [
            ("ingest table", ["ingest", "table", "--root", str(table), "--name", "big", "--split", "random:0.8"]),
            (f"train dm2kmn --landmarks {opts.landmarks}",
             ["train", "--data", "big", "--model", "dm2kmn", "--split", "random:0.8", "--landmarks", str(opts.landmarks), "--seeds", "1",
              "-o", "ft_epochs=5", "-o", "ft_lr=0.001", "-o", "max_iter=60", "-o", "C=1", "-o", "batch_size=2048", "--device", opts.device]),
            ("evaluate", ["evaluate", "--data", "big"]),
        ]
        for name, args in stages:
            seconds, rss, _ = run_stage(args, env)
            rows.append((name, seconds, rss))
        metrics = next((work / "home" / "big" / "runs").glob("*/metrics.json"))
        summary = json.loads(metrics.read_text())["summary"]
        n_train = int(0.8 * opts.n)
        print(f"n = {opts.n} rows ({n_train} training, table {mb:.0f} MiB on disk), 2024-d, 5 classes, "
              f"landmarks N = {opts.landmarks}, device {opts.device}; one run.\n")
        print("| stage | wall s | peak RSS GiB |\n|---|---|---|")
        for name, seconds, rss in rows:
            print(f"| `genre {name}` | {seconds:.1f} | {rss:.2f} |")
        acc = summary["accuracy"]["mean"]
        fwd = summary.get("extra", {}).get("forward_time_dm2kmn_s", {}).get("mean")
        print(f"\nTest accuracy {acc:.3f} (synthetic data; chance 0.2); DM2KMN forward pass on the "
              f"{opts.n - n_train} test rows {fwd if fwd is None else round(fwd, 3)} s.")
    finally:
        if opts.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
