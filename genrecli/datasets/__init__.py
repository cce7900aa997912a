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
