"""mailapi-worker --config PATH: deliver the queue until SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import signal
import time
from collections.abc import Sequence

from mailapi import queue as outbound
from mailapi.bootstrap import start_daemon
from mailapi.config import fault_injector
from mailapi.db import StorageError, read_transaction
from mailapi.deliverylog import DeliveryLog
from mailapi.heartbeat import beat
from mailapi.logging import get_logger, set_level
from mailapi.settings import SettingsCache
from mailapi.systemd import Notifier
from worker.loop import Worker, WorkerOptions
from worker.wakeup import DatabaseWatcher

log = get_logger("worker")
HEARTBEAT_SECONDS = 5.0
SHUTDOWN_GRACE_SECONDS = 20.0


def main(argv: Sequence[str] | None = None) -> None:
    startup = start_daemon(
        "worker", argv, durability="NORMAL", description="MAIL_API delivery worker",
        extra=[("--once", {"action": "store_true",
                           "help": "deliver what is due once, then exit"})],
        secrets=("smtp_password",))
    config = startup.config
    options = WorkerOptions(
        sessions=config.worker.sessions, batch_size=config.worker.batch_size,
        lease_seconds=config.worker.lease_seconds,
        file_outbox=config.worker.outbox_dir if config.worker.delivery_backend == "file"
        else None,
        ca_file=config.smtp.ca_file,
    )
    delivery_log = (DeliveryLog(config.logging.delivery_log, config.logging.delivery_log_max_bytes)
                    if config.logging.delivery_log else None)
    settings = SettingsCache(startup.engine, overrides=startup.secret_overrides)
    worker = Worker(startup.engine, settings, options, delivery_log=delivery_log,
                    faults=fault_injector(config))
    gc.collect()
    gc.freeze()  # long-lived start-up objects stay out of full collections
    if startup.arguments.once:
        asyncio.run(_once(worker))
    else:
        asyncio.run(_run(worker, config.worker.poll_interval_ms / 1000))
    startup.engine.dispose()


async def _once(worker: Worker) -> None:
    try:
        while await worker.run_once():
            pass
    finally:
        await worker.close()


async def _run(worker: Worker, poll_seconds: float) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, worker.stopping.set)
    notifier = Notifier()
    watcher = DatabaseWatcher(worker.engine, poll_seconds)
    started_at = time.time()
    progress = Progress()
    deliver = asyncio.create_task(_deliver_forever(worker, watcher, notifier, started_at,
                                                   progress))
    watchdog = asyncio.create_task(_watchdog(worker, notifier, progress))
    notifier.ready("delivering")
    log.info("worker ready", backend="file" if worker.options.file_outbox else "smtp",
             sessions=worker.options.sessions)
    await worker.stopping.wait()
    notifier.stopping()
    log.info("stopping: finishing deliveries in flight")
    try:
        # In-flight sessions finish their message; nothing new is started; what is left
        # of the batch is released untried. Past the grace period the rest is cancelled
        # and released (a message cut off mid-DATA may then be delivered twice).
        await asyncio.wait_for(asyncio.shield(deliver), SHUTDOWN_GRACE_SECONDS)
    except TimeoutError:
        deliver.cancel()
        await asyncio.gather(deliver, return_exceptions=True)
    watchdog.cancel()
    await worker.close()
    watcher.close()
    log.info("stopped", delivered=worker.stats.delivered)


class Progress:
    """When the delivery loop last started a pass (monotonic seconds)."""

    def __init__(self) -> None:
        self.at = time.monotonic()


async def _watchdog(worker: Worker, notifier: Notifier, progress: Progress) -> None:
    """Ping systemd's watchdog while the event loop runs and no pass outlives its lease.

    A pass waiting on a slow upstream legitimately takes up to the lease; past that the loop
    is wedged, the pings stop and systemd restarts the worker (the lease lets another
    worker pick the messages up).
    """
    if notifier.watchdog_interval is None:
        return
    while True:
        if time.monotonic() - progress.at < worker.longest_pass_seconds:
            notifier.watchdog()
        await asyncio.sleep(min(1.0, notifier.watchdog_interval))


async def _deliver_forever(worker: Worker, watcher: DatabaseWatcher, notifier: Notifier,
                           started_at: float, progress: Progress) -> None:
    last_beat = float("-inf")
    level = ""
    backoff = 0.05
    while not worker.stopping.is_set():
        progress.at = time.monotonic()
        try:
            claimed = await worker.run_once()
            if time.monotonic() - last_beat >= HEARTBEAT_SECONDS:
                last_beat = time.monotonic()
                status = await asyncio.to_thread(_status, worker)
                notifier.status(status)
                await asyncio.to_thread(beat, worker.engine, process="worker",
                                        started_at=started_at, now=time.time(), status=status)
                settings = worker.settings.get()
                if settings.log_level != level:
                    level = settings.log_level
                    set_level(level)
                await worker.close_idle_connections()
            if claimed:
                backoff = 0.05
                continue
            await watcher.wait(await worker.idle_wait_seconds(), worker.stopping)
        except StorageError as exc:
            log.warning("database busy or full; backing off", error=str(exc), seconds=backoff)
            await watcher.wait(backoff, worker.stopping)
            backoff = min(backoff * 2, 5.0)
        except Exception:  # a bug must not end delivery: log it, back off, go on
            log.exception("unexpected error in the delivery loop", seconds=backoff)
            await watcher.wait(backoff, worker.stopping)
            backoff = min(backoff * 2, 5.0)


def _status(worker: Worker) -> str:
    with read_transaction(worker.engine) as connection:
        counts = outbound.counts_by_state(connection)
    stats = worker.stats
    last = (time.strftime("%H:%M:%S", time.gmtime(stats.last_delivery_at))
            if stats.last_delivery_at else "never")
    paused = f", PAUSED: {stats.paused_reason[:80]}" if stats.paused_reason else ""
    return (f"queued {counts['queued']}, leased {counts['leased']}, failed {counts['failed']}; "
            f"delivered {stats.delivered}, last {last} UTC{paused}")
