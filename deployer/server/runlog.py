"""The write-ahead step log: what a release or rollback set out to do, and how far it got.

Before the run changes anything it records its intent — where the environment stands
(:class:`Source`: commit, release, revision, saved images, what existed) and where it goes
(:class:`Goal`) — in ``<state_dir>/run.json``, then each step's start and end. Every write
replaces the whole file atomically (temporary file, fsync, rename), so a run killed at any
point leaves a record saying exactly how far it got. Recovery reads this record, whether it
runs in the same process after a failed step or in the next command after a crash. When the
run is journaled the file is removed.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from deployer.hosts.base import Host

RUN_FILE = "run.json"
SCHEMA = 1

# Progress states of one step.
STARTED = "started"
DONE = "done"
SKIPPED = "skipped"
FAILED = "failed"

# Phases of the run as a whole.
RUNNING = "running"
RECOVERING = "recovering"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Source:
    """Where the environment stood when the run began: what recovery brings back."""

    commit: str | None = None  # the checkout's commit; None: nothing deployed
    release: str | None = None  # the journal id of the release that ran
    revision: tuple[str, ...] | None = None  # None: the database was not running
    images: Mapping[str, str] = field(default_factory=dict)  # image name -> tag saved by snapshot
    image_ids: Mapping[str, str] = field(default_factory=dict)  # service -> image id that ran
    path_existed: bool = True
    checkout_existed: bool = True
    volumes: tuple[str, ...] = ()  # the project's volumes that existed
    running: tuple[str, ...] = ()  # services that had a running container


@dataclass(frozen=True)
class Goal:
    """Where the run goes."""

    commit: str
    heads: tuple[str, ...]
    release: str  # the id the journal will hold (for a rollback: the release brought back)


@dataclass(frozen=True)
class Progress:
    step: str  # the step's label in the playbook
    kind: str  # its kind in the step registry
    state: str
    at: str
    detail: str = ""


@dataclass(frozen=True)
class RunRecord:
    """The content of ``run.json`` (see the module docstring)."""

    id: str
    kind: str  # release | rollback
    environment: str
    playbook: str
    steps: tuple[tuple[str, str], ...]  # (label, kind), in order
    holder: str
    pid: int
    started_at: str
    source: Source
    goal: Goal
    progress: tuple[Progress, ...] = ()
    phase: str = RUNNING
    backup: str | None = None  # the id of the backup this run took
    backup_partial: str | None = None  # a dump being written
    migration: str | None = None  # the one-off migration container's name
    built: Mapping[str, str] = field(default_factory=dict)  # service -> image id this run built
    # A swap behind the proxy: the web containers it replaces ("old"), the one it started
    # ("new") and whether the proxy routes to it ("switched").
    swap: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None
    schema: int = SCHEMA

    # -- progress
    def state_of(self, label: str) -> str | None:
        """The last recorded state of a step (None: never started)."""
        for entry in reversed(self.progress):
            if entry.step == label:
                return entry.state
        return None

    def touched(self) -> list[tuple[str, str]]:
        """Steps that started (whatever their end), in order: what recovery may have to undo."""
        return [(label, kind) for label, kind in self.steps if self.state_of(label) in (STARTED, DONE, FAILED)]

    @property
    def current_step(self) -> str | None:
        """The step that was running (started, never ended), or the last that ended."""
        for entry in reversed(self.progress):
            return entry.step
        return None

    def describe(self) -> str:
        """Where an interrupted run stopped, and between which states."""
        source = self.source
        text = (f"{self.kind} {self.id} was interrupted at step {self.current_step} "
                f"(from commit {(source.commit or 'none')[:12]}, revision {', '.join(source.revision or ()) or 'none'}; "
                f"to commit {self.goal.commit[:12]}, revision {', '.join(self.goal.heads) or 'none'})")
        if self.swap.get("new"):
            switched = "the proxy had switched to it" if self.swap.get("switched") else "the proxy had not switched to it"
            text += f"; the swap had started web container {str(self.swap['new'])[:12]} and {switched}"
        return text

    def with_progress(self, label: str, kind: str, state: str, detail: str = "") -> RunRecord:
        return replace(self, progress=(*self.progress, Progress(label, kind, state, now(), detail)))

    # -- (de)serialisation
    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunRecord:
        source = dict(data.get("source") or {})
        if source.get("revision") is not None:
            source["revision"] = tuple(source["revision"])
        source["volumes"] = tuple(source.get("volumes") or ())
        source["running"] = tuple(source.get("running") or ())
        goal = dict(data["goal"])
        goal["heads"] = tuple(goal.get("heads") or ())
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in data.items() if k in known}
        values.update(
            source=Source(**{k: v for k, v in source.items() if k in Source.__dataclass_fields__}),
            goal=Goal(**{k: v for k, v in goal.items() if k in Goal.__dataclass_fields__}),
            steps=tuple(tuple(s) for s in data.get("steps") or ()),
            progress=tuple(Progress(**p) for p in data.get("progress") or ()),
        )
        return cls(**values)


def run_path(state_dir: str) -> str:
    return posixpath.join(state_dir, RUN_FILE)


def read(host: Host, state_dir: str) -> RunRecord | None:
    """The interrupted (or running) run's record; None when no run is under way."""
    path = run_path(state_dir)
    result = host.run(["cat", path], timeout=30)
    if not result.ok:
        return None
    try:
        return RunRecord.from_dict(json.loads(result.stdout))
    except (ValueError, TypeError, KeyError) as error:
        # A record we cannot read must not be ignored: it means a run was under way.
        from deployer.errors import DeployerError

        raise DeployerError(
            f"the step log {path} on {host.name} is unreadable ({error}): a run was interrupted",
            hint=f"inspect it, then remove it (`rm {path}`) once the environment is as it should be",
        ) from None


def write(host: Host, state_dir: str, record: RunRecord) -> None:
    """Replace the record on the host (atomic and durable)."""
    host.write_text(run_path(state_dir), record.to_json(), mode=0o600)


def finished(record: RunRecord, journal_records: Sequence[Any]) -> bool:
    """Whether the journal already holds the run's end: a run that died after journaling
    its outcome and before removing this file is not interrupted (only the file is left).

    A run whose recovery could not finish is journaled as ``recovery-failed`` and keeps
    its step log on purpose: that one is still to converge.
    """
    ends = [r for r in journal_records if getattr(r, "id", None) == record.id]
    return bool(ends) and getattr(ends[-1], "outcome", None) in ("succeeded", "failed")


def clear(host: Host, state_dir: str) -> None:
    """The run is journaled: remove its record."""
    host.run(["rm", "-f", run_path(state_dir)], timeout=30, check=True)
