"""``deployer release`` end to end: the real command, engine, compose, sshd and PostgreSQL.

The same story runs over SSH (host alias from ~/.ssh/config) and with ``host = "local"``:
first release to an empty server; a commit with a migration (rows kept, journal has both);
a commit without one (backup and migrate skipped); a migration that raises; a health check
that never passes; a concurrent release refused by the lock; a dry run that changes nothing.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time

import pytest

from tests.bench.cli import result as result_of
from tests.bench.deployment import BROKEN_HEALTH_WSGI, EXAMPLE_HEAD, Deployment, add_migration
from tests.bench.gitrepos import REPO_ROOT
from tests.bench.terminal import ESCAPE, Terminal

pytestmark = pytest.mark.e2e

R_RATINGS = "a1b2c3d4e5f6"
R_BROKEN = "b2c3d4e5f6a7"
R_TAGS = "c3d4e5f6a7b8"



@pytest.fixture(scope="module", params=["ssh", "local"])
def deployment(request: pytest.FixtureRequest, deployment_factory) -> Deployment:
    return deployment_factory(request.param, health_timeout=25)


def state(d: Deployment) -> dict:
    """What a user would compare before and after: code, containers, schema, rows, journal."""
    return {
        "head": d.server_head(),
        "containers": d.containers(),
        "revision": d.revision(),
        "users": d.sql("SELECT id, email, name FROM users ORDER BY id"),
        "recipes": d.sql("SELECT * FROM recipes ORDER BY id"),
        "journal": len(d.journal()),
        "lock": d.lock_held(),
    }


def project_images(d: Deployment) -> list[str]:
    """Every tag of the app's web image, with the image it names."""
    out = subprocess.run(
        ["docker", "images", "--no-trunc", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}", f"{d.name}-web"],
        capture_output=True, text=True, check=True,
    ).stdout
    return sorted(out.splitlines())


def test_first_release_to_an_empty_server(deployment: Deployment) -> None:
    d = deployment
    result = d.release()
    assert result["outcome"] == "succeeded"
    assert d.server_head() == result["commit"] == d.origin.head()
    assert d.revision() == (EXAMPLE_HEAD,)
    status, body = d.get("/health")
    assert status == 200 and EXAMPLE_HEAD in body
    assert d.get("/")[0] == 200
    (record,) = d.journal()
    assert record["outcome"] == "succeeded" and record["revision_after"] == [EXAMPLE_HEAD]
    assert record["revision_before"] == [] and record["backup"] is None
    assert not d.lock_held()
    # the secret went to the host in a 0600 env file, never into the journal
    env_file = d.state_path / "compose.env"
    assert env_file.stat().st_mode & 0o777 == 0o600
    assert d.password not in (d.state_path / "journal.jsonl").read_text()


def test_release_with_a_migration_keeps_every_row(deployment: Deployment) -> None:
    d = deployment
    d.sql("INSERT INTO users (email, name) VALUES ('ana@example.com', 'Ana'), ('bo@example.com', 'Bø')")
    d.sql(
        "INSERT INTO recipes (recipe_title, recipe_description, is_public, user_id, inspiration) "
        "SELECT 'Crème brûlée 🍮', 'custard', true, id, 'Paris' FROM users"
    )
    before = state(d)
    sha = d.commit(
        add_migration(R_RATINGS, EXAMPLE_HEAD, "Add ratings to recipes",
                      ["op.add_column('recipes', sa.Column('rating', sa.Integer(), nullable=True))"],
                      ["op.drop_column('recipes', 'rating')"]),
        "add a rating column",
    )
    result = d.release()
    assert result["commit"] == sha and d.server_head() == sha
    assert result["revision_before"] == [EXAMPLE_HEAD] and result["revision_after"] == [R_RATINGS]
    assert d.revision() == (R_RATINGS,)
    assert d.sql("SELECT id, email, name FROM users ORDER BY id") == before["users"]
    rows = d.sql("SELECT id, recipe_title, recipe_description, is_public, user_id, inspiration, rating FROM recipes ORDER BY id")
    assert [row[:6] for row in rows] == [tuple(r[:6]) for r in before["recipes"]] and len(rows) == 2
    assert all(row[6] is None for row in rows)
    assert "Crème brûlée 🍮" in d.get("/")[1]
    journal = d.journal()
    assert [r["outcome"] for r in journal] == ["succeeded", "succeeded"]
    steps = {s["name"]: s["status"] for s in journal[-1]["steps"]}
    assert steps["backup"] == "ok" and steps["migrate"] == "ok"
    # the pre-migration backup exists, with its description, readable only by its owner
    backup_id = journal[-1]["backup"]
    dump = d.backup_path / f"{backup_id}.dump"
    assert dump.stat().st_size > 0 and dump.stat().st_mode & 0o777 == 0o600
    assert json.loads((d.backup_path / f"{backup_id}.json").read_text())["revision"] == [EXAMPLE_HEAD]


def test_release_without_migration_skips_backup_and_migrate(deployment: Deployment) -> None:
    d = deployment
    sha = d.commit({"example/CHANGES.txt": "a code-only change\n"}, "code only")
    result = d.release()
    steps = {s["name"]: s["status"] for s in result["steps"]}
    assert steps["backup"] == "skipped" and steps["migrate"] == "skipped"
    assert result["backup"] is None
    assert d.server_head() == sha and d.revision() == (R_RATINGS,)
    assert d.get("/health")[0] == 200


def test_a_release_with_nothing_to_do_stops_after_preflight(deployment: Deployment) -> None:
    d = deployment
    before = state(d)
    result = d.release()
    assert result["outcome"] == "unchanged" and result["exit_code"] == 0, result
    assert f"commit {before['head'][:12]} already runs as release" in result["unchanged"]
    assert "2 containers run healthy on the configuration a release would give them" in result["unchanged"]
    assert [s["name"] for s in result["steps"]] == ["preflight"]
    assert state(d) == before  # the same containers, no journal record, no lock left
    text = d.deployer("release", d.env_name, "--yes")
    assert text.returncode == 0 and text.stdout.startswith("nothing to do: commit "), text.stdout + text.stderr
    planned = d.deployer("release", d.env_name, "--dry-run")
    assert planned.returncode == 0 and "\nnothing to do: commit " in planned.stdout, planned.stdout
    assert " 2. " not in planned.stdout  # what the run does: nothing after preflight
    # While something holds the deploy lock the environment may be changing: no "nothing to do".
    holder = subprocess.Popen(["flock", "--close", str(d.state_path / "lock"), "sleep", "60"], start_new_session=True)
    try:
        time.sleep(0.5)
        busy = d.deployer("release", d.env_name, "--yes")
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # flock and its sleep
        holder.wait(10)
    assert busy.returncode == 4 and "nothing to do" not in busy.stdout + busy.stderr, busy.stdout + busy.stderr
    assert "locked" in busy.stderr
    # What a release would change, it does: deploy.toml's variables differ from the host's file...
    env_file = d.state_path / "compose.env"
    env_file.write_text(env_file.read_text() + "# edited on the host\n")
    changed = d.release()
    assert changed["outcome"] == "succeeded" and "sync" in [s["name"] for s in changed["steps"]]
    assert "# edited" not in env_file.read_text()  # written again by the release
    # ...and --force runs every step of an unchanged release.
    forced = d.release("--force")
    assert forced["outcome"] == "succeeded" and "health" in [s["name"] for s in forced["steps"]]
    assert len(d.journal()) == before["journal"] + 2
    assert d.get("/health")[0] == 200


def test_failing_migration_is_recovered(deployment: Deployment) -> None:
    d = deployment
    before = state(d)
    d.commit(
        add_migration(R_BROKEN, R_RATINGS, "Broken migration",
                      ["op.add_column('recipes', sa.Column('broken', sa.Integer()))", "op.execute('SELECT 1/0')"],
                      ["op.drop_column('recipes', 'broken')"]),
        "a migration that raises",
    )
    result = d.release(expect=1)
    assert "failed at step `migrate`" in result["stderr"] and "recovered" in result["stderr"]
    after = state(d)
    assert after["revision"] == before["revision"] == (R_RATINGS,)
    assert after["users"] == before["users"] and after["recipes"] == before["recipes"]
    assert after["head"] == before["head"]
    assert not after["lock"]
    assert d.get("/health")[0] == 200
    assert d.journal()[-1]["outcome"] == "failed" and "migration" in d.journal()[-1]["error"]
    # put the history back to a releasable state for the next tests
    d.commit({f"example/migrations/versions/{R_BROKEN}_broken_migration.py": None}, "drop the broken migration")


def test_health_that_never_passes_is_recovered(deployment: Deployment) -> None:
    d = deployment
    before = state(d)
    d.commit(
        {
            "example/wsgi.py": BROKEN_HEALTH_WSGI,
            **add_migration(R_TAGS, R_RATINGS, "Add tags to recipes",
                            ["op.add_column('recipes', sa.Column('tags', sa.String(), nullable=True))"],
                            ["op.drop_column('recipes', 'tags')"]),
        },
        "break /health and add a migration",
    )
    result = d.release(expect=1)
    assert "failed at step `health`" in result["stderr"], result["stderr"]
    assert "downgraded" in result["stderr"]
    after = state(d)
    # the migration ran and was undone with the new image; the old code answers again
    assert after["revision"] == (R_RATINGS,)
    assert after["users"] == before["users"] and after["recipes"] == before["recipes"]
    assert after["head"] == before["head"]
    assert not after["lock"]
    assert d.wait_answer("/health")[0] == 200
    assert d.get("/")[0] == 200
    record = d.journal()[-1]
    assert record["outcome"] == "failed" and "previous release answers" in record["recovery"]
    # mend /health; the next release ships it together with the tags migration
    d.commit({"example/wsgi.py": (REPO_ROOT / "example" / "wsgi.py").read_text()}, "mend /health")


def test_second_release_while_one_runs_is_refused(deployment: Deployment) -> None:
    d = deployment
    first = subprocess.Popen(
        d.deployer_argv("release", d.env_name, "--yes"), cwd=d.laptop, env=d.environ(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not d.lock_held() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if not d.lock_held():
            ended = first.poll() is not None
            said = first.communicate(timeout=600)[1] if ended else "(still running after 60 s)"
            raise AssertionError(f"the first release never took the lock (exit {first.returncode}):\n{said}")
        second = d.deployer("release", d.env_name, "--yes")
        assert second.returncode == 4, second.stderr
        assert "locked" in second.stderr and "held by" in second.stderr and "deployer lock status" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert not d.lock_held()
    assert d.revision() == (R_TAGS,) and d.get("/health")[0] == 200


def test_dry_run_changes_nothing(deployment: Deployment) -> None:
    d = deployment
    d.commit(
        add_migration("d4e5f6a7b8c9", R_TAGS, "Add servings",
                      ["op.add_column('recipes', sa.Column('servings', sa.Integer(), nullable=True))"],
                      ["op.drop_column('recipes', 'servings')"]),
        "add servings",
    )
    before = state(d)
    images = project_images(d)
    result = d.deployer("release", d.env_name, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "d4e5f6a7b8c9" in result.stdout and "Add servings" in result.stdout
    assert "nothing will change" in result.stdout and "flask db upgrade" in result.stdout
    assert state(d) == before
    assert project_images(d) == images
    # JSON plan, same facts
    plan = result_of(d.deployer("release", d.env_name, "--dry-run", "--json").stdout)
    assert [p["revision"] for p in plan["pending"]] == ["d4e5f6a7b8c9"]
    assert state(d) == before


def test_refusals_before_anything_changes(deployment: Deployment) -> None:
    d = deployment
    before = state(d)
    # a checkout edited by hand on the server
    readme = d.server_path / "README.md"
    original = readme.read_text()
    readme.write_text(original + "hotfix typed on the server\n")
    result = d.deployer("release", d.env_name, "--yes")
    assert result.returncode == 6 and "local changes" in result.stderr and "README.md" in result.stderr
    readme.write_text(original)
    assert state(d) == before

    # a destructive migration with no terminal and no --yes
    drop = add_migration("e5f6a7b8c9d0", "d4e5f6a7b8c9", "Drop inspiration",
                         ["op.drop_column('recipes', 'inspiration')"],
                         ["op.add_column('recipes', sa.Column('inspiration', sa.String(), nullable=True))"])
    d.commit(drop, "drop a column")
    result = d.deployer("release", d.env_name)
    assert result.returncode == 6, result.stderr
    assert "destructive" in result.stderr and "drop column recipes.inspiration" in result.stderr and "--yes" in result.stderr
    assert state(d) == before

    # two heads
    (path,) = drop
    second_head = add_migration("f6a7b8c9d0e1", "d4e5f6a7b8c9", "Another head",
                                ["op.add_column('users', sa.Column('nickname', sa.String(), nullable=True))"],
                                ["op.drop_column('users', 'nickname')"])
    d.commit({**second_head, path: drop[path].replace("op.drop_column('recipes', 'inspiration')", "pass")}, "a second head")
    result = d.deployer("release", d.env_name, "--yes")
    assert result.returncode == 6, result.stderr
    assert "2 migration heads" in result.stderr and "merge" in result.stderr
    assert state(d) == before
    d.commit({path: None, next(iter(second_head)): None}, "remove the extra heads")


def test_classic_playbook(deployment: Deployment) -> None:
    d = deployment
    before = state(d)
    result = d.release("--playbook", "classic")
    names = [s["name"] for s in result["steps"]]
    assert names.index("stop") < names.index("build") < names.index("up") < names.index("migrate")
    assert d.revision() == ("d4e5f6a7b8c9",)
    assert d.sql("SELECT id, email, name FROM users ORDER BY id") == before["users"]
    assert d.wait_answer("/health")[0] == 200


def test_ctrl_c_recovers_and_frees_the_lock(deployment: Deployment) -> None:
    d = deployment
    before = state(d)
    d.commit({"example/CHANGES.txt": "interrupted change\n"}, "a change to interrupt")
    process = subprocess.Popen(
        d.deployer_argv("release", d.env_name, "--yes"), cwd=d.laptop, env=d.environ(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )
    seen = []
    assert process.stderr is not None
    for line in process.stderr:
        seen.append(line)
        if line.startswith("> build"):
            process.send_signal(signal.SIGINT)
            break
    rest = process.communicate(timeout=600)[1]
    stderr = "".join(seen) + rest
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    after = state(d)
    assert not after["lock"]
    assert after["head"] == before["head"] and after["revision"] == before["revision"]
    assert after["users"] == before["users"]
    assert d.wait_answer("/health")[0] == 200
    record = d.journal()[-1]
    assert record["outcome"] == "failed" and "interrupted" in record["error"]


CUSTOM_PLAYBOOK = """
description = "the default order, with commands of our own"
[[steps]]
step = "preflight"
[[steps]]
step = "lock"
[[steps]]
step = "run"
name = "announce"
command = ["sh", "-c", "echo starting > run-step-marker"]
[[steps]]
step = "snapshot"
[[steps]]
step = "sync"
[[steps]]
step = "build"
[[steps]]
step = "run"
name = "smoke-test the new image"
command = "python3 -c 'import recipes, sys; sys.exit(0)'"
service = "web"
[[steps]]
step = "database_up"
[[steps]]
step = "backup"
[[steps]]
step = "migrate"
[[steps]]
step = "up"
[[steps]]
step = "verify"
[[steps]]
step = "health"
timeout = 90
[[steps]]
step = "record"
"""


def test_custom_playbook_with_run_steps(deployment: Deployment) -> None:
    d = deployment
    sha = d.commit({"playbooks/custom.toml": CUSTOM_PLAYBOOK}, "our own playbook")
    result = d.release("--playbook", "custom")
    labels = [s["name"] for s in result["steps"]]
    assert labels[2] == "announce" and "smoke-test the new image" in labels
    assert all(s["status"] in ("ok", "skipped") for s in result["steps"])
    assert (d.server_path / "run-step-marker").read_text() == "starting\n"
    assert d.server_head() == sha
    # a mistake in a playbook is refused with its own message before anything runs
    d.commit({"playbooks/custom.toml": CUSTOM_PLAYBOOK.replace('step = "health"', 'step = "helth"')}, "typo")
    result = d.deployer("release", d.env_name, "--playbook", "custom", "--yes")
    assert result.returncode == 2 and "unknown step 'helth' (did you mean 'health'?)" in result.stderr


SPINNER = re.compile(r"^[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏] (\S[^\n]*?)  \d+\.\ds$", re.MULTILINE)


def test_live_output_in_a_terminal_plain_lines_elsewhere(deployment: Deployment, terminal: Terminal) -> None:
    d = deployment
    d.commit({"example/CHANGES.txt": "a release watched in a terminal\n"}, "a change to watch")
    terminal.run(d, "release", d.env_name, "--yes")
    running: set[str] = set()  # the steps the spinner showed, with their elapsed time
    deadline = time.monotonic() + 600
    while "deployer-exited=" not in (screen := terminal.screen()) and time.monotonic() < deadline:
        running.update(SPINNER.findall(screen))
        time.sleep(0.05)
    assert terminal.exit_code() == 0, screen
    assert running & {"build", "swap", "health"}, f"no spinner seen; last screen:\n{screen}"
    coloured = terminal.screen(escapes=True)
    assert re.search(r"\x1b\[[0-9;]*32m✓", coloured), coloured  # a green ✓
    assert re.search(r"\x1b\[[0-9;]*32mreleased ", coloured), coloured  # the outcome, green
    lines = screen.splitlines()
    assert lines.count(next(line for line in lines if line.startswith("✓ build "))) == 1  # each message once
    assert not [line for line in lines if line.startswith("> ")]  # a start is the spinner, not a line

    # status on the terminal: the verdict in colour; piped: the same words, no escape code
    terminal.run(d, "status", d.env_name)
    assert terminal.exit_code() == 0
    verdict = next(line for line in terminal.screen(escapes=True).splitlines() if "verdict" in line)
    assert re.search(r"\x1b\[[0-9;]*32mup to date at ", verdict), verdict
    piped = d.deployer("status", d.env_name)
    assert piped.returncode == 0 and "\x1b" not in piped.stdout + piped.stderr
    assert "  verdict    up to date at " in piped.stdout and "up to date: up to date" not in piped.stdout

    # a plan on a terminal: long commands cut at its width, pasted still one command
    terminal.run(d, "release", d.env_name, "--dry-run", "--force")
    assert terminal.exit_code() == 0
    lines = terminal.screen().splitlines()  # lines the terminal itself wrapped are joined again
    assert max(len(line.rstrip()) for line in lines) <= terminal.width, "\n".join(lines)
    first = next(i for i, line in enumerate(lines) if line.startswith("      $ docker compose "))
    assert lines[first].endswith(" \\"), lines[first:first + 6]  # nothing after the "\\": pasted, it joins
    assert lines[first + 1].startswith(" " * 12) and lines[first + 1][12] != " ", lines[first:first + 6]
    last = next(i for i in range(first, len(lines)) if not lines[i].endswith(" \\"))
    pasted = "\n".join(lines[first:last + 1]).removeprefix("      $ ")
    piped_plan = d.deployer("release", d.env_name, "--dry-run", "--force").stdout
    one_line = next(line for line in piped_plan.splitlines() if line.startswith("      $ docker compose "))
    # what a shell reads (a "\\" before a line break continues the line): the same words
    assert shlex.split(pasted.replace("\\\n", " ")) == shlex.split(one_line.removeprefix("      $ ")), (pasted, one_line)

    # NO_COLOR on a terminal: plain lines, as in a pipe
    terminal.run(d, "release", d.env_name, "--dry-run", "--force", extra_env={"NO_COLOR": "1"})
    assert terminal.exit_code() == 0
    plain = terminal.screen(escapes=True)
    assert "release plan for" in plain and not ESCAPE.search(plain), plain[:2000]


READ_ROW = ("from recipes import create_app; from recipes.models import db; app = create_app(); app.app_context().push(); "
            "print(db.session.execute(db.text(\"SELECT email, name FROM users WHERE email = 'ana@example.com'\")).one())")


def deployer_tags(d: Deployment) -> set[str]:
    return {line.split()[0] for line in project_images(d) if ":deployer-" in line}


def test_exec_logs_and_images_prune(deployment: Deployment, terminal: Terminal) -> None:
    d = deployment
    # exec: a one-off container of the running image reads the database
    read = d.deployer("exec", d.env_name, "--", "python3", "-c", READ_ROW)
    assert read.returncode == 0, read.stderr
    assert "('ana@example.com', 'Ana')" in read.stdout
    assert d.deployer("exec", d.env_name, "--", "sh", "-c", "exit 7").returncode == 7  # its exit status
    piped = subprocess.run(d.deployer_argv("exec", d.env_name, "--", "python3", "-"), cwd=d.laptop, env=d.environ(),
                           input="print(6 * 7)\n", capture_output=True, text=True, timeout=300)
    assert piped.returncode == 0 and piped.stdout.strip() == "42", piped.stderr
    # flask shell, interactively, on a terminal
    terminal.run(d, "exec", d.env_name, "--", "flask", "shell")
    terminal.wait_for(">>> ")
    terminal.send('print(db.session.execute(db.text("SELECT name FROM users ORDER BY id")).first())', "Enter")
    terminal.wait_for("('Ana',)")
    terminal.send("exit(3)", "Enter")
    assert terminal.exit_code() == 3
    oneoff = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={d.name}",
                             "--filter", "label=com.docker.compose.oneoff=True"], capture_output=True, text=True, check=True)
    assert oneoff.stdout.strip() == ""  # every one-off container was removed

    # logs: the web service's lines; a follow ends cleanly with Ctrl-C
    logs = d.deployer("logs", d.env_name, "web", "--since", "1h")
    assert logs.returncode == 0 and "web-1  | " in logs.stdout and "GET /health" in logs.stdout, logs.stderr
    follow = subprocess.Popen(d.deployer_argv("logs", d.env_name, "web", "--follow", "--tail", "1"), cwd=d.laptop,
                              env=d.environ(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              stdin=subprocess.DEVNULL, start_new_session=True)
    assert follow.stdout is not None and "web-1  | " in follow.stdout.readline()
    follow.send_signal(signal.SIGINT)
    out, err = follow.communicate(timeout=60)
    assert follow.returncode == 0 and "Traceback" not in err, err
    time.sleep(1)
    left = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert not [line for line in left.splitlines() if d.name in line and " logs " in line], left

    # exec and logs take no deploy lock; prune does
    holder = subprocess.Popen(["flock", "--close", str(d.state_path / "lock"), "sleep", "60"], start_new_session=True)
    try:
        time.sleep(0.5)
        assert d.deployer("exec", d.env_name, "--", "true").returncode == 0
        assert d.deployer("logs", d.env_name, "--tail", "1").returncode == 0
        locked = d.deployer("images", "prune", d.env_name)
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(10)
    assert locked.returncode == 4 and "locked" in locked.stderr, locked.stderr

    # prune: every release pruned after itself, keeping exactly what a rollback within the
    # newest five needs
    succeeded = [r["id"] for r in d.journal() if r["kind"] == "release" and r["outcome"] == "succeeded"]
    assert len(succeeded) > 5
    assert deployer_tags(d) == {f"{d.name}-web:deployer-{rid}" for rid in succeeded[-5:]}
    planned = d.deployer("images", "prune", d.env_name, "--keep", "2", "--dry-run")
    assert planned.returncode == 0 and planned.stdout.count("would remove") == 3, planned.stdout
    assert deployer_tags(d) == {f"{d.name}-web:deployer-{rid}" for rid in succeeded[-5:]}  # a dry run removes nothing
    pruned = result_of(d.deployer("images", "prune", d.env_name, "--keep", "2", "--json").stdout)
    assert len(pruned["hosts"][0]["removed"]) == 3
    assert deployer_tags(d) == {f"{d.name}-web:deployer-{rid}" for rid in succeeded[-2:]}
    # and a rollback afterwards puts the kept images back (no rebuild)
    back = result_of(d.deployer("rollback", d.env_name, "previous", "--yes", "--json").stdout)
    assert back["outcome"] == "succeeded"
    switch = next(s for s in back["steps"] if s["name"] == "switch")
    assert f"saved images {d.name}-web:deployer-{succeeded[-2]}" in switch["detail"] and "rebuilt" not in switch["detail"]
    assert d.wait_answer("/health")[0] == 200
