"""A real mail stack upstream: webhook → receiver → worker → Postfix (TLS, AUTH) → Dovecot."""

from __future__ import annotations

import imaplib
import re
import secrets
import smtplib
import sqlite3
import ssl
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from tests.support.database import configure, migrated_engine
from tests.support.dovecot import Dovecot
from tests.support.livepanel import ADMIN, ADMIN_PASSWORD
from tests.support.ports import free_port
from tests.support.postfix import Postfix, postfix_server  # noqa: F401 - the session fixture
from tests.support.processes import Suite, cli, wait_until, webhook_body, write_config

pytestmark = pytest.mark.e2e
SENDER_DOMAIN = "example.com"
DISPLAY_NAME = "MAIL_API Stack Test"
WRONG_PASSWORD = "not-alice-s-password"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
QUEUED_AS = re.compile(r"queued as ([0-9A-Za-z]+)")


@dataclass(frozen=True)
class Stack:
    """The suite's processes and the mail servers they talk to."""

    suite: Suite
    engine: Engine
    postfix: Postfix
    dovecot: Dovecot
    ca_file: Path

    @property
    def database(self) -> Path:
        return self.suite.config.parent / "mail-api.sqlite3"

    def set(self, key: str, value: str) -> None:
        """`mailapi settings set`, the value through stdin (no password on a command line)."""
        result = cli(self.suite.config, "settings", "set", key, "-", stdin=value)
        assert result.returncode == 0, (key, result.stdout, result.stderr)

    def use_submission(self, security: str) -> None:
        """`starttls` on the submission port, `ssl` on the submissions (465-style) port."""
        port = {"starttls": self.postfix.submission_port,
                "ssl": self.postfix.submissions_port}[security]
        configure(self.engine, smtp_security=security, smtp_port=port)

    def write_config(self, *, ca_file: Path | None) -> None:
        """The bootstrap file, trusting the test CA through `[smtp] ca_file` or not at all."""
        write_stack_config(self.suite.config.parent, self.suite.receiver_port,
                           self.suite.panel_port, self.postfix, self.dovecot, ca_file=ca_file)


def write_stack_config(directory: Path, receiver_port: int, panel_port: int | None,
                       postfix: Postfix, dovecot: Dovecot, *, ca_file: Path | None) -> Path:
    allowed = (dovecot.imaps_port, dovecot.pop3s_port, postfix.submission_port,
               postfix.submissions_port)
    return write_config(
        directory, receiver_port=receiver_port, panel_port=panel_port,
        extra=f'[smtp]\nca_file = "{ca_file}"\n' if ca_file is not None else "",
        panel_extra=f"extra_test_ports = [{', '.join(str(port) for port in allowed)}]")


@pytest.fixture
def stack(tmp_path: Path, postfix: Postfix, dovecot: Dovecot, ca_file: Path
          ) -> Iterator[Stack]:
    """Receiver, worker and panel sharing one configuration: Postfix upstream, AUTH as alice.

    The worker trusts the test CA only through the bootstrap `[smtp] ca_file`; certificate
    verification stays on (smtp_ignore_certificates is never set).
    """
    receiver_port, panel_port = free_port(), free_port()
    config = write_stack_config(tmp_path, receiver_port, panel_port, postfix, dovecot,
                                ca_file=ca_file)
    secret = secrets.token_hex(16)
    # The schema and the plain settings in-process (the CLI's own code, one process start
    # instead of ten); the credentials through the real `mailapi settings set`.
    engine = migrated_engine(config.parent / "mail-api.sqlite3")
    running = Stack(Suite(config, receiver_port, secret, panel_port=panel_port), engine,
                    postfix, dovecot, ca_file)
    configure(engine, webhook_secret=secret, allowed_sender_domain=SENDER_DOMAIN,
              sender_display_name=DISPLAY_NAME, smtp_host=postfix.host, smtp_timeout=10,
              retry_base_seconds=1)
    running.use_submission("starttls")
    running.set("smtp_username", dovecot.user)
    running.set("smtp_password", dovecot.password)
    yield running
    running.suite.stop_all()
    engine.dispose()


# -- reading the database, Postfix's log and the mailbox ---------------------------------------

def one_row(stack: Stack, query: str, *parameters: object) -> tuple[Any, ...] | None:
    with closing(sqlite3.connect(stack.database)) as connection:
        row: tuple[Any, ...] | None = connection.execute(query, parameters).fetchone()
    return row


def delivered_event(stack: Stack, queue_id: int) -> tuple[str, str] | None:
    """(Message-ID, the server's reply) of the queue entry's delivery, once recorded."""
    row = one_row(stack, "SELECT message_id, detail FROM delivery_events WHERE queue_id = ? "
                  "AND outcome = 'delivered'", queue_id)
    return None if row is None else (str(row[0]), str(row[1]))


def queue_row(stack: Stack, queue_id: int) -> tuple[str, int] | None:
    row = one_row(stack, "SELECT state, attempts FROM outbound_queue WHERE id = ?", queue_id)
    return None if row is None else (str(row[0]), int(row[1]))


def pause_row(stack: Stack) -> tuple[float | None, str | None]:
    row = one_row(stack, "SELECT paused_until, reason FROM queue_pause WHERE id = 1")
    assert row is not None
    return row[0], row[1]


def wait_delivered(stack: Stack, queue_id: int, timeout: float = 30.0) -> tuple[str, str]:
    """The Message-ID and Postfix queue id of a message Postfix took and Dovecot stored."""
    found: list[tuple[str, str]] = []

    def recorded() -> bool:
        event = delivered_event(stack, queue_id)
        if event is not None:
            found.append(event)
        return event is not None

    wait_until(recorded, timeout=timeout, message=f"queue entry {queue_id} delivered")
    message_id, reply = found[0]
    match = QUEUED_AS.search(reply)
    assert reply.startswith("250 ") and match, reply
    postfix_id = match.group(1)
    wait_until(lambda: f"{postfix_id}: to=<{stack.postfix.mailbox}>, relay=dovecot"
               in stack.postfix.log(), timeout=timeout,
               message=f"Postfix handing {postfix_id} to dovecot-lda")
    handed = next(line for line in stack.postfix.log().splitlines()
                  if f"{postfix_id}: to=<{stack.postfix.mailbox}>" in line)
    assert "status=sent (delivered via dovecot service)" in handed, handed
    return message_id, postfix_id


def imaps(stack: Stack) -> imaplib.IMAP4_SSL:
    """Logged in to Dovecot over IMAPS, the certificate checked against the test CA."""
    context = ssl.create_default_context(cafile=str(stack.ca_file))
    client = imaplib.IMAP4_SSL(stack.dovecot.host, stack.dovecot.imaps_port,
                               ssl_context=context, timeout=10)
    client.login(stack.dovecot.user, stack.dovecot.password)
    client.select("INBOX", readonly=True)
    return client


def search_inbox(stack: Stack, *criteria: str) -> list[EmailMessage]:
    """Every INBOX message matching an IMAP SEARCH (e.g. HEADER Message-ID <...>)."""
    client = imaps(stack)
    try:
        status, data = client.search(None, *criteria)
        assert status == "OK", data
        messages = []
        for number in data[0].split():
            status, parts = client.fetch(number.decode(), "(BODY.PEEK[])")
            assert status == "OK", parts
            raw = next(part[1] for part in parts if isinstance(part, tuple))
            parsed = BytesParser(policy=policy.default).parsebytes(raw)
            assert isinstance(parsed, EmailMessage)
            messages.append(parsed)
        return messages
    finally:
        client.logout()


def quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- the tests -----------------------------------------------------------------------------------

def test_postfix_takes_auth_only_over_tls_and_mail_only_after_auth(
        postfix: Postfix, dovecot: Dovecot, ca_file: Path) -> None:
    """The upstream behaves like a real submission server, so the tests below mean something."""
    context = ssl.create_default_context(cafile=str(ca_file))
    with smtplib.SMTP(postfix.host, postfix.submission_port, timeout=10) as plain:
        plain.ehlo()
        assert plain.has_extn("starttls") and not plain.has_extn("auth")
        assert plain.mail(f"no-reply@{SENDER_DOMAIN}")[0] == 530  # STARTTLS first
        plain.starttls(context=context)
        plain.ehlo()
        assert plain.has_extn("auth")
        assert plain.mail(f"no-reply@{SENDER_DOMAIN}")[0] == 250
        code, reply = plain.rcpt(postfix.mailbox)  # not even local mail without AUTH
        assert (code, b"Access denied" in reply) == (554, True), reply
    with smtplib.SMTP_SSL(postfix.host, postfix.submissions_port, timeout=10,
                          context=context) as implicit:
        implicit.ehlo()
        assert implicit.has_extn("auth")
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            implicit.login(dovecot.user, WRONG_PASSWORD)
        assert refused.value.smtp_code == 535
        implicit.login(dovecot.user, dovecot.password)
        assert implicit.mail(f"no-reply@{SENDER_DOMAIN}")[0] == 250
        assert implicit.rcpt("someone@elsewhere.example.org")[0] == 250  # relays for alice
        implicit.rset()


@pytest.mark.parametrize(("security", "service"), [("starttls", "submission"),
                                                   ("ssl", "submissions")])
def test_a_webhook_reaches_the_dovecot_inbox_through_postfix_with_tls_and_auth(
        stack: Stack, security: str, service: str) -> None:
    stack.use_submission(security)
    receiver = stack.suite.start_receiver()
    worker = stack.suite.start("worker")
    token = f"tok-{secrets.token_hex(8)}"
    status, body = stack.suite.post(webhook_body(stack.postfix.mailbox, token))
    assert status == 202, body
    message_id, postfix_id = wait_delivered(stack, body["queued_id"])
    wait_until(lambda: queue_row(stack, body["queued_id"]) is None,
               message="queue row deleted after delivery")

    # Postfix took it on the chosen service, from alice authenticated (Dovecot SASL).
    log = stack.postfix.log()
    assert re.search(rf"postfix/{service}/smtpd\[\d+\]: {postfix_id}: client=\S+, "
                     rf"sasl_method=\w+, sasl_username={stack.dovecot.user}\n", log), log

    [message] = search_inbox(stack, "HEADER", "Message-ID", quoted(message_id))
    sender = message["From"].addresses[0]
    assert (sender.display_name, sender.addr_spec) == (DISPLAY_NAME, f"no-reply@{SENDER_DOMAIN}")
    assert message["To"] == stack.postfix.mailbox
    assert message["Subject"] == "Verify your email"
    assert message["Message-ID"] == message_id  # the one fixed at enqueue, unchanged
    assert message["MIME-Version"] == "1.0"
    assert message.get_content_type() == "multipart/alternative"
    assert abs(message["Date"].datetime - datetime.now(UTC)).total_seconds() < 300
    # What Postfix and dovecot-lda added: envelope, final recipient, an encrypted and
    # authenticated hop (ESMTPSA: RFC 3848) with the TLS details.
    assert message["Return-Path"] == f"<no-reply@{SENDER_DOMAIN}>"
    assert message["Delivered-To"] == stack.postfix.mailbox
    received = " ".join(str(message["Received"]).split())  # the topmost: Postfix's
    assert f"by mail.{stack.postfix.domain} (Postfix) with ESMTPSA id {postfix_id}" in received
    assert re.search(r"\(using TLSv1\.[23] with cipher \S+", received), received
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    link = f"https://app.example.com/verify?token={token}"
    assert token in text.get_content() and link in text.get_content()
    assert link in html.get_content()

    log_path = stack.suite.config.parent / "log" / "delivery.log"
    wait_until(lambda: log_path.exists() and '"outcome": "delivered"' in log_path.read_text(),
               message="delivery logged")
    assert worker.stop() == 0
    assert receiver.stop() == 0


def test_a_wrong_smtp_password_pauses_the_queue_and_delivers_nothing(stack: Stack) -> None:
    configure(stack.engine, smtp_password=WRONG_PASSWORD)
    log_offset = len(stack.postfix.log())
    stack.suite.start_receiver()
    worker = stack.suite.start("worker")
    token = f"tok-{secrets.token_hex(8)}"
    status, body = stack.suite.post(webhook_body(stack.postfix.mailbox, token))
    assert status == 202, body
    queue_id = body["queued_id"]

    wait_until(lambda: pause_row(stack)[0] is not None, timeout=30,
               message="the circuit breaker's pause")
    paused_until, reason = pause_row(stack)
    assert paused_until is not None and paused_until > time.time()
    assert reason is not None and reason.startswith("auth: 535 "), reason
    report = cli(stack.suite.config, "status").stdout
    assert re.search(r"PAUSED +until .*: auth: 535 5\.7\.8 Error: authentication failed",
                     report), report
    # The message waits, untried and untouched, for the fix.
    assert queue_row(stack, queue_id) == ("queued", 0)
    # Postfix asked Dovecot, which refused alice's password; no message was accepted.
    refused = stack.postfix.log()[log_offset:]
    assert re.search(r"postfix/submission/smtpd\[\d+\]: warning: \S+: SASL \w+ authentication "
                     rf"failed: .*sasl_username={stack.dovecot.user}", refused), refused
    assert "sasl_method=" not in refused  # logged only when a message is accepted
    assert search_inbox(stack, "BODY", token) == []
    assert WRONG_PASSWORD not in worker.output()

    # An admin corrects the password: the SMTP settings changed, so the pause lifts at once
    # and the held message goes.
    stack.set("smtp_password", stack.dovecot.password)
    message_id, _postfix_id = wait_delivered(stack, queue_id)
    [message] = search_inbox(stack, "HEADER", "Message-ID", quoted(message_id))
    text = message.get_body(("plain",))
    assert text is not None and token in text.get_content()
    wait_until(lambda: pause_row(stack) == (None, None), message="the pause cleared")


def test_without_the_ca_the_worker_refuses_postfix_before_sending_credentials(
        stack: Stack) -> None:
    """Certificate verification is on: the same Postfix, not trusted, gets no AUTH at all."""
    stack.write_config(ca_file=None)
    log_offset = len(stack.postfix.log())
    stack.suite.start_receiver()
    stack.suite.start("worker")
    token = f"tok-{secrets.token_hex(8)}"
    status, body = stack.suite.post(webhook_body(stack.postfix.mailbox, token))
    assert status == 202, body

    wait_until(lambda: pause_row(stack)[0] is not None, timeout=30,
               message="the circuit breaker's pause")
    _paused_until, reason = pause_row(stack)
    assert reason is not None and reason.startswith("tls: "), reason
    assert "certificate verify failed: unable to get local issuer certificate" in reason
    assert queue_row(stack, body["queued_id"]) == ("queued", 0)
    # Postfix saw EHLO and a STARTTLS the client abandoned, and no AUTH command at all.
    wait_until(lambda: "starttls=0/1" in stack.postfix.log()[log_offset:],
               message="Postfix's side of the refused handshake")
    seen = stack.postfix.log()[log_offset:]
    assert re.search(r"disconnect from \S+ ehlo=1 starttls=0/1 commands=1/2\n", seen), seen
    assert "SASL" not in seen and "auth=" not in seen, seen
    assert search_inbox(stack, "BODY", token) == []


def log_in(http: httpx.Client) -> None:
    form = http.get("/login")
    token = CSRF.search(form.text)
    assert form.status_code == 200 and token is not None
    response = http.post("/login", data={"csrf_token": token.group(1), "username": ADMIN,
                                         "password": ADMIN_PASSWORD, "next": "/"})
    assert response.status_code == 303, response.text[:300]


def press(http: httpx.Client, page: str, action: str, data: dict[str, str] | None = None
          ) -> httpx.Response:
    """Show `page`, then post its form to `action` with the page's CSRF token."""
    shown = http.get(page)
    token = CSRF.search(shown.text)
    assert shown.status_code == 200 and token is not None
    return http.post(action, data={"csrf_token": token.group(1), **(data or {})})


def test_the_real_panel_tests_the_same_dovecot_and_postfix(stack: Stack) -> None:
    dovecot, postfix = stack.dovecot, stack.postfix
    for protocol in ("imaps", "pop3s"):
        configure(stack.engine, **{
            f"{protocol}_host": dovecot.host, f"{protocol}_port": dovecot.port(protocol),
            f"{protocol}_username": dovecot.user, f"{protocol}_password": dovecot.password})
    password_file = stack.suite.config.parent / "admin-password"
    password_file.touch(mode=0o600)
    password_file.write_text(ADMIN_PASSWORD + "\n", encoding="utf-8")
    created = cli(stack.suite.config, "admin", "create", ADMIN, "--password-file",
                  str(password_file))
    assert created.returncode == 0, created.stderr
    panel = stack.suite.start_panel()
    with httpx.Client(base_url=stack.suite.panel_url, timeout=30) as http:
        log_in(http)
        for protocol in ("imaps", "pop3s"):
            response = press(http, f"/protocols/{protocol}", f"/protocols/{protocol}/test")
            page = response.text
            assert response.status_code == 200, page[-2000:]
            assert f"{protocol.upper()} connection test: passed" in page
            assert f"connected to {dovecot.host}:{dovecot.port(protocol)}" in page
            assert re.search(r"<li>TLS 1\.[23], certificate verified</li>", page)
            assert f"logged in as {dovecot.user}" in page
            assert dovecot.password not in page

        # Test SMTP: the panel submits through Postfix (STARTTLS, AUTH) to alice's INBOX.
        response = press(http, "/smtp", "/smtp/test", {"test_to": postfix.mailbox})
        assert response.status_code == 200, response.text[-2000:]
        assert f"Accepted by {postfix.host}:{postfix.submission_port}" in response.text
        match = QUEUED_AS.search(response.text)
        assert match is not None, response.text[-2000:]
    postfix_id = match.group(1)
    wait_until(lambda: f"{postfix_id}: to=<{postfix.mailbox}>, relay=dovecot, "
               in postfix.log(), message="the panel's test message handed to Dovecot")
    [message] = search_inbox(stack, "HEADER", "Received", postfix_id)
    assert message["To"] == postfix.mailbox
    assert message["From"].addresses[0].addr_spec == f"no-reply@{SENDER_DOMAIN}"
    text = message.get_body(("plain",))
    assert text is not None
    assert f"Sent by {ADMIN}" in text.get_content()
    assert panel.stop() == 0
