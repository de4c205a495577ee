"""The engine API of a host (deployer.hosts.dockerapi) against the real Docker engine:
on this machine through its socket, over SSH through ``docker system dial-stdio`` in one
channel of the open connection. What it reads must be what the docker CLI reads."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from deployer.commands import docker as containers_cmds
from deployer.hosts import Host, LocalHost, connect
from deployer.hosts.dockerapi import Engine, EngineUnavailable
from deployer.hosts.ssh import SSHHost
from tests.bench.sshd import SSHBench, SSHHome

pytestmark = pytest.mark.integration

IMAGE = "deployer-bench/python:bookworm"


@pytest.fixture
def project() -> Iterator[str]:
    """A compose-labelled project of two containers (a service and a one-off), never started."""
    name = f"dockerapi{uuid.uuid4().hex[:8]}"
    made = []
    for service, oneoff in (("web", "False"), ("web", "True")):
        made.append(
            subprocess.run(
                ["docker", "create", "--pull", "never",
                 "--label", f"com.docker.compose.project={name}",
                 "--label", f"com.docker.compose.service={service}",
                 "--label", f"com.docker.compose.oneoff={oneoff}",
                 "--env", "GREETING=hello world", IMAGE, "true"],
                check=True, capture_output=True, text=True,
            ).stdout.strip()
        )
    try:
        yield name
    finally:
        subprocess.run(["docker", "rm", "--force", *made], capture_output=True)


@pytest.fixture(params=["local", "ssh"])
def host(request: pytest.FixtureRequest) -> Iterator[Host]:
    if request.param == "local":
        opened: Host = LocalHost()
    else:
        sshd: SSHBench = request.getfixturevalue("sshd")
        request.getfixturevalue("ssh_home")
        opened = connect(sshd.spec, known_hosts_path=sshd.known_hosts, ssh_config_path=os.devnull)
    try:
        yield opened
    finally:
        opened.close()


def _cli_rows(host: Host, project: str, *, oneoff: bool) -> list[dict[str, object]]:
    result = host.run(containers_cmds.project_argv(project, oneoff=oneoff), check=True)
    rows: list[dict[str, object]] = json.loads(result.stdout)
    return rows


def test_reads_what_the_cli_reads(host: Host, project: str) -> None:
    engine = host.engine()
    for oneoff in (False, True):
        rows = engine.project_containers(project, oneoff=oneoff)
        expected = _cli_rows(host, project, oneoff=oneoff)
        assert len(rows) == (2 if oneoff else 1)
        assert containers_cmds.parse_inspect(json.dumps(rows)) == containers_cmds.parse_inspect(
            json.dumps(expected)
        )
    [web] = containers_cmds.parse_inspect(json.dumps(engine.project_containers(project, oneoff=False)))
    assert (web.service, web.state, web.env["GREETING"], web.oneoff) == ("web", "created", "hello world", False)
    assert engine.project_containers(f"{project}-none", oneoff=True) == []


def test_ssh_engine_is_one_channel_for_many_reads(sshd: SSHBench, ssh_home: SSHHome, project: str) -> None:
    host = connect(sshd.spec, known_hosts_path=sshd.known_hosts, ssh_config_path=os.devnull)
    assert isinstance(host, SSHHost)
    try:
        engine = host.engine()
        engine.project_containers(project, oneoff=True)
        channels = host._transport._channels.values()  # noqa: SLF001 - counting what is open
        before = len(channels)
        for _ in range(25):
            engine.project_containers(project, oneoff=True)
        assert len(host._transport._channels.values()) == before == 1  # noqa: SLF001
        # Commands still run beside the open stream.
        assert host.run(["echo", "beside"], check=True).stdout == "beside\n"

        # A new connection gets a new stream; the old engine is closed.
        host.reconnect()
        assert not engine.available
        fresh = host.engine()
        assert fresh is not engine
        assert len(fresh.project_containers(project, oneoff=True)) == 2
    finally:
        host.close()


def test_an_engine_that_cannot_connect_is_unavailable_for_good() -> None:
    attempts = []

    def connect_engine() -> object:
        attempts.append(1)
        raise OSError("no such socket")

    engine = Engine(connect_engine, "nowhere")  # type: ignore[arg-type]
    for _ in range(2):
        with pytest.raises(EngineUnavailable, match="no such socket"):
            engine.project_containers("any", oneoff=True)
    assert attempts == [1] and not engine.available


def test_a_dial_stdio_that_fails_makes_the_engine_unavailable(
    sshd: SSHBench, ssh_home: SSHHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server whose docker CLI has no dial-stdio (or no docker at all): the stream ends
    # at once, the first request fails, callers fall back to the CLI.
    monkeypatch.setattr("deployer.hosts.ssh.DIAL_STDIO", ("docker", "system", "no-such-command"))
    host = connect(sshd.spec, known_hosts_path=sshd.known_hosts, ssh_config_path=os.devnull)
    try:
        engine = host.engine()
        with pytest.raises(EngineUnavailable):
            engine.project_containers("any", oneoff=True)
        assert not engine.available
        assert host.run(["echo", "still fine"], check=True).stdout == "still fine\n"
    finally:
        host.close()
