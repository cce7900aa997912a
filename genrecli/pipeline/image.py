"""``genre extract-image``: each track's cover image -> a frozen ImageNet backbone -> ``/image/<backbone>``.

The group (``features.h5:/image/efficientnet-lite0``, or ``/image/<folder name>`` for a local Hugging Face
ResNet directory) holds ``data`` (n x d float32, one row per manifest track) and ``valid``. A track's cover
is the manifest's ``Track.image`` (MuMu's loader sets it to ``images/<amazon_id>.{jpg,jpeg,png}``).

Failures, all masked (NaN row, ``valid`` False) and recorded under ``/failed`` for the group:

* a cover that cannot be read (missing since ingest, corrupt, not an image): one warning line per file naming
  it and the cause; these are the stage's failures (exit code 2 from the CLI);
* a track without any cover in the manifest: recorded as ``no cover image in the manifest``, reported by one
  summary line for all such tracks. A corpus whose albums partly lack covers (MuMu) is not a failed run, so
  these do not count as failures of the stage (the exit code stays 0 when nothing else failed).

Parameters of the group: :func:`genrecli.image.embed.image_feature_params` (input image, backbone and the
sha256 of its weights, ``source``), plus ``manifest`` (the manifest's content hash), ``images`` (a digest of
every cover file's bytes, in manifest order: a cover changed on disk since ingest recomputes) and ``device``
(the device type the backbone ran on: a GPU's convolutions agree with the CPU's to ~1e-5, not bit for bit).
The embedding is resumable: finished batches are checkpointed under ``.partial/image``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from genrecli import store, ui
from genrecli.errors import UsageError
from genrecli.layout import DatasetPaths
from genrecli.manifest import read_manifest
from genrecli.pipeline import StageResult, up_to_date
from genrecli.pipeline.features import iter_chunks, write_feature_group

NO_COVER = "no cover image in the manifest"
CHECKPOINT_BATCHES = 4  # batches per checkpoint chunk: a kill loses at most this much work
RUNTIME_KEYS = ("manifest", "images", "device", "shard")  # corpus and runtime parts of the params, not the feature


def image_group_name(backbone: str) -> str:
    """``image/efficientnet-lite0``, or ``image/<sanitised folder name>`` of a local ResNet directory."""
    from genrecli.image.embed import backbone_group_name

    return f"image/{backbone_group_name(backbone)}"


def covers_digest(tracks) -> tuple[str, dict[int, str]]:
    """A digest of every track's cover bytes (manifest order) and the rows whose cover cannot be opened.

    Parameters
    ----------
    tracks : sequence of :class:`~genrecli.manifest.Track`

    Returns
    -------
    digest : str
        sha256 over ``(track id, sha256 of its cover or a marker)`` lines.
    unreadable : dict
        Row -> one line naming the file and the cause, for covers that cannot be opened at all.
    """
    h = hashlib.sha256()
    unreadable: dict[int, str] = {}
    for row, track in enumerate(tracks):
        if not track.image:
            mark = "-"
        else:
            try:
                mark = store.file_sha256(track.image)
            except OSError as exc:
                mark = "unreadable"
                cause = "no such file" if isinstance(exc, FileNotFoundError) else (exc.strerror or type(exc).__name__)
                unreadable[row] = f"{track.image}: {cause}"
        h.update(f"{track.id}\t{mark}\n".encode())
    return h.hexdigest()[:16], unreadable


def extract_image(
    data: str,
    *,
    backbone: str = "efficientnet-lite0",
    batch_size: int = 32,
    device: str = "cpu",
    data_home: str | Path | None = None,
    force: bool = False,
) -> StageResult:
    """Embed every track's cover image into ``features.h5:/image/<backbone>``.

    Parameters
    ----------
    data : str
        Dataset name under the data home.
    backbone : str
        ``'efficientnet-lite0'`` (the bundled EfficientNet-Lite0, 1280-d) or a local Hugging Face
        ``ResNetForImageClassification`` directory (e.g. a ``microsoft/resnet-101`` snapshot, 2048-d).
    batch_size : int
        Images per forward pass; the backbone is loaded once.
    device : str
        Where the backbone runs (cpu, cuda, cuda:N, auto).
    data_home : path, optional
        The data home (default ``$GENRE_DATA_HOME``, else ``./data``).
    force : bool
        Recompute even when the stored group is up to date.

    Returns
    -------
    StageResult
        ``written`` / ``up_to_date`` name the group; ``failures`` maps the id of each track whose cover could
        not be read to one line naming the file and the cause (tracks without a cover are not in it).

    Raises
    ------
    UsageError
        An unknown backbone or unloadable weights, ``batch_size < 1``, or no track with a readable cover.
    """
    from genrecli.device import resolve_device
    from genrecli.image.embed import _is_local_dir, embed_image_files, image_feature_params

    if isinstance(batch_size, bool) or int(batch_size) < 1:
        raise UsageError(f"batch_size must be >= 1 (got {batch_size})")
    if _is_local_dir(backbone) and not Path(backbone).expanduser().is_dir():
        raise UsageError(f"image backbone {backbone!r}: expected 'efficientnet-lite0' or a local Hugging Face "
                         "ResNet directory (config.json + weights)")
    device_type = resolve_device(device).type
    paths = DatasetPaths.of(data, data_home)
    manifest = read_manifest(paths.manifest)
    tracks = manifest.tracks
    group = image_group_name(backbone)
    target = paths.features()
    digest_images, unopenable = covers_digest(tracks)
    params = {**image_feature_params(backbone), "manifest": manifest.content_hash(), "images": digest_images,
              "device": device_type}
    digest = store.params_hash(params)
    result = StageResult()
    if up_to_date(target, group, digest, force=force, result=result, changed="parameters, manifest or cover files"):
        return result

    missing = [r for r, t in enumerate(tracks) if not t.image]
    with_cover = [r for r, t in enumerate(tracks) if t.image]
    if not with_cover:
        raise UsageError(f"{paths.manifest}: no track of '{paths.name}' has a cover image (Track.image); "
                         "ingest a corpus with covers (mumu: images/<amazon_id>.jpg)")
    checkpoint = store.RowCheckpoint(paths.partial / "image", digest)
    done, failed = checkpoint.load()
    if done or failed:
        ui.info(f"{group}: resuming, {len(done) + len(failed)} covers already done")
    for row, msg in unopenable.items():  # named once, without a decode attempt
        if row not in done and row not in failed:
            failed[row] = msg
            ui.warn(f"{tracks[row].id}: {msg}")
    todo = [r for r in with_cover if r not in done and r not in failed]
    with ui.progress(len(todo), f"embed covers ({group})") as advance:
        for chunk in iter_chunks(todo, int(batch_size) * CHECKPOINT_BATCHES):
            z, errors = embed_image_files([tracks[r].image for r in chunk], backbone=backbone, device=device,
                                          batch_size=batch_size, progress=advance)
            values = {r: {"embedding": z[i]} for i, r in enumerate(chunk) if i not in errors}
            bad = {chunk[i]: msg for i, msg in errors.items()}
            for r, msg in bad.items():
                ui.warn(f"{tracks[r].id}: {msg}")
            checkpoint.save(values, bad)
            done.update(values)
            failed.update(bad)
    if not done:
        example = next(iter(failed.items()))
        checkpoint.clear()
        raise UsageError(f"{paths.name}: no cover image could be read ({len(failed)} tried, e.g. "
                         f"{tracks[example[0]].id}: {example[1]})")
    dim = len(next(iter(done.values()))["embedding"])
    out = np.full((len(tracks), dim), np.nan, dtype=np.float32)
    valid = np.zeros(len(tracks), dtype=bool)
    for r, value in done.items():
        out[r] = value["embedding"]
        valid[r] = True
    unreadable = {tracks[r].id: msg for r, msg in sorted(failed.items())}
    recorded = {**{tracks[r].id: NO_COVER for r in missing}, **unreadable}
    with store.write_transaction(target) as h5:
        write_feature_group(h5, group, out, valid, params, recorded)
    checkpoint.clear()
    if missing:
        ui.warn(f"{group}: {len(missing)} track(s) have no cover image in the manifest (e.g. {tracks[missing[0]].id}); "
                "their rows are NaN and recorded in the store")
    ui.info(f"{target}: wrote {group} ({int(valid.sum())} covers, dim {dim}; {len(unreadable)} unreadable, "
            f"{len(missing)} without a cover)")
    result.written.append(group)
    result.failures.update(unreadable)
    return result
