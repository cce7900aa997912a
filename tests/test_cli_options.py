"""Global options anywhere, help shown as typed, arguments checked before any store is touched, and a bug in
a per-track stage failing loudly instead of becoming N "failed tracks"."""

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import genrecli.pipeline.audio as audio_stage
from genrecli import __version__, cli, store
from genrecli.errors import InputError, UsageError
from genrecli.pipeline.features import TrackInternalError, run_per_track

from conftest import write_wav
from conftest import run_cli

_REAL_EXTRACT = audio_stage._extract_one


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def make_corpus(root: Path) -> Path:
    for label, freqs in (("calm", (220, 330, 247)), ("loud", (440, 550, 494))):
        for k, freq in enumerate(freqs):
            write_wav(root / label / f"t{k}.wav", freq=freq, seconds=0.5)
    return root


@pytest.fixture
def ingested(tmp_path, capsys, data_home):
    code, _, err = run_cli(capsys, "ingest", "folder", "--root", make_corpus(tmp_path / "corpus"), "--name", "c",
                           "--split", "random:0.5")
    assert code == 0, err
    return data_home


# ------------------------------------------------------------------------------------- global options


def test_version_and_global_options_after_the_command(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("GENRE_DATA_HOME", None)
    proc = subprocess.run([sys.executable, "-m", "genrecli", "--version"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == f"genre {__version__}", proc
    home = tmp_path / "elsewhere"
    proc = subprocess.run([sys.executable, "-m", "genrecli", "info", "--data", "x", "--data-home", str(home), "--quiet"],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert error_lines(proc.stderr) == [f"error: {home / 'x'}: no dataset 'x' here (run `genre ingest` first)"]


def test_data_home_after_the_command_wins(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("GENRE_DATA_HOME", raising=False)
    root = make_corpus(tmp_path / "corpus")
    before, after = tmp_path / "before", tmp_path / "after"
    code, _, err = run_cli(capsys, "--data-home", before, "ingest", "folder", "--root", root, "--name", "c",
                           "--data-home", after, "--quiet")
    assert code == 0, err
    assert (after / "c" / "manifest.h5").is_file() and not before.exists()
    assert err == ""  # --quiet after the command
    code, out, err = run_cli(capsys, "info", "-d", "c", "--verbose", "--data-home", after)
    assert code == 0 and "c" in out, err
    code, out, err = run_cli(capsys, "-q", "info", "--data-home", after, "-d", "c", "-v")  # both: quiet wins
    assert code == 0, err


def test_help_is_shown_as_typed(capsys):
    code, out, err = run_cli(capsys)  # bare `genre`: the help, not an error
    assert code == 0 and out.startswith("Usage:") and "COMMAND" in out and err == "", (out, err)
    code, out, _ = run_cli(capsys, "ingest", "--help")
    assert code == 0
    flat = " ".join(out.split())
    assert "group:KEY:F" in flat and "groupkfold:KEY:K" in flat, out
    assert "\N{KEY}" not in out
    code, out, _ = run_cli(capsys, "info", "--help")
    assert code == 0 and "--data-home" in out and "--quiet" in out and "--verbose" in out


# ------------------------------------------------------------------------------------- argument checks


@pytest.mark.parametrize(
    "args, fragment",
    [
        (("extract-audio", "--data", "c", "--jobs", "0"), "--jobs must be >= 1 (got 0)"),
        (("extract-audio", "--data", "c", "-j", "-3"), "--jobs must be >= 1 (got -3)"),
        (("extract-audio", "--data", "c", "--device", "tpu"), "--device tpu: expected cpu, cuda, cuda:N or auto"),
        (("extract-audio", "--data", "c", "--device", "cuda:x"), "--device cuda:x: expected"),
        (("extract-audio", "--data", "c", "--max-seconds", "0"), "--max-seconds must be a positive, finite number"),
        (("extract-audio", "--data", "c", "--max-seconds", "nan"), "--max-seconds must be a positive, finite number"),
        (("extract-audio", "--data", "c", "--max-seconds", "inf"), "--max-seconds must be a positive, finite number"),
        (("extract-audio", "--data", "c", "--max-seconds", "-1.5"), "--max-seconds must be a positive, finite number"),
        (("extract-audio", "--data", "c", "--shard", "3/2"), "--shard 3/2"),
        (("extract-audio", "--data", "c", "--soundfont", "/no/such.sf2"), "--soundfont /no/such.sf2: no such file"),
        (("extract-audio", "--data", "c", "--features", ","), "--features: give at least one"),
        (("extract-text", "--data", "c", "--device", "gpu"), "--device gpu: expected"),
        (("extract-text", "--data", "c", "--pooling", "max"), "--pooling max: expected one of cls, mean"),
        (("extract-text", "--data", "c", "--cpu-ops", "flash"), "--cpu-ops flash: expected one of auto, stock, fused"),
        (("extract-text", "--data", "c", "--runtime", "int4"), "--runtime int4: expected one of auto, fp32, bf16, int8"),
        (("extract-text", "--data", "c", "--batch-size", "0"), "--batch-size must be >= 1"),
        (("extract-text", "--data", "c", "--max-clips", "0"), "--max-clips must be >= 1"),
        (("kernels", "--data", "c", "--energy", "1.5"), "--energy must be in (0, 1]"),
        (("kernels", "--data", "c", "--energy", "nan"), "--energy must be in (0, 1]"),
        (("kernels", "--data", "c", "--levels", "0"), "--levels must be >= 1"),
        (("kernels", "--data", "c", "--device", "cpu:x"), "--device cpu:x: expected"),
        (("ingest", "folk-dances", "--limit", "0"), "--limit must be >= 1"),
        (("ingest", "folk-dances", "--seed", "-1"), "--seed must be >= 0"),
    ],
)
def test_bad_arguments_rejected_before_any_store(ingested, capsys, args, fragment):
    before = sorted(p.relative_to(ingested) for p in ingested.rglob("*"))
    mtime = (ingested / "c" / "manifest.h5").stat().st_mtime_ns
    code, _, err = run_cli(capsys, *args)
    lines = error_lines(err)
    assert code == 1 and len(lines) == 1 and fragment in lines[0], err
    assert sorted(p.relative_to(ingested) for p in ingested.rglob("*")) == before  # nothing written, no lock
    assert (ingested / "c" / "manifest.h5").stat().st_mtime_ns == mtime


def test_cuda_not_touched_for_cpu(ingested, capsys, monkeypatch):
    import torch

    def no_cuda(*a, **k):
        raise AssertionError("CUDA queried for --device cpu")

    monkeypatch.setattr(torch.cuda, "is_available", no_cuda)
    monkeypatch.setattr(torch.cuda, "device_count", no_cuda)
    code, _, err = run_cli(capsys, "extract-audio", "--data", "c", "--device", "cpu", "--max-seconds", "0.5")
    assert code == 0, err


@pytest.mark.parametrize("where", ["option-after", "option-before", "env", "parent"])
def test_data_home_that_is_a_file(tmp_path, capsys, monkeypatch, where):
    monkeypatch.delenv("GENRE_DATA_HOME", raising=False)
    afile = tmp_path / "file"
    afile.write_text("not a folder\n")
    home = afile / "sub" if where == "parent" else afile
    args = {"option-after": ("info", "--data", "x", "--data-home", home),
            "option-before": ("--data-home", home, "info", "--data", "x"),
            "parent": ("info", "--data", "x", "--data-home", home),
            "env": ("info", "--data", "x")}[where]
    if where == "env":
        monkeypatch.setenv("GENRE_DATA_HOME", str(home))
    code, _, err = run_cli(capsys, *args)
    lines = error_lines(err)
    assert code == 1 and len(lines) == 1 and str(home) in lines[0] and "not a directory" in lines[0], err
    assert afile.read_text() == "not a folder\n"


# ------------------------------------------------------------------------------------- track failures vs bugs


def _failing_extract(source, **kw):
    """Module level, so that worker processes can run it: t1 of 'loud' is a bad file, t2 of 'loud' hits a bug."""
    name = str(source.get("audio"))
    mode = os.environ.get("GENRE_TEST_FAIL")
    if name.endswith(os.path.join("loud", "t1.wav")) and mode == "input":
        raise InputError(f"{name}: cannot decode audio (test)")
    if name.endswith(os.path.join("loud", "t1.wav")) and mode == "bug":
        raise AttributeError("'NoneType' object has no attribute 'shape'")
    if name.endswith(os.path.join("loud", "t1.wav")) and mode == "usage":
        raise UsageError("vggish needs --weights")
    return _REAL_EXTRACT(source, **kw)


def _checkpoint_rows(home: Path) -> tuple[int, int]:
    done = failed = 0
    for chunk in (home / "c" / ".partial" / "audio").rglob("chunk-*.npz"):
        with np.load(chunk) as data:
            done += len(data["rows"])
            failed += len(data["failed_rows"])
    return done, failed


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_bad_input_is_a_track_failure(ingested, capsys, monkeypatch, jobs):
    monkeypatch.setattr(audio_stage, "_extract_one", _failing_extract)
    monkeypatch.setenv("GENRE_TEST_FAIL", "input")
    code, _, err = run_cli(capsys, "extract-audio", "--data", "c", "--max-seconds", "0.5", "--jobs", jobs)
    assert code == 2 and "1 item(s) failed" in err and "loud/t1" in err, err
    with h5py.File(ingested / "c" / "features.h5") as h5:
        assert h5["audio/mfcc/valid"][()].sum() == 5
        assert [tid for tid, _, _ in store.read_failures(h5)] == ["loud/t1"]


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_bug_stops_the_stage_and_keeps_the_checkpoint(ingested, capsys, monkeypatch, jobs):
    monkeypatch.setattr(audio_stage, "_extract_one", _failing_extract)
    monkeypatch.setenv("GENRE_TEST_FAIL", "bug")
    args = ("extract-audio", "--data", "c", "--max-seconds", "0.5", "--jobs", jobs)
    code, _, err = run_cli(capsys, *args)
    lines = error_lines(err)
    assert code == 1 and len(lines) == 1, err
    assert lines[0] == ("error: internal error in audio mfcc on loud/t1: AttributeError: 'NoneType' object has no "
                        "attribute 'shape' (rerun with --verbose for the traceback)")
    assert not (ingested / "c" / "features.h5").exists()  # nothing recorded as a failed track
    done, failed = _checkpoint_rows(ingested)
    assert failed == 0
    if jobs == "1":
        assert done == 4  # manifest order: calm t0-t2, loud t0 finished before the bug on loud/t1

    code, _, err = run_cli(capsys, "--verbose", *args)
    assert code == 1 and "Traceback" in err and "_failing_extract" in err, err

    monkeypatch.setenv("GENRE_TEST_FAIL", "none")  # the bug fixed: the rerun resumes and finishes
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    if jobs == "1":
        assert "resuming, 4 tracks already done" in err
    with h5py.File(ingested / "c" / "features.h5") as h5:
        assert h5["audio/mfcc/valid"][()].all()


def test_usage_error_in_a_track_stops_the_stage(ingested, capsys, monkeypatch):
    monkeypatch.setattr(audio_stage, "_extract_one", _failing_extract)
    monkeypatch.setenv("GENRE_TEST_FAIL", "usage")
    code, _, err = run_cli(capsys, "extract-audio", "--data", "c", "--max-seconds", "0.5")
    assert code == 1 and error_lines(err) == ["error: vggish needs --weights"], err
    assert not (ingested / "c" / "features.h5").exists()


def _square_or_fail(x):
    if x == 3:
        raise KeyError("oops")
    if x == 5:
        raise InputError("item 5: unreadable")
    return {"v": np.array([x * x], dtype=np.float32)}


@pytest.mark.parametrize("jobs", [1, 2])
def test_run_per_track_library_contract(tmp_path, jobs):
    ids = [f"id{i}" for i in range(8)]
    items = {i: i for i in range(8) if i != 3}
    ck = store.RowCheckpoint(tmp_path / "ck", "d")
    done, failed = run_per_track(_square_or_fail, items, checkpoint=ck, jobs=jobs, description="stage", ids=ids)
    assert sorted(done) == [0, 1, 2, 4, 6, 7] and failed == {5: "item 5: unreadable"}
    assert sorted(store.RowCheckpoint(tmp_path / "ck", "d").load()[0]) == [0, 1, 2, 4, 6, 7]

    ck = store.RowCheckpoint(tmp_path / "ck2", "d")
    with pytest.raises(TrackInternalError, match=r"^internal error in stage on id3: KeyError: 'oops'$") as info:
        run_per_track(_square_or_fail, {i: i for i in range(8)}, checkpoint=ck, jobs=jobs, description="stage", ids=ids)
    assert isinstance(info.value.__cause__, KeyError)
    kept, kept_failed = store.RowCheckpoint(tmp_path / "ck2", "d").load()
    assert 3 not in kept and 3 not in kept_failed
    if jobs == 1:
        assert sorted(kept) == [0, 1, 2]
    with pytest.raises(UsageError, match="--jobs must be >= 1"):
        run_per_track(_square_or_fail, items, checkpoint=ck, jobs=0, description="stage", ids=ids)


def test_torchrun_refuses_every_stage_but_train(capsys, monkeypatch, tmp_path):
    """Under torchrun with two processes a stage other than train would run twice with two writers on one store:
    it is refused in one line before it touches anything; with WORLD_SIZE=1 it runs as usual."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    for args in (["info", "--data", "nothing-here"], ["extract-audio", "--data", "x", "--features", "mfcc"],
                 ["run", str(tmp_path / "exp.toml")]):
        code, out, err = run_cli(capsys, "--data-home", tmp_path, *args)
        assert code == 1
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and f"genre {args[0]} under torchrun (WORLD_SIZE=2)" in lines[0], err
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv("WORLD_SIZE", "1")
    code, out, err = run_cli(capsys, "--data-home", tmp_path, "info", "--data", "nothing-here")
    assert "under torchrun" not in err and "no dataset" in err
