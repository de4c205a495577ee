"""deployer as Python functions: what the CLI calls and what tests call."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deployer import config as configuration
from deployer.errors import DeployerError

if TYPE_CHECKING:
    from deployer.hosts import Host
    from deployer.server.lock import LockInfo
    from deployer.plan import Plan
    from deployer.playbook import Playbook
    from deployer.release import Options
    from deployer.runner import Outcome
    from deployer.status import History, Status


def load(config_path: Path | None = None, *, cwd: Path | None = None) -> configuration.Config:
    """Load and validate deploy.toml (explicit path, or found from ``cwd`` upwards)."""
    return configuration.load_config(config_path, cwd=cwd)


def show_config(env: str, *, config_path: Path | None = None) -> dict[str, Any]:
    """The resolved configuration of one environment, secrets redacted."""
    cfg = load(config_path)
    cfg.environment(env)  # an unknown environment is a ConfigError listing the known ones
    return configuration.show_config(cfg, env)


def _noop(_: str) -> None:
    return None


@contextmanager
def _redacted(cfg: configuration.Config) -> Iterator[None]:
    """No secret of the configuration leaves in an error message (e.g. quoted command output)."""
    try:
        yield
    except DeployerError as error:
        error.message = cfg.redact(error.message)
        if error.hint:
            error.hint = cfg.redact(error.hint)
        raise


def release(
    env: str,
    *,
    config_path: Path | None = None,
    ref: str | None = None,
    yes: bool = False,
    dry_run: bool = False,
    verbose: bool = False,
    playbook: str | None = None,
    confirm: Callable[[str], bool] | None = None,
    log: Callable[[str], None] = _noop,
    host: Host | None = None,
) -> Outcome | Plan:
    """Release the configured branch (or ``ref``) to ``env``; with ``dry_run``, only plan it."""
    from deployer.playbook import load_playbook
    from deployer.release import STEPS, Options

    cfg = load(config_path)
    book = load_playbook(playbook or cfg.environment(env).playbook, cfg.root)
    options = Options(ref=ref, yes=yes, dry_run=dry_run, verbose=verbose, confirm=confirm)
    return _operate(cfg, env, book, options, STEPS, kind="release", log=log, host=host)


def _operate(
    cfg: configuration.Config,
    env: str,
    book: Playbook,
    options: Options,
    steps: Mapping[str, Callable[..., str]],
    *,
    kind: str,
    log: Callable[[str], None],
    host: Host | None,
) -> Outcome | Plan:
    """Run (or, for a dry run, plan) a playbook on one environment; the shared body of release and rollback."""
    from deployer.plan import build_plan
    from deployer.release import Run
    from deployer.runner import execute
    from deployer.server.target import open_target

    cfg.environment(env)
    target = open_target(cfg, env, host=host, prepare=not options.dry_run)
    try:
        with _redacted(cfg):
            run = Run(target=target, playbook=book, options=options, log=lambda line: log(cfg.redact(line)), kind=kind)
            if options.dry_run:
                preflight = next(step for step in book.steps if step.name == "preflight")
                steps["preflight"](run, preflight)
                return build_plan(run)
            return execute(run, steps)
    finally:
        if host is None:
            target.host.close()


def rollback(
    env: str,
    target: str = "previous",
    *,
    config_path: Path | None = None,
    yes: bool = False,
    dry_run: bool = False,
    restore_backup: bool = False,
    verbose: bool = False,
    confirm: Callable[[str], bool] | None = None,
    log: Callable[[str], None] = _noop,
    host: Host | None = None,
) -> Outcome | Plan:
    """Roll ``env`` back to a release, an alembic revision, or ``previous``; schema, code and images together."""
    from deployer import rollback as rollbacks
    from deployer.release import Options

    cfg = load(config_path)
    options = Options(ref=target, yes=yes, dry_run=dry_run, verbose=verbose, restore_backup=restore_backup, confirm=confirm)
    return _operate(cfg, env, rollbacks.playbook(), options, rollbacks.step_functions(), kind="rollback", log=log, host=host)


def status(env: str, *, config_path: Path | None = None) -> Status:
    """Deployed commit vs branch, database vs code, containers, lock, last release, newest backup."""
    from deployer.status import status as read_status

    return read_status(config_path, env)


def history(env: str, *, config_path: Path | None = None, limit: int | None = None) -> History:
    """The environment's journal, newest first."""
    from deployer.status import history as read_history

    return read_history(config_path, env, limit=limit)


def lock_status(env: str, *, config_path: Path | None = None) -> LockInfo | None:
    """Who holds the environment's deploy lock, or None."""
    from deployer.server.lock import read_lock
    from deployer.server.target import open_target

    cfg = load(config_path)
    target = open_target(cfg, env)
    try:
        return read_lock(target.host, target.state_dir)
    finally:
        target.host.close()


def lock_release(env: str, *, config_path: Path | None = None) -> LockInfo | None:
    """Break the environment's deploy lock (after a crashed run); returns who held it."""
    from deployer.server.lock import read_lock
    from deployer.server.lock import release as release_lock
    from deployer.server.target import open_target

    cfg = load(config_path)
    target = open_target(cfg, env)
    try:
        holder = read_lock(target.host, target.state_dir)
        release_lock(target.host, target.state_dir)
        return holder
    finally:
        target.host.close()
