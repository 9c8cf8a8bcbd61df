"""Another process holds the database past the busy timeout: 503 + Retry-After, then recovery."""

from __future__ import annotations

import sqlite3
import time

import pytest

from tests.support.processes import Suite, wait_until, webhook_body
from tests.support.smtpd import SmtpServer

pytestmark = pytest.mark.e2e


def test_lock_past_busy_timeout_then_recovery(suite: Suite, smtp_server: SmtpServer) -> None:
    suite.start_receiver()
    worker = suite.start("worker")
    wait_until(lambda: "worker ready" in worker.output(), message="worker ready")
    holder = sqlite3.connect(suite.config.parent / "mail-api.sqlite3", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the busy timeout in this config is 2 s
    try:
        status, answer = suite.post(webhook_body("gina@example.org", "tok-locked"))
        assert status == 503
        assert answer == {"ok": False, "error": "database unavailable, retry later"}
        time.sleep(1.0)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    released = time.monotonic()
    status, answer = suite.post(webhook_body("gina@example.org", "tok-locked"))
    assert status == 202, answer
    smtp_server.recorder.wait_for(1, timeout=10)
    assert time.monotonic() - released < 5
    assert len(smtp_server.recorder.messages) == 1
    assert worker.process.poll() is None  # backed off, did not crash
