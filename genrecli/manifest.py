"""The manifest: one row per track (id, label, groups, source files, checksums) plus named splits.

Stored as ``<data-home>/<NAME>/manifest.h5``::

    /tracks/id, label (int16 index into /labels; -1 in multi-label sets), audio, midi, score, score_format,
            score_text, image, checksum
    /tracks/multilabel              (bool, n x n_labels; multi-label sets only)
    /tracks/groups/<key>            (str per track: composer, work, artist, ...)
    /labels                         (str, the label names)
    /splits/<name>                  (int8, n_folds x n: 0 train, 1 valid, 2 test, -1 unused); attrs spec, seed
    /failed/track_id, stage, message  (items skipped at ingest, files that failed `genre validate`)

It is small and rewritten as a whole (:func:`genrecli.store.write_file_store`); splits are added only by
``genre ingest --split`` and ``genre split``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np

from genrecli import store
from genrecli.errors import UsageError

TRAIN, VALID, TEST, UNUSED = 0, 1, 2, -1
SOURCE_FIELDS = ("audio", "midi", "score", "score_format", "score_text")
PATH_FIELDS = (*SOURCE_FIELDS, "image")


@dataclasses.dataclass
class Track:
    """One item of a corpus as a loader lists it.

    Single-label corpora set ``label``; multi-label corpora set ``labels`` (and leave ``label`` empty).
    ``score_format`` is humdrum, musicxml or abc for scores, ``lyrics`` or ``text`` for plain text.
    """

    id: str
    label: str = ""
    labels: tuple[str, ...] = ()
    groups: dict[str, str] = dataclasses.field(default_factory=dict)
    audio: str | None = None
    midi: str | None = None
    score: str | None = None
    score_format: str | None = None
    score_text: str | None = None  # inline score or text (an ABC tune cut from a book, a review, lyrics)
    image: str | None = None  # cover art
    checksum: str = ""

    def source(self) -> dict:
        """The fields the audio and text extractors need, as a picklable dict.

        An inline score (an ABC tune cut from a book) replaces the file it came from.
        """
        out = {f: getattr(self, f) for f in SOURCE_FIELDS}
        if self.score_text is not None:
            out["score"] = None
        return out


@dataclasses.dataclass
class Manifest:
    """In-memory manifest: tracks in manifest order and the label names."""

    dataset: str
    tracks: list[Track]
    label_names: list[str]
    splits: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    split_specs: dict[str, str] = dataclasses.field(default_factory=dict)
    split_seeds: dict[str, int] = dataclasses.field(default_factory=dict)  # the seed each split was made with
    attrs: dict = dataclasses.field(default_factory=dict)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)  # items the loader left out, and why

    @property
    def ids(self) -> list[str]:
        return [t.id for t in self.tracks]

    @property
    def multilabel(self) -> bool:
        return any(t.labels for t in self.tracks)

    @property
    def y(self) -> np.ndarray:
        """Class index per track (single-label sets)."""
        if self.multilabel:
            raise UsageError(f"'{self.dataset}' is multi-label: use the multi-hot matrix Y")
        index = {name: i for i, name in enumerate(self.label_names)}
        return np.array([index[t.label] for t in self.tracks], dtype=np.int64)

    @property
    def Y(self) -> np.ndarray:
        """Multi-hot (n, n_labels) bool matrix; one-hot for single-label sets."""
        index = {name: i for i, name in enumerate(self.label_names)}
        out = np.zeros((len(self.tracks), len(self.label_names)), dtype=bool)
        for i, t in enumerate(self.tracks):
            out[i, [index[name] for name in (t.labels or (t.label,))]] = True
        return out

    def targets(self) -> np.ndarray:
        """What models are trained on: class indices, or the multi-hot matrix of a multi-label set."""
        return self.Y if self.multilabel else self.y

    def strata(self) -> np.ndarray:
        """One stratum per track for stratified splits: its class, or its rarest label when multi-label."""
        if not self.multilabel:
            return self.y
        Y = self.Y
        counts = Y.sum(0)
        rarity = np.where(Y, counts[None, :], np.iinfo(np.int64).max)
        return np.argmin(rarity, axis=1)

    def __len__(self) -> int:
        return len(self.tracks)

    def content_hash(self) -> str:
        """Hash of ids, labels and checksums: downstream stages recompute when it changes."""
        h = hashlib.sha256()
        for t in self.tracks:
            h.update(f"{t.id}\t{t.label}\t{'|'.join(t.labels)}\t{t.checksum}\n".encode())
        return h.hexdigest()[:16]

    def group_values(self, key: str) -> np.ndarray:
        missing = [t.id for t in self.tracks if key not in t.groups]
        if missing:
            known = sorted({k for t in self.tracks for k in t.groups})
            raise UsageError(
                f"group key '{key}' is not recorded for {len(missing)} tracks (e.g. {missing[0]}); "
                f"known keys: {', '.join(known) or 'none'}"
            )
        return np.array([t.groups[key] for t in self.tracks], dtype=object)

    def split(self, name: str) -> np.ndarray:
        if name not in self.splits:
            raise UsageError(
                f"split '{name}' is not in the manifest of '{self.dataset}' "
                f"(have: {', '.join(self.splits) or 'none'}); give a split spec such as random:0.7"
            )
        return self.splits[name]


def write_manifest(path: Path, manifest: Manifest, params: dict) -> None:
    """Write a whole manifest atomically (replacing any previous one), with its splits and skipped items."""
    datasets: dict = {"tracks/id": manifest.ids, "labels": list(manifest.label_names)}
    if manifest.multilabel:
        datasets["tracks/label"] = np.full(len(manifest), -1, dtype=np.int16)
        datasets["tracks/multilabel"] = manifest.Y
    else:
        datasets["tracks/label"] = manifest.y.astype(np.int16)
    for field in (*PATH_FIELDS, "checksum"):
        datasets[f"tracks/{field}"] = [getattr(t, field) or "" for t in manifest.tracks]
    for key in sorted({k for t in manifest.tracks for k in t.groups}):
        datasets[f"tracks/groups/{key}"] = [t.groups.get(key, "") for t in manifest.tracks]
    dataset_attrs = {}
    for name, assign in manifest.splits.items():
        datasets[f"splits/{name}"] = assign.astype(np.int8)
        dataset_attrs[f"splits/{name}"] = _split_attrs(manifest.split_specs.get(name, name), manifest.split_seeds.get(name))
    store.write_file_store(
        path, datasets, params=params, attrs={"dataset": manifest.dataset}, dataset_attrs=dataset_attrs,
        groups=("tracks/groups", "splits"), failures={"ingest": manifest.skipped},
    )


def _split_attrs(spec: str, seed: int | None) -> dict:
    return {"spec": spec} if seed is None else {"spec": spec, "seed": int(seed)}


def add_split(path: Path, name: str, spec: str, assignment: np.ndarray, *, seed: int | None = None) -> None:
    """Add (or replace) one named split of an existing manifest."""
    store.update_file_store(
        path, {f"splits/{name}": assignment.astype(np.int8)}, dataset_attrs={f"splits/{name}": _split_attrs(spec, seed)}
    )


def record_manifest_failures(path: Path, stage: str, failures: dict[str, str]) -> None:
    """Replace the manifest's ``/failed`` rows of one stage (``validate``)."""
    store.update_file_store(path, failures={stage: failures})


def read_manifest(path: Path) -> Manifest:
    with store.open_read(path, what="manifest", hint="run `genre ingest` first") as h5:
        tr = h5["tracks"]
        cols = {f: store.read_strings(tr[f]) for f in ("id", *PATH_FIELDS, "checksum") if f in tr}
        labels = tr["label"][()]
        names = store.read_strings(h5["labels"])
        multi = tr["multilabel"][()] if "multilabel" in tr else None
        group_cols = {k: store.read_strings(v) for k, v in tr["groups"].items()}
        tracks = []
        for i, tid in enumerate(cols["id"]):
            kw = {f: (cols[f][i] or None) for f in PATH_FIELDS if f in cols}
            groups = {k: v[i] for k, v in group_cols.items() if v[i] != ""}
            if multi is not None:
                kw["labels"] = tuple(names[j] for j in np.flatnonzero(multi[i]))
            else:
                kw["label"] = names[labels[i]]
            tracks.append(Track(id=tid, groups=groups, checksum=cols["checksum"][i], **kw))
        split_group = h5["splits"] if "splits" in h5 else {}
        splits = {k: v[()] for k, v in split_group.items()}
        specs = {k: str(v.attrs.get("spec", k)) for k, v in split_group.items()}
        seeds = {k: int(v.attrs["seed"]) for k, v in split_group.items() if "seed" in v.attrs}
        attrs = store.group_params(h5)
        skipped = {tid: msg for tid, stage, msg in store.read_failures(h5) if stage == "ingest"}
        return Manifest(str(h5.attrs["dataset"]), tracks, names, splits=splits, split_specs=specs, split_seeds=seeds,
                        attrs=attrs, skipped=skipped)


def manifest_hash(path: Path) -> str:
    """The manifest's params hash (changes whenever ingest produced a different manifest)."""
    with store.open_read(path, what="manifest", hint="run `genre ingest` first") as h5:
        return str(h5.attrs["params_hash"])

