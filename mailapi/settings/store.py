"""Reading and writing settings rows, and the per-process cache that follows the revision."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Connection, Engine, select, update

from mailapi import audit
from mailapi.db import read_transaction, write_transaction
from mailapi.models import settings as settings_table
from mailapi.models import settings_revision
from mailapi.rendering import Renderer, TemplateError, TemplateSources
from mailapi.settings.definitions import (
    SECRET_KEYS,
    Settings,
    SettingsError,
    check_consistency,
    validate_value,
)

MASK = "********"


def load_settings(connection: Connection) -> Settings:
    """The snapshot stored in the database, defaults filling every absent key."""
    revision = connection.execute(select(settings_revision.c.revision)).scalar_one()
    values: dict[str, Any] = {"revision": revision}
    known = {f.name for f in dataclasses.fields(Settings)}
    for key, raw in connection.execute(select(settings_table.c.key, settings_table.c.value)):
        if key in known:
            values[key] = json.loads(raw)
    return Settings(**values)


def read_revision(connection: Connection) -> int:
    return int(connection.execute(select(settings_revision.c.revision)).scalar_one())


def save_settings(
    engine: Engine,
    changes: Mapping[str, Any],
    *,
    actor: str,
    source: str,
    clock: Callable[[], float] = time.time,
) -> Settings:
    """Validate and store `changes` in one transaction, audited; returns the new snapshot."""
    validated = {key: validate_value(key, value) for key, value in changes.items()}
    now = clock()
    with write_transaction(engine) as connection:
        current = load_settings(connection)
        merged = dataclasses.replace(current, **validated)
        check_consistency(merged)
        if any(key.startswith("template_") for key in validated):
            try:
                Renderer(TemplateSources.from_settings(merged)).check()
            except TemplateError as exc:
                raise SettingsError(f"template_{exc.template}: {exc.detail}") from None
        changed = {k: v for k, v in validated.items() if getattr(current, k) != v}
        for key, value in changed.items():
            encoded = json.dumps(value)
            connection.execute(
                settings_table.delete().where(settings_table.c.key == key)
            )
            connection.execute(
                settings_table.insert().values(
                    key=key, value=encoded, updated_at=now, updated_by=actor
                )
            )
            audit.record(
                connection,
                actor=actor,
                action="setting.changed",
                target=key,
                source=source,
                detail="(secret changed)" if key in SECRET_KEYS else f"= {encoded[:500]}",
                at=now,
            )
        if changed:
            connection.execute(
                update(settings_revision).values(revision=settings_revision.c.revision + 1)
            )
        return load_settings(connection)


def masked(settings: Settings) -> dict[str, Any]:
    """Every setting as a plain dict, secrets replaced by a mask (or empty when unset)."""
    values = dataclasses.asdict(settings)
    for key in SECRET_KEYS:
        values[key] = MASK if values[key] else ""
    return values


class SettingsCache:
    """The current snapshot for a long-running process, re-read when the revision moves.

    The revision is checked at most every `check_interval` seconds, so a change made in the
    panel or CLI reaches every process within that interval without a restart.
    """

    def __init__(self, engine: Engine, *, check_interval: float = 0.25,
                 monotonic: Callable[[], float] = time.monotonic,
                 overrides: Mapping[str, Any] | None = None) -> None:
        self._engine = engine
        # Values from the bootstrap config's secret files: they win over the database.
        self.overrides = dict(overrides or {})
        self._check_interval = check_interval
        self._monotonic = monotonic
        self._snapshot: Settings | None = None
        self._checked_at = 0.0

    def get(self) -> Settings:
        now = self._monotonic()
        if self._snapshot is not None and now - self._checked_at < self._check_interval:
            return self._snapshot
        with read_transaction(self._engine) as connection:
            if self._snapshot is None or read_revision(connection) != self._snapshot.revision:
                loaded = load_settings(connection)
                self._snapshot = (dataclasses.replace(loaded, **self.overrides)
                                  if self.overrides else loaded)
        self._checked_at = now
        return self._snapshot

    def invalidate(self) -> None:
        self._snapshot = None


__all__ = ["MASK", "SettingsCache", "SettingsError", "load_settings", "masked",
           "save_settings"]
