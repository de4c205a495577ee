"""The proxy deployer puts in front of the web service: a real HAProxy container and real
gunicorn backends on a Docker network this test makes, probed from loopback at 20 ms.

What a user would check: while backends are swapped no request fails (new connections and a
reused keep-alive one), a request in flight on the old backend finishes, a backend that is
not switched to never gets a request, requests are held (not failed) while no backend runs
in pause mode, and a restarted proxy routes where the last switch left it.
"""

from __future__ import annotations

import http.client
import secrets
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from deployer.hosts import LocalHost
from deployer.proxy.haproxy import ProxySettings
from deployer.proxy.probe import Prober
from deployer.proxy.runtime import Proxy, ProxyContainer
from tests.bench.docker import BenchImages, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("proxy")]

APP = '''
import os, time
NAME = os.environ["BACKEND_NAME"]
def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path.startswith("/slow/"):
        time.sleep(float(path.rsplit("/", 1)[1]))
    body = NAME.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''


def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {result.stderr}")
    return result


@dataclass
class Bench:
    prefix: str
    network: str
    app_dir: Path
    images: BenchImages
    proxy: Proxy
    port: int
    backends: list[str] = field(default_factory=list)

    def backend(self, name: str) -> str:
        """Start a gunicorn backend named ``name``; its address once it answers."""
        container = f"{self.prefix}-{name}"
        docker("run", "--detach", "--name", container, "--network", self.network, "--env", f"BACKEND_NAME={name}",
               "--volume", f"{self.app_dir}:/app:ro", "--workdir", "/app", "--stop-timeout", "20", self.images.python,
               "gunicorn", "--bind", "0.0.0.0:8000", "--workers", "2", "--graceful-timeout", "20", "app:app")
        self.backends.append(container)
        address = self.address_of(name)
        deadline = time.monotonic() + 60
        while True:  # health-gated on its own address, before any switch
            try:
                with urllib.request.urlopen(f"http://{address}:8000/", timeout=2) as response:
                    assert response.read().decode() == name
                    return address
            except OSError:
                assert time.monotonic() < deadline, docker("logs", container, check=False).stderr
                time.sleep(0.2)

    def address_of(self, name: str) -> str:
        """A backend's address on the test's network."""
        network = f'{{{{(index .NetworkSettings.Networks "{self.network}").IPAddress}}}}'
        return docker("inspect", "--format", network, f"{self.prefix}-{name}").stdout.strip()

    def stop(self, name: str) -> None:
        docker("stop", f"{self.prefix}-{name}")

    def get(self, path: str = "/", timeout: float = 30) -> tuple[int, str]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as response:
            return response.status, response.read().decode()


@pytest.fixture
def bench(bench_images: BenchImages, tmp_path: Path) -> Iterator[Bench]:
    prefix = f"dpx{secrets.token_hex(3)}"
    network = f"{prefix}-net"
    docker("network", "create", network)
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "app.py").write_text(APP)
    config_dir = tmp_path / "proxy"
    port = free_port()
    container = ProxyContainer(name=f"{prefix}-proxy", image=bench_images.haproxy, network=network,
                               publish=f"127.0.0.1:{port}", config_dir=str(config_dir),
                               settings=ProxySettings(pause_timeout=10))
    proxy = Proxy(LocalHost(), container)
    b = Bench(prefix, network, app_dir, bench_images, proxy, port)
    try:
        yield b
    finally:
        docker("rm", "--force", container.name, *b.backends, check=False)
        docker("network", "rm", network, check=False)


class KeepAlive:
    """One client connection reused for every request (no client retry), from a thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ok = 0
        self.failures: list[str] = []
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> KeepAlive:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=40)

    def _loop(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self._stop.is_set():
            try:
                connection.request("GET", "/")
                response = connection.getresponse()
                body = response.read().decode()
                if response.status == 200:
                    self.ok += 1
                    self.seen.add(body)
                else:
                    self.failures.append(f"HTTP {response.status}")
            except (OSError, http.client.HTTPException) as error:
                self.failures.append(f"{type(error).__name__}: {error}")
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            self._stop.wait(0.02)
        connection.close()


def test_swaps_fail_no_request_and_drain_the_one_in_flight(bench: Bench) -> None:
    first = bench.backend("v0")
    bench.proxy.ensure()
    assert bench.proxy.serving() == []
    bench.proxy.switch(first, 8000)
    assert bench.get() == (200, "v0")
    swaps = 6
    slow: dict[str, object] = {}
    with Prober("127.0.0.1", bench.port, "/", interval=0.02) as prober, KeepAlive(bench.port) as kept:
        for n in range(1, swaps + 1):
            address = bench.backend(f"v{n}")
            if n == 3:  # a request that is still running on the old backend when the switch starts
                def slow_request() -> None:
                    slow["answer"] = bench.get("/slow/3")
                    slow["done"] = time.monotonic()
                thread = threading.Thread(target=slow_request)
                thread.start()
                time.sleep(0.3)
            switched = bench.proxy.switch(address, 8000, drain_timeout=30)
            switched_at = time.monotonic()
            assert switched.drained_cleanly, switched
            if n == 3:
                thread.join(timeout=30)
                assert slow["answer"] == (200, "v2"), slow
                # the drain waited for it: the old slot left service only once it had answered
                assert slow["done"] <= switched_at, (slow, switched)
            assert bench.get()[1] == f"v{n}"
            bench.stop(f"v{n - 1}")
            time.sleep(0.3)
        summary = prober.stop()
    print(f"proxy swaps: {swaps}; new connections: {summary.describe()} (p99 {summary.p99_ms:.0f} ms); "
          f"keep-alive: {kept.ok} ok, {len(kept.failures)} failed")
    assert summary.probes > 50, summary
    assert summary.failed == 0, summary
    assert kept.ok > 50 and kept.failures == [], kept.failures[:5]
    assert kept.seen <= {f"v{n}" for n in range(swaps + 1)}


def test_a_backend_never_switched_to_gets_no_request(bench: Bench) -> None:
    bench.proxy.ensure()
    bench.proxy.switch(bench.backend("old"), 8000)
    bench.backend("unhealthy-candidate")  # started, never switched to (as when its health fails)
    for _ in range(30):
        assert bench.get() == (200, "old")
    logs = docker("logs", f"{bench.prefix}-unhealthy-candidate", check=False)
    assert "GET" not in logs.stdout + logs.stderr


def test_pause_holds_requests_while_no_backend_runs(bench: Bench) -> None:
    bench.proxy.ensure()
    bench.proxy.switch(bench.backend("before"), 8000)
    with Prober("127.0.0.1", bench.port, "/", interval=0.02) as prober:
        time.sleep(0.5)
        bench.proxy.hold()
        held_at = time.monotonic()
        bench.stop("before")
        time.sleep(2)  # the migration of a breaking release would run here
        address = bench.backend("after")
        bench.proxy.switch(address, 8000)
        paused = time.monotonic() - held_at
        time.sleep(0.5)
        summary = prober.stop()
    print(f"pause: held {paused:.1f}s; {summary.describe()}")
    assert summary.failed == 0, summary
    assert summary.slowest_ms >= 1500, summary  # requests really waited ...
    assert summary.slowest_ms <= (bench.proxy.container.settings.pause_timeout + 1) * 1000, summary  # ... within the bound
    assert bench.get() == (200, "after")


def test_a_restarted_proxy_routes_where_the_last_switch_left_it(bench: Bench) -> None:
    bench.proxy.ensure()
    bench.proxy.switch(bench.backend("one"), 8000)
    bench.proxy.switch(bench.backend("two"), 8000)
    docker("restart", bench.proxy.container.name)
    bench.proxy.ensure()
    assert [s.name for s in bench.proxy.serving()] == ["b"]
    assert bench.get() == (200, "two")
    # and a switch that is asked again (a crash after it completed) changes nothing
    again = bench.proxy.switch(bench.address_of("two"), 8000)
    assert again.slot == "b" and again.drained == ()
    assert bench.get() == (200, "two")
