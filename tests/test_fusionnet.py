"""Ng et al. 2020 FusionNet: NetVLAD, self-attention, center loss, sum rule, the subset search on the validation
part only, the refused test-selection protocol, a tiny end-to-end fit (two patch inputs + one vector), and
artifacts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genrecli.errors import UsageError
from genrecli.models import get_model
from genrecli.models.base import load_model
from genrecli.models.neural.fusionnet import (
    FeatureCodingModel,
    FusionNetModel,
    _CenterLossCriterion,
    _VectorNet,
    candidate_subsets,
    fused_scores,
    rank_sum_rule,
    sum_rule,
)
from genrecli.models.neural.netvlad import MultiHeadSelfAttention, NetVLAD, center_loss


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY = dict(channels=(4, 4, 4, 8, 8), clusters=3, heads=2, fc_hidden=8, dropout=0.1, batch_size=16,
            patch_frames=10, test_crops=3, max_epochs=2, meta_channels=(4, 4, 4), meta_heads=2, meta_fc_hidden=8,
            meta_max_epochs=2, meta_lr=1e-3, meta_folds=2, n_candidates=2, amp=False)


def mixed_inputs(n=48, seed=0):
    """Two small patch inputs and one vector input, all carrying the class (3 classes)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    rng.shuffle(y)
    p1 = rng.normal(size=(n, 12, 20)).astype(np.float32)
    p2 = rng.normal(size=(n, 8, 20)).astype(np.float32)
    for i, c in enumerate(y):
        p1[i, 1 + 3 * c:3 + 3 * c] += 2.0
        p2[i, :, c::3] += 1.5
    v = (rng.normal(size=(n, 5)) + np.eye(3, 5)[y] * 3).astype(np.float32)
    return {"audio/p1": p1, "audio/p2": p2, "audio/v": v}, y


def vectors(n=60, seed=0):
    """A strongly informative vector input, a weak one and pure noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    rng.shuffle(y)
    good = (rng.normal(size=(n, 4)) + np.eye(3, 4)[y] * 4).astype(np.float32)
    weak = (rng.normal(size=(n, 4)) + np.eye(3, 4)[y] * 0.7).astype(np.float32)
    noise = rng.normal(size=(n, 4)).astype(np.float32)
    return {"audio/good": good, "audio/weak": weak, "audio/noise": noise}, y


def take(inputs, rows):
    return {k: v[rows] for k, v in inputs.items()}


# ----------------------------------------------------------------------------------------------- NetVLAD
def test_netvlad_is_l2_normalised_order_invariant_and_its_assignment_sums_to_one():
    torch.manual_seed(0)
    vlad = NetVLAD(8, 5)
    f = torch.randn(3, 30, 8)
    v = vlad(f)
    assert v.shape == (3, 5, 8)
    assert torch.allclose(v.flatten(1).norm(dim=1), torch.ones(3), atol=1e-6)
    assert torch.allclose(v.norm(dim=2), torch.full((3, 5), 5 ** -0.5), atol=1e-6)  # intra-normalised rows
    perm = torch.randperm(30)
    assert torch.allclose(vlad(f[:, perm]), v, atol=1e-6)
    a = vlad.soft_assignment(f)
    assert a.shape == (3, 30, 5) and torch.allclose(a.sum(dim=2), torch.ones(3, 30), atol=1e-6)
    assert (a > 0).all()


def test_netvlad_is_the_papers_equation_5():
    torch.manual_seed(1)
    vlad = NetVLAD(4, 3, normalize_input=False)
    f = torch.randn(1, 7, 4)
    w, b, c = vlad.assign.weight, vlad.assign.bias, vlad.centers
    raw = torch.zeros(3, 4)
    for j in range(7):
        a = torch.softmax(w @ f[0, j] + b, dim=0)
        for k in range(3):
            raw[k] += a[k] * (f[0, j] - c[k])
    raw = raw / raw.norm(dim=1, keepdim=True)
    raw = raw / raw.norm()
    assert torch.allclose(vlad(f)[0], raw, atol=1e-5)


def test_netvlad_of_a_feature_map_reads_every_position():
    fmap = torch.randn(2, 6, 3, 4)
    d = NetVLAD.from_map(fmap)
    assert d.shape == (2, 12, 6) and torch.equal(d[1, 5], fmap[1, :, 1, 1])


# ---------------------------------------------------------------------------------------------- attention
def test_self_attention_heads_are_concatenated_and_start_as_the_identity():
    torch.manual_seed(0)
    att = MultiHeadSelfAttention(5, 3)
    x = torch.randn(2, 7, 5)
    z = att(x)
    assert z.shape == (2, 7, 15)
    assert torch.allclose(z, x.repeat(1, 1, 3))  # alpha = 0 at the start
    weights = att.attention(x)
    assert weights.shape == (2, 3, 7, 7) and torch.allclose(weights.sum(-1), torch.ones(2, 3, 7), atol=1e-6)
    with torch.no_grad():
        att.alpha.fill_(0.5)
    assert not torch.allclose(att(x), x.repeat(1, 1, 3))


# -------------------------------------------------------------------------------------------- center loss
def test_center_loss_is_zero_on_the_centres_and_positive_otherwise():
    centers = torch.tensor([[0.0, 1.0], [2.0, -1.0], [3.0, 3.0]])
    y = torch.tensor([2, 0, 1, 0])
    assert float(center_loss(centers[y].clone(), y, centers)) == 0.0
    moved = centers[y].clone()
    moved[1] += torch.tensor([3.0, 4.0])  # one row 5 away from its centre
    assert float(center_loss(moved, y, centers)) == pytest.approx(0.5 * 25 / 4)


def test_center_loss_is_added_in_training_only():
    torch.manual_seed(0)
    net = _VectorNet(4, 6, 0.0, 3)
    crit = _CenterLossCriterion(torch.nn.CrossEntropyLoss(), net, 0.5)
    x, y = torch.randn(8, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    with torch.no_grad():
        net.head.centers.normal_()
    net.train()
    logits = net(x)
    ce = float(torch.nn.functional.cross_entropy(logits, y).detach())
    expected = ce + 0.5 * float(center_loss(net.head.embedding, y, net.head.centers).detach())
    assert float(crit(logits, y).detach()) == pytest.approx(expected) and expected > ce
    net.eval()
    with torch.no_grad():
        logits = net(x)
        assert float(crit(logits, y)) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y)))


def test_feature_network_uses_rmsprop_alpha_and_the_step_schedule():
    x, y = vectors(30)
    m = FeatureCodingModel(fc_hidden=8, max_epochs=4, val_fraction=0.0, random_state=0)
    m.fit({"audio/good": x["audio/good"]}, y)
    opt = m._make_optimizer(m.network_)
    assert isinstance(opt, torch.optim.RMSprop)
    group = opt.param_groups[0]
    assert (group["alpha"], group["momentum"], group["weight_decay"]) == (0.9, 0.0, 4e-5)
    assert [round(h["lr"], 10) for h in m.history_] == [1e-3, 1e-3, 0.94e-3, 0.94e-3]
    assert m.get_meta()["architecture"]["kind"] == "fc"


def test_full_size_coding_network_has_the_papers_parameter_count():
    from genrecli.models.neural.fusionnet import _CodingNet

    net = _CodingNet(1, 128, 144, (32, 32, 32, 64, 64), 20, 10, 512, 0.5, 10, True, True)
    n = sum(p.numel() for p in net.parameters())
    assert abs(n - 23.03e6) < 0.05e6  # the paper: 23.03 M


# ------------------------------------------------------------------------------------ sum rule and subsets
def test_sum_rule_equals_a_hand_computation():
    a = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]])
    b = np.array([[0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    c = np.array([[0.1, 0.1, 0.8], [0.4, 0.4, 0.2]])
    s = sum_rule([a, b, c])
    assert np.allclose(s, [[0.8, 1.2, 1.0], [0.9, 1.2, 0.9]])
    assert fused_scores(s, np.array([1, 1])) == pytest.approx((1.0, -np.log(0.4)))
    # y = [0, 1]: {a,b} -> [.7,1.1,.2] 1 (wrong), [.5,.8,.7] 1 (right); {a,c} -> 2 (wrong), 1 (right);
    # {b,c} -> [.2,.9,.9] 1 (ties take the first), [.7,.7,.6] 0: both wrong; {a,b,c} -> 1 (wrong), 1 (right).
    # The ties at 0.5 go to the lower log-loss: {a,c} (.35, .45), {a,b} (.35, .40), {a,b,c} (.8/3, .40).
    ranked = rank_sum_rule({"a": a, "b": b, "c": c}, np.array([0, 1]), candidate_subsets(["a", "b", "c"]))
    assert [r["subset"] for r in ranked] == [["a", "c"], ["a", "b"], ["a", "b", "c"], ["b", "c"]]
    assert [r["val_accuracy"] for r in ranked] == [0.5, 0.5, 0.5, 0.0]
    assert ranked[0]["val_nll"] == pytest.approx(-(np.log(0.35) + np.log(0.45)) / 2)
    assert all(r["fusion"] == "sum" for r in ranked)
    ranked = rank_sum_rule({"a": a, "b": b, "c": c}, np.array([0, 1]), candidate_subsets(["a", "b", "c"], 1))
    assert ranked[0]["subset"] == ["a"] and ranked[0]["val_accuracy"] == 1.0


def test_candidate_subsets_are_the_papers_247_of_8():
    subsets = candidate_subsets(list("abcdefgh"))
    assert len(subsets) == 247 and len(set(subsets)) == 247 and min(map(len, subsets)) == 2
    assert candidate_subsets(["x"]) == [("x",)]
    assert len(candidate_subsets(list("abc"), 1)) == 7


# --------------------------------------------------------------------------------- selection on validation
def _fit_vectors(inputs, y, val_inputs, val_y, **kw):
    params = dict(fc_hidden=8, dropout=0.0, batch_size=16, max_epochs=1, fusion="sum", min_subset=1, amp=False,
                  random_state=3)
    params.update(kw)
    return FusionNetModel(**params).fit(inputs, y, validation=(val_inputs, val_y))


def test_subset_search_reads_the_validation_part_and_never_the_test_part():
    x, y = vectors(90)
    tr, va, te = np.arange(0, 45), np.arange(45, 70), np.arange(70, 90)
    a = _fit_vectors(take(x, tr), y[tr], take(x, va), y[va])
    # the choice is the sum rule's best subset on the validation part, recomputed from public outputs
    val_p = a.feature_scores(take(x, va))
    ranked = rank_sum_rule(val_p, np.searchsorted(a.classes_, y[va]), candidate_subsets(a.input_names_, 1))
    assert tuple(ranked[0]["subset"]) == a.subset_ and a.fusion_ == "sum" and a.n_subsets_ == 7
    assert a.val_scores_ == {n: fused_scores(val_p[n], y[va])[0] for n in a.input_names_}
    # poisoned test labels cannot matter: fit never takes the test part; the same fit gives the same model
    y_poisoned = y.copy()
    y_poisoned[te] = (y[te] + 1) % 3
    b = _fit_vectors(take(x, tr), y_poisoned[tr], take(x, va), y_poisoned[va])
    assert b.subset_ == a.subset_ and b.candidates_ == a.candidates_
    assert np.array_equal(a.decision_function(take(x, te)), b.decision_function(take(x, te)))
    assert a.extra_metrics(take(x, te)) == a.extra_metrics(take(x, te[::-1])) == b.extra_metrics(take(x, te))
    # ... while the validation labels do: label the validation rows with one network's predictions
    noise_pred = val_p["audio/noise"].argmax(axis=1)
    c = _fit_vectors(take(x, tr), y[tr], take(x, va), a.classes_[noise_pred])  # max_epochs=1: same networks
    assert np.array_equal(c.feature_scores(take(x, te))["audio/noise"], a.feature_scores(take(x, te))["audio/noise"])
    assert c.val_scores_["audio/noise"] == 1.0 and "audio/noise" in c.subset_
    assert c.val_accuracy_ == 1.0


def test_validation_is_carved_from_training_when_none_is_given():
    x, y = vectors(60)
    m = FusionNetModel(fc_hidden=8, max_epochs=1, fusion="sum", val_fraction=0.25, amp=False, random_state=0).fit(x, y)
    assert m.n_subsets_ == 4 and len(m.subset_) >= 2
    assert set(m.val_scores_) == set(x)


def test_test_selection_is_refused_with_the_protocol_explained():
    x, y = vectors(30)
    with pytest.raises(UsageError) as exc:
        FusionNetModel(select_on="test").fit(x, y)
    message = str(exc.value)
    assert "\n" not in message and "TEST" in message and "pipeline" in message and "test-selected" in message
    with pytest.raises(UsageError, match="select_on"):
        FusionNetModel(select_on="train").fit(x, y)
    with pytest.raises(UsageError, match="single-label"):
        FusionNetModel().fit(x, np.eye(3)[y])


# ------------------------------------------------------------------------------------------ end to end
def test_tiny_end_to_end_two_patches_one_vector_meta_fusion_and_round_trip(tmp_path):
    x, y = mixed_inputs(48)
    tr, va, te = np.arange(0, 30), np.arange(30, 40), np.arange(40, 48)
    m = FusionNetModel(**TINY, fusion="meta", random_state=0).fit(take(x, tr), y[tr], validation=(take(x, va), y[va]))
    assert m.fusion_ == "meta" and m.meta_model_ is not None and len(m.subset_) >= 2
    assert set(m.feature_models_) == set(x) and m.n_subsets_ == 4
    assert sorted({r["fusion"] for r in m.candidates_}) == ["meta", "sum"] and len(m.candidates_) == 4
    kinds = {n: mm.get_meta()["architecture"]["kind"] for n, mm in m.feature_models_.items()}
    assert kinds == {"audio/p1": "vgg-netvlad-attention", "audio/p2": "vgg-netvlad-attention", "audio/v": "fc"}
    # z-normalised stacked probabilities: subset size x classes values per track
    assert m.meta_model_.input_shapes_["stack"] == (3 * len(m.subset_),)
    scores = m.decision_function(take(x, te))
    p = m.predict_proba(take(x, te))
    assert scores.shape == (8, 3) and np.allclose(p.sum(axis=1), 1.0)
    extra = m.extra_metrics(take(x, te))
    assert extra["subset"] == list(m.subset_) and extra["fusion"] == "meta" and extra["meta_won"] == 1
    assert set(extra["val_scores"]) == set(x) and sum(extra["selected"].values()) == len(m.subset_)
    m.save(tmp_path / "art")
    back = load_model(tmp_path / "art")
    assert isinstance(back, FusionNetModel) and back.subset_ == m.subset_ and back.fusion_ == "meta"
    assert np.array_equal(back.decision_function(take(x, te)), scores)
    for n in x:
        assert np.array_equal(back.feature_scores(take(x, te))[n], m.feature_scores(take(x, te))[n])


def test_sum_fusion_round_trip_and_embedding_meta_input(tmp_path):
    x, y = vectors(48)
    tr, va, te = np.arange(0, 30), np.arange(30, 40), np.arange(40, 48)
    s = _fit_vectors(take(x, tr), y[tr], take(x, va), y[va], max_epochs=2)
    mean = sum_rule([s.feature_scores(take(x, te))[n] for n in s.subset_]) / len(s.subset_)
    assert np.allclose(s.predict_proba(take(x, te)), mean)
    s.save(tmp_path / "sum")
    assert np.array_equal(load_model(tmp_path / "sum").decision_function(take(x, te)), s.decision_function(take(x, te)))
    k = _fit_vectors(take(x, tr), y[tr], take(x, va), y[va], max_epochs=2, keep_all_networks=False)
    assert k.subset_ == s.subset_ and set(k.feature_models_) == set(s.subset_) and set(k.val_scores_) == set(x)
    k.save(tmp_path / "kept")
    kept = load_model(tmp_path / "kept").decision_function(take(x, te))
    assert np.array_equal(kept, s.decision_function(take(x, te)))
    e = FusionNetModel(**{**TINY, "fusion": "meta", "meta_input": "embedding", "random_state": 1}).fit(
        take(x, tr), y[tr], validation=(take(x, va), y[va]))
    assert e.meta_model_.input_shapes_["stack"] == (8 * len(e.subset_),)  # fc_hidden values per feature
    e.save(tmp_path / "emb")
    assert np.array_equal(load_model(tmp_path / "emb").decision_function(take(x, te)), e.decision_function(take(x, te)))


def test_feature_network_learns_patches_and_round_trips(tmp_path):
    x, y = mixed_inputs(60, seed=1)
    tr, te = np.arange(0, 45), np.arange(45, 60)
    m = FeatureCodingModel(channels=(4, 4, 4, 8, 8), clusters=4, heads=2, fc_hidden=16, dropout=0.1, patch_frames=10,
                           test_crops=3, max_epochs=12, batch_size=16, lr=3e-3, val_fraction=0.0, amp=False,
                           random_state=0)
    m.fit({"audio/p1": x["audio/p1"][tr]}, y[tr])
    acc = float(np.mean(m.predict({"audio/p1": x["audio/p1"][te]}) == y[te]))
    assert acc > 0.6
    assert m.embed({"audio/p1": x["audio/p1"][te]}).shape == (15, 16)
    m.save(tmp_path / "f")
    back = load_model(tmp_path / "f")
    assert np.array_equal(back.decision_function({"audio/p1": x["audio/p1"][te]}),
                          m.decision_function({"audio/p1": x["audio/p1"][te]}))


def test_patch_inputs_read_lazily_from_feature_views(tmp_path):
    import h5py

    from genrecli.pipeline.features import FeatureView

    x, y = mixed_inputs(40, seed=2)
    path = tmp_path / "features.h5"
    with h5py.File(path, "w") as h5:
        for name in ("audio/p1", "audio/p2"):
            h5.create_dataset(f"{name}/data", data=x[name])
    rows = np.random.default_rng(0).permutation(40)
    tr, va, te = rows[:24], rows[24:32], rows[32:]

    def views(r):
        return {"audio/p1": FeatureView(path, "audio/p1", r), "audio/p2": FeatureView(path, "audio/p2", r),
                "audio/v": x["audio/v"][r]}

    params = {**TINY, "max_epochs": 1, "meta_max_epochs": 1, "random_state": 0}
    a = FusionNetModel(**params).fit(views(tr), y[tr], validation=(views(va), y[va]))
    b = FusionNetModel(**params).fit(take(x, tr), y[tr], validation=(take(x, va), y[va]))
    assert a.subset_ == b.subset_ and a.fusion_ == b.fusion_
    assert np.allclose(a.decision_function(views(te)), b.decision_function(take(x, te)), atol=1e-5)


def test_registry_entries_and_options():
    spec = get_model("fusionnet")
    model = spec.build(seed=4, meta_folds=5, clusters=10)
    assert isinstance(model, FusionNetModel) and model.random_state == 4 and model.meta_folds == 5
    assert {"select_on", "meta_folds", "clusters", "heads", "center_loss_weight", "fusion"} <= set(spec.option_names())
    with pytest.raises(UsageError, match="unknown option"):
        spec.build(bogus=1)
    feat = get_model("fusionnet-feature")
    assert feat.capabilities.max_inputs == 1 and isinstance(feat.build(seed=0), FeatureCodingModel)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fit_and_round_trip(tmp_path):
    x, y = mixed_inputs(48)
    tr, va, te = np.arange(0, 30), np.arange(30, 40), np.arange(40, 48)
    m = FusionNetModel(**{**TINY, "amp": True}, fusion="auto", device="cuda", random_state=0)
    m.fit(take(x, tr), y[tr], validation=(take(x, va), y[va]))
    scores = m.decision_function(take(x, te))
    assert np.isfinite(scores).all()
    m.save(tmp_path / "art")
    assert np.allclose(load_model(tmp_path / "art").decision_function(take(x, te)), scores, atol=1e-5)
