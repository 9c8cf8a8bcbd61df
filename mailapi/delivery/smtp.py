"""SMTP submission over aiosmtplib, step by step, so every failure knows its stage."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosmtplib

from mailapi.delivery.outcome import DeliveryFailure, Kind, Stage, sanitize_detail


@dataclass(frozen=True)
class SmtpParameters:
    host: str
    port: int
    security: str  # plain | starttls | ssl
    timeout: float
    username: str
    password: str
    ignore_certificates: bool
    allow_plaintext_auth: bool
    ca_file: Path | None = None
    local_hostname: str | None = None

    @classmethod
    def from_settings(cls, settings: Any, *, ca_file: Path | None = None) -> SmtpParameters:
        return cls(
            host=settings.smtp_host, port=settings.smtp_port, security=settings.smtp_security,
            timeout=float(settings.smtp_timeout), username=settings.smtp_username,
            password=settings.smtp_password,
            ignore_certificates=settings.smtp_ignore_certificates,
            allow_plaintext_auth=settings.smtp_allow_plaintext_auth, ca_file=ca_file,
        )


def tls_context(parameters: SmtpParameters) -> ssl.SSLContext:
    """Verified TLS (system roots plus an optional private CA) unless explicitly disabled."""
    context = ssl.create_default_context(
        cafile=str(parameters.ca_file) if parameters.ca_file else None
    )
    if parameters.ca_file:
        context.load_default_certs()
    if parameters.ignore_certificates:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _is_tls_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLError | ssl.CertificateError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def translate(exc: BaseException, stage: Stage) -> DeliveryFailure:
    """Turn an aiosmtplib/OS exception into a DeliveryFailure with stage and kind."""
    if isinstance(exc, DeliveryFailure):
        return exc
    if _is_tls_error(exc):
        return DeliveryFailure(Stage.TLS, Kind.TLS, sanitize_detail(str(exc)))
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        if exc.code < 0:  # aiosmtplib's marker for a malformed or oversized reply
            return DeliveryFailure(stage, Kind.NETWORK,
                                   "malformed reply: " + sanitize_detail(exc.message))
        return DeliveryFailure(stage, Kind.RESPONSE, sanitize_detail(exc.message), exc.code)
    if isinstance(exc, TimeoutError):
        return DeliveryFailure(stage, Kind.TIMEOUT, sanitize_detail(str(exc)) or "timed out")
    if isinstance(exc, aiosmtplib.SMTPException | OSError | EOFError):
        return DeliveryFailure(stage, Kind.NETWORK, sanitize_detail(str(exc)) or repr(exc))
    raise exc


class SmtpSession:
    """One reusable connection to the upstream. Not safe for concurrent use: one per task."""

    def __init__(self, parameters: SmtpParameters) -> None:
        self.parameters = parameters
        self._client: aiosmtplib.SMTP | None = None

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected

    async def open(self) -> None:
        """Connect, secure and authenticate as configured; never fall back to plaintext."""
        parameters = self.parameters
        if not parameters.host:
            raise DeliveryFailure(Stage.CONNECT, Kind.CONFIG, "smtp_host is not configured")
        if parameters.username and parameters.security == "plain" and (
            not parameters.allow_plaintext_auth
        ):
            raise DeliveryFailure(Stage.AUTH, Kind.CONFIG,
                                  "refusing SMTP AUTH over a plaintext connection "
                                  "(smtp_allow_plaintext_auth is off)")
        context = tls_context(parameters) if parameters.security != "plain" else None
        client = aiosmtplib.SMTP(
            hostname=parameters.host, port=parameters.port,
            use_tls=parameters.security == "ssl", start_tls=False,
            tls_context=context if parameters.security == "ssl" else None,
            timeout=parameters.timeout, local_hostname=parameters.local_hostname,
        )
        stage = Stage.CONNECT
        try:
            await client.connect()
            stage = Stage.EHLO
            await client.ehlo()
            if parameters.security == "starttls":
                stage = Stage.TLS
                if not client.supports_extension("starttls"):
                    raise DeliveryFailure(Stage.TLS, Kind.TLS,
                                          "server does not offer STARTTLS; refusing to continue "
                                          "without encryption")
                await client.starttls(tls_context=context)
                stage = Stage.EHLO
                await client.ehlo()
            if parameters.username:
                stage = Stage.AUTH
                if not client.supports_extension("auth"):
                    raise DeliveryFailure(Stage.AUTH, Kind.CONFIG,
                                          "server does not offer AUTH but a username is set")
                await client.login(parameters.username, parameters.password)
        except BaseException as exc:
            client.close()
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise translate(exc, stage) from exc
        self._client = client

    async def send(self, sender: str, recipient: str, message: bytes) -> str:
        """Submit one message; returns the server's reply to the final dot."""
        if not self.connected:
            await self.open()
        client = self._client
        assert client is not None
        stage = Stage.MAIL
        try:
            await client.mail(sender)
            stage = Stage.RCPT
            await client.rcpt(recipient)
            stage = Stage.DATA
            response = await client.data(message)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                await self.close()
                raise
            failure = translate(exc, stage)
            await self._after_failure(failure)
            raise failure from exc
        return f"{response.code} {sanitize_detail(response.message)}"

    async def _after_failure(self, failure: DeliveryFailure) -> None:
        """Keep the connection for the next message after a clean refusal, else drop it."""
        if failure.kind is Kind.RESPONSE and self._client is not None and self.connected:
            try:
                await self._client.rset()
                return
            except (aiosmtplib.SMTPException, OSError):
                pass
        await self.close()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        transport = client.transport
        if client.is_connected:
            try:
                await asyncio.wait_for(client.quit(), timeout=2)
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                client.close()
        else:
            client.close()
        if isinstance(transport, asyncio.Transport):
            # After QUIT nothing is left to say. A TLS transport's close() only starts the
            # close_notify exchange; if the event loop ends first (shutdown) the socket is
            # never closed. abort() closes it now.
            transport.abort()
