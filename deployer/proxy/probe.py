"""Requests sent through the proxy while a swap runs: what users saw, measured.

A probe is a GET on a new connection every ``interval`` seconds (as browsers behind other
proxies arrive), each waiting at most ``timeout``; anything but the expected status is a
failed request. The summary reads "served throughout: 0 failed of 412 probes, slowest 38 ms".
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class ProbeSummary:
    probes: int
    failed: int
    slowest_ms: float
    p99_ms: float
    longest_gap_ms: float  # the longest time without a successful answer
    first_failure: str | None = None

    def describe(self) -> str:
        if self.failed == 0:
            return f"served throughout: 0 failed of {self.probes} probes, slowest {self.slowest_ms:.0f} ms"
        return (f"{self.failed} of {self.probes} probes failed, slowest {self.slowest_ms:.0f} ms, "
                f"longest gap {self.longest_gap_ms:.0f} ms (first: {self.first_failure})")

    def as_dict(self) -> dict[str, object]:
        return {
            "probes": self.probes, "failed": self.failed, "slowest_ms": round(self.slowest_ms, 1),
            "p99_ms": round(self.p99_ms, 1), "longest_gap_ms": round(self.longest_gap_ms, 1),
            "first_failure": self.first_failure,
        }


def describe_served(served: dict[str, object]) -> str:
    """:meth:`ProbeSummary.describe` of a summary kept as a dict (the journal's)."""
    keys = ("probes", "failed", "slowest_ms", "p99_ms", "longest_gap_ms")
    numbers = {key: float(str(served.get(key) or 0)) for key in keys}
    first = served.get("first_failure")
    return ProbeSummary(int(numbers["probes"]), int(numbers["failed"]), numbers["slowest_ms"], numbers["p99_ms"],
                        numbers["longest_gap_ms"], str(first) if first else None).describe()


class Prober:
    """Probe ``http://host:port/path`` from a thread until :meth:`stop`."""

    def __init__(self, host: str, port: int, path: str = "/", *, interval: float = 0.02, timeout: float = 30,
                 status: int | tuple[int, ...] = 200, host_header: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        self.address = (host, port)
        self.path = path
        self.interval = interval
        self.timeout = timeout
        # the answers that count as served (an empty tuple: any 2xx)
        self.statuses = (status,) if isinstance(status, int) else tuple(status)
        self.host_header = host_header
        self.headers = dict(headers or {})
        self._latencies: list[float] = []
        self._failures: list[str] = []
        self._gap = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="deployer-probe", daemon=True)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> ProbeSummary:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.timeout + 5)
        return self.summary()

    def summary(self) -> ProbeSummary:
        latencies = sorted(self._latencies)
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else 0.0
        return ProbeSummary(
            probes=len(latencies), failed=len(self._failures), slowest_ms=(latencies[-1] if latencies else 0.0) * 1000,
            p99_ms=p99 * 1000, longest_gap_ms=self._gap * 1000,
            first_failure=self._failures[0] if self._failures else None,
        )

    def _once(self) -> str | None:
        connection = http.client.HTTPConnection(*self.address, timeout=self.timeout)
        try:
            headers = {"Connection": "close", "User-Agent": "deployer-probe"}
            if self.host_header:
                headers["Host"] = self.host_header
            headers.update(self.headers)
            connection.request("GET", self.path, headers=headers)
            response = connection.getresponse()
            response.read()
            served = response.status in self.statuses if self.statuses else 200 <= response.status < 300
            return None if served else f"HTTP {response.status}"
        except (OSError, http.client.HTTPException) as error:
            return f"{type(error).__name__}: {error}"
        finally:
            connection.close()

    def _loop(self) -> None:
        last_ok = time.monotonic()
        while not self._stop.is_set():
            started = time.monotonic()
            failure = self._once()
            ended = time.monotonic()
            self._latencies.append(ended - started)
            if failure is None:
                last_ok = ended
            else:
                self._failures.append(failure)
            self._gap = max(self._gap, ended - last_ok if failure else ended - started)
            self._stop.wait(max(0.0, self.interval - (ended - started)))
