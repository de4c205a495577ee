"""Files over plain command channels, against an sshd with no SFTP subsystem at all."""

from __future__ import annotations

import filecmp
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from deployer.errors import ConnectionLost
from deployer.hosts import connect
from deployer.hosts.ssh import SSHHost
from tests.bench.sshd import SSHBench, SSHDFactory, SSHHome

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def no_sftp(sshd_factory: SSHDFactory) -> SSHBench:
    return sshd_factory(sftp=False)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """An empty directory of the test's own (ssh_home puts a fake HOME in tmp_path)."""
    path = tmp_path / "files"
    path.mkdir()
    return path


@pytest.fixture
def remote(no_sftp: SSHBench, ssh_home: SSHHome) -> Iterator[SSHHost]:
    host = connect(no_sftp.spec, known_hosts_path=no_sftp.known_hosts, ssh_config_path=os.devnull)
    assert isinstance(host, SSHHost)
    try:
        yield host
    finally:
        host.close()


def test_the_server_really_has_no_sftp(remote: SSHHost) -> None:
    with pytest.raises(paramiko.SSHException):
        remote._connection.client.open_sftp()


def test_write_and_read_text_with_modes(remote: SSHHost, tmp_path: Path) -> None:
    folder = tmp_path / "srv"
    folder.mkdir()
    target = folder / "app.env"
    text = "SECRET=it's $(not) run; `x`\nünïcødé ✓\n"
    remote.write_text(str(target), text, mode=0o600)
    assert target.read_text() == text
    assert target.stat().st_mode & 0o777 == 0o600
    assert remote.read_text(str(target)) == text

    # Replacing keeps the mode; nothing is left behind.
    remote.write_text(str(target), "second\n")
    assert target.read_text() == "second\n" and target.stat().st_mode & 0o777 == 0o600
    # A new file follows the remote umask (sshd's default 022).
    remote.write_text(str(folder / "new.txt"), "")
    assert (folder / "new.txt").read_text() == ""
    assert (folder / "new.txt").stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in folder.iterdir()) == ["app.env", "new.txt"]

    # Names that look like options or contain shell syntax are just names.
    odd = folder / "-n $(touch x) 'q'"
    remote.write_text(str(odd), "odd\n", mode=0o640)
    assert odd.read_text() == "odd\n" and odd.stat().st_mode & 0o777 == 0o640
    assert not (folder / "x").exists()


def test_missing_files_directories_and_bad_utf8(remote: SSHHost, folder: Path) -> None:
    with pytest.raises(FileNotFoundError) as caught:
        remote.read_text(str(folder / "missing"))
    assert caught.value.filename == str(folder / "missing")
    with pytest.raises(IsADirectoryError):
        remote.read_text(str(folder))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        remote.write_text(str(folder / "no-such-dir" / "f"), "x")
    with pytest.raises(IsADirectoryError):
        remote.write_text(str(folder), "x")
    with pytest.raises(FileNotFoundError):
        remote.get(str(folder / "missing"), folder / "local-copy")
    assert not (folder / "local-copy").exists()
    assert [p.name for p in folder.iterdir()] == []  # no partial download either
    (folder / "latin1").write_bytes(b"caf\xe9\n")
    with pytest.raises(UnicodeDecodeError):
        remote.read_text(str(folder / "latin1"))


def test_put_and_get_stream_binary_files_with_modes(remote: SSHHost, tmp_path: Path) -> None:
    source = tmp_path / "payload.bin"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    target = tmp_path / "uploaded.bin"
    remote.put(source, str(target), mode=0o640)
    assert target.read_bytes() == source.read_bytes()
    assert target.stat().st_mode & 0o777 == 0o640
    back = tmp_path / "back.bin"
    remote.get(str(target), back)
    assert back.read_bytes() == source.read_bytes()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    remote.put(empty, str(tmp_path / "empty-uploaded"))
    assert (tmp_path / "empty-uploaded").read_bytes() == b""


def test_writes_are_atomic_readers_see_old_or_new_never_partial(remote: SSHHost, folder: Path) -> None:
    old = b"old\n" * 1000
    new = os.urandom(64 * 1024 * 1024)
    target = folder / "data.bin"
    target.write_bytes(old)
    source = folder / "new.bin"
    source.write_bytes(new)
    new_digest = hashlib.sha256(new).hexdigest()
    seen: set[str] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            data = target.read_bytes()
            seen.add("old" if data == old else "new" if hashlib.sha256(data).hexdigest() == new_digest else "PARTIAL")

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        remote.put(source, str(target))
    finally:
        done.set()
        watcher.join()
    assert "PARTIAL" not in seen and "old" in seen
    assert target.read_bytes() == new
    assert sorted(p.name for p in folder.iterdir()) == ["data.bin", "new.bin"]


def test_a_cut_connection_during_put_leaves_the_old_file(
    remote: SSHHost, no_sftp: SSHBench, folder: Path
) -> None:
    target = folder / "precious.txt"
    target.write_text("the old, complete content\n")
    source = folder / "big.bin"
    with open(source, "wb") as handle:
        handle.writelines(os.urandom(1024 * 1024) for _ in range(256))
    client_port = remote._transport.sock.getsockname()[1]
    errors: list[BaseException] = []

    def upload() -> None:
        try:
            remote.put(source, str(target))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    thread = threading.Thread(target=upload)
    thread.start()
    # Wait until the remote script is receiving (its temporary file exists and grows).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(p.name.startswith(".precious.txt.") for p in folder.iterdir()):
        time.sleep(0.01)
    pids = no_sftp.session_pids(client_port)
    assert pids, "no sshd process serves our connection"
    for pid in pids:
        os.kill(pid, 9)
    thread.join(30)
    assert len(errors) == 1 and isinstance(errors[0], ConnectionLost), errors
    assert target.read_text() == "the old, complete content\n"
    # The script saw a short input and removed its temporary file.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(list(folder.iterdir())) > 2:
        time.sleep(0.05)
    assert sorted(p.name for p in folder.iterdir()) == ["big.bin", "precious.txt"]


_GET_IN_A_CHILD = """
import json, os, sys, time
from deployer.hosts import connect
from deployer.hosts.spec import HostSpec
spec = HostSpec("127.0.0.1", user=sys.argv[1], port=int(sys.argv[2]))
with connect(spec, known_hosts_path=sys.argv[3], ssh_config_path=os.devnull) as host:
    started = time.monotonic()
    host.get(sys.argv[4], sys.argv[5])
    seconds = time.monotonic() - started
# VmHWM: this process's peak resident memory (ru_maxrss would count the parent's, from fork).
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "peak_rss_kib": peak}))
"""


def test_get_of_a_1_gib_dump_streams_in_little_memory(no_sftp: SSHBench, ssh_home: SSHHome, tmp_path: Path) -> None:
    dump = tmp_path / "dump.bin"
    size = 1024**3
    with open(dump, "wb") as handle:
        # Mostly a hole (fast to make), with data at the start, the middle and the end.
        for offset in (0, size // 2, size - 4096):
            handle.seek(offset)
            handle.write(os.urandom(4096))
    copy = tmp_path / "copy.bin"
    completed = subprocess.run(
        [sys.executable, "-c", _GET_IN_A_CHILD, no_sftp.user, str(no_sftp.port), str(no_sftp.known_hosts), str(dump), str(copy)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    assert copy.stat().st_size == size
    assert filecmp.cmp(dump, copy, shallow=False)
    # The whole file never sat in memory: a fraction of its size at most.
    assert report["peak_rss_kib"] < 150 * 1024, report
