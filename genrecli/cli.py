"""``genre``: the command line. It only parses arguments, calls :mod:`genrecli.pipeline` and prints.

Exit codes: 0 success; 1 usage or input error (one line on stderr, no traceback); 2 the stage ran but
some items failed (summary printed, failures recorded in the store).
"""

from __future__ import annotations

import functools
import json
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
from genrecli.errors import GenreError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Multi-modal music genre classification: DM2KMN and peer systems on staged HDF5 stores.",
)
_globals = {"data_home": None, "verbose": False}

DataOpt = Annotated[str, typer.Option("--data", "-d", help="dataset name under the data home")]
ForceOpt = Annotated[bool, typer.Option("--force", help="recompute even when the cached result is up to date")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto")]


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


def command(name: str | None = None, **kw):
    """Register a command that turns GenreError into one line + exit 1, and unexpected errors likewise."""

    def wrap(func):
        @functools.wraps(func)
        def inner(*args, **kwargs):
            try:
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
                if _globals["verbose"]:
                    traceback.print_exc()
                ui.error(f"internal error: {type(exc).__name__}: {exc} (rerun with --verbose for the traceback)")
                raise typer.Exit(1) from None

        return app.command(name, **kw)(inner)

    return wrap


@app.callback()
def main_options(
    data_home: Annotated[Optional[Path], typer.Option("--data-home", help="where datasets live (default $GENRE_DATA_HOME or ./data)")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="only warnings and errors")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="more detail, tracebacks of internal errors")] = False,
    version: Annotated[bool, typer.Option("--version", help="print the version and exit")] = False,
) -> None:
    if version:
        print(f"genre {__version__}")
        raise typer.Exit(0)
    _globals.update(data_home=data_home, verbose=verbose)
    ui.configure(quiet=quiet, verbose=verbose)


@command("ingest")
def ingest_cmd(
    dataset: Annotated[str, typer.Argument(help="corpus loader: see `genre list datasets`")],
    root: Annotated[Optional[Path], typer.Option("--root", help="folder holding the corpus")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="dataset name (default: the loader's name)")] = None,
    split: Annotated[Optional[list[str]], typer.Option("--split", help="split spec(s): standard, random:F, group:KEY:F, kfold:K, groupkfold:KEY:K, file:DIR")] = None,
    seed: Annotated[int, typer.Option("--seed", help="seed of the splits and of --limit")] = 0,
    limit: Annotated[Optional[int], typer.Option("--limit", help="keep a stratified sample of N tracks")] = None,
    option: Annotated[Optional[list[str]], typer.Option("--option", "-o", help="loader option KEY=VALUE (repeatable; see data/README.md)")] = None,
    force: ForceOpt = False,
) -> None:
    """List a corpus, check and checksum its files, write the manifest and the splits."""
    from genrecli.pipeline.ingest import ingest

    specs = tuple(split) if split else ("standard",)
    _finish(ingest(dataset, root=root, name=name, splits=specs, seed=seed, limit=limit, options=_options(option, as_text=True),
                   data_home=_globals["data_home"], force=force))


@command("extract-audio")
def extract_audio_cmd(
    data: DataOpt,
    features: Annotated[str, typer.Option("--features", help="comma-separated audio features (see `genre list features`)")] = "mfcc",
    max_seconds: Annotated[float, typer.Option("--max-seconds", help="audio analysed per track (from the start)")] = 30.0,
    soundfont: Annotated[Optional[Path], typer.Option("--soundfont", help="General-MIDI .sf2 for MIDI rendering")] = None,
    weights: Annotated[Optional[list[str]], typer.Option("--weights", help="FEATURE=PATH: local weights (vggish=vggish.pth, mfcc-image=resnet-101 dir); PATH alone when one feature is asked")] = None,
    option: Annotated[Optional[list[str]], typer.Option("--option", "-o", help="FEATURE.KEY=VALUE feature option (repeatable)")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="worker processes")] = 1,
    shard: Annotated[Optional[str], typer.Option("--shard", help="k/N: compute every N-th track from the k-th into features.k-of-N.h5")] = None,
    device: DeviceOpt = "cpu",
    force: ForceOpt = False,
) -> None:
    """Decode or synthesise audio and compute audio features into features.h5:/audio/<feature>."""
    from genrecli.device import resolve_device
    from genrecli.pipeline.audio import extract_audio

    resolve_device(device)
    names = _csv(features)
    _finish(extract_audio(data, features=names, options=_feature_options(names, weights, option), max_seconds=max_seconds,
                          soundfont=str(soundfont) if soundfont else None, jobs=jobs, shard=shard, device=device,
                          data_home=_globals["data_home"], force=force))


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
    device: DeviceOpt = "cpu",
    force: ForceOpt = False,
) -> None:
    """Convert kern/MusicXML/ABC/lyrics to text (cached) and encode it into features.h5:/text/<encoder>."""
    from genrecli.pipeline.text import extract_text

    _finish(extract_text(data, encoder=encoder, keep_metadata=keep_metadata, device=device, clip_tokens=clip_tokens, pooling=pooling,
                         max_clips=max_clips, batch_size=batch_size, data_home=_globals["data_home"], force=force))


@command("kernels")
def kernels_cmd(
    data: DataOpt,
    inputs: Annotated[Optional[str], typer.Option("--inputs", help="feature groups, e.g. audio/mfcc,text/minilm (default: all)")] = None,
    kernels: Annotated[str, typer.Option("--kernels", help="linear,poly2,rbf,hist")] = "linear,poly2,rbf,hist",
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
    _finish(compute_kernels(data, inputs=_csv(inputs), kernels=_csv(kernels), split=split, landmarks=lm, energy=energy,
                            levels=levels, seed=seed, device=device, data_home=_globals["data_home"], force=force))


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
    inputs: Annotated[Optional[str], typer.Option("--inputs", help="feature groups (default: all)")] = None,
    kernels: Annotated[str, typer.Option("--kernels")] = "linear,poly2,rbf,hist",
    split: Annotated[str, typer.Option("--split")] = "standard",
    seeds: Annotated[int, typer.Option("--seeds", help="independent runs per fold")] = 3,
    option: Annotated[Optional[list[str]], typer.Option("--option", "-o", help="model option KEY=VALUE (repeatable)")] = None,
    landmarks: Annotated[Optional[str], typer.Option("--landmarks", help="DM2KMN: landmarks of the intermediate maps, all or N (memory linear in n for fixed N)")] = None,
    device: DeviceOpt = "cpu",
    force: ForceOpt = False,
) -> None:
    """Train a model on every fold and seed; save models, config and test predictions under runs/."""
    from genrecli.device import resolve_device
    from genrecli.pipeline.train import train

    resolve_device(device)
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
    run: Annotated[Optional[str], typer.Option("--run", help="one run id (default: all runs)")] = None,
    force: ForceOpt = False,
) -> None:
    """Accuracy, macro P/R/F1 and confusion matrices of the runs (mean ± std over folds and seeds)."""
    from genrecli.pipeline.evaluate import evaluate

    _finish(evaluate(data, run=run, data_home=_globals["data_home"], force=force))


@command("report")
def report_cmd(data: DataOpt, force: ForceOpt = False) -> None:
    """Write report/results.md, report/index.html and figures, and print the tables."""
    from genrecli.pipeline.report import report

    _finish(report(data, data_home=_globals["data_home"], force=force))


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


@command("list")
def list_cmd(what: Annotated[str, typer.Argument(help="datasets, features, encoders, models or kernels")]) -> None:
    """List the registered datasets, features, encoders, models or kernels."""
    from genrecli.catalog import catalog

    for line in catalog(what):
        print(line)


@command("info")
def info_cmd(data: DataOpt) -> None:
    """What is cached for a dataset (groups, sizes, parameters) and which items failed."""
    from genrecli.catalog import dataset_info

    for line in dataset_info(data, data_home=_globals["data_home"]):
        print(line)


def main() -> None:
    try:
        code = app(standalone_mode=False)
    except ClickUsageError as exc:
        message = exc.format_message().strip()
        if not message:  # bare `genre`: help was printed, which is not an error
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
