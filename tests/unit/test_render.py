"""What a command prints: the progress lines' grammar, the live form on a terminal (spinner,
colours, wrapped commands) and the plain form everywhere else (no escape code)."""

from __future__ import annotations

import io
import shlex
import subprocess
import sys
from types import SimpleNamespace

import pytest

from deployer import progress
from deployer.cli import render
from deployer.errors import RefusedError
from deployer.steps.common import confirm
from deployer.steps.context import Options


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_lines_are_read_back_as_steps_starting_and_ending() -> None:
    assert progress.parse(progress.started("build")) == progress.Event("start", "", "build")
    done = progress.finished("smoke-test the image", "ok", 1.25, "fine")
    assert done == "✓ smoke-test the image 1.2s  fine"
    assert progress.parse(done) == progress.Event("end", "", done, "ok")
    assert progress.parse("[web2] " + progress.finished("lint", "skipped", 0, "")).status == "skipped"
    assert progress.parse("[web2] > build") == progress.Event("start", "web2", "build")
    assert progress.parse(progress.failed("migrate", "exit 1")) == progress.Event("end", "", "x migrate failed: exit 1", "failed")
    assert progress.parse("warning: the downgrade drops data").kind == "line"
    assert progress.parse(">") == progress.Event("line", "", ">")


def test_a_failure_line_says_where_the_error_is_not_the_error_again() -> None:
    assert progress.failed("preflight") == "x preflight failed (the error below says why)"
    assert progress.failed("migrate", recovering=True) == "x migrate failed (recovering first; the error at the end says why)"
    assert progress.failed("prune images", "no engine") == "x prune images failed: no engine"  # no error follows it


def test_plain_progress_prints_each_line_as_it_is() -> None:
    out = io.StringIO()
    log = render.PlainProgress(out)
    with log:
        for line in ("> build", "✓ build 1.0s  images built", "warning: x"):
            log(line)
    assert out.getvalue() == "> build\n✓ build 1.0s  images built\nwarning: x\n"


def test_live_form_only_on_a_terminal_without_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    assert render.is_live(Terminal()) and not render.is_live(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not render.is_live(Terminal())
    monkeypatch.setenv("NO_COLOR", "")  # no-color.org: set *and not empty*
    assert render.is_live(Terminal())
    monkeypatch.setenv("TERM", "dumb")
    assert not render.is_live(Terminal())


def test_live_progress_shows_the_running_steps_and_prints_each_line_once() -> None:
    from rich.console import Console

    screen = Terminal()
    live = render.LiveProgress("release of production", Console(file=screen, force_terminal=True, width=100))
    assert "release of production" in live._spinners().plain  # nothing runs yet: what the command does
    live("[m1] > build")
    live("[m2] > build")
    shown = live._spinners().plain.splitlines()
    assert [line.split("  ")[0][2:] for line in shown] == ["[m1] build", "[m2] build"]
    assert all(line.rstrip().endswith("s") and line[0] in "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏" for line in shown)
    live("[m1] ✓ build 2.0s  images built")
    assert [line.split("  ")[0][2:] for line in live._spinners().plain.splitlines()] == ["[m2] build"]
    live("warning: something")
    live("recovering the previous release ...")
    live("[m2] x build failed (the error below says why)")
    assert "recovering" in live._spinners().plain
    printed = screen.getvalue()
    for line in ("[m1] ✓ build 2.0s  images built", "warning: something", "[m2] x build failed"):
        assert sum(text.count(line) for text in [_plain(printed)]) == 1, printed
    assert "> build" not in _plain(printed)  # a start is the spinner, not a line
    assert "\x1b[" in printed  # coloured


def _plain(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def test_styled_lines_colour_the_mark_and_the_label() -> None:
    ok = render.styled_line(progress.parse("✓ smoke test 1.5s  passed"), "smoke test")
    assert ok.plain == "✓ smoke test 1.5s  passed"
    styles = {ok.plain[span.start:span.end]: str(span.style) for span in ok.spans}
    assert styles["✓"] == "bold green" and styles["smoke test"] == "bold" and styles[" 1.5s"] == "dim"
    failed = render.styled_line(progress.parse("x migrate failed: exit 1"), "migrate")
    assert {str(span.style) for span in failed.spans} >= {"bold red", "red"}
    assert str(render.styled_line(progress.parse("warning: careful")).spans[0].style) == "yellow"


@pytest.mark.parametrize("command", [
    "docker compose --project-name app --project-directory /srv/app --file /srv/app/docker-compose.prod.yml "
    "--env-file /srv/app.deployer/compose.env up --detach --no-build --no-deps web",
    "sh -c 'exec pg_dump --format=custom --file /srv/backups/x.partial recipes' sh \"a b\" x\\ y "
    "--label deployer.run={release_id} " + "word " * 30,
])
def test_wrapped_commands_paste_as_the_same_command(command: str) -> None:
    lines = render.wrap_command(command, 60, indent="    ")
    assert len(lines) > 1
    assert all(line.endswith(" \\") for line in lines[:-1]) and all(line.startswith("    ") for line in lines[1:])
    # a line runs longer only when it holds one word that is longer itself
    assert all(len(line) <= 60 or len(render._shell_words(line.removesuffix(" \\"))) == 1 for line in lines)
    # what a shell reads from the pasted lines: the same words
    pasted = "\n".join(lines)
    assert shlex.split(pasted.replace("\\\n", " ")) == shlex.split(command)


def test_short_commands_and_scripts_keep_their_lines() -> None:
    assert render.wrap_command("git fetch", 60, first="$ ") == ["$ git fetch"]
    script = "sh -c '\nset -u\n" + "echo x; " * 20 + "'"
    assert render.wrap_command(script, 40) == script.split("\n")  # a line of the script is the script's
    # the words after a script are cut as any others, and the whole still pastes as one command
    command = script + " sh " + " ".join(f"/srv/app{n}/.deployer" for n in range(8))
    lines = render.wrap_command(command, 40, first="$ ", indent="  ")
    assert lines[:3] == ("$ " + script).split("\n")[:2] + [lines[2]] and lines[2].startswith("echo x; ")
    assert lines[3].startswith("  sh /srv/app0") and all(line.endswith(" \\") for line in lines[2:-1])
    assert shlex.split("\n".join(lines).removeprefix("$ ").replace("\\\n", " ")) == shlex.split(command)


def test_confirmation_says_what_is_at_stake_once(monkeypatch: pytest.MonkeyPatch) -> None:
    def ctx(**options: object) -> SimpleNamespace:
        logged: list[str] = []
        return SimpleNamespace(options=Options(**options), log=logged.append, logged=logged)  # type: ignore[arg-type]

    drops = "ab34 (Add rating): drop column recipes.rating"
    # no terminal, no --yes: the refusal carries the list; nothing said before it
    refused = ctx()
    with pytest.raises(RefusedError) as error:
        confirm(refused, "Downgrade, dropping this data?", f"the downgrade would drop data ({drops})",  # type: ignore[arg-type]
                warning=f"the downgrade drops data: {drops}")
    assert drops in error.value.message and refused.logged == []
    # --yes: the warning, once
    answered = ctx(yes=True)
    confirm(answered, "Downgrade, dropping this data?", "refused", warning=f"the downgrade drops data: {drops}")  # type: ignore[arg-type]
    assert answered.logged == [f"warning: the downgrade drops data: {drops}"]
    # a dry run: the short question (the plan lists what drops)
    planned = ctx(dry_run=True)
    confirm(planned, "Downgrade, dropping this data?", "refused", warning=f"the downgrade drops data: {drops}")  # type: ignore[arg-type]
    assert planned.logged == ["(would ask: Downgrade, dropping this data?)"]
    # on a terminal: the warning, then the short question
    asked: list[str] = []
    interactive = ctx(confirm=lambda question: asked.append(question) or True)
    confirm(interactive, "Downgrade, dropping this data?", "refused", warning=f"the downgrade drops data: {drops}")  # type: ignore[arg-type]
    assert interactive.logged == [f"warning: the downgrade drops data: {drops}"] and asked == ["Downgrade, dropping this data?"]


def test_help_and_a_piped_status_import_no_rich() -> None:
    code = (
        "import sys\n"
        "from deployer.cli import app, render, status\n"
        "render.echo('x')\n"
        "render.render_status('=> in sync (exit 0)', ['good'])\n"
        "with render.progress_printer('reading') as log:\n"
        "    log('> build')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'rich'))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.splitlines()[-1] == "[]", result.stdout
