"""``preflight``: read everything the release needs, refuse what is unsafe, change nothing.

The commit is resolved on the remote; its migrations and its compose file are read from the
commit (never the work tree); the compose file is resolved on the host with deploy.toml's
variables; the database is located as the app states it and its revision read; the
checkout, containers, volumes and journal are read. Every later step plans from these facts.
"""

from __future__ import annotations

import posixpath
from concurrent.futures import Future, ThreadPoolExecutor

from deployer.commands import git as gitops
from deployer.db.migrations import upgrade_path
from deployer.errors import ConfigError, RefusedError
from deployer.server import facts as server_facts
from deployer.server import journal
from deployer.steps import StepKind, register
from deployer.steps.common import confirm, new_release_id, shown_revisions
from deployer.steps.context import Context, Facts
from deployer.steps.lint import preview as preview_lint
from deployer.steps.playbook import Step
from deployer.steps.unchanged import already_running


def read_host_state(ctx: Context) -> dict[str, object]:
    """The host-side reads every preflight makes, at once on the one connection."""
    host, env, target = ctx.host, ctx.env, ctx.target
    # The containers through the engine beside the commands; over SSH the commands one after
    # another (on a warm command shell each takes milliseconds; a thread each would start a
    # shell each), here side by side.
    commands_at_once = 5 if host.is_local else 1
    with (ThreadPoolExecutor(max_workers=1, thread_name_prefix="preflight-engine") as engine,
          ThreadPoolExecutor(max_workers=commands_at_once, thread_name_prefix="preflight-reads") as commands):
        containers = engine.submit(server_facts.all_containers, target)
        path = commands.submit(host.run, ["test", "-d", env.path], timeout=30)
        head = commands.submit(host.run, gitops.rev_parse_head(env.path), timeout=30)
        status = commands.submit(host.run, gitops.status(env.path), timeout=60)
        label = "com.docker.stack.namespace" if env.swarm else "com.docker.compose.project"
        volumes = commands.submit(host.run, ["docker", "volume", "ls", "--quiet", "--filter",
                                           f"label={label}={ctx.compose.project}"], timeout=30)
        records = commands.submit(journal.read, host, target.state_dir)
        head_result = head.result()
        deployed = gitops.parse_sha(head_result.stdout) if head_result.ok else None
        status_result = status.result()
        dirty = [e.path for e in gitops.parse_status(status_result.stdout)] if deployed and status_result.ok else []
        return {
            "path_exists": path.result().ok,
            "deployed": deployed,
            "dirty": dirty,
            "containers": tuple(containers.result()),
            "volumes": tuple(sorted(volumes.result().stdout.split())) if volumes.result().ok else (),
            "records": records.result(),
        }


def refuse_state_in_build_context(ctx: Context, repo, sha: str, contexts: dict[str, str]) -> None:  # noqa: ANN001
    """A backup_dir or state_dir inside a build context would be baked into the image by ``COPY . .``."""
    from deployer import source

    env = ctx.env
    for service, context in sorted(contexts.items()):
        for what, directory in (("backup_dir", env.backup_dir), ("state_dir", env.state_dir)):
            inside = posixpath.normpath(directory)
            base = posixpath.normpath(context)
            if inside != base and not inside.startswith(base + "/"):
                continue
            relative = posixpath.relpath(inside, base)
            in_repo = posixpath.relpath(base, posixpath.normpath(env.path))
            ignore = source.file_at(repo, sha, posixpath.normpath(posixpath.join(in_repo, ".dockerignore"))) or ""
            patterns = [line.strip() for line in ignore.splitlines() if line.strip() and not line.startswith("#")]
            # The docker SDK's own .dockerignore matcher (imported only here: it is slow to load).
            from docker.utils.build import PatternMatcher

            if PatternMatcher(patterns).matches(relative):
                continue
            raise RefusedError(
                f"{what} {directory} lies inside the build context of the {service} service ({context}) "
                "and is not in its .dockerignore: a `COPY . .` would bake "
                + ("the database dumps" if what == "backup_dir" else "deployer's files, secrets included")
                + " into the image",
                hint=f"add `{relative}` to {posixpath.join(in_repo, '.dockerignore')} (and commit it), "
                f"or set {what} in deploy.toml to a directory outside the checkout",
            )


def preflight(ctx: Context, step: Step):  # noqa: ANN201 - StepBody

    # The host's state is read while the commit is resolved and read here: neither needs the other.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="preflight-host") as early:
        host_state = early.submit(read_host_state, ctx)
        return _preflight(ctx, host_state)
    yield  # a generator: preflight only reads


def _preflight(ctx: Context, host_state: Future[dict[str, object]]) -> str:
    from deployer import source

    cfg = ctx.target.config
    swarm_detail = ""
    if ctx.env.swarm:
        from deployer.steps import swarm

        swarm_detail = "; " + swarm.check(ctx)
    repo = source.open_repo(cfg.root)
    remote = source.remote_url(repo, ctx.env.remote, cfg.root)
    ref = ctx.options.ref or ctx.env.branch or cfg.app.branch
    if ctx.options.ref == "":
        raise ConfigError("--ref is empty", hint="give a branch, tag or commit, or leave --ref out for the configured branch")
    commit = source.resolve(repo, remote, ref)
    scripts = source.migration_scripts(repo, commit.sha, cfg.app.migrations_dir)
    heads = scripts.heads
    if len(heads) > 1:
        listed = "; ".join(scripts.describe(head) for head in heads)
        raise RefusedError(
            f"commit {commit.sha[:12]} has {len(heads)} migration heads: {listed}",
            hint="merge them (`flask db merge heads`), commit, push, and release again",
        )
    compose_text = source.file_at(repo, commit.sha, cfg.app.compose_file)
    if compose_text is None:
        raise ConfigError(
            f"commit {commit.sha[:12]} has no {cfg.app.compose_file} (app.compose_file)",
            hint="commit the compose file, or point app.compose_file at it (relative to the repository root)",
        )
    compose = server_facts.compose_config(ctx.target, compose_text)
    ctx.scratch["compose_text"] = compose_text  # the other hosts resolve it with their own variables
    database = server_facts.database_location(ctx.target, compose)
    refuse_state_in_build_context(ctx, repo, commit.sha, compose.build_contexts)
    state = host_state.result()
    _refuse_dirty(ctx, state)
    containers = state["containers"]
    revision = server_facts.read_revisions(ctx.target, database, containers)  # type: ignore[arg-type]
    unknown = [r for r in revision or () if r not in scripts.revisions]
    if unknown:
        raise RefusedError(
            f"the database of {ctx.env.name} is at {', '.join(unknown)}, which commit {commit.sha[:12]} does not know: "
            "the database is ahead of the code you are releasing",
            hint="release a commit that contains that migration, or roll the database back first",
        )
    pending = tuple(upgrade_path(scripts, revision or (), "heads") if heads else ())
    destructive = [(m, op) for m in pending for op in m.destructive_ops]
    if destructive:
        listed = "; ".join(f"{m.revision} ({m.message}): {op}" for m, op in destructive)
        confirm(ctx, "Run these migrations that destroy data?", f"the release would run destructive migrations ({listed})",
                warning=f"destructive migration operations: {listed}")
    records = state["records"]
    db = cfg.app.db_service
    ctx.facts = Facts(
        commit=commit, remote=remote, scripts=scripts, heads=heads, compose=compose, database=database,
        containers=containers, deployed_commit=state["deployed"], path_exists=bool(state["path_exists"]),  # type: ignore[arg-type]
        checkout_exists=state["deployed"] is not None, revision=revision, pending=pending,
        previous_release=journal.running_release(records),  # type: ignore[arg-type]
        volumes=state["volumes"], services=tuple(s for s in ctx.target.services_here(compose.services) if s != db),  # type: ignore[arg-type]
    )
    ctx.values["release_id"] = new_release_id(commit.sha)
    preview_lint(ctx, repo)
    unchanged = already_running(
        ctx, commit=commit.sha, deployed=state["deployed"], records=records, containers=containers,  # type: ignore[arg-type]
        revision=revision, heads=heads, pending=pending, compose=compose,
    )
    if unchanged is not None:
        ctx.scratch["unchanged"] = unchanged
    shown = ", ".join(f"{m.revision} {m.message!r}" for m in pending) or "none"
    return (
        f"commit {commit.sha[:12]} ({commit.ref}: {commit.subject}); database {shown_revisions(revision)} "
        f"({database.source}); pending migrations: {shown}{swarm_detail}"
    )


def _refuse_dirty(ctx: Context, state: dict[str, object]) -> None:
    dirty: list[str] = state["dirty"]  # type: ignore[assignment]
    if dirty:
        raise RefusedError(
            f"the checkout {ctx.env.path} on {ctx.host.name} has local changes: {', '.join(dirty[:5])}",
            hint=f"commit them to the repository, or discard them on the host (`git -C {ctx.env.path} checkout -- .`)",
        )


def member_preflight(ctx: Context, primary: Context) -> str:
    """Preflight on one of several hosts that is not the primary, once the primary's is done.

    The release-wide facts (the commit, its migrations, the database, its revision and the
    pending migrations) are the primary's; this host's own are read here: its checkout (a
    dirty one refuses), containers, volumes, journal, and the compose file resolved with its
    own variables. Refused: a db service that would run here too, roles naming no service,
    and a web service that would look for its database at a service that runs elsewhere.
    """
    from dataclasses import replace

    from deployer.db.url import FROM_CONFIG, SQLITE
    from deployer.db.url import parse as parse_url

    facts = primary.known
    ctx.values["release_id"] = primary.run_id  # one release id across the hosts
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="member-host") as early:
        host_state = early.submit(read_host_state, ctx)
        compose = server_facts.compose_config(ctx.target, primary.scratch["compose_text"])
        state = host_state.result()
    _refuse_dirty(ctx, state)
    app, entry = ctx.app, ctx.target.entry
    unknown = sorted(set(entry.roles if entry else ()) - set(compose.services))
    if unknown:
        raise ConfigError(
            f"host {ctx.host.name} of {ctx.env.name} has roles {', '.join(unknown)}, which are no service of "
            f"{app.compose_file} at {facts.commit.sha[:12]} (its services: {', '.join(sorted(compose.services))})",
            hint="roles name the compose services a host runs: fix them in deploy.toml",
        )
    here = ctx.target.services_here(compose.services)
    db = app.db_service
    if db and db in here:
        raise RefusedError(
            f"the {db} service would run on {ctx.host.name} as well as on the primary {primary.host.name}: "
            "two databases, each with part of the writes",
            hint=f"leave {db} out of that host's roles: the primary runs the database, the other hosts reach it",
        )
    location = server_facts.database_location(ctx.target, compose)
    if location.source != FROM_CONFIG and location.engine != SQLITE:
        named = parse_url(location.url).host
        if named in compose.services and named not in here:
            raise RefusedError(
                f"on {ctx.host.name} the {app.web_service} service would reach its database at {named}, a service that "
                f"does not run there ({location.source})",
                hint="give that host the database's address: a variable in its hosts entry's env "
                '(e.g. hosts = [{host = "...", env = {DATABASE_HOST = "10.0.0.5"}}]) that the compose file uses',
            )
    ctx.facts = replace(
        facts, compose=compose, containers=state["containers"], deployed_commit=state["deployed"],  # type: ignore[arg-type]
        path_exists=bool(state["path_exists"]), checkout_exists=state["deployed"] is not None,
        previous_release=journal.running_release(state["records"]), volumes=state["volumes"],  # type: ignore[arg-type]
        services=tuple(s for s in here if s != db),
    )
    unchanged = already_running(
        ctx, commit=facts.commit.sha, deployed=state["deployed"], records=state["records"],  # type: ignore[arg-type]
        containers=state["containers"], revision=facts.revision, heads=facts.heads, pending=facts.pending,  # type: ignore[arg-type]
        compose=compose,
    )
    if unchanged is not None:
        ctx.scratch["unchanged"] = unchanged
    deployed = state["deployed"]
    return (f"runs {', '.join(here)}; checkout at {str(deployed)[:12] if deployed else 'nothing yet'}; "
            f"{len(state['containers'])} container(s)")  # type: ignore[arg-type]


register(StepKind(
    name="preflight",
    summary="read the commit, the compose file, the host and the database; refuse what is unsafe",
    run=preflight,
    once=True,
))
