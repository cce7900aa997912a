"""The command line end to end: real tunes from the music21 corpus, bad inputs, caching, exit codes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf

from conftest import write_kern, write_wav


def genre(*args, home: Path, check_rc=None):
    env = {**os.environ, "GENRE_DATA_HOME": str(home), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "genrecli", *args], capture_output=True, text=True, env=env, timeout=900)
    if check_rc is not None:
        assert proc.returncode == check_rc, f"genre {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.mark.slow
def test_folk_dances_end_to_end(tmp_path):
    home = tmp_path / "home"
    genre("ingest", "folk-dances", "--name", "folk", "--limit", "40", "--seed", "1", home=home, check_rc=0)
    genre("extract-audio", "--data", "folk", "--features", "mfcc", "--max-seconds", "10", "--jobs", "2", home=home, check_rc=0)
    genre("extract-text", "--data", "folk", "--encoder", "minilm", home=home, check_rc=0)
    genre("kernels", "--data", "folk", "--inputs", "audio/mfcc,text/minilm", home=home, check_rc=0)
    genre("train", "--data", "folk", "--model", "svm", "--seeds", "1", home=home, check_rc=0)
    genre("evaluate", "--data", "folk", home=home, check_rc=0)
    out = genre("report", "--data", "folk", home=home, check_rc=0).stdout
    report = home / "folk" / "report"
    assert (report / "index.html").exists() and (report / "results.md").exists()
    assert len(list(report.glob("confusion-*.png"))) == 8
    assert "audio/mfcc" in out and "text/minilm" in out
    for run in (home / "folk" / "runs").iterdir():
        metrics = json.loads((run / "metrics.json").read_text())
        acc = metrics["summary"]["accuracy"]["mean"]
        assert 0.0 <= acc <= 1.0 and metrics["summary"]["accuracy"]["n"] == 1
        assert (run / "fold0-seed0" / "model.safetensors").exists() and (run / "fold0-seed0" / "model.json").exists()
    with h5py.File(home / "folk" / "features.h5") as h5:
        assert h5["text/minilm/label_embeddings"].shape[1] == 384  # genre-name embeddings, one per label
        mfcc = h5["audio/mfcc/data"][()]
        assert mfcc.dtype == np.float32 and np.isfinite(mfcc[h5["audio/mfcc/valid"][()]]).all()
        assert not any(line.startswith("T:") or line.startswith("R:")
                       for t in h5["text/source/text"].asstr()[()] for line in t.splitlines())

    # second runs do no work and say so
    for args in (("extract-audio", "--data", "folk", "--max-seconds", "10"), ("extract-text", "--data", "folk"),
                 ("kernels", "--data", "folk", "--inputs", "audio/mfcc,text/minilm"), ("train", "--data", "folk", "--seeds", "1"),
                 ("evaluate", "--data", "folk"), ("report", "--data", "folk")):
        proc = genre(*args, home=home, check_rc=0)
        assert "up to date" in proc.stderr or "nothing to do" in proc.stderr, (args, proc.stderr)
    # a changed parameter recomputes
    proc = genre("extract-audio", "--data", "folk", "--max-seconds", "5", home=home, check_rc=0)
    assert "recomputing" in proc.stderr and "wrote audio/mfcc" in proc.stderr


def make_bad_corpus(root: Path) -> Path:
    write_wav(root / "calm" / "good1.wav", freq=220)
    write_wav(root / "calm" / "good2.wav", freq=330)
    sf.write(root / "calm" / "empty.wav", np.zeros(0, dtype=np.float32), 22050)  # a valid header, no samples
    (root / "calm" / "fake.mid").write_text("this is not a MIDI file\n")
    write_wav(root / "loud" / "good3.wav", freq=440)
    write_wav(root / "loud" / "good4.wav", freq=550)
    (root / "loud" / "corrupt.krn").write_text("**kern\t**kern\n4c\n%%% garbage \x00\n")
    write_kern(root / "loud" / "nonotes.krn").write_text("**kern\n*M4/4\n=1\n4r\n=2\n*-\n")
    write_kern(root / "calm" / "score1.krn", composer="A")
    write_kern(root / "loud" / "score2.krn", composer="B")
    return root


def test_bad_inputs_one_line_each_and_recorded(tmp_path):
    home = tmp_path / "home"
    root = make_bad_corpus(tmp_path / "corpus")
    genre("ingest", "folder", "--root", str(root), "--name", "bad", "--split", "random:0.5", home=home, check_rc=0)
    proc = genre("extract-audio", "--data", "bad", home=home, check_rc=2)
    warned = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    for stem in ("empty", "fake", "corrupt", "nonotes"):
        assert any(stem in line for line in warned), (stem, proc.stderr)
    assert "4 item(s) failed" in proc.stderr
    with h5py.File(home / "bad" / "features.h5") as h5:
        assert h5["audio/mfcc/valid"][()].sum() == 6  # the good tracks (4 WAVs, 2 scores) were processed
    proc = genre("extract-text", "--data", "bad", "--encoder", "tfidf", home=home, check_rc=2)
    assert "corrupt" in proc.stderr and "nonotes" in proc.stderr
    info = genre("info", "--data", "bad", home=home, check_rc=0).stdout
    assert "failed items" in info
    for stem in ("empty", "fake", "corrupt", "nonotes"):
        assert stem in info


@pytest.mark.parametrize(
    "args, fragment",
    [
        (("ingest", "piano", "--root", "/nonexistent/dir"), "no such directory"),
        (("ingest", "nosuchcorpus"), "unknown dataset"),
        (("extract-audio", "--data", "nothing-here"), "run `genre ingest` first"),
        (("list", "things"), "expected datasets"),
        (("train", "--no-such-flag"), "No such option"),
        (("kernels", "--data", "x", "--kernels", "cosine"), "unknown kernel"),
        (("train", "--data", "x", "--model", "svm", "--landmarks", "5"), "applies to the dm2kmn models"),
    ],
)
def test_usage_errors_exit_1_with_one_line(tmp_path, args, fragment):
    proc = genre(*args, home=tmp_path / "home", check_rc=1)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], proc.stderr
