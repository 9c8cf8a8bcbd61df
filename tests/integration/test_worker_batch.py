"""One batch: an unreachable upstream, the lease deadline, and a bug in a transport."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from sqlalchemy import Engine

from mailapi import queue as outbound
from mailapi.queue import ClaimedMessage
from tests.integration.worker_helpers import (
    Clock,
    enqueue_some,
    make_worker,
    queued_row,
    run_passes,
    smtp_settings,
)
from tests.support.ports import free_port
from worker.batch import deliver_batch
from worker.outcomes import Attempt, Result
from worker.transport import FileTransport


def test_unreachable_upstream_defers_the_whole_batch_with_backoff(engine: Engine,
                                                                  tmp_path: Path) -> None:
    clock = Clock()
    settings = smtp_settings(engine, free_port(), retry_base_seconds=60)  # nothing listens
    queue_ids = enqueue_some(engine, settings, clock.now, count=6)
    worker = make_worker(engine, tmp_path, clock)
    assert run_passes(worker) == [6]
    rows = [queued_row(engine, queue_id) for queue_id in queue_ids]
    assert {row.state for row in rows} == {"queued"}
    assert all(clock.now + 30 <= row.next_attempt_at <= clock.now + 60 for row in rows)
    assert all(row.attempts == 1 for row in rows)
    untried = [row for row in rows if "not attempted, upstream unreachable" in
               (row.last_error or "")]
    assert len(untried) >= 6 - 2  # at most one real attempt per session (2 sessions)
    # Nothing is due any more: the next pass claims nothing (no tight loop).
    assert run_passes(worker) == [0]


def claimed(engine: Engine, clock: Clock, count: int) -> list[ClaimedMessage]:
    settings = smtp_settings(engine, free_port())
    enqueue_some(engine, settings, clock.now, count=count)
    return outbound.claim_batch(engine, now=clock.now, limit=count, lease_seconds=300,
                                max_age_seconds=86_400)


def test_no_message_is_started_past_the_lease_deadline(engine: Engine, tmp_path: Path) -> None:
    clock = Clock()
    batch = claimed(engine, clock, 3)
    attempts: list[Attempt] = []
    asyncio.run(deliver_batch(
        FileTransport(tmp_path / "outbox"), batch, attempts, sessions=2, clock=clock,
        stopping=asyncio.Event(), start_deadline=clock.now - 1))
    assert sorted(a.result.value for a in attempts) == ["untried"] * 3
    assert not (tmp_path / "outbox").exists()


class BrokenForOne(FileTransport):
    """The development transport with a bug that strikes one message."""

    def __init__(self, outbox: Path, broken_id: int) -> None:
        super().__init__(outbox)
        self.broken_id = broken_id

    async def send(self, slot: int, message: ClaimedMessage) -> str:
        if message.queue_id == self.broken_id:
            raise RuntimeError("boom")
        return await super().send(slot, message)


def test_a_bug_on_one_message_does_not_stop_the_others(engine: Engine, tmp_path: Path) -> None:
    clock = Clock()
    batch = claimed(engine, clock, 4)
    broken = batch[1].queue_id
    attempts: list[Attempt] = []
    asyncio.run(deliver_batch(
        BrokenForOne(tmp_path / "outbox", broken), batch, attempts, sessions=1, clock=clock,
        stopping=asyncio.Event(), start_deadline=clock.now + 300))
    results = {a.message.queue_id: a for a in attempts}
    assert results[broken].result is Result.RETRY
    assert results[broken].failure is not None
    assert "internal error: RuntimeError: boom" in str(results[broken].failure)
    delivered = [q for q, a in results.items() if a.result is Result.DELIVERED]
    assert len(delivered) == 3
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 3


def test_stopping_releases_everything_not_started(engine: Engine, tmp_path: Path) -> None:
    clock = Clock()
    batch = claimed(engine, clock, 3)
    stopping = asyncio.Event()
    stopping.set()
    attempts: list[Attempt] = []
    asyncio.run(deliver_batch(
        FileTransport(tmp_path / "outbox"), batch, attempts, sessions=2, clock=clock,
        stopping=stopping, start_deadline=clock.now + 300))
    assert [a.result for a in attempts] == [Result.UNTRIED] * 3


class HangsAfterFirst(FileTransport):
    """Delivers one message, then never answers (an upstream stuck at the final dot)."""

    async def send(self, slot: int, message: ClaimedMessage) -> str:
        if list(self.outbox_dir.glob("*.eml")):
            await asyncio.sleep(3600)
        return await super().send(slot, message)


def test_a_cancelled_batch_still_reports_what_was_delivered(engine: Engine,
                                                            tmp_path: Path) -> None:
    """Shutdown past its grace period must not forget a 250, or the message goes out twice."""
    clock = Clock()
    batch = claimed(engine, clock, 3)
    attempts: list[Attempt] = []

    async def cut_short() -> None:
        task = asyncio.create_task(deliver_batch(
            HangsAfterFirst(tmp_path / "outbox"), batch, attempts, sessions=1, clock=clock,
            stopping=asyncio.Event(), start_deadline=clock.now + 300))
        await asyncio.sleep(0.2)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(cut_short())
    assert [a.result for a in attempts] == [Result.DELIVERED, Result.UNTRIED, Result.UNTRIED]
    assert attempts[0].message.queue_id == batch[0].queue_id
