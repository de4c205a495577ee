"""The recording fake Host every unit test shares: answers commands by rule, records every argv."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from deployer.hosts.base import Result
from deployer.hosts.dockerapi import Engine, EngineUnavailable

Rule = tuple[Callable[[Sequence[str]], bool], int, str]


@dataclass
class FakeHost:
    """First matching rule wins (predicate, exit code, stdout); writes are recorded too."""

    rules: list[Rule] = field(default_factory=list)
    calls: list[list[str]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    name: str = "fake"
    is_local: bool = False

    def run(self, argv: Sequence[str], **_: object) -> Result:
        self.calls.append(list(argv))
        for matches, code, out in self.rules:
            if matches(argv):
                return Result(tuple(argv), code, out, "" if code == 0 else "failed", 0.0)
        return Result(tuple(argv), 0, "", "", 0.0)

    def write_text(self, path: str, text: str, mode: int | None = None) -> None:
        self.calls.append(["write", path])
        self.files[path] = text

    def read_text(self, path: str) -> str:
        if path not in self.files:
            raise FileNotFoundError(path)
        return self.files[path]

    def forward(self, host: str, port: int) -> contextlib.AbstractContextManager[tuple[str, int]]:
        return contextlib.nullcontext((host, port))

    def reconnect(self) -> None:
        pass

    def engine(self) -> Engine:
        return no_engine()

    def close(self) -> None:
        pass

    def commands(self, word: str) -> list[list[str]]:
        """The recorded argvs holding ``word`` as one of their words."""
        return [c for c in self.calls if word in c]

    def index(self, predicate: Callable[[list[str]], bool]) -> int:
        return next(i for i, c in enumerate(self.calls) if predicate(c))


def no_engine() -> Engine:
    """An engine API that cannot be reached: the code under test reads with the CLI, whose
    commands the fakes answer."""

    def refuse() -> object:
        raise EngineUnavailable("a fake host has no engine")

    return Engine(refuse, "fake")  # type: ignore[arg-type]
