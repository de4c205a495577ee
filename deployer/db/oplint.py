"""A static lint of a migration script's ``upgrade()``: its alembic operations, without the SQL.

The truth about a migration is its SQL: what PostgreSQL will be asked to do, locks and
rewrites included. That SQL is rendered in the new image (alembic's offline mode, with the
app's models and dialect) and linted there under squawk's rules. Sometimes it cannot be
rendered: on a dry run before the image is built, or for a migration that reads data (a
``SELECT`` in ``upgrade()``), which alembic's offline mode cannot run.

This module reads the operations instead. It parses the script's source with :mod:`ast`
(never imports it: the app and its dependencies need not be installed) and maps each
``op.*`` call of ``upgrade()`` — and each call on a ``with op.batch_alter_table(...) as
batch_op:`` receiver, which acts on the batch's table — to the squawk rule its SQL would
break, under squawk's own rule names, so both lints report alike. It sees only what the
script writes literally: a statement built at run time is reported as not read
(``sql-not-read``), and calls made in helper functions are out of its reach.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["RULE_NAMES", "OpDdl", "OpFinding", "ddl_operations", "operation_findings"]

CONCURRENT_INDEX_CREATION = "require-concurrent-index-creation"
CONCURRENT_INDEX_DELETION = "require-concurrent-index-deletion"
ADDING_REQUIRED_FIELD = "adding-required-field"
ADDING_FIELD_WITH_DEFAULT = "adding-field-with-default"
CHANGING_COLUMN_TYPE = "changing-column-type"
RENAMING_COLUMN = "renaming-column"
RENAMING_TABLE = "renaming-table"
ADDING_NOT_NULLABLE_FIELD = "adding-not-nullable-field"
ADDING_FOREIGN_KEY_CONSTRAINT = "adding-foreign-key-constraint"
CONSTRAINT_MISSING_NOT_VALID = "constraint-missing-not-valid"
DISALLOWED_UNIQUE_CONSTRAINT = "disallowed-unique-constraint"
ADDING_PRIMARY_KEY_CONSTRAINT = "adding-primary-key-constraint"
BACKFILL_IN_MIGRATION = "backfill-in-migration"
SQL_NOT_READ = "sql-not-read"

RULE_NAMES = frozenset(
    {
        CONCURRENT_INDEX_CREATION,
        CONCURRENT_INDEX_DELETION,
        ADDING_REQUIRED_FIELD,
        ADDING_FIELD_WITH_DEFAULT,
        CHANGING_COLUMN_TYPE,
        RENAMING_COLUMN,
        RENAMING_TABLE,
        ADDING_NOT_NULLABLE_FIELD,
        ADDING_FOREIGN_KEY_CONSTRAINT,
        CONSTRAINT_MISSING_NOT_VALID,
        DISALLOWED_UNIQUE_CONSTRAINT,
        ADDING_PRIMARY_KEY_CONSTRAINT,
        BACKFILL_IN_MIGRATION,
        SQL_NOT_READ,
    }
)

# The longest an operation is quoted in a finding.
OPERATION_WIDTH = 120

# SQL in a server default that PostgreSQL evaluates per row (a VOLATILE function): adding
# such a column rewrites the table, where a constant (or STABLE, like now()) default does not.
_VOLATILE_SQL = ("random(", "gen_random_uuid(", "uuid_generate_v", "clock_timestamp(", "nextval(", "timeofday(")

# Calls that wrap literal SQL: sa.text("..."), text("..."), sa.literal_column("...").
_SQL_WRAPPERS = frozenset({"text", "literal_column"})

_IDENTIFIER = r'(?:"(?:[^"]|"")+"|[A-Za-z_][\w$]*)'
_TABLE = rf"(?P<table>{_IDENTIFIER}(?:\s*\.\s*{_IDENTIFIER})?)"
_LEADING_SQL_COMMENTS = re.compile(r"\A(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?\*/)*", re.DOTALL)
_UPDATE = re.compile(rf"UPDATE\b(?:\s+ONLY\b)?\s*{_TABLE}?", re.IGNORECASE)
_DELETE = re.compile(rf"DELETE\b(?:\s+FROM\b(?:\s+ONLY\b)?\s*{_TABLE}?)?", re.IGNORECASE)


@dataclass(frozen=True)
class OpFinding:
    """One operation of ``upgrade()`` that a squawk rule flags."""

    rule: str  # one of RULE_NAMES
    operation: str  # the call as written, on one line of at most OPERATION_WIDTH characters
    table: str | None  # the table it acts on ("schema.table" when a schema is given), None when unknown
    line: int  # 1-based line of the call in the source


@dataclass(frozen=True)
class _Batch:
    """A receiver bound by ``with op.batch_alter_table(...) as NAME``: its operations act on ``table``."""

    table: str | None


# Receiver names in scope (the batches' names) -> their batch.
_Receivers = Mapping[str, _Batch]


@dataclass(frozen=True)
class _OpCall:
    """An alembic operation call: ``op.X(...)`` (``batch`` None) or ``batch_op.X(...)``."""

    node: ast.Call
    batch: _Batch | None

    def arg(self, position: int, keyword: str) -> ast.expr | None:
        """The argument passed at ``position`` or as ``keyword``, None when not given (or not knowable)."""
        given = _keywords(self.node).get(keyword)
        if given is not None:
            return given
        positional = _positional(self.node)
        return positional[position] if position < len(positional) else None

    def keyword(self, name: str) -> ast.expr | None:
        return _keywords(self.node).get(name)

    def table(self, position: int, keyword: str, schema_keyword: str = "schema") -> str | None:
        """The table the operation acts on: the batch's, else the argument at ``position`` / ``keyword``."""
        if self.batch is not None:
            return self.batch.table
        return _qualified(self.arg(position, keyword), self.keyword(schema_keyword))


# A rule check: the (rule, table) pairs an operation call breaks.
_Check = Callable[[_OpCall], list[tuple[str, str | None]]]


def _upgrade_calls(source: str) -> tuple[list[str], list[_OpCall]]:
    """The source's lines and the ``op`` calls of its ``upgrade()``, in body order (none when it
    does not parse or has no upgrade())."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError):
        return [], []
    upgrade = _upgrade_function(tree)
    if upgrade is None:
        return [], []
    return re.split(r"\r\n|\r|\n", source), [call for node in upgrade.body for call in _op_calls(node, {})]


def operation_findings(source: str) -> tuple[OpFinding, ...]:
    """Findings of the upgrade() function of a migration script's source, in source order. A source that does not parse, or has no upgrade(), gives ()."""
    lines, calls = _upgrade_calls(source)
    found: list[tuple[int, int, OpFinding]] = []
    for call in calls:
        found.extend((call.node.lineno, call.node.col_offset, finding) for finding in _findings(call, lines))
    found.sort(key=lambda item: (item[0], item[1]))  # stable: one call's findings keep their order
    return tuple(finding for _, _, finding in found)


@dataclass(frozen=True)
class OpDdl:
    """One operation of ``upgrade()`` that runs DDL (what MySQL commits on its own)."""

    operation: str  # the call as written, on one line of at most OPERATION_WIDTH characters
    table: str | None
    line: int
    certain: bool = True  # False: ``op.execute`` of SQL built at run time, which may be DDL


# alembic operations that emit DDL (on a batch receiver too), and where their table is.
_DDL_TABLES: Mapping[str, tuple[int, str]] = {
    "create_table": (0, "table_name"), "drop_table": (0, "table_name"), "rename_table": (0, "old_table_name"),
    "add_column": (0, "table_name"), "drop_column": (0, "table_name"), "alter_column": (0, "table_name"),
    "create_index": (1, "table_name"), "drop_index": (1, "table_name"),
    "create_foreign_key": (1, "source_table"), "create_unique_constraint": (1, "table_name"),
    "create_check_constraint": (1, "table_name"), "create_primary_key": (1, "table_name"),
    "drop_constraint": (1, "table_name"), "create_table_comment": (0, "table_name"),
    "drop_table_comment": (0, "table_name"), "create_exclude_constraint": (1, "table_name"),
}
# Statements MySQL commits at once (and the transaction before them): an implicit commit.
_DDL_SQL = re.compile(r"(?:CREATE|ALTER|DROP|RENAME|TRUNCATE)\b", re.IGNORECASE)


def ddl_operations(source: str) -> tuple[OpDdl, ...]:
    """The DDL operations of a migration script's ``upgrade()``, in source order: alembic's
    schema operations, batch ones included, and ``op.execute`` of literal DDL (of SQL built
    at run time: possibly DDL, ``certain`` False). A source that does not parse gives ()."""
    lines, calls = _upgrade_calls(source)
    found: list[tuple[int, int, OpDdl]] = []
    for call in calls:
        method = _method(call.node)
        if method == "execute":
            sql = _literal_sql(call.arg(0, "sqltext"))
            if sql is not None and not _DDL_SQL.match(_LEADING_SQL_COMMENTS.sub("", sql)):
                continue
            item = OpDdl(_one_line(call.node, lines), None, call.node.lineno, certain=sql is not None)
        elif method in _DDL_TABLES:
            position, keyword = _DDL_TABLES[method]
            item = OpDdl(_one_line(call.node, lines), call.table(position, keyword), call.node.lineno)
        else:
            continue
        found.append((call.node.lineno, call.node.col_offset, item))
    found.sort(key=lambda entry: (entry[0], entry[1]))
    return tuple(item for _, _, item in found)


def _upgrade_function(tree: ast.Module) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    """The module-level ``def upgrade()``: the last one, as Python binds it."""
    functions = [
        node for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "upgrade"
    ]
    return functions[-1] if functions else None


def _findings(call: _OpCall, lines: Sequence[str]) -> Iterator[OpFinding]:
    check = _CHECKS.get(_method(call.node))
    if check is None:
        return
    operation = _one_line(call.node, lines)
    for rule, table in check(call):
        yield OpFinding(rule=rule, operation=operation, table=table, line=call.node.lineno)


# ---------------------------------------------------------------------------------------------
# Walking upgrade(): the operation calls and their receivers


def _op_calls(node: ast.AST, receivers: _Receivers) -> Iterator[_OpCall]:
    """The alembic operation calls under ``node``, with the batches in scope; nested definitions are skipped."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
        return
    if isinstance(node, ast.With | ast.AsyncWith):
        yield from _with_calls(node, receivers)
        return
    if isinstance(node, ast.Call):
        call = _as_op_call(node, receivers)
        if call is not None:
            yield call
    for child in ast.iter_child_nodes(node):
        yield from _op_calls(child, receivers)


def _with_calls(node: ast.With | ast.AsyncWith, receivers: _Receivers) -> Iterator[_OpCall]:
    """The calls of a ``with`` statement; ``as NAME`` of ``op.batch_alter_table(...)`` binds a batch in its body."""
    inner = dict(receivers)
    for item in node.items:
        yield from _op_calls(item.context_expr, receivers)
        if isinstance(item.optional_vars, ast.Name):
            name = item.optional_vars.id
            batch = _batch(item.context_expr, receivers)
            if batch is not None:
                inner[name] = batch
            else:
                inner.pop(name, None)  # rebound to something else: no longer a batch
    for statement in node.body:
        yield from _op_calls(statement, inner)


def _batch(expr: ast.expr, receivers: _Receivers) -> _Batch | None:
    """The batch of ``op.batch_alter_table(table, schema=...)``, None for any other expression."""
    if not isinstance(expr, ast.Call):
        return None
    call = _as_op_call(expr, receivers)
    if call is None or call.batch is not None or _method(expr) != "batch_alter_table":
        return None
    return _Batch(table=_qualified(call.arg(0, "table_name"), call.arg(1, "schema")))


def _as_op_call(node: ast.Call, receivers: _Receivers) -> _OpCall | None:
    """``op.X(...)`` or ``NAME.X(...)`` for a batch ``NAME`` in scope, else None."""
    func = node.func
    if not (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)):
        return None
    name = func.value.id
    if name in receivers:
        return _OpCall(node=node, batch=receivers[name])
    if name == "op":
        return _OpCall(node=node, batch=None)
    return None


def _method(node: ast.Call) -> str:
    return node.func.attr if isinstance(node.func, ast.Attribute) else ""


# ---------------------------------------------------------------------------------------------
# The rules, one check per alembic operation


def _check_create_index(call: _OpCall) -> list[tuple[str, str | None]]:
    if _is_true(call.keyword("postgresql_concurrently")):
        return []
    return [(CONCURRENT_INDEX_CREATION, call.table(1, "table_name"))]


def _check_drop_index(call: _OpCall) -> list[tuple[str, str | None]]:
    if _is_true(call.keyword("postgresql_concurrently")):
        return []
    return [(CONCURRENT_INDEX_DELETION, call.table(1, "table_name"))]


def _check_add_column(call: _OpCall) -> list[tuple[str, str | None]]:
    column = _column(call.arg(0, "column") if call.batch is not None else call.arg(1, "column"))
    if column is None:
        return []
    table = call.table(0, "table_name")
    default = column.get("server_default")
    if default is None or _is_none(default):
        required = _is_false(column.get("nullable")) and not _is_true(column.get("primary_key"))
        return [(ADDING_REQUIRED_FIELD, table)] if required else []
    return [(ADDING_FIELD_WITH_DEFAULT, table)] if _is_volatile(default) else []


def _check_alter_column(call: _OpCall) -> list[tuple[str, str | None]]:
    table = call.table(0, "table_name")
    rules: list[tuple[str, str | None]] = []
    if _is_given(call.keyword("type_")):
        rules.append((CHANGING_COLUMN_TYPE, table))
    if _is_given(call.keyword("new_column_name")):
        rules.append((RENAMING_COLUMN, table))
    if _is_false(call.keyword("nullable")):
        rules.append((ADDING_NOT_NULLABLE_FIELD, table))
    return rules


def _check_rename_table(call: _OpCall) -> list[tuple[str, str | None]]:
    return [(RENAMING_TABLE, call.table(0, "old_table_name"))]


def _check_create_foreign_key(call: _OpCall) -> list[tuple[str, str | None]]:
    if _is_true(call.keyword("postgresql_not_valid")):
        return []
    return [(ADDING_FOREIGN_KEY_CONSTRAINT, call.table(1, "source_table", schema_keyword="source_schema"))]


def _check_create_check_constraint(call: _OpCall) -> list[tuple[str, str | None]]:
    if _is_true(call.keyword("postgresql_not_valid")):
        return []
    return [(CONSTRAINT_MISSING_NOT_VALID, call.table(1, "table_name"))]


def _check_create_unique_constraint(call: _OpCall) -> list[tuple[str, str | None]]:
    return [(DISALLOWED_UNIQUE_CONSTRAINT, call.table(1, "table_name"))]


def _check_create_primary_key(call: _OpCall) -> list[tuple[str, str | None]]:
    return [(ADDING_PRIMARY_KEY_CONSTRAINT, call.table(1, "table_name"))]


def _check_execute(call: _OpCall) -> list[tuple[str, str | None]]:
    sql = _literal_sql(call.arg(0, "sqltext"))
    if sql is None:
        return [(SQL_NOT_READ, None)]
    statement = _LEADING_SQL_COMMENTS.sub("", sql)
    for pattern in (_UPDATE, _DELETE):
        match = pattern.match(statement)
        if match is not None:
            return [(BACKFILL_IN_MIGRATION, _sql_table(match.group("table")))]
    return []


_CHECKS: Mapping[str, _Check] = {
    "create_index": _check_create_index,
    "drop_index": _check_drop_index,
    "add_column": _check_add_column,
    "alter_column": _check_alter_column,
    "rename_table": _check_rename_table,
    "create_foreign_key": _check_create_foreign_key,
    "create_check_constraint": _check_create_check_constraint,
    "create_unique_constraint": _check_create_unique_constraint,
    "create_primary_key": _check_create_primary_key,
    "execute": _check_execute,
}


# ---------------------------------------------------------------------------------------------
# Reading arguments


def _positional(node: ast.Call) -> list[ast.expr]:
    """The positional arguments whose position is known: those before any ``*args``."""
    known: list[ast.expr] = []
    for arg in node.args:
        if isinstance(arg, ast.Starred):
            break
        known.append(arg)
    return known


def _keywords(node: ast.Call) -> dict[str, ast.expr]:
    return {keyword.arg: keyword.value for keyword in node.keywords if keyword.arg is not None}


def _string(expr: ast.expr | None) -> str | None:
    return expr.value if isinstance(expr, ast.Constant) and isinstance(expr.value, str) else None


def _is_true(expr: ast.expr | None) -> bool:
    return isinstance(expr, ast.Constant) and expr.value is True


def _is_false(expr: ast.expr | None) -> bool:
    return isinstance(expr, ast.Constant) and expr.value is False


def _is_none(expr: ast.expr | None) -> bool:
    return isinstance(expr, ast.Constant) and expr.value is None


def _is_given(expr: ast.expr | None) -> bool:
    """An argument passed with a value other than None."""
    return expr is not None and not _is_none(expr)


def _qualified(table: ast.expr | None, schema: ast.expr | None) -> str | None:
    """``table`` or ``schema.table`` from string constants; None when either is not knowable."""
    name = _string(table)
    if name is None:
        return None
    if schema is None or _is_none(schema):
        return name
    prefix = _string(schema)
    return f"{prefix}.{name}" if prefix is not None else None


def _dotted(expr: ast.expr) -> list[str]:
    """``sa.func.now`` -> ["sa", "func", "now"]; [] for anything but a dotted name."""
    if isinstance(expr, ast.Name):
        return [expr.id]
    if isinstance(expr, ast.Attribute):
        base = _dotted(expr.value)
        return [*base, expr.attr] if base else []
    return []


def _column(expr: ast.expr | None) -> dict[str, ast.expr] | None:
    """The keyword arguments of a ``sa.Column(...)`` / ``Column(...)`` written in place, else None."""
    if not isinstance(expr, ast.Call) or _dotted(expr.func)[-1:] != ["Column"]:
        return None
    return _keywords(expr)


def _literal_sql(expr: ast.expr | None) -> str | None:
    """The SQL of a string literal, or of ``sa.text("...")`` / ``text("...")`` of one; None otherwise."""
    literal = _string(expr)
    if literal is not None:
        return literal
    if isinstance(expr, ast.Call):
        name = _dotted(expr.func)
        if name and name[-1] in _SQL_WRAPPERS and "func" not in name:
            positional = _positional(expr)
            return _string(positional[0]) if positional else None
    return None


def _default_sql(expr: ast.expr) -> str | None:
    """What SQL a server default evaluates, as far as the source says: text of a literal, or ``name(`` of ``sa.func.name()``."""
    if not isinstance(expr, ast.Call):
        return None
    name = _dotted(expr.func)
    if "func" in name[:-1]:
        return ".".join(name[name.index("func") + 1 :]) + "("
    return _literal_sql(expr)


def _is_volatile(default: ast.expr) -> bool:
    sql = _default_sql(default)
    return sql is not None and any(function in sql.lower() for function in _VOLATILE_SQL)


def _sql_table(name: str | None) -> str | None:
    """``"Schema"."Table"`` -> ``Schema.Table``: a table name from SQL, its quotes removed."""
    if not name:
        return None
    parts = re.findall(_IDENTIFIER, name)
    return ".".join(part[1:-1].replace('""', '"') if part.startswith('"') else part for part in parts)


# ---------------------------------------------------------------------------------------------
# Quoting the operation


def _one_line(node: ast.expr, lines: Sequence[str]) -> str:
    """The source of ``node`` joined onto one line, comments dropped, cut to OPERATION_WIDTH."""
    spans = _string_spans(node)
    end_lineno = node.end_lineno if node.end_lineno is not None else node.lineno
    pieces: list[str] = []
    for lineno in range(node.lineno, end_lineno + 1):
        raw = lines[lineno - 1].encode() if lineno <= len(lines) else b""
        start = node.col_offset if lineno == node.lineno else 0
        end = node.end_col_offset if lineno == end_lineno and node.end_col_offset is not None else len(raw)
        end = _comment_start(raw, lineno, start, end, spans)
        pieces.append(raw[start:end].decode(errors="replace").strip().removesuffix("\\").strip())
    text = _join(piece for piece in pieces if piece)
    if len(text) > OPERATION_WIDTH:
        text = text[: OPERATION_WIDTH - 3] + "..."
    return text


# (first line, first byte, last line, byte past the end) of a string literal.
_Span = tuple[int, int, int, int]


def _string_spans(node: ast.expr) -> list[_Span]:
    """Where the string literals under ``node`` are: a ``#`` in one starts no comment."""
    strings = [
        child
        for child in ast.walk(node)
        if isinstance(child, ast.JoinedStr) or (isinstance(child, ast.Constant) and isinstance(child.value, str | bytes))
    ]
    return [
        (string.lineno, string.col_offset, string.end_lineno, string.end_col_offset)
        for string in strings
        if string.end_lineno is not None and string.end_col_offset is not None
    ]


def _comment_start(raw: bytes, lineno: int, start: int, end: int, spans: Sequence[_Span]) -> int:
    """Where a ``#`` comment starts on this line between ``start`` and ``end`` (``end`` when none)."""
    position = raw.find(b"#", start, end)
    while position != -1:
        if not any((first, col) <= (lineno, position) < (last, end_col) for first, col, last, end_col in spans):
            return position
        position = raw.find(b"#", position + 1, end)
    return end


def _join(pieces: Iterable[str]) -> str:
    """Lines of a call joined as it would be written on one: no space inside brackets, no trailing comma."""
    text = ""
    for piece in pieces:
        if text and piece[0] in ")]}":
            text = text.removesuffix(",") + piece
        elif text and text[-1] not in "([{":
            text = f"{text} {piece}"
        else:
            text += piece
    return text
