"""A small concurrent signed-webhook client that retries each webhook until it gets a 2xx."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from mailapi.signatures import sign

WEBHOOK_PATH = "/webhook/outbound-email"
RETRY_STATUSES = frozenset({429, 503})  # answers that ask the sender to try again


def signed_request(secret: str, body: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """The raw body and the headers the auth service sends, signed now."""
    raw = json.dumps(body).encode()
    timestamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return raw, {"Content-Type": "application/json", "X-TransLife-Timestamp": timestamp,
                 "X-TransLife-Signature": sign(secret, timestamp, raw)}


def post_once(port: int, secret: str, body: dict[str, Any],
              timeout: float = 10.0) -> tuple[int, dict[str, Any]] | None:
    """One signed POST; None when the connection failed or closed without an answer."""
    raw, headers = signed_request(secret, body)
    try:
        response = httpx.post(f"http://127.0.0.1:{port}{WEBHOOK_PATH}", content=raw,
                              headers=headers, timeout=timeout)
    except httpx.TransportError:
        return None
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, {"text": response.text}


@dataclass
class Webhook:
    """One distinct webhook and every answer it got, in order (None: no answer)."""

    body: dict[str, Any]
    answers: list[tuple[int, int | None] | None] = field(default_factory=list)
    cut_at: list[float] = field(default_factory=list)  # wall-clock times of cut-off requests
    settled: bool = False  # answered 2xx (and the client heard it)
    refused: bool = False  # answered a status no retry can change: the client gave up

    def accepted_ids(self) -> set[int | None]:
        return {answer[1] for answer in self.answers
                if answer is not None and 200 <= answer[0] < 300}


@dataclass
class LoadReport:
    webhooks: list[Webhook]
    statuses: Counter[int]
    unreachable: int  # no connection: the receiver was down
    cut: int  # connected, then reset or closed before an answer: in flight at a kill
    ignored_2xx: int  # 2xx answers the client pretended not to have heard (a client timeout)
    seconds: float
    timed_out: bool  # the deadline passed before every webhook was settled or refused


class WebhookLoad:
    """`clients` concurrent connections post `bodies` until each has been answered 2xx.

    A request without an answer or answered 429/503 is retried after a short pause; any other
    non-2xx answer is final for that webhook (the test judges it). With probability
    `ignore_2xx`, a 2xx is treated as lost (the client timed out first) and the same webhook
    is posted again, as a real sender would. Bounded by `deadline` seconds.
    `done` counts webhooks settled or refused so far; it may be read from another thread.
    """

    def __init__(self, port: int, secret: str, bodies: list[dict[str, Any]], *,
                 clients: int = 8, seed: int = 0, ignore_2xx: float = 0.05,
                 deadline: float = 60.0) -> None:
        self.url = f"http://127.0.0.1:{port}{WEBHOOK_PATH}"
        self.secret = secret
        self.webhooks = [Webhook(body) for body in bodies]
        self.clients = clients
        self.rng = random.Random(seed)
        self.ignore_2xx = ignore_2xx
        self.deadline = deadline
        self.done = 0
        self.statuses: Counter[int] = Counter()
        self.unreachable = 0
        self.cut = 0
        self.ignored_2xx = 0

    def run(self) -> LoadReport:
        started = time.monotonic()
        try:
            asyncio.run(self._run())
            timed_out = False
        except TimeoutError:
            timed_out = True
        return LoadReport(self.webhooks, self.statuses, self.unreachable, self.cut,
                          self.ignored_2xx, time.monotonic() - started, timed_out)

    async def _run(self) -> None:
        todo: asyncio.Queue[Webhook] = asyncio.Queue()
        for webhook in self.webhooks:
            todo.put_nowait(webhook)
        limits = httpx.Limits(max_connections=self.clients,
                              max_keepalive_connections=self.clients)
        async with httpx.AsyncClient(timeout=10.0, limits=limits) as client:
            await asyncio.wait_for(
                asyncio.gather(*(self._client(client, todo) for _ in range(self.clients))),
                self.deadline)

    async def _client(self, client: httpx.AsyncClient, todo: asyncio.Queue[Webhook]) -> None:
        while not todo.empty():
            webhook = todo.get_nowait()
            pause = 0.02
            while True:
                answer = await self._post(client, webhook)
                webhook.answers.append(answer)
                if answer is not None and 200 <= answer[0] < 300:
                    if self.rng.random() < self.ignore_2xx:
                        self.ignored_2xx += 1
                        continue
                    webhook.settled = True
                    self.done += 1
                    break
                if answer is not None and answer[0] not in RETRY_STATUSES:
                    webhook.refused = True
                    self.done += 1
                    break
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.2)

    async def _post(self, client: httpx.AsyncClient,
                    webhook: Webhook) -> tuple[int, int | None] | None:
        raw, headers = signed_request(self.secret, webhook.body)
        try:
            response = await client.post(self.url, content=raw, headers=headers)
        except httpx.ConnectError:
            self.unreachable += 1
            return None
        except httpx.TransportError:
            self.cut += 1
            webhook.cut_at.append(time.time())
            return None
        self.statuses[response.status_code] += 1
        queued_id = None
        if 200 <= response.status_code < 300:
            queued_id = response.json().get("queued_id")
        return response.status_code, queued_id
