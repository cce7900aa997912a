"""DKN vs DM2KMN: training time, test-set forward time, inference throughput and peak memory.

    python bench/bench_dm2kmn.py [--device cpu] [--json out.json] [--quick]
    python bench/bench_dm2kmn.py --gflops [--json out.json]   # forward GFLOP/s against the float32 GEMM rate
    python bench/bench_dm2kmn.py --columns [--json out.json]  # case A, map network on pivoted columns

Every case runs in a fresh interpreter; its peak memory is that interpreter's peak RSS (ru_maxrss). Times are
wall-clock seconds of the computation only (data made and libraries imported before the clock starts; the
forward passes get one warm-up call and report the best of 3).

Data: SYNTHETIC features of the paper's shapes (no real ResNet-101 / RoBERTa features are at hand here):
an "audio" block of 1000 ResNet-like logits (class means on a 24-d latent space, Student-t noise) and a "text"
block of 1024 RoBERTa-like max-pooled embeddings (ReLU of a low-rank class structure + noise); 4 balanced
classes (piano eras) in case A, 5 classes (4MuLA genres) in B and C. 2 modalities x 4 kernels = 8 inputs,
16 hidden units, 1 output, exp activation.

Cases
  A  piano shape: n_train=600, n_test=385, landmarks = all. Default DKN training (C by 5-fold CV, 300 steps
     at most), initial DM2KMN, fine-tuning with (lr, epochs) by 5-fold CV over lr in {1e-3, 1e-2} and epochs in
     {0, 5, 10} (a reduced grid, to fit the 10-minute budget on 2 cores) -> training times, accuracy, RE,
     forward times of the 385 test tracks from features and from stored Grams.
  B  n_train=5000, 1000 landmarks (DKN trained on the landmarks with max_iter=60, initial DM2KMN, C=1),
     300 test rows: fit time and inference throughput of the DM2KMN from features; DKN throughput against all
     5000 training rows as support vectors (its cost model: weights of the landmark DKN, random dual
     coefficients) — training a DKN on 5000 rows (8 x 5000^2 Grams, 300 steps) is out of reach on 2 cores.
  C  n_train=50,000: the DKN cost model against 50,000 training rows; the DM2KMN is B's model, saved and
     loaded (safetensors): at inference it reads only its N=1000 landmarks, so its cost does not depend on
     n_train (fitting it on 50,000 rows would only change its linear classifier).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

D_AUDIO, D_TEXT = 1000, 1024


def make_data(n: int, n_classes: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    rng.shuffle(y)
    lat_a = rng.standard_normal((n_classes, 24)) * 0.25
    lat_t = rng.standard_normal((n_classes, 24)) * 0.25
    mix_a = rng.standard_normal((24, D_AUDIO)) / np.sqrt(24)
    mix_t = rng.standard_normal((24, D_TEXT)) / np.sqrt(24)
    za = lat_a[y] + rng.standard_normal((n, 24))
    zt = lat_t[y] + rng.standard_normal((n, 24))
    audio = 2.0 * (za @ mix_a) + rng.standard_t(5, size=(n, D_AUDIO))
    text = np.maximum(zt @ mix_t + 0.8 * rng.standard_normal((n, D_TEXT)), 0.0)
    return np.hstack([audio, text]).astype(np.float32), y


def best_time(fn, repeats=3):
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def case_a(device: str, quick: bool) -> dict:
    import numpy as np

    from genrecli.models.dkn import DKNClassifier
    from genrecli.models.dm2kmn import DM2KMNClassifier

    n_tr, n_te = 600, 385
    X, y = make_data(n_tr + n_te, 4, seed=1)
    Xtr, ytr, Xte, yte = X[:n_tr], y[:n_tr], X[n_tr:], y[n_tr:]
    dims = (D_AUDIO, D_TEXT)
    mods = ("audio", "text")
    t0 = time.perf_counter()
    dkn = DKNClassifier(input_dims=dims, modality_names=mods, hidden=16, random_state=0, device=device)
    dkn.fit(Xtr, ytr)
    t_dkn = time.perf_counter() - t0
    # fine-tuning model selection: 2 rates x epochs {0, 5, 10} x 5 folds (the library default, 3 rates x
    # {0, 5, ..., 30}, costs ~4.5x more: each full-batch step recomputes the landmark maps, O(m2 N^2 r))
    extra = dict(ft_lr_grid=(1e-3, 1e-2), ft_max_epochs=10) if not quick else dict(ft_lr_grid=(1e-2,), ft_max_epochs=5)
    t0 = time.perf_counter()
    net = DM2KMNClassifier(dkn=dkn, random_state=0, device=device, **extra)
    net.fit(Xtr, ytr)
    t_map = time.perf_counter() - t0
    # Gram-level forward (the CLI path: Grams stored by the kernels stage)
    G_te = dkn._grams(Xte)
    M_te = net._map_grams(Xte)
    metrics = net.extra_metrics(G_te, map_grams_test=M_te)
    t_feat_dkn = best_time(lambda: dkn.decision_function(Xte))
    t_feat_map = best_time(lambda: net.decision_function(Xte))
    return {
        "case": "A", "n_train": n_tr, "n_test": n_te, "landmarks": n_tr,
        "train_dkn_s": t_dkn, "train_dm2kmn_s": t_map, "train_total_s": t_dkn + t_map,
        "acc_dkn": float(np.mean(dkn.predict(Xte) == yte)), "acc_dm2kmn": float(np.mean(net.predict(Xte) == yte)),
        "re_train_initial": net.re_train_initial_, "re_train": net.re_train_, "re_test": metrics["re_test"],
        "ft_lr": net.ft_lr_, "ft_epochs": net.ft_epochs_, "ft_cv": net.ft_cv_, "ranks_max": [max(r) for r in net.ranks_],
        "fwd_gram_dkn_s": metrics["forward_time_dkn_s"], "fwd_gram_dm2kmn_s": metrics["forward_time_dm2kmn_s"],
        "fwd_feat_dkn_s": t_feat_dkn, "fwd_feat_dm2kmn_s": t_feat_map,
        "ri_dkn": metrics["ri_dkn"]["per_modality"], "ri_dm2kmn": metrics["ri_dm2kmn"]["per_modality"],
        "dkn_support": int(len(dkn.support_)),
    }


def case_big(device: str, n_tr: int, label: str, model_path: str) -> dict:
    import numpy as np
    import torch
    from safetensors.numpy import load_file, save_file

    from genrecli.kernels.elementary import ElementaryKernel
    from genrecli.models.dkn import Activation, combine
    from genrecli.models.dm2kmn import DM2KMNClassifier

    n_te, N = 300, 1000
    X, y = make_data(n_tr + n_te, 5, seed=2)
    Xtr, ytr, Xte = X[:n_tr], y[:n_tr], X[n_tr:]
    from genrecli.models.dkn import DKNClassifier

    def model() -> DM2KMNClassifier:  # the DM2KMN takes its (unfitted) DKN; fitted on the landmark rows
        dkn = DKNClassifier(input_dims=(D_AUDIO, D_TEXT), hidden=16, C=1.0, max_iter=60, random_state=0, device=device)
        return DM2KMNClassifier(dkn, landmarks=N, finetune=False, random_state=0, device=device)

    t_fit = None
    if label == "B":  # fit, then save the model for case C
        t0 = time.perf_counter()
        net = model().fit(Xtr, ytr)
        t_fit = time.perf_counter() - t0
        save_file(net.state_dict(), model_path)
    else:  # the DM2KMN reads only its N landmarks at inference: the saved model serves any n_train
        net = model().load_state_dict(load_file(model_path))
    t_map = best_time(lambda: net.decision_function(Xte))
    M_te = net._map_grams(Xte)
    t_map_gram = best_time(lambda: net._heads(M_te))
    # DKN cost model at n_train: elementary Grams of the test rows against all n_train training rows (kernels
    # fitted on them), the DKN recursion and the SVM expansion with every training row a support vector
    kernels = [(sl, ElementaryKernel(k, device=device).fit(Xtr[:, sl])) for sl in net.slices_ for k in net.dkn_.kernels]
    beta = torch.as_tensor(np.random.default_rng(0).standard_normal((5, n_tr)), dtype=torch.float32)
    dev = torch.device(device)
    Ws = [torch.as_tensor(w, device=dev) for w in net.dkn_.weights_]
    g = Activation("exp")

    def dkn_forward_all():
        G = np.stack([ek.transform(Xte[:, sl]) for sl, ek in kernels])
        K = torch.from_numpy(G).to(dev)
        out = []
        with torch.no_grad():
            for r0 in range(0, K.shape[1], 50):
                A = K[:, r0:r0 + 50]
                for W in Ws:
                    A = combine(W, A, g)
                out.append(A[0] @ beta.to(dev).T)
        return torch.cat(out)

    t_dkn = best_time(dkn_forward_all, repeats=1)
    return {
        "case": label, "n_train": n_tr, "n_test": n_te, "landmarks": N, "fit_dm2kmn_initial_s": t_fit,
        "fwd_feat_dm2kmn_s": t_map, "fwd_gram_dm2kmn_s": t_map_gram, "fwd_feat_dkn_s": t_dkn,
        "throughput_dm2kmn": n_te / t_map, "throughput_dkn": n_te / t_dkn,
        "ranks_max": [max(r) for r in net.ranks_],
    }


def gemm_rates(size: int = 4096, repeats: int = 3) -> dict:
    """This machine's float32 matrix-multiply rate (GFLOP/s): torch.matmul and NumPy (OpenBLAS) of two random
    size x size matrices, best of ``repeats`` after a warm-up, NumPy limited to torch's thread count."""
    import numpy as np
    import torch
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    rng = np.random.default_rng(0)
    A, B = (rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))
    tA, tB = torch.from_numpy(A), torch.from_numpy(B)
    flops = 2.0 * size**3
    with threadpool_limits(threads, user_api="blas"):
        t_np = best_time(lambda: A @ B, repeats)
    t_torch = best_time(lambda: tA @ tB, repeats)
    return {"threads": threads, "size": size, "torch_gflops": flops / t_torch / 1e9, "numpy_gflops": flops / t_np / 1e9}


def forward_flops(net, n_x: int) -> dict:
    """FLOPs the DM2KMN feature-level forward of n_x rows executes, from the model's shapes.

    input maps (:func:`~genrecli.kernels.maps.map_grams_block`): per modality one product of the rows with
    the N training rows, 2 n_x N d, shared by linear, poly2 and rbf (when its landmarks are the training
    rows; else 2 n_x Nz d more), then for rbf the folded operator 2 n_x Nz N, or 2 n_x Nz r + 2 n_x r N
    where it is not folded (the training rows' map is cached per fit, not recomputed); hist: 2 n_x N d
    min/add operations of the min-sum (bit-packed popcounts), not a matmul, counted apart; hidden: per layer
    the unit mixing 2 m_out m_in n_x N and the next inner products (2 m n_x N^2 with Q = P Fz^T, else
    2 m n_x N r twice); top: 2 n_x N n_heads.
    """
    import numpy as np

    N = len(net.landmarks_)
    inputs = hist = 0.0
    per_modality = len(net.maps_) // len(net.slices_)
    for b in range(len(net.slices_)):
        group = net.maps_[b * per_modality:(b + 1) * per_modality]
        shared = False
        for em in group:
            d = em.kernel_.n_kernel_features_
            if em.kernel == "hist":
                hist += 2.0 * n_x * N * d
                continue
            own_landmarks = em.kernel == "rbf" and not np.array_equal(em.landmarks_, em.kernel_.X_fit_)
            if own_landmarks:
                inputs += 2.0 * n_x * len(em.landmarks_) * d
            elif not shared:
                inputs += 2.0 * n_x * N * d
                shared = True
            if em.kernel == "rbf":
                Nz, r = em.projection_.shape
                inputs += 2.0 * n_x * Nz * N if em._rbf_gram_operator() is not None else 2.0 * n_x * r * (Nz + N)
    Ws, Qs, A, _, _ = net._inference_operators()
    hidden = 0.0
    for li, W in enumerate(Ws):
        hidden += 2.0 * W.shape[0] * W.shape[1] * n_x * N
        if li < len(Ws) - 1:
            Q = Qs[li]
            if isinstance(Q, tuple):
                hidden += 2.0 * 2 * Q[0].shape[0] * n_x * N * Q[0].shape[2]
            else:
                hidden += 2.0 * Q.shape[0] * n_x * N * N
    top = 2.0 * n_x * N * A.shape[0] * A.shape[2] if A.shape[0] > 1 else 2.0 * n_x * N * A.shape[2]
    return {"inputs": inputs, "hist_ops": hist, "hidden": hidden, "top": top}


def gflops_case(device: str, n_tests=(385, 5000)) -> dict:
    """Achieved GFLOP/s of the DM2KMN test-set forward (paper setting: 600 training rows = landmarks, no
    fine-tuning) against the machine's GEMM rate, for each n_test; the forward is timed whole
    (decision_function) and in its two parts (input map Grams, _map_grams; the network on them, _heads)."""
    from genrecli.models.dkn import DKNClassifier
    from genrecli.models.dm2kmn import DM2KMNClassifier

    rates = gemm_rates()
    n_tr = 600
    X, y = make_data(n_tr + max(n_tests), 4, seed=1)
    t0 = time.perf_counter()
    dkn = DKNClassifier(input_dims=(D_AUDIO, D_TEXT), modality_names=("audio", "text"), hidden=16, C=1.0,
                        max_iter=60, random_state=0, device=device)
    net = DM2KMNClassifier(dkn=dkn, finetune=False, random_state=0, device=device).fit(X[:n_tr], y[:n_tr])
    fit_s = time.perf_counter() - t0
    rows = []
    for n_te in n_tests:
        Xte = X[n_tr:n_tr + n_te]
        t_all = best_time(lambda: net.decision_function(Xte))
        t_maps = best_time(lambda: net._map_grams(Xte, shared=True))
        M = net._map_grams(Xte, shared=True)
        t_heads = best_time(lambda: net._heads(M))
        fl = forward_flops(net, n_te)
        matmul = fl["inputs"] + fl["hidden"] + fl["top"]
        rows.append({"n_test": n_te, "forward_s": t_all, "input_maps_s": t_maps, "network_s": t_heads,
                     "flops": fl, "matmul_gflop": matmul / 1e9, "gflops_forward": matmul / t_all / 1e9,
                     "gflops_network": (fl["hidden"] + fl["top"]) / t_heads / 1e9,
                     "gflops_input_maps": fl["inputs"] / t_maps / 1e9})
    return {"gemm": rates, "fit_s": fit_s, "landmarks": len(net.landmarks_), "ranks": net.ranks_,
            "map_dims": [em.dim_ for em in net.maps_], "rows": rows}


def gflops_table(res: dict) -> str:
    """The forward's rates against the faster of the two measured float32 GEMM rates (torch, NumPy)."""
    g = res["gemm"]
    peak = max(g["torch_gflops"], g["numpy_gflops"])
    out = [f"float32 GEMM ({g['size']}^2, {g['threads']} threads): torch {g['torch_gflops']:.1f} GFLOP/s, NumPy "
           f"{g['numpy_gflops']:.1f} GFLOP/s (the % columns are of the faster, {peak:.1f}); DM2KMN of "
           f"{res['landmarks']} landmarks (fit {res['fit_s']:.1f} s, no fine-tuning), input map dims "
           + ", ".join(map(str, res["map_dims"])) + "; FLOPs are those executed (bench_dm2kmn.forward_flops)\n",
           "| n_test | forward s | matmul GFLOP | GFLOP/s | % of GEMM | with hist min-sum Gop/s | % of GEMM | "
           "input maps s (GFLOP/s) | network s (GFLOP/s) | hist min-sum Gop |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        fl = r["flops"]
        with_hist = (r["matmul_gflop"] + fl["hist_ops"] / 1e9) / r["forward_s"]
        out.append(f"| {r['n_test']} | {r['forward_s']:.3f} | {r['matmul_gflop']:.2f} | {r['gflops_forward']:.1f} | "
                   f"{100 * r['gflops_forward'] / peak:.0f} % | {with_hist:.1f} | {100 * with_hist / peak:.0f} % | "
                   f"{r['input_maps_s']:.3f} ({r['gflops_input_maps']:.1f}) | {r['network_s']:.4f} "
                   f"({r['gflops_network']:.1f}) | {fl['hist_ops'] / 1e9:.2f} |")
    return "\n".join(out)


COLUMN_SPECS = ("all", "re:3", "96", "64", "48", "32", "48:all", "32:all")


def columns_case(device: str, specs=COLUMN_SPECS, repeats: int = 5) -> dict:
    """Case A (n = 600, every training row a landmark) with the map network on pivoted columns (issue 13, 3).

    One DKN (the default training) and, per setting of ``map_columns`` (:class:`DM2KMNClassifier`), a DM2KMN
    with the default fine-tuning (lr x epochs by 5-fold CV over {1e-4, 1e-3, 1e-2} x {0, 5, ..., 30}) and
    the libsvm top solver; 'all' is the paper's construction (liblinear, as the default). Spec 's' = s
    columns in every layer (deep_columns='first'), 's:all' = s input columns and every landmark in the
    deeper layers, 're:T' = the fewest columns of the schedule with train RE <= T %. Forward times from
    features on the 385 test rows, each the best of ``repeats`` after a warm-up, the DKN's measured right
    before each DM2KMN's; training times after a warm-up fit (imports and numba compilation excluded).
    """
    import numpy as np

    from genrecli.models.dkn import DKNClassifier
    from genrecli.models.dm2kmn import DM2KMNClassifier

    n_tr, n_te = 600, 385
    X, y = make_data(n_tr + n_te, 4, seed=1)
    Xtr, ytr, Xte, yte = X[:n_tr], y[:n_tr], X[n_tr:], y[n_tr:]
    t0 = time.perf_counter()
    dkn = DKNClassifier(input_dims=(D_AUDIO, D_TEXT), modality_names=("audio", "text"), hidden=16, random_state=0,
                        device=device).fit(Xtr, ytr)
    t_dkn_fit = time.perf_counter() - t0
    acc_dkn = float(np.mean(dkn.predict(Xte) == yte))
    # warm-up: imports, numba compilation of the column kernels
    DM2KMNClassifier(dkn=dkn, map_columns=16, finetune=False, top_solver="libsvm", device=device).fit(Xtr, ytr)
    rows = []
    for spec in specs:
        head, _, tail = spec.partition(":")
        kw = dict(dkn=dkn, random_state=0, device=device)
        if head == "all":
            kw.update(map_columns="all")
        elif head == "re":
            kw.update(map_columns="re", re_target=float(tail), deep_columns="first", top_solver="libsvm")
        else:
            kw.update(map_columns=int(head), deep_columns=tail or "first", top_solver="libsvm")
        t0 = time.perf_counter()
        net = DM2KMNClassifier(**kw).fit(Xtr, ytr)
        t_fit = time.perf_counter() - t0
        t_dkn = best_time(lambda: dkn.decision_function(Xte), repeats)
        t_map = best_time(lambda: net.decision_function(Xte), repeats)
        m = net.extra_metrics_features(Xte, repeats=1)
        rows.append({
            "spec": spec, "columns": m["map_columns"], "ranks_max": [max(r) for r in net.ranks_],
            "re_train_initial": net.re_train_initial_["re_abs"], "re_train": net.re_train_["re_abs"],
            "re_test": m["re_test"]["re_abs"], "acc": float(np.mean(net.predict(Xte) == yte)),
            "ft": [net.ft_lr_, net.ft_epochs_], "train_s": t_fit, "fwd_dkn_s": t_dkn, "fwd_s": t_map,
            "ratio": t_dkn / t_map,
        })
        print(f"{spec}: {rows[-1]}", file=sys.stderr, flush=True)
    return {"n_train": n_tr, "n_test": n_te, "train_dkn_s": t_dkn_fit, "acc_dkn": acc_dkn,
            "dkn_support": int(len(dkn.support_)), "rows": rows}


def columns_table(res: dict) -> str:
    out = [f"DKN: training {res['train_dkn_s']:.1f} s, test accuracy {res['acc_dkn']:.3f}, "
           f"{res['dkn_support']} support vectors of {res['n_train']}", "",
           "| map columns | columns | max rank per layer | RE train initial / learned (%) | RE test (%) | accuracy | "
           "fine-tuning (lr, epochs) | DM2KMN training (s) | DKN forward (s) | DM2KMN forward (s) | DKN / DM2KMN |",
           "|---|---:|---|---|---:|---:|---|---:|---:|---:|---:|"]
    for r in res["rows"]:
        out.append(f"| {r['spec']} | {r['columns']} | {r['ranks_max']} | {r['re_train_initial']:.2f} / "
                   f"{r['re_train']:.2f} | {r['re_test']:.2f} | {r['acc']:.3f} | {r['ft'][0]}, {r['ft'][1]} | "
                   f"{r['train_s']:.1f} | {r['fwd_dkn_s']:.4f} | {r['fwd_s']:.4f} | {r['ratio']:.1f}x |")
    return "\n".join(out)


def worker(name: str, device: str, quick: bool, model_path: str):
    import torch

    torch.manual_seed(0)
    if name == "A":
        res = case_a(device, quick)
    elif name == "B":
        res = case_big(device, 5000, "B", model_path)
    else:
        res = case_big(device, 50_000, "C", model_path)
    res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    res["device"] = device
    print("RESULT " + json.dumps(res))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None)
    ap.add_argument("--cases", default="A,B,C")
    ap.add_argument("--quick", action="store_true", help="case A: one fine-tuning rate, 5 epochs (smoke run)")
    ap.add_argument("--gflops", action="store_true",
                    help="only the GFLOP/s of the DM2KMN forward against the machine's float32 GEMM rate")
    ap.add_argument("--columns", action="store_true",
                    help="only case A with the map network on pivoted columns (map_columns), against its DKN")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model-path", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.device, args.quick, args.model_path)
        return
    if args.columns:
        res = columns_case(args.device)
        print(columns_table(res))
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(res, fh, indent=2)
        return
    if args.gflops:
        res = gflops_case(args.device)
        print(gflops_table(res))
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(res, fh, indent=2)
        return
    import tempfile

    tmp = tempfile.mkdtemp(prefix="bench_dm2kmn_")
    model_path = os.path.join(tmp, "dm2kmn_B.safetensors")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    results = []
    t_all = time.perf_counter()
    for name in args.cases.split(","):
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--device", args.device,
               "--model-path", model_path]
        if args.quick:
            cmd.append("--quick")
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(f"case {name} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
            sys.exit(1)
        res = json.loads(lines[-1][len("RESULT "):])
        res["case_wall_s"] = time.perf_counter() - t0
        results.append(res)
        print(f"case {name} done in {res['case_wall_s']:.1f} s", file=sys.stderr)
    print(table(results))
    print(f"\ntotal wall time {time.perf_counter() - t_all:.1f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


def table(results) -> str:
    f = lambda v, p=3: "—" if v is None else (f"{v:.{p}f}" if isinstance(v, float) else str(v))  # noqa: E731
    out = ["| case | n_train | landmarks N | n_test | DKN forward (s) | DM2KMN forward (s) | DKN samples/s | "
           "DM2KMN samples/s | training (s) | peak RSS (MiB) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r["case"] == "A":
            out.append(f"| A features | {r['n_train']} | {r['landmarks']} | {r['n_test']} | {f(r['fwd_feat_dkn_s'])} | "
                       f"{f(r['fwd_feat_dm2kmn_s'])} | {r['n_test'] / r['fwd_feat_dkn_s']:.0f} | "
                       f"{r['n_test'] / r['fwd_feat_dm2kmn_s']:.0f} | DKN {f(r['train_dkn_s'], 1)} + DM2KMN "
                       f"{f(r['train_dm2kmn_s'], 1)} | {f(r['peak_rss_mib'], 0)} |")
            out.append(f"| A stored Grams | {r['n_train']} | {r['landmarks']} | {r['n_test']} | "
                       f"{f(r['fwd_gram_dkn_s'], 4)} | {f(r['fwd_gram_dm2kmn_s'], 4)} | "
                       f"{r['n_test'] / r['fwd_gram_dkn_s']:.0f} | {r['n_test'] / r['fwd_gram_dm2kmn_s']:.0f} | | |")
        else:
            out.append(f"| {r['case']} features | {r['n_train']} | {r['landmarks']} | {r['n_test']} | "
                       f"{f(r['fwd_feat_dkn_s'])} | {f(r['fwd_feat_dm2kmn_s'])} | {r['throughput_dkn']:.0f} | "
                       f"{r['throughput_dm2kmn']:.0f} | {'initial DM2KMN ' + f(r['fit_dm2kmn_initial_s'], 1) if r['fit_dm2kmn_initial_s'] else 'model of B'} | "
                       f"{f(r['peak_rss_mib'], 0)} |")
    extra = []
    for r in results:
        if r["case"] == "A":
            extra.append(f"\nCase A: accuracy DKN {r['acc_dkn']:.3f}, DM2KMN {r['acc_dm2kmn']:.3f}; "
                         f"RE initial {r['re_train_initial']['re_abs']:.3f} %, learned (train) "
                         f"{r['re_train']['re_abs']:.3f} %, test x train {r['re_test']['re_abs']:.3f} %; "
                         f"fine-tuning lr {r['ft_lr']} for {r['ft_epochs']} epochs; max KPCA ranks per layer "
                         f"{r['ranks_max']}; DKN support vectors {r['dkn_support']}; RI DKN {r['ri_dkn']}, "
                         f"DM2KMN {r['ri_dm2kmn']}.")
        else:
            extra.append(f"Case {r['case']}: DM2KMN stored-Gram forward {r['fwd_gram_dm2kmn_s']:.3f} s; "
                         f"max KPCA ranks per layer {r['ranks_max']}.")
    return "\n".join(out + extra)


if __name__ == "__main__":
    main()
