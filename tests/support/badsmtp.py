"""Scripted raw-TCP SMTP peers for what aiosmtpd cannot do, and proof that a pass leaked nothing.

- `ScriptedSmtp`: a small SMTP server whose every stage (greeting, EHLO, STARTTLS, AUTH, MAIL,
  RCPT, DATA, the final dot) can be told to answer a chosen reply, wait, stay silent, hang up,
  or send raw bytes (garbage, a 2 MB line). It records every command line it receives.
- `StripTlsProxy`: a man in the middle in front of a real server: it relays the session but
  removes STARTTLS from the EHLO answer and offers AUTH PLAIN LOGIN instead.
- `TapProxy`: a transparent relay that records every byte the client sent (TLS stays opaque).
- `drive_checked` / `run_worker_checked`: drive worker passes, then check that no task,
  connection or descriptor was left behind.

Each server runs its own event loop in a thread on a free 127.0.0.1 port; `stop()` closes
the listener and every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar

from tests.support.ports import free_port
from worker.loop import Worker
from worker.transport import SmtpTransport

CRLF = b"\r\n"
T = TypeVar("T")
CHUNK = 64 * 1024


class _ThreadedServer:
    """An asyncio TCP server with its own loop in a daemon thread."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.connections = 0
        self.lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    def start(self) -> Self:
        ready = threading.Event()
        failure: list[OSError] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._accept, "127.0.0.1", self.port))
            except OSError as exc:  # the port is taken
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._thread = threading.Thread(target=run, name=type(self).__name__, daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError(f"{type(self).__name__} did not start")
        if failure:
            raise failure[0]
        return self

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        with self.lock:
            self.connections += 1
        try:
            await self.handle(reader, writer)
        except (OSError, EOFError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client went away: that is its right
        except asyncio.CancelledError:
            pass  # stop(): this loop is ending, nobody awaits the handler
        finally:
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()
            self._handlers.discard(task)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


# -- the scripted server ------------------------------------------------------------------------

STAGES = ("greeting", "ehlo", "starttls", "auth", "mail", "rcpt", "data", "dot")
NORMAL = {
    "greeting": "220 scripted.example ESMTP ready",
    "starttls": "220 2.0.0 Ready to start TLS",
    "auth": "235 2.7.0 Authentication successful",
    "mail": "250 2.1.0 Sender OK",
    "rcpt": "250 2.1.5 Recipient OK",
    "data": "354 End data with <CR><LF>.<CR><LF>",
    "dot": "250 2.0.0 Queued as SCRIPTED",
}


@dataclass(frozen=True)
class Step:
    """What the peer does at one stage: wait, then answer (or not), then maybe hang up.

    `reply` None means the normal reply; a str is sent as lines ending in CRLF; bytes are sent
    as they are, in 64 KB writes (a huge reply never sits whole in the peer's buffer).
    `silent` answers nothing and waits for the client to leave; `close` hangs up after the
    reply (or instead of it, with `reply=b""`).
    """

    reply: str | bytes | None = None
    delay: float = 0.0
    silent: bool = False
    close: bool = False


@dataclass
class Script:
    steps: dict[str, Step] = field(default_factory=dict)
    offer_starttls: bool = False
    offer_auth: bool = False
    # Hang up after this many bytes of message content (a disconnect mid-DATA).
    cut_data_after: int | None = None

    def step(self, stage: str) -> Step:
        assert stage in STAGES, stage
        return self.steps.get(stage, Step())


class ScriptedSmtp(_ThreadedServer):
    """A scripted SMTP server: records every command line, accepts what the script allows.

    It cannot speak TLS: after a 220 to STARTTLS it answers the client's handshake in
    plaintext, as a downgrading man in the middle would, and hangs up.
    """

    def __init__(self, script: Script | None = None, port: int | None = None) -> None:
        super().__init__(port)
        self.script = script or Script()
        self.lines: list[bytes] = []
        self.messages: list[bytes] = []

    def commands(self) -> list[str]:
        """The verbs received, upper-cased (EHLO, MAIL, ...)."""
        with self.lock:
            return [line.split(b" ", 1)[0].decode("ascii", "replace").upper()
                    for line in self.lines]

    def received_bytes(self) -> bytes:
        with self.lock:
            return CRLF.join(self.lines) + CRLF.join(self.messages)

    async def _answer(self, writer: asyncio.StreamWriter, reader: asyncio.StreamReader,
                      stage: str, normal: str) -> bool:
        """Play the script for `stage`; False when the connection must end."""
        step = self.script.step(stage) if stage in STAGES else Step()
        if step.delay:
            await asyncio.sleep(step.delay)
        if step.silent:
            while await reader.read(CHUNK):  # say nothing until the client gives up
                pass
            return False
        reply = normal if step.reply is None else step.reply
        data = reply if isinstance(reply, bytes) else (
            CRLF.join(line.encode() for line in reply.split("\n")) + CRLF)
        for start in range(0, len(data), CHUNK):
            writer.write(data[start:start + CHUNK])
            await writer.drain()
        return not step.close

    def _ehlo_reply(self, name: str) -> str:
        lines = [f"250-scripted.example greets {name}", "250-8BITMIME", "250-SIZE 10485760"]
        if self.script.offer_starttls:
            lines.append("250-STARTTLS")
        if self.script.offer_auth:
            lines.append("250-AUTH PLAIN")
        lines.append("250 ENHANCEDSTATUSCODES")
        return "\n".join(lines)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not await self._answer(writer, reader, "greeting", NORMAL["greeting"]):
            return
        while line := await reader.readline():
            line = line.rstrip(CRLF)
            with self.lock:
                self.lines.append(line)
            verb, _, argument = line.decode("ascii", "replace").partition(" ")
            verb = verb.upper()
            if verb in ("EHLO", "HELO"):
                keep = await self._answer(writer, reader, "ehlo", self._ehlo_reply(argument))
            elif verb == "STARTTLS":
                keep = await self._answer(writer, reader, "starttls", NORMAL["starttls"])
                if keep:
                    await reader.read(CHUNK)  # the ClientHello: answer it in plaintext
                    writer.write(b"250 2.0.0 this is not TLS" + CRLF)
                    await writer.drain()
                    keep = False
            elif verb in ("AUTH", "MAIL", "RCPT"):
                keep = await self._answer(writer, reader, verb.lower(), NORMAL[verb.lower()])
            elif verb == "DATA":
                keep = await self._answer(writer, reader, "data", NORMAL["data"])
                if keep and self.script.step("data").reply is None:
                    keep = await self._receive(reader, writer)
            elif verb in {"RSET", "NOOP"}:
                keep = await self._answer(writer, reader, "-", "250 2.0.0 OK")
            elif verb == "QUIT":
                await self._answer(writer, reader, "-", "221 2.0.0 Bye")
                keep = False
            else:
                keep = await self._answer(writer, reader, "-", "500 5.5.2 Unrecognized")
            if not keep:
                return

    async def _receive(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                       ) -> bool:
        content = bytearray()
        while True:
            line = await reader.readline()
            if not line:
                return False
            if line == b"." + CRLF:
                break
            content += line
            cut = self.script.cut_data_after
            if cut is not None and len(content) >= cut:
                writer.transport.abort()  # hang up mid-DATA
                return False
        step = self.script.step("dot")
        accepted = step.reply is None and not step.silent
        if accepted:
            with self.lock:
                self.messages.append(bytes(content))
        return await self._answer(writer, reader, "dot", NORMAL["dot"])


# -- men in the middle ----------------------------------------------------------------------------

async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(CHUNK):
        writer.write(data)
        await writer.drain()


async def _relay_until_one_side_ends(*pumps: Any) -> None:
    tasks = [asyncio.create_task(pump) for pump in pumps]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class TapProxy(_ThreadedServer):
    """A transparent relay to `upstream_port` recording every byte the client sent, one
    stream per connection."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__()
        self.upstream_port = upstream_port
        self.streams: list[bytearray] = []

    def client_streams(self) -> list[bytes]:
        with self.lock:
            return [bytes(stream) for stream in self.streams]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        sent = bytearray()
        with self.lock:
            self.streams.append(sent)

        async def from_client() -> None:
            while data := await reader.read(CHUNK):
                with self.lock:
                    sent.extend(data)
                up_writer.write(data)
                await up_writer.drain()

        try:
            await _relay_until_one_side_ends(from_client(), _pump(up_reader, writer))
        finally:
            up_writer.close()
            with contextlib.suppress(OSError):
                await up_writer.wait_closed()


class StripTlsProxy(_ThreadedServer):
    """Relays a plaintext session to a real server, but its EHLO answer loses STARTTLS and
    gains AUTH PLAIN LOGIN: a client that falls for it authenticates in the clear."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__()
        self.upstream_port = upstream_port
        self.lines: list[bytes] = []
        self.sent = bytearray()
        self.stripped = 0

    def commands(self) -> list[str]:
        with self.lock:
            return [line.split(b" ", 1)[0].decode("ascii", "replace").upper()
                    for line in self.lines]

    def client_bytes(self) -> bytes:
        with self.lock:
            return bytes(self.sent)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        ehlo_pending = asyncio.Event()

        async def from_client() -> None:
            while line := await reader.readline():
                with self.lock:
                    self.sent += line
                    self.lines.append(line.rstrip(CRLF))
                if line[:4].upper() in (b"EHLO", b"HELO"):
                    ehlo_pending.set()
                up_writer.write(line)
                await up_writer.drain()

        async def from_server() -> None:
            response: list[bytes] = []
            while line := await up_reader.readline():
                response.append(line)
                if line[3:4] == b"-":
                    continue  # a multi-line reply: rewrite it whole
                if ehlo_pending.is_set() and response[0].startswith(b"250"):
                    ehlo_pending.clear()
                    response = self._rewrite_ehlo(response)
                writer.write(b"".join(response))
                await writer.drain()
                response = []

        try:
            await _relay_until_one_side_ends(from_client(), from_server())
        finally:
            up_writer.close()
            with contextlib.suppress(OSError):
                await up_writer.wait_closed()

    def _rewrite_ehlo(self, response: list[bytes]) -> list[bytes]:
        texts = [line[4:].rstrip(CRLF) for line in response]
        kept = [text for text in texts if text.upper() != b"STARTTLS"]
        with self.lock:
            self.stripped += len(texts) - len(kept)
        if not any(text.upper().startswith(b"AUTH") for text in kept):
            kept.append(b"AUTH PLAIN LOGIN")
        return [b"250" + (b" " if index == len(kept) - 1 else b"-") + text + CRLF
                for index, text in enumerate(kept)]


# -- leak accounting ------------------------------------------------------------------------------

def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def fds_back_to(baseline: int, timeout: float = 6.0) -> int:
    """Poll until the descriptor count is back to `baseline` (the servers in this process close
    their side when they notice the client left) or the deadline passes; the last count."""
    deadline = time.monotonic() + timeout
    while True:
        count = open_fds()
        if count <= baseline or time.monotonic() >= deadline:
            return count
        time.sleep(0.02)


def drive_checked(worker: Worker, body: Callable[[], Awaitable[T]]) -> T:
    """Run `body` in a fresh event loop, close the worker, and prove it left nothing: no task
    but the caller's, its transport gone and every session disconnected, and the process's
    open descriptors back to what they were before."""
    baseline = open_fds()

    async def drive() -> T:
        try:
            result = await body()
        finally:
            transport = worker._transport
            await worker.close()
        assert worker._transport is None, "close() kept the transport"
        if isinstance(transport, SmtpTransport):
            assert not any(session.connected for session in transport._sessions), (
                "a session is still connected after close()")
        left = asyncio.all_tasks() - {asyncio.current_task()}
        assert not left, f"tasks left behind: {left}"
        return result

    result = asyncio.run(drive())
    after = fds_back_to(baseline)
    assert after <= baseline, f"{after - baseline} descriptor(s) leaked: {baseline} -> {after}"
    return result


def run_worker_checked(worker: Worker, passes: int = 1) -> list[int]:
    """`passes` run_once calls under drive_checked; the batch sizes."""
    async def body() -> list[int]:
        return [await worker.run_once() for _ in range(passes)]
    return drive_checked(worker, body)
