"""``table``: precomputed features with labels, so the kernel and training stages run without audio.

``--root`` is the table file, or a folder holding exactly one. Formats:

* CSV (``.csv``, ``.tsv``; comma, tab or semicolon separated, UTF-8 (else read as Latin-1), a header row): a label
  column, optional id, group and split columns; every other column is a numeric feature (an empty
  cell is a missing value: the row is kept but its feature row is marked invalid);
* NPZ (``.npz``, ``numpy.savez``): arrays ``X`` (or ``features``; n x d, or n x ... ) and ``y`` (or
  ``label``/``labels``), optional ``id``/``ids``, a group array and ``split``;
* HDF5 (``.h5``/``.hdf5``): the same names as datasets at the file's root (strings as UTF-8).

Options: ``label`` (column name, default ``label``), ``id`` (``id``), ``groups`` (comma-separated group
columns; default: whichever of ``group, artist, album, composer`` exist; the column ``group`` is stored
as the group key ``group``), ``split`` (``split``: values train/valid/test, also
training/validation/val/dev/testing; stored as the group ``split`` for ``--split given:split``) and
``name`` (the feature group, default ``audio/table``; a bare name gets the ``audio/`` prefix).

The features are written to ``features.h5`` at ingest (``Listing.features``), one row per track.
Rows without an id or a label, or repeating an id, are left out, and rows with NaN/inf features are
masked: both are recorded as failures (``genre info``) and ingest exits 2 (partial).
Tracks have no files: their checksum is the hash of their id, label and feature values. Standard
split: ``random:0.7``; a table with a split column is meant for ``--split given:split``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
from pathlib import Path

import numpy as np

from genrecli import store
from genrecli.datasets import DatasetSpec, Listing, read_text_file, register
from genrecli.errors import UsageError
from genrecli.manifest import Track

SUFFIXES = {".csv": "csv", ".tsv": "csv", ".npz": "npz", ".h5": "hdf5", ".hdf5": "hdf5"}
DEFAULT_GROUPS = ("group", "artist", "album", "composer")
ARRAY_NAMES = {"X": ("X", "features", "x"), "y": ("y", "label", "labels")}
SPLIT_VALUES = {"train": "train", "training": "train", "valid": "valid", "validation": "valid", "val": "valid",
                "dev": "valid", "development": "valid", "test": "test", "testing": "test", "eval": "test"}


def _csv_list(value) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(value)


def table_file(root: Path | None) -> Path:
    if root is None:
        raise UsageError("dataset 'table' needs --root FILE (a .csv, .npz or .h5 table, or the folder holding one)")
    root = Path(root).expanduser()
    if not root.exists():
        raise UsageError(f"--root {root}: no such file or directory")
    if root.is_file():
        if root.suffix.lower() not in SUFFIXES:
            raise UsageError(f"--root {root}: expected a table file ({', '.join(SUFFIXES)}), found a {root.suffix or 'suffix-less'} file")
        return root
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES and not p.name.startswith("."))
    if len(files) != 1:
        found = ", ".join(p.name for p in sorted(root.iterdir()) if not p.name.startswith("."))[:200] or "nothing"
        raise UsageError(
            f"--root {root}: expected exactly one table file ({', '.join(SUFFIXES)}) in the folder; found {found}"
        )
    return files[0]


def _read_csv(path: Path) -> tuple[list[str], list[list[str]], str | None]:
    """(header, rows, a note when the file was not UTF-8)."""
    text, note = read_text_file(path)
    try:
        dialect = csv.Sniffer().sniff(text[:65536].splitlines()[0] if text else "", delimiters=",\t;")
    except csv.Error:
        dialect = csv.excel
    try:
        rows = [r for r in csv.reader(io.StringIO(text, newline=""), dialect) if r and any(c.strip() for c in r)]
    except csv.Error as exc:
        raise UsageError(f"{path}: not a CSV file ({exc})") from None
    if not rows:
        raise UsageError(f"{path}: expected a header row and one row per track; the file is empty")
    header = [h.strip() for h in rows[0]]
    bad = [i for i, r in enumerate(rows[1:], 2) if len(r) != len(header)]
    if bad:
        raise UsageError(f"{path}: expected {len(header)} fields per row (as in the header); line {bad[0]} has {len(rows[bad[0] - 1])}")
    return header, rows[1:], note


def _strings(values) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in np.asarray(values).reshape(-1).tolist()]


def _pick(arrays: dict, names: tuple[str, ...]):
    return next((arrays[n] for n in names if n in arrays), None)


def _read_arrays(path: Path, kind: str) -> dict:
    if kind == "npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        except (ValueError, OSError) as exc:
            raise UsageError(f"{path}: unreadable NPZ ({exc}); expected numpy.savez arrays X, y [, id, group, split]") from None
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            return {k: h5[k][()] for k in h5 if isinstance(h5[k], h5py.Dataset)}
    except OSError as exc:
        raise UsageError(f"{path}: unreadable HDF5 ({exc}); expected datasets X, y [, id, group, split]") from None


def read_table(
    path: Path, *, label: str, id_col: str, groups: tuple[str, ...] | None, split: str
) -> tuple[np.ndarray, list[str], list[str] | None, dict[str, list[str]], list[str] | None, list[str], list[str]]:
    """(X, labels, ids, {group key: values}, split values, feature names, notes) of a table file."""
    kind = SUFFIXES[path.suffix.lower()]
    if kind == "csv":
        header, rows, note = _read_csv(path)
        if label not in header:
            raise UsageError(f"{path}: expected a '{label}' column (option label=NAME); found columns {', '.join(header)[:200]}")
        col = {h: i for i, h in enumerate(header)}
        group_cols = groups if groups is not None else tuple(g for g in DEFAULT_GROUPS if g in col)
        if missing := [g for g in group_cols if g not in col]:
            raise UsageError(f"{path}: expected group column(s) {', '.join(missing)}; found columns {', '.join(header)[:200]}")
        reserved = {label, id_col, split, *group_cols}
        feature_names = [h for h in header if h not in reserved]
        if not feature_names:
            raise UsageError(f"{path}: expected numeric feature columns besides {', '.join(sorted(reserved & set(header)))}; found none")
        X = np.empty((len(rows), len(feature_names)), dtype=np.float64)
        for j, name in enumerate(feature_names):
            for i, r in enumerate(rows):
                cell = r[col[name]].strip()
                try:
                    X[i, j] = float(cell) if cell else math.nan
                except ValueError:
                    raise UsageError(
                        f"{path}: expected numeric feature columns; column '{name}' has '{cell[:30]}' on line {i + 2} "
                        f"(name it with the id/groups/split/label options, or drop it)"
                    ) from None
        labels = [r[col[label]].strip() for r in rows]
        ids = [r[col[id_col]].strip() for r in rows] if id_col in col else None
        group_values = {g: [r[col[g]].strip() for r in rows] for g in group_cols}
        splits = [r[col[split]].strip() for r in rows] if split in col else None
        return X, labels, ids, group_values, splits, feature_names, [note] if note else []
    arrays = _read_arrays(path, kind)
    X = _pick(arrays, ARRAY_NAMES["X"])
    y = arrays.get(label) if label in arrays else _pick(arrays, ARRAY_NAMES["y"])
    if X is None or y is None:
        raise UsageError(
            f"{path}: expected arrays X (or features) and y (or label/labels); found {', '.join(sorted(arrays)) or 'none'}"
        )
    X = np.asarray(X)
    if X.ndim < 2 or len(X) != len(np.asarray(y).reshape(-1)):
        raise UsageError(f"{path}: expected X with one row per label (n x d); found X {X.shape} and {np.asarray(y).size} labels")
    if not np.issubdtype(X.dtype, np.number):
        raise UsageError(f"{path}: expected numeric features X; found dtype {X.dtype}")
    n = len(X)
    ids_arr = arrays.get(id_col, arrays.get("ids"))
    group_cols = groups if groups is not None else tuple(g for g in (*DEFAULT_GROUPS, "groups") if g in arrays)
    if missing := [g for g in group_cols if g not in arrays]:
        raise UsageError(f"{path}: expected group array(s) {', '.join(missing)}; found {', '.join(sorted(arrays))}")
    group_values = {("group" if g == "groups" else g): _strings(arrays[g]) for g in group_cols}
    for g, v in [("id", ids_arr), *group_values.items(), ("split", arrays.get(split))]:
        if v is not None and len(v) != n:
            raise UsageError(f"{path}: expected {n} values in '{g}' (one per row of X); found {len(v)}")
    splits = _strings(arrays[split]) if split in arrays else None
    feature_names = [f"f{j}" for j in range(int(np.prod(X.shape[1:])))]
    return X, _strings(y), (_strings(ids_arr) if ids_arr is not None else None), group_values, splits, feature_names, []


def list_tracks(
    root: Path | None,
    *,
    label: str = "label",
    id: str = "id",  # noqa: A002  (option name as the user types it)
    groups: str | tuple[str, ...] | None = None,
    split: str = "split",
    name: str = "audio/table",
) -> Listing:
    path = table_file(root)
    X, labels, ids, group_values, splits, feature_names, notes = read_table(
        path, label=label, id_col=id, groups=_csv_list(groups), split=split)
    group_name = name if "/" in name else f"audio/{name}"
    if group_name.split("/", 1)[0] not in ("audio", "text"):
        raise UsageError(f"name={name}: expected a feature group under audio/ or text/ (e.g. audio/table)")
    n = len(labels)
    ids = ids or [f"row{i:06d}" for i in range(n)]
    tracks, dropped, keep, seen = [], {}, [], set()
    for i in range(n):
        tid, lab = ids[i].strip(), labels[i].strip()
        if not tid:
            dropped[f"row {i + 1}"] = "empty id"
            continue
        if tid in seen:  # by row: the id names the first row, which is kept
            dropped[f"row {i + 1}"] = f"repeated id '{tid}'"
            continue
        if not lab:
            dropped[tid] = "empty label"
            continue
        grp = {k: (v[i].strip() or f"?{tid}") for k, v in group_values.items()}
        if splits is not None:
            value = splits[i].strip().lower()
            if value not in SPLIT_VALUES:
                raise UsageError(
                    f"{path}: expected split values train, valid or test in column '{split}'; found '{splits[i]}' for {tid}"
                )
            grp["split"] = SPLIT_VALUES[value]
        row = np.ascontiguousarray(X[i], dtype=np.float64)
        digest = hashlib.sha256(row.tobytes()).hexdigest()
        seen.add(tid)
        keep.append(i)
        tracks.append(Track(id=tid, label=lab, groups=grp, checksum=store.text_sha256(f"{tid}\t{lab}\t{digest}")))
    data = np.asarray(X[keep], dtype=np.float32)
    params = {"source": path.name, "file_sha256": store.file_sha256(path), "n_features": len(feature_names),
              "columns": feature_names if len(feature_names) <= 256 else f"{len(feature_names)} columns"}
    notes.append(f"table {path.name}: {len(tracks)} rows, {len(feature_names)} features -> {group_name}")
    return Listing(tracks, notes=notes, failed=dropped, features={group_name: (data, params)} if tracks else {})


register(
    DatasetSpec(
        name="table",
        description="precomputed features (CSV, NPZ or HDF5) with a label column; optional id, group and split columns",
        layout="a .csv/.tsv (header; label, [id], [group|artist|...], [split], numeric features) or .npz/.h5 (X, y, [id, group, split])",
        standard_split="random:0.7",
        needs_root=True,
        list_tracks=list_tracks,
    )
)
