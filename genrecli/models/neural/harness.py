"""The torch training harness every neural model of the toolkit shares.

A neural model subclasses :class:`NeuralModel` and writes two things: an ``__init__`` listing its
hyper-parameters (the harness's own, below, plus its architecture options) and
:meth:`NeuralModel._build_network`. Everything else is here:

Data
    Mini-batches of rows are read from the inputs (arrays, or lazily read views such as
    :class:`genrecli.pipeline.features.FeatureView`) by row indices, one batch at a time. A view of a group
    that fits the resident budget (:func:`genrecli.pipeline.features.resident_budget`) is read once, whole,
    and served from memory; a larger one is read per batch, so memory stays bounded by the budget. Every
    input is standardised with statistics fitted on the training rows (computed in batches): per column
    (``_scaling = "column"``) or one mean/std per input (``"global"``); they are part of the saved state.
Patches
    For a model with a ``patch_frames`` parameter, every input of 2 or more axes per row (a mel-spectrogram
    (n_mels, frames), or (channels, n_mels, frames)) is cropped along its last (time) axis: in training one
    random crop of ``patch_frames`` frames per example and per epoch; at prediction (and validation) time the
    scores (logits) of ``test_crops`` evenly spaced crops are averaged, the first crop starting at frame 0 and
    the last ending at the last frame. ``test_crops=None`` takes the fewest crops that cover the whole track,
    ``ceil(frames / patch_frames)``. A track shorter than ``patch_frames`` is used whole (zero padded, i.e.
    padded with the training mean, when shorter than what the network was built for).
Validation and early stopping
    ``fit(inputs, y, validation=(inputs_val, y_val))`` monitors the given part; without one the harness carves
    ``val_fraction`` of the training rows (stratified for single-label, at random for multi-label, seeded by
    ``random_state``; ``val_fraction=0`` trains for ``max_epochs`` without validation). After every epoch the
    validation loss and score (balanced accuracy single-label, macro ROC AUC over the labels present
    multi-label) are computed; ``monitor`` ('loss' or 'score') picks the criterion, training stops after
    ``patience`` epochs without improvement and the weights of the best epoch are restored.
Optimisation
    Cross-entropy over the classes seen in training (``class_weight='balanced'`` weights them with
    :func:`sklearn.utils.class_weight.compute_class_weight`), or binary cross-entropy with logits for a
    multi-hot ``y`` (``'balanced'`` sets each label's ``pos_weight`` to negatives/positives). Optimisers
    adam / adamw / sgd / rmsprop with ``weight_decay`` (and ``momentum`` for sgd and rmsprop); learning-rate
    schedules per epoch: constant, step (times ``lr_gamma`` every ``lr_step_size`` epochs) or cosine (to 0 at
    ``max_epochs``).
Seeds and devices
    ``fit`` seeds torch's global generator (``torch.manual_seed``) and a numpy generator (batch order, crops,
    the validation carve) from ``random_state`` (a fresh seed when None, recorded in ``seed_``). On the CPU
    two fits with the same seed give bit-identical weights. ``device``: 'cpu', 'cuda', 'cuda:N' or 'auto'
    (:func:`genrecli.device.resolve_device`); on CUDA, ``amp=True`` runs forward passes under
    :func:`torch.autocast` in ``amp_dtype`` (bfloat16, or float16 with a gradient scaler; GPUs without bf16
    use float16). CUDA runs are not bit-reproducible.
Checkpoints and resume
    Call ``model.set_checkpoint_dir(path)`` before ``fit`` (what ``genre train`` does), or pass
    ``fit(..., checkpoint_dir=path)``. After every epoch the harness writes ``path/checkpoint.pt``
    atomically (a temporary file, fsync, ``os.replace``): network, optimiser, scheduler and gradient-scaler
    states, torch/CUDA/numpy generator states, the standardisation statistics, the epoch, the best epoch's
    weights and score, the patience counter and the history. A later ``fit`` with the same checkpoint
    directory, parameters and data (checked by a fingerprint of the parameters, input shapes and labels)
    resumes after the last finished epoch, logging ``resuming from epoch N``, and ends with the weights an
    uninterrupted run gives (bit-identical on the CPU); a finished checkpoint just restores the best weights.
    A checkpoint that does not match is ignored and overwritten. It is loaded with
    ``torch.load(weights_only=True)``: only tensors, numbers and strings are stored.
Data parallelism (torchrun)
    Under ``torchrun --nproc_per_node N`` (:mod:`genrecli.distributed`) ``fit`` joins the launch's process
    group and trains the network wrapped in DistributedDataParallel. ``batch_size`` is the *global* batch:
    every epoch all ranks draw the same row order (the seed is rank 0's), cut it into the same batches as
    one process would, and each rank takes a near-equal contiguous share of every batch; the ranks' mean
    losses are weighted by their shares, so one step is the one-process step on the same batch up to float
    rounding, dropout masks, random crops (per rank, seeded from seed, epoch and rank) and batch-norm
    statistics (per rank, of its share; torch's SyncBatchNorm does not run on the CPU). Hence the results
    match a single process within seed noise, not bit for bit. Every batch must give every rank a row. After
    each epoch the buffers (batch-norm running statistics) are set to rank 0's and the validation rows are
    scored in shares and gathered on every rank, so all ranks see the same validation loss and score and
    stop at the same epoch with the same best weights. Only rank 0 reads and writes the checkpoint (the
    others receive it by broadcast); a launch of the same size resumes bit-identically on the CPU.
Progress
    A transient rich progress bar over the batches of each epoch on a terminal, and one plain line per epoch
    through :func:`genrecli.ui.info` (epoch, train loss, validation loss and score, learning rate, seconds),
    so logs written under ``nohup`` show progress too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from genrecli import distributed, ui
from genrecli.device import resolve_device
from genrecli.errors import GenreError, UsageError
from genrecli.models.base import GenreModel, params_to_json

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = 1
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("constant", "step", "cosine")
MONITORS = ("loss", "score")
AMP_DTYPES = ("bfloat16", "float16")

#: The harness's hyper-parameters and their defaults; every subclass lists them in its ``__init__``.
HARNESS_DEFAULTS = dict(
    max_epochs=100, batch_size=64, optimizer="adam", lr=1e-3, momentum=0.9, weight_decay=0.0,
    lr_schedule="constant", lr_step_size=30, lr_gamma=0.1, class_weight=None, val_fraction=0.1,
    monitor="loss", patience=10, amp=True, amp_dtype="bfloat16", random_state=None, device="cpu",
)


def store_params(model: GenreModel, values: Mapping) -> None:
    """``__init__`` helper: set every constructor parameter of ``model`` from ``locals()``."""
    for name in type(model)._get_param_names():
        setattr(model, name, values[name])


def as_int_tuple(value, name: str) -> tuple[int, ...]:
    """(256,) from 256, "256,128", [256, 128] or (256, 128); () from "" or None."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").split(",") if v]
    elif np.ndim(value) == 0:
        value = [value]
    try:
        out = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise UsageError(f"{name}={value!r}: expected integers, e.g. 256,128") from None
    if any(v <= 0 for v in out):
        raise UsageError(f"{name}={value!r}: sizes must be positive")
    return out


def take_rows(x, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (positions, any order, repeats allowed) of an array or lazily read dataset, as float32.

    Anything that is not a numpy array is read once per distinct row in increasing order (what HDF5
    datasets and :class:`~genrecli.pipeline.features.FeatureView` read fastest).
    """
    rows = np.asarray(rows, dtype=np.int64)
    if isinstance(x, np.ndarray):
        return np.asarray(x[rows], dtype=np.float32)
    unique, inverse = np.unique(rows, return_inverse=True)
    block = np.asarray(x[unique] if len(unique) else np.empty((0, *x.shape[1:])), dtype=np.float32)
    return block[inverse]


def _row_shape(x) -> tuple[int, ...]:
    return tuple(int(s) for s in x.shape[1:]) or (1,)


def _as_rows(x):
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if hasattr(x, "shape") and hasattr(x, "__getitem__") and hasattr(x, "__len__"):
        return x
    return np.asarray(x, dtype=np.float32)


@dataclasses.dataclass
class _Part:
    """Rows ``rows`` of ``inputs`` with their targets ``targets[rows]``."""

    inputs: Mapping[str, object]
    rows: np.ndarray
    targets: np.ndarray


class _Moments:
    """Running mean and sum of squared deviations (Chan et al.'s pairwise merge), float64."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, block: np.ndarray, axis) -> None:
        k = block.size if axis is None else block.shape[0]
        if k == 0:
            return
        mean = block.mean(axis=axis)
        m2 = ((block - mean) ** 2).sum(axis=axis)
        delta, total = mean - self.mean, self.n + k
        self.mean = self.mean + delta * (k / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.n * k / total)
        self.n = total

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        std = np.sqrt(np.asarray(self.m2) / max(self.n, 1))
        std = np.where(std > 1e-8, std, 1.0)
        return np.atleast_1d(np.asarray(self.mean, np.float32)), np.atleast_1d(std.astype(np.float32))


def make_adam(params, *, lr: float, weight_decay: float = 0.0, decoupled: bool = False) -> torch.optim.Optimizer:
    """Adam (AdamW with ``decoupled``), with torch's fused kernel where it runs (CPU and CUDA float tensors).

    Why fused: the default single-tensor Adam step is several elementwise passes over every parameter (a sqrt,
    lerp, addcmul, addcdiv each); on a 2048 x 10000 layer (the TF-IDF network) it took 1.1 s per step against
    0.22 s fused, two thirds of the epoch. Fused and single-tensor Adam compute the same update up to float
    rounding. Falls back to the default implementation where the fused kernel is unavailable.
    """
    params = list(params)
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    try:
        return cls(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):  # e.g. a device or dtype the fused kernel does not support
        return cls(params, lr=lr, weight_decay=weight_decay)


class NeuralModel(GenreModel):
    """Base of the neural models: the shared training loop (see the module docstring).

    Every subclass takes the parameters below, with the defaults of :data:`HARNESS_DEFAULTS` unless its
    docstring says otherwise.

    Parameters
    ----------
    max_epochs : int, the most epochs to train.
    batch_size : int, rows per mini-batch (also for prediction); under torchrun the global batch, split
        among the processes.
    optimizer : 'adam', 'adamw', 'sgd' or 'rmsprop'.
    lr : float, initial learning rate.
    momentum : float, momentum of sgd and rmsprop.
    weight_decay : float, L2 penalty (decoupled for adamw).
    lr_schedule : 'constant', 'step' or 'cosine', stepped once per epoch.
    lr_step_size, lr_gamma : the step schedule multiplies the rate by ``lr_gamma`` every ``lr_step_size`` epochs.
    class_weight : None or 'balanced'.
    val_fraction : float in [0, 1), the part of the training rows carved as validation when ``fit`` gets none.
    monitor : 'loss' (validation loss, lower is better) or 'score' (balanced accuracy / macro AUC).
    patience : int, epochs without improvement of the monitored value before stopping.
    amp : bool, mixed precision on CUDA (ignored on the CPU).
    amp_dtype : 'bfloat16' or 'float16'.
    random_state : int or None, the seed.
    device : 'cpu', 'cuda', 'cuda:N' or 'auto'.

    Attributes
    ----------
    network_ : torch.nn.Module, the trained network (best epoch).
    classes_ : (C,) class indices of the logit columns; ``arange(L)`` multi-label.
    input_names_ : sorted input names; ``input_shapes_``: name -> per-row shape seen in training.
    scalers_ : name -> (mean, std) float32 arrays, per column (row shape) or global ((1,)).
    history_ : list of dicts per epoch: epoch, train_loss, val_loss, val_score, lr, seconds.
    best_epoch_, n_epochs_ : the restored epoch (1-based) and the epochs trained.
    seed_ : the seed used; ``resumed_from_``: the checkpoint epoch this fit resumed after (0: none).

    Subclasses implement :meth:`_build_network` and may override :meth:`_batch_tensors` (how rows become
    network inputs) and ``_scaling``.
    """

    _scaling = "column"  # "column": per-column mean/std of every input; "global": one mean/std per input

    # -- hooks ------------------------------------------------------------------------------------------------
    def _build_network(self, input_shapes: Mapping[str, tuple[int, ...]], n_outputs: int) -> nn.Module:
        """The untrained network: ``forward(*tensors)`` takes one float32 tensor (batch, *input_shapes[name])
        per input, in ``input_names_`` order, and returns logits (batch, n_outputs)."""
        raise NotImplementedError

    def _batch_tensors(self, inputs: Mapping[str, object], rows: np.ndarray, *, train: bool,
                       rng: np.random.Generator | None) -> list[tuple[torch.Tensor, ...]]:
        """The network inputs of rows ``rows``: a list of views, each a tuple of CPU tensors (one per input).

        Rows are read, standardised and, for patch inputs, cropped: in training one view with a random crop
        per example (drawn from ``rng``); otherwise one view per test crop, whose logits the harness averages.
        """
        arrays = {}
        for name in self.input_names_:
            block = take_rows(inputs[name], rows).reshape(len(rows), *self.input_shapes_[name][:-1], -1)
            mean, std = self.scalers_[name]
            arrays[name] = (block - mean) / std
        width = self._patch_frames()
        patched = [n for n in self.input_names_ if width is not None and len(self.input_shapes_[n]) >= 2]
        if not patched:
            return [tuple(torch.from_numpy(np.ascontiguousarray(arrays[n])) for n in self.input_names_)]
        if train:
            views = [{n: _random_crops(arrays[n], width, rng) for n in patched}]
        else:
            k = getattr(self, "test_crops", None) or max(math.ceil(arrays[n].shape[-1] / width) for n in patched)
            views = [{n: _fixed_crop(arrays[n], width, i, k) for n in patched} for i in range(int(k))]
        return [tuple(torch.from_numpy(np.ascontiguousarray(v.get(n, arrays[n]))) for n in self.input_names_)
                for v in views]

    def _patch_frames(self) -> int | None:
        width = getattr(self, "patch_frames", None)
        return None if width is None else int(width)

    def _network_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-input shapes the network sees: patch inputs cropped to ``patch_frames`` frames."""
        width, out = self._patch_frames(), {}
        for name, shape in self.input_shapes_.items():
            out[name] = (*shape[:-1], min(width, shape[-1])) if width is not None and len(shape) >= 2 else tuple(shape)
        return out

    def _architecture(self) -> dict:
        """JSON-able description of the network (stored in the artifact's metadata)."""
        return {}

    # -- public API -------------------------------------------------------------------------------------------
    def set_checkpoint_dir(self, path: str | os.PathLike | None) -> "NeuralModel":
        """Checkpoint every epoch of the next ``fit`` into ``path`` and resume from it (see the module doc)."""
        self._checkpoint_dir = None if path is None else Path(path)
        return self

    def fit(self, inputs: Mapping[str, object], y, *, validation=None, checkpoint_dir=None,
            on_epoch_end: Callable[[int, dict], None] | None = None) -> "NeuralModel":
        """Train on ``inputs`` (name -> (n, ...) arrays or views) and ``y``.

        Parameters
        ----------
        inputs : mapping of input name -> (n, *shape) array-like, read by batches of rows.
        y : (n,) class indices, or (n, L) multi-hot (bool or 0/1) for multi-label.
        validation : optional ``(inputs_val, y_val)``; when None a part of the training rows is carved.
        checkpoint_dir : overrides :meth:`set_checkpoint_dir` for this fit.
        on_epoch_end : optional ``callback(epoch, record)`` after each epoch's checkpoint is written.
        """
        self._check_params()
        names = self._check_inputs(inputs, fitting=True)
        inputs = {n: _as_rows(inputs[n]) for n in names}
        n = self._n_rows(inputs)
        targets, classes, multilabel = _targets(y, n)
        self.classes_, self.multilabel_, self.input_names_ = classes, multilabel, names
        self.input_shapes_ = {name: _row_shape(inputs[name]) for name in names}
        n_outputs = len(classes)
        launch = distributed.launch_from_env()  # None: one process
        device = distributed.local_device(resolve_device(self.device), launch)
        distributed.join(device)
        ckdir = checkpoint_dir if checkpoint_dir is not None else getattr(self, "_checkpoint_dir", None)
        # Only rank 0 reads and writes the checkpoint; the others get its contents (and its seed) by broadcast.
        primary = launch is None or launch.primary
        ckpt_path = None if ckdir is None or not primary else Path(ckdir) / CHECKPOINT_FILE
        val_given = self._validation_part(validation) if validation is not None else None
        fingerprint = self._fingerprint(targets, val_given)
        ckpt = _load_checkpoint(ckpt_path, fingerprint)

        if ckpt is not None:
            seed = int(ckpt["seed"])
        elif self.random_state is not None:
            seed = int(self.random_state)
        else:
            seed = int(np.random.SeedSequence().entropy % (2**63))
        if launch is not None:
            ckpt, seed = distributed.broadcast_object((ckpt, seed))
        split_seq, train_seq = np.random.SeedSequence(seed).spawn(2)
        if val_given is not None:
            train, val = _Part(inputs, np.arange(n), targets), val_given
        else:
            tr_rows, va_rows = _carve(targets, multilabel, self.val_fraction, np.random.default_rng(split_seq))
            train = _Part(inputs, tr_rows, targets)
            val = _Part(inputs, va_rows, targets) if len(va_rows) else None
        if len(train.rows) < 1:
            raise UsageError(f"{type(self).__name__}: no training rows left after carving the validation part")
        if launch is not None:
            self._check_shards(len(train.rows), launch)

        torch.manual_seed(seed)
        rng = np.random.default_rng(train_seq)
        self.seed_ = seed
        if ckpt is not None:
            self.scalers_ = {k: (v["mean"].numpy(), v["std"].numpy()) for k, v in ckpt["scalers"].items()}
        else:
            self.scalers_ = self._fit_scalers(train)
        net = self._build_network(self._network_shapes(), n_outputs).to(device)
        self.network_ = net
        optimizer = self._make_optimizer(net)
        scheduler = self._make_scheduler(optimizer)
        autocast, scaler = self._amp(device)
        trainer = distributed.data_parallel(net, device)  # net itself for one process
        train_criterion = self._criterion(train.targets[train.rows], n_outputs).to(device)
        criterion = self._criterion(train.targets[train.rows], n_outputs)  # validation loss, on the CPU

        st = dict(epoch=0, best_epoch=0, best_value=math.inf, bad_epochs=0, history=[], done=False,
                  best_model=None)
        self.resumed_from_ = 0
        if ckpt is not None:
            net.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if scaler is not None and ckpt["scaler"]:
                scaler.load_state_dict(ckpt["scaler"])
            torch.set_rng_state(ckpt["rng_torch"])
            if ckpt["rng_cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(ckpt["rng_cuda"])
            rng.bit_generator.state = json.loads(ckpt["rng_numpy"])
            st.update(epoch=int(ckpt["epoch"]), best_epoch=int(ckpt["best_epoch"]),
                      best_value=float(ckpt["best_value"]), bad_epochs=int(ckpt["bad_epochs"]),
                      history=json.loads(ckpt["history"]), done=bool(ckpt["done"]), best_model=ckpt["best_model"])
            self.resumed_from_ = st["epoch"]
            ui.info(f"{type(self).__name__}: resuming from epoch {st['epoch']} ({ckpt_path})"
                    + (" - training had finished" if st["done"] else ""))
            written_by, world = int(ckpt.get("world_size", 1)), 1 if launch is None else launch.world_size
            if primary and written_by != world and not st["done"]:
                ui.warn(f"{ckpt_path}: written by {written_by} process(es), resumed by {world}: the remaining "
                        "epochs are not those of an uninterrupted run")

        while not st["done"]:
            epoch = st["epoch"] + 1
            t0 = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            crop_rng = rng if launch is None else distributed.rank_generator(seed, epoch, launch)
            train_loss = self._train_epoch(train, trainer, optimizer, train_criterion, autocast, scaler, rng, device,
                                           f"epoch {epoch}/{self.max_epochs}", launch=launch, crop_rng=crop_rng)
            distributed.broadcast_buffers(net)
            if not math.isfinite(train_loss):
                raise GenreError(f"{type(self).__name__}: training diverged (loss {train_loss}) at epoch {epoch}; "
                                 f"try a lower lr (now {lr:g})")
            scheduler.step()
            val_loss = val_score = None
            if val is not None:
                logits = self._validation_logits(val, device, launch)
                val_t = torch.from_numpy(val.targets[val.rows])
                with torch.no_grad():
                    val_loss = float(criterion(torch.from_numpy(logits), val_t))
                val_score = _score(logits, val.targets[val.rows], multilabel)
                value = val_loss if self.monitor == "loss" or val_score is None else -val_score
                improved = value < st["best_value"]
            else:
                value, improved = train_loss, True
            if improved:
                st.update(best_value=value, best_epoch=epoch, bad_epochs=0,
                          best_model={k: v.detach().cpu().clone() for k, v in net.state_dict().items()})
            else:
                st["bad_epochs"] += 1
            stop = val is not None and st["bad_epochs"] >= self.patience
            record = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_score": val_score,
                      "lr": lr, "seconds": round(time.perf_counter() - t0, 3)}
            st["history"].append(record)
            st.update(epoch=epoch, done=stop or epoch >= self.max_epochs)
            if ckpt_path is not None:
                self._save_checkpoint(ckpt_path, fingerprint, seed, st, net, optimizer, scheduler, scaler, rng,
                                      world_size=1 if launch is None else launch.world_size)
            ui.info(_epoch_line(record, self.max_epochs, multilabel, improved))
            if on_epoch_end is not None:
                on_epoch_end(epoch, record)
            if stop:
                ui.info(f"early stopping after epoch {epoch}: no improvement for {self.patience} epochs; "
                        f"best epoch {st['best_epoch']}")

        if st["best_model"] is not None:
            net.load_state_dict(st["best_model"])
        self.history_ = st["history"]
        self.best_epoch_, self.n_epochs_ = st["best_epoch"], st["epoch"]
        return self

    def decision_function(self, inputs: Mapping[str, object]) -> np.ndarray:
        """Logits (n, len(classes_)): class scores single-label, per-label log-odds multi-label.

        Patch inputs are scored on evenly spaced crops whose logits are averaged (see the module docstring).
        """
        if not hasattr(self, "network_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit first")
        names = self._check_inputs(inputs, fitting=False)
        inputs = {name: _as_rows(inputs[name]) for name in names}
        for name in names:
            got, want = _row_shape(inputs[name]), self.input_shapes_[name]
            patch = self._patch_frames() is not None and len(want) >= 2
            if (got[:-1] != want[:-1]) if patch else (got != want):
                raise UsageError(f"{name}: rows of shape {got}, but the model was trained on {want}")
        device = distributed.local_device(resolve_device(self.device), distributed.current())
        return self._logits(inputs, np.arange(self._n_rows(inputs)), device).astype(np.float64)

    def predict_proba(self, inputs) -> np.ndarray:
        """Softmax (sigmoid multi-label) of the logits: calibrated probabilities, the net being trained with log loss."""
        return super().predict_proba(inputs)

    # -- persistence ------------------------------------------------------------------------------------------
    def get_state(self) -> dict[str, np.ndarray]:
        state = {f"net/{k}": v.detach().cpu().numpy() for k, v in self.network_.state_dict().items()}
        for name, (mean, std) in self.scalers_.items():
            state[f"scale/{name}/mean"], state[f"scale/{name}/std"] = mean, std
        return state

    def get_meta(self) -> dict:
        return {**super().get_meta(), "input_shapes": {k: list(v) for k, v in self.input_shapes_.items()},
                "n_outputs": len(self.classes_), "architecture": self._architecture(), "seed": self.seed_,
                "best_epoch": self.best_epoch_, "n_epochs": self.n_epochs_, "history": self.history_}

    def set_state(self, state: Mapping[str, np.ndarray], meta: Mapping) -> "NeuralModel":
        super().set_state(state, meta)
        self.input_shapes_ = {k: tuple(v) for k, v in meta["input_shapes"].items()}
        self.scalers_ = {n: (np.asarray(state[f"scale/{n}/mean"]), np.asarray(state[f"scale/{n}/std"]))
                         for n in self.input_names_}
        with torch.random.fork_rng(devices=[]):
            net = self._build_network(self._network_shapes(), int(meta["n_outputs"]))
        net.load_state_dict({k[4:]: torch.from_numpy(np.array(v)) for k, v in state.items() if k.startswith("net/")})
        self.network_ = net
        self.seed_, self.best_epoch_, self.n_epochs_ = meta.get("seed"), meta.get("best_epoch"), meta.get("n_epochs")
        self.history_ = list(meta.get("history", []))
        return self

    # -- internals --------------------------------------------------------------------------------------------
    def _check_params(self) -> None:
        def bad(name, allowed):
            raise UsageError(f"{type(self).__name__}: {name}={getattr(self, name)!r}; expected one of {', '.join(map(str, allowed))}")

        for name, allowed in (("optimizer", OPTIMIZERS), ("lr_schedule", SCHEDULES), ("monitor", MONITORS),
                              ("amp_dtype", AMP_DTYPES), ("class_weight", (None, "balanced"))):
            if getattr(self, name) not in allowed:
                bad(name, allowed)
        for name in ("max_epochs", "batch_size", "patience", "lr_step_size"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"{type(self).__name__}: {name} must be >= 1 (got {getattr(self, name)})")
        if not 0 <= float(self.val_fraction) < 1:
            raise UsageError(f"{type(self).__name__}: val_fraction must be in [0, 1) (got {self.val_fraction})")
        if self._patch_frames() is not None and self._patch_frames() < 1:
            raise UsageError(f"{type(self).__name__}: patch_frames must be >= 1 (got {self.patch_frames})")
        if getattr(self, "test_crops", None) is not None and int(self.test_crops) < 1:
            raise UsageError(f"{type(self).__name__}: test_crops must be >= 1 or None (got {self.test_crops})")

    def _validation_part(self, validation) -> _Part:
        try:
            val_inputs, val_y = validation
        except (TypeError, ValueError):
            raise UsageError("validation must be a pair (inputs, y)") from None
        missing = [n for n in self.input_names_ if n not in val_inputs]
        if missing:
            raise UsageError(f"validation inputs lack {', '.join(missing)}")
        val_inputs = {n: _as_rows(val_inputs[n]) for n in self.input_names_}
        n_val = self._n_rows(val_inputs)
        val_y = np.asarray(val_y)
        if len(val_y) != n_val:
            raise UsageError(f"validation has {n_val} input rows but {len(val_y)} labels")
        if self.multilabel_:
            if val_y.ndim != 2 or val_y.shape[1] != len(self.classes_):
                raise UsageError(f"validation labels of shape {val_y.shape}; expected (n, {len(self.classes_)})")
            return _Part(val_inputs, np.arange(n_val), val_y.astype(np.float32))
        known = np.isin(val_y, self.classes_)
        if not known.all():
            ui.warn(f"{int((~known).sum())} validation rows have classes unseen in training; they are not used")
        targets = np.searchsorted(self.classes_, val_y).clip(0, len(self.classes_) - 1).astype(np.int64)
        return _Part(val_inputs, np.flatnonzero(known), targets)

    def _fingerprint(self, targets: np.ndarray, val: _Part | None) -> str:
        params = {k: v for k, v in params_to_json(self.get_params(deep=False)).items() if k != "device"}
        doc = {"class": f"{type(self).__module__}:{type(self).__qualname__}", "params": params,
               "shapes": {k: list(v) for k, v in self.input_shapes_.items()},
               "y": hashlib.sha256(np.ascontiguousarray(targets).tobytes()).hexdigest()}
        if val is not None:
            doc["val"] = [len(val.rows), hashlib.sha256(np.ascontiguousarray(val.targets[val.rows]).tobytes()).hexdigest()]
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()

    def _fit_scalers(self, part: _Part) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Mean and std of every input over the training rows, read in batches (sorted for locality)."""
        rows = np.sort(part.rows)
        out = {}
        for name in self.input_names_:
            shape = self.input_shapes_[name]
            moments = _Moments()
            for start in range(0, len(rows), self.batch_size):
                block = take_rows(part.inputs[name], rows[start:start + self.batch_size]).astype(np.float64)
                if not np.all(np.isfinite(block)):
                    raise UsageError(f"{name}: training rows hold NaN/inf values (failed tracks?); pass valid rows only")
                if self._scaling == "global":
                    moments.add(block.ravel(), None)
                else:
                    moments.add(block.reshape(len(block), *shape), 0)
            out[name] = moments.result()
        return out

    def _make_optimizer(self, net: nn.Module) -> torch.optim.Optimizer:
        params, lr, wd = net.parameters(), float(self.lr), float(self.weight_decay)
        if self.optimizer in ("adam", "adamw"):
            return make_adam(params, lr=lr, weight_decay=wd, decoupled=self.optimizer == "adamw")
        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=float(self.momentum), weight_decay=wd)
        return torch.optim.RMSprop(params, lr=lr, momentum=float(self.momentum), weight_decay=wd)

    def _make_scheduler(self, optimizer):
        sched = torch.optim.lr_scheduler
        if self.lr_schedule == "step":
            return sched.StepLR(optimizer, step_size=int(self.lr_step_size), gamma=float(self.lr_gamma))
        if self.lr_schedule == "cosine":
            return sched.CosineAnnealingLR(optimizer, T_max=int(self.max_epochs))
        return sched.StepLR(optimizer, step_size=1, gamma=1.0)

    def _amp(self, device: torch.device):
        """(autocast context factory, GradScaler or None) for ``device``."""
        if device.type != "cuda" or not self.amp:
            return contextlib.nullcontext, None
        dtype = torch.bfloat16 if self.amp_dtype == "bfloat16" and torch.cuda.is_bf16_supported() else torch.float16
        scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
        return (lambda: torch.autocast(device_type="cuda", dtype=dtype)), scaler

    def _criterion(self, train_targets: np.ndarray, n_outputs: int) -> nn.Module:
        if self.multilabel_:
            pos_weight = None
            if self.class_weight == "balanced":
                pos = train_targets.sum(axis=0)
                pos_weight = torch.from_numpy(np.where(pos > 0, (len(train_targets) - pos) / np.maximum(pos, 1), 1.0)
                                              .astype(np.float32))
            return nn.BCEWithLogitsLoss(pos_weight=pos_weight)
        weight = None
        if self.class_weight == "balanced":
            from sklearn.utils.class_weight import compute_class_weight

            present = np.unique(train_targets)
            w = np.ones(n_outputs)
            w[present] = compute_class_weight("balanced", classes=present, y=train_targets)
            weight = torch.from_numpy(w.astype(np.float32))
        return nn.CrossEntropyLoss(weight=weight)

    def _train_epoch(self, part: _Part, net, optimizer, criterion, autocast, scaler, rng, device, label, *,
                     launch: distributed.Launch | None = None, crop_rng: np.random.Generator | None = None) -> float:
        """One epoch over ``part``'s rows in batches of ``batch_size``; the mean training loss.

        ``rng`` draws the epoch's row order (the same on every rank of a launch), ``crop_rng`` (default
        ``rng``) the random crops. Under a launch each global batch is split among the ranks
        (:func:`~genrecli.distributed.shard`) and ``net`` is the DistributedDataParallel wrapper.
        """
        net.train()
        crop_rng = rng if crop_rng is None else crop_rng
        order = rng.permutation(part.rows)
        batches = np.array_split(order, math.ceil(len(order) / int(self.batch_size)))
        total = 0.0
        with ui.progress(len(batches), label) as advance:
            for batch in batches:
                rows = distributed.shard(batch, launch)
                views = self._batch_tensors(part.inputs, rows, train=True, rng=crop_rng)
                xs = [t.to(device, non_blocking=True) for t in views[0]]
                yt = torch.from_numpy(part.targets[rows]).to(device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                with autocast():
                    logits = net(*xs)
                loss = criterion(logits.float(), yt)
                # DDP averages the ranks' gradients; weighting each rank's mean loss by its share of the global
                # batch makes that average the gradient of the global batch's mean loss, as in one process
                # (exact for unweighted means; with class_weight='balanced' up to the weights' spread).
                step_loss = loss if launch is None else loss * (launch.world_size * len(rows) / len(batch))
                if scaler is not None:
                    scaler.scale(step_loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    step_loss.backward()
                    optimizer.step()
                total += float(loss.detach()) * len(rows)
                advance(1)
        if launch is not None:
            total = distributed.all_reduce_sum(total, device)
        return total / len(order)

    def _validation_logits(self, val: _Part, device: torch.device, launch: distributed.Launch | None) -> np.ndarray:
        """Logits of the validation rows; under a launch each rank scores its share and all ranks gather all
        of them, so every rank computes the same validation loss and score (and stops at the same epoch)."""
        if launch is None:
            return self._logits(val.inputs, val.rows, device)
        return np.concatenate(distributed.all_gather_objects(self._logits(val.inputs, distributed.shard(val.rows, launch), device)))

    def _check_shards(self, n_train: int, launch: distributed.Launch) -> None:
        """Every global batch must give every rank at least one row (DDP needs a forward on each)."""
        smallest = n_train // math.ceil(n_train / int(self.batch_size))
        if smallest < launch.world_size:
            raise UsageError(f"{type(self).__name__}: batch_size={self.batch_size} (global, split among "
                             f"{launch.world_size} processes) on {n_train} training rows leaves a batch of "
                             f"{smallest} rows, fewer than one per process; raise batch_size or use fewer processes")

    def _logits(self, inputs, rows: np.ndarray, device: torch.device) -> np.ndarray:
        """Logits (len(rows), n_outputs) float32 in eval mode, averaged over the views of each batch."""
        net = self.network_
        if next(net.parameters()).device != device:
            net.to(device)
        net.eval()
        autocast, _ = self._amp(device)
        shapes = self._network_shapes()
        out = np.empty((len(rows), len(self.classes_)), dtype=np.float32)
        with torch.no_grad():
            for start in range(0, len(rows), int(self.batch_size)):
                views = self._batch_tensors(inputs, rows[start:start + int(self.batch_size)], train=False, rng=None)
                acc = None
                for view in views:
                    xs = [_pad_to(t, shapes[name]).to(device) for t, name in zip(view, self.input_names_)]
                    with autocast():
                        z = net(*xs).float()
                    acc = z if acc is None else acc + z
                out[start:start + len(acc)] = (acc / len(views)).cpu().numpy()
        return out

    def _save_checkpoint(self, path: Path, fingerprint, seed, st, net, optimizer, scheduler, scaler, rng, *,
                         world_size: int = 1) -> None:
        doc = {
            "format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "seed": seed, "epoch": st["epoch"],
            "world_size": world_size,
            "done": st["done"], "best_epoch": st["best_epoch"], "best_value": float(st["best_value"]),
            "bad_epochs": st["bad_epochs"], "history": json.dumps(st["history"]),
            "model": {k: v.detach().cpu() for k, v in net.state_dict().items()}, "best_model": st["best_model"],
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else {},
            "scalers": {k: {"mean": torch.from_numpy(m), "std": torch.from_numpy(s)} for k, (m, s) in self.scalers_.items()},
            "rng_torch": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
            "rng_numpy": json.dumps(rng.bit_generator.state),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as fh:
            torch.save(doc, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------- helpers
def _targets(y, n: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """(targets, classes_, multilabel): int64 positions into classes_, or a float32 multi-hot matrix."""
    y = np.asarray(y)
    if len(y) != n:
        raise UsageError(f"inputs have {n} rows but y has {len(y)} labels")
    if y.ndim == 2:
        return y.astype(np.float32), np.arange(y.shape[1]), True
    if y.ndim != 1:
        raise UsageError(f"y must be (n,) class indices or an (n, L) multi-hot matrix, got shape {y.shape}")
    classes = np.unique(y)
    return np.searchsorted(classes, y).astype(np.int64), classes, False


def _carve(targets: np.ndarray, multilabel: bool, fraction: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows): a stratified (per class, at least one row kept for training) or a
    random fraction of the rows."""
    n = len(targets)
    if fraction <= 0 or n < 2:
        return np.arange(n), np.empty(0, np.int64)
    if multilabel:
        perm = rng.permutation(n)
        k = min(int(round(fraction * n)), n - 1)
        return np.sort(perm[k:]), np.sort(perm[:k])
    val = []
    for c in np.unique(targets):
        members = rng.permutation(np.flatnonzero(targets == c))
        val.append(members[:min(int(round(fraction * len(members))), len(members) - 1)])
    val = np.sort(np.concatenate(val)).astype(np.int64)
    return np.setdiff1d(np.arange(n), val), val


def _score(logits: np.ndarray, targets: np.ndarray, multilabel: bool) -> float | None:
    """Balanced accuracy (mean recall over the classes present), or the macro ROC AUC over the labels with
    both values present; None when undefined."""
    if not multilabel:
        if not len(targets):
            return None
        hit = logits.argmax(axis=1) == targets
        return float(np.mean([hit[targets == c].mean() for c in np.unique(targets)]))
    from scipy.stats import rankdata

    aucs = []
    for j in range(targets.shape[1]):
        pos = targets[:, j] > 0.5
        n_pos = int(pos.sum())
        if 0 < n_pos < len(pos):  # Mann-Whitney U from mid-ranks (ties count one half)
            ranks = rankdata(logits[:, j])
            aucs.append((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (len(pos) - n_pos)))
    return float(np.mean(aucs)) if aucs else None


def _random_crops(block: np.ndarray, width: int, rng: np.random.Generator) -> np.ndarray:
    """One random window of ``width`` frames (last axis) per row; rows shorter than ``width`` are kept whole."""
    frames = block.shape[-1]
    if frames <= width:
        return block
    starts = rng.integers(0, frames - width + 1, size=len(block))
    return np.stack([row[..., s:s + width] for row, s in zip(block, starts)])


def _fixed_crop(block: np.ndarray, width: int, i: int, k: int) -> np.ndarray:
    """The i-th of k evenly spaced windows (first at frame 0, last ending at the last frame; one: centred)."""
    frames = block.shape[-1]
    if frames <= width:
        return block
    start = (frames - width) // 2 if k == 1 else int(round(i * (frames - width) / (k - 1)))
    return block[..., start:start + width]


def _pad_to(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Zero-pad the last axis of a batch up to the width the network was built for (short tracks)."""
    missing = shape[-1] - t.shape[-1]
    return torch.nn.functional.pad(t, (0, missing)) if len(shape) >= 2 and missing > 0 else t


def _load_checkpoint(path: Path | None, fingerprint: str) -> dict | None:
    if path is None or not path.exists():
        return None
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a torn or foreign file: start afresh
        ui.warn(f"{path}: unreadable checkpoint ({type(exc).__name__}); training from scratch")
        return None
    if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT or doc.get("fingerprint") != fingerprint:
        ui.warn(f"{path}: checkpoint of other parameters or data; training from scratch")
        return None
    return doc


def _epoch_line(record: dict, max_epochs: int, multilabel: bool, improved: bool) -> str:
    parts = [f"epoch {record['epoch']}/{max_epochs}", f"train loss {record['train_loss']:.4f}"]
    if record["val_loss"] is not None:
        parts.append(f"val loss {record['val_loss']:.4f}")
    if record["val_score"] is not None:
        parts.append(f"val {'macro AUC' if multilabel else 'bal. acc'} {record['val_score']:.4f}")
    parts += [f"lr {record['lr']:.3g}", f"{record['seconds']:.1f}s"]
    return "  ".join(parts) + ("  *" if improved else "")
