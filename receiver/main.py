"""mailapi-receiver --config PATH: serve the webhook on port 2555."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Sequence

from mailapi.bootstrap import start_daemon
from mailapi.config import fault_injector
from mailapi.heartbeat import keep_beating
from mailapi.intake import RendererCache
from mailapi.logging import get_logger
from mailapi.ratelimit import RateLimiter
from mailapi.serving import run_http_service
from mailapi.settings import SettingsCache
from mailapi.systemd import Notifier
from receiver.app import build_app
from receiver.groupcommit import GroupCommitter
from receiver.state import ReceiverState

log = get_logger("receiver")


def main(argv: Sequence[str] | None = None) -> None:
    startup = start_daemon("receiver", argv, durability="FULL",
                           description="MAIL_API webhook receiver",
                           secrets=("webhook_secret",))
    config = startup.config
    engine = startup.engine
    state = ReceiverState(
        engine=engine,
        settings=SettingsCache(engine, overrides=startup.secret_overrides),
        renderers=RendererCache(),
        committer=GroupCommitter(engine, time.time, faults=fault_injector(config)),
        rate_limiter=RateLimiter(time.monotonic),
        clock=time.time,
        max_body_bytes=config.receiver.max_body_bytes,
    )
    # Everything built so far lives as long as the process: keep it out of the collector's
    # full passes, which otherwise walk every imported module on each gen-2 collection.
    gc.collect()
    gc.freeze()
    asyncio.run(_serve(state, config.receiver.host, config.receiver.port))


async def _serve(state: ReceiverState, host: str, port: int) -> None:
    heartbeat = asyncio.create_task(keep_beating(
        state.engine, state.settings, process="receiver",
        status=lambda: f"accepted {state.committer.rows}"))

    def status() -> str:
        return f"accepted {state.committer.rows} messages in {state.committer.batches} commits"

    async def reload() -> None:
        state.settings.invalidate()
        log.info("settings reloaded")

    try:
        await run_http_service(build_app(state), name="receiver", host=host, port=port,
                               notifier=Notifier(), status=status, on_reload=reload)
    finally:
        heartbeat.cancel()
    state.engine.dispose()
    log.info("stopped")
