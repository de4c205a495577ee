"""Exact argv of deployer.commands.git builders, and its parsers on real and broken output."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from deployer.commands import git as gitops
from deployer.commands.git import StatusEntry

SHA = "0123456789abcdef0123456789abcdef01234567"
SHA2 = "89abcdef0123456789abcdef0123456789abcdef"
SHA256 = "a" * 64
APP = "/srv/app"


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda: gitops.fetch(APP), ["git", "-C", APP, "fetch", "--prune", "--tags", "--force", "origin"]),
        (
            lambda: gitops.fetch(APP, remote="upstream"),
            ["git", "-C", APP, "fetch", "--prune", "--tags", "--force", "upstream"],
        ),
        (
            lambda: gitops.status(APP),
            ["git", "-C", APP, "status", "--porcelain=v1", "-z", "--untracked-files=no"],
        ),
        (
            lambda: gitops.status(APP, untracked=True),
            ["git", "-C", APP, "status", "--porcelain=v1", "-z", "--untracked-files=all"],
        ),
        (lambda: gitops.sync(APP, SHA), ["git", "-C", APP, "checkout", "--force", "--detach", SHA]),
        (lambda: gitops.sync(APP, SHA256), ["git", "-C", APP, "checkout", "--force", "--detach", SHA256]),
        (lambda: gitops.rev_parse_head(APP), ["git", "-C", APP, "rev-parse", "--verify", "HEAD^{commit}"]),
        (
            lambda: gitops.show_file(APP, SHA, "migrations/versions/abc_add.py"),
            ["git", "-C", APP, "cat-file", "blob", f"{SHA}:migrations/versions/abc_add.py"],
        ),
        (
            lambda: gitops.show_file(APP, SHA, "./deploy.toml"),
            ["git", "-C", APP, "cat-file", "blob", f"{SHA}:deploy.toml"],
        ),
        (
            lambda: gitops.list_files(APP, SHA, "migrations/"),
            ["git", "-C", APP, "ls-tree", "-r", "-z", "--name-only", SHA, "--", "migrations"],
        ),
        (
            lambda: gitops.show_file(APP, SHA, "migrations/versions/a b.py"),
            ["git", "-C", APP, "cat-file", "blob", f"{SHA}:migrations/versions/a b.py"],
        ),
        (
            lambda: gitops.list_files(APP, SHA, ""),
            ["git", "-C", APP, "ls-tree", "-r", "-z", "--name-only", SHA, "--", "."],
        ),
    ],
)
def test_builders(build: Callable[[], list[str]], expected: list[str]) -> None:
    assert build() == expected


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: gitops.sync(APP, "main"), "not a full commit id"),
        (lambda: gitops.sync(APP, SHA[:12]), "not a full commit id"),
        (lambda: gitops.sync(APP, SHA.upper()), "not a full commit id"),
        (lambda: gitops.fetch(APP, remote="-x"), "starting with '-'"),
        (lambda: gitops.show_file(APP, SHA, "../etc/passwd"), "leaves the repository"),
        (lambda: gitops.show_file(APP, "-p", "x"), "starting with '-'"),
        (lambda: gitops.list_files(APP, SHA, "a/../../b"), "leaves the repository"),
        (lambda: gitops.show_file(APP, SHA, "a\nb"), "control characters"),
    ],
)
def test_builders_refuse_dangerous_values(build: Callable[[], list[str]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_is_full_sha() -> None:
    assert gitops.is_full_sha(SHA)
    assert gitops.is_full_sha(SHA256)
    assert not gitops.is_full_sha(SHA[:39])
    assert not gitops.is_full_sha("g" * 40)
    assert not gitops.is_full_sha(SHA + "\n")


# ------------------------------------------------------------------ parsers

LS_REMOTE = (
    f"{SHA}\tHEAD\n"
    f"{SHA}\trefs/heads/main\n"
    f"{SHA2}\trefs/heads/feature/main\n"
    f"{'1' * 40}\trefs/tags/v1.0\n"
    f"{SHA2}\trefs/tags/v1.0^{{}}\n"
    f"{'2' * 40}\trefs/tags/v0.9\n"
    f"{'3' * 40}\trefs/heads/release\n"
    f"{'4' * 40}\trefs/tags/release\n"
)


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("main", SHA),  # not refs/heads/feature/main, which ls-remote also lists for "main"
        ("refs/heads/feature/main", SHA2),
        ("feature/main", SHA2),
        ("HEAD", SHA),
        ("v1.0", SHA2),  # an annotated tag resolves to its commit
        ("refs/tags/v1.0", SHA2),
        ("v0.9", "2" * 40),  # a lightweight tag is the commit itself
        ("refs/heads/release", "3" * 40),
        ("missing", None),
    ],
)
def test_pick_ref(ref: str, expected: str | None) -> None:
    assert gitops.pick_ref(gitops.parse_ls_remote(LS_REMOTE), ref) == expected


def test_ambiguous_remote_ref_is_refused() -> None:
    with pytest.raises(ValueError, match="both a branch and a tag.*refs/heads/release or refs/tags/release"):
        gitops.pick_ref(gitops.parse_ls_remote(LS_REMOTE), "release")


def test_empty_ls_remote_means_absent() -> None:
    assert gitops.pick_ref(gitops.parse_ls_remote(""), "main") is None
    assert gitops.parse_ls_remote("\n") == {}


@pytest.mark.parametrize(
    "garbage",
    [
        "fatal: 'origin' does not appear to be a git repository\n",
        f"{SHA} refs/heads/main\n",  # space, not tab
        f"{SHA[:39]}\trefs/heads/main\n",
        f"{SHA}\t\n",
    ],
)
def test_ls_remote_garbage(garbage: str) -> None:
    with pytest.raises(ValueError, match="git ls-remote output"):
        gitops.parse_ls_remote(garbage)


def test_parse_sha() -> None:
    assert gitops.parse_sha(f"{SHA}\n") == SHA
    for garbage in ("", "HEAD\n", f"{SHA}\n{SHA2}\n", "fatal: not a git repository"):
        with pytest.raises(ValueError, match="expected a full commit id"):
            gitops.parse_sha(garbage)


@pytest.mark.parametrize(
    ("stdout", "expected"),
    [
        ("", ()),
        (" M app.py\0", (StatusEntry(" M", "app.py"),)),
        (
            "M  staged.py\0?? .env\0 D gone file.txt\0",
            (StatusEntry("M ", "staged.py"), StatusEntry("??", ".env"), StatusEntry(" D", "gone file.txt")),
        ),
        ("R  new name.py\0old name.py\0 M x\0", (StatusEntry("R ", "new name.py", "old name.py"), StatusEntry(" M", "x"))),
        ("UU conflict.py\0", (StatusEntry("UU", "conflict.py"),)),
        ("?? caf\u00e9.txt\0", (StatusEntry("??", "caf\u00e9.txt"),)),
    ],
)
def test_parse_status(stdout: str, expected: tuple[StatusEntry, ...]) -> None:
    assert gitops.parse_status(stdout) == expected


def test_untracked_flag() -> None:
    assert [e.untracked for e in gitops.parse_status("?? .env\0 M a\0")] == [True, False]


@pytest.mark.parametrize(
    "garbage",
    ["fatal: not a git repository", "XY file\0", " M\0", "R  renamed-without-source\0"],
)
def test_parse_status_garbage(garbage: str) -> None:
    with pytest.raises(ValueError, match="git status"):
        gitops.parse_status(garbage)


def test_parse_file_list() -> None:
    assert gitops.parse_file_list("") == []
    assert gitops.parse_file_list("migrations/env.py\0migrations/versions/a b.py\0") == [
        "migrations/env.py",
        "migrations/versions/a b.py",
    ]
    with pytest.raises(ValueError, match="was -z given"):
        gitops.parse_file_list("migrations/env.py\nmigrations/versions/a.py\n")
