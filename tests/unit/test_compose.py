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




# --- a compose file as written: compose's variable syntax ---------------------------------

VALUES = {"SET": "value", "EMPTY": ""}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${SET}", "value"), ("$SET", "value"), ("$SET.txt", "value.txt"), ("${UNSET}", ""), ("$$SET", "$SET"),
        ("${UNSET:-dflt}", "dflt"), ("${EMPTY:-dflt}", "dflt"), ("${EMPTY-dflt}", ""), ("${UNSET-dflt}", "dflt"),
        ("${SET:-dflt}", "value"), ("${UNSET:?say}", ""), ("${SET:?say}", "value"),
        ("${SET:+alt}", "alt"), ("${EMPTY:+alt}", ""), ("${EMPTY+alt}", "alt"), ("${UNSET+alt}", ""),
        ("${UNSET:-${SET}}", "value"), ("${UNSET:-${ALSO:-x}y}", "xy"),
        ("127.0.0.1:${PORT:-8000}:8000", "127.0.0.1:8000:8000"),
        ("a $ b", "a $ b"), ("${not closed", "${not closed"), ("${1BAD}", "${1BAD}"), ("price: 5$", "price: 5$"),
    ],
)
def test_interpolate_as_compose_does(text: str, expected: str) -> None:
    assert compose.interpolate(text, VALUES) == expected


def test_variables_of_a_compose_file() -> None:
    data = compose.read_file(
        "x-db: &db\n  URL: postgresql://app:${PW:?set PW}@db/app\n"
        "services:\n  web:\n    environment: *db\n    ports: ['${PORT:-8000}:8000']\n"
        "    command: echo $$HOME $NAME\n  # ${IN_A_COMMENT}\n"
    )
    found = compose.variables(data)
    assert compose.Variable("PW", required=True, message="set PW") in found
    assert compose.Variable("PORT", default="8000") in found and compose.Variable("NAME") in found
    assert {v.name for v in found} == {"PW", "PORT", "NAME"}  # not HOME ($$), not a comment's
    tree = compose.interpolate_tree(data, {"PW": "s3cret"})
    assert tree["services"]["web"]["environment"]["URL"] == "postgresql://app:s3cret@db/app"  # type: ignore[index]


@pytest.mark.parametrize(("text", "phrase"), [("services: [\n", "not valid YAML"), ("- a\n", "top level is not a mapping"),
                                              ("version: '3'\n", "it has no services"), ("services: {}\n", "no services")])
def test_a_file_that_is_not_a_compose_file(text: str, phrase: str) -> None:
    with pytest.raises(ValueError, match=phrase):
        compose.read_file(text)
