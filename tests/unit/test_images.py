"""Which release image tags a rollback may still need: pure, table-driven; and the prune's
commands against a recording host."""

from __future__ import annotations

import shlex

import pytest

from deployer.commands import docker as docker_cmds
from deployer.server import journal, runlog
from deployer.server.images import describe, release_of, repositories, select

REPO = "shop-web"


def rec(id_: str, *, kind: str = "release", outcome: str = journal.SUCCEEDED, target: str | None = None) -> journal.Record:
    return journal.Record(
        id=id_, kind=kind, environment="p", outcome=outcome, commit="c" * 40, previous_commit=None, revision_before=(),
        revision_after=(), started_at="", finished_at="", seconds=0.0, user="u",
        images={f"{REPO}:latest": f"{REPO}:deployer-{id_}"} if outcome == journal.SUCCEEDED else {}, target_release=target,
    )


def tag(id_: str) -> str:
    return f"{REPO}:deployer-{id_}"


NINE = [rec(f"2026010{n}-120000-abcdef{n}") for n in range(1, 10)]
IDS = [r.id for r in NINE]


def test_the_newest_releases_and_the_running_one_keep_their_images() -> None:
    tags = {tag(i): f"sha256:{n}" for n, i in enumerate(IDS)}
    kept, removed = select(tags, NINE, keep=3, in_use={"sha256:8": "shop-web-1", "sha256:1": "shop-worker-1"})
    assert removed == [tag(i) for i in reversed(IDS[:6]) if i != IDS[1]]  # newest first, like every list here
    assert [t for t, _ in kept] == [tag(i) for i in reversed(IDS[6:])] + [tag(IDS[1])]
    assert "used by the container shop-worker-1" in dict(kept)[tag(IDS[1])]  # never an image a container uses
    why = dict(kept)
    assert f"release {IDS[8]} runs now" in why[tag(IDS[8])]
    assert "one of the 3 newest" in why[tag(IDS[7])]


def test_after_a_rollback_the_running_release_stays_and_rollback_tags_go_once_unused() -> None:
    back = rec("rollback-20260110-120000-abcdef2", kind="rollback", target=IDS[1])
    records = [*NINE, back]
    tags = {**{tag(i): f"sha256:{n}" for n, i in enumerate(IDS)}, tag(back.id): "sha256:1"}
    kept, removed = select(tags, records, keep=2, in_use={"sha256:1": "shop-web-1"})
    why = dict(kept)
    assert f"release {IDS[1]} runs now" in why[tag(IDS[1])]
    assert "used by" in why[tag(back.id)]  # the running image: kept while it runs
    assert tag(IDS[8]) in why and tag(IDS[7]) in why  # the newest two: a rollback target is still there
    assert set(removed) == {tag(i) for i in IDS[:7] if i != IDS[1]}
    # released again: the rollback's tag names an image nothing runs any more
    kept, removed = select(tags, records, keep=2, in_use={})
    assert tag(back.id) in removed
    assert f"release {IDS[1]} runs now" in dict(kept)[tag(IDS[1])]  # the rollback brought it back


def test_tags_this_journal_does_not_name_and_an_interrupted_runs_are_left_alone() -> None:
    run = runlog.RunRecord(id="20260111-120000-abcdefa", kind="release", environment="p",
                           source=runlog.Source(commit="c", release=IDS[2], images={f"{REPO}:latest": tag(IDS[2])}),
                           goal=runlog.Goal(commit="d", heads=(), release="20260111-120000-abcdefa"), playbook="release",
                           steps=(), holder="u", pid=1, started_at="")
    tags = {tag(IDS[0]): "sha256:0", tag(IDS[2]): "sha256:2", f"{REPO}:deployer-someone-else": "sha256:x",
            f"{REPO}:deployer-before-{run.id}": "sha256:y"}
    kept, removed = select(tags, NINE, keep=1, in_use={}, run=run)
    why = dict(kept)
    assert removed == [tag(IDS[0])]
    assert "no record of this environment" in why[f"{REPO}:deployer-someone-else"]
    assert "interrupted run" in why[tag(IDS[2])] and "interrupted run" in why[f"{REPO}:deployer-before-{run.id}"]


def test_failed_releases_protect_nothing() -> None:
    records = [*NINE[:2], rec("20260103-120000-fffffff", outcome=journal.FAILED)]
    tags = {tag(i): f"sha256:{i}" for i in (IDS[0], IDS[1])} | {f"{REPO}:deployer-before-20260103-120000-fffffff": "sha256:z"}
    _, removed = select(tags, records, keep=1, in_use={})
    assert removed == [f"{REPO}:deployer-before-20260103-120000-fffffff", tag(IDS[0])]
    with pytest.raises(ValueError):
        select(tags, records, keep=0, in_use={})


def test_tags_and_repositories() -> None:
    assert release_of("registry:5000/a/web:deployer-before-r1") == "r1"
    assert release_of(tag("rollback-x")) == "rollback-x"
    assert repositories(NINE[:1], None, ["registry:5000/team/web:1.2", "sha256:abc", "redis"]) == [
        "redis", "registry:5000/team/web", REPO]
    assert docker_cmds.image_tags_argv(["a/web"], "deployer-") == [
        "docker", "image", "ls", "--no-trunc", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}",
        "--filter", "reference=a/web:deployer-*"]
    with pytest.raises(ValueError):  # no filter would list every image of the engine
        docker_cmds.image_tags_argv([], "deployer-")
    assert docker_cmds.parse_image_tags("a:deployer-1 sha256:1\n<none>:<none> sha256:2\n\n") == {"a:deployer-1": "sha256:1"}
    assert docker_cmds.remove_tags_argv(["a:deployer-1"]) == ["docker", "image", "rm", "a:deployer-1"]


def test_what_a_release_says_it_pruned() -> None:
    from deployer.server.images import Pruning

    assert describe(Pruning("h", 5, kept=(("a", "x"),))) == "images: nothing to prune (keep_releases = 5; 1 tag(s) kept)"
    text = describe(Pruning("h", 5, removed=("a:deployer-1",), refused=(("a:deployer-2", "conflict"),), deleted=1))
    assert text.startswith("images: removed 1 tag(s)") and "1 image(s) deleted" in text and "docker kept a:deployer-2 (conflict)" in text


@pytest.fixture
def release_context(tmp_path):  # noqa: ANN001, ANN201
    """A release's context on a fake host whose journal holds NINE."""
    from dataclasses import replace

    from deployer.commands.compose import V2, Compose
    from deployer.config import load_config
    from deployer.server.target import Target
    from deployer.steps.context import Context, Options
    from tests.unit.fakes import FakeHost

    (tmp_path / "deploy.toml").write_text('[app]\nname = "shop"\n[environments.prod]\nhost = "local"\npath = "/srv/shop"\n')
    cfg = load_config(tmp_path / "deploy.toml")

    def make(rules: list) -> tuple[Context, list[str], FakeHost]:  # noqa: ANN001
        host = FakeHost(rules=[
            (lambda a: a[:2] == ["cat", "/srv/shop.deployer/journal.jsonl"], 0, "".join(r.to_json() + "\n" for r in NINE)),
            (lambda a: a[:2] == ["cat", "/srv/shop.deployer/run.json"], 1, ""),
            (lambda a: a[0] == "sh" and "ids=" in a[2], 0, "[]"),
            *rules,
        ])
        env = replace(cfg.environment("prod"), keep_releases=3)
        compose = Compose(program=V2, project="shop", project_dir="/srv/shop", files=("/srv/shop/docker-compose.yml",))
        logged: list[str] = []
        target = Target(config=cfg, env=env, host=host, compose=compose)  # type: ignore[arg-type]
        return Context(target=target, options=Options(), log=logged.append), logged, host

    return make


def test_a_release_prunes_after_it_is_journaled_and_says_so(release_context) -> None:  # noqa: ANN001
    from deployer import engine

    listing = "".join(f"{tag(i)} sha256:{n}\n" for n, i in enumerate(IDS))
    ctx, logged, host = release_context([(lambda a: a[:3] == ["docker", "image", "ls"], 0, listing),
                                         (lambda a: a[:3] == ["docker", "image", "rm"], 0, "Untagged: x\nDeleted: sha256:0\n")])
    engine.prune_images(ctx)
    (removal,) = host.commands("rm")
    assert removal == ["docker", "image", "rm", *[tag(i) for i in reversed(IDS[:6])]]
    assert logged[0] == "> prune images" and logged[-1].startswith("✓ prune images ")
    assert "removed 6 tag(s) no retained release needs (keep_releases = 3), 1 image(s) deleted" in logged[-1]
    # in the run's trace, as the host got them
    assert [text for label, text in ctx.trace if label == "prune images"][1:] == [
        shlex.join(docker_cmds.image_tags_argv([REPO], "deployer-")), shlex.join(removal)]


def test_pruning_after_a_release_never_fails_it(release_context) -> None:  # noqa: ANN001
    from deployer import engine

    # the engine cannot be asked: a warning, and the command that tries again
    ctx, logged, host = release_context([(lambda a: a[:3] == ["docker", "image", "ls"], 1, "")])
    engine.prune_images(ctx)  # raises nothing
    assert logged[-1].startswith("x prune images failed: ") and "the release is done" in logged[-1]
    assert "`deployer images prune prod` tries again" in logged[-1] and not host.commands("rm")
    # the engine refuses one tag (a container outside the project uses its image): kept, and said
    listing = f"{tag(IDS[0])} sha256:0\n{tag(IDS[8])} sha256:8\n"
    ctx, logged, host = release_context([(lambda a: a[:3] == ["docker", "image", "ls"], 0, listing),
                                         (lambda a: a[:3] == ["docker", "image", "rm"], 1, "")])
    engine.prune_images(ctx)
    assert logged[-1].startswith("✓ prune images ") and f"docker kept {tag(IDS[0])} (failed)" in logged[-1]


def test_keep_releases_defaults_to_five_and_is_at_least_one(tmp_path) -> None:  # noqa: ANN001
    from deployer.config import load_config
    from deployer.errors import ConfigError

    base = '[app]\nname = "shop"\n[environments.prod]\nhost = "local"\npath = "/srv/shop"\n'
    (tmp_path / "deploy.toml").write_text(base)
    assert load_config(tmp_path / "deploy.toml").environment("prod").keep_releases == 5
    (tmp_path / "deploy.toml").write_text(base + "keep_releases = 2\n")
    assert load_config(tmp_path / "deploy.toml").environment("prod").keep_releases == 2
    (tmp_path / "deploy.toml").write_text(base + "keep_releases = 0\n")
    with pytest.raises(ConfigError, match="keep_releases"):
        load_config(tmp_path / "deploy.toml")


def test_a_ctrl_c_while_pruning_after_a_release_leaves_the_release_done(release_context) -> None:  # noqa: ANN001
    import signal

    from deployer import engine, interrupts

    def interrupted(argv: list[str]) -> bool:
        if argv[:3] == ["docker", "image", "ls"]:
            raise interrupts.Interrupted(signal.SIGINT)
        return False

    ctx, logged, host = release_context([(interrupted, 0, "")])
    engine.prune_images(ctx)  # raises nothing: the release is journaled
    assert logged[-1].startswith("x prune images failed: interrupted (SIGINT); the release is done"), logged
    assert not host.commands("rm")
