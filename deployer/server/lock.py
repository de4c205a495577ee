"""One release at a time per environment: a lock directory on the target host.

``mkdir`` is atomic on every POSIX filesystem, so two deployers racing for the lock cannot
both win (the same trick as Kamal's ``.kamal/lock-*``). The holder writes who, where, what
and since when into the directory so a refused user can tell whether the lock is stale.
"""

from __future__ import annotations

import getpass
import json
import os
import posixpath
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from deployer.errors import LockHeldError
from deployer.hosts import Host

LOCK_DIR = "lock"
INFO_FILE = "info.json"


@dataclass(frozen=True)
class LockInfo:
    """Who holds the lock."""

    holder: str  # user@machine that ran deployer
    command: str  # e.g. "release production"
    pid: int
    acquired_at: str  # ISO 8601, UTC

    def age_seconds(self, now: datetime | None = None) -> float:
        now = now or datetime.now(timezone.utc)
        return max(0.0, (now - datetime.fromisoformat(self.acquired_at)).total_seconds())

    def describe(self, now: datetime | None = None) -> str:
        return f"held by {self.holder} for '{self.command}' since {self.acquired_at} ({format_age(self.age_seconds(now))} ago)"


def format_age(seconds: float) -> str:
    """``42s``, ``3m 12s``, ``5h 03m``, ``2d 4h``."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h"


def new_info(command: str) -> LockInfo:
    """Describe this process as a lock holder."""
    return LockInfo(
        holder=f"{getpass.getuser()}@{socket.gethostname()}",
        command=command,
        pid=os.getpid(),
        acquired_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def lock_path(state_dir: str) -> str:
    return posixpath.join(state_dir, LOCK_DIR)


def read_lock(host: Host, state_dir: str) -> LockInfo | None:
    """The current holder, or ``None`` when the lock is free."""
    path = lock_path(state_dir)
    if not host.run(["test", "-d", path]).ok:
        return None
    result = host.run(["cat", posixpath.join(path, INFO_FILE)])
    if not result.ok:
        # Taken a moment ago and not yet described, or left half-made by a killed process.
        return LockInfo(holder="unknown", command="unknown", pid=0, acquired_at=_mtime(host, path))
    try:
        return LockInfo(**json.loads(result.stdout))
    except (ValueError, TypeError):
        return LockInfo(holder="unknown (unreadable lock file)", command="unknown", pid=0, acquired_at=_mtime(host, path))


def _mtime(host: Host, path: str) -> str:
    result = host.run(["stat", "-c", "%Y", path])
    try:
        stamp = datetime.fromtimestamp(int(result.stdout.strip()), timezone.utc)
    except ValueError:
        stamp = datetime.now(timezone.utc)
    return stamp.isoformat(timespec="seconds")


def acquire(host: Host, state_dir: str, info: LockInfo, *, env_name: str) -> None:
    """Take the lock or raise :class:`LockHeldError` naming its holder."""
    host.run(["mkdir", "-p", state_dir], check=True)
    path = lock_path(state_dir)
    if host.run(["mkdir", path]).ok:
        host.write_text(posixpath.join(path, INFO_FILE), json.dumps(asdict(info)) + "\n")
        return
    holder = read_lock(host, state_dir)
    described = holder.describe() if holder else "held (it was released while we looked: try again)"
    raise LockHeldError(
        f"environment {env_name} is locked on {host.name}: {described}",
        hint=(
            "wait for that run to finish; if it is gone (a crashed run), release the lock with "
            f"`deployer lock release {env_name}`"
        ),
    )


def release(host: Host, state_dir: str) -> bool:
    """Free the lock; ``True`` if there was one."""
    path = lock_path(state_dir)
    existed = host.run(["test", "-d", path]).ok
    host.run(["rm", "-rf", path], check=True)
    return existed


@contextmanager
def held(host: Host, state_dir: str, command: str, *, env_name: str) -> Iterator[LockInfo]:
    """Hold the lock for the duration of the block; released on every path, Ctrl-C included."""
    info = new_info(command)
    acquire(host, state_dir, info, env_name=env_name)
    try:
        yield info
    finally:
        release(host, state_dir)
