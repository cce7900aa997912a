"""The model contract every ``genre train --model NAME`` model follows, and its self-contained artifact.

A model is a scikit-learn style estimator (``__init__`` only stores parameters, learned attributes end in
``_``) that works on *inputs*: a mapping from input names (``audio/mfcc``, ``text/minilm``,
``audio/logmel-ru``, ...) to arrays of one row per track, or to lazily read views of HDF5 datasets for patch
tensors (anything with ``len``, ``shape`` and row indexing, e.g. :class:`genrecli.pipeline.features.FeatureView`).

* ``fit(inputs, y, *, validation=None)`` -- ``y`` holds class indices ``0..C-1`` (n,) or a multi-hot matrix
  (n, L); ``validation`` an optional ``(inputs, y)`` pair that neural models use for early stopping (kernel
  models select by cross-validation on the training rows and ignore it).
* ``decision_function(inputs)`` -> (n, len(classes_)) float scores, one column per entry of ``classes_``.
* ``predict(inputs)`` -> class indices (n,) or a boolean (n, L) indicator; ``predict_proba(inputs)``.
* ``get_state()`` / ``set_state(state, meta)`` -- the learned arrays (saved with safetensors) and the learned
  JSON-able metadata; :meth:`GenreModel.save` / :func:`load_model` turn them into one directory holding
  ``model.safetensors`` and ``model.json`` (never a pickle).

:class:`~genrecli.models.spec.ModelSpec` is a registry entry: how to build the model and what it can do
(:class:`~genrecli.models.spec.Capabilities`); both live in :mod:`genrecli.models.spec`.
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator

from genrecli import __version__
from genrecli.errors import InputError, UsageError
# the registry's types live in genrecli.models.spec (no scikit-learn there); re-exported here
from genrecli.models.spec import INPUT_KINDS, TASKS, Capabilities, ModelSpec, input_kind  # noqa: F401

ARTIFACT_FORMAT = "genre-model/1"
STATE_FILE = "model.safetensors"
META_FILE = "model.json"


class GenreModel(BaseEstimator):
    """Base of every registered model; see the module docstring for the contract.

    Subclasses implement ``fit``, ``decision_function``, ``get_state`` and ``set_state``. ``predict`` and
    ``predict_proba`` have defaults here: argmax of the scores (positive scores for multi-label), and a softmax
    (sigmoid for multi-label) of the scores, which is a calibrated probability only for models trained with a
    log-loss (their docstrings say so).
    """

    # ``classes_``: the class indices (into the corpus's label names) of the columns of decision_function;
    # ``input_names_``: the inputs the model was fitted on, in its order; ``multilabel_``.

    @classmethod
    def _param_names(cls) -> list[str]:
        return list(cls._get_param_names())

    @classmethod
    def part_names(cls) -> list[str]:
        """Constructor parameters that hold a configured part (an estimator), set through its options instead."""
        return []

    @classmethod
    def nested_option_names(cls) -> list[str]:
        """Options that configure a part of the model (e.g. the DKN inside a DM2KMN); see :meth:`set_options`."""
        return []

    def set_options(self, options: Mapping[str, object]) -> "GenreModel":
        """Set options that belong to a part of the model (subclasses with parts override this)."""
        unknown = ", ".join(options)
        raise UsageError(f"unknown option(s) {unknown} for {type(self).__name__}")

    # -- inputs ----------------------------------------------------------------------------------------------
    def _check_inputs(self, inputs: Mapping[str, object], *, fitting: bool) -> list[str]:
        if not isinstance(inputs, Mapping) or not inputs:
            raise UsageError(f"{type(self).__name__}: inputs must be a non-empty mapping of input name -> array")
        names = sorted(inputs)
        lengths = {name: len(inputs[name]) for name in names}
        if len(set(lengths.values())) != 1:
            raise UsageError(f"inputs have different numbers of rows: {lengths}")
        if not fitting:
            missing = [n for n in self.input_names_ if n not in inputs]
            if missing:
                raise UsageError(f"the model was trained on {', '.join(self.input_names_)}; missing {', '.join(missing)}")
            return list(self.input_names_)
        return names

    @staticmethod
    def _n_rows(inputs: Mapping[str, object]) -> int:
        return len(next(iter(inputs.values())))

    # -- predictions -----------------------------------------------------------------------------------------
    def predict(self, inputs) -> np.ndarray:
        scores = self.decision_function(inputs)
        if self.multilabel_:
            return scores > 0
        return np.asarray(self.classes_)[np.argmax(scores, axis=1)]

    def predict_proba(self, inputs) -> np.ndarray:
        scores = np.asarray(self.decision_function(inputs), dtype=np.float64)
        if self.multilabel_:
            return 1.0 / (1.0 + np.exp(-scores))
        scores = scores - scores.max(axis=1, keepdims=True)
        e = np.exp(scores)
        return e / e.sum(axis=1, keepdims=True)

    def extra_metrics(self, inputs) -> dict:
        """Model-specific figures on test inputs (RE, RI, forward times); none by default."""
        return {}

    # -- persistence -----------------------------------------------------------------------------------------
    def get_state(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def get_meta(self) -> dict:
        """Learned JSON-able attributes; the base records classes, inputs and the task."""
        return {"classes": np.asarray(self.classes_).tolist(), "input_names": list(self.input_names_),
                "multilabel": bool(self.multilabel_)}

    def set_state(self, state: Mapping[str, np.ndarray], meta: Mapping) -> "GenreModel":
        self.classes_ = np.asarray(meta["classes"])
        self.input_names_ = list(meta["input_names"])
        self.multilabel_ = bool(meta["multilabel"])
        return self

    def save(self, directory: str | Path, *, metadata: Mapping | None = None, registry_name: str | None = None) -> Path:
        """Write ``model.safetensors`` and ``model.json`` into ``directory`` (atomically, file by file).

        ``metadata`` is stored beside the model's own (the pipeline adds each input's feature parameters and
        hashes and the label names), so the directory is all ``genre predict`` needs.
        """
        from safetensors.numpy import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: np.ascontiguousarray(v) for k, v in self.get_state().items()}
        for key, value in state.items():
            if value.dtype == object or value.dtype.kind in "USO":
                raise TypeError(f"state {key!r} of {type(self).__name__} is not numeric ({value.dtype}); put it in get_meta()")
        doc = {
            "format": ARTIFACT_FORMAT,
            "model": registry_name or type(self).__name__,
            "class": f"{type(self).__module__}:{type(self).__qualname__}",
            "params": params_to_json(self.get_params(deep=False)),
            "meta": self.get_meta(),
            "version": __version__,
            **dict(metadata or {}),
        }
        tmp_state, tmp_meta = directory / f".{STATE_FILE}.tmp", directory / f".{META_FILE}.tmp"
        save_file(state, str(tmp_state))
        tmp_meta.write_text(json.dumps(doc, indent=1, default=_json_default))
        tmp_state.replace(directory / STATE_FILE)
        tmp_meta.replace(directory / META_FILE)
        return directory


def read_artifact_meta(directory: str | Path) -> dict:
    path = Path(directory) / META_FILE
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{directory}: no model artifact ({META_FILE} missing)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: unreadable model metadata ({exc})") from None
    if doc.get("format") != ARTIFACT_FORMAT:
        raise InputError(f"{path}: not a genre model artifact (format {doc.get('format')!r})")
    return doc


def load_model(directory: str | Path) -> GenreModel:
    """Rebuild a saved model: its class from ``model.json``, its arrays from ``model.safetensors``."""
    from safetensors.numpy import load_file

    directory = Path(directory)
    doc = read_artifact_meta(directory)
    module, _, qualname = doc["class"].partition(":")
    if not module.startswith("genrecli."):
        raise InputError(f"{directory}: model class {doc['class']!r} is not a genre model")
    cls = getattr(importlib.import_module(module), qualname)
    if not (inspect.isclass(cls) and issubclass(cls, GenreModel)):
        raise InputError(f"{directory}: {doc['class']!r} is not a genre model class")
    model = cls(**params_from_json(doc["params"]))
    try:
        state = load_file(str(directory / STATE_FILE))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types on corrupt files
        raise InputError(f"{directory / STATE_FILE}: unreadable model state ({exc})") from None
    return model.set_state(state, doc["meta"])


# ------------------------------------------------------------------------------------------- parameters
def params_to_json(params: Mapping) -> dict:
    """Constructor parameters as JSON: nested estimators become ``{"__estimator__": "module:Class", ...}``."""
    out = {}
    for key, value in params.items():
        if isinstance(value, BaseEstimator):
            out[key] = {"__estimator__": f"{type(value).__module__}:{type(value).__qualname__}",
                        "params": params_to_json(value.get_params(deep=False))}
        elif isinstance(value, tuple):
            out[key] = {"__tuple__": [params_to_json({"v": v})["v"] for v in value]}
        elif isinstance(value, (np.integer, np.floating, np.bool_)):
            out[key] = value.item()
        elif isinstance(value, (str, int, float, bool, type(None), list, dict)):
            out[key] = value
        else:
            raise TypeError(f"parameter {key!r}={value!r} cannot be saved in a model artifact")
    return out


def params_from_json(params: Mapping) -> dict:
    out = {}
    for key, value in params.items():
        if isinstance(value, dict) and "__estimator__" in value:
            module, _, qualname = value["__estimator__"].partition(":")
            if not module.startswith("genrecli."):
                raise InputError(f"nested estimator {value['__estimator__']!r} is not a genre class")
            cls = getattr(importlib.import_module(module), qualname)
            out[key] = cls(**params_from_json(value["params"]))
        elif isinstance(value, dict) and "__tuple__" in value:
            out[key] = tuple(params_from_json({"v": v})["v"] for v in value["__tuple__"])
        else:
            out[key] = value
    return out


def _json_default(obj):
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (Path,)):
        return str(obj)
    if isinstance(obj, (tuple, set)):
        return list(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")
