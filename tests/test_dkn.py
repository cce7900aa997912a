"""Deep kernel network: PSD output kernels, Danskin gradient, training, RI, persistence, sklearn contract.

Real data: tunes of O'Neill's Music of Ireland (1850), bundled with music21 as ABC text, labelled by dance
type (reel / jig / hornpipe). Two modalities are read off the tune body (headers dropped): melody histograms
and rhythm histograms (see :func:`oneill_dances`; also used by test_dm2kmn.py).
"""

from __future__ import annotations

import functools
import glob
import os
import re
import warnings

import numpy as np
import pytest
import torch
from conftest import FLOAT32_INVARIANCE_FAILURES

from genrecli.models.dkn import (
    ACTIVATIONS,
    Activation,
    DKNClassifier,
    _danskin_grad,
    dkn_forward,
    init_dkn_weights,
    layer_widths,
    project_simplex,
    relative_importance,
)

# ------------------------------------------------------------------------------------------- real music data

_LABELS = {"reel": 0, "jig": 1, "double jig": 1, "hornpipe": 2}
_NOTE = re.compile(r"([_^=]?)([A-Ga-g])([,']*)(\d*/?\d*)")
_STEP = {c: i for i, c in enumerate("CDEFGAB")}
_LENGTHS = ["", "2", "3", "4", "/2", "/", "6", "8"]


def _tunes():
    music21 = pytest.importorskip("music21")
    root = os.path.join(os.path.dirname(music21.__file__), "corpus", "oneills1850")
    tunes = []
    for path in sorted(glob.glob(os.path.join(root, "*.abc"))):
        with open(path, encoding="latin-1") as fh:
            text = fh.read()
        for block in re.split(r"\n\s*\n(?=X:)", text):
            m = re.search(r"^R:\s*(.+)$", block, re.M)
            label = _LABELS.get(m.group(1).strip().lower()) if m else None
            if label is None:
                continue
            lines = block.splitlines()
            k = next((i for i, line in enumerate(lines) if line.startswith("K:")), None)
            if k is not None:
                body = "\n".join(line for line in lines[k + 1:] if not re.match(r"^[A-Za-z]:", line))
                tunes.append((label, body))
    if len(tunes) < 100:
        pytest.skip("music21's oneills1850 corpus is not installed")
    return tunes


def _features(body: str):
    body = re.sub(r'"[^"]*"|!\w+!|\{[^}]*\}', "", body)
    notes = _NOTE.findall(body)
    pitches = np.array([_STEP[letter.upper()] + (7 if letter.islower() else 0) + 7 * octs.count("'")
                        - 7 * octs.count(",") for _, letter, octs, _ in notes])
    melody = np.concatenate([np.bincount(pitches % 7, minlength=7),
                             np.bincount(np.clip(pitches // 7, 0, 3), minlength=4),
                             np.bincount(np.clip(np.diff(pitches) + 7, 0, 14), minlength=15)]).astype(float)
    lengths: dict = {}
    for *_, dur in notes:
        lengths[dur] = lengths.get(dur, 0) + 1
    bars = [b for b in body.split("|") if b.strip()]
    per_bar = np.array([len(_NOTE.findall(b)) for b in bars]) if bars else np.zeros(1, dtype=int)
    rhythm = np.concatenate([[lengths.get(k, 0) for k in _LENGTHS],
                             [body.count(">"), body.count("<"), body.count("|"), body.count("(3")],
                             np.bincount(np.clip(per_bar, 0, 15), minlength=16)]).astype(float)
    return melody / melody.sum(), rhythm / max(rhythm.sum(), 1.0)


@functools.lru_cache(maxsize=4)
def oneill_dances(per_class: int = 30, seed: int = 0):
    """(X, y, dims): [melody (26) | rhythm (28)] features of per_class tunes per dance type, y in {0, 1, 2}."""
    tunes = _tunes()
    rng = np.random.RandomState(seed)
    rows, y = [], []
    for c in range(3):
        idx = [i for i, t in enumerate(tunes) if t[0] == c]
        for i in rng.choice(idx, per_class, replace=False):
            rows.append(np.concatenate(_features(tunes[i][1])))
            y.append(c)
    return np.asarray(rows), np.asarray(y), (26, 28)


def elementary_grams(X, dims, kernels=("linear", "poly2", "rbf", "hist"), n_train=None):
    """(m, n, n_train) scaled elementary Grams of X against its first n_train rows (real kernels module)."""
    from genrecli.kernels.elementary import ElementaryKernel

    n_train = n_train or len(X)
    out, s = [], 0
    for d in dims:
        for k in kernels:
            ek = ElementaryKernel(k).fit(X[:n_train, s:s + d])
            out.append(ek.transform(X[:, s:s + d]))
        s += d
    return np.stack(out).astype(np.float32)


@pytest.fixture(scope="module")
def dances():
    X, y, dims = oneill_dances(30)
    rng = np.random.RandomState(1)
    perm = rng.permutation(len(y))
    X, y = X[perm], y[perm]
    G = elementary_grams(X, dims, n_train=60)
    return {"X": X, "y": y, "dims": dims, "Gtr": G[:, :60], "Gte": G[:, 60:], "ytr": y[:60], "yte": y[60:]}


def _min_eig_ratio(K):
    K = np.asarray(K, dtype=np.float64)
    ev = np.linalg.eigvalsh(0.5 * (K + K.T))
    return ev.min() / ev.max()


# ------------------------------------------------------------------------------------------- building blocks


def test_simplex_projection_properties():
    W = torch.randn(7, 5) * 3
    P = project_simplex(W)
    assert torch.all(P >= 0)
    assert torch.allclose(P.sum(0), torch.ones(5), atol=1e-6)
    assert torch.allclose(project_simplex(P), P, atol=1e-6)  # idempotent on the simplex
    # it is the closest simplex point: better than a few random simplex points
    for _ in range(20):
        Q = project_simplex(torch.rand(7, 5))
        assert torch.all(((W - P) ** 2).sum(0) <= ((W - Q) ** 2).sum(0) + 1e-5)


def test_poly_activation_rejects_negative_coefficients():
    from genrecli.errors import UsageError

    with pytest.raises(UsageError):
        Activation("poly", (1.0, -0.5))
    with pytest.raises(UsageError):
        Activation("tanh")


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_output_kernel_psd_for_random_weights(dances, activation):
    K = torch.from_numpy(dances["Gtr"])
    gen = torch.Generator().manual_seed(3)
    for depth in (3, 4):
        widths = layer_widths(K.shape[0], 1, depth, 16)
        Ws = [torch.as_tensor(w) for w in init_dkn_weights(widths, gen)]
        Ws = [project_simplex(torch.rand(w.shape, generator=gen)) for w in Ws]  # arbitrary simplex weights
        Kout = dkn_forward(Ws, K, Activation(activation))
        assert Kout.shape == (1, 60, 60)
        assert _min_eig_ratio(Kout[0]) >= -1e-5


def test_danskin_gradient_matches_autograd(dances):
    """The hand-written back-propagation equals autograd on -1/2 sum_h beta_h^T K_out(w) beta_h."""
    K = torch.from_numpy(dances["Gtr"]).double()
    gen = torch.Generator().manual_seed(0)
    for activation, depth, n_out, mode in [("exp", 3, 1, "simplex"), ("cosh", 4, 1, "simplex"),
                                           ("poly", 3, 3, "simplex"), ("expm1", 3, 1, "softplus")]:
        widths = layer_widths(K.shape[0], n_out, depth, 5)
        thetas = [torch.as_tensor(w, dtype=torch.float64).requires_grad_(True)
                  for w in init_dkn_weights(widths, gen)]
        B = torch.randn(3, K.shape[1], generator=gen, dtype=torch.float64)
        g = Activation(activation)
        got = _danskin_grad(thetas, mode, K, B, g, n_out > 1)

        from genrecli.models.dkn import _theta_to_weights, combine

        ref_t = [t.detach().clone().requires_grad_(True) for t in thetas]
        A = K
        for W in _theta_to_weights(ref_t, mode):
            A = combine(W, A, g)
        if n_out > 1:
            f = -0.5 * torch.einsum("hi,hij,hj->", B, A, B)
        else:
            f = -0.5 * torch.einsum("hi,ij,hj->", B, A[0], B)
        f.backward()
        for a, b in zip(got, ref_t):
            assert torch.allclose(a, b.grad, rtol=1e-8, atol=1e-8 * float(b.grad.abs().max())), activation


def test_relative_importance_sums_to_100_and_follows_weights():
    W1 = np.full((8, 16), 1 / 8)
    W2 = np.full((16, 1), 1 / 16)
    mods = ["audio"] * 4 + ["text"] * 4
    ri = relative_importance([W1, W2], mods)
    assert np.isclose(sum(ri["per_kernel"]), 100.0)
    assert np.allclose(ri["per_kernel"], 12.5)
    assert np.isclose(ri["per_modality"]["audio"], 50.0)
    W1b = W1.copy()
    W1b[2] *= 5  # input 2 feeds every hidden unit 5x more
    ri_b = relative_importance([W1b, W2], mods)
    assert np.isclose(sum(ri_b["per_kernel"]), 100.0)
    assert ri_b["per_kernel"][2] > 12.5 * 2 and ri_b["per_modality"]["audio"] > 50.0
    # hidden units that the output ignores do not count
    W2c = np.zeros((16, 1))
    W2c[0] = 1.0
    W1c = W1.copy()
    W1c[:, 0] = 0.0
    W1c[5, 0] = 1.0
    assert np.isclose(relative_importance([W1c, W2c])["per_kernel"][5], 100.0)


# ------------------------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def trained(dances):
    model = DKNClassifier(hidden=16, max_iter=80, svm_every=10, random_state=0)
    model.fit_gram(dances["Gtr"], dances["ytr"], modalities=["melody"] * 4 + ["rhythm"] * 4)
    return model


def test_training_decreases_dual_objective(trained):
    J = [j for _, j in trained.history_]
    assert len(J) >= 3
    assert min(J) < J[0] - 1e-3 * abs(J[0])
    assert trained.n_iter_ >= 10


def test_trained_output_kernel_is_psd_and_weights_on_simplex(trained, dances):
    for W in trained.weights_:
        assert np.all(W >= 0)
        assert np.allclose(W.sum(0), 1.0, atol=1e-5)
    K = trained.output_gram(dances["Gtr"])[0]
    assert _min_eig_ratio(K) >= -1e-5


def test_accuracy_above_chance_and_scores_consistent(trained, dances):
    S = trained.decision_gram(dances["Gte"])
    assert S.shape == (30, 3)
    pred = trained.predict_gram(dances["Gte"])
    assert np.array_equal(pred, trained.classes_[S.argmax(1)])
    assert np.mean(pred == dances["yte"]) > 0.6  # 3 balanced classes: chance is 1/3
    ri = trained.relative_importance()
    assert np.isclose(sum(ri["per_kernel"]), 100.0) and set(ri["per_modality"]) == {"melody", "rhythm"}
    extra = trained.extra_metrics(dances["Gte"])
    assert extra["forward_time_dkn_s"] > 0 and extra["n_test"] == 30 and extra["ri_dkn"] == ri


def test_C_selection_unchanged_and_matches_a_reference_loop(trained, dances):
    """C by CV (genrecli.models.selection): the former folds, balanced accuracy, ties -> the smallest C."""
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold

    from genrecli.models.dkn import cv_select_C, heads_to_scores, ovr_targets, solve_svms, svm_scores

    assert (trained.C_train_, trained.C_) == (1.0, 0.1)  # the choices made before the refactor
    Kout = trained.output_gram(dances["Gtr"]).astype(np.float64)
    y = dances["ytr"]
    omega = trained.class_weight_
    grid = (10.0, 0.1, 1.0, 100.0)  # any order: ties still go to the smallest C
    C, scores = cv_select_C(Kout, y, 3, omega, grid, 5, 0)
    reference = {}
    for c in sorted(grid):
        fold = []
        for tr, va in StratifiedKFold(5, shuffle=True, random_state=0).split(np.zeros(len(y)), y):
            beta, b = solve_svms(Kout[:, tr][:, :, tr], ovr_targets(y, 3)[:, tr], omega[y][tr], c)
            pred = heads_to_scores(svm_scores(Kout[:, va][:, :, tr], beta, b), 3).argmax(1)
            fold.append(balanced_accuracy_score(y[va], pred))
        reference[c] = np.mean(fold)
    best = max(reference.values())
    assert C == min(c for c, v in reference.items() if v >= best - 1e-12)
    assert list(scores) == list(grid) and all(np.isclose(scores[c], reference[c], rtol=1e-12) for c in grid)
    few = np.array([0, 1, 2, 0])  # a class with a single row: no stratified folds
    assert cv_select_C(Kout[:, :4][:, :, :4], few, 3, omega, grid, 5, 0) == (10.0, {})


def test_class_weights_are_sklearn_balanced():
    from sklearn.utils.class_weight import compute_class_weight

    from genrecli.models.dkn import class_weights

    y = np.array([0, 0, 0, 1, 2, 2])
    np.testing.assert_array_equal(class_weights(y, 3, "balanced"),
                                  compute_class_weight("balanced", classes=np.arange(3), y=y))
    assert np.allclose(class_weights(y, 3, "balanced"), [6 / 9, 2.0, 1.0])
    assert np.array_equal(class_weights(y, 3, None), np.ones(3))
    assert np.array_equal(class_weights(y, 3, {"b": 2.5}, classes=np.array(["a", "b", "c"])), [1.0, 2.5, 1.0])
    assert np.allclose(class_weights(np.array([0, 0, 2]), 3, "balanced"), [0.5, 1.0, 1.0])  # class 1 absent


def test_deterministic_given_random_state(trained, dances):
    again = DKNClassifier(hidden=16, max_iter=80, svm_every=10, random_state=0)
    again.fit_gram(dances["Gtr"], dances["ytr"])
    for a, b in zip(again.weights_, trained.weights_):
        assert np.array_equal(a, b)


def test_state_dict_round_trip(trained, dances, tmp_path):
    from safetensors.numpy import load_file, save_file

    save_file(trained.state_dict(), tmp_path / "dkn.safetensors")
    loaded = DKNClassifier(hidden=16).load_state_dict(load_file(tmp_path / "dkn.safetensors"))
    assert np.array_equal(loaded.decision_gram(dances["Gte"]), trained.decision_gram(dances["Gte"]))
    assert np.array_equal(loaded.predict_gram(dances["Gte"]), trained.predict_gram(dances["Gte"]))


def test_feature_level_fit_matches_gram_level(dances):
    """fit(X) builds the same elementary Grams as the kernels module and trains the same DKN."""
    X, y, dims = dances["X"], dances["y"], dances["dims"]
    params = dict(hidden=16, max_iter=30, C=1.0, random_state=0)
    feat = DKNClassifier(input_dims=dims, modality_names=("melody", "rhythm"), **params).fit(X[:60], y[:60])
    gram = DKNClassifier(**params).fit_gram(dances["Gtr"], y[:60])
    np.testing.assert_allclose(feat.weights_[0], gram.weights_[0], atol=1e-5)
    np.testing.assert_allclose(feat.decision_function(X[60:]), gram.decision_gram(dances["Gte"]), rtol=1e-4,
                               atol=1e-4)
    assert set(feat.relative_importance()["per_modality"]) == {"melody", "rhythm"}
    with pytest.raises(ValueError):
        DKNClassifier(input_dims=(10, 10)).fit(X[:60], y[:60])


def test_state_dict_round_trip_feature_level(dances, tmp_path):
    """After fit(X, y) the state (elementary kernels included) alone scores new feature rows identically."""
    from safetensors.numpy import load_file, save_file

    X, y, dims = dances["X"], dances["y"], dances["dims"]
    params = dict(input_dims=dims, modality_names=("melody", "rhythm"), hidden=8, max_iter=20, C=1.0, random_state=0)
    model = DKNClassifier(**params).fit(X[:60], y[:60])
    state = model.state_dict()
    assert all(isinstance(v, np.ndarray) and v.dtype.kind in "iufb" for v in state.values())
    save_file(state, tmp_path / "dkn.safetensors")
    loaded = DKNClassifier(**params).load_state_dict(load_file(tmp_path / "dkn.safetensors"))
    assert np.array_equal(loaded.decision_function(X[60:]), model.decision_function(X[60:]))
    assert np.array_equal(loaded.predict(X[60:]), model.predict(X[60:]))
    assert loaded.input_names_ == model.input_names_ and loaded.relative_importance() == model.relative_importance()
    m = loaded.extra_metrics_features(X[60:], repeats=1)
    assert m["forward_time_dkn_s"] > 0 and m["network_time_dkn_s"] > 0 and m["n_test"] == 30
    assert m["ri_dkn"] == model.relative_importance()


def test_output_per_class_and_softplus_variant(dances):
    m = DKNClassifier(hidden=6, output="per-class", weights="softplus", activation="cosh", max_iter=20, C=1.0,
                      random_state=0).fit_gram(dances["Gtr"], dances["ytr"])
    assert m.weights_[-1].shape == (6, 3)
    K = m.output_gram(dances["Gtr"])
    assert K.shape == (3, 60, 60)
    assert all(_min_eig_ratio(K[c]) >= -1e-5 for c in range(3))
    assert m.decision_gram(dances["Gte"]).shape == (30, 3)


# ------------------------------------------------------------------------------------------- sklearn, devices

DKN_EXPECTED_FAILED = FLOAT32_INVARIANCE_FAILURES  # checks DKNClassifier cannot pass, and why


def test_check_estimator():
    from sklearn.utils.estimator_checks import check_estimator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(DKNClassifier(max_iter=10, svm_every=5, C=1.0),
                                  expected_failed_checks=DKN_EXPECTED_FAILED, on_fail=None)
    failed = [r["check_name"] for r in results if r["status"] == "failed"]
    assert not failed, failed


def test_params_are_json_serialisable():
    import json

    json.dumps(DKNClassifier(input_dims=(80, 384), hidden=16).get_params())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
def test_cuda_matches_cpu(dances):
    cpu = DKNClassifier(hidden=16, max_iter=20, C=1.0, random_state=0).fit_gram(dances["Gtr"], dances["ytr"])
    gpu = DKNClassifier(hidden=16, max_iter=20, C=1.0, random_state=0, device="cuda")
    gpu.fit_gram(dances["Gtr"], dances["ytr"])
    np.testing.assert_allclose(gpu.decision_gram(dances["Gte"]), cpu.decision_gram(dances["Gte"]), rtol=1e-3,
                               atol=1e-3)


def test_cuda_request_without_cuda_is_a_usage_error(dances):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    from genrecli.errors import UsageError

    with pytest.raises(UsageError):
        DKNClassifier(device="cuda", max_iter=2, C=1.0).fit_gram(dances["Gtr"], dances["ytr"])
