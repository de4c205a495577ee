"""Start-up: wall time of `deployer --help` and `deployer release --help` (median of N runs),
next to the bare interpreter and `import typer`, plus what `python -X importtime` says is slow.

    .venv/bin/python bench/startup.py [--runs 15] [--top 12]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO_ROOT, fmt_runs, load_now, machine_info, median, print_table, save_result  # noqa: E402

RELEASE_IMPORTS = "import deployer.api, deployer.engine, deployer.steps, deployer.hosts.ssh, deployer.server.health, deployer.server.backups"


def entry_point() -> list[str]:
    """The installed console script next to this interpreter, else `python -m deployer`."""
    script = Path(sys.executable).with_name("deployer")
    return [str(script)] if script.exists() else [sys.executable, "-m", "deployer"]


def wall(argv: list[str], runs: int) -> list[float]:
    # As an installed deployer starts: from compiled .pyc files (pip compiles them), so
    # PYTHONDONTWRITEBYTECODE is dropped and the warm-up run writes them.
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}, "COLUMNS": "100"}
    times = []
    subprocess.run(argv, capture_output=True, env=env, check=False, cwd=REPO_ROOT)  # warm the page cache and .pyc
    for _ in range(runs):
        started = time.perf_counter()
        result = subprocess.run(argv, capture_output=True, env=env, check=False, cwd=REPO_ROOT)
        times.append(time.perf_counter() - started)
        if result.returncode != 0:
            raise SystemExit(f"`{' '.join(argv)}` exited {result.returncode}: {result.stderr.decode()[-1000:]}")
    return times


def import_times(args: list[str], top: int) -> list[tuple[str, float, float]]:
    """(module, self ms, cumulative ms) of the slowest packages and deployer modules, median of 3 runs."""
    runs: list[dict[str, tuple[float, float, int]]] = []
    for _ in range(3):
        result = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True,
                                text=True, check=False, cwd=REPO_ROOT)
        table: dict[str, tuple[float, float, int]] = {}
        for line in result.stderr.splitlines():
            match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
            if match:
                depth = len(match.group(3)) // 2
                table[match.group(4)] = (int(match.group(1)) / 1000, int(match.group(2)) / 1000, depth)
        runs.append(table)
    # Packages (where they are first imported, at any depth) and deployer's own modules.
    names = [n for n in runs[0] if "." not in n or n.startswith("deployer.") or n == "typer._adapters"]
    rows = [(n, median([r[n][0] for r in runs if n in r]), median([r[n][1] for r in runs if n in r])) for n in names]
    return sorted(rows, key=lambda row: -row[2])[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--save", default="startup")
    args = parser.parse_args()
    info = machine_info()
    deployer = entry_point()
    measured = {
        "python -c pass": wall([sys.executable, "-c", "pass"], args.runs),
        "python -c 'import typer'": wall([sys.executable, "-c", "import typer"], args.runs),
        "deployer --help": wall([*deployer, "--help"], args.runs),
        "deployer release --help": wall([*deployer, "release", "--help"], args.runs),
        "deployer --version": wall([*deployer, "--version"], args.runs),
        # What `deployer release` imports before it does anything (not part of --help).
        "import the release path": wall([sys.executable, "-c", RELEASE_IMPORTS], max(3, args.runs // 3)),
    }
    info["load_after"] = load_now()
    print_table(f"Start-up wall time ({Path(deployer[0]).name}{' -m deployer' if len(deployer) > 1 else ''})",
                ["command", "wall time"], [[k, fmt_runs(v, digits=3)] for k, v in measured.items()])
    slow = {}
    for command in (["--help"], ["release", "--help"]):
        key = " ".join(command)
        slow[key] = import_times(["-m", "deployer", *command], args.top)
        print_table(f"`python -X importtime -m deployer {key}`: slowest packages and deployer modules (median of 3)",
                    ["module", "self ms", "cumulative ms"], [[n, f"{s:.1f}", f"{c:.1f}"] for n, s, c in slow[key]])
    slow["release path"] = import_times(["-c", RELEASE_IMPORTS], args.top)
    print_table("`python -X importtime` of the release path: slowest packages and deployer modules (median of 3)",
                ["module", "self ms", "cumulative ms"], [[n, f"{s:.1f}", f"{c:.1f}"] for n, s, c in slow["release path"]])
    path = save_result(args.save, {"machine": info, "runs": measured, "imports": slow,
                                   "hyperfine": bool(shutil.which("hyperfine"))})
    print(f"raw numbers: {path}")


if __name__ == "__main__":
    main()
