"""Where a dataset's stores live under the data home (see DESIGN.md)."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from genrecli.errors import UsageError

DATA_HOME_ENV = "GENRE_DATA_HOME"
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")


def check_name(name: str, what: str = "dataset name") -> str:
    """A dataset name is a plain name (letters, digits, ``-_.``, not starting with a dot), so that
    ``<data-home>/<name>`` stays inside the data home; ``what`` names it in the error (``--name``)."""
    if not _PLAIN_NAME.fullmatch(name):
        raise UsageError(
            f"{what} {name!r}: a dataset name is a plain name (letters, digits, '-', '_', '.', not starting with a dot), "
            "not a path"
        )
    return name


def data_home(explicit: str | os.PathLike | None = None) -> Path:
    """``--data-home``, else ``$GENRE_DATA_HOME``, else ``./data``."""
    return Path(explicit or os.environ.get(DATA_HOME_ENV) or "data").expanduser()


@dataclasses.dataclass(frozen=True)
class DatasetPaths:
    root: Path

    @classmethod
    def of(cls, name: str, home: str | os.PathLike | None = None) -> "DatasetPaths":
        return cls(data_home(home) / check_name(name))

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.h5"

    def features(self, shard: tuple[int, int] | None = None) -> Path:
        if shard is None:
            return self.root / "features.h5"
        return self.root / f"features.{shard[0]}-of-{shard[1]}.h5"

    @property
    def kernels(self) -> Path:
        return self.root / "kernels.h5"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def partial(self) -> Path:
        """Checkpoints of unfinished per-track stages."""
        return self.root / ".partial"
