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
snapshot + record image tags, the migration gate's SQL render, the backup's restore
verification (restored into a scratch database beside the steps after the backup; its
verdict kept after the record), the health step's 3 s settle period, the journal. Its
per-step timings come from the journal (and, after the record, from the outcome).

    .venv/bin/python bench/release_overhead.py [--runs 3]
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
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


def command_latency(s: Stack, runs: int = 20) -> list[float]:
    """Wall time of ``host.run(["true"])`` over one open SSHHost connection."""
    import os

    from deployer.hosts import connect
    from deployer.hosts.spec import parse_host

    saved_home = os.environ.get("HOME")
    os.environ["HOME"] = str(s.home)
    try:
        with connect(parse_host("bench")) as host:
            host.run(["true"], check=True)  # the first one starts the command shell
            times = []
            for _ in range(runs):
                started = time.monotonic()
                host.run(["true"], check=True)
                times.append(time.monotonic() - started)
            return times
    finally:
        if saved_home is not None:
            os.environ["HOME"] = saved_home


def _kind(argv: list[str]) -> str:
    """A command's program and verb, without paths, ids and format strings."""
    words = [w for w in argv if not w.startswith("-")][:6]
    if words[:2] == ["docker", "compose"]:
        # docker compose --project-name P --project-directory D --file F ... VERB
        verbs = [w for w in argv[2:] if w in ("build", "up", "run", "exec", "ps", "stop", "config", "version")]
        kind = "docker compose " + (verbs[0] if verbs else "?")
        if kind == "docker compose exec":
            kind += " " + " ".join(argv[argv.index("exec") + 1:][1:3])
        return kind
    if words[:1] == ["sh"]:
        script = argv[2]
        verbs = [w for w in ("exec", "pg_dump", "pg_restore", "sha256sum", "umask", "docker inspect") if w in script]
        return "sh -c (" + " ".join(verbs) + ")"
    kept = [w for w in argv if not w.startswith(("/", "-", "sha256:")) and "{{" not in w]
    return " ".join(kept[:2])


@dataclass
class Profile:
    seconds: float
    commands: list[tuple[str, int, float]]  # kind, count, seconds
    channels: dict[str, int]  # SSH channels opened, by kind: session, direct-tcpip
    engine_calls: int


def profile_release(s: Stack) -> Profile:
    """One more release, in this process, counting every command deployer runs on the host,
    every SSH channel it opens (sessions: command shells, lone commands, file copies, the
    lock's lease, the engine stream; direct-tcpip: tunnels to health URLs and the database)
    and every engine API call."""
    import os

    import paramiko

    from deployer import api
    from deployer.hosts.dockerapi import Engine
    from deployer.hosts.ssh import SSHHost

    calls: list[tuple[str, float]] = []
    channels: dict[str, int] = {}
    engine_calls = [0]
    original_run, original_open, original_get = SSHHost.run, paramiko.Transport.open_channel, Engine.get

    def counted_run(self, argv, *args, **kwargs):  # noqa: ANN001, ANN202 - transparent wrappers
        started = time.monotonic()
        try:
            return original_run(self, argv, *args, **kwargs)
        finally:
            calls.append((_kind(list(argv)), time.monotonic() - started))

    def counted_open(self, kind, *args, **kwargs):  # noqa: ANN001, ANN202
        channels[kind] = channels.get(kind, 0) + 1
        return original_open(self, kind, *args, **kwargs)

    def counted_get(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        engine_calls[0] += 1
        return original_get(self, *args, **kwargs)

    saved = {k: os.environ.get(k) for k in ("HOME", "RECIPES_DB_PASSWORD")}
    os.environ.update({"HOME": str(s.home), "RECIPES_DB_PASSWORD": s.password})
    SSHHost.run = counted_run  # type: ignore[method-assign]
    paramiko.Transport.open_channel = counted_open  # type: ignore[method-assign]
    Engine.get = counted_get  # type: ignore[method-assign]
    try:
        started = time.monotonic()
        api.release(s.env_name, config_path=s.laptop / "deploy.toml", yes=True)
        seconds = time.monotonic() - started
    finally:
        SSHHost.run = original_run  # type: ignore[method-assign]
        paramiko.Transport.open_channel = original_open  # type: ignore[method-assign]
        Engine.get = original_get  # type: ignore[method-assign]
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    kinds: dict[str, list[float]] = {}
    for kind, took in calls:
        kinds.setdefault(kind, []).append(took)
    rows = sorted(((k, len(v), sum(v)) for k, v in kinds.items()), key=lambda row: -row[2])
    return Profile(seconds, rows, channels, engine_calls[0])


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
    verifications: list[float] = []
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
                        seconds, doc = s.release()
                        deployer_runs.append(seconds)
                        for step in s.journal()[-1].get("steps", []):
                            steps.setdefault(step.get("name") or step.get("step"), []).append(float(step.get("seconds", 0)))
                        # After the record (not journaled): the wait for the backup's verdict, and the
                        # verification's own time, spent beside the steps since the backup.
                        outcome = doc.get("result", doc)
                        for step in outcome.get("steps", []):
                            if step.get("name") == "verify_backup":
                                steps.setdefault("verify_backup (after the record: its verdict)", []).append(
                                    float(step.get("seconds", 0)))
                        verdict = outcome.get("backup_verification") or {}
                        if verdict.get("state") != "verified":
                            raise SystemExit(f"the release's backup was not restore-verified: {verdict}")
                        verifications.append(float(verdict.get("seconds", 0)))
                    else:
                        seconds = run_bare(s, ssh, sha, round_)
                        bare_runs.append(seconds)
                    print(f"  {variant:8s} round {round_}: {seconds:5.1f} s (load {load_now()})", flush=True)
            # The same commit again: nothing to build, migrate or swap.
            noop_runs = []
            for _ in range(args.runs):
                seconds, _ = s.release()
                noop_runs.append(seconds)
                print(f"  deployer, nothing to do: {seconds:5.1f} s", flush=True)
            # In this process: which commands ran, which channels were opened.
            profiles = []
            for round_ in range(args.runs):
                s.change(f"in-process-{round_}")
                profiles.append(profile_release(s))
                print(f"  in-process: {profiles[-1].seconds:5.1f} s, channels {profiles[-1].channels}", flush=True)
            latency = command_latency(s)
    finally:
        ssh.stop()
    info["load_after"] = load_now()
    ratio = median(deployer_runs) / median(bare_runs)
    print_table(
        "Release overhead over SSH (code change + one migration)",
        ["", "wall time", "ratio"],
        [["bare script, one ssh connection", fmt_runs(bare_runs, digits=1), "1.00"],
         ["deployer release (default playbook)", fmt_runs(deployer_runs, digits=1), f"{ratio:.2f}x"],
         ["deployer release of the commit already running", fmt_runs(noop_runs, digits=1), "–"]],
    )
    if steps:
        rows = [[name, f"{median(values):.2f}"] for name, values in steps.items()]
        if verifications:
            rows.append(["(the backup's restore verification itself, beside migrate … record)",
                         f"{median(verifications):.2f}"])
        print_table("deployer release: median seconds per step (journal; the outcome after the record)",
                    ["step", "seconds"], rows)
    profile = profiles[0]
    total = sum(row[2] for row in profile.commands)
    print_table(
        f"Commands deployer ran on the host in one release ({sum(r[1] for r in profile.commands)} commands, "
        f"{total:.1f} s of {profile.seconds:.1f} s wall, in-process run)",
        ["command", "count", "seconds"], [[k, str(n), f"{t:.2f}"] for k, n, t in profile.commands[:14]],
    )
    print_table(
        "SSH channels and engine calls per release (in-process runs)",
        ["release", "sessions", "tunnels (direct-tcpip)", "commands", "engine API calls", "wall"],
        [[str(n + 1), str(p.channels.get("session", 0)), str(p.channels.get("direct-tcpip", 0)),
          str(sum(r[1] for r in p.commands)), str(p.engine_calls), f"{p.seconds:.1f} s"] for n, p in enumerate(profiles)],
    )
    print_table("`host.run(['true'])` over an open connection", ["", "wall time"],
                [["median of 20", fmt_runs(latency, digits=4)]])
    path = save_result(args.save, {"machine": info, "deployer": deployer_runs, "bare": bare_runs, "ratio": ratio,
                                   "steps": steps, "verifications": verifications, "latency": latency, "nothing_to_do": noop_runs,
                                   "profiles": [{"seconds": p.seconds, "commands": p.commands, "channels": p.channels,
                                                 "engine_calls": p.engine_calls} for p in profiles]})
    print(f"raw numbers: {path}")


if __name__ == "__main__":
    main()
