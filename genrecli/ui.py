"""Console output of the stages: messages on stderr, rich progress bars on a TTY, quiet mode.

Library code calls :func:`info`, :func:`warn` and :func:`progress`; the CLI configures verbosity. Used as
a library, ``genrecli`` prints info lines only when :func:`configure` is called with ``quiet=False``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

_state = {"quiet": True, "verbose": False}
_console = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


def configure(*, quiet: bool = False, verbose: bool = False) -> None:
    _state.update(quiet=quiet, verbose=verbose)


def info(message: str) -> None:
    if not _state["quiet"]:
        _console.print(message, markup=False)


def debug(message: str) -> None:
    if _state["verbose"] and not _state["quiet"]:
        _console.print(message, markup=False, style="dim")


def warn(message: str) -> None:
    """Always shown (also when quiet): a track or file that failed, one line."""
    _console.print(f"warning: {message}", markup=False, style="yellow")


def error(message: str) -> None:
    _console.print(f"error: {message}", markup=False, style="bold red")


@contextlib.contextmanager
def progress(total: int, description: str) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(k)``; draws a bar only on an interactive terminal and when not quiet."""
    if _state["quiet"] or not sys.stderr.isatty() or total <= 0:
        yield lambda k=1: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=_console, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda k=1: bar.advance(task, k)
