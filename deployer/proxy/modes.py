"""Overlap or pause: how a zero-downtime release swaps, decided from its pending migrations.

While the new container starts beside the old one, the old code runs on the new schema.
An additive migration (a new table, a nullable column, an index) leaves it working: the
containers overlap and no request waits. Anything else (a column dropped, renamed, retyped
or made NOT NULL, a constraint added, SQL not known to be additive) would fail the old
code's requests: the proxy holds new requests (up to ``pause_timeout``) while the old
container stops, the migration runs and the new one becomes healthy. Requests are delayed,
not failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from deployer.db.migrations import MigrationStep

MODES = ("auto", "overlap", "pause")


@dataclass(frozen=True)
class SwapMode:
    mode: str  # overlap | pause
    reasons: tuple[str, ...]  # why pause (or why a forced overlap is risky)
    chosen_by: str  # "migrations" | "setting" | "nothing" (no migration pending)

    def describe(self) -> str:
        """One line for the plan and the summary: the mode and why."""
        if self.mode == "overlap":
            if self.chosen_by == "nothing":
                return "overlap: no migration pending"
            if self.chosen_by == "migrations":
                return "overlap: the pending migrations are additive"
            return "overlap: set by configuration" + (f", although {'; '.join(self.reasons)}" if self.reasons else "")
        return "pause: " + ("set by configuration" if self.chosen_by == "setting" else "; ".join(self.reasons))


def swap_mode(pending: Sequence[MigrationStep], setting: str = "auto") -> SwapMode:
    """The mode for a release (or rollback) applying ``pending``; ``setting`` is the
    environment's or the command line's choice (``auto`` decides from the migrations)."""
    if setting not in MODES:
        raise ValueError(f"unknown swap mode {setting!r}: use one of {', '.join(MODES)}")
    reasons = tuple(f"{step.revision[:12]} ({step.message}): {op}" for step in pending for op in step.breaking_ops)
    if setting == "overlap":
        return SwapMode("overlap", reasons, "setting")
    if setting == "pause":
        return SwapMode("pause", reasons, "setting")
    if not pending:
        return SwapMode("overlap", (), "nothing")
    return SwapMode("pause" if reasons else "overlap", reasons, "migrations")
