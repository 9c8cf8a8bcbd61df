"""Process liveness rows: each daemon writes its own every few seconds."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, delete, select

from mailapi.db import write_transaction
from mailapi.models import heartbeats


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
