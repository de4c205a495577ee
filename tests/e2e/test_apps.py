"""Apps that are not ours, released with the real ``deployer``, over SSH or locally.

Every app of tests/apps/ (see tests/bench/apps.py) runs the same story, asserting what its
team would check after each command (but a shape whose shape.toml names a story module of
its own: the guestbook on MariaDB, tests/e2e/test_mysql.py):

1. first release to an empty server: the page answers, the database is at head, status in sync;
2. rows written through the app's form and with SQL, both on the page;
3. a code-only release: backup and migrate skipped, the new code answers, rows the same;
4. a migrating release: the new head, every row kept, a backup restore-verified in a
   throwaway container of the app's own database image, the new feature;
5. ``deployer rollback``: the old schema and the previous code back, every row intact;
6. a broken migration: exit 1, the revision and the code as before, rows intact, page answers;
7. (some shapes) more: a release whose health command fails is put back;
8. deployer's own files (journal, lock, secrets, backups) are outside the checkout.

And a first release whose migration fails leaves the server as it found it (exit 1).

One test per app, over SSH and locally in turn, each on its own project, port and
directories, grouped so pytest-xdist spreads them over its workers.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.bench.apps import AppDeployment, Story, app_names

pytestmark = pytest.mark.e2e

# Each shape once, over SSH and on this machine in turn: what differs between apps is their
# shape, not the transport (the same steps over either: tests/e2e/test_release.py runs the
# whole release both ways), and a story costs one to two minutes of the suite.
STORIES = [
    pytest.param(app, kind, id=f"{app}-{kind}", marks=[pytest.mark.xdist_group(f"app-{app}-{kind}"), pytest.mark.timeout(900)])
    for number, app in enumerate(app_names())
    for kind in (("ssh", "local")[number % 2],)
]


def step_statuses(result: dict) -> dict[str, str]:
    return {s["name"]: s["status"] for s in result.get("steps", [])}


def assert_serves(d: AppDeployment, *present: str, absent: tuple[str, ...] = ()) -> str:
    """The database page answers 200 for a signed-in user, with (and without) these texts."""
    status, body = d.page()
    assert status == 200, f"{d.shape.page} answered {status}:\n{body[:1500]}\n{d.logs()}"
    for text in present:
        assert text in body, f"{text!r} is not on {d.shape.page}:\n{body[:2000]}"
    for text in absent:
        assert text not in body, f"{text!r} is still on {d.shape.page}:\n{body[:2000]}"
    return body


@pytest.mark.parametrize(("app", "kind"), STORIES)
def test_story(app: str, kind: str, app_deployment_factory, record_property) -> None:  # noqa: ANN001 (fixtures)
    d: AppDeployment = app_deployment_factory(app, kind)
    shape = d.shape
    story = Story(f"{app}/{kind}", d)
    commits: dict[str, str] = {"first": d.head()}

    with story.step("first release"):
        result = d.release()
        assert result["outcome"] == "succeeded"
        assert d.server_head() == result["commit"] == commits["first"]
        assert tuple(result["revision_after"]) == shape.heads_first
        assert d.revision() == shape.heads_first
        assert_serves(d)
        if shape.login_path:
            # every page that reads the database sends a stranger to the sign-in page
            import urllib.request

            class Stay(urllib.request.HTTPRedirectHandler):
                def redirect_request(self, *args, **kwargs):  # noqa: ANN002, ANN003
                    return None

            status, _, headers = d.request(shape.page, opener=urllib.request.build_opener(Stay()))
            assert status in (302, 303) and shape.login_path in headers.get("Location", ""), (status, headers)
        code, doc = d.status()
        assert code == 0 and doc["verdict"] == "up to date", doc
        assert not d.lock_held()

    with story.step("rows written through the app and with SQL"):
        status, body = d.post_form()
        assert status == 200 and shape.form_shown in body, body[:2000]
        d.sql(shape.rows_insert)
        assert_serves(d, shape.form_shown, shape.rows_shown)
        if shape.worker_done:
            # the worker (the same image as web) picks the new rows up
            d.wait_page(f"{shape.form_shown} {shape.worker_done}")
        rows = d.rows()
        assert len(rows) == 2, rows

    with story.step("code-only release"):
        commits["code"] = d.apply("code")
        web_before = d.containers()[shape.web_service][0]["image"]
        result = d.release()
        statuses = step_statuses(result)
        assert statuses.get("backup") == "skipped" and statuses.get("migrate") == "skipped", statuses
        assert result.get("backup") is None
        assert d.server_head() == commits["code"]
        assert d.revision() == shape.heads_first
        assert d.containers()[shape.web_service][0]["image"] != web_before, "the web container still runs the old image"
        assert_serves(d, shape.code_marker, shape.form_shown, shape.rows_shown)
        assert d.rows() == rows

    with story.step("migrating release"):
        commits["migrate"] = d.apply("migrate")
        result = d.release()
        assert tuple(result["revision_before"]) == shape.heads_first
        assert tuple(result["revision_after"]) == shape.heads_migrate
        statuses = step_statuses(result)
        assert statuses.get("backup") == "ok" and statuses.get("migrate") == "ok", statuses
        assert result.get("backup"), "no backup was recorded before the migration"
        # once recorded, that backup was restored into a throwaway container of the app's own
        # database image: its revision and every table's rows as dumped
        verified = result["backup_verification"]
        assert verified["state"] == "verified", verified
        assert tuple(verified["revision"]) == shape.heads_first and verified["tables"], verified
        assert d.revision() == shape.heads_migrate
        assert d.rows() == rows, "rows changed across the migration"
        assert_serves(d, shape.migrate_marker, shape.code_marker, shape.form_shown, shape.rows_shown)
        if shape.worker_done:
            new = "Rotate the keys"
            d.request(shape.form_path, {**shape.form_fields, "title": new}, opener=d.browser())
            body = d.wait_page(f"{new} {shape.worker_done}")
            # the new worker (new image) records the time: the new schema's column
            assert re.search(rf"{new} \[done\] finished at: \d{{4}}-", body), body[:2000]
            d.sql(f"DELETE FROM tasks WHERE title = '{new}'")
        code, doc = d.status()
        assert code == 0 and doc["verdict"] == "up to date", doc

    with story.step("rollback to the previous release"):
        result = d.rollback()
        assert result["outcome"] == "succeeded"
        assert d.revision() == shape.heads_first
        assert d.server_head() == commits["code"]
        assert d.rows() == rows, "rows changed across the rollback"
        assert_serves(d, shape.code_marker, shape.form_shown, absent=(shape.migrate_marker,))
        assert not d.lock_held()

    with story.step("a broken migration is recovered"):
        before_containers = sorted(d.containers())
        d.apply("broken")
        result = d.release(expect=1)
        assert "migrat" in result["stderr"].lower(), result["stderr"]
        assert d.revision() == shape.heads_first
        assert d.server_head() == commits["code"]
        assert d.rows() == rows, "rows changed by the failed release"
        assert sorted(d.containers()) == before_containers
        assert_serves(d, shape.code_marker, shape.form_shown, absent=(shape.migrate_marker,))
        assert not d.lock_held()
        newest = d.history()[0]
        assert newest["kind"] == "release" and newest["outcome"] != "succeeded", newest

    if shape.bad_health_step:
        with story.step("a release whose health command fails is recovered"):
            d.revert("broken")
            d.apply(shape.bad_health_step)
            result = d.release(expect=1)
            assert "health" in result["stderr"].lower(), result["stderr"]
            assert d.revision() == shape.heads_first
            assert d.server_head() == commits["code"]
            assert d.rows() == rows
            assert_serves(d, shape.code_marker, absent=(shape.migrate_marker,))
            assert not d.lock_held()

    with story.step("deployer's files live outside the checkout"):
        assert not (d.server_path / ".deployer").exists(), "deployer's state is inside the checkout (the build context)"
        state = Path(f"{d.server_path}.deployer")
        assert state.is_dir(), f"no state directory beside the checkout at {state}"
        # nothing untracked (env file, backups, journal) sits in the build context of `COPY . .`
        untracked = d.server_git("status", "--porcelain", "--ignored", "--untracked-files=all")
        assert untracked.strip() == "", untracked
        # the journal, newest first: the failed release(s), the rollback, three releases
        journal = [(e["kind"], e["outcome"]) for e in d.history()]
        failed = 2 if shape.bad_health_step else 1
        assert [outcome != "succeeded" for _, outcome in journal[:failed]] == [True] * failed, journal
        assert journal[failed:] == [("rollback", "succeeded")] + [("release", "succeeded")] * 3, journal

    print(story.report())
    record_property("story", story.report())


@pytest.mark.parametrize(
    "kind", [pytest.param(k, marks=[pytest.mark.xdist_group(f"first-fails-{k}"), pytest.mark.timeout(900)]) for k in ("ssh", "local")]
)
def test_a_failing_first_release_leaves_the_server_as_found(kind: str, app_deployment_factory) -> None:  # noqa: ANN001
    d: AppDeployment = app_deployment_factory("tasks", kind)
    d.apply("migrate")
    d.apply("broken")  # the very first release carries a migration that fails
    result = d.release(expect=1)  # 1: the server is as before; 5 would mean "left half-done"
    assert "migrat" in result["stderr"].lower(), result["stderr"]
    assert d.project_containers(all=True) == [], f"containers left after a failed first release:\n{d.logs()}"
    assert not d.lock_held()
    (newest,) = d.history()
    assert newest["kind"] == "release" and newest["outcome"] != "succeeded", newest

    d.revert("broken")
    result = d.release()
    assert result["outcome"] == "succeeded"
    assert d.revision() == d.shape.heads_migrate
    status, body = d.post_form()
    assert status == 200 and d.shape.form_shown in body
