"""Hours of upstream outage on a compressed clock: backoff with jitter, the breaker, recovery."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import Engine

from mailapi import queue as outbound
from mailapi.db import read_transaction
from mailapi.delivery.backoff import pause_length
from tests.integration.worker_helpers import (
    Clock,
    RecordingUsers,
    enqueue,
    events,
    make_worker,
    new_message,
    pause,
    queued_row,
    row,
    smtp_settings,
)
from tests.support.badsmtp import drive_checked
from tests.support.ports import free_port
from tests.support.smtpd import SmtpServer

HOUR = 3600.0
BASE, CAP = 30, 3600  # retry_base_seconds, retry_max_seconds
PAUSE = 60  # queue_pause_seconds
SESSIONS = 2
EPSILON = 1e-6  # float noise on times around 1.8e9


def nominal(attempt: int) -> float:
    """The nominal delay after attempt number `attempt` (mailapi.delivery.backoff)."""
    return float(min(CAP, BASE * 2 ** (attempt - 1)))


def attempts_within(elapsed: float, factor: float) -> int:
    """How many attempts fit in `elapsed` seconds if every delay is `factor` x nominal."""
    attempts, at = 1, 0.0
    while at + factor * nominal(attempts) <= elapsed:
        at += factor * nominal(attempts)
        attempts += 1
    return attempts


def next_due(engine: Engine) -> float | None:
    with read_transaction(engine) as connection:
        return outbound.next_due_at(connection)


def attempt_log(engine: Engine, queue_id: int) -> list[tuple[float, str, str]]:
    """(time, outcome, detail) of every recorded attempt of one message, oldest first."""
    return sorted((event.at, event.outcome, event.detail or "")
                  for event in events(engine, queue_id))


def test_a_six_hour_outage_backs_off_with_jitter_then_delivers_each_once(
        engine: Engine, tmp_path: Path) -> None:
    """The port is closed for six simulated hours, then a server comes up on it.

    Network failures do not trip the circuit breaker (DESIGN.md: only authentication, TLS
    and configuration refusals pause the queue); each message backs off on its own.
    """
    clock = Clock()
    start = clock.now
    outage_end = start + 6 * HOUR
    port = free_port()  # nothing listens there: the upstream is down
    settings = smtp_settings(engine, port, retry_base_seconds=BASE, retry_max_seconds=CAP,
                             retry_max_attempts=100)
    long_lived = [new_message(settings, now=start, to=f"long{index}@example.com",
                              token=f"long-lived-{index}", expires_in=12 * HOUR)
                  for index in range(4)]
    short_lived = [new_message(settings, now=start, to=f"short{index}@example.com",
                               token=f"short-lived-{index}", expires_in=expires_in)
                   for index, expires_in in enumerate((20 * 60, 2 * HOUR))]
    long_ids = enqueue(engine, long_lived, start)
    short_ids = enqueue(engine, short_lived, start)
    worker = make_worker(engine, tmp_path, clock, sessions=SESSIONS)
    passes: list[tuple[float, int]] = []

    async def run_until(end: float) -> None:
        """Pass, check the worker would rest, jump to the next due retry; as the worker's
        loop does, minus the real sleeping."""
        while True:
            claimed = await worker.run_once()
            passes.append((clock.now, claimed))
            assert await worker.run_once() == 0  # right after a pass nothing is due
            state = pause(engine)
            assert (state.paused_until, state.failures) == (None, 0)
            due = next_due(engine)
            if due is None or due >= end:
                return
            assert due > clock.now
            assert 0 < await worker.idle_wait_seconds() <= 1  # it sleeps: no tight loop
            clock.now = due

    drive_checked(worker, lambda: run_until(outage_end))
    outage_passes = len(passes)
    server = SmtpServer(port).start()  # the upstream is back
    try:
        due = next_due(engine)
        assert due is not None and outage_end <= due <= outage_end + CAP
        clock.now = due  # the worker's next wake-up: nothing is tried earlier
        drive_checked(worker, lambda: run_until(outage_end + 2 * CAP))
        received = server.recorder.wait_for(len(long_lived))
    finally:
        server.stop()

    # Delivered exactly once each, and never a message whose token had expired.
    sent = Counter(message.parsed()["Message-ID"] for message in received)
    assert sent == Counter({message.message_id: 1 for message in long_lived})
    assert all(row(engine, queue_id) is None for queue_id in long_ids)
    for queue_id, message in zip(short_ids, short_lived, strict=True):
        expired = queued_row(engine, queue_id)
        assert (expired.state, expired.failed_reason) == ("failed", "expired")
        assert all(at < message.expires_at for at, _, _ in attempt_log(engine, queue_id))

    # Each long-lived message followed the backoff schedule, jitter within its bounds.
    fewest, most = (attempts_within(6 * HOUR, factor) for factor in (1.0, 0.5))
    gaps_by_attempt: dict[int, list[float]] = {}
    for queue_id in long_ids:
        log = attempt_log(engine, queue_id)
        outcomes = [outcome for _, outcome, _ in log]
        assert outcomes == ["deferred"] * (len(log) - 1) + ["delivered"]
        assert fewest <= len(log) - 1 <= most
        assert log[0][0] == start and outage_end <= log[-1][0] <= outage_end + CAP
        for attempt, (before, after) in enumerate(itertools.pairwise(log), start=1):
            gap = after[0] - before[0]
            assert nominal(attempt) / 2 - EPSILON <= gap <= nominal(attempt) + EPSILON, (
                queue_id, attempt, gap)
            gaps_by_attempt.setdefault(attempt, []).append(gap)
    for attempt, gaps in gaps_by_attempt.items():
        if len(gaps) == len(long_ids):
            assert len(set(gaps)) > 1, f"attempt {attempt}: every message waited {gaps[0]}"

    # Bounded work: one pass per due retry at most, at most one real connection per session
    # and pass (the rest of a batch is deferred "not attempted, upstream unreachable").
    failed_attempts = [detail for queue_id in long_ids + short_ids
                       for at, _, detail in attempt_log(engine, queue_id) if at < outage_end]
    claiming = [claimed for _, claimed in passes[:outage_passes] if claimed]
    assert len(failed_attempts) == sum(claiming)  # one recorded outcome per claimed message
    assert all("connect: " in detail for detail in failed_attempts)
    connections = [detail for detail in failed_attempts if "not attempted" not in detail]
    assert len(claiming) <= len(connections) <= SESSIONS * len(claiming)
    assert len(claiming) <= sum(most for _ in long_ids + short_ids)


def test_a_password_refused_for_hours_pauses_doubling_then_resumes(engine: Engine,
                                                                   tmp_path: Path) -> None:
    """The upstream refuses our password (535) for three simulated hours, then accepts it."""
    clock = Clock()
    start = clock.now
    users = RecordingUsers({"mailer": "rotated-by-someone-else"})
    server = SmtpServer(free_port(), users=users).start()
    try:
        settings = smtp_settings(engine, server.port, smtp_username="mailer",
                                 smtp_password="s3cret", smtp_allow_plaintext_auth=True,
                                 queue_pause_seconds=PAUSE)
        long_lived = [new_message(settings, now=start, to=f"long{index}@example.com",
                                  token=f"long-lived-{index}", expires_in=12 * HOUR)
                      for index in range(3)]
        short = new_message(settings, now=start, to="short@example.com", token="short",
                            expires_in=30 * 60)
        long_ids = enqueue(engine, long_lived, start)
        [short_id] = enqueue(engine, [short], start)
        worker = make_worker(engine, tmp_path, clock, sessions=SESSIONS)
        pauses: list[tuple[float, float, int]] = []  # (set at, until, failures)
        claims: list[tuple[float, int]] = []

        async def run_until(end: float) -> None:
            for _ in range(100):
                claimed = await worker.run_once()
                if claimed:
                    claims.append((clock.now, claimed))
                state = pause(engine)
                if not state.active(clock.now, settings.smtp_fingerprint()):
                    if next_due(engine) is None:
                        return
                    continue  # running again: the rest of the queue goes now
                assert await worker.run_once() == 0  # paused: nothing is claimed
                assert state.paused_until is not None
                wait = await worker.idle_wait_seconds()
                assert 0 < wait <= min(1.0, state.paused_until - clock.now)  # no spinning
                if not pauses or pauses[-1][1] != state.paused_until:
                    pauses.append((clock.now, state.paused_until, state.failures))
                if state.paused_until >= end:
                    return
                clock.now = state.paused_until
            raise AssertionError("no progress after 100 passes")

        drive_checked(worker, lambda: run_until(start + 3 * HOUR))
        refused_connections = server.recorder.connections
        assert server.recorder.messages == []
        # While paused, no message spent an attempt; the short-lived one expired unsent.
        assert [queued_row(engine, queue_id).attempts for queue_id in long_ids] == [0, 0, 0]
        expired = queued_row(engine, short_id)
        assert (expired.state, expired.failed_reason) == ("failed", "expired")

        users["mailer"] = "s3cret"  # the upstream accepts the password again
        clock.now = pauses[-1][1]  # the last pause runs out
        drive_checked(worker, lambda: run_until(start + 6 * HOUR))
        received = server.recorder.wait_for(len(long_lived))
    finally:
        server.stop()

    # Each consecutive failure doubled the pause, up to the hour.
    lengths = [until - at for at, until, _ in pauses]
    expected = [pause_length(n, base_seconds=PAUSE) for n in range(1, len(pauses) + 1)]
    assert lengths == pytest.approx(expected, abs=EPSILON)
    assert [failures for _, _, failures in pauses] == list(range(1, len(pauses) + 1))
    assert len(pauses) == 8 and expected[-1] == 3600  # 60 s ... 1 h within three hours
    # Half-open: the first batch, then one probe message per pause, then the rest at once.
    assert claims[0] == (start, 4)
    probes = claims[1:-1]
    assert [claimed for _, claimed in probes] == [1] * len(pauses)
    assert [at for at, _ in probes] == [until for _, until, _ in pauses]
    assert claims[-1] == (pauses[-1][1], 2)
    assert len(pauses) <= refused_connections <= len(pauses) + SESSIONS - 1
    # Delivered once each, the pause lifted, the expired message never sent.
    sent = Counter(message.parsed()["Message-ID"] for message in received)
    assert sent == Counter({message.message_id: 1 for message in long_lived})
    assert all(row(engine, queue_id) is None for queue_id in long_ids)
    assert short.message_id not in sent
    state = pause(engine)
    assert (state.paused_until, state.failures) == (None, 0)
