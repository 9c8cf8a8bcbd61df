"""The append-only audit log: who changed what, from where, and when."""

from __future__ import annotations

import time

from sqlalchemy import Connection

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
