"""Overhead: `deployer release` over SSH vs a bare shell script doing the same essential work.

Both ship the same kind of change (a code change plus one migration) to the same stack on
the real engine, through a real sshd on 127.0.0.1, alternating. The bare script is one bash
script run over ONE ssh connection (`ssh -n HOST bash -c SCRIPT`):

    git fetch + checkout --force SHA            (sync)
    docker compose build                        (build)
    docker compose exec -T db pg_dump -Fc > F   (backup)
    docker compose run --rm web flask db upgrade (migrate)
    docker compose up -d --no-build --wait      (up; waits for the healthchecks, as deployer's health step does)
    psql: alembic_version == expected head; curl /health   (verify)

deployer additionally: preflight (resolve, read scripts, read the database revision), lock,
snapshot + record image tags, backup verification (pg_restore reads the whole dump), the
health step's 3 s settle period, the journal. Its per-step timings come from the journal.

    .venv/bin/python bench/release_overhead.py [--runs 3]
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    SSHServer,
    Stack,
    ensure_bench_images,
    fmt_runs,
    load_now,
    machine_info,
    median,
    print_table,
    save_result,
    stack,
    start_sshd,
)


def bare_script(s: Stack, sha: str, head: str, dump: str) -> str:
    compose = shlex.join(s.compose.base())
    server = shlex.quote(str(s.server))
    return f"""\
set -euo pipefail
cd {server}
git fetch --quiet --prune --tags --force origin
git checkout --quiet --force --detach {sha}
{compose} build --quiet
mkdir -p {shlex.quote(str(Path(dump).parent))}
{compose} exec -T db sh -c 'exec pg_dump -U "$POSTGRES_USER" -Fc "$POSTGRES_DB"' > {shlex.quote(dump)}
{compose} run --rm -T --no-deps web flask db upgrade
{compose} up -d --no-build --wait --wait-timeout 120
test "$({compose} exec -T db sh -c 'psql -U "$POSTGRES_USER" -d "$POSTGRES_DB" -tAc "SELECT version_num FROM alembic_version"')" = {head}
curl -fsS --max-time 5 {shlex.quote(s.health_url)} > /dev/null
"""


def run_bare(s: Stack, ssh: SSHServer, sha: str, round_: int) -> float:
    config = s.home / ".ssh" / "config"
    script = bare_script(s, sha, s.head, str(s.base / "server" / "bare-backups" / f"{round_}.dump"))
    started = time.monotonic()
    # The script is the remote command, not stdin: `compose exec/run -T` would swallow the rest of it.
    result = subprocess.run(["ssh", "-n", "-F", str(config), "bench", "bash -c " + shlex.quote(script)],
                            capture_output=True, text=True, timeout=900, check=False, env=s.environ())
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"the bare script failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return seconds


def command_latency(s: Stack, runs: int = 20, poll: float | None = None) -> list[float]:
    """Wall time of ``host.run(["true"])`` over one open SSHHost connection."""
    import os

    import deployer.hosts.ssh
    from deployer.hosts import connect
    from deployer.hosts.spec import parse_host

    saved_home, saved_poll = os.environ.get("HOME"), deployer.hosts.ssh._POLL_SECONDS
    os.environ["HOME"] = str(s.home)
    if poll is not None:
        deployer.hosts.ssh._POLL_SECONDS = poll
    try:
        with connect(parse_host("bench")) as host:
            times = []
            for _ in range(runs):
                started = time.monotonic()
                host.run(["true"], check=True)
                times.append(time.monotonic() - started)
            return times
    finally:
        deployer.hosts.ssh._POLL_SECONDS = saved_poll
        if saved_home is not None:
            os.environ["HOME"] = saved_home


def profile_release(s: Stack, poll: float | None = None) -> tuple[float, list[tuple[str, int, float]]]:
    """One more release, in this process, counting every command deployer runs on the host.

    ``poll`` (an experiment) replaces deployer.hosts.ssh._POLL_SECONDS, the longest wait of the
    SSH output loop, for this release only.
    """
    import os

    import deployer.hosts.ssh
    from deployer import api
    from deployer.hosts.ssh import SSHHost

    calls: list[tuple[str, float]] = []
    original = SSHHost.run

    def counted(self, argv, *args, **kwargs):  # noqa: ANN001, ANN202 - a transparent wrapper
        started = time.monotonic()
        try:
            return original(self, argv, *args, **kwargs)
        finally:
            words = [w for w in argv if not w.startswith("-")][:6]
            if words[:2] == ["docker", "compose"]:
                # docker compose --project-name P --project-directory D --file F ... VERB
                verbs = [w for w in argv[2:] if w in ("build", "up", "run", "exec", "ps", "stop", "config", "version")]
                kind = "docker compose " + (verbs[0] if verbs else "?")
                if kind == "docker compose exec":
                    kind += " " + " ".join(argv[argv.index("exec") + 1:][1:3])
            elif words[:1] == ["sh"]:
                script = argv[2]
                verbs = [w for w in ("exec", "pg_dump", "pg_restore", "sha256sum", "umask") if w in script]
                kind = "sh -c (" + " ".join(verbs) + ")"
            else:
                # the program and its verb, without paths, ids and format strings
                kept = [w for w in argv if not w.startswith(("/", "-", "sha256:")) and "{{" not in w]
                kind = " ".join(kept[:2])
            calls.append((kind, time.monotonic() - started))

    saved = {k: os.environ.get(k) for k in ("HOME", "RECIPES_DB_PASSWORD")}
    os.environ.update({"HOME": str(s.home), "RECIPES_DB_PASSWORD": s.password})
    SSHHost.run = counted  # type: ignore[method-assign]
    saved_poll = deployer.hosts.ssh._POLL_SECONDS
    if poll is not None:
        deployer.hosts.ssh._POLL_SECONDS = poll
    try:
        started = time.monotonic()
        api.release(s.env_name, config_path=s.laptop / "deploy.toml", yes=True)
        seconds = time.monotonic() - started
    finally:
        deployer.hosts.ssh._POLL_SECONDS = saved_poll
        SSHHost.run = original  # type: ignore[method-assign]
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    kinds: dict[str, list[float]] = {}
    for kind, took in calls:
        kinds.setdefault(kind, []).append(took)
    rows = sorted(((k, len(v), sum(v)) for k, v in kinds.items()), key=lambda row: -row[2])
    return seconds, rows


FAST_POLL = 0.005


def _shipped_poll() -> float:
    import deployer.hosts.ssh

    return deployer.hosts.ssh._POLL_SECONDS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--save", default="release_overhead")
    args = parser.parse_args()
    info = machine_info()
    ensure_bench_images()
    deployer_runs: list[float] = []
    bare_runs: list[float] = []
    steps: dict[str, list[float]] = {}
    ssh = start_sshd()
    try:
        with stack("ov", ssh=ssh) as s:
            print(f"stack {s.name} over ssh: first release ...", flush=True)
            s.release()
            s.wait_healthy()
            for round_ in range(args.runs):
                for variant in (("deployer", "bare") if round_ % 2 == 0 else ("bare", "deployer")):
                    sha = s.change(f"{variant}-{round_}")
                    if variant == "deployer":
                        seconds, _ = s.release()
                        deployer_runs.append(seconds)
                        for step in s.journal()[-1].get("steps", []):
                            steps.setdefault(step.get("name") or step.get("step"), []).append(float(step.get("seconds", 0)))
                    else:
                        seconds = run_bare(s, ssh, sha, round_)
                        bare_runs.append(seconds)
                    print(f"  {variant:8s} round {round_}: {seconds:5.1f} s (load {load_now()})", flush=True)
            # In this process: which commands ran, and the SSH poll experiment (alternating).
            shipped_runs: list[float] = []
            fast_runs: list[float] = []
            profile: list[tuple[str, int, float]] = []
            for round_ in range(args.runs):
                for poll in ((None, FAST_POLL) if round_ % 2 == 0 else (FAST_POLL, None)):
                    s.change(f"in-process-{round_}-{poll}")
                    seconds, rows = profile_release(s, poll=poll)
                    (fast_runs if poll else shipped_runs).append(seconds)
                    if poll is None and not profile:
                        profile, profile_seconds = rows, seconds
                    print(f"  in-process, _POLL_SECONDS={poll or _shipped_poll()}: {seconds:5.1f} s", flush=True)
            latency = command_latency(s)
            latency_fast = command_latency(s, poll=FAST_POLL)
    finally:
        ssh.stop()
    info["load_after"] = load_now()
    ratio = median(deployer_runs) / median(bare_runs)
    print_table(
        "Release overhead over SSH (code change + one migration)",
        ["", "wall time", "ratio"],
        [["bare script, one ssh connection", fmt_runs(bare_runs, digits=1), "1.00"],
         ["deployer release (default playbook)", fmt_runs(deployer_runs, digits=1), f"{ratio:.2f}x"]],
    )
    if steps:
        print_table("deployer release: median seconds per step (journal)", ["step", "seconds"],
                    [[name, f"{median(values):.2f}"] for name, values in steps.items()])
    total = sum(row[2] for row in profile)
    print_table(
        f"Commands deployer ran on the host in one release ({sum(r[1] for r in profile)} commands, "
        f"{total:.1f} s of {profile_seconds:.1f} s wall, in-process run)",
        ["command", "count", "seconds"], [[k, str(n), f"{t:.2f}"] for k, n, t in profile[:14]],
    )
    print_table(
        "Experiment: the SSH output loop's poll interval (deployer.hosts.ssh._POLL_SECONDS)",
        ["", f"as shipped ({_shipped_poll()} s)", f"{FAST_POLL} s"],
        [["`host.run(['true'])` over an open connection", fmt_runs(latency, digits=3), fmt_runs(latency_fast, digits=3)],
         ["release, in-process", fmt_runs(shipped_runs, digits=1), fmt_runs(fast_runs, digits=1)]],
    )
    path = save_result(args.save, {"machine": info, "deployer": deployer_runs, "bare": bare_runs, "ratio": ratio,
                                   "steps": steps, "profile": profile, "profile_seconds": profile_seconds,
                                   "latency": latency, "latency_fast_poll": latency_fast, "in_process_releases": shipped_runs,
                                   "fast_poll_releases": fast_runs})
    print(f"raw numbers: {path}")


if __name__ == "__main__":
    main()
