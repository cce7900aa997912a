"""Dataset loaders: one module per corpus, registered here.

A loader turns a corpus folder (or a bundled corpus) into a list of :class:`~genrecli.manifest.Track`.
It validates the layout and raises :class:`~genrecli.errors.UsageError` with what it expected and what
it found when the layout is wrong; files it cannot use are returned in ``skipped`` with the reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from genrecli.errors import UsageError
from genrecli.manifest import Track


@dataclasses.dataclass
class Listing:
    """What a loader found: the tracks, the files it skipped (path -> reason) and the label order."""

    tracks: list[Track]
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    # Items of the input that are defective (a table row without a label), item -> reason. Listed with the
    # skipped ones, and unlike a file that is not the corpus's (a README), they make ingest exit 2 (partial).
    failed: dict[str, str] = dataclasses.field(default_factory=dict)
    label_names: list[str] | None = None  # None: sorted label names
    notes: list[str] = dataclasses.field(default_factory=list)
    # Precomputed features shipped with the corpus (4MuLA's mel spectrograms, a `table`), one row per
    # track in listing order: {"audio/<name>" or "text/<name>": (array (n, *shape), params)}.
    features: dict[str, tuple] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    layout: str
    standard_split: str
    needs_root: bool
    list_tracks: Callable[..., Listing]  # (root: Path | None, **options) -> Listing


DATASETS: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    DATASETS[spec.name] = spec
    return spec


def get_dataset(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise UsageError(f"unknown dataset '{name}' (known: {', '.join(sorted(DATASETS))})")
    return DATASETS[name]


def read_text_file(path: Path) -> tuple[str, str | None]:
    """A corpus's own text file (metadata CSV, table): (text, a note when it was not UTF-8, else None).

    UTF-8 (with or without BOM) and UTF-16 with BOM are read as they are; other text is read as Latin-1,
    the legacy encoding of spreadsheet exports, and the note says so.

    Raises
    ------
    UsageError
        One line naming the file: unreadable, or binary (NUL bytes).
    """
    from genrecli.errors import InputError
    from genrecli.text.convert import decode_text

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        text, codec = decode_text(data, path)
    except InputError as exc:  # a corpus file, not one track's: the command stops
        raise UsageError(str(exc)) from None
    return text, (f"{path}: not UTF-8; read as {codec}" if codec not in ("utf-8", "utf-8-sig", "utf-16") else None)


def inline_text_problem(text: str) -> str | None:
    """Why a text held inline by a corpus (a lyrics column, a review in a JSON file) cannot be used, or None.

    Files go through :func:`genrecli.text.convert.decode_text`, which refuses NUL bytes; inline texts come
    decoded already, so a NUL character, or an unpaired surrogate (a JSON ``"\\ud800"`` escape), reached the
    checksum and the manifest's UTF-8 strings and aborted the whole ingest with an internal error. A loader
    makes such a text a per-row failure with this reason.
    """
    if "\x00" in text:
        return "binary data, not text (NUL characters)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"not valid Unicode (an unpaired surrogate at character {exc.start})"
    return None


def require_root(name: str, root: Path | None) -> Path:
    if root is None:
        raise UsageError(f"dataset '{name}' needs --root DIR (the folder holding the corpus)")
    root = Path(root).expanduser()
    if not root.exists():
        raise UsageError(f"--root {root}: no such directory")
    if not root.is_dir():
        raise UsageError(f"--root {root}: not a directory")
    return root


from genrecli.datasets import ballroom, folder, folk_dances, fourmula, gtzan, ismir2004, mumu, music4all, piano, table  # noqa: E402,F401,I001  (registration)
