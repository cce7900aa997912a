"""``genre run EXPERIMENT.toml``: a tiny grid end to end on a corpus fixture, the rerun, malformed files."""

import csv
import json

import pytest

from conftest import run_cli
from corpus_fixtures import make_table

GRID = """
description = "tiny grid on the table fixture"

[corpus]
dataset = "table"
name = "tab"
root = "{root}"
splits = ["groupkfold:artist:3:2", "given:split"]

[kernels]
kernels = ["linear", "rbf"]

[[train]]
model = "majority"
seeds = 1
splits = ["groupkfold:artist:3:2"]

[[train]]
model = "svm"
inputs = ["audio/table"]
kernels = ["linear", "rbf"]
seeds = 1

[[train]]
model = "dkn"
inputs = ["audio/table"]
kernels = ["linear", "rbf"]
options = {{hidden = 4, max_iter = 20, C = 1.0}}
seeds = 2
splits = ["groupkfold:artist:3:2"]

[report]
resamples = 200
"""


def _write(tmp_path, text):
    path = tmp_path / "exp.toml"
    path.write_text(text)
    return path


def test_tiny_experiment_end_to_end_and_rerun_is_up_to_date(tmp_path, data_home, capsys):
    root = make_table(tmp_path / "t", "csv")
    exp = _write(tmp_path, GRID.format(root=root))
    code, out, err = run_cli(capsys, "run", exp)
    assert code == 0, err
    report = data_home / "tab" / "report"
    md = (report / "results.md").read_text()
    assert "## Every system — split groupkfold-artist-3-2" in md and "## Every system — split given-split" in md
    assert "| floor | majority |" in md  # the majority run of the k-fold split
    assert "majority (computed)" in md  # the given split has no majority run: the floor is computed from the manifest
    assert "★" in md and "95% CI" in md and "Per-class F1 %" in md and "artist groups" in md
    assert "genre 0.1.0, trained" in md and "| exp | tiny grid on the table fixture |" in md
    assert (report / "index.html").read_text().count("<table>") >= 6
    rows = list(csv.DictReader((report / "results.csv").open()))
    dkn = [r for r in rows if r["model"] == "dkn" and r["metric"] == "accuracy"]
    assert len(dkn) == 6 * 2  # 3 folds x 2 repeats x 2 seeds
    assert {(r["repeat"], r["fold_in_repeat"]) for r in dkn} == {(str(r), str(f)) for r in range(2) for f in range(3)}
    metrics = json.loads(next((data_home / "tab" / "runs").glob("dkn__*groupkfold*/metrics.json")).read_text())
    assert metrics["layout"] == {"folds_per_repeat": 3, "repeats": 2, "folds": 6, "seeds": 2}
    assert len(metrics["pooled"]["index"]) == 24 and len(metrics["pooled"]["sets"]) == 4  # every item once per repeat x seed
    assert sum(metrics["per_class"]["support"]) == 24 and metrics["spread"]["accuracy"]["std_repeats"] is not None
    config = json.loads(next((data_home / "tab" / "runs").glob("dkn__*groupkfold*/config.json")).read_text())
    assert config["split_spec"] == "groupkfold:artist:3:2" and config["toolkit_version"] == "0.1.0"

    code, out, err = run_cli(capsys, "run", exp)
    assert code == 0, err
    assert "done: 0 written" in err, err
    assert "report: up to date" in err


@pytest.mark.parametrize("edit, fragment", [
    (lambda t: t.replace('seeds = 1\nsplits', 'seedz = 1\nsplits', 1), "train[0].seedz: unknown key"),
    (lambda t: t.replace('model = "svm"', 'model = "svn"'), "train[1].models: unknown model 'svn'"),
    (lambda t: t.replace('dataset = "table"', 'dataset = "folder"'), "train[1].inputs: unknown audio feature 'table'"),
    (lambda t: t.replace('inputs = ["audio/table"]', 'inputs = ["sound/table"]', 1), "train[1].inputs: input 'sound/table' is not"),
    (lambda t: t.replace("{hidden = 4", "{hiden = 4"), "train[2].options: unknown option 'hiden'"),
    (lambda t: t.replace('"given:split"]', '"given:split", "bogus:3"]'), "corpus.splits[2]: unknown split kind"),
    (lambda t: t.replace('[corpus]', '[corpsu]'), "corpsu: unknown key"),
    (lambda t: t.replace('kernels = ["linear", "rbf"]', 'kernels = ["cosine"]', 1), "kernels.kernels: unknown kernel"),
    (lambda t: t + "\n[[train\n", "invalid TOML"),
])
def test_malformed_experiment_is_one_line(tmp_path, data_home, capsys, edit, fragment):
    exp = _write(tmp_path, edit(GRID.format(root=tmp_path)))
    code, out, err = run_cli(capsys, "run", exp)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1, err
    assert str(exp) in lines[0] and fragment in lines[0], lines[0]
    assert not (data_home / "tab").exists()  # validated before anything ran


def test_bundled_experiment_files_validate():
    from pathlib import Path

    from genrecli.pipeline.experiment import load_experiment

    folder = Path(__file__).resolve().parents[1] / "experiments"
    for name in ("demo", "piano", "folk"):
        exp = load_experiment(folder / f"{name}.toml")
        assert exp.jobs and exp.report is not None
    demo = load_experiment(folder / "demo.toml")
    assert {j.model for j in demo.jobs} >= {"svm", "dkn", "dm2kmn", "majority"}
