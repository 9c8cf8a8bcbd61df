"""Server-side panel sessions referenced by an itsdangerous-signed cookie.

The cookie holds a random session id signed with the panel secret; the table keys the row by
the id's SHA-256. A session ends on logout, password change, disabling the admin, rotating the
secret, after 15 idle minutes, or 8 hours after login, whichever comes first.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, Signer
from sqlalchemy import Connection, delete, or_, select, update

from mailapi import audit
from mailapi.models import admins, panel_secret, panel_sessions

COOKIE = "mailapi_session"
IDLE_SECONDS = 15 * 60
ABSOLUTE_SECONDS = 8 * 3600
_SALT = "mailapi.panel.session"


@dataclass(frozen=True)
class Session:
    id_hash: str
    admin_id: int
    username: str
    csrf_token: str
    created_at: float
    last_seen_at: float
    flash: list[tuple[str, str]]


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def read_secret(connection: Connection) -> str:
    return str(connection.execute(select(panel_secret.c.session_secret)
                                  .where(panel_secret.c.id == 1)).scalar_one())


def signer(secret: str) -> Signer:
    return Signer(secret, salt=_SALT, digest_method=hashlib.sha256)


def create(connection: Connection, admin_id: int, *, source: str, user_agent: str,
           now: float) -> str:
    """A fresh session (a new id at every login); returns the signed cookie value."""
    session_id = secrets.token_urlsafe(32)
    connection.execute(panel_sessions.insert().values(
        id_hash=_hash(session_id), admin_id=admin_id, csrf_token=secrets.token_urlsafe(32),
        created_at=now, last_seen_at=now, source=source[:64], user_agent=user_agent[:255]))
    return signer(read_secret(connection)).sign(session_id).decode()


def load(connection: Connection, cookie: str | None, *, now: float) -> Session | None:
    """The live session the cookie names, or None (bad signature, ended, timed out)."""
    if not cookie or len(cookie) > 512:
        return None
    try:
        session_id = signer(read_secret(connection)).unsign(cookie).decode()
    except (BadSignature, UnicodeDecodeError):
        return None
    s, a = panel_sessions.c, admins.c
    row = connection.execute(
        select(s.id_hash, s.admin_id, a.username, s.csrf_token, s.created_at, s.last_seen_at,
               s.flash, a.disabled)
        .join_from(panel_sessions, admins, a.id == s.admin_id)
        .where(s.id_hash == _hash(session_id))).first()
    if row is None or bool(row[7]):
        return None
    if now - row[5] > IDLE_SECONDS or now - row[4] > ABSOLUTE_SECONDS:
        return None
    flash = [tuple(item) for item in json.loads(row[6])] if row[6] else []
    return Session(row[0], row[1], row[2], row[3], row[4], row[5],
                   [(str(kind), str(text)) for kind, text in flash])


def touch(connection: Connection, session: Session, *, now: float, clear_flash: bool) -> None:
    values: dict[str, object] = {"last_seen_at": now}
    if clear_flash:
        values["flash"] = None
    connection.execute(update(panel_sessions)
                       .where(panel_sessions.c.id_hash == session.id_hash).values(**values))


def add_flash(connection: Connection, id_hash: str, kind: str, text: str) -> None:
    current = connection.execute(select(panel_sessions.c.flash)
                                 .where(panel_sessions.c.id_hash == id_hash)).scalar()
    items = json.loads(current) if current else []
    items.append([kind, text[:1000]])
    connection.execute(update(panel_sessions).where(panel_sessions.c.id_hash == id_hash)
                       .values(flash=json.dumps(items[-5:])))


def end(connection: Connection, id_hash: str) -> None:
    connection.execute(delete(panel_sessions).where(panel_sessions.c.id_hash == id_hash))


def prune(connection: Connection, *, now: float) -> int:
    result = connection.execute(delete(panel_sessions).where(or_(
        panel_sessions.c.last_seen_at < now - IDLE_SECONDS,
        panel_sessions.c.created_at < now - ABSOLUTE_SECONDS)))
    return int(result.rowcount)


def rotate_secret(connection: Connection, *, actor: str, source: str, now: float) -> int:
    """A new signing secret; every session ends. Returns how many were ended."""
    ended = connection.execute(delete(panel_sessions)).rowcount
    connection.execute(update(panel_secret).where(panel_secret.c.id == 1).values(
        session_secret=secrets.token_urlsafe(48), generation=panel_secret.c.generation + 1,
        rotated_at=now))
    audit.record(connection, actor=actor, action="session_secret.rotated", target="panel",
                 source=source, detail=f"{ended} session(s) ended", at=now)
    return int(ended)
