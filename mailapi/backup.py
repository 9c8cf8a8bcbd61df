"""An online, consistent copy of the live database through SQLite's backup API."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote


class BackupError(Exception):
    """The copy could not be made, or it failed its integrity check; nothing was written."""


@dataclass(frozen=True)
class BackupResult:
    path: Path
    size_bytes: int
    pages: int
    revision: str | None


def backup_database(source: Path, destination: Path, *, busy_timeout_ms: int,
                    replace: bool = False) -> BackupResult:
    """Copy `source` to `destination` while the daemons keep writing to it.

    The whole copy is one backup step, so it reads one snapshot: in WAL mode that holds no
    lock the writers wait for, whereas a copy in several steps restarts whenever another
    connection commits and may never finish on a busy queue. The copy goes to a 0600
    temporary file beside `destination`, must pass `PRAGMA integrity_check`, is flushed to
    disk and then renamed into place, so `destination` is either absent, the old file, or a
    complete, checked copy.
    """
    source = source.resolve()
    destination = destination.resolve()
    if not source.is_file():
        raise BackupError(f"database {source} does not exist")
    if destination in {source, *(source.with_name(source.name + s) for s in ("-wal", "-shm"))}:
        raise BackupError(f"{destination} is the live database; choose another destination")
    if destination.exists() and not replace:
        raise BackupError(f"{destination} exists; remove it first or pass --force")
    if not destination.parent.is_dir():
        raise BackupError(f"folder {destination.parent} does not exist")
    try:
        descriptor, temporary_name = tempfile.mkstemp(
            prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
    except OSError as exc:
        raise BackupError(f"cannot write in {destination.parent}: {exc.strerror}") from exc
    os.close(descriptor)
    temporary = Path(temporary_name)
    try:
        pages, revision = _copy(source, temporary, busy_timeout_ms)
        _remove_sidecars(temporary)
        os.chmod(temporary, 0o600)
        _fsync(temporary)
        os.replace(temporary, destination)
        _fsync(destination.parent)
    except BaseException as exc:
        _remove_sidecars(temporary)
        temporary.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise BackupError(f"cannot write {destination}: {exc}") from exc
        raise
    return BackupResult(destination, destination.stat().st_size, pages, revision)


def _copy(source: Path, temporary: Path, busy_timeout_ms: int) -> tuple[int, str | None]:
    # Read-only: the backup never writes to the live file, whoever runs it.
    uri = f"file:{quote(str(source))}?mode=ro"
    try:
        live = sqlite3.connect(uri, uri=True, timeout=busy_timeout_ms / 1000)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot open {source}: {exc}") from exc
    try:
        copy = sqlite3.connect(temporary, timeout=busy_timeout_ms / 1000)
        try:
            live.backup(copy, pages=-1)
            problems = [str(row[0]) for row in copy.execute("PRAGMA integrity_check")]
            pages = int(copy.execute("PRAGMA page_count").fetchone()[0])
            revision = _revision(copy)
        finally:
            copy.close()
    except sqlite3.Error as exc:
        raise BackupError(f"backup of {source} failed: {exc}") from exc
    finally:
        live.close()
    if problems != ["ok"]:
        raise BackupError(f"the copy of {source} failed its integrity check: "
                          f"{'; '.join(problems[:5])}")
    return pages, revision


def _revision(connection: sqlite3.Connection) -> str | None:
    """The Alembic revision recorded in the copy (None for a database never migrated)."""
    try:
        row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.OperationalError:  # no such table
        return None
    return None if row is None else str(row[0])


def _remove_sidecars(database: Path) -> None:
    # The copy keeps the source's WAL flag in its header; checking it may leave (empty)
    # -wal / -shm files beside the temporary name, which must not outlive it.
    for suffix in ("-wal", "-shm", "-journal"):
        database.with_name(database.name + suffix).unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    folder = path.is_dir()
    descriptor = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if folder else 0))
    try:
        if folder:
            with contextlib.suppress(OSError):  # some file systems refuse fsync on a folder
                os.fsync(descriptor)
        else:
            os.fsync(descriptor)
    finally:
        os.close(descriptor)
