"""The stages of ``genre``, callable from Python: each reads and writes the stores of one dataset."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class StageResult:
    """What a stage did: groups written, groups already up to date, and per-item failures."""

    written: list[str] = dataclasses.field(default_factory=list)
    up_to_date: list[str] = dataclasses.field(default_factory=list)
    failures: dict[str, str] = dataclasses.field(default_factory=dict)  # item -> one-line message

    @property
    def exit_code(self) -> int:
        return 2 if self.failures else 0

    def merge(self, other: "StageResult") -> "StageResult":
        self.written += other.written
        self.up_to_date += other.up_to_date
        self.failures.update(other.failures)
        return self
