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
