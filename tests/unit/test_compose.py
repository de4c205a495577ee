"""Compose argv builders and fact parsers: exact argv, both compose flavours."""

from __future__ import annotations

import json

import pytest

from deployer.commands import compose
from deployer.commands.compose import Compose, parse_ps, parse_version

V2 = Compose(program=compose.V2, project="recipes", project_dir="/srv/recipes", files=("/srv/recipes/docker-compose.prod.yml",), env_file="/srv/recipes/.deployer/compose.env")
V1 = Compose(program=compose.V1, project="recipes", project_dir="/srv/r", files=("/srv/r/c.yml",))

BASE2 = ["docker", "compose", "--project-name", "recipes", "--project-directory", "/srv/recipes", "--file", "/srv/recipes/docker-compose.prod.yml", "--env-file", "/srv/recipes/.deployer/compose.env"]
BASE1 = ["docker-compose", "--project-name", "recipes", "--project-directory", "/srv/r", "--file", "/srv/r/c.yml"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (V2.build(), BASE2 + ["build"]),
        (V2.build(["web"], pull=True), BASE2 + ["build", "--pull", "web"]),
        (V2.up(), BASE2 + ["up", "--detach", "--no-build"]),
        (V2.up(["db"], no_deps=True), BASE2 + ["up", "--detach", "--no-build", "--no-deps", "db"]),
        (V2.up(wait=True, wait_timeout=30), BASE2 + ["up", "--detach", "--no-build", "--wait", "--wait-timeout", "30"]),
        (V1.up(wait=True), BASE1 + ["up", "--detach", "--no-build"]),  # v1 has no --wait
        (V2.run("web", ["flask", "db", "upgrade"]), BASE2 + ["run", "--rm", "-T", "--no-deps", "web", "flask", "db", "upgrade"]),
        (
            V2.run("web", ["flask", "db", "upgrade"], name="recipes-migrate-1", env={"A": "b c"}, no_deps=False),
            BASE2 + ["run", "--rm", "-T", "--name", "recipes-migrate-1", "-e", "A=b c", "web", "flask", "db", "upgrade"],
        ),
        (V2.exec("db", ["pg_isready"]), BASE2 + ["exec", "-T", "db", "pg_isready"]),
        (V2.stop(["web"], timeout=5), BASE2 + ["stop", "--timeout", "5", "web"]),
        (V2.down(volumes=True), BASE2 + ["down", "--remove-orphans", "--volumes"]),
        (V2.ps(), BASE2 + ["ps", "--all", "--format", "json"]),
        (V1.ps(), BASE1 + ["ps", "--all", "-q"]),
        (V1.ps_ids(["db"]), BASE1 + ["ps", "--all", "-q", "db"]),
        (compose.version_argv(compose.V2), ["docker", "compose", "version", "--short"]),
        (compose.version_argv(compose.V1), ["docker-compose", "version", "--short"]),
    ],
)
def test_argv(argv: list[str], expected: list[str]) -> None:
    assert argv == expected


@pytest.mark.parametrize(
    ("stdout", "version"),
    [("v2.40.3\n", "2.40.3"), ("2.20.2", "2.20.2"), ("docker-compose version 1.29.2, build unknown", "1.29.2")],
)
def test_parse_version(stdout: str, version: str) -> None:
    assert parse_version(stdout) == version


def test_parse_version_garbage() -> None:
    with pytest.raises(ValueError, match="cannot read a compose version"):
        parse_version("command not found")


def test_parse_ps_lines_and_array() -> None:
    rows = [
        {"Service": "web", "Name": "recipes-web-1", "State": "running", "Health": "healthy", "Image": "recipes-web", "ExitCode": 0},
        {"Service": "db", "Name": "recipes-db-1", "State": "exited", "Health": "", "Image": "postgres:15", "ExitCode": 137},
    ]
    for text in ("\n".join(json.dumps(r) for r in rows), json.dumps(rows)):
        states = parse_ps(text)
        assert [s.service for s in states] == ["db", "web"]
        assert states[1].is_up and not states[0].is_up
        assert states[0].exit_code == 137
    assert parse_ps("") == []
