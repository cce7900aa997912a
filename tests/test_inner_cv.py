"""Grouped inner CV: on a grouped split the kernel models choose C (and the DM2KMN its fine-tuning) on folds
that hold out whole groups, as the split does (issue 13: kern-eras composer split, DM2KMN inner CV 0.91 vs
test 0.33 with stratified inner folds)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from corpus_fixtures import vector_table
from genrecli.models import selection
from genrecli.models.selection import cv_folds, grouped_folds


def _grouped(n=120, n_groups=12, seed=0):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_groups), n // n_groups)
    y = groups % 3  # every group is of one class, four groups per class
    return y, groups, rng


def test_grouped_folds_hold_out_whole_groups_and_keep_every_class_in_training():
    y, groups, _ = _grouped()
    folds = cv_folds(y, 5, seed=0, groups=groups)
    assert len(folds) >= 2
    for tr, va in folds:
        assert not set(groups[tr]) & set(groups[va])
        assert set(y[tr]) == set(y)
    # without groups: stratified folds, which put rows of one group on both sides
    plain = cv_folds(y, 5, seed=0)
    assert any(set(groups[tr]) & set(groups[va]) for tr, va in plain)


def test_a_class_with_one_group_drops_the_fold_that_holds_it_out_or_falls_back():
    y = np.array([0] * 10 + [1] * 10 + [1] * 10 + [2] * 10)
    groups = np.array(["a"] * 10 + ["b"] * 10 + ["c"] * 10 + ["d"] * 10)  # classes 0 and 2: one group each
    folds = grouped_folds(y, groups, 4, seed=0)
    # holding out a or d would leave a class out of training: only the folds holding out b and c are kept
    assert sorted(tuple(sorted(set(groups[va]))) for _, va in folds) == [("b",), ("c",)]
    one_each = np.array(["a"] * 10 + ["b"] * 20 + ["d"] * 10)  # every class a single group: no usable fold
    assert grouped_folds(y, one_each, 3, seed=0) == []
    out = cv_folds(y, 4, seed=0, groups=one_each)  # falls back to stratified folds
    assert len(out) == 4 and all(set(y[tr]) == {0, 1, 2} for tr, _ in out)
    with pytest.raises(ValueError, match="groups"):
        grouped_folds(y, groups[:-1], 4)


def _spy(monkeypatch):
    seen = []
    real = selection.cv_folds

    def spy(y, n_splits=5, *, seed=None, groups=None):
        seen.append(None if groups is None else np.asarray(groups))
        return real(y, n_splits, seed=seed, groups=groups)

    for mod in ("genrecli.models.svm", "genrecli.models.dkn", "genrecli.models.dm2kmn"):
        monkeypatch.setattr(f"{mod}.cv_folds", spy)
    return seen


def test_every_selection_cv_of_the_kernel_models_gets_the_groups(monkeypatch):
    from genrecli.models.dkn import DKNClassifier
    from genrecli.models.dm2kmn import DM2KMNClassifier
    from genrecli.models.svm import KernelSVM

    y, groups, rng = _grouped(90, 9)
    X = rng.normal(size=(90, 6)) + y[:, None]
    seen = _spy(monkeypatch)
    sq = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    KernelSVM().fit(np.exp(-sq / (2 * X.shape[1])), y, cv_groups=groups)  # an RBF Gram: libsvm converges fast
    assert len(seen) == 1 and seen[0] is not None and np.array_equal(seen[0], groups)
    seen.clear()
    DM2KMNClassifier(dkn=DKNClassifier(hidden=4, max_iter=5, input_dims=(6,)), ft_lr_grid=(1e-3,), ft_max_epochs=2,
                     ft_eval_every=1, random_state=0).fit(X, y, cv_groups=groups)
    # the DKN's C (twice: before and after training), the top SVM's C, the fine-tuning rate and epochs
    assert len(seen) == 4 and all(g is not None and np.array_equal(g, groups) for g in seen)
    seen.clear()
    DM2KMNClassifier(dkn=DKNClassifier(hidden=4, max_iter=5, input_dims=(6,)), ft_lr_grid=(1e-3,), ft_max_epochs=2,
                     ft_eval_every=1, random_state=0).fit(X, y)
    assert len(seen) == 4 and all(g is None for g in seen)


def test_grouped_split_gives_the_models_the_groups_of_their_training_rows(tmp_path, monkeypatch):
    """Through the train stage: a group:KEY:F split hands each fit the groups of its training rows
    (inner_cv='grouped', the default); -o inner_cv=stratified and an ungrouped split hand none."""
    from genrecli.models.svm import KernelSVM
    from genrecli.pipeline.ingest import ingest
    from genrecli.pipeline.train import train

    path = vector_table(tmp_path / "t.npz", n=120)
    z = dict(np.load(path))
    z["group"] = np.array([f"g{i % 12}" for i in range(120)])
    np.savez(path, **z)
    home = tmp_path / "home"
    ingest("table", root=str(path), name="t", splits=("group:group:0.7", "random:0.7"), data_home=home)
    calls = []
    real = KernelSVM.fit

    def spy(self, X, y, *, cv_groups=None):
        calls.append(None if cv_groups is None else np.asarray(cv_groups).copy())
        return real(self, X, y, cv_groups=cv_groups)

    monkeypatch.setattr(KernelSVM, "fit", spy)
    train("svm", "t", inputs=("audio/table",), kernels=("linear",), split="group:group:0.7", seeds=1, data_home=home)
    assert len(calls) == 1 and calls[0] is not None
    run = next((home / "t" / "runs").glob("svm__*group-group*"))
    n_train = int(json.loads(json.dumps(np.load(next(run.glob("fold0-seed0/result.npz")))["n_train"].tolist())))
    assert len(calls[0]) == n_train and set(calls[0]) <= {f"g{i}" for i in range(12)}
    calls.clear()
    train("svm", "t", inputs=("audio/table",), kernels=("linear",), split="group:group:0.7", seeds=1,
          options={"inner_cv": "stratified"}, data_home=home)
    assert calls == [None]
    calls.clear()
    train("svm", "t", inputs=("audio/table",), kernels=("linear",), split="random:0.7", seeds=1, data_home=home)
    assert calls == [None]
