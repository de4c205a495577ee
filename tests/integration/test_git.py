"""deployer.commands.git argv, run for real against real repositories (tests/bench/gitrepos.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from deployer.commands import git as gitops
from deployer.db.migrations import MigrationScripts, scripts_from_sources, upgrade_path, version_files
from tests.bench.gitrepos import GitOrigin, git_env

pytestmark = pytest.mark.integration


def run(argv: Sequence[str], *, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a builder's argv as a host would; assert the exit status we expect."""
    result = subprocess.run(list(argv), env=git_env(), capture_output=True, text=True, timeout=60, check=False)
    assert (result.returncode == 0) is ok, f"{argv} -> {result.returncode}\n{result.stderr}"
    return result


def head(checkout: Path) -> str:
    return gitops.parse_sha(run(gitops.rev_parse_head(str(checkout))).stdout)


def test_seeded_origin_holds_the_example_app(git_origin: GitOrigin, server_checkout: Path) -> None:
    assert git_origin.head() == git_origin.initial_sha
    assert head(server_checkout) == git_origin.initial_sha
    listing = gitops.parse_file_list(run(gitops.list_files(str(server_checkout), git_origin.initial_sha, "")).stdout)
    assert "README.md" in listing
    repo_root = Path(__file__).resolve().parents[2]
    if (repo_root / "docker-compose.prod.yml").is_file():
        assert "docker-compose.prod.yml" in listing
    if (repo_root / "example").is_dir() and any(p.is_file() for p in (repo_root / "example").rglob("*")):
        assert any(path.startswith("example/") for path in listing)


def test_resolve_a_branch_and_tags_on_the_remote(git_origin: GitOrigin, server_checkout: Path) -> None:
    path = str(server_checkout)
    new = git_origin.commit({"app.txt": "v2\n"}, "second")
    # The remote answers before anything was fetched into the checkout.
    assert gitops.pick_ref(gitops.parse_ls_remote(run(["git", "-C", path, "ls-remote", "origin", "main", "main^{}"]).stdout), "main") == new
    assert head(server_checkout) == git_origin.initial_sha

    git_origin.tag("v1.0", git_origin.initial_sha, message="first release")
    git_origin.tag("light", new)
    assert gitops.pick_ref(gitops.parse_ls_remote(run(["git", "-C", path, "ls-remote", "origin", "v1.0", "v1.0^{}"]).stdout), "v1.0") == git_origin.initial_sha
    assert gitops.pick_ref(gitops.parse_ls_remote(run(["git", "-C", path, "ls-remote", "origin", "light", "light^{}"]).stdout), "light") == new
    assert gitops.pick_ref(gitops.parse_ls_remote(run(["git", "-C", path, "ls-remote", "origin", "nope", "nope^{}"]).stdout), "nope") is None


def test_sync_to_an_exact_older_commit_keeps_untracked_files(git_origin: GitOrigin, server_checkout: Path) -> None:
    path = str(server_checkout)
    first = git_origin.initial_sha
    second = git_origin.commit({"app.py": "VERSION = 2\n", "README.md": "changed\n"}, "v2")
    third = git_origin.commit({"app.py": "VERSION = 3\n", "extra.py": "x = 1\n"}, "v3")

    # Untracked server-side files, and a hot-patched tracked file.
    (server_checkout / ".env").write_text("SECRET_KEY=keep-me\n")
    (server_checkout / "backups").mkdir()
    (server_checkout / "backups" / "db-1.dump").write_bytes(b"\x00dump")
    (server_checkout / "README.md").write_text("edited on the server\n")

    assert run(["git", "-C", path, "cat-file", "-e", f"{third}^{{commit}}"], ok=False).returncode != 0
    run(gitops.fetch(path))
    run(["git", "-C", path, "cat-file", "-e", f"{third}^{{commit}}"])

    dirty = gitops.parse_status(run(gitops.status(path)).stdout)
    assert [(e.code, e.path) for e in dirty] == [(" M", "README.md")]  # .env is not a local edit
    every = gitops.parse_status(run(gitops.status(path, untracked=True)).stdout)
    assert {e.path for e in every if e.untracked} == {".env", "backups/db-1.dump"}

    run(gitops.sync(path, third))
    assert head(server_checkout) == third
    assert (server_checkout / "extra.py").read_text() == "x = 1\n"
    assert (server_checkout / "README.md").read_text() == "changed\n"  # the hot patch is gone

    run(gitops.sync(path, second))  # back to an older commit
    assert head(server_checkout) == second
    assert (server_checkout / "app.py").read_text() == "VERSION = 2\n"
    assert not (server_checkout / "extra.py").exists()  # tracked in v3 only: removed
    assert (server_checkout / ".env").read_text() == "SECRET_KEY=keep-me\n"
    assert (server_checkout / "backups" / "db-1.dump").read_bytes() == b"\x00dump"
    assert gitops.parse_status(run(gitops.status(path)).stdout) == ()

    run(gitops.sync(path, first))
    assert head(server_checkout) == first
    assert not (server_checkout / "app.py").exists()
    # Detached: the checkout records the commit, not a branch that could move under it.
    symbolic = subprocess.run(
        ["git", "-C", path, "symbolic-ref", "-q", "HEAD"], env=git_env(), capture_output=True, check=False
    )
    assert symbolic.returncode == 1


def test_sync_to_a_commit_not_fetched_fails(git_origin: GitOrigin, server_checkout: Path) -> None:
    new = git_origin.commit({"a.txt": "a\n"})
    failed = run(gitops.sync(str(server_checkout), new), ok=False)
    assert failed.returncode != 0
    assert head(server_checkout) == git_origin.initial_sha


def test_clone_without_checkout_then_sync(git_origin: GitOrigin, tmp_path: Path) -> None:
    target = tmp_path / "fresh"
    # as the sync step does it: init + fetch, never a clone (the directory may hold files)
    target.mkdir()
    run(["git", "-C", str(target), "init", "--quiet"])
    run(["git", "-C", str(target), "remote", "add", "origin", git_origin.url])
    run(gitops.fetch(str(target)))
    assert not (target / "README.md").exists()  # nothing placed until sync
    run(gitops.sync(str(target), git_origin.initial_sha))
    assert (target / "README.md").is_file()
    assert head(target) == git_origin.initial_sha
    assert gitops.parse_status(run(gitops.status(str(target))).stdout) == ()


def test_read_a_commits_migrations_without_checking_it_out(git_origin: GitOrigin, server_checkout: Path) -> None:
    path = str(server_checkout)
    first = (
        '"""create users"""\nfrom alembic import op\n\nrevision = "a1"\ndown_revision = None\n\n\n'
        'def upgrade():\n    op.create_table("users")\n\n\ndef downgrade():\n    op.drop_table("users")\n'
    )
    second = (
        '"""drop users"""\nfrom alembic import op\n\nrevision = "b2"\ndown_revision = "a1"\n\n\n'
        'def upgrade():\n    op.drop_table("users")\n'
    )
    with_one = git_origin.commit({"app/migrations/versions/a1_create.py": first, "app/migrations/env.py": "import app\n"})
    with_two = git_origin.commit({"app/migrations/versions/b2 drop users.py": second})
    run(gitops.fetch(path))
    assert head(server_checkout) == git_origin.initial_sha  # the work tree is never touched

    def scripts_at(sha: str) -> MigrationScripts:
        files = gitops.parse_file_list(run(gitops.list_files(path, sha, "app/migrations")).stdout)
        picked = version_files(files, "app/migrations")
        sources = {p: run(gitops.show_file(path, sha, p)).stdout for p in picked}
        return scripts_from_sources(sources, location=f"app/migrations at {sha[:7]}")

    assert scripts_at(with_one).heads == ("a1",)
    later = scripts_at(with_two)
    assert later.heads == ("b2",)
    steps = upgrade_path(later, "a1")
    assert [(s.revision, s.destructive_ops, s.has_downgrade) for s in steps] == [("b2", ("drop table users",), False)]
    assert run(gitops.show_file(path, with_one, "app/migrations/env.py")).stdout == "import app\n"
    missing = run(gitops.show_file(path, git_origin.initial_sha, "app/migrations/env.py"), ok=False)
    assert missing.returncode != 0
