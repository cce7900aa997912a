"""musicnn (Pons & Serra, 2019) in PyTorch, with the real weights of the ``musicnn`` wheel.

The wheel ships TF1 checkpoints of MTT_musicnn and MSD_musicnn but imports TensorFlow, which cannot
be installed here; the package is therefore never imported. Its checkpoint files are located with
:func:`importlib.util.find_spec`, read by :mod:`genrecli.audio.tfckpt`, and loaded into the port below.

Front end (musicnn's ``batch_data``): 16 kHz audio, librosa mel power spectrogram (n_fft 512, hop 256,
96 Slaney mel bands), rounded to float16 as musicnn stores it, then ``log10(10000 * mel + 1)``
computed in float32 (the original multiplies in float16 and overflows to inf on loud input), cut into
non-overlapping 187-frame (3 s) patches. A track shorter than one patch is repeat-padded, as in the
training setup (``pad_short: repeat-pad``).

Network (``build_musicnn`` with ``7774timbraltemporal`` front end, 64-filter mid-end, 200-unit back
end): batch norm on the input; timbral convs 7x38 and 7x67 (time x mel, time padded 3+3, valid over
mel) and temporal convs 128x1, 64x1, 32x1 (TF 'same': (k-1)//2 before, k//2 after), each ReLU -> BN ->
max over mel; 561 channels; three 7-tap 1-D convs over time (ReLU -> BN, residual for the 2nd and
3rd); the 753-channel concatenation is max- and mean-pooled over time, interleaved per channel
(TF's ``concat(axis=2)`` + flatten), BN -> dense 200 ReLU -> BN ("penultimate") -> dense 50 ->
sigmoid ("taggram"). TF batch norm epsilon 1e-3.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import pathlib

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from genrecli.errors import UsageError

SAMPLE_RATE = 16000
N_FFT = 512
HOP = 256
N_MELS = 96
PATCH_FRAMES = 187  # 3 s
BN_EPS = 1e-3
MODELS = ("MTT_musicnn", "MSD_musicnn")


def package_dir() -> pathlib.Path:
    """Folder of the installed ``musicnn`` wheel (found without importing it: it imports TensorFlow)."""
    spec = importlib.util.find_spec("musicnn")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError("musicnn weights missing: install them with `pip install --no-deps musicnn==0.1.0`")
    return pathlib.Path(list(spec.submodule_search_locations)[0])


def checkpoint_prefix(model: str = "MTT_musicnn") -> str:
    """Prefix of the TF checkpoint bundle of ``model`` (the files are ``.index``/``.data-...``)."""
    if model not in MODELS:
        raise UsageError(f"unknown musicnn model {model!r} (expected one of {', '.join(MODELS)})")
    folder = package_dir() / model
    if not (folder / ".index").is_file():
        raise UsageError(f"{folder}: musicnn checkpoint missing (reinstall `pip install --no-deps musicnn==0.1.0`)")
    return str(folder) + "/"


@functools.lru_cache(maxsize=2)
def tag_names(model: str = "MTT_musicnn") -> tuple[str, ...]:
    """The 50 tags of ``model``, in output order (read from the wheel's configuration.py as text)."""
    source = (package_dir() / "configuration.py").read_text()
    wanted = "MTT_LABELS" if model.startswith("MTT") else "MSD_LABELS"
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == wanted for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    raise UsageError(f"{package_dir()}/configuration.py: no {wanted}")


class _BN(nn.Module):
    """Inference-only batch norm over dim 1 with TF's epsilon (buffers named like torch's BatchNorm)."""

    def __init__(self, n: int):
        super().__init__()
        self.register_buffer("weight", torch.ones(n))
        self.register_buffer("bias", torch.zeros(n))
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.ones(n))

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, BN_EPS)


class MusiCNN(nn.Module):
    """The musicnn graph (MTT_musicnn / MSD_musicnn sizes). Input (batch, 187, 96) log-mel patches."""

    def __init__(self, n_mels: int = N_MELS, n_timbral: int = 204, n_temporal: int = 51, n_mid: int = 64,
                 n_dense: int = 200, n_tags: int = 50):
        super().__init__()
        self.bn_input = _BN(1)
        self.timbral = nn.ModuleList(
            [nn.Conv2d(1, n_timbral, (7, int(0.4 * n_mels))), nn.Conv2d(1, n_timbral, (7, int(0.7 * n_mels)))]
        )
        self.bn_timbral = nn.ModuleList([_BN(n_timbral), _BN(n_timbral)])
        self.temporal = nn.ModuleList([nn.Conv2d(1, n_temporal, (k, 1)) for k in (128, 64, 32)])
        self.bn_temporal = nn.ModuleList([_BN(n_temporal) for _ in range(3)])
        n_front = 2 * n_timbral + 3 * n_temporal
        self.mid = nn.ModuleList([nn.Conv1d(n_front, n_mid, 7), nn.Conv1d(n_mid, n_mid, 7), nn.Conv1d(n_mid, n_mid, 7)])
        self.bn_mid = nn.ModuleList([_BN(n_mid) for _ in range(3)])
        n_pool = n_front + 3 * n_mid
        self.bn_pool = _BN(2 * n_pool)
        self.dense = nn.Linear(2 * n_pool, n_dense)
        self.bn_dense = _BN(n_dense)
        self.output = nn.Linear(n_dense, n_tags)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Returns taggram (B, 50), penultimate (B, 200), max_pool and mean_pool (B, 753)."""
        h = self.bn_input(x.unsqueeze(1))  # (B, 1, T, F)
        front = []
        padded = F.pad(h, (0, 0, 3, 3))
        for conv, bn in zip(self.timbral, self.bn_timbral):
            front.append(bn(F.relu(conv(padded))).amax(dim=3))
        for conv, bn in zip(self.temporal, self.bn_temporal):
            k = conv.kernel_size[0]
            front.append(bn(F.relu(conv(F.pad(h, (0, 0, (k - 1) // 2, k // 2))))).amax(dim=3))
        front = torch.cat(front, dim=1)  # (B, 561, T)
        m1 = self.bn_mid[0](F.relu(self.mid[0](F.pad(front, (3, 3)))))
        m2 = self.bn_mid[1](F.relu(self.mid[1](F.pad(m1, (3, 3))))) + m1
        m3 = self.bn_mid[2](F.relu(self.mid[2](F.pad(m2, (3, 3))))) + m2
        mid = torch.cat([front, m1, m2, m3], dim=1)  # (B, 753, T)
        max_pool, mean_pool = mid.amax(dim=2), mid.mean(dim=2)
        pooled = torch.stack([max_pool, mean_pool], dim=2).flatten(1)  # interleaved like TF
        penultimate = self.bn_dense(F.relu(self.dense(self.bn_pool(pooled))))
        taggram = torch.sigmoid(self.output(penultimate))
        return {"taggram": taggram, "penultimate": penultimate, "max_pool": max_pool, "mean_pool": mean_pool}


def _tf_state_dict(ck: dict) -> dict[str, torch.Tensor]:
    """Map TF variable names to :class:`MusiCNN` state-dict names (kernels transposed to torch layout)."""
    out = {}

    def bn(tf_name, name):
        for ours, theirs in (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
                             ("running_var", "moving_variance")):
            out[f"{name}.{ours}"] = ck[f"{tf_name}/{theirs}"]

    def conv2d(tf_name, name):  # TF (kh, kw, in, out) -> torch (out, in, kh, kw)
        out[f"{name}.weight"] = ck[f"{tf_name}/kernel"].transpose(3, 2, 0, 1)
        out[f"{name}.bias"] = ck[f"{tf_name}/bias"]

    def conv1d(tf_name, name):  # TF (k, channels, 1, out) over the whole feature axis -> torch (out, channels, k)
        out[f"{name}.weight"] = ck[f"{tf_name}/kernel"][:, :, 0, :].transpose(2, 1, 0)
        out[f"{name}.bias"] = ck[f"{tf_name}/bias"]

    def dense(tf_name, name):  # TF (in, out) -> torch (out, in)
        out[f"{name}.weight"] = ck[f"{tf_name}/kernel"].T
        out[f"{name}.bias"] = ck[f"{tf_name}/bias"]

    bn("batch_normalization", "bn_input")
    conv2d("conv2d", "timbral.0")
    conv2d("conv2d_1", "timbral.1")
    bn("batch_normalization_1", "bn_timbral.0")
    bn("batch_normalization_2", "bn_timbral.1")
    for i in range(3):
        conv2d(f"conv2d_{2 + i}", f"temporal.{i}")
        bn(f"batch_normalization_{3 + i}", f"bn_temporal.{i}")
        conv1d(f"conv2d_{5 + i}", f"mid.{i}")
        bn(f"batch_normalization_{6 + i}", f"bn_mid.{i}")
    bn("batch_normalization_9", "bn_pool")
    dense("dense", "dense")
    bn("batch_normalization_10", "bn_dense")
    dense("dense_1", "output")
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in out.items()}


def load_musicnn(model: str = "MTT_musicnn", device: str | torch.device = "cpu") -> MusiCNN:
    """Build :class:`MusiCNN` with the wheel's pretrained weights, in eval mode on ``device``."""
    from genrecli.audio.tfckpt import CheckpointError, read_checkpoint

    try:
        ck = read_checkpoint(checkpoint_prefix(model))
    except CheckpointError as exc:
        raise UsageError(f"musicnn {model}: {exc}") from None
    net = MusiCNN()
    net.load_state_dict(_tf_state_dict(ck), strict=True)
    return net.eval().to(device)


def log_mel(y16k: np.ndarray, *, device="cpu") -> np.ndarray:
    """musicnn's input representation of 16 kHz audio: float32 array (n_frames, 96)."""
    from genrecli.audio.frontend import melspectrogram

    mel = melspectrogram(y16k, sr=SAMPLE_RATE, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS, device=device)
    mel = mel.T.astype(np.float16).astype(np.float32)
    return np.log10(10000.0 * mel + 1.0).astype(np.float32)


def patches(rep: np.ndarray, n_frames: int = PATCH_FRAMES) -> np.ndarray:
    """Non-overlapping ``n_frames`` patches of a (T, F) representation, repeat-padded when T < n_frames.

    Returns
    -------
    np.ndarray, float32, shape (n_patches, n_frames, F)
    """
    if rep.shape[0] < n_frames:
        reps = -(-n_frames // max(rep.shape[0], 1))
        rep = np.tile(rep, (reps, 1))[:n_frames]
    n = rep.shape[0] // n_frames
    return np.ascontiguousarray(rep[: n * n_frames].reshape(n, n_frames, rep.shape[1]), dtype=np.float32)


def run(net: MusiCNN, batch: np.ndarray, *, device="cpu", batch_size: int = 32) -> dict[str, np.ndarray]:
    """Forward (n_patches, 187, 96) patches in batches; float32 numpy outputs per patch."""
    outs: dict[str, list] = {}
    with torch.inference_mode():
        for start in range(0, len(batch), batch_size):
            x = torch.from_numpy(batch[start : start + batch_size]).to(device)
            for key, value in net(x).items():
                outs.setdefault(key, []).append(value.float().cpu().numpy())
    return {k: np.concatenate(v) for k, v in outs.items()}
