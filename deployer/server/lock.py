"""One operation at a time per environment: a lease held by a live process on the host.

Taking the lock starts a small shell process on the host (over the SSH connection, or as a
child process locally) that ``flock``s ``<state_dir>/lock``, writes the holder record
``lock.json`` and then waits for heartbeats on its standard input. The kernel releases the
``flock`` when that process exits, so the lock lives exactly as long as its owner does:

* the owner releases it: it sends ``release``; the process removes the record and exits;
* the owner dies (``kill -9``, a closed laptop, a cut connection): the process sees end of
  input — or no heartbeat within the lease time when the network silently drops — notes the
  time in ``lock.gone``, stops the containers labelled with the owner's run (a migration
  must not go on unattended) and exits. The record stays, so the next command can say
  "stale: owner gone since …" and take the lock over; a live holder is always refused.

Taking it is all-or-nothing: the record is written by the process that holds the ``flock``;
if that write fails the process exits and nothing is held.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import posixpath
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from deployer.errors import CommandError, ConnectionLost, DeployerError, HostError, LockHeldError
from deployer.hosts.base import Host

LOCK_FILE = "lock"
RECORD_FILE = "lock.json"
GONE_SUFFIX = ".gone"
# How long the holder waits for a heartbeat before it decides its owner is gone.
LEASE_SECONDS = 30
HEARTBEAT_SECONDS = 5.0
# On the containers a run starts (one-off migrations, scratch databases), with the run's id:
# the lease holder removes them if their owner vanishes.
RUN_LABEL = "deployer.run"

# $1 lock file, $2 holder record, $3 a container label to stop if the owner vanishes (may
# be empty), $4 the lease time in seconds. The holder record arrives as one line on stdin.
LEASE_SCRIPT = r"""
lock=$1 record=$2 label=$3 ttl=$4
# From the start: an owner killed while this starts (its end of stdout gone) must not take
# the holder with it half-way (SIGPIPE on the LOCKED line), leaving a record with no end noted.
trap '' HUP PIPE INT
command -v flock >/dev/null 2>&1 || { echo NOFLOCK; exit 69; }
mkdir -p "$(dirname "$lock")" 2>/dev/null
# A failed redirection on `exec` would end the shell before it could say why: try first.
( : >>"$lock" ) 2>/dev/null || { echo UNWRITABLE; exit 73; }
exec 9>>"$lock" || { echo UNWRITABLE; exit 73; }
flock -n 9 || { echo BUSY; exit 75; }
IFS= read -r info || exit 70
old=$(cat "$record" 2>/dev/null | head -n 1)
gone=$(cat "$lock.gone" 2>/dev/null)
tmp="$record.$$.tmp"
if ! { printf '%s\n' "$info" > "$tmp" && mv -fT "$tmp" "$record"; }; then
    rm -f "$tmp"; echo UNWRITABLE; exit 73
fi
rm -f "$lock.gone"
printf 'LOCKED\n%s\n%s\n' "$old" "$gone"
exec >/dev/null 2>&1
while line=$(timeout "$ttl" sh -c 'IFS= read -r l && printf %s "$l"'); do
    [ "$line" = release ] && { rm -f "$record"; exit 0; }
done
date -u +%Y-%m-%dT%H:%M:%SZ > "$lock.gone"
if [ -n "$label" ]; then
    docker ps -aq --filter "label=$label" | xargs -r docker rm -f -v
fi
exit 0
"""

# $1 lock file, $2 holder record. Prints FREE|HELD|NONE, the record, the time the owner left.
STATUS_SCRIPT = r"""
lock=$1 record=$2
if [ ! -e "$lock" ]; then state=NONE
elif flock -n "$lock" true 2>/dev/null; then state=FREE
elif command -v flock >/dev/null 2>&1; then state=HELD
else state=NOFLOCK; fi
printf '%s\n' "$state"
printf '%s\n' "$(head -n 1 "$record" 2>/dev/null)"
printf '%s\n' "$(head -n 1 "$lock.gone" 2>/dev/null)"
"""


@dataclass(frozen=True)
class LockInfo:
    """Who holds (or held) the lock."""

    holder: str  # user@machine that ran deployer
    command: str  # e.g. "release production"
    pid: int
    acquired_at: str  # ISO 8601, UTC
    run: str | None = None  # the run id, when the holder is a release or rollback

    def age_seconds(self, now: datetime | None = None) -> float:
        now = now or datetime.now(UTC)
        return max(0.0, (now - datetime.fromisoformat(self.acquired_at)).total_seconds())

    def describe(self, now: datetime | None = None) -> str:
        return f"held by {self.holder} for '{self.command}' since {self.acquired_at} ({format_age(self.age_seconds(now))} ago)"


@dataclass(frozen=True)
class LockState:
    """What ``lock status`` reads: held by a live owner, free, or left by an owner that is gone."""

    held: bool
    info: LockInfo | None = None  # the holder (held), or the last owner's record (stale)
    gone_since: str | None = None  # when a stale owner vanished

    @property
    def stale(self) -> bool:
        return not self.held and self.info is not None

    def describe(self) -> str:
        if self.held and self.info:
            return self.info.describe()
        if self.stale and self.info:
            since = f" since {self.gone_since}" if self.gone_since else ""
            return f"stale: its owner {self.info.holder} ('{self.info.command}') is gone{since}"
        return "free"


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


def new_info(command: str, run: str | None = None) -> LockInfo:
    """Describe this process as a lock holder."""
    return LockInfo(
        holder=f"{getpass.getuser()}@{socket.gethostname()}",
        command=command,
        pid=os.getpid(),
        acquired_at=datetime.now(UTC).isoformat(timespec="seconds"),
        run=run,
    )


def lock_path(state_dir: str) -> str:
    return posixpath.join(state_dir, LOCK_FILE)


def record_path(state_dir: str) -> str:
    return posixpath.join(state_dir, RECORD_FILE)


def lease_argv(state_dir: str, label: str = "", ttl: int = LEASE_SECONDS) -> list[str]:
    """The process that holds the lease (a constant script; paths and label are arguments)."""
    return ["sh", "-c", LEASE_SCRIPT, "sh", lock_path(state_dir), record_path(state_dir), label, str(ttl)]


def status_argv(state_dir: str) -> list[str]:
    return ["sh", "-c", STATUS_SCRIPT, "sh", lock_path(state_dir), record_path(state_dir)]


def _parse_info(line: str) -> LockInfo | None:
    line = line.strip()
    if not line:
        return None
    try:
        data = json.loads(line)
        return LockInfo(**{k: v for k, v in data.items() if k in LockInfo.__dataclass_fields__})
    except (ValueError, TypeError):
        return LockInfo(holder="unknown (unreadable lock record)", command="unknown", pid=0,
                        acquired_at=datetime.now(UTC).isoformat(timespec="seconds"))


def parse_status(stdout: str) -> LockState:
    """Parse :data:`STATUS_SCRIPT`'s output (pure)."""
    lines = stdout.split("\n")
    state = lines[0].strip() if lines else "NONE"
    info = _parse_info(lines[1]) if len(lines) > 1 else None
    gone = lines[2].strip() if len(lines) > 2 and lines[2].strip() else None
    if state == "HELD":
        return LockState(held=True, info=info)
    return LockState(held=False, info=info, gone_since=gone)


def read_lock(host: Host, state_dir: str) -> LockState:
    """The lock's state, read without taking it (read-only)."""
    result = host.run(status_argv(state_dir), timeout=30)
    if not result.ok:
        raise HostError(f"cannot read the deploy lock on {host.name}: {result.stderr.strip()[-300:]}")
    state = parse_status(result.stdout)
    if result.stdout.startswith("NOFLOCK"):
        raise HostError(f"`flock` is not installed on {host.name}", hint="install util-linux there")
    return state


class Lease:
    """A held lock: heartbeats go out from a thread; :meth:`release` ends it."""

    def __init__(self, host: Host, state_dir: str, info: LockInfo, process: object, previous: LockState) -> None:
        self.host = host
        self.state_dir = state_dir
        self.info = info
        self.previous = previous  # a stale owner this lease took over, if any
        self._process = process
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="deployer-lease", daemon=True)
        self._thread.start()

    @property
    def lost(self) -> bool:
        """True once heartbeats no longer reach the holder (the connection broke)."""
        return self._lost.is_set() or not getattr(self._process, "alive", True)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self._process.send("hb\n")  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001 - any failure means the lease is gone
                self._lost.set()
                return

    def release(self) -> None:
        """End the lease: the holder removes its record and exits (idempotent)."""
        if self._stop.is_set():
            return
        self._stop.set()
        process = self._process
        try:
            process.send("release\n")  # type: ignore[attr-defined]
            if process.wait(10) is None:  # type: ignore[attr-defined]
                process.kill()  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - the holder is gone already: so is the flock
            with contextlib.suppress(Exception):
                process.kill()  # type: ignore[attr-defined]


# A lock found busy with no holder behind it (someone's `flock -n` check, a holder exiting)
# is tried again this many times, this far apart, before it is reported.
BUSY_RETRIES = 5
BUSY_PAUSE = 0.2


def acquire(
    host: Host, state_dir: str, info: LockInfo, *, env_name: str, label: str = "", ttl: int = LEASE_SECONDS
) -> Lease:
    """Take the lock or raise :class:`LockHeldError` naming its live holder.

    A lock whose owner is gone is taken over; the returned lease's ``previous`` says whose it was.
    ``label`` (``KEY=VALUE``) names the containers the holder stops if this process vanishes.
    A lock busy for a moment without a holder (a reader's check of it, a holder on its way
    out) is tried again, up to :data:`BUSY_RETRIES` times.
    """
    for _ in range(BUSY_RETRIES):
        try:
            return _acquire_once(host, state_dir, info, env_name=env_name, label=label, ttl=ttl)
        except _Fleeting:
            time.sleep(BUSY_PAUSE)
    return _acquire_once(host, state_dir, info, env_name=env_name, label=label, ttl=ttl, last=True)


class _Fleeting(Exception):
    """The lock was busy, and free again when its holder was looked up."""


def _acquire_once(
    host: Host, state_dir: str, info: LockInfo, *, env_name: str, label: str, ttl: int, last: bool = False
) -> Lease:
    process = host.start(lease_argv(state_dir, label, ttl))
    try:
        try:
            process.send(json.dumps(asdict(info)) + "\n")
            unsent: Exception | None = None
        except (ConnectionLost, HostError) as error:
            unsent = error  # a busy lock: the holder script exits before it reads the record
        first = process.readline(60)
        if unsent is not None and first not in ("BUSY", "NOFLOCK", "UNWRITABLE"):
            raise unsent
        if first == "LOCKED":
            old = process.readline(10) or ""
            gone = process.readline(10) or ""
            previous = LockState(held=False, info=_parse_info(old), gone_since=gone.strip() or None)
            return Lease(host, state_dir, info, process, previous)
    except (ConnectionLost, HostError, CommandError):
        with contextlib.suppress(Exception):
            process.kill()
        raise
    status = process.wait(10)
    with contextlib.suppress(Exception):
        process.kill()
    if first == "BUSY":
        state = read_lock(host, state_dir)
        holder = state.info if state.held else None
        if holder is None and not last:
            raise _Fleeting()
        described = holder.describe() if holder is not None else (
            "busy, but no deployer holds it (another process has the lock file open, or it was released "
            "while we looked): try again")
        raise LockHeldError(
            f"environment {env_name} is locked on {host.name}: {described}",
            hint="wait for that run to finish: the lock frees itself when its owner's process ends "
            f"(`deployer lock status {env_name}` shows it)",
        )
    if first == "NOFLOCK":
        raise HostError(f"`flock` is not installed on {host.name}", hint="install util-linux there (every Debian and Ubuntu has it)")
    if first == "UNWRITABLE":
        raise DeployerError(
            f"cannot take the deploy lock on {host.name}: {state_dir} is not writable by the deploy user",
            hint=f"create it and give it to that user (e.g. `sudo install -d -o USER {state_dir}`), "
            "or set state_dir in deploy.toml",
        )
    raise DeployerError(f"cannot take the deploy lock on {host.name} (holder exited {status}, said {first!r})")


@contextlib.contextmanager
def held(host: Host, state_dir: str, command: str, *, env_name: str, label: str = "") -> Iterator[Lease]:
    """Hold the lock for the duration of the block; released on every path, Ctrl-C included.
    ``label``: the containers the holder removes should this process vanish (see :func:`acquire`)."""
    lease = acquire(host, state_dir, new_info(command), env_name=env_name, label=label)
    try:
        yield lease
    finally:
        lease.release()


def break_lock(host: Host, state_dir: str) -> LockState:
    """``deployer lock release``: the lease frees itself, so only a stale record is removed.

    A live holder is never broken: its owner is running. Returns the state found.
    """
    state = read_lock(host, state_dir)
    if state.held:
        return state
    host.run(["rm", "-f", record_path(state_dir), lock_path(state_dir) + GONE_SUFFIX], timeout=30, check=True)
    return state
