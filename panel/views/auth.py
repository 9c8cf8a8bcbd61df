"""GET/POST /login and POST /logout."""

from __future__ import annotations

import asyncio

from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailapi import accounts, audit
from mailapi.db import read_transaction
from mailapi.logging import get_logger
from panel import sessions, throttle
from panel.auth import (
    LOGIN_COOKIE,
    check_login_token,
    check_origin,
    clear_cookie,
    current_session,
    issue_login_token,
    require_post,
    set_cookie,
)
from panel.web import panel_state, read_form, redirect, render, source_address, write

log = get_logger("panel.login")
FAILURE = "Invalid user name or password."


def _safe_next(target: str) -> str:
    """Only a path on this panel: no scheme, no host, no protocol-relative //."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


async def _login_page(request: Request, *, error: str = "", username: str = "",
                      status_code: int = 200) -> Response:
    await issue_login_token(request)
    notice = "You have been logged out." if request.query_params.get("bye") else ""
    response = render(request, "login.html", {
        "error": error, "username": username, "notice": notice,
        "next": _safe_next(request.query_params.get("next", "/")),
    }, status_code=status_code, title="Log in")
    set_cookie(request, response, LOGIN_COOKIE, request.state.login_cookie, max_age=3600)
    return response


async def login_form(request: Request) -> Response:
    if await current_session(request) is not None:
        return redirect(request, "/")
    return await _login_page(request)


async def login(request: Request) -> Response:
    check_origin(request)
    form = await read_form(request)
    if not await check_login_token(request, form):
        return await _login_page(request, error="The login form expired. Please try again.",
                                 status_code=403)
    state = panel_state(request)
    username = form.get("username").strip()[:64]
    password = form.get("password")
    address = source_address(request)
    now = state.clock()

    def verify() -> accounts.Admin | None:
        with read_transaction(state.engine) as connection:
            if throttle.locked(connection, username, address, now=now):
                accounts.burn_verification_time(password)
                return None
            return accounts.verify_login(connection, username, password)

    admin = await asyncio.to_thread(verify) if username and password else None
    if admin is None:
        await write(request, lambda c: throttle.record_failure(c, username, address, now=now))
        log.warning("login failed", username=username, source=address)
        return await _login_page(request, error=FAILURE, username=username, status_code=401)

    def open_session(connection: Connection) -> str:
        # A login replaces the session the browser already holds: the old id stops working.
        previous = sessions.load(connection, request.cookies.get(sessions.COOKIE), now=now)
        if previous is not None:
            sessions.end(connection, previous.id_hash)
        throttle.record_success(connection, username)
        accounts.record_login(connection, admin.id, now=now)
        audit.record(connection, actor=admin.username, action="admin.login",
                     target=admin.username, source=address, at=now)
        return sessions.create(connection, admin.id, source=address,
                               user_agent=request.headers.get("user-agent", ""), now=now)

    cookie = await write(request, open_session)
    log.info("login", username=admin.username, source=address)
    response = redirect(request, _safe_next(form.get("next", "/")))
    clear_cookie(request, response, LOGIN_COOKIE)
    set_cookie(request, response, sessions.COOKIE, cookie)
    return response


async def logout(request: Request) -> Response:
    session, _form = await require_post(request)
    await write(request, lambda c: sessions.end(c, session.id_hash))
    log.info("logout", username=session.username, source=source_address(request))
    response = redirect(request, "/login", bye="1")
    clear_cookie(request, response, sessions.COOKIE)
    return response


routes = [
    Route("/login", login_form, methods=["GET"]),
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
]
