"""``snapshot``: tag the images the running containers use, so recovery and rollbacks can put
them back without a rebuild (a rebuild of an old commit is not the same image)."""

from __future__ import annotations

from dataclasses import replace

from deployer.actions import Command, Read, Skip, Value
from deployer.steps import IMAGES, StepKind, register
from deployer.steps.common import built_images, saved_tag, saved_tag_value
from deployer.steps.context import Context
from deployer.steps.playbook import Step


def snapshot(ctx: Context, step: Step):  # noqa: ANN201 - StepBody
    facts = ctx.known
    previous = facts.previous_release
    saved: dict[str, str] = {}
    running: list[tuple[str, str, str]] = []  # (service, image name, image id)
    if ctx.env.swarm:
        # A stack's services run their images by id: the names are compose's, for the built ones.
        from deployer.steps import swarm

        ids = yield Read("the images the stack's services run", swarm.running_images, plan=True)
        running = [(service, name, (ids or {})[service]) for service, name in sorted(built_images(ctx).items())
                   if service in (ids or {})]
    else:
        # The db service is left out: a release never builds it, and a rollback must not put
        # an older database server on the data directory a newer one wrote.
        running = [(c.service, c.image, c.image_id) for c in facts.containers
                   if not c.oneoff and c.state == "running" and c.image and c.service != ctx.app.db_service]
    for service, image, image_id in running:
        if image in saved:
            continue
        if previous is not None:
            tag: str | Value = saved_tag(image, previous.id)
        else:
            tag = saved_tag_value(image, "release_id")
            tag = Value("release_id", tag.template.replace("{}", "before-{}"))
        yield Command(("docker", "tag", image_id, tag), what=f"tag the running {service} image")
        saved[image] = tag if isinstance(tag, str) else tag.fill(ctx.values)
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
