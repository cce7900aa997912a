"""Explicit feature maps of the elementary kernels (spec sections 4.1-4.4) and the kernel-PCA projection.

A map phi has ``<phi(x), phi(y)> ~= k(x, y)``: exactly for linear and poly2, by Nystrom / uncentred kernel PCA
on landmarks for RBF (spec 4.3), by Q-level unary codes for histogram intersection (spec 4.4). The maps carry
the same preprocessing and unit-diagonal scale as :class:`~genrecli.kernels.elementary.ElementaryKernel`, so
they approximate its :meth:`~genrecli.kernels.elementary.ElementaryKernel.gram`.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from genrecli.device import resolve_device
from genrecli.errors import InputError, UsageError
from genrecli.kernels import (
    DEFAULT_ENERGY,
    DEFAULT_LEVELS,
    DEFAULT_OFFSET,
    DEFAULT_QUANTIZATION,
    DEFAULT_SIGMA,
    QUANTIZATIONS,
    get_kernel,
)
from genrecli.kernels.elementary import (
    ElementaryKernel,
    _as_array,
    _blocked,
    _estimator_features,
    _kernel_fill,
    _pairwise,
    _tensor,
)

def kpca_projection(K_landmarks, *, energy=DEFAULT_ENERGY, rel_eps=1e-10, allow_empty=False):
    """Projection of the uncentred kernel PCA (Nystrom) map on N landmarks (spec 4.3 and 6.3).

    With ``K_Z = U Lambda U^T`` (eigenvalues in decreasing order), keeps the smallest rank r whose eigenvalues
    hold ``energy`` of the eigenvalue sum, less any eigenvalue below ``rel_eps * lambda_1``, and returns
    ``P = U_r Lambda_r^{-1/2}``. The map of x is then ``phi(x) = k_Z(x) @ P`` and on the landmarks
    ``Phi_Z Phi_Z^T = U_r Lambda_r U_r^T``, the best rank-r approximation of K_Z. K_Z is not centred: the map
    must approximate the kernel itself.

    The one kernel-PCA of the toolkit: the rbf input map (:class:`ExplicitMap`) and every unit of the DM2KMN
    (:func:`genrecli.models.dm2kmn.build_projections`) use it. The decomposition is float64 (``rel_eps`` of
    1e-10 is far below float32 resolution) on the input's device, of ``(K + K^T) / 2``.

    Parameters
    ----------
    K_landmarks : array-like or torch.Tensor, shape (N, N)
        Symmetric PSD kernel matrix of the landmarks. A torch tensor is decomposed on its own device.
    energy : float in (0, 1], keyword-only
    rel_eps : float >= 0, keyword-only
    allow_empty : bool, keyword-only
        When K_Z has no positive eigenvalue: return an (N, 1) zero projection (a map that is identically 0)
        instead of raising :class:`InputError`.

    Returns
    -------
    P : np.ndarray (N, r) float32 for array-like input; torch.Tensor (N, r) on the input's device, in its
        floating dtype (float32 for integer tensors), for tensor input. C-ordered.
    """
    if not 0 < energy <= 1:
        raise UsageError(f"kernel PCA energy must be in (0, 1], got {energy!r}")
    if not rel_eps >= 0:
        raise UsageError(f"kernel PCA rel_eps must be >= 0, got {rel_eps!r}")
    as_tensor = isinstance(K_landmarks, torch.Tensor)
    if as_tensor:
        out_dtype = K_landmarks.dtype if K_landmarks.is_floating_point() else torch.float32
    else:
        K_landmarks, out_dtype = torch.from_numpy(np.asarray(K_landmarks, dtype=np.float64)), torch.float32
    K = K_landmarks.detach().to(torch.float64)
    if K.ndim != 2 or K.shape[0] != K.shape[1] or K.shape[0] == 0:
        raise InputError(f"kernel PCA needs a non-empty square kernel matrix, got shape {tuple(K.shape)}")
    if not bool(torch.isfinite(K).all()):
        raise InputError("kernel PCA: the kernel matrix contains NaN/inf")
    # Symmetrising removes float32 round-off (eigh reads one triangle only).
    eigenvalues, U = torch.linalg.eigh(0.5 * (K + K.T))
    eigenvalues, U = eigenvalues.flip(0), U.flip(1)
    top = float(eigenvalues[0])
    if not top > 0:
        if allow_empty:
            P = torch.zeros(K.shape[0], 1, dtype=out_dtype, device=K.device)
            return P if as_tensor else P.cpu().numpy()
        raise InputError("kernel PCA: the kernel matrix has no positive eigenvalue, so there is no map to build")
    # Negative eigenvalues of a PSD matrix are round-off: they hold no energy.
    eigenvalues = eigenvalues.clamp(min=0.0)
    cumulative = torch.cumsum(eigenvalues, 0)
    rank = int(torch.searchsorted(cumulative, energy * cumulative[-1])) + 1
    usable = int(((eigenvalues > 0) & (eigenvalues >= rel_eps * top)).sum())
    rank = min(rank, usable)
    # eigh returns column-major vectors; the projection is handed out C-ordered, as safetensors expects.
    P = (U[:, :rank] / eigenvalues[:rank].sqrt()).to(out_dtype).contiguous()
    return P if as_tensor else P.cpu().numpy()


class ExplicitMap(TransformerMixin, BaseEstimator):
    """Explicit map phi of an elementary kernel: ``<phi(x), phi(y)> ~= ElementaryKernel.gram(x, y)``.

    =========  =================================================================  ==========
    kernel     map (divided by sqrt(scale_))                                      exact
    =========  =================================================================  ==========
    linear     preprocessed x                                                     yes
    poly2      ``[x_j^2, sqrt(2) x_j x_k (j < k), sqrt(2c) x_j, c]``              yes
    rbf        ``K(x, Z) @ P``, Nystrom / kernel PCA on landmarks Z (``energy``)  no
    hist       Q-level unary (thermometer) code of the [0, 1]-scaled features     no
    =========  =================================================================  ==========

    Parameters
    ----------
    kernel, offset, sigma, unit_diagonal, scale, input_name, device
        As in :class:`~genrecli.kernels.elementary.ElementaryKernel`: ``scale`` is the per-input feature
        scaling fitted on the training rows (default 'none'), applied before the kernel's preprocessing; the
        map is of the scaled rows (its dimension counts the kept columns).
    energy : float in (0, 1], keyword-only
        rbf: eigenvalue energy kept by the kernel PCA.
    landmarks : 'all' or int, keyword-only
        rbf: all training rows, or that many drawn with ``random_state`` (all when at least n_train).
    levels : int, keyword-only
        hist: the number Q of quantization levels.
    quantization : {'round', 'floor'}, keyword-only
        hist: level of v is ``floor(Q v + 1/2)`` (at most d / (2Q) kernel error) or ``floor(Q v)`` (under by
        at most d / Q).
    max_dim : int, keyword-only
        poly2: largest map :meth:`transform` materialises; :meth:`map_gram` has no limit.
    random_state : int, RandomState or None, keyword-only

    Attributes
    ----------
    kernel_ : ElementaryKernel
        The fitted kernel: preprocessing, ``sigma_`` and ``scale_``.
    dim_ : int
        Map dimension.
    exact_ : bool
        True for linear and poly2.
    landmarks_ : np.ndarray, shape (N, d), float32
        rbf only: preprocessed landmark rows.
    landmark_indices_ : np.ndarray, shape (N,), int64
        rbf only: their training-row indices.
    projection_ : np.ndarray, shape (N, dim_), float32
        rbf only: the :func:`kpca_projection` of the scaled landmark Gram matrix.
    n_features_in_ : int
    """

    def __init__(
        self,
        kernel="rbf",
        *,
        offset=DEFAULT_OFFSET,
        sigma=DEFAULT_SIGMA,
        unit_diagonal=True,
        scale="none",
        input_name=None,
        energy=DEFAULT_ENERGY,
        landmarks="all",
        levels=DEFAULT_LEVELS,
        quantization=DEFAULT_QUANTIZATION,
        max_dim=200_000,
        random_state=None,
        device="cpu",
    ):
        self.kernel = kernel
        self.offset = offset
        self.sigma = sigma
        self.unit_diagonal = unit_diagonal
        self.scale = scale
        self.input_name = input_name
        self.energy = energy
        self.landmarks = landmarks
        self.levels = levels
        self.quantization = quantization
        self.max_dim = max_dim
        self.random_state = random_state
        self.device = device

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags

    def _check_params(self) -> None:
        if not 0 < self.energy <= 1:
            raise UsageError(f"energy must be in (0, 1], got {self.energy!r}")
        if self.landmarks != "all" and not (
            isinstance(self.landmarks, numbers.Integral) and not isinstance(self.landmarks, bool) and self.landmarks > 0
        ):
            raise UsageError(f"landmarks must be 'all' or a positive integer, got {self.landmarks!r}")
        if not (isinstance(self.levels, numbers.Integral) and self.levels > 0):
            raise UsageError(f"hist levels must be a positive integer, got {self.levels!r}")
        if self.quantization not in QUANTIZATIONS:
            raise UsageError(f"unknown quantization {self.quantization!r}: choose one of {', '.join(QUANTIZATIONS)}")

    def _make_kernel(self) -> ElementaryKernel:
        return ElementaryKernel(
            self.kernel, offset=self.offset, sigma=self.sigma, unit_diagonal=self.unit_diagonal, scale=self.scale,
            input_name=self.input_name, device=self.device,
        )

    def fit(self, X, y=None):
        """Fit the kernel on the training rows and, for rbf, the landmarks and their projection.

        Parameters
        ----------
        X : array-like or torch.Tensor, shape (n_train, d)
        y : ignored

        Returns
        -------
        self
        """
        self._check_params()
        X = _estimator_features(self, X, reset=True, finite=False)  # the kernel checks them, after its scaling
        self.kernel_ = self._make_kernel().fit(X)
        if self.kernel == "rbf":
            n = X.shape[0]
            if self.landmarks == "all" or self.landmarks >= n:
                indices = np.arange(n)
            else:
                indices = np.sort(check_random_state(self.random_state).choice(n, self.landmarks, replace=False))
            device = resolve_device(self.device)
            self.landmark_indices_ = indices.astype(np.int64)
            self.landmarks_ = self.kernel_.X_fit_[indices]
            Z = _tensor(self.landmarks_, device)
            K_Z = self.kernel_._scaled(Z, Z, same=True)
            self.projection_ = kpca_projection(torch.from_numpy(K_Z).to(device), energy=self.energy).cpu().numpy()
        self._set_dims()
        return self

    def _set_dims(self) -> None:
        d = self.kernel_.n_kernel_features_
        self.exact_ = get_kernel(self.kernel).exact_map
        if self.kernel == "linear":
            self.dim_ = d
        elif self.kernel == "poly2":
            # With c = 0 the linear and constant parts of the map are 0 and left out.
            self.dim_ = d * (d + 1) // 2 + (d + 1 if float(self.offset) > 0 else 0)
        elif self.kernel == "rbf":
            self.dim_ = self.projection_.shape[1]
        else:
            self.dim_ = d * self.levels

    def _rows(self, X, device: torch.device) -> torch.Tensor:
        """Preprocessed rows of X, or the training rows when X is None."""
        if X is None:
            return _tensor(self.kernel_.X_fit_, device)
        return self._prepared(X, device)

    def _prepared(self, X, device: torch.device) -> torch.Tensor:
        """Rows of X after the kernel's scaling and preprocessing."""
        X = _estimator_features(self, X, reset=False, finite=False)
        return self.kernel_._prep(self.kernel_._input(X), device)

    def _levels(self, A: torch.Tensor) -> torch.Tensor:
        # float64: Q * v is then exact for float32 v, so a value on a level boundary is never pushed across it.
        scaled = A.double() * self.levels
        levels = torch.floor(scaled + 0.5) if self.quantization == "round" else torch.floor(scaled)
        return levels.float()

    def _rbf_map(self, A: torch.Tensor) -> np.ndarray:
        device = A.device
        Z = _tensor(self.landmarks_, device)
        P = _tensor(self.projection_, device)
        fill_k, _ = _kernel_fill("rbf", A, Z, same=False, offset=0.0, sigma=self.kernel_.sigma_)
        N, r = P.shape
        scale = np.float32(self.kernel_.scale_)

        def fill(start, stop, out):
            k = torch.empty((stop - start, N), dtype=torch.float32, device=device)
            fill_k(start, stop, k)
            torch.matmul(k.div_(scale), P, out=out)

        return _blocked(A.shape[0], r, N + r, device, fill)

    def _poly2_map(self, A: torch.Tensor) -> np.ndarray:
        device = A.device
        d = A.shape[1]
        first, second = torch.triu_indices(d, d, 1, device=device)
        c = float(self.offset)
        coef = 1.0 / math.sqrt(self.kernel_.scale_)
        pairs = first.numel()

        def fill(start, stop, out):
            a = A[start:stop]
            out[:, :d] = a * a * coef
            out[:, d : d + pairs] = a[:, first] * a[:, second] * (math.sqrt(2.0) * coef)
            if c > 0:
                out[:, d + pairs : 2 * d + pairs] = a * (math.sqrt(2.0 * c) * coef)
                out[:, -1] = c * coef

        return _blocked(A.shape[0], self.dim_, 4 * self.dim_, device, fill)

    def _hist_map(self, A: torch.Tensor) -> np.ndarray:
        device = A.device
        q = self._levels(A)
        thresholds = torch.arange(1, self.levels + 1, dtype=torch.float32, device=device)
        coef = 1.0 / math.sqrt(self.levels * self.kernel_.scale_)

        def fill(start, stop, out):
            # Unary code: Q entries per feature, the first q of them set.
            code = q[start:stop, :, None] >= thresholds
            out.copy_(code.reshape(stop - start, -1)).mul_(coef)

        return _blocked(A.shape[0], self.dim_, 2 * self.dim_, device, fill)

    def transform(self, X) -> np.ndarray:
        """Explicit map of the rows of X.

        Parameters
        ----------
        X : array-like or torch.Tensor, shape (n, d)

        Returns
        -------
        Phi : np.ndarray, shape (n, dim_), float32
        """
        check_is_fitted(self)
        device = resolve_device(self.device)
        if self.kernel == "poly2" and self.dim_ > self.max_dim:
            raise UsageError(
                f"the poly2 map of {self.kernel_.n_kernel_features_} features has {self.dim_} dimensions, over "
                f"max_dim={self.max_dim}: use map_gram for its inner products, or raise max_dim"
            )
        A = self._prepared(X, device)
        if self.kernel == "linear":
            return (A / math.sqrt(self.kernel_.scale_)).cpu().numpy()
        if self.kernel == "poly2":
            return self._poly2_map(A)
        if self.kernel == "rbf":
            return self._rbf_map(A)
        return self._hist_map(A)

    def map_gram(self, X, Y=None) -> np.ndarray:
        """Inner products of the maps, ``Phi(X) Phi(Y)^T``, without materialising the maps.

        poly2 and linear give the exact scaled kernel, hist ``(1/Q) sum_j min(q(x_j), q(y_j)) / scale_``, rbf
        ``K(X, Z) P P^T K(Z, Y)``.

        Parameters
        ----------
        X : array-like or torch.Tensor, shape (n, d)
        Y : array-like or torch.Tensor, shape (m, d), optional
            Defaults to the training rows.

        Returns
        -------
        G : np.ndarray, shape (n, m), float32
        """
        check_is_fitted(self)
        device = resolve_device(self.device)
        A, B = self._rows(X, device), self._rows(Y, device)
        if self.exact_:
            return self.kernel_._scaled(A, B, same=False)
        if self.kernel == "rbf":
            return _pairwise("linear", _tensor(self._rbf_map(A), device), _tensor(self._rbf_map(B), device))
        G = _pairwise("hist", self._levels(A), self._levels(B))
        G /= np.float32(self.levels * self.kernel_.scale_)
        return G

    def get_state(self) -> dict[str, np.ndarray]:
        """Fitted attributes as plain arrays: the kernel's under ``kernel_.``, then the rbf landmarks.

        Returns
        -------
        state : dict of str to np.ndarray
        """
        check_is_fitted(self)
        state = {f"kernel_.{key}": value for key, value in self.kernel_.get_state().items()}
        if self.kernel == "rbf":
            state.update(
                landmarks_=self.landmarks_, landmark_indices_=self.landmark_indices_, projection_=self.projection_
            )
        return state

    def set_state(self, state) -> ExplicitMap:
        """Restore the fitted attributes written by :meth:`get_state` (NumPy arrays or torch tensors).

        Parameters
        ----------
        state : mapping of str to array

        Returns
        -------
        self
        """
        self._check_params()
        prefix = "kernel_."
        self.kernel_ = self._make_kernel().set_state(
            {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
        )
        self.n_features_in_ = self.kernel_.n_features_in_
        if self.kernel == "rbf":
            missing = [key for key in ("landmarks_", "landmark_indices_", "projection_") if key not in state]
            if missing:
                raise InputError(f"state of an rbf ExplicitMap lacks {', '.join(missing)}")
            self.landmarks_ = np.ascontiguousarray(_as_array(state["landmarks_"]), dtype=np.float32)
            self.landmark_indices_ = np.asarray(_as_array(state["landmark_indices_"]), dtype=np.int64)
            self.projection_ = np.ascontiguousarray(_as_array(state["projection_"]), dtype=np.float32)
        self._set_dims()
        return self
