"""``deployer exec`` and ``deployer logs``: the running release from the outside (typer
commands, wired into the app by cli.app). The logic lives in :mod:`deployer.server.running`."""

from __future__ import annotations

import signal
import sys
from typing import Annotated

import typer

from deployer.cli.common import ConfigOption, EnvArgument, JsonOption, emit, json_output

HostOption = Annotated[str | None, typer.Option(
    "--host", help="Which of the environment's hosts (as deploy.toml names it; default: the primary).")]


def exec_cmd(
    env: EnvArgument,
    command: Annotated[list[str], typer.Argument(help="The command and its arguments (after --).", show_default=False)],
    service: Annotated[str | None, typer.Option("--service", "-s", help="The service whose image (default: the web service).")] = None,
    host: HostOption = None,
    config: ConfigOption = None,
    no_tty: Annotated[bool, typer.Option("--no-tty", "-T", help="No pseudo-terminal, even on a terminal.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Run a command in a one-off container of the image ENV's service runs now (no rebuild),
    with its configuration and variables, removed when it ends; on a terminal with a TTY
    (`flask shell`), else with plain streams (input piped in is passed on). The exit status
    is the command's. Takes no lock.

    Example:  deployer exec production -- flask shell
    """
    from deployer import api

    json_output(as_json)
    tty = not (no_tty or as_json) and sys.stdin.isatty() and sys.stdout.isatty()
    outcome = api.exec_command(env, list(command), service=service, host=host, config_path=config, tty=tty,
                               capture=as_json)
    if as_json:
        emit(outcome, exit_code=outcome["exit_code"])
        code = int(outcome["exit_code"])
    else:
        code = int(outcome)
    if code:
        raise typer.Exit(code)


def logs_cmd(
    env: EnvArgument,
    services: Annotated[list[str] | None, typer.Argument(metavar="[SERVICE]...", help="Services (default: all).",
                                                         show_default=False)] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep streaming new lines until Ctrl-C.")] = False,
    since: Annotated[str | None, typer.Option("--since", help="From this time on: 10m, 2h, 2026-01-31, 2026-01-31T12:00:00Z.")] = None,
    tail: Annotated[str | None, typer.Option("--tail", "-n", help="Lines per container to start with: a number or all "
                                                                  "(default: 100, or all with --since).")] = None,
    host: HostOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show the logs of ENV's services (`docker compose logs`), each line prefixed with its
    container, streamed as they come; with --follow until Ctrl-C, which ends it cleanly (exit
    0). Takes no lock.

    Example:  deployer logs production web --since 10m --follow
    """
    from deployer import api, interrupts
    from deployer.cli.render import is_live
    from deployer.errors import ConfigError

    json_output(as_json)
    if follow and as_json:
        raise ConfigError("--follow streams until Ctrl-C: it has no --json form", hint="leave out one of them")
    if tail is None and since is None:
        tail = "100"
    if as_json:
        result = api.logs(env, services or [], since=since, tail=tail, host=host, config_path=config, capture=True)
        error = None if result.ok else f"docker compose logs exited {result.exit_code}: {result.stderr.strip()[-300:]}"
        emit({"lines": result.stdout.splitlines(), "error": error}, exit_code=1 if error else 0)
        code = 1 if error else 0
    else:
        try:
            code = api.logs(env, services or [], follow=follow, since=since, tail=tail, host=host, config_path=config,
                            color=is_live(sys.stdout))
        except interrupts.Interrupted as interruption:
            if interruption.signum != signal.SIGINT:
                raise
            code = 0  # Ctrl-C is how a --follow ends
    if code:
        raise typer.Exit(code)
