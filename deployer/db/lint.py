"""The migration safety gate: the locks and rewrites of the SQL a release is about to run.

A migration can be correct and still take the site down: ``CREATE INDEX`` without
CONCURRENTLY blocks every write while it builds, a column type change rewrites the table
under ACCESS EXCLUSIVE, a rename breaks the code still serving until the switch. Which of
them matter depends on the table: on a thousand rows the lock lasts a moment, on millions
it lasts minutes and every request queues behind it.

So the SQL is rendered as it will run (alembic's offline mode in the new image; each
revision's statements follow its ``-- Running upgrade A -> B`` comment, see
:func:`split_rendered`), linted by squawk (its rules on locks, rewrites and compatibility;
the ones about style are left out) and by rules of our own (:func:`own_findings`, on
statements pglast parses), and every finding is sized with the live table from the
database. :func:`judge` applies the environment's policy; a reviewed exception is waived in
the migration file itself (``# deployer: allow RULE``, see
:mod:`deployer.db.migrations`). When a revision cannot be rendered (it reads data),
:mod:`deployer.db.oplint` reads its operations instead and names the same rules.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from deployer.errors import DeployerError

POLICIES = ("refuse", "confirm", "warn")


@dataclass(frozen=True)
class Rule:
    """What a kind of statement does to a running site, and the safe way instead."""

    lock: str  # the lock it takes on the table
    effect: str  # what users see while it runs
    alternative: str  # in alembic's terms
    sized: bool = True  # False: it breaks the running code (or fails) whatever the table's size
    min_rows: int | None = None  # rows from which it counts (None: the environment's lint_min_rows)


_AUTOCOMMIT = "inside `with op.get_context().autocommit_block():`"
_EXPAND = ("or split it: expand (add the new, write both), switch the code, contract (mark the revision "
           "`# deployer: contract` so it runs after the switch)")

RULES: Mapping[str, Rule] = {
    "require-concurrent-index-creation": Rule(
        "SHARE", "blocks every write to the table while the index builds",
        f"op.create_index(..., postgresql_concurrently=True) {_AUTOCOMMIT}"),
    "require-concurrent-index-deletion": Rule(
        "ACCESS EXCLUSIVE", "blocks reads and writes until it gets and drops the index",
        f"op.drop_index(..., postgresql_concurrently=True) {_AUTOCOMMIT}"),
    "adding-required-field": Rule(
        "ACCESS EXCLUSIVE", "fails on a table with rows (NOT NULL, no default), after queueing every query behind it",
        "add it nullable (or with a constant server_default), backfill, then make it NOT NULL in a later release",
        min_rows=1),
    "adding-field-with-default": Rule(
        "ACCESS EXCLUSIVE", "rewrites the whole table (a volatile default is computed per row) while blocking reads and writes",
        "add the column nullable without a default, backfill in batches, then set the default"),
    "changing-column-type": Rule(
        "ACCESS EXCLUSIVE", "rewrites the table and its indexes while blocking reads and writes",
        f"add a column of the new type, backfill it, switch the code to it, drop the old one; {_EXPAND}"),
    "adding-not-nullable-field": Rule(
        "ACCESS EXCLUSIVE", "scans the whole table to check NOT NULL while blocking reads and writes",
        "add a CHECK (col IS NOT NULL) NOT VALID constraint, VALIDATE it in a later migration, then SET NOT NULL "
        "(PostgreSQL 12+ then skips the scan)"),
    "constraint-missing-not-valid": Rule(
        "SHARE ROW EXCLUSIVE", "scans the whole table to validate the constraint while blocking writes",
        "create it NOT VALID, then VALIDATE CONSTRAINT in a later migration (it takes a lock that lets writes through)"),
    "adding-foreign-key-constraint": Rule(
        "SHARE ROW EXCLUSIVE", "scans the whole table to validate the foreign key while blocking writes to both tables",
        "op.create_foreign_key(..., postgresql_not_valid=True), then VALIDATE CONSTRAINT in a later migration"),
    "adding-primary-key-constraint": Rule(
        "ACCESS EXCLUSIVE", "builds a unique index while blocking reads and writes",
        f"CREATE UNIQUE INDEX CONCURRENTLY {_AUTOCOMMIT}, then ADD CONSTRAINT ... PRIMARY KEY USING INDEX"),
    "disallowed-unique-constraint": Rule(
        "ACCESS EXCLUSIVE", "builds a unique index while blocking reads and writes",
        f"CREATE UNIQUE INDEX CONCURRENTLY {_AUTOCOMMIT}, then ADD CONSTRAINT ... UNIQUE USING INDEX"),
    "renaming-column": Rule(
        "ACCESS EXCLUSIVE", "breaks the code still serving: it asks for the old name until the switch",
        f"add the new column, write both, backfill, switch the code, drop the old; {_EXPAND}", sized=False),
    "renaming-table": Rule(
        "ACCESS EXCLUSIVE", "breaks the code still serving: it asks for the old name until the switch",
        f"create a view under the old name, or {_EXPAND.removeprefix('or ')}", sized=False),
    "ban-concurrent-index-creation-in-transaction": Rule(
        "-", "fails: CREATE INDEX CONCURRENTLY cannot run inside a transaction block",
        f"run it {_AUTOCOMMIT}", sized=False),
    "require-lock-timeout": Rule(
        "(waits without bound)", "waits for its lock without a limit while every query on the table queues behind it",
        "set lock_timeout in deploy.toml (deployer sets it for the migration's session)", sized=False),
    # Rules of our own (own_findings): squawk has none for these.
    "backfill-in-migration": Rule(
        "ROW EXCLUSIVE, and a lock on every row it writes until the migration commits",
        "holds every row it changes locked until the migration's one transaction commits",
        f"backfill in batches outside the migration, or a batch per transaction {_AUTOCOMMIT}"),
    "rewrite-table": Rule(
        "ACCESS EXCLUSIVE", "rewrites the table while blocking reads and writes",
        "REINDEX CONCURRENTLY (PostgreSQL 12+); pg_repack for a table rewrite, outside the release"),
    "lock-table": Rule(
        "as the statement names", "locks the table explicitly until the migration commits",
        "leave locking to the statements themselves, with lock_timeout set", sized=False),
    # Read from the operations (oplint) when the SQL could not be rendered.
    "sql-not-read": Rule(
        "unknown", "runs SQL deployer could not read (built at run time)",
        "render it as a literal string, or review it and waive the rule", sized=False),
    "not-rendered": Rule(
        "unknown", "could not be rendered to SQL (it reads data); its operations were read instead",
        "review it and waive the rule (`# deployer: allow not-rendered`)", sized=False),
}
# Drops (ban-drop-column, ban-drop-table) are not here on purpose: the preflight already asks
# about every migration that destroys data, before anything is built.

# squawk's names for rules deployer names otherwise (oplint reads the operation that way).
_ALIASES = {"adding-serial-primary-key-field": "adding-primary-key-constraint"}

_RUNNING = re.compile(r"^-- Running upgrade (?P<down>.*?) -> (?P<up>\S+)\s*$", re.MULTILINE)
_SKIPPED = frozenset({"alembic_version"})


class LintError(DeployerError):
    """The SQL could not be linted (squawk missing or failing)."""


@dataclass(frozen=True)
class RenderedRevision:
    """One revision's statements as alembic's offline mode printed them."""

    revision: str
    sql: str
    offset: int  # where ``sql`` starts in the whole rendered text (a character offset)


def split_rendered(text: str) -> tuple[RenderedRevision, ...]:
    """The revisions of ``upgrade --sql`` output, in order, each with its statements (up to
    the next revision's comment; the ``alembic_version`` bookkeeping stays in, rules skip it)."""
    marks = list(_RUNNING.finditer(text))
    revisions = []
    for index, mark in enumerate(marks):
        end = marks[index + 1].start() if index + 1 < len(marks) else len(text)
        revisions.append(RenderedRevision(mark.group("up"), text[mark.end():end], mark.end()))
    return tuple(revisions)


def rendered_revisions(text: str) -> tuple[str, ...]:
    return tuple(r.revision for r in split_rendered(text))


# --------------------------------------------------------------------------- statements


@dataclass(frozen=True)
class Statement:
    start: int  # character offsets in the text linted
    end: int
    text: str
    kind: str  # pglast's node name: IndexStmt, AlterTableStmt, ...
    table: str | None  # the first table it names ("schema.table" when qualified)
    index: str | None = None  # DROP INDEX: the index (its table is looked up)

    def shown(self, width: int = 160) -> str:
        one = " ".join(self.text.split())
        return one if len(one) <= width else one[: width - 3] + "..."


def statements(sql: str) -> tuple[Statement, ...]:
    """The statements of ``sql``, parsed by PostgreSQL's own parser (pglast); () when it
    does not parse (squawk reports that itself)."""
    import pglast
    from pglast import ast

    try:
        raw = pglast.parse_sql(sql)
    except pglast.parser.ParseError:
        return ()
    data = sql.encode()
    found = []
    for item in raw:
        start_b = item.stmt_location or 0
        length = item.stmt_len or len(data) - start_b
        text = data[start_b:start_b + length].decode(errors="replace")
        start = len(data[:start_b].decode(errors="replace"))
        lead = len(text) - len(text.lstrip())
        names = _tables(item.stmt)
        index: str | None = None
        node = item.stmt
        if isinstance(node, ast.DropStmt) and getattr(node.removeType, "name", "") == "OBJECT_INDEX":
            objects = node.objects or ()
            if objects:
                parts = [getattr(p, "sval", None) for p in objects[0]]
                index = ".".join(p for p in parts if p)
        found.append(Statement(start + lead, start + len(text), text.strip(), type(node).__name__,
                               names[0] if names else None, index))
    return tuple(found)


def _tables(node: Any) -> list[str]:
    """The tables a statement names, in order ("schema.table" when qualified)."""
    from pglast.visitors import Visitor

    names: list[str] = []

    class Tables(Visitor):
        def visit_RangeVar(self, ancestors, node) -> None:  # noqa: ANN001, N802
            names.append(f"{node.schemaname}.{node.relname}" if node.schemaname else node.relname)

    Tables()(node)
    return names


def _statement_at(found: Sequence[Statement], offset: int) -> Statement | None:
    for statement in found:
        if statement.start <= offset < statement.end + 1:
            return statement
    return None


def _in_transaction_block(found: Sequence[Statement], statement: Statement) -> bool:
    depth = 0
    for item in found:
        if item is statement:
            return depth > 0
        word = item.text.split(None, 1)[0].upper() if item.text else ""
        if item.kind == "TransactionStmt":
            depth = 1 if word in ("BEGIN", "START") else 0 if word in ("COMMIT", "END", "ROLLBACK") else depth
    return False


# --------------------------------------------------------------------------- findings


@dataclass(frozen=True)
class TableSize:
    rows: int | None  # None: not known (never analysed and too big to count quickly)
    bytes: int
    estimated: bool = True  # rows from the planner's statistics, not counted

    def describe(self) -> str:
        rows = "rows unknown" if self.rows is None else f"{'~' if self.estimated else ''}{self.rows:,} rows"
        return f"{rows}, {human_bytes(self.bytes)}"


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "kB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"  # pragma: no cover - the loop returns


@dataclass(frozen=True)
class Finding:
    """One risky statement of one revision."""

    revision: str
    rule: str
    statement: str  # the statement, on one line (or the operation, when read from the source)
    table: str | None
    message: str = ""  # squawk's own words, when it found it
    size: TableSize | None = None  # None: not sized (unknown table, or nothing read)
    new_table: bool = False  # the table does not exist yet: the pending migrations create it
    waived: bool = False
    from_source: bool = False  # read from the migration's operations, not its rendered SQL

    @property
    def rule_info(self) -> Rule:
        return RULES[self.rule]

    def describe(self) -> str:
        """``REV: STATEMENT — takes LOCK on TABLE (SIZE): EFFECT. Instead: ALTERNATIVE``."""
        rule = self.rule_info
        on = self.table or "the table"
        sized = f" ({self.size.describe()})" if self.size is not None else ""
        lock = f"takes {rule.lock} on {on}{sized}" if rule.lock not in ("-", "unknown") else f"on {on}{sized}"
        source = " [read from its operations]" if self.from_source else ""
        return (f"{self.revision[:12]}: {self.statement}{source} — {lock}: {rule.effect} ({self.rule}). "
                f"Instead: {rule.alternative}")

    def to_dict(self) -> dict[str, object]:
        rule = self.rule_info
        return {
            "revision": self.revision, "rule": self.rule, "statement": self.statement, "table": self.table,
            "lock": rule.lock, "effect": rule.effect, "alternative": rule.alternative, "message": self.message,
            "rows": self.size.rows if self.size else None, "bytes": self.size.bytes if self.size else None,
            "waived": self.waived, "from_source": self.from_source,
        }


def squawk_binary() -> str:
    """The squawk executable: beside this Python (the squawk-cli package installs it there), else on PATH."""
    here = Path(sys.executable).parent / ("squawk.exe" if os.name == "nt" else "squawk")
    if here.exists():
        return str(here)
    found = shutil.which("squawk")
    if found is None:
        raise LintError("squawk, the SQL linter deployer uses, is not installed",
                        hint="reinstall deployer (`pip install deployer`: squawk-cli is one of its dependencies)")
    return found


def run_squawk(sql: str, *, pg_version: str | None = None, binary: str | None = None) -> list[dict]:
    """squawk's findings on ``sql`` (its JSON reporter: rule_name, line and column 0-based)."""
    argv = [binary or squawk_binary(), "--reporter", "json", "--stdin-filepath", "migration.sql"]
    if pg_version:
        argv += ["--pg-version", pg_version]
    try:
        done = subprocess.run(argv, input=sql, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise LintError(f"squawk could not run: {error}") from None
    try:
        found = json.loads(done.stdout or "[]")
    except ValueError:
        raise LintError(f"squawk gave no report (exit {done.returncode}): {(done.stderr or done.stdout).strip()[:300]}") from None
    return [f for f in found if isinstance(f, dict)] if isinstance(found, list) else []


def _offset(text: str, line: int, column: int) -> int:
    lines = text.split("\n")
    return sum(len(item) + 1 for item in lines[:line]) + column


def sql_findings(rendered: str, squawked: Iterable[Mapping], *, lock_timeout: float) -> list[Finding]:
    """squawk's findings on the whole rendered text and our own, per revision and statement,
    the rules that are not about locks left out."""
    found = statements(rendered)
    revisions = split_rendered(rendered)

    def revision_at(offset: int) -> str | None:
        owner = None
        for revision in revisions:
            if revision.offset <= offset:
                owner = revision.revision
        return owner

    findings: list[Finding] = []
    seen: set[tuple[str, int]] = set()
    for item in squawked:
        rule = str(item.get("rule_name", ""))
        rule = _ALIASES.get(rule, rule)
        if rule not in RULES or (rule == "require-lock-timeout" and lock_timeout > 0):
            continue
        offset = _offset(rendered, int(item.get("line", 0)), int(item.get("column", 0)))
        statement = _statement_at(found, offset)
        revision = revision_at(statement.start if statement else offset)
        if revision is None or statement is None or (statement.table in _SKIPPED):
            continue
        if (rule, statement.start) in seen:
            continue
        seen.add((rule, statement.start))
        findings.append(Finding(revision, rule, statement.shown(), statement.table or statement.index,
                                message=str(item.get("message", ""))))
    for statement, rule in own_findings(found):
        revision = revision_at(statement.start)
        if revision is not None and (rule, statement.start) not in seen:
            seen.add((rule, statement.start))
            findings.append(Finding(revision, rule, statement.shown(), statement.table))
    order = {r.revision: i for i, r in enumerate(revisions)}
    return sorted(findings, key=lambda f: order.get(f.revision, 0))


_REWRITE = re.compile(r"^\s*(?:VACUUM\s+(?:\(\s*)?FULL|CLUSTER\b|REINDEX\s+(?!.*\bCONCURRENTLY\b))", re.IGNORECASE | re.DOTALL)


def own_findings(found: Sequence[Statement]) -> list[tuple[Statement, str]]:
    """The rules squawk lacks: a backfill in the migration's transaction, a statement that
    rewrites a table (VACUUM FULL, CLUSTER, REINDEX without CONCURRENTLY), LOCK TABLE."""
    out = []
    for statement in found:
        if statement.table in _SKIPPED:
            continue
        if statement.kind in ("UpdateStmt", "DeleteStmt") and _in_transaction_block(found, statement):
            out.append((statement, "backfill-in-migration"))
        elif statement.kind in ("VacuumStmt", "ClusterStmt", "ReindexStmt") and _REWRITE.match(statement.text):
            out.append((statement, "rewrite-table"))
        elif statement.kind == "LockStmt":
            out.append((statement, "lock-table"))
    return out


def tables_of(findings: Iterable[Finding]) -> tuple[str, ...]:
    return tuple(sorted({f.table for f in findings if f.table}))


def sized(findings: Iterable[Finding], live: LiveTables) -> list[Finding]:
    """The findings with their table's size (an index's finding names its table); a table
    the database does not have yet is one the pending migrations create: nothing to lock."""
    out = []
    for finding in findings:
        name = finding.table
        if name is None:
            out.append(finding)
        elif name not in live.sizes:
            out.append(replace(finding, new_table=True))
        else:
            out.append(replace(finding, table=live.tables.get(name, name), size=live.sizes[name]))
    return out


def waive(findings: Iterable[Finding], waivers: Mapping[str, Iterable[str]]) -> list[Finding]:
    """Mark the findings a revision's file waives (``# deployer: allow RULE`` or ``all``)."""
    out = []
    for finding in findings:
        allowed = set(waivers.get(finding.revision, ()))
        out.append(replace(finding, waived=bool(allowed & {finding.rule, "all"})))
    return out


# --------------------------------------------------------------------------- the gate


@dataclass(frozen=True)
class Judgement:
    """The findings sorted by what they do to a release."""

    blocking: tuple[Finding, ...]  # the policy applies to these
    minor: tuple[Finding, ...] = ()  # on a small table, or a table the release creates
    waived: tuple[Finding, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)  # what could not be linted, and why

    def describe(self) -> list[str]:
        lines = [f"  - {f.describe()}" for f in self.blocking]
        lines += [f"  - (small table) {f.describe()}" for f in self.minor if not f.new_table]
        lines += [f"  - (waived in its file) {f.describe()}" for f in self.waived]
        lines += [f"  - {note}" for note in self.notes]
        return lines

    def to_dict(self) -> dict[str, object]:
        return {"blocking": [f.to_dict() for f in self.blocking], "minor": [f.to_dict() for f in self.minor],
                "waived": [f.to_dict() for f in self.waived], "notes": list(self.notes)}


def _big(finding: Finding, rule: Rule, min_rows: int) -> bool:
    if not rule.sized or finding.size is None or finding.size.rows is None:
        return True
    return finding.size.rows >= (rule.min_rows if rule.min_rows is not None else min_rows)


def judge(findings: Iterable[Finding], *, min_rows: int, notes: Sequence[str] = ()) -> Judgement:
    """Which findings count: not waived, and either breaking at any size, or on a table of
    at least ``min_rows`` rows (the rule's own minimum when it has one; unknown counts)."""
    blocking, minor, waived = [], [], []
    for finding in findings:
        rule = finding.rule_info
        if finding.waived:
            waived.append(finding)
        elif finding.new_table:
            minor.append(finding)
        elif _big(finding, rule, min_rows):
            blocking.append(finding)
        else:
            minor.append(finding)
    return Judgement(tuple(blocking), tuple(minor), tuple(waived), tuple(notes))


# --------------------------------------------------------------------------- the live tables

_SIZES_SQL = """
SELECT c.relname, n.nspname, c.relkind, c.reltuples::bigint, pg_total_relation_size(COALESCE(t.oid, c.oid)),
       t.relname, tn.nspname, COALESCE(t.reltuples, 0)::bigint
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_index i ON i.indexrelid = c.oid
LEFT JOIN pg_class t ON t.oid = i.indrelid LEFT JOIN pg_namespace tn ON tn.oid = t.relnamespace
WHERE c.relkind IN ('r', 'p', 'm', 'i') AND c.relname = ANY(%s)
  AND (n.nspname = ANY(%s) OR n.nspname = ANY(current_schemas(false)))
ORDER BY array_position(current_schemas(false), n.nspname::text) NULLS LAST
"""


@dataclass(frozen=True)
class LiveTables:
    """What the database says about the names the findings mention."""

    sizes: Mapping[str, TableSize | None]  # name as written -> size (an index: its table's)
    tables: Mapping[str, str]  # an index's name as written -> its table
    server_version: str | None = None  # "15.4": squawk's --pg-version


def read_tables(url: str, names: Iterable[str], *, count_timeout: float = 3.0) -> LiveTables:
    """Sizes of the tables (and the tables of the indexes) named, from the planner's
    statistics; a table never analysed is counted, within ``count_timeout`` seconds. A name
    the database does not know is left out: the pending migrations create it."""
    from psycopg2 import sql as pgsql

    from deployer.db.locks import connect

    wanted = sorted(set(names))
    sizes: dict[str, TableSize | None] = {}
    tables: dict[str, str] = {}
    with connect(url) as connection, connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        version = str(cursor.fetchone()[0]).split()[0]
        bare = sorted({name.rsplit(".", 1)[-1] for name in wanted})
        schemas = sorted({name.rsplit(".", 1)[0] for name in wanted if "." in name})
        cursor.execute(_SIZES_SQL, (bare, schemas))
        rows = cursor.fetchall()
        for name in wanted:
            schema, _, relname = name.rpartition(".")
            match = next((r for r in rows if r[0] == relname and (not schema or r[1] == schema)), None)
            if match is None:
                continue
            _, nspname, kind, reltuples, total, table, table_schema, table_tuples = match
            if kind == "i":
                if table is None:
                    continue
                tables[name] = table if table_schema in ("public", nspname) and not schema else f"{table_schema}.{table}"
                relname, nspname, reltuples = table, table_schema, table_tuples
            estimated = True
            count: int | None = int(reltuples)
            if int(reltuples) < 0:  # never analysed (PostgreSQL 14+ says -1): count, briefly
                estimated = False
                try:
                    cursor.execute("SET statement_timeout = %s", (f"{int(count_timeout * 1000)}ms",))
                    cursor.execute(pgsql.SQL("SELECT count(*) FROM {}").format(pgsql.Identifier(nspname, relname)))
                    count = int(cursor.fetchone()[0])
                except Exception:  # noqa: BLE001 - too big to count quickly: unknown, and counted as big
                    count = None
                finally:
                    cursor.execute("SET statement_timeout = 0")
            sizes[name] = TableSize(count, int(total or 0), estimated)
    return LiveTables(MappingProxyType(sizes), MappingProxyType(tables), version)
