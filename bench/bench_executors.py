"""Extraction executors (issue 15): `--executor ray` against `--jobs 2` and one process on the same tracks.

    python bench/bench_executors.py [--limit 200] [--max-seconds 30] [--ray-jobs 2]

Ingests ``--limit`` folk-dance tunes (bundled with music21) into a temporary data home, converts their
scores to MIDI once (an untimed `genre extract-audio --jobs 2`, which fills the store's MIDI cache, so every
timed side does the same work: render the opening with the SoundFont and compute mfcc), then times, as
whole commands (interpreter and worker start-up included, Ray's local instance start-up included),

* `genre extract-audio --features mfcc --force --jobs 1`  (one worker process),
* `genre extract-audio --features mfcc --force --jobs 2`,
* `genre extract-audio --features mfcc --force --executor ray --jobs 2`  (a local Ray instance, 2 actors),

and prints a markdown table of wall seconds and audio-s/s (audio seconds analysed: per track the MIDI's end
time capped at ``--max-seconds``), with whether each side's arrays equal the one-process result bit for bit.
The load average before and after is printed with it: the machine is shared, so the figures move with it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def genre(home: Path, *args) -> float:
    """Wall seconds of ``genre ARGS`` (exit 0 required) in a fresh interpreter."""
    env = {**os.environ, "GENRE_DATA_HOME": str(home), "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "genrecli", "--quiet", *map(str, args)], env=env,
                          capture_output=True, text=True)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"genre {' '.join(map(str, args))}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return took


def audio_seconds(store_path: Path, max_seconds: float) -> tuple[float, int]:
    """Audio seconds analysed (per track: the cached MIDI's end time, at most ``max_seconds``) and tracks."""
    import pretty_midi

    with h5py.File(store_path, "r") as h5:
        grp = h5["synth/midi"]
        blob, offsets = grp["midi"][()], grp["offsets"][()]
        valid = h5["audio/mfcc/valid"][()]
    total = 0.0
    for r in np.flatnonzero(valid):
        midi = pretty_midi.PrettyMIDI(io.BytesIO(blob[offsets[r]:offsets[r + 1]].tobytes()))
        total += min(midi.get_end_time(), max_seconds)
    return total, int(valid.sum())


def mfcc(store_path: Path) -> np.ndarray:
    with h5py.File(store_path, "r") as h5:
        return h5["audio/mfcc/data"][()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=200, help="folk-dance tunes")
    ap.add_argument("--max-seconds", type=float, default=30.0)
    ap.add_argument("--ray-jobs", type=int, default=2, help="Ray actors")
    opts = ap.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="genre-bench-executors-") as tmp:
        home = Path(tmp)
        genre(home, "ingest", "folk-dances", "--name", "folk", "--limit", opts.limit, "--seed", "0",
              "--split", "random:0.7")
        common = ("extract-audio", "--data", "folk", "--features", "mfcc", "--max-seconds", opts.max_seconds)
        warm = genre(home, *common, "--jobs", "2")  # fills the MIDI cache (music21: seconds per tune)
        store_path = home / "folk" / "features.h5"
        seconds, tracks = audio_seconds(store_path, opts.max_seconds)
        sides = [("one process (`--jobs 1`)", ("--jobs", "1")), ("`--jobs 2`", ("--jobs", "2")),
                 (f"Ray, local instance, {opts.ray_jobs} actors (`--executor ray --jobs {opts.ray_jobs}`)",
                  ("--executor", "ray", "--jobs", opts.ray_jobs))]
        rows, reference = [], None
        for name, extra in sides:
            wall = genre(home, *common, "--force", *extra)
            data = mfcc(store_path)
            reference = data if reference is None else reference
            rows.append((name, wall, np.array_equal(data, reference, equal_nan=True)))
    load_after = os.getloadavg()
    print(f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores (shared with other jobs), "
          f"load average (1, 5, 15 min) before {', '.join(f'{v:.2f}' for v in load_before)}, after "
          f"{', '.join(f'{v:.2f}' for v in load_after)}.")
    print(f"{tracks} folk-dance tunes (`--limit {opts.limit} --seed 0`), mfcc, `--max-seconds {opts.max_seconds:g}`: "
          f"{seconds:.0f} audio seconds. MIDI converted once beforehand (untimed warm-up, `--jobs 2`: {warm:.0f} s); "
          "each side is one whole `genre extract-audio --force` command, start-up included.")
    print()
    print("| executor | wall s | audio-s/s | speed-up vs one process | arrays equal to `--jobs 1` |")
    print("|---|---:|---:|---:|---|")
    base = rows[0][1]
    for name, wall, equal in rows:
        print(f"| {name} | {wall:.1f} | {seconds / wall:.1f} | {base / wall:.2f}x | {'yes' if equal else 'NO'} |")


if __name__ == "__main__":
    main()
