"""Backups kept in two places: copies of every dump (``backup_copy`` in deploy.toml) on the
machine running deployer (``local:DIR``) and/or on another host (``host:HOST:DIR``).

A copy is the dump and its description, side by side as on the server. It is streamed by
this process — from the server over its SSH connection; to another host over a connection
of its own (the servers need no access to each other) — written under a temporary name,
checksummed where it arrived, and only then given its name; the description comes last, so
a copy cut off midway is never listed (and :func:`prune` clears what it left). The server's
description records where copies were made.

Each place is listed, restored from and pruned on its own: ``backups list`` shows where each
backup is, ``backups restore`` brings a copy back to the server (checksum checked again) when
the server's is gone or when asked to, and ``backups prune`` applies the same retention to
every place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deployer.actions import Transfer, Write
from deployer.config import BackupCopy
from deployer.errors import DeployerError
from deployer.hosts import Host, LocalHost, connect
from deployer.server.backups import (
    DUMP_SUFFIX,
    META_SUFFIX,
    PARTIAL_SUFFIX,
    SERVER,
    Backup,
    BackupError,
    Copy,
    Retention,
    select_retention,
)
from deployer.server.target import Target


@dataclass(frozen=True)
class Place:
    """An open copy place: its host (this machine for ``local:``) and its directory there."""

    copy: BackupCopy
    host: Host
    directory: str

    def dump_path(self, backup_id: str) -> str:
        return posixpath.join(self.directory, backup_id + DUMP_SUFFIX)

    def meta_path(self, backup_id: str) -> str:
        return posixpath.join(self.directory, backup_id + META_SUFFIX)


@contextlib.contextmanager
def opened(copy: BackupCopy) -> Iterator[Place]:
    """The place a copy goes to, connected; closed at the end of the block."""
    if copy.host is None:
        yield Place(copy, LocalHost(), os.path.expanduser(copy.directory))
        return
    host = connect(copy.host)
    try:
        yield Place(copy, host, copy.directory)
    finally:
        host.close()


def _sha256_local(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sha256_at(host: Host, path: str) -> str:
    if host.is_local:
        return _sha256_local(path)
    result = host.run(["sha256sum", path], timeout=3600)
    return result.stdout[:64] if result.ok else ""


def _prepare(place: Place) -> None:
    place.host.run(["mkdir", "-p", place.directory], timeout=60).check(f"create {place.directory} on {place.host.name}")
    place.host.run(["chmod", "700", place.directory], timeout=60).check(f"restrict {place.directory} on {place.host.name}")


def _remove(host: Host, *paths: str) -> None:
    with contextlib.suppress(DeployerError, OSError):
        host.run(["rm", "-f", *paths], timeout=60)


def send(target: Target, backup: Backup, place: Place, *, source: Path | None = None) -> Copy:
    """Copy ``backup`` (dump, then description) from the server to ``place``; ``source``: a
    local copy of the dump to send from instead of fetching it again. Checked by its sha256
    where it arrived; on any failure nothing named like a copy is left there."""
    _prepare(place)
    final, partial = place.dump_path(backup.id), place.dump_path(backup.id) + PARTIAL_SUFFIX
    try:
        if place.host.is_local:
            Path(partial).touch(mode=0o600)
            os.chmod(partial, 0o600)
            target.host.get(backup.path, partial)
        else:
            with _local_dump(target, backup, source) as local:
                place.host.put(local, partial, mode=0o600)
        arrived = _sha256_at(place.host, partial)
        if arrived != backup.sha256:
            raise BackupError(f"the copy of {backup.id} at {place.copy} does not match its sha256 "
                              f"({arrived[:12] or 'unreadable'}… != {backup.sha256[:12]}…); it was removed")
        place.host.run(["mv", "-f", partial, final], timeout=60).check(f"name the copy {final}")
    except BaseException:
        _remove(place.host, partial)
        raise
    made = Copy(where=str(place.copy), path=final, copied_at=datetime.now(UTC).isoformat(timespec="seconds"))
    described = replace(backup, path=final, copies=_with(backup.copies, made))
    place.host.write_text(place.meta_path(backup.id), described.to_json(), mode=0o600)
    return made


@contextlib.contextmanager
def _local_dump(target: Target, backup: Backup, source: Path | None) -> Iterator[Path]:
    """A local file holding the dump: ``source`` when given, else fetched into a temporary
    directory removed afterwards."""
    if source is not None:
        yield source
        return
    scratch = tempfile.mkdtemp(prefix="deployer-copy-")
    try:
        os.chmod(scratch, 0o700)
        local = Path(scratch) / (backup.id + DUMP_SUFFIX)
        target.host.get(backup.path, local)
        yield local
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _with(copies: Sequence[Copy], made: Copy) -> tuple[Copy, ...]:
    return (*[c for c in copies if c.where != made.where], made)


def copy_steps(target: Target, backup: Backup, *, planning: bool = False, log: Any = lambda _: None):  # noqa: ANN201
    """The actions that copy ``backup`` to every ``backup_copy`` place (a local one first: the
    others are sent from it), then record in the server's description where copies are;
    returns the backup so described and what failed (one line each). One place failing does
    not stop the others."""
    made: list[Copy] = []
    failed: list[str] = []
    source: Path | None = None
    for copy in sorted(target.env.backup_copies, key=lambda c: not c.is_local):
        destination = posixpath.join(copy.where, backup.id + DUMP_SUFFIX)

        def run(_ctx: Any, copy: BackupCopy = copy, source: Path | None = source) -> Copy:
            with opened(copy) as place:
                return send(target, backup, place, source=source)

        try:
            done = yield Transfer(backup.path, destination, run, what="checksummed where it arrives")
        except (DeployerError, OSError) as error:
            reason = error.message if isinstance(error, DeployerError) else f"{type(error).__name__}: {error}"
            failed.append(f"{copy}: {reason}")
            log(f"warning: backup {backup.id} was not copied to {copy}: {reason}")
            continue
        if done is None:  # a dry run
            continue
        if copy.is_local and source is None:
            source = Path(done.path)
        made.append(done)
        log(f"copied backup {backup.id} to {copy} ({done.path})")
    copies = backup.copies
    for done in made:
        copies = _with(copies, done)
    updated = replace(backup, copies=copies)
    if made or planning:
        yield Write(backup.meta_path, updated.to_json(), mode=0o600, what="the backup's description, with its copies")
    return updated, failed


# --------------------------------------------------------------------------- listing


def _read(place: Place, environment: str) -> list[Backup]:
    """The backups described at ``place`` (this environment's), oldest first."""
    found = place.host.run(["find", place.directory, "-maxdepth", "1", "-name", "*" + META_SUFFIX, "-type", "f"], timeout=60)
    if not found.ok:
        if "No such file" in found.stderr:
            return []
        raise BackupError(f"cannot list {place.directory} on {place.host.name}: {found.stderr.strip()[-200:]}")
    backups = []
    for path in sorted(filter(None, found.stdout.splitlines())):
        try:
            backup = Backup.from_dict(json.loads(place.host.read_text(path)))
        except (ValueError, TypeError, DeployerError, OSError):
            continue
        if backup.environment == environment:
            backups.append(replace(backup, path=place.dump_path(backup.id)))
    return sorted(backups, key=lambda b: b.id)


@dataclass(frozen=True)
class Located:
    """One backup and every place it is: ``server``, ``local``, or a host (as configured)."""

    backup: Backup  # the server's description when it has one, else a copy's
    places: tuple[str, ...]
    paths: tuple[str, ...]  # the dump's path at each place

    def to_dict(self) -> dict[str, Any]:
        return {**self.backup.to_dict(), "places": [{"where": w, "path": p} for w, p in zip(self.places, self.paths, strict=True)]}


def locate_all(target: Target, server: Sequence[Backup]) -> tuple[list[Located], list[str]]:
    """Every backup of the environment, wherever a copy of it is; and the places that could
    not be read (one line each)."""
    where: dict[str, list[tuple[str, str]]] = {b.id: [(SERVER, b.path)] for b in server}
    described: dict[str, Backup] = {b.id: b for b in server}
    unreadable: list[str] = []
    for copy in target.env.backup_copies:
        try:
            with opened(copy) as place:
                for backup in _read(place, target.name):
                    where.setdefault(backup.id, []).append((str(copy), backup.path))
                    # The server's description when it has one: its verdict is about its file.
                    described.setdefault(backup.id, backup)
        except (DeployerError, OSError) as error:
            unreadable.append(f"{copy}: {error.message if isinstance(error, DeployerError) else error}")
    located = [Located(described[i], tuple(w for w, _ in where[i]), tuple(p for _, p in where[i])) for i in sorted(where)]
    return located, unreadable


# --------------------------------------------------------------------------- restoring


def find_copy(target: Target, backup_id: str, source: str | None = None) -> tuple[Backup, BackupCopy]:
    """A copy of ``backup_id`` (an id or a unique prefix) and the place holding it (read-only).
    ``source``: ``local``, a host, or a place as configured; None: the first place that has
    it, the local one first."""
    places = sorted(target.env.backup_copies, key=lambda c: not c.is_local)
    if source is not None:
        places = [c for c in places if source in (str(c), c.label, c.host.hostname if c.host else "local")]
        if not places:
            known = ", ".join(["server", *(f"{c.label} ({c})" for c in target.env.backup_copies)])
            raise BackupError(f"{target.name} keeps no copy at {source!r}", hint=f"the places it keeps backups: {known}")
    reasons = []
    for copy in places:
        try:
            with opened(copy) as place:
                held = _read(place, target.name)
        except (DeployerError, OSError) as error:
            reasons.append(f"{copy}: {error.message if isinstance(error, DeployerError) else error}")
            continue
        found = [b for b in held if b.id == backup_id] or [b for b in held if b.id.startswith(backup_id)]
        if backup_id == "latest" and held:
            found = held[-1:]
        if len(found) == 1:
            return found[0], copy
        reasons.append(f"{copy}: " + ("not there" if not found else f"{backup_id!r} matches {len(found)} backups"))
    why = "; ".join(reasons) or "no backup_copy is configured"
    raise BackupError(f"no copy of backup {backup_id!r} of {target.name}: {why}",
                      hint=f"`deployer backups list {target.name}` shows where each backup is")


def bring_back(target: Target, backup: Backup, copy: BackupCopy, *, log: Any = lambda _: None) -> Backup:
    """Put the copy of ``backup`` kept at ``copy`` back on the server (call under the deploy
    lock): under a temporary name, checksummed there, then named and described. Returns the
    backup as the server now describes it."""
    log(f"bringing backup {backup.id} back from {copy} ...")
    with opened(copy) as place:
        return _put_back(target, replace(backup, path=place.dump_path(backup.id)), place)


def _put_back(target: Target, backup: Backup, place: Place) -> Backup:
    """The copy at ``place`` onto the server, under a temporary name, checksummed there,
    then named and described."""
    backup_dir = target.env.backup_dir
    final = posixpath.join(backup_dir, backup.id + DUMP_SUFFIX)
    partial = final + PARTIAL_SUFFIX
    target.host.run(["mkdir", "-p", backup_dir], timeout=60).check(f"create {backup_dir}")
    target.host.run(["chmod", "700", backup_dir], timeout=60).check(f"restrict {backup_dir}")
    try:
        if place.host.is_local:
            target.host.put(backup.path, partial, mode=0o600)
        else:
            scratch = tempfile.mkdtemp(prefix="deployer-copy-")
            try:
                os.chmod(scratch, 0o700)
                local = Path(scratch) / (backup.id + DUMP_SUFFIX)
                place.host.get(backup.path, local)
                target.host.put(local, partial, mode=0o600)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        arrived = _sha256_at(target.host, partial)
        if arrived != backup.sha256:
            raise BackupError(f"the copy of {backup.id} from {place.copy} does not match its recorded sha256 on "
                              f"{target.host.name} ({arrived[:12] or 'unreadable'}… != {backup.sha256[:12]}…); it was removed")
        target.host.run(["mv", "-f", partial, final], timeout=60).check(f"name the dump {final}")
    except BaseException:
        _remove(target.host, partial)
        raise
    restored = replace(backup, path=final)
    target.host.write_text(restored.meta_path, restored.to_json(), mode=0o600)
    return restored


# --------------------------------------------------------------------------- retention


@dataclass(frozen=True)
class Pruned:
    """What a prune decided (and, unless a dry run, did) at one copy place."""

    where: str
    retention: Retention | None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"where": self.where, **(self.retention.to_dict() if self.retention else {}), "error": self.error}


def prune_copies(target: Target, records: Sequence[Any], keep: int, *, dry_run: bool) -> list[Pruned]:
    """Apply retention to every copy place on its own (call under the deploy lock): the same
    rule as on the server, over the backups that place holds."""
    pruned = []
    for copy in target.env.backup_copies:
        try:
            with opened(copy) as place:
                backups = _read(place, target.name)
                decision = select_retention(backups, records, keep)
                leftovers = _leftovers(place)
                if not dry_run:
                    for backup in decision.removed:
                        # The description first: a dump without one is never listed nor restored.
                        place.host.run(["rm", "-f", place.meta_path(backup.id)], timeout=60).check("remove a description")
                        place.host.run(["rm", "-f", backup.path], timeout=60).check("remove a dump")
                    if leftovers:
                        place.host.run(["rm", "-f", *leftovers], timeout=60).check("remove partial copies")
                pruned.append(Pruned(str(copy), Retention(decision.kept, decision.removed, tuple(leftovers))))
        except (DeployerError, OSError) as error:
            pruned.append(Pruned(str(copy), None, error.message if isinstance(error, DeployerError) else str(error)))
    return pruned


def _leftovers(place: Place) -> list[str]:
    listing = place.host.run(["find", place.directory, "-maxdepth", "1", "-type", "f"], timeout=60)
    if not listing.ok:
        return []
    present = set(filter(None, listing.stdout.splitlines()))
    return sorted(path for path in present if path.endswith(PARTIAL_SUFFIX) or (
        path.endswith(DUMP_SUFFIX) and path[: -len(DUMP_SUFFIX)] + META_SUFFIX not in present))
