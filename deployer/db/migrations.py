"""What alembic knows about an app's migrations, and what its database says.

Migration scripts are read with :mod:`ast`, never imported: a release plans its
migrations from the files of the commit it ships (see :func:`scripts_from_sources`),
on a machine that has neither the app nor its dependencies installed, and a revision
module that imports the app would otherwise fail to load or, worse, run its code.
The revision graph itself is alembic's own :class:`~alembic.script.revision.RevisionMap`,
so heads, branches, merges and paths behave exactly as ``flask db upgrade`` sees them.

Layout read: Flask-Migrate's ``migrations/`` directory — ``alembic.ini``, ``env.py`` and
``versions/*.py``. Only ``versions/`` matters here; ``env.py`` is never loaded.
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeAlias

from deployer.db.url import redact_url
from deployer.errors import DeployerError, HostError

if TYPE_CHECKING:
    from alembic.script.revision import RevisionError, RevisionMap
    from sqlalchemy.engine import URL

__all__ = [
    "MigrationError",
    "MigrationScripts",
    "MigrationStep",
    "RevisionInfo",
    "Scripts",
    "Verdict",
    "VerdictKind",
    "database_revisions",
    "downgrade_path",
    "load_scripts",
    "redact_url",
    "script_heads",
    "scripts_from_sources",
    "upgrade_path",
    "verdict",
    "version_files",
]

VERSIONS_DIR = "versions"

# Which files alembic treats as revision scripts (alembic.script.base._only_source_rev_file):
# any *.py except __init__.py and editor lock files.
_REVISION_FILE = re.compile(r"(?!\.\#|__init__)(.*\.py)$")
# Files named after their revision, from before scripts declared ``revision = ...``.
_LEGACY_REVISION_FILE = re.compile(r"([a-f0-9]+)\.py$")

# alembic operations that throw data away. Index and constraint drops are left out on
# purpose: they lose no rows and are rebuilt by the opposite migration.
_DESTRUCTIVE_CALLS = {"drop_table": "drop table", "drop_column": "drop column"}
_SQL_CALLS = frozenset({"execute", "exec_driver_sql"})
_DESTRUCTIVE_SQL = re.compile(
    r"\b(?:DROP\s+(?:TABLE|COLUMN|SCHEMA|DATABASE)"
    r"|TRUNCATE"
    r"|DELETE\s+FROM"
    r"|ALTER\s+TABLE\s+(?:ONLY\s+)?[\w.\"]+\s+DROP\s+(?!CONSTRAINT|DEFAULT|NOT\s+NULL|EXPRESSION|IDENTITY))\b",
    re.IGNORECASE,
)
_SQL_SHOWN = 80

# While a zero-downtime release swaps containers, the old code runs on the new schema for a
# moment. These operations leave it working (it never reads what is new); anything else an
# upgrade does is "breaking" and the release pauses requests instead of overlapping.
_OVERLAP_SAFE_CALLS = frozenset({
    "create_table", "create_index", "create_foreign_key", "bulk_insert", "create_table_comment",
    "drop_table_comment", "drop_index", "drop_constraint", "batch_alter_table", "get_bind",
    "get_context", "f", "inline_literal", "run_async",
})
_OVERLAP_SAFE_SQL = re.compile(
    r"^\s*(?:CREATE\s+(?:UNIQUE\s+)?INDEX|CREATE\s+TABLE|CREATE\s+(?:OR\s+REPLACE\s+)?(?:VIEW|FUNCTION)|"
    r"CREATE\s+(?:SEQUENCE|EXTENSION|SCHEMA|TYPE)|INSERT|UPDATE|SELECT|COMMENT|GRANT|ANALYZE|SET\b|"
    r"DROP\s+INDEX)",
    re.IGNORECASE,
)
_OVERLAP_SAFE_ALTER = re.compile(
    r"^\s*ALTER\s+TABLE\s+(?:ONLY\s+)?[\w.\"]+\s+(?:ADD\s+(?:COLUMN\s+)?(?![^,;]*\bNOT\s+NULL\b(?![^,;]*\bDEFAULT\b))"
    r"(?![^,;]*\b(?:UNIQUE|CHECK|PRIMARY)\b)|ALTER\s+(?:COLUMN\s+)?[\w\"]+\s+(?:SET\s+DEFAULT|DROP\s+DEFAULT|DROP\s+NOT\s+NULL))",
    re.IGNORECASE,
)


class MigrationError(DeployerError):
    """The app's migration scripts cannot be read, or ask for something unsafe or impossible."""


@dataclass(frozen=True)
class RevisionInfo:
    """One migration script, as read from its source."""

    revision: str
    down_revision: str | tuple[str, ...] | None
    message: str
    path: str
    upgrade_destructive_ops: tuple[str, ...]
    downgrade_destructive_ops: tuple[str, ...]
    has_downgrade: bool
    branch_labels: tuple[str, ...] = ()
    depends_on: tuple[str, ...] = ()
    # Operations the code of the other side of the migration may not survive (see
    # :func:`overlap_breakers`): an upgrade's break the old code, a downgrade's the new.
    upgrade_breaking_ops: tuple[str, ...] = ()
    downgrade_breaking_ops: tuple[str, ...] = ()
    create_date: str = ""  # the "Create Date:" line alembic writes into the docstring ("" without one)
    # Marked in the file (see :func:`markers`): a contract revision runs only once the new code
    # serves and is healthy; waivers name lint rules a reviewed exception may break.
    contract: bool = False
    waivers: tuple[str, ...] = ()


@dataclass(frozen=True)
class MigrationStep:
    """One migration to run, in a path returned by :func:`upgrade_path` or :func:`downgrade_path`.

    ``destructive_ops`` are those of the direction the path runs: the ``upgrade()`` ops
    in an upgrade path, the ``downgrade()`` ops in a downgrade path — what running this
    step would throw away. ``down_revision`` is as in the script: ``None`` for a base, a
    tuple for a merge.
    """

    revision: str
    down_revision: str | tuple[str, ...] | None
    message: str
    destructive_ops: tuple[str, ...]
    has_downgrade: bool
    breaking_ops: tuple[str, ...] = ()  # why the code running now may fail on the result
    contract: bool = False  # marked `# deployer: contract`: runs after the switch
    waivers: tuple[str, ...] = ()  # lint rules its file allows (`# deployer: allow RULE`)
    path: str = field(default="", compare=False)  # the script's path (the lint reads it)


@dataclass(frozen=True)
class MigrationScripts:
    """The revision scripts of one migrations directory (or of one commit's copy of it)."""

    location: str
    revisions: Mapping[str, RevisionInfo]
    # alembic's RevisionMap of these scripts, built when a path is first asked for:
    # importing alembic costs more than everything else `deployer status` does locally.
    _built: dict[str, RevisionMap] = field(default_factory=dict, repr=False, compare=False)

    @property
    def _map(self) -> RevisionMap:
        if "map" not in self._built:
            self._built["map"] = _revision_map(self.location, self.revisions)
        return self._built["map"]

    @property
    def heads(self) -> tuple[str, ...]:
        """Head revisions, sorted; more than one means unmerged branches.

        Without ``depends_on`` a head is simply a revision no other one revises (what
        alembic's map says too, without importing it); with dependencies, alembic's map.
        """
        if any(info.depends_on for info in self.revisions.values()):
            return tuple(sorted(self._map.heads))
        revised = {down for info in self.revisions.values() for down in _as_tuple(info.down_revision)}
        return tuple(sorted(r for r in self.revisions if r not in revised))

    def get(self, revision: str) -> RevisionInfo | None:
        """The script of ``revision`` (a full id), or None when no script has that id."""
        return self.revisions.get(revision)

    def describe(self, revision: str) -> str:
        """``"abc123 (add users table)"`` for messages; the bare id when unknown."""
        info = self.revisions.get(revision)
        return f"{revision} ({info.message})" if info and info.message else revision


Scripts: TypeAlias = "MigrationScripts | str | os.PathLike[str]"


# --------------------------------------------------------------------------- loading


def load_scripts(migrations_dir: str | os.PathLike[str]) -> MigrationScripts:
    """Read the revision scripts of a Flask-Migrate ``migrations/`` directory.

    Nothing is imported: neither ``env.py`` (which imports the Flask app) nor the
    revision modules. Raises :class:`MigrationError` when the directory or its
    ``versions/`` folder is missing, or a script cannot be understood.
    """
    root = Path(migrations_dir)
    versions = root / VERSIONS_DIR
    if not root.is_dir():
        raise MigrationError(
            f"the migrations directory {root} does not exist",
            hint="set app.migrations_dir in deploy.toml to the folder `flask db init` created",
        )
    if not versions.is_dir():
        raise MigrationError(
            f"{root} has no {VERSIONS_DIR}/ folder, so it is not a Flask-Migrate migrations directory",
            hint="set app.migrations_dir in deploy.toml to the folder `flask db init` created",
        )
    sources: dict[str, str] = {}
    for entry in sorted(versions.iterdir()):
        if entry.is_file() and _REVISION_FILE.match(entry.name):
            sources[entry.name] = entry.read_text(encoding="utf-8")
    return scripts_from_sources(sources, location=str(root))


def version_files(paths: Iterable[str], migrations_dir: str) -> list[str]:
    """Pick the revision scripts out of a commit's file list (``git ls-tree -r --name-only``).

    ``migrations_dir`` is relative to the repository root, as in deploy.toml. Like
    alembic, only files directly in ``versions/`` count, not those of sub-folders.
    """
    versions = PurePosixPath(migrations_dir.strip("/") or ".") / VERSIONS_DIR
    picked = []
    for path in paths:
        candidate = PurePosixPath(path)
        if candidate.parent == versions and _REVISION_FILE.match(candidate.name):
            picked.append(path)
    return sorted(picked)


def scripts_from_sources(sources: Mapping[str, str], *, location: str) -> MigrationScripts:
    """Build :class:`MigrationScripts` from revision files held in memory.

    ``sources`` maps a file's path (only its name is used to filter, like alembic) to
    its text, e.g. the files :func:`version_files` picked, read with
    ``git cat-file blob SHA:PATH``. ``location`` names where they came from in messages
    (``"migrations at 1a2b3c4"``).
    """
    infos: dict[str, RevisionInfo] = {}
    for path in sorted(sources):
        name = PurePosixPath(path).name
        if not _REVISION_FILE.match(name):
            continue
        info = _read_revision(name, path, sources[path])
        if info.revision in infos:
            raise MigrationError(
                f"revision {info.revision} is defined twice in {location}: "
                f"{infos[info.revision].path} and {path}",
                hint="give one of them a new revision id (and fix the down_revision that points at it)",
            )
        infos[info.revision] = info
    for info in infos.values():
        for down in _as_tuple(info.down_revision) + info.depends_on:
            if down not in infos and not _is_branch_label(down, infos):
                raise MigrationError(
                    f"{info.path} (revision {info.revision}) revises {down}, "
                    f"which no migration script in {location} defines",
                    hint="a migration file is missing from the code; restore it from version control",
                )
    _check_acyclic(infos, location)
    scripts = MigrationScripts(location=location, revisions=MappingProxyType(infos))
    if any(i.depends_on or i.branch_labels for i in infos.values()):
        scripts._map  # noqa: B018 - alembic validates labels and dependencies now, not mid-release
    return scripts


def _revision_map(location: str, infos: Mapping[str, RevisionInfo]) -> RevisionMap:
    from alembic.script.revision import Revision, RevisionError, RevisionMap

    revision_map = RevisionMap(
        lambda: [
            Revision(
                i.revision,
                i.down_revision,
                dependencies=i.depends_on or None,
                branch_labels=i.branch_labels or None,
            )
            for i in infos.values()
        ]
    )
    try:
        revision_map.heads  # noqa: B018 - builds the graph now, so its errors surface here
    except RevisionError as exc:
        raise MigrationError(f"the migration scripts in {location} do not form a valid history: {exc}") from exc
    return revision_map


def _check_acyclic(infos: Mapping[str, RevisionInfo], location: str) -> None:
    """A revision that (through others) revises itself is no history: refuse it up front."""
    done: set[str] = set()
    for start in infos:
        if start in done:
            continue
        path: list[str] = []
        on_path: set[str] = set()
        stack: list[tuple[str, list[str]]] = [(start, _parents(infos, start))]
        path.append(start)
        on_path.add(start)
        while stack:
            node, pending = stack[-1]
            if not pending:
                stack.pop()
                path.pop()
                on_path.discard(node)
                done.add(node)
                continue
            parent = pending.pop()
            if parent in on_path:
                cycle = path[path.index(parent):] + [parent]
                raise MigrationError(
                    f"the migration scripts in {location} do not form a valid history: "
                    f"revision {parent} revises itself through {' -> '.join(cycle)}",
                    hint="fix the down_revision of one of these scripts",
                )
            if parent in done or parent not in infos:
                continue
            stack.append((parent, _parents(infos, parent)))
            path.append(parent)
            on_path.add(parent)


def _parents(infos: Mapping[str, RevisionInfo], revision: str) -> list[str]:
    info = infos[revision]
    return list(_as_tuple(info.down_revision) + info.depends_on)


def _is_branch_label(name: str, infos: Mapping[str, RevisionInfo]) -> bool:
    return any(name in i.branch_labels for i in infos.values())


def _as_tuple(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def _read_revision(name: str, path: str, source: str) -> RevisionInfo:
    try:
        module = ast.parse(source, filename=path)
    except SyntaxError as exc:
        raise MigrationError(
            f"migration script {path} is not valid Python (line {exc.lineno}: {exc.msg})",
            hint="fix the script; `flask db upgrade` would fail on it too",
        ) from exc
    values = _module_literals(module, path, ("revision", "down_revision", "branch_labels", "depends_on"))
    if "revision" in values:
        revision = values["revision"]
    else:
        legacy = _LEGACY_REVISION_FILE.match(name)
        if not legacy:
            raise MigrationError(
                f"migration script {path} declares no `revision = ...`",
                hint="every file in versions/ must be an alembic revision script",
            )
        revision = legacy.group(1)
    if "down_revision" not in values:
        raise MigrationError(
            f"migration script {path} declares no `down_revision = ...`",
            hint="use `down_revision = None` for the first migration",
        )
    down = values["down_revision"]
    if not isinstance(revision, str) or not revision:
        raise MigrationError(f"migration script {path}: `revision` must be a non-empty string")
    if not (down is None or isinstance(down, str) or _is_str_tuple(down)):
        raise MigrationError(f"migration script {path}: `down_revision` must be None, a string or a tuple of strings")
    down_revision: str | tuple[str, ...] | None
    if isinstance(down, (list, tuple)):
        down_revision = tuple(down) if len(down) > 1 else (down[0] if down else None)
    else:
        down_revision = str(down) if down else None  # checked above: a string or None

    functions = {n.name: n for n in module.body if isinstance(n, ast.FunctionDef)}
    strings = _module_strings(module)
    upgrade = functions.get("upgrade")
    downgrade = functions.get("downgrade")
    upgrade_is_noop = upgrade is None or not _effective_body(upgrade)
    if downgrade is None:
        has_downgrade = False
    elif not _effective_body(downgrade):
        # An empty downgrade undoes an empty upgrade (merge revisions, `flask db merge`)
        # perfectly; after a real upgrade it is a downgrade that was never written.
        has_downgrade = upgrade_is_noop
    else:
        has_downgrade = not any(isinstance(stmt, ast.Raise) for stmt in downgrade.body)
    return RevisionInfo(
        revision=revision,
        down_revision=down_revision,
        message=_message(module),
        create_date=_create_date(module),
        path=path,
        upgrade_destructive_ops=_destructive_ops(upgrade, functions, strings),
        downgrade_destructive_ops=_destructive_ops(downgrade, functions, strings),
        upgrade_breaking_ops=_breaking_ops(upgrade, functions, strings),
        downgrade_breaking_ops=_breaking_ops(downgrade, functions, strings),
        has_downgrade=has_downgrade,
        branch_labels=_label_tuple(values.get("branch_labels"), path, "branch_labels"),
        depends_on=_label_tuple(values.get("depends_on"), path, "depends_on"),
        **markers(source),
    )


# ``# deployer: contract`` and ``# deployer: allow RULE[, RULE] [-- why]`` lines of a script.
_MARKER = re.compile(r"^[ \t]*#[ \t]*deployer:[ \t]*(?P<what>contract|allow)\b(?P<rest>[^\n]*)$", re.MULTILINE | re.IGNORECASE)
_RULE_NAME = re.compile(r"[a-z][a-z0-9-]*")


def markers(source: str) -> dict[str, Any]:
    """What a migration script says about itself to deployer, in comments: ``contract``
    (run it only after the switch, see the release's ``contract`` step) and the lint rules
    it waives (``allow RULE``, several comma-separated, ``all`` for every rule; a reason
    may follow ``--``)."""
    contract = False
    waivers: list[str] = []
    for mark in _MARKER.finditer(source):
        if mark.group("what").lower() == "contract":
            contract = True
            continue
        rules = re.split(r"--|\(|:", mark.group("rest"), maxsplit=1)[0]
        waivers += _RULE_NAME.findall(rules.lower())
    return {"contract": contract, "waivers": tuple(dict.fromkeys(waivers))}


def _is_str_tuple(value: object) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)


def _label_tuple(value: object, path: str, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if _is_str_tuple(value):
        return tuple(value)  # type: ignore[arg-type]
    raise MigrationError(f"migration script {path}: `{name}` must be None, a string or a tuple of strings")


def _module_literals(module: ast.Module, path: str, names: Sequence[str]) -> dict[str, object]:
    """Module-level ``name = <literal>`` (annotated or not) for the given names."""
    found: dict[str, object] = {}
    for node in module.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id in names:
            try:
                found[target.id] = ast.literal_eval(value)
            except ValueError as exc:
                raise MigrationError(
                    f"migration script {path}: `{target.id}` must be written as a literal "
                    f"(found `{ast.unparse(value)}`)",
                    hint="deployer reads migration scripts without running them",
                ) from exc
    return found


def _message(module: ast.Module) -> str:
    # As alembic's Script.doc: the first paragraph of the module docstring.
    doc = ast.get_docstring(module, clean=False) or ""
    return re.split("\n\n", doc.strip())[0].strip()


def _create_date(module: ast.Module) -> str:
    # alembic's script template: "Create Date: 2024-05-01 12:00:00.123456" in the docstring.
    found = re.search(r"^\s*Create Date:\s*(\S.*?)\s*$", ast.get_docstring(module, clean=False) or "", re.MULTILINE)
    return found.group(1) if found else ""


def _effective_body(function: ast.FunctionDef) -> list[ast.stmt]:
    """The statements of a function that do something (no docstring, ``pass`` or ``...``)."""
    return [
        stmt
        for stmt in function.body
        if not isinstance(stmt, ast.Pass)
        and not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant))
    ]


def _module_strings(module: ast.Module) -> dict[str, str]:
    """Module-level ``NAME = "text"`` constants (a schema name, a SQL statement) by name."""
    found: dict[str, str] = {}
    for node in module.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        text = _literal_sql(value, {})
        for target in targets:
            if isinstance(target, ast.Name) and text is not None:
                found[target.id] = text
    return found


def _destructive_ops(
    function: ast.FunctionDef | None,
    module_functions: Mapping[str, ast.FunctionDef],
    module_strings: Mapping[str, str] | None = None,
) -> tuple[str, ...]:
    """Data-losing operations in ``function`` and in the functions it calls by name, in source order.

    Statements are followed in order, so each ``batch_op`` is the one of the ``with
    op.batch_alter_table(...)`` block it runs in (autogenerate names every block
    ``batch_op``); a module-level helper called with a batch object, or a function
    defined inside ``function``, sees the block of its call site.
    """
    if function is None:
        return ()
    finder = _OpFinder(module_functions, module_strings or {})
    finder.call(function, _Names(strings=dict(module_strings or {})))
    return tuple(dict.fromkeys(finder.ops))  # the same operation twice is one data loss


def _breaking_ops(
    function: ast.FunctionDef | None,
    module_functions: Mapping[str, ast.FunctionDef],
    module_strings: Mapping[str, str] | None = None,
) -> tuple[str, ...]:
    """Operations in ``function`` that the code of the other side may not survive while both
    run (a column dropped, renamed, retyped or made NOT NULL; a constraint added; SQL that
    is not known to be additive). Errs on the side of breaking: pause mode only delays."""
    if function is None:
        return ()
    finder = _OpFinder(module_functions, module_strings or {})
    finder.call(function, _Names(strings=dict(module_strings or {})))
    return tuple(dict.fromkeys(finder.breaking))


@dataclass
class _Names:
    """What the names of one scope hold, as far as finding data loss goes."""

    batches: dict[str, str] = field(default_factory=dict)  # batch receiver -> "schema.table"
    strings: dict[str, str] = field(default_factory=dict)  # name -> its text (SQL, a schema)
    functions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = field(default_factory=dict)

    def copy(self) -> _Names:
        return _Names(dict(self.batches), dict(self.strings), dict(self.functions))


# How deep helper calls are followed: far beyond what a migration does, short of a runaway.
_CALL_DEPTH = 16


class _OpFinder:
    """Walks a migration function's statements in order, collecting data-losing operations."""

    def __init__(self, module_functions: Mapping[str, ast.FunctionDef], module_strings: Mapping[str, str]) -> None:
        self.module_functions = module_functions
        self.module_strings = module_strings
        self.ops: list[str] = []
        self.breaking: list[str] = []
        self.active: list[ast.AST] = []  # the calls being followed, innermost last
        self.followed: list[ast.AST] = []  # every function a call led to

    def call(self, function: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda, names: _Names) -> None:
        """Follow one call of ``function`` in the scope ``names`` (parameters already bound)."""
        if function in self.active or len(self.active) >= _CALL_DEPTH:
            return  # recursion: its operations are already being counted
        self.active.append(function)
        try:
            if isinstance(function, ast.Lambda):
                self.expression(function.body, names)
                return
            self.block(function.body, names)
            # A function defined here but never called by name may still run (a callback,
            # a loop over functions): counting its operations errs on the side of warning.
            called = {id(f) for f in self.followed}
            for nested in names.functions.values():
                if id(nested) not in called and _defined_in(function, nested):
                    self.followed.append(nested)
                    self.call(nested, names.copy())
        finally:
            self.active.pop()

    def block(self, statements: Sequence[ast.stmt], names: _Names) -> None:
        for statement in statements:
            self.statement(statement, names)

    def statement(self, node: ast.stmt, names: _Names) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.functions[node.name] = node  # runs when called, in the caller's scope
            return
        if isinstance(node, ast.ClassDef):
            return
        if isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                self.expression(item.context_expr, names)
                if isinstance(item.optional_vars, ast.Name):
                    table = self.batch_table(item.context_expr, names)
                    if table is not None:
                        names.batches[item.optional_vars.id] = table
                    else:
                        self.forget(item.optional_vars.id, names)
            # Python keeps a with-target bound after its block, so no scope ends here:
            # the next block's own `as batch_op` rebinds the name.
            self.block(node.body, names)
            return
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            self.expression(node.value, names)
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    self.assign(target.id, node.value, names)
            return
        for child in ast.iter_child_nodes(node):
            self.child(child, names)

    def child(self, node: ast.AST, names: _Names) -> None:
        if isinstance(node, ast.stmt):
            self.statement(node, names)
        elif isinstance(node, ast.expr):
            self.expression(node, names)
        else:  # except handlers, match cases, keywords: their statements and expressions
            for child in ast.iter_child_nodes(node):
                self.child(child, names)

    def assign(self, name: str, value: ast.expr, names: _Names) -> None:
        self.forget(name, names)
        if isinstance(value, ast.Name) and value.id in names.batches:
            names.batches[name] = names.batches[value.id]  # an alias of a batch object
            return
        text = _literal_sql(value, names.strings)
        if text is not None:
            names.strings[name] = text

    @staticmethod
    def forget(name: str, names: _Names) -> None:
        names.batches.pop(name, None)
        names.strings.pop(name, None)

    def expression(self, node: ast.expr, names: _Names) -> None:
        if isinstance(node, ast.Lambda):
            self.call(node, names.copy())
            return
        if isinstance(node, ast.Call):
            self.check_call(node, names)
        for child in ast.iter_child_nodes(node):
            self.child(child, names)

    def check_call(self, node: ast.Call, names: _Names) -> None:
        func = node.func
        if isinstance(func, ast.Name):
            self.follow(func.id, node, names)
            return
        if not isinstance(func, ast.Attribute):
            return
        receiver = func.value
        if isinstance(receiver, ast.Name) and (receiver.id == "op" or receiver.id in names.batches):
            why = self.breaks_overlap(node, names)
            if why:
                self.breaking.append(why)
        if func.attr in _DESTRUCTIVE_CALLS:
            described = self.describe_drop(node, names)
            if described:
                self.ops.append(described)
        elif func.attr in _SQL_CALLS:
            for text in self.sql_texts(node, names):
                if _DESTRUCTIVE_SQL.search(text):
                    sql = " ".join(text.split())
                    if len(sql) > _SQL_SHOWN:
                        sql = sql[: _SQL_SHOWN - 1] + "…"
                    self.ops.append(f"execute {sql}")
                    break

    def follow(self, name: str, call: ast.Call, names: _Names) -> None:
        """A call of a function by name: one defined in the current scope, or at module level."""
        nested = names.functions.get(name)
        if nested is not None:
            scope = names.copy()  # a closure sees its enclosing scope as it is at the call
        else:
            module_level = self.module_functions.get(name)
            if module_level is None:
                return
            nested = module_level
            scope = _Names(strings=dict(self.module_strings))
        self.followed.append(nested)
        for parameter, argument in _bound_arguments(nested, call):
            self.forget(parameter, scope)
            if isinstance(argument, ast.Name) and argument.id in names.batches:
                scope.batches[parameter] = names.batches[argument.id]
            else:
                text = _literal_sql(argument, names.strings)
                if text is not None:
                    scope.strings[parameter] = text
        self.call(nested, scope)

    def batch_table(self, node: ast.expr, names: _Names) -> str | None:
        """``"s.t"`` for ``op.batch_alter_table("t", schema="s")``; None for another context manager."""
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "batch_alter_table"):
            return None
        return self.qualified(_argument(node, 0, "table_name"), _argument(node, 1, "schema"), names)

    def qualified(self, table: ast.expr | None, schema: ast.expr | None, names: _Names) -> str:
        shown = self.shown(table, names)
        if schema is None or (isinstance(schema, ast.Constant) and schema.value is None):
            return shown
        return f"{self.shown(schema, names)}.{shown}"

    def shown(self, node: ast.expr | None, names: _Names) -> str:
        if node is None:
            return "?"
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Name) and node.id in names.strings:
            return names.strings[node.id]
        return ast.unparse(node)

    def describe_drop(self, call: ast.Call, names: _Names) -> str | None:
        assert isinstance(call.func, ast.Attribute)  # check_call only sends method calls
        method = call.func.attr
        receiver = call.func.value
        label = _DESTRUCTIVE_CALLS[method]
        schema = _keyword(call, "schema")
        if method == "drop_table":
            return f"{label} {self.qualified(_argument(call, 0, 'table_name'), schema, names)}"
        batch = names.batches.get(receiver.id) if isinstance(receiver, ast.Name) else None
        table = _argument(call, 0, "table_name")
        column = _argument(call, 1, "column_name")
        if batch is None and column is None and _keyword(call, "table_name") is None:
            # One argument: a batch object's drop_column(column) on a receiver we could not
            # trace back to its block (passed in from somewhere we do not follow).
            batch = "?" if table is not None or _keyword(call, "column_name") is not None else None
            if batch is None:
                return None
        if batch is not None:
            return f"{label} {batch}.{self.shown(_argument(call, 0, 'column_name'), names)}"
        return f"{label} {self.qualified(table, schema, names)}.{self.shown(column, names)}"

    def breaks_overlap(self, call: ast.Call, names: _Names) -> str | None:
        """Why this alembic operation breaks code that does not know it; None if it does not."""
        assert isinstance(call.func, ast.Attribute)
        method = call.func.attr
        if method in _OVERLAP_SAFE_CALLS:
            return None
        if method == "add_column":
            column = next((a for a in [*call.args, *(k.value for k in call.keywords)]
                           if isinstance(a, ast.Call) and _call_name(a) == "Column"), None)
            if column is None:
                return "add_column of a column that cannot be read"
            required = _keyword_is(column, "nullable", False) or _keyword_is(column, "primary_key", True)
            if required and _keyword(column, "server_default") is None:
                return f"add NOT NULL column {self.shown(_argument(column, 0, 'name'), names)} without a server default"
            if _keyword(column, "unique") is not None and not _keyword_is(column, "unique", False):
                return f"add unique column {self.shown(_argument(column, 0, 'name'), names)}"
            return None
        if method == "alter_column":
            name = self.shown(_argument(call, 1, "column_name") if _argument(call, 1, "column_name") is not None
                              else _argument(call, 0, "column_name"), names)
            if _keyword(call, "new_column_name") is not None:
                return f"rename column {name}"
            if _keyword(call, "type_") is not None:
                return f"change the type of column {name}"
            if _keyword_is(call, "nullable", False):
                return f"make column {name} NOT NULL"
            return None
        if method in _SQL_CALLS:
            texts = self.sql_texts(call, names)
            if not texts:
                return "execute SQL that cannot be read"
            for text in texts:
                for statement in (part for part in text.split(";") if part.strip()):
                    if not (_OVERLAP_SAFE_SQL.match(statement) or _OVERLAP_SAFE_ALTER.match(statement)):
                        sql = " ".join(statement.split())
                        return f"execute {sql[: _SQL_SHOWN - 1] + '…' if len(sql) > _SQL_SHOWN else sql}"
            return None
        if method in _DESTRUCTIVE_CALLS:
            return self.describe_drop(call, names) or _DESTRUCTIVE_CALLS[method]
        if method == "rename_table":
            return f"rename table {self.shown(_argument(call, 0, 'old_table_name'), names)}"
        return method.replace("_", " ")  # an operation not known to be safe for the old code

    def sql_texts(self, call: ast.Call, names: _Names) -> list[str]:
        """The SQL an ``execute`` call may run: its literals, and the text of names holding SQL."""
        texts = []
        for argument in [*call.args, *(k.value for k in call.keywords)]:
            for node in ast.walk(argument):
                text = _literal_sql(node, names.strings)
                if text is not None:
                    texts.append(text)
        return texts


def _defined_in(function: ast.AST, nested: ast.AST) -> bool:
    return any(node is nested for node in ast.walk(function))


def _bound_arguments(
    function: ast.FunctionDef | ast.AsyncFunctionDef, call: ast.Call
) -> list[tuple[str, ast.expr]]:
    """(parameter, argument) pairs of a call, positional and keyword; starred ones are left out."""
    parameters = [a.arg for a in (*function.args.posonlyargs, *function.args.args)]
    pairs: list[tuple[str, ast.expr]] = []
    for parameter, argument in zip(parameters, call.args, strict=False):
        if isinstance(argument, ast.Starred):
            break
        pairs.append((parameter, argument))
    known = {a.arg for a in (*function.args.args, *function.args.kwonlyargs)}
    pairs += [(k.arg, k.value) for k in call.keywords if k.arg in known]
    return pairs


def _literal_sql(node: ast.AST, strings: Mapping[str, str]) -> str | None:
    """The text of a string literal, an f-string (``{...}`` kept), or a name known to hold one."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(
            str(part.value) if isinstance(part, ast.Constant)
            else "{" + ast.unparse(part.value) + "}" if isinstance(part, ast.FormattedValue)
            else ast.unparse(part)
            for part in node.values
        )
    if isinstance(node, ast.Name):
        return strings.get(node.id)
    if isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute)) and len(node.args) == 1:
        # sa.text("..."), text(sql)
        name = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
        if name == "text":
            return _literal_sql(node.args[0], strings)
    return None


def _argument(call: ast.Call, position: int, keyword: str) -> ast.expr | None:
    if len(call.args) > position and not isinstance(call.args[position], ast.Starred):
        return call.args[position]
    return _keyword(call, keyword)


def _call_name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _keyword_is(call: ast.Call, keyword: str, value: object) -> bool:
    node = _keyword(call, keyword)
    return isinstance(node, ast.Constant) and node.value is value


def _keyword(call: ast.Call, keyword: str) -> ast.expr | None:
    for kw in call.keywords:
        if kw.arg == keyword:
            return kw.value
    return None


# --------------------------------------------------------------------------- paths


def _as_scripts(scripts: Scripts) -> MigrationScripts:
    if isinstance(scripts, MigrationScripts):
        return scripts
    return load_scripts(scripts)


def script_heads(migrations_dir: Scripts) -> tuple[str, ...]:
    """The head revisions of the scripts (sorted); normally exactly one."""
    return _as_scripts(migrations_dir).heads


def _current_tuple(current: str | Sequence[str] | None) -> tuple[str, ...]:
    return tuple(r for r in _as_tuple(current) if r)


def _check_known(scripts: MigrationScripts, current: tuple[str, ...]) -> None:
    unknown = [r for r in current if r not in scripts.revisions]
    if unknown:
        raise MigrationError(
            f"the database is at {', '.join(unknown)}, which no migration script in {scripts.location} "
            f"knows — is the database ahead of this code?",
            hint="deploy the code that contains that revision (a newer release), "
            "or check that app.migrations_dir points at this app's migrations",
        )


def _refuse_multiple_heads(scripts: MigrationScripts) -> None:
    heads = scripts.heads
    if len(heads) > 1:
        listed = "; ".join(scripts.describe(h) for h in heads)
        raise MigrationError(
            f"the migrations in {scripts.location} have {len(heads)} heads: {listed}",
            hint="merge them with `flask db merge heads -m \"merge heads\"`, commit the new script and release again",
        )


def _resolve_target(scripts: MigrationScripts, target: str) -> str | tuple[str, ...]:
    if target in ("head", "heads"):
        _refuse_multiple_heads(scripts)
        return scripts.heads
    return target


def _step(info: RevisionInfo, *, upgrade: bool) -> MigrationStep:
    return MigrationStep(
        revision=info.revision,
        down_revision=info.down_revision,
        message=info.message,
        destructive_ops=info.upgrade_destructive_ops if upgrade else info.downgrade_destructive_ops,
        has_downgrade=info.has_downgrade,
        breaking_ops=info.upgrade_breaking_ops if upgrade else info.downgrade_breaking_ops,
        contract=info.contract,
        waivers=info.waivers,
        path=info.path,
    )


def upgrade_path(
    migrations_dir: Scripts, current: str | Sequence[str] | None, target: str = "heads"
) -> list[MigrationStep]:
    """The migrations ``alembic upgrade target`` would run from ``current``, in apply order.

    ``current`` is the database's revision(s) (None or ``()`` for an empty database);
    ``target`` is ``"heads"``/``"head"`` (refused when the scripts have several heads)
    or a revision id. Raises :class:`MigrationError` for an unknown current or target
    revision, multiple heads, or a target that is not ahead of ``current``.
    """
    scripts = _as_scripts(migrations_dir)
    currents = _current_tuple(current)
    _check_known(scripts, currents)
    destination = _resolve_target(scripts, target)
    if not destination:  # no scripts at all: nothing to run
        return []
    if set(_as_tuple(destination)) == set(currents):
        return []  # already there: no need for alembic's map (nor its import, ~0.35 s)
    from alembic.script.revision import MultipleHeads, RangeNotAncestorError, RevisionError

    try:
        revisions = list(scripts._map.iterate_revisions(destination, currents or None, implicit_base=True))
    except RangeNotAncestorError as exc:
        raise MigrationError(
            f"{_shown_revs(destination)} is not ahead of the database's {_shown_revs(currents)}; "
            "reaching it needs a downgrade",
            hint="use a rollback to go back to an older revision",
        ) from exc
    except MultipleHeads as exc:  # a branch-label target with several heads
        raise MigrationError(f"{target} names more than one head in {scripts.location}: {exc}") from exc
    except RevisionError as exc:
        raise _revision_error(scripts, target, exc) from exc
    if not revisions and currents and _is_behind(scripts, _as_tuple(destination), currents):
        # alembic treats "upgrade to an older revision" as nothing to do; for a release
        # plan that silently keeps a newer schema, so say it.
        raise MigrationError(
            f"{_shown_revs(destination)} is not ahead of the database's {_shown_revs(currents)}; "
            "reaching it needs a downgrade",
            hint="use a rollback to go back to an older revision",
        )
    return [_step(scripts.revisions[r.revision], upgrade=True) for r in reversed(revisions)]


def _is_behind(scripts: MigrationScripts, target: tuple[str, ...], currents: tuple[str, ...]) -> bool:
    """True when reaching ``target`` from ``currents`` means undoing migrations."""
    from alembic.script.revision import RevisionError

    if set(target) == set(currents) or len(target) != 1:
        return False
    try:
        return bool(list(scripts._map.iterate_revisions(currents, target[0], select_for_downgrade=True)))
    except RevisionError:
        return False


def downgrade_path(
    migrations_dir: Scripts, current: str | Sequence[str] | None, target: str | None
) -> list[MigrationStep]:
    """The migrations ``alembic downgrade target`` would undo from ``current``, in apply order.

    The first step is the newest revision. ``target`` is a revision id, ``"base"`` or
    None (both mean: undo everything), or a relative ``"-N"``. Each step's
    ``destructive_ops`` are those of its ``downgrade()``; check ``has_downgrade`` before
    running a path. Raises :class:`MigrationError` for unknown revisions or a target that
    is not behind ``current``.
    """
    from alembic.script.revision import RangeNotAncestorError, RevisionError

    scripts = _as_scripts(migrations_dir)
    currents = _current_tuple(current)
    _check_known(scripts, currents)
    if not currents:
        if target in (None, "base"):
            return []
        raise MigrationError(f"the database has no migration applied, so it cannot go down to {target}")
    destination = target or "base"
    try:
        revisions = list(scripts._map.iterate_revisions(currents, destination, select_for_downgrade=True))
    except RangeNotAncestorError as exc:
        raise MigrationError(
            f"{destination} is not behind the database's {_shown_revs(currents)}; reaching it needs an upgrade",
            hint="release the code instead of rolling back",
        ) from exc
    except RevisionError as exc:
        raise _revision_error(scripts, destination, exc) from exc
    return [_step(scripts.revisions[r.revision], upgrade=False) for r in revisions]


def _revision_error(scripts: MigrationScripts, target: str, exc: RevisionError) -> MigrationError:
    from alembic.script.revision import ResolutionError

    if isinstance(exc, ResolutionError):
        return MigrationError(
            f"no migration script in {scripts.location} has revision {target}",
            hint=f"known heads: {', '.join(scripts.describe(h) for h in scripts.heads) or 'none'}",
        )
    return MigrationError(f"cannot plan migrations to {target} in {scripts.location}: {exc}")


def _shown_revs(revisions: str | Sequence[str]) -> str:
    revs = _as_tuple(revisions)
    return ", ".join(revs) if revs else "base (no migration applied)"


# --------------------------------------------------------------------------- verdict


class VerdictKind(Enum):
    """Where a database stands against the migration scripts of some code."""

    UP_TO_DATE = "up to date"
    PENDING = "pending"
    NOT_INITIALISED = "not initialised"
    AHEAD = "ahead"
    UNKNOWN_REVISION = "unknown revision"
    MULTIPLE_HEADS = "multiple heads"


@dataclass(frozen=True)
class Verdict:
    """The result of :func:`verdict`.

    ``steps`` are the upgrades still to run (PENDING, NOT_INITIALISED) or the downgrades
    that would bring the database back to the target (AHEAD), in apply order.
    ``unknown`` lists database revisions no script knows (UNKNOWN_REVISION).
    """

    kind: VerdictKind
    database: tuple[str, ...]
    heads: tuple[str, ...]
    steps: tuple[MigrationStep, ...] = ()
    unknown: tuple[str, ...] = ()

    @property
    def summary(self) -> str:
        """One sentence for a status line."""
        db = ", ".join(self.database) or "no revision"
        heads = ", ".join(self.heads) or "none"
        if self.kind is VerdictKind.UP_TO_DATE:
            return f"up to date at {heads}" if self.heads else "up to date (no migrations)"
        if self.kind is VerdictKind.PENDING:
            return f"{len(self.steps)} migration(s) pending: {db} -> {heads}"
        if self.kind is VerdictKind.NOT_INITIALISED:
            return f"not initialised (no alembic revision); {len(self.steps)} migration(s) to run up to {heads}"
        if self.kind is VerdictKind.AHEAD:
            return f"database at {db} is {len(self.steps)} migration(s) ahead of {heads}"
        if self.kind is VerdictKind.UNKNOWN_REVISION:
            return f"database at {', '.join(self.unknown)}, unknown to this code (is the database ahead of it?)"
        return f"the code has {len(self.heads)} heads ({heads}); merge them before releasing"


def verdict(
    db_revisions: Sequence[str], scripts: Scripts, *, target: str | None = None
) -> Verdict:
    """Compare a database's revisions with migration scripts.

    Pure, and every database state is a verdict, not an exception; only a ``target``
    no script knows raises :class:`MigrationError`. ``target`` defaults to the scripts'
    head(s). Passing an older revision (e.g. the head of the deployed commit, with the
    scripts of a newer one) lets AHEAD be told apart from PENDING: a database beyond the
    target says which downgrades reach it.
    """
    loaded = _as_scripts(scripts)
    database = tuple(sorted(r for r in db_revisions if r))
    unknown = tuple(r for r in database if r not in loaded.revisions)
    if target in (None, "head", "heads"):
        heads = loaded.heads
        if len(heads) > 1:
            return Verdict(VerdictKind.MULTIPLE_HEADS, database, heads)
        if not unknown and database and set(database) == set(heads):
            return Verdict(VerdictKind.UP_TO_DATE, database, heads)  # the everyday case: no alembic needed
    # Every other answer walks alembic's revision map.
    from alembic.script.revision import Revision, RevisionError

    if target not in (None, "head", "heads"):
        try:
            resolved = loaded._map.get_revisions(target)
        except RevisionError as exc:
            raise _revision_error(loaded, target, exc) from exc
        heads = tuple(sorted(r.revision for r in resolved if isinstance(r, Revision)))
    if unknown:
        return Verdict(VerdictKind.UNKNOWN_REVISION, database, heads, unknown=unknown)
    if not database:
        steps = tuple(upgrade_path(loaded, None, heads[0] if len(heads) == 1 else "heads")) if heads else ()
        if not steps:
            return Verdict(VerdictKind.UP_TO_DATE, database, heads)
        return Verdict(VerdictKind.NOT_INITIALISED, database, heads, steps=steps)
    if set(database) == set(heads):
        return Verdict(VerdictKind.UP_TO_DATE, database, heads)
    try:
        ups = tuple(
            _step(loaded.revisions[r.revision], upgrade=True)
            for r in reversed(list(loaded._map.iterate_revisions(heads, database, implicit_base=True)))
        )
        if ups:
            return Verdict(VerdictKind.PENDING, database, heads, steps=ups)
    except RevisionError:
        pass
    if len(heads) == 1:
        try:
            downs = tuple(
                _step(loaded.revisions[r.revision], upgrade=False)
                for r in loaded._map.iterate_revisions(database, heads[0], select_for_downgrade=True)
            )
            if downs:
                return Verdict(VerdictKind.AHEAD, database, heads, steps=downs)
        except RevisionError:
            pass
    # alembic would do nothing in either direction (e.g. the database also holds another
    # branch's head): as far as reaching the target goes, it is there.
    return Verdict(VerdictKind.UP_TO_DATE, database, heads)


# --------------------------------------------------------------------------- database


def _engine_url(url: str) -> URL:
    """The URL deployer connects with: a PostgreSQL URL without a driver gets psycopg2.

    Apps' ``DATABASE_URL`` is often ``postgres://`` (Heroku style, a scheme SQLAlchemy
    no longer accepts) or ``postgresql://`` (whose default driver is psycopg 3 since
    SQLAlchemy 2.1); deployer ships psycopg2, so that is the driver it uses.
    """
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg2")
    return parsed


def database_revisions(
    url: str,
    *,
    connect_timeout: int = 10,
    version_table: str = "alembic_version",
    version_table_schema: str | None = None,
) -> tuple[str, ...]:
    """The revision(s) alembic recorded in the database at ``url``, sorted.

    An empty tuple means no migration was applied (no ``alembic_version`` table, or an
    empty one). Raises :class:`~deployer.errors.HostError` when the database cannot be
    reached or refuses us, :class:`~deployer.errors.ConfigError` for a malformed URL;
    the password never appears in a message.
    """
    from deployer.db.url import mysql_params, pg_params

    params = pg_params(url)
    if params is not None:
        return _libpq_revisions(url, params, connect_timeout, version_table, version_table_schema)
    if mysql_params(url) is not None:
        from deployer.db.mysql import revisions  # PyMySQL alone, whatever driver the app's URL names

        return revisions(url, connect_timeout=connect_timeout, version_table=version_table,
                         version_table_schema=version_table_schema)
    from sqlalchemy import column, create_engine, inspect, select, table
    from sqlalchemy.exc import (
        ArgumentError,
        DBAPIError,
        NoSuchModuleError,
        SQLAlchemyError,
    )
    from sqlalchemy.pool import NullPool

    from deployer.errors import ConfigError

    shown = redact_url(url)
    try:
        parsed = _engine_url(url)
        connect_args: dict[str, object] = {}
        if parsed.get_backend_name() in ("postgresql", "mysql", "mariadb"):
            connect_args["connect_timeout"] = max(1, int(connect_timeout))
        if parsed.get_backend_name() == "postgresql":
            # A server that accepts the connection but hangs (a lock held by a running
            # migration) must not hang us: bound every statement too.
            connect_args["options"] = f"-c statement_timeout={max(1, int(connect_timeout)) * 1000}"
        engine = create_engine(parsed, poolclass=NullPool, connect_args=connect_args)
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise ConfigError(
            f"the database URL {shown} is not valid: {exc}",
            hint="use a SQLAlchemy URL such as postgresql+psycopg2://user:password@host:5432/dbname",
        ) from exc
    try:
        with engine.connect() as connection:
            # What alembic's MigrationContext.get_current_heads() reads, without importing
            # alembic's runtime: no version table means no migration was applied.
            if not inspect(connection).has_table(version_table, schema=version_table_schema):
                return ()
            versions = table(version_table, column("version_num"), schema=version_table_schema)
            heads = [row[0] for row in connection.execute(select(versions.c.version_num))]
        return tuple(sorted(h for h in heads if h))
    except DBAPIError as exc:
        reason = _driver_reason(exc)
        if exc.connection_invalidated or _is_connection_failure(exc):
            raise HostError(
                f"cannot read the migration state of the database {shown}: {reason}",
                hint=_connection_hint(reason),
            ) from exc
        raise DeployerError(
            f"reading {version_table} from the database {shown} failed: {reason}",
            hint="check that the database user may read the alembic version table",
        ) from exc
    except SQLAlchemyError as exc:
        raise HostError(f"cannot read the migration state of the database {shown}: {exc}") from exc
    finally:
        engine.dispose()


# What SQLAlchemy's has_table asks PostgreSQL (a table the search path sees, or in a schema).
_VERSION_TABLE_SQL = "SELECT to_regclass(CASE WHEN %(schema)s IS NULL THEN quote_ident(%(table)s) " \
    "ELSE quote_ident(%(schema)s) || '.' || quote_ident(%(table)s) END)"


def _libpq_revisions(
    url: str, params: dict[str, str], connect_timeout: int, version_table: str, version_table_schema: str | None
) -> tuple[str, ...]:
    """:func:`database_revisions` for a URL libpq reads: psycopg2 alone, no SQLAlchemy."""
    import psycopg2
    from psycopg2 import sql

    timeout = max(1, int(connect_timeout))
    # A server that accepts the connection but hangs (a lock held by a running migration)
    # must not hang us: bound every statement too.
    options = " ".join(filter(None, [params.get("options"), f"-c statement_timeout={timeout * 1000}"]))
    try:
        connection = psycopg2.connect(**{**params, "connect_timeout": str(timeout), "options": options})
    except psycopg2.Error as exc:
        reason = _driver_reason(exc)
        raise HostError(
            f"cannot read the migration state of the database {redact_url(url)}: {reason}", hint=_connection_hint(reason)
        ) from None
    try:
        with connection.cursor() as cursor:
            cursor.execute(_VERSION_TABLE_SQL, {"schema": version_table_schema, "table": version_table})
            if cursor.fetchone()[0] is None:
                return ()
            name = sql.Identifier(*filter(None, [version_table_schema, version_table]))
            cursor.execute(sql.SQL("SELECT version_num FROM {}").format(name))
            heads = [row[0] for row in cursor.fetchall()]
        return tuple(sorted(h for h in heads if h))
    except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
        reason = _driver_reason(exc)
        raise HostError(
            f"cannot read the migration state of the database {redact_url(url)}: {reason}", hint=_connection_hint(reason)
        ) from None
    except psycopg2.Error as exc:
        raise DeployerError(
            f"reading {version_table} from the database {redact_url(url)} failed: {_driver_reason(exc)}",
            hint="check that the database user may read the alembic version table",
        ) from None
    finally:
        connection.close()


def _driver_reason(exc: Exception) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(orig).strip().splitlines() if line.strip()]
    return " ".join(lines) or type(orig).__name__


def _is_connection_failure(exc: Exception) -> bool:
    from sqlalchemy.exc import InterfaceError, OperationalError

    return isinstance(exc, (OperationalError, InterfaceError))


def _connection_hint(reason: str) -> str:
    lowered = reason.lower()
    if "password" in lowered or "authentication" in lowered:
        return "check the user and password of the database URL"
    if "timeout" in lowered or "timed out" in lowered:
        return "the database did not answer in time: is it up, and is the port reachable (firewall, tunnel)?"
    if "does not exist" in lowered:
        return "check the database name of the database URL"
    return "is the database running, and is its port published or forwarded where deployer connects?"
