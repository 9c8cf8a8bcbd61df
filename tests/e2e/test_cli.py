"""The `mailapi` admin command as operators run it."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from tests.support.ports import free_port
from tests.support.processes import cli, write_config

pytestmark = pytest.mark.e2e


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = write_config(tmp_path, receiver_port=free_port())
    result = cli(path, "db", "upgrade")
    assert result.returncode == 0, result.stderr
    assert "migrated from empty to" in result.stdout
    return path


def test_db_upgrade_is_idempotent_and_check_reports_ok(config: Path) -> None:
    assert "already at revision" in cli(config, "db", "upgrade").stdout
    check = cli(config, "db", "check")
    assert check.returncode == 0
    assert "integrity: ok" in check.stdout and "journal:   wal" in check.stdout


def test_secrets_are_masked_everywhere(config: Path) -> None:
    assert cli(config, "settings", "set", "webhook_secret", "-",
               stdin="hunter2-very-secret\n").returncode == 0
    assert cli(config, "settings", "set", "smtp_password", "p4ssw0rd").returncode == 0
    shown = cli(config, "settings", "show").stdout
    as_json = json.loads(cli(config, "settings", "show", "--json").stdout)
    got = cli(config, "settings", "get", "webhook_secret").stdout
    for text in (shown, json.dumps(as_json), got):
        assert "hunter2" not in text and "p4ssw0rd" not in text
    assert as_json["webhook_secret"] == "********"
    with sqlite3.connect(config.parent / "mail-api.sqlite3") as connection:
        details = " ".join(str(row[0]) for row in connection.execute(
            "SELECT detail FROM audit_log"))
    assert "hunter2" not in details and "(secret changed)" in details


def test_set_validates_and_names_the_problem(config: Path) -> None:
    bad = cli(config, "settings", "set", "smtp_security", "tls")
    assert bad.returncode == 2
    assert "smtp_security: must be one of plain, starttls, ssl" in bad.stderr
    unknown = cli(config, "settings", "set", "no_such_key", "1")
    assert unknown.returncode == 2 and "unknown setting 'no_such_key'" in unknown.stderr
    good = cli(config, "settings", "set", "ip_allowlist", "192.0.2.0/24, 198.51.100.7")
    assert good.returncode == 0
    assert cli(config, "settings", "get", "ip_allowlist").stdout.strip() == (
        '["192.0.2.0/24", "198.51.100.7"]')


def insert_failed(config: Path, count: int, *, expired: bool = False) -> None:
    now = time.time()
    expires = now - 10 if expired else now + 3600
    with sqlite3.connect(config.parent / "mail-api.sqlite3") as connection:
        for index in range(count):
            connection.execute(
                "INSERT INTO outbound_queue (state, message_type, recipient, envelope_sender, "
                "subject, message_id, message, created_at, expires_at, next_attempt_at, "
                "attempts, reclaims, last_error, failed_reason, updated_at) VALUES "
                "('failed', 'password_reset', ?, 'no-reply@example.com', 's', ?, x'00', ?, ?, "
                "?, 3, 0, '550 5.1.1 <b>no such user</b>', 'rejected', ?)",
                (f"user{index}@example.org", f"<{index}@x>", now, expires, now, now))


def test_queue_list_retry_and_purge(config: Path) -> None:
    insert_failed(config, 3)
    listing = cli(config, "queue", "list", "--state", "failed")
    assert "failed: 3" in listing.stdout and "550 5.1.1" in listing.stdout
    assert cli(config, "queue", "retry", "1").stdout.strip() == "queued again: 1"
    assert cli(config, "queue", "retry", "1").returncode == 1  # no longer failed
    assert "queued: 1" in cli(config, "queue", "list").stdout
    assert cli(config, "queue", "purge", "2").stdout.strip() == "purged: 1"
    assert cli(config, "queue", "purge", "--all-failed").stdout.strip() == "purged: 1"
    assert "failed: 0" in cli(config, "queue", "list").stdout
    shown = cli(config, "queue", "show", "1")
    assert shown.returncode == 0 and "user0@example.org" in shown.stdout


def test_expired_messages_are_not_retried(config: Path) -> None:
    insert_failed(config, 1, expired=True)
    assert cli(config, "queue", "retry", "--all-failed").stdout.strip() == "queued again: 0"
    assert cli(config, "queue", "retry", "1").returncode == 1


def test_missing_config_is_a_clear_error(tmp_path: Path) -> None:
    result = cli(tmp_path / "nope.toml", "settings", "show")
    assert result.returncode == 2
    assert "configuration file not found" in result.stderr


def test_security_mode_hints_at_its_usual_port(config: Path) -> None:
    hinted = cli(config, "settings", "set", "smtp_security", "ssl")
    assert "note: smtp_port is 587; ssl usually runs on 465" in hinted.stdout
    quiet = cli(config, "settings", "set", "smtp_port", "465")
    assert "note:" not in quiet.stdout
