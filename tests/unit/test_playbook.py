"""Playbook loading: the shipped playbooks load; every mistake gets its own clear message."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployer.errors import ConfigError, ExitCode
from deployer.steps.playbook import BUILTIN_DIR, load_playbook, parse_playbook

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_playbooks() -> None:
    release = load_playbook("release", ROOT)
    assert release.names() == [
        "preflight", "lock", "snapshot", "sync", "build", "database_up", "lint", "backup", "hold", "migrate", "swap", "verify",
        "health", "contract", "record", "verify_backup", "copy_backup",
    ]
    assert [s.name for s in release.split()[1]] == ["verify_backup", "copy_backup"]  # after the release is recorded
    classic = load_playbook("classic", ROOT)
    names = classic.names()
    # the tutorial's order: stop, build, up, then migrate
    assert names.index("stop") < names.index("build") < names.index("up") < names.index("migrate")
    assert names.index("backup") < names.index("migrate")
    assert (BUILTIN_DIR / "release.toml").is_file()


def test_user_playbook_wins_and_run_steps(tmp_path: Path) -> None:
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "playbooks" / "release.toml").write_text(
        '[[steps]]\nstep = "preflight"\n[[steps]]\nstep = "lock"\n'
        '[[steps]]\nstep = "run"\ncommand = "echo \'hello world\'"\nname = "greet"\n'
        '[[steps]]\nstep = "run"\ncommand = ["flask", "seed"]\nservice = "web"\n'
    )
    book = load_playbook("release", tmp_path)
    assert book.path == tmp_path / "playbooks" / "release.toml"
    assert book.steps[2].argv() == ["echo", "hello world"]
    assert book.steps[2].label == "greet"
    assert book.steps[3].argv() == ["flask", "seed"]


def test_unknown_playbook_lists_known(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="playbook 'fast' not found") as caught:
        load_playbook("fast", tmp_path)
    assert "classic" in str(caught.value) and "release" in str(caught.value)


P = Path("book.toml")
BASE = [{"step": "preflight"}, {"step": "lock"}]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({}, "no steps"),
        ({"steps": []}, "no steps"),
        ({"steps": BASE, "extra": 1}, "unknown key 'extra'"),
        ({"steps": [*BASE, {"step": "migrat"}]}, "unknown step 'migrat' (did you mean 'migrate'?)"),
        ({"steps": [*BASE, {"name": "x"}]}, "missing `step"),
        ({"steps": [*BASE, "build"]}, "expected a table"),
        ({"steps": [*BASE, {"step": "health", "timout": 5}]}, "unknown parameter 'timout' (did you mean 'timeout'?)"),
        ({"steps": [*BASE, {"step": "health", "timeout": "5"}]}, "health).timeout: expected an integer"),
        ({"steps": [*BASE, {"step": "health", "timeout": True}]}, "expected an integer, got True"),
        ({"steps": [*BASE, {"step": "health", "timeout": 0}]}, "expected a positive number of seconds"),
        ({"steps": [*BASE, {"step": "run"}]}, "missing parameter 'command'"),
        ({"steps": [*BASE, {"step": "run", "command": ""}]}, "not a usable command"),
        ({"steps": [*BASE, {"step": "run", "command": "echo 'x"}]}, "not a usable command"),
        ({"steps": [{"step": "lock"}]}, "`preflight` step is required"),
        ({"steps": [{"step": "preflight"}]}, "`lock` step is required"),
        ({"steps": [{"step": "lock"}, {"step": "preflight"}]}, "`preflight` must be the first step"),
        ({"steps": [{"step": "preflight"}, {"step": "sync"}, {"step": "lock"}]}, "step `sync` changes the server and must come after `lock`"),
        ({"steps": [*BASE, {"step": "sync"}, {"step": "sync"}]}, "step `sync` appears more than once"),
        ({"steps": [*BASE, {"step": "migrate"}, {"step": "backup"}]}, "`backup` must come before `migrate`"),
        ({"steps": [*BASE, {"step": "record"}, {"step": "health"}]}, "`record` must be the last step"),
        ({"steps": [*BASE, {"step": "record"}, {"step": "verify_backup"}, {"step": "health"}]},
         "`verify_backup` runs after the release is recorded"),
        ({"steps": [*BASE, {"step": "verify_backup"}, {"step": "record"}]}, "`verify_backup` runs after the release is recorded"),
        ({"steps": [*BASE, {"step": "record"}, {"step": "copy_backup"}, {"step": "copy_backup"}]},
         "step `copy_backup` appears more than once"),
        ({"steps": [*BASE, {"step": "migrate"}, {"step": "hold"}, {"step": "swap"}]}, "`hold` must come before `migrate`"),
        ({"steps": [*BASE, {"step": "hold"}, {"step": "migrate"}]}, "`hold` needs a `swap` step after it"),
        ({"steps": [*BASE, {"step": "swap"}, {"step": "migrate"}]}, "`swap` must come after `migrate`"),
    ],
)
def test_mistakes(data: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_playbook(data, name="book", path=P)
    assert expected in str(caught.value)
    assert str(caught.value).startswith("book.toml")
    assert caught.value.exit_code == ExitCode.CONFIG


def test_broken_toml(tmp_path: Path) -> None:
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "playbooks" / "bad.toml").write_text("[[steps]\nstep = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_playbook("bad", tmp_path)
