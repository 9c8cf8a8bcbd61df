"""`mailapi db upgrade|check|backup`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from mailapi.backup import BackupError, backup_database
from mailapi.config import Config
from mailapi.db import integrity_check, open_engine, read_transaction
from mailapi.schema import current_revision, head_revision, upgrade


def register(groups: Any) -> None:
    parser = groups.add_parser("db", help="create, migrate and check the database")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    upgrade_parser = commands.add_parser(
        "upgrade", help="create the database if needed and migrate to head")
    upgrade_parser.add_argument(
        "--no-create", action="store_true",
        help="refuse a missing or empty database file instead of creating one (what the "
             "migrate unit runs before every start, so a lost database is never silently "
             "replaced by an empty one)")
    upgrade_parser.set_defaults(handler=upgrade_command)
    commands.add_parser("check", help="check integrity and that the schema is at head"
                        ).set_defaults(handler=check_command)
    backup = commands.add_parser(
        "backup", help="copy the live database with SQLite's backup API (safe while running)")
    backup.add_argument("destination", metavar="DEST",
                        help="file to write (mode 0600), or a folder to write "
                             "mail-api-<UTC time>.sqlite3 into")
    backup.add_argument("--force", action="store_true", help="replace DEST if it exists")
    backup.set_defaults(handler=backup_command)


def upgrade_command(config: Config, arguments: argparse.Namespace) -> int:
    path = config.database.path
    if arguments.no_create and (not path.exists() or path.stat().st_size == 0):
        print(f"mailapi: database {path} is missing or empty; refusing to create a new one "
              "(restore it from a backup, or run `db upgrade` without --no-create for a "
              "first install)", file=sys.stderr)
        return 1
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = open_engine(path, durability="FULL", busy_timeout_ms=config.database.busy_timeout_ms,
                         create=True, pool_size=1)
    before = current_revision(engine)
    problems = integrity_check(engine)
    if problems != ["ok"]:
        print(f"database {path} failed its integrity check: {'; '.join(problems[:5])}")
        return 1
    after = upgrade(engine)
    engine.dispose()
    if before == after:
        print(f"database {path} already at revision {after}")
    else:
        print(f"database {path} migrated from {before or 'empty'} to {after}")
    return 0


def check_command(config: Config, arguments: argparse.Namespace) -> int:
    path = config.database.path
    engine = open_engine(path, durability="NORMAL",
                         busy_timeout_ms=config.database.busy_timeout_ms, pool_size=1)
    problems = integrity_check(engine)
    revision = current_revision(engine)
    head = head_revision()
    with read_transaction(engine) as connection:
        mode = connection.exec_driver_sql("PRAGMA journal_mode").scalar_one()
    engine.dispose()
    ok = problems == ["ok"] and revision == head and mode == "wal"
    print(f"database:  {path}")
    print(f"integrity: {'ok' if problems == ['ok'] else '; '.join(problems[:5])}")
    print(f"schema:    {revision or 'none'} (head {head})")
    print(f"journal:   {mode}")
    print("status:    " + ("ok" if ok else "NOT OK"))
    return 0 if ok else 1


def backup_command(config: Config, arguments: argparse.Namespace) -> int:
    destination = Path(arguments.destination).expanduser()
    if destination.is_dir():
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        destination = destination / f"mail-api-{stamp}.sqlite3"
    try:
        result = backup_database(config.database.path, destination,
                                 busy_timeout_ms=config.database.busy_timeout_ms,
                                 replace=arguments.force)
    except BackupError as exc:
        print(f"mailapi: {exc}", file=sys.stderr)
        return 1
    print(f"backup of {config.database.path} written to {result.path}")
    print(f"size:      {result.size_bytes} bytes ({result.pages} pages), mode 0600")
    print(f"schema:    {result.revision or 'none'}")
    print("integrity: ok")
    return 0
