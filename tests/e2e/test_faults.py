"""The fault matrix: whatever dies in the middle of a release, nothing is lost and the next
command converges.

Each case ships a new migration of the example app while users sign up through its API
(:class:`~tests.bench.faults.Writer`), breaks something at a chosen moment — deployer
killed, interrupted, its SSH connection cut, the database killed, the disk full, a lock the
migration waits for, two deployers at once — and then checks what a user would check:

* right after the fault: no traceback; no lease held by a dead owner; ``deployer status``
  truthful (exit 16 naming the step while a run is interrupted);
* then the next ``deployer release`` converges on its own (no manual step) and, once it
  has, every write the app acknowledged is in the database; ``alembic_version`` equals the
  migration heads of the code the web container runs (asked of that container); the app
  answers; no migration container, no database session of one, no ``.partial`` dump is
  left; the journal says what happened to the faulted run; ``status`` tells the truth.

The release that converges is let run up to its preflight — converging comes before it —
and then stopped with Ctrl-C, which changes nothing: the checks above see the converged
state, and the next case starts from it. The last test of each group lets a release run to
the end (``test_and_then_the_release_goes_through``): the converged server takes the branch
tip with every check green, ``status`` exit 0.

Cases share a deployment per xdist group (``-n 2 --dist loadgroup`` spreads the groups);
docs/reliability.md has the matrix, its measured results and how to re-run it.
"""

from __future__ import annotations

import json
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from tests.bench.cli import result as result_of
from tests.bench.cli import result_or_envelope
from tests.bench.deployment import BROKEN_HEALTH_WSGI, EXAMPLE_HEAD, Deployment
from tests.bench.faults import (
    Background,
    Writer,
    backends,
    cut_ssh,
    kill_container,
    lease_alive,
    leftover_containers,
    project_containers,
    running_heads,
    scratch_containers,
    small_tmpfs,
    volume_exists,
    wait_backend,
    wait_lease_gone,
    wait_no_scratch,
    wait_process,
    wait_scratch,
    writing,
)
from tests.bench.sshd import SSHBench

pytestmark = pytest.mark.e2e

TRACEBACK = re.compile(r"^Traceback", re.MULTILINE)
KILLED = -signal.SIGKILL
WSGI = "example/wsgi.py"
DOCKERFILE = "example/Dockerfile"


# --------------------------------------------------------------------------- shared deployments


@dataclass
class Stage:
    """One deployment of the example app, released once, shared by the cases of a group."""

    d: Deployment
    sshd: SSHBench | None
    head: str = EXAMPLE_HEAD  # the newest migration committed to the branch
    outputs: list[str] = field(default_factory=list)  # every deployer output of the current case
    mend: dict[str, str | None] = field(default_factory=dict)  # files the next commit puts back
    broken: dict[str, str | None] = field(default_factory=dict)  # files this case's commit changes for itself only

    @property
    def env(self) -> str:
        return self.d.env_name

    def migration(self, *, sleep: float = 0, downgrade_sleep: float = 0, downgrade_fails: bool = False,
                  alter: str | None = None, files: dict[str, str | None] | None = None, message: str = "fault case") -> str:
        """Commit a migration (a table of its own, optionally slow, or altering the table ``alter``)
        on top of the branch; its revision.

        Files a previous case broke on purpose (``mend``) are put back in the same commit.
        """
        revision = secrets.token_hex(6)
        table = f"fault_{revision}"
        upgrade = [f"op.create_table('{table}', sa.Column('id', sa.Integer(), primary_key=True))"]
        if alter:
            upgrade.append(f"op.add_column('{alter}', sa.Column('x_{revision}', sa.Integer()))")
        if sleep:
            upgrade.append(f"op.execute('SELECT pg_sleep({sleep})')")
        downgrade = [f"op.execute('SELECT pg_sleep({downgrade_sleep})')"] if downgrade_sleep else []
        downgrade.append("raise RuntimeError('this downgrade is broken')" if downgrade_fails else f"op.drop_table('{table}')")
        script = MIGRATION.format(
            message=message, revision=revision, down=self.head,
            upgrade="\n".join(f"    {line}" for line in upgrade), downgrade="\n".join(f"    {line}" for line in downgrade),
        )
        changes = {**self.mend, f"example/migrations/versions/{revision}_fault.py": script, **(files or {})}
        self.mend, self.broken = self.broken, {}
        self.d.commit(changes, message)
        self.head = revision
        return revision

    def break_for_one_case(self, path: str, text: str) -> dict[str, str]:
        """A file changed for this case only: the next case's commit puts it back."""
        self.broken[path] = self.mend.get(path, (self.d.laptop / path).read_text())
        return {path: text}

    def deployer(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        result = self.d.deployer(*args, timeout=timeout)
        self.outputs.append(result.stdout + result.stderr)
        assert not TRACEBACK.search(result.stdout + result.stderr), result.stderr
        return result

    def status(self) -> tuple[int, dict]:
        result = self.deployer("status", self.env, "--json", timeout=120)
        return result.returncode, result_or_envelope(result.stdout)

    def start(self, *args: str, command: str = "release") -> Background:
        run = Background(self.d, (command, self.env, "--yes", *args))
        return run

    def slow_build(self, seconds: float) -> tuple[dict[str, str], str]:
        """A Dockerfile whose last layer sleeps (for this case only), and the sleep's argument."""
        argument = f"{seconds:.0f}.{secrets.randbelow(900) + 100}"
        text = (self.d.laptop / DOCKERFILE).read_text() + f"\n# a slow build, on purpose\nRUN sleep {argument}\n"
        return self.break_for_one_case(DOCKERFILE, text), argument

    def ballast(self, rows: int) -> None:
        """A big table (not the app's): makes the dump take a while, or not fit a small disk."""
        self.d.sql(f"CREATE TABLE IF NOT EXISTS fault_ballast AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) "
                   f"|| md5((g * 13)::text) AS junk FROM generate_series(1, {rows}) g")

    def drop_ballast(self) -> None:
        self.d.sql("DROP TABLE IF EXISTS fault_ballast")


MIGRATION = '''"""{message}

Revision ID: {revision}
Revises: {down}
"""
from alembic import op
import sqlalchemy as sa

revision = "{revision}"
down_revision = "{down}"
branch_labels = None
depends_on = None


def upgrade():
{upgrade}


def downgrade():
{downgrade}
'''


@pytest.fixture(scope="module")
def stages(deployment_factory, request: pytest.FixtureRequest) -> Iterator[Callable[[str, str], Stage]]:
    """``stage(kind, group)``: the group's deployment, made and released on first use."""
    made: dict[tuple[str, str], Stage] = {}

    def get(kind: str, group: str) -> Stage:
        key = (kind, group)
        if key not in made:
            d = deployment_factory(kind, health_timeout=60)
            sshd = request.getfixturevalue("sshd") if kind == "ssh" else None
            stage = Stage(d, sshd)
            result = stage.deployer("release", d.env_name, "--yes", "--json", timeout=900)
            assert result.returncode == 0, result.stderr
            made[key] = stage
        stage = made[key]
        stage.outputs = []
        return stage

    yield get


def on(kinds: tuple[str, ...], group: str) -> list:
    """``kind`` parameters, each in its own xdist group (one shared deployment per group)."""
    return [pytest.param(kind, marks=pytest.mark.xdist_group(f"faults-{kind}-{group}"), id=kind) for kind in kinds]


# The cases over SSH only (one deployment).
network = pytest.mark.xdist_group("faults-ssh-network")


# --------------------------------------------------------------------------- the checks


def left_run(stage: Stage) -> dict | None:
    """The step log a faulted run left on the server (None: the run ended, or never wrote one)."""
    path = stage.d.state_path / "run.json"
    return json.loads(path.read_text()) if path.exists() else None


@dataclass
class Faulted:
    """What a case saw: how the faulted run ended and what it left."""

    exit_code: int
    left: dict | None  # the step log left on the server
    status_code: int
    status: dict
    journal_before: int
    revision_before: tuple[str, ...]
    converge_output: str = ""
    scratch_at_exit: tuple[str, ...] = ()  # scratch databases there when the run ended


def after_fault(stage: Stage, run: Background, *, expect_exit: set[int], journal_before: int,
                revision_before: tuple[str, ...]) -> Faulted:
    """Right after the fault: the exit, no traceback, no live lease of a dead owner, and a
    truthful status (16, naming the step, while a step log is left)."""
    code = run.finish()
    stage.outputs.append(run.output)
    assert code in expect_exit, f"exit {code}, expected {sorted(expect_exit)}:\n{run.output}\n{stage.d.logs()}"
    assert not TRACEBACK.search(run.output), run.output
    scratch_at_exit = tuple(c["Name"] for c in scratch_containers(stage.d))
    wait_lease_gone(stage.d)
    # The backup's verification beside the steps: a run that ended stopped it and removed its
    # scratch; one that was killed or cut off left it to the lease's holder, which removed it
    # with the run's containers when the owner was gone.
    wait_no_scratch(stage.d)
    for _ in range(5):
        left = left_run(stage)
        status_code, doc = stage.status()
        if left_run(stage) == left:
            break
        # A write of the step log the killed run had sent just before it died (over SSH it
        # goes on in the server's command shell) landed between the two reads: look again.
    if left is not None:
        step = left["progress"][-1]["step"]
        assert status_code == 16, doc
        assert doc["interrupted"] and f"interrupted at step {step}" in doc["interrupted"], doc
        assert f"deployer recover {stage.env}" in doc["interrupted"], doc
        assert not doc["lock"]["held"], doc["lock"]
    else:
        # The run ended (recovered, or refused before changing anything): not interrupted.
        assert doc["interrupted"] is None, doc
        assert status_code == (0 if stage.d.server_head() == stage.d.origin.head() else 15), (
            f"exit {code}; status {status_code}: {doc['problems']}\n{run.output}\n{project_containers(stage.d.name)}")
    return Faulted(code, left, status_code, doc, journal_before, revision_before, scratch_at_exit=scratch_at_exit)


def converge(stage: Stage, faulted: Faulted) -> None:
    """The next ``deployer release``, up to its preflight: it converges first, on its own."""
    run = stage.start()
    if faulted.left is not None:
        run.wait_line(rf"{faulted.left['id']} was interrupted at step .*converging back", timeout=60)
    try:
        run.wait_line(r"^> preflight", timeout=300)
    except AssertionError:
        health = subprocess.run(["docker", "inspect", "--format", "{{json .State.Health}}", *stage.d.containers().values()],
                                capture_output=True, text=True).stdout
        raise AssertionError(f"{run.output}\n{health}\n{stage.d.logs()}") from None
    run.signal(signal.SIGINT)  # before the lock: this release changes nothing more
    code = run.finish()
    stage.outputs.append(run.output)
    faulted.converge_output = run.output
    assert code == 130, f"exit {code}:\n{run.output}"
    assert not TRACEBACK.search(run.output), run.output


def assert_safe(stage: Stage, writer: Writer) -> tuple[str, ...]:
    """No acknowledged write lost; the schema is the running code's; the app answers; nothing
    held or left over. Returns the revision."""
    d = stage.d
    promised = writer.promised()
    rows = d.sql("SELECT email, id FROM users WHERE email LIKE :p", p=f"{writer.prefix}-%")
    assert promised, f"no write was acknowledged during the case ({writer.summary()})"
    lost = writer.missing(rows, promised)
    assert not lost, f"{len(lost)} acknowledged writes are gone ({writer.summary()}): {lost[:5]}"
    revision = d.revision()
    assert revision == running_heads(d), f"the database is at {revision}, the running code expects {running_heads(d)}"
    assert d.wait_answer("/health")[0] == 200, d.logs()
    assert not lease_alive(d)
    # A holder record may stay only as a stale one: its owner was killed between taking the
    # lock and its first step log (a SIGKILL at the lock step), and the holder noted when the
    # owner went (lock.gone), so `lock status` says "stale: owner gone since …".
    if (d.state_path / "lock.json").exists():
        assert (d.state_path / "lock.gone").exists(), "a holder record without a live lease or a noted end"
        assert left_run(stage) is None
    assert left_run(stage) is None
    assert leftover_containers(d.name) == []
    assert backends(d, f"{d.name}-%grade-%") == [], "a migration's database session outlived it"
    assert not list(d.backup_path.glob("*.partial")), sorted(p.name for p in d.backup_path.iterdir())
    return revision


def assert_converged(stage: Stage, writer: Writer, faulted: Faulted, *, error_like: str | None = None,
                     forward: bool = False) -> None:
    """Once converged: safe (above), the journal tells the faulted run, status is truthful."""
    d = stage.d
    revision = assert_safe(stage, writer)
    if faulted.exit_code == 0:  # the release went through despite the fault
        assert revision == (stage.head,) and d.server_head() == d.origin.head(), revision
    elif not forward:
        assert revision == faulted.revision_before, f"converged to {revision}, the run started at {faulted.revision_before}"
    code, doc = stage.status()
    assert doc["interrupted"] is None and not doc["lock"]["held"], doc
    at_tip = d.server_head() == d.origin.head()
    assert code == (0 if at_tip else 15), doc
    assert doc["database"]["verdict"] == "up to date", doc["database"]
    journal = d.journal()[faulted.journal_before:]
    if faulted.left is not None:
        records = [r for r in journal if r["id"] == faulted.left["id"]]
        assert records, journal
        record = records[-1]
        assert record["outcome"] == ("succeeded" if forward else "failed"), record
        assert f"interrupted at step {faulted.left['progress'][-1]['step']}" in (record["error"] or record["recovery"]), record
    if error_like is not None:
        assert journal, "the faulted run is not in the journal"
        assert re.search(error_like, journal[0]["error"] or ""), journal[0]
    for output in stage.outputs:
        assert not TRACEBACK.search(output), output


def run_case(stage: Stage, fault: Callable[[Background], None], *, expect_exit: set[int], error_like: str | None = None,
             release_args: tuple[str, ...] = (), writer_interval: float = 0.1) -> Faulted:
    """A release with users writing, the fault, the checks, the next release converging, the checks."""
    d = stage.d
    before = len(d.journal())
    revision_before = d.revision()
    t0 = time.monotonic()
    with writing(d.web_port, interval=writer_interval) as writer:
        run = stage.start(*release_args)
        fault(run)
        t1 = time.monotonic()
        faulted = after_fault(stage, run, expect_exit=expect_exit, journal_before=before, revision_before=revision_before)
        t2 = time.monotonic()
        converge(stage, faulted)
        t3 = time.monotonic()
    assert_converged(stage, writer, faulted, error_like=error_like)
    t4 = time.monotonic()
    print(f"fault case: {writer.summary()}; exit {faulted.exit_code}; "
          f"step log left: {faulted.left['progress'][-1]['step'] if faulted.left else 'no'}; "
          f"to fault {t1-t0:.1f} after {t2-t1:.1f} converge {t3-t2:.1f} checks {t4-t3:.1f}")
    return faulted


# --------------------------------------------------------------------------- SIGKILL at every step boundary

# At "> STEP" (the step about to start) and at the end ("✓ record": the release done, not journaled yet).
BOUNDARIES = ["lock", "snapshot", "sync", "build", "database_up", "backup", "migrate", "swap", "verify", "health", "record", "end"]


# Locally, every other boundary (what differs from SSH is the transport: how the lease sees
# its owner go, which these cover; the step log and converging are the same code).
LOCAL_BOUNDARIES = ["lock", "sync", "backup", "migrate", "swap", "record"]


@pytest.mark.parametrize("kind, step", [
    pytest.param(kind, step, marks=pytest.mark.xdist_group(f"faults-{kind}-kill"), id=f"{step}-{kind}")
    for kind, steps in (("ssh", BOUNDARIES), ("local", LOCAL_BOUNDARIES)) for step in steps
])
def test_sigkill_at_a_step_boundary(kind: str, step: str, stages) -> None:  # noqa: ANN001
    stage = stages(kind, "kill")
    stage.migration()

    def fault(run: Background) -> None:
        run.wait_line(r"^✓ record\b" if step == "end" else rf"^> {step}\b")
        run.kill()

    run_case(stage, fault, expect_exit={KILLED})


@network
def test_sigkill_after_the_journal_before_the_step_log_is_removed(stages) -> None:  # noqa: ANN001
    """The last boundary: the release journaled as succeeded, its step log not removed yet.

    Too short a window to hit with a signal (one command on the host), so the test makes the
    state the kill leaves: the release runs to its end, and its step log, as it stood in the
    record step, is put back. That run is finished, not interrupted: nothing is undone.
    """
    stage = stages("ssh", "network")
    d = stage.d
    stage.migration()
    before = len(d.journal())
    with writing(d.web_port) as writer:
        run = stage.start()
        run.wait_line(r"^> record\b")
        deadline = time.monotonic() + 30
        while '"step": "record"' not in (text := (d.state_path / "run.json").read_text()):
            assert time.monotonic() < deadline, text
            time.sleep(0.01)
        assert run.finish() == 0, run.output
        (d.state_path / "run.json").write_text(text)
        left = json.loads(text)
        code, doc = stage.status()
        assert code == 0 and doc["interrupted"] is None, doc
        converge(stage, Faulted(0, None, code, doc, before, (stage.head,)))
    assert "was journaled before it stopped; removing its step log" in stage.outputs[-1], stage.outputs[-1]
    assert assert_safe(stage, writer) == (stage.head,)
    journal = d.journal()[before:]
    assert [(r["id"], r["outcome"]) for r in journal] == [(left["id"], "succeeded")], journal


# --------------------------------------------------------------------------- SIGKILL inside a step


@pytest.mark.parametrize("kind", on(("ssh", "local"), "kill"))
def test_sigkill_inside_build(kind: str, stages) -> None:  # noqa: ANN001
    stage = stages(kind, "kill")
    files, sleeping = stage.slow_build(6)
    stage.migration(files=files)

    def fault(run: Background) -> None:
        wait_process("sleep", exact=(sleeping,), alive=run)  # the build's slow layer runs
        run.kill()

    run_case(stage, fault, expect_exit={KILLED})


@pytest.mark.parametrize("kind", on(("ssh", "local"), "kill"))
def test_sigkill_inside_backup(kind: str, stages) -> None:  # noqa: ANN001
    stage = stages(kind, "kill")
    stage.ballast(400_000)
    try:
        stage.migration()

        def fault(run: Background) -> None:
            wait_backend(stage.d, "pg_dump", "COPY %fault_ballast%", alive=run)  # this database's dump, not another test's
            time.sleep(0.3)
            run.kill()

        run_case(stage, fault, expect_exit={KILLED})
    finally:
        stage.drop_ballast()


@pytest.mark.parametrize("kind", on(("ssh",), "kill"))
def test_sigkill_while_the_backup_restores_beside_the_migration(kind: str, stages) -> None:  # noqa: ANN001
    """The backup's restore verification starts once the backup is made and runs beside the
    migration and the switch: deployer killed while the scratch database restores (the
    migration running meanwhile) leaves no scratch — the lease's holder removes it and its
    volume with the run's other containers — and the next release converges as after any
    kill inside migrate, its own backup verified."""
    stage = stages(kind, "kill")
    d = stage.d
    stage.ballast(400_000)
    seen: dict[str, list[str]] = {}
    try:
        stage.migration(sleep=10)

        def fault(run: Background) -> None:
            scratch = wait_scratch(d, alive=run)
            seen["volumes"] = [m["Name"] for m in scratch["Mounts"] if m.get("Name")]
            assert scratch["HostConfig"]["NetworkMode"] == "none" and f"{d.name}_dbdata" not in seen["volumes"]
            wait_process("pg_restore", "--single-transaction", alive=run)  # restoring into it now
            run.kill()

        faulted = run_case(stage, fault, expect_exit={KILLED})
        # killed beside the migration (its step log says where), not after the record
        assert faulted.left is not None and faulted.left["progress"][-1]["step"] in ("hold", "migrate"), faulted.left
        assert seen["volumes"] and not any(volume_exists(name) for name in seen["volumes"]), seen
        result = stage.deployer("release", stage.env, "--yes", "--json", timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
        released = result_of(result.stdout)
        assert released["backup_verification"]["state"] == "verified", released["backup_verification"]
        steps = {step["name"]: step for step in released["steps"]}
        assert steps["verify_backup"]["status"] == "ok", steps
        assert "beside the release" in steps["verify_backup"]["detail"], steps
        assert scratch_containers(d) == []
    finally:
        stage.drop_ballast()


@pytest.mark.parametrize("kind", on(("ssh", "local"), "kill"))
def test_sigkill_inside_migrate(kind: str, stages) -> None:  # noqa: ANN001
    stage = stages(kind, "kill")
    stage.migration(sleep=6)

    def fault(run: Background) -> None:
        wait_backend(stage.d, f"{stage.d.name}-migrate-%", "%pg_sleep%", alive=run)
        run.kill()

    run_case(stage, fault, expect_exit={KILLED})


@pytest.mark.parametrize("kind", on(("ssh", "local"), "kill"))
def test_sigkill_inside_up(kind: str, stages) -> None:  # noqa: ANN001
    stage = stages(kind, "kill")
    stage.migration()

    def fault(run: Background) -> None:
        run.wait_line(r"^> swap\b")
        wait_process(stage.d.name, exact=("compose", "up"), alive=run)
        run.kill()

    run_case(stage, fault, expect_exit={KILLED})


@pytest.mark.parametrize("kind", on(("ssh", "local"), "kill"))
def test_sigkill_inside_health(kind: str, stages) -> None:  # noqa: ANN001
    stage = stages(kind, "kill")
    stage.migration()

    def fault(run: Background) -> None:
        run.wait_line(r"^> health\b")
        time.sleep(1.0)  # the health step waits at least its settle time (3 s)
        run.kill()

    run_case(stage, fault, expect_exit={KILLED})


@pytest.mark.parametrize("kind", on(("ssh", "local"), "kill"))
def test_sigkill_inside_recovery(kind: str, stages) -> None:  # noqa: ANN001
    stage = stages(kind, "kill")
    # /health fails in this release: recovery downgrades (slowly) with the new image.
    stage.migration(downgrade_sleep=6, files=stage.break_for_one_case(WSGI, BROKEN_HEALTH_WSGI))

    def fault(run: Background) -> None:
        run.wait_line(r"recovering the previous release", timeout=240)
        wait_backend(stage.d, f"{stage.d.name}-downgrade-%", "%pg_sleep%", alive=run)
        run.kill()

    faulted = run_case(stage, fault, expect_exit={KILLED})
    assert faulted.left is not None and faulted.left["phase"] == "recovering", faulted.left


# --------------------------------------------------------------------------- signals during migrate and up

SIGNALS = {"SIGINT": (signal.SIGINT, 130), "SIGTERM": (signal.SIGTERM, 143), "SIGHUP": (signal.SIGHUP, 129)}


def at_step(stage: Stage, where: str) -> Callable[[Background], None]:
    """Wait until the release is inside ``where`` (migrate: its SQL runs; swap: its compose up runs — no proxy here, so it recreates)."""

    def wait(run: Background) -> None:
        if where == "migrate":
            wait_backend(stage.d, f"{stage.d.name}-migrate-%", "%pg_sleep%", alive=run)
        else:
            run.wait_line(r"^> swap\b")
            wait_process(stage.d.name, exact=("compose", "up"), alive=run)

    return wait


@pytest.mark.parametrize("kind, where", [
    pytest.param(kind, where, marks=pytest.mark.xdist_group(f"faults-{kind}-signals"), id=f"{where}-{kind}")
    for kind, places in (("ssh", ("migrate", "swap")), ("local", ("migrate",))) for where in places
])  # locally inside migrate only: the handlers are the same code, the transport is what differs
@pytest.mark.parametrize("name", list(SIGNALS))
def test_signal_once(kind: str, where: str, name: str, stages) -> None:  # noqa: ANN001
    """SIGINT (Ctrl-C), SIGTERM (a cancelled CI job), SIGHUP (a closed terminal): recovered, journaled."""
    stage = stages(kind, "signals")
    stage.migration(sleep=5 if where == "migrate" else 0)
    signum, exit_code = SIGNALS[name]
    reached = at_step(stage, where)

    def fault(run: Background) -> None:
        reached(run)
        if where == "migrate":
            wait_scratch(stage.d, alive=run, running=lambda c: True)  # the backup's verification runs beside it
        run.signal(signum)

    faulted = run_case(stage, fault, expect_exit={exit_code}, error_like=rf"interrupted \({name}\)")
    assert faulted.left is None
    assert not faulted.scratch_at_exit, faulted.scratch_at_exit  # the verification beside it stopped first
    assert "recovering the previous release" in stage.outputs[0], stage.outputs[0]
    assert "previous release answers" in stage.d.journal()[faulted.journal_before]["recovery"]


@pytest.mark.parametrize("kind", on(("ssh", "local"), "signals"))
@pytest.mark.parametrize("where", ["migrate", "swap"])
def test_ctrl_c_twice(kind: str, where: str, stages) -> None:  # noqa: ANN001
    """The second Ctrl-C, during recovery, is deferred with a message: recovery finishes."""
    stage = stages(kind, "signals")
    stage.migration(sleep=5 if where == "migrate" else 0)
    reached = at_step(stage, where)

    def fault(run: Background) -> None:
        reached(run)
        run.signal(signal.SIGINT)
        run.wait_line(r"recovering the previous release", timeout=60)
        run.signal(signal.SIGINT)
        run.wait_line(r"press Ctrl-C again within 3 s to abandon", timeout=30)

    faulted = run_case(stage, fault, expect_exit={130}, error_like=r"interrupted \(SIGINT\)")
    assert faulted.left is None
    assert "previous release answers" in stage.d.journal()[faulted.journal_before]["recovery"]


@pytest.mark.parametrize("kind", on(("ssh", "local"), "signals"))
def test_ctrl_c_again_within_3s_abandons_recovery(kind: str, stages) -> None:  # noqa: ANN001
    """Ctrl-C twice more during recovery abandons it: the step log stays, the next command converges."""
    stage = stages(kind, "signals")
    stage.migration(sleep=5)
    reached = at_step(stage, "migrate")

    def fault(run: Background) -> None:
        reached(run)
        run.signal(signal.SIGINT)
        run.wait_line(r"recovering the previous release", timeout=60)
        run.signal(signal.SIGINT)
        run.wait_line(r"press Ctrl-C again within 3 s to abandon", timeout=30)
        run.signal(signal.SIGINT)

    faulted = run_case(stage, fault, expect_exit={130})
    # The step log stays; "running" when the third Ctrl-C came before recovery had noted its phase.
    assert faulted.left is not None and faulted.left["phase"] in ("recovering", "running"), faulted.left
    assert "recovery abandoned" in stage.outputs[0]


# --------------------------------------------------------------------------- the SSH connection cut



@network
def test_ssh_cut_during_build(stages) -> None:  # noqa: ANN001
    """The build is done again on a new connection: the release goes through."""
    stage = stages("ssh", "network")
    files, sleeping = stage.slow_build(5)
    stage.migration(files=files)

    def fault(run: Background) -> None:
        wait_process("sleep", exact=(sleeping,), alive=run)
        assert stage.sshd is not None
        cut_ssh(stage.sshd, run)

    faulted = run_case(stage, fault, expect_exit={0})
    assert faulted.left is None
    assert "reconnected" in stage.outputs[0], stage.outputs[0]


@network
def test_ssh_cut_during_migrate(stages) -> None:  # noqa: ANN001
    """A migration is never run twice: after reconnecting, it is stopped and the release recovered."""
    stage = stages("ssh", "network")
    stage.migration(sleep=5)

    def fault(run: Background) -> None:
        wait_backend(stage.d, f"{stage.d.name}-migrate-%", "%pg_sleep%", alive=run)
        assert stage.sshd is not None
        cut_ssh(stage.sshd, run)

    run_case(stage, fault, expect_exit={1, 3})
    assert "lost the connection" in stage.outputs[0], stage.outputs[0]


@network
def test_ssh_cut_during_up(stages) -> None:  # noqa: ANN001
    stage = stages("ssh", "network")
    stage.migration()

    def fault(run: Background) -> None:
        run.wait_line(r"^> swap\b")
        wait_process(stage.d.name, exact=("compose", "up"), alive=run)
        assert stage.sshd is not None
        cut_ssh(stage.sshd, run)

    run_case(stage, fault, expect_exit={0, 1, 3})
    assert "lost the connection" in stage.outputs[0], stage.outputs[0]


# --------------------------------------------------------------------------- the database killed


@network
def test_db_killed_during_migrate(stages) -> None:  # noqa: ANN001
    """PostgreSQL rolls the migration back; recovery starts the database and says so."""
    stage = stages("ssh", "network")
    stage.migration(sleep=5)

    def fault(run: Background) -> None:
        wait_backend(stage.d, f"{stage.d.name}-migrate-%", "%pg_sleep%", alive=run)
        kill_container(stage.d, "db")

    faulted = run_case(stage, fault, expect_exit={1}, error_like=r"migrat")
    assert faulted.left is None
    assert "invalid" not in stage.outputs[0]  # the backup is fine: no advice to restore it


@network
def test_db_killed_during_backup(stages) -> None:  # noqa: ANN001
    stage = stages("ssh", "network")
    stage.ballast(400_000)
    try:
        stage.migration()

        def fault(run: Background) -> None:
            wait_backend(stage.d, "pg_dump", "COPY %fault_ballast%", alive=run)  # this database's dump, not another test's
            time.sleep(0.3)
            kill_container(stage.d, "db")

        run_case(stage, fault, expect_exit={1}, error_like=r"dump|backup|db container exited")
    finally:
        stage.drop_ballast()


# --------------------------------------------------------------------------- resources


def _config(stage: Stage, old: str, new: str) -> dict[str, str]:
    """deploy.toml with one change, for this case only (a change a previous case made is put back first)."""
    text = stage.mend.get("deploy.toml") or (stage.d.laptop / "deploy.toml").read_text()
    assert old in text, text
    return stage.break_for_one_case("deploy.toml", text.replace(old, new, 1))


@network
def test_backup_disk_full(stages) -> None:  # noqa: ANN001
    """A backup that does not fit fails the release before anything migrates; no half dump is left."""
    stage = stages("ssh", "network")
    stage.ballast(20_000)
    try:
        with small_tmpfs("64k") as full:
            files = _config(stage, "keep_backups = 5\n", f'keep_backups = 5\nbackup_dir = "{full}"\n')
            stage.migration(files=files)
            faulted = run_case(stage, lambda run: None, expect_exit={1}, error_like=r"(?i)no space left|space")
            assert list(full.iterdir()) == [], list(full.iterdir())
        assert faulted.left is None
        assert "space" in stage.outputs[0]
    finally:
        stage.drop_ballast()


@network
def test_migration_waiting_on_a_lock_until_migrate_timeout(stages) -> None:  # noqa: ANN001
    """A migration stopped by its timeout leaves no database session waiting behind it."""
    from sqlalchemy import create_engine, text

    stage = stages("ssh", "network")
    files = _config(stage, "migrate_timeout = 180\n", "migrate_timeout = 8\n")
    table = f"fault_{secrets.token_hex(4)}"
    stage.d.sql(f"CREATE TABLE {table} (id integer)")
    # The migration alters a table an open transaction of ours holds a lock on.
    stage.migration(alter=table, files=files)
    engine = create_engine(stage.d.db_url())
    holder = engine.connect()
    try:
        holder.exec_driver_sql("BEGIN")
        holder.execute(text(f"LOCK TABLE {table} IN ROW EXCLUSIVE MODE"))
        faulted = run_case(stage, lambda run: None, expect_exit={1}, error_like=r"did not finish within 8s")
        waiting = stage.d.sql("SELECT pid, application_name, query FROM pg_stat_activity "
                              "WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()")
        assert waiting == [], f"sessions still wait on a lock: {waiting}"
        assert faulted.left is None
    finally:
        holder.close()  # the lock goes: the next release applies the migration
        engine.dispose()


# --------------------------------------------------------------------------- a downgrade that fails, health that fails


@network
def test_failing_downgrade_and_health_with_writes_in_flight(stages) -> None:  # noqa: ANN001
    """Recovery will not restore a backup over acknowledged writes: it stops before any loss
    and says what to do; the user keeps the writes with ``recover --forward``."""
    stage = stages("ssh", "network")
    d = stage.d
    revision = stage.migration(downgrade_fails=True, files=stage.break_for_one_case(WSGI, BROKEN_HEALTH_WSGI))
    before = len(d.journal())
    with writing(d.web_port) as writer:
        run = stage.start()
        code = run.finish(timeout=600)
        stage.outputs.append(run.output)
        assert code == 5, run.output
        assert f"deployer recover {stage.env} --restore-backup" in run.output, run.output
        assert f"deployer recover {stage.env} --forward" in run.output, run.output
        discarded = re.search(r"would discard (\d+) row change", run.output)
        assert discarded and int(discarded.group(1)) > 0, run.output
        wait_lease_gone(d)
        left = left_run(stage)
        assert left is not None and left["phase"] == "recovering", left
        promised = writer.promised()
        rows = d.sql("SELECT email, id FROM users WHERE email LIKE :p", p=f"{writer.prefix}-%")
        assert not writer.missing(rows, promised), writer.summary()
        assert d.revision() == (revision,) == running_heads(d)  # the new code stays with its schema
        status_code, doc = stage.status()
        assert status_code == 16 and "interrupted at step health" in doc["interrupted"], doc
        # The user keeps the writes: the release stays in place, unhealthy, and its run is closed.
        forward = stage.deployer("recover", stage.env, "--forward")
        assert forward.returncode == 1, forward.stderr
        assert "kept forward" in forward.stderr and "health check fails" in forward.stderr, forward.stderr
    rows = d.sql("SELECT email, id FROM users WHERE email LIKE :p", p=f"{writer.prefix}-%")
    assert writer.acknowledged and not writer.missing(rows), writer.summary()
    assert d.revision() == (revision,) == running_heads(d)
    assert not lease_alive(d) and left_run(stage) is None and leftover_containers(d.name) == []
    code, doc = stage.status()
    assert code == 15 and doc["interrupted"] is None and doc["database"]["verdict"] == "up to date", doc
    (record,) = [r for r in d.journal()[before:] if r["id"] == left["id"]]
    assert record["outcome"] == "failed" and "kept forward" in record["recovery"], record
    # The user mends the health check and releases: the environment is healthy again (and the
    # next case starts from a release that answers).
    stage.migration(message="mend the health check")
    mended = stage.start()
    code = mended.finish(timeout=600)
    stage.outputs.append(mended.output)
    assert code == 0, mended.output
    assert d.wait_answer("/health")[0] == 200, d.logs()
    print(f"fault case: {writer.summary()}; restoring would have discarded {discarded.group(1)} row changes")


# --------------------------------------------------------------------------- two deployers


@network
def test_two_deployers_racing_the_holder_killed(stages) -> None:  # noqa: ANN001
    """One of two releases started at once gets the lock, the other is refused; the holder is
    then killed: its lease ends with it, and the next release takes the environment over."""
    stage = stages("ssh", "network")
    d = stage.d
    stage.migration()
    before = len(d.journal())
    revision_before = d.revision()
    with writing(d.web_port) as writer:
        first, second = stage.start(), stage.start()
        deadline = time.monotonic() + 120
        holder = refused = None
        while holder is None or refused is None:
            assert time.monotonic() < deadline, first.output + second.output
            for run in (first, second):
                if run.process.poll() is not None and refused is None:
                    refused = run
                if any(line.startswith("> snapshot") for _, line in run.lines):
                    holder = run
            time.sleep(0.05)
        assert refused is not holder
        assert refused.finish() == 4, refused.output
        assert "locked" in refused.output and "held by" in refused.output, refused.output
        holder.wait_line(r"^> build\b")
        holder.kill()
        faulted = after_fault(stage, holder, expect_exit={KILLED}, journal_before=before, revision_before=revision_before)
        stage.outputs.append(refused.output)
        assert faulted.left is not None
        converge(stage, faulted)
    assert_converged(stage, writer, faulted)


# --------------------------------------------------------------------------- each group ends with a release


@pytest.mark.parametrize("kind, group", [
    pytest.param(kind, group, marks=pytest.mark.xdist_group(f"faults-{kind}-{group}"), id=f"{kind}-{group}")
    for kind, group in (("ssh", "kill"), ("local", "kill"), ("ssh", "signals"), ("local", "signals"), ("ssh", "network"))
])
def test_and_then_the_release_goes_through(kind: str, group: str, stages) -> None:  # noqa: ANN001
    """After every fault of the group, a release runs to its end: the branch tip, every check green."""
    stage = stages(kind, group)
    stage.migration()
    d = stage.d
    with writing(d.web_port) as writer:
        result = stage.deployer("release", stage.env, "--yes", "--json", timeout=600)
        assert result.returncode == 0, result.stderr
    outcome = result_of(result.stdout)
    assert outcome["outcome"] == "succeeded" and outcome["converged"] is None
    revision = assert_safe(stage, writer)
    assert revision == (stage.head,)
    assert d.server_head() == d.origin.head()
    code, doc = stage.status()
    assert code == 0, doc
    assert d.journal()[-1]["outcome"] == "succeeded"
