"""GET/POST /sender: the sender policy (domain, default local part, which others are allowed)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailapi.settings import Settings
from panel.auth import require_post, require_session
from panel.forms import Submission, redisplay
from panel.web import flash, panel_state, redirect, render

KEYS = ("allowed_sender_domain", "default_from_local_part", "allow_any_local_part",
        "sender_allowlist")


def _page(request: Request, settings: Settings, *, typed: dict[str, Any] | None = None,
          errors: dict[str, str] | None = None, status_code: int = 200) -> Response:
    domain = settings.allowed_sender_domain
    return render(request, "sender.html", {
        "values": redisplay(settings, KEYS, typed or {}),
        "errors": errors or {},
        "domain": domain,
        "default_sender": f"{settings.default_from_local_part}@{domain}" if domain else None,
        "allow_any": settings.allow_any_local_part,
        "allowlist": [f"{local_part}@{domain}" for local_part in settings.sender_allowlist]
        if domain else [],
        "display_name": settings.sender_display_name,
    }, status_code=status_code, title="Sender")


async def show(request: Request) -> Response:
    await require_session(request)
    return _page(request, panel_state(request).settings.get())


async def save(request: Request) -> Response:
    session, form = await require_post(request)
    current = panel_state(request).settings.get()
    submission = Submission().read(form, KEYS)
    if await submission.save(request, session) is None:
        return _page(request, current, typed=submission.typed, errors=submission.errors,
                     status_code=400)
    await flash(request, "success", "Sender settings saved.")
    return redirect(request, "/sender")


routes = [
    Route("/sender", show, methods=["GET"]),
    Route("/sender", save, methods=["POST"]),
]
