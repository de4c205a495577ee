"""The release journal: one JSON object per line, on the target host, next to the app.

Every release and rollback appends one record, whatever its outcome, so ``history`` and
``status`` can tell what ran when, by whom, and how it ended. Writes go through
``Host.write_text`` (temporary file + rename), so a lost connection never leaves a torn
journal; they happen under the deploy lock, so read-modify-write is safe.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from deployer.hosts import Host

JOURNAL_FILE = "journal.jsonl"

SUCCEEDED = "succeeded"
FAILED = "failed"  # failed and recovered to the previous release
RECOVERY_FAILED = "recovery-failed"  # failed, and recovery could not finish: see `error`


@dataclass(frozen=True)
class StepTiming:
    name: str
    status: str  # ok, skipped, failed
    seconds: float
    detail: str = ""


@dataclass(frozen=True)
class Record:
    """What one release or rollback did."""

    id: str
    kind: str  # release | rollback
    environment: str
    outcome: str
    commit: str | None
    previous_commit: str | None
    revision_before: tuple[str, ...]
    revision_after: tuple[str, ...]
    started_at: str
    finished_at: str
    seconds: float
    user: str
    backup: str | None = None
    images: dict[str, str] = field(default_factory=dict)  # image name -> tag saved for this release
    steps: tuple[StepTiming, ...] = ()
    error: str | None = None
    recovery: str | None = None
    previous_release: str | None = None
    target_release: str | None = None  # rollbacks: the release they brought back
    image_ids: dict[str, str] = field(default_factory=dict)  # service -> image id it ran (status tells the running code by it)
    # What a prober saw through the proxy during the swap: probes, failed, slowest_ms, p99_ms,
    # longest_gap_ms (None: no proxy, or no swap ran)
    served: dict[str, Any] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        known = set(cls.__dataclass_fields__)
        values = {key: value for key, value in data.items() if key in known}
        values["revision_before"] = tuple(values.get("revision_before") or ())
        values["revision_after"] = tuple(values.get("revision_after") or ())
        values["steps"] = tuple(StepTiming(**step) for step in values.get("steps") or ())
        return cls(**values)


def journal_path(state_dir: str) -> str:
    return posixpath.join(state_dir, JOURNAL_FILE)


def read(host: Host, state_dir: str) -> list[Record]:
    """All records, oldest first; an absent journal is an empty one."""
    path = journal_path(state_dir)
    result = host.run(["cat", path])
    if not result.ok:
        if not host.run(["test", "-e", path]).ok:
            return []
        result.check(f"read the journal {path}")
    return parse(result.stdout)


def parse(text: str) -> list[Record]:
    """Parse journal lines; a line that is not a record is skipped, never fatal."""
    records = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            records.append(Record.from_dict(json.loads(line)))
        except (ValueError, TypeError):
            continue
    return records


def append(host: Host, state_dir: str, record: Record) -> None:
    """Add one record (call under the deploy lock), replacing one with the same id.

    A record with the same id is an interrupted run journaled again once it converged.
    """
    host.run(["mkdir", "-p", state_dir], check=True)
    path = journal_path(state_dir)
    existing = host.run(["cat", path])
    lines = [line for line in (existing.stdout if existing.ok else "").splitlines() if line.strip()]
    kept = [line for line in lines if _id_of(line) != record.id]
    host.write_text(path, "".join(line + "\n" for line in kept) + record.to_json() + "\n", mode=0o600)


def _id_of(line: str) -> str | None:
    try:
        value = json.loads(line).get("id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def running_image_release(records: Sequence[Record], image_id: str) -> Record | None:
    """The newest successful release or rollback whose web image is ``image_id``."""
    for record in reversed(records):
        if record.outcome == SUCCEEDED and image_id in record.image_ids.values():
            return record
    return None


def last_succeeded(records: Sequence[Record]) -> Record | None:
    """The newest successful release or rollback: what runs now."""
    for record in reversed(records):
        if record.outcome == SUCCEEDED:
            return record
    return None


def running_release(records: Sequence[Record]) -> Record | None:
    """The release record whose code runs now (a rollback points back at one)."""
    last = last_succeeded(records)
    if last is None or last.kind == "release":
        return last
    return next((r for r in records if r.id == last.target_release and r.kind == "release"), None)
