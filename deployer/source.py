"""The code to ship, seen from where deployer runs: the app's git repository and its remote.

The commit is resolved against the remote (``git ls-remote``), so what ships is what the
server can fetch — not whatever the local checkout happens to hold — and its migration
scripts are read from that commit's tree without checking it out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from deployer.commands import git as gitops
from deployer.db.migrations import MigrationScripts, scripts_from_sources, version_files
from deployer.errors import ConfigError, DeployerError, ExitCode

SHA_RE = re.compile(r"^[0-9a-f]{7,40}$")


class SourceError(DeployerError):
    """The commit to ship cannot be resolved or read."""


class RefError(SourceError):
    """The ref the command line (or deploy.toml's branch) names is not on the remote, or not
    one commit there: the command line is wrong (exit 2), nothing was tried."""

    exit_code = ExitCode.CONFIG


def check_ref(ref: str | None, *, what: str = "--ref",
              hint: str = "give a branch, tag or commit, or leave --ref out for the configured branch") -> None:
    """Refuse an empty ref (``--ref ''``) before anything connects: it never means the default."""
    if ref is not None and not ref.strip():
        raise ConfigError(f"{what} is empty", hint=hint)


@dataclass(frozen=True)
class Commit:
    sha: str
    ref: str  # what the user asked for, e.g. "main"
    subject: str
    author: str


def open_repo(root: Path):  # -> git.Repo
    """The git repository holding deploy.toml."""
    import git

    try:
        return git.Repo(root, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise ConfigError(
            f"{root} is not inside a git repository",
            hint="deployer ships commits: run it from your app's git checkout",
        ) from None


def remote_url(repo, configured: str | None, root: Path) -> str:
    """``environments.X.remote`` if set, else the URL of the repository's ``origin``.

    A relative path (``"."`` = this repository) is taken from deploy.toml's directory and
    made absolute, since the host's checkout resolves it from elsewhere.
    """
    if configured:
        if "://" not in configured and ":" not in configured.split("/")[0] and not configured.startswith("/"):
            return str((root / configured).resolve())
        return configured
    try:
        return repo.remotes.origin.url
    except (AttributeError, IndexError, ValueError):
        raise ConfigError(
            f"the repository {repo.working_dir} has no `origin` remote",
            hint="add one (`git remote add origin URL`) or set `remote` in the environment in deploy.toml",
        ) from None


def _branches(refs: dict[str, str]) -> str:
    return ", ".join(sorted(r[len("refs/heads/") :] for r in refs if r.startswith("refs/heads/"))) or "none"


def resolve(repo, url: str, ref: str) -> Commit:
    """Resolve ``ref`` (branch, tag or commit id) on the remote and fetch it here.

    A commit id must be reachable from one of the remote's branches: what ships is what
    the server will be able to fetch.
    """
    import git

    try:
        refs = gitops.parse_ls_remote(repo.git.ls_remote(url))
        sha = gitops.pick_ref(refs, ref)
    except git.GitCommandError as error:
        raise SourceError(
            f"cannot list the refs of {url}: {error.stderr.strip() or error}",
            hint="check the remote URL and your access to it",
        ) from None
    except ValueError as error:  # a branch and a tag of that name
        raise RefError(str(error)) from None
    unknown = RefError(
        f"{ref!r} is neither a branch, a tag nor a commit of {url}", hint=f"branches on the remote: {_branches(refs)}"
    )
    try:
        if sha:
            repo.git.fetch(url, sha if gitops.is_full_sha(ref) else ref)
        elif SHA_RE.match(ref):
            repo.git.fetch(url, *[name for name in refs if name.startswith("refs/heads/")])
            sha = repo.git.rev_parse("--verify", "--quiet", f"{ref}^{{commit}}")
            tips = [tip for name, tip in refs.items() if name.startswith("refs/heads/")]
            if not any(repo.is_ancestor(sha, tip) for tip in tips):
                raise RefError(f"commit {ref} is not on any branch of {url}", hint="push it first")
        else:
            raise unknown
    except git.GitCommandError:
        raise unknown from None
    commit = repo.commit(sha)
    return Commit(sha=commit.hexsha, ref=ref, subject=commit.summary, author=str(commit.author))


def migration_scripts(repo, sha: str, migrations_dir: str) -> MigrationScripts:
    """The migration scripts as they are in commit ``sha`` (never the work tree)."""
    commit = repo.commit(sha)
    try:
        tree = commit.tree / migrations_dir.strip("/")
    except KeyError:
        raise SourceError(
            f"commit {sha[:12]} has no {migrations_dir}/",
            hint="check app.migrations_dir in deploy.toml (it is relative to the repository root)",
        ) from None
    blobs = {blob.path: blob for blob in tree.traverse() if blob.type == "blob"}
    sources = {
        path: blobs[path].data_stream.read().decode("utf-8", errors="replace")
        for path in version_files(blobs, migrations_dir)
    }
    return scripts_from_sources(sources, location=f"{migrations_dir} at {sha[:12]}")


def file_at(repo, sha: str, path: str) -> str | None:  # noqa: ANN001 - git.Repo
    """The text of ``path`` (relative to the repository root) in commit ``sha``; None if absent."""
    try:
        blob = repo.commit(sha).tree / path.strip("/")
    except KeyError:
        return None
    if blob.type != "blob":
        return None
    return blob.data_stream.read().decode("utf-8", errors="replace")
