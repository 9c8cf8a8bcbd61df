"""The worker against an SMTP server that refuses, stalls or is not there; leases and plans."""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine
from structlog.testing import capture_logs

from mailapi import queue as outbound
from mailapi.db import write_transaction
from mailapi.delivery.outcome import DeliveryFailure, Kind, Stage
from mailapi.pause import set_pause
from mailapi.queue import ClaimedMessage
from mailapi.settings import Settings
from tests.integration.worker_helpers import (
    Clock,
    enqueue,
    enqueue_some,
    events,
    make_worker,
    new_message,
    outcomes,
    pause,
    pause_rows,
    queued_row,
    row,
    run_passes,
    serve,
    smtp_settings,
)
from tests.support.ports import free_port
from tests.support.smtpd import SmtpServer
from worker.outcomes import Attempt, Result, plan

BASE = 30


def log_lines(tmp_path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (tmp_path / "d.log").read_text().splitlines()]


def assert_deferred_once(engine: Engine, queue_id: int, clock: Clock, text: str) -> None:
    """Back in the queue after one counted attempt, first retry within [base/2, base]."""
    found = queued_row(engine, queue_id)
    assert (found.state, found.attempts, found.failed_reason) == ("queued", 1, None)
    assert BASE / 2 <= found.next_attempt_at - clock.now <= BASE
    assert text in (found.last_error or "")
    assert outcomes(engine, queue_id) == ["deferred"]


# -- permanent refusals ------------------------------------------------------------------------

@pytest.mark.parametrize(("fault", "reply"), [
    ("rcpt_reply", "550 5.1.1 no such user"),
    ("data_reply", "552 5.3.4 message too big for this system"),
])
def test_permanent_refusal_fails_the_message(engine: Engine, smtp_server: SmtpServer,
                                             tmp_path: Path, fault: str, reply: str) -> None:
    clock = Clock()
    setattr(smtp_server.recorder.faults, fault, reply)
    settings = smtp_settings(engine, smtp_server.port)
    [queue_id] = enqueue_some(engine, settings, clock.now)

    run_passes(make_worker(engine, tmp_path, clock))

    assert smtp_server.recorder.messages == []
    failed = queued_row(engine, queue_id)
    assert (failed.state, failed.failed_reason, failed.attempts) == ("failed", "rejected", 1)
    assert reply.split(" ", 1)[1] in (failed.last_error or "")
    assert reply[:3] in (failed.last_error or "")
    [event] = events(engine, queue_id)
    assert (event.outcome, event.smtp_code) == ("failed", int(reply[:3]))
    [entry] = log_lines(tmp_path)
    assert (entry["outcome"], entry["code"]) == ("failed:rejected", int(reply[:3]))
    assert pause(engine).paused_until is None  # one bad recipient never stops the queue


# -- temporary trouble -------------------------------------------------------------------------

@pytest.mark.parametrize(("fault", "reply"), [
    ("rcpt_reply", "451 4.3.0 try later"),
    ("data_reply", "451 4.3.0 try later"),
    ("mail_reply", "421 4.3.2 service shutting down"),
])
def test_temporary_refusal_defers_with_jitter(engine: Engine, smtp_server: SmtpServer,
                                              tmp_path: Path, fault: str, reply: str) -> None:
    clock = Clock()
    setattr(smtp_server.recorder.faults, fault, reply)
    settings = smtp_settings(engine, smtp_server.port, retry_base_seconds=BASE)
    queue_ids = enqueue_some(engine, settings, clock.now, count=4)

    run_passes(make_worker(engine, tmp_path, clock))

    assert smtp_server.recorder.messages == []
    for queue_id in queue_ids:
        assert_deferred_once(engine, queue_id, clock, reply[:3])
    delays = {queued_row(engine, queue_id).next_attempt_at for queue_id in queue_ids}
    assert len(delays) > 1  # jittered: messages that failed together spread out
    assert pause(engine).paused_until is None


def test_clean_refusal_keeps_the_connection(engine: Engine, smtp_server: SmtpServer,
                                            tmp_path: Path) -> None:
    clock = Clock()
    smtp_server.recorder.faults.rcpt_reply = "451 4.3.0 try later"
    settings = smtp_settings(engine, smtp_server.port)
    enqueue_some(engine, settings, clock.now, count=3)

    run_passes(make_worker(engine, tmp_path, clock, sessions=1))

    assert smtp_server.recorder.connections == 1  # RSET after each refusal, no reconnect
    assert outcomes(engine) == ["deferred"] * 3


def test_timeout_defers_without_leaking_tasks(engine: Engine, smtp_server: SmtpServer,
                                              tmp_path: Path) -> None:
    clock = Clock()
    smtp_server.recorder.faults.data_delay = 3
    settings = smtp_settings(engine, smtp_server.port, smtp_timeout=1)
    [queue_id] = enqueue_some(engine, settings, clock.now)
    worker = make_worker(engine, tmp_path, clock)

    async def drive() -> set[asyncio.Task[object]]:
        await asyncio.wait_for(worker.run_once(), 2.5)  # the timeout, not the server, decides
        await worker.close()
        return asyncio.all_tasks() - {asyncio.current_task()}

    started = time.monotonic()
    assert asyncio.run(drive()) == set()
    assert_deferred_once(engine, queue_id, clock, "data:")
    assert "timed out" in (queued_row(engine, queue_id).last_error or "").lower()
    # The worker hung up, so the server never accepts it late (a retry would duplicate it).
    time.sleep(max(0.0, started + 3.3 - time.monotonic()))
    assert smtp_server.recorder.messages == []


def test_server_not_listening_defers(engine: Engine, tmp_path: Path) -> None:
    clock = Clock()
    settings = smtp_settings(engine, free_port())  # nothing listens there
    [queue_id] = enqueue_some(engine, settings, clock.now)

    run_passes(make_worker(engine, tmp_path, clock))

    assert_deferred_once(engine, queue_id, clock, "connect:")
    assert pause(engine).paused_until is None


def test_attempts_exhausted_fails(engine: Engine, smtp_server: SmtpServer,
                                  tmp_path: Path) -> None:
    clock = Clock()
    smtp_server.recorder.faults.rcpt_reply = "451 4.3.0 try later"
    settings = smtp_settings(engine, smtp_server.port, retry_max_attempts=2)
    [queue_id] = enqueue_some(engine, settings, clock.now)
    worker = make_worker(engine, tmp_path, clock)

    run_passes(worker)
    assert_deferred_once(engine, queue_id, clock, "451")
    clock.now = queued_row(engine, queue_id).next_attempt_at
    assert run_passes(worker) == [1]

    failed = queued_row(engine, queue_id)
    assert (failed.state, failed.failed_reason, failed.attempts) == ("failed", "attempts", 2)
    assert "gave up after 2 attempts" in (failed.last_error or "")
    assert outcomes(engine, queue_id) == ["deferred", "failed"]


# -- expiry ------------------------------------------------------------------------------------

def test_expired_before_claim_is_never_sent(engine: Engine, smtp_server: SmtpServer,
                                            tmp_path: Path) -> None:
    clock = Clock()
    settings = smtp_settings(engine, smtp_server.port)
    [queue_id] = enqueue_some(engine, settings, clock.now)
    clock.advance(3601)  # past the token's expiresAt

    assert run_passes(make_worker(engine, tmp_path, clock)) == [0]

    expired = queued_row(engine, queue_id)
    assert (expired.state, expired.failed_reason) == ("failed", "expired")
    assert smtp_server.recorder.connections == 0


def test_expired_between_claim_and_send_is_never_sent(engine: Engine, smtp_server: SmtpServer,
                                                      tmp_path: Path) -> None:
    clock = Clock()
    settings = smtp_settings(engine, smtp_server.port)
    [queue_id] = enqueue_some(engine, settings, clock.now)
    clock.then = [clock.now, clock.now + 3601]  # claimed in time, then the clock passes expiry

    assert run_passes(make_worker(engine, tmp_path, clock)) == [1]

    expired = queued_row(engine, queue_id)
    assert (expired.state, expired.failed_reason) == ("failed", "expired")
    assert "not sent" in (expired.last_error or "")
    assert smtp_server.recorder.connections == 0
    assert [entry["outcome"] for entry in log_lines(tmp_path)] == ["failed:expired"]


# -- circuit breaker ---------------------------------------------------------------------------

def test_auth_failure_pauses_once_until_settings_change(engine: Engine, tmp_path: Path) -> None:
    clock = Clock()
    with serve(users={"mailer": "s3cret"}) as server:
        settings = smtp_settings(engine, server.port, smtp_username="mailer",
                                 smtp_password="wrong", smtp_allow_plaintext_auth=True)
        queue_ids = enqueue_some(engine, settings, clock.now, count=3)
        worker = make_worker(engine, tmp_path, clock)

        with capture_logs() as logs:
            assert run_passes(worker, passes=3) == [3, 0, 0]  # paused: nothing claimed
        assert server.recorder.messages == []
        state = pause(engine)
        assert state.paused_until is not None and state.paused_until > clock.now
        assert (state.failures, pause_rows(engine)) == (1, 1)
        assert "535" in (state.reason or "")
        messages = [entry["event"] for entry in logs if entry["log_level"] == "error"]
        assert messages.count("queue paused after an authentication, TLS or configuration "
                              "failure") == 1
        assert messages.count("delivery paused") == 1  # not once per idle pass
        for queue_id in queue_ids:
            assert queued_row(engine, queue_id).attempts == 0

        fixed = smtp_settings(engine, server.port, smtp_username="mailer",
                              smtp_password="s3cret", smtp_allow_plaintext_auth=True)
        assert state.active(clock.now, settings.smtp_fingerprint())
        assert not state.active(clock.now, fixed.smtp_fingerprint())
        assert run_passes(worker, passes=2) == [1, 2]  # one probe, then the rest
        received = server.recorder.wait_for(3)
    assert {message.auth_user for message in received} == {"mailer"}
    assert all(row(engine, queue_id) is None for queue_id in queue_ids)
    assert pause(engine).failures == 0


def test_pause_left_by_an_earlier_process_resets_on_delivery(engine: Engine,
                                                             smtp_server: SmtpServer,
                                                             tmp_path: Path) -> None:
    clock = Clock()
    settings = smtp_settings(engine, smtp_server.port, queue_pause_seconds=60)
    with write_transaction(engine) as connection:  # three failures, pause over, then a restart
        set_pause(connection, until=clock.now - 1, reason="tls: old trouble", failures=3,
                  fingerprint=settings.smtp_fingerprint(), now=clock.now - 500)
    enqueue_some(engine, settings, clock.now)

    assert run_passes(make_worker(engine, tmp_path, clock)) == [1]
    smtp_server.recorder.wait_for(1)
    assert pause(engine).failures == 0  # delivery works: the failures are not consecutive

    # So the next failure starts the breaker from its first, shortest pause.
    smtp_settings(engine, smtp_server.port, smtp_security="starttls")  # no STARTTLS offered
    enqueue(engine, [new_message(settings, now=clock.now, token="another")], clock.now)
    clock.advance(2)
    run_passes(make_worker(engine, tmp_path, clock))
    state = pause(engine)
    assert state.failures == 1
    assert state.paused_until == clock.now + 60


# -- fencing tokens ----------------------------------------------------------------------------

def test_stale_lease_token_changes_nothing(engine: Engine, tmp_path: Path) -> None:
    clock = Clock()
    settings = smtp_settings(engine, free_port())
    [queue_id] = enqueue_some(engine, settings, clock.now)

    [first] = outbound.claim_batch(engine, now=clock.now, limit=10, lease_seconds=60,
                                   max_age_seconds=86_400)
    later = clock.now + 61
    with write_transaction(engine) as connection:
        assert outbound.release_expired_leases(connection, now=later, max_reclaims=5) == 1
    [second] = outbound.claim_batch(engine, now=later, limit=10, lease_seconds=60,
                                    max_age_seconds=86_400)
    assert second.queue_id == first.queue_id == queue_id
    assert second.lease_token != first.lease_token

    with write_transaction(engine) as connection:
        assert outbound.mark_delivered(connection, queue_id, first.lease_token) is False
        assert outbound.defer(connection, queue_id, first.lease_token, next_attempt_at=later,
                              error="stale", now=later) is False
        assert outbound.fail(connection, queue_id, first.lease_token, reason="rejected",
                             error="stale", now=later) is False
    current = queued_row(engine, queue_id)
    assert (current.state, current.reclaims, current.last_error) == ("leased", 1, None)
    with write_transaction(engine) as connection:
        assert outbound.mark_delivered(connection, queue_id, second.lease_token) is True
    assert row(engine, queue_id) is None


# -- plan(): the pure decision -----------------------------------------------------------------

NOW = 1_800_000_000.0


def claimed(attempts: int, *, expires_at: float = NOW + 86_400,
            created_at: float = NOW - 10) -> ClaimedMessage:
    return ClaimedMessage(queue_id=7, lease_token=3, recipient="user@example.com",
                          envelope_sender="no-reply@example.org", message_id="<a@example.org>",
                          message=b"", expires_at=expires_at, created_at=created_at,
                          attempts=attempts)


def retry_attempt(message: ClaimedMessage) -> Attempt:
    return Attempt(message, Result.RETRY,
                   failure=DeliveryFailure(Stage.RCPT, Kind.RESPONSE, "try later", 451))


@pytest.mark.parametrize("seed", range(20))
def test_plan_first_retry_within_half_to_full_base(seed: int) -> None:
    change = plan(retry_attempt(claimed(1)), Settings(retry_base_seconds=BASE), NOW,
                  random.Random(seed))
    assert change.change == "defer"
    assert NOW + BASE / 2 <= change.next_attempt_at <= NOW + BASE
    assert change.event == "deferred"


def test_plan_backoff_doubles_and_is_capped() -> None:
    third = plan(retry_attempt(claimed(3)), Settings(retry_base_seconds=BASE), NOW,
                 random.Random(1))
    assert NOW + 60 <= third.next_attempt_at <= NOW + 120  # nominal 4 x base
    settings = Settings(retry_base_seconds=BASE, retry_max_seconds=100)
    capped = plan(retry_attempt(claimed(9)), settings, NOW, random.Random(1))
    assert NOW + 50 <= capped.next_attempt_at <= NOW + 100


def test_plan_attempts_exhausted_fails() -> None:
    change = plan(retry_attempt(claimed(5)), Settings(retry_max_attempts=5), NOW,
                  random.Random(1))
    assert (change.change, change.reason, change.event) == ("fail", "attempts", "failed")
    assert "451 try later" in change.detail


@pytest.mark.parametrize("message", [
    claimed(1, expires_at=NOW + 10),  # the token expires before the next retry
    claimed(1, created_at=NOW - 86_400 + 10),  # the maximum age is reached first
])
def test_plan_retry_beyond_expiry_fails(message: ClaimedMessage) -> None:
    change = plan(retry_attempt(message), Settings(retry_base_seconds=BASE), NOW,
                  random.Random(1))
    assert (change.change, change.reason) == ("fail", "expired")
