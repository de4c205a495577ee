"""A release's images, from the host that built them to the other nodes of the swarm, without
a registry: ``docker save`` there, ``docker load`` here, streamed through deployer.

Only what a node lacks travels. An image the node already has (same id) is not sent at all;
otherwise the layers it already has — the longest run from the base that one of its images
shares, usually everything but the app's own layer — are left out of the archive, and
``docker load`` takes them from its store (the engine opens a layer's file only when it does
not have that layer). An engine that refuses such an archive gets the whole image.
"""

from __future__ import annotations

import json
import os
import tarfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO

from deployer.commands import swarm as swarm_cmds
from deployer.errors import DeployerError
from deployer.hosts import Host

SAVE_TIMEOUT = 3600.0


class TransferFailed(DeployerError):
    """An image could not be copied to a node."""


@dataclass(frozen=True)
class Sent:
    """What one image's copy to one node moved."""

    image: str
    node: str
    layers: int  # the image's layers
    skipped: int  # of them, the node had already
    bytes: int  # what travelled
    whole: bool = False  # sent whole after the node refused the short archive

    def describe(self) -> str:
        size = f"{self.bytes / 1e6:.1f} MB"
        if self.whole:
            return f"{size} (whole: the short archive was refused)"
        return f"{size} ({self.layers - self.skipped} of {self.layers} layers)"


def layer_files(manifest: str, image_layers: Sequence[str]) -> dict[str, str]:
    """The archive's layer files -> the layer (diff id) each holds, from ``docker save``'s
    ``manifest.json`` (its ``Layers`` list is in the order of the image's layers)."""
    entries = json.loads(manifest or "[]")
    if not entries:
        raise ValueError("the archive's manifest lists no image")
    files = list(entries[0].get("Layers") or [])
    if len(files) != len(image_layers):
        raise ValueError(f"the manifest lists {len(files)} layer files for {len(image_layers)} layers")
    return dict(zip(files, image_layers, strict=True))


def filter_archive(source: IO[bytes], target: IO[bytes], leave_out: set[str]) -> None:
    """Copy a ``docker save`` archive from ``source`` to ``target`` (both streams), leaving
    out the members named in ``leave_out``."""
    with tarfile.open(fileobj=source, mode="r|") as archive, tarfile.open(fileobj=target, mode="w|",
                                                                           format=tarfile.GNU_FORMAT) as out:
        for member in archive:
            if member.name in leave_out:
                continue
            out.addfile(member, archive.extractfile(member) if member.isfile() else None)


class _Counter:
    """A writable stream end that counts what passes."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.count = 0

    def write(self, data: bytes) -> int:
        self.count += len(data)
        return self.handle.write(data)

    def close(self) -> None:
        self.handle.close()


def copy_image(source: Host, node: Host, image: str, *, leave_out: set[str]) -> int:
    """``docker save image`` on ``source`` into ``docker load`` on ``node``, without the
    archive members in ``leave_out``; the bytes that travelled. Raises :class:`TransferFailed`."""
    saved_r, saved_w = os.pipe()
    kept_r, kept_w = os.pipe()
    outcome: dict[str, object] = {}

    def save() -> None:
        with open(saved_w, "wb") as pipe:
            try:
                def write(data: bytes) -> None:
                    pipe.write(data)

                outcome["save"] = source.stream(["docker", "save", image], sink=write, timeout=SAVE_TIMEOUT)
            except BaseException as error:  # noqa: BLE001 - reported by the caller
                outcome["save_error"] = error

    counter: list[_Counter] = []

    def filter_it() -> None:
        with open(saved_r, "rb") as reading, open(kept_w, "wb") as writing:
            counted = _Counter(writing)
            counter.append(counted)
            try:
                filter_archive(reading, counted, leave_out)  # type: ignore[arg-type]
            except BaseException as error:  # noqa: BLE001 - reported by the caller
                outcome["filter_error"] = error
                # Read the rest, so the saving side is not left blocked on a full pipe.
                while reading.read(1 << 20):
                    pass

    threads = [threading.Thread(target=save, name="image-save", daemon=True),
               threading.Thread(target=filter_it, name="image-filter", daemon=True)]
    for thread in threads:
        thread.start()
    try:
        with open(kept_r, "rb") as archive:
            loaded = node.stream(["docker", "load", "--quiet"], stdin=archive, timeout=SAVE_TIMEOUT)
    finally:
        for thread in threads:
            thread.join(timeout=SAVE_TIMEOUT)
    # The first cause first: a failed save truncates what the filter and the load see.
    failed = outcome.get("save_error")
    if isinstance(failed, BaseException):
        raise failed
    saved = outcome.get("save")
    if saved is not None and not getattr(saved, "ok", False):
        raise TransferFailed(f"`docker save {image}` failed on {source.name}: {getattr(saved, 'stderr', '').strip()[-300:]}")
    if not loaded.ok:
        raise TransferFailed(f"`docker load` of {image} failed on {node.name}: {loaded.stderr.strip()[-300:]}")
    failed = outcome.get("filter_error")
    if isinstance(failed, BaseException):
        raise failed
    return counter[0].count if counter else 0


def image_layers(host: Host, image: str) -> tuple[str, tuple[str, ...]]:
    """The id and layers of ``image`` on ``host``."""
    found = host.run(["docker", "image", "inspect", "--format", "{{json .Id}} {{json .RootFS.Layers}}", image], timeout=60)
    if not found.ok:
        raise TransferFailed(f"no image {image} on {host.name}: {found.stderr.strip()[-200:]}")
    parsed = swarm_cmds.parse_layers(found.stdout)
    (image_id, layers), = parsed.items()
    return image_id, layers


def send(source: Host, node: Host, image: str, *, log: Callable[[str], None] | None = None) -> Sent | None:
    """Make ``image`` (a name:tag on ``source``) present on ``node`` with the same id and
    tag; None when it was already there."""
    image_id, layers = image_layers(source, image)
    known = node.run(swarm_cmds.layers_argv(), timeout=120)
    if not known.ok:
        raise TransferFailed(f"cannot list the images on {node.name}: {known.stderr.strip()[-300:]}")
    present = swarm_cmds.parse_layers(known.stdout)
    if image_id in present:
        tagged = node.run(["docker", "tag", image_id, image], timeout=60)
        if not tagged.ok:
            raise TransferFailed(f"cannot tag {image_id[:19]} as {image} on {node.name}: {tagged.stderr.strip()[-200:]}")
        return None
    shared = swarm_cmds.present_prefix(layers, present)
    leave_out: set[str] = set()
    if shared:
        manifest = source.run(swarm_cmds.save_manifest_argv(image), timeout=SAVE_TIMEOUT)
        if manifest.ok:
            try:
                files = layer_files(manifest.stdout, layers)
            except ValueError:
                files = {}
            have = set(layers[:shared])
            leave_out = {name for name, layer in files.items() if layer in have}
    try:
        moved = copy_image(source, node, image, leave_out=leave_out)
        return Sent(image, node.name, len(layers), len(leave_out), moved)
    except TransferFailed:
        if not leave_out:
            raise
        if log is not None:
            log(f"{node.name} refused {image} without the layers it has; sending it whole")
    moved = copy_image(source, node, image, leave_out=set())
    return Sent(image, node.name, len(layers), 0, moved, whole=True)
