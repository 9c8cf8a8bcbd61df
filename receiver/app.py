"""The receiver's ASGI application, declared as data over a ReceiverState."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mailapi.db import StorageError, read_transaction
from receiver import openapi
from receiver.state import ReceiverState
from receiver.webhook import outbound_email


async def healthz(request: Request) -> JSONResponse:
    state: ReceiverState = request.app.state.receiver
    try:
        with read_transaction(state.engine) as connection:
            connection.execute(text("SELECT 1 FROM settings_revision"))
    except StorageError as exc:
        return JSONResponse({"ok": False, "database": str(exc)}, status_code=503,
                            headers={"Retry-After": "2"})
    return JSONResponse({"ok": True, "database": "ok"})


async def openapi_document(request: Request) -> JSONResponse:
    """Public on purpose, like /healthz: it describes the webhook, it grants nothing."""
    return JSONResponse(openapi.document())


async def not_found(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"ok": False, "error": "not found"}, status_code=404)


async def method_not_allowed(request: Request, exc: Exception) -> JSONResponse:
    # RFC 9110 15.5.6: a 405 must carry Allow; Starlette puts it on the HTTPException.
    headers = exc.headers if isinstance(exc, HTTPException) else None
    return JSONResponse({"ok": False, "error": "method not allowed"}, status_code=405,
                        headers=headers)


async def server_error(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"ok": False, "error": "internal error"}, status_code=500)


def build_app(state: ReceiverState) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.committer.start()
        try:
            yield
        finally:
            await state.committer.stop()

    app = Starlette(
        routes=[
            Route("/webhook/outbound-email", outbound_email, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/openapi.json", openapi_document, methods=["GET"]),
        ],
        exception_handlers={404: not_found, 405: method_not_allowed, 500: server_error},
        lifespan=lifespan,
    )
    app.state.receiver = state
    return app
