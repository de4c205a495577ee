"""deployer.server.health against a real HTTP server on 127.0.0.1 and a fake host.

The server answers like real apps do: a health page that reads the database, a page
behind a login that redirects, one that needs a bearer token, a plain-text 503, a huge
index. The fake host answers ``docker ps | docker inspect`` in docker's own JSON and plays
the health command's runs (exit codes, output, a hang) in ``docker compose exec``.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from deployer.commands.compose import V2, Compose
from deployer.config import load_config
from deployer.errors import CommandError
from deployer.hosts.base import Result
from deployer.hosts.dockerapi import Engine
from deployer.server.health import (
    BODY_LIMIT,
    HealthError,
    Probe,
    expected_statuses,
    probe,
    wait_healthy,
)
from deployer.server.target import Target
from tests.unit.fakes import no_engine

TOKEN = "Bearer s3cret-token-value"


class App(BaseHTTPRequestHandler):
    """Routes named after what they imitate; every request's headers are kept for asserts."""

    seen: ClassVar[list[dict[str, str]]] = []

    def do_GET(self) -> None:
        App.seen.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
        routes: dict[str, Callable[[], tuple[int, dict[str, str], bytes]]] = {
            "/health": lambda: (200, {"Content-Type": "text/plain"}, b"ok db=56b6764ae94a users=3"),
            "/": lambda: (302, {"Location": "/login"}, b""),
            "/login": lambda: (200, {"Content-Type": "text/html"}, b"<form>log in</form>"),
            "/api/health": lambda: (
                (200, {"Content-Type": "application/json"}, b'{"db": "ok"}')
                if self.headers.get("Authorization") == TOKEN
                else (401, {"Content-Type": "application/json"}, b'{"error": "token required"}')
            ),
            "/down": lambda: (503, {"Content-Type": "text/plain"}, b"database unreachable:\n  connection refused"),
            "/crash": lambda: (500, {"Content-Type": "text/html"}, b"<html><body><h1>Internal Server Error</h1>" + b"x" * 500),
            "/ping": lambda: (204, {}, b""),
            "/big": lambda: (200, {"Content-Type": "text/html"}, b"a" * (2 * BODY_LIMIT) + b"ok"),
            "/latin1": lambda: (200, {"Content-Type": "text/plain; charset=latin-1"}, "prêt".encode("latin-1")),
            "/host": lambda: (200, {"Content-Type": "text/plain"}, self.headers.get("Host", "").encode()),
        }
        code, headers, body = routes.get(self.path, lambda: (404, {}, b""))()
        self.send_response(code)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), App)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture()
def closed_port() -> int:
    """A loopback port nothing listens on."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------ one probe


@pytest.mark.parametrize(
    ("path", "options", "expected"),
    [
        ("/health", {}, Probe(True, 200, "HTTP 200")),
        ("/health", {"body": "ok db="}, Probe(True, 200, "HTTP 200 with 'ok db='")),
        ("/health", {"body": "users=4"}, Probe(False, 200, "HTTP 200, but body lacks 'users=4'")),
        ("/", {}, Probe(False, 302, "HTTP 302 to /login, expected 2xx")),
        ("/", {"status": (200,)}, Probe(False, 302, "HTTP 302 to /login, expected 200")),
        ("/", {"status": (302,)}, Probe(True, 302, "HTTP 302")),
        ("/ping", {}, Probe(True, 204, "HTTP 204")),
        ("/ping", {"status": (200,)}, Probe(False, 204, "HTTP 204, expected 200")),
        ("/health", {"status": (204, 301)}, Probe(False, 200, "HTTP 200, expected 204 or 301")),
        ("/down", {}, Probe(False, 503, "HTTP 503, expected 2xx (database unreachable: connection refused)")),
        ("/crash", {}, Probe(False, 500, "HTTP 500, expected 2xx")),  # an HTML page is not quoted
        ("/api/health", {}, Probe(False, 401, 'HTTP 401, expected 2xx ({"error": "token required"})')),
        ("/api/health", {"headers": {"Authorization": TOKEN}, "body": '"ok"'}, Probe(True, 200, "HTTP 200 with '\"ok\"'")),
        ("/big", {"body": "ok"}, Probe(False, 200, f"HTTP 200, but its first {BODY_LIMIT // 1024} KB lack 'ok'")),
        ("/latin1", {"body": "prêt"}, Probe(True, 200, "HTTP 200 with 'prêt'")),
        ("/missing", {}, Probe(False, 404, "HTTP 404, expected 2xx")),
    ],
)
def test_probe(server: str, path: str, options: dict, expected: Probe) -> None:
    assert probe(server + path, **options) == expected


def test_probe_sends_headers_and_host_but_never_shows_their_values(server: str) -> None:
    App.seen.clear()
    result = probe(server + "/api/health", headers={"Authorization": "Bearer wrong-secret"}, host_header="app.example.test")
    assert result.ok is False and "wrong-secret" not in result.detail
    assert App.seen[-1]["authorization"] == "Bearer wrong-secret" and App.seen[-1]["host"] == "app.example.test"
    assert App.seen[-1]["user-agent"] == "deployer-health"
    # a Host of the user's own (a virtual host behind a proxy) wins over the tunnel's
    assert probe(server + "/host", host_header="127.0.0.1:8000", headers={"Host": "shop.test"}, body="shop.test").ok


def test_probe_reads_at_most_the_limit(server: str) -> None:
    assert not probe(server + "/big", body="ok").ok  # "ok" sits after 128 KB of filler


def test_probe_without_an_answer(closed_port: int) -> None:
    result = probe(f"http://127.0.0.1:{closed_port}/health", timeout=2)
    assert (result.ok, result.status) == (False, None)
    assert result.detail.startswith("no answer (") and "refused" in result.detail.lower()


def test_probe_ignores_proxy_variables(server: str, closed_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{closed_port}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert probe(server + "/health").ok


@pytest.mark.parametrize(("status", "text"), [((), "2xx"), ((200,), "200"), ((200, 204), "200 or 204"), ((200, 204, 302), "200, 204 or 302")])
def test_expected_statuses(status: tuple[int, ...], text: str) -> None:
    assert expected_statuses(status) == text


# ------------------------------------------------------------------ wait_healthy on a fake host


def container(service: str, *, state: str = "running", health: str = "", restarts: int = 0, started: str = "2020-01-02T03:04:05.123456789Z",
              results: int = 0) -> dict:
    """One container as `docker inspect` prints it (``results``: healthcheck runs the engine logged)."""
    log = [{"ExitCode": 1, "Output": "not yet"}] * results
    return {
        "Id": f"id-{service}",
        "Name": f"/demo-{service}-1",
        "Image": "sha256:" + "0" * 64,
        "RestartCount": restarts,
        "State": {"Status": state, "StartedAt": started, **({"Health": {"Status": health, "Log": log}} if health else {})},
        "Config": {"Image": f"demo-{service}", "Env": [], "Labels": {
            "com.docker.compose.project": "demo", "com.docker.compose.service": service, "com.docker.compose.oneoff": "False"}},
        "NetworkSettings": {"Networks": {}},
    }


HEALTHY = [container("db", health="healthy"), container("web")]

# What the health command does on each run: (exit code, output), or an exception (a hang past its timeout).
Run = tuple[int, str] | Exception


@dataclass
class FakeHost:
    """Answers the container listing with ``inspects`` (the last one repeats) and plays ``runs`` for exec."""

    inspects: list[list[dict]] = field(default_factory=lambda: [HEALTHY])
    runs: list[Run] = field(default_factory=lambda: [(0, "3\n")])
    calls: list[tuple[list[str], float | None]] = field(default_factory=list)
    name: str = "fake"
    is_local: bool = False

    def engine(self) -> Engine:
        return no_engine()

    def run(self, argv: Sequence[str], *, timeout: float | None = None, **_: object) -> Result:
        self.calls.append((list(argv), timeout))
        if argv[0] == "sh" and "docker inspect" in argv[2]:
            rows = self.inspects[0] if len(self.inspects) == 1 else self.inspects.pop(0)
            return Result(tuple(argv), 0, json.dumps(rows), "", 0.0)
        if "exec" in argv:
            outcome = self.runs[0] if len(self.runs) == 1 else self.runs.pop(0)
            if isinstance(outcome, Exception):
                raise outcome
            code, out = outcome
            return Result(tuple(argv), code, out, "", 0.0)
        raise AssertionError(f"unexpected command {argv}")

    def forward(self, host: str, port: int) -> contextlib.AbstractContextManager[tuple[str, int]]:
        return contextlib.nullcontext((host, port))

    def execs(self) -> list[list[str]]:
        return [argv for argv, _ in self.calls if "exec" in argv]


COMMAND = ("flask", "shell", "-c", "from recipes.models import User; print(User.query.count())")


@pytest.fixture()
def make_target(tmp_path: Path) -> Callable[..., Target]:
    (tmp_path / "deploy.toml").write_text('[app]\nname = "demo"\n[environments.prod]\nhost = "local"\npath = "/srv/demo"\n')
    cfg = load_config(tmp_path / "deploy.toml")

    def make(host: FakeHost, **env: object) -> Target:
        environment = replace(cfg.environment("prod"), **{"healthcheck_url": None, **env})
        compose = Compose(program=V2, project="demo", project_dir="/srv/demo", files=("/srv/demo/docker-compose.yml",))
        return Target(config=cfg, env=environment, host=host, compose=compose)  # type: ignore[arg-type]

    return make


def test_every_check_passes_and_the_summary_says_what_was_proven(server: str, make_target) -> None:
    host = FakeHost()
    App.seen.clear()
    target = make_target(host, healthcheck_url=server + "/api/health", healthcheck_headers={"Authorization": TOKEN},
                         healthcheck_status=(200,), healthcheck_body='"ok"', healthcheck_command=COMMAND)
    logged: list[str] = []
    summary = wait_healthy(target, timeout=10, settle=0, log=logged.append)
    assert summary == (
        f"healthy: {server}/api/health answered HTTP 200 with '\"ok\"'; "
        "`flask shell -c 'from recipes.models import User; print(User.query.count())'` exited 0 in web; "
        "2 containers up for 0s or more without a restart"
    )
    assert App.seen[-1]["authorization"] == TOKEN
    assert host.execs() == [[
        "docker", "compose", "--project-name", "demo", "--project-directory", "/srv/demo",
        "--file", "/srv/demo/docker-compose.yml", "exec", "-T", "web", *COMMAND,
    ]]
    # each check as it passes, with what comes next; none of them again as the summary says it
    assert logged == [f"{server}/api/health answered HTTP 200 with '\"ok\"'; now the health command",
                      "`flask shell -c 'from recipes.models import User; print(User.query.count())'` exited 0 in web; "
                      "now the containers"]
    assert TOKEN not in summary + "".join(logged)


def test_containers_only_when_nothing_else_is_configured(make_target) -> None:
    host = FakeHost()
    assert wait_healthy(make_target(host), timeout=5, settle=0) == "healthy: 2 containers up for 0s or more without a restart"
    assert host.execs() == []


def test_health_command_is_retried_until_it_passes(make_target) -> None:
    host = FakeHost(runs=[(1, "OperationalError: could not connect to server\n"), (1, "still starting\n"), (0, "3\n")])
    summary = wait_healthy(make_target(host, healthcheck_command=COMMAND), timeout=10, settle=0, interval=0.01)
    assert "exited 0 in web" in summary and len(host.execs()) == 3


def test_health_command_that_keeps_failing_quotes_its_output_tail(make_target) -> None:
    output = "".join(f"line {n}\n" for n in range(1, 16)) + 'sqlalchemy.exc.ProgrammingError: relation "users" does not exist\n'
    host = FakeHost(runs=[(1, output)])
    started = time.monotonic()
    with pytest.raises(HealthError) as caught:
        wait_healthy(make_target(host, healthcheck_command=COMMAND), timeout=1, settle=0, interval=0.05)
    assert time.monotonic() - started < 3
    message = caught.value.message
    assert message.startswith(
        "the health command `flask shell -c 'from recipes.models import User; print(User.query.count())'` "
        "did not succeed in the web container within 1s (last: exited 1); its last output:\n"
    )
    quoted = message.split("its last output:\n")[1].splitlines()
    assert quoted == [f"    line {n}" for n in range(7, 16)] + ['    sqlalchemy.exc.ProgrammingError: relation "users" does not exist']
    assert "docker compose exec web flask shell -c" in (caught.value.hint or "")


def test_health_command_that_hangs_is_bounded_by_the_deadline(make_target) -> None:
    host = FakeHost(runs=[CommandError("command timed out after 1 s on fake and was killed", output="waiting for lock\n")])
    with pytest.raises(HealthError) as caught:
        wait_healthy(make_target(host, healthcheck_command=COMMAND), timeout=0.5, settle=0, interval=0.01)
    assert "(last: did not finish in time); its last output:\n    waiting for lock" in caught.value.message
    timeouts = [timeout for argv, timeout in host.calls if "exec" in argv]
    assert timeouts and all(t is not None and t <= 1.0 for t in timeouts)


def test_a_run_cut_short_at_the_deadline_does_not_hide_the_failure_before_it(make_target) -> None:
    failure = (1, "AttributeError: type object 'Recipe' has no attribute 'rating'\n")
    host = FakeHost(runs=[failure, CommandError("command timed out", output="")])
    with pytest.raises(HealthError) as caught:
        wait_healthy(make_target(host, healthcheck_command=COMMAND), timeout=0.3, settle=0, interval=0.2)
    assert "(last: exited 1); its last output:\n    AttributeError: type object 'Recipe' has no attribute 'rating'" in caught.value.message


def test_a_long_command_is_clipped_in_the_summary_only(make_target) -> None:
    long_command = ("python3", "-c", "import sys; " * 30)
    summary = wait_healthy(make_target(FakeHost(), healthcheck_command=long_command), timeout=5, settle=0)
    assert "…` exited 0 in web" in summary and len(summary) < 250


def test_url_redirecting_to_a_login_is_not_healthy(server: str, make_target) -> None:
    host = FakeHost()
    with pytest.raises(HealthError) as caught:
        wait_healthy(make_target(host, healthcheck_url=server + "/", healthcheck_status=(200,), healthcheck_command=COMMAND),
                     timeout=0.5, settle=0, interval=0.05)
    assert caught.value.message == f"{server}/ did not answer healthy within 0.5s (last: HTTP 302 to /login, expected 200)"
    assert host.execs() == []  # one deadline: nothing after the URL ran


def test_url_without_the_expected_text(server: str, make_target) -> None:
    with pytest.raises(HealthError) as caught:
        wait_healthy(make_target(FakeHost(), healthcheck_url=server + "/login", healthcheck_body="ok"), timeout=0.3, settle=0, interval=0.05)
    assert caught.value.message.endswith("(last: HTTP 200, but body lacks 'ok')")


def test_unhealthy_container_fails_the_check(make_target) -> None:
    host = FakeHost(inspects=[[container("db", health="healthy"), container("web", state="restarting")]])
    with pytest.raises(HealthError) as caught:
        wait_healthy(make_target(host), timeout=0.3, settle=0, interval=0.05)
    assert caught.value.message == "containers not healthy within 0.3s (web: restarting)"


def test_restart_during_the_settle_period_fails_the_check(make_target) -> None:
    host = FakeHost(inspects=[HEALTHY, [container("db", health="healthy"), container("web", restarts=1)]])
    with pytest.raises(HealthError) as caught:
        wait_healthy(make_target(host), timeout=5, settle=0)
    assert caught.value.message.startswith("web (demo-web-1) restarted or stopped during the 0s settle period")


def test_health_settings_from_deploy_toml(tmp_path: Path, server: str) -> None:
    (tmp_path / "deploy.toml").write_text(
        '[app]\nname = "demo"\n[environments.prod]\nhost = "local"\npath = "/srv/demo"\n'
        f'healthcheck_url = "{server}/api/health"\n'
        "healthcheck_command = \"flask shell -c 'from recipes.models import User; print(User.query.count())'\"\n"
        f'healthcheck_headers = {{ Authorization = "{TOKEN}" }}\n'
        "healthcheck_status = 200\n"
        "healthcheck_body = '\"ok\"'\n"
    )
    cfg = load_config(tmp_path / "deploy.toml")
    env = cfg.environment("prod")
    compose = Compose(program=V2, project="demo", project_dir="/srv/demo", files=("/srv/demo/docker-compose.yml",))
    host = FakeHost()
    summary = wait_healthy(Target(config=cfg, env=env, host=host, compose=compose), timeout=10, settle=0)  # type: ignore[arg-type]
    assert summary.startswith(f"healthy: {server}/api/health answered HTTP 200 with '\"ok\"'; ")
    assert host.execs()[0][-len(COMMAND):] == list(COMMAND)


def test_a_web_healthcheck_that_has_not_run_yet_is_not_waited_for_once_the_url_answered(server: str, make_target) -> None:
    # Docker runs a healthcheck first one interval after the start: the health URL just
    # answered for the web container, so deployer does not wait for that first run.
    host = FakeHost(inspects=[[container("db", health="healthy"), container("web", health="starting")]])
    summary = wait_healthy(make_target(host, healthcheck_url=server + "/api/health", healthcheck_headers={"Authorization": TOKEN}), timeout=5, settle=0, interval=0.05)
    assert summary.endswith("2 containers up for 0s or more without a restart "
                            "(web: its Docker healthcheck had not run yet; the check above stood in)")
    assert len([argv for argv, _ in host.calls if "docker inspect" in argv[-1] or "docker inspect" in argv[2]]) == 2


@pytest.mark.parametrize(
    ("rows", "why"),
    [
        # a web healthcheck that ran and failed: still starting, but not "not run yet"
        ([container("db", health="healthy"), container("web", health="starting", results=1)], "web: running starting"),
        # another service's healthcheck: nothing of ours stands in for it
        ([container("db", health="starting"), container("web", health="healthy")], "db: running starting"),
    ],
)
def test_what_the_url_does_not_vouch_for_is_still_waited_for(server: str, make_target, rows: list[dict], why: str) -> None:
    host = FakeHost(inspects=[rows])
    with pytest.raises(HealthError) as caught:
        wait_healthy(make_target(host, healthcheck_url=server + "/api/health", healthcheck_headers={"Authorization": TOKEN}), timeout=0.4, settle=0, interval=0.05)
    assert caught.value.message == f"containers not healthy within 0.4s ({why})"


def test_without_a_url_or_command_a_pending_healthcheck_is_waited_for(make_target) -> None:
    host = FakeHost(inspects=[[container("db", health="healthy"), container("web", health="starting")],
                              [container("db", health="healthy"), container("web", health="healthy")]])
    assert wait_healthy(make_target(host), timeout=5, settle=0, interval=0.01) == (
        "healthy: 2 containers up for 0s or more without a restart")


def test_turning_unhealthy_during_the_settle_period_fails_the_check(server: str, make_target) -> None:
    host = FakeHost(inspects=[[container("db", health="healthy"), container("web", health="starting")],
                              [container("db", health="healthy"), container("web", health="unhealthy", results=3)]])
    with pytest.raises(HealthError) as caught:
        wait_healthy(make_target(host, healthcheck_url=server + "/api/health", healthcheck_headers={"Authorization": TOKEN}), timeout=5, settle=0)
    assert caught.value.message == "web (demo-web-1) turned unhealthy during the 0s settle period"
