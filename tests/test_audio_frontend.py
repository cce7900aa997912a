"""The torch spectrogram front end against librosa on rendered music (CPU; CUDA when present)."""

from __future__ import annotations

import pathlib

import librosa
import numpy as np
import pytest
import torch

from genrecli.audio import frontend, load_track_audio

SR = 22050
CONFIGS = [
    dict(n_fft=2048, hop_length=512, n_mels=128),  # mel / logmel-ru
    dict(n_fft=662, hop_length=331, n_mels=40),  # the DM2KMN MFCC frames (30 ms, non-power-of-two FFT)
]


@pytest.fixture(scope="module")
def music():
    import music21

    score = pathlib.Path(music21.__file__).parent / "corpus" / "joplin" / "maple_leaf_rag.mxl"
    return load_track_audio(sr=SR, score=score, max_seconds=12.0)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("config", CONFIGS, ids=["2048-512-128", "662-331-40"])
def test_torch_mel_matches_librosa(music, config, device):
    expected = librosa.feature.melspectrogram(y=music, sr=SR, **config)
    got = frontend.melspectrogram(music, sr=SR, backend="torch", device=device, **config)
    assert got.dtype == np.float32 and got.shape == expected.shape
    # every bin, the quiet ones included, to 1e-4 relative
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("config", CONFIGS, ids=["2048-512-128", "662-331-40"])
def test_torch_mfcc_matches_librosa(music, config, device):
    expected = librosa.feature.mfcc(y=music, sr=SR, n_mfcc=20, **config)
    got = frontend.mfcc(music, sr=SR, n_mfcc=20, backend="torch", device=device, **config)
    assert got.shape == expected.shape
    # relative to the coefficients' scale (single coefficients cross zero)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_auto_backend_is_librosa_on_cpu(music):
    a = frontend.melspectrogram(music, sr=SR, device="cpu")
    np.testing.assert_array_equal(a, librosa.feature.melspectrogram(y=music, sr=SR))


def test_batched_stft_and_other_parameters(music):
    batch = np.stack([music[:SR * 2], music[SR : SR * 3]])
    S = frontend.stft_power(batch, n_fft=1024, hop_length=256, power=1.0)
    assert S.shape == (2, 513, 1 + 2 * SR // 256)
    np.testing.assert_allclose(S[1].numpy(), np.abs(librosa.stft(batch[1], n_fft=1024, hop_length=256)), rtol=1e-6,
                               atol=1e-9)
    kw = dict(n_fft=1024, hop_length=256, win_length=800, n_mels=64, fmin=50.0, fmax=8000.0, htk=True, norm=None)
    np.testing.assert_allclose(frontend.melspectrogram(music, sr=SR, backend="torch", **kw),
                               librosa.feature.melspectrogram(y=music, sr=SR, **kw), rtol=1e-4)


def test_auto_mfcc_on_cpu_takes_torch_for_a_prime_factor_fft_and_agrees_with_librosa(music):
    assert frontend._slow_numpy_fft(662) and not frontend._slow_numpy_fft(2048) and not frontend._slow_numpy_fft(1470)
    kw = dict(n_fft=662, hop_length=331, n_mels=40)
    expected = librosa.feature.mfcc(y=music, sr=SR, n_mfcc=20, **kw)
    got = frontend.mfcc(music, sr=SR, n_mfcc=20, device="cpu", **kw)
    np.testing.assert_array_equal(got, frontend.mfcc(music, sr=SR, n_mfcc=20, backend="torch", **kw))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    # power-of-two FFTs keep librosa, bit for bit
    np.testing.assert_array_equal(frontend.mfcc(music, sr=SR, n_mfcc=20, device="cpu"),
                                  librosa.feature.mfcc(y=music, sr=SR, n_mfcc=20))


@pytest.mark.parametrize("power", [1.0, 2.0, 0.5])
def test_stft_power_matches_torch_stft(music, power):
    """The framed-rfft STFT against torch.stft (the previous implementation), batched and with a short window."""
    batch = torch.as_tensor(np.stack([music[: SR * 2], music[SR : SR * 3]]), dtype=torch.float64)
    for n_fft, hop, win in ((662, 331, 662), (2048, 512, 1500)):
        window = frontend._window(n_fft, win, torch.device("cpu"), torch.float64)
        padded = torch.nn.functional.pad(batch, (n_fft // 2, n_fft // 2))
        reference = torch.stft(padded, n_fft=n_fft, hop_length=hop, window=window, center=False,
                               return_complex=True).abs() ** power
        got = frontend.stft_power(batch, n_fft=n_fft, hop_length=hop, win_length=win, power=power)
        assert got.shape == reference.shape and got.dtype == torch.float64
        np.testing.assert_allclose(got.numpy(), reference.numpy(), rtol=1e-10, atol=1e-12 * float(reference.max()))
