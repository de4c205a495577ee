"""The state one release or rollback carries from step to step.

Three parts, each with one owner:

* :class:`Options` — what the user asked for (frozen);
* :class:`Facts` — what preflight read from the host and the repository, read-only and
  frozen: every later step plans from these, so a dry run and the run agree;
* :class:`~deployer.server.runlog.RunRecord` — the write-ahead step log on the host: the
  from-state, the goal and each step's progress. Steps add to it only through
  :meth:`Context.note`, which writes it through to the host. Recovery reads nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from deployer.server import runlog

if TYPE_CHECKING:
    from deployer.commands.compose import Compose, ComposeConfig
    from deployer.commands.docker import Container
    from deployer.config import Environment
    from deployer.db.migrations import MigrationScripts, MigrationStep
    from deployer.db.url import DatabaseLocation
    from deployer.hosts.base import Host
    from deployer.server.backups import Backup
    from deployer.server.journal import Record
    from deployer.server.lock import Lease
    from deployer.server.target import Target
    from deployer.source import Commit


@dataclass(frozen=True)
class Options:
    ref: str | None = None
    yes: bool = False
    dry_run: bool = False
    verbose: bool = False
    restore_backup: bool = False  # rollbacks and recover: restore the pre-upgrade dump
    forward: bool = False  # recover: finish the interrupted run instead of undoing it
    swap_mode: str | None = None  # behind a proxy: auto | overlap | pause (None: the environment's)
    # release: run every step even when the commit already runs as configured; rollback with
    # restore_backup: restore a backup that failed its restore verification
    force: bool = False
    # Asks the user a yes/no question; None when there is no terminal to ask on.
    confirm: Callable[[str], bool] | None = None


@dataclass(frozen=True)
class RollbackFacts:
    """What a rollback's preflight decided: the release it brings back and the way there."""

    target_release: Record  # the release brought back
    target_revision: str  # the one revision its code expects ("base": no migration)
    downgrades: tuple[MigrationStep, ...]  # between the database and the target, newest first
    restore_from: Backup | None  # restored instead of downgrading (--restore-backup): the dump taken
    # when the target release was replaced


@dataclass(frozen=True)
class Facts:
    """What preflight found. Nothing here changes during the run."""

    commit: Commit  # what ships (a rollback: the release brought back)
    remote: str
    scripts: MigrationScripts  # the migrations of ``commit``
    heads: tuple[str, ...]  # the schema the run ends at (a rollback: its target revision)
    compose: ComposeConfig  # the resolved compose configuration of ``commit``
    database: DatabaseLocation
    containers: tuple[Container, ...]  # the project's containers at preflight
    deployed_commit: str | None  # the checkout's commit; None: nothing deployed
    path_exists: bool
    checkout_exists: bool
    revision: tuple[str, ...] | None  # None: the database was not running
    pending: tuple[MigrationStep, ...]  # migration steps the run applies (a rollback: its downgrades)
    previous_release: Record | None  # the release that runs now
    volumes: tuple[str, ...]  # the project's volumes that exist
    services: tuple[str, ...]  # the compose services, db excluded, sorted
    rollback: RollbackFacts | None = None  # a rollback: where it goes and how

    @property
    def first_release(self) -> bool:
        return self.deployed_commit is None

    @property
    def target_release(self) -> Record | None:
        return self.rollback.target_release if self.rollback else None

    def running(self, service: str) -> Container | None:
        return next((c for c in self.containers if c.service == service and c.state == "running" and not c.oneoff), None)


@dataclass
class Context:
    """One run: the target, the options, the facts once read, the step log once written."""

    target: Target
    options: Options
    log: Callable[[str], None]
    kind: str = "release"  # release | rollback
    facts: Facts | None = None
    record: runlog.RunRecord | None = None
    lease: Lease | None = None
    planning: bool = False  # a dry run: changes are listed, not made
    values: dict[str, str] = field(default_factory=dict)  # run-time values, by placeholder name
    trace: list[tuple[str, str]] = field(default_factory=list)  # (step label, action shown)
    scratch: dict[str, Any] = field(default_factory=dict)  # per-run caches (never recovery input)
    journaled: bool = False  # the run is recorded and its step log gone (the steps after `record`)

    # -- shortcuts
    @property
    def env(self) -> Environment:
        return self.target.env

    @property
    def host(self) -> Host:
        return self.target.host

    @property
    def compose(self) -> Compose:
        return self.target.compose

    @property
    def app(self):  # noqa: ANN201 - AppConfig
        return self.target.config.app

    @property
    def known(self) -> Facts:
        """The facts (preflight must have run)."""
        if self.facts is None:
            raise RuntimeError("no facts yet: preflight has not run")
        return self.facts

    @property
    def run_id(self) -> str:
        return self.values.get("release_id", "")

    # -- the step log
    def note(self, **changes: Any) -> None:
        """Record something recovery must know (a backup taken, a container started), on the host first."""
        if self.record is None or self.journaled:
            return
        self.record = replace(self.record, **changes)
        if not self.planning:
            runlog.write(self.host, self.state_dir, self.record)

    @property
    def state_dir(self) -> str:
        return self.target.state_dir

    def verbose(self) -> Callable[[str], None] | None:
        """Stream a command's output into the log with ``--verbose``."""
        if not self.options.verbose:
            return None
        return lambda line: self.log("  | " + line.rstrip())
