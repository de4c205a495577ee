"""Run every benchmark one after the other (never in parallel: they share the cores) and
print their tables, preceded by the machine they ran on.

    .venv/bin/python bench/run_all.py [--quick]

Each script's full output is also kept in bench/results/NAME.txt (not committed).
--quick runs fewer repetitions (for checking that the scripts work, not for numbers).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO_ROOT, load_now, machine_info  # noqa: E402

BENCH = REPO_ROOT / "bench"
# name, arguments for a full run, arguments for --quick
SCRIPTS = (
    ("startup", ["--runs", "15"], ["--runs", "3"]),
    ("release_downtime", ["--rounds", "3"], ["--rounds", "1", "--proxy-releases", "5"]),
    ("recreate_downtime", ["--rounds", "5"], ["--rounds", "1"]),
    ("release_overhead", ["--runs", "3"], ["--runs", "1"]),
    ("status_latency", [], []),  # its own defaults (it takes STATUS_BENCH_RUNS from the environment)
    ("backup_throughput", ["--runs", "3"], ["--rows", "100000", "--runs", "1"]),
    ("mysql_backup", ["--runs", "3"], ["--rows", "100000", "--runs", "1"]),
    ("many_hosts", ["--runs", "3"], ["--runs", "1"]),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="", help="comma-separated script names")
    args = parser.parse_args()
    only = {n for n in args.only.split(",") if n}
    info = machine_info()
    print("## Machine\n")
    for key, value in info.items():
        print(f"- {key}: {value}")
    print(flush=True)
    results = BENCH / "results"
    results.mkdir(exist_ok=True)
    failed = []
    for name, full, quick in SCRIPTS:
        script = BENCH / f"{name}.py"
        if (only and name not in only) or not script.exists():
            if not script.exists():
                print(f"## {name}: bench/{name}.py does not exist (skipped)\n", flush=True)
            continue
        print(f"## {name} (load before: {load_now()})\n", flush=True)
        started = time.monotonic()
        result = subprocess.run([sys.executable, str(script), *(quick if args.quick else full)], cwd=REPO_ROOT,
                                capture_output=True, text=True, check=False)
        (results / f"{name}.txt").write_text(result.stdout + result.stderr)
        print(result.stdout)
        if result.returncode != 0:
            failed.append(name)
            print(f"FAILED (exit {result.returncode}):\n{result.stderr[-3000:]}")
        print(f"({time.monotonic() - started:.0f} s; load after: {load_now()})\n", flush=True)
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
