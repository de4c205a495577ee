"""``lint``: the migration safety gate, on the exact SQL the pending migrations will run.

After the build the pending range is rendered in the new image by alembic's offline mode
(``upgrade --sql FROM:TO``: nothing connects, nothing runs), linted for locks and rewrites
and sized with the live tables (see :mod:`deployer.db.lint`); the environment's
``migration_policy`` says what a finding on a big table does: ``refuse`` the release,
``confirm`` it (``--yes``), or ``warn``. Before anything is built, preflight runs the same
gate on the migrations' operations (:func:`preview`), so a release that would be refused
is refused before it changes anything, and a dry run shows it.

On MySQL/MariaDB the gate says instead which pending statements are not transactional (each
DDL statement commits on its own: :mod:`deployer.db.ddl`), from the operations in preflight
and from the rendered SQL here; a migration that fails is then recovered from the backup.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from deployer.actions import Command, Read, Skip
from deployer.db import ddl
from deployer.db import lint as rules
from deployer.db.launcher import failure_reason, launched
from deployer.db.migrations import MigrationStep
from deployer.db.url import MYSQL, POSTGRESQL
from deployer.errors import DeployerError, RefusedError
from deployer.steps import PRIMARY, StepKind, register
from deployer.steps.common import confirm, migration_argv
from deployer.steps.context import Context
from deployer.steps.database_up import pending
from deployer.steps.migrate import one_off, splits
from deployer.steps.playbook import Step

# Rules about the code that serves until the switch: a revision that runs after it (a
# contract revision) cannot break that code.
AFTER_SWITCH_SAFE = frozenset({"renaming-column", "renaming-table"})


def render_argv(migrate_command: Sequence[str], start: str, head: str) -> list[str]:
    """``flask db upgrade`` -> ``flask db upgrade --sql START:HEAD`` (from an empty
    database: ``--sql HEAD``, which renders the whole history)."""
    argv = migration_argv(migrate_command, "upgrade", f"{start}:{head}" if start else head)
    return [*argv[:-1], "--sql", argv[-1]]


def source_findings(ctx: Context, todo: Iterable[MigrationStep], repo=None) -> list[rules.Finding]:  # noqa: ANN001
    """The findings read from the migrations' operations (their files at the commit)."""
    from deployer import source
    from deployer.db.oplint import operation_findings

    repo = repo or source.open_repo(ctx.target.config.root)
    found = []
    for step in todo:
        text = source.file_at(repo, ctx.known.commit.sha, step.path) if step.path else None
        for item in operation_findings(text or ""):
            found.append(rules.Finding(step.revision, item.rule, item.operation, item.table, from_source=True))
    return found


def live(ctx: Context, names: Iterable[str]) -> rules.LiveTables | None:
    """The tables' sizes now (None: the database cannot be read from here)."""
    from deployer.server import facts

    location = ctx.known.database
    if location is None or location.engine != POSTGRESQL:
        return None
    try:
        with facts.connectable_url(ctx.target, location) as url:
            return rules.read_tables(url, names)
    except DeployerError:
        return None
    except Exception:  # noqa: BLE001 - the sizes are best effort: unknown counts as big
        return None


def judged(ctx: Context, todo: Sequence[MigrationStep], findings: Iterable[rules.Finding], tables: rules.LiveTables | None,
           notes: Sequence[str] = ()) -> rules.Judgement:
    contract = {m.revision for m in todo if m.contract} if splits(ctx) else set()
    kept = [f for f in findings if not (f.revision in contract and f.rule in AFTER_SWITCH_SAFE)]
    if tables is not None:
        kept = rules.sized(kept, tables)
    else:
        notes = (*notes, "the tables' sizes could not be read: every finding counts as on a big table")
    kept = rules.waive(kept, {m.revision: m.waivers for m in todo})
    return rules.judge(kept, min_rows=ctx.env.lint_min_rows, notes=notes)


def enforce(ctx: Context, judgement: rules.Judgement, *, where: str) -> None:
    """Apply the environment's policy to the findings not yet confirmed in this run."""
    confirmed: set[tuple[str, str, str | None]] = ctx.scratch.setdefault("lint_confirmed", set())
    fresh = [f for f in judgement.blocking if (f.revision, f.rule, f.table) not in confirmed]
    policy = ctx.env.migration_policy
    shown = judgement.describe()
    if shown and not (fresh and policy == "refuse" and not ctx.options.dry_run):  # a refusal lists them itself
        ctx.log(f"migration lint ({where}):\n" + "\n".join(shown))
    if not fresh:
        return
    count = f"{len(fresh)} statement(s) of the pending migrations lock a big table or break the running code"
    waiver = "# deployer: allow " + ", ".join(sorted({f.rule for f in fresh}))
    if policy == "warn":
        ctx.log(f"warning: {count} (migration_policy = \"warn\")")
    elif policy == "refuse":
        listed = "\n".join(f"  - {f.describe()}" for f in fresh)
        if ctx.options.dry_run:
            ctx.log(f"(would refuse: {count})")
        else:
            raise RefusedError(
                f"{count} (migration_policy = \"refuse\"):\n{listed}",
                hint=f"make them safe as each says; or, once reviewed, waive the rule in the migration's file "
                     f"(`{waiver}`), or set migration_policy in deploy.toml",
            )
    else:
        confirm(ctx, f"{count}. Release anyway?",
                f"{count} (migration_policy = \"confirm\"); waive a reviewed one with `{waiver}` in its file")
    confirmed.update((f.revision, f.rule, f.table) for f in fresh)


def source_ddl(ctx: Context, todo: Iterable[MigrationStep], repo=None) -> list[ddl.Ddl]:  # noqa: ANN001
    """The DDL statements of the migrations' operations (their files at the commit)."""
    from deployer import source

    repo = repo or source.open_repo(ctx.target.config.root)
    found: list[ddl.Ddl] = []
    for step in todo:
        text = source.file_at(repo, ctx.known.commit.sha, step.path) if step.path else None
        found += ddl.from_source(step.revision, text or "")
    return found


def say_not_transactional(ctx: Context, items: list[ddl.Ddl], *, where: str) -> None:
    """Tell which pending statements MySQL commits on their own (kept for the plan and the JSON)."""
    lines = ddl.warning(items)
    ctx.scratch["not_transactional"] = lines
    if lines:
        ctx.log(f"migration gate ({where}):\n" + "\n".join(lines))


def preview(ctx: Context, repo=None) -> None:  # noqa: ANN001
    """Preflight's gate: the operations of the pending migrations, before anything is built.
    SQL built at run time (``sql-not-read``) waits for the rendered SQL after the build.
    MySQL/MariaDB: which of them are not transactional."""
    todo = ctx.known.pending
    if todo and ctx.known.database is not None and ctx.known.database.engine == MYSQL:
        say_not_transactional(ctx, source_ddl(ctx, todo, repo), where="the migrations' operations")
        return
    if not todo or ctx.known.database is None or ctx.known.database.engine != POSTGRESQL:
        return
    findings = [f for f in source_findings(ctx, todo, repo) if f.rule in rules.RULES]
    if not findings:
        return
    deferred = [f for f in findings if f.rule == "sql-not-read"]
    checked = [f for f in findings if f.rule != "sql-not-read"]
    tables = live(ctx, rules.tables_of(checked)) if checked else None
    notes = [f"{f.revision[:12]}: {f.statement} builds its SQL at run time: linted once rendered after the build"
             for f in deferred]
    enforce(ctx, judged(ctx, todo, checked, tables, notes), where="the migrations' operations")


def lint(ctx: Context, step: Step):  # noqa: ANN201 - StepBody
    todo = pending(ctx)
    if not todo:
        raise Skip("no migration pending")
    location = ctx.known.database
    if location is None or location.engine not in (POSTGRESQL, MYSQL):
        raise Skip(f"not linted: the lint reads PostgreSQL's and MySQL's SQL, this database is "
                   f"{location.engine if location else 'unknown'}")
    record = ctx.record
    revision = record.source.revision if record is not None and record.source.revision is not None else ctx.known.revision
    if revision is not None and len(revision) > 1:
        raise Skip(f"not linted: the database is at {len(revision)} revisions ({', '.join(revision)}); "
                   "alembic renders SQL from one")
    start = revision[0] if revision else ""
    heads = ctx.known.heads
    name = f"{ctx.app.name}-render-{ctx.run_id}"
    result = yield Command(one_off(ctx, launched(render_argv(ctx.app.migrate_command, start, heads[0])), name),
                           what="render the pending migrations' SQL (alembic's offline mode: nothing connects or runs)",
                           check=False, timeout=float(ctx.app.migrate_timeout))
    policy = f"migration_policy {ctx.env.migration_policy}"
    text = result.stdout if result is not None and not ctx.planning else ""
    done = set(rules.rendered_revisions(text))
    unrendered = [m for m in todo if m.revision not in done] if not ctx.planning else []
    notes: list[str] = []
    findings: list[rules.Finding] = []
    if unrendered:
        output = (result.stdout + "\n" + result.stderr) if result is not None else ""
        reason = failure_reason(output) or f"exit {result.exit_code if result is not None else '?'}"
        for m in unrendered:
            findings.append(rules.Finding(m.revision, "not-rendered", f"{m.message} (offline: {reason})", None))
        findings += source_findings(ctx, unrendered)
    if location.engine == MYSQL:
        return (yield from _mysql_gate(ctx, todo, text, done, unrendered))
    statements = rules.statements(text) if done else ()
    names = {n for s in statements for n in (s.table, s.index) if n} | set(rules.tables_of(findings))
    tables = yield Read("the sizes of the tables the migrations touch", lambda c: live(c, names))
    if ctx.planning:
        return f"lint the SQL of {len(todo)} migration(s) for locks on big tables ({policy})"
    if done:
        squawked = rules.run_squawk(text, pg_version=tables.server_version if tables else None)
        findings = rules.sql_findings(text, squawked, lock_timeout=ctx.env.lock_timeout) + findings
    judgement = judged(ctx, todo, findings, tables, notes)
    ctx.scratch["lint"] = judgement.to_dict()
    enforce(ctx, judgement, where="the rendered SQL")
    waived = f", {len(judgement.waived)} waived in their files" if judgement.waived else ""
    minor = [f for f in judgement.minor if not f.new_table]
    small = f", {len(minor)} on small tables" if minor else ""
    return (f"{len(done)} of {len(todo)} migration(s) rendered and linted: {len(judgement.blocking)} finding(s) on big tables"
            f"{small}{waived} ({policy})")


def _mysql_gate(ctx: Context, todo: Sequence[MigrationStep], text: str, done: set[str],
               unrendered: Sequence[MigrationStep]):  # noqa: ANN202 - a step body's tail
    """MySQL/MariaDB: say which of the rendered statements commit on their own (the
    operations of a revision that did not render)."""
    if ctx.planning:
        return f"say which statements of the {len(todo)} pending migration(s) MySQL/MariaDB commits on their own"
    items = [item for item in ddl.from_rendered(text) if item.revision in done] + source_ddl(ctx, unrendered)
    order = {m.revision: i for i, m in enumerate(todo)}
    items.sort(key=lambda item: order.get(item.revision, 0))
    say_not_transactional(ctx, items, where="the rendered SQL")
    ctx.scratch["lint"] = {"not_transactional": [item.to_dict() for item in items]}
    revisions = ddl.revisions_of(items)
    return (f"{len(done)} of {len(todo)} migration(s) rendered: {len(items)} DDL statement(s) in {len(revisions)} "
            "revision(s) that MySQL/MariaDB commits on its own (a failed migration is restored from the backup)")
    yield  # a generator like the step's body


register(StepKind(
    name="lint",
    scope=PRIMARY,
    summary="render the pending migrations' SQL in the new image; refuse locks on big tables (migration_policy)",
    run=lint,
))
