"""GET / : queue depth, recent outcomes, process liveness and warnings at a glance."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailapi import events, heartbeat, pause, queue
from mailapi.settings import Settings
from panel.auth import require_session
from panel.web import panel_state, read, render

# A process whose heartbeat is older than this is shown as down (they beat every 5 s).
ALIVE_SECONDS = 20.0
PROCESSES = ("receiver", "worker", "panel")


@dataclass(frozen=True)
class Liveness:
    process: str
    alive: bool
    beat: heartbeat.Heartbeat | None


def warnings(settings: Settings, paused: pause.PauseState, now: float) -> list[str]:
    """What an operator should act on, worst first."""
    found = []
    if paused.active(now, settings.smtp_fingerprint()):
        found.append(f"Delivery is paused by the circuit breaker until the pause ends or the "
                     f"SMTP settings change: {paused.reason or 'no reason recorded'}")
    if not settings.webhook_secret and settings.webhook_signature_required:
        found.append("No webhook secret is set: the receiver answers every webhook with 503.")
    elif not settings.webhook_signature_required:
        found.append("Webhook signatures are not required: anyone who can reach the "
                     "receiver can send mail.")
    if not settings.allowed_sender_domain:
        found.append("No sender domain is set (allowed_sender_domain): the receiver answers "
                     "503.")
    if not settings.smtp_host:
        found.append("No SMTP host is set: messages wait in the queue.")
    if settings.smtp_ignore_certificates:
        found.append("Certificate checking is off for the SMTP upstream: a man in the middle "
                     "could read the mail and the SMTP password.")
    if settings.smtp_security == "plain" and settings.smtp_allow_plaintext_auth:
        found.append("SMTP AUTH is allowed over an unencrypted connection.")
    return found


def gather(connection: Connection, settings: Settings, now: float) -> dict[str, Any]:
    beats = {b.process: b for b in heartbeat.read_all(connection)}
    return {
        "counts": queue.counts_by_state(connection),
        "oldest": queue.oldest_waiting_since(connection),
        "last_hour": events.outcome_counts_since(connection, now - 3600),
        "last_day": events.outcome_counts_since(connection, now - 86400),
        "errors": events.recent_events(connection, limit=10,
                                       outcomes=(events.FAILED, events.DEFERRED,
                                                 events.PAUSED)),
        "liveness": [Liveness(p, p in beats and now - beats[p].beat_at < ALIVE_SECONDS,
                              beats.get(p)) for p in PROCESSES],
        "warnings": warnings(settings, pause.read_pause(connection), now),
    }


async def dashboard(request: Request) -> Response:
    await require_session(request)
    state = panel_state(request)
    settings = state.settings.get()
    now = state.clock()
    context = await read(request, lambda c: gather(c, settings, now))
    context["now"] = now
    return render(request, "dashboard.html", context, title="Dashboard")


routes = [Route("/", dashboard, methods=["GET"])]
