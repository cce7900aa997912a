"""Bootstrap intervals and paired tests (genrecli.stats): checks that can fail."""

import math

import numpy as np
import pytest
from sklearn.metrics import f1_score

from genrecli import stats


def _predictions(rng, y, accuracy, n_classes):
    """Predictions right with probability ``accuracy``, else a uniformly drawn wrong class."""
    right = rng.random(len(y)) < accuracy
    wrong = (y + rng.integers(1, n_classes, len(y))) % n_classes
    return np.where(right, y, wrong)


def test_pooled_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 300)
    preds = np.stack([_predictions(rng, y, 0.6, 4) for _ in range(3)])
    assert stats.metric(y, preds, "accuracy") == pytest.approx(np.mean([(p == y).mean() for p in preds]))
    assert stats.metric(y, preds, "macro_f1") == pytest.approx(np.mean([f1_score(y, p, average="macro") for p in preds]))
    missing = preds.copy()
    missing[0, :10] = -1  # a set without predictions for some items: scored on the items it has
    assert stats.metric(y, missing[:1], "accuracy") == pytest.approx((preds[0, 10:] == y[10:]).mean())


def test_interval_covers_the_true_accuracy_at_about_the_nominal_rate():
    rng = np.random.default_rng(1)
    true_acc, n, trials = 0.7, 150, 300
    covered = 0
    for t in range(trials):
        y = rng.integers(0, 3, n)
        ci = stats.bootstrap_ci(y, _predictions(rng, y, true_acc, 3), "accuracy", n_boot=1000, seed=t)
        covered += ci["low"] <= true_acc <= ci["high"]
        assert ci["low"] <= ci["estimate"] <= ci["high"]
    assert 0.90 <= covered / trials <= 0.985, covered / trials


def test_interval_narrows_with_more_items_and_is_seeded():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 2000)
    p = _predictions(rng, y, 0.7, 3)
    wide = stats.bootstrap_ci(y[:100], p[:100], "macro_f1")
    narrow = stats.bootstrap_ci(y, p, "macro_f1")
    assert narrow["high"] - narrow["low"] < 0.5 * (wide["high"] - wide["low"])
    assert stats.bootstrap_ci(y, p, seed=3) == stats.bootstrap_ci(y, p, seed=3)


def test_cluster_bootstrap_is_wider_for_correlated_items():
    rng = np.random.default_rng(3)
    clusters = np.repeat(np.arange(40), 10)  # 40 groups of 10 items that are all right or all wrong together
    y = rng.integers(0, 3, 400)
    right = np.repeat(rng.random(40) < 0.6, 10)
    p = np.where(right, y, (y + 1) % 3)
    item = stats.bootstrap_ci(y, p)
    cluster = stats.bootstrap_ci(y, p, clusters=clusters)
    assert cluster["unit"] == "cluster" and (cluster["high"] - cluster["low"]) > 2 * (item["high"] - item["low"])


def test_identical_systems_have_p_one_and_a_better_one_a_small_p():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 5, 400)
    a = _predictions(rng, y, 0.6, 5)
    for name in ("accuracy", "macro_f1"):
        same = stats.paired_bootstrap(y, a, a.copy(), name)
        assert same["p"] == pytest.approx(1.0) and same["diff"] == 0.0
    better = np.where(rng.random(400) < 0.5, y, a)  # fixes about half of a's errors
    for name in ("accuracy", "macro_f1"):
        res = stats.paired_bootstrap(y, better, a, name)
        assert res["diff"] > 0.1 and res["p"] < 0.01 and res["low"] > 0
    assert stats.paired_test(y, better, a, test="mcnemar")["p"] < 1e-6
    close = np.where(rng.random(400) < 0.02, y, a)  # fixes a handful: not significant
    assert stats.paired_bootstrap(y, close, a)["p"] > 0.05


def test_mcnemar_against_a_hand_computation():
    # b = 8 items only A gets right, c = 2 items only B gets right, 10 both right, 5 both wrong
    a = np.array([1] * 8 + [0] * 2 + [1] * 10 + [0] * 5, dtype=bool)
    b = np.array([0] * 8 + [1] * 2 + [1] * 10 + [0] * 5, dtype=bool)
    res = stats.mcnemar_exact(a, b)
    # P[X <= 2], X ~ Bin(10, 1/2) = (1 + 10 + 45) / 1024; two-sided: x2
    assert (res["b"], res["c"]) == (8, 2)
    assert res["p"] == pytest.approx(2 * 56 / 1024)
    assert stats.mcnemar_exact(b, a)["p"] == pytest.approx(res["p"])
    assert stats.mcnemar_exact(a, a)["p"] == 1.0
    assert stats.mcnemar_exact([1] * 5, [0] * 5)["p"] == pytest.approx(2 / 32)


def test_item_correct_is_a_majority_over_sets():
    y = np.array([0, 1, 2])
    preds = np.array([[0, 1, 0], [0, 0, 0], [1, 1, -1]])
    assert stats.item_correct(y, preds).tolist() == [True, True, False]


def test_holm():
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.5])
    assert adjusted.tolist() == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert stats.holm([0.9, 0.8]).tolist() == pytest.approx([1.0, 1.0])


def test_pool_predictions_puts_folds_of_a_repeat_side_by_side():
    entries = []
    for fold, test in enumerate([[0, 1], [2, 3], [1, 3], [0, 2]]):  # 2 folds x 2 repeats
        for seed in range(2):
            entries.append({"fold": fold, "seed": seed, "test_index": np.array(test), "y_true": np.array(test) % 2,
                            "y_pred": np.full(2, fold * 10 + seed)})
    pooled = stats.pool_predictions(entries, folds_per_repeat=2)
    assert pooled["index"].tolist() == [0, 1, 2, 3] and pooled["y_true"].tolist() == [0, 1, 0, 1]
    assert pooled["sets"] == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert pooled["y_pred"].tolist() == [[0, 0, 10, 10], [1, 1, 11, 11], [30, 20, 30, 20], [31, 21, 31, 21]]
    other = {"index": np.array([1, 2, 5]), "y_true": np.array([1, 0, 1]), "y_pred": np.array([[7, 8, 9]])}
    y, pa, pb = stats.common_items(pooled, other)
    assert y.tolist() == [1, 0] and pa.shape == (4, 2) and pb.tolist() == [[7, 8]]
    assert not math.isnan(stats.metric(y, pa))
