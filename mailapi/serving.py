"""Running an ASGI app under hypercorn with signals, readiness and the systemd watchdog."""

from __future__ import annotations

import asyncio
import signal
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.config import Config as HypercornConfig

from mailapi.logging import get_logger
from mailapi.systemd import Notifier

log = get_logger("mailapi.serving")


def hypercorn_config(host: str, port: int, *, certfile: Path | None = None,
                     keyfile: Path | None = None, root_path: str = "") -> HypercornConfig:
    config = HypercornConfig()
    # Behind a proxy that publishes the app under a prefix and forwards it unchanged:
    # routing strips it, URL building adds it.
    config.root_path = root_path
    if certfile is not None and keyfile is not None:
        config.certfile = str(certfile)
        config.keyfile = str(keyfile)
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.backlog = 1024
    config.accesslog = None
    config.errorlog = None
    config.include_server_header = False
    config.keep_alive_timeout = 30
    config.read_timeout = 30  # slow clients (slowloris) are cut off
    config.graceful_timeout = 10
    config.h11_max_incomplete_size = 16 * 1024
    config.alpn_protocols = ["http/1.1"]
    return config


def close_connections_on_client_eof() -> None:
    """Free a connection as soon as its client has closed it, not keep_alive_timeout later.

    Hypercorn (0.17, 0.18) ends a connection by leaving a task group that still holds the
    keep-alive timer: a client that closes an idle keep-alive connection (one request per
    connection without `Connection: close`, as curl and many one-shot senders do) leaves the
    socket in CLOSE_WAIT, holding a descriptor, for the whole keep_alive_timeout. At a few
    dozen such connections a second that exhausts a service's 1,024 descriptors: accept()
    fails and requests time out. Once the read loop has seen the end of the stream, the timer
    has nothing left to guard: stop it so the connection closes now. Requests still in
    progress are unaffected (the timer only runs while the connection is idle).
    """
    original = getattr(TCPServer, "_read_data", None)
    if original is None or getattr(original, "_closes_on_eof", False):
        return

    async def read_data(self: Any) -> None:
        await original(self)
        await self.idle_task.stop()

    read_data._closes_on_eof = True  # type: ignore[attr-defined]
    setattr(TCPServer, "_read_data", read_data)  # noqa: B010 - a method of another package


async def probe_http(host: str, port: int, path: str = "/healthz", timeout: float = 2.0, *,
                     tls: bool = False) -> bool:
    """True once a GET on our own port gets an HTTP answer: the server is really serving."""
    target = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)  # noqa: S104
    context: ssl.SSLContext | None = None
    if tls:
        # Our own certificate, reached by address: only "does it answer HTTP" matters here.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(target, port, ssl=context), timeout)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                     .encode())
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
        return line.startswith(b"HTTP/1.1 ")
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()


async def run_http_service(
    app: Any,
    *,
    name: str,
    host: str,
    port: int,
    notifier: Notifier,
    status: Callable[[], str],
    on_reload: Callable[[], Awaitable[None]] | None = None,
    certfile: Path | None = None,
    keyfile: Path | None = None,
    root_path: str = "",
) -> None:
    """Serve until SIGTERM/SIGINT; READY=1 only after our own port answered a request."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    if on_reload is not None:
        reload_callback = on_reload
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(_reload(
            reload_callback, notifier)))
    config = hypercorn_config(host, port, certfile=certfile, keyfile=keyfile,
                              root_path=root_path)
    close_connections_on_client_eof()
    server = asyncio.create_task(serve(app, config, shutdown_trigger=stop.wait))
    while not server.done():
        if await probe_http(host, port, tls=certfile is not None):
            break
        await asyncio.sleep(0.05)
    if server.done():
        server.result()  # re-raise the bind error
        return
    notifier.ready(status())
    log.info("serving", service=name, host=host, port=port)
    while not stop.is_set():
        notifier.watchdog()
        try:
            await asyncio.wait_for(stop.wait(), timeout=1.0)
        except TimeoutError:
            notifier.status(status())
    notifier.stopping()
    log.info("stopping", service=name)
    await server


async def _reload(callback: Callable[[], Awaitable[None]], notifier: Notifier) -> None:
    notifier.reloading()
    await callback()
    notifier.ready()
