"""The one error tree of deployer.

Every foreseen failure is a :class:`DeployerError` carrying a message a user can act on
(what went wrong, and how to fix it) and the process exit code the CLI returns for it.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Documented exit codes of the ``deployer`` command."""

    OK = 0
    FAILED = 1  # the operation ran and failed (a command on the host, a migration, ...)
    CONFIG = 2  # deploy.toml or the command line is wrong
    UNREACHABLE = 3  # the host (SSH) or a service on it could not be reached
    LOCKED = 4  # another release holds the environment's lock
    RECOVERY_FAILED = 5  # a release/rollback failed AND could not put everything back: act by hand
    REFUSED = 6  # refused before changing anything (multiple heads, dirty checkout, confirmation)
    INTERRUPTED = 130  # Ctrl-C


class DeployerError(Exception):
    """A failure deployer foresaw: printed as one message, never as a traceback."""

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class ConfigError(DeployerError):
    """deploy.toml is missing, unreadable or invalid; or a command-line value is."""

    exit_code = ExitCode.CONFIG


class HostError(DeployerError):
    """A host could not be reached or refused us (connection, authentication, host key)."""

    exit_code = ExitCode.UNREACHABLE


class ConnectionLost(HostError):
    """An established connection to a host broke (the network, the server, its sshd)."""


class HostKeyError(HostError):
    """The server's SSH host key is unknown or has changed."""


class CommandError(DeployerError):
    """A command run on a host exited non-zero or timed out."""

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        exit_status: int | None = None,
        output: str = "",
    ) -> None:
        super().__init__(message, hint=hint)
        self.exit_status = exit_status
        self.output = output


class LockHeldError(DeployerError):
    """Another release or rollback holds the environment's deploy lock."""

    exit_code = ExitCode.LOCKED


class RefusedError(DeployerError):
    """Refused before anything changed: the plan is unsafe or unconfirmed."""

    exit_code = ExitCode.REFUSED


class RecoveryFailed(DeployerError):
    """A failed release could not be fully undone; the message says what is left to do."""

    exit_code = ExitCode.RECOVERY_FAILED
