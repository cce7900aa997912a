"""Text encoder throughput: MiniLM clips/s at 512 tokens (batched), and TF-IDF texts/s, on real scores.

    python bench/bench_text.py --device cpu --json out.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from genrecli.datasets import get_dataset
from genrecli.text.convert import score_to_text
from genrecli.text.encoders import TfidfEncoder, TransformerEncoder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--texts", type=int, default=24, help="real kern-eras/folk texts to encode")
    ap.add_argument("--json", type=Path)
    opts = ap.parse_args()
    kern = Path(__file__).resolve().parents[2] / "shared" / "data" / "kern-eras"
    if kern.exists():
        tracks = get_dataset("piano").list_tracks(kern).tracks[:: max(1, 777 // opts.texts)][: opts.texts]
        texts = [score_to_text(path=t.score, fmt=t.score_format) for t in tracks]
        corpus = "kern-eras (**kern, metadata stripped)"
    else:
        tracks = get_dataset("folk-dances").list_tracks(None).tracks[: opts.texts]
        texts = [score_to_text(text=t.score_text, fmt="abc") for t in tracks]
        corpus = "folk-dances ABC"
    rows = []
    enc = TransformerEncoder(None, device=opts.device, max_clips=4, batch_size=16)
    enc.encode(texts[:1])  # load the model and warm up outside the timing
    n_clips = int(sum(min(c, 4) for c in enc.clip_counts(texts)))
    t0 = time.perf_counter()
    enc.encode(texts)
    dt = time.perf_counter() - t0
    rows.append({"encoder": "minilm (512-token clips, batch 16, <=4 clips/text)", "device": opts.device, "texts": len(texts),
                 "clips": n_clips, "seconds": round(dt, 2), "clips_per_s": round(n_clips / dt, 2)})
    t0 = time.perf_counter()
    TfidfEncoder().fit(texts).transform(texts)
    dt = time.perf_counter() - t0
    rows.append({"encoder": "tfidf (10k vocabulary)", "device": "cpu", "texts": len(texts), "clips": None,
                 "seconds": round(dt, 3), "clips_per_s": None, "texts_per_s": round(len(texts) / dt, 1)})
    print(f"Corpus: {corpus}\n")
    print("| encoder | device | texts | clips | wall s | clips/s | texts/s |\n|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        tps = r.get("texts_per_s") or round(r["texts"] / r["seconds"], 2)
        print(f"| {r['encoder']} | {r['device']} | {r['texts']} | {r['clips'] or '—'} | {r['seconds']} | {r['clips_per_s'] or '—'} | {tps} |")
    if opts.json:
        opts.json.write_text(json.dumps({"corpus": corpus, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
