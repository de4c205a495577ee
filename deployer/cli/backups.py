"""``deployer backups``: create, list, verify, restore and prune an environment's database dumps.

A typer sub-app (``backups_app``); heavy modules are imported inside the commands so that
``deployer --help`` stays fast. The logic lives in :mod:`deployer.server.backups`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from deployer.cli.common import ConfigOption, EnvArgument, JsonOption, emit, json_output

if TYPE_CHECKING:
    from deployer.server.backups import Backup
    from deployer.server.target import Target

backups_app = typer.Typer(help="Database backups: create, list, verify, restore, prune."
                                "\n\nExample:  deployer backups list production", no_args_is_help=True)



@contextmanager
def _target(env: str, config: Path | None) -> Iterator[Target]:
    """The environment, through the API: its errors never carry a secret."""
    from deployer import api

    with api.environment(env, config_path=config) as target:
        yield target


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _describe(backup: Backup) -> str:
    revision = ",".join(backup.revision) or "-"
    return f"{backup.id}  {backup.created_at}  {backup.reason:<11}  {backup.release or '-':<24}  {revision:<14}  {_size(backup.size):>10}  {backup.sha256[:12]}"


@backups_app.command("create")
def create_cmd(
    env: EnvArgument,
    config: ConfigOption = None,
    download: Annotated[
        Path | None, typer.Option("--download", help="Also copy the dump and its description into this local directory.", file_okay=False)
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Dump ENV's database into its backup_dir on the host (under the deploy lock), verified.

    Example:  deployer backups create production --download ./backups
    """
    from deployer.cli.render import progress_printer
    from deployer.server.backups import create_environment

    json_output(as_json)
    with progress_printer(f"backup of {env}") as log, _target(env, config) as target:
        backup, local = create_environment(target, download_to=download, log=log)
    if as_json:
        emit({**backup.to_dict(), "local_path": str(local) if local else None})
        return
    typer.echo(f"backup {backup.id} of {env}: {backup.path} ({_size(backup.size)}, sha256 {backup.sha256[:12]}…, verified)")
    if local:
        typer.echo(f"copied to {local}")


@backups_app.command("list")
def list_cmd(env: EnvArgument, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """List ENV's backups, oldest first: id, created, why, release, alembic revision, size, sha256.

    Example:  deployer backups list production --json
    """
    from deployer.cli.render import progress_printer
    from deployer.server.backups import list_backups

    json_output(as_json)
    with progress_printer(f"reading the backups of {env}"), _target(env, config) as target:
        backups = list_backups(target)
        where = target.env.backup_dir
    if as_json:
        emit([b.to_dict() for b in backups])
        return
    if not backups:
        typer.echo(f"{env}: no backups in {where}")
        return
    typer.echo(f"{'id':<22}  {'created':<25}  {'why':<11}  {'release':<24}  {'revision':<14}  {'size':>10}  sha256")
    for backup in backups:
        typer.echo(_describe(backup))


@backups_app.command("verify")
def verify_cmd(
    env: EnvArgument,
    ids: Annotated[list[str] | None, typer.Argument(metavar="ID", help="Backup ids (or 'latest'); default: all of ENV's backups.")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check each backup: its sha256 matches the recorded one AND the dump reads back to its end.

    Exits 1 when any backup is invalid.

    Example:  deployer backups verify production latest
    """
    from deployer.cli.render import progress_printer
    from deployer.server.backups import BackupError, check, find, list_backups

    json_output(as_json)
    results = []
    with progress_printer(f"verifying the backups of {env}"), _target(env, config) as target:
        chosen = [find(target, backup_id) for backup_id in ids] if ids else list_backups(target)
        for backup in chosen:
            results.append((backup, check(target, backup)))
    if not as_json:
        if not results:
            typer.echo(f"{env}: no backups to verify")
        for backup, problem in results:
            typer.echo(f"ok       {backup.id}" if problem is None else f"INVALID  {backup.id}: {problem}")
    bad = [b.id for b, p in results if p is not None]
    error = BackupError(f"{len(bad)} of {len(results)} backup(s) of {env} are invalid: {', '.join(bad)}",
                        hint="do not rely on them; take a new backup with `deployer backups create " + env + "`") if bad else None
    if as_json:
        emit([{"id": b.id, "valid": p is None, "problem": p} for b, p in results],
             exit_code=int(error.exit_code) if error else 0, error=error)
    if error is not None:
        raise error


@backups_app.command("restore")
def restore_cmd(
    env: EnvArgument,
    backup_id: Annotated[str, typer.Argument(metavar="ID", help="The backup to restore (an id, a unique prefix, or 'latest').")],
    config: ConfigOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    no_safety_backup: Annotated[
        bool, typer.Option("--no-safety-backup", help="Do not dump the current state first (it is dumped by default).")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Replace ENV's database with backup ID: verified, confirmed, under the deploy lock, after a safety backup.

    Example:  deployer backups restore production 20250101T120000123456Z --yes
    """
    from deployer.cli.render import confirmer, progress_printer
    from deployer.server.backups import restore_environment

    json_output(as_json)
    with progress_printer(f"restore into {env}") as log, _target(env, config) as target:
        outcome = restore_environment(target, backup_id, yes=yes, confirm=confirmer(log), safety_backup=not no_safety_backup,
                                      log=log)
    if as_json:
        emit(outcome.to_dict())
        return
    safety = f"; the previous state is in backup {outcome.safety_backup.id}" if outcome.safety_backup else ""
    typer.echo(
        f"restored {outcome.backup.id} into {env}: revision {', '.join(outcome.revision_before) or 'none'} -> "
        f"{', '.join(outcome.revision_after) or 'none'}{safety}"
    )


@backups_app.command("prune")
def prune_cmd(
    env: EnvArgument,
    config: ConfigOption = None,
    keep: Annotated[int | None, typer.Option("--keep", min=1, help="How many newest to keep (default: keep_backups).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be removed.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Remove ENV's old backups: keeps the newest keep_backups and every one a rollback may need.

    Example:  deployer backups prune production --dry-run
    """
    from deployer.cli.render import progress_printer
    from deployer.server.backups import prune

    json_output(as_json)
    with progress_printer(f"pruning the backups of {env}"), _target(env, config) as target:
        decision = prune(target, keep=keep, dry_run=dry_run)
    if as_json:
        emit({"dry_run": dry_run, **decision.to_dict()})
        return
    verb = "would remove" if dry_run else "removed"
    for backup, why in decision.kept:
        typer.echo(f"keep     {backup.id}  ({why})")
    for backup in decision.removed:
        typer.echo(f"{verb:<8} {backup.id}  ({_size(backup.size)})")
    for path in decision.leftovers:
        typer.echo(f"{verb:<8} {path}  (left by a failed dump)")
    if not decision.removed and not decision.leftovers:
        typer.echo(f"{env}: nothing to prune")
