"""Noticing new rows without any channel but the database: PRAGMA data_version."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from sqlalchemy import Engine


class DatabaseWatcher:
    """`PRAGMA data_version` changes on this connection whenever *another* connection commits,
    and reading it touches only shared memory, so polling every few milliseconds is cheap."""

    def __init__(self, engine: Engine, poll_seconds: float) -> None:
        self._connection: Any = engine.raw_connection()
        self._poll_seconds = poll_seconds
        self._version = self._read()

    def _read(self) -> int:
        cursor = self._connection.cursor()
        try:
            cursor.execute("PRAGMA data_version")
            return int(cursor.fetchone()[0])
        finally:
            cursor.close()

    def changed(self) -> bool:
        version = self._read()
        if version != self._version:
            self._version = version
            return True
        return False

    async def wait(self, timeout: float, stop: asyncio.Event) -> None:
        """Return when another process committed, `timeout` passed, or stop was set."""
        deadline = time.monotonic() + max(0.0, timeout)
        while not stop.is_set():
            if self.changed():
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(self._poll_seconds, remaining))

    def close(self) -> None:
        self._connection.close()
