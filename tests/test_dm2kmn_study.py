"""experiments/dm2kmn_study.py (issue 13 section 2): the grid it trains and how it picks its variant."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "experiments" / "dm2kmn_study.py"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("dm2kmn_study", PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _options(cmd):
    return dict(cmd[i + 1].split("=", 1) for i, a in enumerate(cmd) if a == "-o")


def test_every_variant_is_one_train_command_recognised_from_its_options(study):
    cmds = study.jobs_for("piano", "group:composer:0.7", strong=False, variants=list(study.VARIANTS))
    models = [c[c.index("--model") + 1] for c in cmds]
    assert models[:4] == ["majority", "svm", "dkn", "dm2kmn-init"] and models.count("dm2kmn") == len(study.VARIANTS)
    import json

    for name, cmd in zip(study.VARIANTS, [c for c in cmds if c[c.index("--model") + 1] == "dm2kmn"]):
        opts = {k: (json.loads(v) if v[:1] in "[0123456789tf" else v) for k, v in _options(cmd).items()}
        assert study._variant_of({"options": opts}) == name
    strong = study.jobs_for("piano", "group:work:0.7", strong=True, variants=["paper", "adam"])
    svm_inputs = [c[c.index("--inputs") + 1] for c in strong if c[c.index("--model") + 1] == "svm"]
    assert svm_inputs == ["audio/mfcc,text/minilm", "audio/timbre,audio/rhythm"]  # no SVM trained twice
    assert sum(c[c.index("--model") + 1] == "dm2kmn" for c in strong) == 2 + 1  # adam: base inputs only


def test_the_variant_is_chosen_by_its_training_cv_never_by_test(study):
    def row(variant, cv, acc, inputs="base"):
        return {"system": "dm2kmn", "variant": variant, "cv": cv, "inputs": inputs, "acc": {"estimate": acc}}

    rows = [row("paper", 0.80, 0.70), row("beta", 0.80, 0.90), row("xent", 0.79, 0.99),
            {"system": "dkn", "cv": None, "variant": "", "inputs": "base"}, row("adam", None, 1.0)]
    assert study.select_variant(rows)["variant"] == "paper"  # tie on CV: the simpler variant, whatever the test
    rows.append(row("paper", 0.81, 0.10, inputs="strong"))
    assert study.select_variant(rows)["inputs"] == "strong"
    assert study.select_variant([r for r in rows if r["system"] != "dm2kmn"]) is None
