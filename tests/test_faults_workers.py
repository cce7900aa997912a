"""Issue 16, the per-track workers: a worker that dies is retried and never cached as a failure, workers die
with their parent, and a track over the per-track time or memory bound is a recorded failure with a reason.

The per-track toy functions live in tests/worker_toys.py (module level: the spawned workers import them).
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

import genrecli.pipeline.audio as audio_stage
import worker_toys
from genrecli import store
from genrecli.errors import UsageError
from genrecli.pipeline.audio import extract_audio
from genrecli.pipeline.features import run_per_track
from genrecli.pipeline.workers import TracksUndone, parse_size

from conftest import run_cli, write_wav

_REAL_EXTRACT = audio_stage._extract_one
IDS = [f"id{i}" for i in range(6)]
REPO = Path(__file__).resolve().parents[1]


def run(func, folder: Path, *, jobs=2, rows=6, **bounds):
    checkpoint = store.RowCheckpoint(folder / "ck", "d")
    items = {i: (i, str(folder)) for i in range(rows)}
    return run_per_track(func, items, checkpoint=checkpoint, jobs=jobs, description="toy", ids=IDS, **bounds)


def checkpointed(folder: Path):
    return store.RowCheckpoint(folder / "ck", "d").load()


def test_each_of_n_workers_runs_torch_and_blas_on_its_share_of_the_cores(tmp_path):
    # N workers each with an all-core OpenBLAS oversubscribe: two workers' mel spectrograms ran at a third of one's
    done, failed = run(worker_toys.thread_limits, tmp_path, jobs=2, rows=2)
    share = max(1, (os.cpu_count() or 1) // 2)
    assert failed == {} and all(list(done[row]["v"]) == [share, share] for row in done)


# ----------------------------------------------------------------------------- workers that die


def test_a_worker_killed_mid_run_is_retried_and_its_row_computed(tmp_path, capsys):
    done, failed = run(worker_toys.die_once_on_2, tmp_path)
    assert (tmp_path / "died-once").exists()  # the worker running row 2 was killed once ...
    assert sorted(done) == list(range(6)) and failed == {}  # ... and row 2 computed on a fresh one
    assert done[2]["v"][0] == 4
    assert checkpointed(tmp_path)[1] == {}
    assert "id2: worker process died (killed by SIGKILL); retrying on a fresh worker" in capsys.readouterr().err


def test_a_row_whose_worker_always_dies_is_not_recorded_and_a_rerun_tries_it(tmp_path):
    with pytest.raises(TracksUndone) as info:
        run(worker_toys.always_die_on_2, tmp_path)
    message = str(info.value)
    assert "\n" not in message and "1 track(s) left undone" in message and "id2: killed by SIGKILL" in message
    assert "rerun" in message
    assert len((tmp_path / "attempts").read_text().split()) == 3  # the first run and two retries
    done, failed = checkpointed(tmp_path)
    assert sorted(done) == [0, 1, 3, 4, 5] and failed == {}  # every other row kept, row 2 nowhere

    with pytest.raises(TracksUndone):  # the rerun resumes and attempts row 2 again, not "up to date"
        run(worker_toys.always_die_on_2, tmp_path)
    assert len((tmp_path / "attempts").read_text().split()) == 6

    done, failed = run(worker_toys.square, tmp_path)  # whatever killed it gone: computed
    assert sorted(done) == list(range(6)) and failed == {} and done[2]["v"][0] == 4


def _dying_extract(source, **kw):
    """The audio extractor, except that loud/t1 kills its worker while GENRE_TEST_DIE is set."""
    if os.environ.get("GENRE_TEST_DIE") and str(source.get("audio")).endswith(os.path.join("loud", "t1.wav")):
        os.kill(os.getpid(), signal.SIGKILL)
    return _REAL_EXTRACT(source, **kw)


def test_extract_audio_does_not_call_a_track_with_a_dead_worker_up_to_date(ingested, capsys, monkeypatch):
    monkeypatch.setattr(audio_stage, "_extract_one", _dying_extract)
    monkeypatch.setenv("GENRE_TEST_DIE", "1")
    args = ("extract-audio", "-d", "c", "--max-seconds", "0.5", "--jobs", "2")
    code, _, err = run_cli(capsys, *args)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1 and "loud/t1: killed by SIGKILL" in errors[0], err
    assert "Traceback" not in err
    assert not (ingested / "c" / "features.h5").exists()  # nothing written, nothing recorded as failed

    monkeypatch.delenv("GENRE_TEST_DIE")
    code, _, err = run_cli(capsys, *args)
    assert code == 0 and "up to date" not in err and "resuming, 5 tracks already done" in err, err
    with h5py.File(ingested / "c" / "features.h5", "r") as h5:
        assert h5["audio/mfcc/valid"][()].all() and store.read_failures(h5) == []


# ---------------------------------------------------------------------------- workers die with their parent


DRIVER = """
import sys
sys.path[:0] = [{repo!r}, {tests!r}]
from genrecli import store
from genrecli.pipeline.features import run_per_track
import worker_toys

run_per_track(worker_toys.record_pid_and_sleep, {{i: (i, {folder!r}) for i in range(4)}}, jobs=2,
              checkpoint=store.RowCheckpoint({folder!r}, "d"), description="toy", ids=list("abcd"))
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in fh)  # zombie: dead
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_the_parent_leaves_no_worker(tmp_path):
    script = DRIVER.format(repo=str(REPO), tests=str(REPO / "tests"), folder=str(tmp_path))
    parent = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120  # two interpreters importing torch on a busy machine
        while len(list(tmp_path.glob("pid-*"))) < 2 and time.monotonic() < deadline and parent.poll() is None:
            time.sleep(0.2)
        pids = [int(p.name[4:]) for p in tmp_path.glob("pid-*")]
        assert len(pids) == 2 and parent.poll() is None, "the workers did not start"
    finally:
        parent.kill()  # SIGKILL: no chance to clean up
        parent.wait()
    deadline = time.monotonic() + 5
    while any(map(_alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = [pid for pid in pids if _alive(pid)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"workers {survivors} outlived their parent"


# ----------------------------------------------------------------------------- per-track bounds


def test_a_track_over_the_time_limit_is_a_failure_with_the_reason(tmp_path):
    start = time.monotonic()
    done, failed = run(worker_toys.slow_on_1, tmp_path, jobs=1, track_timeout=2)  # jobs=1 is bounded too
    assert failed == {1: "exceeded the 2 s per-track time limit (--track-timeout)"}
    assert sorted(done) == [0, 2, 3, 4, 5]
    assert checkpointed(tmp_path)[1] == failed  # recorded, like a bad input
    assert time.monotonic() - start < 60


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the memory bound reads /proc")
def test_a_track_over_the_memory_limit_is_a_failure_with_the_reason(tmp_path):
    # the worker's RSS counts its interpreter and torch (~250 MB): 600 MiB leaves room for that, not for 1.2 GB
    done, failed = run(worker_toys.hog_on_1, tmp_path, track_memory="600M")
    assert failed == {1: "exceeded the 600 MiB per-track memory limit (--track-memory)"}
    assert sorted(done) == [0, 2, 3, 4, 5]


def _slow_extract(source, **kw):
    if str(source.get("audio")).endswith(os.path.join("loud", "t1.wav")):
        time.sleep(120)
    return _REAL_EXTRACT(source, **kw)


def test_extract_audio_records_a_track_over_the_time_limit(ingested, capsys, monkeypatch):
    monkeypatch.setattr(audio_stage, "_extract_one", _slow_extract)
    # 10 s, not less: the first track of a worker also pays its imports and numba compilation (seconds on a
    # loaded machine), and only the sleeping track may go over
    code, _, err = run_cli(capsys, "extract-audio", "-d", "c", "--max-seconds", "0.5", "--track-timeout", "10")
    reason = "exceeded the 10 s per-track time limit (--track-timeout)"
    assert code == 2 and "1 item(s) failed" in err and f"loud/t1: {reason}" in err, err
    with h5py.File(ingested / "c" / "features.h5", "r") as h5:
        assert h5["audio/mfcc/valid"][()].sum() == 5
        assert [(tid, msg) for tid, _, msg in store.read_failures(h5)] == [("loud/t1", reason)]
    code, out, err = run_cli(capsys, "info", "-d", "c")
    assert code == 0 and reason in out + err


# ----------------------------------------------------------------------------- argument checks


@pytest.fixture
def ingested(tmp_path, capsys, data_home):
    for label, freqs in (("calm", (220, 330, 247)), ("loud", (440, 550, 494))):
        for k, freq in enumerate(freqs):
            write_wav(tmp_path / "corpus" / label / f"t{k}.wav", freq=freq, seconds=0.5)
    code, _, err = run_cli(capsys, "ingest", "folder", "--root", tmp_path / "corpus", "--name", "c")
    assert code == 0, err
    return data_home


@pytest.mark.parametrize(
    "flag, value, fragment",
    [
        ("--track-timeout", "0", "--track-timeout must be a positive, finite number of seconds"),
        ("--track-timeout", "-1", "--track-timeout must be a positive, finite number of seconds"),
        ("--track-timeout", "nan", "--track-timeout must be a positive, finite number of seconds"),
        ("--track-timeout", "inf", "--track-timeout must be a positive, finite number of seconds"),
        ("--track-timeout", "abc", "Invalid value for '--track-timeout'"),
        ("--track-memory", "0", "--track-memory 0: the size must be > 0"),
        ("--track-memory", "-1", "--track-memory -1: expected a size such as 4G or 512M"),
        ("--track-memory", "nan", "--track-memory nan: expected a size"),
        ("--track-memory", "abc", "--track-memory abc: expected a size"),
        ("--track-memory", "4X", "--track-memory 4X: expected a size"),
    ],
)
def test_bad_bounds_rejected_before_any_store(ingested, capsys, flag, value, fragment):
    before = sorted(p.relative_to(ingested) for p in ingested.rglob("*"))
    code, _, err = run_cli(capsys, "extract-audio", "-d", "c", f"{flag}={value}")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and fragment in lines[0], err
    assert sorted(p.relative_to(ingested) for p in ingested.rglob("*")) == before


@pytest.mark.parametrize("bounds", [{"track_timeout": 0}, {"track_timeout": float("nan")}, {"track_timeout": "9"},
                                    {"track_memory": 0}, {"track_memory": float("inf")}, {"track_memory": "lots"}])
def test_extract_audio_refuses_bad_bounds_before_any_store(ingested, bounds):
    before = sorted(p.relative_to(ingested) for p in ingested.rglob("*"))
    with pytest.raises(UsageError, match="track_(timeout|memory)"):
        extract_audio("c", **bounds)
    assert sorted(p.relative_to(ingested) for p in ingested.rglob("*")) == before


@pytest.mark.parametrize("text, size", [("4G", 4 * 2**30), ("512M", 512 * 2**20), ("1.5GiB", 3 * 2**29),
                                        ("64kb", 65536), ("1000", 1000), (" 2 T ", 2 * 2**40)])
def test_parse_size(text, size):
    assert parse_size(text) == size
