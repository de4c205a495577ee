"""A failed migration says why, in ``deployer release`` and in ``deployer history``.

The example app, with its alembic.ini changed the way many real ones are: the
``[loggers]`` section does not name ``flask_migrate``, so env.py's ``fileConfig()``
disables that logger (``disable_existing_loggers``). A migration then raises a
``RuntimeError``; Flask-Migrate's ``catch_errors`` logs it to the disabled logger and
exits 1, so ``flask db upgrade`` alone prints only INFO lines. The release must still
fail, recover, and show the error text to the user and in the journal.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.bench.cli import result as result_of
from tests.bench.deployment import EXAMPLE_HEAD, Deployment, add_migration
from tests.bench.gitrepos import REPO_ROOT

pytestmark = pytest.mark.e2e

R_SILENT = "c0ffee000001"
REASON = "backfill needs recipes.rating_count, which this database does not have"


def silencing_alembic_ini() -> str:
    """The example's alembic.ini without its flask_migrate logger, as `flask db init` of some versions writes it."""
    ini = (REPO_ROOT / "example" / "migrations" / "alembic.ini").read_text()
    ini = ini.replace("keys = root,sqlalchemy,alembic,flask_migrate", "keys = root,sqlalchemy,alembic")
    ini = re.sub(r"\[logger_flask_migrate\]\n(?:[^\[\n][^\n]*\n|\n)*", "", ini)
    assert "flask_migrate" not in ini and "[logger_alembic]" in ini
    return ini


@pytest.fixture(scope="module", params=["ssh", "local"])
def deployment(request: pytest.FixtureRequest, deployment_factory) -> Deployment:
    d = deployment_factory(request.param, health_timeout=25)
    d.release()
    return d


def cli(d: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    result = d.deployer(*args)
    # deployer's own errors are one message; a migration's traceback is quoted indented
    assert not re.search(r"^Traceback", result.stderr, re.MULTILINE), result.stderr
    return result


def test_a_migration_error_hidden_by_the_apps_logging_config_is_shown(deployment: Deployment) -> None:
    d = deployment
    assert d.revision() == (EXAMPLE_HEAD,)
    d.commit(
        {
            "example/migrations/alembic.ini": silencing_alembic_ini(),
            **add_migration(R_SILENT, EXAMPLE_HEAD, "Backfill ratings",
                            ["op.add_column('recipes', sa.Column('rating', sa.Integer(), nullable=True))",
                             f"raise RuntimeError({REASON!r})"],
                            ["op.drop_column('recipes', 'rating')"]),
        },
        "a migration that fails behind a silenced logger",
    )

    release = cli(d, "release", d.env_name, "--yes")
    output = release.stdout + release.stderr
    assert release.returncode == 1, output
    assert "failed at step `migrate`" in output and "recovered" in output
    assert REASON in output, output

    # nothing changed for the users of the site
    assert d.revision() == (EXAMPLE_HEAD,)
    assert "rating" not in {row[0] for row in d.sql(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'recipes'")}
    assert d.wait_answer("/health")[0] == 200

    # the journal says why, in both forms of `deployer history`
    history = cli(d, "history", d.env_name)
    assert history.returncode == 0, history.stderr
    newest = history.stdout.splitlines()[1:3]
    assert "failed" in newest[0] and REASON in "\n".join(newest), history.stdout
    as_json = cli(d, "history", d.env_name, "--json")
    record = result_of(as_json.stdout)["entries"][0]
    assert record["outcome"] == "failed" and REASON in record["error"], record["error"]
