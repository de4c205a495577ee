"""The many-machine test bench itself: machines made of namespaces on this box, each with
its own address, Docker engine, sshd and ``/srv``, reached over SSH at their addresses; two
of them joined into a swarm whose overlay network carries traffic between the nodes.

The many-host and Swarm tests stand on these facts, so they are checked on their own first.
"""

from __future__ import annotations

import subprocess
import time
import urllib.request

import pytest

from tests.bench.machines import Machine
from tests.bench.sshd import SSHBench

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("machines")]

IMAGE = "deployer-bench/python:bookworm"


def ssh(bench: SSHBench, machine: Machine, command: str) -> subprocess.CompletedProcess[str]:
    """``command`` on the machine, as a user would run it: the OpenSSH client, host key checked."""
    known = machine.root.parent / "known_hosts"
    return subprocess.run(
        ["ssh", "-F", "/dev/null", "-i", str(bench.key_path), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
         "-o", f"UserKnownHostsFile={known}", f"root@{machine.address}", command],
        capture_output=True, text=True, timeout=60, check=False,
    )


def get(url: str, timeout: float = 3.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - a bench machine's address
        return response.read().decode().strip()


def wait_get(url: str, seconds: float = 90.0) -> str:
    deadline = time.monotonic() + seconds
    while True:
        try:
            return get(url)
        except OSError as error:
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} did not answer within {seconds:g} s: {error}") from None
            time.sleep(0.5)


def test_three_machines_each_their_own(machine_factory, sshd: SSHBench) -> None:  # noqa: ANN001
    machines = machine_factory(3)
    seen = {}
    for machine in machines:
        result = ssh(sshd, machine, "hostname; docker info --format '{{.ID}}'; ls -A /srv")
        assert result.returncode == 0, result.stderr
        name, engine, *files = result.stdout.split("\n")
        assert name == machine.name and files == [""], result.stdout
        seen[machine.name] = engine
    assert len(set(seen.values())) == 3, seen  # three engines, not one seen three times
    main_engine = subprocess.run(["docker", "info", "--format", "{{.ID}}"], capture_output=True, text=True).stdout.strip()
    assert main_engine not in seen.values()

    first, second, _ = machines
    # A file one machine writes in /srv is that machine's: the test reads it from here.
    assert ssh(sshd, first, "echo first > /srv/marker").returncode == 0
    assert (first.srv / "marker").read_text() == "first\n"
    assert ssh(sshd, second, "test -e /srv/marker").returncode == 1

    # A port published by the second machine's engine answers at its address only.
    second.load_images(IMAGE)
    second.docker("run", "-d", "--name", "page", "-p", "8000:8000", IMAGE, "sh", "-c",
                  "hostname > /tmp/h && cd /tmp && exec python3 -m http.server 8000")
    container = second.docker("inspect", "--format", "{{.Config.Hostname}}", "page").stdout.strip()
    assert wait_get(f"http://{second.address}:8000/h", 30) == container
    with pytest.raises(OSError):
        get(f"http://{first.address}:8000/h")
    assert "page" not in subprocess.run(["docker", "ps", "--format", "{{.Names}}"], capture_output=True, text=True).stdout.split()


FRONT = """
import http.server, socket, urllib.request
class Front(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        tasks = sorted({info[4][0] for info in socket.getaddrinfo("tasks.web", 8000)})
        body = " ".join(urllib.request.urlopen(f"http://{task}:8000/h", timeout=3).read().decode().strip() for task in tasks)
        self.send_response(200); self.end_headers(); self.wfile.write(body.encode())
http.server.HTTPServer(("", 9000), Front).serve_forever()
"""


def test_a_two_node_swarm_carries_overlay_traffic(machine_factory) -> None:  # noqa: ANN001
    """The kernel here has no IPVS, so Swarm's routing mesh and VIPs cannot work: services
    use DNS round robin (``endpoint_mode: dnsrr``) and publish in host mode. A front on the
    manager reaches a web task on each node over the overlay network."""
    manager, worker = machine_factory(2)
    manager.docker("swarm", "init", "--advertise-addr", manager.address)
    token = manager.docker("swarm", "join-token", "-q", "worker").stdout.strip()
    worker.docker("swarm", "join", "--token", token, f"{manager.address}:2377")
    nodes = manager.docker("node", "ls", "--format", "{{.Hostname}} {{.Status}}").stdout.strip().split("\n")
    assert sorted(nodes) == [f"{manager.name} Ready", f"{worker.name} Ready"], nodes
    for machine in (manager, worker):
        machine.load_images(IMAGE)
    manager.docker("network", "create", "--driver", "overlay", "appnet")
    manager.docker("service", "create", "--detach", "--quiet", "--name", "web", "--network", "appnet",
                   "--endpoint-mode", "dnsrr", "--replicas", "2", "--placement-pref", "spread=node.hostname",
                   IMAGE, "sh", "-c", "hostname > /tmp/h && cd /tmp && exec python3 -m http.server 8000")
    manager.docker("service", "create", "--detach", "--quiet", "--name", "front", "--network", "appnet",
                   "--publish", "mode=host,target=9000,published=9000", "--constraint", "node.role==manager",
                   IMAGE, "python3", "-c", FRONT)
    deadline = time.monotonic() + 120
    while True:
        tasks = manager.docker("service", "ps", "web", "--filter", "desired-state=running",
                               "--format", "{{.Node}} {{.CurrentState}}").stdout.strip().split("\n")
        if sorted(t.split()[0] for t in tasks if " Running " in f" {t} ") == [manager.name, worker.name]:
            break
        assert time.monotonic() < deadline, tasks
        time.sleep(1)
    # each node's task answers with its container's host name, through the overlay
    names = {m.name: set(m.docker("ps", "--filter", "name=web.", "--format", "{{.ID}}").stdout.split()) for m in (manager, worker)}
    assert all(len(ids) == 1 for ids in names.values()), names
    deadline = time.monotonic() + 60
    while len(answer := wait_get(f"http://{manager.address}:9000/").split()) < 2:
        assert time.monotonic() < deadline, answer
        time.sleep(1)
    assert sorted(answer) == sorted(ident for ids in names.values() for ident in ids), (answer, names)
