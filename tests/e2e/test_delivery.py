"""The real executables end to end: signed webhook in, message out at the SMTP server."""

from __future__ import annotations

import sqlite3
import time

import pytest

from tests.support.processes import Suite, cli, wait_until, webhook_body
from tests.support.smtpd import SmtpServer

pytestmark = pytest.mark.e2e


def queue_rows(suite: Suite) -> int:
    with sqlite3.connect(suite.config.parent / "mail-api.sqlite3") as connection:
        return int(connection.execute("SELECT count(*) FROM outbound_queue").fetchone()[0])


def test_signed_webhook_is_delivered_and_row_deleted(suite: Suite, smtp_server: SmtpServer
                                                     ) -> None:
    receiver = suite.start_receiver()
    worker = suite.start("worker")
    status, body = suite.post(webhook_body("alice@example.org", "tok-123456"))
    assert status == 202, body
    assert set(body) == {"ok", "to", "subject", "queued_id", "queued_at"}
    received = smtp_server.recorder.wait_for(1)[0]
    message = received.parsed()
    assert received.rcpt_tos == ["alice@example.org"]
    assert received.mail_from == "no-reply@example.com"
    assert message["To"] == "alice@example.org"
    assert message["Subject"] == "Verify your email"
    assert "tok-123456" in message.get_body(("plain",)).get_content()
    wait_until(lambda: queue_rows(suite) == 0, message="row deleted after delivery")
    log_path = suite.config.parent / "log" / "delivery.log"
    # The worker writes its log line just after the commit that deletes the row.
    wait_until(lambda: log_path.exists() and '"outcome": "delivered"' in log_path.read_text(),
               message="delivery logged")
    assert "tok-123456" not in log_path.read_text()
    assert worker.stop() == 0
    assert receiver.stop() == 0


def test_replayed_webhook_is_queued_and_sent_once(suite: Suite, smtp_server: SmtpServer) -> None:
    suite.start_receiver()
    body = webhook_body("bob@example.org", "tok-replay")
    first = suite.post(body)
    second = suite.post(body)  # a sender's retry: same body, fresh signature
    assert first[0] == second[0] == 202
    assert first[1]["queued_id"] == second[1]["queued_id"]
    suite.start("worker")
    smtp_server.recorder.wait_for(1)
    time.sleep(0.5)
    third = suite.post(body)  # after delivery, still the original id and no second send
    assert third[1]["queued_id"] == first[1]["queued_id"]
    time.sleep(0.5)
    assert len(smtp_server.recorder.messages) == 1


def test_idle_worker_wakes_quickly(suite: Suite, smtp_server: SmtpServer) -> None:
    suite.start_receiver()
    suite.start("worker")
    time.sleep(1.5)  # let it go idle
    started = time.monotonic()
    status, _ = suite.post(webhook_body("carol@example.org", "tok-wake"))
    assert status == 202
    smtp_server.recorder.wait_for(1, timeout=5)
    # Generous bound: the benchmark measures the real figure; this only proves the worker
    # is not sleeping seconds between polls.
    assert time.monotonic() - started < 2.0


def row_state(suite: Suite, queue_id: int) -> str | None:
    with sqlite3.connect(suite.config.parent / "mail-api.sqlite3") as connection:
        row = connection.execute("SELECT state FROM outbound_queue WHERE id = ?",
                                 (queue_id,)).fetchone()
        return None if row is None else str(row[0])


def expire_leases(suite: Suite, queue_id: int) -> None:
    """The lease outlives a dead worker; end it now rather than wait minutes."""
    with sqlite3.connect(suite.config.parent / "mail-api.sqlite3") as connection:
        state = connection.execute("SELECT state FROM outbound_queue WHERE id = ?",
                                   (queue_id,)).fetchone()[0]
        assert state == "leased"
        connection.execute("UPDATE outbound_queue SET lease_expires_at = 0")


def test_worker_killed_mid_delivery_loses_nothing(suite: Suite, smtp_server: SmtpServer) -> None:
    assert cli(suite.config, "settings", "set", "smtp_timeout", "30").returncode == 0
    smtp_server.recorder.faults.rcpt_delay = 3.0  # the worker waits on RCPT when killed
    suite.start_receiver()
    worker = suite.start("worker")
    status, body = suite.post(webhook_body("dave@example.org", "tok-kill"))
    assert status == 202
    # Claimed, and held 3 s at RCPT: a kill now lands inside the SMTP transaction.
    wait_until(lambda: row_state(suite, body["queued_id"]) == "leased",
               message="the worker claimed the message")
    worker.kill()  # kill -9 in the middle of the SMTP transaction
    smtp_server.recorder.faults.rcpt_delay = 0.0
    expire_leases(suite, body["queued_id"])
    suite.start("worker")
    received = smtp_server.recorder.wait_for(1, timeout=15)
    assert received[0].rcpt_tos == ["dave@example.org"]
    wait_until(lambda: queue_rows(suite) == 0, message="row deleted after redelivery")
    time.sleep(3.0)  # the killed transaction never completes on the server's side
    assert len(smtp_server.recorder.messages) == 1


def test_kill_after_the_final_dot_duplicates_with_the_same_message_id(
        suite: Suite, smtp_server: SmtpServer) -> None:
    """The one duplicate window: the server took the message, the worker died before DELETE."""
    assert cli(suite.config, "settings", "set", "smtp_timeout", "30").returncode == 0
    # The server stores the message, and its 250 comes after the worker is gone.
    smtp_server.recorder.faults.reply_delay_after_store = 30.0
    suite.start_receiver()
    worker = suite.start("worker")
    status, body = suite.post(webhook_body("frank@example.org", "tok-window"))
    assert status == 202
    smtp_server.recorder.wait_for(1, timeout=15)  # stored; its 250 is held back
    worker.kill()
    smtp_server.recorder.faults.reply_delay_after_store = 0.0
    assert len(smtp_server.recorder.messages) == 1
    expire_leases(suite, body["queued_id"])
    suite.start("worker")
    received = smtp_server.recorder.wait_for(2, timeout=15)
    ids = {message.parsed()["Message-ID"] for message in received}
    assert len(received) == 2 and len(ids) == 1
    wait_until(lambda: queue_rows(suite) == 0, message="row deleted after redelivery")


def test_sigterm_exits_zero_quickly(suite: Suite) -> None:
    receiver = suite.start_receiver()
    worker = suite.start("worker")
    wait_until(lambda: "worker ready" in worker.output(), message="worker ready")
    started = time.monotonic()
    assert worker.stop() == 0
    assert receiver.stop() == 0
    assert time.monotonic() - started < 30


def test_settings_change_reaches_running_receiver(suite: Suite) -> None:
    suite.start_receiver()
    assert suite.post(webhook_body("erin@example.org", "tok-a"))[0] == 202
    assert cli(suite.config, "settings", "set", "ip_allowlist", "10.0.0.0/8").returncode == 0
    deadline = time.monotonic() + 5
    status = 202
    while time.monotonic() < deadline and status != 403:
        status, _ = suite.post(webhook_body("erin@example.org", f"tok-{time.monotonic()}"))
        time.sleep(0.1)
    assert status == 403


def test_status_reports_daemons_queue_and_deliveries(suite: Suite, smtp_server: SmtpServer
                                                      ) -> None:
    before = cli(suite.config, "status")
    assert before.returncode == 1 and "receiver  never started" in before.stdout
    suite.start_receiver()
    worker = suite.start("worker")
    wait_until(lambda: "worker ready" in worker.output(), message="worker ready")
    assert suite.post(webhook_body("hank@example.org", "tok-status"))[0] == 202
    smtp_server.recorder.wait_for(1)
    wait_until(lambda: cli(suite.config, "status").returncode == 0, timeout=15,
               message="both heartbeats")
    report = cli(suite.config, "status").stdout
    assert "receiver  alive" in report and "worker    alive" in report
    assert "last hour delivered 1" in report
    assert "queue     queued 0, leased 0, failed 0" in report
