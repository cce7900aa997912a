"""Ru et al. 2023 (``ru``): SCMA, the A-L contrastive loss, the GCEM graph, ablations, persistence, and the
token-sequence text stage it reads (``extract_text(..., sequence=True)``)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from genrecli.errors import UsageError
from genrecli.models import get_model, load_model
from genrecli.models.neural.ru import (
    SCMA,
    RuModel,
    correlation_matrix,
    cooccurrence_probability,
    info_nce,
    normalize_adjacency,
)

torch.set_num_threads(1)

TINY = dict(d_model=8, audio_channels=(2, 2, 2, 2, 2), gcn_hidden=8, al_dim=4, node_dim=6, batch_size=4,
            max_epochs=1, amp=False)


def _data(n=16, T=6, d=10, L=3, seed=0, multilabel=True):
    rng = np.random.default_rng(seed)
    audio = rng.normal(size=(n, 16, 24)).astype(np.float32)
    text = np.zeros((n, T, d), np.float32)
    for i in range(n):
        text[i, : rng.integers(1, T + 1)] = rng.normal(size=(1, d))
    if multilabel:
        y = (rng.random((n, L)) < 0.5).astype(np.float32)
        y[np.arange(n), rng.integers(0, L, n)] = 1
    else:
        y = np.arange(n) % L
    return {"audio/logmel-ru": audio, "text/minilm-seq": text}, y


# ------------------------------------------------------------------------------------------- SCMA
def test_cross_attention_follows_the_other_modality_and_ignores_padding():
    torch.manual_seed(0)
    scma = SCMA(8, 1).eval()
    a, lyr = torch.randn(2, 5, 8), torch.randn(2, 4, 8)
    keep = torch.tensor([[True, True, True, False], [True, True, True, True]])
    with torch.no_grad():
        base = scma(a, lyr, keep)
        other_lyrics = lyr.clone()
        other_lyrics[0, 1] += 1.0  # a real token of track 0
        moved = scma(a, other_lyrics, keep)
        padded = lyr.clone()
        padded[0, 3] = torch.randn(8) * 10  # a padded token of track 0
        same = scma(a, padded, keep)
        other_audio = a.clone()
        other_audio[0] += 1.0
        moved_by_audio = scma(other_audio, lyr, keep)
    # the audio half (queries audio, keys/values lyrics) moves with the lyrics; the lyrics half with the audio
    assert not torch.allclose(moved[0, :8], base[0, :8], atol=1e-4)
    assert not torch.allclose(moved_by_audio[0, 8:], base[0, 8:], atol=1e-4)
    torch.testing.assert_close(same, base, rtol=0, atol=1e-6)
    torch.testing.assert_close(moved[1], base[1])  # other tracks untouched


def test_network_treats_all_zero_token_rows_as_padding():
    inputs, y = _data()
    model = RuModel(random_state=0, **TINY).fit(inputs, y)
    longer = dict(inputs)
    longer["text/minilm-seq"] = np.concatenate([inputs["text/minilm-seq"], np.zeros((16, 3, 10), np.float32)], axis=1)
    net = model.network_.eval()
    with torch.no_grad():
        batch = model._batch_tensors(inputs, np.arange(4), train=False, rng=None)[0]
        t_long = torch.cat([batch[1], torch.zeros(4, 3, 10)], dim=1)
        np.testing.assert_allclose(net(batch[0], t_long).numpy(), net(*batch).numpy(), atol=1e-5)
    # standardisation keeps padding rows exactly zero
    assert np.all(batch[1].numpy()[inputs["text/minilm-seq"][:4].any(-1) == 0] == 0)


# ------------------------------------------------------------------------------------------- A-L
def test_info_nce_is_lower_for_aligned_than_for_shuffled_pairs():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(16, 8, generator=gen)
    lyrics = z + 0.1 * torch.randn(16, 8, generator=gen)
    scale = torch.tensor(math.log(1 / 0.07))
    aligned = float(info_nce(z, lyrics, scale))
    shuffled = float(info_nce(z, lyrics[torch.roll(torch.arange(16), 1)], scale))
    assert aligned < 0.1 < math.log(16) < shuffled
    assert float(info_nce(z[:1], lyrics[:1], scale)) == 0.0  # one pair: no negatives
    # the scale is clamped at 100 as CLIP does
    assert float(info_nce(z, lyrics, torch.tensor(10.0))) == pytest.approx(float(info_nce(z, lyrics, torch.tensor(math.log(100)))))


def test_gradient_flows_into_the_learnable_temperature():
    inputs, y = _data()
    model = RuModel(random_state=0, **{**TINY, "max_epochs": 1})
    model.fit(inputs, y)
    net = model.network_.train()
    crit = model._criterion(y, 3)
    batch = model._batch_tensors(inputs, np.arange(8), train=True, rng=np.random.default_rng(0))[0]
    net.zero_grad()
    crit(net(*batch), torch.from_numpy(y[:8])).backward()
    grad = net.logit_scale.grad
    assert grad is not None and torch.isfinite(grad) and float(grad.abs()) > 0
    # and training moves it
    assert float(model.network_.logit_scale.detach()) != pytest.approx(math.log(1 / 0.07), abs=0)


# ------------------------------------------------------------------------------------------- GCEM
def test_adjacency_on_a_hand_made_cooccurrence():
    Y = np.array([[1, 1], [1, 0]])  # N(L0) = 2, N(L1) = 1, N(L0 L1) = 1
    np.testing.assert_allclose(cooccurrence_probability(Y), [[1.0, 0.5], [1.0, 1.0]])  # P(L_j | L_i)
    np.testing.assert_allclose(cooccurrence_probability(Y, denominator="j"), [[1.0, 1.0], [0.5, 1.0]])
    F = np.array([[1.0, 0.0], [0.0, 2.0]])  # orthogonal names: cosine = I
    A = correlation_matrix(Y, F, 2, multilabel=True)
    np.testing.assert_allclose(A, [[1.0, 0.25], [0.5, 1.0]])
    # A + I = [[2, .25], [.5, 2]], row sums 2.25 and 2.5
    expected = [[2 / 2.25, 0.25 / math.sqrt(2.25 * 2.5)], [0.5 / math.sqrt(2.25 * 2.5), 2 / 2.5]]
    np.testing.assert_allclose(normalize_adjacency(A), expected)
    np.testing.assert_allclose(normalize_adjacency(A), [[0.888889, 0.105409], [0.210819, 0.8]], atol=1e-6)
    # single-label: the name similarity alone (negative cosines cut at 0); no names: the identity
    G = np.array([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0]])
    s = 1 / math.sqrt(2)
    np.testing.assert_allclose(correlation_matrix(None, G, 3, multilabel=False), [[1, s, 0], [s, 1, 0], [0, 0, 1]], atol=1e-12)
    np.testing.assert_allclose(correlation_matrix(None, None, 3, multilabel=False), np.eye(3))
    np.testing.assert_allclose(correlation_matrix(Y, None, 2, multilabel=True), [[1.0, 0.5], [1.0, 1.0]])


def test_label_embeddings_become_fixed_gcn_nodes():
    inputs, y = _data(multilabel=False, L=4)
    y = np.where(y == 2, 3, y)  # label 2 absent from training
    emb = np.random.default_rng(1).normal(size=(4, 5)).astype(np.float32)
    model = RuModel(random_state=0, **TINY).fit(inputs, y, label_embeddings=emb)
    gcem = model.network_.gcem
    assert "nodes" in dict(gcem.named_buffers()) and "nodes" not in dict(gcem.named_parameters())
    np.testing.assert_array_equal(gcem.nodes.numpy(), emb[[0, 1, 3]])
    assert model.label_source_ == "text"
    with pytest.raises(UsageError, match="one row per label"):
        RuModel(**TINY).fit(*_data(), label_embeddings=emb[:2])


# ------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("use_al,use_scma,use_gcem", list(itertools.product([False, True], repeat=3)))
def test_every_ablation_trains_a_step(use_al, use_scma, use_gcem):
    inputs, y = _data()
    model = RuModel(use_al=use_al, use_scma=use_scma, use_gcem=use_gcem, random_state=0, **TINY)
    model.fit(inputs, y, label_embeddings=np.eye(3, 4, dtype=np.float32) + 0.1)
    net = model.network_
    assert hasattr(net, "scma") == use_scma and hasattr(net, "gcem") == use_gcem and hasattr(net, "logit_scale") == use_al
    scores = model.decision_function(inputs)
    assert scores.shape == (16, 3) and np.isfinite(scores).all()
    assert np.isfinite(model.history_[0]["train_loss"])


def test_threshold_is_chosen_on_validation_and_applied_by_predict():
    inputs, y = _data(n=20)
    model = RuModel(random_state=0, **TINY).fit(inputs, y)
    assert 0.05 <= model.threshold_ <= 0.95
    scores = model.decision_function(inputs)
    np.testing.assert_array_equal(model.predict(inputs), 1 / (1 + np.exp(-scores)) > model.threshold_)
    np.testing.assert_array_equal(model.predict_from_scores(scores), model.predict(inputs))
    fixed = RuModel(random_state=0, threshold=0.3, **TINY).fit(inputs, y)
    assert fixed.threshold_ == 0.3
    with pytest.raises(UsageError, match="threshold"):
        RuModel(threshold=1.5, **TINY).fit(inputs, y)


def test_pooled_text_vector_and_single_label_work():
    inputs, y = _data(multilabel=False)
    inputs["text/minilm"] = inputs.pop("text/minilm-seq")[:, 0]
    model = RuModel(random_state=0, **TINY).fit(inputs, y)
    assert model.predict(inputs).shape == (16,) and set(model.predict(inputs)) <= {0, 1, 2}


def test_inputs_are_checked():
    inputs, y = _data()
    with pytest.raises(UsageError, match="one audio"):
        RuModel(**TINY).fit({"audio/logmel-ru": inputs["audio/logmel-ru"]}, y)
    with pytest.raises(UsageError, match="mels, frames"):
        RuModel(**TINY).fit({"audio/mfcc": np.zeros((16, 5), np.float32), "text/minilm-seq": inputs["text/minilm-seq"]}, y)
    spec = get_model("ru")
    assert {"use_al", "use_scma", "use_gcem", "al_weight", "cooc_denominator", "threshold"} <= set(spec.option_names())


@pytest.mark.parametrize("multilabel,names", [(True, True), (True, False), (False, True)])
def test_save_load_round_trip(tmp_path, multilabel, names):
    inputs, y = _data(multilabel=multilabel)
    emb = np.random.default_rng(2).normal(size=(3, 5)).astype(np.float32) if names else None
    model = RuModel(random_state=0, patch_frames=16, test_crops=2, **TINY).fit(inputs, y, label_embeddings=emb)
    model.save(tmp_path / "m", registry_name="ru")
    loaded = load_model(tmp_path / "m")
    np.testing.assert_array_equal(loaded.decision_function(inputs), model.decision_function(inputs))
    np.testing.assert_array_equal(loaded.predict(inputs), model.predict(inputs))
    assert loaded.threshold_ == model.threshold_ and loaded.label_source_ == model.label_source_


def test_checkpoint_resume_restores_the_graph_and_weights(tmp_path):
    inputs, y = _data()
    emb = np.random.default_rng(3).normal(size=(3, 5)).astype(np.float32)
    first = RuModel(random_state=0, **{**TINY, "max_epochs": 2}).fit(inputs, y, label_embeddings=emb, checkpoint_dir=tmp_path)
    again = RuModel(random_state=0, **{**TINY, "max_epochs": 2}).fit(inputs, y, label_embeddings=emb, checkpoint_dir=tmp_path)
    assert again.resumed_from_ == 2
    np.testing.assert_array_equal(again.decision_function(inputs), first.decision_function(inputs))
    torch.testing.assert_close(again.network_.gcem.adjacency, first.network_.gcem.adjacency)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_fit_and_predict():
    inputs, y = _data()
    model = RuModel(random_state=0, device="cuda", **{**TINY, "amp": True}).fit(inputs, y, label_embeddings=np.eye(3, dtype=np.float32))
    cpu = RuModel(random_state=0, **TINY).fit(inputs, y, label_embeddings=np.eye(3, dtype=np.float32))
    assert np.isfinite(model.decision_function(inputs)).all()
    assert model.decision_function(inputs).shape == cpu.decision_function(inputs).shape


# ------------------------------------------------------------------------------------------- text sequences
WORDS = "love night dance rain fire heart road city blue river".split()


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A random 1-layer BERT with a word-level vocabulary written here (no download)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    directory = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "jazz", "rock", "pop", "folk"]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(directory / "vocab.txt")).save_pretrained(directory)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    BertModel(config, add_pooling_layer=False).save_pretrained(directory)
    return directory


def test_encode_tokens_pads_with_zeros_and_matches_the_pooled_path(tiny_bert):
    from genrecli.text.encoders import make_encoder

    enc = make_encoder(str(tiny_bert), clip_tokens=8)
    pooled_keys = set(enc.params())
    texts = ["love night", "dance rain fire heart road city blue river love night dance rain", "blue"]
    tokens, lengths = enc.encode_tokens(texts)
    assert tokens.shape == (3, 8, 16) and tokens.dtype == np.float32
    # [CLS] love night [SEP]; the long text fills the first clip; [CLS] blue [SEP]
    np.testing.assert_array_equal(lengths, [4, 8, 3])
    for i, n in enumerate(lengths):
        assert np.all(tokens[i, n:] == 0) and np.all(np.any(tokens[i, :n] != 0, axis=-1))
    # the [CLS] row of a one-clip text is the pooled ('cls') vector of encode()
    np.testing.assert_allclose(tokens[[0, 2], 0], enc.encode([texts[0], texts[2]]), atol=1e-5)
    # longer sequences concatenate the following clips (each with its special tokens)
    long, long_len = enc.encode_tokens(texts, max_tokens=20)
    assert long.shape == (3, 20, 16) and list(long_len) == [4, 16, 3]
    np.testing.assert_allclose(long[1, :8], tokens[1], atol=1e-5)
    # the pooled path's params are untouched; the sequence params extend them
    assert set(enc.params()) == pooled_keys == {"encoder", "model", "weights_sha256", "config_sha256", "clip_tokens",
                                                "pooling", "clip_aggregation", "max_clips", "dim"}
    seq = enc.sequence_params()
    assert seq["output"] == "tokens" and seq["max_tokens"] == 8 and seq["clip_aggregation"] == "concat"


def test_extract_text_sequence_group_leaves_the_pooled_group_alone(tiny_bert, tmp_path):
    import h5py

    from genrecli import store
    from genrecli.layout import DatasetPaths
    from genrecli.pipeline.ingest import ingest
    from genrecli.pipeline.text import extract_text

    root, home = tmp_path / "root", tmp_path / "home"
    lyrics = {"pop": ["love night dance", "heart road"], "rock": ["fire rain city blue river fire rain", "blue"]}
    for label, texts in lyrics.items():
        (root / label).mkdir(parents=True)
        for k, text in enumerate(texts):
            (root / label / f"song{k}.txt").write_text(text)
    ingest("folder", root=root, name="ly", splits=(), data_home=home)
    features = DatasetPaths.of("ly", home).features()
    extract_text("ly", encoder=str(tiny_bert), clip_tokens=8, data_home=home)
    name = tiny_bert.name.lower()
    with h5py.File(features, "r") as h5:
        pooled = h5[f"text/{name}/data"][()]
        pooled_hash = h5[f"text/{name}"].attrs["params_hash"]
    res = extract_text("ly", encoder=str(tiny_bert), clip_tokens=8, sequence=True, max_tokens=10, data_home=home)
    assert res.written == [f"text/{name}-seq"]
    with h5py.File(features, "r") as h5:
        grp = h5[f"text/{name}-seq"]
        data, lengths, valid = grp["data"][()], grp["lengths"][()], grp["valid"][()]
        assert data.shape == (4, 10, 16) and valid.all() and grp["label_embeddings"].shape == (2, 16)
        params = store.group_params(grp)
        np.testing.assert_array_equal(h5[f"text/{name}/data"][()], pooled)
        assert h5[f"text/{name}"].attrs["params_hash"] == pooled_hash
    assert params["encoder"]["output"] == "tokens" and params["encoder"]["max_tokens"] == 10
    for row, n in enumerate(lengths):
        assert 3 <= n <= 10 and np.all(data[row, n:] == 0)
    assert extract_text("ly", encoder=str(tiny_bert), clip_tokens=8, sequence=True, max_tokens=10,
                        data_home=home).up_to_date == [f"text/{name}-seq"]
    with pytest.raises(UsageError, match="transformer"):
        extract_text("ly", encoder="tfidf", sequence=True, data_home=home)
    with pytest.raises(UsageError, match="sequence"):
        extract_text("ly", encoder=str(tiny_bert), max_tokens=10, data_home=home)
