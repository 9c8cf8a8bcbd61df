"""GET/POST /api-keys: keys for the admin JSON API, shown once at creation, revocable."""

from __future__ import annotations

from datetime import UTC, date, datetime

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailapi import accounts
from mailapi.accounts import AccountError
from mailapi.logging import get_logger
from panel.auth import require_post, require_session
from panel.views.admins import path_id
from panel.web import Form, flash, panel_state, read, redirect, render, source_address, write

log = get_logger("panel.apikeys")
DAY = 86400
EXPIRY_CHOICES = (("never", "Never"), ("30", "In 30 days"), ("90", "In 90 days"),
                  ("365", "In 365 days"), ("date", "On the date below"))
SCOPE_CHOICES = (("read", "Read-only: status, queue, deliveries"),
                 ("admin", "Admin: may also change settings and act on the queue"))


def parse_expiry(form: Form, now: float) -> float | None:
    """The expiry the form asks for, as a timestamp (None: never); AccountError if unclear."""
    choice = form.get("expiry", "never")
    on_date = form.get("expires_on").strip()
    if choice != "date":
        if on_date:
            raise AccountError("expiry: a date was entered; choose \u201con the date below\u201d "
                               "or clear the date")
        if choice == "never":
            return None
        if choice not in ("30", "90", "365"):
            raise AccountError("expiry: choose one of the offered periods")
        return now + int(choice) * DAY
    try:
        day = date.fromisoformat(on_date)
    except ValueError:
        raise AccountError("expiry: enter the date as YYYY-MM-DD") from None
    moment = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
    if moment <= now:
        raise AccountError("expiry: the date must be in the future")
    return moment


async def _keys_page(request: Request, *, errors: dict[str, str] | None = None,
                     values: dict[str, str] | None = None, status_code: int = 200) -> Response:
    keys = await read(request, accounts.list_api_keys)
    now = panel_state(request).clock()
    return render(request, "api_keys.html", {
        "keys": [(key, key.state(now)) for key in keys],
        "errors": errors or {},
        "values": {"name": "", "scope": "read", "expiry": "never", "expires_on": "",
                   **(values or {})},
        "scope_choices": SCOPE_CHOICES, "expiry_choices": EXPIRY_CHOICES,
    }, status_code=status_code, title="API keys")


async def keys_page(request: Request) -> Response:
    await require_session(request)
    return await _keys_page(request)


async def create(request: Request) -> Response:
    session, form = await require_post(request)
    state, source = panel_state(request), source_address(request)
    now = state.clock()
    values = {name: form.get(name) for name in ("name", "scope", "expiry", "expires_on")}
    errors: dict[str, str] = {}
    expires_at: float | None = None
    if not values["name"].strip():
        errors["name"] = "name: say what the key is for (1 to 128 printable characters)"
    if values["scope"] not in accounts.SCOPES:
        errors["scope"] = "scope: choose read-only or admin"
    try:
        expires_at = parse_expiry(form, now)
    except AccountError as exc:
        errors["expiry"] = str(exc)
    if errors:
        return await _keys_page(request, errors=errors, values=values, status_code=400)
    try:
        key, plain = await write(request, lambda c: accounts.create_api_key(
            c, values["name"], values["scope"], expires_at=expires_at, actor=session.username,
            source=source, now=now))
    except AccountError as exc:
        return await _keys_page(request, errors={"name": str(exc)}, values=values,
                                status_code=400)
    log.info("api key created", key_id=key.id, prefix=key.prefix, scope=key.scope,
             actor=session.username)
    # Shown in this response only: never stored, never flashed, never redirected to
    # (the middleware makes every page Cache-Control: no-store).
    return render(request, "apikey_created.html", {"key": key, "plain_key": plain},
                  title="API key created")


async def revoke(request: Request) -> Response:
    session, _form = await require_post(request)
    key_id = path_id(request, "key_id")
    state, source = panel_state(request), source_address(request)
    try:
        key = await write(request, lambda c: accounts.revoke_api_key(
            c, key_id, actor=session.username, source=source, now=state.clock()))
    except AccountError as exc:
        await flash(request, "error", str(exc))
        return redirect(request, "/api-keys")
    log.info("api key revoked", key_id=key.id, prefix=key.prefix, actor=session.username)
    await flash(request, "success", f"API key {key.name} ({key.prefix}…) revoked; it no "
                "longer works.")
    return redirect(request, "/api-keys")


routes = [
    Route("/api-keys", keys_page, methods=["GET"]),
    Route("/api-keys", create, methods=["POST"]),
    Route("/api-keys/{key_id:int}/revoke", revoke, methods=["POST"]),
]
