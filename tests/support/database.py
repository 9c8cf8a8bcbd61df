"""Real SQLite files in WAL mode, built by migrating, as every process will find them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from mailapi.db import open_engine
from mailapi.schema import upgrade
from mailapi.settings import Settings, save_settings


def migrated_engine(path: Path, *, durability: str = "FULL") -> Engine:
    creator = open_engine(path, durability="FULL", busy_timeout_ms=5000, create=True)
    upgrade(creator)
    creator.dispose()
    return open_engine(path, durability=durability, busy_timeout_ms=5000)  # type: ignore[arg-type]


def configure(engine: Engine, **values: Any) -> Settings:
    return save_settings(engine, values, actor="test", source="test")
