"""A release plan as data: what each step would run, printed by ``--dry-run``."""

from __future__ import annotations

import posixpath
import shlex
from dataclasses import asdict, dataclass

from deployer.playbook import Step
from deployer.server import facts as project
from deployer.release import Run, downgrade_argv, saved_tag


@dataclass(frozen=True)
class PlannedStep:
    step: str
    label: str
    commands: tuple[str, ...]
    note: str = ""


@dataclass(frozen=True)
class Plan:
    environment: str
    host: str
    playbook: str
    commit: str
    ref: str
    previous_commit: str | None
    database_revision: tuple[str, ...] | None
    heads: tuple[str, ...]
    pending: tuple[dict, ...]
    steps: tuple[PlannedStep, ...]
    kind: str = "release"
    target_release: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _j(argv: list[str]) -> str:
    return shlex.join(argv)


def describe(run: Run, step: Step) -> PlannedStep:
    """The commands one step would run on the host, given what preflight found."""
    compose = run.compose
    app = run.target.config.app
    env = run.env
    sha = run.commit.sha if run.commit else "?"
    commands: list[str] = []
    note = ""
    name = step.name
    if name == "preflight":
        note = "read-only: resolve the commit on the remote, read the checkout and the database revision"
    elif name == "lock":
        commands = [_j(["mkdir", posixpath.join(run.target.state_dir, "lock")])]
    elif name == "snapshot":
        note = "tag the running containers' images so they can be put back without a rebuild"
        label = run.previous_release.id if run.previous_release else f"before-{run.id}"
        commands = [
            _j(["docker", "tag", c.image_id, saved_tag(c.image, label)])
            for c in project.service_containers(run.target)
            if c.state == "running" and c.image and c.service != app.db_service
        ]
    elif name == "sync":
        commands = [
            _j(["git", "-C", env.path, "fetch", "--prune", "--tags", "--force", "origin", "+refs/heads/*:refs/remotes/origin/*"]),
            _j(["git", "-C", env.path, "checkout", "--quiet", "--force", "--detach", sha]),
        ]
        if run.previous_commit is None:
            commands.insert(0, _j(["git", "-C", env.path, "init", "--quiet"]))
    elif name == "stop":
        commands = [_j(compose.stop(list(step.params.get("services") or [])))]
    elif name == "build":
        commands = [_j(compose.build(pull=bool(step.params.get("pull"))))]
    elif name == "database_up":
        commands = [_j(compose.up([app.db_service], no_deps=True))]
    elif name == "backup":
        if run.kind == "rollback" or (run.pending and run.revision_before):
            commands = [_j(compose.exec(app.db_service, ["pg_dump", "--format=custom", "..."])) + f" > {env.backup_dir}/ID.dump"]
        else:
            note = "skipped: " + ("no migration pending" if not run.pending else "the database has no migration applied yet")
    elif name == "migrate":
        if run.pending:
            commands = [_j(compose.run(app.web_service, list(app.migrate_command)))]
        else:
            note = "skipped: no migration pending"
    elif name == "up":
        commands = [_j(compose.up(list(step.params.get("services") or [])))]
    elif name == "schema":
        if run.options.restore_backup and run.restore_from is not None:
            commands = [_j(compose.stop([app.web_service])), f"restore {run.restore_from.path} into the database"]
        elif run.pending:
            target = run.heads[0] if run.heads else "base"
            commands = [_j(compose.run(app.web_service, downgrade_argv(app.migrate_command, target)))]
            note = "with the CURRENT image: only it has the newer scripts"
        else:
            note = "skipped: the schema is already at the target revision"
    elif name == "switch":
        chosen = run.target_release
        commands = [_j(["git", "-C", env.path, "checkout", "--force", "--detach", sha])]
        if chosen is not None:
            commands += [_j(["docker", "tag", tag, image]) for image, tag in chosen.images.items()]
    elif name == "verify":
        note = f"read alembic_version; expect {', '.join(run.heads) or 'no revision'}"
    elif name == "health":
        note = f"GET {env.healthcheck_url or '(no URL)'} until 2xx; containers running and healthy"
    elif name == "record":
        note = f"append the release to {posixpath.join(run.target.state_dir, 'journal.jsonl')}"
    elif name == "run":
        argv = step.argv()
        if step.params.get("service"):
            commands = [_j(compose.run(str(step.params["service"]), argv))]
        else:
            commands = [f"cd {shlex.quote(env.path)} && {_j(argv)}"]
    return PlannedStep(step=name, label=step.label, commands=tuple(commands), note=note)


def build_plan(run: Run) -> Plan:
    return Plan(
        environment=run.env.name,
        host=str(run.env.host),
        playbook=run.playbook.name,
        commit=run.commit.sha if run.commit else "",
        ref=run.commit.ref if run.commit else "",
        previous_commit=run.previous_commit,
        database_revision=run.revision_before,
        heads=run.heads,
        pending=tuple(
            {"revision": m.revision, "message": m.message, "destructive": list(m.destructive_ops), "has_downgrade": m.has_downgrade}
            for m in run.pending
        ),
        kind=run.kind,
        target_release=run.target_release.id if run.target_release else None,
        steps=tuple(describe(run, step) for step in run.playbook.steps),
    )
