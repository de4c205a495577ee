"""Downtime during a release: a probe GETs /health every 20 ms while a release ships a code
change plus one migration. Compared on the same kind of change, in the same run, on one stack:

  manual   the tutorial's sequence as shell commands: git fetch + checkout, `compose stop`,
           `build`, `up -d`, `run --rm web flask db upgrade`
  classic  `deployer release --playbook classic` (the same order, with deployer's safety)
  default  `deployer release` (build while the old container serves, migrate, then recreate)

Rounds rotate the order of the variants. For the default playbook the unavailable span is
split with the engine's events (docker events) into: last answer -> stop signal, the old
container's shutdown, recreate (die -> start of the new container), and start -> first answer.

    .venv/bin/python bench/release_downtime.py [--rounds 3] [--variants manual,classic,default]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    Probe,
    Stack,
    ensure_bench_images,
    fmt_runs,
    load_now,
    machine_info,
    median,
    print_table,
    save_result,
    stack,
    stop_process,
)

VARIANTS = ("manual", "classic", "default")


def manual_release(s: Stack, sha: str) -> None:
    """The seed's manual sequence, as an operator types it on the server."""
    c = s.compose
    path = str(s.server)
    s.run(["git", "-C", path, "fetch", "--quiet", "origin"])
    s.run(["git", "-C", path, "checkout", "--quiet", "--force", "--detach", sha])
    s.run(c.stop())
    s.run(c.build())
    s.run([*c.base(), "up", "-d"])
    s.run([*c.base(), "run", "--rm", "-T", "web", "flask", "db", "upgrade"])


class Events:
    """``docker events`` of the project's web service while a release runs (timestamps in seconds)."""

    def __init__(self, project: str) -> None:
        self.project = project
        self.process: subprocess.Popen[str] | None = None

    def __enter__(self) -> Events:
        self.process = subprocess.Popen(
            ["docker", "events", "--format", "{{json .}}", "--filter", "type=container",
             "--filter", f"label=com.docker.compose.project={self.project}",
             "--filter", "label=com.docker.compose.service=web"],
            stdout=subprocess.PIPE, text=True,
        )
        time.sleep(0.3)  # the subscription is live before the release starts
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        stop_process(self.process)

    def read(self) -> list[tuple[float, str, str]]:
        """(time, action, container id) of what was emitted (call after the context exited)."""
        assert self.process is not None and self.process.stdout is not None
        events = []
        for line in self.process.stdout.read().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if "com.docker.compose.oneoff" in event.get("Actor", {}).get("Attributes", {}) and \
                    event["Actor"]["Attributes"]["com.docker.compose.oneoff"] == "True":
                continue  # the migration's one-off container
            events.append((event["timeNano"] / 1e9, event.get("Action", event.get("status", "")), event.get("id", "")[:12]))
        return events


def breakdown(samples: list, events: list[tuple[float, str, str]]) -> dict[str, float] | None:
    """Split the default playbook's outage at the engine's events of the web container."""
    first_fail = next((i for i, s in enumerate(samples) if not s.ok), None)
    if first_fail is None:
        return None
    last_ok = samples[first_fail - 1].end if first_fail else samples[0].start
    first_ok_after = next((s.end for s in samples[first_fail:] if s.ok), None)
    kill = next((t for t, a, _ in events if a == "kill"), None)
    die = next((t for t, a, _ in events if a == "die"), None)
    start = next((t for t, a, _ in events if a == "start"), None)
    if None in (kill, die, start, first_ok_after):
        return None
    return {
        "last answer -> stop signal": kill - last_ok,
        "old container shutdown (kill -> die)": die - kill,
        "recreate (die -> new container start)": start - die,
        "start -> first answer": first_ok_after - start,
    }


def measure(s: Stack, variant: str, label: str) -> dict:
    sha = s.change(label)
    with Events(s.name) as events, Probe(s.health_url) as probe:
        time.sleep(1.0)
        started = time.monotonic()
        if variant == "manual":
            manual_release(s, sha)
        elif variant == "classic":
            s.release("--playbook", "classic")
        else:
            s.release()
        wall = time.monotonic() - started
        # Keep probing until the site answers again, then one more second.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (probe.samples and probe.samples[-1].ok):
            time.sleep(0.05)
        time.sleep(1.0)
    result = probe.result()
    split = breakdown(probe.samples, events.read()) if variant == "default" else None
    row = {"variant": variant, "wall": wall, "requests": result.requests, "failed": result.failed,
           "longest_gap": result.longest_gap, "slowest": result.slowest, "load": load_now(), "breakdown": split}
    print(f"  {variant:8s} {label}: wall {wall:5.1f} s, {result.row()}" + (f"; {split}" if split else ""), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--save", default="release_downtime", help="name of the raw results file in bench/results/")
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")

    info = machine_info()
    ensure_bench_images()
    rows: list[dict] = []
    with stack("dt") as s:
        print(f"stack {s.name}: first release ...", flush=True)
        s.release()
        s.wait_healthy()
        for round_ in range(args.rounds):
            order = variants[round_ % len(variants):] + variants[: round_ % len(variants)]
            for variant in order:
                rows.append(measure(s, variant, f"{variant}-{round_}"))
    info["load_after"] = load_now()

    table = []
    by_variant = {v: [r for r in rows if r["variant"] == v] for v in variants}
    manual_gap = median([r["longest_gap"] for r in by_variant.get("manual", [])]) if "manual" in by_variant else None
    for variant, runs in by_variant.items():
        gap = median([r["longest_gap"] for r in runs])
        share = f"{100 * gap / manual_gap:.0f} %" if manual_gap else "–"
        table.append([
            variant,
            fmt_runs([r["longest_gap"] for r in runs]),
            f"{median([r['failed'] for r in runs]):.0f} of {median([r['requests'] for r in runs]):.0f}",
            fmt_runs([r["slowest"] for r in runs]),
            share,
            fmt_runs([r["wall"] for r in runs], digits=1),
        ])
    print_table(
        "Downtime during a release (probe every 20 ms)",
        ["variant", "longest unavailable span", "failed requests (median)", "slowest successful answer", "vs manual", "release wall time"],
        table,
    )
    splits = [r["breakdown"] for r in by_variant.get("default", []) if r["breakdown"]]
    if splits:
        print_table("Where the default playbook's outage goes (medians)", ["phase", "seconds"],
                    [[k, f"{median([b[k] for b in splits]):.2f}"] for k in splits[0]])
    path = save_result(args.save, {"machine": info, "rows": rows})
    print(f"raw numbers: {path}")


if __name__ == "__main__":
    main()
