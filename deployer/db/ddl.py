"""Which statements of the pending migrations MySQL/MariaDB commit on their own.

MySQL has no transactional DDL: ``CREATE``, ``ALTER``, ``DROP``, ``RENAME`` and ``TRUNCATE``
each commit at once, and commit the transaction open before them. alembic still wraps each
migration in a transaction, but on MySQL it holds only the data statements. So a migration
that fails after its first DDL statement leaves what ran before the failure applied — a
half-applied schema — while ``alembic_version`` still names the migration before it.
PostgreSQL (and SQLite's transactional DDL through alembic) roll the whole migration back.

The release gate says which pending statements these are, per revision: from the
migrations' operations in preflight (and a dry run), from the SQL rendered in the new image
once it is built. What a failure then does: :mod:`deployer.steps.migrate` restores the
pre-upgrade backup instead of trusting the revision or downgrading.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# Statements that commit at once (an implicit commit).
_DDL = re.compile(r"(?:CREATE|ALTER|DROP|RENAME|TRUNCATE)\b", re.IGNORECASE)
_LEADING = re.compile(r"\A(?:\s+|--[^\n]*(?:\n|\Z)|#[^\n]*(?:\n|\Z)|/\*.*?\*/)*", re.DOTALL)
_TABLE = re.compile(
    r"(?:TABLE|INDEX\s+\S+\s+ON|VIEW)\s+(?:IF\s+(?:NOT\s+)?EXISTS\s+)?(?P<name>`(?:[^`]|``)+`|[\w$.]+)", re.IGNORECASE)
_SKIPPED = frozenset({"alembic_version"})
WIDTH = 120


@dataclass(frozen=True)
class Ddl:
    """One pending statement MySQL commits on its own."""

    revision: str
    statement: str  # on one line (the operation as written, when read from the source)
    table: str | None
    from_source: bool = False
    certain: bool = True  # False: SQL built at run time, which may be DDL

    def describe(self) -> str:
        maybe = " (SQL built at run time: DDL if it is)" if not self.certain else ""
        return f"{self.revision[:12]}: {self.statement}{maybe}"

    def to_dict(self) -> dict[str, object]:
        return {"revision": self.revision, "statement": self.statement, "table": self.table,
                "from_source": self.from_source, "certain": self.certain}


def from_source(revision: str, source: str) -> list[Ddl]:
    """The DDL of one migration script's ``upgrade()``, read from its operations."""
    from deployer.db.oplint import ddl_operations

    return [Ddl(revision, item.operation, item.table, from_source=True, certain=item.certain)
            for item in ddl_operations(source)]


def split_statements(sql: str) -> list[str]:
    """``sql`` cut at the semicolons that end statements (not those in quotes or comments)."""
    statements: list[str] = []
    start = 0
    quote: str | None = None
    index = 0
    while index < len(sql):
        char = sql[index]
        if quote is not None:
            if char == "\\" and quote != "`":
                index += 2
                continue
            if char == quote:
                quote = None
        elif char in "'\"`":
            quote = char
        elif char == "-" and sql.startswith("--", index) or char == "#":
            end = sql.find("\n", index)
            index = len(sql) if end == -1 else end
            continue
        elif char == "/" and sql.startswith("/*", index):
            end = sql.find("*/", index + 2)
            index = len(sql) if end == -1 else end + 2
            continue
        elif char == ";":
            statements.append(sql[start:index])
            start = index + 1
        index += 1
    statements.append(sql[start:])
    return [s.strip() for s in statements if _LEADING.sub("", s).strip()]


def from_rendered(text: str) -> list[Ddl]:
    """The DDL of alembic's offline rendering (``upgrade --sql``), per revision."""
    from deployer.db.lint import split_rendered

    found: list[Ddl] = []
    for revision in split_rendered(text):
        for statement in split_statements(revision.sql):
            body = _LEADING.sub("", statement)
            if not _DDL.match(body):
                continue
            match = _TABLE.search(body)
            table = match.group("name").strip("`").replace("``", "`") if match else None
            if table in _SKIPPED:
                continue
            one = " ".join(body.split())
            found.append(Ddl(revision.revision, one if len(one) <= WIDTH else one[: WIDTH - 3] + "...", table))
    return found


def warning(items: Sequence[Ddl], engine: str = "MySQL/MariaDB") -> list[str]:
    """The gate's lines about ``items`` (none when there are none)."""
    if not items:
        return []
    revisions = list(dict.fromkeys(item.revision for item in items))
    head = (f"{engine} commits each DDL statement on its own: if a migration fails partway, the statements before the "
            f"failure stay applied (a half-applied schema) and the revision does not say so. Not transactional in the "
            f"pending migrations ({len(items)} statement(s) in {len(revisions)} revision(s)):")
    tail = ("if a migration fails, the release restores the pre-upgrade backup instead of trusting the revision or "
            "downgrading (when no write was made since the backup; otherwise it stops and says what restoring would "
            "discard)")
    return [head, *(f"  - {item.describe()}" for item in items), tail]


def revisions_of(items: Iterable[Ddl]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(item.revision for item in items))
