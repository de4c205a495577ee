"""The ``deployer`` command: parse options, call the API, render, map errors to exit codes.

No deployment logic lives here. Heavy modules are imported inside the commands so that
``deployer --help`` stays fast.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from deployer import __version__
from deployer.cli.common import (
    ConfigOption,
    EnvArgument,
    JsonOption,
    SwapModeOption,
    backup_lines,
    complete_environments,
    emit,
    emit_failure,
    json_output,
    served_line,
    verbose_everywhere,
)
from deployer.cli.common import verbose as verbose_wanted
from deployer.errors import DeployerError, ExitCode

app = typer.Typer(
    name="deployer",
    help=(
        "Ship a docker compose Flask + SQLAlchemy app to production safely: sync the code, build,\n"
        "back up the database, migrate once, recreate, verify the schema, check health, record.\n\n"
        "Example:  deployer config show production"
    ),
    no_args_is_help=True,
    # --install-completion / --show-completion; environment names complete from deploy.toml.
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},  # inherited by every command
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
config_app = typer.Typer(
    help="Inspect and validate deploy.toml: what deployer makes of it, whether a release has what it needs, "
         "its JSON Schema.\n\nExample:  deployer config check production",
    no_args_is_help=True,
)
app.add_typer(config_app, name="config")



def _version(value: bool) -> None:
    if value:
        typer.echo(f"deployer {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", help="Show more on stderr: the SSH library's own log lines (hidden otherwise) "
                     "and every command's --verbose output."),
    ] = False,
) -> None:
    """Root options."""
    if verbose:
        verbose_everywhere()


@config_app.command("show")
def config_show(env: EnvArgument, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Print the resolved configuration of ENV, secrets redacted.

    Example:  deployer config show production --json
    """
    from deployer import api

    json_output(as_json)
    shown = api.show_config(env, config_path=config)
    if as_json:
        emit(shown)
        return
    from deployer.cli.render import render_mapping

    render_mapping(shown)


@config_app.command("check")
def config_check(
    env: Annotated[str | None, typer.Argument(metavar="ENV", help="Check this environment only (default: every one).",
                                              autocompletion=complete_environments)] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check what a release of ENV (default: every environment) needs, without the host:
    deploy.toml, the compose file and the services it names, the migrations, the playbook,
    the variables from your shell and those the compose file requires. Says what it did not
    check (the host, the database, the remote). Exit 2 on a problem.

    Example:  deployer config check production
    """
    from deployer import api
    from deployer.cli.checks import render_report, summary
    from deployer.errors import ConfigError

    json_output(as_json)
    report = api.check_config(env, config_path=config)
    failure = None if report.ok else ConfigError(summary(report), hint="each problem above says its fix")
    if as_json:
        emit(report.to_dict(), exit_code=0 if report.ok else 2, error=failure)
    else:
        typer.echo(render_report(report))
    if failure is not None:
        if not as_json:
            typer.echo(f"error: {failure.message}", err=True)
        raise typer.Exit(2)


@config_app.command("schema")
def config_schema(as_json: JsonOption = False) -> None:
    """Print the JSON Schema of deploy.toml, for editors to validate and complete the file
    (Taplo / Even Better TOML: see docs/configuration.md).

    Example:  deployer config schema > deploy.schema.json
    """
    import json

    from deployer.config.schema import json_schema

    json_output(as_json)
    if as_json:
        emit(json_schema())
    else:
        typer.echo(json.dumps(json_schema(), indent=2))


@app.command("release")
def release_cmd(
    env: EnvArgument,
    config: ConfigOption = None,
    ref: Annotated[str | None, typer.Option("--ref", help="Branch, tag or commit to ship (default: the configured branch).")] = None,
    playbook: Annotated[str | None, typer.Option("--playbook", help="Playbook name (default: the environment's).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and change nothing.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Answer yes to confirmations (destructive migrations).")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show the output of build, migrate and run steps.")] = False,
    swap_mode: SwapModeOption = None,
    force: Annotated[
        bool, typer.Option("--force", help="Run every step even when the commit already runs exactly as configured.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Ship the branch tip (or --ref) to ENV: sync, build, back up, migrate, up, verify, health, record.

    When that commit already runs as deploy.toml configures it (schema at its head, every
    container healthy on its configuration), it stops after preflight: nothing to do.

    On failure the previous release is put back and the exit code is 1 (5 if that could
    not be finished; the message says what is left to do).

    Example:  deployer release production --ref v1.4.0 --dry-run
    """
    from deployer import api
    from deployer.cli.render import confirmer, echo, progress_printer, render_plan

    json_output(as_json)
    with progress_printer(f"{'planning the release' if dry_run else 'release'} of {env}") as log:
        result = api.release(
            env,
            config_path=config,
            ref=ref,
            yes=yes,
            dry_run=dry_run,
            verbose=verbose_wanted(verbose),
            playbook=playbook,
            swap_mode=swap_mode.value if swap_mode else None,
            force=force,
            confirm=confirmer(log),
            log=log,
        )
    if as_json:
        emit(result.to_dict())
    elif dry_run:
        render_plan(result)
    elif getattr(result, "unchanged", None):
        echo(f"nothing to do: {result.unchanged} (--force releases anyway)", style="green")
    else:
        echo(f"released {result.commit} to {env} as {result.id} in {result.seconds:.1f}s"  # type: ignore[union-attr]
             + served_line(result), style="bold green")
        for line in backup_lines(result):
            echo(line, style="bold yellow" if line.lower().startswith("warning") else None,
                 err=line.lower().startswith("warning"))


@app.command("rollback")
def rollback_cmd(
    env: EnvArgument,
    target: Annotated[str, typer.Argument(metavar="TARGET", help="An alembic revision (id or unique prefix), a release id, or `previous`.")] = "previous",
    config: ConfigOption = None,
    restore_backup: Annotated[
        bool, typer.Option("--restore-backup", help="Restore the dump taken when the target release was replaced, instead of downgrading.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="With --restore-backup: restore it even though it failed its restore verification.")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and change nothing.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Answer yes to confirmations (data-dropping downgrades, restores).")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show the output of the commands run.")] = False,
    swap_mode: SwapModeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Move ENV back to TARGET: schema (downgraded with the current image, or restored), code and images.

    Refused before touching anything when the target is unknown, ambiguous or newer, or a
    downgrade on the way is missing (then --restore-backup is the way back). To choose a
    target: `deployer migrations ENV` lists every revision, the release that applied it,
    what rolling back past it drops, and the backup from before it.

    Example:  deployer rollback production 56b67 --dry-run
    """
    from deployer import api
    from deployer.cli.render import confirmer, echo, progress_printer, render_plan

    json_output(as_json)
    with progress_printer(f"{'planning the rollback' if dry_run else 'rollback'} of {env}") as log:
        result = api.rollback(
            env,
            target,
            config_path=config,
            yes=yes,
            dry_run=dry_run,
            restore_backup=restore_backup,
            force=force,
            verbose=verbose_wanted(verbose),
            swap_mode=swap_mode.value if swap_mode else None,
            confirm=confirmer(log),
            log=log,
        )
    if as_json:
        emit(result.to_dict())
    elif dry_run:
        render_plan(result)
    else:
        echo(f"rolled {env} back to commit {result.commit} as {result.id} in {result.seconds:.1f}s"  # type: ignore[union-attr]
             + served_line(result), style="bold green")
        for line in backup_lines(result):
            echo(line, style="bold yellow" if line.lower().startswith("warning") else None,
                 err=line.lower().startswith("warning"))


lock_app = typer.Typer(help="Inspect an environment's deploy lock, or clear the record a vanished owner left."
                             "\n\nExample:  deployer lock status production", no_args_is_help=True)
app.add_typer(lock_app, name="lock")

from deployer.cli.backups import backups_app  # noqa: E402 - these import only typer at start-up
from deployer.cli.init import init_cmd  # noqa: E402
from deployer.cli.status import history_cmd, migrations_cmd, status_cmd  # noqa: E402

app.add_typer(backups_app, name="backups")
app.command("status")(status_cmd)
app.command("history")(history_cmd)
app.command("migrations")(migrations_cmd)
app.command("init")(init_cmd)

from deployer.cli.containers import exec_cmd, logs_cmd  # noqa: E402
from deployer.cli.images import images_app  # noqa: E402

app.add_typer(images_app, name="images")
app.command("exec")(exec_cmd)
app.command("logs")(logs_cmd)


@lock_app.command("status")
def lock_status_cmd(env: EnvArgument, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Say whether ENV's deploy lock is held, by whom and since when (or left by an owner
    that is gone). Changes nothing.

    Example:  deployer lock status production
    """
    from dataclasses import asdict

    from deployer import api

    json_output(as_json)
    state = api.lock_status(env, config_path=config)
    if as_json:
        emit({"held": state.held, "stale": state.stale, "gone_since": state.gone_since,
              "holder": asdict(state.info) if state.info else None})
    else:
        typer.echo(f"{env}: lock {state.describe()}")


@lock_app.command("release")
def lock_release_cmd(env: EnvArgument, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Clear the record a vanished lock owner left. The lock itself frees itself when its
    owner's process ends; a live holder is never broken.

    Example:  deployer lock release production
    """
    from deployer import api
    from deployer.errors import LockHeldError

    json_output(as_json)
    state = api.lock_release(env, config_path=config)
    if state.held:
        raise LockHeldError(f"{env}: lock {state.describe()}: its owner is alive",
                            hint="wait for it to finish; the lock frees itself when that run ends")
    if as_json:
        emit({"held": False, "cleared": state.describe() if state.stale else None})
        return
    typer.echo(f"{env}: lock free (cleared: {state.describe()})" if state.stale else f"{env}: lock was free")


@app.command("recover")
def recover_cmd(
    env: EnvArgument,
    config: ConfigOption = None,
    forward: Annotated[bool, typer.Option("--forward", help="Finish the interrupted run (its changes were all made) instead of undoing it.")] = False,
    restore_backup: Annotated[
        bool, typer.Option("--restore-backup", help="Restore the run's pre-upgrade backup even if that discards writes made since it.")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what it would do and change nothing.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show the output of the commands run.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Converge ENV after a release or rollback that was interrupted (killed, disconnected):
    back to where it started, from its step log on the host. `release` and `rollback` do
    this first on their own; `status` shows an interrupted run.

    Example:  deployer recover production --dry-run
    """
    from deployer import api
    from deployer.cli.render import echo, progress_printer, render_plan

    json_output(as_json)
    with progress_printer(f"{'planning the recovery' if dry_run else 'recovery'} of {env}") as log:
        result = api.recover(env, config_path=config, forward=forward, restore_backup=restore_backup, dry_run=dry_run,
                             verbose=verbose_wanted(verbose), log=log)
    if result is None:
        if as_json:
            emit({"environment": env, "interrupted": None})
        else:
            echo(f"{env}: no interrupted run: nothing to recover", style="green")
        return
    if as_json:
        emit(result.to_dict())
    elif dry_run:
        render_plan(result)
    else:
        echo(f"{env}: {result.converged}; {result.recovery}", style="bold")  # type: ignore[union-attr]


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app and turn foreseen failures into one message + exit code."""
    from deployer import interrupts

    interrupts.install()
    try:
        app(args=argv, prog_name="deployer")
    except DeployerError as error:
        emit_failure(int(error.exit_code), error)
        _say(f"error: {error}")
        sys.exit(int(error.exit_code))
    except interrupts.Interrupted as interruption:
        emit_failure(interruption.exit_code, message=f"interrupted ({interruption.name})")
        _say(f"interrupted ({interruption.name})")
        sys.exit(interruption.exit_code)
    except KeyboardInterrupt:
        emit_failure(int(ExitCode.INTERRUPTED), message="interrupted")
        _say("interrupted")
        sys.exit(int(ExitCode.INTERRUPTED))


def _say(text: str) -> None:
    """An error line on stderr; a closed terminal (SIGHUP) must not turn it into a traceback."""
    from deployer.cli.render import echo_error

    echo_error(text)
