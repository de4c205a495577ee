"""The Docker Engine API of a host, spoken over the connection deployer already holds.

Reading the containers with the docker CLI costs a command per read (over SSH, a session
each: ~0.2 s before docker even starts). The engine answers the same questions in
milliseconds over one long-lived stream:

- on this machine, the engine's unix socket (or ``DOCKER_HOST``);
- over SSH, ``docker system dial-stdio`` in one channel of the open connection, as the
  docker CLI itself does for ``ssh://`` hosts: the channel's stdin and stdout *are* the
  engine's socket, one HTTP/1.1 keep-alive connection for the whole run.

The docker SDK (``docker.APIClient``) does the HTTP; this module only supplies the stream.
Whatever goes wrong here (no engine socket, a docker CLI without ``dial-stdio``, a docker
context deployer cannot follow, a dropped channel) makes :meth:`Engine.call` raise
:class:`EngineUnavailable`, and callers fall back to the docker CLI, which reports the
real problem in its own words.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    import docker

T = TypeVar("T")

# The argv whose stdin/stdout become the engine's socket.
DIAL_STDIO = ("docker", "system", "dial-stdio")
# One request may take this long (inspect of a busy engine); streams have their own.
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


class Engine:
    """A host's Docker Engine API; every call goes through :meth:`call`.

    After the first failure the engine stays unavailable for the rest of the run (a
    fallback that flips back and forth would read the containers two ways in one run).
    """

    def __init__(self, connect: Callable[[], docker.APIClient], label: str) -> None:
        self._connect = connect
        self._client: docker.APIClient | None = None
        self._failed: str | None = None
        self._lock = threading.Lock()
        self.label = label

    @property
    def available(self) -> bool:
        return self._failed is None

    def call(self, use: Callable[[docker.APIClient], T]) -> T:
        """``use(client)``; :class:`EngineUnavailable` if the engine cannot answer."""
        import docker.errors
        import requests.exceptions

        client = self._ready()
        try:
            return use(client)
        except docker.errors.NotFound:
            raise
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError, ValueError) as exc:
            self._give_up(f"{type(exc).__name__}: {exc}")
            raise EngineUnavailable(self._failed) from exc

    def _ready(self) -> docker.APIClient:
        with self._lock:
            if self._failed is not None:
                raise EngineUnavailable(self._failed)
            if self._client is None:
                try:
                    self._client = self._connect()
                except Exception as exc:  # noqa: BLE001 - any failure means: use the CLI
                    self._failed = f"{type(exc).__name__}: {exc}"
                    raise EngineUnavailable(self._failed) from exc
            return self._client

    def _give_up(self, reason: str) -> None:
        with self._lock:
            self._failed = reason
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def close(self) -> None:
        """Close the stream (the engine is unusable afterwards)."""
        self._give_up("closed")

    # -- what deployer asks ------------------------------------------------------------

    def project_containers(self, project: str, *, oneoff: bool) -> list[dict[str, Any]]:
        """``docker inspect`` rows of a compose project's containers (one-off ones too if
        ``oneoff``), in the order ``docker ps`` lists them."""
        import docker.errors

        labels = [f"com.docker.compose.project={project}"]
        if not oneoff:
            labels.append("com.docker.compose.oneoff=False")

        def read(client: docker.APIClient) -> list[dict[str, Any]]:
            listed = client.containers(all=True, quiet=True, filters={"label": labels})
            rows = []
            for item in listed:
                try:
                    rows.append(client.inspect_container(item["Id"]))
                except docker.errors.NotFound:
                    continue  # removed between the list and the inspect
            return rows

        return self.call(read)


# -- connecting --------------------------------------------------------------------------


def local_engine() -> Engine:
    """This machine's engine: ``DOCKER_HOST`` or the default unix socket.

    A docker context other than the default is the CLI's to resolve; with one in use the
    engine is unavailable and deployer keeps using the CLI.
    """

    def connect() -> docker.APIClient:
        import docker

        context = os.environ.get("DOCKER_CONTEXT") or _current_context()
        if context not in (None, "", "default"):
            raise EngineUnavailable(f"docker context {context!r} is in use")
        base_url = os.environ.get("DOCKER_HOST") or f"unix://{_LOCAL_SOCKET}"
        if os.environ.get("DOCKER_TLS_VERIFY") or os.environ.get("DOCKER_CERT_PATH"):
            raise EngineUnavailable("TLS settings for DOCKER_HOST are the CLI's to apply")
        client = docker.APIClient(base_url=base_url, version="auto", timeout=REQUEST_TIMEOUT)
        client.trust_env = False
        return client

    return Engine(connect, "local")


def stream_engine(open_stream: Callable[[], Stream], label: str) -> Engine:
    """An engine reached through streams ``open_stream`` opens (each runs dial-stdio)."""
    return Engine(lambda: _stream_client(open_stream), label)


def _current_context() -> str | None:
    config_dir = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    try:
        data = json.loads((Path(config_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    context = data.get("currentContext") if isinstance(data, dict) else None
    return context if isinstance(context, str) else None


def _stream_client(open_stream: Callable[[], Stream]) -> docker.APIClient:
    import docker
    import docker.constants
    import urllib3
    import urllib3.connection
    import urllib3.connectionpool
    from docker.transport.basehttpadapter import BaseHTTPAdapter

    class StreamConnection(urllib3.connection.HTTPConnection):
        def connect(self) -> None:
            stream = open_stream()
            stream.settimeout(REQUEST_TIMEOUT)
            self.sock = stream

    class StreamPool(urllib3.connectionpool.HTTPConnectionPool):
        ConnectionCls = StreamConnection

        def _get_conn(self, timeout: float | None = None) -> Any:
            # The pool's own check for a dropped connection select()s on a socket; a
            # dropped stream shows up as an error on the next request instead.
            assert self.pool is not None
            try:
                conn = self.pool.get(block=True, timeout=timeout)
            except Exception:  # noqa: BLE001 - urllib3's Empty: make a new one
                conn = None
            return conn or self._new_conn()

    class StreamAdapter(BaseHTTPAdapter):
        def __init__(self) -> None:
            super().__init__()
            # One stream: requests of one run take turns on it (each takes milliseconds).
            self.pool = StreamPool("localhost", timeout=REQUEST_TIMEOUT, maxsize=1, block=True)

        def get_connection(self, url: str, proxies: Any = None) -> Any:
            return self.pool

        def request_url(self, request: Any, proxies: Any) -> str:
            return str(request.path_url)

        def close(self) -> None:
            self.pool.close()
            super().close()

    # A unix base URL makes the SDK mount its unix adapter and drop the plain http and
    # https ones (nothing here may reach a network); a fixed version makes it send no
    # request until the stream adapter is mounted over the unix one.
    client = docker.APIClient(
        base_url="unix:///var/run/docker.sock",
        version=docker.constants.MINIMUM_DOCKER_API_VERSION,
        timeout=REQUEST_TIMEOUT,
    )
    client.trust_env = False
    client.mount("http+docker://", StreamAdapter())
    try:
        client._version = client.version(api_version=False)["ApiVersion"]
    except Exception:
        client.close()
        raise
    return client
