"""The receiver app in-process over a real engine: an injected clock, signing, one lifespan."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import Engine, select
from starlette.applications import Starlette

from mailapi.db import read_transaction
from mailapi.intake import RendererCache
from mailapi.models import outbound_queue
from mailapi.ratelimit import RateLimiter
from mailapi.settings import SettingsCache
from mailapi.signatures import sign
from receiver.app import build_app
from receiver.groupcommit import GroupCommitter
from receiver.state import ReceiverState

NOW = datetime(2026, 2, 21, 5, 35, 10, tzinfo=UTC).timestamp()
SECRET = "current-webhook-secret"
DOMAIN = "example.org"
WEBHOOK = "/webhook/outbound-email"
PEER = ("127.0.0.1", 1234)
MAX_BODY = 8192
Send = Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


class Receiver:
    """Builds the app over the given engine and an injected clock, and reads the queue."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.clock = Clock()

    def app(self) -> Starlette:
        # A GroupCommitter belongs to one event loop, so every asyncio.run gets a fresh app.
        return build_app(ReceiverState(
            engine=self.engine, settings=SettingsCache(self.engine, check_interval=0),
            renderers=RendererCache(), committer=GroupCommitter(self.engine, self.clock),
            rate_limiter=RateLimiter(self.clock), clock=self.clock, max_body_bytes=MAX_BODY))

    def run(self, scenario: Callable[[httpx.AsyncClient], Awaitable[None]],
            peer: tuple[str, int] = PEER) -> None:
        app = self.app()

        async def main() -> None:
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app, client=peer)
                async with httpx.AsyncClient(transport=transport,
                                             base_url="http://receiver") as http:
                    await scenario(http)

        asyncio.run(main())

    def exchange(self, *calls: Send, peer: tuple[str, int] = PEER) -> list[httpx.Response]:
        responses: list[httpx.Response] = []

        async def scenario(http: httpx.AsyncClient) -> None:
            for call in calls:
                responses.append(await call(http))

        self.run(scenario, peer)
        return responses

    def rows(self) -> list[Any]:
        with read_transaction(self.engine) as connection:
            return list(connection.execute(select(outbound_queue).order_by(outbound_queue.c.id)))

    def row_count(self) -> int:
        return len(self.rows())


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def body(**changes: Any) -> bytes:
    payload: dict[str, Any] = {
        "type": "email_verification", "to": "user@example.com", "subject": "Verify your email",
        "token": "123456", "expiresAt": iso(NOW + 3600),
        "link": "https://app.example.com/verify?token=123456",
    }
    payload.update(changes)
    return json.dumps({k: v for k, v in payload.items() if v is not None}).encode()


def signed(raw: bytes, *, secret: str = SECRET, at: float = NOW) -> dict[str, str]:
    timestamp = iso(at)
    return {"Content-Type": "application/json", "X-TransLife-Timestamp": timestamp,
            "X-TransLife-Signature": sign(secret, timestamp, raw)}


def post(raw: bytes, headers: Any = None) -> Send:
    return lambda http: http.post(WEBHOOK, content=raw, headers=headers)


def post_signed(raw: bytes, **options: Any) -> Send:
    return post(raw, signed(raw, **options))


def assert_refused(response: httpx.Response, status: int, error: str,
                   field: str | None = None) -> None:
    expected: dict[str, Any] = {"ok": False, "error": error}
    if field is not None:
        expected["field"] = field
    assert (response.status_code, response.json()) == (status, expected)
