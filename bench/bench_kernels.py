"""Wall time and peak memory of genrecli.kernels against scikit-learn and NumPy references.

    python bench/bench_kernels.py [--n 5000] [--d 1024] [--device cpu] [--json out.json] [--all-landmarks]

Every measurement runs in a fresh interpreter. Time covers the computation only (after imports, data and a small
warm-up call, which compiles numba and starts the BLAS threads). Memory is the peak RSS of that interpreter,
from os.wait4, minus the peak RSS of an interpreter that made the same imports and the same data and stopped.
The data are n x d float32 non-negative features of a low-rank structure plus noise, rectified like pooled CNN
activations. Prints a Markdown table and, with --json, writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

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


def _data(n: int, d: int):
    import numpy as np

    rng = np.random.default_rng(0)
    latent = rng.standard_normal((n, 32), dtype=np.float32)
    mixing = rng.standard_normal((32, d), dtype=np.float32) / np.sqrt(32, dtype=np.float32)
    return np.maximum(latent @ mixing + rng.standard_normal((n, d), dtype=np.float32), 0)


def _sigma(X) -> float:
    import numpy as np

    X64 = X.astype(np.float64)
    return float(np.sqrt(((X64 - X64.mean(0)) ** 2).sum(1).mean()))


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


def _run(case: str, side: str, X, device: str):
    """One computation of ``case``: ``side`` is 'ours' or 'reference'."""
    from sklearn.kernel_approximation import Nystroem
    from sklearn.metrics.pairwise import pairwise_kernels

    from genrecli.kernels import ExplicitMap, hist_kernel, linear_kernel, poly2_kernel, rbf_kernel

    sigma = _sigma(X)
    gamma = 1.0 / (2 * sigma**2)
    if side == "ours":
        return {
            "linear gram": lambda: linear_kernel(X, device=device),
            "poly2 gram": lambda: poly2_kernel(X, offset=1.0, device=device),
            "rbf gram": lambda: rbf_kernel(X, sigma=sigma, device=device),
            "hist gram": lambda: hist_kernel(X, device=device),
            "rbf map fit+transform, 1000 landmarks": lambda: ExplicitMap(
                "rbf", landmarks=1000, random_state=0, device=device
            )
            .fit(X)
            .transform(X),
            "rbf map fit+transform, all landmarks": lambda: ExplicitMap("rbf", device=device).fit(X).transform(X),
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


def _worker(case: str, side: str, n: int, d: int, device: str) -> None:
    import numpy as np  # noqa: F401  (the baseline makes the same imports)
    import sklearn.kernel_approximation  # noqa: F401
    import sklearn.metrics.pairwise  # noqa: F401
    import torch  # noqa: F401

    import genrecli.kernels  # noqa: F401

    X = _data(n, d)
    result = {}
    if case != "baseline":
        _run(case, side, _data(64, d), device)  # warm-up: numba compilation, BLAS and torch thread pools
        start = time.perf_counter()
        out = _run(case, side, X, device)
        result = {"seconds": time.perf_counter() - start, "shape": list(out.shape)}
    print(json.dumps(result))


def _measure(case: str, side: str, args) -> dict:
    command = [sys.executable, __file__, "--worker", case, side, "--n", str(args.n), "--d", str(args.d)]
    command += ["--device", args.device]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    stdout = process.stdout.read()
    # wait4 gives this child's own rusage; RUSAGE_CHILDREN would be the maximum over all children so far.
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{case} ({side}) failed with exit code {process.returncode}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["peak_mib"] = usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--d", type=int, default=1024)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--all-landmarks", action="store_true", help="also the rbf map on all n landmarks (an n x n eigensolve)"
    )
    parser.add_argument("--worker", nargs=2, metavar=("CASE", "SIDE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(*args.worker, args.n, args.d, args.device)
        return

    baseline = _measure("baseline", "ours", args)["peak_mib"]
    rows = []
    for case, reference in CASES.items():
        if case.endswith("all landmarks") and not args.all_landmarks:
            continue
        ours, theirs = _measure(case, "ours", args), _measure(case, "reference", args)
        rows.append(
            {
                "case": case,
                "reference": reference,
                "ours_s": ours["seconds"],
                "ours_mib": ours["peak_mib"] - baseline,
                "reference_s": theirs["seconds"],
                "reference_mib": theirs["peak_mib"] - baseline,
                "ours_shape": ours["shape"],
                "reference_shape": theirs["shape"],
            }
        )
        print(f"done: {case}", file=sys.stderr)

    print(f"n={args.n}, d={args.d}, device={args.device}, baseline peak RSS {baseline:.0f} MiB (subtracted)\n")
    print("| case | ours s | ours MiB | sklearn s | sklearn MiB | reference |")
    print("|---|---:|---:|---:|---:|---|")
    for row in rows:
        print(
            f"| {row['case']} | {row['ours_s']:.2f} | {row['ours_mib']:.0f} | {row['reference_s']:.2f} | "
            f"{row['reference_mib']:.0f} | {row['reference']} |"
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
