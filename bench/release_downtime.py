"""Downtime during a release: a probe GETs / (the recipe list: it reads every mapped column)
every 20 ms and a writer POSTs /api/users every 100 ms while releases run. In one run:

  manual    the tutorial's sequence as shell commands: git fetch + checkout, `compose stop`,
            `build`, `up -d`, `run --rm web flask db upgrade`
  classic   `deployer release --playbook classic` (the same order, with deployer's safety)
  recreate  `deployer release` without a proxy: build while the old container serves,
            migrate, then compose recreates the web container (stop, then start)
  proxy     `deployer release` behind deployer's proxy: `--proxy-releases` (default 20)
            consecutive operations mixing code-only releases, additive migrations (overlap),
            breaking migrations (a column the running code reads is dropped: pause mode)
            and rollbacks (one of each swap mode)

manual/classic/recreate each ship a code change plus one additive migration, in rounds
that rotate their order. For the recreate variant the unavailable span is split with the
engine's events (docker events). Every write answered 201 must be in the database after.

    .venv/bin/python bench/release_downtime.py [--rounds 3] [--variants manual,classic,recreate,proxy]
        [--proxy-releases 20]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    Probe,
    Stack,
    add_migration,
    ensure_bench_images,
    fmt_runs,
    git,
    load_now,
    machine_info,
    median,
    print_table,
    save_result,
    stack,
    stop_process,
)

VARIANTS = ("manual", "classic", "recreate", "proxy")


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


class Writer:
    """POST /api/users every ``interval`` seconds (a new email each time), recording each answer."""

    def __init__(self, port: int, prefix: str, interval: float = 0.1) -> None:
        self.url = f"http://127.0.0.1:{port}/api/users"
        self.prefix = prefix
        self.interval = interval
        self.created: list[str] = []
        self.failed: list[str] = []
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            email = f"{self.prefix}-{n}@bench.example"
            body = json.dumps({"email": email, "name": "bench"}).encode()
            request = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"}, method="POST")
            started = time.monotonic()
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    ok = response.status == 201
            except urllib.error.HTTPError as error:
                ok = False
                self.failed.append(f"HTTP {error.code}")
            except (OSError, ValueError) as error:
                ok = False
                self.failed.append(type(error).__name__)
            self.latencies.append(time.monotonic() - started)
            if ok:
                self.created.append(email)
            self._stop.wait(self.interval)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=70)


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0


def observe(s: Stack, label: str, action: Callable[[], object], *, events: bool = False) -> dict:
    """Run ``action`` under the probe and the writer; the row of what they saw."""
    recorder = Events(s.name) if events else contextlib.nullcontext()
    with recorder as watched, Probe(f"http://127.0.0.1:{s.web_port}/", timeout=60) as probe, \
            Writer(s.web_port, f"{s.name}-{'-'.join(label.split())}") as writer:
        time.sleep(1.0)
        started = time.monotonic()
        outcome = action()
        wall = time.monotonic() - started
        # Keep probing until the site answers again, then one more second.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (probe.samples and probe.samples[-1].ok):
            time.sleep(0.05)
        time.sleep(1.0)
    result = probe.result()
    latencies = [x.end - x.start for x in probe.samples]
    split = breakdown(probe.samples, watched.read()) if events and isinstance(watched, Events) else None
    row = {"wall": wall, "requests": result.requests, "failed": result.failed, "longest_gap": result.longest_gap,
           "slowest": max(latencies, default=0.0), "p99": p99(latencies), "writes": len(writer.created) + len(writer.failed),
           "writes_failed": len(writer.failed), "write_p99": p99(writer.latencies),
           "write_max": max(writer.latencies, default=0.0), "created": writer.created, "load": load_now(),
           "breakdown": split, "outcome": outcome}
    print(f"  {label:28s} wall {wall:5.1f} s, {result.row()}, p99 {row['p99'] * 1000:.0f} ms, "
          f"max {row['slowest'] * 1000:.0f} ms; writes {row['writes_failed']}/{row['writes']} failed"
          + (f"; {split}" if split else "") + (f"; deployer: {outcome}" if outcome else ""), flush=True)
    return row


def baseline(s: Stack, variant: str, label: str) -> dict:
    sha = s.change(label)
    if variant == "manual":
        action: Callable[[], object] = lambda: manual_release(s, sha)  # noqa: E731
    elif variant == "classic":
        action = lambda: s.release("--playbook", "classic") and None  # noqa: E731
    else:
        action = lambda: s.release() and None  # noqa: E731
    row = observe(s, f"{variant} {label}", action, events=variant == "recreate")
    return {"variant": variant, "kind": "code + additive migration", **row}


MODEL = "example/recipes/models.py"
ANCHOR = "    inspiration = db.Column(db.String, default=None, nullable=True)\n"


class Mix:
    """Consecutive operations on a stack behind the proxy, each a kind a real app ships."""

    def __init__(self, s: Stack) -> None:
        self.s = s
        self.n = 0

    def commit(self, files: dict[str, str], message: str) -> None:
        for path, text in files.items():
            target = self.s.laptop / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        git("add", "-A", cwd=self.s.laptop)
        git("commit", "-q", "-m", message, cwd=self.s.laptop)
        git("push", "-q", "origin", "HEAD:main", cwd=self.s.laptop)

    def served(self, seconds_and_doc: tuple[float, dict]) -> str:
        doc = seconds_and_doc[1]
        result = doc.get("result", doc)
        swap = next((step["detail"].split(";")[0] for step in result.get("steps", []) if step["name"] == "swap"), "")
        return f"{swap}; {result.get('served')}"

    def code_only(self) -> str:
        self.n += 1
        self.commit({"example/recipes/bench_change.py": f'CHANGE = "code {self.n}"\n'}, f"bench: code-only {self.n}")
        return self.served(self.s.release())

    def additive(self) -> str:
        """A nullable column the new code maps (and reads on every page)."""
        self.n += 1
        revision = secrets.token_hex(6)
        column = f"extra_{revision}"
        model = (self.s.laptop / MODEL).read_text().replace(ANCHOR, ANCHOR + f"    {column} = db.Column(db.String, nullable=True)\n")
        self.commit({MODEL: model, **add_migration(revision, self.s.head, f"add {column}",
                                                   [f"op.add_column('recipes', sa.Column('{column}', sa.String(), nullable=True))"],
                                                   [f"op.drop_column('recipes', '{column}')"])}, f"bench: add {column}")
        self.s.head = revision
        return self.served(self.s.release())

    def breaking(self) -> str:
        """Drop the newest extra column: the code that runs reads it (pause mode)."""
        self.n += 1
        model = (self.s.laptop / MODEL).read_text()
        lines = model.splitlines(keepends=True)
        index = max(i for i, line in enumerate(lines) if line.startswith("    extra_"))
        column = lines[index].split("=")[0].strip()
        revision = secrets.token_hex(6)
        self.commit({MODEL: "".join(lines[:index] + lines[index + 1:]),
                     **add_migration(revision, self.s.head, f"drop {column}", [f"op.drop_column('recipes', '{column}')"],
                                     [f"op.add_column('recipes', sa.Column('{column}', sa.String(), nullable=True))"])},
                    f"bench: drop {column}")
        self.s.head = revision
        return self.served(self.s.release())

    def rollback(self) -> str:
        """Back to the previous release, then the branch follows (the change is reverted)."""
        seconds, result = self.s.deployer("rollback", self.s.env_name, "previous", "--yes", "--json")
        if result.returncode != 0:
            raise SystemExit(f"deployer rollback failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        git("revert", "--no-edit", "HEAD", cwd=self.s.laptop)
        git("push", "-q", "origin", "HEAD:main", cwd=self.s.laptop)
        doc = json.loads(result.stdout)
        self.s.head = (doc["result"].get("revision_after") or [self.s.head])[0]
        return self.served((seconds, doc))

    # The order: every kind, both swap modes, rollbacks in both modes.
    CYCLE = ("code_only", "additive", "breaking", "rollback", "code_only",
             "additive", "rollback", "code_only", "additive", "breaking")


def run_mix(s: Stack, operations: int) -> list[dict]:
    mix = Mix(s)
    rows = []
    for index in range(operations):
        kind = Mix.CYCLE[index % len(Mix.CYCLE)]
        row = observe(s, f"proxy {index + 1:2d} {kind}", getattr(mix, kind))
        rows.append({"variant": "proxy", "kind": kind, **row})
    return rows


def lost_writes(s: Stack, rows: list[dict]) -> int:
    """Writes answered 201 that are not in the database."""
    created = {email for row in rows for email in row["created"]}
    if not created:
        return 0
    found = subprocess.run(
        [*s.compose.base(), "exec", "-T", "db", "psql", "-U", "recipes", "-d", "recipes", "-At", "-c",
         "SELECT email FROM users WHERE email LIKE '%@bench.example'"],
        env=s.environ(), capture_output=True, text=True, check=True).stdout.splitlines()
    return len(created - set(found))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--proxy-releases", type=int, default=20)
    parser.add_argument("--save", default="release_downtime", help="name of the raw results file in bench/results/")
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")

    info = machine_info()
    ensure_bench_images()
    rows: list[dict] = []
    lost = 0
    plain = [v for v in variants if v != "proxy"]
    if plain:
        with stack("dt") as s:
            print(f"stack {s.name}: first release ...", flush=True)
            s.release()
            s.wait_healthy()
            for round_ in range(args.rounds):
                order = plain[round_ % len(plain):] + plain[: round_ % len(plain)]
                for variant in order:
                    rows.append(baseline(s, variant, f"{variant}-{round_}"))
            lost += lost_writes(s, [r for r in rows if r["variant"] in plain])
    if "proxy" in variants:
        with stack("zd", proxy=True) as s:
            print(f"stack {s.name} (behind the proxy): first release ...", flush=True)
            s.release()
            s.wait_healthy()
            proxied = run_mix(s, args.proxy_releases)
            rows += proxied
            lost += lost_writes(s, proxied)
    info["load_after"] = load_now()

    table = []
    by_variant = {v: [r for r in rows if r["variant"] == v] for v in variants}
    for variant, runs in by_variant.items():
        if not runs:
            continue
        table.append([
            variant, str(len(runs)),
            f"{sum(r['failed'] for r in runs)} of {sum(r['requests'] for r in runs)}",
            f"{sum(r['writes_failed'] for r in runs)} of {sum(r['writes'] for r in runs)}",
            fmt_runs([r["longest_gap"] for r in runs]),
            f"{median([r['p99'] for r in runs]) * 1000:.0f} ms",
            f"{max(r['slowest'] for r in runs) * 1000:.0f} ms",
            fmt_runs([r["wall"] for r in runs], digits=1),
        ])
    print_table(
        "Requests during releases (GET / every 20 ms, POST /api/users every 100 ms)",
        ["variant", "operations", "failed GETs (sum)", "failed writes (sum)", "longest unavailable span",
         "p99 GET (median of runs)", "slowest GET", "wall time"],
        table,
    )
    proxied = by_variant.get("proxy") or []
    if proxied:
        kinds = {}
        for row in proxied:
            kinds.setdefault(row["kind"], []).append(row)
        print_table("Behind the proxy, by kind of operation", ["kind", "operations", "failed GETs", "failed writes", "p99 GET",
                                                               "slowest GET", "slowest write", "wall time"],
                    [[kind, str(len(rs)), str(sum(r["failed"] for r in rs)), str(sum(r["writes_failed"] for r in rs)),
                      f"{max(r['p99'] for r in rs) * 1000:.0f} ms", f"{max(r['slowest'] for r in rs) * 1000:.0f} ms",
                      f"{max(r['write_max'] for r in rs) * 1000:.0f} ms", fmt_runs([r["wall"] for r in rs], digits=1)]
                     for kind, rs in kinds.items()])
    splits = [r["breakdown"] for r in by_variant.get("recreate", []) if r["breakdown"]]
    if splits:
        print_table("Where the recreate order's outage goes (medians)", ["phase", "seconds"],
                    [[k, f"{median([b[k] for b in splits]):.2f}"] for k in splits[0]])
    print(f"writes answered 201 and missing from the database: {lost}")
    for row in rows:
        row.pop("created", None)
    path = save_result(args.save, {"machine": info, "rows": rows, "lost_writes": lost})
    print(f"raw numbers: {path}")


if __name__ == "__main__":
    main()
