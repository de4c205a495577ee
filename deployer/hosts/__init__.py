"""Where commands run: this machine (:class:`LocalHost`) or a server over SSH (``SSHHost``).

The protocol and the shared parts live in :mod:`deployer.hosts.base`; paramiko is only
imported when a remote host is opened.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from deployer.hosts.base import (
    Host,
    OutputCallback,
    OutputCollector,
    Process,
    Result,
    check_argv,
    check_env,
    output_tail,
    remote_command,
    timeout_error,
)
from deployer.hosts.local import LocalHost

if TYPE_CHECKING:
    from deployer.hosts.spec import HostSpec

__all__ = [
    "Host",
    "LocalHost",
    "OutputCallback",
    "OutputCollector",
    "Process",
    "Result",
    "check_argv",
    "check_env",
    "connect",
    "output_tail",
    "remote_command",
    "timeout_error",
]


def connect(
    spec: HostSpec,
    *,
    ssh_config_path: str | os.PathLike[str] | None = None,
    known_hosts_path: str | os.PathLike[str] | None = None,
    connect_timeout: float | None = None,
) -> Host:
    """Open the host a :class:`~deployer.hosts.spec.HostSpec` names.

    ``local`` gives a :class:`LocalHost`; anything else an SSH connection that honours
    ``~/.ssh/config`` (or ``ssh_config_path``) and verifies the server's host key against
    ``~/.ssh/known_hosts`` (or ``known_hosts_path``). ``connect_timeout`` defaults to the
    config's ``ConnectTimeout``, else 10 seconds. Raises :class:`~deployer.errors.HostError`.
    """
    if spec.is_local:
        return LocalHost()
    # Imported here: paramiko is only loaded when a remote host is actually used.
    _import_paramiko()
    from deployer.hosts.ssh import SSHHost, resolve_target

    target = resolve_target(
        spec,
        ssh_config_path=ssh_config_path,
        known_hosts_path=known_hosts_path,
        connect_timeout=connect_timeout,
    )
    return SSHHost(target)



def _import_paramiko() -> None:
    """Import paramiko without ``invoke`` (~0.2 s of the start of every SSH command).

    paramiko imports invoke for one feature of its own ``SSHConfig`` (``Match exec``) and
    works without it (it is optional for paramiko's users: the import is guarded). deployer
    reads ssh_config itself (:mod:`deployer.hosts.sshconfig`), so while paramiko loads,
    ``invoke`` is marked unimportable (``None`` in ``sys.modules``, which Python's import
    documents as "not found"); the mark is removed at once, so a later ``import invoke``
    anywhere in the process works as usual.
    """
    if "paramiko" in sys.modules or "invoke" in sys.modules:
        return
    sys.modules["invoke"] = None  # type: ignore[assignment]
    try:
        import paramiko  # noqa: F401
    finally:
        if sys.modules.get("invoke", ...) is None:
            del sys.modules["invoke"]
