"""Read TensorFlow V2 checkpoint bundles (``prefix.index`` + ``prefix.data-NNNNN-of-MMMMM``) without TensorFlow.

A V2 bundle's index is a LevelDB-style sorted table: data blocks of prefix-compressed key/value
records, an index block pointing at them, and a 48-byte footer ending in a magic number. Each value is
a ``BundleEntryProto`` (dtype, shape, shard id, offset, size) or, for the empty key, the
``BundleHeaderProto`` (number of shards). Tensor bytes are stored raw, little-endian, in the shard
files. Only what TF writes for dense variables is supported: uncompressed blocks, unsliced tensors.
"""

from __future__ import annotations

import pathlib
import struct

import numpy as np

_MAGIC = 0xDB4775248B80FB57
_FOOTER_BYTES = 48
# tensorflow/core/framework/types.proto
_DTYPES = {
    1: np.float32,
    2: np.float64,
    3: np.int32,
    4: np.uint8,
    5: np.int16,
    6: np.int8,
    9: np.int64,
    10: np.bool_,
    14: np.uint16,  # bfloat16 bits; callers convert if they need it
    17: np.uint16,
    19: np.float16,
    22: np.uint32,
    23: np.uint64,
}


class CheckpointError(ValueError):
    """The files are not a TF V2 checkpoint bundle this reader supports."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise CheckpointError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _proto_fields(buf: bytes):
    """Yield ``(field_number, value)`` of a protobuf message (ints for varints, bytes otherwise)."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise CheckpointError(f"unsupported protobuf wire type {wire}")
        yield number, value


def _table_block(data: bytes, offset: int, size: int):
    """Yield ``(key, value)`` records of one table block (block bytes + 1 type byte + 4 crc bytes)."""
    if offset + size + 5 > len(data):
        raise CheckpointError("block points past the end of the index file")
    if data[offset + size] != 0:
        raise CheckpointError("compressed index blocks are not supported")
    block = data[offset : offset + size]
    n_restarts = struct.unpack("<I", block[-4:])[0]
    end = len(block) - 4 - 4 * n_restarts
    pos, key = 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        value_len, pos = _varint(block, pos)
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        yield key, block[pos : pos + value_len]
        pos += value_len


def _entry(raw: bytes) -> dict:
    entry = {"dtype": 1, "shape": [], "shard": 0, "offset": 0, "size": 0}
    for number, value in _proto_fields(raw):
        if number == 1:
            entry["dtype"] = value
        elif number == 2:  # TensorShapeProto: repeated Dim dim = 2 {int64 size = 1}
            dims = [dict(_proto_fields(dim)).get(1, 0) for n, dim in _proto_fields(value) if n == 2]
            entry["shape"] = dims
        elif number == 3:
            entry["shard"] = value
        elif number == 4:
            entry["offset"] = value
        elif number == 5:
            entry["size"] = value
        elif number == 7:
            raise CheckpointError("sliced (partitioned) tensors are not supported")
    return entry


def read_checkpoint(prefix: str | pathlib.Path, *, skip=("/Adam", "beta1_power", "beta2_power")) -> dict:
    """Load every dense tensor of a TF V2 checkpoint.

    Parameters
    ----------
    prefix : str or pathlib.Path
        The bundle prefix: ``prefix + ".index"`` must exist. For bundles saved with an empty file
        name (musicnn's ``.index``), the prefix is the folder followed by a separator.
    skip : tuple of str
        Variables whose name contains any of these substrings are not read (optimizer slots).

    Returns
    -------
    dict
        ``{variable name: np.ndarray}`` with the stored dtype and shape.

    Raises
    ------
    CheckpointError
        Missing files or a format this reader does not handle.
    """
    prefix = str(prefix)
    try:
        index = pathlib.Path(prefix + ".index").read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{prefix}.index: cannot read ({exc.strerror})") from None
    if len(index) < _FOOTER_BYTES:
        raise CheckpointError(f"{prefix}.index: too short for a checkpoint index")
    footer = index[-_FOOTER_BYTES:]
    if struct.unpack("<Q", footer[-8:])[0] != _MAGIC:
        raise CheckpointError(f"{prefix}.index: not a TensorFlow V2 checkpoint index")
    pos = 0
    _, pos = _varint(footer, pos)  # metaindex handle (offset, size): unused
    _, pos = _varint(footer, pos)
    index_offset, pos = _varint(footer, pos)
    index_size, pos = _varint(footer, pos)

    entries = {}
    for _, handle in _table_block(index, index_offset, index_size):
        offset, p = _varint(handle, 0)
        size, _ = _varint(handle, p)
        entries.update((key.decode("utf-8"), value) for key, value in _table_block(index, offset, size))
    header = dict(_proto_fields(entries.pop("", b"")))
    n_shards = header.get(1, 1)

    shards: dict[int, bytes] = {}
    tensors = {}
    for name, raw in entries.items():
        if any(s in name for s in skip):
            continue
        entry = _entry(raw)
        if entry["dtype"] not in _DTYPES:
            continue  # strings, resources: not model weights
        shard = entry["shard"]
        if shard not in shards:
            path = pathlib.Path(f"{prefix}.data-{shard:05d}-of-{n_shards:05d}")
            try:
                shards[shard] = path.read_bytes()
            except OSError as exc:
                raise CheckpointError(f"{path}: cannot read ({exc.strerror})") from None
        dtype = np.dtype(_DTYPES[entry["dtype"]]).newbyteorder("<")
        chunk = shards[shard][entry["offset"] : entry["offset"] + entry["size"]]
        count = int(np.prod(entry["shape"], dtype=np.int64))
        if len(chunk) != count * dtype.itemsize:
            raise CheckpointError(f"{prefix}: variable {name} has {len(chunk)} bytes for shape {entry['shape']}")
        tensors[name] = np.frombuffer(chunk, dtype).astype(dtype.newbyteorder("="), copy=True).reshape(entry["shape"])
    return tensors
