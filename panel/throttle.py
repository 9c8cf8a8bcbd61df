"""Login throttling per account and per client address, kept in the database.

Five failures for one user name within 15 minutes lock that name for 15 minutes; twenty from
one address lock the address. The lock is checked before the password, and the refusal looks
exactly like a wrong password, so throttling reveals nothing about which names exist.
"""

from __future__ import annotations

from sqlalchemy import Connection, delete, select

from mailapi.models import login_failures

WINDOW_SECONDS = 15 * 60
LOCK_SECONDS = 15 * 60
ACCOUNT_LIMIT = 5
ADDRESS_LIMIT = 20


def _keys(username: str, address: str) -> list[tuple[str, int]]:
    return [(f"user:{username.lower()[:150]}", ACCOUNT_LIMIT), (f"ip:{address[:150]}",
                                                                 ADDRESS_LIMIT)]


def locked(connection: Connection, username: str, address: str, *, now: float) -> bool:
    keys = [key for key, _ in _keys(username, address)]
    rows = connection.execute(select(login_failures.c.locked_until)
                              .where(login_failures.c.key.in_(keys)))
    return any(until > now for (until,) in rows)


def record_failure(connection: Connection, username: str, address: str, *, now: float) -> None:
    for key, limit in _keys(username, address):
        row = connection.execute(select(login_failures.c.failures, login_failures.c.first_at)
                                 .where(login_failures.c.key == key)).first()
        failures, first_at = (0, now) if row is None or now - row[1] > WINDOW_SECONDS else row
        failures += 1
        locked_until = now + LOCK_SECONDS if failures >= limit else 0.0
        connection.execute(delete(login_failures).where(login_failures.c.key == key))
        connection.execute(login_failures.insert().values(
            key=key, failures=failures, first_at=first_at, locked_until=locked_until))


def record_success(connection: Connection, username: str) -> None:
    connection.execute(delete(login_failures)
                       .where(login_failures.c.key == f"user:{username.lower()[:150]}"))


def prune(connection: Connection, *, now: float) -> None:
    connection.execute(delete(login_failures).where(
        login_failures.c.first_at < now - WINDOW_SECONDS,
        login_failures.c.locked_until < now))
