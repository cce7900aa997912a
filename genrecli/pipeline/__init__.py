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


def up_to_date(target, group: str, digest: str, *, force: bool, result: StageResult,
               changed: str = "parameters or inputs") -> bool:
    """True (and recorded in ``result``) when ``group`` of the store ``target`` already holds ``digest``'s output;
    otherwise says why it is recomputed (``changed``) when a stale version exists."""
    from genrecli import store, ui

    status = store.group_status(target, group, digest)
    if status == "fresh" and not force:
        ui.info(f"{group}: up to date (params {digest}); nothing to do")
        result.up_to_date.append(group)
        return True
    if status == "stale":
        ui.info(f"{group}: {changed} changed; recomputing")
    return False
