"""Which proxy swaps a web container without failing a request: HAProxy, Caddy and nginx,
measured the same way on this machine.

For each proxy: a Docker network, a gunicorn backend (2 workers, graceful stop), the proxy
publishing 127.0.0.1:PORT. Then ``--swaps`` times: start the next backend, wait until it
answers on its own address, switch the proxy to it, stop the old backend (``docker stop``:
SIGTERM, gunicorn finishes its requests). Meanwhile three clients run from loopback:

  new     a GET on a new connection every 20 ms (deployer.proxy.probe.Prober)
  reused  GETs back to back on one keep-alive connection, no client retry
  slow    1 s requests back to back, on new connections (in flight during every switch)

How each proxy is switched:
  haproxy  the runtime API: free slot -> new address, ready; old slot drain until it has no
           session, then maintenance (deployer.proxy.runtime.Proxy.switch)
  caddy    a new Caddyfile, `caddy reload` (the admin API's /load)
  nginx    a new upstream in nginx.conf, `nginx -s reload`

The images: scripts/build-base-images --with-proxies (Debian's packages, offline).

    .venv/bin/python bench/proxy_swap.py [--swaps 20] [--proxies haproxy,caddy,nginx]
"""

from __future__ import annotations

import argparse
import http.client
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import BUILD_SCRIPT, machine_info, print_table, save_result  # noqa: E402

from deployer.hosts import LocalHost  # noqa: E402
from deployer.proxy.haproxy import ProxySettings  # noqa: E402
from deployer.proxy.probe import Prober  # noqa: E402
from deployer.proxy.runtime import Proxy, ProxyContainer  # noqa: E402

PYTHON_IMAGE = "deployer-bench/python:bookworm"
IMAGES = {"haproxy": "deployer-bench/haproxy:2.6", "caddy": "deployer-bench/caddy:2.6", "nginx": "deployer-bench/nginx:1.22"}

APP = '''
import os, time
NAME = os.environ["BACKEND_NAME"]
def app(environ, start_response):
    if environ.get("PATH_INFO") == "/slow":
        time.sleep(1)
    body = NAME.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''

CADDYFILE = """{{
    admin localhost:2019
    auto_https off
}}
:8080 {{
    reverse_proxy {address}:8000 {{
        lb_try_duration 10s
    }}
}}
"""

NGINX_CONF = """worker_processes 1;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    upstream app {{ server {address}:8000; keepalive 16; }}
    server {{
        listen 8080;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_next_upstream error timeout;
        }}
    }}
}}
"""


def docker(*args: str, check: bool = True) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=180, check=False)
    if check and result.returncode != 0:
        raise SystemExit(f"docker {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Clients:
    """The reused-connection and slow clients (the new-connection one is a Prober)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reused_ok = self.reused_failed = self.slow_ok = self.slow_failed = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._reused, daemon=True), threading.Thread(target=self._slow, daemon=True)]

    def __enter__(self) -> Clients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _reused(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        while not self._stop.is_set():
            try:
                connection.request("GET", "/")
                response = connection.getresponse()
                response.read()
                if response.status == 200:
                    self.reused_ok += 1
                else:
                    self.reused_failed += 1
                    self.failures.append(f"reused: HTTP {response.status}")
            except (OSError, http.client.HTTPException) as error:
                self.reused_failed += 1
                self.failures.append(f"reused: {type(error).__name__}: {error}")
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
            self._stop.wait(0.02)
        connection.close()

    def _slow(self) -> None:
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/slow", timeout=15) as response:
                    response.read()
                self.slow_ok += 1
            except OSError as error:
                self.slow_failed += 1
                self.failures.append(f"slow: {error}")


class Bench:
    def __init__(self, proxy: str, workdir: Path) -> None:
        self.kind = proxy
        self.prefix = f"pxb{secrets.token_hex(3)}"
        self.network = f"{self.prefix}-net"
        self.workdir = workdir
        self.port = free_port()
        self.backends: list[str] = []
        (workdir / "app").mkdir()
        (workdir / "app" / "app.py").write_text(APP)
        (workdir / "conf").mkdir()
        self.proxy_name = f"{self.prefix}-proxy"
        self.haproxy: Proxy | None = None

    def backend(self, n: int) -> str:
        name = f"{self.prefix}-v{n}"
        docker("run", "--detach", "--name", name, "--network", self.network, "--env", f"BACKEND_NAME=v{n}",
               "--volume", f"{self.workdir / 'app'}:/app:ro", "--workdir", "/app", "--stop-timeout", "20", PYTHON_IMAGE,
               "gunicorn", "--bind", "0.0.0.0:8000", "--workers", "2", "--graceful-timeout", "20", "app:app")
        self.backends.append(name)
        address = docker("inspect", "--format", f'{{{{(index .NetworkSettings.Networks "{self.network}").IPAddress}}}}', name).strip()
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://{address}:8000/", timeout=2):
                    return address
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"backend {name} never answered")
                time.sleep(0.1)

    def start(self, address: str) -> None:
        if self.kind == "haproxy":
            container = ProxyContainer(self.proxy_name, IMAGES["haproxy"], self.network, f"127.0.0.1:{self.port}",
                                       str(self.workdir / "conf"), ProxySettings())
            self.haproxy = Proxy(LocalHost(), container)
            return  # started on the first switch (ensure)
        conf = self.workdir / "conf"
        if self.kind == "caddy":
            (conf / "Caddyfile").write_text(CADDYFILE.format(address=address))
            docker("run", "--detach", "--name", self.proxy_name, "--network", self.network, "--publish",
                   f"127.0.0.1:{self.port}:8080", "--volume", f"{conf}:/etc/caddy", IMAGES["caddy"])
        else:
            (conf / "nginx.conf").write_text(NGINX_CONF.format(address=address))
            docker("run", "--detach", "--name", self.proxy_name, "--network", self.network, "--publish",
                   f"127.0.0.1:{self.port}:8080", "--volume", f"{conf / 'nginx.conf'}:/etc/nginx/nginx.conf:ro", IMAGES["nginx"])

    def switch(self, address: str) -> None:
        conf = self.workdir / "conf"
        if self.kind == "haproxy":
            assert self.haproxy is not None
            self.haproxy.ensure()
            self.haproxy.switch(address, 8000, drain_timeout=30)
        elif self.kind == "caddy":
            (conf / "Caddyfile").write_text(CADDYFILE.format(address=address))
            docker("exec", self.proxy_name, "caddy", "reload", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile")
        else:
            (conf / "nginx.conf").write_text(NGINX_CONF.format(address=address))
            docker("exec", self.proxy_name, "nginx", "-s", "reload")

    def wait_serving(self, n: int, deadline: float = 30) -> None:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=5) as response:
                    if response.read().decode() == f"v{n}":
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise SystemExit(f"{self.kind}: v{n} is not served {deadline:.0f}s after the switch")

    def cleanup(self) -> None:
        docker("rm", "--force", self.proxy_name, *self.backends, check=False)
        docker("network", "rm", self.network, check=False)


def run(kind: str, swaps: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix=f"proxy-{kind}-") as tmp:
        bench = Bench(kind, Path(tmp))
        try:
            docker("network", "create", bench.network)
            first = bench.backend(0)
            bench.start(first)
            bench.switch(first)
            bench.wait_serving(0)
            switch_times: list[float] = []
            with Prober("127.0.0.1", bench.port, "/", interval=0.02, timeout=15) as prober, Clients(bench.port) as clients:
                time.sleep(1)
                for n in range(1, swaps + 1):
                    address = bench.backend(n)
                    started = time.monotonic()
                    bench.switch(address)
                    bench.wait_serving(n)
                    docker("stop", f"{bench.prefix}-v{n - 1}")
                    switch_times.append(time.monotonic() - started)
                    time.sleep(0.5)
                summary = prober.stop()
            switch_times.sort()
            return {
                "proxy": kind, "swaps": swaps, "new": summary.as_dict(),
                "reused_ok": clients.reused_ok, "reused_failed": clients.reused_failed,
                "slow_ok": clients.slow_ok, "slow_failed": clients.slow_failed,
                "failures": clients.failures[:10],
                "switch_median_s": switch_times[len(switch_times) // 2],
            }
        finally:
            bench.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--swaps", type=int, default=20)
    parser.add_argument("--proxies", default="haproxy,caddy,nginx")
    args = parser.parse_args(argv)
    kinds = [k for k in args.proxies.split(",") if k]
    unknown = [k for k in kinds if k not in IMAGES]
    if unknown:
        parser.error(f"unknown proxy: {', '.join(unknown)} (known: {', '.join(IMAGES)})")
    subprocess.run(["bash", str(BUILD_SCRIPT), "--with-proxies"], check=True)
    machine = machine_info()
    results = [run(kind, args.swaps) for kind in kinds]
    rows = []
    for r in results:
        new = r["new"]
        assert isinstance(new, dict)
        rows.append([
            str(r["proxy"]), str(r["swaps"]),
            f"{new['failed']} of {new['probes']}", f"{new['p99_ms']:.0f} ms", f"{new['slowest_ms']:.0f} ms",
            f"{r['reused_failed']} of {int(r['reused_ok']) + int(r['reused_failed'])}",  # type: ignore[call-overload]
            f"{r['slow_failed']} of {int(r['slow_ok']) + int(r['slow_failed'])}",  # type: ignore[call-overload]
            f"{r['switch_median_s']:.2f} s",
        ])
    print_table(
        f"Swapping a web container behind a proxy ({machine['cores']} cores, load {machine['load']})",
        ["proxy", "swaps", "failed (new conn., 20 ms)", "p99", "max", "failed (reused conn.)", "failed (1 s requests)",
         "switch → old stopped (median)"],
        rows,
    )
    for r in results:
        if r["failures"]:
            print(f"{r['proxy']}: first failures: {r['failures']}")
    save_result("proxy_swap", {"machine": machine, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
