"""Panel administrators and API keys: creation, passwords, enabling, keys shown once.

Every change is audited in the caller's transaction. Passwords are argon2id hashes
(argon2-cffi's defaults, RFC 9106's second recommended profile); API keys are 256-bit
random strings, so a SHA-256 of the key is enough to store and look them up.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import ColumnElement, Connection, func, select, update

from mailapi import audit
from mailapi.models import admins, api_keys, panel_sessions

# Matched with fullmatch: "$" would also accept a trailing newline.
USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024
API_KEY_PREFIX = "mk_"
SCOPES = ("read", "admin")

_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the user is unknown, so that path costs the same time as a
    wrong password for a real user. Made on first use: hashing at import would slow every
    process and CLI command that imports this module."""
    return _hasher.hash(secrets.token_urlsafe(16))


class AccountError(ValueError):
    """A request about an admin or API key that cannot be honoured; the message says why."""


@dataclass(frozen=True)
class Admin:
    id: int
    username: str
    disabled: bool
    created_at: float
    created_by: str
    password_changed_at: float
    last_login_at: float | None


@dataclass(frozen=True)
class ApiKey:
    id: int
    name: str
    prefix: str
    scope: str
    created_at: float
    created_by: str
    expires_at: float | None
    revoked_at: float | None
    last_used_at: float | None

    def usable(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def state(self, now: float) -> str:
        """active | expired | revoked, as the panel and the CLI show it."""
        if self.revoked_at is not None:
            return "revoked"
        return "active" if self.usable(now) else "expired"


def check_username(username: str) -> str:
    if not USERNAME.fullmatch(username):
        raise AccountError("user name: 1 to 64 characters, letters, digits and . _ @ -, "
                           "starting with a letter or digit")
    return username


def check_password(password: str, username: str = "") -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"password: at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise AccountError(f"password: at most {MAX_PASSWORD_LENGTH} characters")
    if username and password.lower() == username.lower():
        raise AccountError("password: must not be the user name")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def _admin_columns() -> list[ColumnElement[Any]]:
    a = admins.c
    return [a.id, a.username, a.disabled, a.created_at, a.created_by, a.password_changed_at,
            a.last_login_at]


def list_admins(connection: Connection) -> list[Admin]:
    rows = connection.execute(select(*_admin_columns()).order_by(admins.c.username))
    return [Admin(row[0], row[1], bool(row[2]), *row[3:]) for row in rows]


def get_admin(connection: Connection, admin_id: int) -> Admin | None:
    row = connection.execute(select(*_admin_columns()).where(admins.c.id == admin_id)).first()
    return None if row is None else Admin(row[0], row[1], bool(row[2]), *row[3:])


def find_admin(connection: Connection, username: str) -> Admin | None:
    row = connection.execute(select(*_admin_columns())
                             .where(admins.c.username == username)).first()
    return None if row is None else Admin(row[0], row[1], bool(row[2]), *row[3:])


def count_active_admins(connection: Connection) -> int:
    return int(connection.execute(select(func.count()).select_from(admins)
                                  .where(admins.c.disabled.is_(False))).scalar_one())


@dataclass(frozen=True)
class HashedPassword:
    """A new password already checked and hashed, so the slow argon2 step can run before
    the write transaction instead of holding the database's write lock for it."""

    hash: str

    @classmethod
    def prepare(cls, password: str, username: str) -> HashedPassword:
        check_password(password, username)
        return cls(hash_password(password))


def _hashed(password: str | HashedPassword, username: str) -> str:
    if isinstance(password, HashedPassword):
        return password.hash
    return HashedPassword.prepare(password, username).hash


def create_admin(connection: Connection, username: str, password: str | HashedPassword, *,
                 actor: str, source: str, now: float) -> Admin:
    check_username(username)
    password_hash = _hashed(password, username)
    # Names differing only in case would read as the same person in the audit log.
    taken = connection.execute(select(admins.c.username).where(
        func.lower(admins.c.username) == username.lower())).scalar()
    if taken is not None:
        raise AccountError(f"an admin named {taken!r} already exists")
    result = connection.execute(admins.insert().values(
        username=username, password_hash=password_hash, disabled=False,
        created_at=now, created_by=actor[:128], password_changed_at=now))
    admin_id = int(result.inserted_primary_key[0])  # type: ignore[index]
    audit.record(connection, actor=actor, action="admin.created", target=username,
                 source=source, at=now)
    admin = get_admin(connection, admin_id)
    assert admin is not None
    return admin


def set_password(connection: Connection, admin_id: int, password: str | HashedPassword, *,
                 actor: str, source: str, now: float) -> int:
    """Change a password and end every session of that admin; returns sessions ended."""
    admin = _existing(connection, admin_id)
    password_hash = _hashed(password, admin.username)
    connection.execute(update(admins).where(admins.c.id == admin_id).values(
        password_hash=password_hash, password_changed_at=now))
    ended = end_sessions_of(connection, admin_id)
    audit.record(connection, actor=actor, action="admin.password_reset", target=admin.username,
                 source=source, detail=f"{ended} session(s) ended", at=now)
    return ended


def set_disabled(connection: Connection, admin_id: int, disabled: bool, *, actor: str,
                 source: str, now: float) -> Admin:
    """Disable (ending its sessions) or enable an admin; the last active one stays active."""
    admin = _existing(connection, admin_id)
    if admin.disabled == disabled:
        return admin  # a repeated click or a replayed form: nothing to change or audit
    if disabled and count_active_admins(connection) <= 1:
        raise AccountError(f"{admin.username} is the last active admin and cannot be "
                           "disabled; create or enable another admin first")
    connection.execute(update(admins).where(admins.c.id == admin_id).values(disabled=disabled))
    if disabled:
        end_sessions_of(connection, admin_id)
    audit.record(connection, actor=actor,
                 action="admin.disabled" if disabled else "admin.enabled",
                 target=admin.username, source=source, at=now)
    updated = get_admin(connection, admin_id)
    assert updated is not None
    return updated


def end_sessions_of(connection: Connection, admin_id: int) -> int:
    result = connection.execute(panel_sessions.delete()
                                .where(panel_sessions.c.admin_id == admin_id))
    return int(result.rowcount)


def _existing(connection: Connection, admin_id: int) -> Admin:
    admin = get_admin(connection, admin_id)
    if admin is None:
        raise AccountError(f"no admin with id {admin_id}")
    return admin


def verify_login(connection: Connection, username: str, password: str) -> Admin | None:
    """The admin if the password matches an enabled account, else None.

    Unknown, disabled and wrong-password cases all run one argon2 verification, so the
    answer time does not tell them apart.
    """
    row = connection.execute(select(admins.c.id, admins.c.password_hash, admins.c.disabled)
                             .where(admins.c.username == username)).first()
    stored = _dummy_hash() if row is None else str(row[1])
    try:
        _hasher.verify(stored, password[:MAX_PASSWORD_LENGTH])
        matched = row is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        matched = False
    if not matched or row is None or bool(row[2]):
        return None
    return get_admin(connection, int(row[0]))


def burn_verification_time(password: str) -> None:
    """Spend what a login check costs, for refusals decided before the check (throttled)."""
    with contextlib.suppress(VerifyMismatchError, VerificationError, InvalidHashError):
        _hasher.verify(_dummy_hash(), password[:MAX_PASSWORD_LENGTH])


def record_login(connection: Connection, admin_id: int, *, now: float) -> None:
    connection.execute(update(admins).where(admins.c.id == admin_id).values(last_login_at=now))


# --- API keys -------------------------------------------------------------------------

def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()


def _key_columns() -> list[ColumnElement[Any]]:
    k = api_keys.c
    return [k.id, k.name, k.prefix, k.scope, k.created_at, k.created_by, k.expires_at,
            k.revoked_at, k.last_used_at]


def list_api_keys(connection: Connection) -> list[ApiKey]:
    rows = connection.execute(select(*_key_columns()).order_by(api_keys.c.id.desc()))
    return [ApiKey(*row) for row in rows]


def get_api_key(connection: Connection, key_id: int) -> ApiKey | None:
    row = connection.execute(select(*_key_columns()).where(api_keys.c.id == key_id)).first()
    return None if row is None else ApiKey(*row)


def create_api_key(connection: Connection, name: str, scope: str, *, expires_at: float | None,
                   actor: str, source: str, now: float) -> tuple[ApiKey, str]:
    """A new key; the plain key is returned once and never stored."""
    name = name.strip()
    # isprintable() also refuses DEL, C1 controls and bidi overrides that could disguise a
    # name in the tables and the audit log.
    if not name or len(name) > 128 or not name.isprintable():
        raise AccountError("name: 1 to 128 printable characters")
    if scope not in SCOPES:
        raise AccountError(f"scope: must be one of {', '.join(SCOPES)}")
    if expires_at is not None and expires_at <= now:
        raise AccountError("expiry: must be in the future")
    plain = API_KEY_PREFIX + secrets.token_urlsafe(32)
    prefix = plain[: len(API_KEY_PREFIX) + 6]
    result = connection.execute(api_keys.insert().values(
        name=name, prefix=prefix, key_hash=_key_hash(plain), scope=scope, created_at=now,
        created_by=actor[:128], expires_at=expires_at))
    key_id = int(result.inserted_primary_key[0])  # type: ignore[index]
    audit.record(connection, actor=actor, action="apikey.created", target=f"{name} ({prefix}…)",
                 source=source, detail=f"scope={scope}", at=now)
    key = get_api_key(connection, key_id)
    assert key is not None
    return key, plain


def revoke_api_key(connection: Connection, key_id: int, *, actor: str, source: str,
                   now: float) -> ApiKey:
    key = get_api_key(connection, key_id)
    if key is None:
        raise AccountError(f"no API key with id {key_id}")
    if key.revoked_at is None:
        connection.execute(update(api_keys).where(api_keys.c.id == key_id)
                           .values(revoked_at=now))
        audit.record(connection, actor=actor, action="apikey.revoked",
                     target=f"{key.name} ({key.prefix}…)", source=source, at=now)
    revoked = get_api_key(connection, key_id)
    assert revoked is not None
    return revoked


def authenticate_api_key(connection: Connection, presented: str, *, now: float
                         ) -> ApiKey | None:
    """The usable key matching `presented` (looked up by hash), else None."""
    if not presented.startswith(API_KEY_PREFIX) or len(presented) > 200:
        return None
    row = connection.execute(select(*_key_columns())
                             .where(api_keys.c.key_hash == _key_hash(presented))).first()
    if row is None:
        return None
    key = ApiKey(*row)
    return key if key.usable(now) else None


def touch_api_key(connection: Connection, key_id: int, *, now: float) -> None:
    connection.execute(update(api_keys).where(api_keys.c.id == key_id)
                       .values(last_used_at=now))
