"""A multi-label corpus through every stage: manifest, audio features, kernels, SVM, multi-label metrics."""

import json

import numpy as np

from corpus_fixtures import make_music4all, write_audio
from genrecli.layout import DatasetPaths
from genrecli.pipeline.audio import extract_audio
from genrecli.pipeline.evaluate import evaluate
from genrecli.pipeline.ingest import ingest
from genrecli.pipeline.kernels import compute_kernels
from genrecli.pipeline.report import report
from genrecli.pipeline.train import train


def test_music4all_multilabel_pipeline(tmp_path, data_home):
    root = make_music4all(tmp_path / "m4a", n=40)
    for i, path in enumerate(sorted((root / "audios").glob("*.mp3"))):  # long enough for MFCCs
        write_audio(path, seconds=0.5, freq=300 + 10 * i)
    ingest("music4all", root=root, options={"min_count": "3"})
    extract_audio("music4all", features=("mfcc",), max_seconds=2.0)
    compute_kernels("music4all", inputs=("audio/mfcc",), kernels=("linear", "rbf"))
    train("svm", "music4all", inputs=("audio/mfcc",), kernels=("rbf",), seeds=1)
    evaluate("music4all")
    paths = DatasetPaths.of("music4all")
    (run,) = list(paths.runs.iterdir())
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["config"]["multilabel"] is True
    summary = metrics["summary"]
    for key in ("auc_roc", "example_f", "micro_f1", "adiv@1", "adiv@3"):
        assert 0.0 <= summary[key]["mean"] <= 1.0, key
    assert "accuracy" not in summary and "confusion" not in metrics
    report("music4all")
    assert "Multi-label runs" in (paths.report / "results.md").read_text()
    assert np.isfinite(summary["auc_roc"]["mean"])
