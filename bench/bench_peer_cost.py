"""What the peer systems' acceptance runs cost on this machine: CPU seconds per training row and epoch of `ru`
(Ru et al. 2023) and of one `fusionnet-feature` network (Ng et al. 2020), on synthetic rows of the real input
shapes, and the CPU hours of issue 11's and 12's tables projected from them.

    python bench/bench_peer_cost.py [--rows 48] [--epochs 2] [--threads 1] [--device cpu]

CPU time (``time.process_time``) is measured, not wall time, so the figure is the work itself and not the
machine's load (contention for caches still inflates it a little). One torch thread by default: the cost per
row of one core, which the projection divides by the cores available.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import numpy as np

# Issue 11: the 8-row ablation (A-L, SCMA, GCEM switched) x 3 seeds on kern-eras, work-grouped split.
# Issue 12: 8 per-feature networks x 3 seeds x (1 fit on the training part + 4 out-of-fold fits for the
# meta-classifier), on kern-eras and on folk-dances.
KERN_ERAS_TRAIN_ROWS = 490  # 777 pieces, group:work:0.7, less the 10 % validation carve-out
FOLK_TRAIN_ROWS = 1150  # 1824 tunes, 0.7, less 10 %
PROJECTIONS = {
    "issue 11: ru ablation, kern-eras (8 rows x 3 seeds)": ("ru", KERN_ERAS_TRAIN_ROWS, 24),
    "issue 12: fusionnet, kern-eras (8 features x 3 seeds x 5 fits)": ("fusionnet-feature", KERN_ERAS_TRAIN_ROWS, 120),
    "issue 12: fusionnet, folk-dances (8 features x 3 seeds x 5 fits)": ("fusionnet-feature", FOLK_TRAIN_ROWS, 120),
}


def cpu_seconds_per_row_epoch(model, inputs: dict, y: np.ndarray, *, epochs: int, val_fraction: float) -> float:
    start = time.process_time()
    model.fit(inputs, y)
    return (time.process_time() - start) / (len(y) * (1 - val_fraction) * epochs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=48)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--train-epochs", type=int, default=60,
                    help="epochs per training assumed by the projection (ru: lr halved every 50, patience 20; "
                         "fusionnet-feature: max_epochs 60)")
    opts = ap.parse_args()
    import torch

    from genrecli.models.neural.fusionnet import FeatureCodingModel
    from genrecli.models.neural.ru import RuModel

    torch.set_num_threads(opts.threads)
    rng = np.random.default_rng(0)
    n, val = opts.rows, 0.25
    y = np.arange(n) % 4
    common = dict(max_epochs=opts.epochs, val_fraction=val, random_state=0, device=opts.device)
    cost = {}
    ru_inputs = {"audio/logmel-ru": rng.standard_normal((n, 128, 1292)).astype(np.float32),  # 30 s, hop 512
                 "text/minilm-seq": rng.standard_normal((n, 64, 384)).astype(np.float32)}
    cost["ru"] = cpu_seconds_per_row_epoch(RuModel(patience=opts.epochs, **common), ru_inputs, y,
                                           epochs=opts.epochs, val_fraction=val)
    mel = {"audio/mel": rng.standard_normal((n, 128, 431)).astype(np.float32)}  # cropped to patch_frames
    cost["fusionnet-feature"] = cpu_seconds_per_row_epoch(FeatureCodingModel(**common), mel, y,
                                                          epochs=opts.epochs, val_fraction=val)
    cores = os.cpu_count() or 1
    print(f"CPU s per training row and epoch ({opts.rows} synthetic rows, {opts.epochs} epochs, torch "
          f"{opts.threads} thread(s), device {opts.device}): "
          + ", ".join(f"{k} {v:.3f}" for k, v in cost.items()))
    print(f"\n| run | model | training rows | fits | CPU h at {opts.train_epochs} epochs | wall h on {cores} cores |")
    print("|---|---|---:|---:|---:|---:|")
    for what, (model, rows, fits) in PROJECTIONS.items():
        hours = cost[model] * rows * opts.train_epochs * fits / 3600
        print(f"| {what} | {model} | {rows} | {fits} | {hours:.0f} | {hours / cores:.0f} |")
    print(f"\npeak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    print(json.dumps({"cpu_s_per_row_epoch": cost}))


if __name__ == "__main__":
    main()
