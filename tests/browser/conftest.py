"""Fixtures for the browser tests: Debian's Chromium driven by Playwright, the real panel."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.support.livepanel import panel_suite
from tests.support.processes import Suite
from tests.support.smtpd import SmtpServer

# The distribution's browser (`make test` installs it); Playwright never downloads one here.
CHROMIUM = Path("/usr/bin/chromium")
# Root on a machine without a network: no sandbox, no GPU, nothing phoning home. Playwright's
# launch() gives every run a fresh temporary profile and removes it afterwards.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture
def browser() -> Iterator[Browser]:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: install it with scripts/ensure-apt.sh chromium "
                    "(make test does)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                              timeout=30_000)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def live_panel(tmp_path: Path, smtp_server: SmtpServer) -> Iterator[Suite]:
    """mailapi-panel on a free loopback port; its SMTP test button may reach `smtp_server`."""
    suite = panel_suite(tmp_path, panel_extra=f"extra_test_ports = [{smtp_server.port}]",
                        settings={"allowed_sender_domain": "example.com"})
    daemon = suite.start_panel()
    yield suite
    assert daemon.stop() == 0, daemon.output()
    suite.stop_all()
