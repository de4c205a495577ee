"""The proxy on a host: run its container, talk to its runtime API, swap backends.

A swap never closes a client connection and never sends a request to a container that is
not ready: the new backend goes into the free slot and is made ready, the old one drains
(no new requests; the ones in flight finish) and is then put in maintenance. The proxy's
configuration file on the host is rewritten after every switch, so a proxy that restarts
routes as the last completed switch left it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from deployer.errors import CommandError, DeployerError
from deployer.hosts.base import Host
from deployer.proxy import haproxy
from deployer.proxy.haproxy import NOWHERE, ProxySettings, Slot

CONFIG_DIR_IN_CONTAINER = "/usr/local/etc/haproxy"
CONFIG_NAME = "haproxy.cfg"


class ProxyError(DeployerError):
    """The proxy refused a command or does not answer."""


@dataclass(frozen=True)
class ProxyContainer:
    """Where the proxy runs: its container, its image, the network it shares with the app,
    the host address its port is published on, and its configuration directory on the host."""

    name: str
    image: str
    network: str
    publish: str  # e.g. 127.0.0.1:8000 (host side; the container listens on settings.listen_port)
    config_dir: str
    settings: ProxySettings = ProxySettings()

    def run_argv(self) -> list[str]:
        """argv that starts the proxy container (detached, restarted with the engine)."""
        return [
            "docker", "run", "--detach", "--name", self.name,
            "--restart", "unless-stopped",
            # HAProxy's master stops gracefully on SIGUSR1 (finishing the requests in flight)
            "--stop-signal", "SIGUSR1",
            "--network", self.network,
            "--publish", f"{self.publish}:{self.settings.listen_port}",
            "--volume", f"{self.config_dir}:{CONFIG_DIR_IN_CONTAINER}:ro",
            "--label", "deployer.proxy=1",
            self.image,
        ]

    def remove_argv(self) -> list[str]:
        return ["docker", "rm", "--force", self.name]

    def state_argv(self) -> list[str]:
        return ["docker", "inspect", "--type", "container", "--format", "{{.State.Status}}", self.name]

    @property
    def config_path(self) -> str:
        return f"{self.config_dir}/{CONFIG_NAME}"


@dataclass(frozen=True)
class Switched:
    """What a switch did."""

    slot: str  # the slot now serving
    drained: tuple[str, ...]  # the slots that served before, now in maintenance
    drain_seconds: float
    drained_cleanly: bool  # False: the drain timeout passed with requests still open


class Proxy:
    """The runtime API of one proxy container, through ``docker exec`` on its host."""

    def __init__(self, host: Host, container: ProxyContainer, *, log: Callable[[str], None] = lambda _: None) -> None:
        self.host = host
        self.container = container
        self.log = log

    # -- the container ----------------------------------------------------------------------

    def running(self) -> bool:
        result = self.host.run(self.container.state_argv(), timeout=30)
        return result.ok and result.stdout.strip() == "running"

    def write_config(self, servers: dict[str, tuple[str, int, str]] | None = None) -> None:
        """Write haproxy.cfg atomically (the proxy reads it when it starts)."""
        text = haproxy.render_config(self.container.settings, servers)
        if servers is None:  # the first configuration: its directory may not exist yet
            self.host.run(["mkdir", "-p", self.container.config_dir], check=True, timeout=30)
        self.host.write_text(self.container.config_path, text, mode=0o644)

    def ensure(self, *, deadline_seconds: float = 30) -> None:
        """Start the proxy if it does not run (with a configuration routing nowhere when it
        has none yet), and wait until its runtime API answers."""
        if not self.running():
            if not self.host.run(["test", "-f", self.container.config_path], timeout=30).ok:
                self.write_config()
            self.host.run(self.container.remove_argv(), timeout=60)
            self.host.run(self.container.run_argv(), check=True, timeout=120)
        end = time.monotonic() + deadline_seconds
        while True:
            try:
                self.slots()
                return
            except ProxyError:
                if time.monotonic() >= end:
                    raise
                time.sleep(0.2)

    # -- the runtime API --------------------------------------------------------------------

    def command(self, text: str) -> str:
        """Send one runtime API command; its answer (:class:`ProxyError` when refused)."""
        return self.commands([text])[0]

    def commands(self, texts: list[str]) -> list[str]:
        """Send runtime API commands in order, in one round trip to the host; their answers.
        :class:`ProxyError` names the first one refused (those after it were still sent)."""
        shown = "; ".join(texts)
        try:
            result = self.host.run(haproxy.cli_argv(self.container.name, *texts), timeout=30)
        except CommandError as error:
            raise ProxyError(f"the proxy {self.container.name} did not answer `{shown}`: {error.message}") from error
        if not result.ok:
            raise ProxyError(
                f"the proxy {self.container.name} did not answer `{shown}` (exit {result.exit_code}): "
                f"{(result.stderr or result.stdout).strip()[:300]}",
                hint=f"is it running? `docker ps --filter name={self.container.name}` on the host",
            )
        try:
            answers = haproxy.split_answers(result.stdout, len(texts))
        except ValueError as error:
            raise ProxyError(f"the proxy {self.container.name}: {error} for `{shown}`") from error
        for text, answer in zip(texts, answers, strict=True):
            refused = haproxy.refusal(text, answer)
            if refused is not None:
                raise ProxyError(f"the proxy refused `{text}`: {refused}")
        return answers

    def slots(self) -> dict[str, Slot]:
        answer = self.command(haproxy.show_servers())
        try:
            return haproxy.parse_servers(answer)
        except ValueError as error:
            raise ProxyError(str(error)) from error

    def sessions(self, slots: list[str]) -> int:
        """How many client sessions ``slots`` hold now (one ``show stat`` for all of them)."""
        try:
            stats = haproxy.parse_stat(self.command(haproxy.show_stat()))
        except ValueError as error:
            raise ProxyError(str(error)) from error
        return sum(stats[name].current_sessions for name in slots if name in stats)

    def serving(self) -> list[Slot]:
        """The slots that receive requests now."""
        return [slot for slot in self.slots().values() if slot.state == "ready" and not slot.empty]

    # -- switching --------------------------------------------------------------------------

    def switch(self, address: str, port: int, *, drain_timeout: float = 30) -> Switched:
        """Route new requests to ``address:port`` and drain every other slot.

        The caller has checked that the new backend answers healthy on its own address: from
        the first command on, it may receive requests."""
        slots = self.slots()
        live = _live(slots)
        same = [s for s in live if (s.address, s.port) == (address, port)]
        old = [s.name for s in live if (s.address, s.port) != (address, port)]
        first: list[str] = []
        if same:  # already routed there (a switch that completed before a crash)
            target = same[0].name
            if same[0].state != "ready":
                first.append(haproxy.set_state(target, "ready"))
        else:
            target = _free(slots)
            first += [haproxy.set_address(target, address, port), haproxy.set_state(target, "ready")]
        old = [name for name in old if name != target]
        parked = [s.name for s in slots.values() if s.name != target and s.state != "maint" and s.empty]
        started = time.monotonic()
        # The new slot is ready before the old ones drain: one round trip for both.
        batch = [*first, *(haproxy.set_state(name, "drain") for name in old)]
        if batch:
            self.commands(batch)
        if not same:
            self.log(f"proxy: slot {target} → {address}:{port} ready")
        clean = self._retire(old, drain_timeout, also=parked, drained=True)
        waited = time.monotonic() - started
        if old:
            self.log(f"proxy: drained slot {', '.join(old)} in {waited:.2f}s" + ("" if clean else " (timed out)"))
        self.write_config({target: (address, port, "ready")})
        return Switched(slot=target, drained=tuple(old), drain_seconds=waited, drained_cleanly=clean)

    def hold(self) -> None:
        """Pause mode: new requests wait (retried about once a second, up to the pause
        bound) instead of reaching a backend; the ones in flight finish on the old one.
        Returns once nothing is in flight; :meth:`switch` then releases the held requests."""
        slots = self.slots()
        parking = _free(slots)
        live = [s.name for s in _live(slots)]
        self.commands([haproxy.set_address(parking, *NOWHERE), haproxy.set_state(parking, "ready"),
                       *(haproxy.set_state(name, "drain") for name in live)])
        self._retire(live, self.container.settings.pause_timeout, drained=True)
        self.log("proxy: holding new requests")

    def _retire(self, draining: list[str], timeout: float, *, also: list[str] | None = None, drained: bool = False) -> bool:
        """Drain ``draining`` (no new requests; True once none is in flight, False when
        ``timeout`` passed first), then put them and ``also`` in maintenance, pointing nowhere.
        ``drained``: the caller already set them to drain."""
        if draining and not drained:
            self.commands([haproxy.set_state(name, "drain") for name in draining])
        end = time.monotonic() + timeout
        clean = True
        while draining and self.sessions(draining) > 0:
            if time.monotonic() >= end:
                clean = False
                break
            time.sleep(0.1)
        retired = [*draining, *(also or [])]
        if retired:
            self.commands([command for name in retired
                           for command in (haproxy.set_state(name, "maint"), haproxy.set_address(name, *NOWHERE))])
        return clean


@dataclass(frozen=True)
class Routes:
    """What a proxy container does now, read without changing anything (``deployer status``)."""

    name: str
    state: str  # the container's state ("" when there is no such container)
    serving: tuple[tuple[str, int], ...] = ()  # the addresses it sends new requests to
    error: str | None = None  # its runtime API did not answer


def read_routes(host: Host, name: str) -> Routes:
    inspected = host.run(["docker", "inspect", "--type", "container", "--format", "{{.State.Status}}", name], timeout=30)
    state = inspected.stdout.strip() if inspected.ok else ""
    if state != "running":
        return Routes(name, state)
    answer = host.run(haproxy.cli_argv(name, haproxy.show_servers()), timeout=30)
    try:
        if not answer.ok:
            raise ValueError((answer.stderr or answer.stdout).strip()[:200] or f"exit {answer.exit_code}")
        slots = haproxy.parse_servers(answer.stdout)
    except ValueError as error:
        return Routes(name, state, error=str(error))
    return Routes(name, state, tuple((s.address, s.port) for s in slots.values() if s.state == "ready" and not s.empty))


def _live(slots: dict[str, Slot]) -> list[Slot]:
    """The slots a backend is in that is not in maintenance (ready or draining)."""
    return [s for s in slots.values() if s.state != "maint" and not s.empty]


def _free(slots: dict[str, Slot]) -> str:
    try:
        return haproxy.free_slot(slots)
    except ValueError as error:
        raise ProxyError(str(error)) from error
