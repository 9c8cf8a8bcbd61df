"""GET/POST /settings: webhook signature and secret rotation, access, links, retries, logging."""

from __future__ import annotations

import secrets
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailapi.settings import Settings
from mailapi.settings.definitions import LOG_LEVELS
from panel.auth import require_post, require_session
from panel.forms import Submission, redisplay
from panel.web import Form, flash, panel_state, redirect, render, when

KEYS = (
    "webhook_signature_required", "webhook_timestamp_skew_seconds",
    "ip_allowlist", "trusted_proxies", "rate_limit_per_minute",
    "public_web_url", "link_path_email_verification", "link_path_password_reset",
    "retry_base_seconds", "retry_max_seconds", "retry_max_attempts", "message_max_age_seconds",
    "queue_pause_seconds", "max_lease_reclaims",
    "log_level",
)
SECRET_ACTIONS = ("keep", "generate", "replace", "remove")
GRACE_CHOICES = (("0", "None: the old secret stops working at once"),
                 ("3600", "1 hour"), ("86400", "24 hours"))
DEFAULT_GRACE = "3600"
MIN_SECRET_LENGTH = 16
MAX_SECRET_LENGTH = 256


def check_typed_secret(secret: str) -> str | None:
    """Why a typed webhook secret is unusable, or None."""
    if len(secret) < MIN_SECRET_LENGTH:
        return f"must be at least {MIN_SECRET_LENGTH} characters (a random one is safer)"
    if len(secret) > MAX_SECRET_LENGTH:
        return f"must be at most {MAX_SECRET_LENGTH} characters"
    if any(not 33 <= ord(ch) <= 126 for ch in secret):
        return "must be printable ASCII without spaces (it is copied into another service)"
    return None


def secret_changes(current: Settings, new_secret: str, grace_seconds: int, now: float
                   ) -> dict[str, Any]:
    """The settings for a new secret; the old one stays valid for `grace_seconds` if set."""
    if grace_seconds > 0 and current.webhook_secret:
        return {"webhook_secret": new_secret,
                "webhook_secret_previous": current.webhook_secret,
                "webhook_secret_previous_valid_until": now + grace_seconds}
    return {"webhook_secret": new_secret, "webhook_secret_previous": "",
            "webhook_secret_previous_valid_until": 0.0}


def read_secret_choice(form: Form, submission: Submission, current: Settings, now: float
                       ) -> str | None:
    """Add the secret change the form asks for; returns a newly generated secret, if any."""
    action = form.get("secret_action", "keep")
    typed = form.get("webhook_secret")
    grace_text = form.get("secret_grace", "0")
    submission.typed["secret_action"] = action
    submission.typed["secret_grace"] = grace_text
    if action not in SECRET_ACTIONS:
        submission.reject("secret_action", "choose one of the listed secret actions")
        return None
    if grace_text not in dict(GRACE_CHOICES):
        submission.reject("secret_grace", "choose one of the listed grace periods")
        return None
    if action == "keep" and typed:
        action = "replace"  # typing a new secret says what the admin wants
    if action in ("generate", "remove") and typed:
        submission.reject("webhook_secret", f"leave this empty to {action} the secret "
                          "(or choose \u201creplace\u201d)")
        return None
    if action == "keep":
        return None
    if action == "remove":
        submission.changes.update(secret_changes(current, "", 0, now))
        return None
    if action == "replace":
        problem = check_typed_secret(typed) if typed else "type the new secret here"
        if problem:
            submission.reject("webhook_secret", problem)
            return None
        submission.changes.update(secret_changes(current, typed, int(grace_text), now))
        return None
    generated = secrets.token_urlsafe(32)
    submission.changes.update(secret_changes(current, generated, int(grace_text), now))
    return generated


def _page(request: Request, settings: Settings, *, typed: dict[str, Any] | None = None,
          errors: dict[str, str] | None = None, new_secret: str | None = None,
          status_code: int = 200) -> Response:
    now = panel_state(request).clock()
    previous_until = settings.webhook_secret_previous_valid_until
    values = redisplay(settings, KEYS, typed or {})
    return render(request, "settings.html", {
        "values": values,
        "errors": errors or {},
        "secret_is_set": bool(settings.webhook_secret),
        "previous_until": when(previous_until) if settings.webhook_secret_previous
        and previous_until > now else None,
        "secret_action": values.get("secret_action", "keep"),
        "secret_grace": values.get("secret_grace", DEFAULT_GRACE),
        "grace_choices": GRACE_CHOICES,
        "log_levels": [(level, level) for level in LOG_LEVELS],
        "new_secret": new_secret,
    }, status_code=status_code, title="Webhook & access")


async def show(request: Request) -> Response:
    await require_session(request)
    return _page(request, panel_state(request).settings.get())


async def save(request: Request) -> Response:
    session, form = await require_post(request)
    state = panel_state(request)
    current = state.settings.get()
    submission = Submission().read(form, KEYS)
    generated = read_secret_choice(form, submission, current, state.clock())
    saved = await submission.save(request, session)
    if saved is None:
        return _page(request, current, typed=submission.typed, errors=submission.errors,
                     status_code=400)
    if generated is not None:
        # Shown once, in this response only: nothing else ever displays a secret.
        return _page(request, saved, new_secret=generated)
    message = "Settings saved."
    if "webhook_secret" in submission.changes:
        message = ("Settings saved; the webhook secret was removed." if not saved.webhook_secret
                   else "Settings saved; the webhook secret was replaced.")
        if saved.webhook_secret_previous:
            message += (" The previous secret is accepted until "
                        f"{when(saved.webhook_secret_previous_valid_until)}.")
    await flash(request, "success", message)
    return redirect(request, "/settings")


routes = [
    Route("/settings", show, methods=["GET"]),
    Route("/settings", save, methods=["POST"]),
]
