"""GET/POST /admins: create, disable, enable, reset passwords; rotate the session secret."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailapi import accounts
from mailapi.accounts import AccountError
from mailapi.logging import get_logger
from panel import sessions
from panel.auth import clear_cookie, require_post, require_session
from panel.web import Form, flash, panel_state, read, redirect, render, source_address, write

log = get_logger("panel.admins")
# SQLite integers are 64-bit; a longer id in the path names no row (and must not overflow).
MAX_ID = 2**63 - 1


def path_id(request: Request, name: str) -> int:
    """The integer path parameter `name`, or 0 (no such row) when it cannot be an id."""
    value = int(request.path_params[name])
    return value if value <= MAX_ID else 0


def password_errors(form: Form, username: str) -> dict[str, str]:
    """Inline messages for a new password and its confirmation (empty when acceptable)."""
    password = form.get("password")
    try:
        accounts.check_password(password, username)
    except AccountError as exc:
        return {"password": str(exc)}
    if form.get("password_confirm") != password:
        return {"password_confirm": "The two passwords differ; type the same one twice."}
    return {}


async def _admins_page(request: Request, *, errors: dict[str, str] | None = None,
                       username: str = "", status_code: int = 200) -> Response:
    listing = await read(request, accounts.list_admins)
    return render(request, "admins.html", {
        "admins": listing, "errors": errors or {}, "username": username,
        "active_count": sum(1 for admin in listing if not admin.disabled),
    }, status_code=status_code, title="Admins")


def _logged_out(request: Request) -> Response:
    """Our own session ended server-side: drop the cookie and go to the login page."""
    response = redirect(request, "/login", bye="1")
    clear_cookie(request, response, sessions.COOKIE)
    return response


async def admins_page(request: Request) -> Response:
    await require_session(request)
    return await _admins_page(request)


async def create(request: Request) -> Response:
    session, form = await require_post(request)
    username = form.get("username").strip()
    errors: dict[str, str] = {}
    try:
        accounts.check_username(username)
    except AccountError as exc:
        errors["username"] = str(exc)
    errors.update(password_errors(form, username))
    if errors:
        return await _admins_page(request, errors=errors, username=username, status_code=400)
    state, source = panel_state(request), source_address(request)
    try:
        # argon2 (~0.1 s) runs on the thread pool, before the write lock is taken.
        hashed = await asyncio.to_thread(accounts.HashedPassword.prepare, form.get("password"),
                                         username)
        created = await write(request, lambda c: accounts.create_admin(
            c, username, hashed, actor=session.username, source=source,
            now=state.clock()))
    except AccountError as exc:
        return await _admins_page(request, errors={"username": str(exc)}, username=username,
                                  status_code=400)
    log.info("admin created", username=created.username, actor=session.username)
    await flash(request, "success", f"Admin {created.username} created.")
    return redirect(request, "/admins")


async def _set_disabled(request: Request, disabled: bool) -> Response:
    session, _form = await require_post(request)
    admin_id = path_id(request, "admin_id")
    state, source = panel_state(request), source_address(request)
    try:
        admin = await write(request, lambda c: accounts.set_disabled(
            c, admin_id, disabled, actor=session.username, source=source, now=state.clock()))
    except AccountError as exc:
        await flash(request, "error", str(exc))
        return redirect(request, "/admins")
    log.info("admin disabled" if disabled else "admin enabled", username=admin.username,
             actor=session.username)
    if disabled and admin.id == session.admin_id:
        return _logged_out(request)
    verb = "disabled; their sessions have ended" if disabled else "enabled"
    await flash(request, "success", f"Admin {admin.username} {verb}.")
    return redirect(request, "/admins")


async def disable(request: Request) -> Response:
    return await _set_disabled(request, True)


async def enable(request: Request) -> Response:
    return await _set_disabled(request, False)


async def _password_page(request: Request, admin: accounts.Admin, *,
                         errors: dict[str, str] | None = None,
                         status_code: int = 200) -> Response:
    return render(request, "admin_password.html", {"target": admin, "errors": errors or {}},
                  status_code=status_code, title=f"Reset the password of {admin.username}")


async def _target(request: Request) -> accounts.Admin | None:
    admin_id = path_id(request, "admin_id")
    return await read(request, lambda c: accounts.get_admin(c, admin_id))


async def password_form(request: Request) -> Response:
    await require_session(request)
    admin = await _target(request)
    if admin is None:
        await flash(request, "error", "No such admin.")
        return redirect(request, "/admins")
    return await _password_page(request, admin)


async def reset_password(request: Request) -> Response:
    session, form = await require_post(request)
    admin = await _target(request)
    if admin is None:
        await flash(request, "error", "No such admin.")
        return redirect(request, "/admins")
    errors = password_errors(form, admin.username)
    if errors:
        return await _password_page(request, admin, errors=errors, status_code=400)
    state, source = panel_state(request), source_address(request)
    try:
        hashed = await asyncio.to_thread(accounts.HashedPassword.prepare, form.get("password"),
                                         admin.username)
        ended = await write(request, lambda c: accounts.set_password(
            c, admin.id, hashed, actor=session.username, source=source,
            now=state.clock()))
    except AccountError as exc:
        return await _password_page(request, admin, errors={"password": str(exc)},
                                    status_code=400)
    log.info("admin password reset", username=admin.username, actor=session.username,
             sessions_ended=ended)
    if admin.id == session.admin_id:
        return _logged_out(request)
    await flash(request, "success", f"Password of {admin.username} changed; "
                f"{ended} session(s) of theirs ended.")
    return redirect(request, "/admins")


async def rotate_session_secret(request: Request) -> Response:
    session, form = await require_post(request)
    if not form.checkbox("confirm"):
        await flash(request, "error", "Tick the box to confirm: rotating the secret logs "
                    "out every admin, you included.")
        return redirect(request, "/admins")
    state, source = panel_state(request), source_address(request)
    ended = await write(request, lambda c: sessions.rotate_secret(
        c, actor=session.username, source=source, now=state.clock()))
    log.warning("session secret rotated", actor=session.username, sessions_ended=ended)
    return _logged_out(request)


routes = [
    Route("/admins", admins_page, methods=["GET"]),
    Route("/admins", create, methods=["POST"]),
    Route("/admins/{admin_id:int}/disable", disable, methods=["POST"]),
    Route("/admins/{admin_id:int}/enable", enable, methods=["POST"]),
    Route("/admins/{admin_id:int}/password", password_form, methods=["GET"]),
    Route("/admins/{admin_id:int}/password", reset_password, methods=["POST"]),
    Route("/rotate-session-secret", rotate_session_secret, methods=["POST"]),
]
