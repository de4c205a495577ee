"""The Docker Engine API of a host, spoken over the connection deployer already holds.

Reading the containers with the docker CLI costs a command per read (two docker processes
on the host, ~50 ms; before the command shell, an SSH session each: ~0.2 s). The engine
answers the same questions in milliseconds over one long-lived stream:

- on this machine, the engine's unix socket (or a ``unix://`` ``DOCKER_HOST``);
- over SSH, ``docker system dial-stdio`` in one channel of the open connection, as the
  docker CLI itself does for ``ssh://`` hosts: the channel's stdin and stdout *are* the
  engine's socket, one HTTP/1.1 keep-alive connection for the whole run.

deployer only reads here (a list and inspect by label), so the HTTP is the standard
library's :mod:`http.client`: the docker SDK's import (requests, and paramiko's invoke
through it) costs ~0.3–0.7 s, more than everything else `deployer status` does locally
(docs/benchmarks.md). Paths are unversioned: the engine answers with its own API version,
and the fields read (``docker inspect``'s) have been stable across all of them.

Whatever goes wrong here (no engine socket, a docker CLI without ``dial-stdio``, a docker
context or TLS settings deployer cannot follow, a dropped channel) raises
:class:`EngineUnavailable`, and callers fall back to the docker CLI, which reports the real
problem in its own words. After the first failure the engine stays unavailable for the rest
of the run (a fallback that flips back and forth would read the containers two ways).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, cast
from urllib.parse import quote, urlencode

# The argv whose stdin/stdout become the engine's socket.
DIAL_STDIO = ("docker", "system", "dial-stdio")
# One request may take this long (inspect of a busy engine).
REQUEST_TIMEOUT = 60
_LOCAL_SOCKET = "/var/run/docker.sock"


class EngineUnavailable(Exception):
    """The engine API cannot be used here; use the docker CLI instead."""


class Stream(Protocol):
    """What http.client needs of a socket (a paramiko channel is one)."""

    def sendall(self, data: bytes) -> None: ...

    def makefile(self, mode: str) -> Any: ...

    def settimeout(self, timeout: float | None) -> None: ...

    def close(self) -> None: ...


class _StreamConnection(http.client.HTTPConnection):
    """An HTTP connection over a stream someone else opens (a socket, a channel)."""

    def __init__(self, open_stream: Callable[[], Stream]) -> None:
        super().__init__("localhost", timeout=REQUEST_TIMEOUT)
        self._open_stream = open_stream

    def connect(self) -> None:
        stream = self._open_stream()
        stream.settimeout(REQUEST_TIMEOUT)
        self.sock = stream


class Engine:
    """A host's Docker Engine API: one connection, requests taking turns on it."""

    def __init__(self, open_stream: Callable[[], Stream], label: str) -> None:
        self._open_stream = open_stream
        self._connection: _StreamConnection | None = None
        self._failed: str | None = None
        self._lock = threading.Lock()
        self.label = label

    @property
    def available(self) -> bool:
        return self._failed is None

    def get(self, path: str, query: dict[str, str] | None = None, *, missing_ok: bool = False) -> Any:
        """``GET path`` as JSON; ``None`` for a 404 when ``missing_ok``;
        :class:`EngineUnavailable` for anything else that is not a 200."""
        target = path + ("?" + urlencode(query) if query else "")
        with self._lock:
            if self._failed is not None:
                raise EngineUnavailable(self._failed)
            try:
                if self._connection is None:
                    self._connection = _StreamConnection(self._open_stream)
                self._connection.request("GET", target, headers={"Host": "docker"})
                response = self._connection.getresponse()
                body = response.read()
            except EngineUnavailable as exc:
                self._give_up(str(exc))
                raise
            except (OSError, http.client.HTTPException, EOFError) as exc:
                self._give_up(f"{type(exc).__name__}: {exc}".rstrip(": "))
                raise EngineUnavailable(self._failed) from exc
            except Exception as exc:  # noqa: BLE001 - a stream that breaks oddly: use the CLI
                self._give_up(f"{type(exc).__name__}: {exc}")
                raise EngineUnavailable(self._failed) from exc
            if response.status == 404 and missing_ok:
                return None
            if response.status != 200:
                self._give_up(f"GET {path} answered {response.status}: {body[:200].decode('utf-8', 'replace')}")
                raise EngineUnavailable(self._failed)
            try:
                return json.loads(body)
            except ValueError as exc:
                self._give_up(f"GET {path} answered something that is not JSON")
                raise EngineUnavailable(self._failed) from exc

    def _give_up(self, reason: str) -> None:
        self._failed = reason
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def close(self) -> None:
        """Close the stream (the engine is unusable afterwards)."""
        with self._lock:
            self._give_up("closed")

    # -- what deployer asks ------------------------------------------------------------

    def project_containers(self, project: str, *, oneoff: bool) -> list[dict[str, Any]]:
        """``docker inspect`` rows of a compose project's containers (one-off ones too if
        ``oneoff``), in the order ``docker ps`` lists them."""
        labels = [f"com.docker.compose.project={project}"]
        if not oneoff:
            labels.append("com.docker.compose.oneoff=False")
        listed = self.get("/containers/json", {"all": "1", "filters": json.dumps({"label": labels})})
        rows = []
        for item in listed:
            row = self.get(f"/containers/{quote(str(item['Id']), safe='')}/json", missing_ok=True)
            if row is not None:  # None: removed between the list and the inspect
                rows.append(row)
        return rows


# -- connecting --------------------------------------------------------------------------


def local_engine() -> Engine:
    """This machine's engine: a ``unix://`` ``DOCKER_HOST`` or the default socket.

    A docker context other than the default, a TCP ``DOCKER_HOST`` or TLS settings are the
    CLI's to apply; with one of them the engine is unavailable and deployer uses the CLI.
    """

    def open_socket() -> Stream:
        context = os.environ.get("DOCKER_CONTEXT") or _current_context()
        if context not in (None, "", "default"):
            raise EngineUnavailable(f"docker context {context!r} is in use")
        host = os.environ.get("DOCKER_HOST") or f"unix://{_LOCAL_SOCKET}"
        if not host.startswith("unix://") or os.environ.get("DOCKER_TLS_VERIFY"):
            raise EngineUnavailable(f"DOCKER_HOST={host} is the docker CLI's to reach")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(REQUEST_TIMEOUT)
            sock.connect(host[len("unix://"):])
        except OSError:
            sock.close()
            raise
        return cast(Stream, sock)  # a socket is what the protocol describes

    return Engine(open_socket, "local")


def stream_engine(open_stream: Callable[[], Stream], label: str) -> Engine:
    """An engine reached through a stream ``open_stream`` opens (one running dial-stdio)."""
    return Engine(open_stream, label)


def _current_context() -> str | None:
    config_dir = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    try:
        data = json.loads((Path(config_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    context = data.get("currentContext") if isinstance(data, dict) else None
    return context if isinstance(context, str) else None
