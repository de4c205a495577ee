"""``snapshot``: tag the images the running containers use, so recovery and rollbacks can put
them back without a rebuild (a rebuild of an old commit is not the same image)."""

from __future__ import annotations

from dataclasses import replace

from deployer.actions import Command, Skip, Value
from deployer.steps import IMAGES, StepKind, register
from deployer.steps.common import saved_tag, saved_tag_value
from deployer.steps.context import Context
from deployer.steps.playbook import Step


def snapshot(ctx: Context, step: Step):  # noqa: ANN201 - StepBody
    facts = ctx.known
    previous = facts.previous_release
    saved: dict[str, str] = {}
    for container in facts.containers:
        # The db service is left out: a release never builds it, and a rollback must not put
        # an older database server on the data directory a newer one wrote.
        if container.oneoff or container.state != "running" or not container.image or container.service == ctx.app.db_service:
            continue
        if container.image in saved:
            continue
        if previous is not None:
            tag: str | Value = saved_tag(container.image, previous.id)
        else:
            tag = saved_tag_value(container.image, "release_id")
            tag = Value("release_id", tag.template.replace("{}", "before-{}"))
        yield Command(("docker", "tag", container.image_id, tag), what=f"tag the running {container.service} image")
        saved[container.image] = tag if isinstance(tag, str) else tag.fill(ctx.values)
    if not saved:
        raise Skip("no running containers: nothing to put back")
    assert ctx.record is not None
    ctx.note(source=replace(ctx.record.source, images=saved))
    return "images saved as " + ", ".join(saved.values())


register(StepKind(
    name="snapshot",
    summary="tag the running images so they can be put back without a rebuild",
    run=snapshot,
    changes=frozenset({IMAGES}),
    once=True,
))
