"""The queue's circuit breaker: a pause that authentication or TLS failures switch on."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, func, select, update

from mailapi.models import queue_pause


@dataclass(frozen=True)
class PauseState:
    paused_until: float | None
    reason: str | None
    failures: int
    settings_fingerprint: str | None

    def active(self, now: float, fingerprint: str) -> bool:
        """Paused until the time passes or the SMTP settings change (the fix may be in)."""
        return (self.paused_until is not None and now < self.paused_until
                and self.settings_fingerprint == fingerprint)


def read_pause(connection: Connection) -> PauseState:
    row = connection.execute(select(queue_pause.c.paused_until, queue_pause.c.reason,
                                    queue_pause.c.failures, queue_pause.c.settings_fingerprint)
                             .where(queue_pause.c.id == 1)).one()
    return PauseState(*row)


def set_pause(connection: Connection, *, until: float, reason: str, failures: int,
              fingerprint: str, now: float) -> None:
    connection.execute(update(queue_pause).where(queue_pause.c.id == 1).values(
        paused_until=until, reason=reason[:2000], failures=failures,
        settings_fingerprint=fingerprint, updated_at=now))


def clear_pause(connection: Connection, *, now: float) -> None:
    connection.execute(update(queue_pause).where(queue_pause.c.id == 1).values(
        paused_until=None, reason=None, failures=0, settings_fingerprint=None, updated_at=now))


def rebase_pause_after_clock_step(connection: Connection, *, now: float,
                                  tolerance: float) -> None:
    """A pause set after `now` (the wall clock stepped back) lasts what it was set to, from now."""
    connection.execute(update(queue_pause).where(
        queue_pause.c.id == 1, queue_pause.c.paused_until.is_not(None),
        queue_pause.c.updated_at > now + tolerance).values(
        paused_until=now + func.max(0.0, queue_pause.c.paused_until - queue_pause.c.updated_at),
        updated_at=now))
