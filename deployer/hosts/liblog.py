"""The log lines of the libraries under deployer (paramiko): hidden unless asked for.

deployer says what happened in its own words ("the server accepted the connection but sent
no SSH banner within 10 s"); paramiko's own lines ("Secsh channel 3 open FAILED", a banner
traceback) would only add noise, or look like a crash. ``--verbose`` shows them, prefixed
with the library's name, for a bug report.

Standard library only: the command line turns them on before paramiko is imported, and
importing paramiko later keeps that choice.
"""

from __future__ import annotations

import logging
import sys

# Loggers of the libraries deployer drives; each logs under its package name.
LIBRARIES = ("paramiko",)


class _Shown(logging.StreamHandler):
    """On whatever ``sys.stderr`` is when a line is logged (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.setStream(sys.stderr)
        super().emit(record)


_QUIET = logging.NullHandler()
_LOUD = _Shown(sys.stderr)
_LOUD.setFormatter(logging.Formatter("%(name)s: %(message)s"))
_state = {"enabled": False}


def library_logging(enabled: bool) -> None:
    """Show the libraries' log lines on stderr (``--verbose``), or hide them (the default).

    Hidden means hidden: a handler that drops everything also keeps logging's last-resort
    handler (which prints warnings of loggers with no handler) away.
    """
    _state["enabled"] = enabled
    for name in LIBRARIES:
        logger = logging.getLogger(name)
        logger.propagate = False
        for handler in (_QUIET, _LOUD):
            logger.removeHandler(handler)
        logger.addHandler(_LOUD if enabled else _QUIET)
        logger.setLevel(logging.DEBUG if enabled else logging.CRITICAL + 1)


def library_logging_enabled() -> bool:
    """Whether :func:`library_logging` was last turned on."""
    return _state["enabled"]


library_logging(False)
