"""Run an app's migrate command so that its failure reason always reaches the output.

Flask-Migrate wraps ``upgrade`` and ``downgrade`` in ``catch_errors``: a ``RuntimeError``
or alembic ``CommandError`` raised by a migration is logged to the ``flask_migrate``
logger and the command exits 1. The app's ``env.py`` usually calls ``fileConfig()`` on
its ``alembic.ini``, which by default *disables every logger the file does not name*
(``disable_existing_loggers``): a migration then fails printing only its INFO lines, and
nobody can tell why.

:func:`launched` wraps the configured command (``flask db upgrade``, ``alembic upgrade
head``, ``python manage.py db upgrade`` ...) into ``python3 -c <LAUNCHER> COMMAND...`` for
the one-off container. The launcher, a constant script that takes the command as its
arguments, first makes sure no error can be silenced:

- ``logging.Logger.disabled`` becomes a class-level data descriptor that is always False
  and ignores assignments, so neither ``fileConfig``/``dictConfig`` nor app code can
  disable a logger;
- records at ERROR and above are always created (a logger's level or
  ``logging.disable()`` cannot drop them), and one that no handler wrote to stdout or
  stderr is written to stderr by the launcher;
- an uncaught exception is printed with its traceback, whatever ``sys.excepthook`` is.

It then runs the command *in the same interpreter*: a console script (a Python file on
``PATH`` whose ``#!`` names Python, like ``flask`` or ``alembic``) with :func:`runpy.run_path`,
``python -m MODULE`` with :func:`runpy.run_module`, ``python SCRIPT`` and ``python -c CODE``
likewise, each with the ``sys.argv`` and ``sys.path[0]`` Python itself would give it. When
the script belongs to another interpreter (a virtualenv's) or asks for interpreter flags,
the launcher re-executes itself with that interpreter first. A command that is not Python
(a shell script, a binary) is simply ``exec``-ed. The exit status is the command's own.

:func:`failure_reason` picks the line that says why out of a failed command's output, for
the first line of an error message.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["LAUNCHER", "PYTHON", "failure_reason", "launched"]

# The interpreter that starts the launcher in the app's image. Every image that runs a
# Flask app has it (Debian's python3 packages, the python:* images, distroless python3).
PYTHON = "python3"

# The launcher. A constant: the command arrives as its arguments (sys.argv[1:]) and is never
# formatted into it. It must run on any Python 3 an app image may have (3.7 and later), so
# it uses nothing newer than that; sys.orig_argv (3.10+) is only needed to re-execute.
LAUNCHER = r'''
import logging, os, re, runpy, shutil, sys, traceback, types, weakref

MARK = "DEPLOYER_LAUNCHER_REEXEC"
PYTHON_NAME = re.compile(r"python[0-9.]*$")
NO_VALUE_FLAGS = set("bBdEhiIOPqsSuvVxR") | {"OO"}
VALUE_FLAGS = {"W", "X"}
# pip writes this two-line header instead of a long #! line (distlib's launcher for sh)
SH_EXEC = re.compile(r"^'{3}exec' \"?([^\"]+?)\"? \"[$]0\" \"[$]@\"$")


def keep_errors_visible():
    """No logger can be disabled, and no ERROR record can go unseen."""
    shown = weakref.WeakSet()
    # fileConfig()/dictConfig() set `disabled` on every logger they do not name: a data
    # descriptor on the class wins over the instance attribute, for existing loggers too.
    logging.Logger.disabled = property(lambda self: False, lambda self, value: None)

    enabled = logging.Logger.isEnabledFor

    def isEnabledFor(self, level):
        return level >= logging.ERROR or enabled(self, level)

    logging.Logger.isEnabledFor = isEnabledFor

    emit = logging.StreamHandler.emit

    def stream_emit(self, record):
        emit(self, record)
        if getattr(self, "stream", None) in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            shown.add(record)

    logging.StreamHandler.emit = stream_emit

    handle = logging.Logger.handle
    formatter = logging.Formatter("%(levelname)s [%(name)s] %(message)s")

    def logger_handle(self, record):
        handle(self, record)
        if record.levelno >= logging.ERROR and record not in shown:
            # No handler showed it (a file handler, a NullHandler, a filter, a raised level).
            try:
                text = formatter.format(record)
            except Exception:
                text = "%s [%s] %r" % (record.levelname, record.name, record.msg)
            write(text + "\n")

    logging.Logger.handle = logger_handle


def write(text):
    for stream in (sys.stderr, sys.__stderr__):
        try:
            stream.write(text)
            stream.flush()
            return
        except Exception:
            continue


def resolve(word):
    if os.sep in word:
        return word if os.path.exists(word) else None
    return shutil.which(word)


def shebang(path):
    """(interpreter, flags) when the file at `path` is a Python script, else None."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(1024)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    lines = head.decode("utf-8", "replace").splitlines()
    words = lines[0][2:].split()
    if words and os.path.basename(words[0]) == "env":
        words = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
        if words:
            found = shutil.which(words[0])
            words = [found] + words[1:] if found else []
    elif words and os.path.basename(words[0]) == "sh" and len(lines) > 1:
        match = SH_EXEC.match(lines[1].strip())
        words = [match.group(1)] if match else []
    if not words or not PYTHON_NAME.match(os.path.basename(words[0])):
        return None
    return words[0], words[1:]


def python_command(interpreter, rest):
    """(interpreter, flags, kind, what, args) for `python [flags] -m M | -c C | SCRIPT ...`."""
    flags = []
    index = 0
    while index < len(rest):
        word = rest[index]
        if word in ("-m", "-c"):
            if index + 1 >= len(rest):
                return None
            kind = "module" if word == "-m" else "code"
            return interpreter, flags, kind, rest[index + 1], rest[index + 2:]
        if word == "--" or not word.startswith("-") or word == "-":
            if word == "--":
                index += 1
            if index >= len(rest) or rest[index] == "-":
                return None  # an interactive interpreter or a script on stdin
            return interpreter, flags, "path", rest[index], rest[index + 1:]
        name = word[1:]
        if name in NO_VALUE_FLAGS:
            flags.append(word)
        elif name[:1] in VALUE_FLAGS:
            flags.append(word)
            if len(name) == 1:
                if index + 1 >= len(rest):
                    return None
                index += 1
                flags.append(rest[index])
        else:
            return None  # an option this launcher does not know: leave it to the interpreter
        index += 1
    return None  # a bare `python`


def plan(command):
    path = resolve(command[0])
    if path is None:
        return None
    if PYTHON_NAME.match(os.path.basename(command[0])):
        return python_command(path, command[1:])
    found = shebang(path)
    if found is None:
        return None
    interpreter, flags = found
    return interpreter, flags, "path", path, command[1:]


def same_interpreter(interpreter):
    here = os.path.abspath(sys.executable)
    there = os.path.abspath(resolve(interpreter) or interpreter)
    if here == there:
        return True
    # python -> python3 -> python3.11 in one directory is one interpreter; the same binary
    # in another directory (a virtualenv's bin/) is not: its site-packages differ.
    return os.path.dirname(here) == os.path.dirname(there) and os.path.realpath(here) == os.path.realpath(there)


def execute(command):
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(command[0], command)
    except FileNotFoundError:
        write("%s: command not found\n" % command[0])
        sys.exit(127)
    except OSError as error:
        write("%s: cannot run: %s\n" % (command[0], error))
        sys.exit(126)


def reexecute(interpreter, flags, argv):
    code = sys.orig_argv[sys.orig_argv.index("-c") + 1]
    os.environ[MARK] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(interpreter, [interpreter] + list(flags) + ["-c", code] + list(argv))


def run_in_process(kind, what, args):
    if kind == "module":
        sys.argv = [what] + list(args)
        sys.path[0] = os.getcwd()
        runpy.run_module(what, run_name="__main__", alter_sys=True)
    elif kind == "path":
        sys.argv = [what] + list(args)
        sys.path[0] = os.path.dirname(os.path.realpath(what))
        runpy.run_path(what, run_name="__main__")
    else:
        sys.argv = ["-c"] + list(args)
        sys.path[0] = ""
        module = types.ModuleType("__main__")
        sys.modules["__main__"] = module
        exec(compile(what, "<string>", "exec"), module.__dict__)


def main():
    command = sys.argv[1:]
    if not command:
        write("deployer launcher: no command given\n")
        sys.exit(2)
    reexecuted = os.environ.pop(MARK, None) is not None
    target = plan(command)
    if target is None:
        execute(command)
    interpreter, flags, kind, what, args = target
    if not reexecuted and (flags or not same_interpreter(interpreter)):
        if not hasattr(sys, "orig_argv"):
            execute(command)  # Python < 3.10 cannot re-execute this launcher: run it as is
        resolved = resolve(interpreter) or interpreter
        if kind == "path":
            reexecute(resolved, flags, [resolved, what] + list(args))
        reexecute(resolved, flags, [resolved, "-m" if kind == "module" else "-c", what] + list(args))
    keep_errors_visible()
    try:
        run_in_process(kind, what, args)
    except (SystemExit, KeyboardInterrupt):
        raise  # the command's own exit status, or Python's for an interrupt
    except BaseException:
        # Printed here, not by sys.excepthook: the app may have replaced that.
        write(traceback.format_exc())
        sys.exit(1)


main()
'''


def launched(command: Sequence[str]) -> list[str]:
    """The argv that runs ``command`` in an app container with every failure reason visible.

    ``["flask", "db", "upgrade"]`` becomes ``["python3", "-c", LAUNCHER, "flask", "db",
    "upgrade"]``: give it to ``compose run`` as the service's command. The exit status is
    ``command``'s; a command that is not Python runs unchanged (exec).
    """
    if isinstance(command, (str, bytes)):
        raise TypeError("command must be a sequence of strings, not a single string")
    words = list(command)
    if not words:
        raise ValueError("the migrate command is empty")
    for word in words:
        if not isinstance(word, str):
            raise TypeError(f"command items must be str, got {type(word).__name__}: {word!r}")
    return [PYTHON, "-c", LAUNCHER, *words]


_TRACEBACK = "Traceback (most recent call last):"
# A log line of level ERROR or worse, in the formats of logging's defaults and alembic's
# templates ("ERROR [flask_migrate] Error: ...", "ERROR:flask_migrate:Error: ..."), or a
# bare "Error: ..." (Flask-Migrate's message without a format, click's usage errors).
_ERROR_LINE = re.compile(r"^\s*(?:(?:\S+\s+)?(?:ERROR|CRITICAL|FATAL)\b|Error:)")
_REASON_CHARS = 300


def failure_reason(output: str) -> str | None:
    """The line of a failed command's output that says why it failed, or None.

    That is the exception line of the last traceback (``RuntimeError: column "x" exists``),
    else the last ERROR/CRITICAL log line (what Flask-Migrate's ``catch_errors`` prints).
    Cut to 300 characters.
    """
    lines = output.splitlines()
    reason: str | None = None
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].strip() == _TRACEBACK:
            indent = len(lines[index]) - len(lines[index].lstrip())
            # The frames are indented under the header; the exception line is not.
            for line in lines[index + 1 :]:
                if line.strip() and len(line) - len(line.lstrip()) <= indent:
                    reason = line.strip()
                    break
            break
    if reason is None:
        for line in reversed(lines):
            if _ERROR_LINE.match(line):
                reason = line.strip()
                break
    if reason is None:
        return None
    return reason if len(reason) <= _REASON_CHARS else reason[: _REASON_CHARS - 1] + "…"
