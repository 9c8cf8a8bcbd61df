"""JSON plumbing for the admin API: error answers, request bodies, query parameters."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

MAX_BODY_BYTES = 256 * 1024
Handler = Callable[[Request], Awaitable[Response]]


class ApiError(Exception):
    """Answered as {"ok": false, "error": message, ...extra} with `status`."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


def endpoint(handler: Handler) -> Handler:
    """The handler with its ApiError answered as JSON (auth errors go to the app's handlers)."""
    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as exc:
            return JSONResponse({"ok": False, "error": exc.message, **exc.extra},
                                status_code=exc.status)
    return run


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def read_json(request: Request) -> Any:
    """415 unless declared JSON, 413 past MAX_BODY_BYTES, 400 unless it parses (no NaN)."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise ApiError(415, "send the body as Content-Type: application/json")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, "request body too large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise ApiError(413, "request body too large")
    try:
        value = json.loads(bytes(body), parse_constant=_reject_constant)
        # "\ud800" parses to a lone surrogate, which no UTF-8 answer or column can hold.
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError):  # UnicodeError is a ValueError
        raise ApiError(400, "the body is not valid JSON") from None
    return value


def int_query(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    if (not (text.isascii() and text.isdecimal()) or len(text) > 12
            or not low <= int(text) <= high):
        raise ApiError(422, f"{name}: a whole number from {low} to {high}", field=name)
    return int(text)
