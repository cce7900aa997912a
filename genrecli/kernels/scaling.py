"""Per-input feature scaling, fitted on the training rows only, applied before every kernel's own preprocessing.

The elementary kernels fit a global scale only (unit mean diagonal; the RBF width from the total variance), and
linear, poly2 and rbf l2-normalise each row: on a raw descriptor table whose columns differ in scale by 1e6 (a
spectral centroid in Hz next to zero-crossing rates) the largest column alone decides those kernels. An
:class:`InputScaler` puts the columns of one input on a common scale first:

==========  ===========================================================================================
method      transform of a kept column ``x`` (statistics of the training rows)
==========  ===========================================================================================
none        identity (no column dropped; the kernels behave exactly as without a scaler)
standard    ``(x - mean) / std`` (z-score, population std)
robust      ``(x - median) / IQR`` (interquartile range; the std where the IQR is 0, i.e. a column constant
            on half its training rows or more)
minmax      ``(x - min) / (max - min)``: [0, 1] on the training rows (not clipped on other rows)
l2          each row divided by its Euclidean norm (zero rows stay zero); no per-column statistics
==========  ===========================================================================================

Every method but ``none`` drops the columns that are constant (to float32 resolution) or have no finite value
on the training rows, with one warning (:func:`genrecli.ui.warn`) naming the input and the columns: they carry
nothing and would divide by zero. Test rows may hold anything in those columns. Statistics skip non-finite
entries; a NaN left in a kept column reaches the kernels, which refuse it naming the rows.

Histogram intersection needs non-negative inputs: its kernel min-max scales each column to [0, 1] with the
training minimum and maximum (after this scaling) and clips. For ``standard``, ``robust`` and ``minmax``, which
are increasing affine maps per column, that min-max result is unchanged (``(a x + b - min(a x + b)) / span =
(x - min x) / span x`` for ``a > 0``), so they only drop columns for hist; ``l2`` is not per-column and does
change it, and stays valid (the kernel's min-max still makes the columns non-negative).

:data:`DEFAULT_SCALING` is the per-feature default that ``scale='auto'`` resolves to (:func:`default_scaling`):
the one table to edit. State (:meth:`InputScaler.get_state`) is numeric arrays only: kept-column indices,
centre, scale.

This module needs only NumPy and scikit-learn's base classes (no torch), so the model registry can validate
``-o scale=...`` options cheaply.
"""

from __future__ import annotations

import contextlib
import contextvars
import fnmatch
from collections.abc import Iterable, Iterator, Mapping

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from genrecli.errors import InputError, UsageError

SCALINGS: tuple[str, ...] = ("none", "standard", "robust", "minmax", "l2")
"""The scaling methods of :class:`InputScaler`."""

AUTO = "auto"
SCALE_CHOICES: tuple[str, ...] = (AUTO, *SCALINGS)
"""What a ``scale`` option may name: a method, or 'auto' (:func:`default_scaling` of the input's name)."""

ANY_INPUT = "*"
"""The key of a per-input ``scale`` mapping that applies to the inputs it does not name."""

OPTION_SUFFIX = ".scale"
"""``-o INPUT.scale=METHOD``: the scaling of one input."""

# ---------------------------------------------------------------------------------------------------------------
# The default per feature kind: what scale='auto' resolves to. Exact names first, then the glob patterns (the
# longest first); a name matching neither is a precomputed table (``genre ingest table --name ...``) and z-scored.
# Embeddings, taggrams and flattened patches are 'none' provisionally: to be confirmed or flipped by measurement.
# ---------------------------------------------------------------------------------------------------------------
DEFAULT_SCALING: dict[str, str] = {
    # hand-crafted descriptor vectors and tables: columns in unrelated units -> z-score
    "audio/table": "standard",
    "audio/mfcc": "standard",
    "audio/timbre": "standard",
    "audio/rhythm": "standard",
    # MiniLM sentence embeddings: z-scored. Measured (issue 17, `make scaling`): standard >= none in 13 of 15
    # svm / dkn / dm2kmn cells on kern-eras (both splits) and folk-dances, by up to +4.7 points (svm poly2,
    # work split); the loss: svm rbf on the composer split, -3.6.
    "text/minilm": "standard",
    # other embeddings and taggrams (provisional, not measured); TF-IDF stays sparse and unscaled
    "text/*": "none",
    "audio/musicnn*": "none",
    "audio/mfcc-image": "none",
    "audio/vggish": "none",
    # time-frequency patches, flattened by the kernel models (provisional)
    "audio/mel": "none",
    "audio/cqt": "none",
    "audio/harmonic": "none",
    "audio/percussive": "none",
    "audio/scattering": "none",
    "audio/logcqt-oramas": "none",
    "audio/logmel-ru": "none",
}
FALLBACK_SCALING = "standard"
"""The default of an input :data:`DEFAULT_SCALING` does not name (precomputed tables of any name)."""

# float32 features: a column whose training span is within a few float32 ulps of its magnitude is constant.
_CONSTANT_ULPS = 4.0 * float(np.finfo(np.float32).eps)
_SHOWN = 10  # columns named in a warning


# ------------------------------------------------------------------------------------------------ resolution
def check_method(method, *, what: str = "scale", allow_auto: bool = True) -> str:
    """``method`` if it is a scaling method (or 'auto' when allowed); a one-line :class:`UsageError` otherwise."""
    choices = SCALE_CHOICES if allow_auto else SCALINGS
    if not isinstance(method, str) or method not in choices:
        raise UsageError(f"{what}={method!r}: choose one of {', '.join(choices)}")
    return method


def check_scale(scale, *, what: str = "scale"):
    """Validate a model's ``scale`` parameter and return it normalised.

    A method name or 'auto' (for every input), or a mapping ``{input name: method, '*': method}`` (the inputs
    it does not name take ``'*'``, default 'auto'). A mapping comes back as a dict sorted by key ('*' first).
    """
    if isinstance(scale, str):
        return check_method(scale, what=what)
    if isinstance(scale, Mapping):
        out = {}
        for key in sorted(scale, key=lambda k: (k != ANY_INPUT, str(k))):
            if not isinstance(key, str) or not key:
                raise UsageError(f"{what}: input names must be non-empty strings, got {key!r}")
            label = what if key == ANY_INPUT else f"{key}{OPTION_SUFFIX}"
            out[key] = check_method(scale[key], what=label)
        return out
    raise UsageError(
        f"{what}={scale!r}: expected one of {', '.join(SCALE_CHOICES)} or a mapping {{input: method}}"
    )


def default_scaling(input_name: str) -> str:
    """The scaling 'auto' means for the input ``input_name`` (e.g. 'audio/table' -> 'standard').

    :data:`DEFAULT_SCALING` by exact name, else its longest matching glob pattern, else
    :data:`FALLBACK_SCALING`.
    """
    name = str(input_name)
    if name in DEFAULT_SCALING:
        return DEFAULT_SCALING[name]
    patterns = sorted((p for p in DEFAULT_SCALING if any(c in p for c in "*?[")), key=len, reverse=True)
    for pattern in patterns:
        if fnmatch.fnmatchcase(name, pattern):
            return DEFAULT_SCALING[pattern]
    return FALLBACK_SCALING


def scaling_for(scale, input_name: str) -> str:
    """The resolved method (never 'auto') of one input under a ``scale`` parameter (see :func:`check_scale`)."""
    scale = check_scale(scale)
    method = scale.get(input_name, scale.get(ANY_INPUT, AUTO)) if isinstance(scale, dict) else scale
    return default_scaling(input_name) if method == AUTO else method


def resolve_scaling(scale, input_names: Iterable[str]) -> dict[str, str]:
    """``{input name: method}`` for every input, 'auto' resolved: what a fitted model records in its meta.

    Keys of a ``scale`` mapping that name none of ``input_names`` are ignored (the per-pair SVM runs each
    input alone under the same options).
    """
    return {name: scaling_for(scale, name) for name in input_names}


# --------------------------------------------------------------------------------------------------- options
def is_scale_option(key) -> bool:
    """Whether ``key`` is a per-input scaling option ``INPUT.scale`` (e.g. ``audio/mfcc.scale``)."""
    return isinstance(key, str) and key.endswith(OPTION_SUFFIX) and len(key) > len(OPTION_SUFFIX)


def option_input(key: str) -> str:
    """The input of a per-input option ``INPUT.scale``."""
    return key[: -len(OPTION_SUFFIX)]


def check_scale_option(key: str, value) -> None:
    """Validate ``-o INPUT.scale=METHOD`` (one line naming the option when it is wrong)."""
    name = option_input(key)
    if "/" not in name:
        raise UsageError(f"option '{key}': expected INPUT.scale with an input name such as audio/mfcc.scale")
    check_method(value, what=key)


def split_scale_options(options: Mapping[str, object]) -> tuple[dict[str, str], dict[str, object]]:
    """``({input: method} of the INPUT.scale options, the other options)``."""
    per_input, rest = {}, {}
    for key, value in options.items():
        if is_scale_option(key):
            check_scale_option(key, value)
            per_input[option_input(key)] = value
        else:
            rest[key] = value
    return per_input, rest


def merge_scale(scale, per_input: Mapping[str, str]):
    """The ``scale`` parameter with per-input methods added: ``{'*': scale, input: method, ...}``.

    ``scale`` keeps its role for the other inputs ('*'); with no ``per_input`` it is returned unchanged.
    """
    scale = check_scale(scale)
    if not per_input:
        return scale
    base = dict(scale) if isinstance(scale, dict) else {ANY_INPUT: scale}
    base.update(per_input)
    return check_scale(base)


# -------------------------------------------------------------------------------------------------- warnings
_ONCE: contextvars.ContextVar[set | None] = contextvars.ContextVar("genrecli_scaling_once", default=None)


@contextlib.contextmanager
def warn_once() -> Iterator[None]:
    """Within this block, a scaling warning already given is not repeated (one per input, not per kernel)."""
    token = _ONCE.set(set() if _ONCE.get() is None else _ONCE.get())
    try:
        yield
    finally:
        _ONCE.reset(token)


def _warn(message: str) -> None:
    from genrecli import ui

    seen = _ONCE.get()
    if seen is not None:
        if message in seen:
            return
        seen.add(message)
    ui.warn(message)


def _columns(indices: np.ndarray) -> str:
    shown = ", ".join(map(str, indices[:_SHOWN].tolist()))
    return f"[{shown}{', ...' if len(indices) > _SHOWN else ''}]"


# ---------------------------------------------------------------------------------------------------- scaler
class InputScaler(TransformerMixin, BaseEstimator):
    """Per-column (or per-row, ``l2``) scaling of one input, fitted on its training rows.

    Parameters
    ----------
    method : {'none', 'standard', 'robust', 'minmax', 'l2'}
        See the module docstring.
    name : str or None
        The input's name, for the warning about dropped columns.

    Attributes
    ----------
    columns_ : np.ndarray (k,) int64
        The kept columns of the input (all of them for 'none').
    center_, scale_ : np.ndarray (k,) float64
        ``transform`` returns ``(X[:, columns_] - center_) / scale_`` (then the row norm for 'l2', whose
        centre is 0 and scale 1).
    dropped_constant_, dropped_missing_ : np.ndarray int64
        Columns dropped as constant, and as having no finite value, on the training rows.
    n_features_in_ : int
    """

    def __init__(self, method="standard", *, name=None):
        self.method = method
        self.name = name

    def _label(self) -> str:
        return self.name or "input"

    def fit(self, X, y=None) -> InputScaler:
        """Fit the statistics on the training rows X (n, d); non-finite entries are skipped."""
        method = check_method(self.method, allow_auto=False)
        X = _matrix(X)
        n, d = X.shape
        self.n_features_in_ = d
        if method == "none":
            self._set(np.arange(d), np.zeros(d), np.ones(d))
            self.dropped_constant_ = self.dropped_missing_ = np.zeros(0, dtype=np.int64)
            return self
        finite = np.isfinite(X)
        any_finite = finite.any(axis=0)
        with np.errstate(invalid="ignore"):
            masked = np.where(finite, X, np.nan)
            lo = np.full(d, np.nan)
            hi = np.full(d, np.nan)
            lo[any_finite] = np.nanmin(masked[:, any_finite], axis=0)
            hi[any_finite] = np.nanmax(masked[:, any_finite], axis=0)
        span = hi - lo
        constant = any_finite & ((span == 0) | (span <= _CONSTANT_ULPS * np.maximum(np.abs(lo), np.abs(hi))))
        keep = np.flatnonzero(any_finite & ~constant)
        self.dropped_constant_ = np.flatnonzero(constant).astype(np.int64)
        self.dropped_missing_ = np.flatnonzero(~any_finite).astype(np.int64)
        if len(keep) == 0:
            raise InputError(
                f"{self._label()}: all {d} columns are constant or have no finite value on the {n} training rows; "
                "there is nothing to scale (or to classify)"
            )
        if len(keep) < d:
            parts = []
            if len(self.dropped_constant_):
                parts.append(f"{len(self.dropped_constant_)} constant {_columns(self.dropped_constant_)}")
            if len(self.dropped_missing_):
                parts.append(f"{len(self.dropped_missing_)} all-NaN {_columns(self.dropped_missing_)}")
            _warn(f"{self._label()}: dropped {' and '.join(parts)} of {d} columns on the training rows "
                  f"(scale={method})")
        Xk = masked[:, keep]
        if method == "standard":
            center, scale = np.nanmean(Xk, axis=0), np.nanstd(Xk, axis=0)
        elif method == "robust":
            q25, center, q75 = np.nanpercentile(Xk, [25.0, 50.0, 75.0], axis=0)
            scale = q75 - q25
            flat = ~(scale > 0)
            if flat.any():  # constant on half the rows or more: the std (> 0, the column is not constant)
                scale[flat] = np.nanstd(Xk[:, flat], axis=0)
        elif method == "minmax":
            center, scale = lo[keep], span[keep]
        else:  # l2: row norms only
            center, scale = np.zeros(len(keep)), np.ones(len(keep))
        self._set(keep, center, scale)
        return self

    def _set(self, columns, center, scale) -> None:
        self.columns_ = np.asarray(columns, dtype=np.int64)
        self.center_ = np.asarray(center, dtype=np.float64)
        self.scale_ = np.asarray(scale, dtype=np.float64)

    def transform(self, X) -> np.ndarray:
        """Scaled rows of X (n, n_features_in_): (n, len(columns_)) float32, C-ordered."""
        if not hasattr(self, "columns_"):
            raise UsageError("InputScaler: call fit before transform")
        X = _matrix(X)
        if X.shape[1] != self.n_features_in_:
            raise UsageError(f"{self._label()}: X has {X.shape[1]} columns, the scaler was fitted on {self.n_features_in_}")
        if self.method == "none":
            return np.ascontiguousarray(X, dtype=np.float32)
        Z = (X[:, self.columns_] - self.center_) / self.scale_
        if self.method == "l2":
            norms = np.sqrt(np.einsum("ij,ij->i", Z, Z))[:, None]
            Z = Z / np.where(norms > 0, norms, 1.0)
        return np.ascontiguousarray(Z, dtype=np.float32)

    def get_state(self) -> dict[str, np.ndarray]:
        """The fitted arrays: ``columns`` (int64), ``center``, ``scale`` (float64), ``n_features_in`` (0-d)."""
        if not hasattr(self, "columns_"):
            raise UsageError("InputScaler: not fitted")
        return {"columns": self.columns_.copy(), "center": self.center_.copy(), "scale": self.scale_.copy(),
                "n_features_in": np.asarray(self.n_features_in_, dtype=np.int64)}

    def set_state(self, state: Mapping) -> InputScaler:
        """Restore :meth:`get_state` (NumPy arrays or torch tensors)."""
        check_method(self.method, allow_auto=False)
        missing = [k for k in ("columns", "center", "scale", "n_features_in") if k not in state]
        if missing:
            raise InputError(f"{self._label()}: scaler state lacks {', '.join(missing)}")
        columns, center, scale = (_array(state[k]) for k in ("columns", "center", "scale"))
        n_features = int(_array(state["n_features_in"]).reshape(-1)[0])
        if not (columns.ndim == 1 and columns.shape == center.shape == scale.shape):
            raise InputError(f"{self._label()}: scaler state arrays have shapes {columns.shape}, {center.shape}, {scale.shape}")
        if len(columns) and (columns.min() < 0 or columns.max() >= n_features):
            raise InputError(f"{self._label()}: scaler state keeps columns outside 0..{n_features - 1}")
        self.n_features_in_ = n_features
        self._set(columns, center, scale)
        return self


def _array(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _matrix(X) -> np.ndarray:
    X = _array(X)
    if X.ndim != 2:
        raise UsageError(f"expected a 2-D feature matrix, got shape {X.shape}")
    return X.astype(np.float64, copy=False)


__all__ = [
    "ANY_INPUT",
    "AUTO",
    "DEFAULT_SCALING",
    "FALLBACK_SCALING",
    "SCALE_CHOICES",
    "SCALINGS",
    "InputScaler",
    "check_method",
    "check_scale",
    "check_scale_option",
    "default_scaling",
    "is_scale_option",
    "merge_scale",
    "resolve_scaling",
    "scaling_for",
    "split_scale_options",
    "warn_once",
]
