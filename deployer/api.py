"""deployer as Python functions: what the CLI calls and what tests call.

Every function loads deploy.toml, opens the environment's target, and scrubs every secret of
the configuration from what leaves it — progress lines and error messages alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deployer import config as configuration
from deployer.errors import ConfigError, DeployerError

if TYPE_CHECKING:
    from deployer.discovery import Choice
    from deployer.engine import Outcome, Plan
    from deployer.hosts import Host
    from deployer.readiness import Report as Readiness
    from deployer.scaffold import Given, Scaffold
    from deployer.schema_history import MigrationsReport
    from deployer.server.images import Pruning
    from deployer.server.lock import LockState
    from deployer.status import FleetHistory, FleetStatus, History, Status
    from deployer.steps.playbook import Playbook


def load(config_path: Path | None = None, *, cwd: Path | None = None) -> configuration.Config:
    """Load and validate deploy.toml (explicit path, or found from ``cwd`` upwards)."""
    return configuration.load_config(config_path, cwd=cwd)


def check_config(env: str | None = None, *, config_path: Path | None = None) -> Readiness:
    """What a release of ``env`` (of every environment when None) needs that can be checked
    here, without the host: deploy.toml (a broken file raises its ConfigError), the compose
    file and its services, the migrations, the playbook, the variables (see
    :mod:`deployer.readiness`)."""
    from deployer import readiness

    cfg = load(config_path)
    if env is not None and env not in cfg.unresolved:
        cfg.environment(env)  # an unknown environment is a ConfigError listing the known ones
    return scrub(cfg, readiness.check(cfg, (env,) if env is not None else cfg.environment_names))


def init_questions(directory: Path, given: Given) -> list[Choice]:
    """What ``deployer init`` cannot tell from the repository at ``directory`` and the
    command line ``given``: each with its flag and the options found."""
    from deployer import scaffold

    scaffold.check_given(given)
    return scaffold.questions(scaffold.discover_for(directory, given), given)


def init(directory: Path, given: Given, *, force: bool = False) -> tuple[Scaffold, list[str]]:
    """Write deploy.toml (and the .dockerignore entries deployer needs) for the app at
    ``directory``; what was found and written. A ConfigError names every flag still needed."""
    from deployer import scaffold

    scaffold.refuse_overwrite(directory, force=force)
    plan = scaffold.scaffold(directory, given)
    return plan, scaffold.write(plan, force=force)


def show_config(env: str, *, config_path: Path | None = None) -> dict[str, Any]:
    """The resolved configuration of one environment, secrets redacted."""
    cfg = load(config_path)
    cfg.environment(env)  # an unknown environment is a ConfigError listing the known ones
    return scrub(cfg, configuration.show_config(cfg, env))


def _noop(_: str) -> None:
    return None


@contextmanager
def redacted(cfg: configuration.Config) -> Iterator[None]:
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
    swap_mode: str | None = None,
    force: bool = False,
    confirm: Callable[[str], bool] | None = None,
    log: Callable[[str], None] = _noop,
    host: Host | None = None,
) -> Outcome | Plan:
    """Release the configured branch (or ``ref``) to ``env``; with ``dry_run``, only plan it.
    ``swap_mode`` (behind a proxy): auto, overlap or pause for this release. When the commit
    already runs as configured the outcome is ``unchanged`` (nothing journaled), unless ``force``."""
    from deployer.source import check_ref
    from deployer.steps.context import Options
    from deployer.steps.playbook import load_playbook

    check_ref(ref)
    cfg = load(config_path)
    book = load_playbook(playbook or cfg.environment(env).playbook, cfg.root)
    options = Options(ref=ref, yes=yes, dry_run=dry_run, verbose=verbose, confirm=confirm, swap_mode=swap_mode, force=force)
    return _operate(cfg, env, book, options, kind="release", log=log, host=host)


def rollback(
    env: str,
    target: str = "previous",
    *,
    config_path: Path | None = None,
    yes: bool = False,
    dry_run: bool = False,
    restore_backup: bool = False,
    force: bool = False,
    verbose: bool = False,
    swap_mode: str | None = None,
    confirm: Callable[[str], bool] | None = None,
    log: Callable[[str], None] = _noop,
    host: Host | None = None,
) -> Outcome | Plan:
    """Roll ``env`` back to a release, an alembic revision, or ``previous``; schema, code and images together.
    ``force``: with ``restore_backup``, restore a backup that failed its restore verification."""
    from deployer.source import check_ref
    from deployer.steps import rollback as rollbacks
    from deployer.steps.context import Options

    check_ref(target, what="the rollback target", hint="give a release id, a revision, or leave it out for `previous`")
    cfg = load(config_path)
    options = Options(ref=target, yes=yes, dry_run=dry_run, verbose=verbose, restore_backup=restore_backup, confirm=confirm,
                      swap_mode=swap_mode, force=force)
    return _operate(cfg, env, rollbacks.playbook(), options, kind="rollback", log=log, host=host)


def _context(cfg: configuration.Config, target: Any, options: Any, kind: str, log: Callable[[str], None]) -> Any:
    from deployer.steps.context import Context

    return Context(target=target, options=options, log=lambda line: log(cfg.redact(line)), kind=kind)


def _operate(
    cfg: configuration.Config,
    env: str,
    book: Playbook,
    options: Any,
    *,
    kind: str,
    log: Callable[[str], None],
    host: Host | None,
) -> Outcome | Plan:
    """Run (or, for a dry run, plan) a playbook on one environment; converge an interrupted run first."""
    from deployer import engine
    from deployer.server.target import open_target

    if cfg.environment(env).many_hosts and host is None:
        return _operate_fleet(cfg, env, book, options, kind=kind, log=log)
    if options.verbose:
        _library_logging()
    target = open_target(cfg, env, host=host)
    try:
        with redacted(cfg):
            ctx = _context(cfg, target, options, kind, log)
            if options.dry_run:
                record = engine.interrupted(ctx)
                if record is not None:
                    ctx.scratch["converge_first"] = engine.describe_interrupted(record) + "; converged back first"
                return scrub(cfg, engine.plan(ctx, book))
            converged = engine.converge(_context(cfg, target, replace(options, restore_backup=False), kind, log))
            outcome = engine.execute(ctx, book)
            return scrub(cfg, replace(outcome, converged=converged.converged) if converged is not None else outcome)
    finally:
        if host is None:
            target.host.close()


def _operate_fleet(cfg: configuration.Config, env: str, book: Playbook, options: Any, *, kind: str,
                   log: Callable[[str], None]) -> Outcome | Plan:
    """:func:`_operate` on an environment of several hosts (see :mod:`deployer.fleet`): each
    host's lines are prefixed with its name."""
    from deployer import engine, fleet
    from deployer.server.target import open_targets

    if options.verbose:
        _library_logging()
    targets = open_targets(cfg, env)
    try:
        with redacted(cfg):
            def made(target: Any, opts: Any = options) -> Any:
                return _context(cfg, target, opts, kind, _prefixed(log, target.host.name))

            ctxs = [made(target) for target in targets]
            if options.dry_run:
                for ctx in ctxs:
                    record = engine.interrupted(ctx)
                    if record is not None:
                        ctxs[0].scratch["converge_first"] = (f"{ctx.host.name}: " + engine.describe_interrupted(record)
                                                             + "; converged back first")
                return scrub(cfg, fleet.plan(ctxs, book))
            converged = fleet.converge([made(target, replace(options, restore_backup=False)) for target in targets])
            outcome = fleet.execute(ctxs, book)
            return scrub(cfg, replace(outcome, converged=converged.converged) if converged is not None else outcome)
    finally:
        for target in targets:
            target.host.close()


def _library_logging() -> None:
    """--verbose: paramiko's own log lines too."""
    from deployer.hosts.liblog import library_logging

    library_logging(True)


def recover(
    env: str,
    *,
    config_path: Path | None = None,
    forward: bool = False,
    restore_backup: bool = False,
    dry_run: bool = False,
    verbose: bool = False,
    log: Callable[[str], None] = _noop,
    host: Host | None = None,
) -> Outcome | Plan | None:
    """Converge an interrupted run: back to where it started (default), or ``forward``.

    With ``dry_run``, the plan of what it would do. None: no run was interrupted.
    """
    from deployer import engine
    from deployer.server.target import open_target
    from deployer.steps.context import Options

    cfg = load(config_path)
    options = Options(dry_run=dry_run, verbose=verbose, restore_backup=restore_backup, forward=forward)
    if cfg.environment(env).many_hosts and host is None:
        return _recover_fleet(cfg, env, options, log)
    target = open_target(cfg, env, host=host)
    try:
        with redacted(cfg):
            ctx = _context(cfg, target, options, "release", log)
            if not dry_run:
                return scrub(cfg, engine.converge(ctx, forward=forward, restore_backup=restore_backup))
            record = engine.interrupted(ctx)
            if record is None:
                return None
            ctx.planning = True
            engine.converge(ctx, forward=forward, restore_backup=restore_backup)
            return scrub(cfg, engine.Plan(
                environment=env, host=str(target.env.host), playbook="recover", commit=record.goal.commit, ref=record.id,
                previous_commit=record.source.commit, database_revision=record.source.revision, heads=record.goal.heads,
                pending=(), kind="recover",
                steps=(engine.PlannedStep(step="recover", label="forward" if forward else "recovery",
                                          commands=tuple(text for _, text in ctx.trace),
                                          note=engine.describe_interrupted(record)),),
            ))
    finally:
        if host is None:
            target.host.close()


def _prefixed(log: Callable[[str], None], name: str) -> Callable[[str], None]:
    """``log`` with each line saying which host it is about."""
    return lambda line: log(f"[{name}] {line}")


def _recover_fleet(cfg: configuration.Config, env: str, options: Any, log: Callable[[str], None]) -> Outcome | Plan | None:
    """:func:`recover` on every host of an environment of several (see :func:`deployer.fleet.converge`)."""
    from deployer import engine, fleet
    from deployer.server.target import open_targets

    targets = open_targets(cfg, env)
    try:
        with redacted(cfg):
            ctxs = [_context(cfg, t, options, "release", _prefixed(log, t.host.name)) for t in targets]
            if not options.dry_run:
                return scrub(cfg, fleet.converge(ctxs, forward=options.forward, restore_backup=options.restore_backup))
            steps, records = [], []
            for ctx in [*ctxs[1:], ctxs[0]]:
                record = engine.interrupted(ctx)
                if record is None:
                    continue
                records.append(record)
                ctx.planning = True
                engine.converge(ctx, forward=options.forward, restore_backup=options.restore_backup)
                steps.append(engine.PlannedStep(step="recover", label=f"{'forward' if options.forward else 'recovery'} "
                                                f"[{ctx.host.name}]", commands=tuple(text for _, text in ctx.trace),
                                                note=engine.describe_interrupted(record)))
            if not steps:
                return None
            primary = records[-1]  # the primary's, when it has one
            return scrub(cfg, engine.Plan(
                environment=env, host=", ".join(c.host.name for c in ctxs), playbook="recover", commit=primary.goal.commit,
                ref=primary.id, previous_commit=primary.source.commit, database_revision=primary.source.revision,
                heads=primary.goal.heads, pending=(), kind="recover", steps=tuple(steps),
            ))
    finally:
        for target in targets:
            target.host.close()


def scrub(cfg: configuration.Config, value: Any) -> Any:
    """``value`` (a result: dataclasses, mappings, sequences, text) with every secret of the
    configuration replaced by ``***``: what a command returns never carries one."""
    from dataclasses import fields, is_dataclass

    if isinstance(value, str):
        return cfg.redact(value)
    if is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: scrub(cfg, getattr(value, f.name)) for f in fields(value) if f.init}
        return replace(value, **changes)
    if isinstance(value, dict):
        return {scrub(cfg, k): scrub(cfg, v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(scrub(cfg, item) for item in value)
    return value


@contextmanager
def environment(env: str, *, config_path: Path | None = None, probe_compose: bool = True) -> Iterator[Any]:
    """An environment's target, open for the block, every error scrubbed of secrets."""
    from deployer.server.target import open_target

    cfg = load(config_path)
    with redacted(cfg), open_target(cfg, env, probe_compose=probe_compose) as target:
        yield target


def status(env: str, *, config_path: Path | None = None) -> Status | FleetStatus:
    """Deployed commit vs branch, database vs running code, containers, lock, interrupted runs;
    for several hosts, each host's and where they disagree."""
    from deployer.status import fleet_status
    from deployer.status import status as read_status

    cfg = load(config_path)
    with redacted(cfg):
        if cfg.environment(env).many_hosts:
            return scrub(cfg, fleet_status(cfg, env))
        return scrub(cfg, read_status(cfg, env))


def migrations(env: str, *, config_path: Path | None = None, everything: bool = False) -> MigrationsReport:
    """Every revision of the running code and the branch tip, newest first: applied, current,
    pending or unknown; which release applied it, and the backup from before it (read-only)."""
    from deployer.schema_history import migrations as read_migrations

    cfg = load(config_path)
    with redacted(cfg):
        return scrub(cfg, read_migrations(cfg, env, everything=everything))


def history(env: str, *, config_path: Path | None = None, limit: int | None = None) -> History | FleetHistory:
    """The environment's journal, newest first (several hosts: each host's)."""
    from deployer.status import fleet_history
    from deployer.status import history as read_history

    cfg = load(config_path)
    with redacted(cfg):
        if cfg.environment(env).many_hosts:
            return scrub(cfg, fleet_history(cfg, env, limit=limit))
        return scrub(cfg, read_history(cfg, env, limit=limit))


def lock_status(env: str, *, config_path: Path | None = None) -> LockState:
    """Who holds the environment's deploy lock (read-only)."""
    from deployer.server.lock import read_lock
    from deployer.server.target import open_target

    cfg = load(config_path)
    with redacted(cfg), open_target(cfg, env, probe_compose=False) as target:
        return scrub(cfg, read_lock(target.host, target.state_dir))


def lock_release(env: str, *, config_path: Path | None = None) -> LockState:
    """Clear a stale lock record (a live holder is never broken: the lease frees itself)."""
    from deployer.server.lock import break_lock
    from deployer.server.target import open_target

    cfg = load(config_path)
    with redacted(cfg), open_target(cfg, env, probe_compose=False) as target:
        return scrub(cfg, break_lock(target.host, target.state_dir))


def prune_images(env: str, *, config_path: Path | None = None, keep: int | None = None,
                 dry_run: bool = False) -> list[Pruning]:
    """Remove the environment's release image tags no retained release needs (the newest
    ``keep`` — default ``keep_releases`` — and the running one stay, and every image a
    container uses), on every host, each under its deploy lock; ``dry_run``: only say which."""
    from deployer.server.images import prune_environment
    from deployer.server.target import open_target, open_targets

    cfg = load(config_path)
    with redacted(cfg):
        targets = open_targets(cfg, env) if cfg.environment(env).many_hosts else [open_target(cfg, env)]
        try:
            return scrub(cfg, [prune_environment(target, keep=keep, dry_run=dry_run) for target in targets])
        finally:
            for target in targets:
                target.host.close()


def _one_host(cfg: configuration.Config, env: str, host: str | None) -> Any:
    """The target ``exec`` and ``logs`` act on: the primary of several hosts, or the one
    ``host`` names (its ``user@host`` as written in deploy.toml, or its host name or alias)."""
    from deployer.server.target import open_target

    environment = cfg.environment(env)
    if host is None:
        return open_target(cfg, env)
    entries = environment.hosts or ()
    for entry in entries:
        if host in (str(entry.spec), entry.spec.hostname):
            return open_target(cfg, env, entry=entry if environment.many_hosts else None)
    listed = ", ".join(str(entry.spec) for entry in entries) or str(environment.host)
    raise ConfigError(f"{env} has no host {host!r} (its hosts: {listed})", hint="name one of them with --host")


def exec_command(env: str, command: list[str], *, service: str | None = None, host: str | None = None,
                 config_path: Path | None = None, tty: bool = False, capture: bool = False) -> Any:
    """Run ``command`` in a one-off container of the image ``service`` (default: the web
    service) runs now, on the primary or ``host``: attached to this terminal (its exit
    status), or with ``capture`` what it printed and its exit status, scrubbed."""
    from deployer.server import running

    cfg = load(config_path)
    with redacted(cfg), _one_host(cfg, env, host) as target:
        plan = running.one_off(target, service or cfg.app.web_service, command, tty=tty)
        outcome = running.run_one_off(target, plan, tty=tty, capture=capture)
        if isinstance(outcome, int):
            return outcome
        return scrub(cfg, {"service": plan.service, "container": plan.container, "image": plan.image,
                           "image_id": plan.image_id, "pinned": plan.pin is not None, "host": target.host.name,
                           "exit_code": outcome.exit_code, "stdout": outcome.stdout, "stderr": outcome.stderr})


def logs(env: str, services: list[str], *, follow: bool = False, since: str | None = None, tail: str | None = None,
         host: str | None = None, config_path: Path | None = None, color: bool = False, capture: bool = False) -> Any:
    """``docker compose logs`` of the services (all without one), on the primary or ``host``:
    streamed to this terminal (its exit status), or with ``capture`` the Result, scrubbed."""
    from deployer.server import running

    cfg = load(config_path)
    with redacted(cfg), _one_host(cfg, env, host) as target:
        argv = running.logs_argv(target, services, follow=follow, since=since, tail=tail, color=color)
        if capture:
            return scrub(cfg, target.host.run(argv, timeout=300))
        return target.host.attach(argv, stdin=False)
