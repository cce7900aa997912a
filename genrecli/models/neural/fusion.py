"""Neural fusion baselines of the DM2KMN paper: ``dcn``, ``fusion-concat``, ``fusion-decision``, ``fusion-hybrid``.

The DM2KMN paper (Table 5 piano, Table 6 4MuLA) compares with "a fully symmetric architecture DCN" (its
ref. 44, Wadhwa & Mukherjee's multi-modal fusion network of lyrics and mel spectrograms) and with Li et al.'s
"feature concatenation, decision weighting and hybrid fusion" of mel-spectrogram audio and lyrics semantic
features (its ref. 21). It re-implements them but gives no architecture, size, schedule or number for any of
them (``shared/spec/dm2kmn-method.md``: "not recovered"), so every model here is a reconstruction from those
one-line descriptions; each class lists its "Choices not stated by the paper". ``cnn-bow`` (ref. 91) is in
:mod:`genrecli.models.neural.cnn_bow` and shares the pieces of this module.

Shared pieces
    *Branches*: one encoder per input to an embedding of ``embed_dim`` values: an MLP (the layers of
    :class:`~genrecli.models.neural.mlp._MLP`) on a vector input, or the conv trunk of the ``cnn`` model
    (:class:`~genrecli.models.neural.cnn._MelCNN`, its linear head giving the embedding) on a patch input
    (``branch='auto'`` picks by the per-track shape), both followed by ReLU (and dropout for the MLP).
    *Scaling*: vector inputs are standardised per column, patch inputs with one mean/std over all their values
    (what ``mlp`` and ``cnn`` do; the harness offers one mode for all inputs, see :class:`MixedScaling`).
    *Weight search* (:func:`search_weights`): convex weights over per-head class probabilities, chosen by a
    grid over the simplex on the validation part only.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from genrecli import ui
from genrecli.errors import UsageError
from genrecli.models.neural.cnn import TIME_POOLS, _MelCNN
from genrecli.models.neural.harness import (
    NeuralModel,
    _as_rows,
    _carve,
    _Moments,
    _pad_to,
    _score,
    _targets,
    as_int_tuple,
    store_params,
    take_rows,
)
from genrecli.models.neural.mlp import _MLP

BRANCH_KINDS = ("auto", "mlp", "cnn")
DCN_FUSIONS = ("sum-product", "sum-product-diff")
FUSIONS = ("concat", "decision", "hybrid")
WEIGHT_CRITERIA = ("score", "loss")
HYBRID_SEARCHES = ("sequential", "joint")
_EPS = 1e-12


# --------------------------------------------------------------------------------------------- building blocks
def is_patch(shape: Sequence[int]) -> bool:
    """A per-track shape of two or more axes (mels x frames, or channels x mels x frames) is a patch."""
    return len(shape) >= 2


def branch_kind(requested: str, shape: Sequence[int], name: str) -> str:
    """'cnn' or 'mlp' for an input of per-track ``shape``: ``requested``, or by the shape when 'auto'."""
    if requested == "auto":
        return "cnn" if is_patch(shape) else "mlp"
    if requested == "cnn" and not is_patch(shape):
        raise UsageError(f"a cnn branch needs a patch input (mels, frames), but {name} is a vector of shape {tuple(shape)}")
    return requested


def make_branch(shape: Sequence[int], kind: str, *, embed_dim: int, hidden: tuple[int, ...], dropout: float,
                channels: tuple[int, ...], time_pool: str) -> nn.Module:
    """One modality's encoder to ``embed_dim`` non-negative values (batch, embed_dim).

    'mlp': the input flattened, ``hidden`` ReLU layers with dropout, a linear layer to ``embed_dim``, ReLU,
    dropout (the layers of ``mlp``). 'cnn': the ``cnn`` model's network with ``embed_dim`` outputs (its conv
    blocks, pooling over time, dropout and linear layer), then ReLU.
    """
    if kind == "cnn":
        if len(shape) not in (2, 3):
            raise UsageError(f"a cnn branch needs (mels, frames) or (channels, mels, frames) per track, got {tuple(shape)}")
        in_channels = 1 if len(shape) == 2 else int(shape[0])
        return nn.Sequential(_MelCNN(in_channels, int(shape[-2]), channels, dropout, embed_dim, time_pool), nn.ReLU())
    return nn.Sequential(_MLP(math.prod(shape), hidden, dropout, embed_dim), nn.ReLU(), nn.Dropout(dropout))


class MixedScaling:
    """Mixin for :class:`NeuralModel`: per-column standardisation of vector inputs, one global mean/std per
    patch input (the harness applies one ``_scaling`` mode to every input; this chooses it per input)."""

    def _fit_scalers(self, part):
        rows = np.sort(part.rows)
        out = {}
        for name in self.input_names_:
            shape = self.input_shapes_[name]
            moments = _Moments()
            for start in range(0, len(rows), int(self.batch_size)):
                block = take_rows(part.inputs[name], rows[start:start + int(self.batch_size)]).astype(np.float64)
                if not np.all(np.isfinite(block)):
                    raise UsageError(f"{name}: training rows hold NaN/inf values (failed tracks?); pass valid rows only")
                if is_patch(shape):
                    moments.add(block.ravel(), None)
                else:
                    moments.add(block.reshape(len(block), *shape), 0)
            out[name] = moments.result()
        return out


def _check_choice(model, name: str, allowed) -> None:
    if getattr(model, name) not in allowed:
        raise UsageError(f"{type(model).__name__}: {name}={getattr(model, name)!r}; expected one of {', '.join(allowed)}")


# --------------------------------------------------------------------------------------------- weight search
def simplex_grid(k: int, step: float = 0.1) -> np.ndarray:
    """Every k-vector of non-negative multiples of ``step`` summing to 1, in lexicographic order of the
    integer counts (the first rows put the most weight on the last component): (G, k) float64."""
    m = round(1.0 / float(step))
    if m < 1 or abs(m * float(step) - 1.0) > 1e-9:
        raise UsageError(f"weight_step={step!r}: must divide 1 (e.g. 0.1, 0.05, 0.25)")
    rows = [c for c in itertools.product(range(m + 1), repeat=k - 1) if sum(c) <= m]
    return np.array([(*c, m - sum(c)) for c in rows], dtype=np.float64).reshape(-1, k) / m


def head_probabilities(head_logits: np.ndarray, multilabel: bool) -> np.ndarray:
    """Per-head class probabilities of (n, K, C) logits: softmax over classes (sigmoid per label), float64."""
    z = np.asarray(head_logits, dtype=np.float64)
    if multilabel:
        return 1.0 / (1.0 + np.exp(-z))
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def mix_probabilities(probs: np.ndarray, weights) -> np.ndarray:
    """The weighted average sum_k w_k p_k of per-head probabilities (n, K, C) -> (n, C)."""
    return np.einsum("nkc,k->nc", np.asarray(probs, dtype=np.float64), np.asarray(weights, dtype=np.float64))


def probabilities_to_scores(p: np.ndarray, multilabel: bool) -> np.ndarray:
    """Scores whose softmax (sigmoid) is ``p`` again: log p, or the log-odds log p - log(1 - p) multi-label."""
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS if multilabel else 1.0)
    return np.log(p) - np.log1p(-p) if multilabel else np.log(p)


def log_loss(p: np.ndarray, targets: np.ndarray, multilabel: bool) -> float:
    """Mean negative log-likelihood of mixed probabilities: cross-entropy, or mean binary cross-entropy."""
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS)
    if multilabel:
        t = np.asarray(targets, dtype=np.float64)
        return float(-np.mean(t * np.log(p) + (1 - t) * np.log(1 - p)))
    return float(-np.mean(np.log(p[np.arange(len(p)), np.asarray(targets, dtype=np.int64)])))


def search_weights(probs: np.ndarray, targets: np.ndarray, multilabel: bool, *, step: float = 0.1,
                   criterion: str = "score") -> tuple[np.ndarray, list[dict]]:
    """The convex weights of the K heads of ``probs`` (n, K, C) that fit ``targets`` best: (weights, table).

    Every point of :func:`simplex_grid` (K, step) is scored on the given rows. ``criterion='score'``: the
    highest balanced accuracy (single-label; macro ROC AUC multi-label), ties broken by the lower log-loss,
    then by grid order; ``'loss'``: the lowest log-loss. ``targets`` are class positions (n,) or multi-hot
    (n, C). The table lists every grid point with its score and loss.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 3 or not len(probs):
        raise UsageError(f"search_weights needs probabilities of shape (n>0, K, C), got {probs.shape}")
    table, best, best_key = [], None, None
    for w in simplex_grid(probs.shape[1], step):
        p = mix_probabilities(probs, w)
        score, loss = _score(p, np.asarray(targets), multilabel), log_loss(p, targets, multilabel)
        key = (loss,) if criterion == "loss" else (-(score if score is not None else -math.inf), loss)
        table.append({"weights": w.tolist(), "score": score, "loss": loss})
        if best_key is None or key < best_key:
            best, best_key = w, key
    return best, table


# --------------------------------------------------------------------------------------------- multi-head harness
class _HeadSum(nn.Module):
    """Training loss of a multi-head network: the sum of ``inner`` over the heads of (batch, K, C) logits;
    a (batch, C) input (the combined validation scores) gets ``inner`` once."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.dim() == 2:
            return self.inner(logits, target)
        return sum(self.inner(logits[:, k], target) for k in range(logits.shape[1]))


class _FusionNet(nn.Module):
    """One branch per input; a classifier per branch (decision, hybrid) and/or a joint classifier on the
    concatenated embeddings (concat, hybrid). ``forward`` returns the logits of every head (batch, K, C):
    the branch heads in input order, then the joint head. The buffers ``weights`` (one per branch head) and
    ``joint`` (the joint head's share) hold the fusion weights, saved with the network."""

    def __init__(self, branches: list[nn.Module], branch_heads: list[nn.Module], joint_head: nn.Module | None):
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.branch_heads = nn.ModuleList(branch_heads)
        self.joint_head = joint_head
        self.n_heads = len(branch_heads) + (joint_head is not None)
        m = max(len(branch_heads), 1)
        self.register_buffer("weights", torch.full((m,), 1.0 / m, dtype=torch.float64))
        beta = 1.0 if not branch_heads else (0.5 if joint_head is not None else 0.0)
        self.register_buffer("joint", torch.tensor(beta, dtype=torch.float64))

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        z = [branch(x) for branch, x in zip(self.branches, xs)]
        heads = [head(e) for head, e in zip(self.branch_heads, z)]
        if self.joint_head is not None:
            heads.append(self.joint_head(torch.cat(z, dim=1)))
        return torch.stack(heads, dim=1)


class FusionModel(MixedScaling, NeuralModel):
    """Li et al.'s three fusions of per-modality networks: ``fusion='concat'``, ``'decision'`` or ``'hybrid'``.

    Registered as ``fusion-concat``, ``fusion-decision`` and ``fusion-hybrid`` (the registry fixes ``fusion``).
    Every input (two or more: e.g. ``audio/mfcc`` + ``text/minilm``, or a mel patch + a lyrics embedding) gets
    its own network, a *branch* (an MLP on a vector, the ``cnn`` conv trunk on a patch; see the module doc)
    to an embedding of ``embed_dim`` values.

    * ``concat`` (feature concatenation): the embeddings are concatenated and one joint classifier
      (``head_hidden`` layers, then linear) gives the logits; trained with its cross-entropy.
    * ``decision`` (decision weighting): each branch has its own classifier; the fused class probability is
      the weighted average ``sum_m w_m p_m`` of the per-modality probabilities (softmax; sigmoid per label
      multi-label). The weights ``w`` are chosen *after training, on the validation part only*, over a grid on
      the simplex (steps of ``weight_step``) maximising the validation balanced accuracy (macro ROC AUC
      multi-label; ties broken by the lower validation log-loss) -- see :func:`search_weights`. The test
      rows are never seen: ``genre train`` passes the split's validation rows, else ``val_fraction`` of the
      training rows is carved (the harness's seeded carve, recomputed here).
    * ``hybrid``: both. The fused probability is ``beta * p_concat + (1 - beta) * sum_m w_m p_m``; ``w`` is
      chosen as for ``decision``, then ``beta`` on the same validation rows and grid
      (``hybrid_search='sequential'``), or all of (w, beta) at once over the (M+1)-simplex (``'joint'``).

    ``decision_function`` returns the logits of the joint head (concat) or log of the fused probability
    (decision, hybrid; log-odds multi-label), so :meth:`predict_proba` is exactly the fused probability.
    ``weights_`` (input name -> w) and ``joint_weight_`` (beta) hold what was chosen; ``weight_table_`` the
    validation score and loss of every grid point.

    Choices not stated by the paper
        * Training the per-modality networks: one joint training whose loss is the sum of the heads'
          cross-entropies (decision: the branch heads; hybrid: the branch heads and the joint head). For
          decision this *is* separate training of each modality's network (no weight is shared, and Adam's
          updates are per parameter), except that early stopping picks one epoch for all of them.
        * Early stopping monitors the fused output with the weights it has during training: uniform ``w``
          and ``beta = 1/2`` (the weights are only searched after training).
        * Branch sizes (``embed_dim=128``, ``branch_hidden=(256,)``, ``channels`` of ``cnn``), linear
          classifiers (``head_hidden=()``), dropout 0.3, and the MLP's schedule (Adam 1e-3, <= 200 epochs,
          patience 20): not stated; chosen to match this toolkit's ``mlp``/``cnn`` baselines.
        * The weight grid (step 0.1), the criterion (balanced accuracy, the harness's validation score) and
          its tie-break (log-loss, then grid order), and the sequential search of the hybrid weight.
        * No validation row (``val_fraction=0`` and no validation part): the search is skipped with a
          warning (uniform weights, beta 1/2).

    Parameters
    ----------
    fusion : 'concat', 'decision' or 'hybrid' (fixed by the registry entry).
    embed_dim : int, width of every branch's embedding.
    branch : 'auto' (CNN for a patch, MLP for a vector), 'mlp' (patches flattened) or 'cnn'.
    branch_hidden : tuple of int, hidden layers of the MLP branches before the embedding layer.
    channels, time_pool : the conv blocks and time pooling of CNN branches (as in ``cnn``).
    head_hidden : tuple of int, hidden layers of every classifier (branch and joint); () is linear.
    dropout : float.
    patch_frames, test_crops : training crop width and test-time crops of patch inputs (as in ``cnn``).
    weights : None (search) or M fixed modality weights in input-name order (e.g. [0.3, 0.7]); decision/hybrid.
    joint_weight : None (search) or a fixed beta in [0, 1]; hybrid only.
    weight_step : float dividing 1, the grid step of the weight search.
    weight_criterion : 'score' (balanced accuracy / macro AUC, then log-loss) or 'loss' (log-loss).
    hybrid_search : 'sequential' (w, then beta) or 'joint' (w and beta together; when neither is fixed).
    The other parameters are the harness's (:class:`~genrecli.models.neural.harness.NeuralModel`):
    max_epochs=200, batch_size=64, optimizer='adam', lr=1e-3, momentum=0.9, weight_decay=0.0,
    lr_schedule='constant', lr_step_size=30, lr_gamma=0.1, class_weight=None, val_fraction=0.1,
    monitor='loss', patience=20, amp=True, amp_dtype='bfloat16', random_state=None, device='cpu'.
    """

    def __init__(self, *, fusion="concat", embed_dim=128, branch="auto", branch_hidden=(256,),
                 channels=(32, 64, 128, 128), time_pool="max", head_hidden=(), dropout=0.3, patch_frames=128,
                 test_crops=None, weights=None, joint_weight=None, weight_step=0.1, weight_criterion="score",
                 hybrid_search="sequential", max_epochs=200, batch_size=64, optimizer="adam", lr=1e-3, momentum=0.9,
                 weight_decay=0.0, lr_schedule="constant", lr_step_size=30, lr_gamma=0.1, class_weight=None,
                 val_fraction=0.1, monitor="loss", patience=20, amp=True, amp_dtype="bfloat16", random_state=None,
                 device="cpu"):
        store_params(self, locals())

    # -- parameters -------------------------------------------------------------------------------------------
    def _check_params(self) -> None:
        super()._check_params()
        for name, allowed in (("fusion", FUSIONS), ("branch", BRANCH_KINDS), ("time_pool", TIME_POOLS),
                              ("weight_criterion", WEIGHT_CRITERIA), ("hybrid_search", HYBRID_SEARCHES)):
            _check_choice(self, name, allowed)
        if int(self.embed_dim) < 1:
            raise UsageError(f"FusionModel: embed_dim must be >= 1 (got {self.embed_dim})")
        simplex_grid(2, self.weight_step)  # validates the step
        if self.fusion == "concat" and (self.weights is not None or self.joint_weight is not None):
            raise UsageError("fusion-concat has no fusion weights; weights/joint_weight apply to fusion-decision and fusion-hybrid")
        if self.fusion == "decision" and self.joint_weight is not None:
            raise UsageError("joint_weight applies to fusion-hybrid only")
        if self.joint_weight is not None and not 0.0 <= float(self.joint_weight) <= 1.0:
            raise UsageError(f"joint_weight={self.joint_weight!r}: must be in [0, 1]")

    def _fixed_weights(self, m: int) -> np.ndarray | None:
        if self.weights is None:
            return None
        value = self.weights
        if isinstance(value, str):
            value = [v for v in value.replace(" ", "").split(",") if v]
        try:
            w = np.array([float(v) for v in np.atleast_1d(value)], dtype=np.float64)
        except (TypeError, ValueError):
            raise UsageError(f"weights={self.weights!r}: expected {m} numbers, e.g. 0.3,0.7") from None
        if len(w) != m or np.any(w < 0) or w.sum() <= 0:
            raise UsageError(f"weights={self.weights!r}: expected {m} non-negative numbers (one per input, in the "
                             f"order {', '.join(self.input_names_)}) with a positive sum")
        return w / w.sum()

    # -- network ----------------------------------------------------------------------------------------------
    def _has_branch_heads(self) -> bool:
        return self.fusion in ("decision", "hybrid")

    def _has_joint_head(self) -> bool:
        return self.fusion in ("concat", "hybrid")

    def _branch_kinds(self, shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
        return [branch_kind(self.branch, shapes[n], n) for n in self.input_names_]

    def _build_network(self, input_shapes: Mapping[str, tuple[int, ...]], n_outputs: int) -> nn.Module:
        if len(self.input_names_) < 2:
            raise UsageError(f"fusion-{self.fusion} fuses two or more inputs, got {', '.join(self.input_names_)}")
        embed, dropout = int(self.embed_dim), float(self.dropout)
        hidden, head_hidden = as_int_tuple(self.branch_hidden, "branch_hidden"), as_int_tuple(self.head_hidden, "head_hidden")
        channels = as_int_tuple(self.channels, "channels")
        branches = [make_branch(input_shapes[n], kind, embed_dim=embed, hidden=hidden, dropout=dropout,
                                channels=channels, time_pool=self.time_pool)
                    for n, kind in zip(self.input_names_, self._branch_kinds(input_shapes))]
        m = len(branches)
        self._fixed_weights(m)  # a bad `weights` option fails before training
        branch_heads = [_MLP(embed, head_hidden, dropout, n_outputs) for _ in range(m)] if self._has_branch_heads() else []
        joint = _MLP(embed * m, head_hidden, dropout, n_outputs) if self._has_joint_head() else None
        return _FusionNet(branches, branch_heads, joint)

    def _architecture(self) -> dict:
        shapes = self._network_shapes()
        return {"fusion": self.fusion, "branches": dict(zip(self.input_names_, self._branch_kinds(shapes))),
                "embed_dim": int(self.embed_dim), "branch_hidden": list(as_int_tuple(self.branch_hidden, "branch_hidden")),
                "head_hidden": list(as_int_tuple(self.head_hidden, "head_hidden")),
                "heads": [*(self.input_names_ if self._has_branch_heads() else []),
                          *(["joint"] if self._has_joint_head() else [])],
                "outputs": len(self.classes_)}

    # -- training ---------------------------------------------------------------------------------------------
    def _criterion(self, train_targets: np.ndarray, n_outputs: int) -> nn.Module:
        return _HeadSum(super()._criterion(train_targets, n_outputs))

    def fit(self, inputs, y, *, validation=None, checkpoint_dir=None, on_epoch_end=None) -> "FusionModel":
        """Train every head jointly (the harness), then choose the fusion weights on the validation part."""
        super().fit(inputs, y, validation=validation, checkpoint_dir=checkpoint_dir, on_epoch_end=on_epoch_end)
        self.weight_table_ = []
        if self.fusion == "concat":
            self._set_weight_attributes()
        else:
            self._choose_weights(inputs, y, validation)
        return self

    def _validation_rows(self, inputs, y, validation):
        """(inputs, rows, targets) of the validation part the harness used: the given one, or its seeded carve."""
        if validation is not None:
            part = self._validation_part(validation)
            return part.inputs, part.rows, part.targets[part.rows]
        inputs = {n: _as_rows(inputs[n]) for n in self.input_names_}
        targets, _, multilabel = _targets(y, self._n_rows(inputs))
        split_seq, _ = np.random.SeedSequence(int(self.seed_)).spawn(2)
        _, rows = _carve(targets, multilabel, float(self.val_fraction), np.random.default_rng(split_seq))
        return inputs, rows, targets[rows]

    def _choose_weights(self, inputs, y, validation) -> None:
        m = len(self.input_names_)
        w, beta = self._fixed_weights(m), None if self.joint_weight is None else float(self.joint_weight)
        hybrid = self.fusion == "hybrid"
        need = w is None or (hybrid and beta is None)
        probs = None
        if need:
            val_inputs, rows, targets = self._validation_rows(inputs, y, validation)
            if len(rows):
                probs = head_probabilities(self._head_logits(val_inputs, rows), self.multilabel_)
            else:
                ui.warn(f"fusion-{self.fusion}: no validation rows; fusion weights left uniform (beta 1/2)")
        step, crit = float(self.weight_step), self.weight_criterion
        if hybrid and probs is not None and self.hybrid_search == "joint" and w is None and beta is None:
            v, table = search_weights(probs, targets, self.multilabel_, step=step, criterion=crit)
            self.weight_table_ = [{"stage": "joint", **r} for r in table]
            beta = float(v[-1])
            w = v[:m] / v[:m].sum() if v[:m].sum() > 0 else np.full(m, 1.0 / m)
        if w is None:
            if probs is not None:
                w, table = search_weights(probs[:, :m], targets, self.multilabel_, step=step, criterion=crit)
                self.weight_table_ = [{"stage": "modalities", **r} for r in table]
            else:
                w = np.full(m, 1.0 / m)
        if hybrid and beta is None:
            if probs is not None:
                stacked = np.stack([mix_probabilities(probs[:, :m], w), probs[:, m]], axis=1)
                v, table = search_weights(stacked, targets, self.multilabel_, step=step, criterion=crit)
                beta = float(v[1])
                self.weight_table_ += [{"stage": "decision-vs-joint", **r} for r in table]
            else:
                beta = 0.5
        self.network_.weights.copy_(torch.from_numpy(np.asarray(w, dtype=np.float64)))
        if hybrid:
            self.network_.joint.fill_(float(beta))
        self._set_weight_attributes()
        ui.info(f"fusion-{self.fusion}: weights " + ", ".join(f"{n} {v:.2f}" for n, v in self.weights_.items())
                + (f"; joint head {self.joint_weight_:.2f}" if hybrid else ""))

    def _set_weight_attributes(self) -> None:
        net = self.network_
        self.joint_weight_ = float(net.joint)
        self.weights_ = {} if self.fusion == "concat" else dict(zip(self.input_names_, map(float, net.weights.cpu())))

    def fusion_mix(self) -> np.ndarray:
        """The weight of every head in the fused probability (branch heads in input order, then the joint)."""
        net = self.network_
        beta = float(net.joint)
        w = net.weights.detach().cpu().numpy().astype(np.float64)
        if self.fusion == "concat":
            return np.ones(1)
        return np.append((1.0 - beta) * w, beta) if self.fusion == "hybrid" else w

    # -- prediction -------------------------------------------------------------------------------------------
    def _head_logits(self, inputs, rows: np.ndarray, device: torch.device | None = None) -> np.ndarray:
        """Logits of every head (len(rows), K, C), each averaged over the test crops of patch inputs."""
        from genrecli.device import resolve_device

        device = resolve_device(self.device) if device is None else device
        net = self.network_
        if next(net.parameters()).device != device:
            net.to(device)
        net.eval()
        autocast, _ = self._amp(device)
        shapes = self._network_shapes()
        out = np.empty((len(rows), net.n_heads, len(self.classes_)), dtype=np.float32)
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

    def _logits(self, inputs, rows: np.ndarray, device: torch.device) -> np.ndarray:
        heads = self._head_logits(inputs, rows, device)
        if self.fusion == "concat":
            return heads[:, -1]
        p = mix_probabilities(head_probabilities(heads, self.multilabel_), self.fusion_mix())
        return probabilities_to_scores(p, self.multilabel_).astype(np.float32)

    def probabilities_per_head(self, inputs: Mapping[str, object]) -> dict[str, np.ndarray]:
        """Class probabilities of every head, name -> (n, C): the per-input classifiers and/or 'joint'."""
        names = self._check_inputs(inputs, fitting=False)
        inputs = {n: _as_rows(inputs[n]) for n in names}
        probs = head_probabilities(self._head_logits(inputs, np.arange(self._n_rows(inputs))), self.multilabel_)
        return dict(zip(self._architecture()["heads"], np.moveaxis(probs, 1, 0)))

    # -- persistence ------------------------------------------------------------------------------------------
    def get_meta(self) -> dict:
        return {**super().get_meta(), "fusion_weights": dict(self.weights_), "joint_weight": self.joint_weight_,
                "weight_table": list(getattr(self, "weight_table_", []))}

    def set_state(self, state, meta) -> "FusionModel":
        super().set_state(state, meta)
        self.weight_table_ = list(meta.get("weight_table", []))
        self._set_weight_attributes()
        return self


# --------------------------------------------------------------------------------------------- DCN
class _DCNNet(nn.Module):
    """Two branches, a symmetric fusion of their embeddings, a classifier."""

    def __init__(self, branches: list[nn.Module], fusion: str, head: nn.Module):
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.fusion = fusion
        self.head = head

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        a = self.branches[0](x0)
        t = self.branches[-1](x1)  # the same module when the branches share their weights
        parts = [a + t, a * t]
        if self.fusion == "sum-product-diff":
            parts.append((a - t).abs())
        return self.head(torch.cat(parts, dim=1))


class DCNModel(MixedScaling, NeuralModel):
    """``dcn``: a fully symmetric two-branch fusion network (the DM2KMN paper's "DCN", its ref. 44).

    Two inputs (e.g. ``audio/mfcc`` + ``text/minilm``; sorted by name). Each goes through an identical branch --
    an MLP on a vector, the ``cnn`` conv trunk on a patch -- to a shared width ``embed_dim``; the two
    embeddings ``a`` and ``t`` are fused by an order-invariant map, ``[a + t, a * t]`` (``fusion='sum-product'``;
    ``'sum-product-diff'`` appends ``|a - t|``), and a classifier (``head_hidden`` ReLU layers, then linear)
    gives the logits.

    Symmetry: both branches are initialised from *one* generator state (the torch generator is rewound before
    the second branch is built), so when the two inputs have the same width their initial weights are
    identical, and the fusion is commutative in floating point. Hence with the same seed the network of
    (a, t) and the network built with the inputs' roles swapped give bit-identical logits at initialisation
    (and, with ``dropout=0``, after training too: every update is mirrored). With different widths the
    branches' first layers differ in shape; the later layers still start equal. ``share_weights=True`` makes
    the two branches one module (a siamese network; needs the same per-track shape).

    Choices not stated by the paper
        * "Fully symmetric" read as: identical branches and an order-invariant fusion (sum and element-wise
          product), rather than a Siamese network (available as ``share_weights=True``).
        * Sizes: ``embed_dim=128``, ``branch_hidden=(256,)``, ``head_hidden=(128,)``, dropout 0.3, the ``cnn``
          conv blocks for patches; training as ``mlp`` (Adam 1e-3, <= 200 epochs, patience 20).

    Parameters
    ----------
    embed_dim, branch, branch_hidden, channels, time_pool, dropout, patch_frames, test_crops : as in
        :class:`FusionModel`.
    head_hidden : tuple of int, hidden layers of the classifier on the fused vector.
    fusion : 'sum-product' or 'sum-product-diff'.
    share_weights : bool, one branch module for both inputs.
    The harness's parameters as in :class:`FusionModel`.
    """

    def __init__(self, *, embed_dim=128, branch="auto", branch_hidden=(256,), channels=(32, 64, 128, 128),
                 time_pool="max", head_hidden=(128,), dropout=0.3, fusion="sum-product", share_weights=False,
                 patch_frames=128, test_crops=None, max_epochs=200, batch_size=64, optimizer="adam", lr=1e-3,
                 momentum=0.9, weight_decay=0.0, lr_schedule="constant", lr_step_size=30, lr_gamma=0.1,
                 class_weight=None, val_fraction=0.1, monitor="loss", patience=20, amp=True, amp_dtype="bfloat16",
                 random_state=None, device="cpu"):
        store_params(self, locals())

    def _check_params(self) -> None:
        super()._check_params()
        for name, allowed in (("branch", BRANCH_KINDS), ("time_pool", TIME_POOLS), ("fusion", DCN_FUSIONS)):
            _check_choice(self, name, allowed)
        if int(self.embed_dim) < 1:
            raise UsageError(f"DCNModel: embed_dim must be >= 1 (got {self.embed_dim})")

    def _build_network(self, input_shapes: Mapping[str, tuple[int, ...]], n_outputs: int) -> nn.Module:
        names = self.input_names_
        if len(names) != 2:
            raise UsageError(f"dcn fuses exactly two inputs (audio and text), got {len(names)}: {', '.join(names)}")
        shapes = [tuple(input_shapes[n]) for n in names]
        if self.share_weights and shapes[0] != shapes[1]:
            raise UsageError(f"dcn share_weights=true needs inputs of one shape; {names[0]} is {shapes[0]}, "
                             f"{names[1]} is {shapes[1]}")
        kw = dict(embed_dim=int(self.embed_dim), hidden=as_int_tuple(self.branch_hidden, "branch_hidden"),
                  dropout=float(self.dropout), channels=as_int_tuple(self.channels, "channels"), time_pool=self.time_pool)
        start = torch.get_rng_state()
        branches = []
        for name, shape in zip(names[:1] if self.share_weights else names, shapes):
            torch.set_rng_state(start)  # both branches from one generator state: identical initial weights
            branches.append(make_branch(shape, branch_kind(self.branch, shape, name), **kw))
        n_parts = 3 if self.fusion == "sum-product-diff" else 2
        head = _MLP(n_parts * int(self.embed_dim), as_int_tuple(self.head_hidden, "head_hidden"), float(self.dropout),
                    n_outputs)
        return _DCNNet(branches, self.fusion, head)

    def _architecture(self) -> dict:
        shapes = self._network_shapes()
        return {"branches": {n: branch_kind(self.branch, shapes[n], n) for n in self.input_names_},
                "embed_dim": int(self.embed_dim), "fusion": self.fusion, "share_weights": bool(self.share_weights),
                "head_hidden": list(as_int_tuple(self.head_hidden, "head_hidden")), "outputs": len(self.classes_)}
