"""HAProxy in front of the web service: its configuration and its runtime API (pure).

Why HAProxy: switched through its runtime API it changes where new requests go without a
reload, so no client connection is closed (Caddy's ``/load`` and nginx's ``HUP`` close
idle keep-alive connections: about one failed request per swap on a reused connection,
see docs/benchmarks.md), and with connection retries it holds requests while no backend
answers (pause mode) instead of failing them.

The backend has two server slots, ``a`` and ``b``: one serves, the other receives the next
release; a swap fills the free slot, makes it ready, drains the old one, then puts it in
maintenance. Nothing here runs anything: every function returns text or parses it.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

BACKEND = "app"
SLOTS: tuple[str, str] = ("a", "b")
# The runtime API listens on the proxy container's own loopback only: reachable with
# `docker exec`, never from the host's network or the app's.
ADMIN_PORT = 9999
# Where a slot with no container points: nothing listens there, so a request sent to it
# fails to connect and is retried (pause mode holds requests this way).
NOWHERE = ("127.0.0.1", 1)
# A refused connection is retried after HAProxy's turn-around of min(timeout connect, 1 s):
# one retry is about one second of holding.
CONNECT_TIMEOUT_SECONDS = 1


@dataclass(frozen=True)
class ProxySettings:
    """What the configuration depends on."""

    listen_port: int = 8080  # inside the proxy container
    pause_timeout: int = 10  # seconds a request may be held while no backend answers
    client_timeout: int = 60
    server_timeout: int = 60

    @property
    def retries(self) -> int:
        return max(3, self.pause_timeout)


@dataclass(frozen=True)
class Slot:
    """A server slot as the runtime API reports it (``show servers state``)."""

    name: str
    address: str
    port: int
    state: str  # ready, drain or maint (from the operational and admin state bits)

    @property
    def empty(self) -> bool:
        return (self.address, self.port) == NOWHERE or self.address in ("", "0.0.0.0")


def _defaults_and_frontend(settings: ProxySettings, *extra_defaults: str) -> list[str]:
    """The defaults, the frontend and the backend's head, the same behind both kinds of proxy."""
    return [
        "defaults",
        "    mode http",
        f"    timeout connect {CONNECT_TIMEOUT_SECONDS}s",
        f"    timeout client {settings.client_timeout}s",
        f"    timeout server {settings.server_timeout}s",
        "    timeout http-request 10s",
        "    timeout http-keep-alive 10s",
        *extra_defaults,
        # A request whose connection to a backend fails is tried again (and on another server
        # at the last try): a container that just went away costs a retry, not an error.
        f"    retries {settings.retries}",
        "    option redispatch 1",
        "    retry-on conn-failure empty-response",
        "",
        "frontend web",
        f"    bind :{settings.listen_port}",
        # An answer that never reached a client must not be replayed on a write: only
        # idempotent requests are retried after they were sent (a refused connection is
        # always retried: the request never left the proxy).
        "    http-request disable-l7-retry unless METH_GET || METH_HEAD || METH_OPTIONS",
        f"    default_backend {BACKEND}",
        "",
        f"backend {BACKEND}",
        "    balance roundrobin",
    ]


def render_config(settings: ProxySettings, servers: dict[str, tuple[str, int, str]] | None = None) -> str:
    """haproxy.cfg. ``servers`` maps a slot to (address, port, state) as they should start
    after a restart of the proxy: deployer rewrites the file after each switch, so a proxy
    that restarts routes as the last completed switch left it."""
    servers = servers or {}
    lines = [
        "# Written by deployer: the proxy in front of the web service. Edits are overwritten",
        "# at the next release; routing changes at run time through the runtime API.",
        "global",
        f"    stats socket ipv4@127.0.0.1:{ADMIN_PORT} level admin",
        "    stats timeout 10s",
        "",
        *_defaults_and_frontend(settings),
    ]
    for slot in SLOTS:
        address, port, state = servers.get(slot, (*NOWHERE, "maint"))
        flag = " disabled" if state == "maint" else ""
        lines.append(f"    server {slot} {address}:{port}{flag}")
    return "\n".join(lines) + "\n"


# -- on Swarm ------------------------------------------------------------------------------

# Docker's DNS inside every container of a user-defined network.
DOCKER_DNS = "127.0.0.11:53"
SWARM_SERVERS = 16  # slots for the web service's tasks (each its own address)


def render_swarm_config(settings: ProxySettings, service: str, web_port: int, *, health_path: str | None = None,
                        health_host: str | None = None) -> str:
    """haproxy.cfg of the proxy service of a Swarm stack: the web service's tasks are found by
    DNS (``tasks.SERVICE``, re-resolved every second) and health-checked every half second,
    so a task that starts or stops joins or leaves without a switch. A refused connection (a
    task on its way out closed its listener) is retried on another task. While no task
    answers (pause mode scales the service to 0), the ``hold`` server — a backup that refuses
    at once — keeps requests retrying, a second apart, until a task answers or the pause
    bound passes."""
    lines = [
        "# Written by deployer: the proxy in front of the web service's tasks. Edits are",
        "# overwritten at the next release.",
        "global",
        f"    stats socket ipv4@127.0.0.1:{ADMIN_PORT} level admin",
        "    stats timeout 10s",
        "",
        "resolvers docker",
        f"    nameserver docker {DOCKER_DNS}",
        "    resolve_retries 3",
        "    timeout resolve 250ms",
        "    timeout retry 250ms",
        "    hold valid 1s",
        "    hold other 1s",
        "    hold refused 1s",
        "    hold nx 1s",
        "    hold timeout 1s",
        "    hold obsolete 1s",
        "    accepted_payload_size 8192",
        "",
        *_defaults_and_frontend(settings, "    timeout check 2s"),
    ]
    if health_path:
        lines.append("    option httpchk")
        send = f"    http-check send meth GET uri {health_path} ver HTTP/1.1"
        lines.append(send + (f" hdr Host {health_host}" if health_host else ""))
        lines.append("    http-check expect status 200-399")
    # Without a health path the check is a connection: a task that closed its listener is out.
    check = " check inter 500ms fall 1 rise 1"
    lines.append(f"    server-template task {SWARM_SERVERS} tasks.{service}:{web_port}{check} resolvers docker "
                 "init-addr none resolve-prefer ipv4")
    lines.append(f"    server hold {NOWHERE[0]}:{NOWHERE[1]} backup")
    return "\n".join(lines) + "\n"


# -- the runtime API ---------------------------------------------------------------------

def set_address(slot: str, address: str, port: int) -> str:
    return f"set server {BACKEND}/{slot} addr {address} port {port}"


def set_state(slot: str, state: str) -> str:
    if state not in ("ready", "drain", "maint"):
        raise ValueError(f"unknown server state {state!r}")
    return f"set server {BACKEND}/{slot} state {state}"


# What `set server ... addr` answers when it worked (it reports the change, or that there
# was none to make); any other text back from a `set` command is HAProxy refusing it.
_ADDRESS_CHANGED = ("changed from", "no need to change")


def refusal(command: str, answer: str) -> str | None:
    """The reason HAProxy refused ``command``, from its ``answer``; None when it worked."""
    text = answer.strip()
    if not command.startswith("set ") or not text:
        return None
    if " addr " in command and any(marker in text for marker in _ADDRESS_CHANGED):
        return None
    return text[:300]


def show_servers() -> str:
    return f"show servers state {BACKEND}"


def show_stat() -> str:
    return "show stat"


# Runtime API commands through the proxy container's bash (every HAProxy image has it), in
# order, one connection each; the commands arrive as arguments, never formatted into the
# script, and each answer ends with a line of its own.
ANSWER_END = "@@deployer-answer-end@@"
_CLI_SCRIPT = (
    'for command in "$@"; do '
    f"exec 3<>/dev/tcp/127.0.0.1/{ADMIN_PORT} || exit 70; "
    'printf "%s\\n" "$command" >&3; cat <&3; exec 3<&-; '
    f'printf "\\n%s\\n" "{ANSWER_END}"; done'
)


def cli_argv(container: str, *commands: str) -> list[str]:
    """argv that sends runtime API ``commands`` to the proxy, in one ``docker exec``, and
    prints their answers (split them with :func:`split_answers`)."""
    return ["docker", "exec", container, "bash", "-c", _CLI_SCRIPT, "bash", *commands]


def split_answers(output: str, count: int) -> list[str]:
    """The answers of ``count`` commands sent by :func:`cli_argv`."""
    parts = output.split(f"\n{ANSWER_END}\n")
    answers = parts[:-1] if parts and not parts[-1].strip() else parts
    if len(answers) != count:
        raise ValueError(f"expected {count} runtime API answers, got {len(answers)}")
    return answers


# -- parsing answers -----------------------------------------------------------------------

# srv_admin_state bits of `show servers state` (HAProxy's SRV_ADMF_*): maintenance forced
# (0x01), inherited (0x02), by a failed resolution (0x20) or hostname (0x40); drain forced
# (0x08) or inherited (0x10). 0x04 only remembers "disabled in the configuration" and stays
# set after the server is made ready.
_ADMIN_MAINT = 0x01 | 0x02 | 0x20 | 0x40
_ADMIN_DRAIN = 0x08 | 0x10


def parse_servers(text: str) -> dict[str, Slot]:
    """Slots from ``show servers state BACKEND`` (version 1 of its format)."""
    rows = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not rows or not rows[0].strip().isdigit():
        raise ValueError(f"not a `show servers state` answer: {text.strip()[:200]!r}")
    slots: dict[str, Slot] = {}
    for line in rows[1:]:
        fields = line.split()
        if len(fields) < 19 or fields[1] != BACKEND:
            continue
        name, address, admin, port = fields[3], fields[4], int(fields[6]), int(fields[18])
        if admin & _ADMIN_MAINT:
            state = "maint"
        elif admin & _ADMIN_DRAIN:
            state = "drain"
        else:
            state = "ready"
        slots[name] = Slot(name=name, address=address, port=port, state=state)
    return slots


@dataclass(frozen=True)
class ServerStat:
    """One server's counters from ``show stat``."""

    name: str
    current_sessions: int
    total_sessions: int
    status: str


def parse_stat(text: str) -> dict[str, ServerStat]:
    """The backend's servers from ``show stat`` (CSV with a ``# `` header)."""
    body = text.lstrip()
    if not body.startswith("# "):
        raise ValueError(f"not a `show stat` answer: {text.strip()[:200]!r}")
    reader = csv.DictReader(io.StringIO(body[2:]))
    stats: dict[str, ServerStat] = {}
    for row in reader:
        if row.get("pxname") != BACKEND or row.get("svname") in ("FRONTEND", "BACKEND", None):
            continue
        stats[row["svname"]] = ServerStat(
            name=row["svname"],
            current_sessions=int(row.get("scur") or 0),
            total_sessions=int(row.get("stot") or 0),
            status=row.get("status", ""),
        )
    return stats


def free_slot(slots: dict[str, Slot]) -> str:
    """The slot the next release goes into: one in maintenance (the first when both are)."""
    for name in SLOTS:
        slot = slots.get(name)
        if slot is None or slot.state == "maint":
            return name
    raise ValueError("both proxy slots serve: a swap was left half-done (the next release converges it)")
