"""``deployer config check [ENV]``: what a release needs that can be checked without the host,
against real files and a real git repository; each problem one line with its fix, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from deployer import api
from deployer.readiness import Report
from tests.bench.cli import envelope
from tests.bench.gitrepos import git

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]

COMPOSE = """\
services:
  web:
    build: .
    environment:
      DATABASE_URL: postgresql://app:${APP_DB_PASSWORD:?set APP_DB_PASSWORD}@db/app
    ports:
      - "127.0.0.1:${APP_PORT:-8000}:8000"
  worker:
    build: .
  db:
    image: ${POSTGRES_IMAGE:-postgres:15}
    environment:
      POSTGRES_PASSWORD: ${APP_DB_PASSWORD:?set APP_DB_PASSWORD}
"""

DEPLOY = """\
[app]
name = "shop"

[environments.production]
host = "deploy@203.0.113.10"
path = "/srv/shop"

[environments.production.env]
APP_DB_PASSWORD = "${APP_DB_PASSWORD}"

[environments.staging]
host = "deploy@203.0.113.11"
path = "/srv/shop"

[environments.staging.env]
APP_DB_PASSWORD = "${STAGING_DB_PASSWORD}"
"""

REVISION = '''"""{message}

Revision ID: {revision}
Revises: {down}
"""
revision = "{revision}"
down_revision = {down_literal}


def upgrade():
    pass


def downgrade():
    pass
'''


def revision_file(revision: str, down: str | None) -> str:
    return REVISION.format(message=f"rev {revision}", revision=revision, down=down or "",
                           down_literal=repr(down))


def make_app(root: Path, files: Mapping[str, str | None] | None = None, *, commit: bool = True) -> Path:
    """An app repository: compose file, deploy.toml, one revision; ``files`` change it."""
    content: dict[str, str | None] = {
        "docker-compose.yml": COMPOSE, "deploy.toml": DEPLOY,
        "migrations/env.py": "# alembic env\n", "migrations/versions/a1_first.py": revision_file("a1", None),
        **(files or {}),
    }
    root.mkdir(parents=True, exist_ok=True)
    for path, text in content.items():
        if text is not None:
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text(text)
    git("init", "--quiet", str(root))
    if commit:
        git("add", "--all", cwd=root)
        git("-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "--quiet", "-m", "app", cwd=root)
    return root


def report(root: Path, env: str | None = None, environ: Mapping[str, str] | None = None) -> Report:
    saved = dict(os.environ)
    os.environ.update(environ or {})
    try:
        return api.check_config(env, config_path=root / "deploy.toml")
    finally:
        os.environ.clear()
        os.environ.update(saved)


def levels(rep: Report, env: str | None = None) -> dict[str, str]:
    """check name -> level, for the app (``env`` None) or one environment."""
    checks = rep.checks if env is None else next(e for e in rep.environments if e.name == env).checks
    return {check.name: check.level for check in checks}


def detail(rep: Report, name: str, env: str | None = None) -> str:
    checks = rep.checks if env is None else next(e for e in rep.environments if e.name == env).checks
    found = next(check for check in checks if check.name == name)
    return f"{found.detail} | hint: {found.hint}"


SECRETS = {"APP_DB_PASSWORD": "pw-1234", "STAGING_DB_PASSWORD": "pw-5678"}


def test_a_ready_app_is_ready(tmp_path: Path) -> None:
    rep = report(make_app(tmp_path / "app"), environ=SECRETS)
    assert rep.ok, rep
    assert levels(rep) == {"compose file": "ok", "services": "ok", "migrations": "ok", "repository": "ok"}
    assert levels(rep, "production") == {"variables": "ok", "compose variables": "ok", "playbook": "ok"}
    assert detail(rep, "compose variables", "production").startswith("env gives APP_DB_PASSWORD")
    assert [e.name for e in rep.environments] == ["production", "staging"]
    assert any("the host" in item for item in rep.not_checked) and any("database" in item for item in rep.not_checked)


def test_a_missing_compose_file_is_a_problem(tmp_path: Path) -> None:
    rep = report(make_app(tmp_path / "app", {"docker-compose.yml": None}), environ=SECRETS)
    assert not rep.ok and levels(rep)["compose file"] == "problem"
    assert detail(rep, "compose file").startswith("docker-compose.yml: no such file")
    broken = report(make_app(tmp_path / "broken", {"docker-compose.yml": "services: [\n"}), environ=SECRETS)
    assert levels(broken)["compose file"] == "problem" and "not valid YAML" in detail(broken, "compose file")


def test_the_named_services_must_exist(tmp_path: Path) -> None:
    text = DEPLOY.replace('name = "shop"', 'name = "shop"\nweb_service = "app"\ndb_service = "postgres"')
    rep = report(make_app(tmp_path / "app", {"deploy.toml": text}), environ=SECRETS)
    assert levels(rep)["services"] == "problem"
    assert detail(rep, "services") == ('docker-compose.yml has no service for web_service = "app", db_service = "postgres" '
                                       "(in [app]) | hint: its services: db, web, worker")
    roles = DEPLOY.replace('host = "deploy@203.0.113.10"',
                           'hosts = [{host = "a", roles = ["web", "db"]}, {host = "b", roles = ["web", "celery"]}]')
    rep = report(make_app(tmp_path / "roles", {"deploy.toml": roles}), environ=SECRETS)
    assert levels(rep, "production")["roles"] == "problem" and "celery" in detail(rep, "roles", "production")
    assert "roles" not in levels(rep, "staging")


def test_a_playbook_with_an_unknown_step_or_service_is_a_problem(tmp_path: Path) -> None:
    book = (REPO_ROOT / "deployer" / "playbooks" / "release.toml").read_text()
    files = {"deploy.toml": DEPLOY.replace('path = "/srv/shop"\n', 'path = "/srv/shop"\nplaybook = "mine"\n', 1),
             "playbooks/mine.toml": book.replace('step = "migrate"', 'step = "migrat"')}
    rep = report(make_app(tmp_path / "app", files), environ=SECRETS)
    assert levels(rep, "production")["playbook"] == "problem" and levels(rep, "staging")["playbook"] == "ok"
    assert "unknown step 'migrat' (did you mean 'migrate'?)" in detail(rep, "playbook", "production")
    # A run step before record (the steps after it check the recorded release's backup).
    files["playbooks/mine.toml"] = book.replace('[[steps]]\nstep = "record"',
                                                '[[steps]]\nstep = "run"\ncommand = "flask seed"\nservice = "api"\n\n'
                                                '[[steps]]\nstep = "record"', 1)
    rep = report(make_app(tmp_path / "service", files), environ=SECRETS)
    assert levels(rep, "production")["playbook"] == "problem", detail(rep, "playbook", "production")
    assert "run steps name services api" in detail(rep, "playbook", "production")


def test_every_environment_without_its_variables_is_reported(tmp_path: Path) -> None:
    app = make_app(tmp_path / "app")
    rep = report(app)
    assert levels(rep, "production")["variables"] == levels(rep, "staging")["variables"] == "problem"
    assert detail(rep, "variables", "staging").startswith("STAGING_DB_PASSWORD is not set (for environments.staging.env.APP_DB_PASSWORD)")
    # one environment named: only its own
    only = report(app, "production", environ={"APP_DB_PASSWORD": "pw-1234"})
    assert only.ok and [e.name for e in only.environments] == ["production"]


def test_variables_the_compose_file_requires_must_be_given(tmp_path: Path) -> None:
    text = DEPLOY.replace('[environments.production.env]\nAPP_DB_PASSWORD = "${APP_DB_PASSWORD}"\n',
                          '[environments.production.env]\nAPP_PORT = "8001"\n')
    rep = report(make_app(tmp_path / "app", {"deploy.toml": text}), environ=SECRETS)
    assert levels(rep, "production")["compose variables"] == "problem"
    assert detail(rep, "compose variables", "production") == (
        "docker-compose.yml requires APP_DB_PASSWORD (set APP_DB_PASSWORD), which env does not set | "
        'hint: add them to the env table, e.g. APP_DB_PASSWORD = "${APP_DB_PASSWORD}" (taken from your shell)')
    # no env table at all: compose on the host reads the checkout's .env, which cannot be seen from here
    bare = DEPLOY.split("[environments.production.env]")[0]
    rep = report(make_app(tmp_path / "bare", {"deploy.toml": bare}), environ=SECRETS)
    assert rep.ok and levels(rep, "production")["compose variables"] == "warning"
    # this machine: compose also sees the shell's variables
    local = bare.replace('host = "deploy@203.0.113.10"', 'host = "local"')
    rep = report(make_app(tmp_path / "local", {"deploy.toml": local}), environ=SECRETS)
    assert levels(rep, "production")["compose variables"] == "ok"


def test_several_migration_heads_are_a_problem_and_uncommitted_files_a_warning(tmp_path: Path) -> None:
    heads = {"migrations/versions/b2_left.py": revision_file("b2", "a1"), "migrations/versions/c3_right.py": revision_file("c3", "a1")}
    rep = report(make_app(tmp_path / "app", heads), environ=SECRETS)
    assert levels(rep)["migrations"] == "problem" and "several heads (b2, c3)" in detail(rep, "migrations")
    fresh = report(make_app(tmp_path / "fresh", commit=False), environ=SECRETS)
    assert levels(fresh)["repository"] == "problem" and "no commit yet" in detail(fresh, "repository")
    app = make_app(tmp_path / "later")
    (app / "compose.yaml").write_text(COMPOSE)
    (app / "deploy.toml").write_text(DEPLOY.replace('name = "shop"', 'name = "shop"\ncompose_file = "compose.yaml"'))
    rep = report(app, environ=SECRETS)
    assert rep.ok and levels(rep)["repository"] == "warning"
    assert detail(rep, "repository").startswith("not committed (HEAD): compose.yaml")


def test_the_command(tmp_path: Path) -> None:
    """Text and --json through the real command: the report, then exit 2 and one error line."""
    app = make_app(tmp_path / "app", {"docker-compose.yml": None})
    environ = {k: v for k, v in os.environ.items() if k not in ("APP_DB_PASSWORD", "STAGING_DB_PASSWORD", "DEPLOYER_CONFIG")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "deployer", "config", "check", *args], cwd=app, env=environ,
                                capture_output=True, text=True, timeout=60, check=False)
        assert "Traceback" not in result.stderr, result.stderr
        return result

    text = run()
    assert text.returncode == 2
    assert text.stdout.startswith("deploy.toml: valid (app shop)\n  PROBLEM  compose file: docker-compose.yml: no such file\n")
    assert "environment staging (deploy@203.0.113.11)\n  PROBLEM  variables: STAGING_DB_PASSWORD is not set" in text.stdout
    assert "not checked (`deployer release ENV --dry-run` reads them, changing nothing):" in text.stdout
    assert text.stderr.strip() == ("error: deploy.toml: 3 problems: compose file; production: variables; "
                                   "staging: variables"), text.stderr
    doc = envelope(run("staging", "--json").stdout)
    assert doc["ok"] is False and doc["exit_code"] == 2 and doc["error"]["kind"] == "ConfigError"
    assert [e["name"] for e in doc["result"]["environments"]] == ["staging"]
    assert doc["result"]["checks"][0] == {"name": "compose file", "level": "problem", "detail": "docker-compose.yml: no such file",
                                          "hint": doc["result"]["checks"][0]["hint"]}
    unknown = run("prod")
    assert unknown.returncode == 2 and 'unknown environment "prod"' in unknown.stderr and "did you mean production" in unknown.stderr


def test_the_repositorys_own_local_environment_is_ready() -> None:
    result = subprocess.run([sys.executable, "-m", "deployer", "config", "check", "local"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60, check=False,
                            env={k: v for k, v in os.environ.items() if k != "DEPLOYER_CONFIG"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ready, as far as can be told from here: local" in result.stdout


def test_a_variable_the_compose_file_never_reads_is_a_warning(tmp_path: Path) -> None:
    text = DEPLOY.replace('APP_DB_PASSWORD = "${APP_DB_PASSWORD}"\n', 'APP_DB_PASSWORD = "${APP_DB_PASSWORD}"\nAPP_PROT = "8001"\n', 1)
    rep = report(make_app(tmp_path / "app", {"deploy.toml": text}), environ=SECRETS)
    assert rep.ok and levels(rep, "production")["compose variables"] == "warning"
    assert detail(rep, "compose variables", "production").startswith(
        "env sets what docker-compose.yml never reads: APP_PROT; did you mean APP_PORT?")
