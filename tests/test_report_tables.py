"""The report's tables keep runs apart that differ only in their ``-o`` options."""

from genrecli.pipeline.report import model_table, svm_pivot


def _metrics(model, inputs, kernels, options, acc):
    stat = {"mean": acc, "std": 0.0, "n": 1}
    return {"run": f"{model}-{acc}", "config": {"model": model, "inputs": inputs, "kernels": kernels, "split": "s",
                                               "options": options, "multilabel": False},
            "summary": {"accuracy": stat, "macro_f1": stat, "fit_seconds": stat, "predict_seconds": stat}}


def test_runs_with_other_options_get_their_own_column_and_row():
    runs = [_metrics("svm", ["audio/timbre"], ["linear"], {}, 0.6),
            _metrics("svm", ["audio/timbre"], ["linear"], {"scale": "none"}, 0.3),
            _metrics("dkn", ["audio/timbre"], ["linear"], {}, 0.5),
            _metrics("dkn", ["audio/timbre"], ["linear"], {"scale": "none"}, 0.2)]
    pivot = svm_pivot(runs, "s")
    assert pivot[0] == ["kernel", "audio/timbre", "audio/timbre [scale=none]"]
    assert pivot[1] == ["linear", "60.0 ± 0.0", "30.0 ± 0.0"]
    rows = model_table(runs, "s")
    assert sorted(r[0] for r in rows[1:]) == ["dkn", "dkn [scale=none]"]
    assert {r[0]: r[2] for r in rows[1:]} == {"dkn": "50.0 ± 0.0", "dkn [scale=none]": "20.0 ± 0.0"}


# ------------------------------------------------------------------------------ the protocol table (issue 13)
def _pooled_run(name, model, inputs, y, pred, split="s"):
    import numpy as np

    pred = np.atleast_2d(pred)
    return {"run": name, "config": {"model": model, "inputs": inputs, "kernels": [], "split": split, "options": {},
                                    "labels": ["a", "b", "c"], "multilabel": False},
            "pooled": {"index": list(range(len(y))), "y_true": list(map(int, y)), "y_pred": pred.tolist(),
                       "sets": [[0, s] for s in range(len(pred))]},
            "spread": {"accuracy": {"std_seeds": 0.01, "std_folds": None, "std_repeats": None}}}


def test_protocol_table_marks_the_best_the_tied_the_floor_and_fusion():
    import numpy as np

    from genrecli.pipeline.protocol import StatsOptions, main_rows, per_class_rows, protocol_table

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    noisy = lambda acc: np.where(rng.random(300) < acc, y, (y + 1) % 3)  # noqa: E731
    best = noisy(0.85)
    tied = best.copy()  # 7 of the best's right items made wrong, 5 of its wrong ones right: 2 items behind
    right, wrong = np.flatnonzero(best == y), np.flatnonzero(best != y)
    tied[right[:7]] = (y[right[:7]] + 2) % 3
    tied[wrong[:5]] = y[wrong[:5]]
    runs = [_pooled_run("maj", "majority", ["audio/x"], y, np.zeros(300, int)),
            _pooled_run("fused", "dkn", ["audio/x", "text/t"], y, best),
            _pooled_run("tied", "svm", ["text/t"], y, tied),
            _pooled_run("audio", "dkn", ["audio/x"], y, noisy(0.5)),
            _pooled_run("text", "dkn", ["text/t"], y, noisy(0.6))]
    table = protocol_table(runs, "s", None, StatsOptions(resamples=500))
    rows = {r[1] + "|" + r[2]: r for r in main_rows(table)[1:]}
    assert main_rows(table)[1][0] == "floor"  # the floor row comes first
    assert rows["dkn|audio/x, text/t"][0] == "★"
    assert rows["svm|text/t"][0] == "†"  # not significantly different from the best
    assert rows["dkn|audio/x"][0] == "" and rows["dkn|text/t"][0] == ""
    assert rows["dkn|audio/x, text/t"][-1].startswith("▲") and "vs dkn on text/t" in rows["dkn|audio/x, text/t"][-1]
    lo, hi = rows["dkn|audio/x, text/t"][4].split("[")[1].rstrip("]").split(", ")
    assert float(lo) < 100 * (best == y).mean() < float(hi)
    assert rows["majority|audio/x"][5] == "1.0" and rows["majority|audio/x"][6] == "—"
    assert len(per_class_rows(table)) == 6 and per_class_rows(table)[0][3].startswith("a (n=")


# ------------------------------------------------------------------------- DM2KMN fine-tuning curves (issue 13)
def test_finetune_curves_are_rendered_from_the_aggregated_extra(tmp_path):
    """One row per (rate, checkpoint) from the fold x seed aggregate of DM2KMNClassifier.ft_curves_, rates in
    numeric order, unreached checkpoints as a dash; the PNG is written; a run without curves has no table."""
    from genrecli.pipeline.evaluate import _aggregate_extra
    from genrecli.pipeline.report import _curves_png, finetune_curve_rows

    def curve(acc0, acc1, nan_last=False):
        return {"epoch": [0, 5], "loss": [0.2, 0.1], "train_acc": [1.0, 1.0], "active": [0.1, 0.05],
                "re": [2.0, 2.5], "val_acc": [acc0, float("nan") if nan_last else acc1], "val_changed": [0.0, 0.02]}

    folds = [{"finetune_curves": {"0.01": curve(0.5, 0.6), "0.001": curve(0.5, 0.5)}},
             {"finetune_curves": {"0.01": curve(0.7, 0.8), "0.001": curve(0.7, 0.7, nan_last=True)}}]
    m = _metrics("dm2kmn", ["audio/mfcc"], [], {}, 0.5)
    m["summary"]["extra"] = _aggregate_extra(folds)
    rows = finetune_curve_rows(m)
    assert rows[0][:2] == ["lr", "epoch"] and len(rows) == 1 + 2 * 2
    assert [r[:2] for r in rows[1:]] == [["0.001", "0"], ["0.001", "5"], ["0.01", "0"], ["0.01", "5"]]
    val = rows[0].index("val acc %")
    assert rows[4][val] == "70.0 ± 10.0"  # lr 0.01, epoch 5: mean of 0.6 and 0.8
    assert rows[2][val] == "—"  # a fold diverged there (NaN)
    assert _curves_png(m, tmp_path / "c.png") and (tmp_path / "c.png").stat().st_size > 0
    plain = _metrics("dkn", ["audio/mfcc"], [], {}, 0.5)
    assert finetune_curve_rows(plain) == [] and not _curves_png(plain, tmp_path / "d.png")
