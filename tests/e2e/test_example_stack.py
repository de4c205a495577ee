"""The example stack (docker-compose.prod.yml + example/) on the real engine with the bench images.

One stack is built for the whole module: up --wait, migrate in a one-off web container,
write through PostgreSQL, read through the web page, step the schema down and up again.
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, Engine
from sqlalchemy.pool import NullPool

from deployer.db.migrations import script_heads
from tests.bench.docker import REPO_ROOT, ComposeStack

pytestmark = pytest.mark.e2e

MIGRATIONS_DIR = REPO_ROOT / "example" / "migrations"
DESSERT = "Crème brûlée 🍮"
INSPIRATION = "Pâtisserie in Lyon — 1691"


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    body: str

    def json(self) -> dict[str, object]:
        return json.loads(self.body)


def http_get(url: str, timeout: float = 5) -> HttpAnswer:
    """GET that returns error statuses instead of raising (connection errors still raise)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return HttpAnswer(response.status, response.read().decode("utf-8"))
    except urllib.error.HTTPError as error:
        return HttpAnswer(error.code, error.read().decode("utf-8", "replace"))


def wait_for_status(url: str, status: int, deadline_s: float = 60) -> HttpAnswer:
    """Poll `url` until it answers `status`; fail with the last answer or error otherwise."""
    deadline = time.monotonic() + deadline_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            answer = http_get(url)
            if answer.status == status:
                return answer
            last = answer
        except OSError as exc:  # refused / reset while the server (re)starts
            last = exc
        time.sleep(0.5)
    pytest.fail(f"{url} did not answer {status} within {deadline_s:.0f}s; last: {last!r}", pytrace=False)


def head_revision() -> str:
    heads = script_heads(str(MIGRATIONS_DIR))
    assert len(heads) == 1, f"example/migrations should have one head, has {heads}"
    return heads[0]


def previous_revision(revision: str) -> str:
    """The revision one step below `revision` in example/migrations (read with alembic)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    down = ScriptDirectory.from_config(config).get_revision(revision).down_revision
    assert isinstance(down, str), f"{revision} should have exactly one parent, has {down!r}"
    return down


def database_revisions(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return sorted(connection.execute(text("SELECT version_num FROM alembic_version")).scalars())


def recipe_columns(engine: Engine) -> set[str]:
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT column_name FROM information_schema.columns WHERE table_name = 'recipes'")
        )
        return set(rows.scalars())


@pytest.fixture(scope="module")
def stack(module_compose_stack: Callable[..., ComposeStack]) -> ComposeStack:
    """The example stack, built from the working tree and up (both services healthy)."""
    # A version nobody else builds: /health then proves this build answers.
    stack = module_compose_stack(APP_VERSION=f"e2e-{secrets.token_hex(4)}")
    stack.compose("up", "-d", "--build", "--wait", timeout=600)
    return stack


@pytest.fixture(scope="module")
def db(stack: ComposeStack) -> Iterator[Engine]:
    """SQLAlchemy (psycopg2) straight to the db container on the project network."""
    url = URL.create(
        "postgresql+psycopg2",
        username="recipes",
        password=stack.db_password,
        host=stack.container_ip("db"),
        port=5432,
        database="recipes",
    )
    engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 10})
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def migrated(stack: ComposeStack) -> str:
    """Run `flask db upgrade` in a one-off web container, as deployer does; returns its output."""
    result = stack.compose("run", "--rm", "web", "flask", "db", "upgrade", timeout=300)
    return result.stdout + result.stderr


def test_health_answers_on_loopback_with_the_built_version(stack: ComposeStack) -> None:
    answer = wait_for_status(stack.url("/health"), 200)
    body = answer.json()
    assert body["status"] == "ok"
    assert body["version"] == stack.env["APP_VERSION"]


def test_upgrade_in_one_off_container_brings_database_to_head(
    stack: ComposeStack, db: Engine, migrated: str
) -> None:
    head = head_revision()
    assert f"-> {head}" in migrated, migrated
    assert database_revisions(db) == [head]
    assert "inspiration" in recipe_columns(db)
    # The running web container sees the same database and reports the revision.
    assert wait_for_status(stack.url("/health"), 200).json()["revision"] == head


def test_non_ascii_recipe_written_to_postgres_is_listed_on_the_page(
    stack: ComposeStack, db: Engine, migrated: str
) -> None:
    with db.begin() as connection:
        user_id = connection.execute(
            text("INSERT INTO users (email, name) VALUES (:email, :name) RETURNING id"),
            {"email": "zoe@example.test", "name": "Zoë Ångström"},
        ).scalar_one()
        connection.execute(
            text(
                "INSERT INTO recipes (recipe_title, recipe_description, is_public, inspiration, user_id)"
                " VALUES (:title, :description, true, :inspiration, :user_id)"
            ),
            {"title": DESSERT, "description": "Custard, caramel.", "inspiration": INSPIRATION, "user_id": user_id},
        )
    page = wait_for_status(stack.url("/"), 200)
    assert DESSERT in page.body
    assert f"Inspired by {INSPIRATION}" in page.body
    assert "Zoë Ångström" in page.body


def test_downgrade_one_step_and_upgrade_again_keeps_the_rows(
    stack: ComposeStack, db: Engine, migrated: str
) -> None:
    head = head_revision()
    below = previous_revision(head)
    with db.begin() as connection:
        connection.execute(
            text("INSERT INTO recipes (recipe_title, recipe_description, is_public) VALUES (:t, 'x', false)"),
            {"t": "Soupe à l'oignon"},
        )
        titles_before = sorted(connection.execute(text("SELECT recipe_title FROM recipes")).scalars())

    stack.compose("run", "--rm", "web", "flask", "db", "downgrade", timeout=300)
    assert database_revisions(db) == [below]
    assert "inspiration" not in recipe_columns(db)
    # The code expects the column: the page must fail rather than show stale data.
    assert wait_for_status(stack.url("/"), 500).status == 500
    assert wait_for_status(stack.url("/health"), 200).json()["revision"] == below

    stack.compose("run", "--rm", "web", "flask", "db", "upgrade", timeout=300)
    assert database_revisions(db) == [head]
    with db.connect() as connection:
        assert sorted(connection.execute(text("SELECT recipe_title FROM recipes")).scalars()) == titles_before
    page = wait_for_status(stack.url("/"), 200)
    assert "Soupe à l&#39;oignon" in page.body or "Soupe à l'oignon" in page.body
