"""The panel's ASGI application: pages, the admin API, static files, security middleware."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from mailapi.db import StorageError
from mailapi.logging import get_logger
from panel.auth import Forbidden, LoginRequired
from panel.security import PanelSecurityMiddleware, security_headers
from panel.state import PanelState
from panel.views import (
    admins,
    api,
    apikeys,
    audit,
    auth,
    dashboard,
    deliveries,
    protocols,
    queue,
    sender,
    settings,
    smtp,
    templates,
)
from panel.web import FormTooLarge, redirect, render, route_path, url

log = get_logger("panel")
STATIC = Path(__file__).parent / "static"
# Each view module owns one area of the panel and exports its `routes`.
VIEWS = (auth, dashboard, settings, smtp, sender, templates, protocols, admins, apikeys, queue,
         deliveries, audit, api)


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/")


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


async def login_required(request: Request, exc: Exception) -> Response:
    if _wants_json(request):
        return JSONResponse({"ok": False, "error": "authentication required: send "
                             "Authorization: Bearer <API key>"}, status_code=401,
                            headers={"WWW-Authenticate": 'Bearer realm="mail-api"'})
    target = route_path(request) + (f"?{request.url.query}" if request.url.query else "")
    if request.method != "GET":
        target = "/"
    return redirect(request, "/login", next=target)


async def forbidden(request: Request, exc: Exception) -> Response:
    reason = exc.reason if isinstance(exc, Forbidden) else "forbidden"
    if _wants_json(request):
        return JSONResponse({"ok": False, "error": reason}, status_code=403)
    return render(request, "error.html", {"status": 403, "reason": reason}, status_code=403,
                  title="Forbidden")


async def too_large(request: Request, exc: Exception) -> Response:
    if _wants_json(request):
        return JSONResponse({"ok": False, "error": "request body too large"}, status_code=413)
    return render(request, "error.html", {"status": 413, "reason": "The form is too large."},
                  status_code=413, title="Too large")


async def storage_error(request: Request, exc: Exception) -> Response:
    log.warning("database unavailable", error=str(exc))
    reason = "The database is busy or unavailable; nothing was changed. Try again shortly."
    if _wants_json(request):
        return JSONResponse({"ok": False, "error": reason}, status_code=503,
                            headers={"Retry-After": "2"})
    return render(request, "error.html", {"status": 503, "reason": reason}, status_code=503,
                  title="Unavailable")


async def http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    headers = exc.headers if isinstance(exc, HTTPException) else None
    reason = {404: "Not found.", 405: "Method not allowed."}.get(status, "Request refused.")
    if _wants_json(request):
        return JSONResponse({"ok": False, "error": reason.rstrip(".").lower()},
                            status_code=status, headers=headers)
    return render(request, "error.html", {"status": status, "reason": reason},
                  status_code=status, title=reason.rstrip("."))


async def server_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error", path=request.url.path, error=repr(exc))
    # Starlette sends this response from outside the middleware stack, so the security
    # headers are added here.
    if _wants_json(request):
        return JSONResponse({"ok": False, "error": "internal error"}, status_code=500,
                            headers=security_headers())
    return Response("Internal error: the panel logged the details.\n", status_code=500,
                    media_type="text/plain", headers=security_headers())


def build_app(state: PanelState) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield

    state.templates.globals["static"] = lambda name: url_static(state, name)
    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            *(route for view in VIEWS for route in view.routes),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        middleware=[Middleware(PanelSecurityMiddleware,
                               allowed_hosts=state.config.panel.allowed_hosts,
                               static_prefix="/static/")],
        exception_handlers={
            LoginRequired: login_required,
            Forbidden: forbidden,
            FormTooLarge: too_large,
            StorageError: storage_error,
            HTTPException: http_error,
            500: server_error,
        },
        lifespan=lifespan,
    )
    app.state.panel = state
    return app


def url_static(state: PanelState, name: str) -> str:
    return f"{state.root}/static/{name}"


__all__ = ["build_app", "url"]
