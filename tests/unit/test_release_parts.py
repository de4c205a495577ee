"""Pure parts of a release: image names, downgrade commands, env files, remote refs, inspect."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from deployer.commands.docker import parse_inspect
from deployer.errors import ConfigError, DeployerError
from deployer.server.target import env_file_text, shell
from deployer.steps.common import downgrade_argv, new_release_id, saved_tag, split_image


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("recipes-web", ("recipes-web", "latest")),
        ("recipes-web:1.2", ("recipes-web", "1.2")),
        ("registry:5000/team/app", ("registry:5000/team/app", "latest")),
        ("registry:5000/team/app:v3", ("registry:5000/team/app", "v3")),
    ],
)
def test_split_image(image: str, expected: tuple[str, str]) -> None:
    assert split_image(image) == expected


def test_saved_tag_and_release_id() -> None:
    assert saved_tag("registry:5000/app:v3", "r1") == "registry:5000/app:deployer-r1"
    when = datetime(2026, 11, 25, 1, 2, 3, tzinfo=UTC)
    assert new_release_id("abcdef0123456789", when) == "20261125-010203-abcdef0"


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (("flask", "db", "upgrade"), ["flask", "db", "downgrade", "abc"]),
        (("alembic", "-c", "a.ini", "upgrade", "head"), ["alembic", "-c", "a.ini", "downgrade", "abc"]),
    ],
)
def test_downgrade_argv(command: tuple[str, ...], expected: list[str]) -> None:
    assert downgrade_argv(command, "abc") == expected


def test_downgrade_argv_unknown_command() -> None:
    with pytest.raises(DeployerError, match="cannot derive a downgrade command"):
        downgrade_argv(("./migrate.sh",), "abc")


def test_env_file_text_quotes_values() -> None:
    text = env_file_text({"A": "plain", "B": "with space #and $dollar", "C": "it's \"q\""})
    assert text.splitlines() == ["A='plain'", "B='with space #and $dollar'", 'C="it\'s \\"q\\""']
    with pytest.raises(ConfigError, match="line break"):
        env_file_text({"A": "x\ny"})


def test_shell_quotes_once() -> None:
    assert shell(["pg_dump", "a b"], stdout_path="/tmp/x y") == ["sh", "-c", "exec pg_dump 'a b' > '/tmp/x y'"]
    assert shell(["cat"], stdin_path="/f") == ["sh", "-c", "exec cat < /f"]


def test_parse_inspect() -> None:
    row = {
        "Id": "abc", "Name": "/recipes-web-1", "Image": "sha256:123", "RestartCount": 2,
        "State": {"Status": "running", "StartedAt": "2026-01-01T00:00:00Z", "Health": {"Status": "healthy"}},
        "Config": {"Image": "recipes-web", "Env": ["A=1", "B=x=y"], "Labels": {"com.docker.compose.service": "web"}},
        "NetworkSettings": {"Networks": {"recipes_default": {"IPAddress": "172.18.0.3"}, "none": {"IPAddress": ""}}},
    }
    (container,) = parse_inspect(json.dumps([row]))
    assert container.name == "recipes-web-1" and container.service == "web" and container.image == "recipes-web"
    assert container.ips == ("172.18.0.3",) and container.env == {"A": "1", "B": "x=y"}
    assert container.restart_count == 2 and container.is_healthy and not container.oneoff


def test_container_age_from_docker_times() -> None:
    from datetime import datetime, timedelta

    from deployer.server.health import _age

    ten_ago = (datetime.now(UTC) - timedelta(seconds=10)).strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"
    assert 9.5 < _age(ten_ago) < 11
    assert _age("") == 0.0 and _age("0001-01-01T00:00:00Z") > 1e9
