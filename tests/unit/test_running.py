"""``deployer exec`` and ``deployer logs`` planned on a fake host: the one-off container of the
running image (pinned by id when its name moved), the logs' argv, bad input, the host chosen."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deployer.commands.compose import V2, Compose
from deployer.config import load_config
from deployer.errors import ConfigError, DeployerError
from deployer.server import running
from deployer.server.target import Target
from tests.unit.fakes import FakeHost

RUNNING_ID = "sha256:" + "1" * 64
BASE = ["docker", "compose", "--project-name", "shop", "--project-directory", "/srv/shop", "--file",
        "/srv/shop/docker-compose.yml"]


def container(service: str, state: str = "running") -> dict:
    return {"Id": f"id-{service}", "Name": f"/shop-{service}-1", "Image": RUNNING_ID, "State": {"Status": state},
            "Config": {"Image": f"shop-{service}:latest", "Env": [], "Labels": {
                "com.docker.compose.project": "shop", "com.docker.compose.service": service,
                "com.docker.compose.oneoff": "False"}}}


def target(tmp_path: Path, containers: list[dict], image_id: str = RUNNING_ID) -> tuple[Target, FakeHost]:
    (tmp_path / "deploy.toml").write_text('[app]\nname = "shop"\n[environments.prod]\nhost = "local"\npath = "/srv/shop"\n')
    cfg = load_config(tmp_path / "deploy.toml")
    host = FakeHost(rules=[
        (lambda a: a[0] == "sh" and "ids=" in a[2], 0, json.dumps(containers)),
        (lambda a: a[:3] == ["docker", "image", "inspect"], 0, image_id + "\n"),
    ])
    compose = Compose(program=V2, project="shop", project_dir="/srv/shop", files=("/srv/shop/docker-compose.yml",))
    return Target(config=cfg, env=cfg.environment("prod"), host=host, compose=compose), host  # type: ignore[arg-type]


def test_exec_runs_a_one_off_container_of_the_running_image(tmp_path: Path) -> None:
    t, host = target(tmp_path, [container("web"), container("db")])
    plan = running.one_off(t, "web", ["flask", "shell"], tty=True)
    assert plan.argv == [*BASE, "run", "--rm", "--no-deps", "web", "flask", "shell"] and plan.pin is None
    assert plan.image_id == RUNNING_ID and plan.container == "shop-web-1"
    assert host.commands("inspect")[-1] == ["docker", "image", "inspect", "--format", "{{.Id}}", "shop-web:latest"]
    plain = running.one_off(t, "web", ["flask", "routes"], tty=False)
    assert plain.argv == [*BASE, "run", "--rm", "-T", "--no-deps", "web", "flask", "routes"]
    assert not [c for c in host.calls if c[0] in ("write", "rm")]  # planning it changed nothing


def test_when_the_image_name_moved_the_running_image_is_pinned_by_its_id(tmp_path: Path) -> None:
    t, host = target(tmp_path, [container("web")], image_id="sha256:" + "2" * 64)  # a build since
    plan = running.one_off(t, "web", ["true"], tty=False)
    assert plan.pin is not None
    path, text = plan.pin
    assert path.startswith("/srv/shop.deployer/compose.exec-") and path.endswith(".yml")
    assert f'image: "{RUNNING_ID}"' in text and '"web":' in text
    assert plan.argv == [*BASE, "--file", path, "run", "--rm", "-T", "--no-deps", "web", "true"]
    assert running.run_one_off(t, plan, tty=False, capture=True).ok
    # written for the command, removed after it
    assert host.calls[-3:] == [["write", path], plan.argv, ["rm", "-f", path]]


def test_exec_refuses_what_cannot_work(tmp_path: Path) -> None:
    t, _ = target(tmp_path, [container("web", state="exited"), container("db")])
    with pytest.raises(DeployerError, match="no running container"):
        running.one_off(t, "web", ["true"], tty=False)
    with pytest.raises(ConfigError, match=r"no container of a service named 'wbe'.*services: db, web"):
        running.one_off(t, "wbe", ["true"], tty=False)
    with pytest.raises(ConfigError, match="no command"):
        running.one_off(t, "web", [], tty=False)


def test_logs_argv_and_its_bad_input(tmp_path: Path) -> None:
    t, _ = target(tmp_path, [container("web"), container("db")])
    assert running.logs_argv(t, ["web"], follow=True, since="10m", tail=None, color=False) == [
        *BASE, "logs", "--follow", "--since", "10m", "--no-color", "web"]
    assert running.logs_argv(t, [], follow=False, since=None, tail="100", color=True) == [*BASE, "logs", "--tail", "100"]
    for since in ("1h30m", "2026-01-31", "2026-01-31T12:00:00Z", "2026-01-31T12:00:00+02:00", "1767225600"):
        assert running.check_since(since) == since
    with pytest.raises(ConfigError, match="--since 'yesterday' is not a time"):
        running.logs_argv(t, [], follow=False, since="yesterday", tail=None, color=False)
    with pytest.raises(ConfigError, match="--tail 'lots' is not a number"):
        running.check_tail("lots")
    with pytest.raises(ConfigError, match="named 'wbe'"):
        running.logs_argv(t, ["wbe"], follow=False, since=None, tail=None, color=False)
    from dataclasses import replace

    from deployer.commands.compose import V1

    v1 = replace(t, compose=replace(t.compose, program=V1))
    assert running.logs_argv(v1, [], follow=True, since=None, tail="5", color=False)[:1] == ["docker-compose"]
    with pytest.raises(ConfigError, match=r"v1.*cannot show logs --since"):  # its logs have no --since
        running.logs_argv(v1, [], follow=False, since="10m", tail=None, color=False)


def test_exec_and_logs_act_on_the_primary_unless_host_names_another(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deployer import api
    from deployer.server import target as targets

    (tmp_path / "deploy.toml").write_text(
        '[app]\nname = "shop"\n[environments.prod]\npath = "/srv/shop"\n'
        'hosts = ["deploy@10.0.0.5", {host = "deploy@10.0.0.6"}, "m3"]\n'
        '[environments.one]\nhost = "deploy@10.0.0.9"\npath = "/srv/shop"\n')
    cfg = load_config(tmp_path / "deploy.toml")
    chosen: list[object] = []
    monkeypatch.setattr(targets, "open_target", lambda cfg, env, entry=None: chosen.append(entry and str(entry.spec)))
    for name, expected in ((None, None), ("deploy@10.0.0.6", "deploy@10.0.0.6"), ("10.0.0.6", "deploy@10.0.0.6"),
                           ("m3", "m3")):
        api._one_host(cfg, "prod", name)
        assert chosen[-1] == expected
    api._one_host(cfg, "one", "deploy@10.0.0.9")
    assert chosen[-1] is None  # one host: the environment's own
    with pytest.raises(ConfigError, match=r"prod has no host 'm4' \(its hosts: deploy@10.0.0.5, deploy@10.0.0.6, m3\)"):
        api._one_host(cfg, "prod", "m4")
