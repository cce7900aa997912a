"""Split specifications and their assignments.

Multi-label sets are stratified by each track's rarest label. A split is an ``int8`` array of shape ``(n_folds, n_tracks)`` with values ``TRAIN``, ``VALID``, ``TEST``
or ``UNUSED`` (see :mod:`genrecli.manifest`). Specs:

``random:F[:V]``        stratified random split, a fraction F of every class for training (of which a fraction V
                        of all tracks is set aside for validation, e.g. ``random:0.8:0.1`` for 8:1:1)
``group:KEY:F[:V]``     about F of the tracks for training, no value of group KEY in two parts, stratified as far as
                        the groups allow
``kfold:K[:R]``         stratified K-fold cross-validation (K folds), repeated R times (default 1)
``groupkfold:KEY:K[:R]`` stratified group K-fold (no group in two parts of a fold), repeated R times (default 1):
                        the protocol of the bundled corpora's experiments (e.g. ``groupkfold:title:5:3``)
``given:KEY``           the corpus's own parts, recorded per track in group KEY (train / valid / test)
``file:DIR``            DIR holds ``train.txt``, ``test.txt`` and optionally ``valid.txt`` (or the published
                        ``<part>_filtered.txt`` of the fault-filtered GTZAN split): one track id or file name per line
``standard``            the dataset's own protocol (resolved by the dataset loader)

Repeated K-fold: repeat ``r`` (0-based) is a fresh K-fold partition made with seed ``seed + r`` (repeat 0 is
exactly the unrepeated ``kfold:K`` / ``groupkfold:KEY:K`` of the same seed), and its folds are stored one after
the other: row ``f`` of the assignment is fold ``f % K`` of repeat ``f // K`` (:func:`fold_layout` gives K and
R of a spec). Every track is tested exactly once per repeat; group folds are group-disjoint in every repeat and
stratified as far as the groups allow (scikit-learn's ``StratifiedGroupKFold``, shuffled per repeat).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from genrecli.errors import UsageError
from genrecli.manifest import TEST, TRAIN, UNUSED, VALID, Manifest


def split_name(spec: str) -> str:
    """The name under which a spec is stored: ``group:composer:0.7`` -> ``group-composer-0.7``."""
    if spec.startswith("file:"):
        return "file-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(spec[5:]).name or "list")
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", spec)


def _fraction(text: str, spec: str) -> float:
    try:
        f = float(text)
    except ValueError:
        raise UsageError(f"split '{spec}': '{text}' is not a number") from None
    if not 0.0 < f < 1.0:
        raise UsageError(f"split '{spec}': the training fraction must be between 0 and 1, got {f}")
    return f


def _folds(text: str, spec: str) -> int:
    if not text.isdigit() or int(text) < 2:
        raise UsageError(f"split '{spec}': the number of folds must be an integer >= 2, got '{text}'")
    return int(text)


def _repeats(parts: list[str], spec: str) -> int:
    if not parts:
        return 1
    if not parts[0].isdigit() or int(parts[0]) < 1:
        raise UsageError(f"split '{spec}': the number of repeats must be an integer >= 1, got '{parts[0]}'")
    return int(parts[0])


def fold_layout(spec: str, n_folds: int) -> tuple[int, int]:
    """(folds per repeat K, repeats R) of a stored split with ``n_folds`` rows made from ``spec``.

    ``kfold:K[:R]`` and ``groupkfold:KEY:K[:R]`` give (K, R) (row f is fold f % K of repeat f // K); every
    other spec, or a spec that does not match the rows (a split of another version), is one repeat of
    ``n_folds`` folds. ``spec`` may also be a split's stored name (``groupkfold-title-5-3``).
    """
    parts = re.split(r"[:-]", spec) if spec.startswith(("kfold", "groupkfold")) else []
    try:
        if parts and parts[0] == "kfold" and len(parts) in (2, 3):
            k, r = int(parts[1]), int(parts[2]) if len(parts) == 3 else 1
        elif parts and parts[0] == "groupkfold" and len(parts) >= 3:
            # a group key may itself hold '-' in a stored name: K and R are the trailing integers
            nums = [p for p in parts[-2:] if p.isdigit()]
            k, r = (int(nums[0]), int(nums[1])) if len(nums) == 2 and len(parts) >= 4 else (int(parts[-1]), 1)
        else:
            return n_folds, 1
    except ValueError:
        return n_folds, 1
    return (k, r) if k * r == n_folds else (n_folds, 1)


def make_split(spec: str, manifest: Manifest, *, seed: int = 0) -> np.ndarray:
    """Compute the ``(n_folds, n)`` assignment of a split spec over a manifest's tracks."""
    with warnings.catch_warnings():
        # scikit-learn warns when a class is smaller than the number of folds; the split is still valid
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        return _make_split(spec, manifest, seed)


def _make_split(spec: str, manifest: Manifest, seed: int) -> np.ndarray:
    parts = spec.split(":")
    kind = parts[0]
    y = manifest.strata()
    n = len(y)
    if n < 2:
        raise UsageError(f"split '{spec}': the dataset has {n} track(s); at least 2 are needed")
    if kind == "random" and len(parts) in (2, 3):
        frac, valid = _fractions(parts[1:], spec)
        return _with_validation(_random_split(np.arange(n), y, frac, seed, spec), y, None, frac, valid, seed, spec)
    if kind == "group" and len(parts) in (3, 4):
        groups = manifest.group_values(parts[1])
        frac, valid = _fractions(parts[2:], spec)
        out = _group_split(np.arange(n), y, groups, frac, seed, spec)
        return _with_validation(out, y, groups, frac, valid, seed, spec)
    if kind == "kfold" and len(parts) in (2, 3):
        k = _folds(parts[1], spec)
        repeats = _repeats(parts[2:], spec)
        _check_folds(y, k, spec)
        return np.concatenate([
            _assign_folds(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed + r).split(np.zeros(n), y), n, k)
            for r in range(repeats)])
    if kind == "groupkfold" and len(parts) in (3, 4):
        groups = manifest.group_values(parts[1])
        k = _folds(parts[2], spec)
        repeats = _repeats(parts[3:], spec)
        if len(set(groups)) < k:
            raise UsageError(f"split '{spec}': only {len(set(groups))} distinct '{parts[1]}' groups for {k} folds")
        return np.concatenate([
            _assign_folds(_stratified_group_folds(StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed + r),
                                                  y, groups, spec), n, k)
            for r in range(repeats)])
    if kind == "given" and len(parts) == 2:
        return _given_split(manifest, parts[1], spec)
    if kind == "file" and len(parts) >= 2:
        return _file_split(Path(spec[5:]), manifest, spec)
    raise UsageError(
        f"unknown split spec '{spec}' (expected random:F[:V], group:KEY:F[:V], kfold:K[:R], groupkfold:KEY:K[:R], "
        "given:KEY, file:DIR or standard)"
    )


GIVEN_PARTS = {"train": TRAIN, "valid": VALID, "test": TEST}


def _given_split(manifest: Manifest, key: str, spec: str) -> np.ndarray:
    """The corpus's own parts: group KEY holds train, valid or test (anything else: unused)."""
    values = manifest.group_values(key)
    out = np.array([[GIVEN_PARTS.get(str(v).lower(), UNUSED) for v in values]], dtype=np.int8)
    if not (out == TRAIN).any() or not (out == TEST).any():
        raise UsageError(f"split '{spec}': group '{key}' marks no train or no test tracks (values: train, valid, test)")
    return out


def _fractions(parts: list[str], spec: str) -> tuple[float, float]:
    """Training fraction F (validation included) and validation fraction V of the whole set."""
    frac = _fraction(parts[0], spec)
    valid = _fraction(parts[1], spec) if len(parts) > 1 else 0.0
    if valid >= frac:
        raise UsageError(f"split '{spec}': the validation fraction must be smaller than the training fraction")
    return frac, valid


def _random_split(idx: np.ndarray, y: np.ndarray, frac: float, seed: int, spec: str) -> np.ndarray:
    counts = np.bincount(y[idx])
    strat = y[idx] if counts[counts > 0].min() >= 2 else None
    try:
        train, _ = train_test_split(idx, train_size=frac, random_state=seed, stratify=strat)
    except ValueError as exc:
        raise UsageError(f"split '{spec}': cannot stratify {len(idx)} tracks over {len(set(y[idx]))} classes ({exc})") from None
    out = np.full((1, len(y)), TEST, dtype=np.int8)
    out[0, train] = TRAIN
    return out


def _with_validation(out, y, groups, frac, valid, seed, spec) -> np.ndarray:
    """Move a fraction ``valid`` of all tracks from the training part to VALID (same protocol)."""
    if valid <= 0:
        return out
    train = np.flatnonzero(out[0] == TRAIN)
    inner_frac = 1.0 - valid / frac
    inner = _random_split(train, y, inner_frac, seed + 1, spec) if groups is None else _group_split(train, y, groups, inner_frac, seed + 1, spec)
    out[0, train[inner[0, train] == TEST]] = VALID
    return out


def _check_folds(y: np.ndarray, k: int, spec: str) -> None:
    smallest = np.bincount(y).min()
    if smallest < k:
        raise UsageError(f"split '{spec}': the smallest class has {smallest} tracks, fewer than {k} folds")


def _assign_folds(folds, n: int, k: int) -> np.ndarray:
    out = np.full((k, n), TRAIN, dtype=np.int8)
    for f, (_, test) in enumerate(folds):
        out[f, test] = TEST
    return out


def _group_split(idx, y, groups, frac, seed, spec) -> np.ndarray:
    """Hold out about 1-F of the tracks ``idx`` as whole groups, stratified as far as the groups allow.

    StratifiedGroupKFold with K = round(1/(1-F)) folds gives group-disjoint parts with balanced classes;
    the fold whose test share is nearest 1-F is used.
    """
    n_groups = len(set(groups[idx]))
    k = max(2, int(round(1.0 / (1.0 - frac))))
    if n_groups < k:
        raise UsageError(f"split '{spec}': only {n_groups} distinct groups, cannot hold out {1 - frac:.0%} by group")
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    folds = _stratified_group_folds(cv, y[idx], groups[idx], spec)
    best = min(folds, key=lambda f: abs(len(f[1]) / len(idx) - (1.0 - frac)))
    out = np.full((1, len(y)), TEST, dtype=np.int8)
    out[0, idx[best[0]]] = TRAIN
    return out


def _stratified_group_folds(cv, y: np.ndarray, groups: np.ndarray, spec: str) -> list:
    """The folds of ``cv`` as a list; scikit-learn's refusal of a too-small corpus becomes a one-line usage error."""
    try:
        return list(cv.split(np.zeros(len(y)), y, groups))
    except ValueError as exc:  # e.g. "n_splits=5 cannot be greater than the number of members in each class"
        raise UsageError(f"split '{spec}': {len(y)} tracks in {len(set(y))} strata are too few for "
                         f"{cv.get_n_splits()} group folds ({exc}); use a larger corpus or another split") from None


def _file_split(directory: Path, manifest: Manifest, spec: str) -> np.ndarray:
    if not directory.is_dir():
        raise UsageError(f"split '{spec}': {directory} is not a directory")
    lists = {name: directory / f"{name}.txt" for name in ("train", "valid", "test")}
    if not lists["train"].exists():  # the fault-filtered GTZAN lists are published as <part>_filtered.txt
        lists = {name: directory / f"{name}_filtered.txt" for name in ("train", "valid", "test")}
    if not lists["train"].exists() or not lists["test"].exists():
        raise UsageError(
            f"split '{spec}': expected {directory}/train.txt and test.txt (or train_filtered.txt and "
            "test_filtered.txt), one track id or file name per line"
        )
    skipped = {Path(k).stem for k in manifest.skipped}
    # Lists may name ids or files (with folders and suffixes, as published GTZAN lists do).
    index = {}
    for i, tid in enumerate(manifest.ids):
        index[tid] = i
        index.setdefault(Path(tid).name, i)
        index.setdefault(Path(tid).stem, i)
    out = np.full((1, len(manifest)), UNUSED, dtype=np.int8)
    for part, code in (("train", TRAIN), ("valid", VALID), ("test", TEST)):
        if not lists[part].exists():
            continue
        unknown = []
        for line in lists[part].read_text().splitlines():
            entry = line.strip()
            if not entry:
                continue
            key = next((k for k in (entry, Path(entry).name, Path(entry).stem) if k in index), None)
            if key is None:
                if Path(entry).stem not in skipped:  # a file skipped at ingest (jazz.00054) is not an error
                    unknown.append(entry)
                continue
            out[0, index[key]] = code
        if unknown:
            raise UsageError(
                f"{lists[part]}: {len(unknown)} entries match no track of '{manifest.dataset}' (e.g. '{unknown[0]}')"
            )
    return out


def train_test_indices(assignment: np.ndarray, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and test tracks of one fold (validation tracks count as training)."""
    row = assignment[fold]
    return np.flatnonzero((row == TRAIN) | (row == VALID)), np.flatnonzero(row == TEST)
