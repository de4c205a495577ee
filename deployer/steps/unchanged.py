"""A release with nothing to do: the commit already runs, exactly as deploy.toml configures it.

Preflight asks :func:`already_running` last. Each condition is what a release would
otherwise change, checked the way the release itself would see it:

- the checkout is at the commit, and the running web image is the one the journal
  recorded for a release of that commit (not a rebuilt or hand-started one);
- no migration is pending: the database is at the commit's heads;
- every service of the commit's compose file has containers, all running and healthy;
- the files deployer writes beside the checkout (the variables of deploy.toml, the proxy's
  compose override) hold what a release would write now;
- every container carries the configuration hash compose computes now
  (``compose config --hash``: a changed variable, image or option would recreate it);
- behind a proxy: it runs and routes to the running web container(s) only;
- no run holds the deploy lock (one that does is changing all this).

The cheap conditions (already read by preflight) come first; the host reads (the lock,
the files' checksums, the hashes, the proxy's routes) only when they all hold. ``release --force`` skips the question.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from deployer.commands.docker import HASH_LABEL, Container
from deployer.server import journal, lock
from deployer.server.target import env_file_text, override_texts
from deployer.steps.context import Context

if TYPE_CHECKING:
    from deployer.commands.compose import ComposeConfig
    from deployer.db.migrations import MigrationStep


def already_running(
    ctx: Context,
    *,
    commit: str,
    deployed: str | None,
    records: Sequence[journal.Record],
    containers: Sequence[Container],
    revision: tuple[str, ...] | None,
    heads: Sequence[str],
    pending: Sequence[MigrationStep],
    compose: ComposeConfig,
) -> str | None:
    """Why a release of ``commit`` would change nothing, or None when it would change something."""
    if ctx.kind != "release" or ctx.options.force or ctx.env.swarm:
        # On Swarm a release always deploys the stack: what runs is the swarm's to say, and a
        # stack whose services match what is deployed changes nothing.
        return None
    if deployed != commit or pending or set(revision or ()) != set(heads):
        return None
    services = [c for c in containers if not c.oneoff]
    web_service = ctx.app.web_service
    webs = [c for c in services if c.service == web_service and c.state == "running"]
    if not webs:
        return None
    release = journal.running_image_release(records, webs[0].image_id)
    if release is None or release.commit != commit or any(w.image_id != webs[0].image_id for w in webs):
        return None
    # Healthy; the web container may still wait for its first Docker healthcheck (the last
    # release's health step vouched for it by its URL, as it does during a release).
    def fine(c: Container) -> bool:
        return c.is_healthy or (c.service == web_service and c.healthcheck_pending)

    here = ctx.target.services_here(compose.services)  # one of several hosts runs some of them
    if not here or any(
        not [c for c in services if c.service == name] or any(not fine(c) for c in services if c.service == name)
        for name in here
    ):
        return None
    if any(c.service not in here for c in services):
        return None  # a container of a service the commit's compose file does not have
    if lock.read_lock(ctx.host, ctx.state_dir).held:
        return None  # a run is changing the environment: the lock step says whose
    if not _files_current(ctx) or not _hashes_current(ctx, services):
        return None
    routed = _proxy_routes_to(ctx, webs)
    if routed is False:
        return None
    schema = ", ".join(heads) or "no migrations"
    proxy = f"; the proxy routes to {', '.join(w.name for w in webs)}" if routed else ""
    return (
        f"commit {commit[:12]} already runs as release {release.id}: the database is at its head ({schema}), "
        f"{len(services)} containers run healthy on the configuration a release would give them{proxy}"
    )


def _files_current(ctx: Context) -> bool:
    """The files deployer writes beside the checkout hold what a release would write now."""
    expected: dict[str, str] = {}
    if ctx.target.compose.env_file:
        expected[ctx.target.compose.env_file] = env_file_text(ctx.env.env)
    if ctx.target.compose.overrides:
        expected.update(override_texts(ctx.target, ctx.known.compose))
    if not expected:
        return True
    result = ctx.host.run(["sha256sum", "--", *expected], timeout=30)
    if not result.ok:
        return False  # one is missing
    found = {}
    for line in result.stdout.splitlines():
        digest, _, path = line.partition("  ")
        found[path] = digest
    return all(found.get(path) == hashlib.sha256(text.encode()).hexdigest() for path, text in expected.items())


def _hashes_current(ctx: Context, services: Sequence[Container]) -> bool:
    """Every container carries the configuration hash compose computes now."""
    result = ctx.host.run(ctx.compose.config_hash("*"), timeout=120)
    if not result.ok:
        return False
    hashes = {}
    for line in result.stdout.splitlines():
        name, _, digest = line.strip().partition(" ")
        if digest:
            hashes[name] = digest.strip()
    return all(hashes.get(c.service) is not None and c.labels.get(HASH_LABEL) == hashes[c.service] for c in services)


def _proxy_routes_to(ctx: Context, webs: Sequence[Container]) -> bool | None:
    """Behind a proxy: True when it runs and routes to the running web containers only
    (None without a proxy)."""
    if ctx.env.proxy is None:
        return None
    from deployer.proxy.runtime import read_routes
    from deployer.proxy.site import CONTAINER_PREFIX

    routes = read_routes(ctx.host, CONTAINER_PREFIX + ctx.app.name)
    addresses = {ip for w in webs for ip in w.ips}
    return routes.state == "running" and not routes.error and bool(routes.serving) and all(
        address in addresses for address, _ in routes.serving
    )
