"""Print the `systemd-analyze security` exposure the unit tests measured, after the run."""

from __future__ import annotations

import pytest

EXPOSURE_PROPERTY = "systemd_security_exposure"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    figures = [value for category in ("passed", "failed")
               for report in terminalreporter.stats.get(category, [])
               for name, value in getattr(report, "user_properties", [])
               if name == EXPOSURE_PROPERTY and report.when == "call"]
    if figures:
        terminalreporter.write_sep("-", "systemd-analyze security --offline=yes")
        for unit, exposure in sorted(figures):
            terminalreporter.write_line(f"{unit}: exposure {exposure:.1f}")
