"""deployer's release images on a host: which of the tags ``snapshot`` and ``record`` leave
(``<repository>:deployer-<release id>``) a rollback may still need, and removing the others.

A rollback to a release puts back the images its journal record names; without them it
rebuilds that release's commit, which is not the same image. So a tag stays while:

* it is the release that runs now, or one of the newest ``keep_releases`` successful releases
  (the rollbacks within them need it);
* a container of the project, running or stopped, uses its image;
* an interrupted run's step log names it (recovery puts those images back);
* no record of this environment names its release id: it is not this environment's to remove.

Every other ``deployer-`` tag of the environment's image repositories goes, with ``docker
image rm`` — never forced: the engine refuses to remove the last tag of an image that any
container uses, and only untags an image that keeps another tag. Done under the deploy lock
by ``deployer images prune``, and by a release after it is journaled (its lease still held).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from deployer.commands import docker as docker_cmds
from deployer.server import journal, runlog

if TYPE_CHECKING:
    from deployer.server.target import Target

TAG_PREFIX = "deployer-"  # as deployer.steps.common.IMAGE_TAG_PREFIX
BEFORE = "before-"  # snapshot's tag for what ran before a first release: deployer-before-<run id>


@dataclass(frozen=True)
class Pruning:
    """What pruning one host's image tags kept (and why) and removed."""

    host: str
    keep: int  # keep_releases
    kept: tuple[tuple[str, str], ...] = ()  # (tag, why), newest release first
    removed: tuple[str, ...] = ()  # removed (a dry run: would be)
    refused: tuple[tuple[str, str], ...] = ()  # (tag, the engine's reason): it would not remove them
    deleted: int = 0  # images deleted with their last tag (the other tags were only untagged)
    commands: tuple[str, ...] = field(default=(), compare=False)  # what ran (a dry run: would run)

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "keep_releases": self.keep, "kept": [{"tag": t, "why": w} for t, w in self.kept],
                "removed": list(self.removed), "refused": [{"tag": t, "why": w} for t, w in self.refused],
                "images_deleted": self.deleted}


def release_of(tag: str) -> str:
    """The release (or run) id a ``repo:deployer-<id>`` tag was made for."""
    return tag.rpartition(":")[2].removeprefix(TAG_PREFIX).removeprefix(BEFORE)


def _repository(image: str) -> str | None:
    if not image or image.startswith("sha256:"):
        return None
    slash, colon = image.rfind("/"), image.rfind(":")
    return image[:colon] if colon > slash else image


def repositories(records: Iterable[journal.Record], run: runlog.RunRecord | None, images: Iterable[str]) -> list[str]:
    """The image repositories deployer tags for this environment: those its journal and step
    log name, and those of the project's containers (``images``)."""
    names: set[str] = set(images)
    for record in records:
        names.update(record.images)
        names.update(record.images.values())
    if run is not None:
        names.update(run.source.images)
        names.update(run.source.images.values())
    return sorted({repo for repo in map(_repository, names) if repo})


def select(
    tags: Mapping[str, str],
    records: Sequence[journal.Record],
    *,
    keep: int,
    in_use: Mapping[str, str],
    run: runlog.RunRecord | None = None,
) -> tuple[list[tuple[str, str]], list[str]]:
    """Which tags stay (with why) and which go (pure; see the module docstring).

    ``tags``: tag -> image id; ``in_use``: image id -> a container that uses it.
    """
    if keep < 1:
        raise ValueError("keep_releases is at least 1")
    releases = [r for r in records if r.kind == "release" and r.outcome == journal.SUCCEEDED]
    newest = {r.id for r in releases[-keep:]}
    running = journal.running_release(records)
    known = {r.id for r in records}
    needed: set[str] = set()
    if run is not None:
        known |= {run.id} | ({run.source.release} if run.source.release else set())
        needed = {run.id, *([run.source.release] if run.source.release else [])}
    order = {r.id: index for index, r in enumerate(records)}
    kept: list[tuple[str, str]] = []
    removed: list[str] = []
    for tag in sorted(tags, key=lambda t: (-order.get(release_of(t), -1), t)):  # newest release first
        release = release_of(tag)
        if running is not None and release == running.id:
            kept.append((tag, f"release {release} runs now"))
        elif release in newest:
            kept.append((tag, f"release {release} is one of the {keep} newest (keep_releases)"))
        elif run is not None and (release in needed or tag in run.source.images.values()):
            kept.append((tag, f"the interrupted run {run.id} puts it back when it is recovered"))
        elif tags[tag] in in_use:
            kept.append((tag, f"its image is used by the container {in_use[tags[tag]]}"))
        elif release not in known:
            kept.append((tag, "no record of this environment names it"))
        else:
            removed.append(tag)
    return kept, removed


def prune_steps(target: Target, *, keep: int | None = None, dry_run: bool = False):  # noqa: ANN201 - a generator of actions
    """Remove the environment's image tags no retained release needs, on the target's host:
    the actions, for the engine to perform after a release (they are in its trace) or for
    :func:`prune` (``deployer images prune``). Returns the :class:`Pruning`.

    Performed under the deploy lock. With ``dry_run`` nothing is removed.
    """
    from deployer.actions import Command, Probe, Read
    from deployer.server import facts

    host = target.host
    keep = keep or target.env.keep_releases
    state = yield Read("the journal, the step log and the project's containers", lambda _: (
        journal.read(host, target.state_dir), runlog.read(host, target.state_dir), facts.all_containers(target)), plan=True)
    records, run, containers = state
    db = target.config.app.db_service
    repos = repositories(records, run, (c.image for c in containers if c.service != db))
    if not repos:
        return Pruning(host.name, keep)
    listing = docker_cmds.image_tags_argv(repos, TAG_PREFIX)
    found = yield Probe(tuple(listing), what="list deployer's image tags", timeout=60)
    tags = docker_cmds.parse_image_tags(found.stdout)
    in_use = {c.image_id: c.name for c in containers if c.image_id}
    kept, removed = select(tags, records, keep=keep, in_use=in_use, run=run)
    remove = docker_cmds.remove_tags_argv(removed) if removed else None
    commands = (shlex.join(listing),) + ((shlex.join(remove),) if remove else ())
    if dry_run or remove is None:
        return Pruning(host.name, keep, tuple(kept), tuple(removed), commands=commands)
    result = yield Command(tuple(remove), what="remove the image tags no retained release needs", timeout=300, check=False)
    # "Deleted:" names the image and each of its layers that went with it: count the images.
    gone_ids = {line.partition(":")[2].strip() for line in result.stdout.splitlines() if line.startswith("Deleted:")}
    deleted = len({tags[tag] for tag in removed if tags[tag] in gone_ids})
    refused: list[tuple[str, str]] = []
    if not result.ok:
        # The engine went on with the others: see which are still there, and why.
        again = yield Probe(tuple(listing), what="list deployer's image tags again", timeout=60)
        left = docker_cmds.parse_image_tags(again.stdout)
        reasons = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        for tag in removed:
            if tag in left:
                refused.append((tag, next((r for r in reasons if tag in r), reasons[-1] if reasons else "refused")))
    gone = tuple(tag for tag in removed if tag not in dict(refused))
    return Pruning(host.name, keep, tuple(kept), gone, tuple(refused), deleted, commands)


def prune(target: Target, *, keep: int | None = None, dry_run: bool = False) -> Pruning:
    """:func:`prune_steps` performed on the target's host (call it under the deploy lock)."""
    from deployer.actions import Read, perform

    body = prune_steps(target, keep=keep, dry_run=dry_run)
    answer: Any = None
    while True:
        try:
            action = body.send(answer)
        except StopIteration as stop:
            return stop.value
        if isinstance(action, Read):
            answer = action.read(None)  # type: ignore[arg-type]  # these reads need no run context
        else:
            answer = perform(target.host, action, {})


def prune_environment(target: Target, *, keep: int | None = None, dry_run: bool = False) -> Pruning:
    """``deployer images prune`` on one host: under the deploy lock (a dry run takes none)."""
    from deployer.server import lock

    if dry_run:
        return prune(target, keep=keep, dry_run=True)
    with lock.held(target.host, target.state_dir, f"images prune {target.name}", env_name=target.name):
        return prune(target, keep=keep)


def describe(pruning: Pruning) -> str:
    """One line for a release's log: what pruning after it did."""
    if not pruning.removed and not pruning.refused:
        return f"images: nothing to prune (keep_releases = {pruning.keep}; {len(pruning.kept)} tag(s) kept)"
    text = (f"images: removed {len(pruning.removed)} tag(s) no retained release needs (keep_releases = {pruning.keep})"
            + (f", {pruning.deleted} image(s) deleted" if pruning.deleted else "") + ": " + ", ".join(pruning.removed))
    if pruning.refused:
        text += "; docker kept " + ", ".join(f"{tag} ({why})" for tag, why in pruning.refused)
    return text
