"""``record``: keep this release's images under its own tag (a rollback puts them back);
the engine then journals the release and clears the step log."""

from __future__ import annotations

from deployer.actions import Command, Read
from deployer.steps import IMAGES, StepKind, register
from deployer.steps.common import built_images, saved_tag
from deployer.steps.context import Context
from deployer.steps.playbook import Step


def running_images(ctx: Context) -> dict[str, str]:
    """service -> image id of the running containers (status tells the running code by it)."""
    from deployer.server import facts

    return {c.service: c.image_id for c in facts.service_containers(ctx.target) if c.state == "running"}


def record(ctx: Context, step: Step):  # noqa: ANN201 - StepBody
    assert ctx.record is not None
    release = ctx.record.goal.release
    tags = []
    for image in sorted(set(built_images(ctx).values())):
        tag = saved_tag(image, release)
        yield Command(("docker", "tag", image, tag), what=f"keep {image} as {tag}")
        tags.append(tag)
    ctx.scratch["release_images"] = {image: saved_tag(image, release) for image in set(built_images(ctx).values())}
    if ctx.env.swarm:
        from deployer.steps import swarm

        ids = yield Read("the images the services run", swarm.running_images)
    else:
        ids = yield Read("the images the containers run", running_images)
    ctx.scratch["image_ids"] = ids or {}
    return f"{ctx.kind} {ctx.run_id} recorded; images saved as {', '.join(tags) or 'none'}"


register(StepKind(
    name="record",
    summary="tag this release's images; the journal gets the release and the step log is cleared",
    run=record,
    changes=frozenset({IMAGES}),
    once=True,
))
