"""Where an environment lives: this machine, or ``[user@]host[:port]`` over SSH."""

from __future__ import annotations

import re
from dataclasses import dataclass

_HOST_RE = re.compile(
    r"""^(?:(?P<user>[A-Za-z0-9._][A-Za-z0-9._-]*)@)?     # optional user@
        (?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?))
        (?::(?P<port>[0-9]{1,5}))?$""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class HostSpec:
    """A parsed ``host`` value from deploy.toml.

    ``hostname`` may be an alias from ``~/.ssh/config``; user and port left as ``None``
    are filled in from there (and then from the SSH defaults) when connecting.
    """

    hostname: str
    user: str | None = None
    port: int | None = None

    @property
    def is_local(self) -> bool:
        return self.hostname == "local"

    def __str__(self) -> str:
        if self.is_local:
            return "local"
        host = f"[{self.hostname}]" if ":" in self.hostname else self.hostname
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port is not None else ""
        return f"{user}{host}{port}"


LOCAL = HostSpec(hostname="local")


def parse_host(value: str) -> HostSpec:
    """Parse ``"local"``, ``"host"``, ``"user@host"``, ``"user@host:2222"`` or ``"user@[::1]:22"``.

    Raises ``ValueError`` with a sentence saying what is expected.
    """
    text = value.strip()
    if text == "local":
        return LOCAL
    match = _HOST_RE.match(text)
    if not match:
        raise ValueError(
            f"{value!r} is not a host: expected \"local\" or \"[user@]host[:port]\" "
            "(for example \"deploy@203.0.113.10\" or \"deploy@example.com:2222\")"
        )
    port = match.group("port")
    if port is not None and not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r} has port {port}: a port is a number from 1 to 65535")
    return HostSpec(
        hostname=match.group("ipv6") or match.group("host"),
        user=match.group("user"),
        port=int(port) if port is not None else None,
    )
