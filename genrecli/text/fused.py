"""Fused bf16 CPU computation of BERT-style layers, for CPUs whose bfloat16 matmuls have no AMX (issue 14).

On an AVX512-BF16 CPU without AMX (a Zen 4 EPYC), a bf16 MiniLM batch of 16 clips of 512 tokens spent 39 %
of its time in torch's CPU flash attention, which computes bfloat16 inputs no faster than float32 ones (60 vs
63 ms per layer), and 6 % in a GELU pass over the feed-forward activations, while oneDNN's bfloat16 matmuls
run at twice the float32 rate. Two replacements, each the same arithmetic to bf16 rounding:

- :func:`blocked_attention` computes softmax(q k^T) v with oneDNN matmuls, one clip and a block of heads at a
  time, so that the block's scores (6 heads x 512 x 512 in bf16: 3 MiB) stay in cache between the two
  products and the softmax. It is registered with transformers' attention interface under :data:`NAME`
  (with SDPA's mask format), so any model of the interface (BERT, RoBERTa, ...) uses it once
  ``config._attn_implementation`` names it. Calls it does not cover (dropout, a causal mask, grouped
  key/value heads, extra arguments such as ``position_bias`` or ``softcap``) go to transformers' SDPA
  function unchanged. Whole-batch matmul attention is slower than SDPA there (the scores, 50 M values per
  layer, go to memory and back).
- :class:`LinearGELU` computes a feed-forward block's first linear layer and its exact GELU in one oneDNN
  matmul (the GELU as its post-op), so the 12.6 M activations of a batch are written once, not written,
  read and written again.

Measured on the EPYC (BENCHMARKS.md, text section and seventh pass): a 16 x 512 batch 11 % faster with the
attention alone and 19 % with both (medians of 20 alternated runs); bench_text's 93 kern-eras clips in 3.83 s
instead of 4.49 s, 2.53x fp32's clips/s instead of 2.16x; text vectors within cosine 0.99997 of fp32 as
before. :func:`fuse` applies both to a model.
"""

from __future__ import annotations

import contextlib
import contextvars
import weakref

import torch

NAME = "genre_blocked"  # the attention implementation's name in transformers' registry
# per layer of a 16 x 512 MiniLM batch on the EPYC: 4 or 6 heads 43-45 ms, all 12 at once 53 (the scores leave
# the cache), 1 or 2 50-59 (call overheads)
HEADS_PER_BLOCK = 6
# keyword arguments of transformers' attention calls that change nothing here; any other that is set sends the
# call to SDPA
_INERT = {"position_ids", "use_cache", "output_attentions"}


def blocked_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                      **kwargs):
    """softmax(query key^T * scaling + mask) value, one clip and :data:`HEADS_PER_BLOCK` heads at a time.

    Parameters
    ----------
    module : torch.nn.Module
        The calling attention module (transformers' attention-interface signature).
    query : torch.Tensor
        (batch, heads, q_tokens, head_dim).
    key, value : torch.Tensor
        (batch, heads, k_tokens, head_dim).
    attention_mask : torch.Tensor or None
        SDPA's format: boolean (True: attend) or additive float, broadcastable to
        (batch, 1, q_tokens, k_tokens); a mask per head goes to SDPA.
    scaling : float, optional
        Score scale; None is head_dim ** -0.5.

    Returns
    -------
    tuple
        (batch, q_tokens, heads, head_dim) contiguous output, as transformers' SDPA function returns it, and
        None (no attention weights).
    """
    causal = getattr(module, "is_causal", False) if is_causal is None else is_causal
    plain = (not dropout and not (causal and query.shape[2] > 1) and key.shape[1] == query.shape[1]
             and value.shape[-1] == query.shape[-1] and (attention_mask is None or attention_mask.shape[1] == 1)
             and all(k in _INERT or v is None or v is False for k, v in kwargs.items()))
    if not plain:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    batch, heads, tokens, size = query.shape
    scale = size ** -0.5 if scaling is None else scaling
    out = torch.empty(batch, tokens, heads, size, dtype=query.dtype, device=query.device)
    lengths = _padding_lengths(attention_mask)
    for b in range(batch):
        mask = None if attention_mask is None else attention_mask[min(b, attention_mask.shape[0] - 1)]
        keys = lengths[min(b, len(lengths) - 1)]
        if keys is not None:  # a key-padding mask: the padded keys' weights are exactly 0, so leave them out
            mask = None
        # one contiguous copy of the clip's queries (scaled on the way), keys (transposed) and values
        q = query[b] * scale
        k = key[b, :, :keys].transpose(-1, -2).contiguous()
        v = value[b, :, :keys].contiguous()
        for h in range(0, heads, HEADS_PER_BLOCK):
            scores = torch.matmul(q[h : h + HEADS_PER_BLOCK], k[h : h + HEADS_PER_BLOCK])
            if mask is not None:
                if mask.dtype == torch.bool:
                    scores.masked_fill_(~mask, float("-inf"))
                else:
                    scores.add_(mask)
            weights = torch.softmax(scores, dim=-1)
            out[b, :, h : h + HEADS_PER_BLOCK] = torch.matmul(weights, v[h : h + HEADS_PER_BLOCK]).transpose(0, 1)
    return out, None


def _padding_lengths(attention_mask):
    """Per clip (row of the mask), the number of leading keys a boolean (batch, 1, q_tokens, k_tokens) mask
    keeps where it keeps the same leading keys for every query (padding at the end of a clip, SDPA's format),
    else None; [None] for no mask or a mask of another kind. Every layer of a forward pass gets the same mask
    object, so inside :func:`one_mask_scan_per_batch` the answer for the last mask is kept (weakly) and the scan
    runs once per batch, not once per layer."""
    if attention_mask is None or attention_mask.dtype != torch.bool or attention_mask.dim() != 4 \
            or attention_mask.shape[1] != 1:
        return [None]
    cache = _MASK_SCAN_CACHE.get()
    if cache is not None and cache[0] is not None and cache[0]() is attention_mask:
        return cache[1]
    kept_by_all, kept_by_any = attention_mask.all(dim=-2), attention_mask.any(dim=-2)  # (batch, 1, k_tokens)
    keys = kept_by_all.sum(dim=-1)  # (batch, 1)
    prefix = torch.arange(attention_mask.shape[-1], device=attention_mask.device) < keys[..., None]
    padding = (keys > 0) & (kept_by_all == kept_by_any).all(dim=-1) & (kept_by_all == prefix).all(dim=-1)
    lengths = [int(k) if ok else None for k, ok in zip(keys[:, 0].tolist(), padding[:, 0].tolist())]
    if cache is not None:
        cache[:] = [weakref.ref(attention_mask), lengths]
    return lengths


# [weak reference to the last mask scanned, its padding lengths] inside one_mask_scan_per_batch, else None
_MASK_SCAN_CACHE = contextvars.ContextVar("genre_mask_scan_cache", default=None)


@contextlib.contextmanager
def one_mask_scan_per_batch():
    """Context in which :func:`blocked_attention` scans each attention mask object once (for a caller, such as
    :meth:`genrecli.text.encoders.TransformerEncoder.encode`, whose masks are built afresh for every forward pass
    and never changed in place): about 3 % of a bf16 batch's time otherwise."""
    token = _MASK_SCAN_CACHE.set([None, None])
    try:
        yield
    finally:
        _MASK_SCAN_CACHE.reset(token)


class LinearGELU(torch.nn.Module):
    """``gelu(dense(x))`` of a feed-forward block (``intermediate``) as one oneDNN matmul with a GELU post-op.

    Holds the block's own ``dense`` layer (its parameters are not copied). Input (..., hidden), output
    (..., intermediate); CPU tensors. :meth:`fits` tells which blocks it can stand for.
    """

    def __init__(self, block):
        super().__init__()
        self.dense = block.dense
        self.approximate = _gelu_approximation(block)

    @staticmethod
    def fits(block) -> bool:
        """Whether ``block`` is a BERT-style feed-forward block (``dense`` Linear, then ``intermediate_act_fn``
        a GELU) whose forward is exactly that, and this torch has oneDNN's fused op."""
        return (feed_forward_gelu(block) is not None and torch.backends.mkldnn.is_available()
                and hasattr(torch.ops.mkldnn, "_linear_pointwise"))

    def forward(self, hidden_states):
        return torch.ops.mkldnn._linear_pointwise(hidden_states, self.dense.weight, self.dense.bias, "gelu", [],
                                                  self.approximate)


def feed_forward_gelu(block):
    """oneDNN's name for the GELU of a BERT-style feed-forward block (``...Intermediate``: a ``dense`` Linear,
    then ``intermediate_act_fn``): 'none' (exact erf) or 'tanh'; None where ``block`` is not such a block or
    its activation is not a GELU."""
    if not (type(block).__name__.endswith("Intermediate") and isinstance(getattr(block, "dense", None),
                                                                        torch.nn.Linear)):
        return None
    return _gelu_approximation(block)


def _gelu_approximation(block):
    """oneDNN's name for the block's GELU ('none': exact erf, 'tanh'), or None where it is not a GELU."""
    from transformers.activations import GELUActivation

    act = getattr(block, "intermediate_act_fn", None)
    if isinstance(act, torch.nn.GELU):
        return act.approximate
    if type(act) is GELUActivation and act.act is torch.nn.functional.gelu:
        return "none"
    return None


def fuse(model) -> None:
    """Make ``model`` (CPU, eval) use :func:`blocked_attention` and, in every BERT-style layer whose
    feed-forward block fits, :class:`LinearGELU`."""
    if hasattr(getattr(model, "config", None), "_attn_implementation"):
        model.config._attn_implementation = register()
    layers = getattr(getattr(model, "encoder", None), "layer", None) or []
    for layer in layers:
        # a FirstTokenLastLayer wraps the layer it restricts; its feed-forward block is the wrapped one's
        inner = getattr(layer, "layer", layer)
        block = getattr(inner, "intermediate", None)
        if block is not None and not isinstance(block, LinearGELU) and LinearGELU.fits(block):
            inner.intermediate = LinearGELU(block)


def register() -> str:
    """Register :func:`blocked_attention` (and SDPA's mask format) with transformers under :data:`NAME`;
    idempotent. Returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, blocked_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
