"""Playbooks: declarative step sequences in TOML, checked once when loaded.

A playbook names step kinds from the registry (:mod:`deployer.steps`) in order, each with
optional parameters, plus ``run`` steps (a command on the host, or in a one-off container of
a service's new image)::

    [[steps]]
    step = "health"
    timeout = 120

    [[steps]]
    step = "run"
    command = "flask seed-cache"
    service = "web"
"""

from __future__ import annotations

import difflib
import shlex
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from deployer.errors import ConfigError
from deployer.steps import Param, kinds, playbook_kinds

# Every step takes `name`: its label in the output and the journal.
NAME_PARAM = Param((str,), "a label for the output")

# Package data: present in every install (wheel, sdist, editable), read through importlib.resources.
# Package data: present in every install (wheel, sdist, editable), read through importlib.resources.
BUILTIN_DIR = Path(str(resources.files("deployer") / "playbooks"))


@dataclass(frozen=True)
class Step:
    name: str
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return str(self.params.get("name") or self.name)

    def argv(self) -> list[str]:
        """For ``run`` steps: the command as an argv."""
        command = self.params["command"]
        return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


@dataclass(frozen=True)
class Playbook:
    name: str
    path: Path
    description: str
    steps: tuple[Step, ...]

    def names(self) -> list[str]:
        return [step.name for step in self.steps]

    def split(self) -> tuple[tuple[Step, ...], tuple[Step, ...]]:
        """The steps of the run, and those that follow it once it is journaled (see
        :attr:`deployer.steps.StepKind.after_record`)."""
        registry = kinds()
        return (tuple(step for step in self.steps if not registry[step.name].after_record),
                tuple(step for step in self.steps if registry[step.name].after_record))


def find_playbook(name: str, root: Path) -> Path:
    """``playbooks/NAME.toml`` next to deploy.toml, else the built-in one."""
    for directory in (root / "playbooks", BUILTIN_DIR):
        candidate = directory / f"{name}.toml"
        if candidate.is_file():
            return candidate
    known = sorted({p.stem for d in (root / "playbooks", BUILTIN_DIR) if d.is_dir() for p in d.glob("*.toml")})
    raise ConfigError(
        f"playbook {name!r} not found in {root / 'playbooks'} or the built-in playbooks",
        hint=f"known playbooks: {', '.join(known) or 'none'}",
    )


def _suggest(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_playbook(data: Mapping[str, Any], *, name: str, path: Path) -> Playbook:
    """Check every step name and parameter; raise one ConfigError naming the first mistake."""
    where = str(path)
    unknown_top = set(data) - {"description", "steps"}
    if unknown_top:
        key = sorted(unknown_top)[0]
        raise ConfigError(f"{where}: unknown key {key!r}: a playbook has `description` and `[[steps]]`")
    raw_steps = data.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise ConfigError(f"{where}: no steps: add `[[steps]]` tables, each with `step = \"NAME\"`")
    steps = []
    for index, raw in enumerate(raw_steps, start=1):
        at = f"{where}: steps[{index}]"
        if not isinstance(raw, dict):
            raise ConfigError(f"{at}: expected a table with `step = \"NAME\"`")
        step_name = raw.get("step")
        known = playbook_kinds()
        if not isinstance(step_name, str):
            raise ConfigError(f"{at}: missing `step = \"NAME\"`; known steps: {', '.join(known)}")
        if step_name not in known:
            raise ConfigError(f"{at}: unknown step {step_name!r}{_suggest(step_name, known)}; known steps: {', '.join(known)}")
        params = {key: value for key, value in raw.items() if key != "step"}
        allowed = {**known[step_name].params, "name": NAME_PARAM}
        for key, value in params.items():
            if key not in allowed:
                accepted = ", ".join(allowed) or "none"
                raise ConfigError(f"{at} ({step_name}): unknown parameter {key!r}{_suggest(key, allowed)}; accepted: {accepted}")
            param = allowed[key]
            if isinstance(value, bool) and bool not in param.types or not isinstance(value, param.types):
                raise ConfigError(f"{at} ({step_name}).{key}: expected {param.type_name()}, got {value!r}")
            if param.positive and isinstance(value, (int, float)) and value <= 0:
                raise ConfigError(f"{at} ({step_name}).{key}: expected a positive number of seconds, got {value}")
        for key, param in allowed.items():
            if param.required and key not in params:
                raise ConfigError(f"{at} ({step_name}): missing parameter {key!r}")
        step = Step(step_name, params)
        if step_name == "run":
            try:
                if not step.argv():
                    raise ValueError("empty command")
            except ValueError as error:
                raise ConfigError(f"{at} (run).command: not a usable command ({error})") from None
        steps.append(step)
    playbook = Playbook(name=name, path=path, description=str(data.get("description", "")), steps=tuple(steps))
    _check_order(playbook)
    return playbook


def _check_order(playbook: Playbook) -> None:
    names = playbook.names()
    where = str(playbook.path)
    for required in ("preflight", "lock"):
        if required not in names:
            raise ConfigError(f"{where}: the `{required}` step is required")
    if names[0] != "preflight":
        raise ConfigError(f"{where}: `preflight` must be the first step (it changes nothing and refuses early)")
    lock_at = names.index("lock")
    registry = kinds()
    changing_before = [n for n in names[:lock_at] if registry[n].changes]
    if changing_before:
        raise ConfigError(f"{where}: step `{changing_before[0]}` changes the server and must come after `lock`")
    for name in names:
        if registry[name].once and names.count(name) > 1:
            raise ConfigError(f"{where}: step `{name}` appears more than once")
    if "migrate" in names and "backup" in names and names.index("backup") > names.index("migrate"):
        raise ConfigError(f"{where}: `backup` must come before `migrate`: the backup is what makes the migration undoable")
    if "hold" in names and "migrate" in names and names.index("hold") > names.index("migrate"):
        raise ConfigError(f"{where}: `hold` must come before `migrate`: it stops the old code before a breaking migration")
    if "hold" in names and "swap" not in names:
        raise ConfigError(f"{where}: `hold` needs a `swap` step after it: the swap releases the held requests")
    if "swap" in names and "migrate" in names and names.index("swap") < names.index("migrate"):
        raise ConfigError(f"{where}: `swap` must come after `migrate`: the new code needs its schema")
    after = [registry[n].after_record for n in names]
    if True in after and False in after[after.index(True):]:
        first = names[after.index(True)]
        raise ConfigError(f"{where}: `{first}` runs after the release is recorded: it and its kind "
                          f"({', '.join(sorted(n for n in registry if registry[n].after_record))}) must be the last steps")
    ordinary = [n for n in names if not registry[n].after_record]
    if "record" in ordinary and ordinary[-1] != "record":
        raise ConfigError(f"{where}: `record` must be the last step (only steps that run after the release is "
                          f"recorded may follow it: {', '.join(sorted(n for n in registry if registry[n].after_record))})")


def load_playbook(name: str, root: Path) -> Playbook:
    """Find and load a playbook by name (``release``, ``classic``, or your own)."""
    path = find_playbook(name, root)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read it: {error.strerror}") from None
    return parse_playbook(data, name=name, path=path)
