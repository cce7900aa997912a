"""Text encoder throughput on real scores: MiniLM clips/s per runtime against the fp32 reference, and TF-IDF.

    python bench/bench_text.py --device cpu --json out.json

Every runtime encodes the same kern-eras texts (512-token clips, batch 16, at most 4 clips per text); fp32
and the shipped fast runtimes (bf16 where its matmuls are fast, int8 on the CPU) run alternately, ``--reps``
times each, and the table gives the median. So does fp32 as the encoder ran before it kept freed memory
(``GENRE_KEEP_FREED_MEMORY=0``, :func:`genrecli.device.freed_memory_kept`): the '× fp32 before' column is the
ratio against it, the issue's "clips/s of today".
Where bf16 computes with the fused layers by default (a CPU without AMX, :mod:`genrecli.text.fused`), bf16
with transformers' stock layers (``cpu_ops='stock'``, what bf16 computed before) runs in the same loop.
Runtimes that were measured for issue 14 but not shipped (torch dynamic int8; ONNX Runtime fp32/int8, when
``onnxruntime`` and ``onnx`` are installed) run once each, between fp32 runs, from this script alone. The
cosine columns compare each runtime's text vectors with fp32's, over the kern-eras texts and over as many
folk-dance ABC tunes (music21's corpus), both converted by the stage's own converter. The ratio uses wall
time; the CPU-time ratio beside it is steadier on a machine shared with other jobs. A second table repeats
fp32 against bf16 with torch limited to one thread (``--one-thread-reps``): on a loaded machine two threads
spend much of their time waiting on each other, which hides the arithmetic's own ratio.

On a CPU without fast bfloat16 matmuls (no AMX, and AVX512-BF16 absent or not faster than fp32 on a probe
product; extract-text's default runtime 'auto' is fp32 there, :func:`genrecli.text.encoders.resolve_runtime`)
bf16 is not timed on the texts (its matmuls ran 32x slower
than fp32's on an AVX2 EPYC, so the runs would take many times fp32's): one product of BERT-layer shapes in
fp32 and in bf16 gives its ratio instead, in the same run.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
import types
import warnings
from pathlib import Path

import numpy as np

from genrecli.datasets import get_dataset
from genrecli.text.convert import score_to_text
from genrecli.device import resolve_device
from genrecli.text.encoders import TfidfEncoder, TransformerEncoder, _resolve_cpu_ops, resolve_runtime
from genrecli.text.int8 import available as int8_available

MAX_CLIPS, BATCH = 4, 16
STOCK_BF16 = "bf16, stock layers"
# the fp32 reference as it ran before the encoder kept freed memory (genrecli.device.freed_memory_kept)
FP32_BEFORE = "fp32, freed memory returned"


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _int8(model, keep_ffn_fp32: bool):
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    names = {n: per_channel_dynamic_qconfig for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
             and not (keep_ffn_fp32 and (n.endswith("output.dense") or n.endswith("intermediate.dense")))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(copy.deepcopy(model), names, dtype=torch.qint8)


class _OrtModel:
    """The fp32 torch model exported with torch.onnx (offline), optionally int8-quantized, run by ONNX Runtime."""

    def __init__(self, model, folder: Path, quantized: bool):
        import onnxruntime as ort
        import torch

        path = folder / "minilm.onnx"
        if not path.exists():
            class Wrap(torch.nn.Module):
                def __init__(self, m):
                    super().__init__()
                    self.m = m

                def forward(self, ids, mask):
                    return self.m(input_ids=ids, attention_mask=mask).last_hidden_state

            dummy = torch.ones(2, 16, dtype=torch.long)
            axes = {0: "batch", 1: "tokens"}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(Wrap(model).eval(), (dummy, dummy), str(path), input_names=["input_ids", "attention_mask"],
                                  output_names=["hidden"], opset_version=17, dynamo=False,
                                  dynamic_axes={"input_ids": axes, "attention_mask": axes, "hidden": axes})
        if quantized:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            qpath = folder / "minilm-int8.onnx"
            if not qpath.exists():
                quantize_dynamic(str(path), str(qpath), weight_type=QuantType.QInt8, per_channel=True)
            path = qpath
        options = ort.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.config = model.config

    def __call__(self, input_ids, attention_mask):
        import torch

        out = self.session.run(None, {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()})[0]
        return types.SimpleNamespace(last_hidden_state=torch.from_numpy(out))


def _bf16_product_ratio(reps: int = 5) -> str:
    """One (512 x 384) x (384 x 1536) product (a MiniLM feed-forward layer of a 512-token clip) timed in
    float32 and bfloat16 on the CPU, best of ``reps``: the line the text table prints where bf16 is not timed."""
    import torch

    a, b = torch.randn(512, 384), torch.randn(384, 1536)
    best = {}
    for dt in (torch.float32, torch.bfloat16):
        x, y = a.to(dt), b.to(dt)
        x @ y
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            x @ y
            times.append(time.perf_counter() - t)
        best[dt] = min(times)
    return (f"a 512 x 384 x 1536 product took {best[torch.float32] * 1e3:.1f} ms in fp32 and "
            f"{best[torch.bfloat16] * 1e3:.1f} ms in bf16 (bf16 takes {best[torch.bfloat16] / best[torch.float32]:.2f}x "
            f"fp32's time)")


def _timed(enc, texts, *, keep_freed_memory=True):
    before = os.environ.get("GENRE_KEEP_FREED_MEMORY")
    os.environ["GENRE_KEEP_FREED_MEMORY"] = "1" if keep_freed_memory else "0"
    try:
        w, c = time.perf_counter(), time.process_time()
        vectors = enc.encode(texts)
        return vectors, time.perf_counter() - w, time.process_time() - c
    finally:
        if before is None:
            del os.environ["GENRE_KEEP_FREED_MEMORY"]
        else:
            os.environ["GENRE_KEEP_FREED_MEMORY"] = before


def _encode(encoders, name, texts):
    """(vectors, wall s, CPU s) of the shipped runtime ``name``."""
    if name == FP32_BEFORE:
        return _timed(encoders["fp32"], texts, keep_freed_memory=False)
    return _timed(encoders[name], texts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--texts", type=int, default=24, help="real kern-eras texts to encode (and as many folk tunes)")
    ap.add_argument("--reps", type=int, default=3, help="alternating timed runs of fp32 and bf16")
    ap.add_argument("--one-thread-reps", type=int, default=2, help="alternating fp32/bf16 runs at 1 thread (0: none)")
    ap.add_argument("--json", type=Path)
    opts = ap.parse_args()
    kern = Path(__file__).resolve().parents[2] / "shared" / "data" / "kern-eras"
    tunes = get_dataset("folk-dances").list_tracks(None).tracks
    folk = [score_to_text(text=t.score_text, fmt="abc") for t in tunes[:: max(1, len(tunes) // opts.texts)][: opts.texts]]
    if kern.exists():
        tracks = get_dataset("piano").list_tracks(kern).tracks[:: max(1, 777 // opts.texts)][: opts.texts]
        texts = [score_to_text(path=t.score, fmt=t.score_format) for t in tracks]
        corpus = "kern-eras (**kern, metadata stripped)"
    else:
        texts, corpus = folk, "folk-dances ABC"
    on_cpu = opts.device == "cpu"
    default = resolve_runtime("auto", opts.device)
    shipped = ("fp32", "bf16") if default == "bf16" else ("fp32",)
    encoders = {rt: TransformerEncoder(None, device=opts.device, max_clips=MAX_CLIPS, batch_size=BATCH, runtime=rt)
                for rt in shipped}
    if default == "bf16" and _resolve_cpu_ops("auto", "bf16", resolve_device(opts.device)) == "fused":
        # the bf16 runtime as it was before the fused layers, alternated with the others in the same loop
        shipped += (STOCK_BF16,)
        encoders[STOCK_BF16] = TransformerEncoder(None, device=opts.device, max_clips=MAX_CLIPS, batch_size=BATCH,
                                                  runtime="bf16", cpu_ops="stock")
    if on_cpu and int8_available():
        shipped += ("int8",)
        encoders["int8"] = TransformerEncoder(None, device=opts.device, max_clips=MAX_CLIPS, batch_size=BATCH,
                                              runtime="int8")
    for enc in encoders.values():
        enc.encode(texts[:1])  # load the model and warm up outside the timing
    if on_cpu:
        shipped = (FP32_BEFORE, *shipped)
    n_clips = int(sum(min(c, MAX_CLIPS) for c in encoders["fp32"].clip_counts(texts)))
    fp32_model = encoders["fp32"]._model
    extra = {}  # measured, not shipped: a fp32 TransformerEncoder whose model is swapped
    if on_cpu:
        extra["int8 (torch dynamic, all Linear)"] = lambda: _int8(fp32_model, False)
        extra["int8 (torch dynamic, FFN kept fp32)"] = lambda: _int8(fp32_model, True)
        try:
            import onnx  # noqa: F401  (ONNX Runtime's quantizer needs it)
            import onnxruntime  # noqa: F401

            folder = Path(tempfile.mkdtemp(prefix="genre-bench-onnx-"))
            extra["onnxruntime fp32"] = lambda: _OrtModel(fp32_model, folder, quantized=False)
            extra["onnxruntime int8 (dynamic, per-channel)"] = lambda: _OrtModel(fp32_model, folder, quantized=True)
        except ImportError:
            pass
    load = os.getloadavg()
    wall = {k: [] for k in (*shipped, *extra)}
    cpu = {k: [] for k in wall}
    vecs, folk_vecs = {}, {}
    for rep in range(opts.reps):
        for rt in shipped:
            vecs[rt], w, c = _encode(encoders, rt, texts)
            wall[rt].append(w), cpu[rt].append(c)
    swap = TransformerEncoder(None, device=opts.device, max_clips=MAX_CLIPS, batch_size=BATCH)
    swap._load()
    for name, build in extra.items():
        swap._model = build()
        swap.encode(texts[:1])
        vecs[name], w, c = _timed(swap, texts)
        wall[name].append(w), cpu[name].append(c)
        folk_vecs[name] = swap.encode(folk)
        vecs["fp32"], w, c = _timed(encoders["fp32"], texts)  # fp32 again, so every runtime has a neighbour
        wall["fp32"].append(w), cpu["fp32"].append(c)
    for rt in shipped:
        folk_vecs[rt] = _encode(encoders, rt, folk)[0]
    one = {rt: [] for rt in ("fp32", "bf16", "int8") if rt in encoders and (rt != "bf16" or default == "bf16")}
    if on_cpu and opts.one_thread_reps > 0 and len(one) > 1:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        for rep in range(opts.one_thread_reps):
            for rt in one:
                one[rt].append(_timed(encoders[rt], texts)[1:])
        torch.set_num_threads(threads)
    load_after = os.getloadavg()

    rows = []
    ref_wall, ref_cpu = statistics.median(wall["fp32"]), statistics.median(cpu["fp32"])
    before_wall = statistics.median(wall[FP32_BEFORE]) if wall.get(FP32_BEFORE) else None
    for name in wall:
        med_w, med_c = statistics.median(wall[name]), statistics.median(cpu[name])
        cos_k, cos_f = _cosines(vecs[name], vecs["fp32"]), _cosines(folk_vecs[name], folk_vecs["fp32"])
        rows.append({
            "runtime": name, "shipped": name in ("fp32", "bf16", "int8", STOCK_BF16, FP32_BEFORE), "device": opts.device,
            "texts": len(texts), "clips": n_clips, "runs": len(wall[name]), "seconds": round(med_w, 2),
            "clips_per_s": round(n_clips / med_w, 2), "ratio": round(ref_wall / med_w, 2),
            "cpu_ratio": round(ref_cpu / med_c, 2),
            "ratio_before": None if before_wall is None else round(before_wall / med_w, 2),
            "cos_min_kern": float(cos_k.min()), "cos_mean_kern": float(cos_k.mean()),
            "cos_min_folk": float(cos_f.min()), "cos_mean_folk": float(cos_f.mean()),
        })
    t0 = time.perf_counter()
    TfidfEncoder().fit(texts).transform(texts)
    tfidf_s = time.perf_counter() - t0

    if default != "bf16":
        print(f"bf16 not timed on the texts: this CPU has no fast bfloat16 matmuls, so 'auto' (extract-text's "
              f"default) is fp32 here; {_bf16_product_ratio()}\n")
    print(f"Corpus: {corpus}; {len(texts)} texts, {n_clips} clips of <=512 tokens (<= {MAX_CLIPS} per text), batch "
          f"{BATCH}, device {opts.device}. Cosines against fp32 over these texts and over {len(folk)} folk-dance ABC tunes.\n")
    if before_wall is not None:
        print(f"'{FP32_BEFORE}' is the fp32 reference with GENRE_KEEP_FREED_MEMORY=0: glibc's malloc returns "
              "freed blocks to the system, as the encoder ran before it kept them (genrecli.device.freed_memory_kept); "
              "'× fp32 before' divides by its time.\n")
    print("| runtime | shipped | runs | wall s (median) | clips/s | × fp32 (wall) | × fp32 (CPU time) | × fp32 before (wall) "
          "| min cos kern | mean cos kern | min cos folk | mean cos folk |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        label = ", ".join(x for x, on in (("reference", r["runtime"] == "fp32"), ("auto", r["runtime"] == default),
                                           ("cpu_ops='stock'", r["runtime"] == STOCK_BF16),
                                           ("GENRE_KEEP_FREED_MEMORY=0", r["runtime"] == FP32_BEFORE),
                                           ("--runtime int8", r["runtime"] == "int8")) if on)
        before = "" if r["ratio_before"] is None else r["ratio_before"]
        print(f"| {r['runtime']} | {('yes' + (f' ({label})' if label else '')) if r['shipped'] else 'no'} "
              f"| {r['runs']} | {r['seconds']} | {r['clips_per_s']} | {r['ratio']} | {r['cpu_ratio']} | {before} "
              f"| {r['cos_min_kern']:.5f} | {r['cos_mean_kern']:.5f} | {r['cos_min_folk']:.5f} | {r['cos_mean_folk']:.5f} |")
    if one["fp32"]:
        ref_1w = statistics.median(w for w, _ in one["fp32"])
        ref_1c = statistics.median(c for _, c in one["fp32"])
        print(f"\nThe same texts with torch at 1 thread ({', '.join(one)} alternately):\n")
        print("| runtime | runs | wall s (median) | clips/s | × fp32 (wall) | × fp32 (CPU time) |\n|---|---:|---:|---:|---:|---:|")
        for rt, runs in one.items():
            med_w, med_c = statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)
            print(f"| {rt} | {len(runs)} | {med_w:.2f} | {n_clips / med_w:.2f} | {ref_1w / med_w:.2f} | {ref_1c / med_c:.2f} |")
            rows.append({"runtime": rt, "threads": 1, "runs": len(runs), "seconds": round(med_w, 2),
                         "clips_per_s": round(n_clips / med_w, 2), "ratio": round(ref_1w / med_w, 2),
                         "cpu_ratio": round(ref_1c / med_c, 2)})
    if on_cpu and not any(k.startswith("onnxruntime") for k in extra):
        print("\n(onnxruntime rows: `onnxruntime` and `onnx` are not installed, so they were not measured)")
    print(f"\ntfidf (10k vocabulary): {len(texts)} texts in {tfidf_s:.3f} s, {len(texts) / tfidf_s:.1f} texts/s")
    print(f"\nload average before / after: {', '.join(f'{x:.1f}' for x in load)} / {', '.join(f'{x:.1f}' for x in load_after)}")
    if opts.json:
        opts.json.write_text(json.dumps({"corpus": corpus, "rows": rows, "tfidf_texts_per_s": len(texts) / tfidf_s,
                                         "load": [load, load_after]}, indent=2))


if __name__ == "__main__":
    main()
