"""Request helpers shared by every page: forms, rendering, redirects, flash, paging, db."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlencode

from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse

from mailapi.clientaddress import client_address
from mailapi.db import read_transaction, write_transaction
from panel import sessions
from panel.state import PanelState

T = TypeVar("T")
MAX_FORM_BYTES = 512 * 1024


class FormTooLarge(Exception):
    """A form body past MAX_FORM_BYTES."""


class Form:
    """An application/x-www-form-urlencoded body: first value per name, or all of them."""

    def __init__(self, values: dict[str, list[str]]) -> None:
        self._values = values

    def get(self, name: str, default: str = "") -> str:
        items = self._values.get(name)
        return items[0] if items else default

    def get_all(self, name: str) -> list[str]:
        return list(self._values.get(name, []))

    def has(self, name: str) -> bool:
        return name in self._values

    def checkbox(self, name: str) -> bool:
        return self.get(name) in ("on", "true", "1", "yes")


async def read_form(request: Request) -> Form:
    cached = getattr(request.state, "form", None)
    if isinstance(cached, Form):
        return cached
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise FormTooLarge
    try:
        values = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False,
                          max_num_fields=2000)
    except (UnicodeDecodeError, ValueError):
        values = {}
    form = Form(values)
    request.state.form = form
    return form


def panel_state(request: Request) -> PanelState:
    state: PanelState = request.app.state.panel
    return state


async def read(request: Request, work: Callable[[Connection], T]) -> T:
    """Run `work` in a read transaction on a worker thread."""
    engine = panel_state(request).engine

    def run() -> T:
        with read_transaction(engine) as connection:
            return work(connection)
    return await asyncio.to_thread(run)


async def write(request: Request, work: Callable[[Connection], T]) -> T:
    """Run `work` in a write transaction (BEGIN IMMEDIATE) on a worker thread."""
    engine = panel_state(request).engine

    def run() -> T:
        with write_transaction(engine) as connection:
            return work(connection)
    return await asyncio.to_thread(run)


def source_address(request: Request) -> str:
    """The client address as the audit log and throttling see it (via trusted proxies)."""
    cached = getattr(request.state, "source", None)
    if isinstance(cached, str):
        return cached
    settings = panel_state(request).settings.get()
    peer = request.client.host if request.client else None
    address = client_address(peer, request.headers.getlist("x-forwarded-for"),
                             tuple(settings.trusted_proxies))
    source = str(address) if address is not None else "unknown"
    request.state.source = source
    return source


def route_path(request: Request) -> str:
    """The request path without the panel's prefix, as the routes see it."""
    path = request.url.path
    root = panel_state(request).root
    if root and (path == root or path.startswith(root + "/")):
        return path[len(root):] or "/"
    return path


def url(request: Request, path: str, **query: Any) -> str:
    """An absolute path under the panel's prefix (the nginx location)."""
    target = panel_state(request).root + path
    filtered = {k: v for k, v in query.items() if v not in (None, "")}
    return f"{target}?{urlencode(filtered)}" if filtered else target


def redirect(request: Request, path: str, **query: Any) -> RedirectResponse:
    return RedirectResponse(url(request, path, **query), status_code=303)


async def flash(request: Request, kind: str, text: str) -> None:
    """Show `text` once on the next page (kind: success | error | info)."""
    session: sessions.Session | None = getattr(request.state, "session", None)
    if session is None:
        return
    await write(request, lambda c: sessions.add_flash(c, session.id_hash, kind, text))


def when(timestamp: float | None) -> str:
    if not timestamp:
        return "—"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def ago(timestamp: float | None, now: float | None = None) -> str:
    if not timestamp:
        return "never"
    seconds = max(0, int((now or time.time()) - timestamp))
    if seconds < 60:
        return f"{seconds}s ago"
    if seconds < 3600:
        return f"{seconds // 60}m ago"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m ago"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h ago"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60}m"


@dataclass(frozen=True)
class Page:
    """One page of a table: ?page=N (from 1), `size` rows each."""

    number: int
    size: int
    total: int | None = None

    @classmethod
    def from_request(cls, request: Request, size: int = 50) -> Page:
        try:
            number = int(request.query_params.get("page", "1"))
        except ValueError:
            number = 1
        return cls(max(1, min(number, 100_000)), size)

    @property
    def offset(self) -> int:
        return (self.number - 1) * self.size

    def with_total(self, total: int) -> Page:
        return Page(self.number, self.size, total)

    @property
    def pages(self) -> int | None:
        return None if self.total is None else max(1, math.ceil(self.total / self.size))


def render(request: Request, template: str, context: Mapping[str, Any] | None = None, *,
           status_code: int = 200, title: str = "") -> HTMLResponse:
    state = panel_state(request)
    session: sessions.Session | None = getattr(request.state, "session", None)
    values: dict[str, Any] = {
        "request": request,
        "session": session,
        "admin": session.username if session else None,
        "csrf_token": session.csrf_token if session else getattr(request.state, "login_csrf",
                                                                 ""),
        "flashes": session.flash if session else [],
        "root": state.root,
        "url": lambda path, **query: url(request, path, **query),
        "path": request.url.path,
        "when": when,
        "ago": lambda ts: ago(ts, state.clock()),
        "duration": duration,
        "title": title,
        "scope": getattr(request.state, "scope_name", None),
        # Settings this panel process takes from the bootstrap config's secret files.
        "from_files": frozenset(state.settings.overrides),
    }
    values.update(context or {})
    html = state.templates.get_template(template).render(values)
    return HTMLResponse(html, status_code=status_code)


def query_string(request: Request, **changes: Any) -> str:
    """The current query with some parameters replaced (for pager links)."""
    params = dict(request.query_params)
    params.update({k: str(v) for k, v in changes.items()})
    return urlencode({k: v for k, v in params.items() if v != ""})


__all__ = ["Form", "FormTooLarge", "Page", "flash", "panel_state", "read", "read_form",
           "redirect", "render", "source_address", "url", "write"]
