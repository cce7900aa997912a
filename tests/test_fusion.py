"""The neural fusion baselines: cnn-bow, dcn, fusion-concat / -decision / -hybrid (weights chosen on validation only)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from genrecli.errors import UsageError
from genrecli.models import get_model
from genrecli.models.base import load_model
from genrecli.models.neural.cnn import _MelCNN
from genrecli.models.neural.cnn_bow import CNNBoWModel
from genrecli.models.neural.fusion import (
    DCNModel,
    FusionModel,
    head_probabilities,
    mix_probabilities,
    search_weights,
    simplex_grid,
)
from genrecli.models.neural.harness import CHECKPOINT_FILE, _carve, _targets
from genrecli.pipeline.features import FeatureView


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------------- synthetic data
def two_views(n=240, d_a=6, d_t=5, n_classes=3, noise=(1.5, 1.5), seed=0):
    """An audio and a text vector per row, each a noisy view of the class (complementary noise)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    rng.shuffle(y)
    ca, ct = rng.normal(size=(n_classes, d_a)) * 2, rng.normal(size=(n_classes, d_t)) * 2
    a = (ca[y] + rng.normal(size=(n, d_a)) * noise[0]).astype(np.float32) * 10 + 3
    t = (ct[y] + rng.normal(size=(n, d_t)) * noise[1]).astype(np.float32)
    return {"audio/mfcc": a, "text/minilm": t}, y


def part(inputs, rows):
    return {k: v[rows] for k, v in inputs.items()}


def band_patches(y, height=16, frames=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(len(y), height, frames)).astype(np.float32)
    for i, c in enumerate(y):
        x[i, 2 + 4 * c:5 + 4 * c, rng.random(frames) < 0.6] += 3.0
    return x + 10.0


def fast(cls, **kw):
    params = dict(embed_dim=16, branch_hidden=(16,), max_epochs=25, lr=1e-2, batch_size=32, patience=6,
                  dropout=0.1, random_state=0)
    if cls is not CNNBoWModel:
        params["channels"] = (8, 8)
    else:
        params.update(channels=(8, 8), hidden=(16,))
    return cls(**{**params, **kw})


def states_equal(a, b) -> bool:
    sa, sb = a.get_state(), b.get_state()
    return sa.keys() == sb.keys() and all(np.array_equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------------------------- weight search
def test_simplex_grid():
    g2, g3 = simplex_grid(2, 0.1), simplex_grid(3, 0.1)
    assert g2.shape == (11, 2) and g3.shape == (66, 3)
    for g in (g2, g3, simplex_grid(4, 0.25)):
        assert np.allclose(g.sum(axis=1), 1) and (g >= 0).all() and len(np.unique(g, axis=0)) == len(g)
    with pytest.raises(UsageError, match="divide 1"):
        simplex_grid(2, 0.3)


def test_decision_weighting_is_the_hand_computed_weighted_average():
    p_audio = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    p_text = np.array([[0.2, 0.5, 0.3], [0.3, 0.6, 0.1]])
    hand = np.array([[0.3 * 0.7 + 0.7 * 0.2, 0.3 * 0.2 + 0.7 * 0.5, 0.3 * 0.1 + 0.7 * 0.3],
                     [0.3 * 0.1 + 0.7 * 0.3, 0.3 * 0.1 + 0.7 * 0.6, 0.3 * 0.8 + 0.7 * 0.1]])
    assert np.allclose(mix_probabilities(np.stack([p_audio, p_text], axis=1), [0.3, 0.7]), hand, atol=1e-15)

    # the model: fixed weights, per-modality probabilities read from its own heads
    inputs, y = two_views(n=150)
    model = fast(FusionModel, fusion="decision", weights=[0.3, 0.7], max_epochs=4).fit(part(inputs, slice(0, 120)), y[:120])
    test = part(inputs, slice(120, None))
    heads = model.probabilities_per_head(test)
    assert sorted(heads) == ["audio/mfcc", "text/minilm"] and model.weights_ == {"audio/mfcc": 0.3, "text/minilm": 0.7}
    expected = 0.3 * heads["audio/mfcc"] + 0.7 * heads["text/minilm"]
    assert np.allclose(model.predict_proba(test), expected, atol=1e-6)
    assert np.array_equal(model.predict(test), model.classes_[expected.argmax(axis=1)])

    hybrid = fast(FusionModel, fusion="hybrid", weights="0.3,0.7", joint_weight=0.4, max_epochs=4).fit(
        part(inputs, slice(0, 120)), y[:120])
    heads = hybrid.probabilities_per_head(test)
    expected = 0.4 * heads["joint"] + 0.6 * (0.3 * heads["audio/mfcc"] + 0.7 * heads["text/minilm"])
    assert np.allclose(hybrid.predict_proba(test), expected, atol=1e-6) and hybrid.joint_weight_ == 0.4


def brute_force(probs: list[np.ndarray], targets: np.ndarray, step=10):
    """The best (w, 1 - w) over w = 0, 0.1, ..., 1: validation balanced accuracy, then log-loss, then the first."""
    best = None
    for i in range(step + 1):
        w = np.array([i / step, (step - i) / step])
        p = w[0] * probs[0] + w[1] * probs[1]
        pred = p.argmax(axis=1)
        bal = np.mean([np.mean(pred[targets == c] == c) for c in np.unique(targets)])
        loss = -np.mean(np.log(np.clip(p[np.arange(len(p)), targets], 1e-12, 1)))
        if best is None or (-bal, loss) < best[0]:
            best = ((-bal, loss), w)
    return best[1]


@pytest.mark.parametrize("fusion", ["decision", "hybrid"])
def test_weights_are_those_of_a_brute_force_search_on_the_validation_part(fusion):
    inputs, y = two_views(n=300, noise=(2.5, 2.0), seed=1)
    tr, va, te = np.arange(0, 180), np.arange(180, 240), np.arange(240, 300)
    model = fast(FusionModel, fusion=fusion, max_epochs=6).fit(part(inputs, tr), y[tr], validation=(part(inputs, va), y[va]))
    heads = model.probabilities_per_head(part(inputs, va))
    w = brute_force([heads["audio/mfcc"], heads["text/minilm"]], y[va])
    assert np.allclose(list(model.weights_.values()), w)
    if fusion == "hybrid":
        decision = w[0] * heads["audio/mfcc"] + w[1] * heads["text/minilm"]
        assert np.isclose(model.joint_weight_, brute_force([decision, heads["joint"]], y[va])[1])
    # test labels never enter: a model fitted with "poisoned" test labels (they are not passed) is identical
    y_poisoned = y.copy()
    y_poisoned[te] = (y[te] + 1) % 3
    again = fast(FusionModel, fusion=fusion, max_epochs=6).fit(part(inputs, tr), y_poisoned[tr],
                                                               validation=(part(inputs, va), y_poisoned[va]))
    assert again.weights_ == model.weights_ and states_equal(again, model)


def test_weights_follow_the_validation_part_and_its_carve():
    inputs, y = two_views(n=240, seed=2)
    tr, va = np.arange(0, 180), np.arange(180, 240)
    val = part(inputs, va)
    val["text/minilm"] = np.random.default_rng(5).permutation(val["text/minilm"])  # text useless on validation
    model = fast(FusionModel, fusion="decision", max_epochs=8).fit(part(inputs, tr), y[tr], validation=(val, y[va]))
    clean = fast(FusionModel, fusion="decision", max_epochs=8).fit(part(inputs, tr), y[tr],
                                                                   validation=(part(inputs, va), y[va]))
    assert model.weights_["text/minilm"] < min(0.5, clean.weights_["text/minilm"])
    # without a validation part: the harness's seeded carve of the training rows
    carved = fast(FusionModel, fusion="decision", max_epochs=6, val_fraction=0.25).fit(part(inputs, tr), y[tr])
    targets, _, _ = _targets(y[tr], len(tr))
    split_seq, _ = np.random.SeedSequence(carved.seed_).spawn(2)
    _, rows = _carve(targets, False, 0.25, np.random.default_rng(split_seq))
    heads = carved.probabilities_per_head(part(part(inputs, tr), rows))
    assert np.allclose(list(carved.weights_.values()), brute_force([heads["audio/mfcc"], heads["text/minilm"]], y[tr][rows]))


def test_search_weights_loss_criterion_and_three_heads():
    rng = np.random.default_rng(0)
    probs = head_probabilities(rng.normal(size=(40, 3, 4)) * 3, False)
    targets = rng.integers(0, 4, 40)
    w, table = search_weights(probs, targets, False, step=0.25, criterion="loss")
    assert len(table) == len(simplex_grid(3, 0.25)) and np.isclose(w.sum(), 1)
    assert min(r["loss"] for r in table) == next(r["loss"] for r in table if np.allclose(r["weights"], w))


def test_hybrid_joint_search_and_multilabel_decision():
    inputs, y = two_views(n=200)
    joint = fast(FusionModel, fusion="hybrid", hybrid_search="joint", max_epochs=5).fit(part(inputs, slice(0, 160)), y[:160])
    assert np.isclose(sum(joint.weights_.values()), 1) and 0 <= joint.joint_weight_ <= 1
    assert {r["stage"] for r in joint.weight_table_} == {"joint"}
    multi = np.stack([y == 0, y != 1, y == 2], axis=1)
    model = fast(FusionModel, fusion="decision", max_epochs=5).fit(part(inputs, slice(0, 160)), multi[:160])
    test = part(inputs, slice(160, None))
    heads = model.probabilities_per_head(test)
    w = model.weights_
    expected = w["audio/mfcc"] * heads["audio/mfcc"] + w["text/minilm"] * heads["text/minilm"]
    assert np.allclose(model.predict_proba(test), expected, atol=1e-6)
    assert np.array_equal(model.predict(test), expected > 0.5)


# ----------------------------------------------------------------------------------------------- dcn
def test_dcn_is_symmetric_under_swapping_its_inputs():
    inputs, y = two_views(n=90, d_a=5, d_t=5)
    a, t = inputs["audio/mfcc"], inputs["text/minilm"]
    # at initialisation (lr=0: one epoch changes nothing): both branches start identical, the fusion commutes
    kw = dict(lr=0.0, max_epochs=1, random_state=3)
    m1 = fast(DCNModel, **kw).fit({"audio/x": a, "text/y": t}, y)
    m2 = fast(DCNModel, **kw).fit({"audio/x": t, "text/y": a}, y)
    b0, b1 = (m1.network_.branches[i].state_dict() for i in (0, 1))
    assert all(torch.equal(b0[k], b1[k]) for k in b0)
    assert np.array_equal(m1.decision_function({"audio/x": a, "text/y": t}), m2.decision_function({"audio/x": t, "text/y": a}))
    # and, without dropout, through training too: every update is mirrored
    kw = dict(dropout=0.0, max_epochs=4, random_state=3)
    m1 = fast(DCNModel, **kw).fit({"audio/x": a, "text/y": t}, y)
    m2 = fast(DCNModel, **kw).fit({"audio/x": t, "text/y": a}, y)
    assert np.array_equal(m1.decision_function({"audio/x": a, "text/y": t}), m2.decision_function({"audio/x": t, "text/y": a}))
    assert not np.array_equal(m1.decision_function({"audio/x": a, "text/y": t}), m1.decision_function({"audio/x": t, "text/y": a}))


def test_dcn_learns_with_different_widths_and_shared_weights_option():
    inputs, y = two_views(n=200)
    model = fast(DCNModel, fusion="sum-product-diff").fit(part(inputs, slice(0, 160)), y[:160])
    assert (model.predict(part(inputs, slice(160, None))) == y[160:]).mean() > 0.85
    with pytest.raises(UsageError, match="one shape"):
        fast(DCNModel, share_weights=True, max_epochs=1).fit(inputs, y)
    same = {"audio/a": inputs["audio/mfcc"][:, :5], "text/t": inputs["text/minilm"]}
    siamese = fast(DCNModel, share_weights=True, max_epochs=2).fit(same, y)
    assert len(siamese.network_.branches) == 1
    with pytest.raises(UsageError, match="exactly two"):
        fast(DCNModel, max_epochs=1).fit({**inputs, "text/other": inputs["text/minilm"]}, y)


# ----------------------------------------------------------------------------------------------- cnn-bow
def test_cnn_bow_patch_and_vector_from_a_feature_view(tmp_path):
    inputs, y = two_views(n=96, noise=(1.5, 4.0))
    x = band_patches(y)
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as h5:
        h5.create_group("audio/mel").create_dataset("data", data=x, chunks=(1, *x.shape[1:]))
    view = FeatureView(path, "audio/mel", np.arange(72))
    # a name sorted after the text input: roles come from the shapes, not the names
    train = {"zz/mel": view, "text/tfidf": inputs["text/minilm"][:72]}
    model = fast(CNNBoWModel, patch_frames=16, max_epochs=15, lr=3e-3)
    model.fit(train, y[:72])
    assert model.roles() == ("zz/mel", "text/tfidf", "cnn")
    assert isinstance(model.network_.audio[0], _MelCNN) and model.network_.audio_position == 1
    test = {"zz/mel": x[72:], "text/tfidf": inputs["text/minilm"][72:]}
    assert (model.predict(test) == y[72:]).mean() > 0.8
    assert model.scalers_["zz/mel"][0].shape == (1,) and model.scalers_["text/tfidf"][0].shape == (5,)
    loaded = load_model(model.save(tmp_path / "m"))
    assert np.array_equal(loaded.decision_function(test), model.decision_function(test))
    with pytest.raises(UsageError, match="both patches"):
        fast(CNNBoWModel).fit({"audio/a": x, "audio/b": x}, y)
    with pytest.raises(UsageError, match="needs a patch"):
        fast(CNNBoWModel, audio_branch="cnn").fit(inputs, y)


def test_cnn_bow_on_two_vectors_uses_an_mlp_audio_branch():
    inputs, y = two_views(n=200)
    model = fast(CNNBoWModel, text_hidden=(8,)).fit(part(inputs, slice(0, 160)), y[:160])
    assert model.roles() == ("audio/mfcc", "text/minilm", "mlp")
    assert model.get_meta()["architecture"]["audio_branch"] == "mlp"
    assert (model.predict(part(inputs, slice(160, None))) == y[160:]).mean() > 0.85


# ----------------------------------------------------------------------------------------------- all five
NAMES = ["cnn-bow", "dcn", "fusion-concat", "fusion-decision", "fusion-hybrid"]


@pytest.mark.parametrize("name", NAMES)
def test_registry_model_learns_and_round_trips(tmp_path, name):
    inputs, y = two_views(n=200)
    model = get_model(name).build(seed=1, embed_dim=16, branch_hidden=[16], max_epochs=20, lr=1e-2, batch_size=32,
                                  patience=6)
    assert model.random_state == 1
    model.fit(part(inputs, slice(0, 160)), y[:160])
    test = part(inputs, slice(160, None))
    assert (model.predict(test) == y[160:]).mean() > 0.85
    loaded = load_model(model.save(tmp_path / "m", registry_name=name))
    assert type(loaded) is type(model) and loaded.get_params() == model.get_params()
    assert np.array_equal(loaded.decision_function(test), model.decision_function(test))
    assert np.array_equal(loaded.predict_proba(test), model.predict_proba(test))
    if name.startswith("fusion-"):
        assert loaded.weights_ == model.weights_ and loaded.joint_weight_ == model.joint_weight_


def test_fusion_with_a_patch_branch_round_trips(tmp_path):
    inputs, y = two_views(n=96, noise=(4.0, 1.5))
    x = band_patches(y)
    model = fast(FusionModel, fusion="hybrid", patch_frames=16, test_crops=2, max_epochs=4)
    model.fit({"audio/mel": x[:72], "text/minilm": inputs["text/minilm"][:72]}, y[:72])
    assert model.get_meta()["architecture"]["branches"] == {"audio/mel": "cnn", "text/minilm": "mlp"}
    test = {"audio/mel": x[72:], "text/minilm": inputs["text/minilm"][72:]}
    loaded = load_model(model.save(tmp_path / "m"))
    assert np.array_equal(loaded.decision_function(test), model.decision_function(test))


def test_bad_options_are_usage_errors():
    inputs, y = two_views(n=60)
    for kwargs, needle in ((dict(fusion="concat", weights=[0.5, 0.5]), "no fusion weights"),
                           (dict(fusion="decision", joint_weight=0.5), "fusion-hybrid only"),
                           (dict(fusion="decision", weights=[1, 2, 3]), "expected 2"),
                           (dict(fusion="decision", weight_step=0.3), "divide 1"),
                           (dict(fusion="nope"), "fusion")):
        with pytest.raises(UsageError, match=needle):
            fast(FusionModel, max_epochs=1, **kwargs).fit(inputs, y)
    with pytest.raises(UsageError, match="two or more"):
        fast(FusionModel, max_epochs=1).fit({"audio/mfcc": inputs["audio/mfcc"]}, y)
    with pytest.raises(UsageError, match="unknown option"):
        get_model("fusion-decision").build(fusion="concat")


def test_hybrid_resumes_from_a_checkpoint(tmp_path):
    inputs, y = two_views(n=120)

    class Killed(Exception):
        pass

    def kill_at_2(epoch, record):
        if epoch == 2:
            raise Killed

    reference = fast(FusionModel, fusion="hybrid", max_epochs=4, patience=10).fit(inputs, y)
    with pytest.raises(Killed):
        fast(FusionModel, fusion="hybrid", max_epochs=4, patience=10).fit(inputs, y, checkpoint_dir=tmp_path,
                                                                          on_epoch_end=kill_at_2)
    assert (tmp_path / CHECKPOINT_FILE).exists()
    resumed = fast(FusionModel, fusion="hybrid", max_epochs=4, patience=10).fit(inputs, y, checkpoint_dir=tmp_path)
    assert resumed.resumed_from_ == 2 and states_equal(reference, resumed)
    assert resumed.weights_ == reference.weights_ and resumed.joint_weight_ == reference.joint_weight_


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", NAMES)
def test_cuda(tmp_path, name):
    inputs, y = two_views(n=200)
    model = get_model(name).build(seed=0, device="cuda", embed_dim=16, branch_hidden=[16], max_epochs=20, lr=1e-2)
    model.fit(part(inputs, slice(0, 160)), y[:160])
    test = part(inputs, slice(160, None))
    assert next(model.network_.parameters()).is_cuda
    assert (model.predict(test) == y[160:]).mean() > 0.85
    on_cpu = load_model(model.save(tmp_path / "m")).set_params(device="cpu").decision_function(test)
    on_gpu = model.decision_function(test)
    assert (on_cpu.argmax(1) == on_gpu.argmax(1)).mean() > 0.9
