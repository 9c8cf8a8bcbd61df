"""systemd notify protocol: READY, WATCHDOG, STATUS, STOPPING; silent outside systemd."""

from __future__ import annotations

import os
import time

import sdnotify


class Notifier:
    """Sends to $NOTIFY_SOCKET when systemd set it; every call is a no-op otherwise."""

    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._notifier = sdnotify.SystemdNotifier() if self.enabled else None
        usec = os.environ.get("WATCHDOG_USEC", "")
        watchdog_pid = os.environ.get("WATCHDOG_PID", "")
        applies = not watchdog_pid or watchdog_pid == str(os.getpid())
        # Ping at a third of the interval: late enough to be cheap, early enough to survive
        # a slow loop iteration.
        self.watchdog_interval = (int(usec) / 1e6 / 3) if usec.isdigit() and applies else None
        self._last_ping = 0.0

    def _send(self, state: str) -> None:
        if self._notifier is not None:
            self._notifier.notify(state)

    def ready(self, status: str = "") -> None:
        self._send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, status: str) -> None:
        self._send(f"STATUS={status.splitlines()[0] if status else ''}")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def reloading(self) -> None:
        self._send(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def watchdog(self) -> None:
        """Ping, rate-limited to the interval systemd asked for."""
        if self.watchdog_interval is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_interval:
            self._last_ping = now
            self._send("WATCHDOG=1")
