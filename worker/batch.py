"""Delivering one claimed batch over a few sessions, deciding nothing but what happened."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from mailapi.delivery.outcome import DeliveryFailure, Kind, Stage
from mailapi.logging import get_logger
from mailapi.queue import ClaimedMessage
from worker.outcomes import Attempt, Result, attempt_from_failure
from worker.transport import Transport

log = get_logger("worker.batch")


async def deliver_batch(
    transport: Transport,
    batch: list[ClaimedMessage],
    attempts: list[Attempt],
    *,
    sessions: int,
    clock: Callable[[], float],
    stopping: asyncio.Event,
    start_deadline: float,
) -> None:
    """Fill `attempts` with one Attempt per message of the batch, whatever happens.

    The list is the caller's, so what was already delivered stays known even when the
    batch is cancelled part-way.

    Sessions stop starting messages when the worker is stopping, when the queue must pause,
    or when the lease could run out before another message finishes (`start_deadline`): those
    messages go back untried. When the upstream cannot be reached at all, the messages not
    yet tried are deferred with the same failure instead of each waiting for its own
    connection timeout.
    """
    pending = deque(batch)
    halted = False
    unreachable: DeliveryFailure | None = None

    async def session(slot: int) -> None:
        nonlocal halted, unreachable
        while pending:
            message = pending.popleft()
            now = clock()
            if now >= message.expires_at:
                attempts.append(Attempt(message, Result.EXPIRED))
                continue
            if halted or stopping.is_set() or now >= start_deadline:
                attempts.append(Attempt(message, Result.UNTRIED))
                continue
            if unreachable is not None:
                attempts.append(Attempt(message, Result.RETRY, failure=DeliveryFailure(
                    unreachable.stage, unreachable.kind,
                    f"not attempted, upstream unreachable: {unreachable.detail}")))
                continue
            try:
                reply = await transport.send(slot, message)
            except DeliveryFailure as failure:
                attempt = attempt_from_failure(message, failure)
                if attempt.result is Result.PAUSE:
                    halted = True
                elif failure.stage is Stage.CONNECT and failure.kind in (Kind.NETWORK,
                                                                         Kind.TIMEOUT):
                    unreachable = failure
                attempts.append(attempt)
            except Exception as exc:
                log.exception("unexpected error while delivering", queue_id=message.queue_id)
                attempts.append(Attempt(message, Result.RETRY, failure=DeliveryFailure(
                    Stage.DATA, Kind.NETWORK, f"internal error: {type(exc).__name__}: {exc}")))
            else:
                attempts.append(Attempt(message, Result.DELIVERED, reply=reply))

    tasks = [asyncio.create_task(session(slot)) for slot in range(min(sessions, len(batch)))]
    try:
        await asyncio.gather(*tasks)
    except asyncio.CancelledError:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    finally:
        # Whatever was not reached (or was cut off by cancellation) goes back untried.
        done = {attempt.message.queue_id for attempt in attempts}
        attempts.extend(Attempt(m, Result.UNTRIED) for m in batch if m.queue_id not in done)
