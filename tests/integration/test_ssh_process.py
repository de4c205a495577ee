"""Long-lived commands (``Host.start``) on a real sshd and on this machine: talk to them,
kill them, and see them notice when the program holding them dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployer.errors import ConnectionLost
from deployer.hosts import Host, LocalHost, Process, connect
from tests.bench.sshd import SSHBench, SSHHome

pytestmark = pytest.mark.integration

ECHO_LINES = "import sys\nfor line in sys.stdin:\n    print('got ' + line.strip(), flush=True)\nprint('bye', flush=True)\n"


@pytest.fixture(params=["ssh", "local"])
def host(request: pytest.FixtureRequest, sshd: SSHBench, ssh_home: SSHHome) -> Iterator[Host]:
    if request.param == "local":
        yield LocalHost()
        return
    remote = connect(sshd.spec, known_hosts_path=sshd.known_hosts, ssh_config_path=os.devnull)
    try:
        yield remote
    finally:
        remote.close()


def _running(host: Host, marker: str) -> bool:
    return host.run(["pgrep", "-f", marker]).exit_code == 0


def test_send_readline_close_stdin_and_wait(host: Host, tmp_path: Path) -> None:
    process = host.start(["python3", "-u", "-c", ECHO_LINES], cwd=str(tmp_path), env={"X": "1"})
    assert isinstance(process, Process)
    assert process.alive
    assert process.readline(timeout=0.2) is None  # nothing yet: a timeout, not EOF
    process.send("one\n")
    assert process.readline(timeout=10) == "got one"
    process.send("ünï ✓\ntwo\n")
    assert process.readline(timeout=10) == "got ünï ✓"
    assert process.readline(timeout=10) == "got two"
    assert process.wait(timeout=0.1) is None
    process.close_stdin()
    assert process.readline(timeout=10) == "bye"
    assert process.readline(timeout=10) == ""  # EOF
    assert process.readline(timeout=10) == ""  # and it stays there
    assert process.wait(timeout=10) == 0
    assert not process.alive
    with pytest.raises(ConnectionLost, match="cannot read any more input"):
        process.send("too late\n")


def test_exit_status_cwd_and_env(host: Host, tmp_path: Path) -> None:
    process = host.start(["sh", "-c", 'pwd; echo "$GREETING"; exit 7'], cwd=str(tmp_path), env={"GREETING": "it's $(x)"})
    assert process.readline(timeout=10) == str(tmp_path)
    assert process.readline(timeout=10) == "it's $(x)"
    assert process.readline(timeout=10) == ""
    assert process.wait(timeout=10) == 7


def test_a_command_that_closes_its_output_costs_no_cpu_while_it_runs(host: Host) -> None:
    """The lock's lease runs for a whole release with its output on /dev/null: waiting on it
    (and on a short command that does the same) must sleep, not spin a core."""
    quiet = ["sh", "-c", "exec >/dev/null 2>&1; sleep 3"]
    started, cpu = time.monotonic(), time.process_time()
    process = host.start(quiet)
    assert process.wait(timeout=20) == 0
    assert host.run(quiet).exit_code == 0
    used, took = time.process_time() - cpu, time.monotonic() - started
    assert took >= 6
    assert used < 0.6, f"{used:.2f} s of CPU while waiting {took:.1f} s on commands that write nothing"


def test_kill_stops_the_whole_process_group(host: Host) -> None:
    marker = f"deployer-start-{uuid.uuid4().hex}"
    # A unique duration, so the child can be found by its command line.
    child = f"sleep 300.{uuid.uuid4().int % 10**9:09d}"
    process = host.start(["sh", "-c", f"{child} & echo started; wait # {marker}"])
    assert process.readline(timeout=10) == "started"
    assert _running(host, marker) and _running(host, child)
    started = time.monotonic()
    process.kill()
    assert time.monotonic() - started < 5
    assert not process.alive
    assert process.wait(timeout=5) is not None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (_running(host, marker) or _running(host, child)):
        time.sleep(0.1)
    assert not _running(host, marker)
    assert not _running(host, child), "the shell's child survived"
    process.kill()  # idempotent


def test_kill_escalates_to_sigkill(host: Host) -> None:
    marker = f"deployer-stubborn-{uuid.uuid4().hex}"
    script = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(300)\n"
    process = host.start(["python3", "-c", script, marker])
    assert process.readline(timeout=10) == "ready"
    started = time.monotonic()
    process.kill()
    assert 1.5 < time.monotonic() - started < 8
    assert not _running(host, marker)


_HOLDER = """
import os, sys
from deployer.hosts import LocalHost, connect
from deployer.hosts.spec import HostSpec
user, port, known_hosts, remote_flag, local_flag = sys.argv[1:6]
remote = connect(HostSpec("127.0.0.1", user=user, port=int(port)), known_hosts_path=known_hosts, ssh_config_path=os.devnull)
script = 'cat; touch "$1"'
held = [
    remote.start(["sh", "-c", script, "sh", remote_flag]),
    LocalHost().start(["sh", "-c", script, "sh", local_flag]),
]
for process in held:
    process.send("still here\\n")
    assert process.readline(timeout=10) == "still here"
print("holding", flush=True)
sys.stdin.read()  # until killed
"""


def test_the_process_sees_eof_when_its_holder_is_sigkilled(sshd: SSHBench, ssh_home: SSHHome, tmp_path: Path) -> None:
    remote_flag, local_flag = tmp_path / "remote-saw-eof", tmp_path / "local-saw-eof"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, sshd.user, str(sshd.port), str(sshd.known_hosts), str(remote_flag), str(local_flag)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline()
        assert line == "holding\n", holder.stderr.read() if holder.stderr else line
        assert not remote_flag.exists() and not local_flag.exists()
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (remote_flag.exists() and local_flag.exists()):
            time.sleep(0.05)
        # Both `cat`s saw end of input and the `touch` after them ran.
        assert remote_flag.exists(), "the command over SSH never saw EOF"
        assert local_flag.exists(), "the local command never saw EOF"
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_start_refuses_a_missing_working_directory_locally(tmp_path: Path) -> None:
    from deployer.errors import CommandError

    with pytest.raises(CommandError, match="does not exist"):
        LocalHost().start(["true"], cwd=str(tmp_path / "missing"))
