"""Real git repositories for tests: an "origin" and a server's checkout of it.

``git_origin`` (per test) is a bare repository in a temporary directory, seeded on branch
``main`` with one commit holding a copy of this repository's example app (``example/``
and ``docker-compose.prod.yml``, as far as they exist) and a README. Its methods clone
working copies and push new commits, returning their ids. ``git_origin_factory`` makes
such origins with extra files in the first commit (e.g. a deploy.toml).
``server_checkout`` is a plain clone of the origin, as an app's directory on a server is.

Every git command runs with the user's global and system configuration switched off and
the identity set in the repository itself, so nothing depends on the machine's git setup.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
# What a deployed app repository holds, taken from this repository's example.
SEED_PATHS = ("example", "docker-compose.prod.yml")
BRANCH = "main"
AUTHOR_NAME = "Bench Author"
AUTHOR_EMAIL = "bench@example.invalid"
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".venv", "*.egg-info", ".pytest_cache")


def git_env() -> dict[str, str]:
    """Environment for git commands that ignores the machine's global and system config."""
    env = dict(os.environ)
    env.update(
        {
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_TERMINAL_PROMPT": "0",
            "LC_ALL": "C",
        }
    )
    return env


def git(*args: str, cwd: Path | None = None) -> str:
    """Run git; return stdout, fail the test with git's stderr when it exits non-zero."""
    result = subprocess.run(
        ["git", *args], cwd=cwd, env=git_env(), capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"git {' '.join(args)} failed ({result.returncode}):\n{result.stderr}", pytrace=False)
    return result.stdout


def _set_identity(work: Path) -> None:
    git("config", "user.name", AUTHOR_NAME, cwd=work)
    git("config", "user.email", AUTHOR_EMAIL, cwd=work)
    git("config", "commit.gpgsign", "false", cwd=work)


@dataclass
class GitOrigin:
    """A bare "origin" repository plus a working copy used to push commits to it."""

    path: Path
    workdir: Path
    initial_sha: str
    branch: str = BRANCH
    _clones: int = field(default=0, repr=False)

    @property
    def url(self) -> str:
        """What to clone from (a local path: git's local transport, no network)."""
        return str(self.path)

    def clone(self, dest: Path | None = None) -> Path:
        """A new working copy of origin (identity set), at ``dest`` or next to the origin."""
        if dest is None:
            self._clones += 1
            dest = self.path.parent / f"clone-{self._clones}"
        git("clone", "--quiet", "--branch", self.branch, self.url, str(dest))
        _set_identity(dest)
        return dest

    def commit(
        self, files: Mapping[str, str | bytes | None], message: str = "change", *, branch: str | None = None
    ) -> str:
        """Write (or delete, for None) files, commit, push to origin; return the new commit id."""
        branch = branch or self.branch
        git("fetch", "--quiet", "origin", cwd=self.workdir)
        if branch == self.branch or _remote_has(self.workdir, branch):
            git("checkout", "--quiet", "-B", branch, f"origin/{branch}", cwd=self.workdir)
        else:
            git("checkout", "--quiet", "-B", branch, f"origin/{self.branch}", cwd=self.workdir)
        _write(self.workdir, files)
        git("add", "--all", "--", *files.keys(), cwd=self.workdir)
        git("commit", "--quiet", "--allow-empty", "-m", message, cwd=self.workdir)
        git("push", "--quiet", "origin", f"HEAD:refs/heads/{branch}", cwd=self.workdir)
        return self.head(branch)

    def tag(self, name: str, sha: str, *, message: str | None = None) -> None:
        """Create a tag (annotated when ``message`` is given) on origin."""
        args = ["tag", "--annotate", "-m", message, name, sha] if message else ["tag", name, sha]
        git(*args, cwd=self.workdir)
        git("push", "--quiet", "origin", f"refs/tags/{name}", cwd=self.workdir)

    def head(self, branch: str | None = None) -> str:
        """The commit id origin's ``branch`` (default ``main``) points at."""
        return git("rev-parse", f"refs/heads/{branch or self.branch}", cwd=self.path).strip()


def _remote_has(work: Path, branch: str) -> bool:
    return bool(git("ls-remote", "--heads", "origin", branch, cwd=work).strip())


def _write(work: Path, files: Mapping[str, str | bytes | None]) -> None:
    for relative, content in files.items():
        target = work / relative
        if content is None:
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)


def make_origin(base: Path, extra_files: Mapping[str, str | bytes] | None = None) -> GitOrigin:
    """Create a seeded bare origin under ``base`` (see the module docstring)."""
    bare = base / "origin.git"
    work = base / "origin-work"
    git("init", "--quiet", "--bare", str(bare))
    # Set the branch name explicitly: `init.defaultBranch` and `--initial-branch` vary by git version.
    git("symbolic-ref", "HEAD", f"refs/heads/{BRANCH}", cwd=bare)
    git("init", "--quiet", str(work))
    git("symbolic-ref", "HEAD", f"refs/heads/{BRANCH}", cwd=work)
    _set_identity(work)
    for name in SEED_PATHS:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, work / name, ignore=_IGNORED)
        elif source.is_file():
            shutil.copy2(source, work / name)
    (work / "README.md").write_text("Test app repository made by the deployer test bench.\n")
    _write(work, dict(extra_files or {}))
    git("add", "--all", cwd=work)
    git("commit", "--quiet", "-m", "initial import", cwd=work)
    git("remote", "add", "origin", str(bare), cwd=work)
    git("push", "--quiet", "origin", f"HEAD:refs/heads/{BRANCH}", cwd=work)
    sha = git("rev-parse", "HEAD", cwd=work).strip()
    return GitOrigin(path=bare, workdir=work, initial_sha=sha)


@pytest.fixture
def git_origin_factory() -> Iterator[Callable[..., GitOrigin]]:
    """Make seeded origins: ``git_origin_factory(extra_files={"deploy.toml": ...})``.

    Each origin lives in its own temporary directory, removed after the test.
    """
    made: list[Path] = []

    def factory(extra_files: Mapping[str, str | bytes] | None = None) -> GitOrigin:
        base = Path(tempfile.mkdtemp(prefix="deployer-git-"))
        made.append(base)
        return make_origin(base, extra_files)

    try:
        yield factory
    finally:
        for base in made:
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def git_origin(git_origin_factory: Callable[..., GitOrigin]) -> GitOrigin:
    """A bare origin on branch main with one commit holding the example app."""
    return git_origin_factory()


@pytest.fixture
def server_checkout(git_origin: GitOrigin) -> Iterator[Path]:
    """A clone of ``git_origin`` in its own temporary directory, as a server's app directory."""
    base = Path(tempfile.mkdtemp(prefix="deployer-server-"))
    try:
        yield git_origin.clone(base / "app")
    finally:
        shutil.rmtree(base, ignore_errors=True)
