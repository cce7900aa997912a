"""Data-parallel training under torchrun: the launch, the process group and the few collectives we use.

``torchrun --nproc_per_node N -m genrecli train ...`` starts N copies of ``genre train``; torchrun tells each
its place through the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``). :func:`launch_from_env` is the one place that reads them: a process without them, or with
``WORLD_SIZE=1``, is an ordinary single process and nothing here does anything for it.

:func:`join` initialises torch's default process group once per process: gloo for a CPU device, NCCL for a
CUDA one, on which ``--device cuda`` (no index) means the GPU of the process's ``LOCAL_RANK``; an explicit
``cuda:N`` is used as given. The group is destroyed when the process exits (``atexit``), because both
``genre train`` and a bare :meth:`NeuralModel.fit` join it and neither knows whether the other will.

Rules every caller follows (see :mod:`genrecli.models.neural.harness` and :mod:`genrecli.pipeline.train`):
every rank makes the same decisions from the same numbers (rank 0's, through :func:`broadcast_object`, or
values all ranks gathered), so all ranks issue the same collectives in the same order; only rank 0 writes
files (runs, checkpoints, HDF5 stores: h5py is not safe for concurrent writers). Secondary ranks print
warnings and errors but no info lines.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
from collections.abc import Mapping

import numpy as np
import torch
import torch.distributed as dist

from genrecli import ui
from genrecli.errors import UsageError

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclasses.dataclass(frozen=True)
class Launch:
    """This process's place in a torchrun launch of ``world_size`` processes."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def primary(self) -> bool:
        """Rank 0: the process that writes."""
        return self.rank == 0


def launch_from_env(environ: Mapping[str, str] | None = None) -> Launch | None:
    """The torchrun launch this process belongs to, from ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``.

    Returns None for a single process: no ``WORLD_SIZE``, or ``WORLD_SIZE=1`` (``torchrun
    --nproc_per_node 1`` trains exactly as a plain process). ``LOCAL_RANK`` defaults to ``RANK`` (one
    node). A malformed value is a :class:`UsageError` naming the variable.
    """
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return None
    values = {}
    for name in LAUNCH_VARS:
        text = env.get(name, env.get("RANK", "0") if name == "LOCAL_RANK" else "0")
        try:
            values[name] = int(text)
        except ValueError:
            raise UsageError(f"${name}={text!r}: expected an integer (set by torchrun)") from None
    world, rank, local = values["WORLD_SIZE"], values["RANK"], values["LOCAL_RANK"]
    if world < 1 or not 0 <= rank < world or local < 0:
        raise UsageError(f"torchrun environment RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local}: "
                         "need 0 <= RANK < WORLD_SIZE")
    return None if world == 1 else Launch(rank=rank, world_size=world, local_rank=local)


def is_primary() -> bool:
    """True for a single process and for rank 0 of a launch: the process that may write files."""
    launch = launch_from_env()
    return launch is None or launch.primary


def local_device(device: torch.device, launch: Launch | None) -> torch.device:
    """``device`` for this process: a bare ``cuda`` becomes ``cuda:LOCAL_RANK`` under a launch."""
    if launch is not None and device.type == "cuda" and device.index is None:
        return torch.device("cuda", launch.local_rank)
    return device


def join(device: torch.device) -> Launch | None:
    """Initialise the default process group for a launch (once per process); None for a single process.

    ``device`` is this process's training device (:func:`local_device`): gloo on the CPU, NCCL on CUDA
    (made the current CUDA device, which NCCL's object collectives use). Joining again with a device of
    the other kind is a :class:`UsageError` (one group serves one backend).
    """
    launch = launch_from_env()
    if launch is None:
        return None
    backend = "nccl" if device.type == "cuda" else "gloo"
    if dist.is_initialized():
        if dist.get_backend() != backend:
            raise UsageError(f"device {device}: this torchrun process group runs {dist.get_backend()}, not {backend}")
        return launch
    bound = {}
    if device.type == "cuda":  # NCCL's collectives (barrier, object lists) run on the current device
        torch.cuda.set_device(device)
        bound["device_id"] = device
    try:
        dist.init_process_group(backend, rank=launch.rank, world_size=launch.world_size, **bound)
    except ValueError as exc:  # env:// rendezvous without MASTER_ADDR / MASTER_PORT: not started by torchrun
        raise UsageError(f"torchrun environment (RANK={launch.rank}, WORLD_SIZE={launch.world_size}): "
                         f"{' '.join(str(exc).split())}") from None
    atexit.register(_leave)
    if not launch.primary:
        ui.configure(quiet=True)  # one set of progress lines, rank 0's
    return launch


def current() -> Launch | None:
    """The launch whose process group this process has joined, else None (never initialises anything)."""
    return launch_from_env() if dist.is_available() and dist.is_initialized() else None


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------- collectives
def broadcast_object(obj):
    """Rank 0's ``obj`` (any picklable value) on every rank; ``obj`` itself without a process group."""
    if current() is None:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(obj) -> list:
    """Every rank's ``obj``, in rank order; ``[obj]`` without a process group."""
    if current() is None:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(value: float, device: torch.device) -> float:
    """The sum over ranks of a float (float64 on ``device``, which must suit the backend)."""
    if current() is None:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Overwrite every buffer of ``module`` (batch-norm running statistics) with rank 0's.

    DistributedDataParallel broadcasts buffers at the start of each training forward, so after the last
    forward of an epoch every rank has updated them with its own batch; this makes the network identical
    on every rank before it is validated or snapshotted.
    """
    if current() is None:
        return
    for buf in module.buffers():
        dist.broadcast(buf, src=0)


def barrier() -> None:
    if current() is not None:
        dist.barrier()


# ----------------------------------------------------------------------------------------------- sharding
def shard(rows: np.ndarray, launch: Launch | None) -> np.ndarray:
    """This rank's part of ``rows``: the ``rank``-th of ``world_size`` contiguous, near-equal pieces
    (sizes differ by at most one; ``rows`` itself for a single process)."""
    if launch is None:
        return rows
    return np.array_split(rows, launch.world_size)[launch.rank]


def rank_generator(seed: int, epoch: int, launch: Launch) -> np.random.Generator:
    """A numpy generator for this rank's epoch ``epoch`` and torch's global generator reseeded likewise.

    Per-rank streams keep the ranks' random crops and dropout masks independent; deriving them from
    (seed, epoch, rank) rather than carrying their states makes a resumed launch of the same size
    replay the epochs an uninterrupted one runs, with only rank 0's state in the checkpoint.
    """
    seq = np.random.SeedSequence([int(seed), int(epoch), int(launch.rank)])
    numpy_seq, torch_seq = seq.spawn(2)
    torch.manual_seed(int(torch_seq.generate_state(1, np.uint64)[0] >> np.uint64(1)))
    return np.random.default_rng(numpy_seq)


def data_parallel(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``net`` wrapped in :class:`~torch.nn.parallel.DistributedDataParallel` (its gradients all-reduced,
    averaged, in backward); ``net`` itself without a process group."""
    if current() is None:
        return net
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
