"""Patch features on disk: whole-row HDF5 chunks, and FeatureView holding small groups in memory."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from genrecli import store
from genrecli.pipeline import features
from genrecli.pipeline.features import FeatureView


@pytest.mark.parametrize(("shape", "itemsize", "want"), [
    ((777, 96, 323), 4, (2, 96, 323)),      # 124 KB rows: two per 256 KiB chunk
    ((10, 128, 1292), 4, (1, 128, 1292)),   # a row bigger than the target: one per chunk, never split
    ((5000, 80), 4, (819, 80)),             # vectors: many rows per chunk
    ((3, 80), 4, (3, 80)),                  # never more rows than there are
    ((100,), 4, None), ((0, 5), 4, None),   # 1-D / empty: h5py decides
])
def test_row_chunks(shape, itemsize, want):
    assert store.row_chunks(shape, itemsize) == want


def _write(path, data, tag):
    store.write_feature(path, "audio/p", data, np.ones(len(data), bool), {"tag": tag})


def test_patch_groups_are_chunked_by_whole_rows(tmp_path):
    data = np.random.default_rng(0).standard_normal((40, 24, 50)).astype(np.float32)
    _write(tmp_path / "f.h5", data, 1)
    with store.open_read(tmp_path / "f.h5") as h5:
        chunks = h5["audio/p/data"].chunks
    assert chunks[1:] == (24, 50) and chunks[0] >= 1


def test_feature_view_resident_or_on_disk_reads_the_same_rows(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    data = rng.standard_normal((30, 8, 20)).astype(np.float32)
    path = tmp_path / "f.h5"
    _write(path, data, 1)
    rows = np.array([29, 3, 3, 17, 0, 8])
    picks = np.array([4, 0, 2, 2, 5])
    features._RESIDENT.clear()

    monkeypatch.setenv("GENRE_RESIDENT_BYTES", "0")  # nothing fits: read per batch from disk
    lazy = FeatureView(path, "audio/p", rows)
    np.testing.assert_array_equal(lazy[picks], data[rows[picks]])
    assert isinstance(lazy._data, h5py.Dataset) and not features._RESIDENT

    monkeypatch.setenv("GENRE_RESIDENT_BYTES", str(data.nbytes))  # exactly fits: read once, then from memory
    held = FeatureView(path, "audio/p", rows)
    np.testing.assert_array_equal(held[picks], data[rows[picks]])
    np.testing.assert_array_equal(held[2], data[3])
    assert isinstance(held._data, np.ndarray) and len(features._RESIDENT) == 1

    # the group rewritten (new content): a new view reads the new data, and the old copy is dropped
    _write(path, data + 1, 2)
    again = FeatureView(path, "audio/p", rows)
    np.testing.assert_array_equal(again[picks], data[rows[picks]] + 1)
    assert len(features._RESIDENT) == 1
    features._RESIDENT.clear()


def test_resident_budget_is_validated(monkeypatch):
    monkeypatch.setenv("GENRE_RESIDENT_BYTES", "lots")
    from genrecli.errors import UsageError

    with pytest.raises(UsageError, match="GENRE_RESIDENT_BYTES"):
        features.resident_budget()
    monkeypatch.delenv("GENRE_RESIDENT_BYTES")
    assert 0 < features.resident_budget() <= 4 << 30
