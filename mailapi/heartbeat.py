"""Process liveness rows: each daemon writes its own every few seconds."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, delete, select

from mailapi.db import StorageError, write_transaction
from mailapi.logging import get_logger, set_level
from mailapi.models import heartbeats
from mailapi.settings import SettingsCache

_log = get_logger("mailapi.heartbeat")


@dataclass(frozen=True)
class Heartbeat:
    process: str
    pid: int
    hostname: str
    started_at: float
    beat_at: float
    status: str


def beat(engine: Engine, *, process: str, started_at: float, now: float, status: str) -> None:
    with write_transaction(engine) as connection:
        connection.execute(delete(heartbeats).where(heartbeats.c.process == process))
        connection.execute(heartbeats.insert().values(
            process=process, pid=os.getpid(), hostname=socket.gethostname(),
            started_at=started_at, beat_at=now, status=status[:500],
        ))


def read_all(connection: Connection) -> list[Heartbeat]:
    return [Heartbeat(*row) for row in connection.execute(select(
        heartbeats.c.process, heartbeats.c.pid, heartbeats.c.hostname, heartbeats.c.started_at,
        heartbeats.c.beat_at, heartbeats.c.status).order_by(heartbeats.c.process))]


async def keep_beating(engine: Engine, settings: SettingsCache, *, process: str,
                       status: Callable[[], str], also: Callable[[], None] | None = None,
                       every: float = 5.0) -> None:
    """An HTTP daemon's background duty until cancelled: follow the log_level setting,
    write the heartbeat, and run `also` (housekeeping) in a worker thread, every `every` s."""
    started_at = time.time()
    level = ""
    while True:
        try:
            snapshot = await asyncio.to_thread(settings.get)
            if snapshot.log_level != level:
                level = snapshot.log_level
                set_level(level)
            await asyncio.to_thread(beat, engine, process=process, started_at=started_at,
                                    now=time.time(), status=status())
            if also is not None:
                await asyncio.to_thread(also)
        except StorageError as exc:
            _log.warning("heartbeat not written", error=str(exc))
        await asyncio.sleep(every)
