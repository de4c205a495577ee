"""Shared test fixtures: the real test bench lives in tests/bench/, one module per part."""

from __future__ import annotations

pytest_plugins = [
    "tests.bench.docker",
    "tests.bench.sshd",
    "tests.bench.postgres",
    "tests.bench.gitrepos",
    "tests.bench.deployment",
    "tests.bench.apps",
]
