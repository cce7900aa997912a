"""Supervised worker processes for the per-track stages: per-track time and memory bounds, retries of
workers that die, and no orphans.

Why not :class:`concurrent.futures.ProcessPoolExecutor`: it does not say which task a dead worker was running
(one death breaks the whole pool and every pending future), it cannot stop one task that runs too long or
grows too big, and its forked workers outlive a ``kill -9`` of the parent. Here the parent hands one row at a
time to each worker over its own pipe, so it always knows which row a worker runs, since when, and how much
memory the worker holds.

Design choices
--------------
* Workers are started with the ``spawn`` method: a fresh interpreter is a direct child of the stage (so the
  kernel can kill it when the stage dies, see :func:`_die_with_parent`), does not inherit the parent's
  threads, locks or CUDA state (forking a process whose OpenMP pool has run can hang the child), and its RSS
  is its own (a forked child's RSS includes the parent's pages). The price is a start-up per worker, paid
  once per worker and stage run, not per track: about 2 s to import torch, plus the first track's imports and
  numba compilation (about 1.5 s for mfcc), so 4-5 s on a small machine. The function and the items are
  pickled, so the function must be importable by name (module level).
* ``jobs=1`` runs in one worker too: the bounds need a process to kill, and the features (models) are loaded
  once per worker anyway.
* The time bound counts from the moment a worker takes the row (not its start-up); the memory bound is the
  worker's resident set (``VmRSS``, which includes its interpreter, libraries and loaded models, about 250 MB
  with torch), sampled every :data:`POLL_SECONDS`; subprocesses of the worker are not counted. Memory is only
  bounded where ``/proc`` exists (Linux).
* A row over a bound is a per-track failure (recorded, listed by ``genre info``). A worker that dies without
  being killed by us (killed from outside, a segfault, the OOM killer) is a transient death: the row is retried
  on a fresh worker up to :data:`WORKER_RETRIES` times; if it keeps dying it is *not* recorded at all, so a
  rerun tries it again, and the stage ends with :class:`TracksUndone` after every other row is done.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import dataclasses
import math
import multiprocessing as mp
import os
import pickle
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection, wait

from genrecli import ui
from genrecli.errors import GenreError, InputError, UsageError

DEFAULT_TRACK_TIMEOUT = 600.0  # seconds; a 30 s clip takes seconds, a pathological input can take hours
MAX_DEFAULT_TRACK_MEMORY = 8 * 2**30  # bytes; the default is min(this, half the RAM): see default_track_memory
WORKER_RETRIES = 2  # a row whose worker dies is run again on a fresh worker this many times
POLL_SECONDS = 0.1  # how often the parent samples the elapsed time and the RSS of busy workers
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclasses.dataclass(frozen=True)
class TrackBounds:
    """Per-track bounds of a worker: wall-clock ``timeout`` in seconds and resident ``memory`` in bytes."""

    timeout: float
    memory: int


class TracksUndone(GenreError):
    """Tracks whose worker kept dying: not recorded as failures, so the rerun (which resumes) tries them again."""

    def __init__(self, description: str, undone: Mapping[str, str], finished: int):
        track, reason = next(iter(undone.items()))
        super().__init__(
            f"{description}: {len(undone)} track(s) left undone, their worker process kept dying (e.g. {track}: "
            f"{reason}); the {finished} finished track(s) are kept: rerun to retry the rest"
        )
        self.undone = dict(undone)


def default_track_memory() -> int:
    """min(8 GiB, half the physical RAM): one worker cannot push the machine into swap or the OOM killer.

    The bound is per worker, independent of ``jobs``, so a track fails or passes the same way whatever the
    parallelism (``jobs`` workers may together hold ``jobs`` times the bound).
    """
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: no way to ask, keep the cap
        return MAX_DEFAULT_TRACK_MEMORY
    return min(MAX_DEFAULT_TRACK_MEMORY, ram // 2)


_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)


def parse_size(text: str, flag: str = "track_memory") -> int:
    """``"4G"`` -> 4 * 2**30 bytes; K, M, G, T are powers of 1024 (``4GiB`` and ``4GB`` read the same).

    A bare number is bytes. Anything else, or a size under one byte, is a one-line :class:`UsageError`
    naming ``flag``.
    """
    match = _SIZE.fullmatch(str(text).strip())
    if not match:
        raise UsageError(f"{flag} {text}: expected a size such as 4G or 512M")
    size = float(match[1]) * 1024 ** "_kmgt".index(match[2].lower())  # "" is at 0: bytes
    if size < 1:
        raise UsageError(f"{flag} {text}: the size must be > 0, e.g. 4G or 512M")
    return int(size)


def format_size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def track_bounds(timeout: float | None = None, memory: int | float | str | None = None) -> TrackBounds:
    """Checked bounds (None: the default): a positive, finite number of seconds and a size (bytes or ``"4G"``)."""
    if timeout is None:
        timeout = DEFAULT_TRACK_TIMEOUT
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (math.isfinite(timeout) and timeout > 0):
        raise UsageError(f"track_timeout must be a positive, finite number of seconds (got {timeout!r})")
    if memory is None:
        memory = default_track_memory()
    elif isinstance(memory, str):
        memory = parse_size(memory)
    elif isinstance(memory, bool) or not isinstance(memory, (int, float)) or not (math.isfinite(memory) and memory >= 1):
        raise UsageError(f"track_memory must be a positive, finite number of bytes or a size such as 4G (got {memory!r})")
    return TrackBounds(float(timeout), int(memory))


@dataclasses.dataclass(eq=False)
class _Worker:
    process: mp.process.BaseProcess
    conn: Connection
    ready: bool = False  # initialised (the time bound must not count the start-up)
    row: int | None = None  # the row it runs
    started: float = 0.0  # time.monotonic() when it took the row


def run_workers(
    func: Callable,
    items: Mapping[int, object],
    todo: list[int],
    *,
    jobs: int,
    bounds: TrackBounds,
    finish: Callable[[int, object], None],
    advance: Callable[[int], None],
    ids: list[str],
) -> dict[int, str]:
    """``finish(row, values or exception)`` for every row of ``todo``, computed by up to ``jobs`` workers.

    A row over a bound is finished with an :class:`InputError` saying which bound. The first exception
    ``finish`` raises cancels the rows not yet started; the running ones are still finished, then it is
    re-raised. On any exit (also Ctrl-C) every worker is killed. Returns ``{row: reason}`` of the rows whose
    worker died ``1 + WORKER_RETRIES`` times (not finished, so not recorded).
    """
    return drive_rows(_Pool(func, jobs, bounds), items, todo, finish=finish, advance=advance, ids=ids)


def drive_rows(
    pool,
    items: Mapping[int, object],
    todo: list[int],
    *,
    finish: Callable[[int, object], None],
    advance: Callable[[int], None],
    ids: list[str],
) -> dict[int, str]:
    """The supervision loop of :func:`run_workers` over any pool of workers (the contract of :class:`_Pool`).

    A pool has ``dispatch(queue, items)`` (give queued rows to idle workers, start workers),
    ``wait() -> [(row, kind, value)]`` (rows that ended: kind ``"result"``, ``"bound"`` or ``"died"``),
    ``busy()`` and ``close()``. The retries, the cancellation on the first error of ``finish`` and the rows
    left undone are decided here once, so every executor (:mod:`genrecli.pipeline.executors`) keeps them.
    """
    queue = collections.deque(todo)
    deaths: collections.Counter[int] = collections.Counter()
    undone: dict[int, str] = {}
    stop: Exception | None = None
    try:
        while queue or pool.busy():
            pool.dispatch(queue, items)
            for row, kind, value in pool.wait():
                if kind == "died":
                    deaths[row] += 1
                    if stop is None and deaths[row] <= WORKER_RETRIES:
                        ui.warn(f"{ids[row]}: worker process died ({value}); retrying on a fresh worker")
                        queue.appendleft(row)
                        continue
                    if stop is None:
                        undone[row] = value
                        ui.warn(f"{ids[row]}: worker process died {deaths[row]} times ({value}); not recorded as "
                                "failed, a rerun retries it")
                else:
                    try:
                        finish(row, InputError(value) if kind == "bound" else value)
                    except Exception as err:  # noqa: BLE001 - keep the first, still finish what is running
                        if stop is None:
                            stop = err
                            queue.clear()
                advance(1)
    finally:
        pool.close()
    if stop is not None:
        raise stop
    return undone


class _Pool:
    """Up to ``jobs`` spawned workers, one row each at a time; :meth:`wait` reports the rows that ended."""

    def __init__(self, func: Callable, jobs: int, bounds: TrackBounds):
        self.ctx = mp.get_context("spawn")
        self.func, self.jobs, self.bounds = func, jobs, bounds
        self.threads = max(1, (os.cpu_count() or 1) // jobs)  # N workers x all-core BLAS would oversubscribe
        self.workers: list[_Worker] = []

    def busy(self) -> list[_Worker]:
        return [w for w in self.workers if w.row is not None]

    def dispatch(self, queue: collections.deque, items: Mapping[int, object]) -> None:
        """Give queued rows to ready idle workers; start workers up to min(jobs, rows left to run)."""
        for worker in self.workers:
            if queue and worker.ready and worker.row is None:
                row = queue.popleft()
                worker.row, worker.started = row, time.monotonic()
                with contextlib.suppress(OSError):  # it died meanwhile: wait() reports the death of the row
                    worker.conn.send(items[row])
        idle = sum(1 for w in self.workers if w.row is None)
        for _ in range(min(self.jobs - len(self.workers), len(queue) - idle)):
            self.workers.append(self._start())

    def _start(self) -> _Worker:
        parent_end, child_end = self.ctx.Pipe()
        process = self.ctx.Process(target=_worker_main, args=(child_end, self.func, self.threads),
                                   name="genre-worker")
        with _sigint_blocked():  # the worker inherits the mask: a Ctrl-C while it imports is not its to handle
            process.start()
        child_end.close()  # the worker's end lives in the worker only: its death is EOF here
        return _Worker(process, parent_end)

    def wait(self) -> list[tuple[int, str, object]]:
        """Wait up to POLL_SECONDS; ``(row, kind, value)`` for rows that ended, kind ``"result"`` (value: the
        values or the exception), ``"bound"`` (value: the reason) or ``"died"`` (value: how it died)."""
        waiting = [w for w in self.workers if w.row is not None or not w.ready]
        ready = set(wait([h for w in waiting for h in (w.conn, w.process.sentinel)], timeout=POLL_SECONDS))
        ended = []
        for worker in waiting:
            if worker.conn in ready or worker.process.sentinel in ready:
                message = _receive(worker.conn)
                if message is None:
                    ended += self._died(worker)
                elif message[0] == "ready":
                    worker.ready = True
                else:
                    ended.append((worker.row, "result", _outcome(message)))
                    worker.row = None
            elif worker.row is not None and (reason := self._over_bound(worker)):
                ended.append((worker.row, "bound", reason))
                self._discard(worker)
        return ended

    def _died(self, worker: _Worker) -> list[tuple[int, str, object]]:
        self._discard(worker)
        reason = _death(worker.process.exitcode)
        if worker.row is None:  # died before taking a row: it cannot import or initialise, retrying won't help
            raise RuntimeError(f"a worker process exited while starting ({reason}); see the messages above")
        return [(worker.row, "died", reason)]

    def _over_bound(self, worker: _Worker) -> str | None:
        if time.monotonic() - worker.started > self.bounds.timeout:
            return f"exceeded the {self.bounds.timeout:g} s per-track time limit (--track-timeout)"
        rss = _rss_bytes(worker.process.pid)
        if rss is not None and rss > self.bounds.memory:
            return f"exceeded the {format_size(self.bounds.memory)} per-track memory limit (--track-memory)"
        return None

    def _discard(self, worker: _Worker) -> None:
        self.workers.remove(worker)
        worker.process.kill()  # SIGKILL: a worker over a bound may not listen to anything gentler
        worker.process.join(5)  # not forever: a process in uninterruptible I/O dies when the I/O ends
        worker.conn.close()

    def close(self) -> None:
        """End every worker: idle ones get EOF and exit, busy (Ctrl-C, a bug) and starting ones are killed."""
        for worker in self.workers:
            worker.conn.close()
            if worker.row is not None or not worker.ready:
                worker.process.kill()
        deadline = time.monotonic() + 2.0
        for worker in self.workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.exitcode is None:
                worker.process.kill()
                worker.process.join()
        self.workers.clear()


@contextlib.contextmanager
def _sigint_blocked():
    """Block SIGINT here while a worker starts; a Ctrl-C meanwhile is delivered to the stage right after."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _receive(conn: Connection):
    """The worker's next message, or None when it died (EOF or a message cut short)."""
    try:
        return conn.recv() if conn.poll() else None
    except (EOFError, OSError):
        return None


def _outcome(message: tuple):
    """The values, or the worker's exception with its traceback attached (shown by ``--verbose``)."""
    if message[0] == "ok":
        return message[1]
    _, exc, remote = message
    exc.__cause__ = _RemoteTraceback(remote)
    return exc


class _RemoteTraceback(Exception):
    """The traceback text of an exception raised in a worker."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-exitcode).name}"
        return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


def _rss_bytes(pid: int | None) -> int | None:
    """Resident memory of a process from /proc (None where there is no /proc or it is gone)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


# ------------------------------------------------------------------------------- in the worker process


def _worker_main(conn: Connection, func: Callable, threads: int) -> None:
    """Run ``func`` on each item the parent sends, answering ``("ok", values)`` or ``("error", exc, traceback)``;
    exit at EOF (the parent closed the pipe or died)."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it saves the checkpoint, ends us
    _limit_threads(threads)
    with contextlib.suppress(EOFError, OSError):  # the parent is done with us (or gone): just exit
        conn.send(("ready",))
        while True:
            _answer(conn, func, conn.recv())


def _answer(conn: Connection, func: Callable, item) -> None:
    try:
        message = ("ok", func(item))
    except Exception as exc:  # noqa: BLE001 - the parent sorts it out: track failure, usage error or bug
        message = ("error", _portable(exc), "".join(traceback.format_exception(exc)))
    try:
        conn.send(message)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:  # values that cannot be sent back
        conn.send(("error", RuntimeError(f"cannot send a track's result to the stage: {exc}"),
                   "".join(traceback.format_exception(exc))))


def _portable(exc: Exception) -> Exception:
    """``exc`` when it survives pickling, else a plain one of the same kind (track failure, usage error, bug)."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - e.g. an __init__ that does not take its own args back
        kind = UsageError if isinstance(exc, UsageError) else InputError if isinstance(exc, GenreError) else RuntimeError
        return kind(f"{type(exc).__name__}: {exc}" if kind is RuntimeError else str(exc))


def _die_with_parent() -> None:
    """End this worker when the stage process dies, even by ``kill -9``, so no orphan keeps its memory.

    On Linux the kernel sends SIGKILL when the parent dies (``prctl(PR_SET_PDEATHSIG)``), even while this
    worker runs C code that holds the GIL. Everywhere, a thread waits on the parent's sentinel (a pipe only
    the parent holds open) and exits at EOF: that also covers a parent that died before the prctl call.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    parent = mp.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent.sentinel,), daemon=True, name="parent-watch").start()


def _exit_with(sentinel: int) -> None:
    wait([sentinel])
    os._exit(1)


def _limit_threads(n: int) -> None:
    """At most ``n`` threads for torch and for the BLAS / OpenMP pools NumPy and SciPy load (OpenBLAS).

    N workers each running an all-core OpenBLAS oversubscribe the cores: the mel spectrogram of two workers
    ran at a third of the rate of one (bench/bench_audio.py, BENCHMARKS.md).
    """
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    threadpool_limits(limits=n)  # not as a context manager: the limit holds for the worker's life
