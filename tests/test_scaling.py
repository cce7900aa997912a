"""Per-input feature scaling (genrecli.kernels.scaling) in the kernels and the kernel models."""

import json

import numpy as np
import pytest

from genrecli.errors import InputError, UsageError
from genrecli.kernels.elementary import ElementaryKernel
from genrecli.kernels.maps import ExplicitMap
from genrecli.kernels.scaling import (
    DEFAULT_SCALING, InputScaler, default_scaling, merge_scale, resolve_scaling, scaling_for,
)
from genrecli.models import get_model, load_model
from genrecli.models.base import params_from_json, params_to_json
from genrecli.models.kernel import GramCache, SVMModel
from genrecli.models.svm import KernelSVM

from conftest import one_line

FAST_SVM = dict(C_grid=(0.1, 1.0, 10.0), cv=3)


@pytest.fixture
def warnings(monkeypatch):
    """Every genrecli.ui.warn message of the test."""
    seen = []
    monkeypatch.setattr("genrecli.ui.warn", seen.append)
    return seen


def descriptor_table(n=300, d=20, seed=0):
    """3 classes planted in 3 unit-scale columns of 20; column 7 is pure noise scaled by 1e6."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    X = rng.normal(size=(n, d))
    X[:, :3] += 3.0 * np.eye(3)[y]
    X[:, 7] = 1e6 * rng.normal(size=n)
    return X.astype(np.float32), y


# ------------------------------------------------------------------------------------------------ acceptance
def test_linear_svm_recovers_the_signal_only_with_scaling():
    X, y = descriptor_table()
    tr, te = np.arange(200), np.arange(200, 300)
    raw = SVMModel(kernel="linear", scale="none", svm=KernelSVM(**FAST_SVM), random_state=0)
    raw.fit({"audio/table": X[tr]}, y[tr])
    # The registry's default: scale='auto', which is z-score for a descriptor table.
    model = get_model("svm").build(seed=0, kernels=("linear",), **FAST_SVM)
    assert model.scale == "auto"
    model.fit({"audio/table": X[tr]}, y[tr])
    assert model.scaling_ == {"audio/table": "standard"} and model.get_meta()["scaling"] == model.scaling_
    acc_raw = np.mean(raw.predict({"audio/table": X[te]}) == y[te])
    acc = np.mean(model.predict({"audio/table": X[te]}) == y[te])
    assert acc_raw < 0.45  # the 1e6 noise column alone decides the l2-normalised linear kernel
    assert acc > 0.8


# ------------------------------------------------------------------------------------------- the default
def test_default_scaling_table():
    assert default_scaling("audio/table") == "standard"
    for name in ("audio/mfcc", "audio/timbre", "audio/rhythm", "audio/my-descriptors"):  # last: any table name
        assert default_scaling(name) == "standard"
    assert default_scaling("text/minilm") == "standard"  # measured: see DEFAULT_SCALING
    for name in ("text/minilm-seq", "text/tfidf", "audio/musicnn", "audio/musicnn-tags", "audio/vggish",
                 "audio/mfcc-image", "audio/mel", "audio/logmel-ru"):
        assert default_scaling(name) == "none"
    assert set(DEFAULT_SCALING.values()) <= {"none", "standard", "robust", "minmax", "l2"}
    scale = {"*": "auto", "audio/mfcc": "robust"}
    assert resolve_scaling(scale, ["audio/mfcc", "audio/table", "text/minilm", "text/tfidf"]) == {
        "audio/mfcc": "robust", "audio/table": "standard", "text/minilm": "standard", "text/tfidf": "none"}
    assert scaling_for("minmax", "text/minilm") == "minmax"
    assert merge_scale("l2", {"audio/mfcc": "none"}) == {"*": "l2", "audio/mfcc": "none"}


# ------------------------------------------------------------------------------------------- the methods
SMALL = np.array([[1.0, 10.0, -2.0],
                  [2.0, 30.0, 0.0],
                  [4.0, 20.0, 2.0],
                  [9.0, 40.0, 8.0]])


def test_methods_equal_a_hand_computation():
    X = SMALL
    out = {m: InputScaler(m).fit(X).transform(X) for m in ("standard", "robust", "minmax", "l2", "none")}
    np.testing.assert_allclose(out["standard"], (X - X.mean(0)) / X.std(0), rtol=1e-6)
    # numpy's default (linear) percentiles: column 0 has quartiles 1.75, 3.0, 5.25
    median = np.array([3.0, 25.0, 1.0])
    iqr = np.array([5.25 - 1.75, 32.5 - 17.5, 3.5 - (-0.5)])
    np.testing.assert_allclose(out["robust"], (X - median) / iqr, rtol=1e-6)
    np.testing.assert_allclose(out["minmax"], (X - X.min(0)) / (X.max(0) - X.min(0)), rtol=1e-6)
    np.testing.assert_allclose(out["l2"], X / np.linalg.norm(X, axis=1, keepdims=True), rtol=1e-6)
    np.testing.assert_array_equal(out["none"], X.astype(np.float32))
    assert all(v.dtype == np.float32 and v.flags.c_contiguous for v in out.values())


def test_robust_uses_the_std_where_the_iqr_is_zero():
    X = np.array([[0.0], [0.0], [0.0], [0.0], [0.0], [5.0]])
    scaler = InputScaler("robust").fit(X)
    assert scaler.center_[0] == 0.0 and scaler.scale_[0] == pytest.approx(X.std())


def test_fitted_on_training_rows_only():
    rng = np.random.default_rng(1)
    train = rng.normal(size=(50, 4)).astype(np.float32)
    test = train[:10] + 1e5  # a huge offset
    for method in ("standard", "robust", "minmax"):
        kernel = ElementaryKernel("rbf", scale=method).fit(train)
        before = kernel.scaler_.get_state()
        K = kernel.transform(test)
        assert np.all(np.isfinite(K))
        after = kernel.scaler_.get_state()
        for key in before:
            np.testing.assert_array_equal(after[key], before[key])
        ref = InputScaler(method).fit(train)
        np.testing.assert_allclose(kernel.scaler_.center_, ref.center_)
        if method == "standard":
            np.testing.assert_allclose(kernel.scaler_.center_, train.astype(np.float64).mean(0), rtol=1e-6, atol=1e-7)
    # The kernel preprocessing follows the scaling: X_fit_ is of the z-scored training rows.
    kernel = ElementaryKernel("linear", scale="standard").fit(train)
    Z = (train - train.mean(0)) / train.std(0)
    np.testing.assert_allclose(kernel.X_fit_, Z / np.linalg.norm(Z, axis=1, keepdims=True), rtol=1e-4, atol=1e-5)


def test_hist_is_unchanged_by_a_per_column_affine_scaling():
    rng = np.random.default_rng(2)
    X = (rng.gamma(2.0, size=(40, 5)) * [1, 10, 1e3, 1e-2, 1e6]).astype(np.float32)
    Y = (rng.gamma(2.0, size=(9, 5)) * [1, 10, 1e3, 1e-2, 1e6]).astype(np.float32)
    plain = ElementaryKernel("hist").fit(X)
    for method in ("standard", "robust", "minmax"):
        scaled = ElementaryKernel("hist", scale=method).fit(X)
        np.testing.assert_allclose(scaled.transform(Y), plain.transform(Y), rtol=1e-4, atol=1e-5)
    l2 = ElementaryKernel("hist", scale="l2").fit(X)
    assert l2.preprocess(X).min() >= 0.0  # still a valid histogram-intersection input


# ------------------------------------------------------------------------------- constant and NaN columns
def with_bad_columns(n=60, seed=3):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6)).astype(np.float32)
    X[:, 2] = 4.0  # constant
    X[:, 4] = np.nan  # all NaN
    return X


@pytest.mark.parametrize("kernel", ["linear", "poly2", "rbf", "hist"])
def test_constant_and_nan_columns_are_dropped_with_a_warning(kernel, warnings):
    X = with_bad_columns()
    model = ElementaryKernel(kernel, scale="standard", input_name="audio/table")
    K = model.fit_transform(X)
    assert np.all(np.isfinite(K)) and model.X_fit_.shape == (60, 4)
    np.testing.assert_array_equal(model.scaler_.columns_, [0, 1, 3, 5])
    assert len(warnings) == 1
    assert "audio/table" in warnings[0] and "constant [2]" in warnings[0] and "all-NaN [4]" in warnings[0]
    test = with_bad_columns(10, seed=4)
    test[:, 2] = np.nan  # anything in the dropped columns of other rows is fine
    test[:, 4] = 1e9
    assert np.all(np.isfinite(model.transform(test)))
    state = model.get_state()
    assert all(np.asarray(v).dtype.kind in "fiu" for v in state.values())
    loaded = ElementaryKernel(kernel, scale="standard").set_state(state)
    np.testing.assert_array_equal(loaded.transform(test), model.transform(test))


def test_explicit_map_takes_the_scaling():
    X = with_bad_columns()
    emap = ExplicitMap("poly2", scale="robust").fit(X)
    assert emap.dim_ == 4 * 5 // 2 + 5  # of the 4 kept columns
    np.testing.assert_allclose(emap.map_gram(X[:7]), emap.kernel_.gram(X[:7], X), rtol=1e-5, atol=1e-6)
    loaded = ExplicitMap("poly2", scale="robust").set_state(emap.get_state())
    np.testing.assert_array_equal(loaded.transform(X[:5]), emap.transform(X[:5]))


def test_unusable_inputs_fail_with_one_line(warnings):
    X = with_bad_columns()
    with pytest.raises(InputError):  # no scaling: NaN is refused, as before
        ElementaryKernel("linear").fit(X)
    X[3, 0] = np.nan  # a NaN left in a kept column: the kernel names the row
    with pytest.raises(InputError, match=r"rows \[3\]"):
        ElementaryKernel("linear", scale="standard").fit(X)
    with pytest.raises(InputError) as excinfo:
        InputScaler("minmax", name="audio/table").fit(np.ones((5, 3)))
    one_line(excinfo, "audio/table", "constant")
    with pytest.raises(UsageError):
        ElementaryKernel("linear", scale="zscore").fit(SMALL)


def test_one_warning_per_input_in_a_model(warnings):
    X = with_bad_columns()
    y = np.arange(60) % 2
    get_model("mkl-average").build(seed=0, kernels=("linear", "rbf", "hist"), **FAST_SVM).fit({"audio/table": X}, y)
    assert len(warnings) == 1 and "audio/table" in warnings[0]


# -------------------------------------------------------------------------------------- models and options
def two_inputs(n=45, seed=5):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    a = rng.normal(size=(n, 5))
    a[:, :3] += 2.0 * np.eye(3)[y]
    a[:, 4] *= 1e4
    b = rng.normal(size=(n, 3)) + 0.5 * y[:, None]
    return {"audio/mfcc": a.astype(np.float32), "text/minilm": b.astype(np.float32)}, y


def test_options_are_validated_and_routed():
    spec = get_model("svm")
    assert "INPUT.scale" in spec.option_names() and "scale" in spec.option_names()
    spec.check_options({"scale": "robust", "audio/mfcc.scale": "minmax"})
    for options, needle in [({"scale": "zscore"}, "scale='zscore'"),
                            ({"audio/mfcc.scale": "zscore"}, "audio/mfcc.scale"),
                            ({"mfcc.scale": "robust"}, "INPUT.scale")]:
        with pytest.raises(UsageError) as excinfo:
            spec.check_options(options)
        one_line(excinfo, needle)
    with pytest.raises(UsageError, match="unknown option 'audio/mfcc.scale'"):
        get_model("mlp").check_options({"audio/mfcc.scale": "robust"})
    model = spec.build(seed=0, kernels=("rbf",), C=1.0, **{"scale": "l2", "audio/mfcc.scale": "robust"})
    assert model.scale == {"*": "l2", "audio/mfcc": "robust"} and model.svm.C == 1.0
    assert params_from_json(json.loads(json.dumps(params_to_json(model.get_params(deep=False)))))["scale"] == model.scale
    dkn = get_model("dkn").build(seed=0, **{"audio/mfcc.scale": "minmax", "max_iter": 5})
    assert dkn.scale == {"*": "auto", "audio/mfcc": "minmax"} and dkn.dkn.max_iter == 5
    dm = get_model("dm2kmn").build(seed=0, **{"text/minilm.scale": "standard", "landmarks": 10, "depth": 3})
    assert dm.scale == {"*": "auto", "text/minilm": "standard"}
    assert dm.dm2kmn.landmarks == 10 and dm.dm2kmn.dkn.depth == 3
    for name in ("svm-concat", "svm-late", "mkl-average", "easymkl"):
        assert get_model(name).build(seed=0, **{"audio/mfcc.scale": "l2"}).scale == {"*": "auto", "audio/mfcc": "l2"}


def test_per_block_scale_of_the_dkn_is_checked():
    from genrecli.models.dkn import DKNClassifier

    X, y = SMALL.repeat(3, axis=0), np.arange(12) % 2
    with pytest.raises(UsageError, match="2 methods for 1 input blocks"):
        DKNClassifier(kernels=("linear",), scale=("standard", "none"), C=1.0, max_iter=2).fit(X, y)


MODELS = {
    "svm": dict(kernels=("rbf",)),
    "dkn": dict(kernels=("linear", "rbf"), C=1.0, max_iter=10, svm_every=5),
    "dm2kmn-init": dict(kernels=("linear", "hist"), C=1.0, max_iter=10, svm_every=5),
    "svm-concat": dict(kernels=("linear",)),
    "svm-late": dict(kernels=("linear",)),
    "easymkl": dict(kernels=("linear", "rbf")),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_scaler_state_round_trips_through_save_and_load(name, tmp_path, warnings):
    inputs, y = two_inputs()
    if name == "svm":
        inputs = {"audio/mfcc": inputs["audio/mfcc"]}
    options = dict(MODELS[name])
    kernels = options.pop("kernels")
    if name not in ("dkn", "dm2kmn-init"):
        options.update(FAST_SVM)

    def build(**extra):
        return get_model(name).build(seed=0, kernels=kernels, **options, **extra)

    model = build(**{"audio/mfcc.scale": "robust", "text/minilm.scale": "minmax"}).fit(inputs, y)
    expected = {"audio/mfcc": "robust", "text/minilm": "minmax"}
    assert model.get_meta()["scaling"] == {k: v for k, v in expected.items() if k in inputs}
    scores = model.decision_function(inputs)
    directory = model.save(tmp_path / name, registry_name=name)
    assert json.loads((directory / "model.json").read_text())["meta"]["scaling"] == model.get_meta()["scaling"]
    loaded = load_model(directory)
    np.testing.assert_array_equal(loaded.decision_function(inputs), scores)
    # The scalers are really applied (and restored): the unscaled model scores differently.
    assert not np.allclose(build(scale="none").fit(inputs, y).decision_function(inputs), scores)


def test_gram_cache_serves_only_its_own_scaling():
    inputs, y = two_inputs()
    X = inputs["audio/mfcc"]
    kernel = ElementaryKernel("rbf")
    cache = GramCache({("audio/mfcc", "rbf"): (kernel.fit_transform(X), kernel.get_state())})
    assert cache.get("audio/mfcc", "rbf", offset=1.0, sigma="total-variance", scale="standard") is None
    assert cache.get("audio/mfcc", "rbf", offset=1.0, sigma="total-variance") is not None
    build = lambda scale: SVMModel("rbf", scale=scale, svm=KernelSVM(**FAST_SVM), random_state=0)  # noqa: E731
    one = {"audio/mfcc": X}
    # auto -> standard for audio/mfcc: the unscaled cache is not used, the model is the uncached one.
    np.testing.assert_array_equal(build("auto").fit(one, y, cache=cache).decision_function(one),
                                  build("auto").fit(one, y).decision_function(one))
    np.testing.assert_array_equal(build("none").fit(one, y, cache=cache).decision_function(one),
                                  build("none").fit(one, y).decision_function(one))


def test_artifacts_from_before_scaling_load_unscaled(tmp_path):
    inputs, y = two_inputs()
    one = {"audio/mfcc": inputs["audio/mfcc"]}
    model = SVMModel("linear", scale="none", svm=KernelSVM(**FAST_SVM), random_state=0).fit(one, y)
    directory = model.save(tmp_path / "old")
    doc = json.loads((directory / "model.json").read_text())
    del doc["meta"]["scaling"]
    doc["params"].pop("scale")  # an artifact written before the parameter existed (it now defaults to 'auto')
    (directory / "model.json").write_text(json.dumps(doc))
    loaded = load_model(directory)
    assert loaded.scaling_ == {"audio/mfcc": "none"}
    np.testing.assert_array_equal(loaded.decision_function(one), model.decision_function(one))
