"""Commands over SSH run in a long-lived command shell (deployer.hosts.sshshell), against the
bench sshd: the same results as a session of their own, far fewer sessions."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from deployer.errors import CommandError
from deployer.hosts import connect
from deployer.hosts.ssh import SSHHost
from deployer.hosts.sshshell import Marker
from tests.bench.sshd import SSHBench, SSHHome

pytestmark = pytest.mark.integration


@pytest.fixture
def remote(sshd: SSHBench, ssh_home: SSHHome) -> Iterator[SSHHost]:
    host = connect(sshd.spec, known_hosts_path=sshd.known_hosts, ssh_config_path=os.devnull)
    assert isinstance(host, SSHHost)
    try:
        yield host
    finally:
        host.close()


def _channels(host: SSHHost) -> int:
    return len(host._transport._channels.values())  # noqa: SLF001 - counting what is open


def _sessions_opened(host: SSHHost) -> list[int]:
    opened = []
    original = host._open_session  # noqa: SLF001

    def counting():  # noqa: ANN202
        opened.append(1)
        return original()

    host._open_session = counting  # type: ignore[method-assign]  # noqa: SLF001
    return opened


def test_many_commands_share_one_session(remote: SSHHost) -> None:
    opened = _sessions_opened(remote)
    outputs = [remote.run(["sh", "-c", f"echo out {n}; echo err {n} >&2; exit {n % 3}"]) for n in range(30)]
    assert [(r.stdout, r.stderr, r.exit_code) for r in outputs] == [
        (f"out {n}\n", f"err {n}\n", n % 3) for n in range(30)
    ]
    assert len(opened) == 1 and _channels(remote) == 1


def test_small_input_goes_through_the_shell(remote: SSHHost, tmp_path) -> None:  # noqa: ANN001
    remote.run(["true"])
    opened = _sessions_opened(remote)
    data = bytes(range(256)) * 16 + b"\nno trailing newline"
    assert remote.run(["sh", "-c", "cat | od -An -tx1 | tr -d ' \\n'"], stdin=data).stdout == data.hex()
    # A command that reads none of its input leaves the shell in step for the next one.
    assert remote.run(["echo", "ignored the input"], stdin=b"x" * 5000).stdout == "ignored the input\n"
    assert remote.run(["sh", "-c", "head -c 3"], stdin=b"abcdef").stdout == "abc"
    remote.write_text(str(tmp_path / "note.json"), '{"step": "migrate"}\n', mode=0o600)
    assert (tmp_path / "note.json").read_text() == '{"step": "migrate"}\n'
    assert remote.run(["echo", "after"]).stdout == "after\n"
    assert opened == []
    # Input beyond the limit gets a session of its own.
    big = b"y" * (300 * 1024)
    assert remote.run(["wc", "-c"], stdin=big).stdout.strip() == str(len(big))
    assert len(opened) == 1


def test_output_is_exact(remote: SSHHost) -> None:
    # No trailing newline, a line that starts like the end marker, binary-ish bytes, and
    # more than one read's worth of output.
    assert remote.run(["printf", "no newline"]).stdout == "no newline"
    assert remote.run(["printf", "deployer-end-not-really 0\\n"]).stdout == "deployer-end-not-really 0\n"
    big = remote.run(["sh", "-c", "seq 1 200000"], check=True).stdout
    assert big.splitlines() == [str(n) for n in range(1, 200001)]
    assert remote.run(["sh", "-c", "printf 'x\\ny'; printf 'e1\\ne2' >&2"]).stderr == "e1\ne2"
    # The command reads /dev/null, not the shell's own input.
    assert remote.run(["cat"], timeout=10).stdout == ""


def test_streams_lines_as_they_come(remote: SSHHost) -> None:
    seen: list[tuple[float, str]] = []
    started = time.monotonic()
    remote.run(["sh", "-c", "echo one; sleep 1; echo two"],
               on_output=lambda line: seen.append((time.monotonic() - started, line)), check=True)
    assert [line for _, line in seen] == ["one", "two"]
    assert seen[1][0] - seen[0][0] >= 0.8, seen


def test_a_timed_out_command_is_killed_and_the_next_one_runs(remote: SSHHost, tmp_path) -> None:  # noqa: ANN001
    # The command would leave its mark 5 s in; it times out after 1 s. The margin between
    # the two is for the kill to arrive on a loaded machine (a new channel, then kill(1)),
    # not a stopwatch: a command that is not killed always leaves the mark.
    marker = tmp_path / "still-running"
    started = time.monotonic()
    with pytest.raises(CommandError, match="timed out"):
        remote.run(["sh", "-c", f"sleep 5; touch {marker}; sleep 30"], timeout=1)
    time.sleep(max(0.0, started + 6.5 - time.monotonic()))
    assert not marker.exists()  # the command was killed with its shell
    assert remote.run(["echo", "next"], check=True).stdout == "next\n"


def test_a_shell_killed_on_the_server_fails_its_command_only(remote: SSHHost) -> None:
    remote.run(["true"])
    pid = int(remote.run(["sh", "-c", "echo $PPID"], check=True).stdout)  # the shell's pid
    killer = threading.Timer(0.5, lambda: subprocess.run(["kill", "-9", str(pid)], check=False))
    killer.start()
    # The command outlives its shell; its status is lost with the shell: -1, as for a
    # command killed by a signal.
    result = remote.run(["sleep", "3"], timeout=30)
    killer.join()
    assert result.exit_code == -1
    assert remote.run(["echo", "after"], check=True).stdout == "after\n"


def test_idle_shells_give_their_slots_to_long_lived_processes(remote: SSHHost) -> None:
    # Parallel commands leave idle shells behind; starting more long-lived processes than
    # the free slots must not wait for ever.
    threads = [threading.Thread(target=remote.run, args=(["sleep", "0.3"],)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    processes = [remote.start(["sleep", "30"]) for _ in range(8)]
    try:
        assert all(p.alive for p in processes)
    finally:
        for p in processes:
            p.kill()
    assert remote.run(["echo", "ok"], check=True).stdout == "ok\n"


def test_after_reconnect_commands_use_a_new_shell(remote: SSHHost) -> None:
    remote.run(["true"])
    remote.reconnect()
    assert remote.run(["echo", "again"], check=True).stdout == "again\n"
    assert _channels(remote) == 1


def test_marker_holds_back_what_may_be_the_token() -> None:
    marker = Marker(b"TOKEN")
    out = b"".join(marker.feed(chunk) for chunk in (b"abc TO", b"K", b"x TOK", b"EN", b" 4", b"2\nrest"))
    assert (out, marker.status) == (b"abc TOKx ", 42)
    assert marker.feed(b"more") == b""
