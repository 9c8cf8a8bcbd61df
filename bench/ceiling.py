"""The ceiling: a trivial endpoint on the receiver's server stack (starlette + hypercorn with
mailapi.serving.hypercorn_config), run as `python -m bench.ceiling --port N`.

It reads the body and answers 202 with a JSON body of the receiver's shape, and does nothing
else: no signature, no validation, no rendering, no database, no logging.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from hypercorn.asyncio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mailapi.serving import hypercorn_config

_COUNTER = [0]


async def outbound_email(request: Request) -> JSONResponse:
    await request.body()
    _COUNTER[0] += 1
    return JSONResponse(
        {"ok": True, "to": "user@example.org", "subject": "Verify your email",
         "queued_id": _COUNTER[0], "queued_at": "2025-01-01T00:00:00.000Z"},
        status_code=202,
    )


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


def build_app() -> Starlette:
    return Starlette(routes=[
        Route("/webhook/outbound-email", outbound_email, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ])


async def _serve(host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await serve(build_app(), hypercorn_config(host, port),  # type: ignore[arg-type]
                shutdown_trigger=stop.wait)


def main() -> None:
    parser = argparse.ArgumentParser(description="trivial endpoint for the webhook ceiling")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    arguments = parser.parse_args()
    asyncio.run(_serve(arguments.host, arguments.port))


if __name__ == "__main__":
    main()
