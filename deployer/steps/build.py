"""``build``: build the new images while the old containers keep serving."""

from __future__ import annotations

from deployer.actions import Command
from deployer.steps import IMAGES, Param, StepKind, register
from deployer.steps.common import built_images
from deployer.steps.context import Context
from deployer.steps.playbook import Step
from deployer.steps.recovery import Recovery


def build(ctx: Context, step: Step):  # noqa: ANN201 - StepBody
    yield Command(tuple(ctx.compose.build(pull=bool(step.params.get("pull")))), what="build the images", timeout=3600, stream=True)
    names = built_images(ctx)
    if names:
        # What this run built, by image id: `status` tells the running code by it.
        found = yield Command(("docker", "image", "inspect", "--format", "{{.Id}}", *names.values()), check=False, timeout=60)
        ids = found.stdout.split()
        if not ctx.planning and len(ids) == len(names):
            assert ctx.record is not None
            ctx.note(built=dict(zip(names, ids, strict=True)))
    copied = ""
    if ctx.env.swarm:
        from deployer.steps import swarm

        copied = "; " + (yield from swarm.distribute(ctx))
    return "images built" + (f": {', '.join(sorted(set(names.values())))}" if names else "") + copied


def restore_saved_images(ctx: Context, recovery: Recovery):  # noqa: ANN201
    """Point each image name back at the image saved before the run (shared with switch)."""
    for image, tag in sorted(recovery.record.source.images.items()):
        yield Command(("docker", "tag", tag, image), what=f"put {image} back")
    if recovery.record.source.images:
        recovery.done.append("previous images re-tagged")


def undo_build(ctx: Context, step: Step, recovery: Recovery):  # noqa: ANN201
    if recovery.code_stays:
        recovery.left.append("the new images stay in place: the schema did not go back")
        return
    yield from restore_saved_images(ctx, recovery)


register(StepKind(
    name="build",
    summary="build the images while the old containers keep serving",
    run=build,
    undo=undo_build,
    params={"pull": Param((bool,), "also pull newer base images")},
    changes=frozenset({IMAGES}),
))
