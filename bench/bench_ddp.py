"""`genre train` as one process against `torchrun --nproc_per_node 2` on the same training (issue 15).

    python bench/bench_ddp.py [--n 240] [--epochs 4] [--repeats 3] [--model cnn]

Builds a synthetic patch table (n tracks of (64, 256) "spectrograms", 3 classes) in a temporary data home,
ingests it once, then trains the same run (`--force`, one seed) alternately as

* one process with torch's default threads (what a user runs: ``genre train ...``),
* one process with ``OMP_NUM_THREADS=1``,
* ``torchrun --nproc_per_node 2 -m genrecli train ...`` (torchrun sets ``OMP_NUM_THREADS=1`` per process),

and prints a markdown table of wall seconds (the whole command, start-up included) and fit seconds (from the
run's result.npz), best and median over the repeats, with the test accuracy of each side.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def patch_table(path: Path, n: int, seed: int = 0) -> Path:
    """(n, 64, 256) noise with a class-dependent horizontal band (what the cnn learns from)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.normal(scale=0.5, size=(n, 64, 256)).astype(np.float32)
    for i, c in enumerate(y):
        x[i, 8 + 16 * c:12 + 16 * c, :] += 1.0
    np.savez(path, X=x, y=np.array(["low", "mid", "high"])[y])
    return path


def run(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return wall


def result(home: Path) -> tuple[float, float]:
    (res,) = (home / "bench" / "runs").glob("*/fold0-seed0/result.npz")
    with np.load(res) as r:
        return float(r["fit_seconds"]), float(np.mean(r["y_pred"] == r["y_true"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=240)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default="cnn", choices=("cnn", "mlp"))
    opts = ap.parse_args()

    base = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV and k != "OMP_NUM_THREADS"}
    base["PYTHONPATH"] = str(REPO) + os.pathsep + base.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        env = {**base, "GENRE_DATA_HOME": str(home)}
        genre = [sys.executable, "-m", "genrecli"]
        run([*genre, "ingest", "table", "--root", str(patch_table(Path(tmp) / "bench.npz", opts.n)), "--name", "bench",
             "--split", "random:0.7:0.15", "-q"], env)
        train = ["train", "--data", "bench", "--model", opts.model, "--split", "random:0.7:0.15", "--seeds", "1",
                 "-o", f"max_epochs={opts.epochs}", "-o", f"patience={opts.epochs}", "--force", "-q"]
        sides = {
            "1 process, torch default threads": ([*genre, *train], env),
            "1 process, OMP_NUM_THREADS=1": ([*genre, *train], {**env, "OMP_NUM_THREADS": "1"}),
            "torchrun --nproc_per_node 2": ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                             "--nproc_per_node", "2", "-m", "genrecli", *train], env),
        }
        times: dict[str, list[tuple[float, float, float]]] = {side: [] for side in sides}
        load_before = os.getloadavg()[0]
        for _ in range(opts.repeats):  # alternating the sides, so a change in the machine's load hits all
            for side, (cmd, side_env) in sides.items():
                wall = run(cmd, side_env)
                times[side].append((wall, *result(home)))
        load_after = os.getloadavg()[0]

    print(f"{opts.model}, n = {opts.n} tracks of (64, 256) ({int(0.7 * opts.n)} training), {opts.epochs} epochs, "
          f"one seed, {opts.repeats} alternating repeats, {os.cpu_count()} cores, load average "
          f"{load_before:.1f} before / {load_after:.1f} after")
    print()
    print("| side | wall s best | wall s median | fit s best | fit s median | test accuracy |")
    print("|---|---:|---:|---:|---:|---|")
    for side, rows in times.items():
        walls, fits, accs = zip(*rows)
        print(f"| {side} | {min(walls):.1f} | {statistics.median(walls):.1f} | {min(fits):.1f} | "
              f"{statistics.median(fits):.1f} | {', '.join(f'{a:.3f}' for a in accs)} |")
    ref = statistics.median(f for _, f, _ in times["1 process, torch default threads"])
    ddp = statistics.median(f for _, f, _ in times["torchrun --nproc_per_node 2"])
    print()
    print(f"median fit time, 1 process (default threads) / torchrun 2: {ref / ddp:.2f}x")


if __name__ == "__main__":
    main()
