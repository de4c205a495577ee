"""deployer.db.locks: the PGOPTIONS a migration runs with, and how a blocker is described (pure)."""

from __future__ import annotations

import pytest

from deployer.db.locks import Blocker, pgoptions, timed_out


@pytest.mark.parametrize(
    ("existing", "seconds", "expected"),
    [
        (None, 10, "-c lock_timeout=10000"),
        ("", 2.5, "-c lock_timeout=2500"),
        ("-c search_path=app", 1, "-c search_path=app -c lock_timeout=1000"),
        ("-c statement_timeout=0 ", 0.0004, "-c statement_timeout=0 -c lock_timeout=1"),  # never 0 (= no limit)
        ("-c search_path=app", 0, None),  # 0: no limit, nothing added, the app's own options untouched
    ],
)
def test_pgoptions(existing: str | None, seconds: float, expected: str | None) -> None:
    assert pgoptions(existing, seconds) == expected


def test_a_lock_timeout_is_told_from_other_failures() -> None:
    psycopg = ('sqlalchemy.exc.OperationalError: (psycopg2.errors.LockNotAvailable) canceling statement due to lock '
               'timeout\n[SQL: ALTER TABLE recipes ADD COLUMN rating INTEGER]')
    assert timed_out(psycopg)
    assert not timed_out("psycopg2.errors.QueryCanceled: canceling statement due to statement timeout")
    assert not timed_out('relation "recipes" does not exist')


def test_a_blocker_names_what_to_end() -> None:
    idle = Blocker(4242, "idle in transaction", "app", "psql", "10.0.0.7", 754.2, "UPDATE recipes SET title = 'x'", "recipes")
    assert idle.describe() == ("pid 4242 (idle in transaction for 12m34s; user app, application 'psql', from 10.0.0.7) "
                               "on recipes, last query: UPDATE recipes SET title = 'x'")
    busy = Blocker(7, "active", "", "", "local", None, "", "")
    assert busy.describe() == "pid 7 (active; from local), query: (none)"
    assert "for 2h05m" in Blocker(1, "idle in transaction", "", "", "local", 7500, "x").describe()
