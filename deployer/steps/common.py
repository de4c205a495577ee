"""What several step kinds share: release ids, image tags, the migrate command's variants,
confirmations, and reading the database revision within a run."""

from __future__ import annotations

import getpass
import socket
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from deployer.actions import Value
from deployer.commands import compose as compose_cmds
from deployer.errors import DeployerError, RefusedError

if TYPE_CHECKING:
    from deployer.steps.context import Context

IMAGE_TAG_PREFIX = "deployer-"
RELEASE_ID = Value("release_id")


def new_release_id(sha: str, now: datetime | None = None) -> str:
    return f"{(now or datetime.now(UTC)):%Y%m%d-%H%M%S}-{sha[:7]}"


def whoami() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def split_image(name: str) -> tuple[str, str]:
    """``registry:5000/app:1.2`` -> (``registry:5000/app``, ``1.2``); no tag means latest."""
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1 :]
    return name, "latest"


def saved_tag(image: str, release_id: str) -> str:
    """The tag a release's image is kept under: ``app-web:deployer-<release id>``."""
    repository, _ = split_image(image)
    return f"{repository}:{IMAGE_TAG_PREFIX}{release_id}"


def saved_tag_value(image: str, name: str = "release_id") -> Value:
    """:func:`saved_tag` for a release id known at run time."""
    repository, _ = split_image(image)
    return Value(name, f"{repository}:{IMAGE_TAG_PREFIX}{{}}")


def built_images(ctx: Context) -> dict[str, str]:
    """service -> image name, for the services compose builds (what a rollback must restore)."""
    project = ctx.compose.project
    names: dict[str, str] = {}
    for service, config in sorted(ctx.known.compose.services.items()):
        if not config.build_context:
            continue
        if config.image:
            names[service] = config.image
        elif ctx.compose.program == compose_cmds.V1:
            names[service] = f"{project}_{service}"
        else:
            names[service] = f"{project}-{service}"
    return names


def migration_argv(migrate_command: Sequence[str], verb: str, revision: str) -> list[str]:
    """From the configured upgrade command, the command that moves to ``revision``.

    ``flask db upgrade`` -> ``flask db downgrade REV``; ``alembic upgrade head`` ->
    ``alembic upgrade REV``. ``verb`` is ``upgrade`` or ``downgrade``.
    """
    argv = list(migrate_command)
    if "upgrade" in argv:
        index = argv.index("upgrade")
        return [*argv[:index], verb, revision]
    raise DeployerError(
        f"cannot derive a {verb} command from `{' '.join(migrate_command)}`",
        hint="use a migrate_command of the form `flask db upgrade` or `alembic upgrade head`",
    )


def downgrade_argv(migrate_command: Sequence[str], revision: str) -> list[str]:
    return migration_argv(migrate_command, "downgrade", revision)


def confirm(ctx: Context, question: str, refusal: str, *, warning: str | None = None) -> None:
    """Ask, or take --yes; refuse without a terminal. A dry run only shows the question.

    What is at stake is said once: ``warning`` (the details: what is dropped, what is lost)
    is logged before the question is asked and when --yes answers it; a refusal carries it
    in ``refusal``; a dry run's plan lists it, so the dry run shows the short ``question``.
    """
    if ctx.options.dry_run:
        if not ctx.options.yes:
            ctx.log(f"(would ask: {question})")
        return
    if ctx.options.yes:
        if warning:
            ctx.log(f"warning: {warning}")
        return
    if ctx.options.confirm is None:
        raise RefusedError(refusal, hint="rerun with --yes to confirm (no terminal to ask on)")
    if warning:
        ctx.log(f"warning: {warning}")
    if not ctx.options.confirm(question):
        raise RefusedError(refusal + ": not confirmed")


def current_revision(ctx: Context) -> tuple[str, ...] | None:
    """The database's revision now (None: not running), through the one fact reader."""
    from deployer.server import facts

    return facts.read_revisions(ctx.target, ctx.known.database)


def shown_revisions(revisions: Sequence[str] | None) -> str:
    if revisions is None:
        return "not running"
    return ", ".join(revisions) or "no revision"
