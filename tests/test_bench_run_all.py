"""bench/run_all.py rewrites only its own block of BENCHMARKS.md."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_all():
    spec = importlib.util.spec_from_file_location("run_all", ROOT / "bench" / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_rerun_replaces_the_last_run_and_keeps_the_notes(run_all):
    notes = "# Benchmarks\n\nIntro.\n\n## An earlier pass\n\nkept figures\n"
    first = run_all.splice(notes, "## The last run\n\nrun 1")
    assert first.startswith("# Benchmarks\n\n" + run_all.BEGIN)
    assert "run 1" in first and "## An earlier pass\n\nkept figures\n" in first and "Intro." in first
    second = run_all.splice(first, "## The last run\n\nrun 2")
    assert "run 1" not in second and "run 2" in second
    assert second.count(run_all.BEGIN) == 1 and second.count(run_all.END) == 1
    assert second.replace("run 2", "run 1") == first


def test_a_new_file_gets_a_title(run_all):
    out = run_all.splice("", "tables")
    assert out.startswith("# Benchmarks\n\n" + run_all.BEGIN) and "tables" in out


def test_unknown_benchmarks_are_refused(run_all, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["run_all.py", "--only", "kernels,nope"])
    with pytest.raises(SystemExit):
        run_all.main()
    assert "nope" in capsys.readouterr().err
