"""The ``deployer`` command as a user meets it: help, version, config, and bad input.

Every foreseen failure is one clear message and its exit code, never a traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deployer import __version__
from tests.bench.cli import envelope
from tests.bench.cli import result as result_of
from tests.bench.gitrepos import GitOrigin
from tests.bench.sshd import SilentServer, SSHBench, free_port

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


def deployer(*args: str, cwd: Path = REPO_ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("RECIPES_DB_PASSWORD", "DEPLOYER_CONFIG")}
    environ.update(env or {})
    result = subprocess.run(
        [sys.executable, "-m", "deployer", *args], cwd=cwd, env=environ, capture_output=True, text=True,
        timeout=120, stdin=subprocess.DEVNULL, check=False,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def every_command() -> list[tuple[str, ...]]:
    """Every group and command of the app, as the words that name it (the root is ())."""
    import typer

    from deployer.cli import app

    found: list[tuple[str, ...]] = []

    def walk(command: typer.core.TyperGroup | typer.core.TyperCommand, words: tuple[str, ...]) -> None:
        found.append(words)
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            walk(sub, (*words, name))

    walk(typer.main.get_command(app), ())
    return found


def test_version_and_help() -> None:
    assert deployer("--version").stdout.strip() == f"deployer {__version__}"
    top = deployer("--help")
    assert top.returncode == 0
    for command in ("release", "rollback", "config", "lock", "init"):
        assert command in top.stdout
    # -h as well as --help, on the real command (the setting is inherited by every command)
    assert deployer("-h").stdout == top.stdout
    assert deployer("backups", "restore", "-h").stdout == deployer("backups", "restore", "--help").stdout


@pytest.mark.parametrize("words", every_command(), ids=lambda words: " ".join(words) or "deployer")
def test_every_group_and_command_has_help_with_an_example(words: tuple[str, ...]) -> None:
    from typer.testing import CliRunner

    from deployer.cli import app

    result = CliRunner().invoke(app, [*words, "-h"], prog_name="deployer")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: {' '.join(('deployer', *words))} "), result.output
    assert "Example:" in result.output, result.output
    assert f"deployer {words[0] if words else ''}" in result.output.split("Example:")[1], result.output


def test_shell_completion(tmp_path: Path) -> None:
    """The script for a shell, installed into its start-up file; commands and the
    environments of the deploy.toml found from the current directory complete."""
    # Named, not detected: typer finds the shell among this process's ancestors, and a test
    # run need not have one (typer's own switch for tests names it on the command line).
    named = {"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    script = deployer("--show-completion", "bash", env=named)
    assert script.returncode == 0 and "_DEPLOYER_COMPLETE=complete_bash" in script.stdout, script.stdout
    home = tmp_path / "home"
    home.mkdir()
    installed = deployer("--install-completion", "bash", env={"HOME": str(home), **named})
    assert installed.returncode == 0, installed.stderr
    assert "deployer" in (home / ".bashrc").read_text()

    write(tmp_path, GOOD.format(host="local") + '[environments.staging]\nhost = "local"\npath = "/srv/s"\n')

    def complete(line: str) -> list[str]:
        words = line.split(" ")
        result = deployer(cwd=tmp_path, env={"_DEPLOYER_COMPLETE": "complete_bash", "COMP_WORDS": line,
                                             "COMP_CWORD": str(len(words) - 1)})
        assert result.returncode == 0, result.stderr
        return result.stdout.split()

    assert complete("deployer rel") == ["release"]
    assert complete("deployer release ") == ["prod", "staging"]
    assert complete("deployer backups list st") == ["staging"]
    assert complete("deployer config show p") == ["prod"]
    (tmp_path / "deploy.toml").write_text("[environments\n")  # broken: nothing, and no error
    assert complete("deployer release ") == []


def test_config_show_redacts_secrets() -> None:
    secret = "s3cr3t-Value-42"
    result = deployer("config", "show", "local", env={"RECIPES_DB_PASSWORD": secret})
    assert result.returncode == 0, result.stderr
    assert secret not in result.stdout and "***" in result.stdout
    shown = result_of(deployer("config", "show", "local", "--json", env={"RECIPES_DB_PASSWORD": secret}).stdout)
    assert shown["environments"]["local"]["env"]["RECIPES_DB_PASSWORD"] == "***"
    assert secret not in json.dumps(shown)
    # production takes the secret from the environment only
    missing = deployer("config", "show", "production")
    assert missing.returncode == 2 and "RECIPES_DB_PASSWORD" in missing.stderr
    production = deployer("config", "show", "production", env={"RECIPES_DB_PASSWORD": secret})
    assert production.returncode == 0 and secret not in production.stdout


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "deploy.toml"
    path.write_text(text)
    return path


GOOD = """
[app]
name = "demo"
[environments.prod]
host = "{host}"
path = "/srv/demo"
"""


@pytest.mark.parametrize(
    ("text", "phrases"),
    [
        ("[app\nname='x'", ["deploy.toml:1:5", "invalid TOML"]),
        ("[app]\nname = 'demo'\n[environments.prod]\nhost = 'local'\npath = '/srv/x'\nkeep_backups = 'ten'", ["environments.prod.keep_backups", "integer"]),
        ("[app]\nname = 'demo'\ncompose_fil = 'x.yml'\n[environments.prod]\nhost = 'local'\npath = '/srv/x'", ["app.compose_fil", "compose_file"]),
        ("[app]\nname = 'demo'\n[environments.prod]\nhost = 'deploy@'\npath = '/srv/x'", ["environments.prod.host"]),
    ],
)
def test_broken_config_is_one_clear_error(tmp_path: Path, text: str, phrases: list[str]) -> None:
    write(tmp_path, text)
    result = deployer("config", "check", cwd=tmp_path)
    assert result.returncode == 2
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr


def test_no_config_found(tmp_path: Path) -> None:
    result = deployer("release", "prod", cwd=tmp_path)
    assert result.returncode == 2 and "deploy.toml" in result.stderr


def test_unknown_environment_lists_known(tmp_path: Path) -> None:
    write(tmp_path, GOOD.format(host="local"))
    result = deployer("release", "staging", cwd=tmp_path)
    assert result.returncode == 2 and "staging" in result.stderr and "prod" in result.stderr


EVERY_COMMAND = [
    ("config", "show", "staging"), ("config", "check"), ("status", "staging"), ("history", "staging"),
    ("release", "staging"), ("release", "staging", "--dry-run"), ("rollback", "staging", "previous"), ("recover", "staging"),
    ("lock", "status", "staging"), ("lock", "release", "staging"), ("backups", "list", "staging"),
    ("backups", "create", "staging"), ("backups", "verify", "staging"), ("backups", "restore", "staging", "latest"),
    ("backups", "prune", "staging"),
]


@pytest.mark.parametrize("command", EVERY_COMMAND, ids=" ".join)
def test_every_command_prints_one_json_envelope_on_an_error(tmp_path: Path, command: tuple[str, ...]) -> None:
    """A broken deploy.toml (or an unknown environment): --json still prints one envelope."""
    if command == ("config", "check"):
        write(tmp_path, "[app\nname = 1\n")
    else:
        write(tmp_path, GOOD.format(host="local"))
    result = deployer(*command, "--json", cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    doc = envelope(result.stdout)
    assert doc == {"schema": 1, "ok": False, "error": doc["error"], "exit_code": 2}, doc
    assert doc["error"]["kind"] == "ConfigError" and doc["error"]["message"] in result.stderr
    assert ("staging" in doc["error"]["message"] and "prod" in (doc["error"]["hint"] or "") + doc["error"]["message"]
            if command != ("config", "check") else "deploy.toml" in doc["error"]["message"])


def test_unreachable_host(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    write(tmp_path, GOOD.format(host=f"root@127.0.0.1:{port}"))
    result = deployer("release", "prod", cwd=tmp_path, env={"HOME": str(tmp_path)})
    assert result.returncode == 3, result.stderr
    assert f"127.0.0.1:{port}" in result.stderr and "refused" in result.stderr.lower()
    status = deployer("lock", "status", "prod", cwd=tmp_path, env={"HOME": str(tmp_path)})
    assert status.returncode == 3


def test_unknown_host_key_is_refused_with_the_way_to_trust_it(tmp_path: Path, sshd: SSHBench) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "known_hosts").write_text("")
    sshd.write_ssh_config(home / ".ssh" / "config", "bench", known_hosts=home / ".ssh" / "known_hosts")
    write(tmp_path, GOOD.format(host="bench"))
    result = deployer("lock", "status", "prod", cwd=tmp_path, env={"HOME": str(home)})
    assert result.returncode == 3
    assert "ssh-keyscan" in result.stderr and "SHA256:" in result.stderr


def test_lock_status_and_release_locally(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    server = tmp_path / "srv"
    write(tmp_path, GOOD.format(host="local").replace("/srv/demo", str(server)))
    assert "lock free" in deployer("lock", "status", "prod", cwd=tmp_path).stdout
    # A live holder: a process of ours holding the lease (the lock is a flock held by a process).
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from deployer.hosts import LocalHost\n"
        "from deployer.server import lock\n"
        "info = lock.LockInfo(holder='ana@laptop', command='release prod', pid=4242, acquired_at='2026-01-01T00:00:00+00:00')\n"
        f"lock.acquire(LocalHost(), {str(server) + '.deployer'!r}, info, env_name='prod')\n"
        "print('held', flush=True)\n"
        "time.sleep(600)\n")], stdout=subprocess.PIPE, text=True, env={**os.environ})
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        held = deployer("lock", "status", "prod", cwd=tmp_path)
        assert "ana@laptop" in held.stdout and "release prod" in held.stdout
        as_json = result_of(deployer("lock", "status", "prod", "--json", cwd=tmp_path).stdout)
        assert as_json["held"] and as_json["holder"]["pid"] == 4242
        refused = deployer("release", "prod", cwd=tmp_path)
        # preflight needs a git repository first; with one, the lock refuses (tested end to end)
        assert refused.returncode in (2, 4)
        live = deployer("lock", "release", "prod", cwd=tmp_path)
        assert live.returncode == 4 and "alive" in live.stderr  # a live holder is never broken
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    deadline = time.monotonic() + 10
    while "stale" not in (stale := deployer("lock", "status", "prod", cwd=tmp_path)).stdout and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "stale" in stale.stdout and "ana@laptop" in stale.stdout  # the owner is gone: the lock is free
    released = deployer("lock", "release", "prod", cwd=tmp_path)
    assert released.returncode == 0 and "ana@laptop" in released.stdout
    assert "lock free" in deployer("lock", "status", "prod", cwd=tmp_path).stdout


def test_an_empty_ref_or_rollback_target_is_refused_before_connecting(tmp_path: Path) -> None:
    """`--ref ''` never means the configured branch, nor `rollback ENV ''` the previous release:
    both are command-line errors (exit 2), said before any host is tried (nothing listens on
    the host's port here: a connection attempt would exit 3)."""
    write(tmp_path, GOOD.format(host=f"root@127.0.0.1:{free_port()}"))
    for argv, said in (
        (("release", "prod", "--ref", ""), "--ref is empty"),
        (("release", "prod", "--ref", "  ", "--dry-run"), "--ref is empty"),
        (("rollback", "prod", ""), "the rollback target is empty"),
        (("rollback", "prod", "", "--dry-run"), "the rollback target is empty"),
    ):
        result = deployer(*argv, cwd=tmp_path, env={"HOME": str(tmp_path)})
        assert result.returncode == 2, (argv, result.stderr)
        assert said in result.stderr and "hint:" in result.stderr, result.stderr


def test_an_unknown_ref_is_a_command_line_error(tmp_path: Path, git_origin: GitOrigin) -> None:
    """The docs' exit code 2 ("the command line is wrong"), with the remote's branches listed."""
    laptop = git_origin.clone(tmp_path / "laptop")
    (laptop / "deploy.toml").write_text(GOOD.format(host="local").replace("/srv/demo", str(tmp_path / "srv")))
    result = deployer("release", "prod", "--ref", "no-such-branch", "--dry-run", "--json", cwd=laptop)
    assert result.returncode == 2, result.stderr
    assert "'no-such-branch' is neither a branch, a tag nor a commit" in result.stderr
    assert f"branches on the remote: {git_origin.branch}" in result.stderr
    assert envelope(result.stdout)["error"]["kind"] == "RefError"
    assert not (tmp_path / "srv").exists()


def test_a_server_that_never_speaks_is_one_clear_error(tmp_path: Path, silent: SilentServer) -> None:
    """A port that accepts TCP and never sends an SSH banner (a hung sshd, a tarpit): exit 3
    within the ConnectTimeout, one message, no traceback and no library lines."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(
        f"Host mute\n    HostName 127.0.0.1\n    Port {silent.port}\n    User deploy\n    ConnectTimeout 1\n")
    write(tmp_path, GOOD.format(host="mute"))
    for argv in (("release", "prod", "--dry-run"), ("lock", "status", "prod"), ("backups", "list", "prod")):
        result = deployer(*argv, cwd=tmp_path, env={"HOME": str(home)})
        assert result.returncode == 3, (argv, result.stderr)
        assert result.stderr.splitlines()[0] == (
            f"error: the server at 127.0.0.1:{silent.port} accepted the connection but sent no SSH banner within 1 s"), result.stderr
        assert "paramiko" not in result.stderr and "session" not in result.stderr, result.stderr
    # an SSH banner, then nothing (a hung sshd): paramiko alone says "No existing session"
    hung = SilentServer(b"SSH-2.0-OpenSSH_9.2\r\n")
    try:
        (home / ".ssh" / "config").write_text(
            f"Host mute\n    HostName 127.0.0.1\n    Port {hung.port}\n    User deploy\n    ConnectTimeout 1\n")
        result = deployer("status", "prod", cwd=tmp_path, env={"HOME": str(home)})
    finally:
        hung.close()
    assert result.returncode == 3, result.stderr
    assert (f"the server at 127.0.0.1:{hung.port} sent its SSH banner (SSH-2.0-OpenSSH_9.2) but did not finish "
            "the key exchange within 1 s") in result.stdout + result.stderr
    assert "No existing session" not in result.stdout + result.stderr


def test_library_log_lines_only_with_verbose(tmp_path: Path, sshd: SSHBench) -> None:
    """paramiko's own lines never reach the user; `deployer --verbose` (before any command)
    shows them, for a bug report."""
    home = tmp_path / "home"
    sshd.write_ssh_config(home / ".ssh" / "config", "bench")
    write(tmp_path, GOOD.format(host="bench").replace("/srv/demo", str(tmp_path / "srv")))
    quiet = deployer("lock", "status", "prod", cwd=tmp_path, env={"HOME": str(home)})
    assert quiet.returncode == 0 and "lock free" in quiet.stdout, quiet.stderr
    assert quiet.stderr == ""
    loud = deployer("--verbose", "lock", "status", "prod", cwd=tmp_path, env={"HOME": str(home)})
    assert loud.returncode == 0 and "lock free" in loud.stdout, loud.stderr
    assert "paramiko.transport: Connected (version 2.0, client OpenSSH" in loud.stderr, loud.stderr
    assert "paramiko.transport: Authentication (publickey) successful!" in loud.stderr


def test_config_schema_prints_the_json_schema() -> None:
    from deployer.config.schema import json_schema

    result = deployer("config", "schema")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == json_schema()
    assert result.stdout.startswith('{\n  "$schema": "http://json-schema.org/draft-07/schema#",')
    wrapped = deployer("config", "schema", "--json")
    assert json.loads(wrapped.stdout) == {"schema": 1, "ok": True, "result": json_schema(), "exit_code": 0}


def test_init_asks_on_a_terminal_only_what_it_cannot_tell(tmp_path: Path) -> None:
    """On a terminal, `deployer init` asks for the host and (members has no health route)
    the health URL — nothing else — re-asks after a bad answer, and writes the file."""
    import pty
    import select
    import shutil
    import time

    app = tmp_path / "members"
    shutil.copytree(REPO_ROOT / "tests" / "apps" / "members" / "repo", app)
    pid, terminal = pty.fork()
    if pid == 0:  # the child: deployer on the terminal's side
        os.chdir(app)
        os.execv(sys.executable, [sys.executable, "-m", "deployer", "init"])
    seen = b""

    def until(text: bytes, deadline: float = 60) -> None:
        nonlocal seen
        end = time.monotonic() + deadline
        while text not in seen:
            assert time.monotonic() < end, f"no {text!r} in:\n{seen.decode(errors='replace')}"
            if select.select([terminal], [], [], 0.2)[0]:
                try:
                    seen += os.read(terminal, 65536)
                except OSError:  # the child ended
                    break
        assert text in seen, seen.decode(errors="replace")

    try:
        until(b"host: ")
        os.write(terminal, b"deploy@\n")
        until(b"'deploy@' is not a host")
        os.write(terminal, b"deploy@203.0.113.10\n")
        until(b"health URL")
        os.write(terminal, b"/login\n")
        until(b"deployer config check production")
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(terminal)
    assert os.waitstatus_to_exitcode(status) == 0, seen.decode(errors="replace")
    text = seen.decode(errors="replace")
    asked = text.split("found in")[0]
    for other in ("compose file:", "web service:", "database service:", "migrations directory:"):
        assert other not in asked, text  # asked nothing else
    written = (app / "deploy.toml").read_text()
    assert 'host = "deploy@203.0.113.10"' in written and 'healthcheck_url = "http://127.0.0.1:8000/login"' in written


def test_init_without_a_terminal_refuses_naming_the_flags(tmp_path: Path) -> None:
    import shutil

    app = tmp_path / "members"
    shutil.copytree(REPO_ROOT / "tests" / "apps" / "members" / "repo", app)
    refused = deployer("init", "--json", cwd=app)
    assert refused.returncode == 2 and not (app / "deploy.toml").exists()
    doc = envelope(refused.stdout)
    assert doc["error"]["kind"] == "ConfigError"
    assert "--host" in doc["error"]["message"] and "--health-url" in doc["error"]["message"]
    assert doc["error"]["hint"] == "pass them: deployer init --host ... --health-url ..."
    done = deployer("init", "--host", "local", "--health-url", "none", "--json", cwd=app)
    assert done.returncode == 0, done.stderr
    result = result_of(done.stdout)
    assert result["written"] == ["deploy.toml"] and result["next"][-1].startswith("deployer config check production")
    again = deployer("init", "--host", "local", "--health-url", "none", cwd=app)
    assert again.returncode == 2 and "deploy.toml already exists here" in again.stderr and "--force" in again.stderr
