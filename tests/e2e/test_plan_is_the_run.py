"""The dry run is the real plan, and read-only commands are read-only.

On the same state, ``--dry-run``'s plan and the run that follows list the same actions,
step by step (values only known at run time by name); and the host received exactly the
commands the run listed, nothing that changes anything besides them. For the default, the
classic and the rollback playbooks, on the real engine with a recording host.

Read-only commands (status, history, lock status, backups list/verify, config show, logs,
every dry run) leave every file under the checkout, the state directory and the backups as it was.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from deployer import engine
from deployer.config import load_config
from deployer.hosts import LocalHost
from deployer.server.target import open_target
from deployer.steps import rollback as rollbacks
from deployer.steps.context import Context, Options
from deployer.steps.playbook import load_playbook
from tests.bench.deployment import EXAMPLE_HEAD, Deployment, add_migration

pytestmark = pytest.mark.e2e

# What a run may send to the host beyond the actions it lists: reads of facts (containers,
# the checkout, the lock, the journal, the database through a tunnel) and the engine's own
# bookkeeping (the lease's holder process, the step log, the journal).
READS = re.compile(
    r"^(sh -c '\nids=|sh -c 'ids=|git -C \S+ (rev-parse|status)|test -[de] |cat |docker volume ls |"
    r"docker (inspect|image inspect|logs|exec \S+ cat)|sh -c '\nlock=\$1 record=\$2$|docker compose .* config$|"
    r"sh -c 'set -e; umask 077; d=\$\(mktemp -d\)|docker version|docker compose version|docker-compose version|"
    r"mkdir -p \S+\.deployer$|rm -f \S+/run\.json$|find \S+ -maxdepth 1)"
)


class RecordingHost:
    """A real LocalHost that records every command and file it is given."""

    def __init__(self) -> None:
        self._host = LocalHost()
        self.calls: list[str] = []
        self.early: list[str] = []  # what a step's actions beside the others sent (deployer.background)

    def _record(self, call: str) -> None:
        beside = threading.current_thread().name.startswith("deployer-early-")
        (self.early if beside else self.calls).append(call)

    def run(self, argv: Sequence[str], **kwargs: Any):  # noqa: ANN201
        self._record(shlex.join(argv))
        return self._host.run(argv, **kwargs)

    def write_text(self, path: str, text: str, mode: int | None = None) -> None:
        self._record(f"write {path}")
        self._host.write_text(path, text, mode)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._host, name)


@pytest.fixture(scope="module")
def deployment(deployment_factory) -> Deployment:  # noqa: ANN001
    d = deployment_factory("local", health_timeout=40)
    d.release()
    return d


def context(d: Deployment, host: Any, **options: Any) -> Context:
    os.environ.update(d.environ())  # the deploy.toml variables, as the CLI would see them
    cfg = load_config(d.laptop / "deploy.toml", environ=d.environ())
    target = open_target(cfg, d.env_name, host=host)
    return Context(target=target, options=Options(yes=True, **options), log=lambda _: None,
                   kind="rollback" if options.get("ref") == "previous" else "release")


def filled(text: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        text = text.replace("{" + name + "}", value)
    return text


def check_plan_is_the_run(d: Deployment, book, **options: Any) -> RecordingHost:  # noqa: ANN001
    cwd = os.getcwd()
    os.chdir(d.laptop)
    try:
        planning = context(d, LocalHost(), dry_run=True, **options)
        planned = engine.plan(planning, book)
        host = RecordingHost()
        running = context(d, host, **options)
        engine.execute(running, book)
    finally:
        os.chdir(cwd)
    ran = {step.label: [text for label, text in running.trace if label == step.label] for step in book.steps}
    for step in planned.steps:
        assert list(step.commands) == ran[step.label], f"step {step.label}: the plan and the run differ"
    # The host got exactly what the run listed, in order; anything else it got is a read.
    labelled = [(label, filled(text, running.values)) for label, text in running.trace
                if not text.startswith(("wait:", "read:", "take the deploy lock", "copy "))]
    # The actions that ran beside the others (a backup's verification, under its step's
    # label) arrived in their own order, interleaved with the rest: matched on their own.
    beside = [call for call in host.early if not READS.match(call)]
    listed = []
    for label, text in labelled:
        if beside and _same(beside[0], text) and label == "verify_backup":
            beside.pop(0)
        else:
            listed.append(text)
    assert not beside, f"sent beside the steps but not listed by them: {beside}"
    position = 0
    extra = []
    for call in host.calls:
        if position < len(listed) and _same(call, listed[position]):
            position += 1
        elif not READS.match(call) and not call.startswith(("write ", "sh -c '\nlock=")):
            extra.append(call)
    assert position == len(listed), f"not sent to the host: {listed[position]}"
    assert not extra, f"the host got commands no step listed: {extra}"
    return host


def _same(call: str, listed: str) -> bool:
    return call == listed or (listed.startswith("write ") and call == listed.split(" (mode")[0].split(": ")[0])


def test_default_playbook_plan_is_the_run(deployment: Deployment) -> None:
    d = deployment
    d.commit(add_migration("e1e1e1e1e1e1", EXAMPLE_HEAD, "Add notes",
                           ["op.add_column('recipes', sa.Column('notes', sa.Text(), nullable=True))"],
                           ["op.drop_column('recipes', 'notes')"]), "add notes")
    host = check_plan_is_the_run(d, load_playbook("release", d.laptop))
    assert d.revision() == ("e1e1e1e1e1e1",)
    # the backup's restore verification ran beside the steps after the backup (its restore among them)
    assert any("pg_restore" in call for call in host.early), host.early


def test_classic_playbook_plan_is_the_run(deployment: Deployment) -> None:
    d = deployment
    d.commit(add_migration("f2f2f2f2f2f2", "e1e1e1e1e1e1", "Add source",
                           ["op.add_column('recipes', sa.Column('source', sa.Text(), nullable=True))"],
                           ["op.drop_column('recipes', 'source')"]), "add source")
    check_plan_is_the_run(d, load_playbook("classic", d.laptop))
    assert d.revision() == ("f2f2f2f2f2f2",)


def test_rollback_plan_is_the_run(deployment: Deployment) -> None:
    d = deployment
    check_plan_is_the_run(d, rollbacks.playbook(), ref="previous")
    assert d.revision() == ("e1e1e1e1e1e1",)


def tree_hash(*roots: Path) -> dict[str, str]:
    found = {}
    for root in roots:
        for path in sorted(root.rglob("*")) if root.exists() else ():
            if path.is_file() and not path.is_symlink():
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest() + f" {path.stat().st_mode:o}"
    return found


@pytest.mark.parametrize("command", [
    ("status",), ("history",), ("lock", "status"), ("backups", "list"), ("backups", "verify"),
    ("config", "show"), ("release", "--dry-run"), ("rollback", "--dry-run"), ("recover", "--dry-run"),
    ("logs",), ("images", "prune", "--dry-run"),
])
def test_read_only_commands_write_nothing(deployment: Deployment, command: tuple[str, ...]) -> None:
    d = deployment
    before = tree_hash(d.server_path, d.state_path)
    result = d.deployer(*_argv(command, d.env_name))
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode in (0, 10, 15), result.stdout + result.stderr
    assert tree_hash(d.server_path, d.state_path) == before, f"`deployer {' '.join(command)}` changed files"


def _argv(command: tuple[str, ...], env: str) -> list[str]:
    """``deployer GROUP [SUB] ENV [OPTIONS]``."""
    words = [w for w in command if not w.startswith("--")]
    flags = [w for w in command if w.startswith("--")]
    return [*words, env, *flags]
