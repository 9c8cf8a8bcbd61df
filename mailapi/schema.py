"""Schema version control: run Alembic from the installed package and check for head."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

import migrations
from mailapi.db import StorageUnavailable, read_transaction, translate_errors


class SchemaNotCurrent(Exception):
    """The database is not at the newest migration; `mailapi db upgrade` must run first."""


def alembic_config() -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships a revision
        raise RuntimeError("no migrations found")
    return head


def current_revision(engine: Engine) -> str | None:
    with read_transaction(engine) as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine) -> str:
    """Migrate to head; returns the revision now in force."""
    config = alembic_config()
    with translate_errors(), engine.connect() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
        connection.commit()
    return head_revision()


def ensure_current(engine: Engine, database_path: Path) -> None:
    """Refuse to run on a database that is corrupt or not at the newest migration."""
    try:
        revision = current_revision(engine)
    except StorageUnavailable as exc:
        raise StorageUnavailable(f"database {database_path} cannot be read: {exc}") from exc
    head = head_revision()
    if revision != head:
        raise SchemaNotCurrent(
            f"database {database_path} is at schema revision {revision or 'none'}, "
            f"this release needs {head}; run `mailapi --config ... db upgrade` first"
        )
