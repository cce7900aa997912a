"""musicnn without TensorFlow: the checkpoint reader, the PyTorch port against an independent NumPy
implementation of the same graph, and the real model's tags on rendered music.

How tests/fixtures/musicnn_reference.npz was made (TensorFlow cannot be installed here, so the original
graph could not be run): ``python tests/test_audio_musicnn.py`` renders the first 6.1 s of Joplin's
Maple Leaf Rag (music21 corpus) with the General-MIDI piano, computes musicnn's input (two 187x96
log-mel patches) and runs :func:`numpy_musicnn` below, a straightforward NumPy transcription of
musicnn's ``models.py`` written separately from the torch port: NHWC tensors as in TF, the TF
kernels used as stored (no transposes), convolutions as explicit loops over kernel taps, TF 'same'
padding, batch norm with epsilon 1e-3, TF's interleaved concat-and-flatten of the pooled features.
It stores the input patches and the four outputs. The weights of both implementations come from the
wheel through :func:`genrecli.audio.tfckpt.read_checkpoint` (checked separately below).
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from genrecli.audio import musicnn
from genrecli.audio.tfckpt import CheckpointError, read_checkpoint

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "musicnn_reference.npz"
EPS = 1e-3


# ------------------------------------------------------------------ independent NumPy reference


def _bn(ck, name, x):
    g, b = ck[f"{name}/gamma"], ck[f"{name}/beta"]
    m, v = ck[f"{name}/moving_mean"], ck[f"{name}/moving_variance"]
    return g * (x - m) / np.sqrt(v + EPS) + b  # channels last


def _conv_valid(x, kernel, bias):
    """TF conv2d, 'valid', NHWC x (B, H, W, C) with kernel (kh, kw, C, O): explicit loop over taps."""
    kh, kw, _, n_out = kernel.shape
    B, H, W, _ = x.shape
    out = np.zeros((B, H - kh + 1, W - kw + 1, n_out), dtype=np.float64)
    for i in range(kh):
        for j in range(kw):
            out += x[:, i : i + H - kh + 1, j : j + W - kw + 1, :] @ kernel[i, j]
    return out + bias


def numpy_musicnn(ck: dict, x: np.ndarray) -> dict[str, np.ndarray]:
    """musicnn (MTT/MSD, 64-filter mid-end, 200-unit back end) on patches x (B, 187, 96), float64."""
    ck = {k: v.astype(np.float64) for k, v in ck.items()}
    relu = lambda a: np.maximum(a, 0.0)  # noqa: E731
    h = _bn(ck, "batch_normalization", x.astype(np.float64)[..., None])  # (B, T, 96, 1)
    padded = np.pad(h, ((0, 0), (3, 3), (0, 0), (0, 0)))
    f74 = _bn(ck, "batch_normalization_1", relu(_conv_valid(padded, ck["conv2d/kernel"], ck["conv2d/bias"])))
    f77 = _bn(ck, "batch_normalization_2", relu(_conv_valid(padded, ck["conv2d_1/kernel"], ck["conv2d_1/bias"])))
    front = [f74.max(axis=2), f77.max(axis=2)]
    for conv, bn in (("conv2d_2", "batch_normalization_3"), ("conv2d_3", "batch_normalization_4"),
                     ("conv2d_4", "batch_normalization_5")):
        k = ck[f"{conv}/kernel"].shape[0]
        same = np.pad(h, ((0, 0), ((k - 1) // 2, k // 2), (0, 0), (0, 0)))  # TF 'same' for even k
        front.append(_bn(ck, bn, relu(_conv_valid(same, ck[f"{conv}/kernel"], ck[f"{conv}/bias"]))).max(axis=2))
    front = np.concatenate(front, axis=2)  # (B, T, 561)

    def mid(inp, conv, bn):  # conv over the whole feature axis == kernel (7, n_features, 1, 64)
        padded = np.pad(inp, ((0, 0), (3, 3), (0, 0)))[..., None]
        return _bn(ck, bn, relu(_conv_valid(padded, ck[f"{conv}/kernel"], ck[f"{conv}/bias"])))[:, :, 0, :]

    m1 = mid(front, "conv2d_5", "batch_normalization_6")
    m2 = mid(m1, "conv2d_6", "batch_normalization_7") + m1
    m3 = mid(m2, "conv2d_7", "batch_normalization_8") + m2
    feats = np.concatenate([front, m1, m2, m3], axis=2)  # (B, T, 753)
    max_pool, mean_pool = feats.max(axis=1), feats.mean(axis=1)
    flat = np.stack([max_pool, mean_pool], axis=2).reshape(len(x), -1)  # TF concat(axis=2) + flatten
    flat = _bn(ck, "batch_normalization_9", flat)
    pen = _bn(ck, "batch_normalization_10", relu(flat @ ck["dense/kernel"] + ck["dense/bias"]))
    logits = pen @ ck["dense_1/kernel"] + ck["dense_1/bias"]
    return {"taggram": 1.0 / (1.0 + np.exp(-logits)), "penultimate": pen, "max_pool": max_pool,
            "mean_pool": mean_pool}


def make_reference(path: pathlib.Path = FIXTURE) -> None:
    import music21

    from genrecli.audio import load_track_audio

    score = pathlib.Path(music21.__file__).parent / "corpus" / "joplin" / "maple_leaf_rag.mxl"
    y = load_track_audio(sr=musicnn.SAMPLE_RATE, score=score, max_seconds=6.1)
    x = musicnn.patches(musicnn.log_mel(y))[:2]
    out = numpy_musicnn(read_checkpoint(musicnn.checkpoint_prefix("MTT_musicnn")), x)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, input=x, **{k: v.astype(np.float32) for k, v in out.items()})


# ------------------------------------------------------------------ tests


@pytest.fixture(scope="module")
def net():
    return musicnn.load_musicnn("MTT_musicnn")


def test_checkpoint_reader_reads_all_musicnn_variables():
    ck = read_checkpoint(musicnn.checkpoint_prefix("MTT_musicnn"))
    assert ck["conv2d/kernel"].shape == (7, 38, 1, 204) and ck["conv2d/kernel"].dtype == np.float32
    assert ck["dense/kernel"].shape == (1506, 200) and ck["dense_1/kernel"].shape == (200, 50)
    assert not any("Adam" in k for k in ck)  # optimizer slots skipped
    assert all(np.isfinite(v).all() for v in ck.values())
    assert (ck["batch_normalization_9/moving_variance"] > 0).all()
    msd = read_checkpoint(musicnn.checkpoint_prefix("MSD_musicnn"))
    assert set(msd) == set(ck) and not np.array_equal(msd["dense_1/kernel"], ck["dense_1/kernel"])


def test_checkpoint_reader_rejects_bad_files(tmp_path):
    with pytest.raises(CheckpointError, match="cannot read"):
        read_checkpoint(tmp_path / "missing")
    (tmp_path / "bad.index").write_bytes(b"\0" * 100)
    with pytest.raises(CheckpointError, match="not a TensorFlow V2"):
        read_checkpoint(tmp_path / "bad")


def test_port_matches_numpy_reference(net):
    ref = np.load(FIXTURE)
    assert ref["input"].shape == (2, 187, 96)
    out = musicnn.run(net, ref["input"])
    np.testing.assert_allclose(out["taggram"], ref["taggram"], atol=2e-5)
    np.testing.assert_allclose(out["penultimate"], ref["penultimate"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["mean_pool"], ref["mean_pool"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["max_pool"], ref["max_pool"], rtol=1e-4, atol=1e-3)


def test_rendered_piano_gets_piano_tags(net):
    import music21

    from genrecli.audio import load_track_audio

    score = pathlib.Path(music21.__file__).parent / "corpus" / "joplin" / "maple_leaf_rag.mxl"
    y = load_track_audio(sr=musicnn.SAMPLE_RATE, score=score, max_seconds=15.0)
    out = musicnn.run(net, musicnn.patches(musicnn.log_mel(y)))
    assert out["taggram"].shape == (5, 50)
    tags = musicnn.tag_names("MTT_musicnn")
    top5 = [tags[i] for i in np.argsort(-out["taggram"].mean(axis=0))[:5]]
    assert "piano" in top5, top5
    assert not {"techno", "metal", "rock", "drums"} & set(top5), top5


def test_patches_repeat_pad_short_input():
    rep = np.arange(50 * 96, dtype=np.float32).reshape(50, 96)
    p = musicnn.patches(rep)
    assert p.shape == (1, 187, 96)
    np.testing.assert_array_equal(p[0, 50:100], rep)
    assert musicnn.patches(np.zeros((400, 96), np.float32)).shape == (2, 187, 96)


def test_tag_names_read_without_importing_musicnn():
    import sys

    assert musicnn.tag_names("MTT_musicnn")[:3] == ("guitar", "classical", "slow")
    assert len(musicnn.tag_names("MSD_musicnn")) == 50 and musicnn.tag_names("MSD_musicnn")[0] == "rock"
    assert "musicnn" not in sys.modules and "tensorflow" not in sys.modules


if __name__ == "__main__":
    make_reference()
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)")
