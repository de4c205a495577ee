"""What a release does with git in the app's checkout on a host: argv builders and parsers.

Every builder is pure and returns the argv to run (``git -C PATH ...``); every parser
takes a command's stdout and raises :class:`ValueError` with a sentence on output it
cannot understand. Running them is the host's job.

How a checkout is brought to a commit (:func:`sync`): ``git checkout --force --detach
SHA``. It makes every tracked file exactly as in the commit — local edits to tracked
files are discarded and files the commit no longer has are removed — while files git
does not track (``.env``, uploads, the backup folder, anything in ``.gitignore``)
are left alone. ``git clean`` is deliberately not part of it: on a server the untracked
files are precisely the ones that must survive a release. ``reset --hard`` is not needed
either: a forced checkout already sets the index and the work tree to the commit, and a
detached HEAD records exactly what was deployed, with no branch to fast-forward or diverge.
Use :func:`status` first to find (and refuse, or report) local edits before they are
discarded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "StatusEntry",
    "fetch",
    "is_full_sha",
    "list_files",
    "parse_file_list",
    "parse_ls_remote",
    "parse_sha",
    "parse_status",
    "pick_ref",
    "rev_parse_head",
    "show_file",
    "status",
    "sync",
]

DEFAULT_REMOTE = "origin"

# SHA-1 object names are 40 hex digits; repositories using SHA-256 have 64.
_FULL_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_LS_REMOTE_LINE = re.compile(r"^([0-9a-f]{40}|[0-9a-f]{64})\t(\S+)$")


def _git(path: str, *args: str) -> list[str]:
    return ["git", "-C", path, *args]


def _checked(value: str, what: str) -> str:
    # A leading "-" would turn a ref or path into an option of git; whitespace and
    # control characters are never part of a valid ref or a path we read.
    if not value or value.startswith("-") or any(c.isspace() or ord(c) < 32 for c in value):
        raise ValueError(f"{what} {value!r} is not acceptable: empty, starting with '-' or containing whitespace")
    return value


def is_full_sha(value: str) -> bool:
    """True for a full (40 or 64 lowercase hex digits) commit id."""
    return bool(_FULL_SHA.fullmatch(value))


# --------------------------------------------------------------------------- builders


def fetch(path: str, *, remote: str = DEFAULT_REMOTE) -> list[str]:
    """Fetch every branch and tag of ``remote`` (pruning deleted branches).

    ``--force`` with ``--tags`` lets a tag moved on the remote replace the local one
    instead of failing the fetch ("would clobber existing tag").
    """
    return _git(path, "fetch", "--prune", "--tags", "--force", _checked(remote, "remote"))


def status(path: str, *, untracked: bool = False) -> list[str]:
    """Machine-readable state of the work tree (parse with :func:`parse_status`).

    Untracked files are left out by default: a server's checkout always has some
    (``.env``, uploads), and they are not local edits of the deployed code.
    """
    return _git(path, "status", "--porcelain=v1", "-z", f"--untracked-files={'all' if untracked else 'no'}")


def sync(path: str, sha: str) -> list[str]:
    """Make the work tree exactly commit ``sha`` (detached), keeping untracked files.

    See the module docstring for why this is a forced checkout and not reset + clean.
    ``sha`` must be a full commit id: the release resolved it once, and deploys exactly it.
    """
    return _git(path, "checkout", "--force", "--detach", _full_sha(sha))


def rev_parse_head(path: str) -> list[str]:
    """The commit the checkout is at (parse with :func:`parse_sha`)."""
    return _git(path, "rev-parse", "--verify", "HEAD^{commit}")


def show_file(path: str, sha: str, file_path: str) -> list[str]:
    """The bytes of ``file_path`` (relative to the repository root) at commit ``sha``.

    ``git cat-file blob`` rather than ``git show``: exact content, no text conversion
    filters and never a pager.
    """
    return _git(path, "cat-file", "blob", f"{_checked(sha, 'commit')}:{_relative(file_path)}")


def list_files(path: str, sha: str, directory: str) -> list[str]:
    """Every file under ``directory`` (relative to the repository root) at commit ``sha``.

    NUL-separated (``-z``) so names with spaces or non-ASCII characters come back
    unquoted; parse with :func:`parse_file_list`. Together with :func:`show_file` this
    reads a commit's migrations without checking it out.
    """
    return _git(path, "ls-tree", "-r", "-z", "--name-only", _checked(sha, "commit"), "--", _relative(directory))


def _full_sha(sha: str) -> str:
    if not is_full_sha(sha):
        raise ValueError(f"{sha!r} is not a full commit id (40 or 64 lowercase hex digits)")
    return sha


def _relative(file_path: str) -> str:
    cleaned = file_path.strip("/") if file_path not in ("", "/") else "."
    if cleaned.startswith("./"):
        cleaned = cleaned[2:] or "."
    if ".." in cleaned.split("/"):
        raise ValueError(f"path {file_path!r} leaves the repository")
    # Spaces are fine in a path (it is never an option here: it follows "SHA:" or "--").
    if any(ord(c) < 32 for c in cleaned):
        raise ValueError(f"path {file_path!r} contains control characters")
    return cleaned


# --------------------------------------------------------------------------- parsers


def parse_sha(stdout: str) -> str:
    """The single full commit id printed by ``rev-parse``."""
    value = stdout.strip()
    if not is_full_sha(value):
        raise ValueError(f"expected a full commit id from git, got {_shown(stdout)}")
    return value


def parse_ls_remote(stdout: str) -> dict[str, str]:
    """``git ls-remote`` output as {ref name: object id}."""
    refs: dict[str, str] = {}
    for number, line in enumerate(stdout.splitlines(), start=1):
        if not line.strip():
            continue
        match = _LS_REMOTE_LINE.fullmatch(line.rstrip("\r"))
        if not match:
            raise ValueError(f"line {number} of git ls-remote output is not '<id>\\t<ref>': {_shown(line)}")
        refs[match.group(2)] = match.group(1)
    return refs


def pick_ref(refs: Mapping[str, str], ref: str) -> str | None:
    """The commit ``ref`` names among ``refs`` (from :func:`parse_ls_remote`), or None.

    An exact full name (``refs/heads/main``, ``HEAD``) wins; otherwise a branch or a tag
    of that name (an annotated tag gives the commit it points at, ``^{}``). A branch and
    a tag with the same name is refused as ambiguous rather than guessed.
    """
    if ref in refs:
        return refs.get(f"{ref}^{{}}", refs[ref])
    candidates: dict[str, str] = {}
    branch = f"refs/heads/{ref}"
    tag = f"refs/tags/{ref}"
    if branch in refs:
        candidates[branch] = refs[branch]
    if tag in refs:
        candidates[tag] = refs.get(f"{tag}^{{}}", refs[tag])
    if len(candidates) > 1:
        raise ValueError(
            f"{ref!r} is both a branch and a tag on the remote; name one fully: "
            + " or ".join(sorted(candidates))
        )
    return next(iter(candidates.values()), None)


@dataclass(frozen=True)
class StatusEntry:
    """One changed path of ``git status --porcelain``: ``code`` is the two-letter XY code."""

    code: str
    path: str
    original_path: str | None = None

    @property
    def untracked(self) -> bool:
        """True for a file git does not track (``??``)."""
        return self.code == "??"


_STATUS_CODES = set(" MTADRCU?!")


def parse_status(stdout: str) -> tuple[StatusEntry, ...]:
    """Parse ``git status --porcelain=v1 -z``; an empty tuple is a clean work tree."""
    entries: list[StatusEntry] = []
    fields = stdout.split("\0")
    if fields and fields[-1] == "":
        fields.pop()
    index = 0
    while index < len(fields):
        item = fields[index]
        index += 1
        if len(item) < 4 or item[2] != " " or not set(item[:2]) <= _STATUS_CODES:
            raise ValueError(f"not an entry of git status --porcelain -z: {_shown(item)}")
        code, path = item[:2], item[3:]
        original = None
        if "R" in code or "C" in code:
            # Renames and copies are followed by the source path as its own field.
            if index >= len(fields):
                raise ValueError(f"git status entry {_shown(item)} lacks the path it was renamed from")
            original = fields[index]
            index += 1
        entries.append(StatusEntry(code, path, original))
    return tuple(entries)


def parse_file_list(stdout: str) -> list[str]:
    """Parse ``git ls-tree -r -z --name-only`` output into paths (in git's order)."""
    if stdout and not stdout.endswith("\0"):
        raise ValueError(f"not NUL-terminated output of git ls-tree -z (was -z given?): {_shown(stdout)}")
    return [p for p in stdout.split("\0") if p]


def _shown(text: str, limit: int = 120) -> str:
    shown = text if len(text) <= limit else text[: limit - 1] + "…"
    return repr(shown)
