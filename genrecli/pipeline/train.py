"""``genre train``: fit a model on features for every fold and seed of a split; save artifacts and predictions.

``<data>/runs/<run-id>/`` holds

* ``config.json`` -- model, inputs, kernels, split, options, the model's full parameters, and for each input
  its feature parameters, their hash and the group's content key (a changed feature, even one recomputed
  with the same parameters, or a changed option retrains), and the sha256 of ``predictions.h5``; outside the
  params hash (provenance only): the split's spec and seed, the toolkit version and the training date;
* ``fold<k>-seed<s>/`` -- one self-contained model artifact per fold x seed (``model.safetensors`` +
  ``model.json`` with every input's feature parameters, the label names and the toolkit version, and
  ``features.safetensors`` for fitted feature extractors such as TF-IDF), enough for ``genre predict``;
  ``result.npz`` there holds that fold x seed's test predictions, so a killed run resumes at the next one;
* ``predictions.h5`` -- per fold and seed: test rows, true and predicted labels, class scores, timings.

Kernel models compute their own Grams from the features; ``kernels.h5`` is used as a cache when its groups are
fresh for these features and this split. Neural models train on the split's validation rows as their
validation part when it has some (else they carve one from training) and checkpoint every epoch under
``.checkpoints/``. Hyper-parameters are chosen on training data only, inside each model's fit.

Group averaging: a model with a ``group_key`` option (the Oramas models: ``-o group_key=album``) whose
``fit`` takes ``groups=`` gets, for its rows, the manifest's group ids of that key (``groups=`` for the
training rows, ``validation_groups=`` for the validation rows), and its ``decision_function`` gets those of
the test rows, so test tracks are scored per group too. A key the manifest does not record stops the run
before any training, naming the keys it has. Without ``group_key`` no groups are passed (each row is its own
group). MuMu lists one track per album and records the ``artist`` group only, so album averaging there is the
identity; the key matters for corpora with several tracks per group.

Under ``torchrun --nproc_per_node N -m genrecli train ...`` (:mod:`genrecli.distributed`) every rank reads the
features and trains every fold and seed together (the harness's DistributedDataParallel); rank 0 alone takes
the run's lock, decides what is up to date (the others follow its decision by broadcast), scores the test
rows and writes artifacts, predictions and config. Only the models trained by the neural harness run so
(mlp, cnn, ...): a kernel, majority or composite model (fusionnet, the Oramas models, whose stages are not
all harness fits) is refused with a one-line error, since N copies of it would only repeat the work.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
import shutil
import time
from pathlib import Path

import h5py
import numpy as np

import genrecli
from genrecli import distributed, store, ui
from genrecli.errors import UsageError
from genrecli.layout import DatasetPaths
from genrecli.manifest import TRAIN, VALID, read_manifest
from genrecli.metrics import macro_auc
from genrecli.models import get_model
from genrecli.models.base import input_kind
from genrecli.pipeline import StageResult
from genrecli.splits import train_test_indices

RESULT_FILE = "result.npz"


def run_id(model: str, inputs: list[str], kernels: list[str] | None, split: str, options: dict) -> str:
    tag = f"{model}__{'+'.join(i.replace('/', '-') for i in sorted(inputs))}"
    if kernels:
        tag += "__" + "+".join(kernels)
    tag += f"__{split}"
    if options:
        tag += "__" + store.params_hash(options)[:8]
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", tag)


def artifact_dir(run_dir: Path, fold: int, seed: int) -> Path:
    return run_dir / f"fold{fold}-seed{seed}"


def feature_info(paths: DatasetPaths, names: list[str], manifest) -> dict[str, dict]:
    """Per input: its stored parameters, their hash, its content key, the per-track shape and the valid-row mask.

    A feature computed for another manifest (a re-ingest since) is refused.
    """
    from genrecli.pipeline.features import EXTRACT_HINT, check_inputs

    check_inputs(paths, names, manifest)
    out = {}
    with store.open_read(paths.features(), what="features", hint=EXTRACT_HINT) as h5:
        for name in names:
            grp = h5[name]
            params = store.group_params(grp)
            out[name] = {"params": params, "params_hash": str(grp.attrs.get("params_hash", store.params_hash(params))),
                         "content": store.content_key(grp), "shape": tuple(grp["data"].shape[1:]), "valid": grp["valid"][()]}
    return out


def train(
    model: str,
    data: str,
    *,
    inputs: tuple[str, ...] | None = None,
    kernels: tuple[str, ...] | None = None,
    split: str = "standard",
    seeds: int = 3,
    options: dict | None = None,
    device: str = "cpu",
    data_home: str | Path | None = None,
    force: bool = False,
) -> StageResult:
    """Train ``model`` on ``data``'s features for every fold and seed of ``split``.

    ``inputs`` default to every feature group the model can take; ``kernels`` (kernel models only) to all four.
    """
    from genrecli.kernels import check_kernel_names

    spec = get_model(model)
    options = dict(options or {})
    spec.check_options(options)  # before any store is read
    if seeds < 1:
        raise UsageError(f"--seeds {seeds}: need at least one seed")
    if kernels and not spec.uses_kernels:
        raise UsageError(f"--kernels applies to kernel models (svm, dkn, dm2kmn, ...), not to '{model}'")
    kernels = tuple(kernels) if kernels else (spec.default_kernels() if spec.uses_kernels else ())
    if spec.uses_kernels:
        kernels = check_kernel_names(kernels)
    paths = DatasetPaths.of(data, data_home)
    manifest = read_manifest(paths.manifest)
    split_id = _split_name(paths, manifest, split)
    assignment = manifest.split(split_id)
    y_all = manifest.targets()
    inputs = list(inputs) if inputs else _default_inputs(paths, spec)
    info = feature_info(paths, inputs, manifest)
    spec.capabilities.check(model, multilabel=manifest.multilabel, inputs={n: i["shape"] for n, i in info.items()})
    # The model's full parameters (defaults included), so a changed default retrains too.
    probe = kernels[:1] if spec.per_pair else (kernels or None)
    probe_model = spec.build(seed=0, device=device, kernels=probe, **options)
    launch = _join_launch(model, probe_model, device)
    model_params = _jsonable(probe_model.get_params(deep=True))
    for key in [k for k in model_params if k.endswith(("random_state", "device")) or k in ("kernel", "kernels")]:
        model_params.pop(key)
    _group_ids(spec, probe_model, manifest)  # an unknown group_key stops here, before any run directory is made
    if spec.per_pair:
        runs = [([i], [k]) for i in inputs for k in (kernels or [None])]
    else:
        runs = [(inputs, list(kernels))]
    result = StageResult()
    for run_inputs, run_kernels in runs:
        run_kernels = [k for k in run_kernels if k]
        rid = run_id(model, run_inputs, run_kernels, split_id, options)
        run_dir = paths.runs / rid
        config = {
            "model": model, "inputs": sorted(run_inputs), "kernels": run_kernels, "split": split_id, "seeds": seeds,
            "options": options, "model_params": model_params,
            "pairs": [[i, k] for i in sorted(run_inputs) for k in (run_kernels or [None])],
            "features": {n: {"params": info[n]["params"], "params_hash": info[n]["params_hash"], "content": info[n]["content"]}
                         for n in sorted(run_inputs)},
            "scaling": _scaling(probe_model, sorted(run_inputs)),
            "assignment": store.params_hash({"a": assignment.tolist()}),
            "labels": manifest.label_names, "multilabel": manifest.multilabel, "manifest": manifest.content_hash(),
        }
        digest = store.params_hash(config)
        primary = launch is None or launch.primary
        with store.writer_lock(run_dir / "run") if primary else contextlib.nullcontext():
            cfg_path = run_dir / "config.json"
            up_to_date = False
            if primary and not force and cfg_path.exists() and (run_dir / "predictions.h5").exists():
                if _read_json(cfg_path).get("params_hash") == digest:
                    ui.info(f"run {rid}: up to date (params {digest}); nothing to do")
                    up_to_date = True
                else:
                    ui.info(f"run {rid}: inputs or options changed; retraining")
            if distributed.broadcast_object(up_to_date):
                result.up_to_date.append(rid)
                continue
            if primary:
                if force or (cfg_path.exists() and _read_json(cfg_path).get("params_hash") != digest):
                    _clear_run(run_dir)
                run_dir.mkdir(parents=True, exist_ok=True)
                _atomic_write_text(run_dir / ".config.partial.json", json.dumps({**config, "params_hash": digest}, indent=2))
            _train_run(spec, config, digest, paths, info, assignment, y_all, manifest, options, device, run_dir,
                       primary=primary)
            if primary:
                # The predictions' digest is the run's content key: what `evaluate` and `report` compare with the
                # predictions_sha256 they recorded, to see a retrain (the params hash stays the same under --force).
                # Provenance outside the params hash (a new toolkit version or date alone does not retrain).
                final = {**config, "params_hash": digest, "device": device,
                         "predictions_sha256": store.file_sha256(run_dir / "predictions.h5"),
                         "split_spec": manifest.split_specs.get(split_id, split_id),
                         "split_seed": manifest.split_seeds.get(split_id),
                         "toolkit_version": genrecli.__version__,
                         "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
                _atomic_write_text(cfg_path, json.dumps(final, indent=2))
                (run_dir / ".config.partial.json").unlink(missing_ok=True)
        result.written.append(rid)
    distributed.barrier()  # every rank returns once rank 0 has written the runs
    return result


def _join_launch(model: str, probe_model, device: str) -> distributed.Launch | None:
    """Join the torchrun launch this process belongs to (None: one process); refuse models that cannot use it."""
    launch = distributed.launch_from_env()
    if launch is None:
        return None
    from genrecli.device import resolve_device
    from genrecli.models import MODELS
    from genrecli.models.neural.harness import NeuralModel

    if not isinstance(probe_model, NeuralModel):
        harness = sorted(name for name, s in MODELS.items() if issubclass(s.model_class(), NeuralModel))
        raise UsageError(f"model '{model}' does not train data-parallel under torchrun (only the neural-harness "
                         f"models do: {', '.join(harness)}); run `genre train --model {model}` as one process")
    distributed.join(distributed.local_device(resolve_device(device), launch))
    return launch


def _scaling(model, inputs: list[str]) -> dict | None:
    """The per-input feature scaling a kernel model will apply ('auto' resolved), for the run's provenance."""
    if "scale" not in model.get_params(deep=False):
        return None
    from genrecli.kernels.scaling import resolve_scaling

    return resolve_scaling(model.get_params(deep=False)["scale"], inputs)


def _split_name(paths: DatasetPaths, manifest, split: str) -> str:
    """The stored split for a name or spec; splits are written by ingest / `genre split`, never here."""
    from genrecli.pipeline.ingest import resolve_split

    return resolve_split(paths, split)


def _default_inputs(paths: DatasetPaths, spec) -> list[str]:
    from genrecli.pipeline.features import feature_groups

    with store.open_read(paths.features(), what="features", hint="run `genre extract-audio` / `genre extract-text` first") as h5:
        groups = feature_groups(h5)
        usable = [g for g in groups if g.split("/", 1)[0] in spec.capabilities.modalities
                  and input_kind(h5[g]["data"].shape[1:]) in spec.capabilities.input_kinds]
    if not usable:
        raise UsageError(f"{paths.features()}: no feature the model '{spec.name}' can take (have: {', '.join(groups) or 'none'})")
    if spec.capabilities.max_inputs is not None and len(usable) > spec.capabilities.max_inputs and not spec.per_pair:
        raise UsageError(f"model '{spec.name}' takes {spec.capabilities.max_inputs} input(s); choose with --inputs from {', '.join(usable)}")
    return usable


def _train_run(spec, config, digest, paths, info, assignment, y_all, manifest, options, device, run_dir: Path, *,
               primary: bool = True) -> None:
    """Fit every fold x seed of one run; only the ``primary`` process (rank 0 of a launch) scores and writes."""
    names = config["inputs"]
    seeds = config["seeds"]
    valid = np.logical_and.reduce([info[n]["valid"] for n in names])
    probe = spec.build(seed=0, device=device, kernels=tuple(config["kernels"]) or None, **options)
    n_folds = assignment.shape[0]
    streamed = _streams_rows(probe, assignment, valid)
    if streamed:
        ui.info(f"{run_dir.name}: the model reads its rows in blocks; vector inputs stay in the store "
                "(row views, no whole copy)")
    arrays = {n: None for n in names} if streamed else _load_vectors(paths, names, info)
    feature_state = _feature_states(paths, names)
    label_embeddings = _label_embeddings(paths, names)
    group_ids = _group_ids(spec, probe, manifest)
    split_groups = _split_groups(manifest, config["split"]) if "cv_groups" in inspect.signature(probe.fit).parameters else None
    for fold in range(n_folds):
        train_rows, test_rows = train_test_indices(assignment, fold)
        tr, te = train_rows[valid[train_rows]], test_rows[valid[test_rows]]
        excluded = [manifest.ids[i] for i in np.concatenate([train_rows, test_rows]) if not valid[i]]
        if excluded:
            ui.warn(f"{len(excluded)} tracks without features are left out of {run_dir.name} fold {fold} (e.g. {excluded[0]})")
        if len(tr) < 2 or len(te) < 1:
            raise UsageError(f"{run_dir.name} fold {fold}: {len(tr)} training and {len(te)} test tracks with features; need >= 2 and >= 1")
        fit_rows, val_rows = tr, None
        if spec.capabilities is not None and not spec.uses_kernels:
            is_val = assignment[fold][tr] == VALID
            if is_val.any() and (~is_val).sum() >= 2:
                fit_rows, val_rows = tr[~is_val], tr[is_val]
        if y_all.ndim == 1 and len(np.unique(y_all[fit_rows])) < 2:
            only = manifest.label_names[int(y_all[fit_rows][0])]
            raise UsageError(f"{paths.manifest}: the training part of split {config['split']} fold {fold} has a single "
                             f"class ({only}); a classifier needs two (ingest a corpus with two or more labels)")
        cache = _gram_cache(paths, config, fold, fit_rows, info) if spec.uses_kernels else None
        for seed in range(seeds):
            out_dir = artifact_dir(run_dir, fold, seed)
            if distributed.broadcast_object(primary and _finished(out_dir, digest)):
                ui.info(f"{run_dir.name} fold {fold} seed {seed}: already trained; kept")
                continue
            label = f"{run_dir.name} fold {fold} seed {seed}"
            est = spec.build(seed=seed, device=device, kernels=tuple(config["kernels"]) or None, **options)
            if hasattr(est, "set_checkpoint_dir"):
                est.set_checkpoint_dir(run_dir / ".checkpoints" / out_dir.name)
            validation = None if val_rows is None else (_rows(arrays, paths, names, val_rows), y_all[val_rows])
            kwargs = {"validation": validation}
            if split_groups is not None:  # the model's selection CV folds by the split's groups (inner_cv)
                kwargs["cv_groups"] = split_groups[fit_rows]
            if cache is not None:
                kwargs["cache"] = cache
            if label_embeddings is not None and "label_embeddings" in inspect.signature(est.fit).parameters:
                kwargs["label_embeddings"] = label_embeddings
            if group_ids is not None:
                kwargs["groups"] = group_ids[fit_rows]
                if val_rows is not None:
                    kwargs["validation_groups"] = group_ids[val_rows]
            t0 = time.perf_counter()
            try:
                est.fit(_rows(arrays, paths, names, fit_rows), y_all[fit_rows], **kwargs)
            except (ValueError, TypeError) as exc:
                raise _option_error(exc, options) or exc
            fit_s = time.perf_counter() - t0
            if not primary:
                continue
            test_inputs = _rows(arrays, paths, names, te)
            t0 = time.perf_counter()
            scored = {"groups": group_ids[te]} if group_ids is not None else {}
            scores = np.asarray(est.decision_function(test_inputs, **scored), dtype=np.float32)
            predict_s = time.perf_counter() - t0
            y_pred = est.predict_from_scores(scores) if hasattr(est, "predict_from_scores") else _predict_from(est, scores)
            extra = est.extra_metrics(test_inputs)
            metadata = {
                "inputs": config["features"], "labels": config["labels"], "multilabel": config["multilabel"],
                "run": run_dir.name, "fold": fold, "seed": seed, "split": config["split"], "run_params_hash": digest,
            }
            est.save(out_dir, metadata=metadata, registry_name=spec.name)
            if feature_state:
                from safetensors.numpy import save_file

                save_file(feature_state, str(out_dir / "features.safetensors"))
            _save_result(out_dir, digest, te=te, y_true=y_all[te], y_pred=y_pred, scores=scores, classes=np.asarray(est.classes_),
                         fit_s=fit_s, predict_s=predict_s, n_train=len(fit_rows), extra=extra,
                         params=_jsonable(est.get_params(deep=False)))
            shutil.rmtree(run_dir / ".checkpoints" / out_dir.name, ignore_errors=True)  # the artifact supersedes it
            if y_all.ndim == 2:
                ui.info(f"{label}: AUC-ROC {macro_auc(y_all[te], _full_scores(scores, est.classes_, y_all.shape[1])):.3f} "
                        f"on {len(te)} test tracks (fit {fit_s:.1f} s)")
            else:
                ui.info(f"{label}: accuracy {float(np.mean(y_pred == y_all[te])):.3f} on {len(te)} test tracks (fit {fit_s:.1f} s)")
    if primary:
        _write_predictions(run_dir, n_folds, seeds, len(config["labels"]), bool(config["multilabel"]))


def _split_groups(manifest, split_id: str) -> np.ndarray | None:
    """The group of every track under a grouped split (``group:KEY:F``, ``groupkfold:KEY:K``), else None.

    Passed (training rows only) as ``cv_groups`` to the models whose ``fit`` takes it, so that their
    model-selection CV holds out whole groups, as the split does (their ``inner_cv`` option)."""
    parts = str(manifest.split_specs.get(split_id, split_id)).split(":")
    if parts[0] not in ("group", "groupkfold") or len(parts) < 2:
        return None
    return np.asarray(manifest.group_values(parts[1])).astype(str)


def _group_ids(spec, probe, manifest) -> np.ndarray | None:
    """The manifest's group ids (one per track) of the model's ``group_key``, when it averages per group.

    ``probe`` is the model as built with the run's options. None unless it has a ``group_key`` option that is
    set and its ``fit`` and ``decision_function`` take ``groups=``; an unrecorded key is a UsageError naming
    the keys the manifest has.
    """
    key = probe.get_params(deep=False).get("group_key")
    if key is None:
        return None
    takes = all("groups" in inspect.signature(f).parameters for f in (probe.fit, probe.decision_function))
    if not takes:
        raise UsageError(f"model '{spec.name}': group_key={key!r}, but its fit/decision_function take no groups=")
    try:
        return np.asarray(manifest.group_values(str(key)), dtype=object).astype(str)
    except UsageError as exc:
        raise UsageError(f"-o group_key={key}: {exc}") from None


def _option_error(exc: Exception, options: dict) -> UsageError | None:
    """A fit error caused by an ``-o`` value, as one line naming the option; None for any other error (a bug).

    Option values are only parsed as JSON by the CLI, so ``-o C=abc`` reaches the model as the string 'abc'
    and fails where it is first used (``float('abc')``); a number out of range fails in scikit-learn's
    parameter validation, which names the parameter.
    """
    from sklearn.utils._param_validation import InvalidParameterError

    message = " ".join(str(exc).split())
    for key, value in options.items():
        named = isinstance(exc, InvalidParameterError) and f"'{key.rsplit('.', 1)[-1]}'" in message
        if named or (isinstance(value, str) and repr(value) in message):
            return UsageError(f"-o {key}={value}: {message}")
    return None


def _predict_from(est, scores: np.ndarray) -> np.ndarray:
    if getattr(est, "multilabel_", False):
        return scores > 0
    return np.asarray(est.classes_)[np.argmax(scores, axis=1)]


def _full_scores(scores: np.ndarray, classes, n_labels: int) -> np.ndarray:
    """Scores with one column per label of the corpus (labels a model never saw score -inf)."""
    classes = np.asarray(classes, dtype=np.int64)
    if scores.shape[1] == n_labels and np.array_equal(classes, np.arange(n_labels)):
        return scores
    out = np.full((len(scores), n_labels), -np.inf, dtype=np.float32)
    out[:, classes] = scores
    return out


def _streams_rows(probe, assignment: np.ndarray, valid: np.ndarray) -> bool:
    """Whether the run's vector inputs go to the model as lazy row views instead of loaded arrays.

    The rule: the model says it reads its training rows in blocks (a ``streams_rows(n)`` method returning True
    for the training-row count of every fold: DM2KMN with ``landmarks`` N < n and ``selection_rows='landmarks'``).
    Each input is then a :class:`~genrecli.pipeline.features.FeatureView` of the fold's rows: no group is loaded
    here, no training or test rows are copied, and the model joins the modalities lazily
    (:class:`~genrecli.models.kernel.RowConcat`). Whether a view reads from disk or from memory is the view's
    own resident budget (:func:`~genrecli.pipeline.features.resident_budget`, ``$GENRE_RESIDENT_BYTES``): a
    group within it is read into memory once per process, a larger one is read per block from the store.
    Every other model (or landmarks='all') keeps the loaded arrays.
    """
    check = getattr(probe, "streams_rows", None)
    if check is None:
        return False
    counts = [int(valid[train_test_indices(assignment, fold)[0]].sum()) for fold in range(assignment.shape[0])]
    return bool(counts) and all(check(c) for c in counts)


def _load_vectors(paths: DatasetPaths, names: list[str], info: dict) -> dict[str, np.ndarray | None]:
    """Vector features are read once per run; patch features stay on disk (None here, views per fold)."""
    from genrecli.pipeline.features import read_feature

    out = {}
    for name in names:
        if input_kind(info[name]["shape"]) == "vector":
            out[name] = np.asarray(read_feature(paths, name)[0], dtype=np.float32)
        else:
            out[name] = None
    return out


def _rows(arrays: dict, paths: DatasetPaths, names: list[str], rows: np.ndarray) -> dict:
    from genrecli.pipeline.features import FeatureView

    return {n: (arrays[n][rows] if arrays[n] is not None else FeatureView(paths.features(), n, rows)) for n in names}


def _label_embeddings(paths: DatasetPaths, names: list[str]) -> np.ndarray | None:
    """Genre-name embeddings (labels x d, manifest label order) stored with the first text input, if any."""
    with store.open_read(paths.features(), what="features") as h5:
        for name in names:
            if name.startswith("text/") and "label_embeddings" in h5[name]:
                return np.asarray(h5[name]["label_embeddings"][()], dtype=np.float32)
    return None


def _feature_states(paths: DatasetPaths, names: list[str]) -> dict[str, np.ndarray]:
    """Fitted feature-extractor states (e.g. TF-IDF vocabulary and idf) to ship in every artifact."""
    try:
        from genrecli.pipeline.featurize import feature_state
    except ImportError:  # pragma: no cover
        return {}
    out = {}
    for name in names:
        for key, value in (feature_state(paths, name) or {}).items():
            out[f"{name}|{key}"] = np.ascontiguousarray(value)
    return out


def _gram_cache(paths: DatasetPaths, config: dict, fold: int, rows: np.ndarray, info: dict):
    """Training Grams of ``kernels.h5`` for this fold when fresh for these features and this split, else None."""
    from genrecli.models.kernel import GramCache

    if not paths.kernels.exists():
        return None
    entries = {}
    try:
        with store.open_read(paths.kernels) as h5:
            for name in config["inputs"]:
                for kernel in config["kernels"]:
                    group = f"{config['split']}/fold{fold}/{name}/{kernel}"
                    if group not in h5:
                        continue
                    grp = h5[group]
                    params = store.group_params(grp)
                    if (params.get("feature_content") != info[name]["content"]
                            or params.get("manifest") != config["manifest"]
                            or params.get("assignment") != _fold_assignment_hash(paths, config, fold)
                            or params.get("offset", 1.0) != 1.0):
                        continue
                    gram = grp["gram"]
                    K = gram[np.sort(rows)][:, np.sort(rows)]
                    order = np.argsort(np.argsort(rows))
                    K = np.ascontiguousarray(K[np.ix_(order, order)], dtype=np.float32)
                    if not np.isfinite(K).all():
                        continue
                    state = {k[len("kernel_."):]: grp["state"][k][()] for k in grp["state"] if k.startswith("kernel_.")}
                    entries[(name, kernel)] = (K, state)
    except UsageError as exc:  # only a cache: say why it is not used, and compute the Grams
        ui.warn(f"{exc} (computing the Grams from the features instead)")
        return None
    return GramCache(entries) if entries else None


def _fold_assignment_hash(paths: DatasetPaths, config: dict, fold: int) -> str:
    assignment = read_manifest(paths.manifest).split(config["split"])
    return store.params_hash({"a": assignment[fold].tolist()})


def _finished(out_dir: Path, digest: str) -> bool:
    result = out_dir / RESULT_FILE
    if not result.exists() or not (out_dir / "model.json").exists():
        return False
    try:
        with np.load(result, allow_pickle=False) as data:
            return str(data["run_params_hash"]) == digest
    except (OSError, ValueError, KeyError):
        return False


def _save_result(out_dir: Path, digest: str, *, te, y_true, y_pred, scores, classes, fit_s, predict_s, n_train, extra, params) -> None:
    tmp = out_dir / f".{RESULT_FILE}.tmp-{os.getpid()}"
    with open(tmp, "wb") as fh:
        np.savez(fh, test_index=te, y_true=y_true, y_pred=y_pred, scores=scores, classes=classes,
                 fit_seconds=fit_s, predict_seconds=predict_s, n_train=n_train,
                 extra=store.canonical_json(extra), params=store.canonical_json(params), run_params_hash=digest)
    os.replace(tmp, out_dir / RESULT_FILE)


def _write_predictions(run_dir: Path, n_folds: int, seeds: int, n_labels: int, multilabel: bool) -> None:
    tmp = run_dir / f".predictions.h5.tmp-{os.getpid()}"
    try:
        with h5py.File(tmp, "w") as h5:
            for fold in range(n_folds):
                for seed in range(seeds):
                    with np.load(artifact_dir(run_dir, fold, seed) / RESULT_FILE, allow_pickle=False) as r:
                        grp = h5.create_group(f"fold{fold}/seed{seed}")
                        grp.create_dataset("test_index", data=r["test_index"])
                        grp.create_dataset("y_true", data=r["y_true"])
                        grp.create_dataset("y_pred", data=r["y_pred"])
                        grp.create_dataset("scores", data=_full_scores(r["scores"], r["classes"], n_labels))
                        grp.attrs.update(fit_seconds=float(r["fit_seconds"]), predict_seconds=float(r["predict_seconds"]),
                                         n_train=int(r["n_train"]), extra=str(r["extra"]), params=str(r["params"]))
        os.replace(tmp, run_dir / "predictions.h5")
    finally:
        tmp.unlink(missing_ok=True)


def _clear_run(run_dir: Path) -> None:
    if not run_dir.exists():
        return
    for child in run_dir.iterdir():
        if child.name.endswith(".lock"):
            continue
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _jsonable(params: dict) -> dict:
    out = {}
    for k, v in params.items():
        if isinstance(v, (int, float, str, bool, type(None))):
            out[k] = v
        elif isinstance(v, (list, tuple)):
            out[k] = [x if isinstance(x, (int, float, str, bool, type(None))) else repr(x) for x in v]
        else:
            out[k] = type(v).__name__ if hasattr(v, "get_params") else repr(v)
    return out
