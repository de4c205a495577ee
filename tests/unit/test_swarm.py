"""The pure parts of the Swarm engine: the stack rendered from a compose configuration, the
parsers of the engine's JSON, the layers a node lacks, the proxy's configuration, status's
verdicts."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from deployer.commands import swarm as swarm_cmds
from deployer.proxy.haproxy import ProxySettings, render_swarm_config
from deployer.status import SwarmNodeState, SwarmService, swarm_problems
from deployer.swarm.images import filter_archive, layer_files
from deployer.swarm.stack import PROXY_SERVICE, Rendering, SwarmProxy, health_window, render, seconds

# What `docker compose config` prints for the example app (parsed), trimmed to what matters.
CONFIG = {
    "name": "recipes",
    "networks": {"default": {"name": "recipes_default", "ipam": {}}},
    "services": {
        "db": {
            "command": None,
            "environment": {"POSTGRES_PASSWORD": "pw"},
            "healthcheck": {"test": ["CMD-SHELL", "pg_isready"], "interval": "3s", "timeout": "5s", "retries": 10,
                            "start_period": "30s"},
            "image": "postgres:15",
            "networks": {"default": None},
            "restart": "unless-stopped",
            "volumes": [{"type": "volume", "source": "dbdata", "target": "/var/lib/postgresql/data", "volume": {}}],
        },
        "web": {
            "build": {"context": "/srv/app/example", "dockerfile": "Dockerfile"},
            "depends_on": {"db": {"condition": "service_healthy", "required": True}},
            "environment": {"DATABASE_URL": "postgresql://recipes:pw@db:5432/recipes"},
            "healthcheck": {"test": ["CMD", "true"], "interval": "5s", "timeout": "5s", "retries": 3, "start_period": "30s"},
            "image": "recipes-web:latest",
            "networks": {"default": None},
            "ports": [{"mode": "ingress", "host_ip": "127.0.0.1", "target": 8000, "published": "8000", "protocol": "tcp"}],
            "restart": "unless-stopped",
        },
        "worker": {
            "image": "recipes-web:latest",
            "command": ["flask", "work"],
            "restart": "no",
            "deploy": {"update_config": {"failure_action": "pause", "monitor": "1s"}},
            "ports": [{"target": 9000, "published": "9000", "protocol": "tcp", "mode": "ingress"}],
        },
    },
    "volumes": {"dbdata": {"name": "recipes_dbdata"}},
}
PROXY = SwarmProxy(image="sha256:proxy", published=8000, web_port=8000, config_file="/srv/app.deployer/swarm/haproxy.cfg",
                   config_name="recipes_proxy_abc")


def rendering(**changes: object) -> Rendering:
    values: dict[str, object] = {
        "project": "recipes", "web": "web", "db": "db", "primary_node": "node1", "release": "r1", "proxy": PROXY,
        "images": {"web": "sha256:web", "db": "sha256:db", "worker": "sha256:web"},
    }
    values.update(changes)
    return Rendering(**values)  # type: ignore[arg-type]


def test_the_web_service_runs_its_image_by_id_behind_the_proxy_with_start_first_updates_swarm_rolls_back() -> None:
    plan = rendering(batch=2, pause=5)
    web = render(CONFIG, plan)["services"]["web"]
    assert web["image"] == "sha256:web"
    assert "ports" not in web and "build" not in web and "depends_on" not in web and "restart" not in web
    update = web["deploy"]["update_config"]
    assert update == {"order": "start-first", "parallelism": 2, "delay": "5s", "monitor": "25s", "failure_action": "rollback"}
    assert web["deploy"]["rollback_config"] == {"order": "start-first", "parallelism": 2}
    assert web["deploy"]["endpoint_mode"] == "dnsrr"  # no virtual IP: the proxy resolves the tasks
    assert web["labels"]["com.docker.compose.service"] == "web" and web["labels"]["com.docker.compose.project"] == "recipes"
    assert any("web: build left out" in n for n in plan.notes)
    assert any("deployer's proxy" in n for n in plan.notes)
    assert not any("restart" in n for n in plan.notes if n.startswith("web"))  # unless-stopped is what Swarm does


def test_the_database_stays_on_the_primary_stops_before_it_starts_and_runs_once() -> None:
    config = json.loads(json.dumps(CONFIG))
    config["services"]["db"]["deploy"] = {"update_config": {"order": "start-first"},
                                          "placement": {"constraints": ["node.labels.disk == ssd", "node.id == other"]}}
    plan = rendering()
    db = render(config, plan)["services"]["db"]
    assert db["deploy"]["placement"]["constraints"] == ["node.labels.disk == ssd", "node.id == node1"]
    assert db["deploy"]["update_config"]["order"] == "stop-first"
    assert db["deploy"]["rollback_config"]["order"] == "stop-first"
    assert db["deploy"]["replicas"] == 1
    assert db["volumes"] == [{"type": "volume", "source": "dbdata", "target": "/var/lib/postgresql/data"}]
    assert "command" not in db  # compose's null
    assert any("db: update_config.order start-first -> stop-first" in n for n in plan.notes)
    config["services"]["db"]["deploy"] = {"replicas": 2}
    with pytest.raises(ValueError, match="exactly one task"):
        render(config, rendering())
    config["services"]["db"]["deploy"] = {"mode": "global"}
    with pytest.raises(ValueError, match="exactly one task"):
        render(config, rendering())


def test_an_unsafe_update_config_is_made_safe_and_said() -> None:
    plan = rendering()
    worker = render(CONFIG, plan)["services"]["worker"]
    assert worker["deploy"]["update_config"]["failure_action"] == "rollback"
    assert worker["deploy"]["update_config"]["monitor"] == "10s"
    assert worker["deploy"]["restart_policy"] == {"condition": "none"}  # restart: "no"
    assert worker["ports"] == [{"target": 9000, "published": 9000, "protocol": "tcp", "mode": "ingress"}]
    assert "endpoint_mode" not in worker["deploy"]  # it publishes a port: the routing mesh's virtual IP
    assert any("failure_action pause -> rollback" in n for n in plan.notes)
    assert any("monitor 1s -> 10s" in n for n in plan.notes)


def test_the_proxy_networks_and_volumes() -> None:
    document = render(CONFIG, rendering())
    proxy = document["services"][PROXY_SERVICE]
    assert proxy["image"] == "sha256:proxy"
    assert proxy["ports"] == [{"target": 8080, "published": 8000, "protocol": "tcp", "mode": "host"}]
    assert proxy["deploy"]["mode"] == "global"
    assert proxy["configs"] == [{"source": "deployer_proxy", "target": "/usr/local/etc/haproxy/haproxy.cfg"}]
    assert document["configs"]["deployer_proxy"] == {"file": PROXY.config_file, "name": "recipes_proxy_abc"}
    assert document["networks"] == {"default": {"driver": "overlay", "attachable": True, "name": "recipes_default"}}
    assert document["volumes"] == {"dbdata": {"name": "recipes_dbdata"}}
    assert document["version"] == "3.8"


def test_only_some_services() -> None:
    document = render(CONFIG, rendering(only=("db", PROXY_SERVICE)))
    assert sorted(document["services"]) == ["db", PROXY_SERVICE]
    with pytest.raises(ValueError, match="no service api"):
        render(CONFIG, rendering(web="api"))


def test_durations_and_the_health_window() -> None:
    assert seconds("1m30s") == 90 and seconds("500ms") == 0.5 and seconds(3) == 3 and seconds("") == 0
    with pytest.raises(ValueError):
        seconds("ten seconds")
    # retries x interval + timeout: how long a running task's healthcheck takes to fail it
    assert health_window(CONFIG["services"]["web"]) == 3 * 5 + 5  # type: ignore[index]
    assert health_window({"healthcheck": {"test": ["CMD", "true"]}}) == 3 * 30 + 30  # Docker's defaults
    assert health_window({}) == 0 and health_window({"healthcheck": {"disable": True}}) == 0


def test_parsers_of_the_engine() -> None:
    state = swarm_cmds.parse_swarm_state(json.dumps({"LocalNodeState": "active", "NodeID": "n1", "ControlAvailable": True,
                                                     "NodeAddr": "10.0.0.2", "Cluster": {"ID": "c1"}}))
    assert state.active and state.manager and state.node_id == "n1" and state.cluster_id == "c1"
    assert not swarm_cmds.parse_swarm_state('{"LocalNodeState": "inactive"}').active
    nodes = swarm_cmds.parse_nodes(json.dumps([
        {"ID": "n1", "Description": {"Hostname": "m1"}, "Status": {"State": "ready", "Addr": "10.0.0.2"},
         "Spec": {"Availability": "active", "Role": "manager"}},
        {"ID": "n2", "Description": {"Hostname": "m2"}, "Status": {"State": "ready", "Addr": "10.0.0.3"},
         "Spec": {"Availability": "drain", "Role": "worker"}},
    ]))
    assert [(n.hostname, n.schedulable) for n in nodes] == [("m1", True), ("m2", False)]
    services = swarm_cmds.parse_services(json.dumps([{
        "ID": "s1", "Version": {"Index": 12},
        "Spec": {"Name": "recipes_web", "Mode": {"Replicated": {"Replicas": 2}},
                 "TaskTemplate": {"ContainerSpec": {"Image": "sha256:new"}}},
        "PreviousSpec": {"TaskTemplate": {"ContainerSpec": {"Image": "sha256:old"}}},
        "UpdateStatus": {"State": "rollback_completed", "Message": "update rolled back", "StartedAt": "t1"},
    }, {"ID": "s2", "Spec": {"Name": "recipes_deployer-proxy", "Mode": {"Global": {}},
                             "TaskTemplate": {"ContainerSpec": {"Image": "sha256:p"}}}}]), "recipes")
    web, proxy = sorted(services, key=lambda s: s.short, reverse=True)
    assert (web.short, web.replicas, web.rolled_back, web.previous_image, web.version, web.update_started) == (
        "web", 2, True, "sha256:old", 12, "t1")
    assert proxy.short == "deployer-proxy" and proxy.replicas is None and proxy.update_state == ""
    tasks = swarm_cmds.parse_tasks(json.dumps([{
        "ID": "t1", "ServiceID": "s1", "Slot": 1, "NodeID": "n2", "DesiredState": "shutdown",
        "Status": {"State": "failed", "Err": "task: non-zero exit (1)", "ContainerStatus": {"ContainerID": "c1", "ExitCode": 1}},
        "Spec": {"ContainerSpec": {"Image": "sha256:new"}},
    }]))
    assert tasks[0].failed and not tasks[0].running and tasks[0].exit_code == 1 and tasks[0].error.startswith("task:")
    assert swarm_cmds.parse_gateway({"c1": {"IPv4Address": "172.18.0.4/16"}, "ingress-sbox": {"IPv4Address": ""}}) == {
        "c1": "172.18.0.4"}
    assert swarm_cmds.parse_updates(json.dumps([{"Spec": {"Name": "a"}, "UpdateStatus": {"StartedAt": "x"}},
                                                {"Spec": {"Name": "b"}}])) == {"a": "x", "b": ""}


def test_the_layers_a_node_already_has() -> None:
    known = swarm_cmds.parse_layers('"sha256:i1" ["l1","l2","l3"]\n"sha256:i2" ["l1","lx"]\n')
    assert known == {"sha256:i1": ("l1", "l2", "l3"), "sha256:i2": ("l1", "lx")}
    assert swarm_cmds.present_prefix(["l1", "l2", "l9"], known) == 2
    # A layer counts only with the same layers under it.
    assert swarm_cmds.present_prefix(["l0", "l2", "l3"], known) == 0
    assert swarm_cmds.present_prefix(["l1"], {}) == 0


def _archive(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_an_archive_without_the_layers_a_node_has() -> None:
    manifest = json.dumps([{"Config": "c.json", "Layers": ["a/layer.tar", "b/layer.tar"]}])
    assert layer_files(manifest, ["l1", "l2"]) == {"a/layer.tar": "l1", "b/layer.tar": "l2"}
    with pytest.raises(ValueError):
        layer_files(manifest, ["l1"])
    with pytest.raises(ValueError):
        layer_files("[]", [])
    source = _archive({"c.json": b"{}", "a/json": b"{}", "a/layer.tar": b"x" * 5000, "b/layer.tar": b"y" * 10,
                       "manifest.json": manifest.encode()})
    out = io.BytesIO()
    filter_archive(io.BytesIO(source), out, {"a/layer.tar"})
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        assert tar.getnames() == ["c.json", "a/json", "b/layer.tar", "manifest.json"]
        extracted = tar.extractfile("b/layer.tar")
        assert extracted is not None and extracted.read() == b"y" * 10
    assert len(out.getvalue()) < len(source)


def test_the_proxy_finds_the_tasks_by_dns_and_holds_requests_while_none_answers() -> None:
    text = render_swarm_config(ProxySettings(listen_port=8080, pause_timeout=12), "web", 8000, health_path="/health",
                               health_host="127.0.0.1:8000")
    assert "nameserver docker 127.0.0.11:53" in text
    assert "server-template task 16 tasks.web:8000 check inter 500ms fall 1 rise 1 resolvers docker" in text
    assert "http-check send meth GET uri /health ver HTTP/1.1 hdr Host 127.0.0.1:8000" in text
    assert "server hold 127.0.0.1:1 backup" in text and "retries 12" in text
    plain = render_swarm_config(ProxySettings(), "api", 5000)
    assert "httpchk" not in plain and "tasks.api:5000 check" in plain


def test_status_on_a_swarm() -> None:
    nodes = [SwarmNodeState("m1", "10.0.0.2", "ready", "active", "manager"),
             SwarmNodeState("m2", "10.0.0.3", "down", "active", "worker")]
    services = [
        SwarmService("web", "sha256:w", 2, 1, "rollback_completed", "update rolled back due to failure",
                     ("m1: running", "m2: rejected (no suitable node)")),
        SwarmService("deployer-proxy", "sha256:p", None, 1, "", "", ("m1: running",)),
    ]
    problems = swarm_problems(services, nodes, ["db", "web"])
    assert problems == [
        "the stack has no service db",
        "service web: 1 of 2 task(s) running (m2: rejected (no suitable node))",
        "the last update of web was rollback completed: update rolled back due to failure",
        "node m2 (10.0.0.3) is down",
    ]
    assert swarm_problems([SwarmService("web", "i", 1, 1, "completed", "", ("m1: running",))], nodes[:1], ["web"]) == []
