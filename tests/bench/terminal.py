"""A terminal for the end-to-end tests: a tmux session on a tmux server of its own (its own
socket), running one command in a real pseudo-terminal; the tests read its screen (with the
escape codes of colours, ``capture-pane -e``) and type into it (``send-keys``).

``terminal`` is the fixture: ``terminal.run(deployment, "release", "production")`` starts
``deployer`` in the deployment's laptop clone with its environment; ``screen()``,
``wait_for(text)``, ``send(keys)`` and ``exit_code()`` follow it.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

_EXIT = re.compile(r"^deployer-exited=(\d+)$", re.MULTILINE)
ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal:
    """One tmux server and its session (see the module docstring)."""

    def __init__(self, width: int = 120, height: int = 50) -> None:
        if shutil.which("tmux") is None:
            raise RuntimeError("tmux is not installed: run scripts/setup")
        self.socket = f"deployer-test-{secrets.token_hex(4)}"
        self.width, self.height = width, height
        self._dir = Path(tempfile.mkdtemp(prefix="deployer-terminal-"))
        self._started = False

    def _tmux(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=30, check=check)

    def start(self, argv: list[str], *, cwd: Path, env: Mapping[str, str]) -> None:
        """Run ``argv`` in a fresh window (the previous one, if any, is closed), then print its
        exit status and keep the window open so that its screen can still be read."""
        self.close_session()
        self.socket = f"deployer-test-{secrets.token_hex(4)}"  # a server of its own: the last one may still be ending
        script = self._dir / "run.sh"
        # The terminal says what it is and how big: nothing inherited may say otherwise.
        exports = "\n".join(f"export {k}={shlex.quote(v)}" for k, v in env.items()
                             if k not in ("TERM", "TMUX", "COLUMNS", "LINES"))
        # tmux gives the window the server's own environment too: no COLUMNS or LINES from it.
        script.write_text(f"unset COLUMNS LINES\n{exports}\ncd {shlex.quote(str(cwd))}\n{shlex.join(argv)}\n"
                          'echo "deployer-exited=$?"\nexec sleep 3600\n')
        self._tmux("new-session", "-d", "-s", "t", "-x", str(self.width), "-y", str(self.height), f"bash {shlex.quote(str(script))}")
        self._started = True

    def run(self, d: Any, *args: str, extra_env: Mapping[str, str] | None = None) -> None:  # noqa: ANN401 - a Deployment
        """``deployer ARGS`` in the deployment's laptop clone, as a user types it."""
        env = {k: v for k, v in d.environ().items() if k != "NO_COLOR"}
        self.start(d.deployer_argv(*args), cwd=d.laptop, env={**env, **(extra_env or {})})

    def screen(self, *, escapes: bool = False) -> str:
        """What the terminal shows, its scrollback included (``escapes``: with colours)."""
        args = ["capture-pane", "-p", "-J", "-S", "-", "-t", "t"] + (["-e"] if escapes else [])
        return self._tmux(*args).stdout

    def send(self, *keys: str) -> None:
        """Type: ``send("exit()", "Enter")``, ``send("C-c")``."""
        self._tmux("send-keys", "-t", "t", *keys)

    def wait_for(self, found: str | Callable[[str], bool], timeout: float = 120, *, escapes: bool = False) -> str:
        """The screen once ``found`` (text, or a test of the screen) is on it."""
        check = found if callable(found) else (lambda text: found in text)
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen(escapes=escapes)
            if check(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"not on the terminal after {timeout:g}s: {found!r}\n{text[-3000:]}")
            time.sleep(0.1)

    def exit_code(self, timeout: float = 600) -> int:
        """The command's exit status, once it ended."""
        text = self.wait_for(lambda screen: _EXIT.search(screen) is not None, timeout)
        found = _EXIT.search(text)
        assert found is not None
        return int(found.group(1))

    def close_session(self) -> None:
        if self._started:
            self._tmux("kill-server", check=False)
            self._started = False
            # tmux may leave its socket file behind
            socket = Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}" / self.socket
            socket.unlink(missing_ok=True)

    def close(self) -> None:
        self.close_session()
        shutil.rmtree(self._dir, ignore_errors=True)


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    made = Terminal()
    try:
        yield made
    finally:
        made.close()
