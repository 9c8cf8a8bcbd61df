"""The accounts core on a real migrated SQLite file: admins, passwords, sessions, API keys."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from sqlalchemy import Engine, select

from mailapi import accounts
from mailapi.accounts import AccountError
from mailapi.db import read_transaction, write_transaction
from mailapi.models import api_keys, audit_log, panel_sessions
from panel import sessions

NOW = 1_790_000_000.0
PASSWORD = "correct horse battery staple"
OTHER = "another long enough passphrase"


def create(engine: Engine, username: str, password: str = PASSWORD) -> accounts.Admin:
    with write_transaction(engine) as connection:
        return accounts.create_admin(connection, username, password, actor="alice",
                                     source="192.0.2.1", now=NOW)


def audit_actions(engine: Engine) -> list[tuple[str, str]]:
    with read_transaction(engine) as connection:
        rows = connection.execute(select(audit_log.c.action, audit_log.c.target)
                                  .order_by(audit_log.c.id))
        return [(row[0], row[1]) for row in rows]


def open_session(engine: Engine, admin_id: int) -> str:
    with write_transaction(engine) as connection:
        return sessions.create(connection, admin_id, source="192.0.2.1", user_agent="test",
                               now=NOW)


def session_count(engine: Engine) -> int:
    with read_transaction(engine) as connection:
        return len(connection.execute(select(panel_sessions.c.id_hash)).all())


@pytest.mark.parametrize("username", ["", "bob\n", "bob smith", "-bob", "<script>", "a" * 65,
                                      "bøb"])
def test_user_names_outside_the_allowed_form_are_refused(username: str) -> None:
    with pytest.raises(AccountError, match="user name"):
        accounts.check_username(username)


def test_acceptable_user_names_pass() -> None:
    for username in ("bob", "ops.team-1", "a@example.com", "A" * 64):
        assert accounts.check_username(username) == username


def test_password_rules() -> None:
    for password, message in (("short", "at least 12"), ("x" * 1025, "at most 1024"),
                              ("Bob.Example1", "must not be the user name")):
        with pytest.raises(AccountError, match=message):
            accounts.check_password(password, "bob.example1")


def test_an_admin_is_created_audited_and_verifies(engine: Engine) -> None:
    admin = create(engine, "bob")
    assert (admin.username, admin.disabled, admin.created_by) == ("bob", False, "alice")
    assert admin.password_changed_at == NOW and admin.last_login_at is None
    with read_transaction(engine) as connection:
        assert accounts.verify_login(connection, "bob", PASSWORD) == admin
        assert accounts.verify_login(connection, "bob", OTHER) is None
        assert accounts.verify_login(connection, "nobody", PASSWORD) is None
        assert accounts.verify_login(connection, "BOB", PASSWORD) is None
    assert audit_actions(engine) == [("admin.created", "bob")]


def test_names_differing_only_in_case_are_one_name(engine: Engine) -> None:
    create(engine, "bob")
    with pytest.raises(AccountError, match="an admin named 'bob' already exists"):
        create(engine, "Bob")
    with read_transaction(engine) as connection:
        assert [a.username for a in accounts.list_admins(connection)] == ["bob"]


def test_the_last_active_admin_stays_active(engine: Engine) -> None:
    bob = create(engine, "bob")
    carol = create(engine, "carol")
    with write_transaction(engine) as connection:
        accounts.set_disabled(connection, carol.id, True, actor="bob", source="s", now=NOW)
    with pytest.raises(AccountError, match="bob is the last active admin"), \
            write_transaction(engine) as connection:
        accounts.set_disabled(connection, bob.id, True, actor="bob", source="s", now=NOW)
    with read_transaction(engine) as connection:
        assert accounts.count_active_admins(connection) == 1
        assert accounts.verify_login(connection, "carol", PASSWORD) is None


def test_disabling_ends_sessions_and_repeating_it_changes_nothing(engine: Engine) -> None:
    create(engine, "bob")
    carol = create(engine, "carol")
    cookie = open_session(engine, carol.id)
    with write_transaction(engine) as connection:
        assert sessions.load(connection, cookie, now=NOW) is not None
        accounts.set_disabled(connection, carol.id, True, actor="bob", source="s", now=NOW)
        again = accounts.set_disabled(connection, carol.id, True, actor="bob", source="s",
                                      now=NOW)
        assert again.disabled
        assert sessions.load(connection, cookie, now=NOW) is None
    assert session_count(engine) == 0
    assert audit_actions(engine).count(("admin.disabled", "carol")) == 1


def test_a_new_password_ends_that_admins_sessions_only(engine: Engine) -> None:
    bob = create(engine, "bob")
    carol = create(engine, "carol")
    open_session(engine, bob.id)
    open_session(engine, bob.id)
    carol_cookie = open_session(engine, carol.id)
    with write_transaction(engine) as connection:
        ended = accounts.set_password(connection, bob.id, OTHER, actor="carol", source="s",
                                      now=NOW + 5)
    assert ended == 2 and session_count(engine) == 1
    with read_transaction(engine) as connection:
        assert sessions.load(connection, carol_cookie, now=NOW) is not None
        assert accounts.verify_login(connection, "bob", PASSWORD) is None
        updated = accounts.verify_login(connection, "bob", OTHER)
    assert updated is not None and updated.password_changed_at == NOW + 5
    with pytest.raises(AccountError, match="no admin with id 99"), \
            write_transaction(engine) as connection:
        accounts.set_password(connection, 99, OTHER, actor="carol", source="s", now=NOW)


def make_key(engine: Engine, name: str = "monitoring", scope: str = "read",
             expires_at: float | None = None) -> tuple[accounts.ApiKey, str]:
    with write_transaction(engine) as connection:
        return accounts.create_api_key(connection, name, scope, expires_at=expires_at,
                                       actor="alice", source="s", now=NOW)


def authenticate(engine: Engine, presented: str, now: float = NOW) -> accounts.ApiKey | None:
    with read_transaction(engine) as connection:
        return accounts.authenticate_api_key(connection, presented, now=now)


def test_an_api_key_is_stored_as_its_hash_and_authenticates(engine: Engine) -> None:
    key, plain = make_key(engine, scope="admin")
    assert plain.startswith("mk_") and len(plain) == 46 and plain.startswith(key.prefix)
    with read_transaction(engine) as connection:
        row: Any = connection.execute(select(api_keys)).one()._mapping
    assert row["key_hash"] == hashlib.sha256(plain.encode()).hexdigest()
    assert plain not in " ".join(str(value) for value in row.values())
    found = authenticate(engine, plain)
    assert found is not None and found.id == key.id and found.scope == "admin"
    assert key.state(NOW) == "active"
    for wrong in (plain[:-1], plain + "x", plain[3:], "", "mk_" + "x" * 300):
        assert authenticate(engine, wrong) is None


def test_revoked_and_expired_keys_are_refused(engine: Engine) -> None:
    revoked, revoked_plain = make_key(engine, name="old")
    expiring, expiring_plain = make_key(engine, name="temp", expires_at=NOW + 60)
    with write_transaction(engine) as connection:
        done = accounts.revoke_api_key(connection, revoked.id, actor="alice", source="s",
                                       now=NOW + 1)
        accounts.revoke_api_key(connection, revoked.id, actor="alice", source="s", now=NOW + 2)
    assert done.revoked_at == NOW + 1 and done.state(NOW + 1) == "revoked"
    assert authenticate(engine, revoked_plain, NOW + 1) is None
    assert authenticate(engine, expiring_plain, NOW + 59) is not None
    assert authenticate(engine, expiring_plain, NOW + 60) is None
    assert expiring.state(NOW + 60) == "expired"
    assert [action for action, _ in audit_actions(engine)] == [
        "apikey.created", "apikey.created", "apikey.revoked"]


@pytest.mark.parametrize(("name", "scope", "expires_at", "message"), [
    ("", "read", None, "name"),
    ("tab\there", "read", None, "name"),
    ("del\x7f", "read", None, "name"),
    ("bidi\u202eevil", "read", None, "name"),
    ("x" * 129, "read", None, "name"),
    ("ok", "write", None, "scope"),
    ("ok", "read", NOW, "expiry"),
])
def test_invalid_api_keys_are_refused(engine: Engine, name: str, scope: str,
                                      expires_at: float | None, message: str) -> None:
    with pytest.raises(AccountError, match=message):
        make_key(engine, name, scope, expires_at)
    with read_transaction(engine) as connection:
        assert accounts.list_api_keys(connection) == []
