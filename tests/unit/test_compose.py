"""Compose argv builders and fact parsers: exact argv, both compose flavours."""

from __future__ import annotations

import pytest

from deployer.commands import compose
from deployer.commands.compose import Compose

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
        (compose.version_argv(compose.V2), ["docker", "compose", "version", "--short"]),
        (compose.version_argv(compose.V1), ["docker-compose", "version", "--short"]),
    ],
)
def test_argv(argv: list[str], expected: list[str]) -> None:
    assert argv == expected


