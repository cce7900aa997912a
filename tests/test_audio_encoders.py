"""Pretrained image/audio encoders: EfficientNet-Lite0 (real weights), mfcc-image, VGGish (random weights)."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import torch
from conftest import one_line

from genrecli.audio import (
    AUDIO_FEATURES,
    configure_feature,
    encoders,
    extract_track,
    vggish,
)
from genrecli.errors import InputError, UsageError


@pytest.fixture(scope="module")
def rag():
    """The opening of Joplin's Maple Leaf Rag (music21 corpus), General-MIDI piano, 16 and 22.05 kHz."""
    import music21

    score = pathlib.Path(music21.__file__).parent / "corpus" / "joplin" / "maple_leaf_rag.mxl"
    from genrecli.audio.synth import track_audio

    get = track_audio(score=score, max_seconds=10.0)
    return {16000: get(16000), 22050: get(22050)}


# ------------------------------------------------------------------ EfficientNet-Lite0 / mfcc-image


def test_efficientnet_lite0_recognises_a_photograph():
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        image = Image.open(f).convert("RGB").resize((224, 224), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    logits = encoders.image_logits(x)
    assert logits.shape == (1000,)
    assert 652 in np.argsort(-logits)[:5]  # "military uniform"
    assert int(np.argmax(logits)) == 652


def test_spectrogram_image_layout():
    rep = np.zeros((40, 500))
    rep[0] = 1.0  # lowest band loud
    image = encoders.spectrogram_image(rep)
    assert image.shape == (3, 224, 224) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    viridis_top = torch.tensor([0.993, 0.906, 0.144])  # yellow: the maximum
    assert torch.allclose(image[:, -1, 100], viridis_top, atol=0.01)  # low band at the bottom row
    assert torch.allclose(image[:, 0, 100], torch.tensor([0.267, 0.005, 0.329]), atol=0.01)
    assert encoders.spectrogram_image(np.ones((5, 5))).abs().sum() > 0  # constant input: no NaN


def test_mfcc_image_of_rendered_music(rag):
    feature = AUDIO_FEATURES["mfcc-image"]
    assert feature.shape == (1000,) and feature.sample_rate == 22050
    assert feature.params["image"]["size"] == [3, 224, 224] and "EfficientNet-Lite0" in feature.params["cnn"]["model"]
    json.dumps(feature.params)
    v = feature.compute(rag[22050])
    assert v.dtype == np.float32 and v.shape == (1000,) and np.isfinite(v).all() and v.std() > 0.1
    np.testing.assert_array_equal(v, feature.compute(rag[22050]))
    logmel = configure_feature("mfcc-image", representation="logmel")
    assert logmel.params != feature.params
    assert not np.allclose(logmel.compute(rag[22050]), v)


def test_mfcc_image_with_a_hugging_face_resnet_directory(rag, tmp_path):
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1],
                          layer_type="bottleneck", num_labels=1000)
    ResNetForImageClassification(config).save_pretrained(tmp_path / "resnet")
    feature = configure_feature("mfcc-image", weights=str(tmp_path / "resnet"))
    assert "ResNet" in feature.params["cnn"]["model"]
    assert len(feature.params["cnn"]["weights"]["sha256"]["model.safetensors"]) == 64
    out = feature.compute(rag[22050])
    assert out.shape == (1000,) and np.isfinite(out).all()
    assert not np.allclose(out, AUDIO_FEATURES["mfcc-image"].compute(rag[22050]))

    with pytest.raises(UsageError) as excinfo:
        configure_feature("mfcc-image", weights=str(tmp_path / "missing"))
    one_line(excinfo, "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError) as excinfo:
        configure_feature("mfcc-image", weights=str(tmp_path / "empty")).compute(rag[22050])
    one_line(excinfo, "empty")


# ------------------------------------------------------------------ VGGish


@pytest.fixture(scope="module")
def vggish_weights(tmp_path_factory):
    """A random-init VGGish saved like torchvggish's vggish-10086976.pth (a plain state dict)."""
    torch.manual_seed(0)
    net = vggish.VGGish()
    path = tmp_path_factory.mktemp("vggish") / "vggish-random.pth"
    torch.save(net.state_dict(), path)
    return path


def test_vggish_state_dict_has_torchvggish_names():
    net = vggish.VGGish()
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes == vggish.TORCHVGGISH_KEYS
    assert sum(p.numel() for p in net.parameters()) == 72_141_184


def test_vggish_front_end():
    sr = vggish.SAMPLE_RATE
    t = np.arange(3 * sr) / sr
    y = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    ex = vggish.examples(y)
    assert ex.shape == (3, 1, 96, 64)  # 298 frames -> 3 whole examples
    band = int(ex[0, 0].mean(0).argmax())
    edges = np.linspace(*vggish._hertz_to_mel([125, 7500]), 66)
    assert edges[band] < vggish._hertz_to_mel(1000) < edges[band + 2]
    assert vggish.examples(y[: sr // 2]).shape == (1, 1, 96, 64)  # short: repeat-padded
    assert float(ex.min()) >= np.log(0.01) - 1e-6


def test_vggish_with_a_weights_file(rag, vggish_weights):
    feature = configure_feature("vggish", weights=str(vggish_weights))
    assert feature.shape == (128,) and feature.sample_rate == 16000
    assert feature.params["weights"]["sha256"] == __import__("hashlib").sha256(vggish_weights.read_bytes()).hexdigest()
    json.dumps(feature.params)
    v = feature.compute(rag[16000])
    assert v.dtype == np.float32 and np.isfinite(v).all() and (v >= 0).all()  # torchvggish's final ReLU
    np.testing.assert_array_equal(v, feature.compute(rag[16000]))  # deterministic
    net = vggish.VGGish()
    net.load_state_dict(torch.load(vggish_weights, weights_only=True))
    with torch.inference_mode():
        expected = net.eval()(vggish.examples(rag[16000])).mean(0).numpy()
    np.testing.assert_allclose(v, expected, rtol=1e-5, atol=1e-6)

    both = configure_feature("vggish", weights=str(vggish_weights), pooling="meanstd", final_relu=False)
    assert both.shape == (256,) and both.params["final_relu"] is False
    w = both.compute(rag[16000])
    assert w.shape == (256,) and (w[128:] >= 0).all() and (w[:128] < 0).any()


def test_vggish_pca_postprocessing(rag, vggish_weights, tmp_path):
    rng = np.random.default_rng(0)
    pca = tmp_path / "pca.npz"
    np.savez(pca, pca_eigen_vectors=rng.standard_normal((128, 128)), pca_means=rng.standard_normal((128, 1)))
    v = configure_feature("vggish", weights=str(vggish_weights), pca=str(pca)).compute(rag[16000])
    assert v.shape == (128,) and v.min() >= 0 and v.max() <= 255


def test_vggish_without_weights_is_a_usage_error(rag, tmp_path):
    feature = AUDIO_FEATURES["vggish"]
    assert feature.shape == (128,) and "weights" in feature.description
    with pytest.raises(UsageError) as excinfo:
        feature.compute(rag[16000])
    one_line(excinfo, "vggish needs --weights FILE")
    with pytest.raises(UsageError) as excinfo:
        extract_track({"audio": tmp_path / "any.wav"}, ["mfcc", "vggish"])
    one_line(excinfo, "vggish needs --weights FILE")
    with pytest.raises(UsageError) as excinfo:
        configure_feature("vggish", weights=str(tmp_path / "vggish-10086976.pth"))
    one_line(excinfo, "vggish needs --weights FILE", "vggish-10086976.pth")
    junk = tmp_path / "junk.pth"
    junk.write_text("not a state dict")
    with pytest.raises(UsageError) as excinfo:
        configure_feature("vggish", weights=str(junk)).compute(rag[16000])
    one_line(excinfo, "junk.pth")
    other = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(UsageError) as excinfo:
        configure_feature("vggish", weights=str(other)).compute(rag[16000])
    one_line(excinfo, "other.pth", "not torchvggish")


def test_vggish_through_extract_track_options(tmp_path, vggish_weights):
    import soundfile

    wav = tmp_path / "tone.wav"
    t = np.arange(44100 * 2) / 44100
    soundfile.write(wav, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 44100)
    out = extract_track({"audio": wav}, ["vggish", "musicnn"], device="cpu",
                        options={"vggish": {"weights": str(vggish_weights)}})
    assert out["vggish"].shape == (128,) and out["musicnn"].shape == (200,)
    feature = configure_feature("vggish", weights=str(vggish_weights))
    np.testing.assert_array_equal(extract_track({"audio": wav}, [feature])["vggish"], out["vggish"])
    silent = tmp_path / "silent.wav"
    soundfile.write(silent, np.zeros(16000, dtype=np.float32), 16000)
    with pytest.raises(InputError) as excinfo:
        extract_track({"audio": silent}, [feature])
    one_line(excinfo, "silent.wav", "vggish", "silent")
