"""Where a dataset's stores live under the data home (see DESIGN.md)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

DATA_HOME_ENV = "GENRE_DATA_HOME"


def data_home(explicit: str | os.PathLike | None = None) -> Path:
    """``--data-home``, else ``$GENRE_DATA_HOME``, else ``./data``."""
    return Path(explicit or os.environ.get(DATA_HOME_ENV) or "data").expanduser()


@dataclasses.dataclass(frozen=True)
class DatasetPaths:
    root: Path

    @classmethod
    def of(cls, name: str, home: str | os.PathLike | None = None) -> "DatasetPaths":
        return cls(data_home(home) / name)

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
