"""Connectivity tests for the optional mailbox protocols: connect, TLS, log in, log out."""

from __future__ import annotations

import asyncio
import imaplib
import poplib
import socket
import ssl
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from mailapi.settings import Settings
from panel.guard import resolve_checked
from panel.mailbox_clients import PinnedIMAP, PinnedPOP3, SocketWatch, Unreachable

IMPLICIT_TLS = frozenset({"imaps", "pop3s"})
# The command that upgrades a plain connection, where the protocol has one.
STARTTLS_COMMAND = {"imap": "STARTTLS", "pop3": "STLS"}
ANSWER_LIMIT = 300
STEP_TIMEOUT = 10.0  # seconds for each socket operation
OVERALL_TIMEOUT = 40.0  # the whole test, however slowly a server drips its answers


@dataclass(frozen=True)
class MailboxTarget:
    """One protocol's saved settings, as the test uses them."""

    protocol: str  # imap | imaps | pop3 | pop3s
    host: str
    port: int
    starttls: bool
    username: str
    password: str = field(repr=False)
    ignore_certificates: bool
    ca_file: Path | None

    @classmethod
    def from_settings(cls, settings: Settings, protocol: str, ca_file: Path | None
                      ) -> MailboxTarget:
        starttls = protocol in STARTTLS_COMMAND and bool(getattr(settings,
                                                                 f"{protocol}_starttls"))
        return cls(protocol, str(getattr(settings, f"{protocol}_host")).strip(),
                   int(getattr(settings, f"{protocol}_port")), starttls,
                   str(getattr(settings, f"{protocol}_username")),
                   str(getattr(settings, f"{protocol}_password")),
                   settings.mailbox_ignore_certificates, ca_file)


@dataclass(frozen=True)
class ConnectivityResult:
    """What the test did, in order, and where it stopped (escaped by the template)."""

    ok: bool
    steps: tuple[str, ...]
    failed_step: str = ""
    answer: str = ""


class _StepFailed(Exception):
    def __init__(self, step: str, answer: str, *, unreachable: bool = False) -> None:
        super().__init__(step, answer)
        self.step = step
        self.answer = answer
        self.unreachable = unreachable  # no TCP connection: the next address may answer


def has_control_character(text: str) -> bool:
    """CR, LF and the like, which would end the command line a login is sent on."""
    return any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text)


def clean(text: str, secret: str = "") -> str:
    """One printable line of at most ANSWER_LIMIT characters, with `secret` masked."""
    if secret:
        text = text.replace(secret, "********")
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    return text if len(text) <= ANSWER_LIMIT else text[:ANSWER_LIMIT - 1] + "…"


def _server_text(exc: BaseException) -> str:
    argument = exc.args[0] if exc.args else ""
    if isinstance(argument, bytes):
        return argument.decode("utf-8", "replace")
    return str(argument) or type(exc).__name__


@contextmanager
def _step(name: str, timeout: float) -> Iterator[None]:
    """Turn whatever the step raises into _StepFailed(name, a short answer)."""
    try:
        yield
    except Unreachable as exc:
        raise _StepFailed(name, str(exc), unreachable=True) from None
    except ssl.SSLCertVerificationError as exc:
        raise _StepFailed(name, f"certificate not trusted ({exc.verify_message}); add its CA "
                          "to [smtp] ca_file or, unsafely, ignore certificates") from None
    except ssl.SSLError as exc:
        raise _StepFailed(name, f"TLS error: {exc.reason or exc}") from None
    except TimeoutError:
        raise _StepFailed(name, f"no answer within {timeout:g} s") from None
    except (imaplib.IMAP4.error, poplib.error_proto) as exc:
        raise _StepFailed(name, _server_text(exc)) from None
    except UnicodeError:
        raise _StepFailed(name, "the user name or password has characters the protocol "
                          "cannot send") from None
    except (OSError, EOFError) as exc:
        raise _StepFailed(name, str(exc) or type(exc).__name__) from None


def tls_context(target: MailboxTarget) -> ssl.SSLContext:
    """The system's roots plus [smtp] ca_file; no checking at all when ignore is on."""
    context = ssl.create_default_context()
    if target.ca_file is not None:
        context.load_verify_locations(cafile=str(target.ca_file))
    if target.ignore_certificates:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


@dataclass
class _Run:
    """One test in progress: what it connects to, how, and the steps done so far."""

    target: MailboxTarget
    context: ssl.SSLContext
    timeout: float
    watch: SocketWatch
    steps: list[str] = field(default_factory=list)


def _tls_step(sock: socket.socket, target: MailboxTarget) -> str:
    version = sock.version() if isinstance(sock, ssl.SSLSocket) else None
    checked = ("certificate NOT verified (ignore certificates is on)"
               if target.ignore_certificates else "certificate verified")
    return f"{(version or 'TLS').replace('TLSv', 'TLS ')}, {checked}"


def _messages(count: int | str) -> str:
    return f"{count} message" + ("" if str(count) == "1" else "s")


def _connected(target: MailboxTarget, address: str) -> str:
    where = f"{target.host}:{target.port}"
    return f"connected to {where}" + (f" ({address})" if address != target.host else "")


def _probe_imap(run: _Run, address: str) -> None:
    target, context, timeout, steps = run.target, run.context, run.timeout, run.steps
    implicit = context if target.protocol in IMPLICIT_TLS else None
    with _step("connect" + (" and TLS handshake" if implicit else ""), timeout):
        imap = PinnedIMAP(target.host, target.port, address=address, tls=implicit,
                          timeout=timeout, watch=run.watch)
    try:
        steps.append(_connected(target, address))
        if implicit:
            steps.append(_tls_step(imap.sock, target))
        elif target.starttls:
            if "STARTTLS" not in imap.capabilities:
                raise _StepFailed("STARTTLS", "the server does not offer STARTTLS; the "
                                  "credentials were not sent")
            with _step("STARTTLS", timeout):
                imap.starttls(context)
            steps.append("STARTTLS, " + _tls_step(imap.sock, target))
        if not target.username:
            steps.append("no user name set, login skipped; capabilities: "
                         + " ".join(imap.capabilities))
        else:
            if "LOGINDISABLED" in imap.capabilities:
                raise _StepFailed("login", "the server refuses LOGIN without TLS "
                                  "(LOGINDISABLED); turn STARTTLS on")
            with _step("login", timeout):
                imap.login(target.username, target.password)
            steps.append(f"logged in as {target.username}")
            with _step("opening INBOX", timeout):
                status, data = imap.select("INBOX", readonly=True)
            text = data[0].decode("utf-8", "replace") if data and data[0] else "?"
            if status != "OK":
                raise _StepFailed("opening INBOX", f"{status} {text}")
            steps.append(f"{_messages(text)} in INBOX")
        with _step("logout", timeout):
            imap.logout()
        steps.append("logged out")
    finally:
        if imap.state != "LOGOUT":  # logout() has closed the connection already
            with suppress(OSError):
                imap.shutdown()


def _probe_pop3(run: _Run, address: str) -> None:
    target, context, timeout, steps = run.target, run.context, run.timeout, run.steps
    implicit = context if target.protocol in IMPLICIT_TLS else None
    with _step("connect" + (" and TLS handshake" if implicit else ""), timeout):
        pop = PinnedPOP3(target.host, target.port, address=address, tls=implicit,
                         timeout=timeout, watch=run.watch)
    try:
        steps.append(_connected(target, address))
        if implicit:
            steps.append(_tls_step(pop.sock, target))
        elif target.starttls:
            with _step("STLS", timeout):
                capabilities = pop.capa()
            if "STLS" not in capabilities:
                raise _StepFailed("STLS", "the server does not offer STLS; the credentials "
                                  "were not sent")
            with _step("STLS", timeout):
                pop.stls(context)
            steps.append("STLS, " + _tls_step(pop.sock, target))
        if not target.username:
            steps.append("no user name set, login skipped")
        else:
            with _step("login", timeout):
                pop.user(target.username)
                pop.pass_(target.password)
            steps.append(f"logged in as {target.username}")
            with _step("STAT", timeout):
                count, _size = pop.stat()
            steps.append(f"{_messages(count)} in the mailbox")
        with _step("QUIT", timeout):
            pop.quit()
        steps.append("logged out")
    finally:
        with suppress(OSError):  # a failed STLS leaves a detached socket behind
            pop.close()


def probe(target: MailboxTarget, addresses: Sequence[str], *, timeout: float = STEP_TIMEOUT,
          watch: SocketWatch | None = None) -> ConnectivityResult:
    """Blocking: run the test against the first address that accepts the connection."""
    steps: list[str] = []
    watch = watch or SocketWatch()
    try:
        if has_control_character(target.username + target.password):
            raise _StepFailed("settings", "the user name or password contains a control "
                              "character")
        with _step("loading the trusted CAs ([smtp] ca_file)", timeout):
            context = tls_context(target)
        session = _probe_imap if target.protocol.startswith("imap") else _probe_pop3
        for index, address in enumerate(addresses):
            try:
                session(_Run(target, context, timeout, watch, steps), address)
                break
            except _StepFailed as exc:
                if not exc.unreachable or index == len(addresses) - 1:
                    raise
    except _StepFailed as exc:
        return ConnectivityResult(False, tuple(clean(s, target.password) for s in steps),
                                  exc.step, clean(exc.answer, target.password))
    finally:
        watch.close()
    return ConnectivityResult(True, tuple(clean(s, target.password) for s in steps))


async def run_test(target: MailboxTarget, extra_ports: Iterable[int], *,
                   timeout: float = STEP_TIMEOUT, overall: float = OVERALL_TIMEOUT
                   ) -> ConnectivityResult:
    """Check the target with the SSRF guard (TargetRefused), then probe it in a thread."""
    addresses = await resolve_checked(target.protocol, target.host, target.port, extra_ports)
    watch = SocketWatch()
    try:
        return await asyncio.wait_for(
            asyncio.to_thread(probe, target, addresses, timeout=timeout, watch=watch), overall)
    except TimeoutError:
        watch.abort()
        return ConnectivityResult(False, (), "test", f"gave up after {overall:g} s")
