"""The kernel-side baselines of genrecli.models.mkl: svm-concat, svm-late, mkl-average, easymkl."""

import numpy as np
import pytest

from genrecli.errors import UsageError
from genrecli.kernels.elementary import ElementaryKernel
from genrecli.models import get_model, load_model
from genrecli.models.kernel import GramCache
from genrecli.models.mkl import (
    AverageMKLModel, ConcatSVMModel, EasyMKLModel, LateFusionSVMModel, centroid_margin_qp, combine_grams,
    easymkl_weights, softmax,
)
from genrecli.models.svm import KernelSVM

from conftest import one_line

FAST_SVM = dict(C_grid=(0.1, 1.0, 10.0), cv=3)


def three_class(n_train=60, n_test=45, seed=0):
    """Two inputs: audio/a carries the classes on 2 of 6 dimensions, text/b weakly on 1 of 4."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    y = np.arange(n) % 3
    centres = np.array([[3, 0], [0, 3], [-3, -3]], dtype=float)  # distinct directions: kernels l2-normalise
    a = rng.normal(size=(n, 6))
    a[:, :2] += centres[y]
    b = rng.normal(size=(n, 4)) + 5.0
    b[:, 0] += 1.5 * y
    inputs = {"audio/a": a.astype(np.float32), "text/b": b.astype(np.float32)}
    tr, te = np.arange(n_train), np.arange(n_train, n)
    return {k: v[tr] for k, v in inputs.items()}, y[tr], {k: v[te] for k, v in inputs.items()}, y[te]


def fast(cls, **params):
    return cls(svm=KernelSVM(**FAST_SVM), random_state=0, **params)


# ------------------------------------------------------------------------------------ kernel weights
def test_combine_grams_is_the_hand_computed_weighted_sum():
    K1 = np.array([[1.0, 0.0], [0.0, 1.0]])
    K2 = np.array([[1.0, 1.0], [1.0, 1.0]])
    np.testing.assert_array_equal(combine_grams([K1, K2], [0.5, 0.5]), [[1.0, 0.5], [0.5, 1.0]])
    np.testing.assert_array_equal(combine_grams([K1, K2], [0.25, 0.75]), [[1.0, 0.75], [0.75, 1.0]])


def test_average_weights_are_1_over_m_and_the_gram_is_the_mean():
    tr, y, te, _ = three_class(n_train=30, n_test=7)
    model = fast(AverageMKLModel, kernels=("linear", "rbf"), scale="none").fit(tr, y)  # unscaled kernels, by hand
    assert model.pairs_ == [("audio/a", "linear"), ("audio/a", "rbf"), ("text/b", "linear"), ("text/b", "rbf")]
    assert np.all(model.weights_ == np.float32(0.25))
    # By hand: each kernel fitted on the training rows of its input, the four test Grams averaged.
    hand = [ElementaryKernel(k).fit(tr[name]).transform(te[name]) for name, k in model.pairs_]
    support = model.kernels_[0].X_fit_  # the kept (preprocessed) training rows of audio/a linear
    full_rows = ElementaryKernel("linear").fit(tr["audio/a"]).X_fit_
    rows = [int(np.flatnonzero(np.all(full_rows == r, axis=1))[0]) for r in support]
    expected = (hand[0] + hand[1] + hand[2] + hand[3]) / 4.0
    np.testing.assert_allclose(model.combined_gram(te), expected[:, rows], rtol=1e-5, atol=1e-6)


def test_easymkl_two_points_closed_form():
    # One row per class: gamma = (1, 1), so d_r = |phi_r(x+) - phi_r(x-)|^2 = K_r[0,0] + K_r[1,1] - 2 K_r[0,1].
    K1 = np.array([[1.0, 0.2], [0.2, 1.0]])
    K2 = np.array([[1.0, 0.8], [0.8, 1.0]])
    d = np.array([1.6, 0.4])
    np.testing.assert_allclose(easymkl_weights([K1, K2], np.array([0, 1]), lam=0.3), d / d.sum(), atol=1e-12)


def test_centroid_margin_qp_is_optimal():
    from scipy.optimize import minimize

    rng = np.random.default_rng(1)
    X = rng.normal(size=(14, 3))
    t = np.where(np.arange(14) < 6, 1.0, -1.0)
    K = X @ X.T + 0.1 * np.eye(14)
    gamma = centroid_margin_qp(K, t, tol=1e-10)
    Q = t[:, None] * K * t[None, :]
    assert np.all(gamma >= 0)
    np.testing.assert_allclose([gamma[t > 0].sum(), gamma[t < 0].sum()], [1.0, 1.0], atol=1e-12)
    cons = [{"type": "eq", "fun": lambda g, s=s: g[t == s].sum() - 1.0} for s in (1.0, -1.0)]
    ref = minimize(lambda g: g @ Q @ g, np.where(t > 0, 1 / 6, 1 / 8), jac=lambda g: 2 * Q @ g, method="SLSQP",
                   bounds=[(0, None)] * 14, constraints=cons, options={"ftol": 1e-14, "maxiter": 500})
    assert gamma @ Q @ gamma <= ref.fun + 1e-9


def _informative_and_noise(n=40, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    good = rng.normal(size=(n, 3))
    good[:, 0] += 3.0 * y
    noise = rng.normal(size=(n, 3))
    return [ElementaryKernel("linear").fit_transform(X) for X in (good, noise)], y


def test_easymkl_prefers_the_informative_kernel():
    grams, y = _informative_and_noise()
    for lam in (0.01, 0.1, 1.0):
        w = easymkl_weights(grams, y, lam=lam)
        assert w.sum() == pytest.approx(1.0) and np.all(w >= 0)
        assert w[0] > 0.85 and w[0] > 5 * w[1], (lam, w)
    # lam = 0 on classes whose hulls meet (the noise kernel's do, jointly too): no margin, uniform weights.
    np.testing.assert_allclose(easymkl_weights(grams, y, lam=0.0), [0.5, 0.5])


@pytest.mark.filterwarnings("ignore::UserWarning")  # MKLpy 0.6 transposes 1-d tensors
def test_easymkl_weights_match_mklpy():
    pytest.importorskip("MKLpy")
    torch = pytest.importorskip("torch")
    from MKLpy.algorithms import EasyMKL

    rng = np.random.default_rng(0)
    n = 45
    y = np.arange(n) % 3
    Xg = rng.normal(size=(n, 4)) + y[:, None]
    Xn = rng.normal(size=(n, 4))
    grams = [ElementaryKernel(k).fit_transform(X).astype(np.float64) for X in (Xg, Xn) for k in ("linear", "rbf")]
    KL = [torch.tensor(K) for K in grams]
    # Binary: the same problem (MKLpy solves it with libsvm, C=1e7) -> the same weights.
    yb = (y == 0).astype(int)
    ref = EasyMKL(lam=0.1).combine_kernels(KL, torch.tensor(yb)).weights.numpy()
    np.testing.assert_allclose(easymkl_weights(grams, yb, lam=0.1, tol=1e-8), ref, atol=1e-4)
    # Multi-class: MKLpy keeps one weight vector per one-vs-rest problem; ours is their mean.
    fitted = EasyMKL(lam=0.1).fit(KL, torch.tensor(y))
    ref = np.mean([s.weights.numpy() for s in fitted.solution.values()], axis=0)
    np.testing.assert_allclose(easymkl_weights(grams, y, lam=0.1, tol=1e-8), ref, atol=1e-4)


def test_easymkl_model_weights_the_informative_input():
    tr, y, te, yte = three_class()
    rng = np.random.default_rng(5)
    tr["text/b"], te["text/b"] = rng.normal(size=tr["text/b"].shape), rng.normal(size=te["text/b"].shape)  # noise
    model = fast(EasyMKLModel, kernels=("linear", "rbf")).fit(tr, y)
    w = model.kernel_weights()
    assert w["audio/a|linear"] > 2 * w["text/b|linear"] and w["audio/a|rbf"] > w["text/b|rbf"], w
    assert model.weights_.sum() == pytest.approx(1.0, abs=1e-6)
    assert np.mean(model.predict(te) == yte) > 0.8


def test_cached_grams_give_the_same_model():
    tr, y, te, _ = three_class(n_train=30, n_test=10)
    entries = {}
    for name in tr:
        for k in ("linear", "rbf"):
            kernel = ElementaryKernel(k)
            entries[(name, k)] = (kernel.fit_transform(tr[name]), kernel.get_state())
    # The cache holds unscaled kernels (as `genre kernels` writes them): it serves models with scale='none'.
    plain = fast(EasyMKLModel, kernels=("linear", "rbf"), scale="none").fit(tr, y)
    cached = fast(EasyMKLModel, kernels=("linear", "rbf"), scale="none").fit(tr, y, cache=GramCache(entries))
    np.testing.assert_array_equal(cached.weights_, plain.weights_)
    np.testing.assert_array_equal(cached.decision_function(te), plain.decision_function(te))


# ------------------------------------------------------------------------------------------- late fusion
def test_late_fusion_is_the_average_of_the_pair_probabilities():
    tr, y, te, _ = three_class(n_train=45, n_test=10)
    model = fast(LateFusionSVMModel, kernels=("linear", "rbf")).fit(tr, y)
    assert len(model.pairs_) == 4 and np.all(model.temperature_ > 0)
    # By hand, from the fitted parts: softmax(d / T) of every pair, averaged.
    probs = []
    for p, (name, _) in enumerate(model.pairs_):
        d = model.svms_[p].decision_function(model.kernels_[p].transform(te[name]))
        probs.append(softmax(d / float(model.temperature_[p])))
    expected = sum(probs) / 4.0
    np.testing.assert_allclose(model.predict_proba(te), expected, atol=1e-5)
    np.testing.assert_array_equal(model.predict(te), model.classes_[np.argmax(expected, axis=1)])
    # The alternative: decision values scaled by their out-of-fold standard deviations, averaged.
    model.set_params(combine="decision")
    scaled = [model.svms_[p].decision_function(model.kernels_[p].transform(te[name])) / model.decision_scale_[p]
              for p, (name, _) in enumerate(model.pairs_)]
    np.testing.assert_allclose(model.decision_function(te), sum(scaled) / 4.0, rtol=1e-5, atol=1e-5)


def test_late_fusion_temperature_is_fitted():
    from genrecli.models.mkl import fit_temperature

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 3000)
    scores = rng.normal(size=(3000, 3))
    logits = scores / 0.5  # labels drawn from softmax(scores / 0.5): the fitted T must be close to 0.5
    y = np.array([rng.choice(3, p=p) for p in softmax(logits)])
    assert fit_temperature(scores, y, np.arange(3)) == pytest.approx(0.5, rel=0.15)


# ------------------------------------------------------------------------------------------ early fusion
def test_concat_standardisation_is_fitted_on_training_rows_only():
    tr, y, te, _ = three_class(n_train=30, n_test=10)
    tr = {**tr, "text/b": np.concatenate([tr["text/b"], np.full((30, 1), 7.0, np.float32)], axis=1)}  # constant col
    te = {k: v + 1e4 for k, v in te.items()}
    te["text/b"] = np.concatenate([te["text/b"] - 1e4, np.full((10, 1), 1e6, np.float32)], axis=1)
    model = fast(ConcatSVMModel, scale="none").fit(tr, y)  # the concatenation's own z-score alone
    X = np.concatenate([tr["audio/a"], tr["text/b"]], axis=1).astype(np.float64)
    np.testing.assert_allclose(model.mean_, X.mean(0), rtol=1e-6, atol=1e-5)
    std = X.std(0)
    std[-1] = 1.0  # the constant column keeps scale 1
    np.testing.assert_allclose(model.scale_, std, rtol=1e-5)
    Z = model.standardise(X)
    assert np.all(np.isfinite(Z)) and np.all(Z[:, -1] == 0)
    before = model.mean_.copy(), model.scale_.copy()
    scores = model.decision_function(te)  # test rows with a huge offset
    assert np.all(np.isfinite(scores)) and scores.dtype == np.float32
    np.testing.assert_array_equal(model.mean_, before[0])
    np.testing.assert_array_equal(model.scale_, before[1])
    Xte = np.concatenate([te["audio/a"], te["text/b"]], axis=1)
    np.testing.assert_allclose(model.standardise(Xte), (Xte - X.mean(0)) / std, rtol=1e-4, atol=1e-3)


def test_concat_takes_exactly_one_kernel():
    tr, y, _, _ = three_class(n_train=12, n_test=1)
    with pytest.raises(UsageError) as excinfo:
        ConcatSVMModel(kernels=("linear", "rbf")).fit(tr, y)
    one_line(excinfo, "exactly one kernel", "linear, rbf")
    assert ConcatSVMModel(kernels="poly2", svm=KernelSVM(C=1.0)).fit(tr, y).kernel_.kernel == "poly2"


# ------------------------------------------------------------------------------------- every model
MODELS = {
    "svm-concat": dict(kernels=("rbf",)),
    "svm-late": dict(kernels=("linear", "rbf")),
    "mkl-average": dict(kernels=("linear", "rbf")),
    "easymkl": dict(kernels=("linear", "rbf")),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_learns_three_classes_and_round_trips(name, tmp_path):
    tr, y, te, yte = three_class()
    model = get_model(name).build(seed=0, C_grid=FAST_SVM["C_grid"], cv=FAST_SVM["cv"])
    model.set_params(**MODELS[name]).fit(tr, y)
    scores = model.decision_function(te)
    assert scores.shape == (len(yte), 3) and scores.dtype == np.float32
    assert np.mean(model.predict(te) == yte) > 0.8
    loaded = load_model(model.save(tmp_path / name, registry_name=name))
    np.testing.assert_array_equal(loaded.decision_function(te), scores)
    assert type(loaded) is type(model) and list(loaded.classes_) == [0, 1, 2]


@pytest.mark.parametrize("name", ["svm-late", "easymkl"])
def test_multilabel(name, tmp_path):
    tr, y, te, yte = three_class(n_train=45, n_test=15)
    Y = np.stack([y == 0, y == 1, y != 1], axis=1)  # label 2 overlaps labels 0 and 1
    model = get_model(name).build(seed=0, C_grid=FAST_SVM["C_grid"], cv=FAST_SVM["cv"])
    model.set_params(kernels=("rbf",)).fit(tr, Y)
    assert model.multilabel_ and model.decision_function(te).shape == (15, 3)
    Yte = np.stack([yte == 0, yte == 1, yte != 1], axis=1)
    assert np.mean(model.predict(te) == Yte) > 0.8
    loaded = load_model(model.save(tmp_path / name, registry_name=name))
    np.testing.assert_array_equal(loaded.decision_function(te), model.decision_function(te))


def test_registry_entries_and_svm_options():
    for name in MODELS:
        spec = get_model(name)
        assert spec.uses_kernels and not spec.per_pair
        assert spec.capabilities.tasks == ("single", "multi")
        assert {"C", "C_grid", "cv", "class_weight"} <= set(spec.option_names())
        assert "kernels" not in spec.option_names()
    assert "lam" in get_model("easymkl").option_names()
    assert "combine" in get_model("svm-late").option_names()
    model = get_model("easymkl").build(seed=3, C=10.0, lam=0.5)
    assert model.svm.C == 10.0 and model.lam == 0.5 and model.random_state == 3
    with pytest.raises(UsageError):
        get_model("mkl-average").build(lam=0.5)
    tr, y, _, _ = three_class(n_train=12, n_test=1)
    with pytest.raises(UsageError) as excinfo:
        LateFusionSVMModel(kernels=("linear",), combine="vote").fit(tr, y)
    one_line(excinfo, "combine", "proba", "decision")
