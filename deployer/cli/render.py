"""Text rendering for the terminal (rich), kept apart from the logic that produces the data."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _flatten(prefix: str, value: Any, rows: list[tuple[str, str]]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, rows)
    elif isinstance(value, (list, tuple)):
        rows.append((prefix, " ".join(str(v) for v in value)))
    else:
        rows.append((prefix, "" if value is None else str(value)))


def render_mapping(data: Mapping[str, Any]) -> None:
    """Print a nested mapping as a two-column table of dotted keys and values."""
    from rich.console import Console
    from rich.table import Table

    rows: list[tuple[str, str]] = []
    _flatten("", data, rows)
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, value)
    Console(soft_wrap=True).print(table)


def progress_printer():  # noqa: ANN201 - Callable[[str], None]
    """Step progress on stderr (stdout stays clean for --json)."""
    from rich.console import Console

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    broken = False

    def log(line: str) -> None:
        nonlocal broken
        if broken:
            return
        style = None
        if line.startswith("✓"):
            style = "green"
        elif line.startswith("x ") or line.startswith("warning"):
            style = "red"
        elif line.startswith("  |"):
            style = "dim"
        try:
            console.print(line, style=style, markup=False)
        except (OSError, ValueError):
            # The terminal went away (SIGHUP): the run goes on, and recovers, without it.
            broken = True

    return log


def render_plan(plan) -> None:  # noqa: ANN001 - deployer.engine.Plan
    """The dry-run plan: what would ship, the pending migrations, each step's commands."""
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    out = lambda text="": console.print(text, markup=False)  # noqa: E731
    what = f"rollback to {plan.target_release}" if plan.kind == "rollback" else f"playbook {plan.playbook}"
    out(f"{plan.kind} plan for {plan.environment} on {plan.host} ({what}) — nothing will change")
    if plan.converge_first:
        out(f"  first    {plan.converge_first}")
    out(f"  commit   {plan.commit} ({plan.ref}); deployed now: {plan.previous_commit or 'nothing'}")
    db = "not running" if plan.database_revision is None else (", ".join(plan.database_revision) or "no revision")
    out(f"  database {db} -> {', '.join(plan.heads) or 'no migrations'}")
    if plan.database:
        out(f"  at       {plan.database}")
    label = "downgrades" if plan.kind == "rollback" else "pending migrations"
    if plan.restore_backup:
        out(f"  restore  backup {plan.restore_backup} instead of the downgrades (data written since it is lost)")
    if plan.pending:
        out(f"  {label}, in order:")
        for item in plan.pending:
            flags = []
            if item["destructive"]:
                flags.append(f"drops data: {'; '.join(item['destructive'])}")
            if plan.kind == "rollback" and not item["has_downgrade"]:
                flags.append("NO working downgrade")
            flag = f"  [{' | '.join(flags)}]" if flags else ""
            out(f"    {item['revision']}  {item['message']}{flag}")
    else:
        out(f"  {label}: none")
    if plan.swap:
        out(f"  swap     {plan.swap}")
    out("")
    for number, step in enumerate(plan.steps, start=1):
        out(f"{number:2d}. {step.label}" + (f"  ({step.note})" if step.note else ""))
        for command in step.commands:
            out(f"      {'' if command.startswith(('wait:', 'read:', 'write ', 'take the', 'copy ')) else '$ '}{command}")
    if plan.unchanged:
        out("")
        out(f"nothing to do: {plan.unchanged}")
        out("  (the release stops after preflight and journals nothing; --force runs every step)")
        return
    for line in plan.footer:
        out(f"  ({line})")
