"""Deep Multi-Modal Kernel Map Network (DM2KMN): the explicit-map counterpart of a trained DKN.

Method: /work/shared/spec/dm2kmn-method.md, section 6 (construction), 6.6 (fine-tuning) and 7 (RE, RI).

Given a trained DKN (weights w^(l), activation g) and landmarks Z (default: all training tracks):

* input layer: G_q(x) = [<phi_q(x), phi_q(z_j)>]_j, inner products of the explicit input maps against the
  landmarks (exact for linear/poly2, Nystrom for rbf, Q-level quantised min-sum for hist), computed by the
  kernels stage (``map_grams``) or by ``genrecli.kernels.maps.ExplicitMap.map_gram``;
* every further unit p: ktilde_p(x) = g( sum_q w_qp <phi_q(x), phi_q(Z)> )  (N-vector), and its map
  phi_p(x) = P_p^T ktilde_p(x), P_p = U_r Lambda_r^{-1/2} from the uncentred eigendecomposition of
  ktilde_p(Z, Z) keeping ``energy`` (99 %) of the spectrum (kernel PCA / Nystrom, Eq. 4);
* a linear classifier on the top map: initial = class-weighted one-vs-rest linear SVM (C by 5-fold CV);
* fine-tuning ("learned DM2KMN"): the combination weights and the classifier (optionally the projections P)
  by SGD with a constant learning rate on the class-weighted one-vs-rest hinge + L2 (option cross-entropy,
  option approximation term beta), with the landmark maps recomputed in the graph at every step, w >= 0
  projection, (lr, epochs) chosen by 5-fold CV on the training data.

Memory: with N landmarks and n training rows the n x n Gram is never formed when N < n; the
landmark-landmark tensors are O(m N^2). The feature-level fit with N < n (``selection_rows='landmarks'``, the
default) streams the rows: landmarks by :func:`genrecli.kernels.landmarks.select_landmarks` (uniform or
k-means++), the DKN, the KPCA maps, C by CV, the initial SVM, the fine-tuning (lr, epochs) CV and the train RE
on the N landmark rows only, then the fine-tuning on all n rows in mini-batches whose (m, rows, N) input-map
Grams are computed ``block_size`` rows at a time and dropped; prediction is blocked the same way. Memory
is then O(m block_size N + m N^2) plus y, whatever n, and X may be an ``h5py.Dataset`` or a memmap (read in
row slices, float32). ``selection_rows='all'`` keeps the in-memory fit (everything on all n rows, O(n N m)).

[I] choices and the defaults taken here: the DKN is trained on all training rows when landmarks='all', on the
landmark rows otherwise (so that memory stays linear in n); uncentred KPCA, eigenvalues below
rel_eps * lambda_1 dropped (rel_eps = 1e-7: float32 maps cannot resolve smaller components; the spec's 1e-10
assumes float64); classifier initialised from the initial SVM (option 'gaussian': N(0, 0.01^2)); L2 weight
lambda = 1 / (C n) so that the hinge objective equals the SVM primal of the initial classifier; full-batch
SGD; weights projected to w >= 0 after each step (option 'simplex'); projections frozen; beta = 0; lr grid
(1e-4, 1e-3, 1e-2) and epochs in {0, 5, ..., ft_max_epochs} selected by 5-fold CV (balanced accuracy; ties ->
fewer epochs); CV folds keep all landmarks (unlabelled features only) and the C chosen on the full training set.

The model takes its DKN as a parameter (``DM2KMNClassifier(dkn=DKNClassifier(...))``) and reads every kernel,
network and SVM setting from it. Folds and scorers are those of :mod:`genrecli.models.selection`; the kernel
PCA is :func:`genrecli.kernels.maps.kpca_projection`.
"""

from __future__ import annotations

import math
import numbers
import weakref

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.svm import LinearSVC
from sklearn.utils._available_if import available_if
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from genrecli.device import resolve_device
from genrecli.errors import UsageError
from genrecli.kernels import DEFAULT_ENERGY, DEFAULT_LEVELS, DEFAULT_QUANTIZATION
from genrecli.kernels.landmarks import SELECTIONS, read_rows, row_blocks, select_landmarks, take_rows
from genrecli.kernels.maps import ExplicitMap, column_grams_block, kpca_projection, map_grams_block, share_training_rows
from genrecli.models.dkn import (
    DKNClassifier,
    _best_time,
    _check_grams,
    _to_labels,
    class_weights,
    combine,
    finite_mode,
    heads_to_scores,
    ovr_targets,
    pack_json,
    project_simplex,
    relative_importance,
    seed_of,
    split_columns,
    unpack_json,
)
from genrecli.models.selection import cv_folds, label_score, select_by_cv, task_score
from genrecli.models.svm import fit_one_vs_rest

LOSSES = ("hinge", "xent")
# model -> (device, the fitted arrays they were built from, inference operators); see _inference_operators
_INFERENCE_OPERATORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# Bytes of the widest (m, rows, N) layer of a CPU inference chunk (:meth:`DM2KMNClassifier._heads`): about a
# core's L2 plus its share of L3, where the memory-bound unit mixing and activation run at cache speed.
_HEADS_CHUNK_BYTES = 5 << 20
OPTIMIZERS = ("sgd", "adam")
CONSTRAINTS = ("nonneg", "simplex")
SELECTION_ROWS = ("landmarks", "all")


# ----------------------------------------------------------------------------------------------------------
# Kernel PCA and the map network core
# ----------------------------------------------------------------------------------------------------------


def build_projections(W, Az, g, energy, rel_eps, cols=None):
    """KPCA projections of every unit of one layer: returns (P padded (m_out, s, r_max), ranks, Kz).

    Az (m_in, N, s): the previous layer's inner products of the N landmarks with the s map columns (s = N
    and ``cols`` None: every landmark is a column, the paper's construction). Each unit's projection is
    :func:`genrecli.kernels.maps.kpca_projection` of its kernel among the columns (rows ``cols`` of Kz);
    a unit whose kernel is 0 gets a zero map.
    """
    Kz = combine(W, Az, g)
    Ks = Kz if cols is None else Kz[:, cols]
    Ps = [kpca_projection(Ks[p], energy=energy, rel_eps=rel_eps, allow_empty=True) for p in range(Kz.shape[0])]
    ranks = [P.shape[1] for P in Ps]
    r_max = max(ranks)
    Pp = torch.zeros(len(Ps), Kz.shape[2], r_max, dtype=Kz.dtype, device=Kz.device)
    for p, P in enumerate(Ps):
        Pp[p, :, : P.shape[1]] = P
    return Pp, ranks, Kz


def _at_columns(F, cols):
    """Rows ``cols`` of landmark maps F (m, N, r): the maps of the column landmarks (all when cols is None)."""
    return F if cols is None else F[:, cols]


def _layer_cols(cols, li):
    """The columns of layer ``li`` (0: the first hidden layer, whose kernels read the input Grams) from a
    per-layer list; None (every landmark, in every layer) stays None."""
    return None if cols is None else cols[li]


def propagate(Ws, Ps, g, G_zz, G_xz=None, cols=None):
    """Map-network forward (differentiable). Returns (Fx_top, Fz_list).

    G_zz (m, N, s): input-map Grams of the landmarks against the s column landmarks of the first layer;
    ``cols``: per layer, the column landmarks' indices into the N landmarks (None: all N in every layer,
    s = N); G_xz (m, B, s): of the rows x against them (None: x = the landmarks).
    Fz_list[l] = landmark maps of layer l+2, (m_l, N, r_l); Fx_top (m_L, B, r_L).
    """
    Az, Ax = G_zz, G_xz
    Fz_list = []
    Fx = None
    L = len(Ws)
    for li, (W, P) in enumerate(zip(Ws, Ps)):
        Fz = torch.bmm(combine(W, Az, g), P)
        Fz_list.append(Fz)
        if Ax is not None:
            Fx = torch.bmm(combine(W, Ax, g), P)
        if li < L - 1:
            Fc = _at_columns(Fz, _layer_cols(cols, li + 1)).transpose(1, 2)
            Az = torch.bmm(Fz, Fc)
            if Ax is not None:
                Ax = torch.bmm(Fx, Fc)
    return (Fz_list[-1] if G_xz is None else Fx), Fz_list


def pivot_order(K, s_max: int) -> np.ndarray:
    """Greedy pivoted-Cholesky order of the columns of a PSD kernel K (N, N) or a stack (h, N, N), s_max long.

    Each step takes the landmark whose kernel is worst explained by those already taken (largest residual
    diagonal); a stack is pivoted on the sum of its matrices, each divided by its trace. The first s of
    the order are the column landmarks of a map network with s columns (:class:`DM2KMNClassifier`
    ``map_columns``). O(N^2 s_max) float64; stops early when the residual vanishes.
    """
    K = np.asarray(K, dtype=np.float64)
    if K.ndim == 3:
        tr = np.maximum(np.einsum("hii->h", K), 1e-300)
        K = np.einsum("hij,h->ij", K, 1.0 / tr)
    N = K.shape[0]
    s_max = max(1, min(int(s_max), N))
    d = np.diag(K).copy()
    L = np.zeros((N, s_max))
    order = []
    tiny = 1e-12 * max(float(d.max()), 1e-300)
    for k in range(s_max):
        i = int(np.argmax(d))
        if d[i] <= tiny:
            break
        order.append(i)
        col = (K[:, i] - L[:, :k] @ L[i, :k]) / math.sqrt(d[i])
        L[:, k] = col
        d -= col * col
        d[order] = -np.inf
    taken = set(order)
    rest = [j for j in np.argsort(-np.diag(K), kind="stable") if j not in taken]
    return np.asarray(order + rest[: s_max - len(order)], dtype=np.int64)


def column_schedule(s_max: int, start: int = 16) -> list[int]:
    """Column counts tried by ``map_columns='re'``: start, then x1.5 (rounded up to a multiple of 8), up to s_max."""
    out, s = [], max(1, int(start))
    while s < s_max:
        out.append(s)
        s = int(math.ceil(s * 1.5 / 8.0) * 8)
    out.append(int(s_max))
    return out


def head_scores(F_top, Wc, bc):
    """Top maps (m_L, B, r) and classifier (n_heads, r), (n_heads,) -> (B, n_heads)."""
    if F_top.shape[0] == 1:
        return F_top[0] @ Wc.T + bc
    return torch.einsum("hbr,hr->bh", F_top, Wc) + bc


def relative_error(approx, exact) -> dict:
    """RE of spec 7.2 in percent: absolute-sum form and Frobenius form."""
    a = torch.as_tensor(approx, dtype=torch.float64)
    e = torch.as_tensor(exact, dtype=torch.float64)
    d = a - e
    return {"re_abs": 100.0 * float(d.abs().sum() / e.abs().sum()),
            "re_fro": 100.0 * float(torch.linalg.norm(d.reshape(-1)) / torch.linalg.norm(e.reshape(-1)))}


def _linear_svm_heads(F: np.ndarray, y_idx, n_classes, omega, C, seed, solver="liblinear"):
    """Class-weighted one-vs-rest linear SVMs on the top maps F (m_L, n, r) -> (Wc, bc).

    solver 'liblinear': LinearSVC (hinge, dual), the intercept a penalised feature of value 10; 'libsvm': the
    dual on the maps' linear Gram F F^T (n x n; unpenalised intercept, as the DKN's SVMs), W = beta F. The
    two solve the same hinge problem up to the intercept's penalty; libsvm converges in a fraction of the
    time at large C (0.37 vs 2.3 s at C = 100, 600 rows of 32-d maps), for O(n^2) memory.
    """
    Yb = ovr_targets(y_idx, n_classes)
    sw = omega[y_idx]
    n_heads = Yb.shape[0]
    if solver == "libsvm":
        F64 = np.asarray(F, dtype=np.float64)
        K = np.einsum("hnr,hmr->hnm", F64, F64)
        beta, bc = fit_one_vs_rest(K if K.shape[0] > 1 else K[0], Yb, float(C), sw, tol=1e-3)
        Wc = np.stack([beta[h] @ F64[h if F64.shape[0] > 1 else 0] for h in range(n_heads)])
        return Wc, np.asarray(bc, dtype=np.float64)
    Wc = np.zeros((n_heads, F.shape[2]))
    bc = np.zeros(n_heads)
    for h in range(n_heads):
        X = F[h if F.shape[0] > 1 else 0]
        if np.all(Yb[h] == Yb[h, 0]):
            bc[h] = Yb[h, 0]
            continue
        svm = LinearSVC(C=float(C), loss="hinge", dual=True, max_iter=20000, tol=1e-4, intercept_scaling=10.0,
                        random_state=seed)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            svm.fit(X, Yb[h], sample_weight=sw)
        Wc[h] = svm.coef_[0]
        bc[h] = svm.intercept_[0]
    return Wc, bc


# ----------------------------------------------------------------------------------------------------------
# The estimator
# ----------------------------------------------------------------------------------------------------------


class DM2KMNClassifier(ClassifierMixin, BaseEstimator):
    """Deep multi-modal kernel map network (spec section 6), built from a DKN and fine-tuned end to end.

    Parameters
    ----------
    dkn : DKNClassifier or None
        The DKN the map network is built from; None means ``DKNClassifier()`` with its defaults. Unfitted, it is
        cloned, given this model's ``random_state`` and ``device``, and fitted on the landmark rows (all
        training rows with ``landmarks='all'``); fitted, it is used as is (its training rows must then be the
        landmarks). Everything the maps take from the DKN is read from it, never duplicated here: ``kernels``,
        ``input_dims``, ``modality_names``, ``kernel_offset``, ``sigma``, ``scale`` (the per-block feature
        scaling, fitted on the landmark rows with the maps), ``activation`` / ``poly_coefs``, and
        for the linear SVM on the top maps ``C`` / ``C_grid`` / ``cv`` / ``class_weight``.
    landmarks : 'all' or int N
        Landmark rows Z (chosen with ``landmark_selection`` and ``random_state`` when N < n).
    landmark_selection : 'uniform' | 'kmeans++'
        How the N < n landmarks are chosen (:func:`genrecli.kernels.landmarks.select_landmarks`): uniformly
        without replacement (default; the draw of earlier versions), or by k-means++ seeding on the scaled
        concatenated inputs (columns standardised, each modality of ``dkn.input_dims`` weighted by
        1/sqrt(width)) of a uniform candidate pool of ``landmark_pool`` rows. Feature-level :meth:`fit` only
        (:meth:`fit_gram` has no features: uniform).
    landmark_stratify : bool
        Draw landmarks per class in proportion to the class sizes (default False).
    landmark_pool : int or None
        k-means++ candidate pool (None: ``min(n, max(20 N, 10000))``).
    block_size : int or None
        Rows per block of the n x N input-map Grams (m, block, N) computed at a time, in the streamed
        feature-level fit (landmarks N < n) and in :meth:`decision_function` / :meth:`predict`; None = all rows
        in one block. Peak memory of those is O(m block N), independent of n; results do not depend on it
        (up to float32 round-off).
    selection_rows : 'landmarks' | 'all'
        Feature-level fit with N < n: where the n-fold costs run. 'landmarks' (default; the streamed fit): C
        by CV, the initial linear SVM, the fine-tuning (lr, epochs) CV and the train RE all on the N landmark
        rows (their maps are computed anyway), then the fine-tuning with the chosen (lr, epochs) on all n rows,
        streamed in mini-batches of ``batch_size`` rows (full batch when None, as gradient accumulation over
        the blocks), the n x N Grams recomputed block by block every epoch and never stored: memory O(m
        block_size N + m N^2), X read block by block (a NumPy array, a memmap or an ``h5py.Dataset``; never
        copied whole or to float64). 'all': the in-memory fit of earlier versions (CV, SVM and fine-tuning on
        all n rows, the (m, n, N) Grams materialised; O(n N m) memory).
    map_columns : 'all' | 're' | int
        The landmarks each map is evaluated against (its "columns"). 'all' (default): every landmark, the
        paper's construction (Eq. 4: an N-vector ktilde_p(x) per unit, N = n in the paper's setting).
        An integer s: the first s of the greedy pivoted-Cholesky order (:func:`pivot_order`) of the DKN's
        output kernel among the landmarks; every map is then the Nystrom map on those s columns,
        ``phi_p(x) = P_p^T ktilde_p(x, Z_S)`` with P_p the KPCA of ktilde_p(Z_S, Z_S), and a test row needs
        its input kernels against the s column rows only (the rbf one exact there, which is what a Nystrom
        rbf map on landmarks containing them gives), so the forward pass costs O(s) per row instead of O(N).
        The DKN, the landmark set (every training row), the fine-tuning and the RE stay as they are.
        're': the fewest columns of :func:`column_schedule` whose initial map network's train RE (spec 7.2,
        absolute-sum form, against the DKN's output kernel) is at most ``re_target`` percent. The choice
        uses training rows only. [I] the issue's "rank is the lever": rank by RE (the error the paper
        reports) rather than by 99 % eigen-energy, which keeps ~0.96 N components of these nearly full-rank
        hidden kernels.
    re_target : float
        RE bound (percent) of ``map_columns='re'`` (default 1.0; the paper reports 0.82 % initial, 3.05 %
        learned).
    max_columns : int or None
        Cap of the candidate columns (default: all N).
    deep_columns : 'all' | 'first'
        Columns of the layers after the first: every landmark ('all', default; the layer-2 maps are
        rank <= s, so this costs O(N sum_p r_p) per row and lowers RE), or the first layer's columns ('first',
        the fastest).
    top_solver : 'liblinear' | 'libsvm'
        Solver of the linear SVMs on the top maps (:func:`_linear_svm_heads`): LinearSVC (default, as
        before) or the libsvm dual on the maps' linear Gram (several times faster at large C for small maps).
    energy, rel_eps : KPCA energy kept per unit (0.99) and the eigenvalue floor (rel_eps * lambda_1).
    levels, quantization : the histogram input map. nystrom_energy : the RBF input map.
    finetune : False = the initial DM2KMN.
    loss : 'hinge' | 'xent'. beta : weight of the approximation term. train_projections : also learn P.
    optimizer : 'sgd' | 'adam'. ft_lr : float | 'cv' (over ``ft_lr_grid``). ft_epochs : int | 'cv' (0, ft_eval_every,
        ..., ft_max_epochs). batch_size : None = full batch. In the streamed fit the mini-batches are
        contiguous row ranges of X visited in a seeded random order each epoch (rows are not permuted: a
        store is read in slices), so X should not be sorted by class.
    ft_constraint : 'simplex' | 'nonneg' (with w >= 0 alone the hinge loss is lowered by inflating the kernel
        scale, and RE grew to ~180 % on kern-eras MFCC, against the paper's 3 %; the per-unit simplex of the
        DKN keeps the scale).
    classifier_init : 'svm' | 'gaussian'.
    random_state : seed of the landmarks, the CV folds, the linear SVMs and the fine-tuning; passed on to a
        cloned ``dkn``.
    device : 'cpu', 'cuda', 'auto'; passed on to a cloned ``dkn``.

    Model selection (C, and the fine-tuning rate and epochs) is :mod:`genrecli.models.selection`: the DKN's
    ``cv`` stratified folds of the training rows, balanced accuracy.

    Fine-tuning diagnostics: ``ft_cv_`` {lr: validation score per checkpoint}; ``ft_curves_`` {lr: fold-mean
    curve} with, per checkpoint epoch, the fold's training loss, training accuracy, ``active`` (share of
    one-vs-rest hinge terms with margin < 1: the only ones the hinge gradient comes from), ``re`` (Frobenius
    RE in percent against the DKN kernel), validation accuracy and ``val_changed`` (share of validation
    predictions changed since epoch 0); ``ft_history_`` the final fit's loss per epoch. The report draws them
    (its fine-tuning curves section).
    """

    def __init__(self, dkn=None, *, landmarks="all", energy=0.99, rel_eps=1e-7, levels=DEFAULT_LEVELS,
                 quantization=DEFAULT_QUANTIZATION, nystrom_energy=DEFAULT_ENERGY, finetune=True, loss="hinge",
                 beta=0.0, train_projections=False, optimizer="sgd", ft_lr="cv", ft_lr_grid=(1e-4, 1e-3, 1e-2),
                 ft_epochs="cv", ft_max_epochs=30, ft_eval_every=5, batch_size=None, ft_constraint="simplex",
                 classifier_init="svm", random_state=None, device="cpu", landmark_selection="uniform",
                 landmark_stratify=False, landmark_pool=None, block_size=2048, selection_rows="landmarks",
                 map_columns="all", re_target=1.0, max_columns=None, deep_columns="all", top_solver="liblinear"):
        self.dkn = dkn
        self.landmarks = landmarks
        self.landmark_selection = landmark_selection
        self.landmark_stratify = landmark_stratify
        self.landmark_pool = landmark_pool
        self.block_size = block_size
        self.selection_rows = selection_rows
        self.map_columns = map_columns
        self.re_target = re_target
        self.max_columns = max_columns
        self.deep_columns = deep_columns
        self.top_solver = top_solver
        self.energy = energy
        self.rel_eps = rel_eps
        self.levels = levels
        self.quantization = quantization
        self.nystrom_energy = nystrom_energy
        self.finetune = finetune
        self.loss = loss
        self.beta = beta
        self.train_projections = train_projections
        self.optimizer = optimizer
        self.ft_lr = ft_lr
        self.ft_lr_grid = ft_lr_grid
        self.ft_epochs = ft_epochs
        self.ft_max_epochs = ft_max_epochs
        self.ft_eval_every = ft_eval_every
        self.batch_size = batch_size
        self.ft_constraint = ft_constraint
        self.classifier_init = classifier_init
        self.random_state = random_state
        self.device = device

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        return tags

    # -- helpers ---------------------------------------------------------------------------------------------
    def _device(self):
        return resolve_device(self.device)

    def _activation(self):
        return self.dkn_._activation()

    def _make_dkn(self) -> DKNClassifier:
        """The fitted ``dkn`` as is, else an unfitted copy with this model's random_state and device."""
        if self.dkn is not None and hasattr(self.dkn, "weights_"):
            return self.dkn
        if self.dkn is not None and not isinstance(self.dkn, DKNClassifier):
            raise UsageError(f"dkn must be a DKNClassifier or None, got {type(self.dkn).__name__}")
        base = DKNClassifier() if self.dkn is None else clone(self.dkn)
        return base.set_params(random_state=self.random_state, device=self.device)

    def _validate_params(self):
        if self.loss not in LOSSES:
            raise UsageError(f"loss {self.loss!r}: expected one of {', '.join(LOSSES)}")
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"optimizer {self.optimizer!r}: expected one of {', '.join(OPTIMIZERS)}")
        if self.ft_constraint not in CONSTRAINTS:
            raise UsageError(f"ft_constraint {self.ft_constraint!r}: expected one of {', '.join(CONSTRAINTS)}")
        if self.classifier_init not in ("svm", "gaussian"):
            raise UsageError(f"classifier_init {self.classifier_init!r}: expected 'svm' or 'gaussian'")
        if not (0.0 < float(self.energy) <= 1.0):
            raise UsageError(f"energy {self.energy!r}: expected a fraction in (0, 1]")
        if self.landmark_selection not in SELECTIONS:
            raise UsageError(f"landmark_selection {self.landmark_selection!r}: expected one of {', '.join(SELECTIONS)}")
        if self.selection_rows not in SELECTION_ROWS:
            raise UsageError(f"selection_rows {self.selection_rows!r}: expected one of {', '.join(SELECTION_ROWS)}")
        if self.block_size is not None and (not isinstance(self.block_size, numbers.Integral) or self.block_size < 1):
            raise UsageError(f"block_size {self.block_size!r}: expected a positive integer or None")
        mc = self.map_columns
        if not (mc in ("all", "re") or (isinstance(mc, numbers.Integral) and not isinstance(mc, bool) and mc > 0)):
            raise UsageError(f"map_columns {mc!r}: expected 'all', 're' or a positive integer")
        if self.top_solver not in ("liblinear", "libsvm"):
            raise UsageError(f"top_solver {self.top_solver!r}: expected 'liblinear' or 'libsvm'")
        if self.deep_columns not in ("all", "first"):
            raise UsageError(f"deep_columns {self.deep_columns!r}: expected 'all' or 'first'")
        if not (isinstance(self.re_target, numbers.Real) and float(self.re_target) > 0):
            raise UsageError(f"re_target {self.re_target!r}: expected a positive RE in percent")
        if self.max_columns is not None and (not isinstance(self.max_columns, numbers.Integral)
                                             or self.max_columns < 1):
            raise UsageError(f"max_columns {self.max_columns!r}: expected a positive integer or None")

    def _landmark_index(self, n: int, y_idx, seed: int, X=None, input_dims=None) -> np.ndarray:
        """Sorted landmark row indices (N,) of the n training rows; X (features) is needed for k-means++."""
        method = self.landmark_selection if X is not None else "uniform"
        return select_landmarks(X, self.landmarks, method=method, y_idx=y_idx, stratify=bool(self.landmark_stratify),
                                input_dims=input_dims, pool=self.landmark_pool, random_state=seed)

    def _streams(self, n: int) -> bool:
        """Whether a feature-level fit on n rows takes the streamed path (N < n, selection_rows='landmarks')."""
        lm = self.landmarks
        return self.selection_rows == "landmarks" and not isinstance(lm, str) and int(lm) < n

    # -- feature-level interface -----------------------------------------------------------------------------
    def fit(self, X, y, *, cv_groups=None):
        """Fit kernels and explicit maps on X (train only), train/take the DKN, build and fine-tune the maps.

        Parameters
        ----------
        X : array-like, shape (n, d)
            Training rows, modalities side by side (``dkn.input_dims``). With landmarks N < n and
            ``selection_rows='landmarks'`` any row-sliceable array-like (NumPy array, memmap,
            ``h5py.Dataset``) is read in blocks of ``block_size`` rows (float32) and never loaded whole.
        y : array-like, shape (n,)
        cv_groups : array-like, shape (n,), optional
            The group of each row (composer, work, ...): every model-selection CV (the DKN's C, the top SVM's
            C, the fine-tuning rate and epochs) then uses stratified group folds
            (:func:`~genrecli.models.selection.cv_folds`); None: stratified folds.

        Returns
        -------
        self
        """
        self._validate_params()
        self._cv_groups = None if cv_groups is None else np.asarray(cv_groups)
        if self._cv_groups is not None and len(self._cv_groups) != len(y):
            raise ValueError(f"cv_groups: {len(self._cv_groups)} values for {len(y)} rows")
        dkn = self._make_dkn()
        if (not isinstance(self.landmarks, str) and isinstance(self.landmarks, numbers.Integral)
                and getattr(X, "ndim", 0) == 2 and self._streams(int(X.shape[0]))):
            return self._fit_streamed(X, y, dkn)
        X, y = validate_data(self, X, y, dtype=np.float64, ensure_min_samples=2, ensure_all_finite=finite_mode(dkn.scale))
        classes, y_idx = _to_labels(y)
        if len(classes) < 2:
            raise ValueError("y has a single class; a classifier needs at least 2 classes")
        seed = seed_of(self.random_state)
        idx = self._landmark_index(X.shape[0], y_idx, seed)
        Xz = X[idx]
        if not hasattr(dkn, "weights_"):
            dkn.fit(Xz, classes[y_idx[idx]], cv_groups=self._groups_of(idx))
        elif not hasattr(dkn, "kernels_"):
            raise ValueError("dkn: fitted on Gram matrices (fit_gram), it cannot serve a feature-level fit; "
                             "pass it unfitted or fitted with fit(X, y)")
        elif dkn.n_train_ != len(idx):
            raise ValueError(f"dkn: fitted on {dkn.n_train_} rows, but its training rows must be the {len(idx)} "
                             "landmarks of this fit (pass it unfitted)")
        self.dkn_ = dkn
        self.slices_ = split_columns(X.shape[1], dkn.input_dims)
        self._fit_maps(Xz, dkn)  # fitted on the landmark rows: map_gram(X) is then X against the landmarks
        self.landmarks_ = np.asarray(idx, dtype=np.int64)
        dkn_grams = dkn._grams(X)
        self.columns_ = self._column_candidates(dkn, dkn_grams if len(idx) == X.shape[0] else dkn_grams[:, idx])
        Gxz = self._map_grams(X)  # against the candidate columns (all landmarks with map_columns='all')
        self._fit_core(Gxz, idx, y_idx, classes, dkn, dkn_grams_z=dkn_grams, modalities=dkn.modalities_)
        return self

    def _input_map(self, kname: str, dkn: DKNClassifier, block: int) -> ExplicitMap:
        """The unfitted explicit map of one elementary kernel on input block ``block``, with the DKN's kernel
        settings (its scaling of that block included)."""
        n_blocks = len(self.slices_)
        return ExplicitMap(kname, offset=dkn.kernel_offset, sigma=dkn.sigma, scale=dkn._block_scales(n_blocks)[block],
                           input_name=dkn._block_labels(n_blocks)[block], energy=self.nystrom_energy,
                           landmarks="all", levels=self.levels, quantization=self.quantization,
                           random_state=seed_of(self.random_state), device=self.device)

    def _fit_maps(self, Xz, dkn):
        names = dkn._modality_names(len(self.slices_))
        maps, labels = [], []
        for block, (sl, mod) in enumerate(zip(self.slices_, names)):
            for kname in dkn.kernels:
                maps.append(self._input_map(kname, dkn, block).fit(Xz[:, sl]))
                labels.append(f"{mod}/{kname}")
            share_training_rows(maps[-len(dkn.kernels):])
        self.maps_ = maps
        self.input_names_ = labels

    def _fit_streamed(self, X, y, dkn):
        """Feature-level fit with N < n landmarks, memory independent of n beyond y (see ``selection_rows``)."""
        n, d = int(X.shape[0]), int(X.shape[1])
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != n:
            raise ValueError(f"y: expected shape ({n},), got {y.shape}")
        classes, y_idx = _to_labels(y)
        if len(classes) < 2:
            raise ValueError("y has a single class; a classifier needs at least 2 classes")
        seed = seed_of(self.random_state)
        if hasattr(X, "iloc"):  # a DataFrame: record its column names, then read it as an array
            validate_data(self, X.iloc[:2], dtype=np.float32, reset=True, ensure_all_finite=False)
            X = X.to_numpy(dtype=np.float32)
        else:
            self.__dict__.pop("feature_names_in_", None)
        self.n_features_in_ = d
        idx = self._landmark_index(n, y_idx, seed, X=X, input_dims=dkn.input_dims)
        Xz = check_array(take_rows(X, idx), dtype=np.float32, ensure_all_finite=finite_mode(dkn.scale))
        if not hasattr(dkn, "weights_"):
            dkn.fit(Xz, classes[y_idx[idx]], cv_groups=self._groups_of(idx))
        elif not hasattr(dkn, "kernels_"):
            raise ValueError("dkn: fitted on Gram matrices (fit_gram), it cannot serve a feature-level fit; "
                             "pass it unfitted or fitted with fit(X, y)")
        elif dkn.n_train_ != len(idx):
            raise ValueError(f"dkn: fitted on {dkn.n_train_} rows, but its training rows must be the {len(idx)} "
                             "landmarks of this fit (pass it unfitted)")
        self.dkn_ = dkn
        self.slices_ = split_columns(d, dkn.input_dims)
        self._fit_maps(Xz, dkn)
        self.landmarks_ = np.asarray(idx, dtype=np.int64)
        dkn_grams_zz = dkn._grams(Xz)
        self.columns_ = self._column_candidates(dkn, dkn_grams_zz)
        Gzz = self._map_grams(Xz)  # (m, N, s): the landmark rows of the n x s Grams
        self._fit_core_streamed(X, Gzz, idx, y_idx, classes, dkn, dkn_grams_zz=dkn_grams_zz,
                                modalities=dkn.modalities_)
        return self

    def _block_rows(self, X, start, stop):
        """Rows start:stop of X as checked float32 (n_features_in_ columns)."""
        A = check_array(read_rows(X, start, stop), dtype=np.float32, ensure_all_finite=finite_mode(self.dkn_.scale))
        if A.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {A.shape[1]} features, but {type(self).__name__} is expecting "
                             f"{self.n_features_in_} features as input")
        return A

    def _block_grams(self, X, start, stop, dev):
        """Input-map Grams of rows start:stop against the landmarks, computed in blocks: (m, stop-start, N)."""
        parts = [self._map_grams(self._block_rows(X, start + s0, start + s1))
                 for s0, s1 in row_blocks(stop - start, self.block_size)]
        G = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
        return torch.from_numpy(G).to(dev)

    def _fit_core_streamed(self, X, Gzz, idx, y_idx, classes, dkn, *, dkn_grams_zz, modalities):
        """Build the maps on the landmarks, select on them, fine-tune on all n rows streamed in blocks.

        Gzz: input-map Grams among the landmarks (m, N, N); dkn_grams_zz: exact elementary Grams among them.
        """
        dev = self._device()
        g = dkn._activation()
        seed = seed_of(self.random_state)
        n_classes = len(classes)
        n, N = len(y_idx), len(idx)
        omega = class_weights(y_idx, n_classes, dkn.class_weight, classes)
        y_z = y_idx[idx]
        Gzz_t = torch.from_numpy(np.ascontiguousarray(Gzz, dtype=np.float32)).to(dev)
        if self.columns_ is None:
            Gzz_t = 0.5 * (Gzz_t + Gzz_t.transpose(1, 2))
        Ws = [torch.as_tensor(w, device=dev) for w in dkn.weights_]
        K_dkn = torch.from_numpy(dkn.output_gram(dkn_grams_zz)).to(dev)
        Ps, ranks, Gzz_t, _ = self._choose_columns(Ws, Gzz_t, None, g, K_dkn)
        # everything n-fold (C by CV, initial SVM, fine-tuning CV, RE) on the landmark rows
        ctx = _Ctx(g=g, Gzz=Gzz_t, Gxz=None, all_lm=True, n=N, dev=dev, cols=self._cols(dev))
        with torch.no_grad():
            F_top = self._top_maps(ctx, Ws, Ps).cpu().numpy()
        C = self._select_C(F_top, y_z, n_classes, omega, seed, dkn, groups=self._groups_of(idx))
        Wc, bc = _linear_svm_heads(F_top, y_z, n_classes, omega, C, seed, self.top_solver)
        with torch.no_grad():
            self.re_train_initial_ = relative_error(self._inner_train(ctx, Ws, Ps), K_dkn)
        self.ft_lr_, self.ft_epochs_, self.ft_cv_, self.ft_curves_ = None, 0, {}, {}
        self.ft_history_ = []
        if self.finetune:
            lr, epochs = self._select_finetune(ctx, Ws, Ps, Wc, bc, F_top, y_z, n_classes, omega, C, K_dkn,
                                               seed, int(dkn.cv), groups=self._groups_of(idx))
            if epochs > 0:
                Ws, Ps, Wc, bc, hist = self._finetune_streamed(X, Gzz_t, Ws, Ps, Wc, bc, y_idx, n_classes, omega,
                                                               C, lr, epochs, seed)
                self.ft_history_ = hist
            self.ft_lr_, self.ft_epochs_ = lr, epochs
        with torch.no_grad():
            self.re_train_ = relative_error(self._inner_train(ctx, Ws, Ps), K_dkn)
        return self._set_fitted(Ws, Ps, ranks, g, Gzz_t, Wc, bc, C=C, omega=omega, classes=classes, n=n,
                                modalities=modalities, dkn=dkn)

    def _finetune_streamed(self, X, Gzz, Ws, Ps, Wc, bc, y_idx, n_classes, omega, C, lr, epochs, seed):
        """Fine-tuning on all n rows of X, read and mapped ``block_size`` rows at a time.

        One optimiser step per mini-batch (``batch_size`` contiguous rows, None = all n); a mini-batch larger
        than a block accumulates the gradient block by block: the landmark maps are computed once per step in
        the graph, detached, and their gradient from every block is summed before one backward through them,
        so the step equals the unblocked one. Returns (Ws, Ps, Wc, bc, history).
        """
        dev = Gzz.device
        g = self._activation()
        cols = self._cols(dev)
        n = len(y_idx)
        gen = torch.Generator().manual_seed(int(seed))
        Wp = [w.detach().clone().requires_grad_(True) for w in Ws]
        Pp = [p.detach().clone().requires_grad_(bool(self.train_projections)) for p in Ps]
        if self.classifier_init == "svm":
            Wc_t = torch.as_tensor(np.asarray(Wc), dtype=torch.float32, device=dev).clone()
            bc_t = torch.as_tensor(np.asarray(bc), dtype=torch.float32, device=dev).clone()
        else:
            Wc_t = (0.01 * torch.randn(np.asarray(Wc).shape, generator=gen)).to(dev)
            bc_t = torch.zeros(len(bc), device=dev)
        Wc_t.requires_grad_(True)
        bc_t.requires_grad_(True)
        params = Wp + [Wc_t, bc_t] + (list(Pp) if self.train_projections else [])
        opt = torch.optim.SGD(params, lr=lr) if self.optimizer == "sgd" else torch.optim.Adam(params, lr=lr)
        Yb_all = ovr_targets(y_idx, n_classes).T.astype(np.float32)  # (n, heads)
        sw_all = omega[y_idx].astype(np.float32)
        lam = 1.0 / (C * n)
        batches = list(row_blocks(n, self.batch_size))
        hist = []
        good = _snapshot(params)
        for ep in range(1, int(epochs) + 1):
            order = torch.randperm(len(batches), generator=gen).tolist() if len(batches) > 1 else [0]
            ep_loss = 0.0
            start = _snapshot(params)
            for b in order:
                b0, b1 = batches[b]
                opt.zero_grad()
                _, Fz = propagate(Wp, Pp, g, Gzz, cols=cols)  # landmark maps in the graph, once per step
                Fz_d = [f.detach().requires_grad_(True) for f in Fz]
                step_loss = 0.0
                for s0, s1 in row_blocks(b1 - b0, self.block_size):
                    s0, s1 = b0 + s0, b0 + s1
                    with torch.no_grad():
                        Ax = self._block_grams(X, s0, s1, dev)
                    F = _rows_forward(Ax, Wp, Pp, Fz_d, g, cols)
                    S = head_scores(F, Wc_t, bc_t)
                    rows = slice(s0, s1)
                    part = _loss(self.loss, S, torch.from_numpy(Yb_all[rows]).to(dev),
                                 torch.from_numpy(sw_all[rows]).to(dev),
                                 torch.from_numpy(y_idx[rows]).to(dev), n_classes) * ((s1 - s0) / (b1 - b0))
                    part.backward()
                    step_loss += float(part.detach())
                reg = 0.5 * lam * (Wc_t ** 2).sum()
                reg.backward()
                pairs = [(f, fd.grad) for f, fd in zip(Fz, Fz_d) if fd.grad is not None and f.requires_grad]
                if pairs:  # one backward through the landmark maps for the whole mini-batch
                    torch.autograd.backward([f for f, _ in pairs], [gr for _, gr in pairs])
                opt.step()
                if not _finite(params):
                    ep_loss = float("nan")
                    break
                with torch.no_grad():
                    for w in Wp:
                        if self.ft_constraint == "simplex":
                            w.copy_(project_simplex(w))
                        else:
                            w.clamp_(min=0.0)
                ep_loss += (step_loss + float(reg.detach())) * (b1 - b0) / n
            if not math.isfinite(ep_loss):
                # diverged: back to the parameters of the start of the last epoch whose loss was finite (the
                # step after it produced the overflow), and stop
                _restore(params, good)
                break
            good = start
            hist.append({"epoch": ep, "loss": ep_loss})
        return [w.detach() for w in Wp], [p.detach() for p in Pp], Wc_t.detach(), bc_t.detach(), hist

    def _map_grams(self, X, *, shared=False):
        """Inner products of the explicit input maps of X with those of the column landmarks: (m, n_x, s).

        All N landmarks (``map_gram``) with ``columns_`` None, else the s columns ``columns_``
        (:meth:`~genrecli.kernels.maps.ExplicitMap.column_gram`: exact rbf values against them). ``shared``
        (prediction): against all N landmarks, the maps of one modality share their validation and product
        (:func:`~genrecli.kernels.maps.map_grams_block`, equal to ``map_gram`` to float32 rounding); the fit
        keeps each map's own ``map_gram``, so a refit gives the model it gave before."""
        per_modality = len(self.maps_) // len(self.slices_)
        cols = getattr(self, "columns_", None)
        width = len(self.landmarks_) if cols is None else len(cols)
        out = np.empty((len(self.maps_), X.shape[0], width), dtype=np.float32)
        if cols is not None or shared:
            for b, sl in enumerate(self.slices_):
                group, dest = self.maps_[b * per_modality:(b + 1) * per_modality], out[b * per_modality:(b + 1) * per_modality]
                if cols is None:
                    map_grams_block(group, X[:, sl], dest)
                else:
                    column_grams_block(group, X[:, sl], cols, dest)
            return out
        for i, em in enumerate(self.maps_):
            sl = self.slices_[i // per_modality]
            out[i] = em.map_gram(X[:, sl]) if cols is None else em.column_gram(X[:, sl], cols)
        return out

    def _heads_features(self, X) -> np.ndarray:
        """Head scores (n_x, n_heads) of feature rows X, ``block_size`` rows at a time.

        X : array-like (n_x, n_features_in_), row-sliceable (NumPy array, memmap, ``h5py.Dataset``): each block
        is read, checked, mapped against the landmarks ((m, block, N) Grams) and scored before the next, so
        memory is O(m block_size N) whatever n_x.
        """
        if (not isinstance(X, np.ndarray) and not hasattr(X, "iloc") and getattr(X, "ndim", 0) == 2
                and hasattr(X, "__getitem__")):  # a store dataset or view: read and check block by block
            src, n, checked = X, int(X.shape[0]), False
        else:
            src = validate_data(self, X, dtype=np.float32, reset=False, ensure_all_finite=finite_mode(self.dkn_.scale))
            n, checked = src.shape[0], True
        if n == 0:
            validate_data(self, np.asarray(X), reset=False)  # scikit-learn's message for 0 rows
        out = [self._heads(self._map_grams(src[s0:s1] if checked else self._block_rows(src, s0, s1), shared=True))
               for s0, s1 in row_blocks(n, self.block_size)]
        return out[0] if len(out) == 1 else np.concatenate(out, 0)

    def decision_function(self, X):
        """Class scores of feature rows X (n_x, n_features_in_): (n_x,) for two classes, else (n_x, C).

        Computed ``block_size`` rows at a time (:meth:`_heads_features`)."""
        check_is_fitted(self, "maps_")
        S = self._heads_features(X)
        return S[:, 0] if len(self.classes_) == 2 else S

    def predict(self, X):
        """Labels of feature rows X (n_x, n_features_in_) -> (n_x,), ``block_size`` rows at a time."""
        check_is_fitted(self, "maps_")
        return self.classes_[heads_to_scores(self._heads_features(X), len(self.classes_)).argmax(1)]

    def _proba_ok(self):
        return self.loss == "xent"

    @available_if(_proba_ok)
    def predict_proba(self, X):
        """Softmax of the class scores (only with loss='xent', where the scores are trained as logits)."""
        check_is_fitted(self, "maps_")
        return _softmax(heads_to_scores(self._heads_features(X), len(self.classes_)))

    # -- Gram-level interface --------------------------------------------------------------------------------
    def fit_gram(self, grams, y, *, map_grams=None, modalities=None, cv_groups=None):
        """grams: exact elementary training Grams (m, n, n); map_grams: explicit-map inner products (m, n, n)
        (None: the exact Grams, i.e. exact input maps); cv_groups as in :meth:`fit`."""
        self._validate_params()
        self._cv_groups = None if cv_groups is None else np.asarray(cv_groups)
        G = _check_grams(grams)
        if G.shape[1] != G.shape[2]:
            raise ValueError(f"grams: training Grams must be square, got {G.shape}")
        M = G if map_grams is None else _check_grams(map_grams, "map_grams", G.shape[1], G.shape[0])
        if M.shape != G.shape:
            raise ValueError(f"map_grams shape {M.shape} differs from grams shape {G.shape}")
        classes, y_idx = _to_labels(np.asarray(y))
        if len(classes) < 2:
            raise ValueError("y has a single class; a classifier needs at least 2 classes")
        if len(y_idx) != G.shape[1]:
            raise ValueError(f"y has {len(y_idx)} labels for {G.shape[1]} training tracks")
        seed = seed_of(self.random_state)
        idx = self._landmark_index(G.shape[1], y_idx, seed)
        dkn = self._make_dkn()
        self.dkn_ = dkn
        Gz = G if len(idx) == G.shape[1] else np.ascontiguousarray(G[:, idx][:, :, idx])
        if not hasattr(dkn, "weights_"):
            dkn.fit_gram(Gz, classes[y_idx[idx]], modalities=modalities, cv_groups=self._groups_of(idx))
        elif dkn.n_train_ == G.shape[1] and len(idx) < G.shape[1]:
            raise ValueError("dkn: a DKN fitted on all training rows cannot serve landmarks < n (refit)")
        Gxz = M if len(idx) == M.shape[1] else np.ascontiguousarray(M[:, :, idx])
        self.columns_ = self._column_candidates(dkn, Gz)
        if self.columns_ is not None:
            Gxz = np.ascontiguousarray(Gxz[:, :, self.columns_])
        self._fit_core(Gxz, idx, y_idx, classes, dkn, dkn_grams_z=Gz[:, :, :] if len(idx) == G.shape[1] else
                       np.ascontiguousarray(G[:, :, idx]), modalities=modalities)
        self.n_train_ = G.shape[1]
        return self

    def decision_gram(self, grams_test, *, map_grams_test=None):
        """(m, n_test, n_train) map inner products with the training tracks -> (n_test, C) class scores.

        ``map_grams_test`` are used (only their landmark columns); when None, ``grams_test`` stand in (exact
        input maps)."""
        check_is_fitted(self, "weights_")
        M = grams_test if map_grams_test is None else map_grams_test
        M = _check_grams(M, "map_grams_test", self.n_train_, len(self.weights_[0]))
        if len(self.landmarks_) < M.shape[2]:
            M = M[:, :, self.landmarks_]
        return heads_to_scores(self._heads(self._at_map_columns(M)), len(self.classes_))

    def _at_map_columns(self, M):
        """Columns ``columns_`` of Grams against the landmarks (m, n_x, N): what the map network reads."""
        cols = getattr(self, "columns_", None)
        return M if cols is None else np.ascontiguousarray(M[:, :, cols])

    def predict_gram(self, grams_test, *, map_grams_test=None):
        return self.classes_[self.decision_gram(grams_test, map_grams_test=map_grams_test).argmax(1)]

    def relative_importance(self):
        check_is_fitted(self, "weights_")
        return relative_importance(self.weights_, self.modalities_)

    def extra_metrics(self, grams_test=None, *, map_grams_test=None, repeats=3) -> dict:
        """RE (train pairs; test x train pairs if grams_test is given), RI of the DKN and the DM2KMN, times.

        grams_test: exact elementary Grams test x train (m, n_test, n_train) for the DKN; map_grams_test: the
        map inner products (default grams_test). With landmarks < n the 'train' pairs are train x landmarks.
        """
        check_is_fitted(self, "weights_")
        out = {
            "re_train_initial": self.re_train_initial_,
            "re_train": self.re_train_,
            "ri_dm2kmn": relative_importance(self.weights_, self.modalities_),
            "ri_dkn": relative_importance(self.dkn_.weights_, self.modalities_),
            "ranks": self.ranks_,
            "landmarks": int(len(self.landmarks_)),
            "map_columns": int(len(self.landmarks_) if getattr(self, "columns_", None) is None else len(self.columns_)),
            "finetune_lr": self.ft_lr_,
            "finetune_epochs": self.ft_epochs_,
            # CV fold-mean curves per learning rate (epoch, loss, train_acc, active, re, val_acc, val_changed)
            # and the final fit's per-epoch loss: the report's fine-tuning curves
            "finetune_curves": getattr(self, "ft_curves_", {}),
            # the CV estimate (balanced accuracy on the training part) of the chosen (lr, epochs): comparable
            # across DM2KMN variants, so a choice among them can be made without the test part
            "finetune_cv_best": (float(np.nanmax([x for v in self.ft_cv_.values() for x in v]))
                                 if getattr(self, "ft_cv_", None) else None),
            "finetune_history": [{"epoch": h["epoch"], "loss": h["loss"]} for h in getattr(self, "ft_history_", [])],
        }
        if grams_test is not None:
            G = _check_grams(grams_test, "grams_test", self.n_train_, len(self.weights_[0]))
            M = G if map_grams_test is None else _check_grams(map_grams_test, "map_grams_test", self.n_train_)
            Gz = G[:, :, self.landmarks_] if len(self.landmarks_) < G.shape[2] else G
            Mz = M[:, :, self.landmarks_] if len(self.landmarks_) < M.shape[2] else M
            out["re_test"] = relative_error(self.map_inner(self._at_map_columns(Mz)), self.dkn_.output_gram(Gz))
            Gd = G if self.dkn_.n_train_ == G.shape[2] else Gz  # the DKN was trained on the landmarks when N < n
            t_dkn = _best_time(lambda: self.dkn_.decision_gram(Gd), repeats)
            t_map = _best_time(lambda: self.decision_gram(G, map_grams_test=M), repeats)
            out.update({"forward_time_dkn_s": t_dkn, "forward_time_dm2kmn_s": t_map, "n_test": int(G.shape[1])})
        return out

    def extra_metrics_features(self, X_test, *, repeats=3) -> dict:
        """:meth:`extra_metrics` from test FEATURE rows, after a feature-level :meth:`fit` (or a load of its state).

        Parameters
        ----------
        X_test : array-like, shape (n_test, n_features_in_)
            Test rows, columns as in :meth:`fit` (modalities side by side, split by the DKN's ``input_dims``).
        repeats : int
            Each time is the best of ``repeats`` runs after one warm-up.

        Returns
        -------
        dict
            Everything of :meth:`extra_metrics` without Grams (``re_train_initial``, ``re_train``, ``ri_dm2kmn``,
            ``ri_dkn``, ``ranks``, ``landmarks``, ``finetune_lr``, ``finetune_epochs``), plus, measured in this
            call on the same rows: ``n_test``; ``re_test``: RE of the top-map inner products against the DKN's
            output kernel, test x landmark pairs (the landmarks are the DKN's training rows); the times, each
            the best of ``repeats``: ``forward_time_dm2kmn_s`` / ``forward_time_dkn_s``, scoring the rows from
            their features (:meth:`decision_function`: input maps against the N landmarks, then the map
            network; and the DKN's ``decision_function``: elementary Grams against its training rows, then the
            kernel network and SVMs), ``network_time_dm2kmn_s`` / ``network_time_dkn_s``, the networks alone on
            those precomputed input Grams (the Gram-level :meth:`extra_metrics` times).
        """
        check_is_fitted(self, "maps_")
        if not hasattr(self.dkn_, "kernels_"):
            raise ValueError("extra_metrics_features needs a DKN with elementary kernels (a feature-level fit)")
        X = validate_data(self, X_test, dtype=np.float64, reset=False, ensure_all_finite=finite_mode(self.dkn_.scale))
        out = self.extra_metrics(repeats=repeats)
        M = self._map_grams(X, shared=True)  # (m, n_test, N) input-map inner products against the landmarks
        G = self.dkn_._grams(X)  # (m, n_test, N) exact elementary Grams against the DKN's training rows
        out["re_test"] = relative_error(self.map_inner(M), self.dkn_.output_gram(G))
        out.update({
            "forward_time_dkn_s": _best_time(lambda: self.dkn_.decision_function(X), repeats),
            "forward_time_dm2kmn_s": _best_time(lambda: self.decision_function(X), repeats),
            "network_time_dkn_s": _best_time(lambda: self.dkn_.decision_gram(G), repeats),
            "network_time_dm2kmn_s": _best_time(lambda: self._heads(M), repeats),
            "n_test": int(X.shape[0]),
        })
        return out

    # -- core ------------------------------------------------------------------------------------------------
    def _fit_core(self, Gxz: np.ndarray, idx, y_idx, classes, dkn, *, dkn_grams_z, modalities):
        """Gxz: map inner products train x landmarks (m, n, N); dkn_grams_z: exact Grams train x landmarks."""
        dev = self._device()
        g = dkn._activation()
        seed = seed_of(self.random_state)
        n_classes = len(classes)
        n, N = Gxz.shape[1], len(idx)
        omega = class_weights(y_idx, n_classes, dkn.class_weight, classes)
        all_lm = N == n and np.array_equal(idx, np.arange(n))
        Gxz_t = torch.from_numpy(np.ascontiguousarray(Gxz, dtype=np.float32)).to(dev)
        Gzz_t = Gxz_t[:, torch.as_tensor(idx, device=dev)] if not all_lm else Gxz_t
        if self.columns_ is None:
            Gzz_t = 0.5 * (Gzz_t + Gzz_t.transpose(1, 2))  # exact symmetry for the eigendecompositions
        Ws = [torch.as_tensor(w, device=dev) for w in dkn.weights_]
        # exact DKN output kernel, train x landmarks (for RE, the column search and the approximation term)
        K_dkn = torch.from_numpy(dkn.output_gram(dkn_grams_z)).to(dev)

        # 1) layer-wise KPCA maps with the DKN weights (initial DM2KMN), on the chosen map columns
        K_zz = K_dkn if all_lm else K_dkn[:, torch.as_tensor(idx, device=dev)]
        Ps, ranks, Gzz_t, Gxz_t = self._choose_columns(Ws, Gzz_t, None if all_lm else Gxz_t, g, K_zz)
        ctx = _Ctx(g=g, Gzz=Gzz_t, Gxz=None if all_lm else Gxz_t, all_lm=all_lm, n=n, dev=dev,
                   cols=self._cols(dev))
        F_top = self._top_maps(ctx, Ws, Ps).cpu().numpy()

        # 2) initial classifier: class-weighted OvR linear SVM, C by CV
        C = self._select_C(F_top, y_idx, n_classes, omega, seed, dkn, groups=self._groups_of(None))
        Wc, bc = _linear_svm_heads(F_top, y_idx, n_classes, omega, C, seed, self.top_solver)
        with torch.no_grad():
            self.re_train_initial_ = relative_error(self._inner_train(ctx, Ws, Ps), K_dkn)

        # 3) fine-tuning, (lr, epochs) by CV
        self.ft_lr_, self.ft_epochs_, self.ft_cv_, self.ft_curves_ = None, 0, {}, {}
        self.ft_history_ = []
        if self.finetune:
            lr, epochs = self._select_finetune(ctx, Ws, Ps, Wc, bc, F_top, y_idx, n_classes, omega, C, K_dkn,
                                               seed, int(dkn.cv), groups=self._groups_of(None))
            if epochs > 0:
                Ws, Ps, Wc, bc, hist = self._finetune(ctx, Ws, Ps, Wc, bc, np.arange(n), y_idx, n_classes, omega,
                                                      C, K_dkn, lr, epochs, None, seed)
                self.ft_history_ = hist
            self.ft_lr_, self.ft_epochs_ = lr, epochs

        with torch.no_grad():
            self.re_train_ = relative_error(self._inner_train(ctx, Ws, Ps), K_dkn)
        self.dkn_ = dkn
        self.landmarks_ = np.asarray(idx, dtype=np.int64)
        return self._set_fitted(Ws, Ps, ranks, g, Gzz_t, Wc, bc, C=C, omega=omega, classes=classes, n=n,
                                modalities=modalities, dkn=dkn)

    def _layer_projections(self, Ws, Gzz, g, cols=None) -> tuple[list, list]:
        """Layer-wise KPCA projections of the landmark kernels with the weights Ws (the initial DM2KMN):
        the projections (one (m_l, s, r) tensor per layer) and their ranks. Gzz (m, N, s): the landmarks
        against the column landmarks ``cols`` (None: all, s = N)."""
        Ps, ranks = [], []
        Az = Gzz
        with torch.no_grad():
            for li, W in enumerate(Ws):
                P, rk, Kz = build_projections(W, Az, g, float(self.energy), float(self.rel_eps),
                                              _layer_cols(cols, li))
                Ps.append(P)
                ranks.append(rk)
                if li < len(Ws) - 1:
                    Fz = torch.bmm(Kz, P)
                    Az = torch.bmm(Fz, _at_columns(Fz, _layer_cols(cols, li + 1)).transpose(1, 2))
                del Kz
        return Ps, ranks

    def _column_candidates(self, dkn, dkn_grams_zz) -> np.ndarray | None:
        """Candidate map columns, best first (indices into the landmarks), or None for ``map_columns='all'``.

        The greedy pivoted-Cholesky order (:func:`pivot_order`) of the DKN's output kernel among the N
        landmarks (dkn_grams_zz: its exact elementary Grams (m, N, N)): the columns that explain the kernel
        the map network approximates, first. ``map_columns=s`` keeps the first s, ``'re'`` up to
        ``max_columns`` (default N) for :meth:`_choose_columns` to search.
        """
        if self.map_columns == "all":
            return None
        K = dkn.output_gram(dkn_grams_zz)
        N = K.shape[1]
        s_max = N if self.map_columns == "re" else min(int(self.map_columns), N)
        if self.max_columns is not None:
            s_max = min(s_max, int(self.max_columns))
        return pivot_order(K, s_max)

    def _choose_columns(self, Ws, Gzz, Gxz, g, K_zz):
        """The map columns and the layer-wise projections on them: (Ps, ranks, Gzz, Gxz) trimmed to the columns.

        ``columns_`` None: every landmark, the paper's construction. Otherwise ``columns_`` holds the candidate
        order and Gzz / Gxz (m, N | n, s_max) the Grams against it; ``map_columns='re'`` takes the fewest
        columns of :func:`column_schedule` whose initial map network has a train RE (absolute-sum form, against
        the DKN's output kernel K_zz among the landmarks, spec 7.2) of at most ``re_target`` percent (all
        candidates when none does), an integer ``map_columns`` all the candidates. ``columns_`` is left at the
        chosen columns and ``column_search_`` records (columns, RE %) of every count tried.
        """
        self.column_search_ = []
        self.layer_columns_ = None
        if self.columns_ is None:
            Ps, ranks = self._layer_projections(Ws, Gzz, g)
            return Ps, ranks, Gzz, Gxz
        cand = self.columns_
        counts = column_schedule(len(cand)) if self.map_columns == "re" else [len(cand)]
        N = Gzz.shape[1]
        for s in counts:
            self.layer_columns_ = self._layer_columns(cand[:s], N, len(Ws))
            cols = self._cols(Gzz.device)
            Gs = Gzz[:, :, :s]
            Ps, ranks = self._layer_projections(Ws, Gs, g, cols)
            with torch.no_grad():
                F, _ = propagate(Ws, Ps, g, Gs, cols=cols)
                re = relative_error(torch.bmm(F, F.transpose(1, 2)).cpu(), K_zz.cpu())["re_abs"]
            self.column_search_.append((int(s), float(re)))
            if re <= float(self.re_target):
                break
        self.columns_ = np.ascontiguousarray(cand[:s], dtype=np.int64)
        return Ps, ranks, Gs, (None if Gxz is None else Gxz[:, :, :s])

    def _layer_columns(self, first, N, n_layers) -> list[np.ndarray]:
        """Columns of every layer: ``first`` (the input-Gram columns) in the first, then ``deep_columns``:
        every landmark ('all') or the same columns ('first')."""
        first = np.ascontiguousarray(first, dtype=np.int64)
        deep = np.arange(N, dtype=np.int64) if self.deep_columns == "all" else first
        return [first] + [deep] * (n_layers - 1)

    def _cols(self, dev):
        """``layer_columns_`` as device index tensors, one per layer (None: every landmark is a column)."""
        cols = getattr(self, "layer_columns_", None)
        return None if cols is None else [torch.as_tensor(c, device=dev) for c in cols]

    def _set_fitted(self, Ws, Ps, ranks, g, Gzz, Wc, bc, *, C, omega, classes, n, modalities, dkn):
        """The fitted attributes from the final weights, projections and classifier (both fit paths)."""
        with torch.no_grad():
            _, Fz_list = propagate(Ws, Ps, g, Gzz, cols=self._cols(Gzz.device))
        self.classes_ = classes
        self.weights_ = [w.detach().cpu().numpy().astype(np.float32) for w in Ws]
        self.projections_ = [P.detach().cpu().numpy().astype(np.float32) for P in Ps]
        self.ranks_ = ranks
        self.landmark_maps_ = [F.detach().cpu().numpy().astype(np.float32) for F in Fz_list]  # all layers
        Wc = Wc.detach().cpu().numpy() if torch.is_tensor(Wc) else Wc
        bc = bc.detach().cpu().numpy() if torch.is_tensor(bc) else bc
        self.coef_ = np.ascontiguousarray(Wc, dtype=np.float32)
        self.intercept_ = np.ascontiguousarray(bc, dtype=np.float64)
        self.C_ = C
        self.class_weight_ = omega
        self.n_train_ = n
        self.modalities_ = list(modalities) if modalities is not None else None
        self.n_iter_ = int(getattr(dkn, "n_iter_", 0)) + int(self.ft_epochs_)
        return self

    def _top_maps(self, ctx, Ws, Ps):
        """Top-layer maps of all training rows (m_L, n, r_L)."""
        if ctx.all_lm:
            F, _ = propagate(Ws, Ps, ctx.g, ctx.Gzz, cols=ctx.cols)
            return F
        with torch.no_grad():
            _, Fz = propagate(Ws, Ps, ctx.g, ctx.Gzz, cols=ctx.cols)
            return self._forward_rows(ctx.Gxz, Ws, Ps, Fz, ctx.g, ctx.cols)

    @staticmethod
    def _forward_rows(Gxz, Ws, Ps, Fz_list, g, cols=None, chunk=2048):
        """Maps of rows x (m, B, s) through the network given the landmark maps (no gradient, chunked)."""
        Qs = _layer_operators(Ps, Fz_list, cols)
        outs = []
        for r0 in range(0, Gxz.shape[1], chunk):
            Ax = Gxz[:, r0:r0 + chunk]
            for li, (W, P) in enumerate(zip(Ws, Ps)):
                Kx = combine(W, Ax, g)
                if li < len(Ws) - 1:
                    Ax = _next_inner(Kx, Qs[li])
                else:
                    Fx = torch.bmm(Kx, P)
            outs.append(Fx)
        return torch.cat(outs, 1)

    def _inner_train(self, ctx, Ws, Ps):
        """<phi_L(x_i), phi_L(z_j)> for train rows x landmarks (m_L, n, N)."""
        _, Fz = propagate(Ws, Ps, ctx.g, ctx.Gzz, cols=ctx.cols)
        Fx = Fz[-1] if ctx.all_lm else self._forward_rows(ctx.Gxz, Ws, Ps, Fz, ctx.g, ctx.cols)
        return torch.bmm(Fx, Fz[-1].transpose(1, 2)).cpu()

    def map_inner(self, map_grams_z: np.ndarray) -> np.ndarray:
        """<phi_L(x), phi_L(z_j)> for rows given by their input-map Grams against the landmarks (m, n_x, N)."""
        check_is_fitted(self, "weights_")
        dev = self._device()
        Ws, Ps, Fz = self._tensors(dev)
        Fz_top = self._landmark_top(dev)
        with torch.no_grad():
            Fx = self._forward_rows(torch.from_numpy(np.ascontiguousarray(map_grams_z, dtype=np.float32)).to(dev),
                                    Ws, Ps, Fz, self._activation(), self._cols(dev))
            return torch.bmm(Fx, Fz_top.transpose(1, 2)).cpu().numpy()

    def _landmark_top(self, dev):
        return torch.as_tensor(self.landmark_maps_[-1], device=dev)

    def _tensors(self, dev):
        Ws = [torch.as_tensor(w, device=dev) for w in self.weights_]
        Ps = [torch.as_tensor(p, device=dev) for p in self.projections_]
        Fz = [torch.as_tensor(f, device=dev) for f in self.landmark_maps_]
        return Ws, Ps, Fz

    def _groups_of(self, rows):
        """The CV groups of training rows ``rows`` (None: all rows), or None without ``cv_groups``."""
        g = getattr(self, "_cv_groups", None)
        return None if g is None else (g if rows is None else g[np.asarray(rows)])

    def _select_C(self, F_top, y_idx, n_classes, omega, seed, dkn, groups=None):
        """C of the linear SVMs on the top maps: the DKN's C, or by CV over its C_grid (ties -> smallest C)."""
        if dkn.C != "cv":
            return float(dkn.C)
        grid = sorted(float(c) for c in dkn.C_grid)

        def fold_scores(tr, va):
            out = []
            for C in grid:
                Wc, bc = _linear_svm_heads(F_top[:, tr], y_idx[tr], n_classes, omega, C, seed, self.top_solver)
                S = np.stack([F_top[h if F_top.shape[0] > 1 else 0][va] @ Wc[h] + bc[h] for h in range(len(bc))], 1)
                out.append(task_score(y_idx[va], heads_to_scores(S, n_classes)))
            return out

        result = select_by_cv(grid, fold_scores, cv_folds(y_idx, int(dkn.cv), seed=seed, groups=groups),
                              default=float(dkn.C_grid[0]))
        if result.n_folds:
            self.svm_cv_scores_ = result.as_dict()
        return float(result.best)

    def _select_finetune(self, ctx, Ws, Ps, Wc, bc, F_top, y_idx, n_classes, omega, C, K_dkn, seed, n_splits,
                         groups=None):
        """(lr, epochs) of the fine-tuning by CV: fewest epochs first, then the first rate of ``ft_lr_grid``."""
        lr_grid = [float(self.ft_lr)] if self.ft_lr != "cv" else [float(v) for v in self.ft_lr_grid]
        if self.ft_epochs != "cv":
            if self.ft_lr == "cv" and len(lr_grid) > 1:
                raise UsageError("ft_lr='cv' needs ft_epochs='cv' (the epochs are selected with the rate)")
            return lr_grid[0], int(self.ft_epochs)
        max_ep = int(self.ft_max_epochs)
        every = max(1, int(self.ft_eval_every))
        checkpoints = list(range(0, max_ep + 1, every))
        candidates = [(lr, ep) for ep in checkpoints for lr in lr_grid]

        fold_curves = {f"{lr:g}": [] for lr in lr_grid}

        def fold_scores(tr, va):
            Wc0, bc0 = _linear_svm_heads(F_top[:, tr], y_idx[tr], n_classes, omega, C, seed, self.top_solver)
            table = np.zeros((len(lr_grid), len(checkpoints)))
            for i, lr in enumerate(lr_grid):
                _, _, _, _, hist = self._finetune(ctx, Ws, Ps, Wc0, bc0, tr, y_idx, n_classes, omega, C, K_dkn, lr,
                                                  max_ep, (va, every), seed)
                fold_curves[f"{lr:g}"].append(hist)
                scores = [h["val_score"] for h in hist if "val_score" in h]
                scores = scores + [0.0] * (len(checkpoints) - len(scores))  # diverged runs score 0 afterwards
                table[i] = scores[: len(checkpoints)]
            return table.T.reshape(-1)  # candidate order: checkpoint-major

        result = select_by_cv(candidates, fold_scores, cv_folds(y_idx, n_splits, seed=seed, groups=groups),
                              default=(lr_grid[0], 0))
        if result.n_folds:
            means = result.scores.reshape(len(checkpoints), len(lr_grid))
            self.ft_cv_ = {f"{lr:g}": means[:, i].tolist() for i, lr in enumerate(lr_grid)}
            self.ft_curves_ = {lr: _mean_curve(runs, checkpoints) for lr, runs in fold_curves.items()}
        return result.best

    def _finetune(self, ctx, Ws, Ps, Wc, bc, rows, y_idx, n_classes, omega, C, K_dkn, lr, epochs, val, seed):
        """End-to-end fine-tuning on training rows ``rows``; returns new (Ws, Ps, Wc, bc, history).

        val = (val_rows, every): validation accuracy recorded at epoch 0 and every ``every`` epochs.
        """
        dev = ctx.dev
        gen = torch.Generator().manual_seed(int(seed))
        Wp = [w.detach().clone().requires_grad_(True) for w in Ws]
        Pp = [p.detach().clone().requires_grad_(bool(self.train_projections)) for p in Ps]
        if self.classifier_init == "svm":
            Wc_t = torch.as_tensor(np.asarray(Wc), dtype=torch.float32, device=dev).clone()
            bc_t = torch.as_tensor(np.asarray(bc), dtype=torch.float32, device=dev).clone()
        else:
            Wc_t = (0.01 * torch.randn(np.asarray(Wc).shape, generator=gen)).to(dev)
            bc_t = torch.zeros(len(bc), device=dev)
        Wc_t.requires_grad_(True)
        bc_t.requires_grad_(True)
        params = Wp + [Wc_t, bc_t] + ([p for p in Pp] if self.train_projections else [])
        opt = torch.optim.SGD(params, lr=lr) if self.optimizer == "sgd" else torch.optim.Adam(params, lr=lr)
        Yb = torch.as_tensor(ovr_targets(y_idx, n_classes).T, dtype=torch.float32, device=dev)  # (n, heads)
        sw = torch.as_tensor(omega[y_idx], dtype=torch.float32, device=dev)
        y_t = torch.as_tensor(y_idx, device=dev)
        lam = 1.0 / (C * len(rows))
        rows_t = torch.as_tensor(rows, device=dev)
        bs = len(rows) if self.batch_size is None else max(1, min(int(self.batch_size), len(rows)))
        hist = []

        first_pred = {}

        def evaluate(epoch, loss_val):
            """The curve point of a CV fold: the fold's training loss, training accuracy, share of active hinge
            terms (margin < 1: the only rows the hinge gradient comes from), RE against the DKN kernel,
            validation accuracy / score and the share of validation predictions changed since epoch 0."""
            rec = {"epoch": epoch, "loss": loss_val}
            with torch.no_grad():
                S_tr = head_scores(self._maps_of(ctx, Wp, Pp, rows_t), Wc_t, bc_t)
                rec["train_acc"] = float((_heads_argmax(S_tr, n_classes) == y_t[rows_t]).float().mean())
                rec["active"] = float(((Yb[rows_t] * S_tr) < 1.0).float().mean())
                if epoch == 0:  # the loss before any step, so the curve starts where the SVM left it
                    rec["loss"] = float(_loss(self.loss, S_tr, Yb[rows_t], sw[rows_t], y_t[rows_t], n_classes)
                                        + 0.5 * lam * (Wc_t ** 2).sum())
                rec["re"] = relative_error(self._inner_train(ctx, Wp, Pp), K_dkn)["re_fro"]
                va = torch.as_tensor(val[0], device=dev)
                S = head_scores(self._maps_of(ctx, Wp, Pp, va), Wc_t, bc_t)
                pred = _heads_argmax(S, n_classes)
                first_pred.setdefault("val", pred)
                rec["val_acc"] = float((pred == y_t[va]).float().mean())
                rec["val_changed"] = float((pred != first_pred["val"]).float().mean())
                rec["val_score"] = label_score(y_idx[val[0]], pred.cpu().numpy())
            hist.append(rec)

        if val is not None:
            evaluate(0, float("nan"))
        good = _snapshot(params)
        for ep in range(1, int(epochs) + 1):
            perm = rows_t[torch.randperm(len(rows), generator=gen).to(dev)] if bs < len(rows) else rows_t
            ep_loss = 0.0
            start = _snapshot(params)
            for b0 in range(0, len(rows), bs):
                batch = perm[b0:b0 + bs]
                opt.zero_grad()
                F = self._maps_of(ctx, Wp, Pp, batch, grad=True, K_dkn=K_dkn if self.beta else None)
                if self.beta:
                    F, approx = F
                S = head_scores(F, Wc_t, bc_t)
                loss = _loss(self.loss, S, Yb[batch], sw[batch], y_t[batch], n_classes) + 0.5 * lam * (Wc_t ** 2).sum()
                if self.beta:
                    loss = loss + float(self.beta) * approx
                loss.backward()
                opt.step()
                if not _finite(params):
                    ep_loss = float("nan")
                    break
                with torch.no_grad():
                    for w in Wp:
                        if self.ft_constraint == "simplex":
                            w.copy_(project_simplex(w))
                        else:
                            w.clamp_(min=0.0)
                ep_loss += float(loss.detach()) * len(batch) / len(rows)
            if not math.isfinite(ep_loss):
                # diverged: back to the parameters of the start of the last epoch whose loss was finite (the
                # step after it produced the overflow), and stop
                _restore(params, good)
                break
            good = start
            if val is None:
                hist.append({"epoch": ep, "loss": ep_loss})
            elif ep % val[1] == 0:
                evaluate(ep, ep_loss)
        Ws_new = [w.detach() for w in Wp]
        Ps_new = [p.detach() for p in Pp]
        return Ws_new, Ps_new, Wc_t.detach(), bc_t.detach(), hist

    def _maps_of(self, ctx, Ws, Ps, rows, grad=False, K_dkn=None):
        """Top maps (m_L, B, r) of training rows ``rows`` with landmark maps recomputed in the graph."""
        with torch.set_grad_enabled(grad):
            if ctx.all_lm:
                F, Fz = propagate(Ws, Ps, ctx.g, ctx.Gzz, cols=ctx.cols)
                Fx = F[:, rows]
            else:
                Fx, Fz = propagate(Ws, Ps, ctx.g, ctx.Gzz, ctx.Gxz[:, rows], cols=ctx.cols)
            if K_dkn is None:
                return Fx
            inner = torch.bmm(Fx, Fz[-1].transpose(1, 2))
            ref = K_dkn[:, rows]
            approx = ((inner - ref) ** 2).sum() / (ref ** 2).sum()
            return Fx, approx

    def _heads(self, Gxz: np.ndarray) -> np.ndarray:
        """Inference: input-map Grams against the landmarks (m, n_x, N) -> head scores (n_x, n_heads).

        On the CPU in row chunks whose widest layer, (m, rows, N) float32, fits in :data:`_HEADS_CHUNK_BYTES`:
        the unit mixing and the activation are memory-bound, and in cache they ran 1.75x faster than on 2048-row
        blocks (0.068 vs 0.119 s for 2048 rows at N = 600, m = 16, on a 2-core Xeon; the same values)."""
        Ws, Qs, A, b, dev = self._inference_operators()
        g = self._activation()
        X = torch.from_numpy(np.ascontiguousarray(Gxz, dtype=np.float32))
        out = []
        if dev.type == "cpu":
            widest = max([X.shape[0]] + [W.shape[1] for W in Ws])
            chunk = max(1, _HEADS_CHUNK_BYTES // (4 * widest * max(1, X.shape[2])))
        else:
            chunk = 4096
        with torch.no_grad():
            for r0 in range(0, X.shape[1], chunk):
                Ax = X[:, r0:r0 + chunk].to(dev)
                for li, W in enumerate(Ws):
                    Kx = combine(W, Ax, g, in_place=True)
                    if li < len(Ws) - 1:
                        Ax = _next_inner(Kx, Qs[li])
                # classifier folded into the last projection: s = Ktilde_L(x, Z) (P_L W^T) + b
                if Kx.shape[0] == 1:
                    out.append(Kx[0] @ A[0] + b)
                else:  # one output kernel per head
                    out.append(torch.einsum("hbn,hn->bh", Kx, A[:, :, 0]) + b)
        return torch.cat(out, 0).cpu().numpy().astype(np.float64)

    def _inference_operators(self):
        """What :meth:`_heads` multiplies by, on this model's device: (Ws, Qs, A, b, device).

        Built from the fitted arrays on the first call and kept until any of them (``weights_``, ``projections_``,
        ``landmark_maps_``, ``coef_``, ``intercept_``) is replaced, as fitting and loading do; the arrays are
        never changed in place. Kept beside the model (:data:`_INFERENCE_OPERATORS`), not in it: predicting
        leaves the estimator's ``__dict__`` as it was, and pickles hold only the fitted arrays. Building them
        costs more than scoring a few hundred rows (the hidden layers' ``Q_p = P_p Fz_p^T`` are 2 m N^2 r
        flops), so a model that scores batch after batch builds them once.
        """
        dev = self._device()
        sources = (*self.weights_, *self.projections_, *self.landmark_maps_, self.coef_, self.intercept_,
                   *(getattr(self, "layer_columns_", None) or ()))
        cached = _INFERENCE_OPERATORS.get(self)
        if (cached is None or cached[0] != dev or len(cached[1]) != len(sources)
                or any(a is not b for a, b in zip(cached[1], sources))):
            Ws, Ps, Fz, A, b = self._compile(dev)
            cached = (dev, sources, (Ws, _layer_operators(Ps, Fz, self._cols(dev)), A, b, dev))
            _INFERENCE_OPERATORS[self] = cached
        return cached[2]

    def _compile(self, dev):
        Ws, Ps, Fz = self._tensors(dev)
        Wc = torch.as_tensor(self.coef_, dtype=torch.float32, device=dev)
        b = torch.as_tensor(self.intercept_, dtype=torch.float32, device=dev)
        P_L = Ps[-1]
        if P_L.shape[0] == 1:
            A = (P_L[0] @ Wc.T).unsqueeze(0)  # (1, N, n_heads)
        else:
            A = torch.einsum("hnr,hr->hn", P_L, Wc).unsqueeze(2)  # (n_heads, N, 1)
        return Ws, Ps, Fz, A, b

    # -- persistence -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Every learned array, self-contained: the map network (weights, projections, landmark maps, linear
        classifier, landmark indices), its DKN's state (``dkn_model.*``) and, after a feature-level fit, the
        input explicit maps (``inmap.<i>.*``, landmark rows included). Numeric numpy arrays (safetensors-ready;
        labels and names as UTF-8 JSON bytes). A model with the same parameters restores it with
        :meth:`load_state_dict` and scores new feature rows (or Grams) identically.
        """
        check_is_fitted(self, "weights_")
        d = {f"map.w{i}": w for i, w in enumerate(self.weights_)}
        d.update({f"map.P{i}": p for i, p in enumerate(self.projections_)})
        d.update({f"map.Fz{i}": f for i, f in enumerate(self.landmark_maps_)})
        d.update({
            "map.coef": np.asarray(self.coef_, dtype=np.float32),
            "map.intercept": np.asarray(self.intercept_, dtype=np.float64),
            "map.landmarks": self.landmarks_,
            **{f"map.columns{i}": np.asarray(c, dtype=np.int64)
               for i, c in enumerate(getattr(self, "layer_columns_", None) or ())},
            "map.C": np.asarray([self.C_], dtype=np.float64),
            "meta.n_train": np.asarray([self.n_train_], dtype=np.int64),
            "meta.classes_json": pack_json(np.asarray(self.classes_).tolist()),
            "meta.modalities_json": pack_json(self.modalities_),
            "meta.info_json": pack_json({"ranks": self.ranks_, "re_train": self.re_train_,
                                         "re_train_initial": self.re_train_initial_, "ft_lr": self.ft_lr_,
                                         "ft_epochs": self.ft_epochs_,
                                         "ft_curves": getattr(self, "ft_curves_", {}),
                                         "ft_cv": getattr(self, "ft_cv_", {}),
                                         "ft_history": getattr(self, "ft_history_", []),
                                         "input_names": getattr(self, "input_names_", None)}),
        })
        for k, v in self.dkn_.state_dict().items():
            d[f"dkn_model.{k}"] = v
        if hasattr(self, "maps_"):
            d["meta.n_features_in"] = np.asarray([self.n_features_in_], dtype=np.int64)
            for i, em in enumerate(self.maps_):
                for k, v in em.get_state().items():
                    d[f"inmap.{i}.{k}"] = np.asarray(v)
        return {k: np.ascontiguousarray(v) for k, v in d.items()}  # safetensors writes raw C-order buffers

    def load_state_dict(self, d: dict):
        """Restore a model saved by :meth:`state_dict` (constructor parameters, ``dkn`` included, must match)."""
        count = lambda pre: len([k for k in d if k.startswith(pre) and k[len(pre):].isdigit()])  # noqa: E731
        self.weights_ = [np.asarray(d[f"map.w{i}"], dtype=np.float32) for i in range(count("map.w"))]
        self.projections_ = [np.asarray(d[f"map.P{i}"], dtype=np.float32) for i in range(count("map.P"))]
        self.landmark_maps_ = [np.asarray(d[f"map.Fz{i}"], dtype=np.float32) for i in range(count("map.Fz"))]
        self.coef_ = np.asarray(d["map.coef"], dtype=np.float32)
        self.intercept_ = np.asarray(d["map.intercept"], dtype=np.float64)
        self.landmarks_ = np.asarray(d["map.landmarks"], dtype=np.int64)
        # no map.columns<i>: every landmark in every layer (the paper's construction; states from before columns)
        cols = [np.asarray(d[f"map.columns{i}"], dtype=np.int64) for i in range(count("map.columns"))]
        self.layer_columns_ = cols or None
        self.columns_ = cols[0] if cols else None
        self.C_ = float(d["map.C"][0])
        self.n_train_ = int(d["meta.n_train"][0])
        self.classes_ = np.asarray(unpack_json(d["meta.classes_json"]))
        self.modalities_ = unpack_json(d["meta.modalities_json"])
        info = unpack_json(d["meta.info_json"])
        self.ranks_, self.re_train_, self.re_train_initial_ = info["ranks"], info["re_train"], info["re_train_initial"]
        self.ft_lr_, self.ft_epochs_ = info["ft_lr"], info["ft_epochs"]
        # states saved before the curves were recorded have none
        self.ft_curves_, self.ft_history_ = info.get("ft_curves", {}), info.get("ft_history", [])
        self.ft_cv_ = info.get("ft_cv", {})
        dk = {k[len("dkn_model."):]: v for k, v in d.items() if k.startswith("dkn_model.")}
        template = clone(self.dkn) if self.dkn is not None else DKNClassifier()
        if self.dkn is None or not hasattr(self.dkn, "weights_"):  # as _make_dkn: a DKN this model trains
            template.set_params(random_state=self.random_state, device=self.device)
        self.dkn_ = template.load_state_dict(dk)
        if "meta.n_features_in" in d:
            self.n_features_in_ = int(d["meta.n_features_in"][0])
            self.slices_ = split_columns(self.n_features_in_, self.dkn_.input_dims)
            kernels = self.dkn_.kernels
            maps = []
            for i in range(len(self.weights_[0])):
                pre = f"inmap.{i}."
                em = self._input_map(kernels[i % len(kernels)], self.dkn_, i // len(kernels))
                maps.append(em.set_state({k[len(pre):]: v for k, v in d.items() if k.startswith(pre)}))
            per_block = len(kernels)
            for start in range(0, len(maps), per_block):
                share_training_rows(maps[start:start + per_block])
            self.maps_ = maps
            if info.get("input_names") is not None:
                self.input_names_ = list(info["input_names"])
        return self


def _layer_operators(Ps, Fz_list, cols=None):
    """Per hidden layer, how <phi_p(x), phi_p(Z_c)> is obtained from ktilde_p(x, Z_c) (m_l, B, s), Z_c the s
    column landmarks (``cols``; all N when None).

    Either the two factors (P_p, Fz_p[cols]): x -> (ktilde P_p) Fz_p[cols]^T, 2 s r_p per row and unit, or
    their product Q_p = P_p Fz_p[cols]^T (s x s), s^2 per row and unit: the cheaper one is taken (Q when
    2 r_max >= s, the usual case at 99 % energy).
    """
    out = []
    for li, (P, Fz) in enumerate(zip(Ps[:-1], Fz_list[:-1])):
        Fc = _at_columns(Fz, _layer_cols(cols, li + 1))
        s, r = Fc.shape[1], P.shape[2]
        out.append(torch.bmm(P, Fc.transpose(1, 2)) if 2 * r >= s else (P, Fc))
    return out


def _rows_forward(Ax, Ws, Ps, Fz_list, g, cols=None):
    """Top maps (m_L, B, r_L) of rows given their input-map Grams Ax (m, B, s) against the column landmarks
    and the landmark maps of every layer (differentiable in Ws, Ps and Fz_list; the x-path of
    :func:`propagate`)."""
    L = len(Ws)
    Fx = None
    for li, (W, P) in enumerate(zip(Ws, Ps)):
        Fx = torch.bmm(combine(W, Ax, g), P)
        if li < L - 1:
            Ax = torch.bmm(Fx, _at_columns(Fz_list[li], _layer_cols(cols, li + 1)).transpose(1, 2))
    return Fx


def _next_inner(Kx, Q):
    if isinstance(Q, tuple):
        P, Fz = Q
        return torch.bmm(torch.bmm(Kx, P), Fz.transpose(1, 2))
    return torch.bmm(Kx, Q)


class _Ctx:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def _snapshot(params) -> list:
    return [p.detach().clone() for p in params]


def _restore(params, snapshot) -> None:
    with torch.no_grad():
        for p, v in zip(params, snapshot):
            p.copy_(v)


def _finite(params) -> bool:
    """Whether every parameter is finite after a step (a diverged step is not projected: the simplex projection
    of NaN weights is undefined)."""
    return all(bool(torch.isfinite(p).all()) for p in params)


CURVE_KEYS = ("loss", "train_acc", "active", "re", "val_acc", "val_changed")


def _mean_curve(runs: list, checkpoints: list) -> dict:
    """Fold-mean fine-tuning curve: {'epoch': checkpoints, key: [mean over folds] for key in CURVE_KEYS}.

    runs: one history per CV fold (:meth:`DM2KMNClassifier._finetune` with ``val``); a fold whose run diverged
    (fewer points) is left out of the later means, a checkpoint no fold reached is NaN.
    """
    out = {"epoch": list(checkpoints)}
    for key in CURVE_KEYS:
        col = []
        for j in range(len(checkpoints)):
            vals = [float(h[j][key]) for h in runs if j < len(h) and key in h[j]]
            col.append(float(np.mean(vals)) if vals else float("nan"))
        out[key] = col
    return out


def _heads_argmax(S, n_classes):
    if n_classes == 2:
        return (S[:, 0] > 0).long()
    return S.argmax(1)


def _loss(kind, S, Yb, sw, y, n_classes):
    """Class-weighted one-vs-rest hinge (mean over rows) or class-weighted softmax cross-entropy."""
    if kind == "hinge":
        return (sw[:, None] * torch.relu(1.0 - Yb * S)).sum(1).mean()
    logits = torch.cat([-S, S], 1) if n_classes == 2 else S
    return (sw * torch.nn.functional.cross_entropy(logits, y, reduction="none")).mean()


def _softmax(S):
    S = S - S.max(1, keepdims=True)
    e = np.exp(S)
    return e / e.sum(1, keepdims=True)
