"""Issue 16, the stores' side: nothing lost, nothing stale, nothing silently wrong.

One section per class of the issue: caches keyed on the data they read (not on parameters), stores refused
when computed for another manifest, bad arguments refused and good groups kept, one-line errors naming the
file, and dataset names that stay inside the data home.
"""

import json
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import genrecli.pipeline.audio as audio_stage
from genrecli import cli, store
from genrecli.errors import InputError, UsageError
from genrecli.pipeline.audio import extract_audio, renderer_params

from conftest import write_wav
from conftest import run_cli

_REAL_EXTRACT = audio_stage._extract_one
SPLIT = ("--split", "random:0.5")
TRAIN = ("train", "-d", "c", "--kernels", "linear", "--seeds", "1", *SPLIT)
KERNELS = ("kernels", "-d", "c", "--kernels", "linear", *SPLIT)
RUN = "svm__audio-mfcc__linear__random-0.5"
GROUP = "random-0.5/fold0/audio/mfcc/linear"


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def one_error(code, err, *needles):
    """Exit 1, exactly one error line holding every needle, no traceback."""
    lines = error_lines(err)
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "internal error" not in lines[0], lines[0]
    return lines[0]


def make_corpus(root: Path, labels=(("calm", (220, 330, 247)), ("loud", (440, 550, 494)))) -> Path:
    for label, freqs in labels:
        for k, freq in enumerate(freqs):
            write_wav(root / label / f"t{k}.wav", freq=freq, seconds=0.5)
    return root


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A data home with dataset c (6 tracks): manifest, audio/mfcc, a linear kernel and one trained svm run."""
    base = tmp_path_factory.mktemp("prepared")
    root = make_corpus(base / "corpus")
    home = base / "home"
    mp = pytest.MonkeyPatch()
    mp.setenv("GENRE_DATA_HOME", str(home))

    class Cap:  # capsys is function-scoped; the CLI's own output is not checked here
        def readouterr(self):
            return type("O", (), {"out": "", "err": ""})()

    for args in (("ingest", "folder", "--root", root, "--name", "c", *SPLIT),
                 ("extract-audio", "-d", "c", "--max-seconds", "0.5"), KERNELS, TRAIN):
        code, _, _ = run_cli(Cap(), *args)
        assert code == 0, args
    mp.undo()
    return base


@pytest.fixture
def home(prepared, tmp_path, monkeypatch):
    """A private copy of the prepared data home (and of its corpus, at the same relative place)."""
    shutil.copytree(prepared / "corpus", tmp_path / "corpus")
    shutil.copytree(prepared / "home", tmp_path / "home")
    # the manifest records absolute paths of the prepared corpus, which stays in place: reading them is fine
    monkeypatch.setenv("GENRE_DATA_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def tree(home: Path) -> dict[str, int]:
    """Every file under the data home with its mtime: what 'nothing was touched' compares."""
    return {str(p.relative_to(home)): p.stat().st_mtime_ns for p in home.rglob("*") if p.is_file()}


def kernel_params(home: Path) -> dict:
    with h5py.File(home / "c" / "kernels.h5", "r") as h5:
        return store.group_params(h5[GROUP])


def config(home: Path) -> dict:
    return json.loads((home / "c" / "runs" / RUN / "config.json").read_text())


# ------------------------------------------------------------------------- 1. caches keyed on the data read


def _shifted_extract(source, **kw):
    """The extractor after a change that keeps its parameters (a fixed bug, a new library): other values."""
    return {k: v + 1.0 for k, v in _REAL_EXTRACT(source, **kw).items()}


def test_kernels_and_train_recompute_after_features_changed_with_the_same_params(home, capsys, monkeypatch):
    before_kernel, before_config = kernel_params(home), config(home)
    # same bytes again: the caches stay valid (content, not write time)
    code, _, err = run_cli(capsys, "extract-audio", "-d", "c", "--max-seconds", "0.5", "--force")
    assert code == 0, err
    code, _, err = run_cli(capsys, *KERNELS)
    assert code == 0 and "up to date" in err, err
    code, _, err = run_cli(capsys, *TRAIN)
    assert code == 0 and "up to date" in err, err

    monkeypatch.setattr(audio_stage, "_extract_one", _shifted_extract)
    code, _, err = run_cli(capsys, "extract-audio", "-d", "c", "--max-seconds", "0.5", "--force")
    assert code == 0, err
    code, _, err = run_cli(capsys, *KERNELS)
    assert code == 0 and "up to date" not in err and GROUP in err, err
    after_kernel = kernel_params(home)
    assert after_kernel["feature"] == before_kernel["feature"]  # the parameters did not change ...
    assert after_kernel["feature_content"] != before_kernel["feature_content"]  # ... the data did
    with h5py.File(home / "c" / "features.h5", "r") as h5:
        assert after_kernel["feature_content"] == store.content_key(h5["audio/mfcc"])

    code, _, err = run_cli(capsys, *TRAIN)
    assert code == 0 and "up to date" not in err and "accuracy" in err, err
    after_config = config(home)
    assert after_config["features"]["audio/mfcc"]["params_hash"] == before_config["features"]["audio/mfcc"]["params_hash"]
    assert after_config["features"]["audio/mfcc"]["content"] != before_config["features"]["audio/mfcc"]["content"]
    assert after_config["params_hash"] != before_config["params_hash"]


def test_a_run_records_the_digest_of_its_predictions(home, capsys):
    """What `report` (and `evaluate`) can compare to see a retrain, whose params hash does not change."""
    predictions = home / "c" / "runs" / RUN / "predictions.h5"
    before = config(home)
    assert before["predictions_sha256"] == store.file_sha256(predictions)
    code, _, err = run_cli(capsys, *TRAIN, "--force")
    assert code == 0, err
    after = config(home)
    assert after["params_hash"] == before["params_hash"]
    assert after["predictions_sha256"] == store.file_sha256(predictions) != before["predictions_sha256"]


def test_an_edited_soundfont_at_the_same_path_is_noticed(home, tmp_path, capsys):
    from genrecli.audio import synth

    font = tmp_path / "font.sf2"
    shutil.copyfile(synth.default_soundfont(), font)
    args = ("extract-audio", "-d", "c", "--max-seconds", "0.5", "--soundfont", font)
    code, _, err = run_cli(capsys, *args)
    assert code == 0 and "wrote audio/mfcc" in err, err
    code, _, err = run_cli(capsys, *args)
    assert code == 0 and "up to date" in err, err
    assert synth._soundfont_bytes(font) == font.read_bytes()
    before = renderer_params(str(font))["soundfont_sha256"]
    with open(font, "ab") as fh:  # the same path, other bytes
        fh.write(b"\0" * 16)
    assert renderer_params(str(font))["soundfont_sha256"] != before
    assert synth._soundfont_bytes(font) == font.read_bytes()  # the synthesizer reads the new file, too
    code, _, err = run_cli(capsys, *args)
    assert code == 0 and "parameters or inputs changed" in err and "wrote audio/mfcc" in err, err


def test_content_key_follows_the_data_not_the_write(tmp_path):
    path = tmp_path / "features.h5"
    data, valid = np.ones((3, 2), np.float32), np.ones(3, bool)
    store.write_feature(path, "audio/x", data, valid, {"p": 1})
    with h5py.File(path, "r") as h5:
        first = store.content_key(h5["audio/x"])
    store.write_feature(path, "audio/x", data, valid, {"p": 1})
    with h5py.File(path, "r") as h5:
        assert store.content_key(h5["audio/x"]) == first
    store.write_feature(path, "audio/x", data * 2, valid, {"p": 1})
    with h5py.File(path, "r") as h5:
        assert store.content_key(h5["audio/x"]) != first
    with store.write_transaction(path) as txn:  # a group written without write_group_data: its write id
        store.replace_group(txn, "text/source").create_dataset("valid", data=valid)
    with store.write_transaction(path) as txn:
        keys = [store.content_key(txn["text/source"])]
    with store.write_transaction(path) as txn:
        store.replace_group(txn, "text/source").create_dataset("valid", data=valid)
    with h5py.File(path, "r") as h5:
        keys.append(store.content_key(h5["text/source"]))
    assert keys[0].startswith("write_id:") and keys[0] != keys[1]


# ------------------------------------------------------------------ 2. stores computed for another manifest


def test_reingest_then_kernels_or_train_without_reextracting_is_refused(home, capsys, tmp_path):
    code, _, err = run_cli(capsys, "ingest", "folder", "--root", tmp_path / "corpus", "--name", "c", *SPLIT,
                           "--limit", "4", "--force")
    assert code == 0, err
    kernels_before = tree(home)
    for args in (KERNELS, (*KERNELS, "--force"), TRAIN, (*TRAIN, "--force")):
        code, _, err = run_cli(capsys, *args)
        one_error(code, err, "features.h5", "'audio/mfcc' was computed for another manifest", "6 rows",
                  "4 tracks", "extract-audio --data c")
    assert {k: v for k, v in tree(home).items() if "kernels" in k} == {k: v for k, v in kernels_before.items() if "kernels" in k}
    code, _, err = run_cli(capsys, "extract-audio", "-d", "c", "--max-seconds", "0.5")
    assert code == 0, err
    code, _, err = run_cli(capsys, *KERNELS)
    assert code == 0 and "gram 4x4" in err, err
    assert kernel_params(home)["manifest"] == json.loads(h5py.File(home / "c" / "manifest.h5", "r").attrs["params"])["content"]


def test_kernels_check_every_input_before_writing_any(home, capsys):
    before = tree(home)
    code, _, err = run_cli(capsys, "kernels", "-d", "c", "--inputs", "audio/mfcc,audio/nosuch", "--kernels", "rbf", *SPLIT)
    one_error(code, err, "features.h5", "no feature 'audio/nosuch'", "have: audio/mfcc")
    assert tree(home) == before


# ------------------------------------------------------------------- 3. bad arguments, good groups kept


@pytest.mark.parametrize("seconds", [0, float("nan"), float("inf"), -5])
def test_extract_audio_refuses_a_bad_max_seconds_before_any_store(home, seconds):
    before = tree(home)
    with pytest.raises(UsageError, match="max_seconds must be a positive, finite number"):
        extract_audio("c", max_seconds=seconds)
    assert tree(home) == before


def test_broken_weights_stop_the_stage_once_and_touch_no_store(home, tmp_path, capsys):
    weights = tmp_path / "vggish.pth"
    weights.write_bytes(b"not a state dict")
    before = tree(home)
    code, _, err = run_cli(capsys, "extract-audio", "-d", "c", "--features", "vggish", "--weights", weights,
                           "--max-seconds", "0.5", "--jobs", "2")
    one_error(code, err, str(weights), "cannot read VGGish weights")
    assert "warning" not in err  # not once per track
    assert tree(home) == before


def _fail_all(source, **kw):
    raise InputError(f"{source.get('audio')}: cannot decode audio (test)")


def _fail_one(source, **kw):
    if str(source.get("audio")).endswith("t1.wav") and "loud" in str(source.get("audio")):
        raise InputError(f"{source.get('audio')}: cannot decode audio (test)")
    return _REAL_EXTRACT(source, **kw)


@pytest.mark.parametrize("extract, failed", [(_fail_all, 6), (_fail_one, 1)])
def test_a_worse_group_does_not_replace_a_good_one_without_force(home, capsys, monkeypatch, extract, failed):
    features = home / "c" / "features.h5"
    with h5py.File(features, "r") as h5:
        good = h5["audio/mfcc"].attrs["params_hash"]
    monkeypatch.setattr(audio_stage, "_extract_one", extract)
    args = ("extract-audio", "-d", "c", "--max-seconds", "0.4")  # other params: the stored group is stale
    before = tree(home)
    code, _, err = run_cli(capsys, *args)
    one_error(code, err, str(features), "kept the stored audio/mfcc (6 tracks ok, now", f"more failed tracks ({failed}",
              "--force")
    assert tree(home) == before  # nothing written ...
    assert not (home / "c" / ".partial" / "audio").exists() or not any((home / "c" / ".partial" / "audio").rglob("*.npz"))
    with h5py.File(features, "r") as h5:
        assert h5["audio/mfcc"].attrs["params_hash"] == good and h5["audio/mfcc/valid"][()].all()
    code, _, err = run_cli(capsys, *args, "--force")  # ... unless asked for
    assert code == 2 and f"{failed} item(s) failed" in err, err
    with h5py.File(features, "r") as h5:
        assert h5["audio/mfcc"].attrs["params_hash"] != good and h5["audio/mfcc/valid"][()].sum() == 6 - failed


# ------------------------------------------------------------- 4. one line naming the file, never "internal"


def _empty(path: Path):
    path.unlink()
    path.write_bytes(b"")


def _garbage(path: Path):
    path.unlink()
    path.write_bytes(b"\x89HDF garbage " * 64)


def _directory(path: Path):
    path.unlink()
    path.mkdir()


BREAK = {"empty": (_empty, "an empty file (0 bytes)"), "corrupt": (_garbage, "not a readable HDF5 file"),
         "directory": (_directory, "is a directory, not an HDF5 store")}


@pytest.mark.parametrize("how", sorted(BREAK))
@pytest.mark.parametrize("args", [KERNELS, TRAIN, ("extract-audio", "-d", "c", "--max-seconds", "0.5"), ("info", "-d", "c")],
                         ids=["kernels", "train", "extract-audio", "info"])
def test_a_broken_features_store_is_one_line_naming_it(home, capsys, how, args):
    path = home / "c" / "features.h5"
    BREAK[how][0](path)
    code, out, err = run_cli(capsys, *args)
    one_error(code, err, str(path), BREAK[how][1])
    if args[0] == "info":
        assert "split random-0.5" in out and f"store {path}: {BREAK[how][1]}" in out, out


@pytest.mark.parametrize("how", sorted(BREAK))
def test_a_broken_kernel_store_is_named_and_info_still_lists_the_other_failures(home, capsys, how):
    # a recorded failure of the feature store that `info` must keep showing
    store.write_failures(home / "c" / "features.h5", "audio/mfcc", {"loud/t1": "cannot decode audio (test)"})
    path = home / "c" / "kernels.h5"
    BREAK[how][0](path)
    code, _, err = run_cli(capsys, *KERNELS)
    one_error(code, err, str(path), BREAK[how][1])
    code, out, err = run_cli(capsys, "info", "-d", "c")
    one_error(code, err, str(path), BREAK[how][1])
    assert "[audio/mfcc] loud/t1: cannot decode audio (test)" in out and "/audio/mfcc:" in out, out
    code, _, err = run_cli(capsys, *TRAIN, "--force")  # the kernel store is only a cache of train
    assert code == 0 and str(path) in err and "computing the Grams from the features" in err, err


@pytest.mark.parametrize(
    "args, needles",
    [
        (("kernels", "-d", "c", "--kernels", "nosuch", *SPLIT), ("unknown kernel(s) nosuch", "known: linear")),
        (("train", "-d", "c", "--kernels", "nosuch", *SPLIT), ("unknown kernel(s) nosuch",)),
        (("kernels", "-d", "c", "--inputs", "audio/nosuch", *SPLIT), ("features.h5", "no feature 'audio/nosuch'")),
        (("train", "-d", "c", "--inputs", "audio/nosuch", *SPLIT), ("features.h5", "no feature 'audio/nosuch'")),
        ((*TRAIN, "-o", "C=abc"), ("-o C=abc", "'abc'")),
        ((*TRAIN, "-o", "C=-1"), ("-o C=-1", "'C' parameter", "-1")),
    ],
    ids=["kernels-kernel", "train-kernel", "kernels-input", "train-input", "option-text", "option-range"],
)
def test_bad_names_and_options_are_one_line(home, capsys, args, needles):
    code, _, err = run_cli(capsys, *args)
    one_error(code, err, *needles)


def test_a_single_class_corpus_is_one_line_naming_the_manifest(tmp_path, capsys, data_home):
    root = make_corpus(tmp_path / "one", labels=(("calm", (220, 330, 247, 262)),))
    code, _, err = run_cli(capsys, "ingest", "folder", "--root", root, "--name", "one", *SPLIT)
    assert code == 0, err
    code, _, err = run_cli(capsys, "extract-audio", "-d", "one", "--max-seconds", "0.5")
    assert code == 0, err
    code, _, err = run_cli(capsys, "train", "-d", "one", "--kernels", "linear", "--seeds", "1", *SPLIT)
    one_error(code, err, str(data_home / "one" / "manifest.h5"), "single class (calm)")


def test_a_data_home_that_is_a_file(tmp_path, capsys, monkeypatch):
    afile = tmp_path / "file"
    afile.write_text("x")
    monkeypatch.delenv("GENRE_DATA_HOME", raising=False)
    code, _, err = run_cli(capsys, "kernels", "-d", "c", "--data-home", afile)
    one_error(code, err, f"--data-home {afile}", "not a directory")


# --------------------------------------------------------------------------------- 5. plain dataset names


@pytest.mark.parametrize("name", ["../x", "/abs/x", ".hidden", "a/b"])
def test_dataset_names_are_plain_names(tmp_path, capsys, data_home, name):
    root = make_corpus(tmp_path / "corpus")
    name = str(tmp_path / "abs") if name == "/abs/x" else name
    code, _, err = run_cli(capsys, "ingest", "folder", "--root", root, "--name", name)
    one_error(code, err, f"--name {name!r}", "plain name")
    assert not (tmp_path / "x").exists() and not (tmp_path / "abs").exists() and not data_home.exists()
    code, _, err = run_cli(capsys, "info", "--data", name)
    one_error(code, err, f"dataset name {name!r}", "plain name")


def test_plain_names_are_accepted(tmp_path, capsys, data_home):
    code, _, err = run_cli(capsys, "ingest", "folder", "--root", make_corpus(tmp_path / "corpus"), "--name", "My-set_1.v2")
    assert code == 0, err
    assert (data_home / "My-set_1.v2" / "manifest.h5").is_file()
