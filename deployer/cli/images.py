"""``deployer images``: the release images deployer keeps for rollbacks (a typer sub-app,
``images_app``, wired into the app by cli.app). The logic lives in :mod:`deployer.server.images`."""

from __future__ import annotations

from typing import Annotated

import typer

from deployer.cli.common import ConfigOption, EnvArgument, JsonOption, emit, json_output

images_app = typer.Typer(help="The release images deployer keeps for rollbacks."
                               "\n\nExample:  deployer images prune production --dry-run", no_args_is_help=True)


@images_app.command("prune")
def prune_cmd(
    env: EnvArgument,
    config: ConfigOption = None,
    keep: Annotated[int | None, typer.Option("--keep", min=1, help="How many newest releases keep their images "
                                                                   "(default: keep_releases).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be removed; take no lock.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Remove ENV's release image tags (`<image>:deployer-<release>`) that no rollback within
    the retained releases needs, on every host, under the deploy lock. Kept: the images of
    the newest keep_releases releases and of the running one, every image a container uses,
    and what an interrupted run needs. A release does this itself after it is journaled.

    Example:  deployer images prune production --dry-run
    """
    from deployer import api
    from deployer.cli.render import echo, progress_printer

    json_output(as_json)
    with progress_printer(f"{'reading' if dry_run else 'pruning'} the images of {env}"):
        prunings = api.prune_images(env, config_path=config, keep=keep, dry_run=dry_run)
    if as_json:
        emit({"dry_run": dry_run, "hosts": [p.to_dict() for p in prunings]})
        return
    verb = "would remove" if dry_run else "removed"
    for pruning in prunings:
        where = f"[{pruning.host}] " if len(prunings) > 1 else ""
        for tag, why in pruning.kept:
            echo(f"{where}keep          {tag}  ({why})")
        for tag in pruning.removed:
            echo(f"{where}{verb:<13} {tag}", style="yellow")
        for tag, why in pruning.refused:
            echo(f"{where}docker kept   {tag}  ({why})")
        if not pruning.removed:
            echo(f"{where}{env}: nothing to prune (keep_releases = {pruning.keep})", style="green")
        elif not dry_run:
            deleted = f"; {pruning.deleted} image(s) deleted with their last tag" if pruning.deleted else ""
            echo(f"{where}{env}: removed {len(pruning.removed)} tag(s){deleted}", style="green")
