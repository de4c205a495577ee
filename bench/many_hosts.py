"""Release wall time on one host vs three (target: three ≤ 1.3× one).

Four machines of their own on this box (network, mount and host-name namespaces, each with
its own address, Docker engine, sshd and /srv; see tests/bench/machines.py): `single` is one
of them, `fleet` the other three (the first the primary, with the database; the others run
the web service and reach it). Each round commits a code change plus one migration and
releases it to both environments, in alternating order; the same deploy.toml, the same
compose file, over SSH. The three hosts' sync and build run side by side, the migration
once on the primary, then the switch: rounds alternate between the two rollouts a user
chooses from — all three hosts in one batch (`rollout = {batch = 3}`), and host by host
(`rollout = {batch = 1, pause = 0}`: each further batch adds its switch and health check).

    .venv/bin/python bench/many_hosts.py [--runs 3]    # 3 rounds of each rollout

Needs root (namespaces, veth, extra dockerd): as the test bench does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ensure_bench_images, fmt_runs, load_now, machine_info, median, print_table, save_result  # noqa: E402

from tests.bench.deployment import EXAMPLE_HEAD, add_migration  # noqa: E402
from tests.bench.docker import POSTGRES_IMAGE, PYTHON_IMAGE, free_port  # noqa: E402
from tests.bench.fleet import COMPOSE, Fleet, deploy_toml, ssh_home  # noqa: E402
from tests.bench.gitrepos import make_origin  # noqa: E402
from tests.bench.machines import known_hosts, machines, sshd_config  # noqa: E402
from tests.bench.sshd import write_ed25519_key  # noqa: E402


class _Key:
    """What the machines' sshd config needs of the bench: a key pair."""

    def __init__(self, directory: Path) -> None:
        self.key_path = directory / "bench_key"
        write_ed25519_key(self.key_path, "many-hosts-bench")


def release(fleet: Fleet, env: str) -> tuple[float, dict]:
    started = time.monotonic()
    result = fleet.deployer("release", env, "--yes", "--json")
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"release to {env} failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return seconds, json.loads(result.stdout)["result"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--save", default="many_hosts")
    args = parser.parse_args()
    info = machine_info()
    ensure_bench_images()
    base = Path(tempfile.mkdtemp(prefix="deployer-bench-fleet-"))
    rollouts = {"batch3": "{batch = 3}", "batch1": "{batch = 1, pause = 0}"}
    times: dict[str, list[float]] = {"single": [], "batch3": [], "batch1": []}
    steps: dict[str, dict[str, list[float]]] = {name: {} for name in times}
    try:
        with machines(4, base / "set", sshd_config=sshd_config(_Key(base), base)) as made:  # type: ignore[arg-type]
            known_hosts(made, base / "set" / "known_hosts")
            for machine in made:
                machine.load_images(PYTHON_IMAGE, POSTGRES_IMAGE)
            origin = make_origin(base / "origin", {"docker-compose.prod.yml": COMPOSE})
            laptop = origin.clone(base / "laptop")
            fleet = Fleet(made[:3], laptop, ssh_home(base, made, base / "bench_key"), "pw-" + secrets.token_hex(8),
                          free_port())
            environments = {"single": made[3:], "fleet": made[:3]}
            fleet.commit({"deploy.toml": deploy_toml(fleet, environments=environments)}, "two environments")
            for env in environments:
                print(f"{env}: first release ...", flush=True)
                release(fleet, env)
            down = EXAMPLE_HEAD
            for round_ in range(2 * args.runs):
                variant = ("batch3", "batch1")[round_ % 2]
                revision = f"be0c{round_:08d}"
                files = add_migration(revision, down, f"bench column {round_}",
                                      [f'op.add_column("users", sa.Column("bench_{round_}", sa.String(20)))'],
                                      [f'op.drop_column("users", "bench_{round_}")'])
                files["example/BENCH.txt"] = f"round {round_}\n"
                files["deploy.toml"] = deploy_toml(fleet, environments=environments, rollout=rollouts[variant])
                fleet.commit(files, f"round {round_}: code and a migration")
                down = revision
                for env in (("single", "fleet") if round_ % 4 < 2 else ("fleet", "single")):
                    seconds, outcome = release(fleet, env)
                    name = env if env == "single" else variant
                    times[name].append(seconds)
                    for step in outcome["steps"]:
                        steps[name].setdefault(step["name"], []).append(float(step["seconds"]))
                    print(f"  round {round_} {name:6s}: {seconds:5.1f} s (load {load_now()})", flush=True)
            with contextlib.suppress(subprocess.SubprocessError):
                for env in environments:
                    fleet.deployer("status", env)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    info["load_after"] = load_now()
    ratios = {name: median(times[name]) / median(times["single"]) for name in ("batch3", "batch1")}
    print_table("Release wall time: one host vs three (code change + one migration, over SSH)",
                ["environment", "wall time", "ratio"],
                [["one host", fmt_runs(times["single"], digits=1), "1.00"],
                 ["three hosts, one batch (`rollout = {batch = 3}`)", fmt_runs(times["batch3"], digits=1),
                  f"{ratios['batch3']:.2f}x"],
                 ["three hosts, host by host (`rollout = {batch = 1}`)", fmt_runs(times["batch1"], digits=1),
                  f"{ratios['batch1']:.2f}x"]])
    names = list(steps["batch1"])
    print_table("Median seconds per step on the primary (its journal; host by host, the others' switch follows "
                "in their batches)", ["step", "one host", "three, one batch", "three, host by host"],
                [[n, *(f"{median(steps[v].get(n, [])):.2f}" for v in ("single", "batch3", "batch1"))] for n in names])
    path = save_result(args.save, {"machine": info, "times": times, "ratios": ratios, "steps": steps})
    print(f"raw numbers: {path}")


if __name__ == "__main__":
    main()
