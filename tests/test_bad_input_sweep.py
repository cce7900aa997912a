"""Issue 16's acceptance sweep: every kind of :mod:`bad_inputs`, among good files, through every stage.

One corpus per loader/modality (folder audio, folder scores and lyrics, a MuMu release with covers and inline
reviews, a table), each run through the CLI in-process: ingest, extract-audio (mfcc) / extract-text (tfidf) /
extract-image, kernels, train (svm), evaluate, report, info, and predict on the corpus's own mixed files.
For every kind: no traceback anywhere; a rejected kind has a one-line message naming its file (or id) and
cause and is listed by ``genre info``; an accepted kind comes out as a valid row; every good row is valid; the
exit codes are the documented ones (0, or 2 when items failed; 1 for a corpus-level error).

:func:`sweep` returns the figures; ``python bench/bad_input_sweep.py`` prints them. The whole sweep takes
about 20 s on two cores, so it is not marked slow.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest

import bad_inputs as bi
from conftest import invoke_cli
from bad_inputs import Kind

ALLOWED_EXIT = {"ingest": (0, 2), "extract-audio": (0, 2), "extract-text": (0, 2), "extract-image": (0, 2),
                "kernels": (0,), "train": (0,), "evaluate": (0,), "report": (0,), "info": (0,), "predict": (2,)}
STAGE_GROUP = {"extract-audio": "audio/mfcc", "extract-text": "text/tfidf", "extract-image": "image/efficientnet-lite0"}


def cli(home: Path, *args) -> tuple[int, str, str]:
    """``genre --data-home HOME ARGS`` in this process: (exit code, stdout, stderr); also outside pytest (the
    bench script), so the output is captured by redirection rather than capsys."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = invoke_cli("--data-home", home, *args)
    return code, out.getvalue(), err.getvalue()


@dataclass
class Figures:
    """What the sweep saw, per corpus; ``problems`` lists every broken expectation (empty: all passed)."""

    kinds: dict[str, Kind] = field(default_factory=dict)
    outcome: dict[str, str] = field(default_factory=dict)  # kind name -> "rejected at <stage>" / "accepted" / ...
    stage_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # stage -> {"rejected": n, "accepted": m}
    good_rows: int = 0
    good_lost: int = 0
    listed_by_info: int = 0
    rejected: int = 0
    one_line: int = 0
    predict: dict[str, int] = field(default_factory=dict)
    exit_codes: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def count(self, stage: str, what: str) -> None:
        self.stage_counts.setdefault(stage, {"rejected": 0, "accepted": 0})[what] += 1


class Sweep:
    def __init__(self, corpus: str, base: Path, figures: Figures):
        self.corpus, self.fig = corpus, figures
        self.root, self.home = base / corpus, base / f"home-{corpus}"
        self.outputs: dict[str, str] = {}
        self.good, self.todo = bi.build_corpus(corpus, self.root)
        for k in self.todo:
            figures.kinds[k.name] = k

    def run(self, stage: str, *args, label: str | None = None) -> tuple[int, str, str]:
        label = label or stage
        code, out, err = cli(self.home, *args)
        text = out + err
        self.outputs[label] = text
        self.fig.exit_codes[f"{self.corpus} {label}"] = code
        if "Traceback" in text or "internal error" in text:
            self.fig.problems.append(f"{self.corpus} {label}: traceback or internal error:\n{text[-3000:]}")
        if code not in ALLOWED_EXIT[stage]:
            self.fig.problems.append(f"{self.corpus} {label}: exit code {code} (expected {ALLOWED_EXIT[stage]}):\n{text[-3000:]}")
        return code, out, err

    # -------------------------------------------------------------------------------------------- checks
    def manifest(self):
        from genrecli.layout import DatasetPaths
        from genrecli.manifest import read_manifest

        return read_manifest(DatasetPaths.of(self.corpus, self.home).manifest)

    def failures(self) -> dict[tuple[str, str], str]:
        from genrecli import store

        rows = {}
        for path in [self.home / self.corpus / "manifest.h5", *sorted((self.home / self.corpus).glob("features*.h5"))]:
            for tid, stage, msg in store.read_failures(path):
                rows[(tid, stage)] = msg
        return rows

    def valid(self, group: str) -> dict[str, bool]:
        ids = self.manifest().ids
        with h5py.File(self.home / self.corpus / "features.h5", "r") as h5:
            valid = h5[group]["valid"][()]
            data = h5[group]["data"][()]
        finite = np.isfinite(data.reshape(len(data), -1)).all(axis=1)
        return {tid: bool(v and f) for tid, v, f in zip(ids, valid, finite)}

    def check(self, groups: list[str]) -> None:
        fig, manifest = self.fig, self.manifest()
        ids, failures = set(manifest.ids), self.failures()
        info = self.outputs["info"]
        valid = {g: self.valid(g) for g in groups}
        good = self.good or [t for t in manifest.ids if t not in {k.track_id for k in self.todo}]
        for tid in good:
            fig.good_rows += 1
            bad = [g for g in groups if not valid[g].get(tid, False)]
            if tid not in ids or bad:
                fig.good_lost += 1
                fig.problems.append(f"{self.corpus}: good row {tid} lost ({'not in the manifest' if tid not in ids else 'invalid in ' + ', '.join(bad)})")
        for k in self.todo:
            self.check_kind(k, ids, failures, info, valid)

    def check_kind(self, k: Kind, ids, failures, info: str, valid) -> None:
        fig = self.fig
        tid, name = k.track_id, Path(k.file).name if k.file else k.track_id
        if k.stage in ("accepted", "ignored"):
            by_group = {g: st for st, g in STAGE_GROUP.items()}
            stage_of = "ingest" if k.stage == "ignored" else by_group.get(next(iter(valid), ""), "ingest")
            fig.count(stage_of, "accepted")
            if k.stage == "ignored":
                ok = not any(t == tid or t.startswith(tid + "/") for t in ids)
            else:
                ok = tid in ids and all(v.get(tid, False) for v in valid.values())
            fig.outcome[k.name] = k.stage if ok else "LOST"
            if not ok:
                fig.problems.append(f"{k.name}: expected {k.stage}; {'in the manifest' if k.stage == 'ignored' else 'not a valid row'} ({tid})")
            return
        fig.rejected += 1
        fig.count(k.stage, "rejected")
        if k.stage == "ingest":
            # a skipped file or dropped row is recorded as (its path or id, the cause): together the message
            # (rows a table loader masks are recorded under their feature group, also at ingest)
            msgs = [f"{t}: {m}" for (t, s), m in failures.items()
                    if (s == "ingest" or t == tid) and (t == tid or name in t or tid in t or _escaped(name) in t)]
            listed = [ln for ln in info.splitlines() if (name in ln or tid in ln or _escaped(name) in ln)]
        else:
            group = STAGE_GROUP[k.stage]
            msgs = [m for (t, s), m in failures.items() if t == tid and (s == group or s.startswith("text/") and k.stage == "extract-text")]
            listed = [ln for ln in info.splitlines() if f"] {tid}: " in ln]
            if tid in ids and any(v.get(tid, False) for g, v in valid.items() if g == group):
                fig.problems.append(f"{k.name}: {tid} has a valid row in {group}")
        # where the user reads about it: the stage's own warnings, or for ingest `genre info`'s listing
        stage_out = info if k.stage == "ingest" else self.outputs.get(k.stage, "")
        lines = [ln for ln in stage_out.splitlines() if name in ln or tid in ln or _escaped(name) in ln]
        good_msg = [m for m in msgs if "\n" not in m and (name in m or tid in m or _escaped(name) in m)
                    and (k.reason is None or k.reason in m)]
        if good_msg and (k.reason is None or any(k.reason in ln for ln in lines)):
            fig.one_line += 1
        else:
            fig.problems.append(f"{k.name}: no one-line message naming {name!r} with {k.reason!r}; stored {msgs}, "
                                f"{k.stage} said {lines[:3]}")
        if listed:
            fig.listed_by_info += 1
        else:
            fig.problems.append(f"{k.name}: {tid} not listed by genre info")
        fig.outcome[k.name] = f"rejected at {k.stage}" if good_msg and listed else "BAD"

    def train_and_report(self, inputs: str) -> str:
        self.run("kernels", "kernels", "-d", self.corpus, "--inputs", inputs, "--kernels", "linear")
        self.run("train", "train", "-d", self.corpus, "--model", "svm", "--inputs", inputs, "--kernels", "linear", "--seeds", "1")
        self.run("evaluate", "evaluate", "-d", self.corpus)
        self.run("report", "report", "-d", self.corpus)
        runs = sorted(p.name for p in (self.home / self.corpus / "runs").iterdir())
        return runs[0] if runs else ""

    def predict(self, run: str) -> None:
        """predict on the corpus's own files: each good or accepted file gets genres, each bad one a line."""
        fig = self.fig
        files = sorted(p for p in self.root.rglob("*") if p.is_file() or p.is_symlink())
        files += [self.root / "no-such-file.wav", self.root / bi.LABELS[0]]  # a path that does not exist, a folder
        code, out, err = self.run("predict", "predict", "--run", run, "--json", *files)
        try:
            result = json.loads(out)
        except json.JSONDecodeError:
            fig.problems.append(f"{self.corpus} predict: no JSON on stdout:\n{out[-2000:]}\n{err[-2000:]}")
            return
        ok = {item["file"] for item in result["predictions"]}
        failed = result["failures"]
        err_lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
        n_one_line = sum(1 for f, m in failed.items() if "\n" not in m and (f in m or Path(f).name in m)
                         and any(Path(f).name in ln for ln in err_lines))
        fig.predict[f"{self.corpus}: files"] = len(files)
        fig.predict[f"{self.corpus}: predicted"] = len(ok)
        fig.predict[f"{self.corpus}: refused, one line naming the file"] = n_one_line
        if n_one_line != len(failed) or len(ok) + len(failed) != len(files):
            fig.problems.append(f"{self.corpus} predict: {len(ok)} predicted + {len(failed)} failed of {len(files)}; "
                                f"{n_one_line} one-line: {failed}")
        for tid in self.good:
            hits = [f for f in ok if str(Path(f).relative_to(self.root).with_suffix("")) == tid]
            if not hits:
                fig.problems.append(f"{self.corpus} predict: good file {tid} not predicted ({failed})")


def _escaped(name: str) -> str:
    return name.encode("unicode_escape").decode("ascii")


# ----------------------------------------------------------------------------------------------- corpora
def sweep_audio(base: Path, fig: Figures) -> None:
    s = Sweep("audio", base, fig)
    s.run("ingest", "ingest", "folder", "--root", s.root, "--name", "audio")
    for k in s.todo:
        if k.name in bi.AFTER_INGEST:
            bi.AFTER_INGEST[k.name](s.root, k)
    s.run("extract-audio", "extract-audio", "-d", "audio", "--features", "mfcc", "--max-seconds", "1")
    run = s.train_and_report("audio/mfcc")
    s.run("info", "info", "-d", "audio")
    s.check(["audio/mfcc"])
    s.predict(run)


def sweep_text(base: Path, fig: Figures) -> None:
    s = Sweep("text", base, fig)
    s.run("ingest", "ingest", "folder", "--root", s.root, "--name", "text")
    s.run("extract-text", "extract-text", "-d", "text", "--encoder", "tfidf")
    run = s.train_and_report("text/tfidf")
    s.run("info", "info", "-d", "text")
    s.check(["text/tfidf"])
    passwd = "root:x:0:0"
    with h5py.File(s.home / "text" / "features.h5", "r") as h5:
        if any(passwd in t.decode() if isinstance(t, bytes) else passwd in t for t in h5["text/source/text"][()]):
            fig.problems.append("musicxml: XXE: /etc/passwd was read into text/source")
    s.predict(run)


def sweep_covers(base: Path, fig: Figures) -> None:
    s = Sweep("covers", base, fig)
    s.run("ingest", "ingest", "mumu", "--root", s.root, "--name", "covers", "-o", "min_count=3")
    s.run("extract-image", "extract-image", "-d", "covers", "--batch-size", "8")
    s.run("extract-text", "extract-text", "-d", "covers", "--encoder", "tfidf")
    s.run("info", "info", "-d", "covers")
    manifest = s.manifest()
    with_cover = [t.id for t in manifest.tracks if t.image]
    s.good = [t for t in with_cover if t not in {k.track_id for k in s.todo}]
    s.check(["image/efficientnet-lite0"])


def sweep_table(base: Path, fig: Figures) -> None:
    s = Sweep("table", base, fig)
    s.run("ingest", "ingest", "table", "--root", s.root / bi.TABLE_FILE, "--name", "table")
    s.train_and_report("audio/table")
    s.run("info", "info", "-d", "table")
    s.check(["audio/table"])
    if "café" not in s.manifest().label_names:
        fig.problems.append(f"table: Latin-1 label read as {s.manifest().label_names}")


def sweep_cli(base: Path, fig: Figures) -> None:
    """Corpus-level defects: the command stops with exit 1 and one line naming the path (no traceback)."""
    from corpus_fixtures import make_gtzan, make_mumu

    root, home = base / "cli", base / "home-cli"
    root.mkdir(parents=True, exist_ok=True)
    for k in bi.kinds("cli"):
        fig.kinds[k.name] = k
        k.write(root, k)
        path = root / k.file
        if k.name.startswith("gtzan"):
            make_gtzan(path, per_genre=2)
            bi.write_wav(path / "genres" / "polka" / "polka.00000.au", seconds=0.1)
            args = ("ingest", "gtzan", "--root", path, "--name", "g")
        elif k.name.startswith("mumu"):
            make_mumu(path)
            csv_path = path / "MuMu_dataset_multi-label.csv"
            csv_path.write_bytes(csv_path.read_text().replace("mb-album-1,", "mb-album-\xe9,").encode("latin-1"))
            args = ("ingest", "mumu", "--root", path, "--name", "m", "-o", "min_count=3")
        elif k.name.startswith("table"):
            args = ("ingest", "table", "--root", path, "--name", "t")
        else:
            args = ("ingest", "folder", "--root", path, "--name", "f")
        code, out, err = cli(home, *args)
        text = out + err
        fig.exit_codes[f"cli {k.name}"] = code
        errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
        if k.stage == "accepted":
            ok = code in (0, 2) and "Traceback" not in text and "internal error" not in text
            fig.count("ingest (corpus)", "accepted")
            fig.outcome[k.name] = "accepted" if ok else "BAD"
            if not ok:
                fig.problems.append(f"{k.name}: expected accepted, got exit {code}:\n{text[-2000:]}")
            continue
        fig.rejected += 1
        fig.count("ingest (corpus)", "rejected")
        ok = (code == 1 and len(errors) == 1 and "Traceback" not in text and "internal error" not in text
              and str(path.name) in errors[0] and (k.reason is None or k.reason in errors[0]))
        if ok:
            fig.one_line += 1
            fig.listed_by_info += 1  # nothing is written: the error line is the whole record
        fig.outcome[k.name] = "refused (exit 1)" if ok else "BAD"
        if not ok:
            fig.problems.append(f"{k.name}: expected exit 1 and one error line naming {path.name} with {k.reason!r}; got {code}:\n{text[-2000:]}")


CORPORA = {"audio": sweep_audio, "table": sweep_table, "cli": sweep_cli, "text": sweep_text, "covers": sweep_covers}


def sweep(base: Path, corpora=tuple(CORPORA)) -> Figures:
    fig = Figures()
    env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    try:
        for name in corpora:
            try:
                CORPORA[name](base, fig)
            except Exception as exc:  # noqa: BLE001 - e.g. no manifest because ingest failed: counted, not fatal
                fig.problems.append(f"{name}: the sweep of this corpus stopped: {type(exc).__name__}: {exc}")
    finally:
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
    return fig


def format_figures(fig: Figures) -> str:
    lines = [f"bad-input sweep: {len(fig.kinds)} kinds ({fig.rejected} to reject, {len(fig.kinds) - fig.rejected} to accept or ignore)"]
    for stage, c in sorted(fig.stage_counts.items()):
        lines.append(f"  {stage:14s} rejected with a one-line message: {c['rejected']:3d}   accepted/ignored: {c['accepted']:3d}")
    lines.append(f"  rejected with a one-line message naming the file and cause: {fig.one_line}/{fig.rejected}")
    lines.append(f"  rejected kinds listed by `genre info` (or the error line): {fig.listed_by_info}/{fig.rejected}")
    lines.append(f"  good rows lost: {fig.good_lost} of {fig.good_rows}")
    for k, v in fig.predict.items():
        lines.append(f"  predict {k}: {v}")
    lines.append(f"  exit codes: {json.dumps(fig.exit_codes)}")
    lines.append(f"  problems: {len(fig.problems)}")
    lines += [f"    {p}" for p in fig.problems]
    return "\n".join(lines)


def _assert_clean(fig: Figures) -> None:
    assert not fig.problems, format_figures(fig)
    assert fig.one_line == fig.listed_by_info == fig.rejected and fig.good_lost == 0


def test_catalogue_has_at_least_50_kinds_over_every_modality():
    assert len(bi.KINDS) >= 50
    assert len({k.name for k in bi.KINDS}) == len(bi.KINDS)
    assert {k.corpus for k in bi.KINDS} == {"audio", "text", "covers", "table", "cli"}
    tracks = [(k.corpus, k.track_id) for k in bi.KINDS]  # one track per kind: no two share a stem
    assert len(set(tracks)) == len(tracks), sorted(t for t in tracks if tracks.count(t) > 1)


@pytest.mark.parametrize("corpus", list(CORPORA))
def test_bad_input_sweep(corpus, tmp_path):
    """Unmarked: the five corpora take about 20 s together on two cores (tiny files, mfcc, tfidf, linear SVMs)."""
    _assert_clean(sweep(tmp_path, (corpus,)))


# ---------------------------------------------------------------------- extract-text keeps a better group
def _lyrics_corpus(root: Path) -> Path:
    for label in bi.LABELS:
        for i in range(3):
            (root / label).mkdir(parents=True, exist_ok=True)
            (root / label / f"s{i}.txt").write_text(f"{label} words of song {i}\n")
    return root


def test_extract_text_does_not_replace_a_better_group_without_force(tmp_path, data_home):
    """Issue 16, gap (a): a recomputed /text/source or /text/<encoder> with fewer valid rows replaced the
    stored one silently; like extract-audio, it is now kept (nothing written, one line) unless --force."""
    from genrecli import store
    from genrecli.errors import UsageError
    from genrecli.layout import DatasetPaths
    from genrecli.pipeline.ingest import ingest
    from genrecli.pipeline.text import convert_sources, extract_text

    root = _lyrics_corpus(tmp_path / "c")
    ingest("folder", root=root, name="c")
    paths = DatasetPaths.of("c")
    assert extract_text("c", encoder="tfidf").written == ["text/tfidf"]
    (root / "loud" / "s1.txt").write_bytes(b"now \x00 binary\n")  # a file that breaks after the first run

    # the conversion changes (keep_metadata): the source is recomputed with one failure more
    before = store.read_feature(paths.features(), "text/tfidf")[0]
    with pytest.raises(UsageError) as exc:
        extract_text("c", encoder="tfidf", keep_metadata=True)
    message = str(exc.value)
    assert "\n" not in message and "kept the stored text/source (6 tracks ok, now 5)" in message
    assert "loud/s1" in message and "--force" in message
    assert int(store.read_feature(paths.features(), "text/tfidf")[1].sum()) == 6

    # a worse source already stored (forced by another encoder's run): the encoder group is kept
    convert_sources(paths, keep_metadata=True, force=True)
    with pytest.raises(UsageError, match=r"kept the stored text/tfidf \(6 tracks ok, now 5\)"):
        extract_text("c", encoder="tfidf", keep_metadata=True)
    data, valid, _ = store.read_feature(paths.features(), "text/tfidf")
    assert int(valid.sum()) == 6 and np.array_equal(data, before, equal_nan=True)

    result = extract_text("c", encoder="tfidf", keep_metadata=True, force=True)  # --force replaces it
    assert result.written == ["text/tfidf"] and set(result.failures) == {"loud/s1"}
    assert int(store.read_feature(paths.features(), "text/tfidf")[1].sum()) == 5


def test_inline_lyrics_with_nul_fail_their_row(tmp_path, data_home):
    """Issue 16, gap (b): 4MuLA lyrics (a parquet column) with NUL characters aborted the whole ingest at the
    manifest's HDF5 strings; now the row fails with a reason and ingest exits 2. (Parquet strings are UTF-8, so
    a lone surrogate cannot come from there; MuMu's JSON reviews can carry one: see the covers corpus.)"""
    from corpus_fixtures import fourmula_rows, write_4mula_parquet
    from genrecli.layout import DatasetPaths
    from genrecli.manifest import read_manifest
    from genrecli.pipeline.ingest import ingest

    rows = fourmula_rows()
    rows[0] = {**rows[0], "music_lyrics": "la la\x00la"}
    write_4mula_parquet(tmp_path / "m" / "4mula_small.parquet", rows)
    result = ingest("4mula", root=tmp_path / "m", name="m")
    key = f"4mula_small.parquet:{rows[0]['music_id']}"
    assert result.exit_code == 2 and result.failures == {key: "music_lyrics: binary data, not text (NUL characters)"}
    ids = read_manifest(DatasetPaths.of("m").manifest).ids
    assert rows[0]["music_id"] not in ids and len(ids) == 29
