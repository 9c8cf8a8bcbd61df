"""Opening the database for one CLI command."""

from __future__ import annotations

from sqlalchemy import Engine

from mailapi.config import Config
from mailapi.db import open_engine
from mailapi.schema import ensure_current

ACTOR = "cli"
SOURCE = "local"


def open_checked(config: Config) -> Engine:
    """The database, refusing one that is missing or not migrated to head."""
    engine = open_engine(config.database.path, durability="FULL",
                         busy_timeout_ms=config.database.busy_timeout_ms, pool_size=1)
    ensure_current(engine, config.database.path)
    return engine
