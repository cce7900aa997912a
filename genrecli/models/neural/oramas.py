"""Oramas et al. (2018), "Multimodal Deep Learning for Music Genre Classification" (TISMIR): the registered
``oramas-audio``, ``oramas-text``, ``oramas-image``, ``oramas-mm-audio`` and ``oramas-fusion`` models.

The paper's method has two steps (its Sections 3-4): (1) one network per modality is trained on the genre task
and the activations of its last hidden layer become that modality's representation; (2) the representations,
each l2-normalised and concatenated, feed a network whose input layer is connected directly to the output
layer. Here each step is a harness model of :mod:`genrecli.models.neural.oramas_branches` and the classes
below chain them:

=================  ============================================================================================
``oramas-audio``   log-CQT CNN (``audio/logcqt-oramas``, 96 x 323 = 15 s at hop 1024). Single-label: the MSD-I
                   net (time-only convolutions over all 96 bins, width 4, 64/128/256 filters, time pooling
                   4/4/2, dropout 0.5 after every layer, the 256 x 8 = 2048-d flatten of the last map is
                   CNN_AUDIO, softmax). Multi-label: the MuMu nets of Table 5 (option ``arch``: LOW/HIGH x
                   3x3 / 4x96 / 4x70, 4 layers). Then (``head='auto'``) the fusion network on CNN_AUDIO, as
                   the paper reports CNN_AUDIO (Table 2) and the album-level audio rows (Table 6). A *vector*
                   audio input (e.g. MFCC statistics) skips the CNN: the fusion network on it is the paper's
                   TIMBRE-MLP baseline.
``oramas-text``    VSM network on ``text/tfidf`` (10k vocabulary): dropout 0.5 on the input, 2 x 2048 ReLU
                   each followed by dropout 0.5, output layer (trained and used directly, ``head='auto'``).
``oramas-image``   A head on a frozen cover-art embedding ``image/<backbone>`` (see
                   :func:`genrecli.image.embed.embed_images`): 2048 ReLU + dropout 0.5 + output layer.
``oramas-mm-audio`` Trained on audio + image, predicts from audio alone: CNN_AUDIO and the image
                   representation are mapped to a 200-d joint space by two-layer tanh projections
                   ``e(x) = W2 tanh(W1 x)`` trained with ``(1 - cos(e_a(a), e_v(v))) + max(0, cos(e_a(r_a),
                   e_v(v)) - m) + max(0, cos(e_a(a), e_v(r_v)) - m)``, one random negative per modality,
                   margin ``m = 0.5`` (Section 3.4); the fusion network is trained on MM_AUDIO = e_a(a)
                   (``mm_features='mm'``, Table 2 row MM_AUDIO) or on CNN_AUDIO + MM_AUDIO ('cnn+mm', the
                   paper's best audio). Prediction needs only the audio input.
``oramas-fusion``  Every given audio / text / image input through its network, then the fusion network
                   (A+V, A+T, T+I, A+T+I of Tables 2 and 6); ``joint_space=True`` with one audio and one
                   image input adds MM_AUDIO and MM_VISUAL (Table 2 row ALL).
=================  ============================================================================================

Targets (option ``target``): 'softmax' (single-label; the default there), 'logistic' (sigmoid + binary
cross-entropy; the multi-label default; on single-label data against one-hot targets) and 'cosine' (COSINE:
regress the item's 50-d PPMI-SVD label factors, :mod:`genrecli.models.labelfactor`, with a cosine loss;
:meth:`decision_function` returns the cosine of the predicted vector to every label's vector, and the labels
predicted are those whose cosine exceeds ``threshold``, tuned on the validation part by default). Every stage of
a model uses the same target (the paper's image network is LOGISTIC only because fine-tuning an ImageNet
classifier made COSINE awkward; a frozen embedding has no such constraint).

Album averaging (``group_key``, e.g. 'album'): MuMu's audio is per track and its labels per album; the paper
averages the track representations of an album and trains the fusion network on album vectors (Section
7.3.1). With ``group_key`` set, :meth:`fit` needs ``groups=`` (one key per row, and ``validation_groups=``
with a validation part) and :meth:`decision_function` averages by ``groups=`` when given (every row of a group
gets its group's scores; without groups each row is its own group). ``genre train -o group_key=KEY`` passes
the manifest's ``KEY`` group ids of the training, validation and test rows (a key the manifest lacks stops the
run, naming the keys it has); ``genre predict`` scores each new file as its own group.

Left out: the entity-linking enrichment of the texts (Babelfy + ELVIS append Wikipedia categories; both are
web services, so VSM+SEM is not reproducible offline: ``oramas-text`` is the paper's plain VSM); the
fine-tuning of ResNet-101 on the covers (the image input is a frozen-backbone embedding with a trained head).

Choices not stated by the paper
-------------------------------
* Test time: the harness scores ``test_crops`` evenly spaced crops of ``patch_frames`` frames (None: the
  fewest covering the track; a 323-frame feature is one crop) and averages their logits; representations are
  averaged over the same crops. For COSINE that is the mean of the cosines, not the cosine of the mean vector.
* The 2048-d MSD-I representation is the flatten of the last pooled map (256 filters x 8 frames for 323
  frames, valid convolutions), connected directly to the output layer, as Section 6.2 describes; other patch
  lengths give another width. Convolutions are unpadded throughout, which reproduces Table 6's parameter counts
  for 4x96 and 4x70 (e.g. LOW-4x70 LOGISTIC 0.35 M with 250 labels); for 3x3 it gives fewer than Table 6
  (LOW 0.29 M vs 0.5 M, HIGH 8.0 M vs 16.5 M), so the paper's 3x3 net must differ from Table 5 in some way
  it does not state. No batch normalisation (option ``batch_norm``). For other heights than 96 bins the
  "70" kernel is scaled to ``round(bins * 70 / 96)``.
* Dropout of the MuMu nets (HIGH + COSINE only, 0.5): after every conv layer, like the MSD-I net. Fusion
  network dropout: 0.5, or 0.7 with COSINE (``head_dropout``); LOGISTIC multi-label is not stated: 0.5.
* Inputs: the CQT is standardised with one mean and std of the training patches; TF-IDF rows are fed raw;
  image embeddings and vector audio inputs are standardised per column; representations are fed raw to the
  l2-normalising fusion network. Before the joint space both representations are l2-normalised.
* Joint space: hidden width of the tanh layer ``mm_hidden=512``; no biases (as the formula); the negatives are
  drawn uniformly among the other training items each epoch; Adam with the model's ``lr`` and ``batch_size``,
  early stopping on the validation loss (negatives of the validation part drawn once, seeded). With
  ``mm_image='branch'`` (default) the image side is the trained image head's representation (the analogue of
  the fine-tuned CNN_VISUAL), with 'embedding' the standardised frozen embedding.
* Optimisation: Adam (lr 1e-3, the paper's "default parameters"), batch 32, at most 100 epochs, early stopping
  with patience 10 on the validation loss, for every stage; the validation part is the split's VALID rows
  (``genre train``) or a seeded carve, the same rows for every stage of one fit.
* COSINE decisions (the paper only ranks): labels whose cosine exceeds ``threshold``; None tunes it on the
  validation part (else the training rows) for the best micro F1. LOGISTIC: probability above ``threshold``
  (None: 0.5). The label factorisation is fitted on the training and validation annotations (as the paper),
  or the training ones (``factor_fit='train'``).
* Album labels for album averaging: the union of the group's tracks' labels (multi-label), the most common
  class (single-label).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from genrecli import ui
from genrecli.device import resolve_device
from genrecli.errors import UsageError
from genrecli.models.base import GenreModel, params_from_json, params_to_json
from genrecli.models.neural.harness import HARNESS_DEFAULTS, _row_shape, make_adam, take_rows
from genrecli.models.neural.oramas_branches import (
    AudioNet, FusionNet, ImageHeadNet, OramasNet, TextNet, resolve_target,
)
from genrecli.models.neural.oramas_nets import Projection, cosine_negative_loss

__all__ = ["JointSpace", "OramasAudio", "OramasFusion", "OramasImage", "OramasMMAudio", "OramasText"]

HEADS = ("auto", "fusion", "branch")
MM_FEATURES = ("mm", "cnn+mm")
MM_IMAGES = ("branch", "embedding")
_BRANCH_CLASSES = {cls.__name__: cls for cls in (AudioNet, TextNet, ImageHeadNet, FusionNet)}
#: Harness parameters every stage receives (the Oramas defaults: batch 32, <= 100 epochs, early stopping).
_HARNESS = {**HARNESS_DEFAULTS, "batch_size": 32, "max_epochs": 100, "patience": 10}
#: Every option of any Oramas model and its default (each class's __init__ lists the ones it takes).
DEFAULTS = dict(
    target="auto", factor_dim=50, factor_fit="train+valid", threshold=None, head="auto", head_dropout=None,
    group_key=None, arch="auto", audio_dropout=None, batch_norm=False, patch_frames=323, test_crops=None,
    text_hidden=(2048, 2048), text_dropout=0.5, image_hidden=(2048,), image_dropout=0.5, mm_dim=200,
    mm_hidden=512, mm_margin=0.5, mm_features="mm", mm_image="branch", joint_space=False,
)
MM_AUDIO, MM_IMAGE = "mm/audio", "mm/image"


# ------------------------------------------------------------------------------------------------ joint space
class JointSpace:
    """The audio-visual joint space of Section 3.4 (see the module docstring); numpy in, numpy out."""

    def __init__(self, *, dim=200, hidden=512, margin=0.5, max_epochs=100, batch_size=32, lr=1e-3, patience=10,
                 seed=0, device="cpu"):
        self.dim, self.hidden, self.margin = int(dim), int(hidden), float(margin)
        self.max_epochs, self.batch_size, self.lr = int(max_epochs), int(batch_size), float(lr)
        self.patience, self.seed, self.device = int(patience), int(seed), device

    @staticmethod
    def _unit(X) -> torch.Tensor:
        X = torch.as_tensor(np.asarray(X, dtype=np.float32))
        return torch.nn.functional.normalize(X, dim=1, eps=1e-12)

    def build(self, d_audio: int, d_image: int) -> "JointSpace":
        """Fresh projections, initialised from ``seed`` (the global torch generator is left untouched)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.audio_net = Projection(d_audio, self.hidden, self.dim)
            self.image_net = Projection(d_image, self.hidden, self.dim)
        return self

    def _loss(self, A, V, rows, neg_a, neg_v) -> torch.Tensor:
        ea, ev = self.audio_net(A[rows]), self.image_net(V[rows])
        return cosine_negative_loss(ea, ev, self.audio_net(A[neg_a]), self.image_net(V[neg_v]), self.margin)

    @staticmethod
    def _negatives(rows: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """Another item for each row: uniform over the n - 1 others."""
        return (rows + rng.integers(1, n, size=len(rows))) % n

    def fit(self, A, V, A_val=None, V_val=None) -> "JointSpace":
        n = len(A)
        if n < 2:
            raise UsageError("the joint audio-visual space needs at least 2 training items")
        device = resolve_device(self.device)
        rng = np.random.default_rng(self.seed)
        self.build(np.shape(A)[1], np.shape(V)[1])
        self.audio_net.to(device), self.image_net.to(device)
        At, Vt = self._unit(A).to(device), self._unit(V).to(device)
        val = None
        if A_val is not None and len(A_val) >= 2:
            vrows = np.arange(len(A_val))
            vrng = np.random.default_rng(self.seed + 1)
            val = (self._unit(A_val).to(device), self._unit(V_val).to(device), vrows,
                   self._negatives(vrows, len(vrows), vrng), self._negatives(vrows, len(vrows), vrng))
        params = [*self.audio_net.parameters(), *self.image_net.parameters()]
        opt = make_adam(params, lr=self.lr)
        best, best_state, bad, self.history_ = math.inf, None, 0, []
        for epoch in range(1, self.max_epochs + 1):
            self.audio_net.train(), self.image_net.train()
            order = rng.permutation(n)
            total = 0.0
            for rows in np.array_split(order, math.ceil(n / self.batch_size)):
                loss = self._loss(At, Vt, rows, self._negatives(rows, n, rng), self._negatives(rows, n, rng))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(rows)
            record = {"epoch": epoch, "train_loss": total / n, "val_loss": None}
            value = record["train_loss"]
            if val is not None:
                with torch.no_grad():
                    self.audio_net.eval(), self.image_net.eval()
                    value = record["val_loss"] = float(self._loss(*val))
            self.history_.append(record)
            if value < best:
                best, bad = value, 0
                best_state = {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}
            else:
                bad += 1
                if val is not None and bad >= self.patience:
                    break
        if best_state is not None:
            self.load_state_dict(best_state)
        self.audio_net.eval(), self.image_net.eval()
        ui.info(f"joint audio-visual space: {len(self.history_)} epochs, best loss {best:.4f}")
        return self

    def embed(self, side: str, X) -> np.ndarray:
        """MM_AUDIO (side 'audio') or MM_VISUAL ('image') vectors (n, dim) of representations ``X``."""
        net = self.audio_net if side == "audio" else self.image_net
        device = resolve_device(self.device)
        net.to(device).eval()
        out = []
        with torch.no_grad():
            X = self._unit(X)
            for start in range(0, len(X), 4096):
                out.append(net(X[start:start + 4096].to(device)).float().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, self.dim), np.float32)

    def state_dict(self, sides=("audio", "image")) -> dict[str, torch.Tensor]:
        out = {}
        for side in sides:
            net = self.audio_net if side == "audio" else self.image_net
            out.update({f"{side}/{k}": v for k, v in net.state_dict().items()})
        return out

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        for side, net in (("audio", self.audio_net), ("image", self.image_net)):
            part = {k[len(side) + 1:]: torch.as_tensor(np.asarray(v)) for k, v in state.items() if k.startswith(side + "/")}
            if part:
                net.load_state_dict(part)


# ------------------------------------------------------------------------------------------------- helpers
def _group_index(groups, n: int) -> tuple[np.ndarray, int]:
    """(inverse (n,), number of groups): groups numbered in order of first appearance."""
    groups = np.asarray(groups, dtype=object).astype(str)
    if len(groups) != n:
        raise UsageError(f"groups has {len(groups)} entries for {n} rows")
    _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))  # rank of each unique key by first appearance
    return order[inverse.ravel()], len(first)


def _group_mean(X: np.ndarray, inverse: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((k, X.shape[1]), dtype=np.float64)
    np.add.at(out, inverse, X)
    return (out / np.bincount(inverse, minlength=k)[:, None]).astype(np.float32)


def _group_labels(y: np.ndarray, inverse: np.ndarray, k: int) -> np.ndarray:
    if y.ndim == 2:
        out = np.zeros((k, y.shape[1]), dtype=np.float32)
        np.maximum.at(out, inverse, (y > 0.5).astype(np.float32))
        return out
    classes, pos = np.unique(y, return_inverse=True)
    counts = np.zeros((k, len(classes)), dtype=np.int64)
    np.add.at(counts, (inverse, pos.ravel()), 1)
    return classes[counts.argmax(axis=1)]


def _route(name: str, shape: tuple[int, ...]) -> str:
    modality = name.split("/", 1)[0]
    patch = len(shape) >= 2
    if modality == "audio":
        return "audio" if patch else "vector"
    if modality in ("text", "image") and not patch:
        return modality
    raise UsageError(f"{name}: the Oramas models take audio patches or audio/text/image vectors, "
                     f"not a {modality} input of shape {tuple(shape)}")


def _best_threshold(scores: np.ndarray, Y: np.ndarray) -> float:
    """The score threshold with the best micro F1 (labels scoring above it are predicted)."""
    Y = Y > 0.5
    candidates = np.unique(np.quantile(scores, np.linspace(0.0, 1.0, 201)))
    best, best_t = -1.0, float(candidates[0]) if len(candidates) else 0.0
    positives = Y.sum()
    for t in candidates:
        pred = scores > t
        f1 = 2.0 * (pred & Y).sum() / max(pred.sum() + positives, 1)
        if f1 > best:
            best, best_t = f1, float(t)
    return best_t


# ------------------------------------------------------------------------------------------------ the models
class _OramasBase(GenreModel):
    """The two-step Oramas model (see the module docstring); subclasses choose the inputs they take."""

    _description = "Oramas et al. model"

    # -- parameters -----------------------------------------------------------------------------------------
    def _p(self, name: str):
        return getattr(self, name, DEFAULTS.get(name, _HARNESS.get(name)))

    def _harness(self, seed: int) -> dict:
        out = {k: getattr(self, k) for k in _HARNESS if k not in ("random_state",)}
        out["random_state"] = seed
        return out

    def _check_params(self) -> None:
        for name, allowed in (("head", HEADS), ("mm_features", MM_FEATURES), ("mm_image", MM_IMAGES)):
            if self._p(name) not in allowed:
                raise UsageError(f"{type(self).__name__}: {name}={self._p(name)!r}; expected one of {', '.join(allowed)}")
        if not 0 < float(self._p("mm_margin")) < 1 and self._uses_joint_space({}):
            raise UsageError(f"{type(self).__name__}: mm_margin must be in (0, 1) (got {self._p('mm_margin')})")
        if self._p("threshold") is not None and not isinstance(self._p("threshold"), (int, float)):
            raise UsageError(f"{type(self).__name__}: threshold must be a number or None")

    def set_checkpoint_dir(self, path) -> "_OramasBase":
        """Checkpoint every harness stage of the next fit under ``path/<stage>`` (and resume from there)."""
        self._checkpoint_dir = None if path is None else Path(path)
        return self

    # -- hooks ------------------------------------------------------------------------------------------------
    def _check_routes(self, routes: Mapping[str, str]) -> None:
        raise NotImplementedError

    def _uses_joint_space(self, routes: Mapping[str, str]) -> bool:
        return False

    def _skip_branch(self, route: str) -> bool:
        """True for an input whose network is not trained (the frozen image side of the joint space)."""
        return False

    def _prediction_inputs(self, routes: Mapping[str, str]) -> list[str]:
        return sorted(routes)

    def _head_mode(self, routes: Mapping[str, str]) -> str:
        head = self._p("head")
        trained = [r for r in routes.values() if r != "vector"]
        if head == "branch":
            if len(routes) != 1 or not trained:
                raise UsageError(f"{type(self).__name__}: head='branch' needs one audio patch, text or image input")
            if self._p("group_key") is not None:
                raise UsageError(f"{type(self).__name__}: group_key averages representations: it needs head='fusion'")
            return "branch"
        if head == "fusion" or len(routes) != 1 or self._p("group_key") is not None or self._uses_joint_space(routes):
            return "fusion"
        return "fusion" if next(iter(routes.values())) in ("audio", "vector") else "branch"

    def _make_branch(self, route: str, seed: int) -> OramasNet:
        common = dict(target=self.target_, factor_dim=self._p("factor_dim"), factor_fit=self._p("factor_fit"),
                      **self._harness(seed))
        if route == "audio":
            return AudioNet(arch=self._p("arch"), dropout=self._p("audio_dropout"), batch_norm=self._p("batch_norm"),
                            patch_frames=self._p("patch_frames"), test_crops=self._p("test_crops"), **common)
        if route == "text":
            drop = float(self._p("text_dropout"))
            return TextNet(hidden=self._p("text_hidden"), dropout=drop, input_dropout=drop, **common)
        return ImageHeadNet(hidden=self._p("image_hidden"), dropout=float(self._p("image_dropout")), **common)

    # -- fit --------------------------------------------------------------------------------------------------
    def fit(self, inputs: Mapping[str, object], y, *, validation=None, groups=None, validation_groups=None,
            checkpoint_dir=None) -> "_OramasBase":
        """Train every stage on ``inputs`` (name -> rows) and ``y`` (class indices or multi-hot).

        ``validation``: ``(inputs, y)`` of the validation part (early stopping of every stage, the COSINE
        threshold); ``groups`` / ``validation_groups``: one group key per row, needed with ``group_key``.
        """
        self._check_params()
        names = self._check_inputs(inputs, fitting=True)
        shapes = {n: _row_shape(inputs[n]) for n in names}
        routes = {n: _route(n, shapes[n]) for n in names}
        self._check_routes(routes)
        y = np.asarray(y)
        multilabel = y.ndim == 2
        self.target_ = resolve_target(self._p("target"), multilabel)
        mode = self._head_mode(routes)
        group_key = self._p("group_key")
        if group_key is not None and groups is None:
            raise UsageError(f"{type(self).__name__}: group_key={group_key!r} averages the representations per group: "
                             "fit needs groups= (one group key per row)")
        if group_key is not None and validation is not None and validation_groups is None:
            raise UsageError(f"{type(self).__name__}: group_key={group_key!r}: a validation part needs validation_groups=")
        val_inputs, y_val = (None, None) if validation is None else validation
        if val_inputs is not None:
            missing = [n for n in names if n not in val_inputs]
            if missing:
                raise UsageError(f"validation inputs lack {', '.join(missing)}")
            y_val = np.asarray(y_val)
        seed = int(self.random_state) if self.random_state is not None else int(np.random.SeedSequence().entropy % (2**31))
        self.seed_ = seed
        ckdir = checkpoint_dir if checkpoint_dir is not None else getattr(self, "_checkpoint_dir", None)

        self.routes_, self.mode_, self.fit_inputs_ = dict(routes), mode, list(names)
        self.branches_, self.scalers_ = {}, {}
        reps, reps_val = {}, {}
        for k, name in enumerate(names):
            if routes[name] == "vector":  # used as given (standardised): TIMBRE-MLP
                self.scalers_[name] = self._fit_scaler(inputs[name])
                reps[name] = self._scale(name, inputs[name])
                if val_inputs is not None:
                    reps_val[name] = self._scale(name, val_inputs[name])
                continue
            if self._skip_branch(routes[name]):
                continue
            branch = self._make_branch(routes[name], seed)
            if ckdir is not None:
                branch.set_checkpoint_dir(Path(ckdir) / f"stage{k}-{routes[name]}")
            ui.info(f"{type(self).__name__}: training the {routes[name]} network on {name}")
            branch.fit({name: inputs[name]}, y,
                       validation=None if val_inputs is None else ({name: val_inputs[name]}, y_val))
            self.branches_[name] = branch
            if mode == "fusion":
                reps[name] = branch.transform({name: inputs[name]})
                if val_inputs is not None:
                    reps_val[name] = branch.transform({name: val_inputs[name]})

        self.joint_ = None
        if self._uses_joint_space(routes):
            reps, reps_val = self._fit_joint_space(routes, inputs, val_inputs, reps, reps_val, seed)
        self.head_inputs_ = sorted(reps)
        self.input_names_ = self._prediction_inputs(routes)
        for name in [n for n in self.branches_ if n not in self.input_names_]:
            del self.branches_[name]  # e.g. the image network of oramas-mm-audio: training only
        for name in [n for n in self.scalers_ if n not in self.input_names_]:
            del self.scalers_[name]
        self.multilabel_ = multilabel

        if mode == "branch":
            only = self.branches_[names[0]]
            self.head_ = None
            self.classes_ = only.classes_
        else:
            head_y, head_val_y = y, y_val
            if group_key is not None:
                inv, k = _group_index(groups, len(y))
                reps = {n: _group_mean(v, inv, k) for n, v in reps.items()}
                head_y = _group_labels(y, inv, k)
                if val_inputs is not None:
                    vinv, vk = _group_index(validation_groups, len(y_val))
                    reps_val = {n: _group_mean(v, vinv, vk) for n, v in reps_val.items()}
                    head_val_y = _group_labels(y_val, vinv, vk)
            dropout = self._p("head_dropout")
            dropout = (0.7 if self.target_ == "cosine" else 0.5) if dropout is None else float(dropout)
            self.head_ = FusionNet(dropout=dropout, target=self.target_, factor_dim=self._p("factor_dim"),
                                   factor_fit=self._p("factor_fit"), **self._harness(seed))
            if ckdir is not None:
                self.head_.set_checkpoint_dir(Path(ckdir) / "stage-head")
            ui.info(f"{type(self).__name__}: training the fusion network on {', '.join(self.head_inputs_)}")
            self.head_.fit(reps, head_y, validation=None if val_inputs is None else (reps_val, head_val_y))
            self.classes_ = self.head_.classes_

        self.threshold_ = None
        if multilabel:
            self.threshold_ = self._fit_threshold(inputs, y, groups, val_inputs, y_val, validation_groups)
        return self

    def _fit_joint_space(self, routes, inputs, val_inputs, reps, reps_val, seed):
        audio = [n for n, r in routes.items() if r == "audio"]
        image = [n for n, r in routes.items() if r == "image"]
        if len(audio) != 1 or len(image) != 1:
            raise UsageError(f"{type(self).__name__}: the joint space needs one audio patch and one image input "
                             f"(got {', '.join(routes)})")
        a, v = audio[0], image[0]
        use_embedding = self._p("mm_image") == "embedding"
        if use_embedding:
            self.scalers_[v] = self._fit_scaler(inputs[v])
        V = self._scale(v, inputs[v]) if use_embedding else reps[v]
        V_val = None
        if val_inputs is not None:
            V_val = self._scale(v, val_inputs[v]) if use_embedding else reps_val[v]
        h = self._harness(seed)
        self.joint_ = JointSpace(dim=self._p("mm_dim"), hidden=self._p("mm_hidden"), margin=self._p("mm_margin"),
                                 max_epochs=h["max_epochs"], batch_size=h["batch_size"], lr=h["lr"],
                                 patience=h["patience"], seed=seed, device=self.device)
        ui.info(f"{type(self).__name__}: training the joint audio-visual space ({a} / {v})")
        self.joint_.fit(reps[a], V, reps_val.get(a), V_val)
        self.joint_pair_ = (a, v)
        return self._joint_features(reps, V), (self._joint_features(reps_val, V_val) if val_inputs is not None else {})

    def _joint_features(self, reps: dict, V) -> dict:
        """The fusion network's inputs given the branch representations (and the image side ``V``)."""
        raise NotImplementedError

    def _fit_threshold(self, inputs, y, groups, val_inputs, y_val, validation_groups) -> float:
        given = self._p("threshold")
        if self.target_ != "cosine":
            p = 0.5 if given is None else float(given)
            if not 0 < p < 1:
                raise UsageError(f"threshold={given}: a LOGISTIC threshold is a probability in (0, 1)")
            return float(np.log(p / (1 - p)))
        if given is not None:
            return float(given)
        if val_inputs is not None and len(y_val):
            scores = self.decision_function(val_inputs, groups=validation_groups)
            return _best_threshold(scores, y_val)
        return _best_threshold(self.decision_function(inputs, groups=groups), y)

    # -- preprocessing ------------------------------------------------------------------------------------------
    @staticmethod
    def _fit_scaler(x) -> tuple[np.ndarray, np.ndarray]:
        X = take_rows(x, np.arange(len(x))).reshape(len(x), -1).astype(np.float64)
        if not np.isfinite(X).all():
            raise UsageError("training rows hold NaN/inf values (failed tracks?); pass valid rows only")
        std = X.std(axis=0)
        return X.mean(axis=0).astype(np.float32), np.where(std > 1e-8, std, 1.0).astype(np.float32)

    def _scale(self, name: str, x) -> np.ndarray:
        mean, std = self.scalers_[name]
        return ((take_rows(x, np.arange(len(x))).reshape(len(x), -1) - mean) / std).astype(np.float32)

    def _sync_device(self) -> None:
        for part in [*self.branches_.values(), self.head_]:
            if part is not None:
                part.device = self.device
        if self.joint_ is not None:
            self.joint_.device = self.device

    def _representations(self, inputs: Mapping[str, object]) -> dict[str, np.ndarray]:
        reps = {}
        for name in self.input_names_:
            if name in self.branches_:
                reps[name] = self.branches_[name].transform({name: inputs[name]})
            elif name in self.scalers_:
                reps[name] = self._scale(name, inputs[name])
        if self.joint_ is not None:  # oramas-fusion: the image representation; oramas-mm-audio: no image
            reps = self._joint_features(reps, reps.get(self.joint_pair_[1]))
        return reps

    # -- predictions --------------------------------------------------------------------------------------------
    def transform(self, inputs: Mapping[str, object]) -> dict[str, np.ndarray]:
        """The fusion network's inputs for ``inputs``: each modality's representation (CNN_AUDIO, the text and
        image representations, MM_AUDIO / MM_VISUAL), per input name, before l2-normalisation."""
        self._require_fitted()
        self._sync_device()
        names = self._check_inputs(inputs, fitting=False)
        return self._representations({n: inputs[n] for n in names})

    def decision_function(self, inputs: Mapping[str, object], *, groups=None) -> np.ndarray:
        """(n, len(classes_)) scores: logits (softmax / LOGISTIC) or cosines to the label vectors (COSINE).

        With ``group_key`` and ``groups`` (one key per row) the representations are averaged per group and
        every row gets its group's scores.
        """
        self._require_fitted()
        self._sync_device()
        names = self._check_inputs(inputs, fitting=False)
        if self.mode_ == "branch":
            name = names[0]
            return self.branches_[name].decision_function({name: inputs[name]})
        reps = self._representations({n: inputs[n] for n in names})
        if self._p("group_key") is not None and groups is not None:
            inv, k = _group_index(groups, self._n_rows(inputs))
            reps = {n: _group_mean(v, inv, k) for n, v in reps.items()}
            return self.head_.decision_function(reps)[inv]
        return self.head_.decision_function(reps)

    def predict_from_scores(self, scores: np.ndarray) -> np.ndarray:
        """Class indices (argmax) or, multi-label, the labels scoring above ``threshold_``."""
        scores = np.asarray(scores)
        if self.multilabel_:
            return scores > self.threshold_
        return np.asarray(self.classes_)[np.argmax(scores, axis=1)]

    def predict(self, inputs, *, groups=None) -> np.ndarray:
        return self.predict_from_scores(self.decision_function(inputs, groups=groups))

    def predict_proba(self, inputs, *, groups=None) -> np.ndarray:
        """Softmax (sigmoid multi-label) of the logits, calibrated by the log-loss training; COSINE:
        ``(cos + 1) / 2``, a score in [0, 1] and not a probability."""
        scores = self.decision_function(inputs, groups=groups)
        if self.target_ == "cosine" and self.multilabel_:
            return (scores + 1.0) / 2.0
        if self.multilabel_:
            return 1.0 / (1.0 + np.exp(-scores))
        z = np.exp(scores - scores.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def _require_fitted(self) -> None:
        if not hasattr(self, "mode_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit first")

    # -- persistence ----------------------------------------------------------------------------------------------
    def get_state(self) -> dict[str, np.ndarray]:
        state = {}
        for name, branch in self.branches_.items():
            state.update({f"branch/{name}/{k}": v for k, v in branch.get_state().items()})
        for name, (mean, std) in self.scalers_.items():
            state[f"scaler/{name}/mean"], state[f"scaler/{name}/std"] = mean, std
        if self.joint_ is not None:
            state.update({f"joint/{k}": v.detach().cpu().numpy() for k, v in self.joint_.state_dict(self._joint_sides()).items()})
        if self.head_ is not None:
            state.update({f"head/{k}": v for k, v in self.head_.get_state().items()})
        return state

    def _joint_sides(self) -> tuple[str, ...]:
        return ("audio", "image")

    def get_meta(self) -> dict:
        def part(model: OramasNet) -> dict:
            return {"class": type(model).__name__, "params": params_to_json(model.get_params(deep=False)),
                    "meta": model.get_meta()}

        meta = {**super().get_meta(), "target": self.target_, "mode": self.mode_, "routes": self.routes_,
                "fit_inputs": self.fit_inputs_, "head_inputs": self.head_inputs_, "seed": self.seed_,
                "threshold": self.threshold_, "branches": {n: part(b) for n, b in self.branches_.items()},
                "head": part(self.head_) if self.head_ is not None else None}
        if self.joint_ is not None:
            j = self.joint_
            meta["joint"] = {"dim": j.dim, "hidden": j.hidden, "margin": j.margin, "pair": list(self.joint_pair_),
                             "d_audio": j.audio_net.w1.in_features, "d_image": j.image_net.w1.in_features,
                             "history": j.history_}
        return meta

    def set_state(self, state: Mapping[str, np.ndarray], meta: Mapping) -> "_OramasBase":
        super().set_state(state, meta)
        self.target_, self.mode_, self.routes_ = meta["target"], meta["mode"], dict(meta["routes"])
        self.fit_inputs_, self.head_inputs_ = list(meta["fit_inputs"]), list(meta["head_inputs"])
        self.seed_, self.threshold_ = meta.get("seed"), meta.get("threshold")

        def rebuild(doc: Mapping, prefix: str) -> OramasNet:
            cls = _BRANCH_CLASSES.get(doc["class"])
            if cls is None:
                raise UsageError(f"unknown Oramas stage class {doc['class']!r} in the artifact")
            model = cls(**params_from_json(doc["params"]))
            sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            return model.set_state(sub, doc["meta"])

        self.branches_ = {n: rebuild(doc, f"branch/{n}/") for n, doc in meta["branches"].items()}
        self.head_ = rebuild(meta["head"], "head/") if meta.get("head") else None
        self.scalers_ = {}
        for key in state:
            if key.startswith("scaler/") and key.endswith("/mean"):
                name = key[len("scaler/"):-len("/mean")]
                self.scalers_[name] = (np.asarray(state[key]), np.asarray(state[f"scaler/{name}/std"]))
        self.joint_ = None
        if meta.get("joint"):
            j = meta["joint"]
            self.joint_ = JointSpace(dim=j["dim"], hidden=j["hidden"], margin=j["margin"], device=self.device)
            self.joint_.build(int(j["d_audio"]), int(j["d_image"]))
            self.joint_.load_state_dict({k[len("joint/"):]: v for k, v in state.items() if k.startswith("joint/")})
            self.joint_.history_ = list(j.get("history", []))
            self.joint_pair_ = tuple(j["pair"])
        return self


_COMMON_DOC = """
    Parameters (every stage; see the module docstring for what the paper states and what is chosen)
    ----------
    target : 'auto' (softmax single-label, logistic multi-label), 'softmax', 'logistic' or 'cosine'.
    factor_dim : int, label factors of the COSINE target (50). factor_fit : 'train+valid' or 'train'.
    threshold : None or float, multi-label decisions (LOGISTIC: a probability, default 0.5; COSINE: a cosine,
        default tuned for micro F1 on the validation part).
    head : 'auto', 'fusion' (train the fusion network on the representation) or 'branch' (the modality
        network's own output layer predicts). head_dropout : None (0.5, 0.7 with COSINE) or float.
    group_key : None or a group name (e.g. 'album'): average representations per group (needs ``groups=``).
    max_epochs=100, batch_size=32, optimizer='adam', lr=1e-3, momentum, weight_decay=0, lr_schedule='constant',
    lr_step_size, lr_gamma, class_weight=None, val_fraction=0.1, monitor='loss', patience=10, amp, amp_dtype,
    random_state, device: the harness's (:class:`~genrecli.models.neural.harness.NeuralModel`), for every stage.
"""
_AUDIO_DOC = """    arch : 'auto' ('msd' single-label; 'high-4x70' COSINE / 'low-4x70' LOGISTIC multi-label), 'msd',
        'low-3x3', 'high-3x3', 'low-4x96', 'high-4x96', 'low-4x70', 'high-4x70'.
    audio_dropout : None (0.5 for 'msd' and HIGH + COSINE, else 0) or float. batch_norm : bool (False).
    patch_frames : int, training crop (323 = the 15 s patch). test_crops : None or int, crops averaged.
"""
_TEXT_DOC = """    text_hidden : widths of the VSM network (2048, 2048). text_dropout : input and hidden dropout (0.5).
"""
_IMAGE_DOC = """    image_hidden : widths of the image head (2048,). image_dropout : its dropout (0.5).
"""
_MM_DOC = """    mm_dim : joint space dimensions (200). mm_hidden : tanh layer width (512). mm_margin : m (0.5).
"""


def _store(model, values: dict) -> None:
    for name in type(model)._get_param_names():
        setattr(model, name, values[name])


class OramasAudio(_OramasBase):
    """``oramas-audio``: the log-CQT CNN (or, on a vector input, the TIMBRE-MLP baseline), then the fusion
    network on its representation (see the module docstring).""" + _COMMON_DOC + _AUDIO_DOC

    def __init__(self, *, target="auto", factor_dim=50, factor_fit="train+valid", threshold=None, head="auto",
                 head_dropout=None, group_key=None, arch="auto", audio_dropout=None, batch_norm=False,
                 patch_frames=323, test_crops=None, max_epochs=100, batch_size=32, optimizer="adam", lr=1e-3,
                 momentum=0.9, weight_decay=0.0, lr_schedule="constant", lr_step_size=30, lr_gamma=0.1,
                 class_weight=None, val_fraction=0.1, monitor="loss", patience=10, amp=True, amp_dtype="bfloat16",
                 random_state=None, device="cpu"):
        _store(self, locals())

    def _check_routes(self, routes):
        if len(routes) != 1 or next(iter(routes.values())) not in ("audio", "vector"):
            raise UsageError(f"oramas-audio takes one audio input (a log-CQT patch), got {', '.join(routes)}")


class OramasText(_OramasBase):
    """``oramas-text``: the VSM network on a TF-IDF vector (no entity linking: see the module docstring).""" \
        + _COMMON_DOC + _TEXT_DOC

    def __init__(self, *, target="auto", factor_dim=50, factor_fit="train+valid", threshold=None, head="auto",
                 head_dropout=None, group_key=None, text_hidden=(2048, 2048), text_dropout=0.5, max_epochs=100,
                 batch_size=32, optimizer="adam", lr=1e-3, momentum=0.9, weight_decay=0.0, lr_schedule="constant",
                 lr_step_size=30, lr_gamma=0.1, class_weight=None, val_fraction=0.1, monitor="loss", patience=10,
                 amp=True, amp_dtype="bfloat16", random_state=None, device="cpu"):
        _store(self, locals())

    def _check_routes(self, routes):
        if len(routes) != 1 or next(iter(routes.values())) != "text":
            raise UsageError(f"oramas-text takes one text vector input (text/tfidf), got {', '.join(routes)}")


class OramasImage(_OramasBase):
    """``oramas-image``: a head on a frozen cover-art embedding ``image/<backbone>``.""" + _COMMON_DOC + _IMAGE_DOC

    def __init__(self, *, target="auto", factor_dim=50, factor_fit="train+valid", threshold=None, head="auto",
                 head_dropout=None, group_key=None, image_hidden=(2048,), image_dropout=0.5, max_epochs=100,
                 batch_size=32, optimizer="adam", lr=1e-3, momentum=0.9, weight_decay=0.0, lr_schedule="constant",
                 lr_step_size=30, lr_gamma=0.1, class_weight=None, val_fraction=0.1, monitor="loss", patience=10,
                 amp=True, amp_dtype="bfloat16", random_state=None, device="cpu"):
        _store(self, locals())

    def _check_routes(self, routes):
        if len(routes) != 1 or next(iter(routes.values())) != "image":
            raise UsageError(f"oramas-image takes one image vector input (image/<backbone>), got {', '.join(routes)}")


class OramasMMAudio(_OramasBase):
    """``oramas-mm-audio``: trained on an audio patch and an image vector, predicts from the audio alone
    through the joint audio-visual space (MM_AUDIO; ``mm_features='cnn+mm'`` adds CNN_AUDIO).""" \
        + _COMMON_DOC + _AUDIO_DOC + _IMAGE_DOC + _MM_DOC + """    mm_features : 'mm' or 'cnn+mm'.
    mm_image : 'branch' (the trained image head's representation) or 'embedding' (the frozen embedding).
"""

    def __init__(self, *, target="auto", factor_dim=50, factor_fit="train+valid", threshold=None,
                 head_dropout=None, group_key=None, arch="auto", audio_dropout=None, batch_norm=False,
                 patch_frames=323, test_crops=None, image_hidden=(2048,), image_dropout=0.5, mm_dim=200,
                 mm_hidden=512, mm_margin=0.5, mm_features="mm", mm_image="branch", max_epochs=100, batch_size=32,
                 optimizer="adam", lr=1e-3, momentum=0.9, weight_decay=0.0, lr_schedule="constant", lr_step_size=30,
                 lr_gamma=0.1, class_weight=None, val_fraction=0.1, monitor="loss", patience=10, amp=True,
                 amp_dtype="bfloat16", random_state=None, device="cpu"):
        _store(self, locals())

    def _check_routes(self, routes):
        kinds = sorted(routes.values())
        if kinds != ["audio", "image"]:
            raise UsageError("oramas-mm-audio trains on one audio patch (audio/logcqt-oramas) and one image vector "
                             f"(image/<backbone>), got {', '.join(routes)}")

    def _uses_joint_space(self, routes):
        return True

    def _skip_branch(self, route):
        return route == "image" and self._p("mm_image") == "embedding"

    def _prediction_inputs(self, routes):
        return [n for n, r in routes.items() if r == "audio"]

    def _joint_sides(self):
        return ("audio",)

    def _joint_features(self, reps, V):
        a = self.joint_pair_[0]
        out = {MM_AUDIO: self.joint_.embed("audio", reps[a])}
        if self._p("mm_features") == "cnn+mm":
            out[a] = reps[a]
        return out


class OramasFusion(_OramasBase):
    """``oramas-fusion``: each given audio patch, text and image vector through its network, then the fusion
    network on the l2-normalised representations; ``joint_space=True`` (one audio + one image input) adds
    MM_AUDIO and MM_VISUAL (the paper's ALL).""" + _COMMON_DOC + _AUDIO_DOC + _TEXT_DOC + _IMAGE_DOC + _MM_DOC \
        + """    joint_space : bool (False).
"""

    def __init__(self, *, target="auto", factor_dim=50, factor_fit="train+valid", threshold=None,
                 head_dropout=None, group_key=None, arch="auto", audio_dropout=None, batch_norm=False,
                 patch_frames=323, test_crops=None, text_hidden=(2048, 2048), text_dropout=0.5,
                 image_hidden=(2048,), image_dropout=0.5, joint_space=False, mm_dim=200, mm_hidden=512,
                 mm_margin=0.5, max_epochs=100, batch_size=32, optimizer="adam", lr=1e-3, momentum=0.9,
                 weight_decay=0.0, lr_schedule="constant", lr_step_size=30, lr_gamma=0.1, class_weight=None,
                 val_fraction=0.1, monitor="loss", patience=10, amp=True, amp_dtype="bfloat16", random_state=None,
                 device="cpu"):
        _store(self, locals())

    def _head_mode(self, routes):
        return "fusion"

    def _check_routes(self, routes):
        if not routes:
            raise UsageError("oramas-fusion needs at least one input")

    def _uses_joint_space(self, routes):
        return bool(self._p("joint_space"))

    def _joint_features(self, reps, V):
        a, v = self.joint_pair_
        return {**reps, MM_AUDIO: self.joint_.embed("audio", reps[a]), MM_IMAGE: self.joint_.embed("image", V)}
