"""The int8 CPU runtime of BERT-style encoders: oneDNN u8 x s8 matmuls for every linear layer (issue 14).

A MiniLM batch on a Zen 4 EPYC (AVX-512 VNNI and BF16, no AMX) spends most of its bf16 time in the linear
layers, which already run near the bf16 peak; oneDNN's u8 x s8 matmul computes them about 1.7x faster again
(8192 x 384 x 1536 with a bf16 output: 12-15 ms against bf16's 23-25). :func:`quantize` replaces every linear
layer of a model's encoder layers with :class:`Int8Linear`:

- Weights: symmetric int8 per output channel (scale = max |w| / 127 of the row), packed once for oneDNN.
- Activations: asymmetric uint8 per tensor, quantized at each call from the tensor's own min and max (dynamic
  quantization: no calibration data, so nothing depends on a corpus). The query, key and value layers share
  one :class:`ActivationQuantizer`, so their common input is quantized once.
- Outputs: float32 (the residual stream, LayerNorms and embeddings stay float32), except the query, key and
  value layers, which give the attention's dtype: bfloat16 where this CPU's bf16 matmuls are fast (attention
  then runs in :func:`genrecli.text.fused.blocked_attention`), float32 elsewhere. The feed-forward block's
  GELU is oneDNN's post-op of its first matmul.

Measured on that EPYC (bench/bench_text.py, BENCHMARKS.md): 93 kern-eras clips at 32.9 clips/s, 3.10x the
fp32 reference (bf16: 2.27x), 2.90x at one thread. A batch of 16 clips of 512 tokens: 0.50-0.59 s against
fp32's 1.44-1.66 (medians of alternated runs). In a profiled batch of 15 clips (283-512 tokens) the int8
matmuls took 217 ms (130 GOP: about 600 GOP/s), the bf16 attention products 89 and their softmax 83.
Accuracy against fp32: text vectors at cosine >= 0.9959 (mean 0.997) on real kern and ABC scores, against
bf16's 0.99995; token outputs (``encode_tokens``) are coarser, per-token cosine mean 0.986, min 0.946. Dynamic
per-tensor int8 is coarser than bf16, so 'int8' is a runtime one asks for (``--runtime int8``), never 'auto''s
choice. torch's own dynamic int8 (fbgemm) ran at 1.95x and cosine 0.985 on the same texts.

Chosen here and documented: per-tensor activation scales (oneDNN's matmul takes one source scale; per-token
scales would need a second pass over every output) and symmetric weights (zero points of the weights would
cost a correction term per output).
"""

from __future__ import annotations

import warnings
import weakref

import torch

_U8_LEVELS = 255
_S8_MAX = 127


def available() -> bool:
    """Whether this torch has oneDNN's quantized linear ops (x86 builds with oneDNN)."""
    ops = getattr(torch.ops, "onednn", None)
    return (torch.backends.mkldnn.is_available() and ops is not None and hasattr(ops, "qlinear_pointwise")
            and hasattr(ops, "qlinear_prepack"))


def quantize_activations(x2: torch.Tensor):
    """Asymmetric per-tensor uint8 quantization of a 2-d tensor (any float dtype).

    Returns
    -------
    tuple
        (uint8 tensor of x2's shape, scale (float), zero point (int)) with x ~ scale * (q - zero_point); the
        range always includes 0, so zero (padding, ReLU-like outputs) is exact.
    """
    low, high = (float(v) for v in torch.aminmax(x2))
    low, high = min(low, 0.0), max(high, 0.0)
    if not (low > float("-inf") and high < float("inf")):  # NaN or inf in an activation: no int8 range
        raise FloatingPointError(f"int8 runtime: activation range [{low}, {high}] is not finite")
    scale = max(high - low, 1e-30) / _U8_LEVELS
    zero_point = min(_U8_LEVELS, max(0, round(-low / scale)))
    with warnings.catch_warnings():  # torch marks quantized tensors deprecated; only its kernel is used here
        warnings.simplefilter("ignore")
        quantized = torch.quantize_per_tensor(x2 if x2.dtype == torch.float32 else x2.float(), scale,
                                              zero_point, torch.quint8)
    # the quantized tensor's bytes as a plain uint8 tensor, without int_repr()'s copy
    codes = torch.empty(0, dtype=torch.uint8).set_(quantized.untyped_storage(), 0, quantized.shape,
                                                   quantized.stride())
    return codes, scale, zero_point


class ActivationQuantizer:
    """:func:`quantize_activations` that remembers the last tensor it was given (weakly: it keeps that tensor's
    codes alive, not the tensor), so layers that read the same input (query, key and value) quantize it once."""

    def __init__(self):
        self._last = None

    def __call__(self, x: torch.Tensor, features: int):
        if self._last is not None and self._last[0]() is x:
            return self._last[1]
        codes = quantize_activations(x.reshape(-1, features))
        self._last = (weakref.ref(x), codes)
        return codes


class Int8Linear(torch.nn.Module):
    """A ``torch.nn.Linear`` computed as oneDNN's u8 x s8 matmul (CPU), optionally with a GELU post-op.

    Parameters
    ----------
    linear : torch.nn.Linear
        The layer to stand for (float weights, any float dtype); its weights are quantized, not kept.
    out_dtype : torch.dtype
        Output dtype (float32 or bfloat16).
    gelu : {None, 'none', 'tanh'}
        GELU applied to the output in the matmul (oneDNN's names: 'none' is the exact erf GELU).
    quantizer : ActivationQuantizer, optional
        Shared with layers that read the same input; None quantizes every input afresh.

    Input (..., in_features) float; output (..., out_features) ``out_dtype``.
    """

    def __init__(self, linear, *, out_dtype=torch.float32, gelu=None, quantizer=None):
        super().__init__()
        weight = linear.weight.detach().float()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        scale = weight.abs().amax(dim=1).clamp_min(1e-30) / _S8_MAX
        codes = torch.round(weight / scale[:, None]).clamp_(-_S8_MAX, _S8_MAX).to(torch.int8)
        self.register_buffer("weight_scale", scale, persistent=False)
        self.register_buffer("packed_weight", torch.ops.onednn.qlinear_prepack(codes, None), persistent=False)
        self.register_buffer("weight_zero_point", torch.zeros(weight.shape[0], dtype=torch.int64), persistent=False)
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().float(), persistent=False)
        self.out_dtype = out_dtype
        self.gelu = gelu
        self.quantizer = quantizer

    def forward(self, x):
        if self.quantizer is None:
            codes, scale, zero_point = quantize_activations(x.reshape(-1, self.in_features))
        else:
            codes, scale, zero_point = self.quantizer(x, self.in_features)
        post, algorithm = ("none", "") if self.gelu is None else ("gelu", self.gelu)
        y = torch.ops.onednn.qlinear_pointwise(codes, scale, zero_point, self.packed_weight, self.weight_scale,
                                               self.weight_zero_point, self.bias, 1.0, 0, self.out_dtype, post, [],
                                               algorithm)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, out_dtype={self.out_dtype}, "
                f"gelu={self.gelu}")


def quantize(model, *, attention_dtype=torch.float32) -> None:
    """Replace the linear layers of ``model``'s BERT-style encoder layers (CPU, float32, eval) with
    :class:`Int8Linear`; with ``attention_dtype`` bfloat16 the attention computes in bf16 through
    :func:`genrecli.text.fused.blocked_attention`.

    A layer whose feed-forward activation is not a GELU keeps its feed-forward linear layers in float32.
    Raises ValueError for a model without BERT-style layers (the runtime would have nothing to quantize).
    """
    from genrecli.text.fused import feed_forward_gelu, register

    layers = getattr(getattr(model, "encoder", None), "layer", None) or []
    done = 0
    for layer in layers:
        inner = getattr(layer, "layer", layer)  # a FirstTokenLastLayer wraps the layer it restricts
        attention = getattr(inner, "attention", None)
        own = getattr(attention, "self", None)
        if own is None or not all(isinstance(getattr(own, n, None), torch.nn.Linear)
                                  for n in ("query", "key", "value")) \
                or not isinstance(getattr(getattr(attention, "output", None), "dense", None), torch.nn.Linear):
            continue
        shared = ActivationQuantizer()
        for name in ("query", "key", "value"):
            setattr(own, name, Int8Linear(getattr(own, name), out_dtype=attention_dtype, quantizer=shared))
        attention.output.dense = Int8Linear(attention.output.dense)
        block = getattr(inner, "intermediate", None)
        gelu = feed_forward_gelu(block)
        if gelu is not None and isinstance(getattr(getattr(inner, "output", None), "dense", None), torch.nn.Linear):
            inner.intermediate = Int8Linear(block.dense, gelu=gelu)
            inner.output.dense = Int8Linear(inner.output.dense)
        done += 1
    if not done:
        raise ValueError("int8 runtime: the model has no BERT-style encoder layers to quantize")
    if attention_dtype == torch.bfloat16 and hasattr(getattr(model, "config", None), "_attn_implementation"):
        model.config._attn_implementation = register()

