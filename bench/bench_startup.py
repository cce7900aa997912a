"""Start-up time of the ``genre`` command line: wall time of fresh subprocesses and what they import.

    python bench/bench_startup.py [--repeat 5] [--root DIR] [--json out.json]

Each case runs ``--repeat`` times in a fresh interpreter (the ``genre`` entry point, ``genrecli.cli:main``,
with the checkout at ``--root`` first on the path; default: this checkout); the table gives the best and the
median wall time of the subprocess. One more run under ``python -X importtime`` lists the heavy packages it
imported (torch, librosa, music21, h5py, ...) and the import time it reports for them and for everything.
Prints a Markdown table and, with --json, writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Packages a listing or a --help has no use for; each costs 0.1-2 s to import.
HEAVY = ("torch", "librosa", "music21", "h5py", "sklearn", "scipy", "numba", "kymatio", "transformers", "pandas")
CASES = {
    "genre --help": ["--help"],
    "genre list features": ["list", "features"],
    "genre list kernels": ["list", "kernels"],
    "genre list models": ["list", "models"],
    "genre list datasets": ["list", "datasets"],
    "import genrecli.audio": None,
}
_ENTRY = "import sys; sys.argv[0] = 'genre'; from genrecli.cli import main; main()"


def _command(case: str) -> list[str]:
    args = CASES[case]
    if args is None:
        return [sys.executable, "-c", f"{case}"]
    return [sys.executable, "-c", _ENTRY, *args]


def _env(root: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    return env


def _wall(command: list[str], root: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=root, env=_env(root), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}): {proc.stderr.decode()[-500:]}")
    return took


def imported(command: list[str], root: Path) -> dict[str, float]:
    """Top-level packages the command imports, with their cumulative import time in seconds (``-X importtime``)."""
    proc = subprocess.run([command[0], "-X", "importtime", *command[1:]], cwd=root, env=_env(root),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    out: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (part.strip() for part in line.split(":", 1)[1].split("|"))
        if not cumulative.isdigit():
            continue  # the header line
        top = name.split(".")[0]
        # A package's own line comes after its submodules' and holds their time: keep the largest per package.
        out[top] = max(out.get(top, 0.0), int(cumulative) / 1e6)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout whose genrecli is measured")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)  # run_all passes it; start-up is CPU
    args = parser.parse_args(argv)
    root = args.root.resolve()

    rows = []
    for case in CASES:
        command = _command(case)
        times = [_wall(command, root) for _ in range(args.repeat)]
        modules = imported(command, root)
        heavy = {name: modules[name] for name in HEAVY if name in modules}
        rows.append({"case": case, "best_s": min(times), "median_s": statistics.median(times), "times_s": times,
                     "heavy": heavy, "modules": len(modules)})
        print(f"done: {case}", file=sys.stderr)

    print(f"{args.repeat} fresh subprocesses per case (best and median wall time); heavy imports from one more run "
          "under `python -X importtime` (cumulative s, which importtime inflates)\n")
    print("| command | best s | median s | heavy packages imported |")
    print("|---|---:|---:|---|")
    for row in rows:
        heavy = ", ".join(f"{k} {v:.2f}" for k, v in sorted(row["heavy"].items(), key=lambda kv: -kv[1])) or "none"
        print(f"| `{row['case']}` | {row['best_s']:.2f} | {row['median_s']:.2f} | {heavy} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"root": str(root), "repeat": args.repeat, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
