"""``genre``: the command line. It only parses arguments, calls :mod:`genrecli.pipeline` and prints.

Exit codes: 0 success; 1 usage or input error (one line on stderr, no traceback); 2 the stage ran but
some items failed (summary printed, failures recorded in the store).
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Annotated, Optional

import typer

try:  # recent typer vendors click as typer._click; older releases raise click's own exceptions
    from typer._click.exceptions import ClickException, UsageError as ClickUsageError
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException, UsageError as ClickUsageError

from genrecli import __version__, ui
from genrecli.errors import GenreError, UsageError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Help text is shown as typed: rich markup would turn `group:KEY:F` into an emoji and eat `[...]`.
    rich_markup_mode=None,
    help="Multi-modal music genre classification: DM2KMN and peer systems on staged HDF5 stores. "
    "The global options --data-home, --quiet and --verbose may also follow the command name.",
)
_globals = {"data_home": None, "quiet": False, "verbose": False}

DataOpt = Annotated[str, typer.Option("--data", "-d", help="dataset name under the data home")]
ForceOpt = Annotated[bool, typer.Option("--force", help="recompute even when the cached result is up to date")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto")]
ExecutorOpt = Annotated[str, typer.Option("--executor", help="where per-track work runs: local (worker processes here) or ray (actors of a Ray cluster; pip install 'genrecli[ray]')")]
AddressOpt = Annotated[Optional[str], typer.Option("--address", help="with --executor ray: the cluster's address (host:port, ray://host:port or auto); default: start Ray on this machine", show_default=False)]


def _csv(value: Optional[str]) -> Optional[tuple[str, ...]]:
    if value is None:
        return None
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _finish(result) -> None:
    """Print a failure summary and exit 2 when items failed."""
    if result.failures:
        ui.error(f"{len(result.failures)} item(s) failed; they are recorded in the store (see `genre info`)")
        for item, msg in list(result.failures.items())[:10]:
            print(f"  {item}: {msg}", file=sys.stderr)
        raise typer.Exit(2)


def command(name: str | None = None, *, uses_data_home: bool = True, **kw):
    """Register a command: GenreError -> one line + exit 1; a bug -> one line (traceback with --verbose) + exit 1.

    Every command also accepts the global options ``--data-home``, ``--quiet`` and ``--verbose`` after its
    name (``genre info --data x --data-home DIR``): they are added to the command's signature here, so click
    parses them like the command's own options (no guessing in ``sys.argv``), and given after the command
    they override the ones given before it. ``uses_data_home`` commands check the data home first.
    """

    def wrap(func):
        @functools.wraps(func)
        def inner(*args, **kwargs):
            try:
                _apply_globals(kwargs.pop("global_data_home"), kwargs.pop("global_quiet"), kwargs.pop("global_verbose"))
                if uses_data_home:
                    _check_data_home()
                return func(*args, **kwargs)
            except (typer.Exit, typer.Abort, ClickException):
                raise
            except GenreError as exc:
                ui.error(str(exc))
                raise typer.Exit(1) from None
            except KeyboardInterrupt:
                ui.error("interrupted; finished work is kept and the next run resumes")
                raise typer.Exit(1) from None
            except Exception as exc:  # noqa: BLE001 - a bug, not a user error: one line unless --verbose
                _internal_error(exc)
                raise typer.Exit(1) from None

        sig = inspect.signature(func, eval_str=True)
        params = [*sig.parameters.values(), *_GLOBAL_PARAMS]
        inner.__signature__ = sig.replace(parameters=params)
        inner.__annotations__ = {p.name: p.annotation for p in params}  # a copy: func's own stays as it is
        return app.command(name, **kw)(inner)

    return wrap


DataHomeOpt = Annotated[Optional[Path], typer.Option("--data-home", help="where datasets live (default $GENRE_DATA_HOME or ./data)", show_default=False)]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="only warnings and errors")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="more detail, tracebacks of internal errors")]
_GLOBAL_PARAMS = [
    inspect.Parameter("global_data_home", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=DataHomeOpt),
    inspect.Parameter("global_quiet", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=QuietOpt),
    inspect.Parameter("global_verbose", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=VerboseOpt),
]


def _apply_globals(data_home: Optional[Path], quiet: bool, verbose: bool) -> None:
    """Global options given after the command name override those given before it."""
    if data_home is not None:
        _globals["data_home"] = data_home
    _globals["quiet"] = _globals["quiet"] or quiet
    _globals["verbose"] = _globals["verbose"] or verbose
    ui.configure(quiet=_globals["quiet"], verbose=_globals["verbose"])


def _check_data_home() -> None:
    """The data home (``--data-home``, else ``$GENRE_DATA_HOME``, else ./data) must be a folder or creatable."""
    from genrecli.layout import DATA_HOME_ENV, data_home

    home = data_home(_globals["data_home"])
    source = "--data-home" if _globals["data_home"] is not None else (f"${DATA_HOME_ENV}" if os.environ.get(DATA_HOME_ENV) else "data home")
    for path in (home, *home.parents):
        if path.is_dir():
            return
        if path.exists() or path.is_symlink():
            what = "is not a directory" if path == home else f"cannot be created: {path} is not a directory"
            raise GenreError(f"{source} {home}: {what}")


def _internal_error(exc: BaseException) -> None:
    """One line for a bug in genre (the traceback too with --verbose); names the stage and track when known."""
    from genrecli.pipeline.features import TrackInternalError

    where = ""
    if isinstance(exc, TrackInternalError):
        where = f" in {exc.stage} on {exc.track_id}"
        exc = exc.__cause__ or exc
    if _globals["verbose"]:
        traceback.print_exception(exc)
    ui.error(f"internal error{where}: {type(exc).__name__}: {_one_line(exc)} (rerun with --verbose for the traceback)")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _show_version(value: bool) -> None:
    if value:
        print(f"genre {__version__}")
        raise typer.Exit(0)


@app.callback()
def main_options(
    ctx: typer.Context,
    data_home: DataHomeOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    version: Annotated[bool, typer.Option("--version", help="print the version and exit", is_eager=True, callback=_show_version)] = False,
) -> None:
    """Global options; --data-home, --quiet and --verbose may also follow the command name."""
    _globals.update(data_home=data_home, quiet=quiet, verbose=verbose)
    ui.configure(quiet=quiet, verbose=verbose)
    _refuse_data_parallel(ctx.invoked_subcommand)


# Under torchrun every rank runs the same command line. Only `genre train` knows to split its work and to let
# rank 0 alone write; any other stage would run N times and have N writers on one HDF5 store.
DATA_PARALLEL_COMMANDS = frozenset({"train"})


def _refuse_data_parallel(command_name: str | None) -> None:
    """One line and exit 1 when a command other than ``train`` is started by torchrun with several processes
    (read from ``WORLD_SIZE`` directly: importing :mod:`genrecli.distributed` would import torch)."""
    world = os.environ.get("WORLD_SIZE", "1").strip()
    if command_name is None or command_name in DATA_PARALLEL_COMMANDS or world in ("", "1", "0"):
        return
    ui.error(f"genre {command_name} under torchrun (WORLD_SIZE={world}): only `genre train` runs data-parallel; "
             f"run `genre {command_name}` as one process")
    raise typer.Exit(1)


@command("ingest")
def ingest_cmd(
    dataset: Annotated[str, typer.Argument(help="corpus loader: see `genre list datasets`")],
    root: Annotated[Optional[Path], typer.Option("--root", help="folder holding the corpus")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="dataset name (default: the loader's name)")] = None,
    split: Annotated[Optional[list[str]], typer.Option("--split", help="split spec(s): standard, random:F, group:KEY:F, kfold:K[:R], groupkfold:KEY:K[:R] (R repeats), file:DIR")] = None,
    seed: Annotated[int, typer.Option("--seed", help="seed of the splits and of --limit")] = 0,
    limit: Annotated[Optional[int], typer.Option("--limit", help="keep a stratified sample of N tracks")] = None,
    option: Annotated[Optional[list[str]], typer.Option("--option", "-o", help="loader option KEY=VALUE (repeatable; see data/README.md)")] = None,
    force: ForceOpt = False,
) -> None:
    """List a corpus, check and checksum its files, write the manifest and the splits."""
    from genrecli.layout import check_name
    from genrecli.pipeline.ingest import ingest

    if name is not None:
        check_name(name, "--name")
    _at_least(limit, 1, "--limit")
    _at_least(seed, 0, "--seed")
    specs = tuple(split) if split else ("standard",)
    _finish(ingest(dataset, root=root, name=name, splits=specs, seed=seed, limit=limit, options=_options(option, as_text=True),
                   data_home=_globals["data_home"], force=force))


@command("split")
def split_cmd(
    data: DataOpt,
    spec: Annotated[str, typer.Argument(help="split spec: standard, random:F[:V], group:KEY:F[:V], kfold:K[:R], groupkfold:KEY:K[:R], given:KEY, file:DIR")],
    seed: Annotated[int, typer.Option("--seed", help="seed of the split")] = 0,
    force: Annotated[bool, typer.Option("--force", help="replace a stored split of that name whose parts differ")] = False,
) -> None:
    """Add a split to a dataset's manifest (splits are written only here and by `genre ingest --split`)."""
    from genrecli.pipeline.ingest import split

    _finish(split(data, spec, seed=seed, data_home=_globals["data_home"], force=force))


@command("extract-audio")
def extract_audio_cmd(
    data: DataOpt,
    features: Annotated[str, typer.Option("--features", help="comma-separated audio features (see `genre list features`)")] = "mfcc",
    max_seconds: Annotated[float, typer.Option("--max-seconds", help="audio analysed per track (from the start)")] = 30.0,
    soundfont: Annotated[Optional[Path], typer.Option("--soundfont", help="General-MIDI .sf2 for MIDI rendering")] = None,
    weights: Annotated[Optional[list[str]], typer.Option("--weights", help="FEATURE=PATH: local weights (vggish=vggish.pth, mfcc-image=resnet-101 dir); PATH alone when one feature is asked")] = None,
    option: Annotated[Optional[list[str]], typer.Option("--option", "-o", help="FEATURE.KEY=VALUE feature option (repeatable)")] = None,
    jobs: Annotated[Optional[int], typer.Option("--jobs", "-j", help="worker processes (default 1), or Ray actors with --executor ray (default: one per CPU of the cluster)", show_default=False)] = None,
    executor: ExecutorOpt = "local",
    address: AddressOpt = None,
    shard: Annotated[Optional[str], typer.Option("--shard", help="k/N: compute every N-th track from the k-th into features.k-of-N.h5 (no engine needed: one job per shard under a batch scheduler)")] = None,
    device: DeviceOpt = "cpu",
    force: ForceOpt = False,
    track_timeout: Annotated[Optional[float], typer.Option("--track-timeout", metavar="SECONDS", help="a track running longer fails, recorded like a bad input (default: 600)", show_default=False)] = None,
    track_memory: Annotated[Optional[str], typer.Option("--track-memory", metavar="SIZE", help="a track whose worker holds more resident memory fails, e.g. 4G or 512M (default: min(8G, half the RAM))", show_default=False)] = None,
) -> None:
    """Decode or synthesise audio and compute audio features into features.h5:/audio/<feature>."""
    from genrecli.pipeline.audio import extract_audio
    from genrecli.pipeline.features import parse_shard
    from genrecli.pipeline.workers import parse_size

    _at_least(jobs, 1, "--jobs")
    where = _executor(executor, address)
    _positive_seconds(max_seconds, "--max-seconds")
    if track_timeout is not None:
        _positive_seconds(track_timeout, "--track-timeout")
    memory = None if track_memory is None else parse_size(track_memory, "--track-memory")
    parse_shard(shard)
    if soundfont is not None and not soundfont.is_file():
        raise UsageError(f"--soundfont {soundfont}: no such file")
    _check_device(device)
    names = _csv(features)
    if not names:
        raise UsageError("--features: give at least one audio feature (see `genre list features`)")
    _finish(extract_audio(data, features=names, options=_feature_options(names, weights, option), max_seconds=max_seconds,
                          soundfont=str(soundfont) if soundfont else None, jobs=jobs, shard=shard, device=device,
                          data_home=_globals["data_home"], force=force, track_timeout=track_timeout,
                          track_memory=memory, executor=where))



def _executor(kind: str, address: Optional[str]):
    """The checked :class:`~genrecli.pipeline.executors.Executor` (Ray installed when asked for), before any work."""
    from genrecli.pipeline.executors import Executor, check_available

    where = Executor(kind, address)
    check_available(where)
    return where


def _feature_options(names: tuple[str, ...], weights: Optional[list[str]], pairs: Optional[list[str]]) -> dict:
    """``--weights`` and ``-o FEATURE.KEY=VALUE`` as ``{feature: {key: value}}``."""
    out: dict[str, dict] = {}
    for item in weights or []:
        feature, sep, path = item.partition("=")
        if not sep:
            if len(names) != 1:
                raise GenreError(f"--weights {item}: say which feature it is for, as FEATURE=PATH")
            feature, path = names[0], item
        out.setdefault(feature, {})["weights"] = path
    for key, value in _options(pairs).items():
        feature, sep, opt = key.partition(".")
        if not sep:
            raise GenreError(f"--option {key}={value}: expected FEATURE.KEY=VALUE, e.g. musicnn.model=MSD_musicnn")
        out.setdefault(feature, {})[opt] = value
    return out


@command("extract-text")
def extract_text_cmd(
    data: DataOpt,
    encoder: Annotated[str, typer.Option("--encoder", help="minilm, tfidf, or a local Hugging Face model directory")] = "minilm",
    keep_metadata: Annotated[bool, typer.Option("--keep-metadata", help="keep composer/title/editor records (they leak the label)")] = False,
    max_clips: Annotated[Optional[int], typer.Option("--max-clips", help="at most N evenly spaced 512-token clips per text (default: all)")] = None,
    clip_tokens: Annotated[int, typer.Option("--clip-tokens", help="tokens per clip, special tokens included")] = 512,
    pooling: Annotated[str, typer.Option("--pooling", help="cls or mean, per clip; clips are max-pooled")] = "cls",
    batch_size: Annotated[int, typer.Option("--batch-size")] = 16,
    sequence: Annotated[bool, typer.Option("--sequence", help="store the token outputs (T x d) in text/<encoder>-seq instead of pooled vectors")] = False,
    max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", help="tokens per text with --sequence (default: --clip-tokens)")] = None,
    runtime: Annotated[str, typer.Option("--runtime", help="transformer arithmetic: auto (bf16 where its matmuls are fast: AMX CPUs, AVX512-BF16 CPUs where a probe product is faster, CUDA; else fp32), bf16 (2-3x fp32 where its matmuls are fast, cosine >= 0.9999 to fp32, far slower elsewhere), int8 (CPU: oneDNN int8 matmuls, 3.1x fp32 on a VNNI EPYC, cosine >= 0.995 to fp32; asked for, never auto) or fp32 (the reference)")] = "auto",
    cpu_ops: Annotated[str, typer.Option("--cpu-ops", help="how the transformer's layers compute on the CPU: auto (fused for bf16 on CPUs without AMX, stock elsewhere), fused (genrecli's blocked attention and linear+GELU: ~15-19% faster bf16 there, same values to bf16 rounding) or stock (transformers' own)")] = "auto",
    text_format: Annotated[str, typer.Option("--text-format", help="how scores are read: raw (each file's own syntax), kern, musicxml or tokens (one encoding for every format; group text/<encoder>-<format>); auto: raw, or tokens when the scores come in several formats")] = "auto",
    jobs: Annotated[Optional[int], typer.Option("--jobs", help="worker processes converting scores to a canonical --text-format (music21: seconds per piece; default 1), or Ray actors with --executor ray (default: one per CPU of the cluster)", show_default=False)] = None,
    executor: ExecutorOpt = "local",
    address: AddressOpt = None,
    device: DeviceOpt = "cpu",
    force: ForceOpt = False,
) -> None:
    """Convert kern/MusicXML/ABC/lyrics to text (cached) and encode it into features.h5:/text/<encoder>[-<format>]."""
    from genrecli.pipeline.text import extract_text
    from genrecli.text.symbolic import TEXT_FORMAT_CHOICES

    _at_least(max_clips, 1, "--max-clips")
    _at_least(clip_tokens, 3, "--clip-tokens")
    _at_least(batch_size, 1, "--batch-size")
    _at_least(max_tokens, 1, "--max-tokens")
    _one_of(pooling, ("cls", "mean"), "--pooling")
    _one_of(runtime, ("auto", "fp32", "bf16", "int8"), "--runtime")
    _one_of(cpu_ops, ("auto", "stock", "fused"), "--cpu-ops")
    _one_of(text_format, TEXT_FORMAT_CHOICES, "--text-format")
    _at_least(jobs, 1, "--jobs")
    where = _executor(executor, address)
    _check_device(device)
    _finish(extract_text(data, encoder=encoder, keep_metadata=keep_metadata, device=device, clip_tokens=clip_tokens, pooling=pooling,
                         max_clips=max_clips, batch_size=batch_size, sequence=sequence, max_tokens=max_tokens, runtime=runtime,
                         cpu_ops=cpu_ops, text_format=text_format, jobs=jobs, executor=where,
                         data_home=_globals["data_home"], force=force))


@command("extract-image")
def extract_image_cmd(
    data: DataOpt,
    backbone: Annotated[str, typer.Option("--backbone", help="efficientnet-lite0 (bundled) or a local Hugging Face ResNet directory (e.g. resnet-101)")] = "efficientnet-lite0",
    batch_size: Annotated[int, typer.Option("--batch-size", help="images per forward pass")] = 32,
    device: DeviceOpt = "cpu",
    force: ForceOpt = False,
) -> None:
    """Embed each track's cover image with a frozen ImageNet backbone into features.h5:/image/<backbone>."""
    from genrecli.pipeline.image import extract_image

    _at_least(batch_size, 1, "--batch-size")
    _check_device(device)
    _finish(extract_image(data, backbone=backbone, batch_size=batch_size, device=device,
                          data_home=_globals["data_home"], force=force))


@command("kernels")
def kernels_cmd(
    data: DataOpt,
    inputs: Annotated[Optional[str], typer.Option("--inputs", help="feature groups, e.g. audio/mfcc,text/minilm (default: all)")] = None,
    kernels: Annotated[str, typer.Option("--kernels", help="comma-separated elementary kernels (`genre list kernels`)")] = "linear,poly2,rbf,hist",
    split: Annotated[str, typer.Option("--split", help="split name or spec (default: the dataset's standard split)")] = "standard",
    landmarks: Annotated[str, typer.Option("--landmarks", help="Nystrom landmarks of the RBF map: all or N")] = "all",
    energy: Annotated[float, typer.Option("--energy", help="eigen-energy kept by kernel PCA maps")] = 0.99,
    levels: Annotated[int, typer.Option("--levels", help="quantization levels Q of the histogram-intersection map")] = 10,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: DeviceOpt = "cpu",
    force: ForceOpt = False,
) -> None:
    """Elementary Gram matrices and explicit maps, fitted on the training part of each fold."""
    from genrecli.pipeline.kernels import compute_kernels

    lm = landmarks if landmarks == "all" else _positive_int(landmarks, "--landmarks")
    if not 0 < energy <= 1:
        raise UsageError(f"--energy must be in (0, 1] (got {energy:g})")
    _at_least(levels, 1, "--levels")
    _at_least(seed, 0, "--seed")
    _check_device(device)
    _finish(compute_kernels(data, inputs=_csv(inputs), kernels=_csv(kernels), split=split, landmarks=lm, energy=energy,
                            levels=levels, seed=seed, device=device, data_home=_globals["data_home"], force=force))


def _at_least(value: Optional[int], low: int, flag: str) -> None:
    """Reject an integer option below ``low`` (None: not given, nothing to check)."""
    if value is not None and value < low:
        raise UsageError(f"{flag} must be >= {low} (got {value})")


def _positive_seconds(value: float, flag: str) -> None:
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"{flag} must be a positive, finite number of seconds (got {value:g})")


def _one_of(value: str, allowed: tuple[str, ...], flag: str) -> None:
    if value not in allowed:
        raise UsageError(f"{flag} {value}: expected one of {', '.join(allowed)}")


_DEVICE = re.compile(r"(cpu|auto|cuda(:\d+)?)", re.IGNORECASE)


def _check_device(name: str) -> None:
    """``--device``: cpu, cuda, cuda:N or auto, and CUDA present when asked (CUDA is not touched for cpu)."""
    if not _DEVICE.fullmatch(name):
        raise UsageError(f"--device {name}: expected cpu, cuda, cuda:N or auto")
    from genrecli.device import resolve_device

    device = resolve_device(name)
    if device.type == "cuda" and device.index is not None:
        import torch

        if device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def _options(pairs: Optional[list[str]], *, as_text: bool = False) -> dict:
    """``KEY=VALUE`` pairs; values are parsed as JSON (numbers, lists, true) unless ``as_text``."""
    out = {}
    for item in pairs or []:
        if "=" not in item:
            raise GenreError(f"--option {item}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        try:
            out[key] = value if as_text else json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


@command("train")
def train_cmd(
    data: DataOpt,
    model: Annotated[str, typer.Option("--model", "-m", help="see `genre list models`")] = "svm",
    inputs: Annotated[Optional[str], typer.Option("--inputs", help="feature groups (default: every one the model can take)")] = None,
    kernels: Annotated[Optional[str], typer.Option("--kernels", help="kernel models: linear,poly2,rbf,hist (default: all four)")] = None,
    split: Annotated[str, typer.Option("--split")] = "standard",
    seeds: Annotated[int, typer.Option("--seeds", help="independent runs per fold")] = 3,
    option: Annotated[Optional[list[str]], typer.Option("--option", "-o", help="model option KEY=VALUE (repeatable; unknown keys are refused)")] = None,
    landmarks: Annotated[Optional[str], typer.Option("--landmarks", help="DM2KMN: landmarks of the intermediate maps, all or N (memory linear in n for fixed N)")] = None,
    device: DeviceOpt = "cpu",
    force: ForceOpt = False,
) -> None:
    """Train a model on features for every fold and seed; save artifacts, config and test predictions under runs/."""
    from genrecli.pipeline.train import train

    _check_device(device)
    _at_least(seeds, 1, "--seeds")
    options = _options(option)
    if landmarks is not None:
        if not model.startswith("dm2kmn"):
            raise GenreError(f"--landmarks applies to the dm2kmn models, not to '{model}'")
        options["landmarks"] = landmarks if landmarks == "all" else _positive_int(landmarks, "--landmarks")
    _finish(train(model, data, inputs=_csv(inputs), kernels=_csv(kernels), split=split, seeds=seeds, options=options,
                  device=device, data_home=_globals["data_home"], force=force))


def _positive_int(text: str, flag: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise GenreError(f"{flag} {text}: expected 'all' or a positive integer")
    return int(text)


@command("evaluate")
def evaluate_cmd(
    data: DataOpt,
    run: Annotated[Optional[str], typer.Option("--run", help="one run id or run directory (default: all runs of --data); a run of another dataset is applied to --data")] = None,
    device: DeviceOpt = "cpu",
    force: ForceOpt = False,
) -> None:
    """Metrics of the runs (mean ± std over folds and seeds), or of a run of another corpus applied to --data."""
    from genrecli.layout import DatasetPaths
    from genrecli.pipeline.evaluate import evaluate
    from genrecli.pipeline.predict import evaluate_on, find_run

    _check_device(device)
    home = _globals["data_home"]
    own_runs = DatasetPaths.of(data, home).runs
    if run is not None and not (own_runs / run).is_dir():
        run_dir = find_run(run, data_home=home)
        if run_dir.resolve().parent != own_runs.resolve():  # a run of another corpus, applied to --data
            _finish(evaluate_on(run_dir, data, device=device, data_home=home, force=force))
            return
        run = run_dir.name
    _finish(evaluate(data, run=run, data_home=home, force=force))


@command("predict")
def predict_cmd(
    files: Annotated[list[str], typer.Argument(help="audio (wav/flac/mp3/au), MIDI, kern/MusicXML/ABC scores, or lyrics .txt files")],
    run: Annotated[str, typer.Option("--run", help="a run id (looked up under the data home) or a run directory")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="genres shown per file")] = 3,
    fold: Annotated[Optional[int], typer.Option("--fold", help="use the model of this fold only (default: all, averaged)")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="use the model of this seed only (default: all, averaged)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    device: DeviceOpt = "cpu",
) -> None:
    """Genres of new files: the run's exact features, its models, top-k genres with scores."""
    from genrecli.pipeline.predict import predict

    _check_device(device)
    _at_least(top_k, 1, "--top-k")
    _at_least(fold, 0, "--fold")
    _at_least(seed, 0, "--seed")
    results, failures = predict(run, files, top_k=top_k, fold=fold, seed=seed, device=device, data_home=_globals["data_home"])
    if as_json:
        print(json.dumps({"predictions": results, "failures": failures}, indent=2))
    else:
        for item in results:
            top = ", ".join(f"{t['label']} {t['score']:.3f}" for t in item["top"])
            print(f"{item['file']}\t{top}")
    for path, message in failures.items():
        ui.error(message if path in message else f"{path}: {message}")
    if failures:
        raise typer.Exit(2 if results else 1)


@command("report")
def report_cmd(
    data: DataOpt,
    resamples: Annotated[int, typer.Option("--resamples", help="bootstrap resamples of the test items")] = 2000,
    level: Annotated[float, typer.Option("--level", help="confidence level of the intervals")] = 0.95,
    test: Annotated[str, typer.Option("--test", help="paired test against the best system: bootstrap or mcnemar")] = "bootstrap",
    metric: Annotated[str, typer.Option("--metric", help="primary metric (best system, paired tests): accuracy or macro_f1")] = "accuracy",
    alpha: Annotated[float, typer.Option("--alpha", help="significance level of the marks")] = 0.05,
    unit: Annotated[str, typer.Option("--unit", help="bootstrap unit: item, or group (the split's group key)")] = "item",
    seed: Annotated[int, typer.Option("--seed", help="seed of the bootstrap")] = 0,
    force: ForceOpt = False,
) -> None:
    """Write report/results.md, results.csv, index.html and figures, and print the tables."""
    from genrecli.pipeline.report import report

    _finish(report(data, data_home=_globals["data_home"], force=force, resamples=resamples, level=level, test=test,
                   metric=metric, alpha=alpha, unit=unit, seed=seed))


@command("run")
def run_cmd(
    experiment: Annotated[Path, typer.Argument(help="an experiment file (TOML; see experiments/*.toml)")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="validate the file and list the stages, run nothing")] = False,
    force: ForceOpt = False,
) -> None:
    """Run a declared grid (corpus, splits, features, models, options, seeds) stage by stage, cache-aware."""
    from genrecli.pipeline.experiment import load_experiment, run_experiment

    exp = load_experiment(experiment)
    if dry_run:
        for line in exp.plan():
            print(line)
        return
    _finish(run_experiment(exp, data_home=_globals["data_home"], force=force))


@command("validate")
def validate_cmd(data: DataOpt) -> None:
    """Re-check every file of a dataset against its recorded checksum: missing, changed, unreadable."""
    from genrecli.pipeline.validate import validate

    _finish(validate(data, data_home=_globals["data_home"]))


@command("merge")
def merge_cmd(data: DataOpt) -> None:
    """Join the shard stores features.k-of-N.h5 into features.h5."""
    from genrecli.layout import DatasetPaths
    from genrecli.pipeline.features import merge_shards

    groups = merge_shards(DatasetPaths.of(data, _globals["data_home"]))
    ui.info(f"merged {', '.join(groups)}")


@command("list", uses_data_home=False)
def list_cmd(what: Annotated[str, typer.Argument(help="datasets, features, encoders, models or kernels")]) -> None:
    """List the registered datasets, features, encoders, models or kernels."""
    from genrecli.catalog import catalog

    for line in catalog(what):
        print(line)


@command("info")
def info_cmd(data: DataOpt) -> None:
    """What is cached for a dataset (groups, sizes, parameters) and which items failed."""
    from genrecli.catalog import dataset_info

    problems: list[str] = []
    for line in dataset_info(data, data_home=_globals["data_home"], problems=problems):
        print(line)
    for problem in problems:  # the rest is listed; an unreadable store still makes it exit 1
        ui.error(problem)
    if problems:
        raise typer.Exit(1)


def main() -> None:
    try:
        code = app(standalone_mode=False)
    except ClickUsageError as exc:
        message = exc.format_message().strip()
        if type(exc).__name__ == "NoArgsIsHelpError" or not message:  # bare `genre`: the help, not an error
            if message:
                print(message)
            sys.exit(0)
        ui.error(message.splitlines()[0] + (f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""))
        sys.exit(1)
    except typer.Abort:
        ui.error("aborted")
        sys.exit(1)
    except ClickException as exc:
        ui.error(exc.format_message())
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
