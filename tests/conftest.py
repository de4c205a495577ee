"""Shared test fixtures: the real test bench lives in tests/bench/, one module per part."""

from __future__ import annotations

import pytest

pytest_plugins = [
    "tests.bench.docker",
    "tests.bench.sshd",
    "tests.bench.postgres",
    "tests.bench.gitrepos",
    "tests.bench.deployment",
    "tests.bench.apps",
    "tests.bench.machines",
    "tests.bench.terminal",
]


@pytest.hookimpl(tryfirst=True)  # before xdist turns the groups into node id suffixes
def pytest_collection_modifyitems(config, items):  # noqa: ANN001, ANN201 - pytest's hook
    """Under pytest-xdist (``--dist loadgroup``) keep each module's story on one worker.

    The end-to-end modules build state test after test on a module-scoped deployment (one
    per transport parameter), so a module's tests run in order on one worker, one group per
    module and parameter; tests that name their own ``xdist_group`` keep it.
    """
    for item in items:
        if item.get_closest_marker("xdist_group") is not None:
            continue
        callspec = getattr(item, "callspec", None)
        kind = ""
        if callspec is not None:
            for name in ("deployment", "kind", "transport"):
                if name in callspec.params:
                    kind = str(callspec.params[name])
                    break
        item.add_marker(pytest.mark.xdist_group(f"{item.module.__name__}:{kind}"))


_group_seconds: dict[str, list[float]] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Sum each xdist group's time (the node id's ``@group`` suffix): the slowest group bounds the run."""
    group = report.nodeid.rpartition("@")[2] if "@" in report.nodeid else report.nodeid.partition("::")[0]
    entry = _group_seconds.setdefault(group, [0.0, 0])
    entry[0] += report.duration
    entry[1] += report.when == "call"


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001 - pytest's hook
    if not _group_seconds:
        return
    ranked = sorted(_group_seconds.items(), key=lambda item: -item[1][0])
    terminalreporter.section("slowest groups (a group runs in order on one worker)")
    for group, (seconds, tests) in ranked[:20]:
        terminalreporter.write_line(f"{seconds:8.1f}s {int(tests):4d} tests  {group}")
    total = sum(seconds for seconds, _ in _group_seconds.values())
    terminalreporter.write_line(f"{total:8.1f}s in all, over {len(_group_seconds)} groups")
