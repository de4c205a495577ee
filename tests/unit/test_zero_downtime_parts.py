"""The pure parts of zero-downtime releases: where the proxy listens and sends requests
(inferred from the compose file's ports), the compose override and commands the swap runs,
and how a release's probe summary is shown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from deployer.commands.compose import V2, Compose, PublishedPort, parse_config
from deployer.config import load_config
from deployer.errors import ConfigError
from deployer.proxy.modes import swap_mode
from deployer.proxy.probe import ProbeSummary, describe_served
from deployer.proxy.site import public_address, site_for
from deployer.server.target import make_compose, proxy_override_text

CONFIG = """\
[app]
name = "shop"
compose_file = "compose.yml"
web_service = "app"
db_service = "db"
migrations_dir = "migrations"

[environments.production]
host = "deploy@192.0.2.10"
path = "/srv/shop"
"""


def config(tmp_path: Path, proxy: str = "[environments.production.proxy]\n"):  # noqa: ANN201
    (tmp_path / "deploy.toml").write_text(CONFIG + proxy)
    return load_config(tmp_path / "deploy.toml", environ={})


def compose_with(ports: str) -> object:
    text = f"services:\n  app:\n    image: shop\n    ports:\n{ports}\n  db:\n    image: postgres\n"
    return parse_config(text, "shop")


LONG = "      - {mode: ingress, host_ip: 127.0.0.1, target: 5000, published: '8000', protocol: tcp}"


def test_ports_are_read_in_long_and_short_syntax() -> None:
    assert compose_with(LONG).services["app"].ports == (PublishedPort(5000, 8000, "127.0.0.1"),)
    short = compose_with('      - "127.0.0.1:8001:5001"\n      - "9000:9001/udp"\n      - "7000"')
    assert short.services["app"].ports == (PublishedPort(5001, 8001, "127.0.0.1"), PublishedPort(9001, 9000), PublishedPort(7000, None))


def test_the_proxy_takes_the_web_services_port(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    env = cfg.environment("production")
    site = site_for(cfg, env, compose_with(LONG))
    assert site is not None
    assert (site.name, site.publish, site.web_port, site.mode) == ("deployer-proxy-shop", "127.0.0.1:8000", 5000, "auto")
    assert site.config_dir == "/srv/shop.deployer/proxy"
    assert public_address(site) == ("127.0.0.1", 8000)
    container = site.container("shop_default")
    assert container.settings.pause_timeout == 10 and container.network == "shop_default"
    assert "--publish" in container.run_argv() and "127.0.0.1:8000:8080" in container.run_argv()


def test_what_the_table_says_wins_and_what_cannot_be_inferred_is_named(tmp_path: Path) -> None:
    cfg = config(tmp_path, '[environments.production.proxy]\nlisten = "80"\nweb_port = 5050\nmode = "pause"\n')
    site = site_for(cfg, cfg.environment("production"), compose_with(LONG))
    assert site is not None and (site.publish, site.web_port, site.mode) == ("80", 5050, "pause")
    assert public_address(site) == ("127.0.0.1", 80)
    bare = parse_config("services:\n  app:\n    image: shop\n", "shop")
    cfg = config(tmp_path)
    with pytest.raises(ConfigError, match="no `listen`, and the app service publishes no fixed port") as caught:
        site_for(cfg, cfg.environment("production"), bare)
    assert caught.value.hint and 'listen = "127.0.0.1:8000"' in caught.value.hint
    cfg = config(tmp_path, '[environments.production.proxy]\nlisten = "8000"\n')
    with pytest.raises(ConfigError, match="no `web_port`"):
        site_for(cfg, cfg.environment("production"), bare)
    assert site_for(config(tmp_path, ""), config(tmp_path, "").environment("production"), bare) is None


def test_the_override_resets_the_web_ports_and_only_commands_that_run_containers_read_it(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    compose = make_compose(cfg, cfg.environment("production"), V2)
    override = "/srv/shop.deployer/compose.proxy.yml"
    assert compose.overrides == (override,)
    assert override in compose.up(["app"]) and override in compose.run("app", ["flask", "db", "upgrade"])
    assert override not in compose.config()  # what the user's files say (their ports included)
    assert compose.config_hash("app")[-3:] == ["config", "--hash", "app"] and override in compose.config_hash("app")
    text = proxy_override_text("app")

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!reset", lambda loader, node: ("reset", loader.construct_sequence(node)))
    assert yaml.load(text, Loader=Loader) == {"services": {"app": {"ports": ("reset", [])}}}
    plain = config(tmp_path, "")
    assert make_compose(plain, plain.environment("production"), V2).overrides == ()


def test_the_swap_starts_a_second_container_beside_the_first() -> None:
    compose = Compose(program=V2, project="shop", project_dir="/srv/shop", files=("/srv/shop/compose.yml",))
    argv = compose.up(["app"], no_deps=True, no_recreate=True, scale={"app": 2})
    assert argv[argv.index("up"):] == ["up", "--detach", "--no-build", "--no-deps", "--no-recreate", "--scale", "app=2", "app"]


def test_no_migration_pending_overlaps_and_says_so() -> None:
    assert swap_mode(()).describe() == "overlap: no migration pending"
    assert swap_mode((), "pause").describe() == "pause: set by configuration"


def test_a_journaled_probe_summary_reads_as_the_release_said_it() -> None:
    summary = ProbeSummary(probes=412, failed=0, slowest_ms=38.4, p99_ms=21.0, longest_gap_ms=38.4)
    assert describe_served(summary.as_dict()) == summary.describe() == "served throughout: 0 failed of 412 probes, slowest 38 ms"
    failed = ProbeSummary(probes=300, failed=3, slowest_ms=2000, p99_ms=30, longest_gap_ms=2100, first_failure="HTTP 502")
    assert describe_served(failed.as_dict()) == "3 of 300 probes failed, slowest 2000 ms, longest gap 2100 ms (first: HTTP 502)"


def test_status_names_the_container_the_proxy_sends_requests_to_and_what_is_wrong() -> None:
    from deployer.commands.docker import Container
    from deployer.proxy.runtime import Routes
    from deployer.status import proxy_state

    web = Container(id="1", name="shop-app-2", service="app", image_id="sha256:a", image="shop", state="running",
                    health="healthy", restart_count=0, started_at="", ips=("172.18.0.5",))
    state, problems = proxy_state(Routes("deployer-proxy-shop", "running", (("172.18.0.5", 5000),)), [web], "app")
    assert state.routes_to == ("shop-app-2",) and problems == []
    _, problems = proxy_state(Routes("deployer-proxy-shop", "running", (("172.18.0.9", 5000),)), [web], "app")
    assert problems == ["the proxy deployer-proxy-shop sends requests to 172.18.0.9:5000, which no running app container has"]
    _, problems = proxy_state(Routes("deployer-proxy-shop", "running", ()), [web], "app")
    assert problems == ["the proxy deployer-proxy-shop sends requests to no container"]
    state, problems = proxy_state(Routes("deployer-proxy-shop", ""), [web], "app")
    assert state.state == "missing" and "does not run (no such container): the site does not answer" in problems[0]


def test_an_interrupted_swap_says_what_it_had_done() -> None:
    from deployer.server.runlog import STARTED, Goal, Progress, RunRecord, Source

    record = RunRecord(
        id="r2", kind="release", environment="prod", playbook="release", steps=(("swap", "swap"),), holder="me", pid=1,
        started_at="t", source=Source(commit="a" * 40, revision=("old1",)), goal=Goal(commit="b" * 40, heads=("new1",), release="r2"),
        progress=(Progress("swap", "swap", STARTED, "t"),), swap={"old": ["c" * 64], "new": "d" * 64, "switched": True},
    )
    text = record.describe()
    assert text.endswith(f"; the swap had started web container {'d' * 12} and the proxy had switched to it"), text
    assert RunRecord.from_dict(json.loads(record.to_json())).swap == record.swap
