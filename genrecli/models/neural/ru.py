"""``ru``: Ru et al. (ICASSP 2023), audio + lyrics with symmetric cross-modal attention (SCMA), an
audio-lyrics contrastive loss (A-L) and a genre-correlation graph convolution network (GCEM).

The model, the paper's choices and ours are described in :class:`RuModel`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from genrecli import ui
from genrecli.errors import UsageError
from genrecli.models.neural.harness import (
    NeuralModel,
    _as_rows,
    _carve,
    _fixed_crop,
    _random_crops,
    as_int_tuple,
    store_params,
    take_rows,
)

DENOMINATORS = ("i", "j")
CLIP_MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps its logit scale (1 / temperature) at 100
THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)


# ------------------------------------------------------------------------------------------- graph
def cooccurrence_probability(Y: np.ndarray, *, denominator: str = "i") -> np.ndarray:
    """A1, the co-occurrence conditional probability of the labels of a multi-hot ``Y`` (n, L).

    ``denominator='i'``: ``A1[i, j] = P(L_j | L_i) = N(L_i, L_j) / N(L_i)`` (each row conditions on its
    label; our reading of the paper's Eq. 2). ``'j'``: ``N(L_i, L_j) / N(L_j)`` as Eq. 2 is printed.
    Labels that never occur get zero rows (``'i'``) or columns (``'j'``). The diagonal is 1 for every label
    that occurs.
    """
    if denominator not in DENOMINATORS:
        raise UsageError(f"cooc_denominator={denominator!r}; expected one of {', '.join(DENOMINATORS)}")
    Y = np.asarray(Y, dtype=np.float64)
    joint = Y.T @ Y  # N(L_i, L_j); its diagonal is N(L_i)
    counts = np.diag(joint).copy()
    safe = np.where(counts > 0, counts, 1.0)
    return joint / safe[:, None] if denominator == "i" else joint / safe[None, :]


def cosine_similarity(F: np.ndarray) -> np.ndarray:
    """A2 = cos(F_i, F_j) of the node features (L, d); zero rows give zero similarity."""
    F = np.asarray(F, dtype=np.float64)
    norm = np.linalg.norm(F, axis=1, keepdims=True)
    U = F / np.where(norm > 0, norm, 1.0)
    return U @ U.T


def correlation_matrix(Y: np.ndarray | None, node_features: np.ndarray | None, n_labels: int, *,
                       multilabel: bool, denominator: str = "i") -> np.ndarray:
    """The GCEM correlation matrix A before normalisation (see :class:`RuModel`, "Choices").

    multi-label with name embeddings: ``(A1 + max(A2, 0)) / 2`` (the paper); multi-label without them
    (learned nodes): ``A1``; single-label (no co-occurrence) with them: ``max(A2, 0)``; otherwise ``I``.
    """
    sim = None if node_features is None else np.maximum(cosine_similarity(node_features), 0.0)
    if multilabel and Y is not None:
        co = cooccurrence_probability(Y, denominator=denominator)
        return co if sim is None else 0.5 * (co + sim)
    return np.eye(n_labels) if sim is None else sim


def normalize_adjacency(A: np.ndarray, *, self_loops: bool = True) -> np.ndarray:
    """Kipf & Welling's renormalisation ``D^-1/2 (A + I) D^-1/2``, D the row sums of ``A + I``."""
    A = np.asarray(A, dtype=np.float64)
    if self_loops:
        A = A + np.eye(len(A))
    degree = A.sum(axis=1)
    inv = np.where(degree > 0, 1.0 / np.sqrt(np.where(degree > 0, degree, 1.0)), 0.0)
    return inv[:, None] * A * inv[None, :]


# ------------------------------------------------------------------------------------------- losses
def info_nce(audio: torch.Tensor, lyrics: torch.Tensor, logit_scale: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP): ``(L_A->L + L_L->A) / 2`` over the B pairs of a batch, pair i positive.

    ``audio``, ``lyrics``: (B, k) projections g_a(E_a), g_l(E_l); ``logit_scale``: log(1 / tau), clamped at
    log(100) as CLIP does. A batch of one pair has no negatives: the loss is 0.
    """
    audio, lyrics = audio.float(), lyrics.float()
    if normalize:
        audio = nn.functional.normalize(audio, dim=1)
        lyrics = nn.functional.normalize(lyrics, dim=1)
    scale = logit_scale.float().clamp(max=CLIP_MAX_LOGIT_SCALE).exp()
    logits = scale * audio @ lyrics.T  # s(A_i, L_j) / tau
    target = torch.arange(len(audio), device=audio.device)
    return 0.5 * (nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target))


def _masked_mean(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    w = keep.unsqueeze(-1).to(x.dtype)
    return (x * w).sum(1) / w.sum(1).clamp(min=1.0)


# ------------------------------------------------------------------------------------------- modules
class _AudioEncoder(nn.Module):
    """Five blocks of 3x3 conv + batch norm + ReLU + 2x2 max-pool on the mel-spectrogram, then each time
    step's (channels x remaining bands) column projected to ``d_model``: a sequence of frame embeddings."""

    def __init__(self, in_channels: int, height: int, channels: tuple[int, ...], d_model: int):
        super().__init__()
        blocks, c, h = [], in_channels, height
        for out in channels:
            blocks += [nn.Conv2d(c, out, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2, ceil_mode=True)]
            c, h = out, math.ceil(h / 2)
        self.blocks = nn.Sequential(*blocks)
        self.proj = nn.Linear(c * h, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:  # (batch, mels, frames) -> one channel
            x = x.unsqueeze(1)
        z = self.blocks(x)  # (batch, C, mels', frames')
        z = z.flatten(1, 2).transpose(1, 2)  # (batch, frames', C * mels')
        return self.proj(z)


class CrossModalAttention(nn.Module):
    """Eq. 1: ``softmax(Q_a K_b^T / sqrt(d)) V_b``, queries from one modality, keys and values from the
    other (``nn.MultiheadAttention``: projections of Q, K, V and of the output), keys at padded positions
    masked; then ``LayerNorm(query + attention)`` when ``residual``."""

    def __init__(self, d_model: int, heads: int, residual: bool = True):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, heads, batch_first=True)
        self.residual = residual
        self.norm = nn.LayerNorm(d_model) if residual else nn.Identity()

    def forward(self, query: torch.Tensor, context: torch.Tensor, context_keep: torch.Tensor | None = None) -> torch.Tensor:
        pad = None if context_keep is None else ~context_keep
        out, _ = self.attn(query, context, context, key_padding_mask=pad, need_weights=False)
        return self.norm(query + out) if self.residual else out


class SCMA(nn.Module):
    """Two symmetric cross-modal attentions: audio queries over lyrics keys/values, lyrics queries over
    audio keys/values; each output mean-pooled over its (real) query positions and the two concatenated."""

    def __init__(self, d_model: int, heads: int, residual: bool = True):
        super().__init__()
        self.audio_cma = CrossModalAttention(d_model, heads, residual)
        self.lyrics_cma = CrossModalAttention(d_model, heads, residual)

    def forward(self, audio: torch.Tensor, lyrics: torch.Tensor, lyrics_keep: torch.Tensor) -> torch.Tensor:
        a = self.audio_cma(audio, lyrics, lyrics_keep)
        lyr = self.lyrics_cma(lyrics, audio, None)
        return torch.cat([a.mean(1), _masked_mean(lyr, lyrics_keep)], dim=1)


class GCEM(nn.Module):
    """Two-layer GCN (Kipf & Welling): ``H1 = LeakyReLU(A_hat H0 W0)``, ``H2 = A_hat H1 W1``; H0 are the
    genre nodes (fixed name embeddings, a buffer, or learned), ``A_hat`` the renormalised correlations."""

    def __init__(self, nodes: torch.Tensor, adjacency: torch.Tensor, hidden: int, out_dim: int, learned: bool):
        super().__init__()
        if learned:
            self.nodes = nn.Parameter(nodes.clone())
        else:
            self.register_buffer("nodes", nodes.clone())
        self.register_buffer("adjacency", adjacency.clone())
        self.w0 = nn.Linear(nodes.shape[1], hidden, bias=False)
        self.w1 = nn.Linear(hidden, out_dim, bias=False)
        self.act = nn.LeakyReLU(0.2)

    def forward(self) -> torch.Tensor:
        h = self.act(self.adjacency @ self.w0(self.nodes))
        return self.adjacency @ self.w1(h)  # (L, out_dim)


class _RuNet(nn.Module):
    def __init__(self, *, audio_pos: int, text_pos: int, audio_shape, text_dim: int, channels, d_model: int,
                 heads: int, residual: bool, dropout: float, al_dim: int, al_temperature: float, al_normalize: bool,
                 use_al: bool, use_scma: bool, use_gcem: bool, n_outputs: int, gcn_hidden: int,
                 nodes: torch.Tensor | None, adjacency: torch.Tensor | None, learned_nodes: bool):
        super().__init__()
        self.audio_pos, self.text_pos = audio_pos, text_pos
        self.use_al, self.use_scma, self.use_gcem, self.al_normalize = use_al, use_scma, use_gcem, al_normalize
        in_channels = 1 if len(audio_shape) == 2 else audio_shape[0]
        self.audio = _AudioEncoder(in_channels, audio_shape[-2], channels, d_model)
        self.lyrics = nn.Linear(text_dim, d_model)
        if use_scma:
            self.scma = SCMA(d_model, heads, residual)
        if use_al:
            self.g_audio = nn.Linear(d_model, al_dim)
            self.g_lyrics = nn.Linear(d_model, al_dim)
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / al_temperature), dtype=torch.float32))
        self.dropout = nn.Dropout(dropout)
        if use_gcem:
            self.gcem = GCEM(nodes, adjacency, gcn_hidden, 2 * d_model, learned_nodes)
        else:
            self.head = nn.Linear(2 * d_model, n_outputs)
        self._aux = None

    def pop_aux(self) -> torch.Tensor | None:
        """The A-L loss of the last training forward pass (None in eval mode or without A-L); cleared."""
        aux, self._aux = self._aux, None
        return aux

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        audio, text = xs[self.audio_pos], xs[self.text_pos]
        if text.dim() == 2:  # a pooled vector: a sequence of one token
            text = text.unsqueeze(1)
        keep = text.ne(0).any(-1)  # padding = all-zero rows
        keep[:, 0] |= ~keep.any(1)
        a = self.audio(audio)  # (B, Ta, d)
        lyr = self.lyrics(text)  # (B, Tl, d)
        e_audio, e_lyrics = a.mean(1), _masked_mean(lyr, keep)
        if self.use_al and self.training:
            self._aux = info_nce(self.g_audio(e_audio), self.g_lyrics(e_lyrics), self.logit_scale,
                                 normalize=self.al_normalize)
        fused = self.scma(a, lyr, keep) if self.use_scma else torch.cat([e_audio, e_lyrics], dim=1)
        fused = self.dropout(fused)
        if self.use_gcem:
            return fused @ self.gcem().T.to(fused.dtype)
        return self.head(fused)


class _JointLoss(nn.Module):
    """``lambda * L_AL + (1 - lambda) * L_cls`` in training; ``L_cls`` alone on eval-mode logits (validation)."""

    def __init__(self, base: nn.Module, pop_aux, weight: float):
        super().__init__()
        self.base, self.pop_aux, self.weight = base, pop_aux, weight

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = self.base(logits, targets)
        aux = self.pop_aux()
        if aux is None:
            return loss
        return self.weight * aux.float() + (1.0 - self.weight) * loss


class _RowSubset:
    """Rows ``rows`` of a lazily read array-like, itself lazily read (for the validation carve)."""

    def __init__(self, base, rows: np.ndarray):
        self.base, self.rows = base, np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.base.shape[1:])

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            return take_rows(self.base, self.rows[[int(index)]])[0]
        return take_rows(self.base, self.rows[index])


def _subset(x, rows: np.ndarray):
    if isinstance(x, np.ndarray):
        return x[rows]
    if hasattr(x, "subset"):
        return x.subset(rows)
    return _RowSubset(x, rows)


# ------------------------------------------------------------------------------------------- the model
class RuModel(NeuralModel):
    """Ru et al. 2023: multi-modal (audio + lyrics) multi-label genre classifier with SCMA, A-L and GCEM.

    Inputs: exactly one audio input, a mel-spectrogram per track (``audio/logmel-ru``: 128 bands x 1292
    frames, 30 s at 22,050 Hz, hop 512, as the paper), and one text input: a frozen transformer's token
    outputs (``text/minilm-seq``, (T, d) per track, written by ``genre extract-text --sequence``; rows that
    are all zero are padding, so the stored ``lengths`` are not needed) or, when no sequence is at hand, a
    pooled vector (``text/minilm``, (d,)), taken as a sequence of one token (T = 1; the attention over
    lyrics then has a single key and the lyrics attention a single query).

    Network
        * Audio branch: a 5-block CNN (the paper's "five convolutional blocks" after Zhao et al., ICME 2022)
          giving a sequence of frame embeddings (B, T_a, ``d_model``).
        * Lyrics branch: the frozen transformer's token outputs (precomputed: the encoder is never trained),
          a linear projection to ``d_model`` per token.
        * SCMA (``use_scma``): audio cross-modal attention (queries audio frames, keys/values lyrics tokens,
          padded tokens masked) and lyrics cross-modal attention (queries lyrics tokens, keys/values audio
          frames), each mean-pooled over its real query positions; the two are concatenated into the
          fused track vector (2 ``d_model``). Without SCMA: the concatenation of the mean audio frame
          embedding E_a and the masked mean lyrics token embedding E_l.
        * A-L loss (``use_al``): symmetric InfoNCE (CLIP) between ``g_a(E_a)`` and ``g_l(E_l)``, two
          linear projections to ``al_dim``, with the learnable temperature ``tau`` parametrised as
          ``log(1 / tau)`` (initial ``al_temperature`` = 0.07) and ``1 / tau`` clamped at 100, as CLIP.
          Total loss ``al_weight * L_AL + (1 - al_weight) * L_cls`` (``al_weight`` = lambda = 0.3, the paper's
          best; lambda = 1 does not converge there), L_cls the binary cross-entropy (multi-label) or the
          cross-entropy (single-label). Without A-L the loss is L_cls alone.
        * GCEM (``use_gcem``): a two-layer GCN over one node per genre; node features are the genre names
          embedded by the same text encoder (``fit(..., label_embeddings=)``, the ``label_embeddings``
          dataset of the text group, one row per label in the manifest's label order); the class scores
          are the dot products of the fused track vector with each node's output. Without GCEM: a linear
          layer.

    Training (harness defaults changed to the paper's): Adam, lr 1e-4 halved every 50 epochs
    (``lr_schedule='step'``, ``lr_step_size=50``, ``lr_gamma=0.5``), batch size 16. Early stopping on the
    validation part's classification loss (``monitor='loss'``; the A-L term is a training-only loss).
    Multi-label decision threshold: chosen on the validation part (see below), stored, applied by
    ``predict`` (and ``predict_from_scores``, which ``genre train`` uses); ``decision_function`` stays the
    logits, ``predict_proba`` their sigmoid (softmax single-label).

    Ablations: ``use_al``, ``use_scma``, ``use_gcem`` switch the three components, so the paper's Table 2
    (8 rows) is ``-o use_al=false -o use_scma=false -o use_gcem=false`` and so on.

    Metrics: the toolkit's ``genre evaluate`` scores multi-label runs with the **example-based** F-measure
    (mean over tracks of ``2 |Y ∩ P| / (|Y| + |P|)``, 1 when both are empty), micro and macro F1 and macro
    AUC-ROC (:mod:`genrecli.metrics`); it reports no multi-label "accuracy" (the paper's, after its refs. 11
    and 18, is undefined; its usual example-based reading is ``|Y ∩ P| / |Y ∪ P|``).

    Choices not stated by the paper
        * Audio blocks: 3x3 conv (no bias) + batch norm + ReLU + 2x2 max-pool (ceil mode), channels
          ``audio_channels`` = (32, 64, 64, 128, 128); 128 x 1292 becomes 4 bands x 41 steps (~0.74 s each),
          and each step's 128 x 4 values are projected linearly to ``d_model`` = 256. The whole 30 s is
          used (``patch_frames=None``); ``patch_frames`` / ``test_crops`` train on random crops and average
          evenly spaced test crops as the harness does for patches (the text input is never cropped).
        * Attention: ``attn_heads`` = 1 (Eq. 1 is single-head), with Q/K/V and output projections;
          ``scma_residual``: ``LayerNorm(query + attention)`` (transformer style); False: the attention alone.
        * Fused vector: the concatenation (2 ``d_model``), dropout ``dropout`` = 0.2.
        * A-L: embeddings are l2-normalised before the dot product as in CLIP (``al_normalize``; False: the
          raw dot product of Eq. 4); ``al_dim`` = 128; a batch of one pair contributes 0.
        * GCEM: hidden width ``gcn_hidden`` = 512, output 2 ``d_model``; LeakyReLU(0.2) between the layers
          (as ML-GCN), no bias, no activation after the second layer, no per-class bias in the dot product.
          Name embeddings are fixed (frozen, like the encoder). Correlations: ``A = (A1 + A2) / 2`` with
          ``A1[i, j] = P(L_j | L_i) = N(L_i, L_j) / N(L_i)`` (Eq. 2 prints ``N(L_j)`` in the denominator,
          which reads as a typo: ``cooc_denominator='j'`` gives the printed form), counted on the training
          rows only; ``A2`` the cosine similarity of the name embeddings with negative values set to 0 (so
          that every degree is positive). Then ``A_hat = D^-1/2 (A + I) D^-1/2``, D the row sums of A + I.
          Single-label corpora have no co-occurrence: ``A = A2``. ``genre train`` passes the
          ``label_embeddings`` stored with the text input; without them (``fit`` not given
          ``label_embeddings``) the nodes are learned vectors of ``node_dim`` = 256 and ``A = A1``
          (single-label: ``A = I``); a warning says so.
        * Threshold (multi-label): one probability threshold for all labels, the value of 0.05, 0.10, ...,
          0.95 maximising the example-based F-measure on the validation part (ties: nearest 0.5); without a
          validation part 0.5. ``threshold`` = a number fixes it instead.
        * Standardisation: the mel input by one mean/std over the training rows (as ``cnn``), the token
          outputs per dimension over real (non-padding) tokens only; padding rows stay zero.
        * Validation part: the split's VALID rows when ``fit`` gets ``validation``; otherwise
          ``val_fraction`` of the training rows, carved here (as the harness would) so that the threshold
          can be chosen on it. The co-occurrence counts use the remaining training rows only.
        * Epochs: not stated; ``max_epochs`` = 200 with ``patience`` = 20.

    Parameters
    ----------
    audio_channels : tuple of int, the five conv blocks' output channels (also "32,64,64,128,128").
    d_model : int, width of the frame/token embeddings and of the attention.
    attn_heads : int, heads of each cross-modal attention (must divide ``d_model``).
    scma_residual : bool, residual + layer norm around each cross-modal attention.
    dropout : float, dropout on the fused track vector.
    al_dim : int, width of the A-L projections g_a, g_l.
    al_weight : float in [0, 1], lambda of Eq. 7.
    al_temperature : float, initial temperature tau of the A-L loss (learned).
    al_normalize : bool, l2-normalise the A-L projections (CLIP).
    gcn_hidden : int, hidden width of the GCN.
    node_dim : int, width of learned genre nodes (used only without ``label_embeddings``).
    cooc_denominator : 'i' (P(L_j | L_i) = N(L_i L_j) / N(L_i)) or 'j' (Eq. 2 as printed).
    use_al, use_scma, use_gcem : bool, the three components (ablations).
    threshold : 'val' or a probability in (0, 1), the multi-label decision threshold.
    patch_frames : int or None, frames per training crop of the mel input (None: the whole input).
    test_crops : int or None, crops averaged at prediction when ``patch_frames`` is set.
    The other parameters are the harness's (:class:`~genrecli.models.neural.harness.NeuralModel`):
    max_epochs=200, batch_size=16, optimizer='adam', lr=1e-4, momentum=0.9, weight_decay=0.0,
    lr_schedule='step', lr_step_size=50, lr_gamma=0.5, class_weight=None, val_fraction=0.1,
    monitor='loss', patience=20, amp=True, amp_dtype='bfloat16', random_state=None, device='cpu'.

    Attributes
    ----------
    threshold_ : float, the multi-label probability threshold ``predict`` applies (0.5 single-label, unused).
    label_source_ : 'text' (name embeddings given to ``fit``) or 'learned'.
    audio_input_, text_input_ : the names of the two inputs.
    """

    _scaling = "global"  # overridden per input in _fit_scalers

    def __init__(self, *, audio_channels=(32, 64, 64, 128, 128), d_model=256, attn_heads=1, scma_residual=True,
                 dropout=0.2, al_dim=128, al_weight=0.3, al_temperature=0.07, al_normalize=True, gcn_hidden=512,
                 node_dim=256, cooc_denominator="i", use_al=True, use_scma=True, use_gcem=True, threshold="val",
                 patch_frames=None, test_crops=None, max_epochs=200, batch_size=16, optimizer="adam", lr=1e-4,
                 momentum=0.9, weight_decay=0.0, lr_schedule="step", lr_step_size=50, lr_gamma=0.5,
                 class_weight=None, val_fraction=0.1, monitor="loss", patience=20, amp=True, amp_dtype="bfloat16",
                 random_state=None, device="cpu"):
        store_params(self, locals())

    # -- parameters -------------------------------------------------------------------------------------------
    def _check_params(self) -> None:
        super()._check_params()
        name = type(self).__name__
        channels = as_int_tuple(self.audio_channels, "audio_channels")
        if len(channels) < 1:
            raise UsageError(f"{name}: audio_channels needs at least one block")
        for key in ("d_model", "attn_heads", "al_dim", "gcn_hidden", "node_dim"):
            if int(getattr(self, key)) < 1:
                raise UsageError(f"{name}: {key} must be >= 1 (got {getattr(self, key)})")
        if int(self.d_model) % int(self.attn_heads):
            raise UsageError(f"{name}: attn_heads={self.attn_heads} must divide d_model={self.d_model}")
        if not 0.0 <= float(self.al_weight) <= 1.0:
            raise UsageError(f"{name}: al_weight (lambda) must be in [0, 1] (got {self.al_weight})")
        if not float(self.al_temperature) > 0:
            raise UsageError(f"{name}: al_temperature must be > 0 (got {self.al_temperature})")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise UsageError(f"{name}: dropout must be in [0, 1) (got {self.dropout})")
        if self.cooc_denominator not in DENOMINATORS:
            raise UsageError(f"{name}: cooc_denominator={self.cooc_denominator!r}; expected one of i, j")
        self._fixed_threshold()

    def _fixed_threshold(self) -> float | None:
        if self.threshold == "val":
            return None
        try:
            value = float(self.threshold)
        except (TypeError, ValueError):
            value = math.nan
        if not 0.0 < value < 1.0:
            raise UsageError(f"{type(self).__name__}: threshold={self.threshold!r}; expected 'val' or a probability in (0, 1)")
        return value

    # -- roles of the two inputs --------------------------------------------------------------------------------
    def _roles(self, names, shapes) -> tuple[str, str]:
        audio = [n for n in names if n.split("/", 1)[0] == "audio"]
        text = [n for n in names if n.split("/", 1)[0] == "text"]
        if len(names) != 2 or len(audio) != 1 or len(text) != 1:
            raise UsageError(f"ru takes one audio (mel-spectrogram) and one text input, got {', '.join(names)}")
        if len(shapes[audio[0]]) not in (2, 3):
            raise UsageError(f"ru needs a (mels, frames) audio input such as audio/logmel-ru; {audio[0]} has rows of "
                             f"shape {tuple(shapes[audio[0]])}")
        if len(shapes[text[0]]) not in (1, 2):
            raise UsageError(f"ru needs a (tokens, dim) or (dim,) text input; {text[0]} has rows of shape "
                             f"{tuple(shapes[text[0]])}")
        return audio[0], text[0]

    # -- fit ----------------------------------------------------------------------------------------------------
    def fit(self, inputs: Mapping[str, object], y, *, validation=None, label_embeddings=None, checkpoint_dir=None,
            on_epoch_end=None) -> "RuModel":
        """Train; see :meth:`NeuralModel.fit`. ``label_embeddings``: (n_labels, dim) embeddings of the genre
        names (all labels of the corpus, in the order of the label indices of ``y``), the GCEM nodes."""
        self._check_params()
        names = self._check_inputs(inputs, fitting=True)
        inputs = {n: _as_rows(inputs[n]) for n in names}
        self._roles(names, {n: tuple(inputs[n].shape[1:]) for n in names})
        y = np.asarray(y)
        n = len(y)
        if validation is None and float(self.val_fraction) > 0 and n >= 2:
            seed = self.random_state if self.random_state is not None else np.random.SeedSequence().entropy % (2**63)
            tr, va = _carve(y, y.ndim == 2, float(self.val_fraction), np.random.default_rng([int(seed), 0x5275]))
            if len(va):
                validation = ({k: _subset(v, va) for k, v in inputs.items()}, y[va])
                inputs, y = {k: _subset(v, tr) for k, v in inputs.items()}, y[tr]
        multilabel = y.ndim == 2
        n_labels = y.shape[1] if multilabel else None
        classes = np.arange(y.shape[1]) if multilabel else np.unique(y)
        nodes = None
        if label_embeddings is not None:
            emb = np.asarray(label_embeddings, dtype=np.float32)
            if emb.ndim != 2 or (multilabel and len(emb) != n_labels) or (not multilabel and len(emb) <= classes.max()):
                raise UsageError(f"label_embeddings of shape {emb.shape} do not give one row per label "
                                 f"({n_labels if multilabel else f'> {int(classes.max())}'} rows expected)")
            nodes = emb[classes]
        elif self.use_gcem:
            ui.warn("ru: no genre-name embeddings given (fit(..., label_embeddings=)); GCEM uses learned node vectors")
        self.label_source_ = "text" if nodes is not None else "learned"
        A = correlation_matrix(y.astype(np.float64) if multilabel else None, nodes, len(classes),
                               multilabel=multilabel, denominator=self.cooc_denominator)
        if nodes is None:
            gen = torch.Generator().manual_seed(int(self.random_state or 0))
            nodes = (torch.randn(len(classes), int(self.node_dim), generator=gen) / math.sqrt(int(self.node_dim))).numpy()
        self._graph = (torch.from_numpy(np.asarray(nodes, np.float32)),
                       torch.from_numpy(normalize_adjacency(A).astype(np.float32)))
        try:
            super().fit(inputs, y, validation=validation, checkpoint_dir=checkpoint_dir, on_epoch_end=on_epoch_end)
        finally:
            del self._graph
        self.threshold_ = self._choose_threshold(validation)
        return self

    def _choose_threshold(self, validation) -> float:
        fixed = self._fixed_threshold()
        if not self.multilabel_:
            return 0.5
        if fixed is not None:
            return fixed
        if validation is None or len(validation[1]) == 0:
            return 0.5
        from genrecli.metrics import example_f_measure

        val_inputs, val_y = validation
        probs = 1.0 / (1.0 + np.exp(-self.decision_function(val_inputs)))
        Y = np.asarray(val_y) > 0.5
        scores = [example_f_measure(Y, probs > t) for t in THRESHOLD_GRID]
        best = max(scores)
        ties = [t for t, s in zip(THRESHOLD_GRID, scores) if s >= best - 1e-12]
        return float(min(ties, key=lambda t: abs(t - 0.5)))

    # -- harness hooks ------------------------------------------------------------------------------------------
    def _build_network(self, input_shapes: Mapping[str, tuple[int, ...]], n_outputs: int) -> nn.Module:
        audio, text = self._roles(self.input_names_, input_shapes)
        self.audio_input_, self.text_input_ = audio, text
        graph = getattr(self, "_graph", None)
        if graph is None:  # set_state: placeholders of the saved shapes, overwritten by the saved state
            dim = int(self._label_dim)
            graph = (torch.zeros(n_outputs, dim), torch.zeros(n_outputs, n_outputs))
        self._label_dim = int(graph[0].shape[1])
        return _RuNet(
            audio_pos=self.input_names_.index(audio), text_pos=self.input_names_.index(text),
            audio_shape=tuple(input_shapes[audio]), text_dim=int(input_shapes[text][-1]),
            channels=as_int_tuple(self.audio_channels, "audio_channels"), d_model=int(self.d_model),
            heads=int(self.attn_heads), residual=bool(self.scma_residual), dropout=float(self.dropout),
            al_dim=int(self.al_dim), al_temperature=float(self.al_temperature), al_normalize=bool(self.al_normalize),
            use_al=bool(self.use_al), use_scma=bool(self.use_scma), use_gcem=bool(self.use_gcem),
            n_outputs=n_outputs, gcn_hidden=int(self.gcn_hidden), nodes=graph[0], adjacency=graph[1],
            learned_nodes=self.label_source_ == "learned",
        )

    def _criterion(self, train_targets: np.ndarray, n_outputs: int) -> nn.Module:
        base = super()._criterion(train_targets, n_outputs)
        return _JointLoss(base, self.network_.pop_aux, float(self.al_weight))

    def _network_shapes(self) -> dict[str, tuple[int, ...]]:
        width = self._patch_frames()
        out = {name: tuple(shape) for name, shape in self.input_shapes_.items()}
        audio = next(n for n in out if n.startswith("audio/"))
        if width is not None:
            out[audio] = (*out[audio][:-1], min(width, out[audio][-1]))
        return out

    def _fit_scalers(self, part) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Mel input: one mean/std; text: per dimension over the real tokens (padding rows left out)."""
        rows = np.sort(part.rows)
        out = {}
        for name in self.input_names_:
            text = name.startswith("text/")
            s1 = s2 = 0.0
            count = 0
            for start in range(0, len(rows), int(self.batch_size)):
                block = take_rows(part.inputs[name], rows[start:start + int(self.batch_size)]).astype(np.float64)
                if not np.all(np.isfinite(block)):
                    raise UsageError(f"{name}: training rows hold NaN/inf values (failed tracks?); pass valid rows only")
                if text:
                    tok = block[np.any(block != 0, axis=-1)] if block.ndim == 3 else block
                    s1, s2, count = s1 + tok.sum(0), s2 + (tok**2).sum(0), count + len(tok)
                else:
                    s1, s2, count = s1 + block.sum(), s2 + (block**2).sum(), count + block.size
            mean = np.atleast_1d(np.asarray(s1, dtype=np.float64) / max(count, 1))
            var = np.atleast_1d(np.asarray(s2, dtype=np.float64) / max(count, 1)) - mean**2
            std = np.sqrt(np.maximum(var, 0.0))
            std = np.where(std > 1e-6 * np.maximum(np.abs(mean), 1.0), std, 1.0)
            out[name] = (mean.astype(np.float32), std.astype(np.float32))
        return out

    def _batch_tensors(self, inputs, rows, *, train, rng):
        arrays = {}
        for name in self.input_names_:
            block = take_rows(inputs[name], rows)
            mean, std = self.scalers_[name]
            if name == self.text_input_ and block.ndim == 3:
                keep = np.any(block != 0, axis=-1, keepdims=True)
                block = np.where(keep, (block - mean) / std, 0.0).astype(np.float32)
            else:
                block = ((block - mean) / std).astype(np.float32)
            arrays[name] = block
        audio, width = self.audio_input_, self._patch_frames()
        if width is None:
            views = [arrays[audio]]
        elif train:
            views = [_random_crops(arrays[audio], width, rng)]
        else:
            k = self.test_crops or math.ceil(arrays[audio].shape[-1] / width)
            views = [_fixed_crop(arrays[audio], width, i, int(k)) for i in range(int(k))]
        return [tuple(torch.from_numpy(np.ascontiguousarray(v if n == audio else arrays[n])) for n in self.input_names_)
                for v in views]

    def _architecture(self) -> dict:
        return {"audio": self.audio_input_, "text": self.text_input_,
                "audio_channels": list(as_int_tuple(self.audio_channels, "audio_channels")),
                "d_model": int(self.d_model), "use_al": bool(self.use_al), "use_scma": bool(self.use_scma),
                "use_gcem": bool(self.use_gcem), "label_source": self.label_source_, "outputs": len(self.classes_)}

    # -- predictions --------------------------------------------------------------------------------------------
    def predict_from_scores(self, scores: np.ndarray) -> np.ndarray:
        """Labels from ``decision_function`` scores: sigmoid > ``threshold_`` (multi-label) or the argmax."""
        scores = np.asarray(scores)
        if self.multilabel_:
            t = float(self.threshold_)
            return scores > math.log(t / (1.0 - t))
        return np.asarray(self.classes_)[np.argmax(scores, axis=1)]

    def predict(self, inputs) -> np.ndarray:
        return self.predict_from_scores(self.decision_function(inputs))

    # -- persistence --------------------------------------------------------------------------------------------
    def get_meta(self) -> dict:
        return {**super().get_meta(), "threshold": float(self.threshold_), "label_source": self.label_source_,
                "label_dim": int(self._label_dim)}

    def set_state(self, state, meta) -> "RuModel":
        self.label_source_ = meta["label_source"]
        self._label_dim = int(meta["label_dim"])
        self.threshold_ = float(meta["threshold"])
        return super().set_state(state, meta)
