"""The last layer of a BERT-style encoder restricted to the first token's row ([CLS] pooling, bf16 runtime)."""

from __future__ import annotations

import contextlib

import torch


class FirstTokenLastLayer(torch.nn.Module):
    """A BERT-style last layer that, inside :meth:`first_token_only`, outputs only the first token's row.

    With [CLS] pooling that row is all the encoder keeps, and in the last layer it needs the keys and
    values of every token but the query, attention output and feed-forward block of its own row alone:
    about 14 % fewer of MiniLM's flops at 512 tokens (the measured gain: BENCHMARKS.md, text section). The
    arithmetic of that row is the layer's own (its modules, SDPA with the model's mask), so it matches the
    full layer to rounding. Outside the context, and for masks it does not know, it is the wrapped layer.
    Output inside the context: (batch, 1, hidden).
    """

    def __init__(self, layer):
        super().__init__()
        self.layer = layer
        self.enabled = False

    @staticmethod
    def fits(layer) -> bool:
        """Whether ``layer`` has the BERT module layout (and is an encoder layer, no cross-attention)."""
        attention = getattr(layer, "attention", None)
        own = getattr(attention, "self", None)
        parts = (getattr(attention, "output", None), getattr(layer, "intermediate", None),
                 getattr(layer, "output", None))
        return (own is not None and all(p is not None for p in parts)
                and all(hasattr(own, a) for a in ("query", "key", "value", "num_attention_heads",
                                                  "attention_head_size", "scaling"))
                and not getattr(layer, "is_decoder", False) and not getattr(layer, "add_cross_attention", False))

    @contextlib.contextmanager
    def first_token_only(self):
        self.enabled = True
        try:
            yield
        finally:
            self.enabled = False

    def forward(self, hidden_states, attention_mask=None, *args, **kwargs):
        if not self.enabled or (attention_mask is not None and attention_mask.dim() != 4):
            return self.layer(hidden_states, attention_mask, *args, **kwargs)
        own = self.layer.attention.self
        batch, tokens, _ = hidden_states.shape
        heads, size = own.num_attention_heads, own.attention_head_size
        first = hidden_states[:, :1]
        query = own.query(first).view(batch, 1, heads, size).transpose(1, 2)
        key = own.key(hidden_states).view(batch, tokens, heads, size).transpose(1, 2)
        value = own.value(hidden_states).view(batch, tokens, heads, size).transpose(1, 2)
        mask = None if attention_mask is None else attention_mask[:, :, :1, :]
        context = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask,
                                                                   scale=own.scaling)
        attended = self.layer.attention.output(context.transpose(1, 2).reshape(batch, 1, heads * size), first)
        return self.layer.output(self.layer.intermediate(attended), attended)

