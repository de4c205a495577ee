"""``deployer status``, ``deployer migrations`` and ``deployer history`` (typer commands, wired into the app by cli.app)."""

from __future__ import annotations

from typing import Annotated

import typer

from deployer.cli.common import ConfigOption, EnvArgument, JsonOption, emit, json_output
from deployer.cli.common import verbose as verbose_wanted


def migrations_cmd(
    env: EnvArgument,
    config: ConfigOption = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also each script's path, parent and create date.")] = False,
    everything: Annotated[
        bool, typer.Option("--all", help="Also the revisions only the journal names (released once, gone from the code).")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """List ENV's migrations, newest first (`flask db history` + `flask db current`, for a
    server): current, applied, pending or unknown; the release that applied each one, when,
    and its pre-upgrade backup; whether a downgrade exists and what it would drop. Read-only.

    Exit 0; 3 when the host or the database cannot be read (the list is still printed).

    Example:  deployer migrations production --verbose
    """
    from deployer import api, schema_history
    from deployer.cli.render import progress_printer

    json_output(as_json)
    with progress_printer(f"reading the migrations of {env}"):
        report = api.migrations(env, config_path=config, everything=everything)
    code = 0 if report.revisions is not None else 3
    if as_json:
        emit(report.to_dict(), exit_code=code)
    else:
        typer.echo(schema_history.render(report, verbose=verbose_wanted(verbose)))
    if code:
        raise typer.Exit(code)


def status_cmd(env: EnvArgument, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Show whether ENV runs what you think: commit vs branch tip, database revision vs the
    code's migrations, containers, lock, last release and newest backup.

    Exit 0 when in sync; 10 migrations pending, 11 database ahead of the code, 12 unknown
    revision, 13 multiple heads, 14 not initialised / nothing deployed, 15 code not at the
    branch tip or a service not healthy, 3 host or database unreachable (docs/status.md).

    Example:  deployer status production --json
    """
    from deployer import api
    from deployer import status as status_mod
    from deployer.cli.render import progress_printer, render_status

    json_output(as_json)  # an error (host unreachable, …) still prints one envelope, same exit code
    with progress_printer(f"reading the status of {env}"):
        report = api.status(env, config_path=config)
    if as_json:
        emit(report.to_dict(), exit_code=report.exit_code)
    else:
        if isinstance(report, status_mod.FleetStatus):
            text, hosts = status_mod.render_fleet(report), report.hosts
        else:
            text, hosts = status_mod.render_status(report), (report,)
        render_status(text, [status_mod.verdict_tone(host.database.verdict) for host in hosts])
    if report.exit_code:
        raise typer.Exit(report.exit_code)


def history_cmd(
    env: EnvArgument,
    config: ConfigOption = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Show at most N records.")] = 20,
    as_json: JsonOption = False,
) -> None:
    """List ENV's releases and rollbacks, newest first: commit, revisions before -> after,
    outcome, duration and who ran it.

    Example:  deployer history production --limit 5
    """
    from deployer import api
    from deployer import status as status_mod
    from deployer.cli.render import progress_printer

    json_output(as_json)
    with progress_printer(f"reading the history of {env}"):
        journal = api.history(env, config_path=config, limit=limit)
    if as_json:
        emit(journal.to_dict())
    elif isinstance(journal, status_mod.FleetHistory):
        typer.echo(status_mod.render_fleet_history(journal))
    else:
        typer.echo(status_mod.render_history(journal))
