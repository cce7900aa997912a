"""Where the rows of a per-track stage run: the local supervised pool (the default) or a Ray cluster.

:func:`genrecli.pipeline.features.run_per_track` owns the checkpoint, the failure records and the
distinction between bad inputs and bugs; an executor only computes rows and says how each one ended. Both
executors feed the same supervision loop (:func:`genrecli.pipeline.workers.drive_rows`), so they share its
contract: ``finish(row, values or exception)`` for every row, a row over a bound finished with an
:class:`~genrecli.errors.InputError`, a row whose worker died retried on a fresh worker up to
:data:`~genrecli.pipeline.workers.WORKER_RETRIES` times and then left undone (recorded nowhere), and the first
error of ``finish`` (a usage error, a bug) cancelling the rows not yet started.

``ray``: each worker is a Ray actor (one CPU) that receives the stage's function once, so a feature loads its
model once per actor, then computes one row per call. The driver keeps the loop: it hands rows to idle
actors, and a dead actor (killed, a crash, a lost node) is replaced by a new one, its row resubmitted by the
driver (the actors are created with ``max_restarts=0, max_task_retries=0``: Ray's own retries count per
actor, not per row, and would hide a row that kills every worker). The rows come back to the driver, which
writes them through the stage's checkpoint, so a killed actor or driver resumes as the local path does.

Bounds under Ray: the time bound holds everywhere (the driver kills an actor whose row runs too long). The
memory bound is sampled by the driver from ``/proc``, so only for actors on the driver's node; on other nodes
Ray's memory monitor kills a worker that exhausts the node, which counts as a dying worker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable, Mapping

from genrecli.errors import UsageError
from genrecli.pipeline.workers import (
    POLL_SECONDS,
    TrackBounds,
    _limit_threads,
    _outcome,
    _portable,
    _rss_bytes,
    drive_rows,
    format_size,
    run_workers,
)

EXECUTORS = ("local", "ray")
RAY_MISSING = "--executor ray needs Ray, which is not installed: pip install 'genrecli[ray]'"
CONNECT_TIMEOUT = 5.0  # seconds to reach a cluster's address before ray.init, which would retry for minutes


@dataclasses.dataclass(frozen=True)
class Executor:
    """Where a per-track stage computes its rows.

    Parameters
    ----------
    kind : ``"local"`` (supervised worker processes on this machine) or ``"ray"`` (actors of a Ray cluster)
    address : the Ray cluster's address (``host:port``, ``ray://host:port`` or ``auto``); None starts a
        local Ray instance on this machine. Only for ``kind="ray"``.
    """

    kind: str = "local"
    address: str | None = None

    def __post_init__(self):
        if self.kind not in EXECUTORS:
            raise UsageError(f"--executor {self.kind}: expected one of {', '.join(EXECUTORS)}")
        if self.address is not None and self.kind != "ray":
            raise UsageError(f"--address {self.address}: only for --executor ray")
        if self.address is not None and not str(self.address).strip():
            raise UsageError("--address: give the Ray cluster's address, e.g. 10.0.0.1:6379 or auto")


def as_executor(value: Executor | str | None) -> Executor:
    """An :class:`Executor` from an executor, its kind (``"local"``, ``"ray"``) or None (local)."""
    if value is None:
        return Executor()
    return value if isinstance(value, Executor) else Executor(str(value))


def check_available(executor: Executor) -> None:
    """Refuse ``--executor ray`` without Ray installed (one line naming the fix), or with an address where no
    cluster answers, before any work."""
    if executor.kind == "ray":
        _import_ray()
        if executor.address is not None:
            _probe(executor.address)


def local_ray_options(*, num_cpus: int | None = None) -> dict:
    """The ``ray.init`` arguments of a Ray instance started on this machine (no ``--address``).

    No dashboard and no log streaming (seconds of start-up and noise on a small machine, nothing to see in a
    stage run), and the workers get this process's ``sys.path``, as the spawned local workers do, so a
    per-track function importable here is importable in the actors.
    """
    path = os.pathsep.join(p for p in sys.path if p)
    return dict(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False,
                configure_logging=False, runtime_env={"env_vars": {"PYTHONPATH": path}})


def run_rows(
    executor: Executor,
    func: Callable,
    items: Mapping[int, object],
    todo: list[int],
    *,
    jobs: int | None,
    bounds: TrackBounds,
    finish: Callable[[int, object], None],
    advance: Callable[[int], None],
    ids: list[str],
) -> dict[int, str]:
    """Compute ``todo`` with ``executor``; the contract of :func:`genrecli.pipeline.workers.run_workers`.

    ``jobs`` is the number of workers: processes here, or Ray actors (None: one per CPU of the cluster, or
    one process for the local executor). Returns ``{row: reason}`` of the rows left undone.
    """
    if executor.kind == "local":
        return run_workers(func, items, todo, jobs=jobs or 1, bounds=bounds, finish=finish, advance=advance, ids=ids)
    ray = _import_ray()
    owned = _connect(ray, executor.address)
    try:
        pool = _RayPool(ray, func, jobs, bounds)
        return drive_rows(pool, items, todo, finish=finish, advance=advance, ids=ids)
    finally:
        if owned:  # a Ray instance we started ends with the stage; one the caller started stays theirs
            ray.shutdown()


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UsageError(RAY_MISSING) from None
    return ray


def _connect(ray, address: str | None) -> bool:
    """Join the cluster at ``address`` or start a local instance; True when this call started Ray.

    A Ray session the caller already initialised (a notebook, the tests) is used as it is, whatever
    ``address`` says: Ray holds one session per process.
    """
    if ray.is_initialized():
        return False
    if address is None:
        ray.init(**local_ray_options())
        return True
    _probe(address)
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, OSError, ValueError, RuntimeError) as exc:
        raise UsageError(f"--address {address}: cannot join a Ray cluster: {_first_line(exc)}") from None
    return True


def _probe(address: str) -> None:
    """A quick TCP connect to ``host:port`` first: ``ray.init`` retries an unreachable address for minutes,
    printing its C++ log lines, before it gives up."""
    if address == "auto":  # Ray looks for a running local cluster itself, and fails at once if none runs
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UsageError(f"--address {address}: expected host:port, ray://host:port or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        raise UsageError(f"--address {address}: no Ray cluster answers there ({exc.strerror or exc})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return " ".join(text.splitlines()[0].split()) if text else type(exc).__name__


# ------------------------------------------------------------------------------------------- the actors


class RowWorker:
    """A Ray actor's body: holds the stage's function (so its models load once) and computes one row per call.

    Answers like a local worker: ``("ok", values)`` or ``("error", exception, traceback text)``, so the
    driver sorts track failures, usage errors and bugs the same way for both executors.
    """

    def __init__(self, func: Callable, threads: int):
        _limit_threads(threads)
        self.func = func

    def ready(self) -> tuple[int, str]:
        """``(pid, node id)``: the driver samples the memory of actors on its own node."""
        import ray

        return os.getpid(), ray.get_runtime_context().get_node_id()

    def run(self, item):
        try:
            return ("ok", self.func(item))
        except Exception as exc:  # noqa: BLE001 - the driver sorts it out: track failure, usage error or bug
            return ("error", _portable(exc), "".join(traceback.format_exception(exc)))


@dataclasses.dataclass(eq=False)
class _Actor:
    handle: object
    starting: object  # the ObjectRef of ready(), until it answers
    ready: bool = False
    pid: int | None = None  # set when the actor runs on the driver's node (its memory can be sampled)
    row: int | None = None
    ref: object = None  # the ObjectRef of the running row
    started: float = 0.0


class _RayPool:
    """Up to ``jobs`` actors, one row each at a time: the pool contract of :func:`~genrecli.pipeline.workers.drive_rows`."""

    THREADS = 1  # each actor holds one CPU of the cluster: one BLAS/torch thread, as a local --jobs N on N cores

    def __init__(self, ray, func: Callable, jobs: int | None, bounds: TrackBounds):
        self.ray, self.bounds = ray, bounds
        self.jobs = jobs or max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.actor_class = ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)(RowWorker)
        self.func_ref = ray.put(func)  # shipped once, not per actor
        self.node = ray.get_runtime_context().get_node_id()
        self.actors: list[_Actor] = []

    def busy(self) -> list[_Actor]:
        return [a for a in self.actors if a.row is not None]

    def dispatch(self, queue, items: Mapping[int, object]) -> None:
        for actor in self.actors:
            if queue and actor.ready and actor.row is None:
                actor.row = queue.popleft()
                actor.ref, actor.started = actor.handle.run.remote(items[actor.row]), time.monotonic()
        idle = sum(1 for a in self.actors if a.row is None)
        for _ in range(min(self.jobs - len(self.actors), len(queue) - idle)):
            handle = self.actor_class.remote(self.func_ref, self.THREADS)
            self.actors.append(_Actor(handle, handle.ready.remote()))

    def wait(self) -> list[tuple[int, str, object]]:
        errors = self.ray.exceptions
        refs = {(a.ref if a.ready else a.starting): a for a in self.actors if a.row is not None or not a.ready}
        if not refs:
            return []
        # the first row to end wakes us (not the poll's end), then whatever else has ended meanwhile
        first, rest = self.ray.wait(list(refs), num_returns=1, timeout=POLL_SECONDS)
        ended_refs = first + (self.ray.wait(rest, num_returns=len(rest), timeout=0)[0] if first and rest else [])
        ended = []
        for ref in ended_refs:
            actor = refs[ref]
            if not actor.ready:
                try:
                    pid, node = self.ray.get(ref)
                except errors.RayError as exc:
                    raise RuntimeError(f"a Ray worker could not start: {_first_line(exc)}") from exc
                actor.ready, actor.pid = True, pid if node == self.node else None
                continue
            row = actor.row
            try:
                ended.append((row, "result", _owned(_outcome(self.ray.get(ref)))))
                actor.row = actor.ref = None
            except errors.RayActorError as exc:  # the actor's process died (or its node): retried by the loop
                self._discard(actor)
                ended.append((row, "died", f"Ray actor died: {_death(exc)}"))
            except errors.RayError as exc:  # e.g. a result Ray cannot send back: ours to fix, not the track's
                actor.row = actor.ref = None
                ended.append((row, "result", RuntimeError(f"Ray could not return the row: {_first_line(exc)}")))
        refs_ended = set(ended_refs)
        for actor in self.busy():
            if actor.ref not in refs_ended and (reason := self._over_bound(actor)):
                ended.append((actor.row, "bound", reason))
                self._discard(actor)
        return ended

    def _over_bound(self, actor: _Actor) -> str | None:
        if time.monotonic() - actor.started > self.bounds.timeout:
            return f"exceeded the {self.bounds.timeout:g} s per-track time limit (--track-timeout)"
        rss = _rss_bytes(actor.pid) if actor.pid is not None else None
        if rss is not None and rss > self.bounds.memory:
            return f"exceeded the {format_size(self.bounds.memory)} per-track memory limit (--track-memory)"
        return None

    def _discard(self, actor: _Actor) -> None:
        self.actors.remove(actor)
        with contextlib.suppress(Exception):  # already dead
            self.ray.kill(actor.handle, no_restart=True)

    def close(self) -> None:
        """Kill every actor (idle, busy or starting): a stage leaves no worker behind on the cluster."""
        for actor in list(self.actors):
            self._discard(actor)


def _owned(outcome):
    """A row's arrays copied out of Ray's object store: ``ray.get`` gives read-only views of shared memory that
    would pin every row of the stage there until it ends (the store is a fraction of the RAM)."""
    if isinstance(outcome, dict):
        import numpy as np

        return {k: np.array(v) if isinstance(v, np.ndarray) else v for k, v in outcome.items()}
    return outcome


def _death(exc: BaseException) -> str:
    """One line on how an actor died (Ray's message spans many lines: keep its gist)."""
    text = str(exc)
    for marker in ("Worker exit detail:", "The actor is dead because"):
        if marker in text:
            return " ".join(text.split(marker, 1)[1].split()).split(". ")[0].rstrip(".")[:200]
    return _first_line(exc)
