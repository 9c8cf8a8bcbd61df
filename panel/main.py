"""mailapi-panel --config PATH: the control panel on 127.0.0.1:2580."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from mailapi.bootstrap import start_daemon
from mailapi.db import write_transaction
from mailapi.heartbeat import keep_beating
from mailapi.logging import get_logger
from mailapi.serving import run_http_service
from mailapi.settings import SettingsCache
from mailapi.systemd import Notifier
from panel import sessions, throttle
from panel.app import build_app
from panel.state import PanelState

log = get_logger("panel")


def main(argv: Sequence[str] | None = None) -> None:
    startup = start_daemon("panel", argv, durability="NORMAL",
                           description="MAIL_API control panel",
                           secrets=("smtp_password", "webhook_secret"))
    settings = SettingsCache(startup.engine, overrides=startup.secret_overrides)
    state = PanelState(engine=startup.engine, config=startup.config, settings=settings,
                       clock=time.time, monotonic=time.monotonic)
    asyncio.run(_serve(state))


async def _serve(state: PanelState) -> None:
    housekeeping = asyncio.create_task(keep_beating(
        state.engine, state.settings, process="panel", status=lambda: "serving",
        also=lambda: _prune(state)))
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


def _prune(state: PanelState) -> None:
    now = state.clock()
    with write_transaction(state.engine) as connection:
        sessions.prune(connection, now=now)
        throttle.prune(connection, now=now)
