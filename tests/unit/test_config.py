"""deploy.toml: loading, defaults, ${} interpolation, redaction, and one clear error per broken file."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from deployer.config import (
    AppConfig,
    Config,
    Environment,
    HostEntry,
    ProxyConfig,
    Rollout,
    find_config,
    load_config,
    redact,
    show_config,
)
from deployer.config.interpolate import InterpolationError, interpolate, interpolate_tree
from deployer.errors import ConfigError, ExitCode
from deployer.hosts.spec import HostSpec

REPO_ROOT = Path(__file__).resolve().parents[2]

VALID = """\
[app]
name = "recipes"
compose_file = "docker-compose.prod.yml"
web_service = "web"
db_service = "db"
migrations_dir = "example/migrations"
migrate_command = "flask db upgrade"
branch = "main"

[environments.production]
host = "deploy@203.0.113.10"
path = "/srv/recipes"
healthcheck_url = "http://127.0.0.1:8000/health"
backup_dir = "/srv/recipes/backups"
keep_backups = 10
playbook = "release"

[environments.production.env]
WEB_PORT = "8000"
"""


APP, ENVIRONMENTS = VALID.split("[environments.production]")
H = 'host = "deploy@203.0.113.10"\n'  # the one host line, to replace with hosts


def edit(old: str, new: str, text: str = VALID) -> str:
    """VALID with one exact fragment replaced (failing loudly if the fragment is not there)."""
    assert old in text, f"test bug: {old!r} not in the base config"
    return text.replace(old, new, 1)


def write(directory: Path, text: str | bytes) -> Path:
    file = directory / "deploy.toml"
    if isinstance(text, bytes):
        file.write_bytes(text)
    else:
        file.write_text(text, encoding="utf-8")
    return file


def load_text(tmp_path: Path, text: str | bytes, environ: dict[str, str] | None = None) -> Config:
    """Load, then use every environment (a missing variable only surfaces on use)."""
    write(tmp_path, text)
    config = load_config(cwd=tmp_path, environ=environ or {})
    for name in config.environment_names:
        config.environment(name)
    return config


# (id, deploy.toml text, key path, a phrase of the expectation); no environment variables are set.
BROKEN: list[tuple[str, str | bytes, str, str]] = [
    ("toml-syntax", edit("keep_backups = 10", "keep_backups = ten"), "deploy.toml:15:16", "invalid TOML"),
    ("toml-duplicate-key", edit('branch = "main"', 'branch = "main"\nbranch = "dev"'), "deploy.toml:9", "invalid TOML"),
    ("not-utf8", VALID.encode() + b'# caf\xe9\n', "deploy.toml", "not UTF-8"),
    ("missing-app", "[environments.production]" + ENVIRONMENTS, "app", "missing required table [app]"),
    ("missing-app-name", edit('name = "recipes"\n', ""), "app.name",
     "missing required key: expected a compose project name"),
    ("missing-host", edit('host = "deploy@203.0.113.10"\n', ""), "environments.production",
     "missing required key host (or hosts = [...] for several)"),
    ("host-and-hosts", edit(H, H + 'hosts = ["deploy@203.0.113.11"]\n'), "environments.production",
     "set either host = \"...\" or hosts = [...], not both"),
    ("hosts-empty", edit(H, "hosts = []\n"), "environments.production", "hosts is empty"),
    ("hosts-twice", edit(H, 'hosts = ["deploy@203.0.113.11", {host = "deploy@203.0.113.11"}]\n'),
     "environments.production", "hosts: deploy@203.0.113.11 is listed twice"),
    ("hosts-local-and-more", edit(H, 'hosts = ["local", "deploy@203.0.113.11"]\n'), "environments.production",
     '"local" cannot be one of several hosts'),
    ("hosts-two-primaries", edit(H, 'hosts = [{host = "a", primary = true}, {host = "b", primary = true}]\n'),
     "environments.production", "more than one host is primary = true"),
    ("hosts-bad-host", edit(H, 'hosts = ["a", {host = "no spaces"}]\n'), "environments.production.hosts.1.host",
     "is not a host"),
    ("hosts-unknown-key", edit(H, 'hosts = [{host = "a", role = ["web"]}]\n'), "environments.production.hosts.0.role",
     "unknown key; did you mean roles?"),
    ("rollout-batch-zero", edit(H, H + "rollout = {batch = 0}\n"), "environments.production.rollout.batch",
     "expected an integer >= 1 (hosts switched at a time), got 0"),
    ("missing-path", edit('path = "/srv/recipes"\n', ""), "environments.production.path",
     "missing required key: expected an absolute path"),
    ("unknown-app-key", edit("compose_file =", "compose_fle ="), "app.compose_fle",
     "unknown key; did you mean compose_file?"),
    ("unknown-env-key", edit("healthcheck_url =", "helthcheck_url ="), "environments.production.helthcheck_url",
     "unknown key; did you mean healthcheck_url?"),
    ("unknown-table", '[enviroments.staging]\nhost = "local"\n' + VALID,
     "enviroments", "unknown table; did you mean environments?"),
    ("unknown-top-key", "colour = \"blue\"\n" + VALID, "colour", "unknown key"),
    ("misspelt-app-table", VALID.replace("[app]", "[aplication]"), "aplication", "unknown table; did you mean app?"),
    ("long-app-table", VALID.replace("[app]", "[application]"), "application", "unknown table; did you mean app?"),
    ("singular-environments", VALID.replace("[environments.", "[environment."), "environment",
     "unknown table; did you mean environments?"),
    ("environment-without-prefix", VALID.replace("[environments.", "["), "production",
     "unknown table; did you mean [environments.production]?"),
    ("string-for-int", edit("keep_backups = 10", 'keep_backups = "ten"'), "environments.production.keep_backups",
     'expected an integer >= 1, got "ten"'),
    ("int-for-string", edit('path = "/srv/recipes"', "path = 5"), "environments.production.path",
     "expected an absolute path"),
    ("bool-for-int", edit("keep_backups = 10", "keep_backups = true"), "environments.production.keep_backups",
     "expected an integer >= 1, got true"),
    ("float-for-int", edit("keep_backups = 10", "keep_backups = 2.5"), "environments.production.keep_backups",
     "expected an integer >= 1, got 2.5"),
    ("bool-for-seconds", edit("[app]\n", "[app]\nmigrate_timeout = true\n"), "app.migrate_timeout",
     "expected a number of seconds > 0, got true"),
    ("zero-seconds", edit('playbook = "release"', 'playbook = "release"\nhealth_timeout = 0'),
     "environments.production.health_timeout", "expected a number of seconds > 0, got 0"),
    ("lock-timeout-negative", edit('playbook = "release"', 'playbook = "release"\nlock_timeout = -1'),
     "environments.production.lock_timeout", "expected seconds a migration may wait for a lock (a number >= 0; 0: no limit), got -1"),
    ("lock-retries-many", edit('playbook = "release"', 'playbook = "release"\nlock_retries = 50'),
     "environments.production.lock_retries", "expected an integer from 0 to 20, got 50"),
    ("keep-backups-zero", edit("keep_backups = 10", "keep_backups = 0"), "environments.production.keep_backups",
     "expected an integer >= 1, got 0"),
    ("keep-backups-negative", edit("keep_backups = 10", "keep_backups = -3"), "environments.production.keep_backups",
     "expected an integer >= 1, got -3"),
    ("no-environments", APP, "environments", "no environments"),
    ("environment-not-table", APP + '[environments]\nproduction = "deploy@host"\n',
     "environments.production", "expected a table [environments.production] with at least host and path"),
    ("environments-not-table", 'environments = "production"\n' + APP,
     "environments", "expected a table of [environments.NAME] tables"),
    ("app-not-table", 'app = "recipes"\n[environments.production]' + ENVIRONMENTS,
     "app", 'expected a table [app], got "recipes"'),
    ("bad-environment-name", edit("[environments.production]", '[environments."prod env"]').replace(
        "[environments.production.env]", '[environments."prod env".env]'),
     'environments."prod env"', "expected an environment name"),
    ("host-empty", edit('host = "deploy@203.0.113.10"', 'host = ""'), "environments.production.host", "is not a host"),
    ("host-no-hostname", edit('host = "deploy@203.0.113.10"', 'host = "deploy@"'), "environments.production.host",
     'expected "local" or "[user@]host[:port]"'),
    ("host-space", edit('host = "deploy@203.0.113.10"', 'host = "de ploy@example.com"'), "environments.production.host",
     "is not a host"),
    ("host-two-ports", edit('host = "deploy@203.0.113.10"', 'host = "deploy@example.com:22:23"'),
     "environments.production.host", "is not a host"),
    ("host-port-range", edit('host = "deploy@203.0.113.10"', 'host = "deploy@example.com:70000"'),
     "environments.production.host", "a port is a number from 1 to 65535"),
    ("host-port-zero", edit('host = "deploy@203.0.113.10"', 'host = "deploy@example.com:0"'),
     "environments.production.host", "a port is a number from 1 to 65535"),
    ("path-relative", edit('path = "/srv/recipes"', 'path = "srv/recipes"'), "environments.production.path",
     "expected an absolute path"),
    ("path-dotdot", edit('path = "/srv/recipes"', 'path = "/srv/../etc"'), "environments.production.path", "no '..'"),
    ("backup-dir-relative", edit('backup_dir = "/srv/recipes/backups"', 'backup_dir = "backups"'),
     "environments.production.backup_dir", "expected an absolute path"),
    ("url-scheme", edit('"http://127.0.0.1:8000/health"', '"ftp://127.0.0.1/health"'),
     "environments.production.healthcheck_url", "the scheme must be http or https"),
    ("url-no-host", edit('"http://127.0.0.1:8000/health"', '"http:///health"'),
     "environments.production.healthcheck_url", "it has no host"),
    ("url-not-url", edit('"http://127.0.0.1:8000/health"', '"127.0.0.1:8000/health"'),
     "environments.production.healthcheck_url", "expected an http(s) URL"),
    ("url-port", edit('"http://127.0.0.1:8000/health"', '"http://127.0.0.1:99999/health"'),
     "environments.production.healthcheck_url", "port is not a number from 1 to 65535"),
    ("database-url", edit('playbook = "release"', 'playbook = "release"\ndatabase_url = "db:5432/recipes"'),
     "environments.production.database_url", "starts with dialect://"),
    ("project-name-upper", edit('name = "recipes"', 'name = "Recipes App"'), "app.name",
     'expected a compose project name: lowercase letters, digits, "_" and "-"'),
    ("project-name-dash", edit('name = "recipes"', 'name = "-recipes"'), "app.name", "expected a compose project name"),
    ("service-name", edit('web_service = "web"', 'web_service = "web server"'), "app.web_service",
     "expected a compose service name"),
    ("migrate-empty", edit('migrate_command = "flask db upgrade"', 'migrate_command = "   "'), "app.migrate_command",
     "expected a command line"),
    ("migrate-quotes", edit('migrate_command = "flask db upgrade"', "migrate_command = 'flask db \"upgrade'"),
     "app.migrate_command", "no closing quotation"),
    ("migrations-absolute", edit('migrations_dir = "example/migrations"', 'migrations_dir = "/srv/migrations"'),
     "app.migrations_dir", "expected a path relative to the repository root"),
    ("migrations-escape", edit('migrations_dir = "example/migrations"', 'migrations_dir = "../other/migrations"'),
     "app.migrations_dir", "inside the repository"),
    ("compose-file-absolute", edit('compose_file = "docker-compose.prod.yml"', 'compose_file = "/etc/compose.yml"'),
     "app.compose_file", "expected a path relative to the repository root"),
    ("branch-option", edit('branch = "main"', 'branch = "--force"'), "app.branch", "expected a git branch name"),
    ("branch-dotdot", edit('playbook = "release"', 'playbook = "release"\nbranch = "a..b"'),
     "environments.production.branch", "expected a git branch name"),
    ("remote-option", edit('playbook = "release"', 'playbook = "release"\nremote = "--upload-pack=evil"'),
     "environments.production.remote", "starts with '-'"),
    ("playbook-name", edit('playbook = "release"', 'playbook = "my playbook"'), "environments.production.playbook",
     "expected a playbook name"),
    ("playbook-path", edit('playbook = "release"', 'playbook = "../release.toml"'),
     "environments.production.playbook", 'got "../release.toml"'),
    ("env-value-newline", edit('WEB_PORT = "8000"', 'WEB_PORT = "80\\n00"'), "environments.production.env.WEB_PORT",
     "a compose env file cannot carry"),
    ("env-value-int", edit('WEB_PORT = "8000"', "WEB_PORT = 8000"), "environments.production.env.WEB_PORT",
     "expected a string, got 8000"),
    ("env-value-bool", edit('WEB_PORT = "8000"', "DEBUG = false"), "environments.production.env.DEBUG",
     "expected a string, got false"),
    ("env-name", edit('WEB_PORT = "8000"', 'WEB-PORT = "8000"'), 'environments.production.env.WEB-PORT',
     "expected an environment variable name"),
    ("env-not-table", edit("[environments.production.env]\nWEB_PORT = \"8000\"\n", "").replace(
        'playbook = "release"', 'playbook = "release"\nenv = "WEB_PORT=8000"'),
     "environments.production.env", 'expected a table of NAME = "value" strings'),
    ("missing-variable", edit('WEB_PORT = "8000"', 'RECIPES_DB_PASSWORD = "${RECIPES_DB_PASSWORD}"'),
     "environments.production.env.RECIPES_DB_PASSWORD", "export RECIPES_DB_PASSWORD="),
    ("missing-variable-app", edit('branch = "main"', 'branch = "${RELEASE_BRANCH}"'), "app.branch",
     "environment variable RELEASE_BRANCH is not set: export RELEASE_BRANCH="),
    ("variable-bad-name", edit('path = "/srv/recipes"', 'path = "/srv/${1DIR}"'), "environments.production.path",
     "invalid variable reference"),
    ("variable-empty", edit('path = "/srv/recipes"', 'path = "/srv/${}"'), "environments.production.path",
     "invalid variable reference"),
    ("variable-bad-operator", edit('path = "/srv/recipes"', 'path = "/srv/${DIR:=x}"'), "environments.production.path",
     "expected ${NAME} or ${NAME:-default}"),
    ("proxy-bad-web-port", VALID + '\n[environments.production.proxy]\nweb_port = 0\n',
     "environments.production.proxy.web_port", "expected the port the web service listens on"),
    ("proxy-bad-listen", VALID + '\n[environments.production.proxy]\nlisten = "web:80"\nweb_port = 8000\n',
     "environments.production.proxy.listen", "the address must be an IP address"),
    ("proxy-bad-mode", VALID + '\n[environments.production.proxy]\nlisten = "80"\nweb_port = 8000\nmode = "always"\n',
     "environments.production.proxy.mode", 'expected "auto", "overlap" or "pause", got "always"'),
    ("proxy-unknown-key", VALID + '\n[environments.production.proxy]\nlisten = "80"\nweb_port = 8000\ndrain = 5\n',
     "environments.production.proxy.drain", "unknown key; did you mean drain_timeout?"),
    ("variable-unterminated", edit('path = "/srv/recipes"', 'path = "/srv/${DIR"'), "environments.production.path",
     'unterminated "${"'),
]


@pytest.mark.parametrize(("text", "key_path", "phrase"), [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN])
def test_broken_file_is_one_clear_config_error(tmp_path: Path, text: str | bytes, key_path: str, phrase: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)
    message = caught.value.message
    assert caught.value.exit_code == ExitCode.CONFIG == 2
    # deploy.toml is named first, then the key path (or line:col for syntax errors).
    separator = "" if key_path.startswith("deploy.toml") else "deploy.toml: "
    assert f"{separator}{key_path}:" in message, message
    assert phrase in message, message


def test_several_hosts_the_primary_first_with_roles_and_a_rollout(tmp_path: Path) -> None:
    hosts = ('hosts = ["deploy@203.0.113.10", {host = "deploy@203.0.113.11:2222", roles = ["web", "worker"], '
             'primary = true}, "203.0.113.12"]\nrollout = {batch = 2, pause = 5}\n')
    env = load_text(tmp_path, edit('host = "deploy@203.0.113.10"\n', hosts)).environment("production")
    assert env.hosts == (
        HostEntry(HostSpec("203.0.113.11", user="deploy", port=2222), ("web", "worker"), primary=True),
        HostEntry(HostSpec("203.0.113.10", user="deploy")),
        HostEntry(HostSpec("203.0.113.12")),
    )
    assert env.host == env.hosts[0].spec and env.many_hosts and env.rollout == Rollout(batch=2, pause=5.0)
    shown = show_config(load_config(cwd=tmp_path, environ={}), "production")["environments"]["production"]
    assert "host" not in shown and shown["rollout"] == {"batch": 2, "pause": 5.0}
    assert [h["host"] for h in shown["hosts"]] == ["deploy@203.0.113.11:2222", "deploy@203.0.113.10", "203.0.113.12"]
    # one host, either way: the primary, no rollout shown
    for text in (VALID, edit('host = "deploy@203.0.113.10"\n', 'hosts = ["deploy@203.0.113.10"]\n')):
        env = load_text(tmp_path, text).environment("production")
        assert env.hosts == (HostEntry(HostSpec("203.0.113.10", user="deploy"), primary=True),) and not env.many_hosts
        shown = show_config(load_config(cwd=tmp_path, environ={}), "production")["environments"]["production"]
        assert shown["host"] == "deploy@203.0.113.10" and "hosts" not in shown and "rollout" not in shown


def test_a_proxy_table_is_read_with_its_defaults(tmp_path: Path) -> None:
    config = load_text(tmp_path, VALID + '\n[environments.production.proxy]\nlisten = "127.0.0.1:8000"\nweb_port = 8000\n')
    proxy = config.environment("production").proxy
    assert proxy == ProxyConfig(listen="127.0.0.1:8000", web_port=8000)
    assert proxy.mode == "auto" and proxy.pause_timeout == 10 and proxy.drain_timeout == 30 and proxy.image == "haproxy:2.6"
    shown = show_config(config, "production")["environments"]["production"]["proxy"]
    assert shown["listen"] == "127.0.0.1:8000" and shown["mode"] == "auto"
    assert load_text(tmp_path, VALID).environment("production").proxy is None


def test_at_least_25_broken_cases() -> None:
    assert len(BROKEN) >= 25
    assert len({case[0] for case in BROKEN}) == len(BROKEN)


def test_toml_syntax_error_points_at_line_and_column(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, edit("keep_backups = 10", "keep_backups = ten"))
    assert str(caught.value.message).splitlines() == [
        "deploy.toml:15:16: invalid TOML: Invalid value",
        "    keep_backups = ten",
        "                   ^",
    ]
    assert caught.value.hint and "toml.io" in caught.value.hint


def test_every_problem_is_listed_in_one_error(tmp_path: Path) -> None:
    text = edit("keep_backups = 10", "keep_backups = 0", edit('name = "recipes"', 'name = "Bad"'))
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)
    lines = caught.value.message.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith('deploy.toml: app.name: expected a compose project name')
    assert lines[1] == "deploy.toml: environments.production.keep_backups: expected an integer >= 1, got 0"
    assert caught.value.hint and "docs/configuration.md" in caught.value.hint


def test_explicit_file_not_found_hints_at_config_option(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config("missing.toml", cwd=tmp_path, environ={})
    assert caught.value.exit_code == 2
    assert caught.value.message == "missing.toml: no such file"
    assert caught.value.hint and "--config" in caught.value.hint and "create" in caught.value.hint


def test_nothing_found_walking_up(tmp_path: Path) -> None:
    start = tmp_path / "a" / "b"
    start.mkdir(parents=True)
    with pytest.raises(ConfigError) as caught:
        find_config(start)
    assert caught.value.exit_code == 2
    assert f"no deploy.toml found in {start} or any parent directory" in caught.value.message
    assert caught.value.hint and "--config" in caught.value.hint


def test_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "deploy.toml").mkdir()  # a directory where the file should be: the read fails
    with pytest.raises(ConfigError) as caught:
        load_config("deploy.toml", cwd=tmp_path, environ={})
    assert caught.value.exit_code == 2
    assert caught.value.message.startswith("deploy.toml: cannot read the file: ")


def test_unknown_environment_lists_the_known_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the file is named as seen from the current directory
    config = load_text(tmp_path, VALID + '\n[environments.staging]\nhost = "local"\npath = "/srv/staging"\n')
    with pytest.raises(ConfigError) as caught:
        config.environment("prod")
    assert caught.value.exit_code == 2
    message = caught.value.message
    assert message == (
        'deploy.toml: unknown environment "prod"; known environments: production, staging; did you mean production?'
    )


def test_error_messages_never_show_a_secret(tmp_path: Path) -> None:
    text = edit("keep_backups = 10", 'keep_backups = "${BACKUPS}"')
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text, {"BACKUPS": "hunter2-secret"})
    assert "hunter2-secret" not in str(caught.value)
    assert 'environments.production.keep_backups: expected an integer >= 1, got "***"' in caught.value.message


def test_missing_variable_only_blocks_its_own_environment(tmp_path: Path) -> None:
    text = VALID + """
[environments.staging]
host = "${STAGING_HOST}"
path = "/srv/staging"
keep_backups = 2
"""
    config = load_text(tmp_path, text, {"STAGING_HOST": "ops@example.com"})
    assert config.environment("staging").host == HostSpec("example.com", user="ops")
    write(tmp_path, text)
    config = load_config(cwd=tmp_path, environ={})
    assert config.environment("production").keep_backups == 10
    assert set(config.environments) == {"production"} and set(config.unresolved) == {"staging"}
    with pytest.raises(ConfigError) as caught:
        config.environment("staging")
    assert caught.value.message == (
        "deploy.toml: environments.staging.host: environment variable STAGING_HOST is not set: "
        "export STAGING_HOST=... before running deployer, or give a default with ${STAGING_HOST:-default}"
    )
    # Everything else about that environment is still validated up front.
    write(tmp_path, text.replace("keep_backups = 2", "keep_backups = 0"))
    with pytest.raises(ConfigError, match="environments.staging.keep_backups: expected an integer >= 1, got 0"):
        load_config(cwd=tmp_path, environ={})


# --- valid files -------------------------------------------------------------------------


def test_valid_file_gives_typed_frozen_objects(tmp_path: Path) -> None:
    config = load_text(tmp_path, VALID)
    assert config.path == tmp_path / "deploy.toml"
    assert config.root == tmp_path
    assert config.app == AppConfig(
        name="recipes", compose_file="docker-compose.prod.yml", web_service="web", db_service="db",
        migrations_dir="example/migrations", migrate_command=("flask", "db", "upgrade"),
        migrate_timeout=600.0, branch="main",
    )
    production = config.environment("production")
    assert production == Environment(
        name="production", host=HostSpec("203.0.113.10", user="deploy"), path="/srv/recipes",
        healthcheck_url="http://127.0.0.1:8000/health", backup_dir="/srv/recipes/backups", keep_backups=10,
        playbook="release", health_timeout=60.0, branch="main", remote=None, env={"WEB_PORT": "8000"},
        database_url=None, state_dir="/srv/recipes.deployer",
        hosts=(HostEntry(HostSpec("203.0.113.10", user="deploy"), primary=True),),
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        production.keep_backups = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        production.env["WEB_PORT"] = "9000"  # type: ignore[index]
    with pytest.raises(TypeError):
        config.environments["x"] = production  # type: ignore[index]


def test_defaults_and_overrides(tmp_path: Path) -> None:
    text = """\
[app]
name = "shop"

[environments.staging]
host = "ops@example.com:2222"
path = "/srv/shop/"
branch = "release/2.0"
remote = "git@example.com:team/shop.git"
keep_backup = 3
"""
    with pytest.raises(ConfigError, match="did you mean"):
        load_text(tmp_path, text)
    config = load_text(tmp_path, text.replace("keep_backup = 3\n", ""))
    assert config.app == AppConfig(
        name="shop", compose_file="docker-compose.yml", web_service="web", db_service="db",
        migrations_dir="migrations", migrate_command=("flask", "db", "upgrade"), migrate_timeout=600.0,
        branch="main",
    )
    staging = config.environment("staging")
    assert staging.host == HostSpec("example.com", user="ops", port=2222)
    assert staging.path == "/srv/shop"
    # deployer's files and the backups live beside the checkout, outside its build context
    assert staging.state_dir == "/srv/shop.deployer"
    assert staging.backup_dir == "/srv/shop.deployer/backups"
    assert (staging.keep_backups, staging.playbook, staging.health_timeout) == (10, "release", 60.0)
    assert staging.healthcheck_url is None and staging.database_url is None
    assert staging.branch == "release/2.0"
    assert staging.remote == "git@example.com:team/shop.git"
    assert dict(staging.env) == {}


def test_migrate_command_is_split_like_a_shell(tmp_path: Path) -> None:
    text = edit('migrate_command = "flask db upgrade"',
                """migrate_command = "python -m flask --app 'app:create_app(\\"prod\\")' db upgrade\"""")
    config = load_text(tmp_path, text)
    assert config.app.migrate_command == ("python", "-m", "flask", "--app", 'app:create_app("prod")', "db", "upgrade")


def test_find_config_walks_up_and_root_is_its_directory(tmp_path: Path) -> None:
    write(tmp_path, VALID)
    deep = tmp_path / "example" / "app"
    deep.mkdir(parents=True)
    assert find_config(deep) == tmp_path / "deploy.toml"
    config = load_config(cwd=deep, environ={})
    assert config.root == tmp_path
    # An explicit path is taken relative to cwd and shown the way it was given.
    other = tmp_path / "conf"
    other.mkdir()
    (other / "deploy.toml").write_text(edit('name = "recipes"', 'name = "other"'))
    assert load_config("conf/deploy.toml", cwd=tmp_path, environ={}).app.name == "other"
    assert load_config(other / "deploy.toml", environ={}).root == other


# --- interpolation and secrets -----------------------------------------------------------


def test_interpolation_defaults_escapes_and_secrets(tmp_path: Path) -> None:
    text = edit('WEB_PORT = "8000"', """\
WEB_PORT = "${WEB_PORT:-8000}"
IMAGE = "${PYTHON_IMAGE:-python:3.11-slim}"
TEMPLATE = "$${NOT_INTERPOLATED} costs $5"
DB_PASSWORD = "${RECIPES_DB_PASSWORD}"
""")
    config = load_text(tmp_path, text, {"RECIPES_DB_PASSWORD": "s3cret!pw", "WEB_PORT": ""})
    env = config.environment("production").env
    assert dict(env) == {
        "WEB_PORT": "8000",  # empty counts as unset for ":-"
        "IMAGE": "python:3.11-slim",
        "TEMPLATE": "${NOT_INTERPOLATED} costs $5",
        "DB_PASSWORD": "s3cret!pw",
    }
    assert config.secrets == frozenset({"s3cret!pw"})  # defaults are not secrets


def test_values_from_the_environment_are_secrets_except_images_tags_ports_versions(tmp_path: Path) -> None:
    text = edit('WEB_PORT = "8000"', """\
WEB_PORT = "${WEB_PORT:-8000}"
POSTGRES_IMAGE = "${POSTGRES_IMAGE:-postgres:15}"
WEB_IMAGE_TAG = "${WEB_IMAGE_TAG}"
SENTRY_DSN = "${SENTRY_DSN}"
IMAGE_TOKEN = "${REGISTRY_TOKEN_IMAGE}"
""")
    environ = {"WEB_PORT": "8100", "POSTGRES_IMAGE": "bench/postgres:15", "WEB_IMAGE_TAG": "v42",
               "SENTRY_DSN": "https://k3y@sentry.example/1", "REGISTRY_TOKEN_IMAGE": "tok-123456"}
    config = load_text(tmp_path, text, environ)
    assert dict(config.environment("production").env)["POSTGRES_IMAGE"] == "bench/postgres:15"
    # status shows the images that run: an image name from the shell stays readable
    assert config.secrets == frozenset({"https://k3y@sentry.example/1", "tok-123456"})


def test_show_config_redacts_every_secret(tmp_path: Path) -> None:
    text = edit('WEB_PORT = "8000"', """\
WEB_PORT = "8000"
PYTHON_IMAGE = "${PYTHON_IMAGE:-python:3.11-slim}"
API_TOKEN = "literal-token-value"
""")
    text = edit('playbook = "release"', """playbook = "release"
database_url = "postgresql://recipes:${RECIPES_DB_PASSWORD}@db:5432/recipes"
remote = "https://ci:${GIT_DEPLOY_KEY}@git.example.com/recipes.git\"""", text)
    environ = {"RECIPES_DB_PASSWORD": "pg-pass-1", "GIT_DEPLOY_KEY": "gk-123456", "PYTHON_IMAGE": "bench/python:1"}
    config = load_text(tmp_path, text, environ)
    shown = show_config(config, "production")
    body = shown["environments"]["production"]
    assert body["database_url"] == "postgresql://recipes:***@db:5432/recipes"
    assert body["remote"] == "https://ci:***@git.example.com/recipes.git"
    assert body["env"] == {"WEB_PORT": "8000", "PYTHON_IMAGE": "bench/python:1", "API_TOKEN": "***"}
    assert body["host"] == "deploy@203.0.113.10"
    assert shown["app"]["migrate_command"] == "flask db upgrade"
    assert "healthcheck_url" in body and "name" not in body
    flat = repr(shown)
    for secret in ["pg-pass-1", "gk-123456", "literal-token-value"]:
        assert secret not in flat
    # The same secrets are scrubbed from any text, and kept out of repr().
    log = "connecting with pg-pass-1 as ci:gk-123456, token literal-token-value"
    assert config.redact(log) == "connecting with *** as ci:***, token ***"
    assert "pg-pass-1" not in repr(config)


def test_database_url_literal_password_is_a_secret(tmp_path: Path) -> None:
    text = edit('playbook = "release"', 'playbook = "release"\ndatabase_url = "postgresql://app:p%40ss-word@db/app"')
    config = load_text(tmp_path, text)
    assert {"p%40ss-word", "p@ss-word"} <= config.secrets
    body = show_config(config, "production")["environments"]["production"]
    assert body["database_url"] == "postgresql://app:***@db/app"


def test_redact_longest_first_and_skips_tiny_values() -> None:
    assert redact("abcdef and abcd", {"abcd", "abcdef"}) == "*** and ***"
    assert redact("port 80 is open", {"80"}) == "port 80 is open"
    assert redact("port 80 is open", {"80"}, min_length=1) == "port *** is open"


def test_interpolate_unit() -> None:
    assert interpolate("a${X}b${Y:-y}c", {"X": "1"}).value == "a1byc"
    assert interpolate("a${X}b${Y:-y}c", {"X": "1"}).secrets == ("1",)
    assert interpolate("$$ and $${X} and $X", {"X": "1"}).value == "$$ and ${X} and $X"
    assert interpolate("${X:-}", {}).value == ""
    with pytest.raises(InterpolationError, match="X is not set"):
        interpolate("${X}", {})
    tree = interpolate_tree({"a": ["${A}", {"b": "${B:-d}"}], "n": 3}, {"A": "x"})
    assert tree.data == {"a": ["x", {"b": "d"}], "n": 3} and tree.secrets == frozenset({"x"})
    with pytest.raises(InterpolationError) as caught:
        interpolate_tree({"a": ["ok", "${"]}, {})
    assert caught.value.path == ("a", "[1]")
    # Deferred: a missing variable under a chosen path keeps the string and reports it.
    tree = interpolate_tree({"e": {"x": "${NOPE}", "y": "${Y}"}}, {"Y": "why"}, defer=lambda p: p[0] == "e")
    assert tree.data == {"e": {"x": "${NOPE}", "y": "why"}}
    assert list(tree.deferred) == [("e", "x")] and tree.deferred[("e", "x")].name == "NOPE"
    with pytest.raises(InterpolationError, match="invalid variable reference"):
        interpolate_tree({"e": {"x": "${1}"}}, {}, defer=lambda p: True)  # bad syntax is never deferred


# --- the repository's own deploy.toml ------------------------------------------------------


def test_repository_deploy_toml_loads() -> None:
    environ = {"RECIPES_DB_PASSWORD": "prod-db-pass"}
    config = load_config("deploy.toml", cwd=REPO_ROOT, environ=environ)
    assert config.root == REPO_ROOT
    assert (config.app.name, config.app.compose_file) == ("recipes", "docker-compose.prod.yml")
    assert config.app.migrations_dir == "example/migrations"
    assert set(config.environments) == {"local", "production"}
    local = config.environment("local")
    assert local.host.is_local and local.healthcheck_url == "http://127.0.0.1:8000/health"
    production = config.environment("production")
    assert production.host == HostSpec("203.0.113.10", user="deploy")
    assert production.path == "/srv/recipes"
    assert production.env["RECIPES_DB_PASSWORD"] == "prod-db-pass"
    assert "prod-db-pass" in config.secrets
    shown = show_config(config, "production")
    assert "prod-db-pass" not in repr(shown)


def test_repository_deploy_toml_local_runs_with_bench_images_offline() -> None:
    environ = {"PYTHON_IMAGE": "deployer-bench/python:bookworm", "POSTGRES_IMAGE": "deployer-bench/postgres:15"}
    config = load_config("deploy.toml", cwd=REPO_ROOT, environ=environ)
    with pytest.raises(ConfigError) as caught:
        config.environment("production")  # needs its password exported; local does not
    assert caught.value.exit_code == 2
    # Every string needing the variable is named, one line each.
    assert caught.value.message.splitlines() == [
        f"deploy.toml: environments.production.{key}: environment variable RECIPES_DB_PASSWORD is not set: "
        "export RECIPES_DB_PASSWORD=... before running deployer, or give a default with ${RECIPES_DB_PASSWORD:-default}"
        for key in ("database_url", "env.RECIPES_DB_PASSWORD")
    ]
    assert config.environment_names == ("local", "production")
    env = config.environment("local").env
    assert env["PYTHON_IMAGE"] == "deployer-bench/python:bookworm"
    assert env["POSTGRES_IMAGE"] == "deployer-bench/postgres:15"
    shown = show_config(config, "local")["environments"]["local"]["env"]
    assert shown["RECIPES_DB_PASSWORD"] == "***"  # looks like a password, even from a default


def test_credential_headers_are_secrets(tmp_path: Path) -> None:
    text = edit('playbook = "release"', 'playbook = "release"\nhealthcheck_headers = '
                '{ Authorization = "Bearer tok-literal-987", Cookie = "session=c00kie-v4lue", X-Forwarded-Proto = "https" }')
    config = load_text(tmp_path, text)
    assert {"Bearer tok-literal-987", "tok-literal-987", "session=c00kie-v4lue"} <= config.secrets
    assert "https" not in config.secrets
    body = show_config(config, "production")["environments"]["production"]
    assert body["healthcheck_headers"] == {"Authorization": "***", "Cookie": "***", "X-Forwarded-Proto": "https"}
    assert config.redact("curl -H 'Authorization: Bearer tok-literal-987'") == "curl -H 'Authorization: ***'"


def test_backup_copy_places(tmp_path: Path) -> None:
    from deployer.config import BackupCopy, parse_backup_copy
    from deployer.hosts.spec import HostSpec

    assert parse_backup_copy("local:~/backups/shop/") == BackupCopy("local:~/backups/shop/", "~/backups/shop")
    assert parse_backup_copy("local:/var/backups//shop") == BackupCopy("local:/var/backups//shop", "/var/backups/shop")
    remote = parse_backup_copy("host:backup@203.0.113.5:2222:/srv/backups")
    assert remote.host == HostSpec("203.0.113.5", "backup", 2222) and remote.directory == "/srv/backups"
    assert remote.label == "backup@203.0.113.5:2222" and not remote.is_local
    for bad, why in [("local:backups", "must be absolute"), ("local:/a/../b", 'no ".."'), ("host:x:rel", "absolute DIR"),
                     ("host:local:/x", 'write "local:DIR"'), ("s3:bucket", 'expected "local:DIR"')]:
        with pytest.raises(ValueError, match=why):
            parse_backup_copy(bad)
    (tmp_path / "deploy.toml").write_text('[app]\nname = "shop"\n[environments.p]\nhost = "local"\npath = "/srv/s"\n'
                                          'backup_copy = "local:/b"\n')
    assert [str(c) for c in load_config(tmp_path / "deploy.toml").environment("p").backup_copies] == ["local:/b"]
    for value, message in [('"local:b"', 'backup_copy: "local:b": the directory of "local:DIR" must be absolute'),
                           ('["local:/b", "local:/b"]', "backup_copy: local:/b is listed twice"),
                           ("[3]", "backup_copy: expected an array of strings")]:
        (tmp_path / "deploy.toml").write_text('[app]\nname = "shop"\n[environments.p]\nhost = "local"\npath = "/srv/s"\n'
                                              f"backup_copy = {value}\n")
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(tmp_path / "deploy.toml")
