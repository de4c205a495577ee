"""No secret in any output: every command, text and ``--json``, success and failure.

The deployment's deploy.toml carries a secret in every place one can be written: the
database password (``${RECIPES_DB_PASSWORD}``, in ``env`` and in ``database_url``), a token
variable (``API_TOKEN``), a health check ``Authorization`` header. Every command is run
both ways, on success and on its failure paths — a migration that fails quoting the
DATABASE_URL it was given, an unknown revision, an unknown backup — and all stdout and
stderr are searched for each secret. Each failure must say what went wrong (so that an
empty output cannot pass), and what it quotes from the server comes back with ``***``.
"""

from __future__ import annotations

import re
import secrets
import subprocess

import pytest

from tests.bench.cli import envelope
from tests.bench.deployment import EXAMPLE_HEAD, Deployment, add_migration

pytestmark = pytest.mark.e2e

TRACEBACK = re.compile(r"^Traceback", re.MULTILINE)
LEAKY = "ee11c0ffee99"


@pytest.fixture(scope="module")
def d(deployment_factory) -> Deployment:
    d = deployment_factory("ssh", health_timeout=40)
    toml = (d.laptop / "deploy.toml").read_text()
    toml = toml.replace(
        "keep_backups = 5\n",
        "keep_backups = 5\n"
        'database_url = "postgresql://recipes:${RECIPES_DB_PASSWORD}@db:5432/recipes"\n'
        'healthcheck_headers = { Authorization = "Bearer ${HEALTH_TOKEN}", X-Trace = "redaction-test" }\n',
        1,
    )
    toml = toml.replace('WEB_PORT = "', 'API_TOKEN = "${API_TOKEN}"\nWEB_PORT = "', 1)
    d.extra_env.update({"API_TOKEN": "tok-" + secrets.token_hex(8), "HEALTH_TOKEN": "hdr-" + secrets.token_hex(8)})
    d.commit({"deploy.toml": toml}, "deploy.toml with a secret in every place")
    return d


def the_secrets(d: Deployment) -> list[str]:
    return [d.password, d.extra_env["API_TOKEN"], d.extra_env["HEALTH_TOKEN"]]


class Outputs:
    """Runs deployer commands, keeps every output, checks each for secrets as it goes."""

    def __init__(self, d: Deployment) -> None:
        self.d = d
        self.seen: list[tuple[tuple[str, ...], str]] = []

    def run(self, *args: str, expect: int | set[int] = 0, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        result = self.d.deployer(*args, timeout=timeout)
        output = result.stdout + result.stderr
        self.seen.append((args, output))
        expected = {expect} if isinstance(expect, int) else expect
        assert result.returncode in expected, f"{args}: exit {result.returncode}\n{output}"
        assert not TRACEBACK.search(output), output
        for secret in the_secrets(self.d):
            assert secret not in output, f"`deployer {' '.join(args)}` printed a secret:\n{output}"
        if "--json" in args:
            doc = envelope(result.stdout)
            assert doc["exit_code"] == result.returncode, doc
        return result

    def both(self, *args: str, expect: int | set[int] = 0, timeout: float = 600) -> str:
        """The command in text and in --json (a read-only or dry-run command: twice is harmless)."""
        text = self.run(*args, expect=expect, timeout=timeout)
        self.run(*args, "--json", expect=expect, timeout=timeout)
        return text.stdout + text.stderr


def test_no_command_prints_a_secret(d: Deployment) -> None:
    out = Outputs(d)
    env = d.env_name
    shown = out.both("config", "show", env)
    assert "***" in shown and "redaction-test" in shown  # a secret shown as ***, the other header as is
    out.both("config", "check")
    out.both("status", env, expect=14)  # nothing deployed yet
    out.both("release", env, "--dry-run")
    released = out.run("release", env, "--yes", "--json")
    assert envelope(released.stdout)["result"]["outcome"] == "succeeded"

    out.both("status", env)
    out.both("history", env)
    out.both("lock", "status", env)
    out.both("lock", "release", env)
    out.run("backups", "create", env)
    out.run("backups", "create", env, "--json")
    out.both("backups", "list", env)
    out.both("backups", "verify", env)
    out.both("backups", "prune", env, "--dry-run")
    out.both("recover", env)
    out.both("recover", env, "--dry-run")
    out.both("images", "prune", env, "--dry-run")
    out.both("logs", env, "web", "--tail", "5")
    out.run("exec", env, "--", "true")
    quoted = out.run("exec", env, "--json", "--", "sh", "-c", "echo $DATABASE_URL").stdout  # --json: scrubbed like any result
    assert "postgresql://recipes:***@db:5432/recipes" in quoted, quoted
    assert "wbe" in out.run("exec", env, "--service", "wbe", "--", "true", expect=2).stderr
    out.run("exec", env, "--json", "--service", "wbe", "--", "true", expect=2)  # before --: the rest is the command's

    # A migration that fails quoting the DATABASE_URL (the password in it) it was given.
    d.commit(add_migration(LEAKY, EXAMPLE_HEAD, "Leaks its url", [
        "import os",
        "raise RuntimeError('cannot migrate ' + os.environ['DATABASE_URL'])",
    ], []), "a migration that quotes its database url")
    out.both("release", env, "--dry-run")
    failed = out.run("release", env, "--yes", "--json", expect=1)  # the text error on stderr, the envelope on stdout
    assert "postgresql://recipes:***@db:5432/recipes" in failed.stderr, failed.stderr
    failed_json = envelope(failed.stdout)
    assert failed_json["ok"] is False and "postgresql://recipes:***@db" in failed_json["error"]["message"], failed_json
    history = out.run("history", env, "--json").stdout
    assert "postgresql://recipes:***@db:5432/recipes" in history, history  # the journal quotes it, redacted

    unknown = out.both("rollback", env, "deadbeef0000", "--yes", expect=6)  # refused before any change
    assert "deadbeef0000" in unknown
    missing = out.both("backups", "restore", env, "no-such-backup", "--yes", expect={1, 2})
    assert "no-such-backup" in missing
    out.both("rollback", env, "previous", "--dry-run", expect={0, 2, 6})  # refused: one release only
    out.both("status", env, expect={0, 15})  # the branch tip (the leaky migration) is not deployed
    assert len(out.seen) > 40
