"""``deployer config check``'s report as text (the data: :mod:`deployer.readiness`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deployer.readiness import Check, Report

_MARK = {"ok": "ok", "warning": "warning", "problem": "PROBLEM"}


def render_report(report: Report) -> str:
    """The app's checks, each environment's, what was not checked, and the verdict."""
    lines = [f"{report.path}: valid (app {report.app})"]
    lines += _checks(report.checks)
    for environment in report.environments:
        lines.append(f"environment {environment.name} ({environment.host})")
        lines += _checks(environment.checks)
    lines.append("not checked (`deployer release ENV --dry-run` reads them, changing nothing):")
    lines += [f"  - {item}" for item in report.not_checked]
    names = ", ".join(e.name for e in report.environments)
    if report.ok:
        lines.append(f"ready, as far as can be told from here: {names}")
    return "\n".join(lines)


def summary(report: Report) -> str:
    """The one-line error of a report with problems."""
    problems = report.problems()
    return f"{report.path}: {len(problems)} problem{'s' * (len(problems) != 1)}: {'; '.join(problems)}"


def _checks(checks: tuple[Check, ...]) -> list[str]:
    lines = []
    for check in checks:
        lines.append(f"  {_MARK[check.level]:<8} {check.name}: {check.detail}")
        if check.hint and check.level != "ok":
            lines.append(f"  {'':<8} hint: {check.hint}")
    return lines
