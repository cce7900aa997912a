"""DM2KMN with landmarks through the CLI on a large ``table`` corpus: wall time and peak memory per stage.

    python bench/bench_scale.py [--n 50000] [--landmarks 1000] [--device cpu] [--keep DIR] [--cli-ft-epochs 5]
        [--no-evaluate]

Data: SYNTHETIC rows of the paper's shapes (the features of bench_dm2kmn.py: 1000 ResNet-like "audio" logits
next to 1024 RoBERTa-like "text" dimensions, 5 classes), written as one NPZ table and ingested with
``genre ingest table`` as one 2024-d input (``audio/table``), so the model sees 4 elementary kernels. Each
stage runs as its own ``genre`` process; its peak RSS is that process's ``ru_maxrss`` (children included).
The DM2KMN runs with ``--landmarks N`` (its DKN is trained on the N landmark rows, every Gram is n x N), a
fixed fine-tuning schedule (``--cli-ft-epochs``, default 5 epochs, lr 1e-3) and a fixed C = 1 (DKN and map-network SVMs), so no CV grid
-- 5-fold CV of C over liblinear on 40,000 rows alone ran past 50 minutes on 2 busy cores -- DKN
``max_iter=60``, fine-tuning in mini-batches of 2048 rows (full-batch autograd over 40,000 x 1000 maps passed
8 GiB), one seed.

Library mode (issue 15), the model alone on rows streamed from an HDF5 file:

    python bench/bench_scale.py --library [--ns 100000 1000000] [--landmarks 1000] [--ft-epochs 1 0]
        [--forward-rows 20000] [--selection uniform] [--block-size 2048] [--batch-size 8192] [--keep DIR]

For every n: SYNTHETIC rows of the paper's shapes (1000-d audio next to 1024-d text, float32, 5 classes)
are written block by block to an HDF5 dataset (never held whole: 10^6 x 2024 float32 is 8.1 GB), then a
fresh interpreter opens it with h5py and fits ``DM2KMNClassifier(landmarks=N)`` on the ``h5py.Dataset``
itself (the streamed fit: DKN and every CV on the N landmark rows, fine-tuning mini-batches read and mapped
``block_size`` rows at a time), then scores the first ``forward_rows`` rows from the file. Reported per n:
fit seconds, forward samples/s, that process's peak RSS, and RSS(n_max)/RSS(n_min) against the data-size
ratio. ``--ft-epochs`` gives the fine-tuning epochs per n (one value for all, or one per n): each epoch
streams all n rows, so on 2 shared cores 10^6 rows get 0 epochs (the fit then reads only the landmark rows).
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


def write_h5(path: Path, n: int, n_classes: int = 5, seed: int = 0, block: int = 50_000) -> float:
    """Synthetic rows of the paper's shapes (bench_dm2kmn.make_data's model) written block by block; GiB."""
    import h5py
    import numpy as np

    from bench_dm2kmn import D_AUDIO, D_TEXT

    rng = np.random.default_rng(seed)
    lat_a = rng.standard_normal((n_classes, 24)) * 0.25
    lat_t = rng.standard_normal((n_classes, 24)) * 0.25
    mix_a = rng.standard_normal((24, D_AUDIO)) / np.sqrt(24)
    mix_t = rng.standard_normal((24, D_TEXT)) / np.sqrt(24)
    y = np.arange(n) % n_classes
    rng.shuffle(y)
    with h5py.File(path, "w") as h5:
        X = h5.create_dataset("X", (n, D_AUDIO + D_TEXT), dtype="float32", chunks=(min(n, 1024), D_AUDIO + D_TEXT))
        h5["y"] = y
        for start in range(0, n, block):
            stop = min(start + block, n)
            r = np.random.default_rng([seed, start])
            yb = y[start:stop]
            za = lat_a[yb] + r.standard_normal((stop - start, 24))
            zt = lat_t[yb] + r.standard_normal((stop - start, 24))
            audio = 2.0 * (za @ mix_a) + r.standard_t(5, size=(stop - start, D_AUDIO))
            text = np.maximum(zt @ mix_t + 0.8 * r.standard_normal((stop - start, D_TEXT)), 0.0)
            X[start:stop] = np.hstack([audio, text]).astype(np.float32)
    return n * (D_AUDIO + D_TEXT) * 4 / 2**30


LIBRARY_CHILD = r"""
import json, resource, sys, time
import h5py, numpy as np
from genrecli.models.dkn import DKNClassifier
from genrecli.models.dm2kmn import DM2KMNClassifier
path, N, epochs, fwd, sel, block, batch, device = sys.argv[1:9]
with h5py.File(path, "r") as h5:
    X, y = h5["X"], h5["y"][()]
    dkn = DKNClassifier(input_dims=(1000, 1024), modality_names=("audio", "text"), C=1.0, max_iter=60)
    net = DM2KMNClassifier(dkn, landmarks=int(N), landmark_selection=sel, ft_epochs=int(epochs), ft_lr=1e-3,
                           block_size=int(block), batch_size=int(batch), random_state=0, device=device)
    t0 = time.perf_counter(); net.fit(X, y); fit_s = time.perf_counter() - t0
    rss_fit = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    m = min(int(fwd), X.shape[0])
    class Head:  # the first m rows of the file, read block by block by predict
        ndim, shape = 2, (m, X.shape[1])
        def __getitem__(self, s): return X[s]
    t0 = time.perf_counter(); pred = net.predict(Head()); fwd_s = time.perf_counter() - t0
    acc = float(np.mean(pred == y[:m]))
print(json.dumps({"fit_s": fit_s, "fwd_rows": m, "fwd_s": fwd_s, "rss_fit": rss_fit,
                  "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "acc_first_rows": acc,
                  "ranks": [max(r) for r in net.ranks_], "epochs": net.ft_epochs_,
                  "ft_loss": [h["loss"] for h in net.ft_history_]}))
"""


def library(opts) -> None:
    import datetime

    work = opts.keep or Path(tempfile.mkdtemp(prefix="genre-scale-lib-"))
    work.mkdir(parents=True, exist_ok=True)
    epochs = opts.ft_epochs if len(opts.ft_epochs) == len(opts.ns) else [opts.ft_epochs[0]] * len(opts.ns)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    rows = []
    load0 = os.getloadavg()
    start = datetime.datetime.now(datetime.timezone.utc)
    try:
        for n, ep in zip(opts.ns, epochs):
            path = work / f"rows-{n}.h5"
            t0 = time.perf_counter()
            gib = write_h5(path, n)
            write_s = time.perf_counter() - t0
            out = subprocess.run([sys.executable, "-c", LIBRARY_CHILD, str(path), str(opts.landmarks), str(ep),
                                  str(opts.forward_rows), opts.selection, str(opts.block_size), str(opts.batch_size),
                                  opts.device], capture_output=True, text=True, env=env)
            if out.returncode != 0:
                raise SystemExit(f"n={n}: the library run failed:\n{out.stderr[-3000:]}")
            doc = json.loads(out.stdout.strip().splitlines()[-1])
            doc.update(n=n, data_gib=gib, write_s=write_s)
            rows.append(doc)
            print(json.dumps(doc), flush=True)
            if opts.keep is None:
                path.unlink()
    finally:
        if opts.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    load1 = os.getloadavg()
    print(f"\n{start:%Y-%m-%d %H:%M} UTC; load average before {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, "
          f"after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}; {os.cpu_count()} CPUs; device {opts.device}; "
          f"landmarks N = {opts.landmarks} ({opts.selection}), block_size {opts.block_size}, "
          f"batch_size {opts.batch_size}\n")
    print("| n | data (GiB, on disk, float32) | fine-tuning epochs | fit s | forward rows | forward samples/s | "
          "peak RSS after fit (GiB) | peak RSS (GiB) |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']:,} | {r['data_gib']:.2f} | {r['epochs']} | {r['fit_s']:.1f} | {r['fwd_rows']:,} | "
              f"{r['fwd_rows'] / r['fwd_s']:.0f} | {r['rss_fit']:.2f} | {r['rss']:.2f} |")
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        print(f"\nRSS({b['n']:,}) / RSS({a['n']:,}) = {b['rss'] / a['rss']:.2f}; data-size ratio "
              f"{b['data_gib'] / a['data_gib']:.1f}")


def main() -> None:
    import numpy as np

    from bench_dm2kmn import make_data

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--landmarks", type=int, default=1000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temporary one)")
    ap.add_argument("--library", action="store_true", help="the model alone on rows streamed from HDF5")
    ap.add_argument("--ns", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--ft-epochs", type=int, nargs="+", default=[1, 0])
    ap.add_argument("--forward-rows", type=int, default=20_000)
    ap.add_argument("--selection", default="uniform", choices=("uniform", "kmeans++"))
    ap.add_argument("--block-size", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=8192)
    ap.add_argument("--cli-ft-epochs", type=int, default=5, help="CLI mode: -o ft_epochs of the train stage")
    ap.add_argument("--no-evaluate", action="store_true", help="CLI mode: skip the evaluate stage")
    opts = ap.parse_args()
    if opts.library:
        return library(opts)
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
              "-o", f"ft_epochs={opts.cli_ft_epochs}", "-o", "ft_lr=0.001", "-o", "max_iter=60", "-o", "C=1", "-o", "batch_size=2048", "--device", opts.device]),
            ("evaluate", ["evaluate", "--data", "big"]),
        ][: 2 if opts.no_evaluate else 3]
        for name, args in stages:
            seconds, rss, _ = run_stage(args, env)
            rows.append((name, seconds, rss))
        metrics = next((work / "home" / "big" / "runs").glob("*/metrics.json"), None)
        summary = json.loads(metrics.read_text())["summary"] if metrics else None
        n_train = int(0.8 * opts.n)
        print(f"n = {opts.n} rows ({n_train} training, table {mb:.0f} MiB on disk), 2024-d, 5 classes, "
              f"landmarks N = {opts.landmarks}, device {opts.device}; one run.\n")
        print("| stage | wall s | peak RSS GiB |\n|---|---|---|")
        for name, seconds, rss in rows:
            print(f"| `genre {name}` | {seconds:.1f} | {rss:.2f} |")
        if summary is None:
            return
        acc = summary["accuracy"]["mean"]
        fwd = summary.get("extra", {}).get("forward_time_dm2kmn_s", {}).get("mean")
        print(f"\nTest accuracy {acc:.3f} (synthetic data; chance 0.2); DM2KMN forward pass on the "
              f"{opts.n - n_train} test rows {fwd if fwd is None else round(fwd, 3)} s.")
    finally:
        if opts.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
