"""mailapi-panel --config PATH: the control panel on 127.0.0.1:2580."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from mailapi.bootstrap import start_daemon
from mailapi.db import StorageError, write_transaction
from mailapi.heartbeat import beat
from mailapi.logging import get_logger, set_level
from mailapi.serving import run_http_service
from mailapi.settings import SettingsCache
from mailapi.systemd import Notifier
from panel import sessions, throttle
from panel.app import build_app
from panel.state import PanelState

log = get_logger("panel")
HEARTBEAT_SECONDS = 5.0


def main(argv: Sequence[str] | None = None) -> None:
    startup = start_daemon("panel", argv, durability="NORMAL",
                           description="MAIL_API control panel")
    state = PanelState(engine=startup.engine, config=startup.config,
                       settings=SettingsCache(startup.engine), clock=time.time,
                       monotonic=time.monotonic)
    asyncio.run(_serve(state))


async def _serve(state: PanelState) -> None:
    started_at = time.time()
    housekeeping = asyncio.create_task(_housekeeping(state, started_at))
    panel = state.config.panel

    async def reload() -> None:
        state.settings.invalidate()
        log.info("settings reloaded")

    try:
        await run_http_service(
            build_app(state), name="panel", host=panel.host, port=panel.port,
            notifier=Notifier(), status=lambda: "serving the control panel", on_reload=reload,
            certfile=panel.tls_certificate, keyfile=panel.tls_key, root_path=panel.root_path)
    finally:
        housekeeping.cancel()
    state.engine.dispose()
    log.info("stopped")


async def _housekeeping(state: PanelState, started_at: float) -> None:
    """Heartbeat, log level from the settings, and pruning of ended sessions."""
    level = ""
    while True:
        try:
            settings = await asyncio.to_thread(state.settings.get)
            if settings.log_level != level:
                level = settings.log_level
                set_level(level)
            await asyncio.to_thread(beat, state.engine, process="panel",
                                    started_at=started_at, now=time.time(),
                                    status="serving")
            await asyncio.to_thread(_prune, state)
        except StorageError as exc:
            log.warning("housekeeping skipped", error=str(exc))
        await asyncio.sleep(HEARTBEAT_SECONDS)


def _prune(state: PanelState) -> None:
    now = state.clock()
    with write_transaction(state.engine) as connection:
        sessions.prune(connection, now=now)
        throttle.prune(connection, now=now)
