"""Per-track toy functions for tests/test_faults_workers.py and tests/test_ray_executor.py: module-level, so the
spawned workers and the Ray actors import them.

Items are ``(x, folder)``: ``x`` picks the behaviour, ``folder`` is where a function leaves its marks.
"""

import os
import signal
import time
from pathlib import Path

import numpy as np


def square(item):
    x = item[0] if isinstance(item, tuple) else item
    return {"v": np.array([x * x], dtype=np.float32)}


def die_once_on_2(item):
    """Row 2 kills its own worker the first time (a worker killed from outside), then works."""
    x, folder = item
    marker = Path(folder) / "died-once"
    if x == 2 and not marker.exists():
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return square(item)


def always_die_on_2(item):
    """Row 2 kills its worker every time; counts the attempts in ``folder``."""
    x, folder = item
    if x == 2:
        with open(Path(folder) / "attempts", "a") as fh:
            fh.write(f"{os.getpid()}\n")
        os.kill(os.getpid(), signal.SIGKILL)
    return square(item)


def record_pid_and_sleep(item):
    """Leave ``pid-<pid>`` in ``folder``, then run far longer than the test waits."""
    _, folder = item
    (Path(folder) / f"pid-{os.getpid()}").write_text("")
    time.sleep(120)
    return square(item)


def slow_on_1(item):
    if item[0] == 1:
        time.sleep(120)
    return square(item)


def hog_on_1(item):
    """Row 1 holds about 1.2 GB (every page touched) for a long time."""
    if item[0] == 1:
        block = np.ones(150_000_000)  # float64: 1.2 GB, written, so resident
        time.sleep(120)
        return {"v": np.array([block[0]], dtype=np.float32)}
    return square(item)


def log_and_fail_on_4(item):
    """Log each computed row to ``folder/computed`` (one line per call); row 4 raises a bug (not a track
    failure) while ``folder/bug`` exists: an interrupted stage, for the resume tests."""
    x, folder = item
    with open(Path(folder) / "computed", "a") as fh:
        fh.write(f"{x}\n")
    if x == 4 and (Path(folder) / "bug").exists():
        raise RuntimeError("a bug on row 4")
    return square(item)


def fail_input_on_3(item):
    """Row 3 is a bad input (a per-track failure, recorded), the others work."""
    from genrecli.errors import InputError

    if item[0] == 3:
        raise InputError("row 3 is not a track")
    return square(item)


def log_and_sleep_from_40(item):
    """Log each computed row and its process to ``folder/computed`` (``row pid`` lines); rows from 40 on sleep
    while ``folder/sleep`` exists (a driver killed meanwhile has checkpointed the first 32 rows)."""
    x, folder = item
    with open(Path(folder) / "computed", "a") as fh:
        fh.write(f"{x} {os.getpid()}\n")
    while x >= 40 and (Path(folder) / "sleep").exists():
        time.sleep(0.2)
    return square(item)


def thread_limits(item):
    """The torch and BLAS thread counts the worker runs with (``v`` = [torch, most BLAS threads])."""
    import numpy  # noqa: F401 - loads NumPy's OpenBLAS, the pool the limit must reach
    import torch
    from threadpoolctl import threadpool_info

    blas = max((pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"), default=0)
    return {"v": np.array([torch.get_num_threads(), blas], dtype=np.float32)}
