"""Group commit: concurrent requests share one durable transaction, none waits alone."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sqlalchemy import Engine

from mailapi import faults
from mailapi.db import write_transaction
from mailapi.faults import FaultInjector
from mailapi.queue import Enqueued, NewMessage, enqueue_many


class GroupCommitter:
    """Collects messages while the previous commit is on its way to disk, then writes them
    all in the next transaction. Each caller is answered only after *its* commit returned,
    with synchronous=FULL on the connection, so a 2xx always means the row is on disk.
    """

    def __init__(self, engine: Engine, clock: Callable[[], float], *, max_batch: int = 512,
                 faults: FaultInjector | None = None) -> None:
        self._engine = engine
        self._faults = faults
        self._clock = clock
        self._max_batch = max_batch
        self._pending: list[tuple[NewMessage, asyncio.Future[Enqueued]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.batches = 0
        self.rows = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="group-commit")

    async def stop(self) -> None:
        """Commit what is pending, then stop."""
        if self._task is None:
            return
        self._stopping = True
        self._wakeup.set()
        await self._task
        self._task = None

    async def submit(self, message: NewMessage) -> Enqueued:
        future: asyncio.Future[Enqueued] = asyncio.get_running_loop().create_future()
        self._pending.append((message, future))
        self._wakeup.set()
        # Shielded: a client that hangs up must not abandon a commit already under way;
        # the row is kept and a retry of the request finds it by its digest.
        return await asyncio.shield(future)

    async def _run(self) -> None:
        while not self._stopping or self._pending:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                await self._commit_next_batch()

    async def _commit_next_batch(self) -> None:
        batch = self._pending[:self._max_batch]
        del self._pending[:self._max_batch]
        messages = [message for message, _ in batch]
        try:
            results = await asyncio.to_thread(self._commit, messages)
        except Exception as exc:  # noqa: BLE001 - every waiter must hear of the failure
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        faults.reached(self._faults, "receiver.after_commit")
        self.batches += 1
        self.rows += len(batch)
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    def _commit(self, messages: list[NewMessage]) -> list[Enqueued]:
        with write_transaction(self._engine) as connection:
            results = enqueue_many(connection, messages, self._clock())
            faults.reached(self._faults, "receiver.before_commit")
            return results
