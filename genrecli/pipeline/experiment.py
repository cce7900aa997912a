"""``genre run EXPERIMENT.toml``: a declared grid run stage by stage through the library, cache-aware.

An experiment file (TOML) declares::

    description = "what it shows"          # optional

    [corpus]                               # genre ingest
    dataset = "folk-dances"                # the loader (`genre list datasets`)
    name = "folk-demo"                     # optional: the dataset name (default: the loader's)
    root = "${KERN_ERAS:-../data/x}"       # optional: $VAR / ${VAR:-default} expanded; relative to this file
    limit = 400                            # optional: a stratified sample
    seed = 0                               # seed of the splits and of the sample
    splits = ["groupkfold:title:5:3"]      # split specs (default ["standard"])
    options = {}                           # loader options

    [features.audio]                       # genre extract-audio (or [[features.audio]] for several calls)
    features = ["mfcc"]                    # + max_seconds, soundfont, jobs, options, device
    [features.text]                        # genre extract-text (or [[features.text]])
    encoder = "minilm"                     # + max_clips, clip_tokens, pooling, batch_size, keep_metadata, ...

    [kernels]                              # optional: genre kernels, for every split a kernel model is trained on
    kernels = ["linear", "poly2", "rbf", "hist"]   # + landmarks, energy, levels, seed, device; enabled = false skips it

    [[train]]                              # one grid: models x input sets x option sets x splits
    models = ["dkn", "dm2kmn"]             # or model = "svm"
    inputs = ["audio/mfcc", "text/minilm"] # one input set, or input_sets = [["audio/mfcc"], ["text/minilm"]]
    options = {hidden = 16}                # one option set, or option_sets = [{}, {scale = "none"}]
    seeds = 3
    splits = ["groupkfold:title:5:3"]      # default: every split of [corpus]
    kernels = ["rbf"]                      # optional (kernel models)

    [report]                               # genre evaluate + genre report (their statistics options)
    resamples = 2000                       # + level, test, metric, alpha, unit, seed; enabled = false skips both

The file is validated before anything runs: an unknown key, model, dataset, audio feature, kernel, split kind or
model option is one line naming the file and the key (``experiments/x.toml: train[1].models: unknown model ...``).
Every stage keeps its own content-keyed cache, so a second ``genre run`` of the same file does no work and
says so ("up to date"). ``genre run`` also copies the file to ``<data>/experiments/<stem>.toml``; the report
lists the experiment files recorded there.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import os
import re
import tomllib
from pathlib import Path

from genrecli import store, ui
from genrecli.errors import GenreError, UsageError
from genrecli.pipeline import StageResult

TOP_KEYS = {"description", "corpus", "features", "kernels", "train", "report"}
CORPUS_KEYS = {"dataset", "name", "root", "limit", "seed", "splits", "options"}
TRAIN_KEYS = {"model", "models", "inputs", "input_sets", "options", "option_sets", "seeds", "splits", "kernels", "device"}
REPORT_KEYS = {"enabled", "resamples", "level", "test", "metric", "alpha", "unit", "seed"}
SPLIT_KINDS = {"random", "group", "kfold", "groupkfold", "given", "file", "standard"}
MODALITIES = ("audio", "text", "image")
# Loaders whose corpora ship their own feature groups (any name): their audio inputs are not checked against
# the audio extractors.
PRECOMPUTED_DATASETS = {"table"}


class ExperimentError(UsageError):
    """A malformed experiment file: one line naming the file and the key."""


def _keys_of(func, drop=("data", "data_home", "force")) -> set[str]:
    return {p for p in inspect.signature(func).parameters if p not in drop}


@dataclasses.dataclass
class TrainJob:
    model: str
    inputs: tuple[str, ...]
    options: dict
    seeds: int
    split: str
    kernels: tuple[str, ...] | None
    device: str = "cpu"


@dataclasses.dataclass
class Experiment:
    path: Path
    name: str
    description: str
    corpus: dict
    audio: list[dict]
    text: list[dict]
    kernels: dict | None
    jobs: list[TrainJob]
    report: dict | None

    @property
    def data(self) -> str:
        return self.corpus.get("name") or self.corpus["dataset"]

    def kernel_plan(self) -> dict[str, list[str]]:
        """split -> the inputs of the kernel models trained on it (what `genre kernels` caches)."""
        from genrecli.models import get_model

        if self.kernels is None:
            return {}
        plan: dict[str, list[str]] = {}
        for job in self.jobs:
            if get_model(job.model).uses_kernels and job.inputs:
                plan.setdefault(job.split, [])
                plan[job.split] += [i for i in job.inputs if i not in plan[job.split]]
        return plan

    def plan(self) -> list[str]:
        """The stages ``genre run`` calls, one line each (``--dry-run``)."""
        c = self.corpus
        lines = [f"ingest {c['dataset']} --name {self.data} " + " ".join(f"--split {s}" for s in c.get("splits", ["standard"]))]
        lines += [f"extract-audio --data {self.data} {_flags(a)}" for a in self.audio]
        lines += [f"extract-text --data {self.data} {_flags(t)}" for t in self.text]
        kernel_opts = {k: v for k, v in (self.kernels or {}).items() if k != "enabled"}
        lines += [f"kernels --data {self.data} --split {s} --inputs {','.join(i)} {_flags(kernel_opts)}".rstrip()
                  for s, i in self.kernel_plan().items()]
        for j in self.jobs:
            opts = " ".join(f"-o {k}={v}" for k, v in sorted(j.options.items()))
            kern = f" --kernels {','.join(j.kernels)}" if j.kernels else ""
            lines.append(f"train --data {self.data} --model {j.model} --inputs {','.join(j.inputs)} --split {j.split} "
                         f"--seeds {j.seeds}{kern} {opts}".rstrip())
        if self.report is not None:
            lines += [f"evaluate --data {self.data}", f"report --data {self.data} {_flags(self.report)}".rstrip()]
        return lines


def _flags(options: dict) -> str:
    out = []
    for k, v in options.items():
        v = ",".join(map(str, v)) if isinstance(v, list) else v
        out.append(f"--{k.replace('_', '-')} {v}")
    return " ".join(out)


# ------------------------------------------------------------------------------------------- loading
def load_experiment(path: str | Path) -> Experiment:
    """Read and validate an experiment file; a malformed one raises :class:`ExperimentError` (one line)."""
    path = Path(path)
    where = str(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ExperimentError(f"{where}: no such experiment file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ExperimentError(f"{where}: cannot read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ExperimentError(f"{where}: invalid TOML ({' '.join(str(exc).split())})") from None
    return _validate(raw, path)


def _fail(path: Path, key: str, message: str) -> ExperimentError:
    return ExperimentError(f"{path}: {key}: {message}")


def _table(path, raw, key) -> dict:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise _fail(path, key, f"expected a table, got {type(value).__name__}")
    return value


def _unknown(path, table: dict, allowed: set[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise _fail(path, f"{where}.{key}" if where else key, f"unknown key (known: {', '.join(sorted(allowed))})")


def _typed(path, key, value, types, what):
    if not isinstance(value, types) or isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise _fail(path, key, f"expected {what}, got {value!r}")
    return value


def _str_list(path, key, value) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise _fail(path, key, f"expected a non-empty list of strings, got {value!r}")
    return value


def _expand(text: str, base: Path) -> str:
    """``$VAR`` / ``${VAR}`` / ``${VAR:-default}`` from the environment; a relative path is taken from ``base``."""
    def repl(m):
        name, default = m.group(1) or m.group(3), m.group(2)
        return os.environ.get(name) or (default if default is not None else "")

    out = re.sub(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)", repl, text)
    p = Path(out).expanduser()
    return str(p if p.is_absolute() else (base / p))


def _check_split(path, key, spec: str) -> None:
    kind = spec.split(":", 1)[0]
    if kind not in SPLIT_KINDS:
        raise _fail(path, key, f"unknown split kind '{kind}' in '{spec}' (known: {', '.join(sorted(SPLIT_KINDS))})")


def _validate(raw: dict, path: Path) -> Experiment:
    from genrecli.audio.features import AUDIO_FEATURES
    from genrecli.datasets import get_dataset
    from genrecli.kernels import KERNEL_NAMES
    from genrecli.models import get_model
    from genrecli.pipeline.audio import extract_audio
    from genrecli.pipeline.kernels import compute_kernels
    from genrecli.pipeline.text import extract_text

    _unknown(path, raw, TOP_KEYS, "")
    description = raw.get("description", "")
    _typed(path, "description", description, str, "a string")

    corpus = _table(path, raw, "corpus")
    _unknown(path, corpus, CORPUS_KEYS, "corpus")
    if "dataset" not in corpus:
        raise _fail(path, "corpus.dataset", "missing (the corpus loader, see `genre list datasets`)")
    try:
        get_dataset(_typed(path, "corpus.dataset", corpus["dataset"], str, "a string"))
    except GenreError as exc:
        raise _fail(path, "corpus.dataset", str(exc)) from None
    corpus = dict(corpus)
    corpus["splits"] = _str_list(path, "corpus.splits", corpus.get("splits", ["standard"]))
    for i, s in enumerate(corpus["splits"]):
        _check_split(path, f"corpus.splits[{i}]", s)
    for key, types, what in (("name", str, "a string"), ("limit", int, "an integer"), ("seed", int, "an integer"),
                             ("options", dict, "a table"), ("root", str, "a string")):
        if key in corpus:
            _typed(path, f"corpus.{key}", corpus[key], types, what)
    if "name" in corpus:
        from genrecli.layout import check_name

        try:
            check_name(corpus["name"], "corpus.name")
        except GenreError as exc:
            raise _fail(path, "corpus.name", str(exc)) from None
    if "root" in corpus:
        corpus["root"] = _expand(corpus["root"], path.parent)

    features = _table(path, raw, "features")
    _unknown(path, features, {"audio", "text"}, "features")
    audio = _calls(path, features.get("audio"), "features.audio", _keys_of(extract_audio) - {"shard"})
    for i, call in enumerate(audio):
        names = _str_list(path, f"features.audio[{i}].features", call.get("features", ["mfcc"]))
        for name in names:
            if name not in AUDIO_FEATURES:
                raise _fail(path, f"features.audio[{i}].features", f"unknown audio feature '{name}' "
                            f"(known: {', '.join(sorted(AUDIO_FEATURES))})")
        call["features"] = names
    text = _calls(path, features.get("text"), "features.text", _keys_of(extract_text))
    for i, call in enumerate(text):
        _typed(path, f"features.text[{i}].encoder", call.setdefault("encoder", "minilm"), str, "a string")

    kernels = None
    if raw.get("kernels", {}) is not None:
        kernels = dict(_table(path, raw, "kernels"))
        _unknown(path, kernels, (_keys_of(compute_kernels) - {"inputs", "split"}) | {"enabled"}, "kernels")
        if "kernels" in kernels:
            for k in _str_list(path, "kernels.kernels", kernels["kernels"]):
                if k not in KERNEL_NAMES:
                    raise _fail(path, "kernels.kernels", f"unknown kernel '{k}' (known: {', '.join(KERNEL_NAMES)})")
        if kernels.pop("enabled", True) is False:
            kernels = None

    trains = raw.get("train", [])
    if isinstance(trains, dict):
        trains = [trains]
    if not isinstance(trains, list):
        raise _fail(path, "train", "expected [[train]] tables")
    jobs: list[TrainJob] = []
    for t, entry in enumerate(trains):
        where = f"train[{t}]"
        if not isinstance(entry, dict):
            raise _fail(path, where, "expected a table")
        _unknown(path, entry, TRAIN_KEYS, where)
        if ("model" in entry) == ("models" in entry):
            raise _fail(path, where, "give exactly one of model = \"...\" or models = [...]")
        models = _str_list(path, f"{where}.models", entry.get("models", entry.get("model")))
        if "inputs" in entry and "input_sets" in entry:
            raise _fail(path, where, "give inputs or input_sets, not both")
        if "input_sets" in entry:
            sets = entry["input_sets"]
            if not isinstance(sets, list) or not sets:
                raise _fail(path, f"{where}.input_sets", "expected a list of input lists")
            input_sets = [_str_list(path, f"{where}.input_sets[{i}]", s) for i, s in enumerate(sets)]
        else:
            input_sets = [_str_list(path, f"{where}.inputs", entry["inputs"])] if "inputs" in entry else [[]]
        for i, names in enumerate(input_sets):
            for name in names:
                _check_input(path, f"{where}.inputs", name, AUDIO_FEATURES, corpus["dataset"] in PRECOMPUTED_DATASETS)
        if "options" in entry and "option_sets" in entry:
            raise _fail(path, where, "give options or option_sets, not both")
        option_sets = entry.get("option_sets", [entry.get("options", {})])
        if not isinstance(option_sets, list) or not all(isinstance(o, dict) for o in option_sets):
            raise _fail(path, f"{where}.option_sets", "expected a list of tables")
        seeds = _typed(path, f"{where}.seeds", entry.get("seeds", 3), int, "an integer")
        if seeds < 1:
            raise _fail(path, f"{where}.seeds", f"need at least one seed, got {seeds}")
        splits = _str_list(path, f"{where}.splits", entry.get("splits", corpus["splits"]))
        for i, s in enumerate(splits):
            _check_split(path, f"{where}.splits[{i}]", s)
            if s not in corpus["splits"]:
                raise _fail(path, f"{where}.splits[{i}]", f"split '{s}' is not one of corpus.splits ({', '.join(corpus['splits'])})")
        job_kernels = tuple(_str_list(path, f"{where}.kernels", entry["kernels"])) if "kernels" in entry else None
        for k in job_kernels or ():
            if k not in KERNEL_NAMES:
                raise _fail(path, f"{where}.kernels", f"unknown kernel '{k}' (known: {', '.join(KERNEL_NAMES)})")
        device = _typed(path, f"{where}.device", entry.get("device", "cpu"), str, "a string")
        for model in models:
            try:
                spec = get_model(model)
                for o, options in enumerate(option_sets):
                    spec.check_options(dict(options))
            except GenreError as exc:
                raise _fail(path, f"{where}.models" if "unknown model" in str(exc) else f"{where}.options", str(exc)) from None
            if job_kernels and not spec.uses_kernels:
                raise _fail(path, f"{where}.kernels", f"kernels apply to kernel models, not to '{model}'")
            for names, options, split in itertools.product(input_sets, option_sets, splits):
                jobs.append(TrainJob(model, tuple(names), dict(options), seeds, split, job_kernels, device))

    report = None
    if "report" in raw or jobs:
        report = dict(_table(path, raw, "report"))
        _unknown(path, report, REPORT_KEYS, "report")
        if report.pop("enabled", True) is False:
            report = None
    return Experiment(path=path, name=path.stem, description=description, corpus=corpus, audio=audio, text=text,
                      kernels=kernels, jobs=jobs, report=report)


def _calls(path, value, where: str, allowed: set[str]) -> list[dict]:
    if value is None:
        return []
    calls = [value] if isinstance(value, dict) else value
    if not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls):
        raise _fail(path, where, "expected a table or an array of tables")
    for i, call in enumerate(calls):
        _unknown(path, call, allowed, f"{where}[{i}]" if len(calls) > 1 or isinstance(value, list) else where)
    return [dict(c) for c in calls]


def _check_input(path, key, name: str, audio_features, precomputed: bool = False) -> None:
    modality, _, feature = name.partition("/")
    if modality not in MODALITIES or not feature:
        raise _fail(path, key, f"input '{name}' is not MODALITY/NAME with MODALITY one of {', '.join(MODALITIES)}")
    base = feature.split("-seq")[0]
    if modality == "audio" and not precomputed and feature not in audio_features and base not in audio_features:
        raise _fail(path, key, f"unknown audio feature '{feature}' in '{name}' (known: {', '.join(sorted(audio_features))})")


# ------------------------------------------------------------------------------------------- running
def run_experiment(exp: Experiment, *, data_home: str | Path | None = None, force: bool = False) -> StageResult:
    """Run the experiment's stages in order; a stage whose items partly failed (exit code 2) does not stop it."""
    from genrecli.pipeline.audio import extract_audio
    from genrecli.pipeline.evaluate import evaluate
    from genrecli.pipeline.ingest import ingest
    from genrecli.pipeline.kernels import compute_kernels
    from genrecli.pipeline.report import report
    from genrecli.pipeline.text import extract_text
    from genrecli.pipeline.train import train

    total = StageResult()
    c = exp.corpus
    data = exp.data

    def stage(label: str, result: StageResult) -> None:
        total.merge(result)
        state = "up to date" if not result.written and not result.failures else (
            f"{len(result.written)} written" + (f", {len(result.failures)} failed" if result.failures else ""))
        ui.info(f"[{exp.name}] {label}: {state}")

    stage("ingest", ingest(c["dataset"], root=c.get("root"), name=c.get("name"), splits=tuple(c["splits"]),
                           seed=c.get("seed", 0), limit=c.get("limit"), options={k: str(v) for k, v in (c.get("options") or {}).items()},
                           data_home=data_home, force=force))
    for call in exp.audio:
        stage(f"extract-audio {','.join(call['features'])}",
              extract_audio(data, **{**call, "features": tuple(call["features"])}, data_home=data_home, force=force))
    for call in exp.text:
        stage(f"extract-text {call['encoder']}", extract_text(data, **call, data_home=data_home, force=force))
    kernel_opts = dict(exp.kernels or {})
    if "kernels" in kernel_opts:
        kernel_opts["kernels"] = tuple(kernel_opts["kernels"])
    for split, inputs in exp.kernel_plan().items():
        stage(f"kernels {split}", compute_kernels(data, inputs=tuple(inputs), split=split, **kernel_opts,
                                                  data_home=data_home, force=force))
    for job in exp.jobs:
        label = f"train {job.model} {','.join(job.inputs) or '(all inputs)'} {job.split}" + (
            f" {job.options}" if job.options else "")
        stage(label, train(job.model, data, inputs=job.inputs or None, kernels=job.kernels, split=job.split,
                           seeds=job.seeds, options=dict(job.options), device=job.device, data_home=data_home, force=force))
    if exp.report is not None:
        _record(exp, data, data_home)
        stage("evaluate", evaluate(data, data_home=data_home, force=force))
        stage("report", report(data, data_home=data_home, force=force, **exp.report))
    ui.info(f"[{exp.name}] done: {len(total.written)} written, {len(total.up_to_date)} up to date, "
            f"{len(total.failures)} failed item(s)")
    return total


def _record(exp: Experiment, data: str, data_home) -> None:
    """Copy the experiment file to ``<data>/experiments/<stem>.toml`` (what the report lists); unchanged: no write."""
    from genrecli.layout import DatasetPaths
    from genrecli.pipeline.evaluate import write_text_atomic

    target = DatasetPaths.of(data, data_home).root / "experiments" / f"{exp.name}.toml"
    text = exp.path.read_text()
    if target.exists() and target.read_text() == text:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(target, text)


def recorded_experiments(root: Path) -> list[tuple[str, str, str]]:
    """(name, description, sha256[:12]) of the experiment files recorded under a dataset's folder."""
    out = []
    folder = root / "experiments"
    if not folder.is_dir():
        return out
    for f in sorted(folder.glob("*.toml")):
        try:
            description = tomllib.loads(f.read_text()).get("description", "")
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
            description = "(unreadable)"
        out.append((f.stem, str(description), store.file_sha256(f)[:12]))
    return out
