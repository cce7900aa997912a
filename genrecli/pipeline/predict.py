"""``genre predict`` and cross-corpus ``genre evaluate --run RUN --data OTHER``: a trained run on new music.

A run's artifacts (``runs/<run-id>/fold<k>-seed<s>/``) are self-contained: each records the feature
parameters of its inputs, so new files get exactly the run's features (same extractor options, rendering,
text conversion and encoder) and another corpus is accepted only when its feature groups were computed with
the same settings (:func:`genrecli.pipeline.featurize.feature_identity`).

By default every artifact of the run (every fold and seed) scores the input and the scores are averaged per
label: an ensemble over the run's models. ``fold`` / ``seed`` pick one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from genrecli import store, ui
from genrecli.errors import InputError, UsageError
from genrecli.layout import DatasetPaths, data_home as resolve_home
from genrecli.models.base import META_FILE, load_model, read_artifact_meta
from genrecli.pipeline import StageResult


def find_run(run: str | Path, *, data_home: str | Path | None = None) -> Path:
    """A run directory from a path, or from a run id looked up under every dataset of the data home."""
    path = Path(run).expanduser()
    if path.is_dir() and (path / "config.json").exists():
        return path
    home = resolve_home(data_home)
    text = str(run)
    if "/" in text or text in (".", ".."):
        raise UsageError(f"--run {run}: no finished run there (a run directory holds config.json)")
    hits = sorted(p for p in home.glob(f"*/runs/{text}") if (p / "config.json").exists())
    if not hits:
        raise UsageError(f"--run {run}: no finished run with this id under {home} (see `genre info --data NAME`)")
    if len(hits) > 1:
        raise UsageError(f"--run {run}: the id exists in several datasets ({', '.join(p.parents[1].name for p in hits)}); give the run's path")
    return hits[0]


def run_artifacts(run_dir: Path, *, fold: int | None = None, seed: int | None = None) -> list[Path]:
    dirs = sorted(p for p in run_dir.glob("fold*-seed*") if (p / META_FILE).exists())
    if fold is not None:
        dirs = [p for p in dirs if p.name.startswith(f"fold{fold}-")]
    if seed is not None:
        dirs = [p for p in dirs if p.name.endswith(f"-seed{seed}")]
    if not dirs:
        which = "" if fold is None and seed is None else f" for fold {fold} seed {seed}"
        raise UsageError(f"{run_dir}: no model artifact{which} (train the run with this toolkit version)")
    return dirs


def _feature_state(artifact: Path) -> dict[str, dict[str, np.ndarray]]:
    path = artifact / "features.safetensors"
    if not path.exists():
        return {}
    from safetensors.numpy import load_file

    out: dict[str, dict[str, np.ndarray]] = {}
    for key, value in load_file(str(path)).items():
        group, _, name = key.partition("|")
        out.setdefault(group, {})[name] = value
    return out


class RunEnsemble:
    """The models of one run, scoring feature inputs on the run's label names."""

    def __init__(self, run_dir: Path, *, fold: int | None = None, seed: int | None = None, device: str = "cpu"):
        self.run_dir = run_dir
        self.artifacts = run_artifacts(run_dir, fold=fold, seed=seed)
        self.meta = read_artifact_meta(self.artifacts[0])
        self.labels: list[str] = list(self.meta["labels"])
        self.multilabel = bool(self.meta["multilabel"])
        self.feature_state = _feature_state(self.artifacts[0])
        self.models = []
        for artifact in self.artifacts:
            model = load_model(artifact)
            if "device" in model.get_params(deep=False):
                model.set_params(device=device)
            self.models.append(model)
        self.inputs: dict[str, dict] = _prediction_inputs(self.meta["inputs"], self.models)

    def scores(self, inputs: dict) -> np.ndarray:
        """Mean decision scores over the run's models, (n, n_labels); a label a model never saw is left out of its mean."""
        n = len(next(iter(inputs.values())))
        total = np.zeros((n, len(self.labels)), dtype=np.float64)
        count = np.zeros(len(self.labels), dtype=np.int64)
        for model in self.models:
            s = np.asarray(model.decision_function(inputs), dtype=np.float64)
            cols = np.asarray(model.classes_, dtype=np.int64)
            total[:, cols] += s
            count[cols] += 1
        out = np.full_like(total, -np.inf)
        seen = count > 0
        out[:, seen] = total[:, seen] / count[seen]
        return out

    def predict(self, scores: np.ndarray) -> np.ndarray:
        """Decisions on mean scores: the model's own rule (a tuned threshold, cosine targets) when it has one."""
        model = self.models[0]
        if self.multilabel and hasattr(model, "predict_from_scores"):
            return np.asarray(model.predict_from_scores(scores))
        return scores > 0 if self.multilabel else np.argmax(scores, axis=1)


def _prediction_inputs(trained: dict[str, dict], models: list) -> dict[str, dict]:
    """The run's inputs that its models read at prediction time, in the run's order.

    A model trained on more inputs than it predicts from (``oramas-mm-audio``: audio + cover images, predicts
    from audio) says so by its ``input_names_``; new files then need only those features. Models whose
    ``input_names_`` name something else (the kernel models list kernel labels) need every trained input.
    """
    needed: set[str] = set()
    for model in models:
        names = getattr(model, "input_names_", None)
        needed.update(names if names and set(names) <= set(trained) else trained)
    return {name: spec for name, spec in trained.items() if name in needed}


def predict(
    run: str | Path,
    files: list[str | Path],
    *,
    top_k: int = 3,
    fold: int | None = None,
    seed: int | None = None,
    device: str = "cpu",
    data_home: str | Path | None = None,
) -> tuple[list[dict], dict[str, str]]:
    """Top-k genres of each file: ``([{"file", "top": [{"label", "score"}, ...]}], failures file -> message)``."""
    from genrecli.pipeline.featurize import featurize_files

    if top_k < 1:
        raise UsageError(f"--top-k {top_k}: expected a positive integer")
    if not files:
        raise UsageError("give at least one file to predict")
    ensemble = RunEnsemble(find_run(run, data_home=data_home), fold=fold, seed=seed, device=device)
    paths = [Path(f).expanduser() for f in files]
    feats = featurize_files(paths, {name: spec["params"] for name, spec in ensemble.inputs.items()},
                            device=device, state=ensemble.feature_state)
    out = []
    if feats.ok:
        scores = ensemble.scores(feats.inputs)
        decisions = ensemble.predict(scores)
        for row, index in enumerate(feats.ok):
            order = np.argsort(-scores[row])[:top_k]
            out.append({"file": str(paths[index]),
                        "top": [{"label": ensemble.labels[j], "score": float(scores[row, j])} for j in order if np.isfinite(scores[row, j])],
                        **({"labels": [ensemble.labels[j] for j in np.flatnonzero(decisions[row])]} if ensemble.multilabel else {})})
    return out, dict(feats.failures)


# ----------------------------------------------------------------------------------------- cross-corpus
def evaluate_on(run: str | Path, data: str, *, device: str = "cpu", data_home: str | Path | None = None,
                force: bool = False) -> StageResult:
    """Apply a run trained elsewhere to every track of ``data``; labels are matched by name.

    Tracks whose label the run never saw are counted and listed in ``metrics.json`` (``unseen_labels``) and
    left out of the metrics, which are computed per fold x seed model (mean +- std) on the other tracks.
    Writes ``<data>/evaluations/<run-id>/metrics.json`` and ``predictions.h5``.
    """
    from genrecli.manifest import read_manifest
    from genrecli.metrics import mean_std, multi_label_metrics, single_label_metrics
    from genrecli.pipeline.evaluate import MULTI_SCALARS, SCALARS
    from genrecli.pipeline.featurize import encode_corpus, feature_identity, needs_state
    from genrecli.pipeline.features import read_feature

    run_dir = find_run(run, data_home=data_home)
    paths = DatasetPaths.of(data, data_home)
    manifest = read_manifest(paths.manifest)
    config = json.loads((run_dir / "config.json").read_text())
    names = list(config["inputs"])
    run_state = _feature_state(run_artifacts(run_dir)[0])
    arrays, valids, hashes = {}, [], {}
    for name in names:
        run_params = config["features"][name]["params"]
        if needs_state(name, run_params):
            # a fitted extractor (TF-IDF): the other corpus's texts through the run's own vocabulary
            data_arr, valid = encode_corpus(paths, name, run_params, state=run_state.get(name), device=device)
            hashes[name] = store.params_hash({"encoded_with": config["features"][name]["params_hash"]})
        else:
            data_arr, valid, params = read_feature(paths, name)
            want, have = feature_identity(name, run_params), feature_identity(name, params)
            if want != have:
                keys = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
                raise UsageError(
                    f"{paths.features()}: '{name}' of '{data}' was computed with other settings than run {run_dir.name} "
                    f"(differs in: {', '.join(keys)}); re-extract it with the run's settings"
                )
            hashes[name] = store.params_hash(params)
        arrays[name] = np.asarray(data_arr, dtype=np.float32)
        valids.append(valid)
    multilabel = bool(config["multilabel"])
    if multilabel != manifest.multilabel:
        raise UsageError(f"run {run_dir.name} is {'multi' if multilabel else 'single'}-label but '{data}' is not")
    out_dir = paths.root / "evaluations" / run_dir.name
    digest = store.params_hash({"run": config.get("params_hash"), "features": hashes,
                                "manifest": manifest.content_hash()})
    result = StageResult()
    metrics_path = out_dir / "metrics.json"
    if not force and metrics_path.exists():
        try:
            if json.loads(metrics_path.read_text()).get("params_hash") == digest:
                ui.info(f"evaluation of {run_dir.name} on {data}: up to date; nothing to do")
                result.up_to_date.append(run_dir.name)
                return result
        except (OSError, json.JSONDecodeError):
            pass
    run_labels = list(config["labels"])
    index = {name: i for i, name in enumerate(run_labels)}
    valid = np.logical_and.reduce(valids)
    rows = np.flatnonzero(valid)
    missing = len(manifest) - len(rows)
    if missing:
        ui.warn(f"{missing} tracks of '{data}' have no {' / '.join(names)} features; left out")
    unseen: dict[str, int] = {}
    if multilabel:
        Y = manifest.Y[rows]
        other = manifest.label_names
        y_true = np.zeros((len(rows), len(run_labels)), dtype=bool)
        for j, name in enumerate(other):
            if name in index:
                y_true[:, index[name]] = Y[:, j]
            elif Y[:, j].any():
                unseen[name] = int(Y[:, j].sum())
        keep = np.arange(len(rows))
    else:
        labels = [manifest.tracks[i].label for i in rows]
        known = np.array([lab in index for lab in labels], dtype=bool)
        for lab in labels:
            if lab not in index:
                unseen[lab] = unseen.get(lab, 0) + 1
        keep = np.flatnonzero(known)
        y_true = np.array([index.get(lab, -1) for lab in labels], dtype=np.int64)
    if unseen:
        ui.warn(f"labels of '{data}' that run {run_dir.name} never saw (tracks left out of the metrics): "
                + ", ".join(f"{k} ({v})" for k, v in sorted(unseen.items())))
    if len(keep) == 0:
        raise UsageError(f"'{data}': no track has a label that run {run_dir.name} was trained on ({', '.join(run_labels)})")
    from genrecli.pipeline.train import _full_scores

    inputs = {n: arrays[n][rows] for n in names}
    entries, per_model = [], []
    for artifact in run_artifacts(run_dir):
        model = load_model(artifact)
        if "device" in model.get_params(deep=False):
            model.set_params(device=device)
        scores = _full_scores(np.asarray(model.decision_function(inputs), dtype=np.float32), model.classes_, len(run_labels))
        if multilabel and hasattr(model, "predict_from_scores"):
            y_pred = np.asarray(model.predict_from_scores(scores))
        else:
            y_pred = scores > 0 if multilabel else np.argmax(scores, axis=1)
        if multilabel:
            m = multi_label_metrics(y_true[keep], y_pred[keep], scores[keep])
        else:
            m = single_label_metrics(y_true[keep], y_pred[keep], len(run_labels))
        m.update(model=artifact.name, n_test=int(len(keep)))
        entries.append(m)
        per_model.append((artifact.name, scores, y_pred))
    scalars = [k for k in MULTI_SCALARS if k in entries[0]] if multilabel else list(SCALARS)
    summary = {k: mean_std(e[k] for e in entries) for k in scalars}
    doc = {"run": run_dir.name, "trained_on": run_dir.parents[1].name, "data": data, "config": config,
           "summary": summary, "entries": entries, "unseen_labels": unseen, "n_tracks": int(len(rows)),
           "n_scored": int(len(keep)), "params_hash": digest}
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_evaluation(out_dir, rows, keep, y_true, per_model)
    tmp = out_dir / ".metrics.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2, default=_json_default))
    tmp.replace(metrics_path)
    key = "auc_roc" if multilabel else "accuracy"
    ui.info(f"{run_dir.name} on {data}: {key} {summary[key]['mean']:.3f} ± {summary[key]['std']:.3f} "
            f"({len(keep)} tracks scored, {len(rows) - len(keep)} with unseen labels)")
    result.written.append(run_dir.name)
    return result


def _write_evaluation(out_dir: Path, rows, keep, y_true, per_model) -> None:
    import h5py

    tmp = out_dir / ".predictions.h5.tmp"
    with h5py.File(tmp, "w") as h5:
        h5.create_dataset("rows", data=rows)
        h5.create_dataset("scored", data=keep)
        h5.create_dataset("y_true", data=y_true)
        for name, scores, y_pred in per_model:
            grp = h5.create_group(name)
            grp.create_dataset("scores", data=scores)
            grp.create_dataset("y_pred", data=y_pred)
    tmp.replace(out_dir / "predictions.h5")


def _json_default(obj):
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(type(obj).__name__)


__all__ = ["RunEnsemble", "evaluate_on", "find_run", "predict", "run_artifacts", "InputError"]
