"""`mailapi admin …` and `mailapi apikey …` through the real executable."""

from __future__ import annotations

import os
import re
import select
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from mailapi import accounts
from mailapi.db import open_engine, read_transaction
from tests.support.ports import free_port
from tests.support.processes import BIN, cli, write_config

pytestmark = pytest.mark.e2e
PASSWORD = "correct horse battery staple"
OTHER = "another long enough passphrase"
KEY_LINE = re.compile(r"mk_[A-Za-z0-9_-]{43}\n")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = write_config(tmp_path, receiver_port=free_port())
    result = cli(path, "db", "upgrade")
    assert result.returncode == 0, result.stderr
    return path


@pytest.fixture
def engine(config: Path) -> Iterator[Engine]:
    engine = open_engine(config.parent / "mail-api.sqlite3", durability="FULL",
                         busy_timeout_ms=5000)
    yield engine
    engine.dispose()


def password_file(directory: Path, text: str, mode: int = 0o600) -> Path:
    path = directory / "password.txt"
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def login(engine: Engine, username: str, password: str) -> bool:
    with read_transaction(engine) as connection:
        return accounts.verify_login(connection, username, password) is not None


def audit(config: Path) -> list[tuple[str, str, str, str]]:
    with sqlite3.connect(config.parent / "mail-api.sqlite3") as connection:
        return list(connection.execute(
            "SELECT actor, source, action, target FROM audit_log ORDER BY id"))


def test_create_from_a_password_file_and_list(config: Path, engine: Engine) -> None:
    secret = password_file(config.parent, PASSWORD + "\n")
    created = cli(config, "admin", "create", "alice", "--password-file", str(secret))
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith("admin alice created")
    assert login(engine, "alice", PASSWORD)  # exactly one trailing newline dropped
    listing = cli(config, "admin", "list")
    assert re.search(r"\s1  alice\s+active\s", listing.stdout)
    assert PASSWORD not in listing.stdout + created.stdout + created.stderr
    assert audit(config) == [("cli", "local", "admin.created", "alice")]


def test_a_password_file_others_may_read_is_refused(config: Path) -> None:
    secret = password_file(config.parent, PASSWORD, mode=0o644)
    refused = cli(config, "admin", "create", "alice", "--password-file", str(secret))
    assert refused.returncode == 2
    assert "can be read or written by any user" in refused.stderr
    assert "chmod 600" in refused.stderr
    assert "(no admins" in cli(config, "admin", "list").stdout


def test_stdin_password_errors_and_last_admin_protection(config: Path, engine: Engine) -> None:
    assert cli(config, "admin", "create", "alice", "--password-stdin",
               stdin=PASSWORD + "\n").returncode == 0
    short = cli(config, "admin", "create", "bob", "--password-stdin", stdin="short\n")
    assert short.returncode == 2 and "password: at least 12 characters" in short.stderr
    duplicate = cli(config, "admin", "create", "alice", "--password-stdin", stdin=OTHER)
    assert duplicate.returncode == 2 and "already exists" in duplicate.stderr
    no_terminal = cli(config, "admin", "create", "bob", stdin=PASSWORD + "\n")
    assert no_terminal.returncode == 2 and "no terminal" in no_terminal.stderr
    last = cli(config, "admin", "disable", "alice")
    assert last.returncode == 2 and "alice is the last active admin" in last.stderr
    unknown = cli(config, "admin", "disable", "nobody")
    assert unknown.returncode == 2 and "no admin named 'nobody'" in unknown.stderr
    assert login(engine, "alice", PASSWORD)


def test_disable_enable_and_password(config: Path, engine: Engine) -> None:
    for name in ("alice", "bob"):
        assert cli(config, "admin", "create", name, "--password-stdin",
                   stdin=PASSWORD).returncode == 0
    disabled = cli(config, "admin", "disable", "bob")
    assert disabled.stdout.strip() == "admin bob is disabled"
    assert not login(engine, "bob", PASSWORD)
    assert cli(config, "admin", "enable", "bob").stdout.strip() == "admin bob is enabled"
    changed = cli(config, "admin", "password", "bob", "--password-stdin", stdin=OTHER + "\n")
    assert changed.returncode == 0
    assert changed.stdout.strip() == "password of bob changed; 0 session(s) ended"
    assert login(engine, "bob", OTHER) and not login(engine, "bob", PASSWORD)
    assert [row[2:] for row in audit(config)[2:]] == [
        ("admin.disabled", "bob"), ("admin.enabled", "bob"), ("admin.password_reset", "bob")]


def test_create_with_the_interactive_prompt(config: Path, engine: Engine) -> None:
    """On a pseudo-terminal, as an operator types it: the password asked twice, unechoed."""
    master, slave = os.openpty()
    process = subprocess.Popen(
        [str(BIN / "mailapi"), "--config", str(config), "admin", "create", "alice"],
        stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    seen = b""

    def read_until(marker: bytes) -> None:
        nonlocal seen
        while marker not in seen:
            ready, _, _ = select.select([master], [], [], 30)
            assert ready, f"no {marker!r} prompt; got {seen!r}"
            seen += os.read(master, 4096)

    try:
        read_until(b"New password for alice: ")
        os.write(master, PASSWORD.encode() + b"\n")
        read_until(b"The same password again: ")
        os.write(master, PASSWORD.encode() + b"\n")
        read_until(b"admin alice created")
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        os.close(master)
    assert PASSWORD.encode() not in seen  # echo was off
    assert login(engine, "alice", PASSWORD)


def test_api_key_create_prints_only_the_key_then_revoke(config: Path, engine: Engine) -> None:
    created = cli(config, "apikey", "create", "monitoring", "--scope", "read",
                  "--expires-days", "30")
    assert created.returncode == 0, created.stderr
    assert KEY_LINE.fullmatch(created.stdout)
    plain = created.stdout.strip()
    assert "shown only this once" in created.stderr and plain not in created.stderr
    with read_transaction(engine) as connection:
        key = accounts.authenticate_api_key(connection, plain, now=time.time())
    assert key is not None and key.scope == "read" and key.created_by == "cli"
    assert key.expires_at is not None and key.expires_at - key.created_at == 30 * 86400
    listing = cli(config, "apikey", "list").stdout
    assert f"{key.prefix} " in listing and plain not in listing and " active " in listing
    revoked = cli(config, "apikey", "revoke", str(key.id))
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    assert " revoked " in cli(config, "apikey", "list").stdout
    with read_transaction(engine) as connection:
        assert accounts.authenticate_api_key(connection, plain, now=key.created_at) is None
    assert [row[2] for row in audit(config)] == ["apikey.created", "apikey.revoked"]
    for path in config.parent.glob("mail-api.sqlite3*"):
        assert plain.encode() not in path.read_bytes(), path


def test_api_key_errors(config: Path) -> None:
    unknown = cli(config, "apikey", "revoke", "42")
    assert unknown.returncode == 2 and "no API key with id 42" in unknown.stderr
    days = cli(config, "apikey", "create", "x", "--scope", "read", "--expires-days", "0")
    assert days.returncode == 2 and "--expires-days" in days.stderr and days.stdout == ""
    scope = cli(config, "apikey", "create", "x", "--scope", "root")
    assert scope.returncode == 2 and "invalid choice" in scope.stderr
    assert cli(config, "apikey", "list").stdout.strip() == "(no API keys)"
