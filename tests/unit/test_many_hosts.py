"""The pure parts of several hosts: which services a host runs, the compose file that leaves
the others out, per-host variables, and where hosts' reports disagree."""

from __future__ import annotations

from pathlib import Path

import yaml

from deployer.commands.compose import ComposeConfig, ServiceConfig
from deployer.config import load_config, show_config
from deployer.server.target import ELSEWHERE_PROFILE, Target, host_override_text, make_compose, runs_some
from deployer.status import (
    CodeState,
    FleetStatus,
    LockState,
    ReleaseSummary,
    Status,
    assess,
    fleet_disagreements,
    render_fleet,
)
from tests.unit.test_config import edit

HOSTS = '''hosts = [
  {host = "deploy@203.0.113.10", env = {DB_BIND = "203.0.113.10"}},
  {host = "deploy@203.0.113.11", env = {DATABASE_HOST = "203.0.113.10", API_TOKEN = "s3cret-token"}},
  {host = "deploy@203.0.113.12", roles = ["worker"]},
]
'''


def config(tmp_path: Path):  # noqa: ANN201 - a Config
    (tmp_path / "deploy.toml").write_text(edit('host = "deploy@203.0.113.10"\n', HOSTS))
    return load_config(cwd=tmp_path, environ={})


def target(cfg, index: int) -> Target:  # noqa: ANN001
    env = cfg.environment("production")
    entry = env.hosts[index]
    mine = env.on(entry)
    return Target(cfg, mine, None, make_compose(cfg, mine, partial=runs_some(entry)), entry)  # type: ignore[arg-type]


STACK = ComposeConfig(services={
    "web": ServiceConfig(name="web", depends_on=("cache", "db")),
    "worker": ServiceConfig(name="worker", depends_on=("db",)),
    "cache": ServiceConfig(name="cache"),
    "db": ServiceConfig(name="db"),
})


def test_which_services_run_where(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    primary, other, worker = (target(cfg, i) for i in range(3))
    assert primary.services_here(STACK.services) == ("cache", "db", "web", "worker") and not primary.partial
    assert other.services_here(STACK.services) == ("cache", "web", "worker")  # the database runs on the primary only
    assert worker.services_here(STACK.services) == ("worker",)
    assert primary.compose.overrides == ()
    assert other.compose.overrides == ("/srv/recipes.deployer/compose.host.yml",)


def test_a_host_variable_wins_over_the_environment_and_a_secret_one_is_redacted(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    assert target(cfg, 1).env.env == {"WEB_PORT": "8000", "DATABASE_HOST": "203.0.113.10", "API_TOKEN": "s3cret-token"}
    assert target(cfg, 0).env.env == {"WEB_PORT": "8000", "DB_BIND": "203.0.113.10"}
    assert cfg.redact("token s3cret-token") == "token ***"
    shown = show_config(cfg, "production")["environments"]["production"]["hosts"]
    assert shown[1]["env"] == {"DATABASE_HOST": "203.0.113.10", "API_TOKEN": "***"}


def test_the_host_override_leaves_out_what_runs_elsewhere() -> None:
    text = host_override_text(STACK, ("cache", "web", "worker"))
    assert "!override" in text
    parsed = yaml.safe_load(text.replace("!override", ""))  # compose's tag; plain YAML sees the value
    assert parsed["services"]["db"] == {"profiles": [ELSEWHERE_PROFILE]}
    assert parsed["services"]["web"] == {"depends_on": ["cache"]}
    assert parsed["services"]["worker"] == {"depends_on": []}
    assert "cache" not in parsed["services"]
    only_worker = yaml.safe_load(host_override_text(STACK, ("worker",)).replace("!override", ""))
    assert {name for name, s in only_worker["services"].items() if s.get("profiles")} == {"cache", "db", "web"}
    assert yaml.safe_load(host_override_text(STACK, tuple(STACK.services))) == {"services": {}}


def report(host: str, *, running: str, checkout: str, last: str, code: int = 0) -> Status:
    return Status(
        environment="production", host=host, path="/srv/app", checked_at="2026-12-03T00:00:00+00:00", seconds=0.1,
        code=CodeState(branch="main", deployed=checkout, deployed_subject="s", tip=checkout, tip_subject="s", ahead=0, behind=0),
        database=assess((), None, None), services=(), lock=LockState(held=False),
        last_release=ReleaseSummary(id=last, kind="release", outcome="succeeded", commit=running,
                                    finished_at="2026-12-03T00:00:00+00:00", user="u"),
        last_backup=None, problems=(), exit_code=code, running=running,
    )


def test_hosts_that_run_the_same_release_agree() -> None:
    same = [report(h, running="a" * 40, checkout="a" * 40, last="r1") for h in ("m1", "m2", "m3")]
    assert fleet_disagreements(same) == []
    text = render_fleet(FleetStatus("production", tuple(same), (), 0, 0.3))
    assert "the 3 hosts agree" in text and text.count("production on m") == 3


def test_a_host_changed_by_hand_is_named() -> None:
    reports = [report("m1", running="a" * 40, checkout="a" * 40, last="r2"),
               report("m2", running="a" * 40, checkout="a" * 40, last="r2"),
               report("m3", running="b" * 40, checkout="b" * 40, last="r1")]
    found = fleet_disagreements(reports)
    assert found == [
        f"hosts disagree on what they run: m1, m2: {'a' * 12}; m3: {'b' * 12}",
        f"hosts disagree on what they have the checkout at: m1, m2: {'a' * 12}; m3: {'b' * 12}",
        "hosts disagree on what they last journaled: m1, m2: r2; m3: r1",
    ]
    assert "  ! hosts disagree on what they run" in render_fleet(FleetStatus("production", tuple(reports), tuple(found), 15, 0.3))


def test_one_host_in_hosts_takes_its_variables(tmp_path: Path) -> None:
    (tmp_path / "deploy.toml").write_text(edit('host = "deploy@203.0.113.10"\n',
                                               'hosts = [{host = "deploy@203.0.113.10", env = {DB_BIND = "10.0.0.5"}}]\n'))
    env = load_config(cwd=tmp_path, environ={}).environment("production")
    assert not env.many_hosts and env.env == {"WEB_PORT": "8000", "DB_BIND": "10.0.0.5"}
