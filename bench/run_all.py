"""Run every benchmark in one go and write its tables into BENCHMARKS.md (the figures of this machine, measured now).

    python bench/run_all.py --out BENCHMARKS.md [--device cuda] [--only pipeline,kernels | --only targets]

The run's tables replace the part of ``--out`` between the two ``make bench`` markers (the first run puts them
under the title), so the notes and earlier runs kept in the rest of the file survive a rerun. ``--only targets``
runs the benchmarks that measure issue 14's speed targets (Grams and maps, DM2KMN GFLOP/s, MFCC / mel and
synthesis, text encoding, start-up).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
# Every benchmark runs as a `genre` process does: genrecli sets OPENBLAS_THREAD_TIMEOUT (unless set) before NumPy
# loads OpenBLAS, and the benchmarks inherit it, ours and the reference side alike.
import genrecli  # noqa: E402, F401
BENCHES = {
    "pipeline": ("Demo pipeline, per stage (folk-dances, 400 tunes, --jobs 2)", ["bench_pipeline.py", "--limit", "400", "--jobs", "2"]),
    "kernels": ("Kernel stage at n=5000, d=1024 against scikit-learn", ["bench_kernels.py", "--n", "5000", "--d", "1024"]),
    "dm2kmn": ("DKN vs DM2KMN", ["bench_dm2kmn.py"]),
    "gflops": ("DM2KMN forward GFLOP/s against the machine's float32 GEMM rate", ["bench_dm2kmn.py", "--gflops"]),
    "columns": ("DM2KMN on pivoted map columns against its DKN (n = 600)", ["bench_dm2kmn.py", "--columns"]),
    "scale": ("DM2KMN --landmarks 1000 through the CLI on a 50,000-row table", ["bench_scale.py", "--n", "50000", "--landmarks", "1000"]),
    "scale-library": ("DM2KMN with 1,000 landmarks on 10^5 and 10^6 rows, streamed from HDF5 (issue 15)",
                      ["bench_scale.py", "--library", "--ns", "100000", "1000000", "--landmarks", "1000", "--ft-epochs", "0", "0", "--forward-rows", "4000"]),
    "peer-cost": ("What the peer systems' acceptance runs cost on this CPU", ["bench_peer_cost.py"]),
    "audio": ("Audio features: throughput", ["bench_audio.py"]),
    "text": ("Text encoders: throughput", ["bench_text.py"]),
    "startup": ("Start-up: `genre --help` and the listings", ["bench_startup.py"]),
    "ddp": ("Training with torchrun: one process vs `torchrun --nproc_per_node 2`", ["bench_ddp.py", "--n", "120", "--epochs", "3", "--repeats", "2"]),
    "executors": ("Extraction executors: Ray vs --jobs 2 vs one process", ["bench_executors.py", "--limit", "200", "--max-seconds", "30"]),
}
PRESETS = {"targets": "kernels,gflops,audio,text,startup"}
BEGIN = "<!-- make bench: the last run's tables begin (bench/run_all.py rewrites them) -->"
END = "<!-- make bench: the last run's tables end -->"
DEVICE_AWARE = {"kernels", "dm2kmn", "gflops", "columns", "scale", "scale-library", "audio", "text", "peer-cost"}


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        model = cpu
    try:
        flags = set(next(line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")))
    except (OSError, StopIteration):
        flags = set()
    # the instruction sets the fast paths depend on (bf16 and int8 text runtimes, float32 GEMM rate)
    isa = [name for flag, name in (("amx_tile", "AMX"), ("avx512_bf16", "AVX512-BF16"), ("avx512_vnni", "AVX512-VNNI"),
                                   ("avx512f", "AVX-512"), ("avx2", "AVX2")) if flag in flags]
    model = f"{model} ({', '.join(isa) or 'no AVX2'})"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"{model}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), GPU: {gpu}, "
            f"Python {platform.python_version()}, OPENBLAS_THREAD_TIMEOUT={os.environ.get('OPENBLAS_THREAD_TIMEOUT')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", default=",".join(BENCHES))
    opts = ap.parse_args()
    keys = PRESETS.get(opts.only, opts.only).split(",")
    unknown = [key for key in keys if key not in BENCHES]
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHES)} or a preset ({', '.join(PRESETS)})")
    started = dt.datetime.now(dt.timezone.utc)
    sections = [
        f"## The last `make bench` run ({', '.join(keys)})",
        "",
        f"Measured by `python bench/run_all.py --only {opts.only}` from {started:%Y-%m-%d %H:%M} UTC: {machine()}; "
        f"load average before the run {_load()}.",
        "Every table below comes from this one run; rerun `make bench` to refresh them.",
        "",
    ]
    for key in keys:
        title, cmd = BENCHES[key]
        script = HERE / cmd[0]
        if not script.exists():
            sections += [f"## {title}", "", f"(`{cmd[0]}` is not in this checkout)", ""]
            continue
        args = [sys.executable, str(script), *cmd[1:]]
        if key in DEVICE_AWARE:
            args += ["--device", opts.device]
        t0 = time.perf_counter()
        proc = subprocess.run(args, capture_output=True, text=True)
        took = time.perf_counter() - t0
        print(f"{key}: exit {proc.returncode} in {took:.0f} s", file=sys.stderr)
        body = proc.stdout.strip() if proc.returncode == 0 else f"FAILED (exit {proc.returncode}):\n\n```\n{proc.stderr[-3000:]}\n```"
        sections += [f"### {title}", "", f"`{' '.join(['python', 'bench/' + cmd[0], *cmd[1:]])}` ({took:.0f} s)", "", body, ""]
    sections += [f"Finished {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; load average after the run {_load()}."]
    old = opts.out.read_text() if opts.out.exists() else ""
    opts.out.write_text(splice(old, "\n".join(sections)))
    print(f"wrote {opts.out}", file=sys.stderr)


def _load() -> str:
    try:
        return ", ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def splice(document: str, tables: str) -> str:
    """``document`` with the part between the markers replaced by ``tables`` (kept markers); without markers,
    the tables go under its first ``# `` title (a new document gets one)."""
    block = f"{BEGIN}\n\n{tables.strip()}\n\n{END}"
    if BEGIN in document and END in document.split(BEGIN, 1)[1]:
        head, rest = document.split(BEGIN, 1)
        return head + block + rest.split(END, 1)[1]
    lines = document.splitlines(keepends=True)
    if lines and lines[0].startswith("# "):
        return lines[0] + "\n" + block + "\n\n" + "".join(lines[1:]).lstrip("\n")
    return "# Benchmarks\n\n" + block + "\n" + (("\n" + document) if document else "")


if __name__ == "__main__":
    main()
