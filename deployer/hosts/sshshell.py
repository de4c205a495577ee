"""Commands over SSH without a session each: a long-lived shell on the server runs them.

An SSH session costs ~0.14 s before the command starts (sshd forks, sets the session up,
starts the login shell); a release runs dozens of short commands and small file writes. A
*command shell* is one session whose POSIX ``sh`` reads commands from its stdin and runs
each in a child ``sh -c`` (a fork: milliseconds), with the input sent along (or
``/dev/null``) as the command's stdin and the channel's stdout and stderr as its own —
output streams exactly as in a session of its own.

The framing (see :data:`LOOP`): deployer writes a random token and the size of the input,
the command text, the token line again, then the input; after the command the shell writes ``TOKEN STATUS`` on stdout *and*
stderr, so the command is over when both streams have shown their marker, and everything
before a marker is the command's output.

A shell serves one command at a time; :class:`deployer.hosts.ssh.SSHHost` keeps a few idle
ones and discards any whose command timed out, was interrupted or whose stream ended
early (its process group is killed first, as for a session).
"""

from __future__ import annotations

import select
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import paramiko

from deployer import interrupts

if TYPE_CHECKING:
    from deployer.hosts.sshconnect import Connection

# $1 is the shell's start token. It reports its PID (the session's process-group leader,
# so killing the group stops the shell and the command it runs) and that it is ready.
LOOP = r"""printf '%s %s\n' "$1" "$$" >&2
printf '%s\n' "$1"
while IFS=' ' read -r token size; do
  cmd=
  while IFS= read -r line; do
    [ "$line" = "$token" ] && break
    cmd="$cmd$line
"
  done
  if [ "$size" -gt 0 ]; then
    # Exactly $size bytes of input follow; the rest of what the command leaves unread is
    # drained, so the next header is where it should be.
    dd bs=1 count="$size" 2>/dev/null | { sh -c "$cmd"; status=$?; cat >/dev/null; exit $status; }
  else
    sh -c "$cmd" </dev/null
  fi
  status=$?
  printf '%s %s\n' "$token" "$status"
  printf '%s %s\n' "$token" "$status" >&2
done
"""
# Input up to this size travels in the shell's stream (read byte by byte by dd: fine for a
# file deployer writes, not for a backup); larger input gets a session of its own.
STDIN_LIMIT = 64 * 1024

_CHUNK = 256 * 1024


class ShellGone(Exception):
    """The shell's channel ended before its command's end markers (killed, or the
    connection dropped): the caller decides which."""


class Marker:
    """Passes a stream's bytes through until ``TOKEN STATUS\\n``; keeps the status.

    Bytes that might be the start of the token are held back until the next read shows
    whether they are.
    """

    def __init__(self, token: bytes) -> None:
        self._token = token
        self._held = b""
        self._after: bytes | None = None  # once the token was seen: what followed it
        self.status: int | None = None

    @property
    def seen(self) -> bool:
        return self.status is not None

    def feed(self, data: bytes) -> bytes:
        """The part of ``data`` that is the command's output."""
        if self.status is not None:
            return b""
        output = b""
        if self._after is None:
            buffer = self._held + data
            start = buffer.find(self._token)
            if start == -1:
                keep = _partial_suffix(buffer, self._token)
                self._held = buffer[len(buffer) - keep :]
                return buffer[: len(buffer) - keep]
            output, self._held, self._after = buffer[:start], b"", buffer[start + len(self._token) :]
        else:
            self._after += data
        end = self._after.find(b"\n")
        if end != -1:
            word = self._after[:end].strip()
            self.status = int(word) if word.isdigit() else -1
        return output


def _partial_suffix(buffer: bytes, token: bytes) -> int:
    """The length of the longest end of ``buffer`` that is a start of ``token``."""
    for size in range(min(len(token) - 1, len(buffer)), 0, -1):
        if buffer.endswith(token[:size]):
            return size
    return 0


class CommandShell:
    """One started shell on one channel."""

    def __init__(self, channel: paramiko.Channel, pid: int | None) -> None:
        self.channel = channel
        self.pid = pid
        self.connection: Connection | None = None  # the one it runs on (set by its host)

    @classmethod
    def start(cls, channel: paramiko.Channel, command: str, token: str, timeout: float) -> CommandShell:
        """Exec ``command`` (which runs :data:`LOOP` with ``token``) and wait until it is ready.

        Whatever the login shell printed before (a chatty startup file) is dropped.
        """
        channel.exec_command(command)
        wanted = token.encode("ascii")
        out = err = b""
        deadline = time.monotonic() + timeout
        while True:
            while channel.recv_ready():
                out += channel.recv(_CHUNK)
            while channel.recv_stderr_ready():
                err += channel.recv_stderr(_CHUNK)
            ready = _line_after(out, wanted)
            report = _line_after(err, wanted)
            if ready is not None and report is not None:
                word = report.strip()
                return cls(channel, int(word) if word.isdigit() else None)
            if channel.closed or channel.exit_status_ready():
                detail = (err or out).decode("utf-8", "replace").strip()[-300:]
                raise ShellGone(f"the command shell did not start: {detail or 'it exited'}")
            if time.monotonic() > deadline:
                raise ShellGone(f"the command shell did not report ready within {timeout:g} s")
            wait_for_output(channel, 0.02)

    def run(
        self,
        command: str,
        stdin: bytes | None,
        on_stdout: Callable[[bytes], None],
        on_stderr: Callable[[bytes], None],
        deadline: float | None,
        poll: float,
    ) -> int | None:
        """Run ``command`` (a shell command line) with ``stdin`` as its input (at most
        :data:`STDIN_LIMIT` bytes; none: ``/dev/null``); its status, or ``None`` at ``deadline``.

        Raises :class:`ShellGone` if the channel ends first. A signal deployer received is
        raised between two reads (the caller stops the shell).
        """
        token = f"deployer-end-{uuid.uuid4().hex}"
        data = stdin or b""
        self.channel.sendall(f"{token} {len(data)}\n{command}\n{token}\n".encode() + data)
        out, err = Marker(token.encode("ascii")), Marker(token.encode("ascii"))
        while True:
            interrupts.check()
            while self.channel.recv_ready():
                data = out.feed(self.channel.recv(_CHUNK))
                if data:
                    on_stdout(data)
            while self.channel.recv_stderr_ready():
                data = err.feed(self.channel.recv_stderr(_CHUNK))
                if data:
                    on_stderr(data)
            if out.seen and err.seen:
                assert out.status is not None
                return out.status
            ended = self.channel.closed or self.channel.eof_received
            if ended and not (self.channel.recv_ready() or self.channel.recv_stderr_ready()):
                raise ShellGone("the command shell's channel ended during a command")
            if not wait_until(self.channel, poll, deadline):
                return None

    def close(self) -> None:
        self.channel.close()


def _line_after(data: bytes, token: bytes) -> bytes | None:
    """What follows ``token`` on its line, once that line is complete."""
    start = data.find(token)
    if start == -1:
        return None
    end = data.find(b"\n", start)
    return None if end == -1 else data[start + len(token) : end]


def wait_until(channel: paramiko.Channel, poll: float, deadline: float | None) -> bool:
    """Wait for output for at most ``poll`` seconds, never past ``deadline``; False once the
    deadline has passed (then without waiting)."""
    wait = poll
    if deadline is not None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        wait = min(wait, remaining)
    wait_for_output(channel, wait)
    return True


def wait_for_output(channel: paramiko.Channel, timeout: float) -> None:
    """Sleep until the command writes, ends, or ``timeout`` passes.

    The channel's fileno is readable while output is buffered, and for good once the server
    sent EOF: a command that closes its output early (the lock's lease runs for the whole
    release with its output on /dev/null) would make a select spin a CPU core until it
    exits. After EOF the wait is on the exit status instead, which wakes it at once.
    """
    if channel.eof_received:
        channel.status_event.wait(timeout)
    else:
        select.select([channel], [], [], timeout)
