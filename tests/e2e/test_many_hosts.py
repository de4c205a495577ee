"""Releasing to three hosts at once: three machines of their own (each its own address,
Docker engine, sshd and /srv), reached by the real ``deployer`` command over SSH.

The primary (m1) runs the database and the web service; m2 and m3 run the web service only
and reach the primary's database at its address (a variable of their hosts entries). What
a user checks: the migration ran once, in the primary's database; every host serves the new
commit on the new schema; rows written through every host are still there; a host that fails
its health check puts all three back, schema included; a host that cannot be reached refuses
the release before anything changes; ``status`` shows each host and says when they disagree.
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bench.cli import envelope
from tests.bench.cli import result as result_of
from tests.bench.deployment import EXAMPLE_HEAD, add_migration
from tests.bench.docker import POSTGRES_IMAGE, PYTHON_IMAGE, free_port
from tests.bench.faults import Background
from tests.bench.fleet import COMPOSE, HEALTH_BROKEN_WSGI, Fleet, deploy_toml, ssh_home
from tests.bench.gitrepos import git, make_origin
from tests.bench.sshd import SSHBench

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("many-hosts")]

@pytest.fixture(scope="module")
def fleet(machine_factory, sshd: SSHBench) -> Iterator[Fleet]:  # noqa: ANN001
    machines = machine_factory(3)
    for machine in machines:
        machine.load_images(PYTHON_IMAGE, POSTGRES_IMAGE)
    base = Path(tempfile.mkdtemp(prefix="deployer-e2e-fleet-"))
    origin = make_origin(base / "origin", {"docker-compose.prod.yml": COMPOSE})
    laptop = origin.clone(base / "laptop")
    home = ssh_home(base, machines, sshd.key_path)
    made = Fleet(machines, laptop, home, "pw-" + secrets.token_hex(8), free_port())
    made.commit({"deploy.toml": deploy_toml(made)}, "deploy to three hosts")
    try:
        yield made
    finally:
        shutil.rmtree(base, ignore_errors=True)


def release(fleet: Fleet, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
    result = fleet.deployer("release", "production", "--yes", "--json", *args)
    assert result.returncode == expect, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    assert "Traceback" not in result.stderr, result.stderr
    return result


def test_a_release_reaches_three_hosts_and_migrates_once(fleet: Fleet) -> None:
    first = release(fleet)
    outcome = result_of(first.stdout)
    assert outcome["outcome"] == "succeeded"
    assert [h["host"] for h in outcome["hosts"]] == ["m1", "m2", "m3"]
    initial = fleet.head(fleet.primary)
    for machine in fleet.machines:
        assert fleet.head(machine) == initial
        status, body = fleet.get(machine)
        assert status == 200 and json.loads(body)["revision"] == EXAMPLE_HEAD, (machine.name, body)
    # The database runs on the primary only; the others run the web service.
    assert fleet.containers(fleet.primary) == ["db", "web"]
    assert fleet.containers(fleet.machines[1]) == fleet.containers(fleet.machines[2]) == ["web"]
    # Lines say which host they are about.
    assert "[m2] > build" in first.stderr and "[m3] > health" in first.stderr, first.stderr[-3000:]

    # Rows written through each host land in the one database.
    for number, machine in enumerate(fleet.machines):
        assert fleet.post_user(machine, f"before{number}@example.com") == 201
    # A migration that counts its own runs: it inserts a row.
    revision = "f1ee7a000001"
    files = add_migration(revision, EXAMPLE_HEAD, "count migration runs",
                          ['op.create_table("migration_runs", sa.Column("id", sa.Integer, primary_key=True),',
                           '                sa.Column("ran_at", sa.DateTime, server_default=sa.func.now()))',
                           'op.execute("INSERT INTO migration_runs DEFAULT VALUES")'],
                          ['op.drop_table("migration_runs")'])
    sha = fleet.commit(files, "a migration, released to three hosts")

    plan = fleet.deployer("release", "production", "--dry-run", "--json")
    assert plan.returncode == 0, plan.stderr
    steps = result_of(plan.stdout)["steps"]
    migrate = [s["label"] for s in steps if s["step"] == "migrate"]
    assert migrate == ["migrate [m1]"], migrate  # once, on the primary
    assert [s["label"] for s in steps if s["step"] == "swap"] == ["swap [m1]", "swap [m2]", "swap [m3]"]

    second = result_of(release(fleet).stdout)
    assert second["outcome"] == "succeeded" and second["commit"] == sha
    assert fleet.sql("SELECT count(*) FROM migration_runs") == [(1,)]  # the migration ran exactly once
    assert fleet.revision() == (revision,)
    ids = {fleet.journal(m)[-1]["id"] for m in fleet.machines}
    assert ids == {second["id"]}, ids  # one release id on every host
    for machine in fleet.machines:
        assert fleet.head(machine) == sha
        status, body = fleet.get(machine)
        assert status == 200 and json.loads(body)["revision"] == revision, (machine.name, body)
        assert fleet.get(machine, "/")[0] == 200  # the page that reads the database
        steps_run = [s["name"] for s in fleet.journal(machine)[-1]["steps"]]
        assert ("migrate" in steps_run) == (machine is fleet.primary), (machine.name, steps_run)
        assert ("backup" in steps_run) == (machine is fleet.primary), (machine.name, steps_run)
    assert fleet.sql("SELECT count(*) FROM users WHERE email LIKE 'before%'") == [(3,)]

    # Nothing to do: every host already runs it.
    again = result_of(release(fleet).stdout)
    assert again["outcome"] == "unchanged", again


def test_a_rollback_takes_every_host_back_with_one_downgrade(fleet: Fleet) -> None:
    releases = [r for r in fleet.journal(fleet.primary) if r["kind"] == "release" and r["outcome"] == "succeeded"]
    first, running = releases[-2], releases[-1]
    assert fleet.revision() != (EXAMPLE_HEAD,)
    fleet.post_user(fleet.machines[2], "during@example.com")
    back = fleet.deployer("rollback", "production", "--yes", "--json")
    assert back.returncode == 0, back.stdout[-2000:] + back.stderr[-5000:]
    outcome = result_of(back.stdout)
    assert outcome["kind"] == "rollback" and [h["host"] for h in outcome["hosts"]] == ["m1", "m2", "m3"]
    assert fleet.revision() == (EXAMPLE_HEAD,)  # downgraded once: the table the migration made is gone
    assert fleet.sql("SELECT to_regclass('migration_runs') IS NULL") == [(True,)]
    assert fleet.sql("SELECT count(*) FROM users WHERE email = 'during@example.com'") == [(1,)]
    for machine in fleet.machines:
        assert fleet.head(machine) == first["commit"], machine.name
        status, body = fleet.get(machine)
        assert status == 200 and json.loads(body)["revision"] == EXAMPLE_HEAD, (machine.name, body)
        record = fleet.journal(machine)[-1]
        assert record["kind"] == "rollback" and record["id"] == outcome["id"], (machine.name, record)
        assert ("schema" in [s["name"] for s in record["steps"]]) == (machine is fleet.primary)

    # Forward again: the tip, its migration run once more (its table made anew).
    again = result_of(release(fleet).stdout)
    assert again["commit"] == running["commit"]
    assert fleet.sql("SELECT count(*) FROM migration_runs") == [(1,)]
    assert all(fleet.head(m) == running["commit"] for m in fleet.machines)


def test_status_shows_each_host_and_when_they_disagree(fleet: Fleet) -> None:
    shown = fleet.deployer("status", "production", "--json")
    report = envelope(shown.stdout)["result"]
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert [h["host"] for h in report["hosts"]] == ["m1", "m2", "m3"]
    assert report["agree"] and all(h["verdict"] == "up to date" for h in report["hosts"])

    # Someone moves m3's checkout back by hand.
    third = fleet.machines[2]
    checkout = str(third.srv / "app")
    before = fleet.head(third)
    git("-C", checkout, "checkout", "-q", "HEAD~1")
    try:
        shown = fleet.deployer("status", "production")
        assert shown.returncode == 15, shown.stdout + shown.stderr
        assert "hosts disagree on what they have the checkout at" in shown.stdout, shown.stdout
        assert "m3:" in shown.stdout.split("hosts disagree on what they have the checkout at")[1]
        assert "m1 on" in shown.stdout.replace("production on ", "") or "on m1" in shown.stdout
    finally:
        git("-C", checkout, "checkout", "-q", before or "main")
    assert fleet.deployer("status", "production").returncode == 0
    history = envelope(fleet.deployer("history", "production", "--json").stdout)["result"]
    assert [h["host"] for h in history["hosts"]] == ["m1", "m2", "m3"] and history["agree"]
    assert len({h["entries"][0]["id"] for h in history["hosts"]}) == 1


def test_an_unreachable_host_refuses_the_release_before_anything_changes(fleet: Fleet) -> None:
    second = fleet.machines[1]
    heads = {m.name: fleet.head(m) for m in fleet.machines}
    journals = {m.name: len(fleet.journal(m)) for m in fleet.machines}
    fleet.commit({"example/NOTES.txt": "a change that never ships\n"}, "a change while m2 is down")
    second.run("iptables", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "REJECT", "--reject-with", "tcp-reset")
    try:
        result = fleet.deployer("release", "production", "--yes")
    finally:
        second.run("iptables", "-D", "INPUT", "-p", "tcp", "--dport", "22", "-j", "REJECT", "--reject-with", "tcp-reset")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "m2" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert {m.name: fleet.head(m) for m in fleet.machines} == heads
    assert {m.name: len(fleet.journal(m)) for m in fleet.machines} == journals
    for machine in fleet.machines:
        assert not (machine.srv / "app.deployer" / "run.json").exists()


def test_a_run_killed_mid_rollout_is_converged_on_every_host(fleet: Fleet) -> None:
    heads = {m.name: fleet.head(m) for m in fleet.machines}
    images = {m.name: fleet.images(m) for m in fleet.machines}
    revision_before = fleet.revision()
    files = add_migration("f1ee7a000003", revision_before[0], "a column for the killed run",
                          ['op.add_column("users", sa.Column("killed_run", sa.String(40)))'],
                          ['op.drop_column("users", "killed_run")'])
    fleet.commit(files, "a release killed after its first batch")
    run = Background(fleet, ("release", "production", "--yes"))  # type: ignore[arg-type]
    run.wait_line(r"^\[m2\] > swap", timeout=600)  # m1 runs the new code on the new schema; m3 the old code
    run.kill()
    assert run.finish() == -signal.SIGKILL
    assert fleet.revision() == ("f1ee7a000003",)
    shown = fleet.deployer("status", "production")
    assert shown.returncode == 16, shown.stdout + shown.stderr  # interrupted, and it says how to converge
    assert "deployer recover production" in shown.stdout

    recovered = fleet.deployer("recover", "production", "--json")
    assert recovered.returncode == 0, recovered.stdout[-2000:] + recovered.stderr[-5000:]
    assert {h["host"] for h in result_of(recovered.stdout)["hosts"]} == {"m1", "m2", "m3"}
    assert {m.name: fleet.head(m) for m in fleet.machines} == heads
    assert fleet.revision() == revision_before
    for machine in fleet.machines:
        assert fleet.images(machine) == images[machine.name], machine.name
        status, body = fleet.get(machine)
        assert status == 200 and json.loads(body)["revision"] == revision_before[0], (machine.name, body)
        assert not (machine.srv / "app.deployer" / "run.json").exists(), machine.name
    shown = fleet.deployer("status", "production", "--json")
    report = envelope(shown.stdout)["result"]
    assert all(h["verdict"] == "up to date" and not h["interrupted"] for h in report["hosts"]), report
    assert report["agree"], report["disagreements"]


def test_one_host_failing_its_health_check_puts_all_three_back(fleet: Fleet) -> None:
    third = fleet.machines[2]
    heads = {m.name: fleet.head(m) for m in fleet.machines}
    images = {m.name: fleet.images(m) for m in fleet.machines}
    revision_before = fleet.revision()
    users_before = fleet.sql("SELECT count(*) FROM users")
    # On top of the killed run's migration, which the code has and the database does not.
    files = add_migration("f1ee7a000002", "f1ee7a000003", "a column",
                          ['op.add_column("users", sa.Column("nickname", sa.String(40)))'],
                          ['op.drop_column("users", "nickname")'])
    files["example/wsgi.py"] = HEALTH_BROKEN_WSGI
    files["deploy.toml"] = deploy_toml(fleet, broken_host=third.name)
    fleet.commit(files, "a release whose health check fails on m3")
    result = release(fleet, expect=1)
    assert "m3" in result.stderr and "health" in result.stderr, result.stderr[-3000:]
    # Every host back: code, images, schema.
    assert {m.name: fleet.head(m) for m in fleet.machines} == heads
    assert fleet.revision() == revision_before
    assert fleet.sql("SELECT count(*) FROM users") == users_before
    for machine in fleet.machines:
        assert fleet.images(machine) == images[machine.name], machine.name
        status, body = fleet.get(machine)
        assert status == 200 and json.loads(body)["revision"] == revision_before[0], (machine.name, body)
        record = fleet.journal(machine)[-1]
        assert record["outcome"] == "failed" and record["recovery"], (machine.name, record)
