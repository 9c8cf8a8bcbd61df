"""The append-only audit log: who changed what, from where, and when."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Connection, func, select

from mailapi.models import audit_log


def record(
    connection: Connection,
    *,
    actor: str,
    action: str,
    target: str,
    source: str,
    detail: str | None = None,
    at: float | None = None,
) -> None:
    """Append one entry inside the caller's transaction (never a secret's value)."""
    connection.execute(
        audit_log.insert().values(
            at=time.time() if at is None else at,
            actor=actor[:128],
            action=action[:64],
            target=target[:255],
            source=source[:64],
            detail=None if detail is None else detail[:2000],
        )
    )


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: float
    actor: str
    action: str
    target: str
    source: str
    detail: str | None


def _matching(actor_contains: str | None, action: str | None) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if actor_contains:
        conditions.append(audit_log.c.actor.contains(actor_contains, autoescape=True))
    if action:
        conditions.append(audit_log.c.action == action)
    return conditions


def list_audit(connection: Connection, *, limit: int = 50, offset: int = 0,
               actor_contains: str | None = None, action: str | None = None
               ) -> list[AuditEntry]:
    """Entries newest first, optionally by actor (substring) and action (exact)."""
    a = audit_log.c
    rows = connection.execute(
        select(a.id, a.at, a.actor, a.action, a.target, a.source, a.detail)
        .where(*_matching(actor_contains, action))
        .order_by(a.at.desc(), a.id.desc()).limit(limit).offset(offset))
    return [AuditEntry(*row) for row in rows]


def count_audit(connection: Connection, *, actor_contains: str | None = None,
                action: str | None = None) -> int:
    query = select(func.count()).select_from(audit_log).where(
        *_matching(actor_contains, action))
    return int(connection.execute(query).scalar_one())


def audit_actions(connection: Connection) -> list[str]:
    """The distinct actions recorded so far, for a filter list."""
    return list(connection.execute(
        select(audit_log.c.action).distinct().order_by(audit_log.c.action)).scalars())
