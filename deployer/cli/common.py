"""What every ``deployer`` command shares: its option types and the confirmation prompt."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Path to deploy.toml (default: found by walking up from the current directory).",
        envvar="DEPLOYER_CONFIG",
        dir_okay=False,
    ),
]
EnvArgument = Annotated[str, typer.Argument(help="Environment name from deploy.toml, e.g. production.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def confirmer() -> Callable[[str], bool] | None:
    """A yes/no prompt on the terminal, or None when there is none (CI): then --yes is needed."""
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return None
    return lambda question: typer.confirm(question, default=False, err=True)
