"""Is the release serving? Poll the health URL (as the host sees it) and the containers."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import urlsplit, urlunsplit

from deployer.server import facts as project
from deployer.errors import DeployerError
from deployer.server.target import Target


class HealthError(DeployerError):
    """The release did not become healthy in time."""


@dataclass(frozen=True)
class Probe:
    ok: bool
    status: int | None
    detail: str


def probe(url: str, *, timeout: float = 5.0, host_header: str | None = None) -> Probe:
    """One GET: healthy means a 2xx answer."""
    request = urllib.request.Request(url, headers={"User-Agent": "deployer-health"})
    if host_header:
        request.add_header("Host", host_header)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (http(s) only, validated in config)
            return Probe(200 <= response.status < 300, response.status, f"HTTP {response.status}")
    except urllib.error.HTTPError as error:
        return Probe(False, error.code, f"HTTP {error.code}")
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        return Probe(False, None, f"no answer ({reason})")


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
    """Wait until the health URL answers 2xx and every service's container is up and stays up.

    Returns a one-line summary; raises :class:`HealthError` with the last observation.
    """
    deadline = time.monotonic() + timeout
    url = target.env.healthcheck_url
    if url:
        with reachable_url(target, url) as (here, host_header):
            while True:
                result = probe(here, host_header=host_header)
                if result.ok:
                    break
                if time.monotonic() >= deadline:
                    raise HealthError(
                        f"{url} did not answer healthy within {timeout:.0f}s (last: {result.detail})",
                        hint="check the web service's logs: `docker compose logs web` on the host",
                    )
                time.sleep(interval)
        log(f"{url} answered")
    # Containers: all running, healthy where they have a healthcheck, and no restarts while we watch.
    while True:
        containers = project.service_containers(target)
        bad = [c for c in containers if not c.is_healthy]
        if not bad and containers:
            break
        last = ", ".join(f"{c.service}: {c.state} {c.health}".strip() for c in bad) or "no containers"
        if time.monotonic() >= deadline:
            raise HealthError(f"containers not healthy within {timeout:.0f}s ({last})")
        time.sleep(interval)
    restarts = {c.id: c.restart_count for c in containers}
    # Settle: every container must have run for ``settle`` seconds without a restart. Time
    # already spent running (e.g. waiting for a healthcheck) counts.
    youngest = min(_age(c.started_at) for c in containers)
    if youngest < settle:
        time.sleep(settle - youngest)
    after = project.service_containers(target)
    for container in after:
        if container.id not in restarts or container.restart_count != restarts[container.id] or container.state != "running":
            raise HealthError(
                f"{container.service} ({container.name}) restarted or stopped during the {settle:.0f}s settle period "
                f"(state {container.state}, restarts {container.restart_count})",
                hint="check the service's logs: it may crash at start",
            )
    return f"healthy: {len(after)} containers up for {settle:.0f}s or more" + (f", {url} answered" if url else "")


def _age(started_at: str) -> float:
    """Seconds since a container started, from docker's RFC 3339 time (nanoseconds trimmed)."""
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)?$", started_at or "")
    if not match:
        return 0.0
    stamp = match.group(1) + (match.group(2) or "")[:7] + ("+00:00" if match.group(3) in (None, "Z") else match.group(3))
    started = datetime.fromisoformat(stamp)
    return max(0.0, (datetime.now(timezone.utc) - started).total_seconds())
