"""Issue 16: one bad input never aborts a stage; it fails as one item, with a one-line reason naming it.

Each test puts the bad files among good ones and checks that the stage still produces the good rows,
records the bad ones (``/failed``, listed by ``genre info``) and says why.
"""

from __future__ import annotations

import io
import json
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bad_inputs import mxl, with_declared_size, with_encrypted_flag
from conftest import one_line, write_kern
from genrecli import store
from genrecli.datasets import get_dataset
from genrecli.errors import InputError, UsageError
from genrecli.layout import DatasetPaths
from genrecli.manifest import read_manifest
from genrecli.pipeline.ingest import ingest
from genrecli.text import convert
from genrecli.text.convert import score_to_text

NOTE = "<note><pitch><step>C</step><octave>4</octave></pitch><duration>1</duration></note>"
MUSICXML = ('<?xml version="1.0" encoding="UTF-8"?>\n<score-partwise><identification><creator type="composer">'
            '{composer}</creator></identification><part-list><score-part id="P1"><part-name>P</part-name></score-part>'
            '</part-list><part id="P1"><measure number="1">{body}</measure></part></score-partwise>\n')


def _mxl(score: bytes, *, container=True) -> bytes:
    return mxl({"score.xml": score}, container=container)


def _zip_bomb(n_bytes: int) -> bytes:
    """A real .mxl whose score expands to ``n_bytes`` (blanks inside a score element: ~1000x deflate)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("score.xml", "w", force_zip64=True) as fh:
        fh.write(b"<score-partwise>")
        block = b" " * (1 << 22)
        for _ in range(n_bytes // len(block)):
            fh.write(block)
        fh.write(b"</score-partwise>")
    return buf.getvalue()


def _bad_files() -> dict[str, tuple[bytes, str]]:
    """file name -> (its bytes, what its one-line failure must say)."""
    good_xml = MUSICXML.format(composer="X", body=NOTE).encode()
    corrupt = bytearray(_mxl(good_xml * 20, container=False))
    start = corrupt.find(b"score.xml") + len("score.xml")
    corrupt[start + 10:start + 40] = b"\xff" * 30  # inside the deflate stream
    latin1_undefined = MUSICXML.format(composer="Dvo\xe1k", body=NOTE).replace("UTF-8", "undefined").encode("latin-1")
    rng = np.random.default_rng(0)
    random_bytes = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes() + b"\x00"
    deep = MUSICXML.format(composer="X", body=NOTE + "<a>" * 20000 + "</a>" * 20000).encode()
    long_line = ("**kern\n*M4/4\n" + "4c" * 600_000 + "\n*-\n").encode()
    return {
        "utf16.txt": ("these are lyrics\n".encode("utf-16-le"), "binary data, not text (NUL bytes"),
        "random.txt": (random_bytes, "binary data, not text (NUL bytes"),
        "bom.txt": (b"\xff\xfe\x00\x00a\x00", "NUL characters after a utf-16 byte-order mark"),
        "corrupt.mxl": (bytes(corrupt), "broken .mxl archive"),
        "encrypted.mxl": (with_encrypted_flag(_mxl(good_xml)), "encrypted"),
        "deep.musicxml": (deep, "XML nested deeper than"),
        "undefined.musicxml": (latin1_undefined, "declared encoding 'undefined'"),
        "bomb.mxl": (_zip_bomb(80 << 20), "over the 64 MiB limit"),
        "longline.krn": (long_line, "limit for a score line"),
    }


def test_extract_text_records_each_bad_file_and_encodes_the_good_ones(tmp_path, data_home):
    """Class 1 (+ the bounds of class 2 at stage level): before, each of these files aborted extract-text."""
    from genrecli.pipeline.text import extract_text

    root = tmp_path / "corpus"
    for label in ("a", "b"):
        for i in range(4):
            write_kern(root / label / f"good{i}.krn", n=i)
        (root / label / "song.txt").write_text(f"good lyrics of {label}\n")
    bad = _bad_files()
    for k, (name, (data, _)) in enumerate(sorted(bad.items())):
        (root / "ab"[k % 2] / name).write_bytes(data)
    ingest("folder", root=root, name="c")
    t0 = time.perf_counter()
    result = extract_text("c", encoder="tfidf")
    assert time.perf_counter() - t0 < 30
    paths = DatasetPaths.of("c")
    manifest = read_manifest(paths.manifest)
    failed_ids = {f"{'ab'[k % 2]}/{Path(name).stem}": name for k, name in enumerate(sorted(bad))}
    assert set(result.failures) == set(failed_ids) and result.exit_code == 2
    for tid, name in failed_ids.items():
        message = result.failures[tid]
        assert "\n" not in message and name in message and bad[name][1] in message, message
    recorded = {tid for tid, stage, _ in store.read_failures(paths.features()) if stage == "text/source"}
    assert recorded == set(failed_ids)
    data, valid, _ = store.read_feature(paths.features(), "text/tfidf")
    good = [i for i, tid in enumerate(manifest.ids) if tid not in failed_ids]
    assert valid[good].all() and not valid[[manifest.ids.index(t) for t in failed_ids]].any()
    assert np.isfinite(data[good]).all() and len(good) == 10 and len(failed_ids) == 9


def test_mxl_bounds_refuse_before_decompressing(tmp_path):
    """Class 2: a zip bomb is refused from its header, before decompressing, by size and by ratio."""
    bomb = tmp_path / "bomb.mxl"
    bomb.write_bytes(with_declared_size(_mxl(b"<score-partwise/>" * 10, container=False), 3 << 30))  # says 3 GiB
    with pytest.raises(InputError) as exc:
        score_to_text(path=bomb)
    one_line(exc, str(bomb), "score.xml expands to 3072 MiB, over the 64 MiB limit")
    ratio = tmp_path / "ratio.mxl"
    ratio.write_bytes(_zip_bomb(8 << 20))  # 8 MiB of blanks: under the size bound, ~1000x
    tracemalloc.start()
    try:
        with pytest.raises(InputError) as exc:
            convert.check_score_bounds(ratio)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    one_line(exc, str(ratio), f"over the {convert.MAX_MXL_RATIO}x limit")
    assert peak < 4 << 20  # the 8 MiB member was never decompressed


def test_score_bounds_for_parsers_that_read_the_file_themselves(tmp_path):
    """Class 2, score -> MIDI path: check_score_bounds fails fast on a long kern/ABC line and deep XML, and
    accepts real scores."""
    kern = tmp_path / "long.krn"
    kern.write_text("**kern\n" + "4c" * (25 << 20) + "\n*-\n")  # one 50 MB line
    t0 = time.perf_counter()
    with pytest.raises(InputError) as exc:
        convert.check_score_bounds(kern)
    assert time.perf_counter() - t0 < 10
    one_line(exc, str(kern), "line 2: 52428800 characters")
    abc = tmp_path / "long.abc"
    abc.write_text("X:1\nK:C\n" + "C" * (convert.MAX_LINE_CHARS + 1) + "\n")
    with pytest.raises(InputError, match="line 3"):
        convert.check_score_bounds(abc)
    deep = tmp_path / "deep.xml"
    deep.write_text(MUSICXML.format(composer="X", body=NOTE + "<a>" * (convert.MAX_XML_DEPTH + 1) + "</a>" * (convert.MAX_XML_DEPTH + 1)))
    with pytest.raises(InputError, match="nested deeper"):
        convert.check_score_bounds(deep)
    ok_xml = tmp_path / "ok.musicxml"
    ok_xml.write_text(MUSICXML.format(composer="X", body=NOTE))
    ok_mxl = tmp_path / "ok.mxl"
    ok_mxl.write_bytes(_mxl(ok_xml.read_bytes()))
    for ok in (write_kern(tmp_path / "ok.krn"), ok_xml, ok_mxl):
        convert.check_score_bounds(ok)
    big = tmp_path / "big.xml"
    with open(big, "wb") as fh:
        fh.truncate(convert.MAX_TEXT_BYTES + 1)  # sparse: refused from its size, never read
    with pytest.raises(InputError, match="over the 64 MiB limit for a text file"):
        convert.check_score_bounds(big)


def test_ingest_piano_reads_a_latin1_metadata_csv_and_survives_an_unknown_encoding(tmp_path, data_home):
    """Class 1, ingest piano: a Latin-1 metadata.csv aborted with a UnicodeDecodeError naming no file; a
    MusicXML declaring an unknown encoding aborted the composer lookup."""
    root = tmp_path / "piano"
    for era in ("Baroque", "Romantic"):
        for i in range(3):
            write_kern(root / era / f"p{i}.krn", composer="Kern Composer", n=i)
    (root / "Romantic" / "odd.musicxml").write_bytes(
        MUSICXML.format(composer="X", body=NOTE).replace("UTF-8", "undefined").encode())
    (root / "Romantic" / "bogus.xml").write_bytes(MUSICXML.format(composer="X", body=NOTE).replace("UTF-8", "no-such-codec").encode())
    (root / "metadata.csv").write_bytes("id,composer\np0,H\xe4ndel\n".encode("latin-1"))
    result = ingest("piano", root=root, name="pn")
    assert result.written == ["manifest"]
    manifest = read_manifest(DatasetPaths.of("pn").manifest)
    composers = {t.id: t.groups["composer"] for t in manifest.tracks}
    assert composers["Baroque/p0"] == "Händel" and composers["Romantic/odd"] == "unknown"
    assert f"{root / 'metadata.csv'}: not UTF-8; read as latin-1" in get_dataset("piano").list_tracks(root).notes
    (root / "metadata.csv").write_bytes(b"id,composer\x00\np0,x\n")
    with pytest.raises(UsageError) as exc:
        ingest("piano", root=root, name="pn2")
    one_line(exc, str(root / "metadata.csv"), "NUL bytes")


def test_ingest_table_reads_a_latin1_csv_naming_the_file(tmp_path, data_home):
    """Class 1, ingest table: a Latin-1 CSV aborted with a UnicodeDecodeError traceback."""
    path = tmp_path / "t.csv"
    names = ("caf\xe9", "th\xe9")
    rows = ["id,label,f0,f1"] + [f"r{i},{names[i % 2]},{i},{i % 3}" for i in range(12)]
    path.write_bytes("\n".join(rows).encode("latin-1"))
    ingest("table", root=path, name="lat")
    manifest = read_manifest(DatasetPaths.of("lat").manifest)
    assert manifest.label_names == ["café", "thé"]
    assert f"{path}: not UTF-8; read as latin-1" in get_dataset("table").list_tracks(path).notes
    path.write_bytes("\n".join(rows).encode("utf-16-le"))  # no BOM: NUL bytes
    with pytest.raises(UsageError) as exc:
        ingest("table", root=path, name="lat16")
    one_line(exc, str(path), "NUL bytes")


def test_table_ingest_records_masked_and_dropped_rows_by_track_id_and_is_partial(tmp_path, data_home):
    """Class 4: masked rows were recorded as "row N" and ingest exited 0."""
    path = tmp_path / "t.csv"
    rows = ["id,label,f0,f1"] + [f"r{i},{'xy'[i % 2]},{i},{i % 3}" for i in range(12)]
    rows[4] = "r3,x,nan,1"  # r3: a NaN feature -> masked
    rows.append("r12,,1,1")  # no label -> dropped
    path.write_text("\n".join(rows) + "\n")
    result = ingest("table", root=path, name="tab")
    assert result.exit_code == 2
    assert set(result.failures) == {"r3", "r12"}
    assert "NaN/inf" in result.failures["r3"] and result.failures["r12"] == "empty label"
    paths = DatasetPaths.of("tab")
    assert [(t, s) for t, s, _ in store.read_failures(paths.features())] == [("r3", "audio/table")]
    assert read_manifest(paths.manifest).skipped == {"r12": "empty label"}
    _, valid, _ = store.read_feature(paths.features(), "audio/table")
    assert valid.sum() == 11 and not valid[read_manifest(paths.manifest).ids.index("r3")]


def test_cli_table_ingest_exits_2_when_rows_were_dropped(tmp_path):
    import os
    import subprocess
    import sys

    path = tmp_path / "t.csv"
    path.write_text("id,label,f0\n" + "".join(f"r{i},{'xy'[i % 2]},{i}\n" for i in range(10)) + "r10,x,inf\n")
    env = {**os.environ, "GENRE_DATA_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "-m", "genrecli", "ingest", "table", "--root", str(path)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "r10: audio/table: precomputed feature has NaN/inf values" in proc.stderr and "Traceback" not in proc.stderr


def test_split_time_refuses_an_empty_test_part_at_ingest(tmp_path, data_home):
    """Class 3: an empty test part is refused when the split is made (already so before issue 16)."""
    path = tmp_path / "t.csv"
    path.write_text("id,label,f0\n" + "".join(f"r{i},{'xy'[i % 2]},{i}\n" for i in range(8)))
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train.txt").write_text("r0\nr1\n")
    (lists / "test.txt").write_text("\n")
    with pytest.raises(UsageError) as exc:
        ingest("table", root=path, name="e", splits=(f"file:{lists}",))
    one_line(exc, "the test part is empty (2 training and 0 test tracks of 8)")
    assert not DatasetPaths.of("e").manifest.exists()


# ---------------------------------------------------------------------------------------- evaluate / report


@pytest.fixture
def two_runs(tmp_path, data_home):
    """A table corpus with two finished, evaluated runs (majority and a linear SVM)."""
    from corpus_fixtures import make_table
    from genrecli.pipeline.evaluate import evaluate
    from genrecli.pipeline.train import train

    ingest("table", root=make_table(tmp_path / "t", "csv"), name="tb")
    runs = train("majority", "tb", inputs=("audio/table",), seeds=1).written
    runs += train("svm", "tb", inputs=("audio/table",), kernels=("linear",), seeds=1).written
    assert len(runs) == 2 and sorted(evaluate("tb").written) == sorted(runs)
    return DatasetPaths.of("tb"), runs


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 3)])


def test_evaluate_and_report_report_a_bad_run_and_go_on(two_runs, capfd):
    """Class 3: one truncated predictions.h5 / config.json / metrics.json, or a missing file, aborted
    evaluate or report for every run."""
    from genrecli.pipeline.evaluate import evaluate
    from genrecli.pipeline.report import report

    paths, (a, b) = two_runs
    _truncate(paths.runs / a / "predictions.h5")
    result = evaluate("tb", force=True)
    assert result.written == [b] and list(result.failures) == [a] and result.exit_code == 2
    assert str(paths.runs / a / "predictions.h5") in result.failures[a] and "\n" not in result.failures[a]
    (paths.runs / a / "predictions.h5").unlink()  # missing now
    _truncate(paths.runs / b / "config.json")
    result = evaluate("tb", force=True)
    assert result.written == [] and set(result.failures) == {a, b}
    assert "predictions.h5: missing" in result.failures[a] and "config.json: unreadable run config" in result.failures[b]
    assert json.loads((paths.runs / b / "metrics.json").read_text())["run"] == b  # the earlier metrics stay whole

    _truncate(paths.runs / b / "metrics.json")
    with pytest.raises(UsageError, match="no evaluated runs"):
        report("tb")
    capfd.readouterr()


def test_report_goes_on_without_a_run_whose_metrics_are_truncated(two_runs, capfd):
    from genrecli.pipeline.report import report

    paths, (a, b) = two_runs
    _truncate(paths.runs / a / "metrics.json")
    result = report("tb")
    assert result.written == ["report"] and list(result.failures) == [a] and result.exit_code == 2
    assert str(paths.runs / a / "metrics.json") in result.failures[a]
    md = (paths.report / "results.md").read_text()
    assert b in md and a not in md
    assert not list(paths.report.glob(".*tmp*"))  # atomic writes leave no temporary files
    capfd.readouterr()


def test_report_is_not_up_to_date_after_a_retrain_or_a_new_evaluation(two_runs, capfd):
    """Class 3: the report's cache was keyed on the predictions hash its metrics *claim*, so stale metrics
    (a retrained run) or re-computed metrics of the same predictions left it "up to date"."""
    from genrecli.pipeline.evaluate import evaluate
    from genrecli.pipeline.report import report
    from genrecli.pipeline.train import train

    paths, (a, b) = two_runs
    assert report("tb").written == ["report"]
    assert report("tb").up_to_date == ["report"]
    metrics_b = paths.runs / b / "metrics.json"
    m = json.loads(metrics_b.read_text())
    m["summary"]["accuracy"]["mean"] = 0.123  # metrics recomputed (a new toolkit version): same predictions
    metrics_b.write_text(json.dumps(m))
    assert report("tb").written == ["report"] and "12.3 ±" in (paths.report / "results.md").read_text()
    old = metrics_b.read_text()
    train("svm", "tb", inputs=("audio/table",), kernels=("linear",), seeds=1, force=True)
    metrics_b.write_text(old)  # metrics of the previous training, as a retrain that left them would
    result = report("tb")
    assert result.written == ["report"] and b not in (paths.report / "results.md").read_text()
    assert f"{b}: its predictions changed (retrained) since it was evaluated" in capfd.readouterr().err
    evaluate("tb")
    assert report("tb").written == ["report"] and b in (paths.report / "results.md").read_text()


def test_score_to_midi_applies_the_bounds_before_music21(tmp_path):
    """Class 2 in the audio stage: score_to_midi refuses a 50 MB kern line (file or inline) as one InputError
    before music21 parses it."""
    from genrecli.audio.synth import score_to_midi

    kern = tmp_path / "long.krn"
    line = "4c" * (25 << 20)
    kern.write_text("**kern\n" + line + "\n*-\n")
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="over the 65536 limit"):
        score_to_midi(path=kern, max_seconds=30.0)
    with pytest.raises(InputError, match="inline tune: line 3"):
        score_to_midi(text="X:1\nK:C\n" + "C" * (convert.MAX_LINE_CHARS + 1) + "\n", fmt="abc", name="inline tune")
    assert time.perf_counter() - t0 < 20
