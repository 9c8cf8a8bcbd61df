"""GET/POST /smtp: the upstream SMTP settings; POST /smtp/test sends a real test message."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailapi import audit
from mailapi.composition import CompositionError, compose, new_message_id
from mailapi.delivery.outcome import DeliveryFailure
from mailapi.delivery.smtp import SmtpParameters, SmtpSession
from mailapi.intake import sender_policy
from mailapi.ratelimit import retry_after_header
from mailapi.rendering import RenderedMessage
from mailapi.sender import SenderDomainNotConfigured, resolve_sender
from mailapi.settings import Settings
from mailapi.settings.definitions import SMTP_SECURITY_PRESETS
from panel import guard
from panel.auth import require_post, require_session
from panel.forms import Submission, redisplay
from panel.web import Form, flash, panel_state, redirect, render, source_address, when, write

KEYS = ("smtp_host", "smtp_security", "smtp_port", "smtp_timeout", "smtp_username",
        "smtp_ignore_certificates", "smtp_allow_plaintext_auth", "sender_display_name")
SECURITY_CHOICES = (("plain", "Plain: no encryption (usually port 25)"),
                    ("starttls", "STARTTLS: required, never opportunistic (usually port 587)"),
                    ("ssl", "SSL/TLS: implicit TLS from the first byte (usually port 465)"))
TEST_SUBJECT = "MAIL_API test message"
ANSWER_LIMIT = 300


@dataclass(frozen=True)
class SendResult:
    """What one Test SMTP press did: sent, failed at the server, or not attempted."""

    outcome: str  # sent | failed | refused
    headline: str
    answer: str = ""

    @property
    def audit_detail(self) -> str:
        return f"{self.outcome}: {self.answer or self.headline}"[:ANSWER_LIMIT]


def read_smtp_form(form: Form) -> Submission:
    """The settings fields, the preset port for an empty one, the write-only password."""
    submission = Submission().read(form, [key for key in KEYS if key != "smtp_port"])
    port_text = form.get("smtp_port").strip()
    preset = SMTP_SECURITY_PRESETS.get(form.get("smtp_security"))
    if not port_text and preset is not None:
        port_text = str(preset)
    submission.parse("smtp_port", port_text)
    password = form.get("smtp_password")
    if form.checkbox("smtp_password_clear"):
        if password:
            submission.reject("smtp_password", "type a new password or tick “clear the "
                              "password”, not both")
        else:
            submission.changes["smtp_password"] = ""
    else:
        submission.secret("smtp_password", password)
    return submission


def _page(request: Request, settings: Settings, *, typed: dict[str, Any] | None = None,
          errors: dict[str, str] | None = None, result: SendResult | None = None,
          test_to: str = "", status_code: int = 200) -> Response:
    return render(request, "smtp.html", {
        "values": redisplay(settings, KEYS, typed or {}),
        "errors": errors or {},
        "password_is_set": bool(settings.smtp_password),
        "security_choices": SECURITY_CHOICES,
        "presets": SMTP_SECURITY_PRESETS,
        "target": f"{settings.smtp_host or '(no host)'}:{settings.smtp_port}",
        "target_security": settings.smtp_security,
        "ignoring_certificates": settings.smtp_ignore_certificates,
        "result": result,
        "test_to": test_to,
        "sender_preview": _sender_or_none(settings),
    }, status_code=status_code, title="SMTP")


def _sender_or_none(settings: Settings) -> str | None:
    try:
        return resolve_sender(sender_policy(settings), None)
    except SenderDomainNotConfigured:
        return None


async def show(request: Request) -> Response:
    await require_session(request)
    return _page(request, panel_state(request).settings.get())


async def save(request: Request) -> Response:
    session, form = await require_post(request)
    current = panel_state(request).settings.get()
    submission = read_smtp_form(form)
    if await submission.save(request, session) is None:
        return _page(request, current, typed=submission.typed, errors=submission.errors,
                     status_code=400)
    await flash(request, "success", "SMTP settings saved.")
    return redirect(request, "/smtp")


def compose_test_message(settings: Settings, sender: str, recipient: str, *, admin: str,
                 now: float) -> bytes:
    """A small RFC 5322 message, composed and checked exactly like a queued one."""
    text = ("This is a test message from the MAIL_API control panel.\n\n"
            f"Sent by {admin} at {when(now)} through {settings.smtp_host} port "
            f"{settings.smtp_port} ({settings.smtp_security}) to check the SMTP settings. "
            "No action is needed.\n")
    rendered = RenderedMessage(subject=TEST_SUBJECT, text=text, html=None)
    return compose(rendered=rendered, sender=sender, display_name=settings.sender_display_name,
                   recipient=recipient, message_id=new_message_id(settings.allowed_sender_domain),
                   date=datetime.fromtimestamp(now, UTC))


async def deliver(parameters: SmtpParameters, sender: str, recipient: str, message: bytes
                  ) -> SendResult:
    """One connection, one message, the whole exchange bounded by the SMTP timeout."""
    session = SmtpSession(parameters)
    try:
        async with asyncio.timeout(parameters.timeout):
            answer = await session.send(sender, recipient, message)
    except DeliveryFailure as failure:
        code = f" with {failure.code}" if failure.code is not None else ""
        return SendResult("failed", f"Not delivered: the {failure.stage.value.upper()} step "
                          f"failed{code} ({failure.kind.value})", failure.detail[:ANSWER_LIMIT])
    except TimeoutError:
        return SendResult("failed", f"Not delivered: no answer within {parameters.timeout:g} "
                          "seconds (smtp_timeout)")
    except OSError as exc:  # before any connection: the [smtp] ca_file cannot be loaded
        return SendResult("failed", "Not delivered: TLS could not be set up",
                          str(exc)[:ANSWER_LIMIT])
    finally:
        await session.close()
    return SendResult("sent", f"Accepted by {parameters.host}:{parameters.port}",
                      answer[:ANSWER_LIMIT])


async def _attempt(request: Request, settings: Settings, recipient: str, admin: str
                   ) -> SendResult:
    state = panel_state(request)
    try:
        sender = resolve_sender(sender_policy(settings), None)
    except SenderDomainNotConfigured:
        return SendResult("refused", "Not sent: no sender domain is set. Set "
                          "allowed_sender_domain on the Sender page first.")
    try:
        message = compose_test_message(settings, sender, recipient, admin=admin, now=state.clock())
    except CompositionError as exc:
        return SendResult("refused", "Not sent: the test message could not be composed",
                          str(exc))
    try:
        await guard.resolve_checked("smtp", settings.smtp_host, settings.smtp_port,
                                    state.config.panel.extra_test_ports)
    except guard.TargetRefused as exc:
        return SendResult("refused", "Not sent: the panel will not connect to this target",
                          str(exc))
    parameters = SmtpParameters.from_settings(settings, ca_file=state.config.smtp.ca_file)
    return await deliver(parameters, sender, recipient, message)


async def send_test(request: Request) -> Response:
    session, form = await require_post(request)
    state = panel_state(request)
    settings = state.settings.get()
    typed_to = form.get("test_to").strip()[:320]
    try:
        checked = validate_email(typed_to, check_deliverability=False, allow_smtputf8=False,
                                 allow_display_name=False, allow_quoted_local=False,
                                 allow_domain_literal=False)
    except EmailNotValidError as exc:
        return _page(request, settings, errors={"test_to": f"not a valid address: {exc}"},
                     test_to=typed_to, status_code=400)
    recipient = checked.ascii_email or checked.normalized
    assert state.test_limiter is not None
    wait = state.test_limiter.check(f"smtp-test:{session.username}",
                                    state.test_limit_per_minute)
    if wait > 0:
        result = SendResult("refused", f"Not sent: at most {state.test_limit_per_minute} SMTP "
                            f"tests per minute per admin. Try again in "
                            f"{retry_after_header(wait)} seconds.")
        response = _page(request, settings, result=result, test_to=recipient, status_code=429)
        response.headers["Retry-After"] = retry_after_header(wait)
        return response
    result = await _attempt(request, settings, recipient, session.username)
    source = source_address(request)

    def record(connection: Connection) -> None:
        audit.record(connection, actor=session.username, action="smtp.tested",
                     target=recipient, source=source, detail=result.audit_detail,
                     at=state.clock())
    await write(request, record)
    status = {"sent": 200, "failed": 502, "refused": 400}[result.outcome]
    return _page(request, settings, result=result, test_to=recipient, status_code=status)


routes = [
    Route("/smtp", show, methods=["GET"]),
    Route("/smtp", save, methods=["POST"]),
    Route("/smtp/test", send_test, methods=["POST"]),
]
