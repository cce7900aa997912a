"""Wall time and peak memory of genrecli.kernels against scikit-learn and NumPy references.

    python bench/bench_kernels.py [--n 5000] [--d 1024] [--device cpu] [--repeat 5] [--cases 'a;b'] [--json out.json]
                                  [--all-landmarks]

Time: for each case one fresh interpreter makes the imports and the data, warms both sides up on 64 rows
(numba compilation, BLAS and torch thread pools), then runs ours and the reference alternately, ``--repeat``
times each (fewer for the slow NumPy histogram reference), on the same data; the table gives the best and the
median of each side and their ratio (reference / ours: above 1, ours is faster), so a ratio is measured within
one process whatever else the machine is doing. The largest difference between the two outputs, relative to
the largest reference entry, is given for the exact Grams. Memory: the peak RSS of a fresh interpreter that
makes one computation of one side, from os.wait4, minus the peak RSS of an interpreter that made the same
imports, started both BLAS libraries (NumPy's OpenBLAS, and SciPy's, whose ssyrk ours calls; a one-time ~2 MiB
per process) and made the same data, and stopped; in brackets, the same interpreter's second computation's own
peak (the peak RSS reset, Linux ``clear_refs``, once the first result is freed, minus the RSS at the reset): what
the computation holds at its peak once one-time costs of the process (lazy imports, the BLAS buffers a first call
touches) are paid, on either side. The data are n x d float32 non-negative features of a low-rank structure
plus noise, rectified like pooled CNN activations. Prints a Markdown table and, with --json, writes the rows as
JSON.
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

# Before NumPy, as in a `genre` process: genrecli sets OpenBLAS's idle-thread timeout, read when NumPy and SciPy
# load their OpenBLAS (genrecli/__init__.py); the workers inherit it, and each runs the reference side in the
# same process as ours, under the same setting.
import genrecli  # noqa: F401, E402

# Cases: name -> (ours, reference label); the functions are looked up in _run below.
CASES = {
    "linear gram": "sklearn pairwise_kernels linear",
    "poly2 gram": "sklearn pairwise_kernels poly (degree 2)",
    "rbf gram": "sklearn pairwise_kernels rbf",
    "hist gram": "NumPy blocked minimum-sum",
    "rbf map fit+transform, 1000 landmarks": "sklearn Nystroem, 1000 components",
    "rbf map fit+transform, all landmarks": "sklearn Nystroem, n components",
    "hist map_gram (Q=10)": "NumPy unary map + matmul",
}
_BLOCK_BYTES = 64 << 20  # working set of the blocked NumPy references
# Alternating runs per side at most, for cases whose reference takes tens of seconds.
_MAX_REPEAT = {"hist gram": 2, "rbf map fit+transform, all landmarks": 1}
# Cases whose two sides compute the same matrix (the maps are approximations of different constructions).
_EXACT = {"linear gram", "poly2 gram", "rbf gram", "hist gram"}


def _data(n: int, d: int):
    import numpy as np

    rng = np.random.default_rng(0)
    latent = rng.standard_normal((n, 32), dtype=np.float32)
    mixing = rng.standard_normal((32, d), dtype=np.float32) / np.sqrt(32, dtype=np.float32)
    return np.maximum(latent @ mixing + rng.standard_normal((n, d), dtype=np.float32), 0)


def _sigma(X) -> float:
    """The rbf bandwidth both sides use: the rms distance of the rows to their mean, float64, in row blocks.

    Computed once per data set, outside the timed and the memory-measured computation (a whole-array float64
    version peaked at 80 MiB at n = 5000, d = 1024: more than either side's map, and charged to both)."""
    import numpy as np

    mean = X.mean(0, dtype=np.float64)
    total = 0.0
    for start in range(0, len(X), 256):
        block = X[start : start + 256].astype(np.float64) - mean
        total += float(np.einsum("ij,ij->", block, block))
    return float(np.sqrt(total / len(X)))


def _numpy_hist(X):
    import numpy as np

    n, d = X.shape
    K = np.empty((n, n), dtype=np.float32)
    rows = max(1, _BLOCK_BYTES // (4 * n * d))
    for start in range(0, n, rows):
        K[start : start + rows] = np.minimum(X[start : start + rows, None, :], X[None, :, :]).sum(-1)
    return K


def _numpy_hist_map_gram(X, levels=10):
    import numpy as np

    low, span = X.min(0), X.max(0) - X.min(0)
    scaled = np.clip((X - low) / np.where(span > 0, span, 1), 0, 1)
    q = np.floor(scaled * levels + 0.5)
    Phi = (q[:, :, None] >= np.arange(1, levels + 1, dtype=np.float32)).reshape(len(X), -1).astype(np.float32)
    return Phi @ Phi.T / np.float32(levels * scaled.sum(1).mean())


def _run(case: str, side: str, X, device: str, sigma: float):
    """One computation of ``case``: ``side`` is 'ours' or 'reference'; ``sigma`` is :func:`_sigma` of X."""
    from sklearn.kernel_approximation import Nystroem
    from sklearn.metrics.pairwise import pairwise_kernels

    from genrecli.kernels import ExplicitMap, hist_kernel, linear_kernel, poly2_kernel, rbf_kernel

    gamma = 1.0 / (2 * sigma**2)
    if side == "ours":
        return {
            "linear gram": lambda: linear_kernel(X, device=device),
            "poly2 gram": lambda: poly2_kernel(X, offset=1.0, device=device),
            "rbf gram": lambda: rbf_kernel(X, sigma=sigma, device=device),
            "hist gram": lambda: hist_kernel(X, device=device),
            "rbf map fit+transform, 1000 landmarks": lambda: ExplicitMap(
                "rbf", landmarks=1000, random_state=0, device=device
            ).fit_transform(X),
            "rbf map fit+transform, all landmarks": lambda: ExplicitMap("rbf", device=device).fit_transform(X),
            "hist map_gram (Q=10)": lambda: ExplicitMap("hist", device=device).fit(X).map_gram(X),
        }[case]()
    return {
        "linear gram": lambda: pairwise_kernels(X, metric="linear"),
        "poly2 gram": lambda: pairwise_kernels(X, metric="poly", degree=2, gamma=1.0, coef0=1.0),
        "rbf gram": lambda: pairwise_kernels(X, metric="rbf", gamma=gamma),
        "hist gram": lambda: _numpy_hist(X),
        "rbf map fit+transform, 1000 landmarks": lambda: Nystroem(
            kernel="rbf", gamma=gamma, n_components=min(1000, len(X)), random_state=0
        ).fit_transform(X),
        "rbf map fit+transform, all landmarks": lambda: Nystroem(
            kernel="rbf", gamma=gamma, n_components=len(X), random_state=0
        ).fit_transform(X),
        "hist map_gram (Q=10)": lambda: _numpy_hist_map_gram(X),
    }[case]()


def _imports() -> None:
    """The libraries either side uses (the baseline makes the same imports, so their fixed cost is subtracted).
    genrecli is imported at the top of this script, as in a `genre` process."""
    import numba  # noqa: F401  (genrecli's compiled CPU passes; its LLVM runtime is ~100 MiB of RSS)
    import numpy as np  # noqa: F401
    import scipy.linalg.blas  # noqa: F401
    import sklearn.kernel_approximation  # noqa: F401
    import sklearn.metrics.pairwise  # noqa: F401
    import torch  # noqa: F401

    import genrecli.kernels.elementary  # noqa: F401
    import genrecli.kernels.maps  # noqa: F401


def _start_blas(d: int) -> None:
    """Start both OpenBLAS libraries' thread pools and buffers (NumPy's, and SciPy's that ours calls for ssyrk)
    with one mid-size product each, in every interpreter, the baseline too: their one-time ~2 MiB is a cost of
    the process, like the imports, not of the computation measured."""
    import scipy.linalg.blas

    Z = _data(1500, d)
    Z @ Z.T
    scipy.linalg.blas.ssyrk(1.0, Z.T, trans=1)


def _time_worker(case: str, n: int, d: int, device: str, repeat: int) -> None:
    """Ours and the reference alternately on the same data, in this one process; prints their times as JSON."""
    import numpy as np

    _imports()
    X = _data(n, d)
    sigma = _sigma(X)
    small = _data(64, d)
    for side in ("ours", "reference"):
        _run(case, side, small, device, _sigma(small))  # warm-up: numba compilation, BLAS and torch thread pools
    times = {"ours": [], "reference": []}
    last = {}
    for round_ in range(repeat):
        for side in ("ours", "reference") if round_ % 2 == 0 else ("reference", "ours"):
            last.pop(side, None)  # free the previous output first: one result per side at a time
            start = time.perf_counter()
            last[side] = _run(case, side, X, device, sigma)
            times[side].append(time.perf_counter() - start)
    result = {"times": times, "shape": {side: list(out.shape) for side, out in last.items()}}
    if case in _EXACT:
        ours, reference = (np.asarray(last[side], dtype=np.float64) for side in ("ours", "reference"))
        result["max_rel_diff"] = float(np.abs(ours - reference).max() / max(np.abs(reference).max(), 1e-30))
    print(json.dumps(result))


def _memory_worker(case: str, side: str, n: int, d: int, device: str) -> None:
    """One computation of one side (the parent reads this interpreter's peak RSS)."""
    _imports()
    _start_blas(d)
    X = _data(n, d)
    sigma = _sigma(X)  # part of the data, in the baseline too
    result = {}
    if case != "baseline":
        small = _data(64, d)
        _run(case, side, small, device, _sigma(small))
        out = _run(case, side, X, device, sigma)
        del out
        # A second call's own peak: the peak RSS is reset (Linux clear_refs 5) once the first call's result is
        # freed, so this counts what the computation holds at its peak above what is resident before it, not
        # one-time costs of the process (lazy imports, BLAS buffers the first call touched), on either side.
        if _reset_peak_rss():
            start = _status_mib("VmRSS")
            out = _run(case, side, X, device, sigma)
            result["second_call_mib"] = _status_mib("VmHWM") - start
    print(json.dumps(result))


def _status_mib(key: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def _spawn(args: list[str]) -> tuple[dict, float]:
    """Run this script with ``args`` in a fresh interpreter: its JSON result and its peak RSS in MiB."""
    command = [sys.executable, __file__, *args]
    env = dict(os.environ)
    if args[:2] == ["--worker", "memory"]:
        # A fixed mmap threshold: glibc's dynamic one rises after a large free, and later large arrays then come
        # from the heap, where freed pages stay resident; fixed, every array over 64 KiB is mapped and unmapped on
        # its own, so the RSS follows what is allocated (both sides and the baseline run so). Only for memory:
        # timed with it, every block temporary is a fresh mmap and its page faults (the rbf map's float64
        # variance blocks took 0.062 s instead of 0.007), which is not how the code runs for a user.
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    stdout = process.stdout.read()
    # wait4 gives this child's own rusage; RUSAGE_CHILDREN would be the maximum over all children so far.
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed with exit code {process.returncode}")
    return json.loads(stdout.strip().splitlines()[-1]), usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def _load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--d", type=int, default=1024)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=5, help="alternating runs of each side per case")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--all-landmarks", action="store_true", help="also the rbf map on all n landmarks (an n x n eigensolve)"
    )
    parser.add_argument("--cases", help="subset of the cases, separated by ';' (or ',' for names without commas)")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        kind, case, *side = args.worker
        if kind == "time":
            _time_worker(case, args.n, args.d, args.device, args.repeat)
        else:
            _memory_worker(case, side[0], args.n, args.d, args.device)
        return

    common = ["--n", str(args.n), "--d", str(args.d), "--device", args.device]
    load_before = _load()
    _, baseline = _spawn(["--worker", "memory", "baseline", "ours", *common])
    # Case names hold commas ("rbf map fit+transform, 1000 landmarks"): ';' separates cases, and a ','-split
    # list is taken only when the whole string is not itself a case name.
    if not args.cases:
        wanted = set(CASES)
    elif args.cases in CASES:
        wanted = {args.cases}
    else:
        wanted = {name.strip() for name in args.cases.split(";" if ";" in args.cases else ",")}
    unknown = wanted - set(CASES)
    if unknown:
        raise SystemExit(f"unknown case(s) {', '.join(sorted(unknown))}: choose among {', '.join(CASES)}")
    rows = []
    for case, reference in CASES.items():
        if case not in wanted or (case.endswith("all landmarks") and not args.all_landmarks):
            continue
        repeat = min(args.repeat, _MAX_REPEAT.get(case, args.repeat))
        timed, _ = _spawn(["--worker", "time", case, *common, "--repeat", str(repeat)])
        ours_second, ours_mib = _spawn(["--worker", "memory", case, "ours", *common])
        reference_second, reference_mib = _spawn(["--worker", "memory", case, "reference", *common])
        ours_t, reference_t = timed["times"]["ours"], timed["times"]["reference"]
        rows.append(
            {
                "case": case,
                "reference": reference,
                "repeat": repeat,
                "ours_s": min(ours_t),
                "ours_median_s": statistics.median(ours_t),
                "reference_s": min(reference_t),
                "reference_median_s": statistics.median(reference_t),
                "speedup": min(reference_t) / min(ours_t),
                "speedup_median": statistics.median(reference_t) / statistics.median(ours_t),
                "ours_times_s": ours_t,
                "reference_times_s": reference_t,
                "ours_mib": ours_mib - baseline,
                "reference_mib": reference_mib - baseline,
                "ours_second_call_mib": ours_second.get("second_call_mib"),
                "reference_second_call_mib": reference_second.get("second_call_mib"),
                "max_rel_diff": timed.get("max_rel_diff"),
                "ours_shape": timed["shape"]["ours"],
                "reference_shape": timed["shape"]["reference"],
            }
        )
        print(f"done: {case}", file=sys.stderr)

    import numba
    import torch

    print(
        f"n={args.n}, d={args.d}, device={args.device}, float32; torch {torch.get_num_threads()} threads, numba "
        f"{numba.config.NUMBA_NUM_THREADS} threads; baseline peak RSS {baseline:.0f} MiB (subtracted: the imports of "
        "NumPy, SciPy, scikit-learn, torch, numba and genrecli.kernels, both BLAS thread pools started, and the data); "
        f"load average {load_before} before, {_load()} after\n"
    )
    print("s: best of the alternating runs (median in brackets); speed-up: reference time / ours time "
          "(above 1: ours is faster)\n")
    print("MiB: peak RSS of a fresh interpreter's first call above the baseline's; in brackets, a second call's "
          "own peak above the RSS before it (the peak reset once the first result is freed: no one-time costs)\n")
    print("| case | runs | ours s | reference s | speed-up | ours MiB | reference MiB | max rel. diff | reference |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")

    def mib(row, side):
        second = row[f"{side}_second_call_mib"]
        return f"{row[f'{side}_mib']:.0f}" + ("" if second is None else f" ({second:.1f})")

    for row in rows:
        diff = "—" if row["max_rel_diff"] is None else f"{row['max_rel_diff']:.1e}"
        print(
            f"| {row['case']} | {row['repeat']} | {row['ours_s']:.2f} ({row['ours_median_s']:.2f}) | "
            f"{row['reference_s']:.2f} ({row['reference_median_s']:.2f}) | "
            f"{row['speedup']:.2f}× ({row['speedup_median']:.2f}×) | {mib(row, 'ours')} | "
            f"{mib(row, 'reference')} | {diff} | {row['reference']} |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {"n": args.n, "d": args.d, "device": args.device, "baseline_mib": baseline, "rows": rows}, indent=2
            )
        )


if __name__ == "__main__":
    main()
