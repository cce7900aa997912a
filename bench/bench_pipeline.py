"""Wall time and peak memory of every stage of the demo pipeline, each stage in its own process.

    python bench/bench_pipeline.py --limit 400 --jobs 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource  # noqa: F401 (used by the measuring child)
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


# Runs the CLI in a fresh interpreter and reports that process's peak RSS (and its workers' peak) at exit.
_MEASURE = (
    "import atexit, resource, sys\n"
    "def _peak():\n"
    "    s = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; c = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "    sys.stderr.write(f'\\nPEAK_RSS_KIB {max(s, c)}\\n')\n"
    "atexit.register(_peak)\n"
    "from genrecli.cli import main; sys.argv = ['genre'] + sys.argv[1:]; main()\n"
)


def stage(args: list[str], env: dict) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _MEASURE, "--quiet", *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode not in (0, 2):
        raise SystemExit(f"genre {' '.join(args)} failed:\n{proc.stderr}")
    peak = max(int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KIB"))
    return {"stage": args[0], "args": " ".join(args), "seconds": round(seconds, 2),
            "peak_rss_mib": round(peak / 1024, 1), "exit": proc.returncode}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--limit", type=int, default=400)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", type=Path)
    opts = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="genre-bench-"))
    env = {**os.environ, "GENRE_DATA_HOME": str(home), "PYTHONWARNINGS": "ignore"}
    name = "folk-bench"
    steps = [
        ["ingest", "folk-dances", "--name", name, "--limit", str(opts.limit), "--seed", "0"],
        ["extract-audio", "--data", name, "--features", "mfcc", "--jobs", str(opts.jobs)],
        ["extract-text", "--data", name, "--encoder", "minilm"],
        ["kernels", "--data", name, "--inputs", "audio/mfcc,text/minilm"],
        ["train", "--data", name, "--model", "svm", "--inputs", "audio/mfcc,text/minilm", "--seeds", "3"],
        ["evaluate", "--data", name],
        ["report", "--data", name],
    ]
    rows = [stage(s, env) for s in steps]
    rows.append({"stage": "total", "args": "", "seconds": round(sum(r["seconds"] for r in rows), 2), "peak_rss_mib": max(r["peak_rss_mib"] for r in rows), "exit": 0})
    rerun = [stage(s, env) for s in steps[1:]]
    rows.append({"stage": "second run (all cached)", "args": "", "seconds": round(sum(r["seconds"] for r in rerun), 2), "peak_rss_mib": max(r["peak_rss_mib"] for r in rerun), "exit": 0})
    shutil.rmtree(home, ignore_errors=True)
    print("| stage | wall s | peak RSS MiB |\n|---|---:|---:|")
    for r in rows:
        print(f"| {r['stage']} | {r['seconds']} | {r['peak_rss_mib']} |")
    if opts.json:
        opts.json.write_text(json.dumps({"limit": opts.limit, "jobs": opts.jobs, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
