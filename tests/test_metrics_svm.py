"""KernelSVM (single- and multi-label) and the multi-label metrics against direct computations."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline

from genrecli.metrics import aggregated_diversity, example_f_measure, macro_auc, multi_label_metrics
from genrecli.models.svm import KernelSVM, balanced_sample_weights


def _blobs(n_per=30, d=6, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(3, d)) * 3
    X = np.concatenate([c + rng.normal(size=(n_per, d)) for c in centers]).astype(np.float32)
    return X, np.repeat(np.arange(3), n_per)


def test_balanced_weights():
    w = balanced_sample_weights(np.array([0, 0, 0, 1]))
    assert np.allclose(w, [4 / 6, 4 / 6, 4 / 6, 2.0])


def test_kernel_svm_separates_and_round_trips():
    X, y = _blobs()
    K = X @ X.T
    clf = KernelSVM(random_state=0).fit(K, y)
    assert clf.C_ in clf.C_grid and (clf.predict(K) == y).mean() > 0.95
    clone = KernelSVM().load_state_dict(clf.state_dict())
    assert np.array_equal(clone.predict(K[:5]), clf.predict(K[:5]))
    with pytest.raises(ValueError, match="Gram"):
        clf.decision_function(K[:, :3])


def test_kernel_svm_in_sklearn_pipeline():
    from genrecli.kernels.elementary import ElementaryKernel

    X, y = _blobs(seed=1)
    pipe = make_pipeline(ElementaryKernel("rbf"), KernelSVM(random_state=0))
    assert pipe.fit(X[::2], y[::2]).score(X[1::2], y[1::2]) > 0.9


def test_multilabel_svm_and_metrics():
    X, y = _blobs(seed=2)
    Y = np.stack([y == 0, y != 2, y == 2], axis=1)  # overlapping labels
    K = X @ X.T
    clf = KernelSVM(random_state=0).fit(K, Y)
    P = clf.predict(K)
    assert P.shape == Y.shape and P.dtype == bool
    m = multi_label_metrics(Y, P, clf.decision_function(K))
    assert m["auc_roc"] > 0.95 and m["example_f"] > 0.9


def test_multilabel_metrics_against_direct_computation():
    rng = np.random.default_rng(0)
    Y = rng.random((40, 5)) < 0.4
    S = rng.normal(size=(40, 5)) + Y
    P = S > 0.5
    direct = np.mean([roc_auc_score(Y[:, j], S[:, j]) for j in range(5)])
    assert macro_auc(Y, S) == pytest.approx(direct)
    ef = np.mean([2 * (y & p).sum() / (y.sum() + p.sum()) if (y.sum() + p.sum()) else 1.0 for y, p in zip(Y, P)])
    assert example_f_measure(Y, P) == pytest.approx(ef)
    top1 = {int(np.argmax(s)) for s in S}
    assert aggregated_diversity(S, 1) == pytest.approx(len(top1) / 5)
    assert aggregated_diversity(S, 5) == 1.0
