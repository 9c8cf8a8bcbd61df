"""Delivery events: one row per attempt outcome, for dashboards and `queue list`."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, func, select

from mailapi.models import delivery_events

DELIVERED = "delivered"
DEFERRED = "deferred"
FAILED = "failed"
PAUSED = "paused"
OUTCOMES = (DELIVERED, DEFERRED, FAILED, PAUSED)
# Every outcome that is not a delivery: what "errors" means on the dashboard and panel.
ERROR_OUTCOMES = (DEFERRED, FAILED, PAUSED)


@dataclass(frozen=True)
class DeliveryEvent:
    queue_id: int
    message_id: str
    recipient: str
    outcome: str
    smtp_code: int | None
    detail: str | None
    at: float


def record_event(connection: Connection, event: DeliveryEvent) -> None:
    connection.execute(delivery_events.insert().values(
        queue_id=event.queue_id, message_id=event.message_id, recipient=event.recipient,
        outcome=event.outcome, smtp_code=event.smtp_code, detail=event.detail, at=event.at,
    ))


def recent_events(connection: Connection, *, limit: int = 50, offset: int = 0,
                  queue_id: int | None = None,
                  outcomes: tuple[str, ...] | None = None) -> list[DeliveryEvent]:
    e = delivery_events
    query = select(e.c.queue_id, e.c.message_id, e.c.recipient, e.c.outcome, e.c.smtp_code,
                   e.c.detail, e.c.at)
    if queue_id is not None:
        query = query.where(e.c.queue_id == queue_id)
    if outcomes is not None:
        query = query.where(e.c.outcome.in_(outcomes))
    rows = connection.execute(query.order_by(e.c.id.desc()).limit(limit).offset(offset))
    return [DeliveryEvent(*row) for row in rows]


def outcome_counts_since(connection: Connection, since: float) -> dict[str, int]:
    e = delivery_events
    rows = connection.execute(
        select(e.c.outcome, func.count()).where(e.c.at >= since).group_by(e.c.outcome)
    )
    return {outcome: count for outcome, count in rows}


def count_events(connection: Connection, *, outcomes: tuple[str, ...] | None = None) -> int:
    e = delivery_events
    query = select(func.count()).select_from(e)
    if outcomes is not None:
        query = query.where(e.c.outcome.in_(outcomes))
    return int(connection.execute(query).scalar_one())
