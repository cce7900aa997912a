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
    kpca_projection_torch,
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
    return DM2KMNClassifier(hidden=16, dkn=data["dkn"], finetune=False, random_state=0).fit_gram(
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


def test_maps_are_exact_for_linear_and_poly2_inputs(data):
    """linear + poly2 inputs, energy=1, landmarks=all: layer-2 map inner products = g(sum_q w_q K_q)."""
    G = np.ascontiguousarray(data["G"][[0, 1, 4, 5], :60])  # linear, poly2 of both modalities
    dkn = DKNClassifier(("linear", "poly2"), hidden=6, max_iter=20, C=1.0, random_state=0)
    dkn.fit_gram(G, data["y"][:60])
    net = DM2KMNClassifier(("linear", "poly2"), hidden=6, dkn=dkn, energy=1.0, finetune=False, C=1.0)
    net.fit_gram(G, data["y"][:60])
    g = Activation("exp")
    K2 = combine(torch.as_tensor(dkn.weights_[0]), torch.from_numpy(G), g).numpy()  # exact hidden kernels
    F2 = net.landmark_maps_[0]  # (6, 60, r) layer-2 maps of the landmarks
    inner = np.einsum("pir,pjr->pij", F2, F2)
    assert np.abs(inner - K2).max() <= 1e-4 * np.abs(K2).max()
    # and the whole network reproduces the DKN output kernel
    assert net.re_train_["re_abs"] < 1e-2


def test_kpca_projection_matches_the_kernels_module(data):
    from genrecli.kernels.maps import kpca_projection

    K = combine(torch.as_tensor(data["dkn"].weights_[0]), torch.from_numpy(data["G"][:, :60]),
                Activation("exp"))[3].double()
    ours = kpca_projection_torch(K, 0.99, rel_eps=1e-10).double()
    theirs = torch.as_tensor(np.asarray(kpca_projection(K, energy=0.99)), dtype=torch.float64)
    assert ours.shape == theirs.shape
    Q, R = ours @ ours.T, theirs @ theirs.T
    assert float((Q - R).abs().max()) <= 1e-4 * float(R.abs().max())
    # both reproduce the landmark Gram to the energy kept
    assert float(torch.linalg.norm(K @ R @ K - K) / torch.linalg.norm(K)) < 0.05


@pytest.mark.parametrize("constraint, gain", [("simplex", 0.99), ("nonneg", 0.95)])
def test_finetuning_lowers_training_loss_and_moves_away_from_the_dkn(initial, data, constraint, gain):
    # Under the simplex the kernel scale is fixed, so the loss falls more slowly than with w >= 0 alone.
    net = DM2KMNClassifier(hidden=16, dkn=data["dkn"], ft_lr=1e-2, ft_epochs=15, ft_constraint=constraint, random_state=0)
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
    net = DM2KMNClassifier(hidden=4, dkn=DKNClassifier(hidden=4, max_iter=10, C=1.0), ft_lr_grid=(1e-3, 1e-2),
                           ft_max_epochs=4, ft_eval_every=2, C=1.0, random_state=0)
    net.fit_gram(data["G"][:, :60], data["y"][:60], map_grams=data["M"][:, :60])
    assert net.ft_lr_ in (1e-3, 1e-2) and net.ft_epochs_ in (0, 2, 4)
    assert set(net.ft_cv_) == {"0.001", "0.01"} and all(len(v) == 3 for v in net.ft_cv_.values())


def test_landmarks_keep_memory_linear_in_n(data):
    X, y, dims = data["X"], data["y"], data["dims"]
    net = DM2KMNClassifier(input_dims=dims, hidden=8, landmarks=25, finetune=True, ft_lr=1e-3, ft_epochs=2,
                           max_iter=20, C=1.0, random_state=0).fit(X[:60], y[:60])
    assert len(net.landmarks_) == 25 and net.dkn_.n_train_ == 25  # the DKN is trained on the landmarks
    G = net._map_grams(X[:60])
    assert G.shape == (8, 60, 25)  # n x N, never n x n
    assert all(f.shape[1] == 25 for f in net.landmark_maps_) and all(p.shape[1] == 25 for p in net.projections_)
    assert net.predict(X[60:]).shape == (30,)
    assert net.extra_metrics()["landmarks"] == 25


def test_state_dict_round_trip_feature_level(data, tmp_path):
    from safetensors.numpy import load_file, save_file

    X, y, dims = data["X"], data["y"], data["dims"]
    params = dict(input_dims=dims, modality_names=("melody", "rhythm"), hidden=8, max_iter=20, C=1.0,
                  ft_lr=1e-3, ft_epochs=3, random_state=0)
    net = DM2KMNClassifier(**params).fit(X[:60], y[:60])
    save_file(net.state_dict(), tmp_path / "m.safetensors")
    loaded = DM2KMNClassifier(**params).load_state_dict(load_file(tmp_path / "m.safetensors"))
    assert np.array_equal(loaded.decision_function(X[60:]), net.decision_function(X[60:]))
    assert np.array_equal(loaded.predict(X[60:]), net.predict(X[60:]))
    assert loaded.relative_importance() == net.relative_importance()


def test_gram_and_feature_paths_agree(data):
    X, y, dims = data["X"], data["y"], data["dims"]
    common = dict(hidden=8, max_iter=20, C=1.0, finetune=False, random_state=0)
    feat = DM2KMNClassifier(input_dims=dims, **common).fit(X[:60], y[:60])
    gram = DM2KMNClassifier(**common).fit_gram(data["G"][:, :60], y[:60], map_grams=data["M"][:, :60])
    a = feat.decision_function(X[60:])
    b = gram.decision_gram(data["G"][:, 60:], map_grams_test=data["M"][:, 60:])
    np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-3 * np.abs(b).max())


def test_predict_proba_only_with_cross_entropy(data):
    X, y, dims = data["X"], data["y"], data["dims"]
    hinge = DM2KMNClassifier(input_dims=dims, hidden=4, max_iter=5, C=1.0, finetune=False)
    assert not hasattr(hinge, "predict_proba")
    xent = DM2KMNClassifier(input_dims=dims, hidden=4, max_iter=5, C=1.0, loss="xent", ft_lr=1e-3, ft_epochs=2)
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
            DM2KMNClassifier(hidden=4, max_iter=5, svm_every=5, C=1.0, ft_lr=1e-3, ft_epochs=2),
            expected_failed_checks=DM2KMN_EXPECTED_FAILED, on_fail=None)
    failed = [r["check_name"] for r in results if r["status"] == "failed"]
    assert not failed, failed


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
def test_cuda_matches_cpu(data):
    kw = dict(hidden=8, max_iter=20, C=1.0, ft_lr=1e-3, ft_epochs=3, random_state=0)
    cpu = DM2KMNClassifier(**kw).fit_gram(data["G"][:, :60], data["y"][:60], map_grams=data["M"][:, :60])
    gpu = DM2KMNClassifier(device="cuda", **kw).fit_gram(data["G"][:, :60], data["y"][:60],
                                                         map_grams=data["M"][:, :60])
    a = cpu.decision_gram(data["G"][:, 60:], map_grams_test=data["M"][:, 60:])
    b = gpu.decision_gram(data["G"][:, 60:], map_grams_test=data["M"][:, 60:])
    np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-2 * np.abs(a).max())
