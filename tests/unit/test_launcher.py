"""deployer.db.launcher: the launcher runs for real with this machine's Python.

Each app-like script reproduces one way a migration's failure reason gets lost (a
``fileConfig`` that disables existing loggers and Flask-Migrate's ``catch_errors``, a
raised level, a file-only handler, a swallowed excepthook); each test first shows the
reason is invisible without the launcher, then visible with it, the exit status unchanged.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from deployer.db.launcher import LAUNCHER, PYTHON, failure_reason, launched

# What Flask-Migrate's catch_errors does (Debian bookworm's python3-flask-migrate 4.0):
#     except (CommandError, RuntimeError) as exc:
#         log.error('Error: ' + str(exc)); sys.exit(1)
CATCH_ERRORS = """
def catch_errors(f):
    def wrapped(*args, **kwargs):
        try:
            f(*args, **kwargs)
        except RuntimeError as exc:
            log.error("Error: " + str(exc))
            sys.exit(1)
    return wrapped
"""

# The logging part of a Flask-Migrate alembic.ini that does not name flask_migrate:
# fileConfig() then disables that logger (disable_existing_loggers defaults to True).
ALEMBIC_INI = """\
[loggers]
keys = root,alembic

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARN
handlers = console
qualname =

[logger_alembic]
level = INFO
handlers =
qualname = alembic

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic

[formatter_generic]
format = %(levelname)-5.5s [%(name)s] %(message)s
"""

REASON = 'column "rating" of relation "recipes" already exists'


def console_script(directory: Path, name: str, body: str, *, interpreter: str = sys.executable) -> Path:
    """An executable Python file on PATH, as pip or Debian install console scripts."""
    path = directory / name
    path.write_text(f"#!{interpreter}\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def migrate_script(setup: str) -> str:
    """A `flask db upgrade` look-alike: the logger exists first, env.py's logging setup runs, the migration raises."""
    return (
        "import logging, sys\n"
        "from logging.config import fileConfig, dictConfig\n"
        'log = logging.getLogger("flask_migrate")\n'
        + CATCH_ERRORS
        + "\n\n@catch_errors\ndef upgrade():\n"
        + textwrap.indent(textwrap.dedent(setup).strip("\n"), "    ")
        + '\n    logging.getLogger("alembic.runtime.migration").info("Running upgrade a1 -> b2, add ratings")\n'
        + f"    raise RuntimeError({REASON!r})\n\n\n"
        + 'if __name__ == "__main__":\n    upgrade()\n'
    )


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """An app directory with its alembic.ini and a bin/ folder put first on PATH."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "alembic.ini").write_text(ALEMBIC_INI)
    return tmp_path


def environ(app: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PATH"] = f"{app / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def run(app: Path, argv: list[str], **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=app, env=environ(app, **extra), capture_output=True, text=True, timeout=60, check=False)


def run_launched(app: Path, command: list[str], **extra: str) -> subprocess.CompletedProcess[str]:
    """launched(command), started with this machine's Python in place of the image's python3."""
    argv = launched(command)
    assert argv[:3] == [PYTHON, "-c", LAUNCHER] and argv[3:] == command
    return run(app, [sys.executable, *argv[1:]], **extra)


# ------------------------------------------------------------------ the argv


def test_launched_wraps_the_command_verbatim() -> None:
    assert launched(["flask", "db", "upgrade"]) == ["python3", "-c", LAUNCHER, "flask", "db", "upgrade"]
    assert launched(("alembic", "upgrade", "head")) == ["python3", "-c", LAUNCHER, "alembic", "upgrade", "head"]
    # user text is an argument, never part of the script
    tricky = ["sh", "-c", "echo '$(rm -rf /)'; exit 3"]
    assert launched(tricky)[2] is LAUNCHER and launched(tricky)[3:] == tricky


@pytest.mark.parametrize(("command", "error"), [([], ValueError), ("flask db upgrade", TypeError), (["flask", 3], TypeError)])
def test_launched_refuses_what_is_not_an_argv(command: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        launched(command)  # type: ignore[arg-type]


def test_launcher_runs_on_old_pythons_of_app_images() -> None:
    # Python 3.7 grammar: no walrus, no match, no parenthesised context managers
    ast.parse(LAUNCHER, feature_version=(3, 7))


# ------------------------------------------------------------------ loggers that hide the reason


@pytest.mark.parametrize(
    "setup",
    [
        pytest.param('fileConfig("alembic.ini")', id="fileConfig-disables-existing-loggers"),
        pytest.param(
            """
            dictConfig({"version": 1, "disable_existing_loggers": True,
                        "handlers": {"console": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}},
                        "root": {"level": "INFO", "handlers": ["console"]}})
            """,
            id="dictConfig-disables-existing-loggers",
        ),
        pytest.param('fileConfig("alembic.ini")\nlog.disabled = True', id="disabled-by-hand"),
        pytest.param('fileConfig("alembic.ini", disable_existing_loggers=False)\nlog.setLevel(logging.CRITICAL)', id="level-raised"),
        pytest.param('fileConfig("alembic.ini", disable_existing_loggers=False)\nlogging.disable(logging.CRITICAL)', id="logging-disable"),
        pytest.param(
            'log.addHandler(logging.FileHandler("migrate.log"))\nlog.propagate = False\nfileConfig("alembic.ini", disable_existing_loggers=False)',
            id="file-handler-only",
        ),
        pytest.param(
            'log.addHandler(logging.NullHandler())\nlog.propagate = False\nfileConfig("alembic.ini", disable_existing_loggers=False)',
            id="null-handler",
        ),
    ],
)
def test_the_reason_of_a_caught_error_is_printed(app: Path, setup: str) -> None:
    console_script(app / "bin", "flask", migrate_script(setup))
    plain = run(app, ["flask", "db", "upgrade"])
    assert plain.returncode == 1
    assert REASON not in plain.stdout + plain.stderr  # the failure this launcher exists for
    launched_run = run_launched(app, ["flask", "db", "upgrade"])
    assert launched_run.returncode == 1
    assert f"Error: {REASON}" in launched_run.stderr  # in the app's own log format where it has one
    assert launched_run.stderr.count(REASON) == 1
    reason = failure_reason(launched_run.stderr)
    assert reason is not None and reason.endswith(f"Error: {REASON}")
    for line in plain.stderr.splitlines():  # and nothing the app printed is lost
        assert line in launched_run.stderr


def test_a_reason_already_shown_is_not_repeated(app: Path) -> None:
    console_script(app / "bin", "flask", migrate_script('fileConfig("alembic.ini", disable_existing_loggers=False)'))
    plain = run(app, ["flask", "db", "upgrade"])
    launched_run = run_launched(app, ["flask", "db", "upgrade"])
    assert plain.returncode == launched_run.returncode == 1
    assert plain.stderr.count(REASON) == launched_run.stderr.count(REASON) == 1
    assert plain.stderr == launched_run.stderr


def test_an_uncaught_exception_is_printed_even_with_a_silent_excepthook(app: Path) -> None:
    console_script(app / "bin", "alembic", """
        import sys
        sys.excepthook = lambda *exc_info: None
        def upgrade():
            raise ValueError("invalid input syntax for type integer: \\"ten\\"")
        upgrade()
    """)
    plain = run(app, ["alembic", "upgrade", "head"])
    assert plain.returncode == 1 and "invalid input" not in plain.stderr
    launched_run = run_launched(app, ["alembic", "upgrade", "head"])
    assert launched_run.returncode == 1
    assert "Traceback (most recent call last):" in launched_run.stderr
    assert 'ValueError: invalid input syntax for type integer: "ten"' in launched_run.stderr
    assert failure_reason(launched_run.stderr) == 'ValueError: invalid input syntax for type integer: "ten"'


# ------------------------------------------------------------------ running the command as Python would


@pytest.mark.parametrize(("code", "status"), [("pass", 0), ("sys.exit(0)", 0), ("sys.exit(3)", 3), ("sys.exit('no way')", 1)])
def test_exit_status_is_the_commands(app: Path, code: str, status: int) -> None:
    console_script(app / "bin", "migrate", f"import sys\nprint('out')\n{code}\n")
    plain = run(app, ["migrate"])
    launched_run = run_launched(app, ["migrate"])
    assert plain.returncode == launched_run.returncode == status
    assert launched_run.stdout == plain.stdout == "out\n"
    assert launched_run.stderr == plain.stderr


SHOW = "import json, os, sys\nprint(json.dumps({'argv': sys.argv, 'path0': sys.path[0], 'name': __name__, 'exe': sys.executable, 'prefix': sys.prefix}))\n"


def shown(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_console_script_runs_in_the_launcher_with_pythons_argv_and_path(app: Path) -> None:
    script = console_script(app / "bin", "flask", SHOW + "import logging\nprint(type(vars(logging.Logger)['disabled']).__name__)\n")
    result = run_launched(app, ["flask", "db", "upgrade", "--sql"])
    assert result.stdout.strip().splitlines()[-1] == "property"  # in-process: the launcher's logging guard is there
    seen = json.loads(result.stdout.strip().splitlines()[0])
    plain = json.loads(run(app, ["flask", "db", "upgrade", "--sql"]).stdout.splitlines()[0])
    assert seen == plain
    assert seen["argv"] == [str(script), "db", "upgrade", "--sql"] and seen["path0"] == str(app / "bin")
    assert seen["name"] == "__main__"


def test_python_script_module_and_code(app: Path) -> None:
    (app / "manage.py").write_text(SHOW)
    (app / "migrator.py").write_text(SHOW)
    python = Path(sys.executable).name
    (app / "bin" / python).symlink_to(sys.executable)  # `python` as the image's PATH finds it
    script = shown(run_launched(app, [python, "manage.py", "db", "upgrade"]))
    assert script["argv"] == ["manage.py", "db", "upgrade"] and script["path0"] == str(app) and script["name"] == "__main__"
    module = shown(run_launched(app, [python, "-m", "migrator", "upgrade", "head"]))
    assert module["argv"] == [str(app / "migrator.py"), "upgrade", "head"] and module["path0"] == str(app)
    code = shown(run_launched(app, [python, "-c", SHOW, "x", "-y"]))
    assert code["argv"] == ["-c", "x", "-y"] and code["path0"] == "" and code["name"] == "__main__"
    for launched_form, plain_form in ((script, [python, "manage.py", "db", "upgrade"]), (code, [python, "-c", SHOW, "x", "-y"])):
        assert {k: launched_form[k] for k in ("argv", "path0", "name")} == {
            k: v for k, v in shown(run(app, plain_form)).items() if k in ("argv", "path0", "name")
        }


def test_interpreter_flags_are_honoured(app: Path) -> None:
    python = Path(sys.executable).name
    (app / "bin" / python).symlink_to(sys.executable)
    result = run_launched(app, [python, "-B", "-W", "error", "-c", "import sys; print(sys.flags.dont_write_bytecode, sys.warnoptions)"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1 ['error']"
    console_script(app / "bin", "strict", "import sys; print(sys.flags.ignore_environment)\n", interpreter=f"{sys.executable} -E")
    assert run_launched(app, ["strict"]).stdout.strip() == "1"


@pytest.fixture(scope="module")
def other_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another interpreter: a virtualenv (its own sys.prefix and site-packages)."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    return venv / "bin" / "python"


def test_script_of_another_interpreter_runs_with_that_interpreter(app: Path, other_python: Path) -> None:
    console_script(app / "bin", "flask", SHOW, interpreter=str(other_python))
    seen = shown(run_launched(app, ["flask", "db", "upgrade"]))
    assert seen["exe"] == str(other_python) and seen["prefix"] == str(other_python.parent.parent)
    assert seen["argv"] == [str(app / "bin" / "flask"), "db", "upgrade"]
    # and the logging guard holds in that interpreter too
    console_script(app / "bin", "flask", migrate_script('fileConfig("alembic.ini")'), interpreter=str(other_python))
    failed = run_launched(app, ["flask", "db", "upgrade"])
    assert failed.returncode == 1 and f"Error: {REASON}" in failed.stderr
    assert "DEPLOYER_LAUNCHER_REEXEC" not in run_launched(app, [str(other_python), "-c", "import os; print(dict(os.environ))"]).stdout


def test_pip_sh_header_and_env_shebangs(app: Path, other_python: Path) -> None:
    # pip writes this instead of a #! line that is too long or holds spaces
    sh_header = app / "bin" / "flask"
    sh_header.write_text(f"#!/bin/sh\n'''exec' \"{other_python}\" \"$0\" \"$@\"\n' '''\n" + SHOW)
    sh_header.chmod(0o755)
    seen = shown(run_launched(app, ["flask", "db", "upgrade"]))
    assert seen["exe"] == str(other_python) and seen["argv"] == [str(sh_header), "db", "upgrade"]
    console_script(app / "bin", "alembic", SHOW, interpreter=f"/usr/bin/env {other_python.name}")
    seen = shown(run_launched(app, ["alembic", "upgrade", "head"], PATH=f"{app / 'bin'}{os.pathsep}{other_python.parent}{os.pathsep}{os.environ['PATH']}"))
    assert seen["exe"] == str(other_python) and seen["argv"] == [str(app / "bin" / "alembic"), "upgrade", "head"]


def test_a_command_that_is_not_python_is_executed(app: Path) -> None:
    result = run_launched(app, ["sh", "-c", 'echo "to out $1"; echo to err >&2; exit 7', "sh", "a b"])
    assert (result.returncode, result.stdout, result.stderr) == (7, "to out a b\n", "to err\n")
    script = app / "bin" / "migrate.sh"
    script.write_text("#!/bin/sh\necho shell migration \"$@\"\nexit 4\n")
    script.chmod(0o755)
    result = run_launched(app, ["migrate.sh", "--to", "head"])
    assert (result.returncode, result.stdout) == (4, "shell migration --to head\n")


def test_a_missing_command_says_so(app: Path) -> None:
    result = run_launched(app, ["flsk", "db", "upgrade"])
    assert result.returncode == 127
    assert result.stderr == "flsk: command not found\n"


# ------------------------------------------------------------------ the reason line


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (
            "INFO  [alembic.runtime.migration] Running upgrade a1 -> b2\nERROR [flask_migrate] Error: boom\n",
            "ERROR [flask_migrate] Error: boom",
        ),
        ("ERROR:flask_migrate:Error: Can't locate revision identified by 'zz'\n", "ERROR:flask_migrate:Error: Can't locate revision identified by 'zz'"),
        (
            ("INFO  [alembic] Running upgrade\nTraceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
            "    op.execute('SELECT 1/0')\nsqlalchemy.exc.DataError: (psycopg2.errors.DivisionByZero) division by zero\n\n"
            "[SQL: SELECT 1/0]\n(Background on this error at: https://sqlalche.me/e/20/9h9h)\n"),
            "sqlalchemy.exc.DataError: (psycopg2.errors.DivisionByZero) division by zero",
        ),
        (
            ("Traceback (most recent call last):\n  File \"a\", line 1\nKeyError: 'a'\n\nDuring handling of the above exception, "
            "another exception occurred:\n\nTraceback (most recent call last):\n  File \"b\", line 2\nRuntimeError: second\n"),
            "RuntimeError: second",
        ),
        ("    Traceback (most recent call last):\n      File \"a\", line 1\n    OSError: quoted\n", "OSError: quoted"),
        ("Usage: flask db [OPTIONS] COMMAND [ARGS]...\nError: No such command 'upgrad'.\n", "Error: No such command 'upgrad'."),
        ("INFO  [alembic.runtime.migration] Will assume transactional DDL.\n", None),
        ("", None),
        ("ERROR " + "x" * 400, "ERROR " + "x" * 293 + "…"),
    ],
)
def test_failure_reason(output: str, expected: str | None) -> None:
    assert failure_reason(output) == expected

