"""GET/POST /protocols/{imap,imaps,pop3,pop3s}: optional mailbox settings and their test."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailapi import audit
from mailapi.logging import get_logger
from mailapi.ratelimit import retry_after_header
from mailapi.settings import Settings
from mailapi.settings.definitions import MAILBOX_PROTOCOLS, default_value
from panel import guard
from panel.auth import require_post, require_session
from panel.forms import Submission, redisplay
from panel.mailbox import (
    IMPLICIT_TLS,
    STARTTLS_COMMAND,
    ConnectivityResult,
    MailboxTarget,
    has_control_character,
    run_test,
)
from panel.web import Form, flash, panel_state, redirect, render, source_address, write

log = get_logger("panel.mailbox")
LABELS = {"imap": "IMAP", "imaps": "IMAPS", "pop3": "POP3", "pop3s": "POP3S"}
USERNAME_LIMIT = 255
STATUS = {"passed": 200, "failed": 502, "refused": 400, "limited": 429}


@dataclass(frozen=True)
class CheckOutcome:
    """One press of the test button as the page and the audit log show it."""

    outcome: str  # passed | failed | refused | limited
    headline: str
    steps: tuple[str, ...] = ()
    answer: str = ""

    @classmethod
    def from_result(cls, result: ConnectivityResult) -> CheckOutcome:
        if result.ok:
            return cls("passed", "passed", result.steps)
        return cls("failed", f"failed at the {result.failed_step} step", result.steps,
                   result.answer)

    @property
    def audit_detail(self) -> str:
        done = ", ".join(self.steps)
        return f"{self.outcome}: " + "; ".join(p for p in (self.answer, done) if p)[:500]


def protocol_from(request: Request) -> str:
    protocol = str(request.path_params["protocol"])
    if protocol not in MAILBOX_PROTOCOLS:
        raise HTTPException(404)
    return protocol


def setting_keys(protocol: str) -> tuple[str, ...]:
    """The settings one protocol's form edits (the password is handled on its own)."""
    starttls = (f"{protocol}_starttls",) if protocol in STARTTLS_COMMAND else ()
    return (f"{protocol}_host", f"{protocol}_port", *starttls, f"{protocol}_username",
            "mailbox_ignore_certificates")


def read_protocol_form(protocol: str, form: Form) -> Submission:
    """The fields, the usual port for an empty one, the write-only password."""
    port_key, username_key = f"{protocol}_port", f"{protocol}_username"
    password_key = f"{protocol}_password"
    submission = Submission().read(form, [k for k in setting_keys(protocol) if k != port_key])
    submission.parse(port_key, form.get(port_key).strip() or str(default_value(port_key)))
    username = form.get(username_key)
    # The protocols send these on one command line: a line break would start a new command.
    if has_control_character(username) or len(username) > USERNAME_LIMIT:
        submission.reject(username_key, f"must be at most {USERNAME_LIMIT} characters, "
                          "without line breaks or other control characters")
    password = form.get(password_key)
    if form.checkbox(f"{password_key}_clear"):
        if password:
            submission.reject(password_key, "type a new password or tick “clear the "
                              "password”, not both")
        else:
            submission.changes[password_key] = ""
    elif has_control_character(password):
        submission.reject(password_key, "must not contain line breaks or other control "
                          "characters")
    else:
        submission.secret(password_key, password)
    return submission


def _page(request: Request, protocol: str, settings: Settings, *,
          typed: dict[str, Any] | None = None, errors: dict[str, str] | None = None,
          result: CheckOutcome | None = None, status_code: int = 200) -> Response:
    state = panel_state(request)
    host = str(getattr(settings, f"{protocol}_host"))
    return render(request, "protocols.html", {
        "protocol": protocol,
        "label": LABELS[protocol],
        "protocols": [(name, LABELS[name]) for name in MAILBOX_PROTOCOLS],
        "values": redisplay(settings, setting_keys(protocol), typed or {}),
        "errors": errors or {},
        "password_is_set": bool(getattr(settings, f"{protocol}_password")),
        "default_port": default_value(f"{protocol}_port"),
        "starttls_command": STARTTLS_COMMAND.get(protocol),
        "implicit_tls": protocol in IMPLICIT_TLS,
        "ca_file": str(state.config.smtp.ca_file) if state.config.smtp.ca_file else None,
        "ignoring_certificates": settings.mailbox_ignore_certificates,
        "target": f"{host}:{getattr(settings, f'{protocol}_port')}" if host else None,
        "saved_starttls": bool(getattr(settings, f"{protocol}_starttls", False)),
        "saved_username": bool(getattr(settings, f"{protocol}_username")),
        "result": result,
    }, status_code=status_code, title=f"{LABELS[protocol]} (optional)")


async def index(request: Request) -> Response:
    await require_session(request)
    return redirect(request, f"/protocols/{MAILBOX_PROTOCOLS[0]}")


async def show(request: Request) -> Response:
    await require_session(request)
    protocol = protocol_from(request)
    return _page(request, protocol, panel_state(request).settings.get())


async def save(request: Request) -> Response:
    session, form = await require_post(request)
    protocol = protocol_from(request)
    state = panel_state(request)
    submission = read_protocol_form(protocol, form)
    if await submission.save(request, session) is None:
        return _page(request, protocol, state.settings.get(), typed=submission.typed,
                     errors=submission.errors, status_code=400)
    state.settings.invalidate()
    await flash(request, "success", f"{LABELS[protocol]} settings saved.")
    return redirect(request, f"/protocols/{protocol}")


async def _attempt(request: Request, target: MailboxTarget) -> CheckOutcome:
    state = panel_state(request)
    try:
        result = await run_test(target, state.config.panel.extra_test_ports)
    except guard.TargetRefused as exc:
        return CheckOutcome("refused", "Not tested: the panel will not connect to this target",
                           answer=str(exc))
    return CheckOutcome.from_result(result)


async def check(request: Request) -> Response:
    session, _form = await require_post(request)
    protocol = protocol_from(request)
    state = panel_state(request)
    settings = state.settings.get()
    assert state.test_limiter is not None
    wait = state.test_limiter.check(f"mailbox-test:{session.username}",
                                    state.test_limit_per_minute)
    if wait > 0:
        result = CheckOutcome("limited", f"Not tested: at most {state.test_limit_per_minute} "
                             "connection tests per minute per admin. Try again in "
                             f"{retry_after_header(wait)} seconds.")
        response = _page(request, protocol, settings, result=result, status_code=429)
        response.headers["Retry-After"] = retry_after_header(wait)
        return response
    target = MailboxTarget.from_settings(settings, protocol, state.config.smtp.ca_file)
    outcome = await _attempt(request, target)
    source = source_address(request)
    log.info("mailbox test", protocol=protocol, host=target.host, port=target.port,
             admin=session.username, outcome=outcome.outcome, detail=outcome.audit_detail)

    def record(connection: Connection) -> None:
        audit.record(connection, actor=session.username, action="mailbox.tested",
                     target=f"{protocol} {target.host}:{target.port}", source=source,
                     detail=outcome.audit_detail, at=state.clock())
    await write(request, record)
    return _page(request, protocol, settings, result=outcome,
                 status_code=STATUS[outcome.outcome])


routes = [
    Route("/protocols", index, methods=["GET"]),
    Route("/protocols/{protocol}", show, methods=["GET"]),
    Route("/protocols/{protocol}", save, methods=["POST"]),
    Route("/protocols/{protocol}/test", check, methods=["POST"]),
]
