"""mailapi.db and mailapi.schema on real files: WAL, BEGIN IMMEDIATE, storage errors, corruption."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select

from mailapi import queue as outbound
from mailapi.db import (
    StorageBusy,
    StorageFull,
    StorageUnavailable,
    integrity_check,
    open_engine,
    read_transaction,
    write_transaction,
)
from mailapi.models import outbound_queue
from mailapi.queue import NewMessage
from mailapi.schema import SchemaNotCurrent, ensure_current, head_revision
from tests.support.database import migrated_engine

NOW = 1_800_000_000.0


def big_message(name: str, size: int) -> NewMessage:
    return NewMessage(
        digest=name, message_type="password_reset", recipient="a@example.com",
        envelope_sender="no-reply@example.org", subject="s", message_id=f"<{name}@x>",
        message=b"x" * size, expires_at=NOW + 3600, keep_key_until=NOW + 7200,
    )


def row_count(engine: Engine) -> int:
    with read_transaction(engine) as connection:
        return int(connection.execute(select(func.count()).select_from(outbound_queue))
                   .scalar_one())


@contextmanager
def write_lock_held(path: Path) -> Iterator[sqlite3.Connection]:
    """Another process's writer: a raw connection inside BEGIN IMMEDIATE on the same file."""
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        yield holder
        holder.execute("ROLLBACK")
    finally:
        holder.close()


def pragma(engine: Engine, name: str) -> Any:
    with read_transaction(engine) as connection:
        return connection.exec_driver_sql(f"PRAGMA {name}").scalar_one()


def test_engine_runs_in_wal_mode_with_the_requested_durability(engine: Engine,
                                                               db_path: Path) -> None:
    assert pragma(engine, "journal_mode") == "wal"
    assert pragma(engine, "synchronous") == 2  # FULL
    assert pragma(engine, "foreign_keys") == 1
    assert pragma(engine, "busy_timeout") == 5000
    normal = open_engine(db_path, durability="NORMAL", busy_timeout_ms=750)
    try:
        assert pragma(normal, "synchronous") == 1
        assert pragma(normal, "busy_timeout") == 750
    finally:
        normal.dispose()
    with sqlite3.connect(db_path) as raw:  # the mode is stored in the file itself
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()


def test_a_writer_waits_out_the_busy_timeout_then_gets_storage_busy(engine: Engine,
                                                                    db_path: Path) -> None:
    impatient = open_engine(db_path, durability="FULL", busy_timeout_ms=150)
    try:
        with write_lock_held(db_path):
            started = time.monotonic()
            with pytest.raises(StorageBusy), write_transaction(impatient) as connection:
                outbound.enqueue_many(connection, [big_message("a", 10)], NOW)
            waited = time.monotonic() - started
            assert 0.1 <= waited < 5.0
            assert row_count(impatient) == 0  # readers are not blocked by the WAL writer
        with write_transaction(impatient) as connection:
            outbound.enqueue_many(connection, [big_message("a", 10)], NOW)
        assert row_count(engine) == 1
    finally:
        impatient.dispose()


def test_claim_batch_also_reports_a_held_lock_as_storage_busy(engine: Engine,
                                                              db_path: Path) -> None:
    with write_transaction(engine) as connection:
        outbound.enqueue_many(connection, [big_message("a", 10)], NOW)
    impatient = open_engine(db_path, durability="NORMAL", busy_timeout_ms=100)
    try:
        with write_lock_held(db_path), pytest.raises(StorageBusy):
            outbound.claim_batch(impatient, now=NOW, limit=5, lease_seconds=60,
                                 max_age_seconds=86_400)
        [claimed] = outbound.claim_batch(impatient, now=NOW, limit=5, lease_seconds=60,
                                         max_age_seconds=86_400)
        assert claimed.attempts == 1
    finally:
        impatient.dispose()


def test_a_full_database_raises_storage_full_and_commits_nothing(engine: Engine,
                                                                 db_path: Path) -> None:
    with write_transaction(engine) as connection:
        outbound.enqueue_many(connection, [big_message("small", 100)], NOW)
    with sqlite3.connect(db_path) as raw:
        pages = raw.execute("PRAGMA page_count").fetchone()[0]
    raw.close()
    capped = open_engine(db_path, durability="FULL", busy_timeout_ms=1000)

    @event.listens_for(capped, "connect")
    def _cap(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute(f"PRAGMA max_page_count = {pages + 2}")

    try:
        with pytest.raises(StorageFull), write_transaction(capped) as connection:
            outbound.enqueue_many(connection, [big_message("big", 200_000)], NOW)
        assert row_count(capped) == 1
        with write_transaction(capped) as connection:  # a small write still fits
            outbound.enqueue_many(connection, [big_message("tiny", 10)], NOW)
    finally:
        capped.dispose()
    assert row_count(engine) == 2


def test_open_engine_refuses_a_missing_file_without_create(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.sqlite3"
    with pytest.raises(StorageUnavailable, match="does not exist"):
        open_engine(missing, durability="FULL", busy_timeout_ms=100)
    assert not missing.exists()


def test_sound_database_passes_both_startup_checks(engine: Engine, db_path: Path) -> None:
    assert integrity_check(engine) == ["ok"]
    ensure_current(engine, db_path)


def test_the_integrity_check_does_not_wait_for_the_write_lock(engine: Engine,
                                                              db_path: Path) -> None:
    # A daemon starting beside running ones must not stall their writers (or fail) while
    # it checks a large file: the check is a WAL reader.
    impatient = open_engine(db_path, durability="FULL", busy_timeout_ms=100)
    try:
        with write_lock_held(db_path):
            assert integrity_check(impatient) == ["ok"]
    finally:
        impatient.dispose()


def test_an_unmigrated_database_is_not_current(tmp_path: Path) -> None:
    path = tmp_path / "empty.sqlite3"
    empty = open_engine(path, durability="FULL", busy_timeout_ms=100, create=True)
    try:
        with pytest.raises(SchemaNotCurrent, match=f"revision none.*needs {head_revision()}"):
            ensure_current(empty, path)
    finally:
        empty.dispose()


def _overwrite(path: Path, start: int, data: bytes) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    with path.open("r+b") as handle:
        handle.seek(start)
        handle.write(data)


def test_a_file_of_garbage_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.sqlite3"
    migrated_engine(path).dispose()
    size = path.stat().st_size
    _overwrite(path, 0, b"this is not a database!\n" * (size // 24 + 1))
    broken = open_engine(path, durability="FULL", busy_timeout_ms=100)
    try:
        with pytest.raises(StorageUnavailable, match=f"{path}.*cannot be read.*not a database"):
            ensure_current(broken, path)
        with pytest.raises(StorageUnavailable, match="not a database"):
            integrity_check(broken)
    finally:
        broken.dispose()


def test_corrupted_pages_fail_the_integrity_check(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.sqlite3"
    migrated_engine(path).dispose()
    with sqlite3.connect(path) as raw:
        page_size = raw.execute("PRAGMA page_size").fetchone()[0]
    raw.close()
    _overwrite(path, 2 * page_size, b"\xab" * (6 * page_size))
    broken = open_engine(path, durability="FULL", busy_timeout_ms=100)
    try:
        try:
            problems = integrity_check(broken)
        except StorageUnavailable as exc:
            assert "malformed" in str(exc)
        else:
            assert problems != ["ok"] and problems
    finally:
        broken.dispose()
