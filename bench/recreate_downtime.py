"""Where the default playbook's remaining downtime comes from: the `up` step alone.

One example stack (docker-compose.prod.yml + example/, copied from this checkout) is brought
up; then the web container is recreated again and again (its image tag alternates between
two tags of the same image, so compose must recreate it) while a probe GETs /health every
20 ms. Variants of the recreate command and of the web container's start command:

  up              `compose up -d --no-build` (all services: compose re-checks the db's health)
  up-no-deps      `compose up -d --no-build --no-deps web` (what deployer's `up` step runs
                  when the database is already healthy)
  preload         `up`, with gunicorn --preload (app imported before the port is bound)

Each recreate is split with the engine's events: old container shutdown (kill -> die),
recreate (die -> new start), start -> first answer.

    .venv/bin/python bench/recreate_downtime.py [--rounds 5] [--variants up,up-no-deps,preload]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    POSTGRES_IMAGE,
    PYTHON_IMAGE,
    REPO_ROOT,
    Probe,
    ensure_bench_images,
    fmt_runs,
    free_port,
    load_now,
    machine_info,
    median,
    print_table,
    quiet,
    remove_project,
    save_result,
)
from release_downtime import Events, breakdown  # noqa: E402

VARIANTS = ("up", "up-no-deps", "preload")
PRELOAD = """\
services:
  web:
    command: ["gunicorn", "--bind", "0.0.0.0:8000", "--workers", "2", "--graceful-timeout", "20", "--preload", "--access-logfile", "-", "wsgi:app"]
"""


class Project:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.name = "benchrc" + secrets.token_hex(3)
        self.port = free_port()
        self.env = {
            **os.environ, "PYTHON_IMAGE": PYTHON_IMAGE, "POSTGRES_IMAGE": POSTGRES_IMAGE, "WEB_PORT": str(self.port),
            "RECIPES_DB_PASSWORD": secrets.token_hex(10), "WEB_IMAGE": f"{self.name}-web",
        }
        shutil.copytree(REPO_ROOT / "example", base / "example", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(REPO_ROOT / "docker-compose.prod.yml", base / "docker-compose.prod.yml")
        (base / "preload.yml").write_text(PRELOAD)

    def compose(self, *args: str, files: tuple[str, ...] = (), tag: str = "latest", timeout: float = 600) -> float:
        argv = ["docker", "compose", "-p", self.name, "--project-directory", str(self.base),
                "-f", str(self.base / "docker-compose.prod.yml")]
        for extra in files:
            argv += ["-f", str(self.base / extra)]
        started = time.monotonic()
        result = subprocess.run([*argv, *args], env={**self.env, "WEB_IMAGE_TAG": tag}, capture_output=True, text=True,
                                timeout=timeout, check=False)
        if result.returncode != 0:
            raise SystemExit(f"compose {' '.join(args)} exited {result.returncode}:\n{result.stderr[-2000:]}")
        return time.monotonic() - started

    def cleanup(self) -> None:
        remove_project(self.name)
        tags = quiet(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}", f"{self.name}-web"]).split()
        if tags:
            quiet(["docker", "rmi", *tags])
        shutil.rmtree(self.base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--save", default="recreate_downtime")
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    if set(variants) - set(VARIANTS):
        parser.error(f"variants are {', '.join(VARIANTS)}")
    info = machine_info()
    ensure_bench_images()
    rows: list[dict] = []
    project = Project(Path(tempfile.mkdtemp(prefix="deployer-bench-rc-")))
    url = f"http://127.0.0.1:{project.port}/health"
    try:
        project.compose("up", "-d", "--build", "--wait", "--wait-timeout", "120")
        for tag in ("a", "b"):
            subprocess.run(["docker", "tag", f"{project.name}-web:latest", f"{project.name}-web:{tag}"], check=True)
        flip = 0
        for round_ in range(args.rounds):
            for variant in variants[round_ % len(variants):] + variants[: round_ % len(variants)]:
                flip += 1
                tag = "ab"[flip % 2]
                files = ("preload.yml",) if variant == "preload" else ()
                command = ["up", "-d", "--no-build"] + (["--no-deps", "web"] if variant == "up-no-deps" else [])
                with Events(project.name) as events, Probe(url) as probe:
                    time.sleep(0.5)
                    seconds = project.compose(*command, files=files, tag=tag)
                    deadline = time.monotonic() + 60
                    while time.monotonic() < deadline and not (probe.samples and probe.samples[-1].ok):
                        time.sleep(0.05)
                    time.sleep(0.5)
                result = probe.result()
                split = breakdown(probe.samples, events.read())
                rows.append({"variant": variant, "command_seconds": seconds, "failed": result.failed,
                             "requests": result.requests, "longest_gap": result.longest_gap, "slowest": result.slowest,
                             "breakdown": split, "load": load_now()})
                print(f"  {variant:10s} {seconds:4.1f} s  {result.row()}  {split}", flush=True)
    finally:
        project.cleanup()
    info["load_after"] = load_now()
    table = []
    for variant in variants:
        runs = [r for r in rows if r["variant"] == variant]
        splits = [r["breakdown"] for r in runs if r["breakdown"]]
        phases = [median([b[k] for b in splits]) for k in splits[0]] if splits else []
        table.append([variant, fmt_runs([r["longest_gap"] for r in runs]), f"{median([r['failed'] for r in runs]):.0f}",
                      *(f"{p:.2f}" for p in phases[1:]), fmt_runs([r["command_seconds"] for r in runs], digits=1)])
    print_table("Recreating the web container (probe every 20 ms; phases are medians, seconds)",
                ["variant", "longest unavailable span", "failed requests", "old shutdown", "recreate", "start -> first answer",
                 "command wall time"], table)
    path = save_result(args.save, {"machine": info, "rows": rows})
    print(f"raw numbers: {path}")


if __name__ == "__main__":
    main()
