"""Where claimed messages go: a pool of SMTP sessions, or the development outbox folder."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Protocol

from mailapi.delivery.outbox import write_eml
from mailapi.delivery.outcome import DeliveryFailure, Kind, Stage
from mailapi.delivery.smtp import SmtpParameters, SmtpSession
from mailapi.queue import ClaimedMessage

IDLE_CLOSE_SECONDS = 20.0


class Transport(Protocol):
    async def send(self, slot: int, message: ClaimedMessage) -> str: ...

    async def close_idle(self) -> None: ...

    async def close(self) -> None: ...


class SmtpTransport:
    """One reusable session per slot; slots are used by one task at a time."""

    def __init__(self, parameters: SmtpParameters, slots: int) -> None:
        self.parameters = parameters
        self._sessions = [SmtpSession(parameters) for _ in range(slots)]
        self._last_used = [0.0] * slots

    async def send(self, slot: int, message: ClaimedMessage) -> str:
        session = self._sessions[slot]
        reused = session.connected
        self._last_used[slot] = time.monotonic()
        try:
            return await session.send(message.envelope_sender, message.recipient,
                                      message.message)
        except DeliveryFailure as failure:
            # A pooled connection the server dropped while idle shows up as a network error
            # on MAIL: that says nothing about this message, so reconnect and try once more.
            if reused and failure.stage is Stage.MAIL and failure.kind is Kind.NETWORK:
                await session.close()
                return await session.send(message.envelope_sender, message.recipient,
                                          message.message)
            raise

    async def close_idle(self) -> None:
        now = time.monotonic()
        for slot, session in enumerate(self._sessions):
            if session.connected and now - self._last_used[slot] > IDLE_CLOSE_SECONDS:
                await session.close()

    async def close(self) -> None:
        await asyncio.gather(*(session.close() for session in self._sessions))


class FileTransport:
    """Development backend: `<outbox>/<queue id>.eml`, written atomically."""

    def __init__(self, outbox_dir: Path) -> None:
        self.outbox_dir = outbox_dir

    async def send(self, slot: int, message: ClaimedMessage) -> str:
        try:
            path = await asyncio.to_thread(write_eml, self.outbox_dir, message.queue_id,
                                           message.message)
        except OSError as exc:
            raise DeliveryFailure(Stage.DATA, Kind.NETWORK, f"cannot write outbox: {exc}"
                                  ) from exc
        return f"250 written to {path}"

    async def close_idle(self) -> None:
        return None

    async def close(self) -> None:
        return None
