"""Is the release serving, and does it reach its database?

A ``200`` from ``/`` proves little: a login page or a static index reads no table. So the
checks an environment can configure (all optional, all within one deadline):

- ``healthcheck_url``: a GET, as the host sees the URL (tunnelled for a remote host), with
  ``healthcheck_headers``; healthy means a status in ``healthcheck_status`` (any 2xx when
  empty) and, with ``healthcheck_body``, that text in the first 64 KB of the body.
  Redirects are not followed: a ``302`` to a login page is reported as such.
- ``healthcheck_command``: run in the new web container (``docker compose exec -T WEB
  ...``); exit 0 is healthy. Made for apps whose every page needs a login: a query through
  the app's models proves the code and the schema fit.
- always: every service's container is running (and healthy where it has a healthcheck),
  then stays up without a restart for ``settle`` seconds.

See docs/health.md for which check to choose.
"""

from __future__ import annotations

import re
import shlex
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import Message
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from deployer.errors import CommandError, DeployerError
from deployer.server import facts as project
from deployer.server.target import Target

if TYPE_CHECKING:
    from deployer.commands.docker import Container

__all__ = ["BODY_LIMIT", "HealthError", "Probe", "expected_statuses", "probe", "reachable_url", "wait_healthy"]

# How much of a health page is read to look for healthcheck_body: a health page is small,
# and a huge one (a full HTML index) must not be downloaded every half second.
BODY_LIMIT = 64 * 1024
# Lines of a failing health command's output quoted in the error.
_TAIL_LINES = 10
_SHOWN = 120


class HealthError(DeployerError):
    """The release did not become healthy in time."""


@dataclass(frozen=True)
class Probe:
    """One health request's verdict: ``detail`` says what was seen, and what was wrong."""

    ok: bool
    status: int | None
    detail: str


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A 3xx is the answer: a redirect to a login page is not a healthy health page."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


# No proxies from the environment (http_proxy): the probe goes straight to the URL, or to
# the tunnel that stands for it.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def expected_statuses(status: Sequence[int]) -> str:
    """``"2xx"``, ``"200"``, ``"200 or 204"``, ``"200, 204 or 302"`` for messages."""
    if not status:
        return "2xx"
    shown = [str(code) for code in status]
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " or " + shown[-1]


def probe(
    url: str,
    *,
    timeout: float = 5.0,
    host_header: str | None = None,
    headers: Mapping[str, str] | None = None,
    status: Sequence[int] = (),
    body: str | None = None,
) -> Probe:
    """One GET of ``url``: healthy means an expected status and, if given, ``body`` in the page.

    ``status`` lists the healthy codes (any 2xx when empty); ``body`` is text the first
    :data:`BODY_LIMIT` bytes must contain. ``headers`` are sent as given (an
    ``Authorization`` or a ``Host`` for a virtual host win over ``host_header``, the Host the
    URL had before it was tunnelled); their values never appear in ``detail``.
    """
    request = urllib.request.Request(url, headers={"User-Agent": "deployer-health"})
    if host_header:
        request.add_header("Host", host_header)
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            code, response_headers = response.status, response.headers
            content = response.read(BODY_LIMIT)
    except urllib.error.HTTPError as error:  # a 3xx (not followed), 4xx or 5xx: still an answer
        code, response_headers = error.code, error.headers
        try:
            content = error.read(BODY_LIMIT)
        except OSError:
            content = b""
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        return Probe(False, None, f"no answer ({reason})")
    return _verdict(code, response_headers, content, status, body)


def _verdict(code: int, headers: Message, content: bytes, status: Sequence[int], body: str | None) -> Probe:
    healthy_status = code in status if status else 200 <= code < 300
    if not healthy_status:
        detail = f"HTTP {code}"
        location = headers.get("Location")
        if 300 <= code < 400 and location:
            detail += f" to {_clip(location)}"
        detail += f", expected {expected_statuses(status)}"
        snippet = _text_snippet(headers, content)
        if code >= 400 and snippet:
            detail += f" ({snippet})"
        return Probe(False, code, detail)
    if body is not None:
        text = content.decode(headers.get_content_charset() or "utf-8", errors="replace")
        if body not in text:
            where = f"its first {BODY_LIMIT // 1024} KB lack" if len(content) >= BODY_LIMIT else "body lacks"
            return Probe(False, code, f"HTTP {code}, but {where} {body!r}")
        return Probe(True, code, f"HTTP {code} with {body!r}")
    return Probe(True, code, f"HTTP {code}")


def _text_snippet(headers: Message, content: bytes) -> str:
    """The start of a plain-text or JSON error body (an HTML page says little in 120 characters)."""
    kind = headers.get_content_type()
    if not content or not (kind == "text/plain" or kind.endswith("json")):
        return ""
    return _clip(" ".join(content.decode(headers.get_content_charset() or "utf-8", errors="replace").split()))


def _clip(text: str) -> str:
    return text if len(text) <= _SHOWN else text[: _SHOWN - 1] + "…"


@contextmanager
def reachable_url(target: Target, url: str) -> Iterator[tuple[str, str]]:
    """(URL this process can open, original Host header) — tunnelled for a remote host."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    with target.host.forward(parts.hostname or "127.0.0.1", port) as (host, local_port):
        yield urlunsplit(parts._replace(netloc=f"{host}:{local_port}")), parts.netloc


def wait_healthy(
    target: Target,
    *,
    timeout: float,
    settle: float = 3.0,
    interval: float = 0.5,
    log: Callable[[str], None] = lambda _: None,
) -> str:
    """Wait until every configured check passes, all within one deadline of ``timeout`` seconds.

    In order: the health URL (status, body), the health command in the web container, then
    the containers (all up, healthy where they have a healthcheck, no restart during
    ``settle`` seconds). Returns a one-line summary of what was proven; raises
    :class:`HealthError` with the last observation of the check that did not pass.
    """
    deadline = time.monotonic() + timeout
    env = target.env
    proven: list[str] = []
    # Each check that passes is said as it passes, with what comes next (the step's own line
    # gives the summary once they all passed).
    if env.healthcheck_url:
        proven.append(_wait_url(target, env.healthcheck_url, deadline, timeout, interval))
        log(proven[-1] + ("; now the health command" if env.healthcheck_command else "; now the containers"))
    if env.healthcheck_command:
        proven.append(_wait_command(target, env.healthcheck_command, deadline, timeout, interval))
        log(proven[-1] + "; now the containers")
    # The web service's own check just passed: a Docker healthcheck of its containers that
    # has not run yet (its first run comes one interval after the start, 30 s by default)
    # is not waited for; one that failed, or containers of other services, are.
    proven.append(_wait_containers(target, deadline, timeout, settle, interval, vouched=bool(proven)))
    return "healthy: " + "; ".join(proven)


def _wait_url(target: Target, url: str, deadline: float, timeout: float, interval: float) -> str:
    env = target.env
    with reachable_url(target, url) as (here, host_header):
        while True:
            remaining = deadline - time.monotonic()
            result = probe(
                here,
                timeout=max(1.0, min(5.0, remaining)),
                host_header=host_header,
                headers=env.healthcheck_headers,
                status=env.healthcheck_status,
                body=env.healthcheck_body,
            )
            if result.ok:
                break
            if time.monotonic() >= deadline:
                raise HealthError(
                    f"{url} did not answer healthy within {timeout:g}s (last: {result.detail})",
                    hint=f"check the web service's logs: `docker compose logs {target.config.app.web_service}` on the host",
                )
            time.sleep(interval)
    return f"{url} answered {result.detail}"


def _wait_command(
    target: Target, command: Sequence[str], deadline: float, timeout: float, interval: float
) -> str:
    web = target.config.app.web_service
    argv = target.compose.exec(web, list(command))
    shown = shlex.join(command)
    failed: tuple[str, str] | None = None  # the last run that finished, unhealthy: (what, output)
    while True:
        remaining = deadline - time.monotonic()
        try:
            result = target.host.run(argv, timeout=max(1.0, remaining))
            if result.ok:
                break
            failed = (f"exited {result.exit_code}", result.stdout + result.stderr)
            last = failed
        except CommandError as error:  # it ran past the deadline and was stopped
            # A run cut short says less than the failure before it: report that one.
            last = failed or ("did not finish in time", error.output)
        if time.monotonic() >= deadline:
            what, output = last
            tail = "\n".join(output.rstrip().splitlines()[-_TAIL_LINES:])
            quoted = "\n".join(f"    {line}" for line in tail.splitlines())
            raise HealthError(
                f"the health command `{shown}` did not succeed in the {web} container within {timeout:g}s "
                f"(last: {what})" + (f"; its last output:\n{quoted}" if quoted else ""),
                hint=f"run it on the host to see why: docker compose exec {web} {shown}",
            )
        time.sleep(interval)
    return f"`{_clip(shown)}` exited 0 in {web}"


def _wait_containers(
    target: Target, deadline: float, timeout: float, settle: float, interval: float, *, vouched: bool = False
) -> str:
    # All running, healthy where they have a healthcheck, and no restarts while we watch.
    # ``vouched``: the health URL or command passed, so the web service's containers whose
    # Docker healthcheck has not run yet count as healthy.
    web = target.config.app.web_service

    def stood_in(c: Container) -> bool:
        return vouched and c.service == web and c.healthcheck_pending

    while True:
        containers = _current(project.service_containers(target))
        bad = [c for c in containers if not c.is_healthy and not stood_in(c)]
        if not bad and containers:
            break
        last = ", ".join(f"{c.service}: {c.state} {c.health}".strip() for c in bad) or "no containers"
        if time.monotonic() >= deadline:
            raise HealthError(f"containers not healthy within {timeout:g}s ({last})")
        time.sleep(interval)
    restarts = {c.id: c.restart_count for c in containers}
    # Settle: every container must have run for ``settle`` seconds without a restart. Time
    # already spent running (e.g. waiting for a healthcheck) counts.
    youngest = min(_age(c.started_at) for c in containers)
    if youngest < settle:
        time.sleep(settle - youngest)
    after = _current(project.service_containers(target))
    for container in after:
        if container.id not in restarts or container.restart_count != restarts[container.id] or container.state != "running":
            raise HealthError(
                f"{container.service} ({container.name}) restarted or stopped during the {settle:g}s settle period "
                f"(state {container.state}, restarts {container.restart_count})",
                hint="check the service's logs: it may crash at start",
            )
        if container.health == "unhealthy":
            raise HealthError(
                f"{container.service} ({container.name}) turned unhealthy during the {settle:g}s settle period",
                hint=f"see why: docker inspect --format '{{{{json .State.Health}}}}' {container.name}",
            )
    pending = sorted({c.service for c in after if stood_in(c)})
    unran = f" ({', '.join(pending)}: its Docker healthcheck had not run yet; the check above stood in)" if pending else ""
    return f"{len(after)} containers up for {settle:g}s or more without a restart" + unran


def _current(containers: Sequence[Container]) -> list[Container]:
    """The containers that stand for the services now: on Swarm, a task's container that
    stopped is history (Swarm replaced it; the deploy's watch judged the swarm's tasks)."""
    from deployer.commands.swarm import TASK_LABEL

    return [c for c in containers if TASK_LABEL not in c.labels or c.state == "running"]


def _age(started_at: str) -> float:
    """Seconds since a container started, from docker's RFC 3339 time (nanoseconds trimmed)."""
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)?$", started_at or "")
    if not match:
        return 0.0
    stamp = match.group(1) + (match.group(2) or "")[:7] + ("+00:00" if match.group(3) in (None, "Z") else match.group(3))
    started = datetime.fromisoformat(stamp)
    return max(0.0, (datetime.now(UTC) - started).total_seconds())
