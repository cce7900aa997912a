"""Every registered audio feature on real music rendered from the music21 corpus; registry contract."""

from __future__ import annotations

import json
import pathlib

import librosa
import numpy as np
import pytest
import soundfile
import torch
from conftest import one_line

from genrecli.audio import AUDIO_FEATURES, configure_feature, extract_track
from genrecli.audio.base import middle_patch
from genrecli.audio.features import resolve_features
from genrecli.errors import InputError, UsageError

EXPECTED_SHAPES = {
    "mfcc": (80,),
    "mfcc-image": (1000,),
    "vggish": (128,),
    "musicnn": (200,),
    "musicnn-tags": (50,),
    "musicnn-pool": (753,),
    "mel": (128, 431),
    "cqt": (84, 431),
    "harmonic": (128, 431),
    "percussive": (128, 431),
    "scattering": (299, 512),
    "timbre": (33,),
    "rhythm": (228,),
    "logcqt-oramas": (96, 323),
    "logmel-ru": (128, 1292),
}
RATES = (16000, 22050, 44100)


@pytest.fixture(scope="module")
def rendered():
    """An Irish reel and a piano rag from the music21 corpus, rendered once at every rate the features use."""
    import music21

    from genrecli.audio.synth import track_audio

    corpus = pathlib.Path(music21.__file__).parent / "corpus"
    rag = track_audio(score=corpus / "joplin" / "maple_leaf_rag.mxl", max_seconds=20.0)
    reel = track_audio(score=corpus / "ryansMammoth" / "AcrobatsHornpipe.abc", max_seconds=20.0)
    return {"rag": {sr: rag(sr) for sr in RATES}, "reel": {sr: reel(sr) for sr in RATES}}


def test_registry_declares_shapes_and_params():
    assert set(AUDIO_FEATURES) == set(EXPECTED_SHAPES)
    for name, feature in AUDIO_FEATURES.items():
        assert feature.name == name and feature.shape == EXPECTED_SHAPES[name], name
        assert feature.sample_rate in RATES and feature.description
        params = json.loads(json.dumps(feature.params))  # JSON-serialisable
        assert params["shape"] == list(feature.shape) and params["sample_rate"] == feature.sample_rate, name
        if len(feature.shape) == 2:  # time-frequency patches declare their patch
            assert params["patch"]["frames"] == feature.shape[1] and params["patch"]["position"] == "middle"
            assert "hop_length" in params or "hop_samples" in params["patch"]


@pytest.mark.parametrize("name", [n for n in EXPECTED_SHAPES if n != "vggish"])
def test_feature_on_rendered_music(rendered, name):
    feature = AUDIO_FEATURES[name]
    a = feature.compute(rendered["rag"][feature.sample_rate])
    b = feature.compute(rendered["reel"][feature.sample_rate])
    assert a.dtype == np.float32 and a.shape == feature.shape and np.isfinite(a).all()
    assert not np.allclose(a, b)  # different music, different description
    np.testing.assert_array_equal(a, feature.compute(rendered["rag"][feature.sample_rate]))


def test_mel_patch_is_the_middle_of_the_full_track_transform(rendered):
    y = rendered["rag"][22050]
    full = librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=22050, n_fft=2048, hop_length=512), ref=1.0,
                               top_db=None)
    patch = AUDIO_FEATURES["mel"].compute(y)
    expected = middle_patch(full, 431)
    loud = patch > patch.min() + 1e-3  # above the top_db floor (relative to the excerpt's peak)
    assert loud.mean() > 0.5
    np.testing.assert_allclose(patch[loud], expected[loud], atol=2e-3)
    cqt_full = librosa.amplitude_to_db(np.abs(librosa.cqt(y, sr=22050, hop_length=512, n_bins=84)), ref=1.0,
                                       top_db=None)
    cqt = AUDIO_FEATURES["cqt"].compute(y)
    loud = cqt > cqt.min() + 1e-3
    # librosa's multi-rate CQT resamples the excerpt: quiet bins move by up to ~0.1 dB
    np.testing.assert_allclose(cqt[loud], middle_patch(cqt_full, 431)[loud], atol=0.25)
    whole = AUDIO_FEATURES["logmel-ru"].compute(y)
    assert whole.shape == (128, 1292)
    # 20 s of audio in a 30 s patch: centred, padded with the floor value
    assert (whole[:, :100] == whole.min()).all() and (whole[:, -100:] == whole.min()).all()


def test_short_audio_is_centred_and_padded(rendered):
    y = rendered["rag"][22050][: 2 * 22050]
    patch = AUDIO_FEATURES["cqt"].compute(y)
    assert patch.shape == (84, 431)
    assert (patch[:, :150] == patch.min()).all() and patch[:, 215].std() > 0
    assert AUDIO_FEATURES["scattering"].compute(y).shape == (299, 512)


def test_hpss_separates_tone_from_clicks():
    sr = 22050
    t = np.arange(12 * sr) / sr
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    clicks = np.zeros_like(t)
    clicks[:: sr // 4] = 1.0
    y = (tone + clicks).astype(np.float32)
    h = librosa.db_to_power(AUDIO_FEATURES["harmonic"].compute(y))
    p = librosa.db_to_power(AUDIO_FEATURES["percussive"].compute(y))
    band = int(np.argmax(h.mean(1)))
    assert h[band].mean() > 10 * p[band].mean()  # the tone's band is harmonic
    top = slice(100, 128)  # clicks are broadband: the high bands are percussive
    assert p[top].mean() > 10 * h[top].mean()


def test_timbre_of_a_tone():
    sr = 22050
    t = np.arange(3 * sr) / sr
    y = (0.3 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    v = AUDIO_FEATURES["timbre"].compute(y)
    layout = AUDIO_FEATURES["timbre"].params["layout"]
    assert len(layout) == 33
    assert v[layout.index("mean_centroid")] == pytest.approx(1000, rel=0.02)
    assert v[layout.index("mean_zero_crossing_rate")] == pytest.approx(2000 / sr, rel=0.05)
    assert v[layout.index("mean_flux")] < 0.01 and 0 <= v[-1] <= 1


def test_rhythm_histogram_finds_the_beat():
    sr = 44100
    y = np.zeros(20 * sr, dtype=np.float32)
    for start in range(0, len(y) - 2000, sr // 2):  # a click every 0.5 s: 2 Hz
        y[start : start + 2000] = np.random.default_rng(start).standard_normal(2000) * 0.5
    feature = AUDIO_FEATURES["rhythm"]
    v = feature.compute(y)
    resolution = feature.params["modulation_resolution_hz"]
    rh = v[:60]
    assert (np.argmax(rh) + 1) * resolution == pytest.approx(2.0, abs=resolution)
    ssd = v[60:].reshape(7, 24)
    assert (ssd[0] >= 0).all() and (ssd[6] >= ssd[4]).all() and (ssd[4] >= ssd[5]).all()  # max >= median >= min


def test_configure_feature_and_options():
    assert configure_feature("mel") is AUDIO_FEATURES["mel"]
    msd = configure_feature("musicnn-tags", model="MSD_musicnn")
    assert msd.params["model"] == "MSD_musicnn" and msd.params["tags"][0] == "rock"
    assert msd.params != AUDIO_FEATURES["musicnn-tags"].params
    with pytest.raises(UsageError) as excinfo:
        configure_feature("mel", weights="x")
    one_line(excinfo, "mel", "weights")
    with pytest.raises(UsageError) as excinfo:
        configure_feature("musicnn", model="MSD_big")
    one_line(excinfo, "MSD_big")
    with pytest.raises(UsageError) as excinfo:
        configure_feature("nope")
    one_line(excinfo, "nope")
    assert [f.name for f in resolve_features(["mel", msd])] == ["mel", "musicnn-tags"]


def test_extract_track_computes_each_rate_once(tmp_path):
    wav = tmp_path / "tone.wav"
    t = np.arange(44100 * 4) / 44100
    soundfile.write(wav, (0.3 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(2 * np.pi * 2 * t))).astype(np.float32),
                    44100)
    names = ["mfcc", "mel", "timbre", "rhythm", "musicnn-tags", "logcqt-oramas"]
    out = extract_track({"audio": wav}, names, device="cpu")
    assert list(out) != [] and set(out) == set(names)
    for name in names:
        assert out[name].shape == AUDIO_FEATURES[name].shape and out[name].dtype == np.float32
    if not torch.cuda.is_available():
        with pytest.raises(UsageError) as excinfo:
            extract_track({"audio": wav}, ["mel"], device="cuda")
        one_line(excinfo, "cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_cuda_features_match_cpu(rendered):
    for name in ("mel", "logmel-ru", "mfcc", "musicnn", "mfcc-image"):
        feature = AUDIO_FEATURES[name]
        y = rendered["rag"][feature.sample_rate]
        cpu = feature.compute(y, device="cpu")
        gpu = feature.compute(y, device="cuda")
        np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-3 * np.abs(cpu).max(), err_msg=name)


def test_bad_inputs_are_one_line_input_errors(tmp_path):
    silent = tmp_path / "silent.wav"
    soundfile.write(silent, np.zeros(3 * 22050, dtype=np.float32), 22050)
    for name in ["mel", "cqt", "harmonic", "scattering", "timbre", "rhythm", "musicnn", "mfcc-image", "logmel-ru"]:
        with pytest.raises(InputError) as excinfo:
            extract_track({"audio": silent}, [name])
        one_line(excinfo, "silent.wav", name, "silent")
    blip = tmp_path / "blip.wav"
    soundfile.write(blip, np.full(100, 0.5, dtype=np.float32), 22050)
    with pytest.raises(InputError) as excinfo:
        extract_track({"audio": blip}, ["timbre"])
    one_line(excinfo, "blip.wav", "too short")
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF" + bytes(100))
    with pytest.raises(InputError) as excinfo:
        extract_track({"audio": corrupt}, ["musicnn"])
    one_line(excinfo, "corrupt.wav")
