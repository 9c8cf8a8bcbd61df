"""A real aiosmtpd server on 127.0.0.1 with switchable faults, for the worker's tests."""

from __future__ import annotations

import email
import email.policy
import ssl
import threading
import time
import weakref
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    auth_user: str | None
    tls: bool

    def parsed(self) -> EmailMessage:
        message = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        return message


@dataclass
class Faults:
    """Replies to give instead of the normal ones; None means behave normally."""

    mail_reply: str | None = None
    rcpt_reply: str | None = None
    data_reply: str | None = None
    data_delay: float = 0.0  # seconds to wait before answering the final dot
    # Seconds to wait *after* storing the message and before answering 250: a server that
    # has taken the message while the client may die before hearing so.
    reply_delay_after_store: float = 0.0
    rcpt_delay: float = 0.0


@dataclass
class Recorder:
    faults: Faults = field(default_factory=Faults)
    messages: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    connections: int = 0

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        with self.lock:
            self.connections += 1
        session.host_name = hostname
        return responses

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        if self.faults.mail_reply:
            return self.faults.mail_reply
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        if self.faults.rcpt_delay:
            import asyncio
            await asyncio.sleep(self.faults.rcpt_delay)
        if self.faults.rcpt_reply:
            return self.faults.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.faults.data_delay:
            import asyncio
            await asyncio.sleep(self.faults.data_delay)
        if self.faults.data_reply:
            return self.faults.data_reply
        auth = session.auth_data
        user = auth.login.decode() if isinstance(auth, LoginPassword) else None
        with self.lock:
            self.messages.append(Received(
                mail_from=envelope.mail_from or "", rcpt_tos=list(envelope.rcpt_tos),
                data=_as_bytes(envelope.original_content or envelope.content or b""),
                auth_user=user,
                tls=session.ssl is not None
                or server.transport.get_extra_info("sslcontext") is not None))
        if self.faults.reply_delay_after_store:
            import asyncio
            await asyncio.sleep(self.faults.reply_delay_after_store)
        return "250 2.0.0 Message accepted"

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.01)
        with self.lock:
            raise AssertionError(f"expected {count} messages, got {len(self.messages)}")


def _as_bytes(content: bytes | str) -> bytes:
    return content.encode("utf-8") if isinstance(content, str) else bytes(content)


def _authenticator(users: dict[str, str]) -> Any:
    def authenticate(server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                     auth_data: Any) -> AuthResult:
        if isinstance(auth_data, LoginPassword) and (
                users.get(auth_data.login.decode()) == auth_data.password.decode()):
            return AuthResult(success=True, auth_data=auth_data)
        return AuthResult(success=False, handled=False)
    return authenticate


class ClosingController(Controller):
    """A Controller that also closes its clients' connections when it stops.

    aiosmtpd's stop() cancels the tasks and ends the loop but leaves the transports of
    connections still open (a worker's pooled session, say) unclosed; each then warns
    "unclosed transport" whenever the garbage collector happens to find it, in whatever
    test is running by then.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()

    def factory(self) -> SMTP:
        session = super().factory()
        self._sessions.add(session)
        return session

    def cancel_tasks(self, stop_loop: bool = True) -> None:
        for session in list(self._sessions):
            transport = getattr(session, "transport", None)
            if transport is not None and not transport.is_closing():
                transport.abort()  # the socket closes on the loop's final pass
        super().cancel_tasks(stop_loop)


class SmtpServer:
    """Controller wrapper: mode is plain, starttls (STARTTLS offered) or ssl (implicit TLS)."""

    def __init__(self, port: int, *, mode: str = "plain",
                 server_context: ssl.SSLContext | None = None,
                 users: dict[str, str] | None = None,
                 require_starttls: bool = False) -> None:
        self.recorder = Recorder()
        self.port = port
        kwargs: dict[str, Any] = {}
        if users is not None:
            kwargs["authenticator"] = _authenticator(users)
            # aiosmtpd only counts STARTTLS as TLS; an implicit-TLS listener is TLS already.
            kwargs["auth_require_tls"] = mode == "starttls"
        if mode == "starttls":
            kwargs["tls_context"] = server_context
            kwargs["require_starttls"] = require_starttls
        if mode == "ssl":
            kwargs["ssl_context"] = server_context
        self.controller = ClosingController(self.recorder, hostname="127.0.0.1", port=port,
                                     server_hostname="localhost", ready_timeout=10, **kwargs)

    def start(self) -> SmtpServer:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()
