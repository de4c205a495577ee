"""What every ``deployer`` command shares: its option types, the confirmation prompt and the
JSON envelope."""

from __future__ import annotations

import contextlib
import enum
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from deployer.errors import DeployerError

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


def complete_environments(incomplete: str) -> list[str]:
    """Shell completion of ENV: the environments of the deploy.toml found from here (or
    $DEPLOYER_CONFIG). Never fails: a missing or broken file completes nothing."""
    import os
    import tomllib

    try:
        path = Path(os.environ["DEPLOYER_CONFIG"]) if os.environ.get("DEPLOYER_CONFIG") else None
        if path is None:
            here = Path.cwd()
            path = next((d / "deploy.toml" for d in (here, *here.parents) if (d / "deploy.toml").is_file()), None)
        if path is None:
            return []
        environments = tomllib.loads(path.read_text(encoding="utf-8")).get("environments")
    except (OSError, ValueError):
        return []
    names = environments if isinstance(environments, dict) else {}
    return sorted(name for name in names if name.startswith(incomplete))


EnvArgument = Annotated[str, typer.Argument(metavar="ENV", help="Environment name from deploy.toml, e.g. production.",
                                            autocompletion=complete_environments)]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
class SwapModeChoice(enum.StrEnum):
    auto = "auto"
    overlap = "overlap"
    pause = "pause"


SwapModeOption = Annotated[SwapModeChoice | None, typer.Option(
    "--swap-mode",
    help="Behind the proxy: overlap (old and new code serve side by side), pause (requests wait while the "
         "old code stops and the migration runs) or auto (decided from the migrations; the environment's default).")]


def served_line(result: Any) -> str:
    """The release summary's account of what users saw during the swap (empty: no proxy)."""
    from deployer.proxy.probe import describe_served

    served = getattr(result, "served", None)
    return f"; {describe_served(served)}" if served else ""


def backup_lines(result: Any) -> list[str]:
    """What happened to the run's backup once the run was recorded: its restore verification
    (a failure loudly: the release stays, the backup is refused by restores) and its copies."""
    from deployer.server.backups import FAILED, VERIFIED, Verification

    lines = []
    verdict = Verification.from_dict(getattr(result, "backup_verification", None))
    if verdict is not None:
        if verdict.state == FAILED:
            lines.append(f"WARNING: backup {result.backup} {verdict.summary()}. The {result.kind} stays in place; "
                         "restores refuse this backup without --force.")
        elif verdict.state == VERIFIED:
            lines.append(f"backup {result.backup} {verdict.summary()}")
        else:
            lines.append(f"warning: backup {result.backup}: {verdict.summary()}")
    copies = getattr(result, "backup_copies", None) or ()
    if copies:
        lines.append(f"backup {result.backup} copied to " + ", ".join(c["where"] for c in copies))
    return lines


def confirmer() -> Callable[[str], bool] | None:
    """A yes/no prompt on the terminal, or None when there is none (CI): then --yes is needed."""
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return None
    return lambda question: typer.confirm(question, default=False, err=True)


# --------------------------------------------------------------------------- --json

ENVELOPE_SCHEMA = 1


class _Output:
    """Whether the running command was asked for --json, and whether it printed its document;
    whether ``deployer --verbose`` was given."""

    json = False
    emitted = False
    verbose = False


def verbose_everywhere() -> None:
    """``deployer --verbose COMMAND``: the libraries' log lines on stderr (paramiko's), and
    every command's own --verbose."""
    from deployer.hosts.liblog import library_logging

    _Output.verbose = True
    library_logging(True)


def verbose(flag: bool) -> bool:
    """A command's --verbose, or the global one."""
    return flag or _Output.verbose


def json_output(enabled: bool) -> None:
    """Called first by every command with its --json flag: errors then print the envelope too."""
    _Output.json, _Output.emitted = enabled, False


def envelope(result: Any = None, *, exit_code: int = 0, error: DeployerError | None = None,
             has_result: bool = True) -> dict[str, Any]:
    """Every command's JSON: ``{"schema", "ok", "result" | "error", "exit_code"}``.

    ``result`` is what the command produced (also on a failure that produced one, such as a
    status report with exit 10 or the list of backups of which one is invalid); ``error``
    is ``{"message", "hint", "kind"}`` when the command failed with an error.
    """
    doc: dict[str, Any] = {"schema": ENVELOPE_SCHEMA, "ok": exit_code == 0 and error is None}
    if has_result:
        doc["result"] = result
    if error is not None:
        doc["error"] = {"message": error.message, "hint": error.hint, "kind": type(error).__name__}
    doc["exit_code"] = exit_code
    return doc


def emit(result: Any, *, exit_code: int = 0, error: DeployerError | None = None) -> None:
    """Print the envelope of a command's result (the API scrubbed its secrets)."""
    typer.echo(json.dumps(envelope(result, exit_code=exit_code, error=error), indent=2))
    _Output.emitted = True


def emit_failure(exit_code: int, error: DeployerError | None = None, *, message: str = "") -> None:
    """The envelope of a failure, when the command asked for --json and printed nothing yet."""
    if not _Output.json or _Output.emitted:
        return
    failure = error if error is not None else DeployerError(message)
    with contextlib.suppress(OSError, ValueError):
        typer.echo(json.dumps(envelope(exit_code=exit_code, error=failure, has_result=False), indent=2))
    _Output.emitted = True
