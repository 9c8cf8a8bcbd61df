"""Engine construction, connection pragmas, write transactions and storage-error mapping."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import QueuePool

Durability = Literal["FULL", "NORMAL"]

# Extended result codes collapse to these primary codes (code & 0xFF).
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_IOERR = 10
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_CANTOPEN = 14
_SQLITE_NOTADB = 26


class StorageError(Exception):
    """Base for database failures a caller must handle explicitly."""


class StorageBusy(StorageError):
    """The database stayed locked past the busy timeout; try again shortly."""


class StorageFull(StorageError):
    """The database or its disk is full; nothing was committed."""


class StorageUnavailable(StorageError):
    """The database cannot be opened or is corrupt; a process must not start on it."""


def open_engine(
    path: Path,
    *,
    durability: Durability,
    busy_timeout_ms: int,
    create: bool = False,
    pool_size: int = 4,
) -> Engine:
    """An engine on the SQLite file at `path` in WAL mode.

    Daemons open with create=False so a missing or moved file is an error, never a fresh
    empty database; only `mailapi db upgrade` creates one.
    """
    mode = "rwc" if create else "rw"
    if not create and not path.exists():
        raise StorageUnavailable(
            f"database {path} does not exist; create it with `mailapi --config ... db upgrade`"
        )
    url = f"sqlite+pysqlite:///file:{quote(str(path))}?mode={mode}&uri=true"
    engine = create_engine(
        url,
        poolclass=QueuePool,
        pool_size=pool_size,
        max_overflow=2,
        connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the driver so that BEGIN is ours to issue.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            # Switching a zero-length file to WAL writes a fresh header into it: a daemon
            # would turn a truncated database into an empty one. Leave it as found; the
            # schema check then refuses it.
            if create or cursor.execute("PRAGMA page_count").fetchone()[0] > 0:
                cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute(f"PRAGMA synchronous = {durability}")
            cursor.execute("PRAGMA foreign_keys = ON")
            # Truncate the WAL file back to this size after checkpoints so it stays bounded.
            cursor.execute("PRAGMA journal_size_limit = 67108864")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # Writers take the write lock up front: a deferred transaction that reads and then
        # writes fails at once with SQLITE_BUSY, whatever the busy timeout.
        if connection.get_execution_options().get("mailapi_read_only"):
            connection.exec_driver_sql("BEGIN")
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """BEGIN IMMEDIATE ... COMMIT, with storage errors mapped to StorageError subclasses."""
    with translate_errors(), engine.begin() as connection:
        yield connection


@contextmanager
def read_transaction(engine: Engine) -> Iterator[Connection]:
    """A deferred (read) transaction: a consistent snapshot without the write lock."""
    with translate_errors(), engine.connect() as plain:
        connection = plain.execution_options(mailapi_read_only=True)
        with connection.begin():
            yield connection


@contextmanager
def translate_errors() -> Iterator[None]:
    try:
        yield
    except sa_exc.DBAPIError as exc:
        raise classify_error(exc) from exc


def classify_error(exc: sa_exc.DBAPIError) -> Exception:
    """Map a driver error to a StorageError, or return it unchanged if it is a bug."""
    original = exc.orig
    code = getattr(original, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    text = str(original)
    if primary in (_SQLITE_BUSY, _SQLITE_LOCKED) or "database is locked" in text:
        return StorageBusy(text)
    if primary == _SQLITE_FULL or "database or disk is full" in text:
        return StorageFull(text)
    if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB, _SQLITE_CANTOPEN):
        return StorageUnavailable(text)
    if primary == _SQLITE_IOERR:
        return StorageBusy(text)
    return exc


def naming_the_file(exc: Exception, path: Path) -> str:
    """The error's text, saying which database file it is about (SQLite's own does not)."""
    text = str(exc)
    return text if str(path) in text else f"database {path}: {text}"


def integrity_check(engine: Engine) -> list[str]:
    """`PRAGMA quick_check` results; ['ok'] for a sound file.

    A read transaction: on a large file the check takes a while, and holding the write lock
    for it would stall the other processes' writers.
    """
    with read_transaction(engine) as connection:
        rows = connection.exec_driver_sql("PRAGMA quick_check").fetchall()
    return [str(row[0]) for row in rows]
