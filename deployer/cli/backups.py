"""``deployer backups``: create, list, verify, copy, restore and prune an environment's database dumps.

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

backups_app = typer.Typer(help="Database backups: create, list, verify, copy, restore, prune."
                                "\n\nExample:  deployer backups list production", no_args_is_help=True)



@contextmanager
def _target(env: str, config: Path | None) -> Iterator[Target]:
    """The environment, through the API: its errors never carry a secret."""
    from deployer import api

    with api.environment(env, config_path=config) as target:
        yield target


def _log(line: str) -> None:
    typer.echo(line, err=True)


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


_CHECKS = {"verified": "verified", "failed": "FAILED", "inconclusive": "inconclusive"}


def _check(backup: Backup) -> str:
    """The restore verification in a word: verified, FAILED, inconclusive, or ``-`` (never)."""
    return _CHECKS.get(backup.verification.state, backup.verification.state) if backup.verification else "-"


def _describe(backup: Backup, places: str) -> str:
    revision = ",".join(backup.revision) or "-"
    return (f"{backup.id}  {backup.created_at}  {backup.reason:<11}  {backup.release or '-':<24}  {revision:<14}  "
            f"{_size(backup.size):>10}  {_check(backup):<12}  {places}")


@backups_app.command("create")
def create_cmd(
    env: EnvArgument,
    config: ConfigOption = None,
    download: Annotated[
        Path | None, typer.Option("--download", help="Also copy the dump and its description into this local directory.", file_okay=False)
    ] = None,
    verify: Annotated[bool, typer.Option(
        "--verify", help="Also restore it into a scratch database and compare (as `backups verify --restore`).")] = False,
    as_json: JsonOption = False,
) -> None:
    """Dump ENV's database into its backup_dir on the host (under the deploy lock), checksummed
    while it streams, then copy it to every backup_copy place.

    Exits 1 when a backup_copy place did not get its copy (the backup itself was made).

    Example:  deployer backups create production --verify
    """
    from deployer.cli.render import progress_printer
    from deployer.server.backups import BackupError, create_environment

    json_output(as_json)
    with progress_printer(f"backup of {env}") as log, _target(env, config) as target:
        made = create_environment(target, download_to=download, restore_verify=verify, log=log)
    backup, local = made.backup, made.local
    error = BackupError(f"backup {backup.id} of {env} was made, but not copied to: {'; '.join(made.not_copied)}",
                        hint=f"fix the place, then `deployer backups copy {env} {backup.id}`") if made.not_copied else None
    if as_json:
        emit({**backup.to_dict(), "local_path": str(local) if local else None},
             exit_code=int(error.exit_code) if error else 0, error=error)
    else:
        typer.echo(f"backup {backup.id} of {env}: {backup.path} ({_size(backup.size)}, sha256 {backup.sha256[:12]}…)")
        if backup.verification is not None:
            typer.echo(f"  {backup.verification.summary()}")
        for copy in backup.copies:
            typer.echo(f"  copy at {copy.where}: {copy.path}")
        if local:
            typer.echo(f"copied to {local}")
    if error is not None:
        raise error


@backups_app.command("list")
def list_cmd(env: EnvArgument, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """List ENV's backups, oldest first, wherever they are (the server, each backup_copy place):
    id, created, why, release, alembic revision, size, restore verification, places.

    Example:  deployer backups list production --json
    """
    from deployer.cli.render import progress_printer
    from deployer.server.backups import list_backups
    from deployer.server.copies import locate_all

    json_output(as_json)
    with progress_printer(f"reading the backups of {env}"), _target(env, config) as target:
        located, unreadable = locate_all(target, list_backups(target))
        where = target.env.backup_dir
        labels = {str(c): c.label for c in target.env.backup_copies}
    for line in unreadable:
        _log(f"warning: cannot read the copies at {line}")
    if as_json:
        emit([item.to_dict() for item in located])
        return
    if not located:
        typer.echo(f"{env}: no backups in {where}" + (" nor at its backup_copy places" if labels else ""))
        return
    typer.echo(f"{'id':<22}  {'created':<25}  {'why':<11}  {'release':<24}  {'revision':<14}  {'size':>10}  "
               f"{'restore':<12}  where")
    for item in located:
        typer.echo(_describe(item.backup, ", ".join(labels.get(place, place) for place in item.places)))
    for item in located:
        v = item.backup.verification
        if v is not None and v.state == "failed":
            typer.echo(f"  !! {item.backup.id} {v.summary()}: restores refuse it without --force")


@backups_app.command("copy")
def copy_cmd(
    env: EnvArgument,
    ids: Annotated[list[str] | None, typer.Argument(help="Backup ids (or 'latest'); default: the newest.")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Copy backups from ENV's server to every backup_copy place (under the deploy lock),
    checksummed where they arrive. Exits 1 when a place did not get its copy.

    Example:  deployer backups copy production latest
    """
    from deployer.actions import drive
    from deployer.errors import ConfigError
    from deployer.server import copies, lock
    from deployer.server.backups import BackupError, find

    json_output(as_json)
    results = []
    with _target(env, config) as target:
        if not target.env.backup_copies:
            raise ConfigError(f"{env} has no backup_copy places",
                              hint='set backup_copy = "local:DIR" or "host:HOST:DIR" in its [environments] table')
        with lock.held(target.host, target.state_dir, f"backups copy {env}", env_name=target.name):
            for backup_id in ids or ["latest"]:
                backup = find(target, backup_id)
                updated, failed = drive(target.host, copies.copy_steps(target, backup, log=_log), {})
                results.append((updated, failed))
    failures = [f"{b.id} -> {line}" for b, failed in results for line in failed]
    error = BackupError(f"{len(failures)} copy(ies) of {env}'s backups failed: {'; '.join(failures)}") if failures else None
    if as_json:
        emit([{"id": b.id, "copies": b.to_dict()["copies"], "failed": failed} for b, failed in results],
             exit_code=int(error.exit_code) if error else 0, error=error)
    else:
        for backup, _ in results:
            for copy in backup.copies:
                typer.echo(f"{backup.id}  at {copy.where}: {copy.path}")
    if error is not None:
        raise error


@backups_app.command("verify")
def verify_cmd(
    env: EnvArgument,
    ids: Annotated[list[str] | None, typer.Argument(metavar="ID", help="Backup ids (or 'latest'); default: all of ENV's backups.")] = None,
    config: ConfigOption = None,
    restore: Annotated[bool, typer.Option(
        "--restore", help="Restore each into a scratch database and compare revision, tables and row counts with the "
                          "dump-time record (under the deploy lock; the verdict is kept with the backup).")] = False,
    as_json: JsonOption = False,
) -> None:
    """Check each backup: its sha256 matches the recorded one AND the dump reads back to its end;
    with --restore, restore it into a throwaway database and compare what comes back.

    Exits 1 when any backup is invalid, failed its restore verification, or (with --restore)
    could not be restore-verified.

    Example:  deployer backups verify production latest --restore
    """
    from deployer.cli.render import progress_printer
    from deployer.server.backups import BackupError, check, find, list_backups

    json_output(as_json)
    results: list[tuple[Backup, str | None]] = []
    with progress_printer(f"verifying the backups of {env}") as log, _target(env, config) as target:
        if restore:
            from deployer.server.verification import verify_environment

            for backup in verify_environment(target, ids or (), log=log):
                v = backup.verification
                results.append((backup, None if v is not None and v.ok else (v.summary() if v else "not verified")))
        else:
            chosen = [find(target, backup_id) for backup_id in ids] if ids else list_backups(target)
            for backup in chosen:
                results.append((backup, check(target, backup) or backup.refusal()))
    if not as_json:
        if not results:
            typer.echo(f"{env}: no backups to verify")
        for backup, problem in results:
            if problem is None:
                typer.echo(f"ok       {backup.id}  ({_verified(backup)})")
            else:
                typer.echo(f"{'FAILED' if restore else 'INVALID':<8} {backup.id}: {problem}")
    bad = [b.id for b, p in results if p is not None]
    what = "did not pass their restore verification" if restore else "are invalid"
    error = BackupError(f"{len(bad)} of {len(results)} backup(s) of {env} {what}: {', '.join(bad)}",
                        hint="do not rely on them; take a new backup with `deployer backups create " + env + "`") if bad else None
    if as_json:
        emit([{"id": b.id, "valid": p is None, "problem": p,
               "verification": b.to_dict()["verification"]} for b, p in results],
             exit_code=int(error.exit_code) if error else 0, error=error)
    if error is not None:
        raise error


def _verified(backup: Backup) -> str:
    """The backup's restore verification in a few words."""
    v = backup.verification
    return v.summary() if v is not None else "never restore-verified"


@backups_app.command("restore")
def restore_cmd(
    env: EnvArgument,
    backup_id: Annotated[str, typer.Argument(metavar="ID", help="The backup to restore (an id, a unique prefix, or 'latest').")],
    config: ConfigOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    no_safety_backup: Annotated[
        bool, typer.Option("--no-safety-backup", help="Do not dump the current state first (it is dumped by default).")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Restore it even though it failed its restore verification.")
    ] = False,
    source: Annotated[str | None, typer.Option(
        "--from", metavar="PLACE",
        help="Where to take it from: server, local, or a backup_copy host (default: the server's dump when it is there "
             "and intact, else a copy).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Replace ENV's database with backup ID: verified, confirmed, under the deploy lock, after a safety backup.

    A backup that failed its restore verification is refused without --force. A copy (from
    backup_copy) is first put back on the server, its sha256 checked there.

    Example:  deployer backups restore production 20250101T120000123456Z --yes
    """
    from deployer.cli.render import confirmer, progress_printer
    from deployer.server.backups import restore_environment

    json_output(as_json)
    with progress_printer(f"restore into {env}") as log, _target(env, config) as target:
        outcome = restore_environment(target, backup_id, yes=yes, confirm=confirmer(log), safety_backup=not no_safety_backup,
                                      force=force, source=source, log=log)
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
    from deployer.server.backups import BackupError, prune

    json_output(as_json)
    with progress_printer(f"pruning the backups of {env}"), _target(env, config) as target:
        decision = prune(target, keep=keep, dry_run=dry_run)
    unreached = [f"{p.where}: {p.error}" for p in decision.copies if p.error]
    error = BackupError(f"the backups at {'; '.join(unreached)} were not pruned",
                        hint="the server's and the other places' were") if unreached else None
    if as_json:
        emit({"dry_run": dry_run, **decision.to_dict()}, exit_code=int(error.exit_code) if error else 0, error=error)
        if error is not None:
            raise error
        return
    verb = "would remove" if dry_run else "removed"
    places = [("", decision, None)] + [(f"  [{p.where}] ", p.retention, p.error) for p in decision.copies]
    for prefix, retention, problem in places:
        if retention is None:
            typer.echo(f"{prefix}cannot prune: {problem}")
            continue
        for backup, why in retention.kept:
            typer.echo(f"{prefix}keep     {backup.id}  ({why})")
        for backup in retention.removed:
            typer.echo(f"{prefix}{verb:<8} {backup.id}  ({_size(backup.size)})")
        for path in retention.leftovers:
            typer.echo(f"{prefix}{verb:<8} {path}  (left by a failed dump or copy)")
        if not retention.removed and not retention.leftovers:
            typer.echo(f"{prefix}{env}: nothing to prune" if not prefix else f"{prefix}nothing to prune")
    if error is not None:
        raise error
