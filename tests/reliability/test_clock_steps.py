"""Wall-clock steps of an hour on the worker: no stranded row, no negative or long idle wait."""

from __future__ import annotations

import asyncio
import glob
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from mailapi import queue as outbound
from mailapi.db import read_transaction, write_transaction
from mailapi.pause import set_pause
from mailapi.settings import Settings
from tests.integration.worker_helpers import (
    Clock,
    enqueue,
    make_worker,
    new_message,
    outcomes,
    pause,
    queued_row,
    row,
    run_passes,
    serve,
    smtp_settings,
)
from tests.support.processes import BIN, Daemon, Suite, wait_until, webhook_body
from tests.support.smtpd import SmtpServer
from worker.loop import MAX_IDLE_WAIT, Worker
from worker.outcomes import Attempt, Result, RowChange, store

HOUR = 3600.0
EXPIRES_IN = 4 * HOUR  # the tokens outlive the steps: expiry is not what is tested here
LEASE = 300.0  # make_worker's lease (WorkerOptions' default; above 2 x 7 x smtp_timeout)
BASE = 30.0  # smtp_settings' retry_base_seconds: a first retry waits 15-30 s
TICK = 5.0  # simulated seconds between passes once the clock runs normally again
LIBFAKETIME = "/usr/lib/*/faketime/libfaketime.so.1"  # Debian's `faketime` package


def queue_messages(engine: Engine, settings: Settings, now: float, prefix: str,
                   count: int = 1) -> list[int]:
    messages = [new_message(settings, now=now, to=f"{prefix}{index}@example.com",
                            token=f"tok-{prefix}-{index}", expires_in=EXPIRES_IN)
                for index in range(count)]
    return enqueue(engine, messages, now)


async def passes_until(worker: Worker, clock: Clock, done: Callable[[], bool], *,
                       limit: float) -> float:
    """Passes with the clock moving on by TICK between them until `done()`: the simulated
    seconds it took. Every idle wait the loop would compute on the way is checked."""
    started = clock.now
    try:
        while not done():
            assert clock.now - started <= limit, (
                f"still not done {clock.now - started:.0f} simulated seconds after the step")
            await worker.run_once()
            assert_idle_wait_bounded(await worker.idle_wait_seconds())
            clock.advance(TICK)
    finally:
        await worker.close()
    return clock.now - started


def assert_idle_wait_bounded(wait: float) -> None:
    assert 0.0 <= wait <= MAX_IDLE_WAIT, f"idle wait {wait!r} outside [0, {MAX_IDLE_WAIT}]"


def assert_each_delivered_once(server: SmtpServer, count: int) -> None:
    ids = [message.parsed()["Message-ID"] for message in server.recorder.messages]
    assert len(ids) == count and len(set(ids)) == count, ids


def test_a_backward_step_strands_no_row(engine: Engine, tmp_path: Path) -> None:
    """Rows written just before the clock went back an hour: a fresh one goes out on the next
    pass, deferred ones keep their backoff (not backoff + 1 h), a dead worker's lease runs
    out after the lease, not the lease + 1 h."""
    with serve() as server:
        t0 = time.time()
        clock = Clock(t0)
        settings = smtp_settings(engine, server.port)
        worker = make_worker(engine, tmp_path, clock)
        [orphan] = queue_messages(engine, settings, t0, "orphan")
        [claimed] = outbound.claim_batch(engine, now=t0, limit=1, lease_seconds=LEASE,
                                         max_age_seconds=settings.message_max_age_seconds)
        assert claimed.queue_id == orphan  # ... by a worker that then died
        deferred = queue_messages(engine, settings, t0, "deferred", 2)
        server.recorder.faults.rcpt_reply = "451 4.3.0 try again later"
        assert run_passes(worker) == [2]
        server.recorder.faults.rcpt_reply = None
        fresh = queue_messages(engine, settings, t0, "fresh", 2)

        clock.now = t0 - HOUR
        assert run_passes(worker) == [2]
        assert all(row(engine, queue_id) is None for queue_id in fresh)
        for queue_id in deferred:
            waiting = queued_row(engine, queue_id)
            assert waiting.state == "queued" and waiting.attempts == 1
            assert 0 < waiting.next_attempt_at - clock.now <= BASE
        assert queued_row(engine, orphan).state == "leased"

        elapsed = asyncio.run(passes_until(
            worker, clock, lambda: len(server.recorder.messages) == 5, limit=LEASE + 3 * TICK))
        assert elapsed <= LEASE + 3 * TICK
        assert_each_delivered_once(server, 5)
        assert remaining(engine) == 0
        assert outcomes(engine, orphan) == ["delivered"]


def test_a_backward_step_does_not_lengthen_a_pause(engine: Engine, tmp_path: Path) -> None:
    with serve() as server:
        t0 = time.time()
        clock = Clock(t0)
        settings = smtp_settings(engine, server.port)
        with write_transaction(engine) as connection:
            set_pause(connection, until=t0 + 60, reason="535 5.7.8 authentication failed",
                      failures=1, fingerprint=settings.smtp_fingerprint(), now=t0)
        clock.now = t0 - HOUR
        queue_messages(engine, settings, clock.now, "paused")
        worker = make_worker(engine, tmp_path, clock)
        elapsed = asyncio.run(passes_until(
            worker, clock, lambda: len(server.recorder.messages) == 1, limit=60 + 2 * TICK))
        assert 60 - TICK <= elapsed <= 60 + 2 * TICK  # the pause held, for what it was set to
        assert pause(engine).failures == 0  # the probe's delivery lifted it


class SteppingClock(Clock):
    """Reads `step` seconds later once the SMTP server holds a message: a step between the
    server's 250 and the worker recording it."""

    def __init__(self, now: float, server: SmtpServer, step: float) -> None:
        super().__init__(now)
        self.server = server
        self.step = step

    def __call__(self) -> float:
        return self.now + (self.step if self.server.recorder.messages else 0.0)


def test_a_forward_step_delivers_what_waited_and_keeps_the_workers_own_lease(
        engine: Engine, tmp_path: Path) -> None:
    with serve() as server:
        t0 = time.time()
        clock = Clock(t0)
        settings = smtp_settings(engine, server.port)
        worker = make_worker(engine, tmp_path, clock)
        [deferred] = queue_messages(engine, settings, t0, "deferred")
        server.recorder.faults.rcpt_reply = "451 4.3.0 try again later"
        assert run_passes(worker) == [1]
        server.recorder.faults.rcpt_reply = None
        fresh = queue_messages(engine, settings, t0, "fresh", 2)

        clock.now = t0 + HOUR
        assert run_passes(worker) == [3]
        assert_each_delivered_once(server, 3)
        assert outcomes(engine, deferred) == ["deferred", "delivered"]
        assert all(outcomes(engine, queue_id) == ["delivered"] for queue_id in fresh)

    with serve() as server:
        # The worker's own pass is not cut off: housekeeping (which reclaims leases) runs
        # between passes only, so a step during one cannot release the lease it holds.
        settings = smtp_settings(engine, server.port)
        stepping = SteppingClock(t0 + HOUR, server, HOUR)
        [own] = queue_messages(engine, settings, stepping.now, "own")
        assert run_passes(make_worker(engine, tmp_path, stepping)) == [1]
        assert row(engine, own) is None
        assert outcomes(engine, own) == ["delivered"]
        assert_each_delivered_once(server, 1)


def test_a_forward_step_past_the_lease_lets_another_worker_reclaim_it_safely(
        engine: Engine, tmp_path: Path) -> None:
    """What the design accepts: a lease is wall-clock time, so a step past it lets another
    worker reclaim a message whose first worker is still at it. That message may go out
    twice (same Message-ID); the fencing token keeps the first worker's late outcome from
    changing the row the second one owns."""
    with serve() as server:
        t0 = time.time()
        clock = Clock(t0)
        settings = smtp_settings(engine, server.port)
        [queue_id] = queue_messages(engine, settings, t0, "slow")
        [first] = outbound.claim_batch(engine, now=t0, limit=1, lease_seconds=LEASE,
                                       max_age_seconds=settings.message_max_age_seconds)
        clock.now = t0 + HOUR
        worker = make_worker(engine, tmp_path, clock)
        assert run_passes(worker) == [1]
        assert_each_delivered_once(server, 1)
        late = RowChange(Attempt(first, Result.DELIVERED, reply="250 2.0.0 ok"), "delete",
                         detail="250 2.0.0 ok", event="delivered")
        assert store(engine, [late], clock.now) == [late]  # lost: it changes nothing
        assert outcomes(engine, queue_id) == ["delivered"]


def test_the_idle_wait_is_never_negative_nor_long(engine: Engine, tmp_path: Path) -> None:
    t0 = time.time()
    clock = Clock(t0)
    settings = smtp_settings(engine, 9)  # nothing is delivered here
    worker = make_worker(engine, tmp_path, clock)
    steps = (-2 * HOUR, -HOUR, -1.0, -0.001, 0.0, 0.001, 1.0, BASE, HOUR, 2 * HOUR)

    async def waits() -> list[float]:
        return [await wait_after(worker, clock, t0 + step) for step in steps]

    assert all(wait == MAX_IDLE_WAIT for wait in asyncio.run(waits()))  # empty queue
    [later] = queue_messages(engine, settings, t0, "later")
    [claimed] = outbound.claim_batch(engine, now=t0, limit=1, lease_seconds=LEASE,
                                     max_age_seconds=settings.message_max_age_seconds)
    with write_transaction(engine) as connection:
        assert outbound.defer(connection, later, claimed.lease_token,
                              next_attempt_at=t0 + BASE, error="451", now=t0)
    for wait in asyncio.run(waits()):
        assert_idle_wait_bounded(wait)
    queue_messages(engine, settings, t0 + 2 * HOUR, "future")  # written before a step back
    for wait in asyncio.run(waits()):
        assert_idle_wait_bounded(wait)


async def wait_after(worker: Worker, clock: Clock, now: float) -> float:
    clock.now = now
    return await worker.idle_wait_seconds()


def remaining(engine: Engine) -> int:
    with read_transaction(engine) as connection:
        return outbound.count_messages(connection)


# -- the real worker process under libfaketime ----------------------------------------------------

def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def start_faked_worker(suite: Suite, offset_file: Path) -> Daemon:
    """mailapi-worker whose wall clock reads the offset in `offset_file` at every call
    (CLOCK_MONOTONIC is left alone, as a real clock step leaves it)."""
    found = sorted(glob.glob(LIBFAKETIME))
    if not found:
        pytest.fail(f"{LIBFAKETIME} is missing: install Debian's `faketime` package "
                    "(make test does: it is in TEST_PACKAGES)")
    environment = dict(os.environ, LD_PRELOAD=found[0],
                       FAKETIME_TIMESTAMP_FILE=str(offset_file), FAKETIME_NO_CACHE="1",
                       FAKETIME_DONT_FAKE_MONOTONIC="1")
    log_path = suite.config.parent / "faked-worker.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen([str(BIN / "mailapi-worker"), "--config", str(suite.config)],
                                   stdout=log_file, stderr=subprocess.STDOUT, env=environment)
    daemon = Daemon("worker", process, log_path)
    suite.daemons.append(daemon)
    return daemon


def set_offset(path: Path, offset: str) -> None:
    """Atomically: libfaketime rereads the file at every clock read."""
    scratch = path.with_suffix(".new")
    scratch.write_text(offset + "\n")
    os.replace(scratch, path)


def queue_state(suite: Suite, recipient: str) -> tuple[str, int, float] | None:
    database = suite.config.parent / "mail-api.sqlite3"
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as connection:
        found = connection.execute(
            "SELECT state, attempts, updated_at FROM outbound_queue WHERE recipient = ?",
            (recipient,)).fetchone()
    return None if found is None else (str(found[0]), int(found[1]), float(found[2]))


def post(suite: Suite, recipient: str) -> None:
    body = webhook_body(recipient, f"tok-{recipient}")
    body["expiresAt"] = iso(time.time() + EXPIRES_IN)
    status, answer = suite.post(body)
    assert status == 202, answer


def log_records(daemon: Daemon) -> list[dict[str, Any]]:
    records = []
    for line in daemon.output().splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


def test_the_real_worker_rides_out_an_hour_forward_and_back(suite: Suite,
                                                            smtp_server: SmtpServer) -> None:
    """mailapi-worker under libfaketime (the receiver keeps the real clock): an hour forward,
    a deferral written then, an hour back. The deferred row is retried within its backoff,
    not an hour later, and every message goes out exactly once; no wait logged is negative."""
    offset = suite.config.parent / "clock-offset"
    set_offset(offset, "+0")
    suite.start_receiver()
    worker = start_faked_worker(suite, offset)
    wait_until(lambda: "worker ready" in worker.output(), message="worker ready")
    recorder = smtp_server.recorder
    post(suite, "before@example.com")
    recorder.wait_for(1)

    set_offset(offset, "+3600")  # an hour forward
    post(suite, "ahead@example.com")
    recorder.wait_for(2)
    recorder.faults.rcpt_reply = "451 4.3.0 try again later"
    post(suite, "deferred@example.com")
    wait_until(lambda: (queue_state(suite, "deferred@example.com") or ("", 0, 0.0))[1] >= 1,
               message="a deferral under the forward clock")
    ahead = queue_state(suite, "deferred@example.com")
    assert ahead is not None and ahead[2] > time.time() + HOUR / 2  # written an hour ahead

    set_offset(offset, "+0")  # and back: the deferred row was written an hour "ahead"
    # Retried again under the real clock (so with its updated_at back near now), not an hour on.
    wait_until(lambda: (queue_state(suite, "deferred@example.com") or ("", 0, HOUR))[2]
               < time.time() + 60, timeout=30, message="a retry of the deferred row after the "
               "step back (a row written an hour ahead was stranded)")
    recorder.faults.rcpt_reply = None
    post(suite, "after@example.com")
    recorder.wait_for(4, timeout=30)
    wait_until(lambda: queue_state(suite, "deferred@example.com") is None,
               message="the deferred row deleted")

    assert worker.process.poll() is None
    ids = [message.parsed()["Message-ID"] for message in recorder.messages]
    assert len(ids) == 4 == len(set(ids))
    records = log_records(worker)
    assert not [r for r in records if r.get("level") in ("error", "critical")]
    for record in records:
        for key in ("seconds", "retry_in"):
            if key in record:
                assert record[key] >= 0, record
