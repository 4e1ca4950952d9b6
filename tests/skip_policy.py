"""pytest plugin: with ``DEEPFACTOR_FORBID_SKIPS=1`` (CI sets it) a skipped test fails the
session unless its reason starts with ``needs hardware:`` or ``needs network:``.

The suite carries its own fixtures, so a skip for a missing file is coverage silently lost on
somebody's clone; this turns it into a red run that lists each one.
"""

from __future__ import annotations

import os

import pytest

ALLOWED_SKIPS = ("needs hardware:", "needs network:")


def skip_reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    """Return the reason a skipped report gives (pytest stores it in ``longrepr``)."""
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


class SkipPolicy:
    """Collects the skips that are not allowed and fails the session on any."""

    def __init__(self) -> None:
        self.forbidden: list[str] = []

    def _note(self, report: pytest.CollectReport | pytest.TestReport) -> None:
        if report.skipped and not skip_reason(report).startswith(ALLOWED_SKIPS):
            self.forbidden.append(f"{report.nodeid}: {skip_reason(report)}")

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._note(report)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._note(report)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if not self.forbidden:
            return
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_sep("=", "skips not allowed here (DEEPFACTOR_FORBID_SKIPS=1)", red=True)
            for line in sorted(set(self.forbidden)):
                reporter.write_line(line)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("DEEPFACTOR_FORBID_SKIPS") == "1":
        config.pluginmanager.register(SkipPolicy(), "deepfactor-skip-policy")
