"""``deployer init`` (a typer command, wired into the app by cli.app)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from deployer.cli.common import JsonOption, emit, json_output

if TYPE_CHECKING:
    from deployer.discovery import Choice
    from deployer.scaffold import Given


def init_cmd(
    environment: Annotated[str, typer.Option("--environment", "-e", help="The environment to write.")] = "production",
    host: Annotated[str | None, typer.Option("--host", help='Where it runs: "local", user@host[:port] or an ~/.ssh/config alias.')] = None,
    path: Annotated[str | None, typer.Option("--path", help="The checkout on the server (default: /srv/NAME).")] = None,
    name: Annotated[str | None, typer.Option("--name", help="The compose project name (default: the compose file's, else the directory's).")] = None,
    compose_file: Annotated[str | None, typer.Option("--compose-file", help="The compose file (default: found here, production's first).")] = None,
    web_service: Annotated[str | None, typer.Option("--web-service", help="The web app's service (default: recognised).")] = None,
    db_service: Annotated[str | None, typer.Option("--db-service", help="The database's service, or none (default: recognised).")] = None,
    migrations_dir: Annotated[str | None, typer.Option("--migrations-dir", help="The alembic directory (default: found).")] = None,
    health_url: Annotated[str | None, typer.Option(
        "--health-url", help="A path (/health), a URL as the server reaches it, or none (default: found).")] = None,
    variables: Annotated[list[str] | None, typer.Option(
        "--var", metavar="NAME=VALUE", help="A variable for compose on the server (a port, an image; never a secret). Repeatable.")] = None,
    proxy: Annotated[bool, typer.Option("--proxy", help="Turn the zero-downtime proxy on for the environment.")] = False,
    proxy_image: Annotated[str | None, typer.Option("--proxy-image", help="The proxy's HAProxy image (with --proxy).")] = None,
    backup_dir: Annotated[str | None, typer.Option("--backup-dir", help="Where the dumps go on the server (default: beside the checkout).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing deploy.toml.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Write deploy.toml for the app in this directory, from its compose file: the web and
    database services, the migrations, the health page, the variables. Asks only what it
    cannot tell (the host, at least) on a terminal; without one, it names the flags to pass.
    Adds the .dockerignore entries deployer needs; never replaces deploy.toml without --force.

    Example:  deployer init --host deploy@203.0.113.10
    """
    from deployer import api
    from deployer.errors import ConfigError
    from deployer.scaffold import Given, refuse_overwrite

    json_output(as_json)
    pairs = {}
    for item in variables or ():
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--var {item!r}: expected NAME=VALUE")
        pairs[key] = value
    if proxy_image and not proxy:
        raise ConfigError("--proxy-image is for the proxy: pass --proxy too")
    given = Given(environment=environment, host=host, path=path, name=name, compose_file=compose_file,
                  web_service=web_service, db_service=db_service, migrations_dir=migrations_dir, health_url=health_url,
                  variables=pairs, proxy=proxy, proxy_image=proxy_image, backup_dir=backup_dir)
    here = Path.cwd()
    refuse_overwrite(here, force=force)
    if not as_json and sys.stdin.isatty() and sys.stderr.isatty():
        given = _ask(here, given)
    plan, written = api.init(here, given, force=force)
    if as_json:
        emit({**plan.to_dict(), "written": written})
        return
    width = max(len(what) for what, _ in plan.found)
    typer.echo(f"found in {plan.root}:")
    for what, value in plan.found:
        typer.echo(f"  {what:<{width}}  {value}")
    typer.echo(f"wrote {', '.join(written)} (environment {plan.environment})")
    typer.echo("next:")
    for step in plan.next:
        typer.echo(f"  {step}")


def _ask(here: Path, given: Given) -> Given:
    """Ask, on the terminal, what the files do not tell; each answer may settle more."""
    from dataclasses import replace

    from deployer import api
    from deployer.errors import ConfigError

    fields = {"--host": "host", "--compose-file": "compose_file", "--web-service": "web_service",
              "--db-service": "db_service", "--migrations-dir": "migrations_dir", "--health-url": "health_url"}
    while True:
        open_ = api.init_questions(here, given)
        if not open_:
            return given
        question = open_[0]
        answer = _prompt(question)
        settled: dict[str, Any] = {fields[question.flag]: answer}
        candidate = replace(given, **settled)
        try:
            api.init_questions(here, candidate)
        except ConfigError as error:
            typer.echo(f"  {error.message}", err=True)
            continue
        given = candidate


def _prompt(question: Choice) -> str:
    typer.echo(f"{question.what}: {question.reason}", err=True)
    options = list(question.options)
    for number, option in enumerate(options, start=1):
        typer.echo(f"  {number}. {option}", err=True)
    while True:
        answer = str(typer.prompt(f"{question.what}" + (" (a number or a name)" if options else ""), err=True)).strip()
        if answer.isdigit() and options and 1 <= int(answer) <= len(options):
            return options[int(answer) - 1]
        if answer:
            return answer
