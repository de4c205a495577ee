"""SSHHost against a real OpenSSH server on 127.0.0.1 (the ``sshd`` bench)."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from deployer.errors import CommandError, HostError, HostKeyError
from deployer.hosts import Host, connect
from deployer.hosts.spec import HostSpec, parse_host
from deployer.hosts.ssh import SSHHost, fingerprint, resolve_target
from tests.bench.sshd import (
    BenchUser,
    SSHBench,
    SSHDFactory,
    SSHHome,
    free_port,
    write_ed25519_key,
)

pytestmark = pytest.mark.integration

NASTY_ARGS = [
    "two words",
    "single ' quote",
    'double " quote',
    "$(touch /tmp/should-not-exist-deployer)",
    "`id`",
    "a; echo injected",
    "line one\nline two",
    "tab\there",
    "ünïcødé ✓ 日本",
    "*",
    "~",
    "$HOME",
    "back\\slash",
    "-n",
    "",
]


@pytest.fixture
def remote(sshd: SSHBench, ssh_home: SSHHome) -> Iterator[Host]:
    """A connection to the bench sshd with explicit user@host:port (no config needed)."""
    host = connect(
        sshd.spec, known_hosts_path=sshd.known_hosts, ssh_config_path=os.devnull
    )
    try:
        yield host
    finally:
        host.close()


def test_connects_and_reports_exit_code_stdout_stderr(remote: Host) -> None:
    assert isinstance(remote, SSHHost)
    assert remote.is_local is False

    result = remote.run(["sh", "-c", "echo out; echo err >&2; exit 0"])
    assert (result.exit_code, result.stdout, result.stderr) == (0, "out\n", "err\n")
    assert result.ok
    assert result.argv == ("sh", "-c", "echo out; echo err >&2; exit 0")
    assert result.duration > 0

    failed = remote.run(["sh", "-c", "echo broken >&2; exit 3"])
    assert failed.exit_code == 3 and not failed.ok
    with pytest.raises(CommandError) as caught:
        failed.check()
    assert caught.value.exit_status == 3
    assert "exit status 3" in str(caught.value) and "broken" in str(caught.value)

    with pytest.raises(CommandError, match="exit status 3"):
        remote.run(["sh", "-c", "exit 3"], check=True)


def test_missing_remote_command_is_exit_127(remote: Host) -> None:
    result = remote.run(["deployer-no-such-command-xyz"])
    assert result.exit_code == 127
    assert "deployer-no-such-command-xyz" in result.stderr


def test_nasty_arguments_round_trip_exactly(remote: Host) -> None:
    result = remote.run(["printf", "%s\\0", *NASTY_ARGS], check=True)
    assert result.stdout.split("\0")[:-1] == NASTY_ARGS
    assert not Path("/tmp/should-not-exist-deployer").exists()

    script = "import sys, json; print(json.dumps(sys.argv[1:]))"
    echoed = remote.run(["python3", "-c", script, *NASTY_ARGS], check=True)
    import json

    assert json.loads(echoed.stdout) == NASTY_ARGS


def test_cwd_and_env(remote: Host, tmp_path: Path) -> None:
    workdir = tmp_path / "dir with space; and $(x)"
    workdir.mkdir()
    env = {"DEPLOYER_VALUE": "it's $(not) expanded; ok", "SECOND": "ü"}
    result = remote.run(
        ["sh", "-c", 'pwd; printf "%s|%s\\n" "$DEPLOYER_VALUE" "$SECOND"'],
        cwd=str(workdir),
        env=env,
        check=True,
    )
    assert result.stdout == f"{workdir}\nit's $(not) expanded; ok|ü\n"

    missing = remote.run(["true"], cwd=str(tmp_path / "missing"))
    assert not missing.ok
    assert "missing" in missing.stderr


def test_path_has_the_usual_directories(remote: Host) -> None:
    # docker (/usr/local/bin or /usr/bin) and git must be found by commands over SSH.
    path = (
        remote.run(["sh", "-c", 'echo "$PATH"'], check=True).stdout.strip().split(":")
    )
    assert "/usr/local/bin" in path and "/usr/bin" in path
    assert remote.run(["git", "--version"], check=True).stdout.startswith("git version")
    assert remote.run(["docker", "--version"], check=True).stdout.startswith("Docker")


def test_stdin_is_passed(remote: Host) -> None:
    data = "".join(f"line {n} ✓\n" for n in range(20000)).encode()
    result = remote.run(["sh", "-c", "cat; echo done >&2"], stdin=data, check=True)
    assert result.stdout.encode() == data
    assert result.stderr == "done\n"


def test_timeout_kills_the_remote_command(remote: Host) -> None:
    marker = f"deployer-timeout-{uuid.uuid4().hex}"
    started = time.monotonic()
    with pytest.raises(CommandError) as caught:
        remote.run(["python3", "-c", "import time; time.sleep(30)", marker], timeout=1)
    elapsed = time.monotonic() - started
    assert elapsed < 15, elapsed  # not the 30 s the command would sleep
    message = str(caught.value)
    assert "timed out after 1 s" in message and "time.sleep(30)" in message
    # Really gone on the server, not just abandoned by us.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        if remote.run(["pgrep", "-f", marker]).exit_code == 1:
            break
        time.sleep(0.1)
    assert remote.run(["pgrep", "-f", marker]).exit_code == 1, (
        "the timed-out command still runs"
    )


def test_streaming_callback_gets_lines_in_order(remote: Host) -> None:
    seen: list[tuple[float, str]] = []
    script = (
        "for i in 1 2 3; do echo line $i; sleep 0.3; done; echo warn >&2; printf tail"
    )
    started = time.monotonic()
    result = remote.run(
        ["sh", "-c", script],
        on_output=lambda line: seen.append((time.monotonic() - started, line)),
        check=True,
    )
    assert [line for _, line in seen] == ["line 1", "line 2", "line 3", "warn", "tail"]
    assert result.stdout == "line 1\nline 2\nline 3\ntail"
    assert result.stderr == "warn\n"
    # Streamed as it came, not delivered at the end: lines 1 and 3 arrive two sleeps apart
    # (a lower bound only: a loaded machine delays both, not the gap).
    assert seen[2][0] - seen[0][0] >= 0.5, seen


def test_concurrent_runs_from_threads(remote: Host, tmp_path: Path) -> None:
    # A rendezvous, not a stopwatch: each command leaves a mark and waits until eight marks
    # exist. Eight commands that ran one after another would never see eight marks (the
    # first one gives up after 30 s and fails); eight that run side by side over the one
    # connection all pass. Twelve is more than the session limit (eight): the extra four
    # wait for a free channel instead of failing, and find the eight marks already there.
    marks = tmp_path / "marks"
    marks.mkdir()
    script = (
        'touch "$1/$2"; i=0; '
        'while [ "$(ls "$1" | wc -l)" -lt 8 ]; do '
        "i=$((i+1)); [ $i -gt 600 ] && exit 7; sleep 0.05; done; "
        'echo "$2"'
    )

    def work(n: int) -> str:
        return remote.run(["sh", "-c", script, "sh", str(marks), str(n)], check=True).stdout

    with ThreadPoolExecutor(max_workers=12) as pool:
        outputs = list(pool.map(work, range(12)))
    assert outputs == [f"{n}\n" for n in range(12)]
    assert len(list(marks.iterdir())) == 12


def test_file_transfer(remote: Host, tmp_path: Path) -> None:
    target = tmp_path / "remote"
    target.mkdir()
    text = "first line\nünïcødé ✓\n"
    remote.write_text(str(target / "secret.env"), text, mode=0o600)
    assert (target / "secret.env").read_text() == text
    assert (target / "secret.env").stat().st_mode & 0o777 == 0o600
    assert remote.read_text(str(target / "secret.env")) == text

    # Replacing keeps the file's mode and leaves no temporary files behind.
    remote.write_text(str(target / "secret.env"), "second\n")
    assert remote.read_text(str(target / "secret.env")) == "second\n"
    assert (target / "secret.env").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in target.iterdir()) == ["secret.env"]

    source = tmp_path / "payload.bin"
    source.write_bytes(bytes(range(256)) * 1000)
    remote.put(source, str(target / "payload.bin"), mode=0o640)
    assert (target / "payload.bin").read_bytes() == source.read_bytes()
    assert (target / "payload.bin").stat().st_mode & 0o777 == 0o640
    back = tmp_path / "back.bin"
    remote.get(str(target / "payload.bin"), back)
    assert back.read_bytes() == source.read_bytes()

    with pytest.raises(FileNotFoundError):
        remote.read_text(str(target / "missing"))


class EchoServer:
    """A tiny TCP echo server on 127.0.0.1 for tunnel tests."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def close(self) -> None:
        self.sock.close()


def _echo_round_trip(address: tuple[str, int], payload: bytes) -> bytes:
    with socket.create_connection(address, timeout=5) as client:
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := client.recv(65536):
            received += chunk
    return received


def test_forward_tunnels_to_a_server_port(remote: Host) -> None:
    echo = EchoServer()
    try:
        with remote.forward("127.0.0.1", echo.port) as address:
            assert address[0] == "127.0.0.1" and address[1] != echo.port
            assert _echo_round_trip(address, b"hello") == b"hello"
            big = os.urandom(300_000)
            assert _echo_round_trip(address, big) == big
            # Several connections through one tunnel at once.
            outputs: list[bytes] = []
            threads = [
                threading.Thread(
                    target=lambda n=n: outputs.append(
                        _echo_round_trip(address, b"%d" % n)
                    )
                )
                for n in range(5)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(10)
            assert sorted(outputs) == [b"0", b"1", b"2", b"3", b"4"]
        # The listener is gone after the context.
        with pytest.raises(OSError):
            socket.create_connection(address, timeout=2).close()
    finally:
        echo.close()


def test_ssh_config_alias_is_honoured(ssh_home: SSHHome, sshd: SSHBench) -> None:
    with connect(parse_host("bench")) as host:
        assert isinstance(host, SSHHost)
        assert host.name == "bench"
        assert (host.target.hostname, host.target.port, host.target.user) == (
            sshd.host,
            sshd.port,
            sshd.user,
        )
        assert host.run(["echo", "via alias"], check=True).stdout == "via alias\n"


def test_explicit_port_in_spec_wins_over_config(
    ssh_home: SSHHome, sshd: SSHBench
) -> None:
    unused = free_port()
    target = resolve_target(HostSpec("bench", user="deploy", port=unused))
    assert (target.hostname, target.port, target.user) == (sshd.host, unused, "deploy")
    assert target.key_filenames == (str(ssh_home.key_path),)
    assert str(ssh_home.known_hosts) in target.known_hosts_files
    assert target.identities_only
    # The config's port was really overridden: nothing listens there.
    with pytest.raises(HostError, match="connection refused"):
        connect(HostSpec("bench", port=unused))


def test_config_connect_timeout_is_read(tmp_path: Path, sshd: SSHBench) -> None:
    config = sshd.write_ssh_config(tmp_path / "config", "web")
    config.write_text(config.read_text() + "    ConnectTimeout 3\n")
    target = resolve_target(HostSpec("web"), ssh_config_path=config)
    assert target.connect_timeout == 3.0
    assert (
        resolve_target(
            HostSpec("web"), ssh_config_path=config, connect_timeout=7
        ).connect_timeout
        == 7
    )


def test_unknown_host_key_is_refused(
    sshd: SSHBench, ssh_home: SSHHome, tmp_path: Path
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(HostKeyError) as caught:
        connect(sshd.spec, known_hosts_path=empty, ssh_config_path=os.devnull)
    message = str(caught.value)
    assert "unknown" in message
    assert f"ssh-keyscan -t ssh-ed25519 -p {sshd.port} 127.0.0.1 >> {empty}" in message
    import paramiko

    host_key = paramiko.Ed25519Key(
        data=__import__("base64").b64decode(sshd.host_public_key.split()[1])
    )
    assert fingerprint(host_key) in message and fingerprint(host_key).startswith(
        "SHA256:"
    )
    assert caught.value.exit_code == 3


def test_changed_host_key_is_refused(
    sshd: SSHBench, ssh_home: SSHHome, tmp_path: Path
) -> None:
    other = write_ed25519_key(tmp_path / "other_host_key", "impostor")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {' '.join(other.split()[:2])}\n")
    with pytest.raises(HostKeyError) as caught:
        connect(sshd.spec, known_hosts_path=known_hosts, ssh_config_path=os.devnull)
    message = str(caught.value)
    assert "CHANGED" in message and "man-in-the-middle" in message
    assert f"ssh-keygen -R '[127.0.0.1]:{sshd.port}' -f {known_hosts}" in message


def test_unknown_host_key_by_default_known_hosts(
    sshd: SSHBench, ssh_home: SSHHome
) -> None:
    # Via ~/.ssh/config and ~/.ssh/known_hosts, as a user would: emptied known_hosts.
    ssh_home.known_hosts.write_text("")
    with pytest.raises(HostKeyError, match="ssh-keyscan"):
        connect(parse_host("bench"))


def test_connection_refused_is_fast_and_clear(ssh_home: SSHHome) -> None:
    port = free_port()
    started = time.monotonic()
    with pytest.raises(HostError) as caught:
        connect(
            HostSpec("127.0.0.1", user="deploy", port=port), ssh_config_path=os.devnull
        )
    assert time.monotonic() - started < 3
    assert (
        str(caught.value).splitlines()[0]
        == f"cannot connect to deploy@127.0.0.1:{port}: connection refused"
    )
    assert not isinstance(caught.value, HostKeyError)


def test_wrong_key_fails_authentication(
    sshd: SSHBench, ssh_home: SSHHome, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong_key"
    write_ed25519_key(wrong, "stranger")
    config = sshd.write_ssh_config(tmp_path / "config", "bench", identity_file=wrong)
    # The fake HOME's default key (the right one) must not be picked up either.
    ssh_home.key_path.unlink()
    with pytest.raises(HostError) as caught:
        connect(parse_host("bench"), ssh_config_path=config)
    message = str(caught.value)
    assert message.startswith(
        f"cannot log in to {sshd.user}@127.0.0.1:{sshd.port} (bench)"
    )
    assert "authorized_keys" in message


def test_no_key_at_all_fails_authentication(sshd: SSHBench, ssh_home: SSHHome) -> None:
    ssh_home.key_path.unlink()
    with pytest.raises(HostError, match="no SSH key to offer"):
        connect(
            sshd.spec, known_hosts_path=sshd.known_hosts, ssh_config_path=os.devnull
        )


def test_closed_host_refuses_commands(sshd: SSHBench, ssh_home: SSHHome) -> None:
    host = connect(
        sshd.spec, known_hosts_path=sshd.known_hosts, ssh_config_path=os.devnull
    )
    host.close()
    host.close()  # idempotent
    with pytest.raises(HostError, match="already closed"):
        host.run(["true"])


def test_pid_report_is_removed_from_stderr_even_when_split() -> None:
    from deployer.hosts.ssh import _PidReport

    report = _PidReport("deployer-pid-abc:")
    pieces = [
        b"motd from bashrc\n",
        b"deployer-p",
        b"id-abc:42",
        b"31\nreal ",
        b"stderr\n",
    ]
    assert (
        b"".join(report.filter(piece) for piece in pieces)
        == b"motd from bashrc\nreal stderr\n"
    )
    assert report.pid == 4231
    assert report.flush() == b""


def test_a_non_root_docker_group_user_can_log_in_and_use_docker(
    sshd: SSHBench, ssh_home: SSHHome, bench_user: BenchUser
) -> None:
    with connect(
        bench_user.spec(sshd), known_hosts_path=sshd.known_hosts, ssh_config_path=os.devnull
    ) as host:
        ids = host.run(["sh", "-c", "id -u; id -Gn; echo $HOME"], check=True).stdout.split("\n")
        assert ids[0] == str(bench_user.uid) and ids[0] != "0"
        assert bench_user.docker_group in ids[1].split()
        assert ids[2] == str(bench_user.home)
        # The Docker engine answers this user through the socket's group, as in production.
        version = host.run(["docker", "version", "--format", "{{.Server.Version}}"], check=True)
        assert version.stdout.strip()
        host.write_text(f"{bench_user.home}/deployer-bench-check", "mine\n", mode=0o600)
        assert os.stat(f"{bench_user.home}/deployer-bench-check").st_uid == bench_user.uid
        host.run(["rm", f"{bench_user.home}/deployer-bench-check"], check=True)


def test_sshd_factory_passes_extra_config_lines(sshd_factory: SSHDFactory, ssh_home: SSHHome) -> None:
    server = sshd_factory(extra=["SetEnv DEPLOYER_BENCH_SETENV=from-sshd"], sftp=False)
    assert server.options["sftp"] is False
    with connect(server.spec, known_hosts_path=server.known_hosts, ssh_config_path=os.devnull) as host:
        shown = host.run(["sh", "-c", 'echo "$DEPLOYER_BENCH_SETENV"'], check=True)
        assert shown.stdout == "from-sshd\n"
    assert "Accepted publickey" in server.log()


def test_a_server_that_allows_fewer_sessions(sshd_factory: SSHDFactory, ssh_home: SSHHome) -> None:
    # MaxSessions 2 (below the eight deployer allows itself): commands one after another go
    # on working; two long commands at once take both sessions, and a third, refused still
    # after the brief retries a session the server is closing gets, names the limit.
    server = sshd_factory(extra=["MaxSessions 2"], sftp=False)
    with connect(server.spec, known_hosts_path=server.known_hosts, ssh_config_path=os.devnull) as host:
        for n in range(20):
            assert host.run(["echo", str(n)], check=True).stdout == f"{n}\n"
        with ThreadPoolExecutor(max_workers=3) as pool:
            futures = [pool.submit(host.run, ["sleep", "4"]) for _ in range(3)]
            outcomes = []
            for future in futures:
                try:
                    outcomes.append(future.result().exit_code)
                except HostError as error:
                    outcomes.append(error.message + " | " + (error.hint or ""))
    refused = [o for o in outcomes if isinstance(o, str)]
    assert len(refused) >= 1 and outcomes.count(0) >= 1, outcomes
    assert all("refused to open a command channel" in o and "MaxSessions" in o for o in refused), refused
