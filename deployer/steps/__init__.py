"""The step registry: every kind of step a playbook can name, in one table.

A step kind declares its name, its parameters, what it changes on the server, how it runs
(a generator of :mod:`~deployer.actions`, the same one the dry run lists) and how it
is undone. Playbook validation, the dry run, the step log and recovery all read this table;
adding a step kind is one module that calls :func:`register`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from deployer.actions import Action
    from deployer.steps.context import Context
    from deployer.steps.playbook import Step
    from deployer.steps.recovery import Recovery

StepBody = Generator["Action", Any, str]
UndoBody = Generator["Action", Any, None]

# What a step can change on the server (recovery and the lock-first rule read these).
CHECKOUT = "checkout"
IMAGES = "images"
CONTAINERS = "containers"
SCHEMA = "schema"
BACKUPS = "backups"
HOST_FILES = "files"
ANYTHING = "anything"  # a user's command: deployer cannot tell

# Where a step runs when an environment has several hosts (see deployer.steps.fleet).
Scope = Literal["each", "primary", "rolling"]
EACH: Scope = "each"  # on every host, side by side
PRIMARY: Scope = "primary"  # once, on the primary host (the database's steps)
ROLLING: Scope = "rolling"  # host by host, in the rollout's batches (the switch)


@dataclass(frozen=True)
class Param:
    """One parameter of a step kind."""

    types: tuple[type, ...]
    help: str
    required: bool = False
    positive: bool = False  # a number that must be > 0

    def type_name(self) -> str:
        names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list"}
        return " or ".join(names.get(t, t.__name__) for t in self.types)


@dataclass(frozen=True)
class StepKind:
    name: str
    summary: str
    run: Callable[[Context, Step], StepBody]
    params: Mapping[str, Param] = field(default_factory=dict)
    changes: frozenset[str] = frozenset()
    undo: Callable[[Context, Step, Recovery], UndoBody] | None = None
    in_playbooks: bool = True  # False: used by built-in flows only (rollback)
    once: bool = False  # may appear at most once in a playbook
    scope: Scope = EACH
    # Runs once the run is journaled (after `record`): its failure, or an interruption, is
    # reported and never undoes the release (see deployer.engine).
    after_record: bool = False
    # An after-record kind may start its actions in the background as soon as the step named
    # here has finished, beside the steps that follow (see deployer.background): ``early``
    # returns those actions (or None: not this time) and the abort command that cuts them short.
    early_after: str = ""
    early: Callable[[Context, str], tuple[Generator[Action, Any, Any], tuple[str, ...]] | None] | None = None


_KINDS: dict[str, StepKind] = {}
_MODULES = (
    "preflight", "lock", "snapshot", "sync", "stop", "build", "database_up", "lint", "backup", "migrate",
    "up", "swap", "verify", "health", "contract", "record", "run", "rollback", "verify_backup", "copy_backup",
)


def register(kind: StepKind) -> StepKind:
    if kind.name in _KINDS:
        raise ValueError(f"step kind {kind.name!r} is registered twice")
    _KINDS[kind.name] = kind
    return kind


_loaded: list[bool] = []


def kinds() -> Mapping[str, StepKind]:
    """Every registered step kind (the step modules are imported on first use)."""
    if not _loaded:
        for module in _MODULES:
            importlib.import_module(f"deployer.steps.{module}")
        _loaded.append(True)
    return _KINDS


def kind(name: str) -> StepKind:
    return kinds()[name]


def playbook_kinds() -> dict[str, StepKind]:
    """The kinds a user's playbook may name."""
    return {name: k for name, k in kinds().items() if k.in_playbooks}
