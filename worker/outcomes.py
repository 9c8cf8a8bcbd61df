"""From one delivery attempt to the row change it calls for (pure), and storing them all."""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum

from sqlalchemy import Engine

from mailapi import events
from mailapi import queue as outbound
from mailapi.db import write_transaction
from mailapi.delivery.backoff import retry_delay
from mailapi.delivery.outcome import Action, DeliveryFailure, classify
from mailapi.deliverylog import DeliveryLog
from mailapi.queue import ClaimedMessage
from mailapi.settings import Settings


class Result(Enum):
    DELIVERED = "delivered"
    FAILED = "failed"  # refused by the server with a permanent error
    RETRY = "retry"
    PAUSE = "pause"  # the queue must pause; this message goes back untouched
    EXPIRED = "expired"  # its token expired before we could send it
    UNTRIED = "untried"  # shutdown or pause came first


@dataclass(frozen=True)
class Attempt:
    message: ClaimedMessage
    result: Result
    reply: str = ""
    failure: DeliveryFailure | None = None


@dataclass(frozen=True)
class RowChange:
    """What to write for one attempt."""

    attempt: Attempt
    change: str  # delete | defer | fail | release
    next_attempt_at: float = 0.0
    reason: str = ""
    detail: str = ""
    event: str = ""


def attempt_from_failure(message: ClaimedMessage, failure: DeliveryFailure) -> Attempt:
    action = classify(failure)
    result = {Action.RETRY: Result.RETRY, Action.FAIL: Result.FAILED,
              Action.PAUSE: Result.PAUSE}[action]
    return Attempt(message, result, failure=failure)


def plan(attempt: Attempt, settings: Settings, now: float, rng: random.Random) -> RowChange:
    message = attempt.message
    detail = str(attempt.failure) if attempt.failure else attempt.reply
    if attempt.result is Result.DELIVERED:
        return RowChange(attempt, "delete", detail=detail, event=events.DELIVERED)
    if attempt.result is Result.FAILED:
        return RowChange(attempt, "fail", reason="rejected", detail=detail, event=events.FAILED)
    if attempt.result is Result.EXPIRED:
        return RowChange(attempt, "fail", reason="expired",
                         detail="token expired before delivery; not sent", event=events.FAILED)
    if attempt.result is Result.PAUSE:
        return RowChange(attempt, "release", detail=detail, event=events.PAUSED)
    if attempt.result is Result.UNTRIED:
        return RowChange(attempt, "release", detail="")
    # RETRY: back off, unless attempts or lifetime are used up.
    if message.attempts >= settings.retry_max_attempts:
        return RowChange(attempt, "fail", reason="attempts",
                         detail=f"gave up after {message.attempts} attempts: {detail}",
                         event=events.FAILED)
    delay = retry_delay(message.attempts, base_seconds=settings.retry_base_seconds,
                        max_seconds=settings.retry_max_seconds, rng=rng)
    next_attempt_at = now + delay
    deadline = min(message.expires_at, message.created_at + settings.message_max_age_seconds)
    if next_attempt_at >= deadline:
        return RowChange(attempt, "fail", reason="expired",
                         detail=f"expires before the next retry: {detail}", event=events.FAILED)
    return RowChange(attempt, "defer", next_attempt_at=next_attempt_at, detail=detail,
                     event=events.DEFERRED)


def store(engine: Engine, changes: list[RowChange], now: float) -> list[RowChange]:
    """Apply every change in one transaction; returns those whose lease had been lost
    (another worker owns the row now, so they changed nothing)."""
    lost: list[RowChange] = []
    with write_transaction(engine) as connection:
        for change in changes:
            message = change.attempt.message
            queue_id, token = message.queue_id, message.lease_token
            if change.change == "delete":
                applied = outbound.mark_delivered(connection, queue_id, token)
            elif change.change == "defer":
                applied = outbound.defer(connection, queue_id, token,
                                         next_attempt_at=change.next_attempt_at,
                                         error=change.detail, now=now)
            elif change.change == "fail":
                applied = outbound.fail(connection, queue_id, token, reason=change.reason,
                                        error=change.detail, now=now)
            else:
                applied = outbound.release(connection, queue_id, token, now=now,
                                           error=change.detail or None)
            if not applied:
                lost.append(change)
                continue
            if change.event:
                failure = change.attempt.failure
                events.record_event(connection, events.DeliveryEvent(
                    queue_id=queue_id, message_id=message.message_id,
                    recipient=message.recipient, outcome=change.event,
                    smtp_code=failure.code if failure else _reply_code(change.attempt.reply),
                    detail=change.detail[:2000], at=now))
    return lost


def write_log(log: DeliveryLog | None, changes: list[RowChange], now: float) -> None:
    if log is None:
        return
    for change in changes:
        if not change.event:
            continue
        attempt = change.attempt
        failure = attempt.failure
        log.write(at=now, queue_id=attempt.message.queue_id,
                  message_id=attempt.message.message_id, recipient=attempt.message.recipient,
                  outcome=change.event if change.change != "fail" else f"failed:{change.reason}",
                  code=failure.code if failure else _reply_code(attempt.reply),
                  detail=change.detail, attempt=attempt.message.attempts)


def _reply_code(reply: str) -> int | None:
    head = reply[:3]
    return int(head) if head.isdigit() else None
