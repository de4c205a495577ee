"""LocalHost (real subprocesses on this machine) and the argv-to-shell boundary."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from deployer.errors import CommandError
from deployer.hosts import Host, LocalHost, Result, connect, output_tail, remote_command
from deployer.hosts.spec import LOCAL

NASTY_ARGS = [
    "two words",
    "single ' quote",
    'double " quote',
    "$(touch should-not-exist)",
    "`id`",
    "a; echo injected",
    "line one\nline two",
    "ünïcødé ✓ 日本",
    "*",
    "~",
    "$HOME",
    "back\\slash",
    "-n",
    "",
]
PRINT_ARGV = "import sys, json; print(json.dumps(sys.argv[1:]))"


@pytest.fixture
def local() -> LocalHost:
    return LocalHost()


def _process_alive(marker: str) -> bool:
    return (
        subprocess.run(
            ["pgrep", "-f", marker], capture_output=True, check=False
        ).returncode
        == 0
    )


# -- the shell boundary ----------------------------------------------------------------


def test_remote_command_quotes_each_part_once() -> None:
    assert remote_command(["echo", "hello"]) == "exec echo hello"
    assert remote_command(["echo", "a b", "$(x)"]) == "exec echo 'a b' '$(x)'"
    assert (
        remote_command(
            ["docker", "compose", "ps"], cwd="/srv/my app", env={"A": "1", "B": "x y"}
        )
        == "cd -- '/srv/my app' && exec env A=1 'B=x y' docker compose ps"
    )


@pytest.mark.parametrize("bad", ["", "1A", "A-B", "A B", "A=B", "$(x)"])
def test_remote_command_rejects_bad_env_names(bad: str) -> None:
    with pytest.raises(ValueError, match="not a valid environment variable name"):
        remote_command(["true"], env={bad: "x"})


def test_argv_must_be_a_non_empty_list_of_strings(local: LocalHost) -> None:
    with pytest.raises(TypeError, match="not a single string"):
        remote_command("echo hi")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must not be empty"):
        local.run([])
    with pytest.raises(TypeError, match="must be str"):
        local.run(["echo", 3])  # type: ignore[list-item]


def test_remote_command_round_trips_through_a_real_shell(tmp_path: Path) -> None:
    workdir = tmp_path / "it's a dir; $(x)"
    workdir.mkdir()
    line = remote_command(
        [
            sys.executable,
            "-c",
            "import os, sys, json; print(json.dumps([os.getcwd(), os.environ['V'], sys.argv[1:]]))",
            *NASTY_ARGS,
        ],
        cwd=str(workdir),
        env={"V": "it's $(not) run; `x`"},
    )
    completed = subprocess.run(
        ["sh", "-c", line], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert json.loads(completed.stdout) == [
        str(workdir),
        "it's $(not) run; `x`",
        NASTY_ARGS,
    ]
    assert not (tmp_path / "should-not-exist").exists()


# -- results ---------------------------------------------------------------------------


def test_result_check_reports_command_status_and_stderr_tail() -> None:
    stderr = "".join(f"noise {n}\n" for n in range(50)) + "fatal: it broke\n"
    result = Result(("git", "fetch", "my remote"), 128, "", stderr, 0.1)
    assert not result.ok
    with pytest.raises(CommandError) as caught:
        result.check()
    message = str(caught.value)
    assert message.startswith("git fetch 'my remote' failed with exit status 128")
    assert (
        "fatal: it broke" in message
        and "noise 49" in message
        and "noise 10\n" not in message
    )
    assert caught.value.exit_status == 128
    assert caught.value.output == stderr

    with pytest.raises(
        CommandError,
        match=r"^fetch the code failed with exit status 128 \(command: git fetch",
    ):
        result.check("fetch the code")

    ok = Result(("true",), 0, "", "", 0.0)
    assert ok.check() is ok


def test_output_tail_keeps_the_last_lines() -> None:
    assert output_tail("a\nb\nc\n\n", lines=2) == "b\nc"
    assert output_tail("") == ""


# -- running commands ------------------------------------------------------------------


def test_connect_local_gives_a_local_host() -> None:
    with connect(LOCAL) as host:
        assert isinstance(host, LocalHost)
        assert isinstance(host, Host)
        assert host.is_local and host.name == "local"


def test_exit_code_stdout_stderr(local: LocalHost) -> None:
    result = local.run(["sh", "-c", "echo out; echo err >&2; exit 0"])
    assert (result.exit_code, result.stdout, result.stderr, result.ok) == (
        0,
        "out\n",
        "err\n",
        True,
    )
    assert result.duration >= 0

    failed = local.run(["sh", "-c", "echo bad >&2; exit 4"])
    assert (failed.exit_code, failed.ok) == (4, False)
    with pytest.raises(CommandError, match="exit status 4") as caught:
        local.run(["sh", "-c", "echo bad >&2; exit 4"], check=True)
    assert "bad" in str(caught.value)


def test_killed_by_signal_reports_128_plus_signal(local: LocalHost) -> None:
    assert local.run(["sh", "-c", "kill -9 $$"]).exit_code == 128 + 9


def test_missing_executable_is_a_clear_error(local: LocalHost) -> None:
    with pytest.raises(CommandError) as caught:
        local.run(["deployer-no-such-command-xyz", "--flag"])
    assert str(caught.value).startswith(
        "cannot run deployer-no-such-command-xyz --flag: deployer-no-such-command-xyz was not found"
    )
    assert caught.value.exit_status == 127
    assert caught.value.hint


def test_not_executable_is_a_clear_error(local: LocalHost, tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    with pytest.raises(CommandError, match="permission denied") as caught:
        local.run([str(script)])
    assert caught.value.exit_status == 126


def test_missing_working_directory_is_a_clear_error(
    local: LocalHost, tmp_path: Path
) -> None:
    with pytest.raises(
        CommandError, match="working directory .*missing does not exist"
    ):
        local.run(["true"], cwd=str(tmp_path / "missing"))


def test_nasty_arguments_reach_the_command_unchanged(
    local: LocalHost, tmp_path: Path
) -> None:
    result = local.run(
        [sys.executable, "-c", PRINT_ARGV, *NASTY_ARGS], cwd=str(tmp_path), check=True
    )
    assert json.loads(result.stdout) == NASTY_ARGS
    assert not (tmp_path / "should-not-exist").exists()


def test_cwd_and_env_are_applied_on_top_of_the_environment(
    local: LocalHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEPLOYER_INHERITED", "kept")
    result = local.run(
        ["sh", "-c", 'pwd; echo "$DEPLOYER_INHERITED $DEPLOYER_EXTRA"'],
        cwd=str(tmp_path),
        env={"DEPLOYER_EXTRA": "added $(not run)"},
        check=True,
    )
    assert result.stdout == f"{tmp_path}\nkept added $(not run)\n"


def test_stdin_is_passed_and_large_output_does_not_deadlock(local: LocalHost) -> None:
    data = "".join(f"line {n} ✓\n" for n in range(50000)).encode()
    result = local.run(
        ["sh", "-c", "cat; cat >&2 </dev/null; echo done >&2"], stdin=data, check=True
    )
    assert result.stdout.encode() == data
    assert result.stderr == "done\n"


def test_without_stdin_the_command_sees_end_of_input(local: LocalHost) -> None:
    # Never waits on the terminal: stdin is empty unless given.
    assert local.run(["cat"], timeout=5, check=True).stdout == ""


def test_invalid_utf8_is_replaced_not_fatal(local: LocalHost) -> None:
    result = local.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.stdout.buffer.write(b'ok \\xff\\xfe end\\n')",
        ]
    )
    assert result.stdout == "ok \ufffd\ufffd end\n"


def test_timeout_kills_the_whole_process_group(local: LocalHost) -> None:
    marker = f"deployer-local-timeout-{uuid.uuid4().hex}"
    # A shell with a child: both must go, not only the process we started.
    script = f"{sys.executable} -c 'import time; time.sleep(30)' {marker} & wait"
    started = time.monotonic()
    with pytest.raises(CommandError) as caught:
        local.run(["sh", "-c", script], timeout=1)
    assert time.monotonic() - started < 4
    assert "timed out after 1 s" in str(caught.value)
    assert caught.value.exit_status is None
    deadline = time.monotonic() + 3
    while _process_alive(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _process_alive(marker), "the timed-out command's child still runs"


def test_timeout_keeps_the_output_so_far(local: LocalHost) -> None:
    with pytest.raises(CommandError) as caught:
        local.run(["sh", "-c", "echo starting >&2; sleep 30"], timeout=0.5)
    assert "starting" in caught.value.output


def test_streaming_callback_gets_lines_in_order_as_they_come(local: LocalHost) -> None:
    seen: list[tuple[float, str]] = []
    script = "for i in 1 2 3; do echo line $i; sleep 0.3; done; echo warn >&2; sleep 0.1; printf tail"
    started = time.monotonic()
    result = local.run(
        ["sh", "-c", script],
        on_output=lambda line: seen.append((time.monotonic() - started, line)),
        check=True,
    )
    assert [line for _, line in seen] == ["line 1", "line 2", "line 3", "warn", "tail"]
    assert result.stdout == "line 1\nline 2\nline 3\ntail"
    assert result.stderr == "warn\n"
    assert seen[0][0] < 0.5 < seen[2][0]


def test_failing_callback_stops_the_command(local: LocalHost) -> None:
    marker = f"deployer-local-callback-{uuid.uuid4().hex}"

    def explode(line: str) -> None:
        raise RuntimeError(f"callback failed on {line!r}")

    script = (
        f"echo first; exec {sys.executable} -c 'import time; time.sleep(30)' {marker}"
    )
    with pytest.raises(RuntimeError, match="callback failed on 'first'"):
        local.run(["sh", "-c", script], on_output=explode)
    time.sleep(0.2)
    assert not _process_alive(marker)


def test_concurrent_runs_from_threads(local: LocalHost) -> None:
    results: dict[int, str] = {}

    def work(n: int) -> None:
        results[n] = local.run(["sh", "-c", f"sleep 0.3; echo {n}"], check=True).stdout

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == {n: f"{n}\n" for n in range(8)}


# -- files -----------------------------------------------------------------------------


def test_write_text_is_atomic_with_mode(local: LocalHost, tmp_path: Path) -> None:
    path = tmp_path / "secret.env"
    local.write_text(str(path), "KEY=värde\n", mode=0o600)
    assert path.read_text(encoding="utf-8") == "KEY=värde\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert local.read_text(str(path)) == "KEY=värde\n"

    # Replacing: a new inode (rename, not an in-place rewrite), same mode, no temp files.
    inode = path.stat().st_ino
    local.write_text(str(path), "KEY=new\n")
    assert path.read_text() == "KEY=new\n"
    assert path.stat().st_ino != inode
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret.env"]


def test_write_text_new_file_follows_umask(local: LocalHost, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        local.write_text(str(tmp_path / "plain.txt"), "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == 0o644


def test_write_text_into_missing_directory_fails_without_leftovers(
    local: LocalHost, tmp_path: Path
) -> None:
    with pytest.raises(FileNotFoundError):
        local.write_text(str(tmp_path / "missing" / "file"), "x")
    assert list(tmp_path.iterdir()) == []


def test_put_get_and_missing_files(local: LocalHost, tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(bytes(range(256)) * 100)
    local.put(source, str(tmp_path / "copy.bin"), mode=0o640)
    assert (tmp_path / "copy.bin").read_bytes() == source.read_bytes()
    assert stat.S_IMODE((tmp_path / "copy.bin").stat().st_mode) == 0o640
    local.get(str(tmp_path / "copy.bin"), tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == source.read_bytes()
    with pytest.raises(FileNotFoundError):
        local.read_text(str(tmp_path / "missing"))


def test_forward_yields_the_address_unchanged(local: LocalHost) -> None:
    with local.forward("127.0.0.1", 5432) as address:
        assert address == ("127.0.0.1", 5432)


# -- durability and the file scripts used over SSH -----------------------------------------


def test_write_text_fsyncs_the_file_and_its_directory(
    local: LocalHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    local.write_text(str(tmp_path / "state.json"), "{}\n", mode=0o600)
    # The temporary file's data first, then the directory that now holds the new name.
    assert len(synced) == 2
    assert Path(synced[0]).parent == tmp_path and Path(synced[0]).name.startswith(".state.json.")
    assert synced[1] == str(tmp_path)
    assert (tmp_path / "state.json").read_text() == "{}\n"


def test_put_streams_large_files(local: LocalHost, tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    with open(source, "wb") as handle:
        handle.truncate(64 * 1024 * 1024)
        handle.seek(12345)
        handle.write(b"marker")
    local.put(source, str(tmp_path / "copy.bin"), mode=0o640)
    copy = tmp_path / "copy.bin"
    assert copy.stat().st_size == source.stat().st_size
    assert copy.stat().st_mode & 0o777 == 0o640
    with open(copy, "rb") as handle:
        handle.seek(12345)
        assert handle.read(6) == b"marker"


def _sh(argv: list[str], data: bytes, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, input=data, capture_output=True, cwd=cwd, check=False)


def test_write_script_is_atomic_keeps_modes_and_refuses_short_input(tmp_path: Path) -> None:
    from deployer.hosts import scripts

    target = tmp_path / "app.env"
    done = _sh(scripts.write_argv(str(target), 6, 0o600), b"A=1\nB\n", tmp_path)
    assert done.returncode == 0, done.stderr
    assert target.read_bytes() == b"A=1\nB\n" and target.stat().st_mode & 0o777 == 0o600
    # Input cut short (a dropped connection): the old file stays, no temporary file left.
    short = _sh(scripts.write_argv(str(target), 100, None), b"partial", tmp_path)
    assert short.returncode == scripts.INCOMPLETE
    assert b"received 7 of 100 bytes" in short.stderr
    assert target.read_bytes() == b"A=1\nB\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.env"]
    # Replacing without a mode keeps the old one; relative and option-like names work.
    assert _sh(scripts.write_argv("app.env", 2, None), b"ok", tmp_path).returncode == 0
    assert target.read_bytes() == b"ok" and target.stat().st_mode & 0o777 == 0o600
    assert _sh(scripts.write_argv("-n", 1, None), b"x", tmp_path).returncode == 0
    assert (tmp_path / "-n").read_bytes() == b"x"
    missing = _sh(scripts.write_argv(str(tmp_path / "nope" / "f"), 1, None), b"x", tmp_path)
    assert missing.returncode == scripts.MISSING


def test_read_script_statuses(tmp_path: Path) -> None:
    from deployer.hosts import scripts

    (tmp_path / "f").write_bytes(b"\x00bytes\xff")
    assert _sh(scripts.read_argv(str(tmp_path / "f")), b"", tmp_path).stdout == b"\x00bytes\xff"
    assert _sh(scripts.read_argv("missing"), b"", tmp_path).returncode == scripts.MISSING
    assert _sh(scripts.read_argv(str(tmp_path)), b"", tmp_path).returncode == scripts.IS_DIRECTORY


def test_local_process_basics(local: LocalHost) -> None:
    process = local.start([sys.executable, "-c", "import sys; print(sys.stdin.readline().upper(), end='')"])
    process.send("hello\n")
    assert process.readline(timeout=10) == "HELLO"
    assert process.readline(timeout=10) == ""
    assert process.wait(timeout=10) == 0
    killed = local.start(["sleep", "30"])
    killed.kill()
    assert killed.wait(timeout=5) == 128 + 15
