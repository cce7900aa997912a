"""Spectrogram front ends in torch (CPU or CUDA) that reproduce librosa's definitions.

``melspectrogram`` and ``mfcc`` follow ``librosa.feature.melspectrogram`` / ``librosa.feature.mfcc``
exactly: centred frames with zero padding (librosa >= 0.10 ``pad_mode="constant"``), a periodic Hann
window, ``|STFT|**power``, librosa's own mel filter bank (Slaney scale and area normalisation by
default), ``power_to_db(ref=1, amin=1e-10, top_db=80)`` and an orthonormal DCT-II. The filter bank
and DCT matrices are built once per parameter set with librosa/scipy and cached per device.

The ``backend`` argument of the public functions picks the implementation: ``"librosa"`` (NumPy),
``"torch"``, or ``"auto"``: torch on CUDA devices, librosa on the CPU. Measured on the 2-core CPU
machine (bench/bench_audio.py): a mel spectrogram of 30 s at 22.05 kHz takes ~110 ms with librosa and
~260 ms with the torch path (its STFT runs in float64 to match librosa, see :func:`stft_power`), so
the CPU keeps librosa, which also keeps CPU results bit-identical to the reference library. One exception:
``mfcc`` with an FFT size that has a prime factor above 7 (the DM2KMN MFCCs' 662 = 2 x 331 points) runs the
torch path on the CPU too, where it is ~2x faster than NumPy's FFT and agrees with librosa to ~2e-7 of the
coefficients' scale (float32 rounding; tested).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

AMIN = 1e-10
TOP_DB = 80.0


def _use_torch(backend: str, device, n_fft: int | None = None) -> bool:
    if backend not in ("auto", "torch", "librosa"):
        raise ValueError(f"unknown spectrogram backend {backend!r}")
    if backend == "auto":
        return torch.device(device).type != "cpu" or (n_fft is not None and _slow_numpy_fft(n_fft))
    return backend == "torch"


@functools.lru_cache(maxsize=64)
def _slow_numpy_fft(n: int) -> bool:
    """True when ``n`` has a prime factor above 7: NumPy's pocketfft then falls back to a slow algorithm
    (the MFCCs' 662-point FFT, 2 x 331, takes 95 ms per 30 s at 22.05 kHz) where torch's FFT takes ~half."""
    for p in (2, 3, 5, 7):
        while n % p == 0:
            n //= p
    return n > 1


@functools.lru_cache(maxsize=32)
def _mel_basis_np(sr, n_fft, n_mels, fmin, fmax, htk, norm) -> np.ndarray:
    import librosa

    return librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk, norm=norm)


@functools.lru_cache(maxsize=32)
def _mel_basis(sr, n_fft, n_mels, fmin, fmax, htk, norm, device, dtype) -> torch.Tensor:
    basis = _mel_basis_np(sr, n_fft, n_mels, fmin, fmax, htk, norm)
    return torch.as_tensor(basis, dtype=dtype, device=device)


@functools.lru_cache(maxsize=16)
def _window(n_fft, win_length, device, dtype) -> torch.Tensor:
    # scipy.signal.get_window("hann", N, fftbins=True) == periodic Hann; centred in n_fft like librosa
    window = torch.hann_window(win_length, periodic=True, dtype=torch.float64)
    left = (n_fft - win_length) // 2
    window = torch.nn.functional.pad(window, (left, n_fft - win_length - left))
    return window.to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=16)
def _dct_matrix(n_mels, n_mfcc, device, dtype) -> torch.Tensor:
    import scipy.fft

    # rows of the orthonormal DCT-II applied along the mel axis: mfcc = D @ S_db
    matrix = scipy.fft.dct(np.eye(n_mels), type=2, norm="ortho", axis=0)[:n_mfcc]
    return torch.as_tensor(matrix, dtype=dtype, device=device)


def stft_power(
    y: np.ndarray | torch.Tensor,
    *,
    n_fft: int = 2048,
    hop_length: int | None = None,
    win_length: int | None = None,
    power: float = 2.0,
    center: bool = True,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """``|STFT(y)|**power`` as librosa computes it (periodic Hann, centred, zero padding).

    The default computation dtype is float64 because librosa's is: its float64 window upcasts the
    frames before the FFT. A float32 FFT loses bins 60 dB below a frame's peak to rounding (relative
    errors up to 1e-2 measured on rendered piano), float64 matches librosa to ~1e-11.

    Parameters
    ----------
    y : array, shape (n_samples,) or (batch, n_samples)
    n_fft, hop_length, win_length : int
        librosa's defaults: ``hop_length = win_length // 4``, ``win_length = n_fft``.
    power : float
        1 for magnitude, 2 for power.

    Returns
    -------
    torch.Tensor, shape (..., 1 + n_fft // 2, n_frames) on ``device``
    """
    win_length = win_length or n_fft
    hop_length = hop_length or win_length // 4
    x = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
    x = x.to(device=device, dtype=dtype)
    if center:
        pad = n_fft // 2
        # librosa pads with zeros; torch.stft's own padding works on 2-D/3-D input only, so pad here
        x = torch.nn.functional.pad(x, (pad, pad))
    # Framing + rfft is torch.stft without its overheads (a third of the 662-point MFCC STFT on the CPU); the
    # power is re^2 + im^2 rather than |z|^2, which skips a square root (same values to ~1e-16).
    # The power is taken before the transpose: on the transposed view the same arithmetic is 5x slower.
    frames = x.unfold(-1, n_fft, hop_length) * _window(n_fft, win_length, torch.device(device), dtype)
    spec = torch.fft.rfft(frames)  # (..., n_frames, 1 + n_fft // 2)
    if power == 2.0:
        out = spec.real.square() + spec.imag.square()
    else:
        out = spec.abs() if power == 1.0 else spec.abs().pow(power)
    return out.transpose(-1, -2)


def melspectrogram(
    y: np.ndarray,
    *,
    sr: int = 22050,
    n_fft: int = 2048,
    hop_length: int = 512,
    win_length: int | None = None,
    n_mels: int = 128,
    fmin: float = 0.0,
    fmax: float | None = None,
    power: float = 2.0,
    htk: bool = False,
    norm: str | None = "slaney",
    device: str | torch.device = "cpu",
    backend: str = "auto",
) -> np.ndarray:
    """Mel spectrogram, identical in definition to ``librosa.feature.melspectrogram``.

    Returns
    -------
    np.ndarray, float32, shape (n_mels, n_frames)
    """
    if not _use_torch(backend, device):
        import librosa

        S = librosa.feature.melspectrogram(
            y=np.asarray(y, dtype=np.float32), sr=sr, n_fft=n_fft, hop_length=hop_length,
            win_length=win_length, n_mels=n_mels, fmin=fmin, fmax=fmax, power=power, htk=htk, norm=norm,
        )
        return S.astype(np.float32, copy=False)
    return mel_torch(
        y, sr=sr, n_fft=n_fft, hop_length=hop_length, win_length=win_length, n_mels=n_mels, fmin=fmin,
        fmax=fmax, power=power, htk=htk, norm=norm, device=device,
    ).float().cpu().numpy()


def mel_torch(
    y, *, sr, n_fft, hop_length, win_length=None, n_mels=128, fmin=0.0, fmax=None, power=2.0, htk=False,
    norm="slaney", device="cpu", dtype=torch.float64,
) -> torch.Tensor:
    """Torch mel spectrogram on ``device``: tensor of shape (..., n_mels, n_frames)."""
    device = torch.device(device)
    S = stft_power(y, n_fft=n_fft, hop_length=hop_length, win_length=win_length, power=power, device=device,
                   dtype=dtype)
    basis = _mel_basis(sr, n_fft, n_mels, fmin, fmax, htk, norm, device, dtype)
    return torch.matmul(basis, S)


def power_to_db_torch(S: torch.Tensor, *, ref: float = 1.0, amin: float = AMIN, top_db: float | None = TOP_DB):
    """``librosa.power_to_db`` for a tensor with ``ref`` a constant (the max is over the whole tensor)."""
    log_spec = 10.0 * torch.log10(torch.clamp(S, min=amin))
    log_spec = log_spec - 10.0 * np.log10(max(amin, ref))
    if top_db is not None:
        log_spec = torch.maximum(log_spec, log_spec.max() - top_db)
    return log_spec


def mfcc(
    y: np.ndarray,
    *,
    sr: int = 22050,
    n_mfcc: int = 20,
    n_fft: int = 2048,
    hop_length: int = 512,
    win_length: int | None = None,
    n_mels: int = 128,
    fmin: float = 0.0,
    fmax: float | None = None,
    htk: bool = False,
    norm: str | None = "slaney",
    device: str | torch.device = "cpu",
    backend: str = "auto",
) -> np.ndarray:
    """MFCCs, identical in definition to ``librosa.feature.mfcc`` (DCT-II ortho, no liftering).

    Returns
    -------
    np.ndarray, float32, shape (n_mfcc, n_frames)
    """
    if not _use_torch(backend, device, n_fft):
        import librosa

        # what librosa.feature.mfcc(y=...) does; its own ``norm`` keyword is the DCT's, so the mel
        # spectrogram is passed as S to keep the mel ``norm`` configurable
        S = melspectrogram(y, sr=sr, n_fft=n_fft, hop_length=hop_length, win_length=win_length, n_mels=n_mels,
                           fmin=fmin, fmax=fmax, htk=htk, norm=norm, backend="librosa")
        out = librosa.feature.mfcc(S=librosa.power_to_db(S), n_mfcc=n_mfcc)
        return out.astype(np.float32, copy=False)
    device = torch.device(device)
    S = mel_torch(y, sr=sr, n_fft=n_fft, hop_length=hop_length, win_length=win_length, n_mels=n_mels, fmin=fmin,
                  fmax=fmax, htk=htk, norm=norm, device=device)
    S_db = power_to_db_torch(S)
    return torch.matmul(_dct_matrix(n_mels, n_mfcc, device, S.dtype), S_db).float().cpu().numpy()
