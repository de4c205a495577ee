"""What a step does, as data: the actions a step yields are both what ``--dry-run`` prints and
what the engine executes, so the plan cannot drift from the run.

A step is a generator. It yields :class:`Command` (a change on the host), :class:`Probe` (a
read whose answer the step needs, made in a dry run too), :class:`Write` (a file on the
host), :class:`Wait` (poll until something holds: health, a database accepting connections)
and :class:`Read` (in-process reads, e.g. the database revision). The engine sends each
action's result back into the generator. Steps decide from the facts preflight read, never
from the result of a change, so a plan computed before anything ran lists the same actions
the run executes. Values only known once the run is under way (its id, a backup's id) are
:class:`Value` placeholders, shown by name in the plan and filled in when executed.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deployer.steps.context import Context


class Skip(Exception):
    """The step has nothing to do this time (the message says why)."""


@dataclass(frozen=True)
class Value:
    """A value known only at run time (a release id, a backup id), shown as ``{name}`` in a plan.

    ``template`` places it inside a longer argument: ``Value("release_id", "app:deployer-{}")``.
    """

    name: str
    template: str = "{}"

    def __str__(self) -> str:
        return self.template.replace("{}", "{" + self.name + "}")

    def fill(self, values: Mapping[str, str]) -> str:
        if self.name not in values:
            raise KeyError(f"run-time value {self.name!r} is not known yet")
        return self.template.replace("{}", values[self.name])


Arg = str | Value


def resolve(arg: Arg, values: Mapping[str, str]) -> str:
    """The argument as the host receives it."""
    return arg.fill(values) if isinstance(arg, Value) else arg


def _shown(args: Sequence[Arg]) -> str:
    return " ".join(str(a) if isinstance(a, Value) else shlex.quote(a) for a in args)


@dataclass(frozen=True)
class Command:
    """A command that changes the host. ``check``: a non-zero exit fails the step."""

    argv: tuple[Arg, ...]
    what: str = ""
    timeout: float | None = 300.0
    cwd: str | None = None
    check: bool = True
    stream: bool = False  # show its output with --verbose
    stdin: bytes | None = field(default=None, repr=False)
    # Safe to run again after a lost connection (false for a migration: it may have run).
    retry: bool = True

    @property
    def shown(self) -> str:
        """The command as a user would type it (placeholders by name)."""
        text = _shown(self.argv)
        return f"cd {shlex.quote(self.cwd)} && {text}" if self.cwd else text

    def resolved(self, values: Mapping[str, str]) -> list[str]:
        return [resolve(a, values) for a in self.argv]


@dataclass(frozen=True)
class Probe(Command):
    """A read-only command whose answer the step needs: run in a dry run too."""


@dataclass(frozen=True)
class Write:
    """Write a text file on the host atomically (temporary name, fsync, rename)."""

    path: Arg
    text: str = field(repr=False)
    mode: int | None = 0o600
    what: str = ""

    @property
    def shown(self) -> str:
        mode = f" (mode {self.mode:o})" if self.mode is not None else ""
        return f"write {self.path}{mode}" + (f": {self.what}" if self.what else "")


@dataclass(frozen=True)
class Wait:
    """Poll until something holds; ``until(ctx)`` returns a detail line or raises."""

    what: str
    until: Callable[[Context], str] = field(repr=False, compare=False)

    @property
    def shown(self) -> str:
        return f"wait: {self.what}"


@dataclass(frozen=True)
class Read:
    """An in-process read of the host (the database revision, containers).

    A read that checks what the run did (the revision after migrating) is made by the run
    only: in a dry run it answers None. ``plan``: a read of the state as it is now, which a
    dry run makes too, because what follows depends on it (recovery's first look).
    """

    what: str
    read: Callable[[Context], Any] = field(repr=False, compare=False)
    plan: bool = False

    @property
    def shown(self) -> str:
        return f"read: {self.what}"


@dataclass(frozen=True)
class Lease:
    """Take the environment's deploy lock: a lease held by a process on the host (see
    :mod:`deployer.server.lock`) until the run ends. ``label`` names the containers that
    process stops should this one vanish."""

    state_dir: str
    label: Arg = ""
    command: str = ""

    @property
    def shown(self) -> str:
        return f"take the deploy lock: flock {self.state_dir}/lock, held by a process on the host until the run ends"


@dataclass(frozen=True)
class Transfer:
    """Copy a file between the host, this machine and another host, streamed by this
    process: ``run(ctx)`` copies (checking what arrived) and returns what it made. A dry run
    lists it and copies nothing. ``source`` and ``destination`` are shown, run-time values by
    name."""

    source: Arg
    destination: Arg
    run: Callable[[Any], Any] = field(repr=False, compare=False)
    what: str = ""

    @property
    def shown(self) -> str:
        return f"copy {self.source} -> {self.destination}" + (f": {self.what}" if self.what else "")


Action = Command | Probe | Write | Wait | Read | Lease | Transfer


def is_change(action: Action) -> bool:
    """Commands, writes, transfers and the lease change something; probes, reads and waits do not."""
    return isinstance(action, (Write, Lease, Transfer)) or (isinstance(action, Command) and not isinstance(action, Probe))


def perform(host, action: Action, values: Mapping[str, str], *, on_output=None):  # noqa: ANN001, ANN201
    """Execute one host action directly (no engine): commands, probes and writes."""
    from deployer.hosts.base import Result

    if isinstance(action, Command):
        argv = action.resolved(values)
        result = host.run(argv, cwd=action.cwd, timeout=action.timeout, stdin=action.stdin,
                          on_output=on_output if action.stream else None)
        if action.check and not result.ok:
            result.check(action.what or None)
        return result
    if isinstance(action, Write):
        host.write_text(resolve(action.path, values), action.text, mode=action.mode)
        return Result(("write", resolve(action.path, values)), 0, "", "", 0.0)
    if isinstance(action, Transfer):
        return action.run(None)
    raise TypeError(f"{type(action).__name__} cannot be performed without the engine")


def drive(host, body, values: Mapping[str, str], *, answer=None):  # noqa: ANN001, ANN201
    """Run a generator of host actions to its end and return its value (outside a release).

    As the engine does, a failure while performing an action (Ctrl-C included) is thrown
    into the generator at that point, so it can clean up (remove a half-written dump, a
    scratch container) before the failure goes on. ``answer(action)``: how actions other
    than commands and writes are answered (e.g. :class:`Read`).
    """
    send: Any = None
    throw: BaseException | None = None
    while True:
        try:
            action = body.throw(throw) if throw is not None else body.send(send)
        except StopIteration as stop:
            return stop.value
        send, throw = None, None
        try:
            send = answer(action) if answer is not None and not isinstance(action, (Command, Write, Transfer)) else \
                perform(host, action, values)
        except (Exception, KeyboardInterrupt) as error:  # noqa: BLE001 - handed to the generator first
            throw = error


def templated(argv: Sequence[Arg], values: Mapping[str, str]) -> tuple[Arg, ...]:
    """``argv`` with every run-time value in it shown by name (``{release_id}``) in a plan.

    Steps build their commands with the real values; this keeps what a dry run prints
    independent of when it ran.
    """
    out: list[Arg] = []
    known = sorted(((n, v) for n, v in values.items() if len(v) >= 8), key=lambda item: -len(item[1]))
    for arg in argv:
        if isinstance(arg, Value):
            out.append(arg)
            continue
        for name, value in known:
            if value in arg:
                out.append(Value(name, arg.replace(value, "{}")))
                break
        else:
            out.append(arg)
    return tuple(out)


def shown(action: Action, values: Mapping[str, str]) -> str:
    """How an action appears in a plan and in a run's trace: run-time values by name."""
    if isinstance(action, Command):
        argv = templated([_display(a, values) for a in action.argv], values)
        text = _shown(argv)
        return f"cd {shlex.quote(action.cwd)} && {text}" if action.cwd else text
    if isinstance(action, Write):
        path = templated([_display(action.path, values)], values)[0]  # a Value prints by name
        mode = f" (mode {action.mode:o})" if action.mode is not None else ""
        return f"write {path}{mode}" + (f": {action.what}" if action.what else "")
    if isinstance(action, Transfer):
        source, destination = templated([_display(action.source, values), _display(action.destination, values)], values)
        return f"copy {source} -> {destination}" + (f": {action.what}" if action.what else "")
    return action.shown


def _display(arg: Arg, values: Mapping[str, str]) -> Arg:
    """An argument as shown: its value when known, else its placeholder (unquoted, as a
    value known at run time is shown)."""
    if isinstance(arg, Value) and arg.name not in values:
        return arg
    return resolve(arg, values)
