"""Issue 15, `--executor ray`: per-track stages on Ray actors, with the local pool's contract.

One local Ray instance (two CPUs) serves the whole module; the executor uses a session its caller started as
it is. Ray is in the test extra, so these tests run (not skip) under `make test`. The per-track toys live in
tests/worker_toys.py (module level: the actors import them through the PYTHONPATH of
``local_ray_options``).
"""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import ray

import worker_toys
from genrecli import store
from genrecli.layout import DatasetPaths
from genrecli.manifest import read_manifest
from genrecli.pipeline.audio import extract_audio
from genrecli.pipeline import executors
from genrecli.pipeline.executors import RAY_MISSING, local_ray_options
from genrecli.pipeline.features import TrackInternalError, run_per_track
from genrecli.pipeline.ingest import ingest
from genrecli.pipeline.text import extract_text
from genrecli.pipeline.workers import TracksUndone

from conftest import run_cli

IDS = [f"id{i}" for i in range(70)]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_session():
    ray.init(**local_ray_options(num_cpus=2))
    yield
    ray.shutdown()


@pytest.fixture
def ray_pools(monkeypatch):
    """The pools the Ray executor drove (so a test knows its rows did go through Ray, not the local pool)."""
    pools = []

    def spy(pool, *args, **kwargs):
        pools.append(pool)
        return real(pool, *args, **kwargs)

    real = executors.drive_rows
    monkeypatch.setattr(executors, "drive_rows", spy)
    return pools


def run(func, folder: Path, *, jobs=2, rows=6, **bounds):
    checkpoint = store.RowCheckpoint(folder / "ck", "d")
    items = {i: (i, str(folder)) for i in range(rows)}
    return run_per_track(func, items, checkpoint=checkpoint, jobs=jobs, description="toy", ids=IDS, executor="ray",
                         **bounds)


# ------------------------------------------------------------------------ the same features as locally


def test_ray_mfcc_of_folk_dances_equals_the_local_jobs_1_result(ray_session, data_home, ray_pools):
    # Two ingests of the same sample, so the Ray run converts the scores to MIDI itself (no MIDI cache).
    for name in ("local", "ray"):
        ingest("folk-dances", name=name, limit=8, seed=1, splits=("random:0.5",))
    extract_audio("local", features=("mfcc",), max_seconds=5.0, jobs=1)
    assert not ray_pools
    result = extract_audio("ray", features=("mfcc",), max_seconds=5.0, jobs=2, executor="ray")
    assert [type(p).__name__ for p in ray_pools] == ["_RayPool"]
    assert result.written == ["audio/mfcc"] and not result.failures
    groups = {}
    for name in ("local", "ray"):
        paths = DatasetPaths.of(name)
        with h5py.File(paths.features(), "r") as h5:
            grp = h5["audio/mfcc"]
            groups[name] = (grp["data"][()], grp["valid"][()], store.group_params(grp), read_manifest(paths.manifest).ids)
    (data_l, valid_l, params_l, ids_l), (data_r, valid_r, params_r, ids_r) = groups["local"], groups["ray"]
    assert ids_l == ids_r and len(ids_l) == 8
    assert valid_l.all() and np.array_equal(valid_l, valid_r)
    assert np.array_equal(data_l, data_r)  # bit for bit, not allclose
    assert params_l == params_r  # the executor is not part of the features' identity


def test_ray_score_conversion_of_extract_text_equals_the_local_one(ray_session, data_home, ray_pools):
    # what goes through Ray in extract-text is the per-track conversion to a canonical format; encoding stays here
    for name in ("local", "ray"):
        ingest("folk-dances", name=name, limit=8, seed=2, splits=("random:0.5",))
    extract_text("local", encoder="tfidf", text_format="tokens", jobs=1)
    assert not ray_pools
    result = extract_text("ray", encoder="tfidf", text_format="tokens", jobs=2, executor="ray")
    assert len(ray_pools) == 1
    assert not result.failures
    out = {}
    for name in ("local", "ray"):
        with h5py.File(DatasetPaths.of(name).features(), "r") as h5:
            out[name] = (store.read_strings(h5["text/source-tokens"]["text"]), h5["text/tfidf-tokens"]["data"][()])
    assert out["local"][0] == out["ray"][0] and all(out["ray"][0])
    assert np.array_equal(out["local"][1], out["ray"][1])


# ------------------------------------------------------------------------------------ dying workers


def test_a_killed_ray_worker_is_retried_and_its_row_computed(ray_session, tmp_path, capsys):
    done, failed = run(worker_toys.die_once_on_2, tmp_path)
    assert (tmp_path / "died-once").exists()  # the actor running row 2 killed itself once ...
    assert sorted(done) == list(range(6)) and failed == {}  # ... and row 2 came back from a fresh one
    assert done[2]["v"][0] == 4
    err = capsys.readouterr().err
    assert "id2: worker process died (Ray actor died" in err and "retrying on a fresh worker" in err


def test_a_row_whose_ray_worker_always_dies_is_left_undone(ray_session, tmp_path):
    with pytest.raises(TracksUndone) as info:
        run(worker_toys.always_die_on_2, tmp_path)
    assert "\n" not in str(info.value) and "1 track(s) left undone" in str(info.value)
    assert len((tmp_path / "attempts").read_text().split()) == 3  # the first try and two retries
    done, failed = store.RowCheckpoint(tmp_path / "ck", "d").load()
    assert sorted(done) == [0, 1, 3, 4, 5] and failed == {}  # the others kept, row 2 recorded nowhere


def test_a_row_over_the_time_bound_on_ray_is_a_recorded_failure(ray_session, tmp_path):
    start = time.monotonic()
    done, failed = run(worker_toys.slow_on_1, tmp_path, track_timeout=3)
    assert failed == {1: "exceeded the 3 s per-track time limit (--track-timeout)"}
    assert sorted(done) == [0, 2, 3, 4, 5] and time.monotonic() - start < 60  # its actor was killed, not waited for


# -------------------------------------------------------------------------------------------- resume


def test_a_resumed_ray_run_does_not_recompute_stored_rows(ray_session, tmp_path):
    (tmp_path / "bug").write_text("")
    with pytest.raises(TrackInternalError, match="internal error in toy on id4: RuntimeError: a bug on row 4"):
        run(worker_toys.log_and_fail_on_4, tmp_path, jobs=1)  # one actor: rows in order, 5 is never started
    stored, _ = store.RowCheckpoint(tmp_path / "ck", "d").load()
    assert sorted(stored) == [0, 1, 2, 3]  # the interrupted run kept what it finished
    (tmp_path / "bug").unlink()
    (tmp_path / "computed").unlink()
    done, failed = run(worker_toys.log_and_fail_on_4, tmp_path)
    assert sorted(map(int, (tmp_path / "computed").read_text().split())) == [4, 5]  # only the missing rows
    assert sorted(done) == list(range(6)) and failed == {}
    assert [float(done[i]["v"][0]) for i in range(6)] == [i * i for i in range(6)]


DRIVER = """
import sys
import worker_toys
from genrecli import store
from genrecli.pipeline.features import run_per_track
folder = sys.argv[1]
run_per_track(worker_toys.log_and_sleep_from_40, {i: (i, folder) for i in range(70)}, jobs=2, description="toy",
              checkpoint=store.RowCheckpoint(folder + "/ck", "d"), ids=[f"id{i}" for i in range(70)], executor="ray")
"""


def _computed(folder: Path) -> list[tuple[int, int]]:
    path = folder / "computed"
    return [tuple(map(int, line.split())) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_driver_killed_by_sigkill_takes_its_actors_and_its_rerun_resumes(ray_session, tmp_path):
    # The driver starts its own local Ray instance (the default path of `genre extract-audio --executor ray`).
    (tmp_path / "sleep").write_text("")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path)], env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while len(_computed(tmp_path)) < 42 and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.5)  # rows 0-39 done (the first 32 checkpointed), 40 and 41 sleeping in the actors
        assert len(_computed(tmp_path)) >= 42, "the driver did not get to row 41"
    finally:
        driver.kill()
        driver.wait()
    actors = {pid for _, pid in _computed(tmp_path)}
    deadline = time.monotonic() + 30
    while (alive := {pid for pid in actors if _alive(pid)}) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not alive  # Ray's raylet ends the actors of a dead driver: no orphan keeps computing
    # the checkpoint holds the first 32 rows to finish: with two actors not always rows 0-31 (once 0-30 and 32)
    stored, _ = store.RowCheckpoint(tmp_path / "ck", "d").load()
    assert len(stored) >= 32 and set(stored) <= set(range(40))
    (tmp_path / "sleep").unlink()
    (tmp_path / "computed").unlink()
    done, failed = run(worker_toys.log_and_sleep_from_40, tmp_path, rows=70)
    redone = sorted(row for row, _ in _computed(tmp_path))
    assert redone == sorted(set(range(70)) - set(stored))  # the stored rows are not redone, every other row is
    assert sorted(done) == list(range(70)) and failed == {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_bad_input_on_a_ray_worker_is_a_recorded_failure(ray_session, tmp_path):
    # the local contract: an InputError is one track's failure (a bug stops the stage: see the resume test)
    done, failed = run(worker_toys.fail_input_on_3, tmp_path)
    assert failed == {3: "row 3 is not a track"} and sorted(done) == [0, 1, 2, 4, 5]


# --------------------------------------------------------------------------------- one-line errors


def _genre(*args):
    return subprocess.run([sys.executable, "-m", "genrecli", *args], capture_output=True, text=True, cwd=REPO,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(REPO)}, timeout=120)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("address, fragment", [
    (f"127.0.0.1:{_free_port()}", "no Ray cluster answers there"),
    ("somewhere", "expected host:port, ray://host:port or auto"),
    ("", "give the Ray cluster's address"),
])
def test_a_bad_address_is_one_line_before_any_work(tmp_path, address, fragment):
    proc = _genre("--data-home", tmp_path, "extract-audio", "--data", "none", "--executor", "ray", "--address", address)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and fragment in lines[0], proc.stderr
    assert lines[0].startswith(f"error: --address {address}".rstrip()) or not address, lines


def test_an_address_without_ray_and_an_unknown_executor_are_one_line(capsys, data_home):
    code, _, err = run_cli(capsys, "extract-audio", "--data", "none", "--address", "10.0.0.1:6379")
    assert code == 1 and err.strip() == "error: --address 10.0.0.1:6379: only for --executor ray"
    code, _, err = run_cli(capsys, "extract-text", "--data", "none", "--executor", "dask")
    assert code == 1 and err.strip() == "error: --executor dask: expected one of local, ray"


def test_missing_ray_is_one_line_naming_the_fix(capsys, data_home, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError, as without the package
    for stage in ("extract-audio", "extract-text"):
        code, _, err = run_cli(capsys, stage, "--data", "none", "--executor", "ray")
        assert code == 1 and err.strip() == f"error: {RAY_MISSING}"
    assert "pip install 'genrecli[ray]'" in RAY_MISSING
