"""``sync``: the host's checkout goes to exactly the commit (fetched from the remote), keeping
untracked files; the compose env file is written from deploy.toml (mode 0600)."""

from __future__ import annotations

from deployer.actions import Command, Write
from deployer.commands import git as gitops
from deployer.errors import DeployerError
from deployer.server.target import PROXY_OVERRIDE_FILE, SWARM_OVERRIDE_FILE, env_file_text, override_texts
from deployer.steps import CHECKOUT, HOST_FILES, StepKind, register
from deployer.steps.context import Context
from deployer.steps.playbook import Step
from deployer.steps.recovery import Recovery


def checkout_commands(ctx: Context, sha: str, *, exists: bool):  # noqa: ANN201 - generator of actions
    """Bring the host's checkout to exactly ``sha``; shared by sync, rollback's switch and recovery."""
    path, remote = ctx.env.path, ctx.known.remote
    if not exists:
        # init + fetch rather than clone: the directory may already hold files of the user's
        yield Command(("mkdir", "-p", path))
        yield Command(("git", "-C", path, "init", "--quiet"))
        yield Command(("git", "-C", path, "remote", "add", gitops.DEFAULT_REMOTE, remote))
    else:
        yield Command(("git", "-C", path, "remote", "set-url", gitops.DEFAULT_REMOTE, remote))
    yield Command(tuple(gitops.fetch(path)), what=f"fetch {remote} on {ctx.host.name}", timeout=900)
    yield Command(tuple(gitops.sync(path, sha)), what=f"check out {sha[:12]}", timeout=300)
    head = yield Command(tuple(gitops.rev_parse_head(path)), check=False, timeout=30)
    if not ctx.planning and head.stdout.strip() != sha:
        raise DeployerError(f"the checkout on {ctx.host.name} is at {head.stdout.strip() or 'nothing'}, not {sha} after checkout")


def compose_files(ctx: Context):  # noqa: ANN201 - generator of actions
    """The files deployer gives docker compose beside the user's: the variables of
    deploy.toml, and with a proxy the override that leaves the web port to it."""
    if ctx.target.compose.env_file:
        yield Write(ctx.target.compose.env_file, env_file_text(ctx.env.env), mode=0o600,
                    what="the variables docker compose reads (secrets included)")
    for override, text in override_texts(ctx.target, ctx.known.compose).items():
        if override.endswith(PROXY_OVERRIDE_FILE):
            what = f"the proxy publishes the port: {ctx.app.web_service} publishes none"
        elif override.endswith(SWARM_OVERRIDE_FILE):
            what = "one-off containers join the stack's networks"
        else:
            what = f"the services that run on {ctx.host.name}: {', '.join(ctx.known.services) or 'none'}"
        yield Write(override, text, mode=0o644, what=what)


def sync(ctx: Context, step: Step):  # noqa: ANN201 - StepBody
    facts = ctx.known
    yield from compose_files(ctx)
    yield from checkout_commands(ctx, facts.commit.sha, exists=facts.checkout_exists)
    return f"{ctx.env.path} at {facts.commit.sha[:12]}"


def undo_sync(ctx: Context, step: Step, recovery: Recovery):  # noqa: ANN201
    source = recovery.record.source
    path = ctx.env.path
    if recovery.code_stays:
        recovery.left.append(f"the checkout stays at {recovery.record.goal.commit[:12]}: the schema did not go back")
        return
    if source.commit:
        yield Command(tuple(gitops.sync(path, source.commit)), what=f"check out {source.commit[:12]} again", timeout=300)
        recovery.done.append(f"checkout back at {source.commit[:12]}")
    elif not source.path_existed:
        yield Command(("rm", "-rf", "--", path), what="remove the checkout this first release made")
        recovery.done.append(f"first release: {path} removed")
    elif not source.checkout_existed:
        # The directory was there (with the user's files): remove only what the checkout added.
        yield Command(("sh", "-c", 'git -C "$1" ls-files -z | (cd "$1" && xargs -0 -r rm -f --) && rm -rf "$1/.git"', "sh", path),
                      what="remove the files this first release checked out")
        recovery.done.append(f"first release: the checkout in {path} removed, the directory's other files kept")


register(StepKind(
    name="sync",
    summary="bring the host's checkout to exactly the commit, keeping untracked files",
    run=sync,
    undo=undo_sync,
    changes=frozenset({CHECKOUT, HOST_FILES}),
    once=True,
))
