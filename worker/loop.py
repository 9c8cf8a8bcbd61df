"""The worker loop: claim a batch, deliver it over a few sessions, record, wait when idle."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine

from mailapi import queue as outbound
from mailapi.db import StorageError, read_transaction, write_transaction
from mailapi.delivery.backoff import pause_length
from mailapi.delivery.smtp import SmtpParameters
from mailapi.deliverylog import DeliveryLog
from mailapi.faults import FaultInjector
from mailapi.faults import reached as fault_point
from mailapi.logging import get_logger
from mailapi.pause import (
    PauseState,
    clear_pause,
    read_pause,
    rebase_pause_after_clock_step,
    set_pause,
)
from mailapi.queue import ClaimedMessage
from mailapi.settings import Settings, SettingsCache
from worker.batch import deliver_batch
from worker.outcomes import Attempt, Result, RowChange, plan, store, write_log
from worker.transport import FileTransport, SmtpTransport, Transport

log = get_logger("worker")
HOUSEKEEPING_SECONDS = 1.0
PRUNE_SECONDS = 3600.0
KEEP_EVENTS_SECONDS = 14 * 86_400.0
MAX_IDLE_WAIT = 1.0
# Rows written further than this past the worker's clock mean the clock stepped back;
# a smaller step delays them by no more than this.
CLOCK_STEP_TOLERANCE = 60.0


@dataclass
class WorkerOptions:
    sessions: int = 4
    batch_size: int = 64
    lease_seconds: float = 300.0
    file_outbox: Path | None = None  # selects the development file backend
    ca_file: Path | None = None


@dataclass
class WorkerStats:
    delivered: int = 0
    deferred: int = 0
    failed: int = 0
    last_delivery_at: float | None = None
    paused_reason: str | None = None
    storage_errors: int = 0
    recent: list[str] = field(default_factory=list)


class Worker:
    def __init__(self, engine: Engine, settings: SettingsCache, options: WorkerOptions, *,
                 delivery_log: DeliveryLog | None = None,
                 clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None,
                 faults: FaultInjector | None = None) -> None:
        self.engine = engine
        self.faults = faults
        self.settings = settings
        self.options = options
        self.delivery_log = delivery_log
        self.clock = clock
        self.rng = rng or random.Random()  # jitter, not security
        self.stats = WorkerStats()
        self.stopping = asyncio.Event()
        self._transport: Transport | None = None
        self._transport_key: str | None = None
        self._housekept_at = float("-inf")
        self._pruned_at = float("-inf")
        self._pause_logged: str | None = None
        self._breaker_failures = 0  # as last read: a pause may outlive the process that set it
        self._paused_until: float | None = None  # while the last pass found the queue paused
        # How long the current pass may legitimately take (its lease), for the watchdog,
        # which reads it from the event loop without touching the database.
        self.longest_pass_seconds = options.lease_seconds

    # -- one pass -------------------------------------------------------------------------

    async def run_once(self) -> int:
        """Housekeeping, then one claimed batch delivered and recorded. Returns its size."""
        settings = self.settings.get()
        now = self.clock()
        self.longest_pass_seconds = self._lease_seconds(settings)
        await self._housekeeping(settings, now)
        if await self._paused(settings, now):
            return 0
        batch = await asyncio.to_thread(
            outbound.claim_batch, self.engine, now=now, limit=self._batch_limit(),
            lease_seconds=self.longest_pass_seconds,
            max_age_seconds=settings.message_max_age_seconds)
        if not batch:
            return 0
        fault_point(self.faults, "worker.after_claim")
        attempts = await self._deliver(batch, settings, now)
        if any(attempt.result is Result.DELIVERED for attempt in attempts):
            fault_point(self.faults, "worker.after_accept")
        await self._record(attempts, settings)
        return len(batch)

    def _batch_limit(self) -> int:
        # Half-open circuit: after a pause, probe with a single message first.
        return 1 if self.stats.paused_reason else self.options.batch_size

    @staticmethod
    def _worst_case_message_seconds(settings: Settings) -> float:
        # Connect, TLS, EHLO, AUTH, MAIL, RCPT and DATA each using the whole timeout.
        return 7.0 * settings.smtp_timeout

    def _lease_seconds(self, settings: Settings) -> float:
        # At least two worst-case messages: sessions stop starting messages one worst case
        # before the lease ends, so a slow upstream never outlives the lease.
        return max(self.options.lease_seconds, 2 * self._worst_case_message_seconds(settings))

    async def _housekeeping(self, settings: Settings, now: float) -> None:
        if abs(now - self._housekept_at) < HOUSEKEEPING_SECONDS:
            return
        self._housekept_at = now
        prune = abs(now - self._pruned_at) >= PRUNE_SECONDS
        if prune:
            self._pruned_at = now

        def work() -> tuple[int, int]:
            with write_transaction(self.engine) as connection:
                outbound.rebase_after_clock_step(connection, now=now,
                                                 tolerance=CLOCK_STEP_TOLERANCE)
                rebase_pause_after_clock_step(connection, now=now,
                                              tolerance=CLOCK_STEP_TOLERANCE)
                released = outbound.release_expired_leases(
                    connection, now=now, max_reclaims=settings.max_lease_reclaims)
                expired = outbound.expire_overdue(
                    connection, now=now, max_age_seconds=settings.message_max_age_seconds)
                if prune:
                    outbound.prune(connection, now=now, keep_events_seconds=KEEP_EVENTS_SECONDS)
            return released, expired

        released, expired = await asyncio.to_thread(work)
        if released:
            log.warning("reclaimed expired leases", count=released)
        if expired:
            log.warning("failed expired messages", count=expired)

    async def _paused(self, settings: Settings, now: float) -> bool:
        if self.options.file_outbox is None and not settings.smtp_host:
            self._log_pause_once("smtp_host is not configured; messages wait in the queue")
            self._paused_until = float("inf")
            return True

        def read() -> PauseState:
            with read_transaction(self.engine) as connection:
                return read_pause(connection)

        pause = await asyncio.to_thread(read)
        self._breaker_failures = pause.failures
        if pause.active(now, settings.smtp_fingerprint()):
            self._log_pause_once(f"queue paused: {pause.reason}")
            self._paused_until = pause.paused_until
            return True
        self._pause_logged = None
        self._paused_until = None
        return False

    def _log_pause_once(self, reason: str) -> None:
        if self._pause_logged != reason:
            self._pause_logged = reason
            log.error("delivery paused", reason=reason)

    # -- delivery -------------------------------------------------------------------------

    async def _transport_for(self, settings: Settings) -> Transport:
        outbox = self.options.file_outbox
        key = "file" if outbox is not None else settings.smtp_fingerprint()
        if self._transport is None or key != self._transport_key:
            if self._transport is not None:
                await self._transport.close()  # settings changed: new sessions
            if outbox is not None:
                self._transport = FileTransport(outbox)
            else:
                self._transport = SmtpTransport(
                    SmtpParameters.from_settings(settings, ca_file=self.options.ca_file),
                    self.options.sessions)
            self._transport_key = key
        return self._transport

    async def _deliver(self, batch: list[ClaimedMessage], settings: Settings,
                       claimed_at: float) -> list[Attempt]:
        transport = await self._transport_for(settings)
        start_deadline = (claimed_at + self._lease_seconds(settings)
                          - self._worst_case_message_seconds(settings))
        attempts: list[Attempt] = []
        try:
            await deliver_batch(
                transport, batch, attempts, sessions=self.options.sessions, clock=self.clock,
                stopping=self.stopping, start_deadline=start_deadline)
        except asyncio.CancelledError:
            # Shutdown past its grace period: record what already happened (a 250 must not
            # be forgotten, or the message goes out twice); the rest is released untried.
            await self._record(attempts, settings)
            raise
        return attempts

    async def _record(self, attempts: list[Attempt], settings: Settings) -> None:
        now = self.clock()
        changes = [plan(attempt, settings, now, self.rng) for attempt in attempts]
        delay = 0.05
        while True:
            try:
                lost = await asyncio.to_thread(store, self.engine, changes, now)
                break
            except StorageError as exc:
                # Hold on to the outcomes: forgetting a 250 would mean sending it again.
                self.stats.storage_errors += 1
                log.warning("cannot record outcomes yet", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        if lost:
            log.warning("leases lost before recording; another worker owns them",
                        count=len(lost), queue_ids=[c.attempt.message.queue_id for c in lost])
        applied = [c for c in changes if not any(c is stale for stale in lost)]
        # A 250 under a lost lease still went out: it is a real send and stays in the log.
        # Any other stale outcome changed nothing, so it is neither logged nor counted.
        happened = applied + [c for c in lost if c.change == "delete"]
        await asyncio.to_thread(write_log, self.delivery_log, happened, now)
        await self._update_breaker(applied, settings, now)
        self._count(happened, now)

    async def _update_breaker(self, changes: list[RowChange], settings: Settings,
                              now: float) -> None:
        paused = [c for c in changes if c.attempt.result is Result.PAUSE]
        delivered = any(c.attempt.result is Result.DELIVERED for c in changes)

        def work() -> str | None:
            with write_transaction(self.engine) as connection:
                state = read_pause(connection)
                if paused:
                    failures = state.failures + 1
                    length = pause_length(failures, base_seconds=settings.queue_pause_seconds)
                    reason = paused[0].detail
                    set_pause(connection, until=now + length, reason=reason, failures=failures,
                              fingerprint=settings.smtp_fingerprint(), now=now)
                    return reason
                if delivered and state.failures:
                    clear_pause(connection, now=now)
            return None

        if paused or (delivered and (self.stats.paused_reason or self._breaker_failures)):
            reason = await asyncio.to_thread(work)
            if reason is not None:
                log.error("queue paused after an authentication, TLS or configuration failure",
                          reason=reason)
            elif self.stats.paused_reason:
                log.info("queue resumed: delivery works again")
            self.stats.paused_reason = reason

    def _count(self, changes: list[RowChange], now: float) -> None:
        for change in changes:
            message = change.attempt.message
            if change.change == "delete":
                self.stats.delivered += 1
                self.stats.last_delivery_at = now
                log.info("delivered", queue_id=message.queue_id, reply=change.detail)
            elif change.change == "defer":
                self.stats.deferred += 1
                log.info("deferred", queue_id=message.queue_id, error=change.detail,
                         next_attempt_at=round(change.next_attempt_at, 3))
            elif change.change == "fail":
                self.stats.failed += 1
                log.warning("failed", queue_id=message.queue_id, reason=change.reason,
                            error=change.detail)

    # -- waiting ----------------------------------------------------------------------------

    async def idle_wait_seconds(self) -> float:
        """Until the next retry is due, but never long and never negative (clock steps).

        While the queue is paused, due messages wait for the pause to end: counting them as
        due would spin the loop (one pass per millisecond) for the whole pause.
        """
        if self._paused_until is not None:
            return min(MAX_IDLE_WAIT, max(0.0, self._paused_until - self.clock()))

        def read() -> float | None:
            with read_transaction(self.engine) as connection:
                return outbound.next_due_at(connection)

        due = await asyncio.to_thread(read)
        if due is None:
            return MAX_IDLE_WAIT
        return min(MAX_IDLE_WAIT, max(0.0, due - self.clock()))

    async def close(self) -> None:
        if self._transport is not None:
            await self._transport.close()
            self._transport = None

    async def close_idle_connections(self) -> None:
        if self._transport is not None:
            await self._transport.close_idle()
