"""Helpers for the worker's integration tests: queueing real messages, driving one pass."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from mailapi import queue as outbound
from mailapi.db import read_transaction, write_transaction
from mailapi.deliverylog import DeliveryLog
from mailapi.events import DeliveryEvent, recent_events
from mailapi.intake import build_message
from mailapi.models import queue_pause
from mailapi.pause import PauseState, read_pause
from mailapi.payload import validate_payload
from mailapi.queue import NewMessage, QueueRow
from mailapi.rendering import Renderer, TemplateSources
from mailapi.settings import Settings, SettingsCache
from tests.support.database import configure
from tests.support.ports import free_port
from tests.support.smtpd import SmtpServer
from worker.loop import Worker, WorkerOptions

SENDER_DOMAIN = "example.org"
TOKEN = "tok-7f3a9c-SECRET-551902"
LINK = f"https://app.example.com/verify-email?token={TOKEN}"


class Clock:
    """A settable clock; `then` queues values for the next calls (time jumping mid-pass)."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now
        self.then: list[float] = []

    def __call__(self) -> float:
        if self.then:
            self.now = self.then.pop(0)
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingUsers(dict[str, str]):
    """The SMTP server's user table; remembers every login name it was asked about."""

    def __init__(self, users: dict[str, str]) -> None:
        super().__init__(users)
        self.lookups: list[str] = []

    def get(self, key: str, default: Any = None) -> Any:
        self.lookups.append(key)
        return super().get(key, default)


@contextmanager
def serve(**kwargs: Any) -> Iterator[SmtpServer]:
    """A started aiosmtpd server on a free 127.0.0.1 port, stopped afterwards."""
    server = SmtpServer(free_port(), **kwargs).start()
    try:
        yield server
    finally:
        server.stop()


def smtp_settings(engine: Engine, port: int, **values: Any) -> Settings:
    """Point the worker at 127.0.0.1:port; short timeouts so a failing test fails fast."""
    defaults: dict[str, Any] = {
        "smtp_host": "127.0.0.1", "smtp_port": port, "smtp_security": "plain",
        "smtp_timeout": 5, "allowed_sender_domain": SENDER_DOMAIN, "retry_base_seconds": 30,
        "retry_max_seconds": 3600,
    }
    return configure(engine, **(defaults | values))


def new_message(settings: Settings, *, now: float, to: str = "user@example.com",
                token: str = TOKEN, link: str = LINK,
                expires_in: float = 3600) -> NewMessage:
    expires = datetime.fromtimestamp(now + expires_in, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    payload = validate_payload({"type": "email_verification", "to": to,
                                "subject": "Verify your address", "token": token,
                                "expiresAt": expires, "link": link}, now=now)
    renderer = Renderer(TemplateSources.from_settings(settings))
    return build_message(payload, settings, renderer, now=now)


def enqueue(engine: Engine, messages: list[NewMessage], now: float) -> list[int]:
    with write_transaction(engine) as connection:
        return [entry.queue_id for entry in outbound.enqueue_many(connection, messages, now)]


def enqueue_some(engine: Engine, settings: Settings, now: float, count: int = 1) -> list[int]:
    messages = [new_message(settings, now=now, to=f"user{index}@example.com",
                            token=f"{TOKEN}-{index}") for index in range(count)]
    return enqueue(engine, messages, now)


def make_worker(engine: Engine, tmp_path: Path, clock: Clock, *, ca_file: Path | None = None,
                sessions: int = 2) -> Worker:
    return Worker(engine, SettingsCache(engine, check_interval=0),
                  WorkerOptions(sessions=sessions, batch_size=16, ca_file=ca_file),
                  delivery_log=DeliveryLog(tmp_path / "d.log", 5 * 1024 * 1024),
                  clock=clock, rng=random.Random(1))


def run_passes(worker: Worker, passes: int = 1) -> list[int]:
    """Drive `passes` run_once calls in one event loop, close the worker; the batch sizes."""
    async def drive() -> list[int]:
        try:
            return [await worker.run_once() for _ in range(passes)]
        finally:
            await worker.close()
    return asyncio.run(drive())


def row(engine: Engine, queue_id: int) -> QueueRow | None:
    with read_transaction(engine) as connection:
        return outbound.get_message(connection, queue_id)


def queued_row(engine: Engine, queue_id: int) -> QueueRow:
    found = row(engine, queue_id)
    assert found is not None, f"queue row {queue_id} is gone"
    return found


def pause(engine: Engine) -> PauseState:
    with read_transaction(engine) as connection:
        return read_pause(connection)


def pause_rows(engine: Engine) -> int:
    with read_transaction(engine) as connection:
        return len(connection.execute(select(queue_pause.c.id)).all())


def events(engine: Engine, queue_id: int | None = None) -> list[DeliveryEvent]:
    with read_transaction(engine) as connection:
        return recent_events(connection, queue_id=queue_id, limit=500)


def outcomes(engine: Engine, queue_id: int | None = None) -> list[str]:
    return sorted(event.outcome for event in events(engine, queue_id))
