"""``deployer init`` without running anything: what it reads in a repository's files
(:mod:`deployer.discovery`) and the deploy.toml it writes (:mod:`deployer.scaffold`).

The corpus of tests/apps/ holds six apps, each with the deploy.toml its team wrote by hand:
init, told only the host, must find the same [app] values in each, and the example app's
too. What it writes loads with deployer's own loader and passes the JSON Schema.
"""

from __future__ import annotations

import re
import shutil
import tomllib
from pathlib import Path

import pytest
from jsonschema import Draft7Validator

from deployer.config import load_config
from deployer.config.schema import json_schema
from deployer.discovery import discover
from deployer.errors import ConfigError
from deployer.scaffold import Given, questions, scaffold, write

REPO_ROOT = Path(__file__).resolve().parents[2]
APPS = REPO_ROOT / "tests" / "apps"
APP_KEYS = ("compose_file", "web_service", "db_service", "migrations_dir", "migrate_command", "database_url_variable")
# What each team's deploy.toml leaves at its default, as the loader fills it in.
DEFAULTS = {"compose_file": "docker-compose.yml", "web_service": "web", "db_service": "db", "migrations_dir": "migrations",
            "migrate_command": "flask db upgrade", "database_url_variable": None}
# The path of each team's health URL (members checks a command, its URL is the sign-in page).
HEALTH = {"blog": "/health", "shop": "/internal/health", "tasks": "/healthz", "vault": "/status", "jotter": "/health",
          "members": None, "example": "/health"}


def copy_app(name: str, tmp_path: Path) -> Path:
    """The app's repository in a directory of its own (outside this repository's git)."""
    target = tmp_path / name
    if name == "example":
        target.mkdir()
        shutil.copy(REPO_ROOT / "docker-compose.prod.yml", target)
        shutil.copytree(REPO_ROOT / "example", target / "example", ignore=shutil.ignore_patterns("__pycache__"))
    else:
        shutil.copytree(APPS / name / "repo", target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def team_app_table(name: str) -> dict[str, object]:
    if name == "example":
        text = (REPO_ROOT / "deploy.toml").read_text()
    else:
        text = re.sub(r"@@[A-Z_]+@@", "x", (APPS / name / "deploy.toml").read_text())
    app = tomllib.loads(text)["app"]
    return {key: app.get(key, DEFAULTS[key]) for key in APP_KEYS}


@pytest.mark.parametrize("name", ["example", "blog", "shop", "tasks", "vault", "jotter", "members"])
def test_init_finds_what_each_team_wrote_by_hand(name: str, tmp_path: Path) -> None:
    root = copy_app(name, tmp_path)
    health = None if HEALTH[name] else "/login"
    plan = scaffold(root, Given(host="deploy@203.0.113.10", name="demo", health_url=health))
    written = tomllib.loads(plan.text)
    assert {key: written["app"].get(key) for key in APP_KEYS} == team_app_table(name)
    environment = written["environments"]["production"]
    assert environment["host"] == "deploy@203.0.113.10" and environment["path"] == "/srv/demo"
    assert environment["healthcheck_url"].endswith(HEALTH[name] or "/login")
    # what init writes is valid: deployer's loader and the JSON Schema both accept it
    Draft7Validator(json_schema()).validate(written)
    write(plan)
    config = load_config(root / "deploy.toml", environ={})
    assert config.app.name == "demo" and config.environment_names == ("production",)


def test_every_variable_the_compose_file_requires_comes_from_the_shell(tmp_path: Path) -> None:
    root = copy_app("members", tmp_path)
    plan = scaffold(root, Given(host="local", health_url="none", variables={"MEMBERS_PORT": "8123"}))
    env = tomllib.loads(plan.text)["environments"]["production"]["env"]
    assert env == {"MEMBERS_DB_PASSWORD": "${MEMBERS_DB_PASSWORD}", "MEMBERS_SECRET_KEY": "${MEMBERS_SECRET_KEY}",
                   "MEMBERS_ADMIN_PASSWORD": "${MEMBERS_ADMIN_PASSWORD}", "MEMBERS_PORT": "8123"}
    assert plan.from_shell == ("MEMBERS_DB_PASSWORD", "MEMBERS_SECRET_KEY", "MEMBERS_ADMIN_PASSWORD")
    assert [step.split()[1] for step in plan.next[:3]] == ["MEMBERS_DB_PASSWORD=...", "MEMBERS_SECRET_KEY=...",
                                                           "MEMBERS_ADMIN_PASSWORD=..."]
    assert plan.next[-1].startswith("deployer config check production")
    assert "healthcheck_url =" not in plan.text.replace("# healthcheck_url", "")
    # what the compose file reads with a default is offered, commented out
    assert '# PYTHON_IMAGE = "python:3.11-slim"' in plan.text


def test_a_variable_the_command_line_sets_moves_the_health_url_with_it(tmp_path: Path) -> None:
    plan = scaffold(copy_app("blog", tmp_path), Given(host="local", variables={"BLOG_PORT": "12345"}))
    assert tomllib.loads(plan.text)["environments"]["production"]["healthcheck_url"] == "http://127.0.0.1:12345/health"


def test_a_secret_is_never_written_into_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--var BLOG_DB_PASSWORD=...: a secret does not belong in deploy.toml"):
        scaffold(copy_app("blog", tmp_path), Given(host="local", variables={"BLOG_DB_PASSWORD": "hunter2-hunter2"}))


def test_without_a_terminal_it_names_every_flag_it_needs(tmp_path: Path) -> None:
    root = copy_app("members", tmp_path)
    (root / "docker-compose.prod.yml").write_text((root / "docker-compose.yml").read_text())
    (root / "compose.prod.yaml").write_text((root / "docker-compose.yml").read_text())
    with pytest.raises(ConfigError) as caught:
        scaffold(root, Given())
    message = caught.value.message
    assert message.startswith("deployer init cannot tell, and there is no terminal to ask: the host (--host: ")
    assert "the compose file (--compose-file: several compose files could be production's: " \
           "docker-compose.prod.yml, compose.prod.yaml)" in message
    assert caught.value.hint == "pass them: deployer init --host ... --compose-file ..."
    # told the compose file, it finds the rest; the health page of members is not to be found
    open_ = questions(discover(root, compose_file="docker-compose.yml"), Given(host="local"))
    assert [(c.what, c.flag) for c in open_] == [("health URL", "--health-url")]


def test_services_it_cannot_tell_apart_are_a_question(tmp_path: Path) -> None:
    (tmp_path / "compose.yaml").write_text(
        "services:\n"
        "  shop:\n    build: ./shop\n    ports: ['8000:8000']\n    command: gunicorn shop:app\n"
        "  admin:\n    build: ./admin\n    ports: ['8001:8000']\n    command: gunicorn admin:app\n"
        "  maria:\n    image: mariadb:11\n"
        "  cache:\n    image: redis:7\n")
    found = discover(tmp_path)
    assert found.web is None and found.db is not None and found.db.name == "maria" and found.engine == "mariadb"
    assert [(c.flag, c.options) for c in found.choices][0] == ("--web-service", ("admin", "shop"))
    chosen = discover(tmp_path, web_service="shop")
    assert chosen.web is not None and chosen.web.name == "shop" and chosen.web.build_context == "shop"
    with pytest.raises(ConfigError, match="--web-service nope: the compose file has no such service"):
        discover(tmp_path, web_service="nope")


def test_plain_alembic_and_a_migrations_dir_elsewhere(tmp_path: Path) -> None:
    (tmp_path / "docker-compose.yml").write_text(
        "services:\n  web:\n    build: .\n    ports: ['80:8000']\n    command: uvicorn main:app\n"
        "    environment:\n      APP_DB: mysql+pymysql://u:p@db/app\n  db:\n    image: mysql:8\n")
    (tmp_path / "alembic.ini").write_text("[alembic]\nscript_location = db/alembic\n")
    (tmp_path / "db" / "alembic" / "versions").mkdir(parents=True)
    (tmp_path / "db" / "alembic" / "env.py").write_text("from alembic import context\n")
    found = discover(tmp_path)
    assert found.migrations is not None and found.migrations.directory == "db/alembic"
    assert found.migrations.command == "alembic upgrade head" and not found.migrations.flask_migrate
    assert found.engine == "mysql" and found.database_url_variable == "APP_DB"
    # Flask-Migrate scripts that are not in the container's ./migrations are named to flask
    flask = tmp_path / "flask"
    (flask / "app" / "db_scripts" / "versions").mkdir(parents=True)
    (flask / "app" / "db_scripts" / "env.py").write_text("from flask import current_app\n")
    (flask / "docker-compose.yml").write_text("services:\n  web:\n    build: ./app\n    ports: ['5000:5000']\n"
                                              "    environment:\n      DATABASE_URL: sqlite:////data/app.db\n")
    found = discover(flask)
    assert found.migrations is not None and found.migrations.command == "flask db upgrade --directory db_scripts"
    assert found.db is None and found.engine == "sqlite"


def test_dotenv_values_go_into_the_env_table(tmp_path: Path) -> None:
    root = copy_app("blog", tmp_path)
    text = (root / "docker-compose.yml").read_text().replace("${BLOG_PORT:-5000}", "${BLOG_PORT}")
    (root / "docker-compose.yml").write_text(text)
    (root / ".env").write_text("# local settings\nBLOG_PORT=5050\nexport BLOG_DB_PASSWORD='dev-only'\n")
    plan = scaffold(root, Given(host="local"))
    env = tomllib.loads(plan.text)["environments"]["production"]["env"]
    # compose on the server reads deployer's env file instead of .env: what it held comes along,
    # but a secret never leaves the shell
    assert env == {"BLOG_DB_PASSWORD": "${BLOG_DB_PASSWORD}", "BLOG_PORT": "5050"}
    assert tomllib.loads(plan.text)["environments"]["production"]["healthcheck_url"] == "http://127.0.0.1:5050/health"


def test_a_backup_dir_inside_a_build_context_is_kept_out_of_the_image(tmp_path: Path) -> None:
    root = copy_app("example", tmp_path)
    plan = scaffold(root, Given(host="local", path="/srv/recipes", backup_dir="/srv/recipes/example/backups"))
    assert plan.ignores == {"example/.dockerignore": ("backups",)}
    before = (root / "example" / ".dockerignore").read_text()
    assert write(plan) == ["deploy.toml", "example/.dockerignore"]
    after = (root / "example" / ".dockerignore").read_text()
    assert after.startswith(before) and after.endswith("\nbackups\n")
    # preflight's own check (the docker SDK's matcher) now lets the release through
    from docker.utils.build import PatternMatcher

    patterns = [line for line in after.splitlines() if line and not line.startswith("#")]
    assert PatternMatcher(patterns).matches("backups")
    # beside the checkout (the default, or a backup_dir outside every context): nothing to add
    (root / "deploy.toml").unlink()
    assert scaffold(root, Given(host="local", path="/srv/recipes", backup_dir="/srv/recipes/backups")).ignores == {}


def test_an_existing_deploy_toml_is_kept_unless_forced(tmp_path: Path) -> None:
    root = copy_app("jotter", tmp_path)
    (root / "deploy.toml").write_text("# ours\n")
    plan = scaffold(root, Given(host="local"))
    with pytest.raises(ConfigError, match="deploy.toml already exists here"):
        write(plan)
    assert (root / "deploy.toml").read_text() == "# ours\n"
    write(plan, force=True)
    assert (root / "deploy.toml").read_text() == plan.text
    assert not list(root.glob(".deploy-*"))  # the file is written whole, through a temporary one


@pytest.mark.parametrize(("given", "flag"), [
    (Given(host="deploy@"), "--host 'deploy@'"), (Given(host="local", path="srv/x"), "--path 'srv/x'"),
    (Given(host="local", name="My App"), "--name 'My App'"), (Given(host="local", environment="prod env"), "--environment"),
    (Given(host="local", health_url="health"), "--health-url 'health'"),
    (Given(host="local", variables={"1X": "y"}), "--var 1X=..."),
])
def test_a_bad_flag_is_named(tmp_path: Path, given: Given, flag: str) -> None:
    with pytest.raises(ConfigError) as caught:
        scaffold(copy_app("jotter", tmp_path), given)
    assert caught.value.message.startswith(flag), caught.value.message


def test_the_proxy_is_opt_in_per_environment(tmp_path: Path) -> None:
    root = copy_app("jotter", tmp_path)
    off = scaffold(root, Given(host="local"))
    assert "# [environments.production.proxy]" in off.text and "proxy" not in tomllib.loads(off.text)["environments"]["production"]
    on = scaffold(root, Given(host="local", environment="staging", proxy=True, proxy_image="haproxy:2.8"))
    assert tomllib.loads(on.text)["environments"]["staging"]["proxy"] == {"image": "haproxy:2.8"}
