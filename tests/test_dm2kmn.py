"""DM2KMN: explicit-map network built from a trained DKN (spec section 6), fine-tuning, RE / RI, persistence.

Real data: the O'Neill 1850 dance tunes of test_dkn.py (melody + rhythm histograms of ABC tune bodies).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from conftest import FLOAT32_INVARIANCE_FAILURES
from test_dkn import elementary_grams, oneill_dances

from genrecli.models.dkn import Activation, DKNClassifier, combine
from genrecli.models.dm2kmn import (
    DM2KMNClassifier,
    build_projections,
    head_scores,
    heads_to_scores,
    propagate,
    relative_error,
)

MODS = ["melody"] * 4 + ["rhythm"] * 4


def _map_grams(X, dims, n_train, kernels=("linear", "poly2", "rbf", "hist")):
    """(m, n, n_train) inner products of the explicit input maps (kernels module) against the training rows."""
    from genrecli.kernels.maps import ExplicitMap

    out, s = [], 0
    for d in dims:
        for k in kernels:
            em = ExplicitMap(k, random_state=0).fit(X[:n_train, s:s + d])
            out.append(em.map_gram(X[:, s:s + d]))
        s += d
    return np.stack(out).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    X, y, dims = oneill_dances(30)
    perm = np.random.RandomState(1).permutation(len(y))
    X, y = X[perm], y[perm]
    G = elementary_grams(X, dims, n_train=60)
    M = _map_grams(X, dims, 60)
    dkn = DKNClassifier(hidden=16, max_iter=60, random_state=0).fit_gram(G[:, :60], y[:60], modalities=MODS)
    return {"X": X, "y": y, "dims": dims, "G": G, "M": M, "dkn": dkn}


@pytest.fixture(scope="module")
def initial(data):
    return DM2KMNClassifier(dkn=data["dkn"], finetune=False, random_state=0).fit_gram(
        data["G"][:, :60], data["y"][:60], map_grams=data["M"][:, :60], modalities=MODS)


def test_initial_dm2kmn_approximates_its_dkn(initial, data):
    """RE < 2 % on train pairs and test x train pairs (exact DKN kernels vs map inner products)."""
    assert initial.re_train_initial_["re_abs"] < 2.0
    assert initial.re_train_ == initial.re_train_initial_  # no fine-tuning
    m = initial.extra_metrics(data["G"][:, 60:], map_grams_test=data["M"][:, 60:])
    assert m["re_test"]["re_abs"] < 2.0
    assert 0 < m["re_test"]["re_fro"] < 100
    assert m["forward_time_dkn_s"] > 0 and m["forward_time_dm2kmn_s"] > 0
    assert all(1 <= r <= 60 for layer in m["ranks"] for r in layer)
    # the map network's accuracy stays close to the DKN's
    acc_map = np.mean(initial.predict_gram(data["G"][:, 60:], map_grams_test=data["M"][:, 60:]) == data["y"][60:])
    acc_dkn = np.mean(data["dkn"].predict_gram(data["G"][:, 60:]) == data["y"][60:])
    assert acc_map > 0.6 and acc_map >= acc_dkn - 0.15
    assert initial.C_ == 0.1  # the C chosen before selection moved to genrecli.models.selection


def test_maps_are_exact_for_linear_and_poly2_inputs(data):
    """linear + poly2 inputs, energy=1, landmarks=all: layer-2 map inner products = g(sum_q w_q K_q)."""
    G = np.ascontiguousarray(data["G"][[0, 1, 4, 5], :60])  # linear, poly2 of both modalities
    dkn = DKNClassifier(("linear", "poly2"), hidden=6, max_iter=20, C=1.0, random_state=0)
    dkn.fit_gram(G, data["y"][:60])
    net = DM2KMNClassifier(dkn, energy=1.0, finetune=False)
    net.fit_gram(G, data["y"][:60])
    g = Activation("exp")
    K2 = combine(torch.as_tensor(dkn.weights_[0]), torch.from_numpy(G), g).numpy()  # exact hidden kernels
    F2 = net.landmark_maps_[0]  # (6, 60, r) layer-2 maps of the landmarks
    inner = np.einsum("pir,pjr->pij", F2, F2)
    assert np.abs(inner - K2).max() <= 1e-4 * np.abs(K2).max()
    # and the whole network reproduces the DKN output kernel
    assert net.re_train_["re_abs"] < 1e-2


def test_unit_maps_use_the_kernels_module_kpca(data):
    """build_projections takes each unit's projection from genrecli.kernels.maps.kpca_projection (one KPCA)."""
    from genrecli.kernels.maps import kpca_projection

    W = torch.as_tensor(data["dkn"].weights_[0])
    G = torch.from_numpy(data["G"][:, :60])
    G = 0.5 * (G + G.transpose(1, 2))
    P, ranks, Kz = build_projections(W, G, Activation("exp"), 0.99, 1e-10)
    assert P.shape[:2] == (16, 60) and len(ranks) == 16
    for p in (0, 3, 15):
        theirs = kpca_projection(Kz[p], energy=0.99, rel_eps=1e-10)  # a tensor in, a tensor out
        assert isinstance(theirs, torch.Tensor) and theirs.dtype == Kz.dtype and theirs.shape[1] == ranks[p]
        assert torch.equal(P[p, :, : ranks[p]], theirs)
        assert not P[p, :, ranks[p]:].any()  # padding
        K = Kz[p].double()
        R = theirs.double() @ theirs.double().T
        # it reproduces the landmark Gram to the energy kept
        assert float(torch.linalg.norm(K @ R @ K - K) / torch.linalg.norm(K)) < 0.05
    # numpy in, numpy out: the same projection
    P3 = kpca_projection(Kz[3].numpy(), energy=0.99, rel_eps=1e-10)
    np.testing.assert_array_equal(P3, P[3, :, : ranks[3]].numpy())
    # a unit whose kernel is 0 gets a zero map instead of an error
    assert not kpca_projection(torch.zeros(5, 5), allow_empty=True).any()


@pytest.mark.parametrize("constraint, gain", [("simplex", 0.99), ("nonneg", 0.95)])
def test_finetuning_lowers_training_loss_and_moves_away_from_the_dkn(initial, data, constraint, gain):
    # Under the simplex the kernel scale is fixed, so the loss falls more slowly than with w >= 0 alone.
    net = DM2KMNClassifier(data["dkn"], ft_lr=1e-2, ft_epochs=15, ft_constraint=constraint, random_state=0)
    net.fit_gram(data["G"][:, :60], data["y"][:60], map_grams=data["M"][:, :60], modalities=MODS)
    losses = [h["loss"] for h in net.ft_history_]
    assert len(losses) == 15
    assert losses[-1] < gain * losses[0]
    if constraint == "simplex":
        assert all(np.allclose(w.sum(0), 1.0, atol=1e-4) for w in net.weights_)
    assert all(np.all(w >= 0) for w in net.weights_)
    assert net.re_train_["re_abs"] > net.re_train_initial_["re_abs"]
    ri = net.extra_metrics()
    assert np.isclose(sum(ri["ri_dm2kmn"]["per_kernel"]), 100.0)
    assert np.isclose(sum(ri["ri_dm2kmn"]["per_modality"].values()), 100.0)
    assert not np.allclose(ri["ri_dm2kmn"]["per_kernel"], ri["ri_dkn"]["per_kernel"])  # RI follows the weights


def test_cv_model_selection_records_choices(data):
    net = DM2KMNClassifier(dkn=DKNClassifier(hidden=4, max_iter=10, C=1.0), ft_lr_grid=(1e-3, 1e-2),
                           ft_max_epochs=4, ft_eval_every=2, random_state=0)
    net.fit_gram(data["G"][:, :60], data["y"][:60], map_grams=data["M"][:, :60])
    assert net.C_ == 1.0  # the DKN's C
    # one CV score per lr and checkpoint (epochs 0, 2, 4); the choice is a best one (which of tied candidates
    # wins is pinned by test_finetune_selection_matches_a_reference_loop, not by fixed values that depend on
    # the machine's float rounding)
    assert set(net.ft_cv_) == {"0.001", "0.01"} and all(len(v) == 3 for v in net.ft_cv_.values())
    assert net.ft_lr_ in (1e-3, 1e-2) and net.ft_epochs_ in (0, 2, 4)
    best = max(max(v) for v in net.ft_cv_.values())
    assert net.ft_cv_[str(net.ft_lr_)][net.ft_epochs_ // 2] >= best - 1e-12


def test_finetune_curves_are_fold_means_of_real_diagnostics(data):
    """ft_curves_: per lr, one point per checkpoint; the val_acc curve averages the folds' validation
    accuracies, epoch 0 is the SVM-initialised network (no prediction changed, RE as the initial map's), and
    the curves, history and CV table survive a state round trip and reach the extra metrics."""
    net = DM2KMNClassifier(dkn=DKNClassifier(hidden=4, max_iter=10, C=1.0), ft_lr_grid=(1e-3, 1e-1),
                           ft_max_epochs=4, ft_eval_every=2, random_state=0)
    folds = []
    original = net._finetune

    def spy(*args):
        out = original(*args)
        if args[-2] is not None:
            folds.append((args[-4], out[4]))
        return out

    net._finetune = spy
    net.fit_gram(data["G"][:, :60], data["y"][:60], map_grams=data["M"][:, :60])
    assert set(net.ft_curves_) == {"0.001", "0.1"}
    for lr, curve in net.ft_curves_.items():
        assert curve["epoch"] == [0, 2, 4]
        runs = [h for rate, h in folds if f"{rate:g}" == lr]
        assert len(runs) == 5  # the DKN's cv folds
        np.testing.assert_allclose(curve["val_acc"], np.mean([[p["val_acc"] for p in h] for h in runs], 0))
        assert curve["val_changed"][0] == 0.0
        assert all(0.0 <= v <= 1.0 for key in ("train_acc", "active", "val_acc") for v in curve[key])
        assert all(np.isfinite(curve["loss"])) and all(r >= 0 for r in curve["re"])
    # epoch 0: identical for every rate (no step taken yet)
    a, b = net.ft_curves_["0.001"], net.ft_curves_["0.1"]
    assert a["re"][0] == pytest.approx(b["re"][0]) and a["train_acc"][0] == pytest.approx(b["train_acc"][0])
    # a large rate moves the maps away from the DKN: RE grows over the epochs
    assert b["re"][-1] > b["re"][0]
    extra = net.extra_metrics()
    assert extra["finetune_curves"] == net.ft_curves_
    assert extra["finetune_cv_best"] == pytest.approx(max(max(v) for v in net.ft_cv_.values()))
    loaded = DM2KMNClassifier(dkn=DKNClassifier(hidden=4, max_iter=10, C=1.0), ft_lr_grid=(1e-3, 1e-1),
                              ft_max_epochs=4, ft_eval_every=2, random_state=0).load_state_dict(net.state_dict())
    assert loaded.ft_curves_ == net.ft_curves_ and loaded.ft_cv_ == net.ft_cv_
    assert loaded.ft_history_ == net.ft_history_


def test_finetune_selection_matches_a_reference_loop(data):
    """The (lr, epochs) choice equals a hand-written loop over the same folds, runs and scorer."""
    from genrecli.models.dm2kmn import _linear_svm_heads
    from genrecli.models.selection import cv_folds, label_score

    net = DM2KMNClassifier(dkn=DKNClassifier(hidden=4, max_iter=10, C=1.0), ft_lr_grid=(1e-3, 1e-2),
                           ft_max_epochs=4, ft_eval_every=2, random_state=0)
    calls = []
    original = net._finetune

    def spy(ctx, Ws, Ps, Wc, bc, rows, y_idx, n_classes, omega, C, K_dkn, lr, epochs, val, seed):
        out = original(ctx, Ws, Ps, Wc, bc, rows, y_idx, n_classes, omega, C, K_dkn, lr, epochs, val, seed)
        if val is not None:
            calls.append((rows, val[0], lr, [h["val_score"] for h in out[4] if "val_score" in h]))
            # the recorded score is the balanced accuracy of the validation predictions
            assert all(0.0 <= v <= 1.0 for v in calls[-1][3])
        return out

    net._finetune = spy
    y = data["y"][:60]
    net.fit_gram(data["G"][:, :60], y, map_grams=data["M"][:, :60])
    folds = cv_folds(y, 5, seed=0)
    assert len(calls) == 2 * len(folds)
    for (tr, va), (rows_a, va_a, _, _) in zip(folds, calls[::2]):
        assert np.array_equal(tr, rows_a) and np.array_equal(va, va_a)  # the former StratifiedKFold folds
    table = {lr: np.zeros(3) for lr in (1e-3, 1e-2)}
    for _, _, lr, scores in calls:
        table[lr] += np.asarray(scores) / len(folds)
    best = max(t.max() for t in table.values())
    expected = next((lr, ep) for j, ep in enumerate((0, 2, 4)) for lr in (1e-3, 1e-2) if table[lr][j] >= best - 1e-12)
    assert (net.ft_lr_, net.ft_epochs_) == expected
    for lr in (1e-3, 1e-2):
        np.testing.assert_allclose(net.ft_cv_[f"{lr:g}"], table[lr], rtol=1e-12)
    assert label_score([0, 0, 1, 2], [0, 1, 1, 2]) == pytest.approx((0.5 + 1 + 1) / 3)


def test_landmarks_keep_memory_linear_in_n(data):
    X, y, dims = data["X"], data["y"], data["dims"]
    net = DM2KMNClassifier(DKNClassifier(input_dims=dims, hidden=8, max_iter=20, C=1.0), landmarks=25, finetune=True,
                           ft_lr=1e-3, ft_epochs=2, random_state=0).fit(X[:60], y[:60])
    assert len(net.landmarks_) == 25 and net.dkn_.n_train_ == 25  # the DKN is trained on the landmarks
    G = net._map_grams(X[:60])
    assert G.shape == (8, 60, 25)  # n x N, never n x n
    assert all(f.shape[1] == 25 for f in net.landmark_maps_) and all(p.shape[1] == 25 for p in net.projections_)
    assert net.predict(X[60:]).shape == (30,)
    assert net.extra_metrics()["landmarks"] == 25


def _feature_net(dims, **kw):
    dkn = DKNClassifier(input_dims=dims, modality_names=("melody", "rhythm"), hidden=8, max_iter=20, C=1.0)
    return DM2KMNClassifier(dkn, ft_lr=1e-3, ft_epochs=3, random_state=0, **kw)


@pytest.mark.parametrize("landmarks", ["all", 40])
def test_state_dict_round_trip_feature_level(data, tmp_path, landmarks):
    """After fit(X, y) the state alone (input maps, landmarks, DKN) scores new feature rows identically."""
    from safetensors.numpy import load_file, save_file

    X, y, dims = data["X"], data["y"], data["dims"]
    net = _feature_net(dims, landmarks=landmarks).fit(X[:60], y[:60])
    state = net.state_dict()
    assert all(isinstance(v, np.ndarray) and v.dtype.kind in "iufb" for v in state.values())
    assert any(k.startswith("inmap.") for k in state) and any(k.startswith("dkn_model.kernel.") for k in state)
    save_file(state, tmp_path / "m.safetensors")
    loaded = _feature_net(dims, landmarks=landmarks).load_state_dict(load_file(tmp_path / "m.safetensors"))
    X_new = X[60:]
    assert np.array_equal(loaded.decision_function(X_new), net.decision_function(X_new))
    assert np.array_equal(loaded.predict(X_new), net.predict(X_new))
    assert np.array_equal(loaded.dkn_.decision_function(X_new), net.dkn_.decision_function(X_new))
    assert np.array_equal(loaded.landmarks_, net.landmarks_) and loaded.input_names_ == net.input_names_
    assert loaded.relative_importance() == net.relative_importance()
    a, b = net.extra_metrics_features(X_new, repeats=1), loaded.extra_metrics_features(X_new, repeats=1)
    assert a["re_test"] == b["re_test"] and a["ri_dkn"] == b["ri_dkn"]


def test_the_maps_of_a_block_share_one_training_rows_array_after_fit_and_load(data):
    """maps.share_training_rows: equal preprocessed training rows (linear, poly2, rbf and its all-row landmarks)
    are one array after fit and after load_state_dict, and the forward scores exactly as with separate copies."""
    X, y, dims = data["X"], data["y"], data["dims"]
    net = _feature_net(dims).fit(X[:60], y[:60])
    loaded = _feature_net(dims).load_state_dict(net.state_dict())
    per_block = len(net.dkn_.kernels)
    for model in (net, loaded):
        for start in range(0, len(model.maps_), per_block):
            by_kernel = {em.kernel: em for em in model.maps_[start:start + per_block]}
            rows = by_kernel["linear"].kernel_.X_fit_
            assert by_kernel["poly2"].kernel_.X_fit_ is rows and by_kernel["rbf"].kernel_.X_fit_ is rows
            assert by_kernel["rbf"].landmarks_ is rows
    scores = net.decision_function(X[60:])
    for em in net.maps_:  # separate copies, as before the sharing
        em.kernel_.X_fit_ = em.kernel_.X_fit_.copy()
        if em.kernel == "rbf":
            em.landmarks_ = em.kernel_.X_fit_ if em.landmarks == "all" else em.landmarks_.copy()
    assert np.array_equal(net.decision_function(X[60:]), scores)
    assert np.array_equal(loaded.decision_function(X[60:]), scores)


def test_extra_metrics_from_feature_rows(data):
    """RE / RI / forward times of the DM2KMN and its DKN from test feature rows, in one call."""
    X, y, dims = data["X"], data["y"], data["dims"]
    net = DM2KMNClassifier(DKNClassifier(input_dims=dims, hidden=8, max_iter=20, C=1.0), finetune=False,
                           random_state=0).fit(X[:60], y[:60])
    m = net.extra_metrics_features(X[60:], repeats=1)
    for key in ("forward_time_dkn_s", "forward_time_dm2kmn_s", "network_time_dkn_s", "network_time_dm2kmn_s"):
        assert m[key] > 0, key
    assert m["n_test"] == 30 and m["landmarks"] == 60
    assert 0 < m["re_test"]["re_abs"] < 5.0  # initial DM2KMN: close to its DKN
    assert np.isclose(sum(m["ri_dm2kmn"]["per_kernel"]), 100.0) and np.isclose(sum(m["ri_dkn"]["per_kernel"]), 100.0)
    # the same RE as the Gram-level path on the same rows
    G = net.dkn_._grams(X[60:])
    M = net._map_grams(X[60:], shared=True)
    assert m["re_test"] == relative_error(net.map_inner(M), net.dkn_.output_gram(G))
    d = net.dkn_.extra_metrics_features(X[60:], repeats=1)
    assert d["forward_time_dkn_s"] > 0 and d["network_time_dkn_s"] > 0 and d["n_test"] == 30


@pytest.mark.parametrize("landmarks", ["all", 40])
def test_forward_on_shared_map_products_equals_the_per_map_forward(data, landmarks):
    """Prediction builds a modality's input Grams with one shared validation and product
    (maps.map_grams_block); the fit's per-map map_gram gives the same Grams and scores to float32 rounding."""
    X, y, dims = data["X"], data["y"], data["dims"]
    net = _feature_net(dims, landmarks=landmarks).fit(X[:60], y[:60])
    per_map, shared = net._map_grams(X[60:]), net._map_grams(X[60:], shared=True)
    for a, b in zip(per_map, shared):  # rbf: float32 cancellation in the distances, up to about 1e-5
        assert np.abs(a - b).max() <= 3e-5 * np.abs(a).max()
    reference = net._heads(per_map)
    np.testing.assert_allclose(net._heads_features(X[60:]), reference, rtol=1e-4, atol=1e-5)
    labels = net.classes_[heads_to_scores(reference, len(net.classes_)).argmax(1)]
    assert np.array_equal(net.predict(X[60:]), labels)


def test_dkn_parameter_cloned_or_used_as_is(data):
    X, y, dims = data["X"], data["y"], data["dims"]
    template = DKNClassifier(input_dims=dims, hidden=4, max_iter=5, C=1.0, random_state=7)
    net = DM2KMNClassifier(template, finetune=False, random_state=3).fit(X[:60], y[:60])
    assert net.dkn_ is not template and not hasattr(template, "weights_")  # cloned, the parameter untouched
    assert net.dkn_.random_state == 3 and net.dkn_.device == "cpu"  # the DM2KMN's seed and device passed on
    assert template.random_state == 7
    # a fitted DKN is used as is
    again = DM2KMNClassifier(net.dkn_, finetune=False, random_state=3).fit(X[:60], y[:60])
    assert again.dkn_ is net.dkn_
    assert np.array_equal(again.decision_function(X[60:]), net.decision_function(X[60:]))
    with pytest.raises(ValueError, match="landmarks"):  # its training rows must be the landmarks
        DM2KMNClassifier(net.dkn_, landmarks=30, finetune=False).fit(X[:60], y[:60])
    # nested parameters, scikit-learn style
    params = DM2KMNClassifier(template).get_params()
    assert params["dkn__hidden"] == 4 and params["dkn__input_dims"] == dims
    assert DM2KMNClassifier(DKNClassifier()).set_params(dkn__hidden=6).dkn.hidden == 6


def test_gram_and_feature_paths_agree(data):
    X, y, dims = data["X"], data["y"], data["dims"]
    dkn = dict(hidden=8, max_iter=20, C=1.0)
    feat = DM2KMNClassifier(DKNClassifier(input_dims=dims, **dkn), finetune=False, random_state=0).fit(X[:60], y[:60])
    gram = DM2KMNClassifier(DKNClassifier(**dkn), finetune=False, random_state=0).fit_gram(
        data["G"][:, :60], y[:60], map_grams=data["M"][:, :60])
    a = feat.decision_function(X[60:])
    b = gram.decision_gram(data["G"][:, 60:], map_grams_test=data["M"][:, 60:])
    np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-3 * np.abs(b).max())


def test_inference_operators_built_once_and_match_the_factored_network(initial, data):
    """The cached inference operators (Q_p = P_p Fz_p^T built once) score as the map network computed from
    scratch by its factors (propagate: landmark maps recomputed from their Grams, then head_scores)."""
    import pickle

    M_te, M_zz = data["M"][:, 60:], data["M"][:, :60, :60]
    first = initial._heads(M_te)
    operators = initial._inference_operators()
    assert initial._inference_operators() is operators  # reused, not rebuilt
    assert np.array_equal(initial._heads(M_te), first)
    g = initial._activation()
    as_t = lambda arrays: [torch.as_tensor(a) for a in arrays]  # noqa: E731
    with torch.no_grad():
        F_top, _ = propagate(as_t(initial.weights_), as_t(initial.projections_), g, torch.as_tensor(M_zz),
                             torch.as_tensor(M_te))
        reference = head_scores(F_top, torch.as_tensor(initial.coef_), torch.as_tensor(initial.intercept_)).numpy()
    np.testing.assert_allclose(first, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())
    # replaced arrays (a new fit or load) rebuild the operators; a pickle leaves the cache behind
    other = DM2KMNClassifier(dkn=data["dkn"], finetune=False, energy=0.9, random_state=0).fit_gram(
        data["G"][:, :60], data["y"][:60], map_grams=data["M"][:, :60], modalities=MODS)
    swapped = pickle.loads(pickle.dumps(initial))
    assert np.array_equal(swapped._heads(M_te), first)
    swapped.load_state_dict(other.state_dict())
    assert np.array_equal(swapped._heads(M_te), other._heads(M_te))
    assert not np.allclose(swapped._heads(M_te), first)


def test_cache_sized_inference_chunks_score_as_one_block(initial, data, monkeypatch):
    """_heads runs the CPU network in row chunks of _HEADS_CHUNK_BYTES with the activation in place; the scores
    are those of a single chunk to float32 rounding (rows are independent), down to a chunk of one row."""
    import genrecli.models.dm2kmn as dm2kmn_module

    M_te = data["M"][:, 60:]
    monkeypatch.setattr(dm2kmn_module, "_HEADS_CHUNK_BYTES", 1 << 40)
    whole = initial._heads(M_te)
    for size in (1, 4 * 16 * M_te.shape[2] * 7):  # one row per chunk; 7 rows (the last chunk shorter)
        monkeypatch.setattr(dm2kmn_module, "_HEADS_CHUNK_BYTES", size)
        # float32 rounding only: a one-row chunk is a matrix-vector product, summed in another order
        np.testing.assert_allclose(initial._heads(M_te), whole, rtol=1e-5, atol=1e-5 * np.abs(whole).max())


@pytest.mark.parametrize("name", ["exp", "expm1", "cosh", "poly"])
def test_activation_in_place_equals_the_activation(name):
    u = torch.linspace(-3, 3, 301, dtype=torch.float32).reshape(7, 43)
    g = Activation(name)
    expected = g(u)
    v = u.clone()
    assert torch.equal(g.apply_(v), expected)


def test_predict_proba_only_with_cross_entropy(data):
    X, y, dims = data["X"], data["y"], data["dims"]
    dkn = DKNClassifier(input_dims=dims, hidden=4, max_iter=5, C=1.0)
    hinge = DM2KMNClassifier(dkn, finetune=False)
    assert not hasattr(hinge, "predict_proba")
    xent = DM2KMNClassifier(dkn, loss="xent", ft_lr=1e-3, ft_epochs=2)
    P = xent.fit(X[:60], y[:60]).predict_proba(X[60:])
    assert P.shape == (30, 3) and np.allclose(P.sum(1), 1.0)


def test_relative_error_formulas():
    K = np.array([[2.0, 1.0], [1.0, 2.0]])
    A = K + np.array([[0.1, -0.1], [0.0, 0.0]])
    re = relative_error(A, K)
    assert np.isclose(re["re_abs"], 100 * 0.2 / 6)
    assert np.isclose(re["re_fro"], 100 * np.sqrt(0.02) / np.sqrt(10))


DM2KMN_EXPECTED_FAILED = FLOAT32_INVARIANCE_FAILURES


def test_check_estimator():
    from sklearn.utils.estimator_checks import check_estimator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(
            DM2KMNClassifier(DKNClassifier(hidden=4, max_iter=5, svm_every=5, C=1.0), ft_lr=1e-3, ft_epochs=2),
            expected_failed_checks=DM2KMN_EXPECTED_FAILED, on_fail=None)
    failed = [r["check_name"] for r in results if r["status"] == "failed"]
    assert not failed, failed


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
def test_cuda_matches_cpu(data):
    kw = dict(ft_lr=1e-3, ft_epochs=3, random_state=0)
    dkn = DKNClassifier(hidden=8, max_iter=20, C=1.0)
    cpu = DM2KMNClassifier(dkn, **kw).fit_gram(data["G"][:, :60], data["y"][:60], map_grams=data["M"][:, :60])
    gpu = DM2KMNClassifier(dkn, device="cuda", **kw).fit_gram(data["G"][:, :60], data["y"][:60],
                                                              map_grams=data["M"][:, :60])
    assert gpu.dkn_.device == "cuda"
    a = cpu.decision_gram(data["G"][:, 60:], map_grams_test=data["M"][:, 60:])
    b = gpu.decision_gram(data["G"][:, 60:], map_grams_test=data["M"][:, 60:])
    np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-2 * np.abs(a).max())


def test_a_diverging_finetune_stops_at_its_last_finite_epoch(data):
    """Unfrozen projections at a large rate blow up; the run stops at the last finite epoch instead of failing
    in the simplex projection of NaN weights (the kern-eras study's train_projections crash), in the CV
    (the diverged candidate scores 0 afterwards) and in the final fit."""
    net = DM2KMNClassifier(dkn=DKNClassifier(hidden=4, max_iter=10, C=1.0), train_projections=True, ft_lr=1e3,
                           ft_epochs=5, random_state=0)
    net.fit_gram(data["G"][:, :60], data["y"][:60], map_grams=data["M"][:, :60])
    assert all(np.isfinite(w).all() for w in net.weights_) and all(np.isfinite(p).all() for p in net.projections_)
    assert len(net.ft_history_) < 5 and all(np.isfinite(h["loss"]) for h in net.ft_history_)
    assert np.isfinite(net.decision_gram(data["G"][:, 60:], map_grams_test=data["M"][:, 60:])).all()
    cv = DM2KMNClassifier(dkn=DKNClassifier(hidden=4, max_iter=10, C=1.0), train_projections=True,
                          ft_lr_grid=(1e-3, 1e3), ft_max_epochs=4, ft_eval_every=2, random_state=0)
    cv.fit_gram(data["G"][:, :60], data["y"][:60], map_grams=data["M"][:, :60])
    assert cv.ft_lr_ == 1e-3 or cv.ft_epochs_ == 0
