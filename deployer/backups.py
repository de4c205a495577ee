"""Database backups on the target host: create (streamed pg_dump), verify, list, restore.

A dump is streamed by ``pg_dump -Fc`` inside the db container straight into a file on the
host: no copy of it is held in memory, here or there. It is written under a temporary
name, checksummed and read back with ``pg_restore --list``, and only then renamed to its
final name next to a JSON description. A dump that dies midway leaves only a ``.partial``
file that nothing mistakes for a backup.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from deployer.errors import CommandError, DeployerError
from deployer.target import Target, shell

DUMP_SUFFIX = ".dump"
META_SUFFIX = ".json"
PARTIAL_SUFFIX = ".partial"

# Run inside the db container, whose environment names the database (official postgres image).
PG_DUMP = 'exec pg_dump --format=custom --username="${POSTGRES_USER:-postgres}" "${POSTGRES_DB:-${POSTGRES_USER:-postgres}}"'
PG_LIST = "exec pg_restore --list"
PG_RESTORE = (
    "set -e; sql=$(mktemp); trap 'rm -f \"$sql\"' EXIT; pg_restore --no-owner --file=\"$sql\"; "
    "{ echo 'DROP SCHEMA public CASCADE; CREATE SCHEMA public;'; cat \"$sql\"; } | "
    'psql --quiet --no-psqlrc --set=ON_ERROR_STOP=1 --single-transaction '
    '--username="${POSTGRES_USER:-postgres}" --dbname="${POSTGRES_DB:-${POSTGRES_USER:-postgres}}" >/dev/null'
)


class BackupError(DeployerError):
    """A backup could not be made, verified or restored."""


@dataclass(frozen=True)
class Backup:
    """One verified dump on the host, described by the JSON file beside it."""

    id: str
    environment: str
    release: str | None
    revision: tuple[str, ...]
    size: int
    sha256: str
    created_at: str
    path: str
    engine: str = "postgresql"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


def new_id(now: datetime | None = None) -> str:
    return (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%S%fZ")


def _sha256(target: Target, path: str) -> str:
    result = target.host.run(["sha256sum", path], timeout=3600).check(f"checksum {path}")
    match = re.match(r"([0-9a-f]{64})\b", result.stdout)
    if not match:
        raise BackupError(f"unexpected sha256sum output for {path}: {result.stdout.strip()!r}")
    return match.group(1)


def _size(target: Target, path: str) -> int:
    return int(target.host.run(["stat", "-c", "%s", path]).check(f"stat {path}").stdout.strip())


def _readable(target: Target, path: str) -> tuple[bool, str]:
    """Can pg_restore read the dump's table of contents?"""
    argv = target.compose.exec(target.config.app.db_service, ["sh", "-c", PG_LIST])
    result = target.host.run(shell(argv, stdin_path=path), timeout=3600)
    if not result.ok:
        return False, (result.stderr.strip().splitlines() or ["pg_restore failed"])[-1]
    if "TABLE DATA" not in result.stdout and "SCHEMA" not in result.stdout and "TABLE" not in result.stdout:
        return False, "the dump lists no objects"
    return True, "readable"


def create(target: Target, *, release: str | None, revision: tuple[str, ...]) -> Backup:
    """Dump the environment's database into ``backup_dir``; verified before it counts."""
    host = target.host
    backup_dir = target.env.backup_dir
    host.run(["mkdir", "-p", backup_dir], check=True)
    host.run(["chmod", "700", backup_dir], check=True)
    backup_id = new_id()
    final = posixpath.join(backup_dir, backup_id + DUMP_SUFFIX)
    partial = final + PARTIAL_SUFFIX
    dump = target.compose.exec(target.config.app.db_service, ["sh", "-c", PG_DUMP])
    script = shell(dump, stdout_path=partial)
    script[2] = "umask 077; " + script[2]
    result = host.run(script, timeout=6 * 3600)
    if not result.ok:
        host.run(["rm", "-f", partial])
        raise BackupError(
            f"pg_dump failed on {host.name} (exit {result.exit_code}): {result.stderr.strip()[-500:]}",
            hint="nothing was migrated; check the db service's logs and free disk space in " + backup_dir,
        )
    ok, why = _readable(target, partial)
    if not ok:
        host.run(["rm", "-f", partial])
        raise BackupError(f"the fresh dump does not verify: {why}", hint="nothing was migrated")
    backup = Backup(
        id=backup_id,
        environment=target.name,
        release=release,
        revision=tuple(revision),
        size=_size(target, partial),
        sha256=_sha256(target, partial),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        path=final,
    )
    host.write_text(posixpath.join(backup_dir, backup_id + META_SUFFIX), backup.to_json(), mode=0o600)
    host.run(["mv", "-f", partial, final], check=True)
    return backup


def verify(target: Target, backup: Backup) -> None:
    """Checksum matches AND pg_restore can read it, or :class:`BackupError`."""
    if not target.host.run(["test", "-f", backup.path]).ok:
        raise BackupError(f"backup {backup.id}: {backup.path} is missing on {target.host.name}")
    digest = _sha256(target, backup.path)
    if digest != backup.sha256:
        raise BackupError(f"backup {backup.id} is corrupt: sha256 {digest[:12]}… differs from the recorded {backup.sha256[:12]}…")
    ok, why = _readable(target, backup.path)
    if not ok:
        raise BackupError(f"backup {backup.id} is not a readable dump: {why}")


def list_backups(target: Target) -> list[Backup]:
    """The verified-at-creation backups under ``backup_dir``, oldest first."""
    host = target.host
    listing = host.run(["find", target.env.backup_dir, "-maxdepth", "1", "-name", "*" + META_SUFFIX, "-type", "f"])
    if not listing.ok:
        return []
    backups = []
    for path in sorted(listing.stdout.split()):
        try:
            data = json.loads(host.read_text(path))
            data["revision"] = tuple(data.get("revision") or ())
            backups.append(Backup(**data))
        except (ValueError, TypeError, CommandError, OSError):
            continue
    return sorted(backups, key=lambda b: b.id)


def restore(target: Target, backup: Backup) -> None:
    """Replace the database's contents with the backup's, in one transaction."""
    verify(target, backup)
    argv = target.compose.exec(target.config.app.db_service, ["sh", "-c", PG_RESTORE])
    result = target.host.run(shell(argv, stdin_path=backup.path), timeout=6 * 3600)
    if not result.ok:
        raise BackupError(
            f"restoring backup {backup.id} failed (exit {result.exit_code}): {result.stderr.strip()[-500:]}",
            hint="the restore runs in one transaction, so the database was left as it was",
        )
