"""VGGish (Hershey et al., 2017) in plain torch, loading torchvggish's state dict (``vggish-10086976.pth``).

No package on PyPI bundles VGGish weights; the user supplies them (``--weights FILE``): a torchvggish
``.pth`` state dict, or the same tensors as ``.safetensors``. Files are loaded with
``torch.load(weights_only=True)``, never unpickling arbitrary objects.

Front end (AudioSet ``vggish_input.waveform_to_examples`` / ``mel_features``): 16 kHz mono; 25 ms
(400-sample) periodic-Hann frames every 10 ms without padding; magnitude ``|rfft|`` with n_fft 512;
64 HTK-mel triangles between 125 and 7500 Hz (unnormalised, DC bin zeroed); ``log(mel + 0.01)``;
non-overlapping 96-frame (0.96 s) examples -> (n_examples, 1, 96, 64). Clips shorter than one
example (0.985 s) are repeat-padded to one.

Network: conv 3x3 stack [64, M, 128, M, 256, 256, M, 512, 512, M] (ReLU, 2x2 max-pool), flatten in
TF's NHWC order, then 12288 -> 4096 -> 4096 -> 128 fully connected with ReLUs. torchvggish keeps a
ReLU after the 128-d layer (``final_relu=True``, default, as the weights were converted for it); the
current TF ``vggish_slim`` has none. Module names follow torchvggish: ``features.{0,3,6,8,11,13}``,
``embeddings.{0,2,4}``.

Optional PCA post-processing (``pca=FILE``: ``vggish_pca_params`` as .npz or torchvggish's .pth with
``pca_eigen_vectors`` and ``pca_means``): ``E @ (x - mu)``, clipped to [-2, 2], quantised to 0..255.
"""

from __future__ import annotations

import functools
import pathlib

import numpy as np
import torch
import torch.nn as nn

from genrecli.errors import UsageError

SAMPLE_RATE = 16000
WINDOW = 400  # 25 ms
HOP = 160  # 10 ms
N_FFT = 512
N_MELS = 64
FMIN, FMAX = 125.0, 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96  # 0.96 s
EMBEDDING = 128
_CONFIG = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M"]


class VGGish(nn.Module):
    """The VGGish network. Input (batch, 1, 96, 64) log-mel examples; output (batch, 128)."""

    def __init__(self, *, final_relu: bool = True, width: int = 1):
        super().__init__()
        layers, channels = [], 1
        for v in _CONFIG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                out = v // width
                layers += [nn.Conv2d(channels, out, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = out
        self.features = nn.Sequential(*layers)
        hidden = 4096 // width
        head = [nn.Linear(channels * 6 * 4, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden),
                nn.ReLU(inplace=True), nn.Linear(hidden, EMBEDDING)]
        if final_relu:
            head.append(nn.ReLU(inplace=True))
        self.embeddings = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, 512, 6, 4)
        x = x.permute(0, 2, 3, 1).contiguous()  # NHWC, the order TF flattened in
        return self.embeddings(x.flatten(1))


def _load_tensors(path: pathlib.Path) -> dict:
    if not path.is_file():
        raise UsageError(f"vggish needs --weights FILE: {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        if path.suffix == ".npz":
            with np.load(path) as data:
                return {k: torch.from_numpy(data[k]) for k in data.files}
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle with objects, wrong format
        from genrecli.audio.io import one_line

        raise UsageError(f"{path}: cannot read VGGish weights ({one_line(exc)})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UsageError(f"{path}: not a state dict of tensors")
    return state


def load_vggish(path, *, final_relu: bool = True, device="cpu") -> VGGish:
    """VGGish with the weights of ``path`` (torchvggish state dict), eval mode, on ``device``."""
    path = pathlib.Path(path)
    state = _load_tensors(path)
    state = {k.removeprefix("module.").removeprefix("vggish."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if k.startswith(("features.", "embeddings."))}
    net = VGGish(final_relu=final_relu)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        missing = sorted(set(net.state_dict()) - set(state))[:3]
        raise UsageError(
            f"{path}: not torchvggish VGGish weights (missing {', '.join(missing) or 'none'}; "
            f"{str(exc).splitlines()[0]})"
        ) from None
    return net.eval().to(device)


def load_pca(path) -> tuple[np.ndarray, np.ndarray]:
    """``(eigen_vectors (128, 128), means (128,))`` from a vggish_pca_params .npz or torchvggish .pth."""
    state = _load_tensors(pathlib.Path(path))
    try:
        vectors = np.asarray(state["pca_eigen_vectors"], dtype=np.float64)
        means = np.asarray(state["pca_means"], dtype=np.float64).reshape(-1)
    except KeyError:
        raise UsageError(f"{path}: no pca_eigen_vectors / pca_means in the PCA file") from None
    if vectors.shape != (EMBEDDING, EMBEDDING) or means.shape != (EMBEDDING,):
        raise UsageError(f"{path}: PCA parameters have shapes {vectors.shape}, {means.shape}")
    return vectors, means


def postprocess(embeddings: np.ndarray, pca: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """AudioSet's PCA whitening and 8-bit quantisation, as floats 0..255."""
    vectors, means = pca
    projected = (embeddings.astype(np.float64) - means) @ vectors.T
    clipped = np.clip(projected, -2.0, 2.0)
    return np.round((clipped + 2.0) * 255.0 / 4.0).astype(np.float32)


def _hertz_to_mel(f):
    return 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


@functools.lru_cache(maxsize=1)
def mel_matrix() -> np.ndarray:
    """(257, 64) HTK mel weights exactly as AudioSet's ``spectrogram_to_mel_matrix``."""
    n_bins = N_FFT // 2 + 1
    spectrogram_mels = _hertz_to_mel(np.linspace(0.0, SAMPLE_RATE / 2, n_bins))
    edges = np.linspace(_hertz_to_mel(FMIN), _hertz_to_mel(FMAX), N_MELS + 2)
    weights = np.empty((n_bins, N_MELS))
    for i in range(N_MELS):
        lower, center, upper = edges[i : i + 3]
        lower_slope = (spectrogram_mels - lower) / (center - lower)
        upper_slope = (upper - spectrogram_mels) / (upper - center)
        weights[:, i] = np.maximum(0.0, np.minimum(lower_slope, upper_slope))
    weights[0, :] = 0.0
    return weights


def log_mel(y16k: np.ndarray, *, device="cpu") -> torch.Tensor:
    """(n_frames, 64) float32 log-mel of 16 kHz audio, on ``device`` (computed in float64)."""
    x = torch.as_tensor(np.asarray(y16k), dtype=torch.float64, device=device)
    if x.numel() < WINDOW:
        x = torch.nn.functional.pad(x, (0, WINDOW - x.numel()))
    frames = x.unfold(0, WINDOW, HOP)
    window = 0.5 - 0.5 * torch.cos(2 * np.pi * torch.arange(WINDOW, dtype=torch.float64, device=device) / WINDOW)
    magnitude = torch.fft.rfft(frames * window, n=N_FFT).abs()
    mel = magnitude @ torch.as_tensor(mel_matrix(), device=device)
    return torch.log(mel + LOG_OFFSET).float()


def examples(y16k: np.ndarray, *, device="cpu") -> torch.Tensor:
    """(n_examples, 1, 96, 64) non-overlapping 0.96 s examples (repeat-padded to at least one)."""
    rep = log_mel(y16k, device=device)
    if rep.shape[0] < EXAMPLE_FRAMES:
        rep = rep.repeat(-(-EXAMPLE_FRAMES // rep.shape[0]), 1)[:EXAMPLE_FRAMES]
    n = rep.shape[0] // EXAMPLE_FRAMES
    return rep[: n * EXAMPLE_FRAMES].reshape(n, 1, EXAMPLE_FRAMES, N_MELS)


# torchvggish's state-dict names and shapes, for compatibility checks
TORCHVGGISH_KEYS = {
    "features.0.weight": (64, 1, 3, 3), "features.0.bias": (64,),
    "features.3.weight": (128, 64, 3, 3), "features.3.bias": (128,),
    "features.6.weight": (256, 128, 3, 3), "features.6.bias": (256,),
    "features.8.weight": (256, 256, 3, 3), "features.8.bias": (256,),
    "features.11.weight": (512, 256, 3, 3), "features.11.bias": (512,),
    "features.13.weight": (512, 512, 3, 3), "features.13.bias": (512,),
    "embeddings.0.weight": (4096, 12288), "embeddings.0.bias": (4096,),
    "embeddings.2.weight": (4096, 4096), "embeddings.2.bias": (4096,),
    "embeddings.4.weight": (128, 4096), "embeddings.4.bias": (128,),
}  # fmt: skip
