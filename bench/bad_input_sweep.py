"""Issue 16's bad-input sweep figures: kinds, per stage rejected (one line) / accepted, good rows lost, failures
listed by ``genre info``. The sweep itself is ``tests/test_bad_input_sweep.py`` (its corpus: ``tests/bad_inputs.py``).

    python bench/bad_input_sweep.py [--kinds] [--corpus audio,text,covers,table,cli]

``--kinds`` also prints each kind with its outcome. Exit code 1 when any expectation of the sweep failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import test_bad_input_sweep as sweep_test  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", action="store_true", help="list every kind with its stage and outcome")
    parser.add_argument("--corpus", default=",".join(sweep_test.CORPORA), help="comma-separated corpora to sweep")
    args = parser.parse_args()
    corpora = tuple(c for c in args.corpus.split(",") if c)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="genre-sweep-") as tmp:
        fig = sweep_test.sweep(Path(tmp), corpora)
    print(sweep_test.format_figures(fig))
    print(f"  wall time: {time.perf_counter() - t0:.1f} s")
    if args.kinds:
        for name, kind in fig.kinds.items():
            print(f"  {kind.corpus:7s} {kind.stage:14s} {fig.outcome.get(name, '?'):24s} {name}")
    return 1 if fig.problems else 0


if __name__ == "__main__":
    sys.exit(main())
