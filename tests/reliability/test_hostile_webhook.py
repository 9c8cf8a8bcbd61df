"""Hostile webhooks end to end: refused with no row, or delivered with exactly the headers meant."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import idna
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select

from mailapi.db import read_transaction
from mailapi.models import outbound_queue
from tests.integration.receiver_harness import (
    DOMAIN,
    MAX_BODY,
    NOW,
    SECRET,
    Receiver,
    iso,
    post_signed,
)
from tests.integration.worker_helpers import Clock, make_worker, run_passes, smtp_settings
from tests.support.database import configure
from tests.support.smtpd import Received, SmtpServer

FIELDS = ("type", "to", "subject", "token", "expiresAt", "link", "fromLocalPart")
VALID: dict[str, str] = {
    "type": "email_verification", "to": "user@example.com", "subject": "Verify your email",
    "token": "123456", "expiresAt": iso(NOW + 3600),
    "link": "https://app.example.com/verify?token=123456",
}
# What breaks a header line: line breaks in every disguise, NUL and other controls, lone
# surrogates, and encoded words that decode to them.
BREAKING = [
    "\r", "\n", "\r\n", "\x00", "\t", "\x0b", "\x0c", "\x1b", "\x7f", "\x85", "\x9f",
    "\u2028", "\u2029", "\ud800", "\r\nBcc: evil@evil.example",
    "=?utf-8?q?=0D=0ABcc:_evil@evil.example?=", "=?UTF-8?B?DQpCY2M6IGV2aWxAZXZpbC5leGFtcGxl?=",
    "=?iso-8859-1?q?=85?=", "=?utf-8?b?4oCo?=", "=?utf-8?q?a=00b?=", "=??q?=0A?=",
]
# What is allowed but has confused header writers and readers: encoded-word lookalikes,
# header-looking text, quotes, angles and specials, escapes, template syntax, invisible,
# bidi and wide characters, emoji.
TRICKY = [
    "\ufeff", "\u200b", "\u202e", "\u00a0", "\u3000", "=?utf-8?q?", "=?utf-8?b?", "?=",
    "=0D=0A", "=0A", "DQo=", "=?", "=?utf-8?q?x?=", "=?x?q?a?=", "=?utf-8?q?evil=40evil.example?=",
    "Bcc: evil@evil.example", "To: evil@evil.example", ": ", ",", ";", "<", ">", '"', "'", "@",
    " ", "  ", "\\", "%0d%0a", "\\r\\n", "{{7*7}}", "{% raw %}", "<script>alert(1)</script>",
    "ü", "中文", "\U0001f600", "a", "Z", "0", "(comment)", "[", "]",
]
# Every character RFC 5322 allows in an unquoted local part, and some it does not.
ATEXT = [*"aZ09.!#$%&'*+/=?^_`{|}~-", "user", "no-reply", "=?", "?=", "..", "@", " ", '"',
         "ü", "(x)", "<", ">", ","]
PRINTABLE = st.text(st.characters(exclude_categories=["Cc", "Cs", "Zl", "Zp"]), max_size=6)
TRICKY_TEXT = st.lists(st.sampled_from(TRICKY) | PRINTABLE, max_size=10).map("".join)
BREAKING_TEXT = st.lists(st.sampled_from(BREAKING) | st.sampled_from(TRICKY) | st.text(max_size=6),
                         min_size=1, max_size=10).map("".join)
HOSTILE = st.one_of(TRICKY_TEXT, TRICKY_TEXT, BREAKING_TEXT)  # two thirds pass validation
LONG = st.builds(lambda unit, count: unit * count,
                 st.sampled_from(["a", "ü", "a ", "=?", "\U0001f600", "ab" * 40 + " "]),
                 st.integers(60, 1100))
DOMAINS = ["example.com", "EXAMPLE.COM", "mail.example.co.uk", "bücher.de", "xn--bcher-kva.de",
           "例え.jp", "example.com.", "[127.0.0.1]", "localhost", "-bad.example.com",
           "example.com>", "example.com, evil@evil.example", "a" * 64 + ".com"]
LOCAL = st.one_of(st.lists(st.sampled_from(ATEXT), min_size=1, max_size=6).map("".join),
                  st.lists(st.sampled_from(ATEXT) | st.sampled_from(BREAKING), min_size=1,
                           max_size=4).map("".join))
ADDRESSES = st.one_of(
    st.builds(lambda local, domain: f"{local}@{domain}", LOCAL, st.sampled_from(DOMAINS)),
    st.sampled_from([
        "user@example.com, evil@evil.example", "User <user@example.com>", "<user@example.com>",
        '"quoted local"@example.com', "user@example.com (comment)", "@route:user@example.com",
        "user%evil.example@example.com", "user@example.com\r\nBcc: evil@evil.example",
        "user@@example.com", "user@", "=?utf-8?q?evil=40evil.example?=@example.com",
        "user@example.com\x00evil@evil.example", "USER@Example.Com", "a" * 65 + "@example.com",
    ]))
LINKS = st.one_of(
    st.builds(lambda tail: VALID["link"] + tail, HOSTILE),
    st.sampled_from([
        "javascript:alert(1)", "data:text/html,<script>alert(1)</script>", "http://[",
        "https://a\uff03b/", "HTTPS://EXAMPLE.COM/X", "https://example.com/\r\nBcc: x@y.z",
        "https://example.com/%0d%0aBcc:%20x@y.z", "https://exa mple.com/", "//example.com/x",
        "https://user:pass@example.com/", "https://例え.jp/パス", "ftp://example.com/",
    ]))
TIMESTAMPS = st.sampled_from([
    iso(NOW + 60), iso(NOW - 60), "9999-12-31T23:59:59Z", "9999-12-31T23:59:59-01:00",
    "0001-01-01T00:00:00+23:59", "2026-02-21T06:35:10.1234567890Z", "2026-02-21 06:35:10",
    "2026-02-21T07:35:10+0100", "2026-02-21t06:35:10z", " 2026-02-21T06:35:10Z",
    "2026-02-21T06:35:10Z\n", "2026-02-30T06:35:10Z", "tomorrow", "", "1771660000",
])
VALUES: dict[str, st.SearchStrategy[Any]] = {
    "type": st.sampled_from(["password_reset", "password_reset", "Email_Verification", ""]),
    "to": ADDRESSES,
    "subject": HOSTILE | LONG,
    "token": HOSTILE | LONG,
    "expiresAt": TIMESTAMPS | HOSTILE,
    "link": LINKS | st.none(),
    "fromLocalPart": LOCAL | st.none(),
}
# Display names the administrator may set: each must reach the From header as it is.
DISPLAY_NAMES = ["", "MAIL_API", 'Acme "Support", Team <x@evil.example>', "Ünïcödé Support",
                 "=?utf-8?q?Fake?= <evil@evil.example>", "n" * 128]
INTENDED_HEADERS = ["content-type", "date", "from", "message-id", "mime-version", "subject",
                    "to"]


@dataclass
class Stack:
    """Receiver, worker and a real aiosmtpd over one database, shared by a test's examples."""

    engine: Engine
    smtp: SmtpServer
    directory: Path
    display_name: str = ""
    delivered_ids: set[int] = field(default_factory=set)

    def rows(self) -> int:
        with read_transaction(self.engine) as connection:
            return len(connection.execute(select(outbound_queue.c.id)).all())

    def message_id(self, queue_id: int) -> str:
        with read_transaction(self.engine) as connection:
            return str(connection.execute(select(outbound_queue.c.message_id).where(
                outbound_queue.c.id == queue_id)).scalar_one())

    def use_display_name(self, name: str) -> None:
        if name != self.display_name:
            configure(self.engine, sender_display_name=name)
            self.display_name = name

    def deliver(self) -> Received:
        """One worker pass at the harness's time; the message the SMTP server took."""
        before = len(self.smtp.recorder.messages)
        assert run_passes(make_worker(self.engine, self.directory, Clock(NOW + 1))) == [1]
        return self.smtp.recorder.wait_for(before + 1)[before]


@pytest.fixture
def stack(engine: Engine, smtp_server: SmtpServer, tmp_path: Path) -> Iterator[Stack]:
    smtp_settings(engine, smtp_server.port)
    configure(engine, webhook_secret=SECRET, allowed_sender_domain=DOMAIN,
              rate_limit_per_minute=0, allow_any_local_part=True)
    yield Stack(engine, smtp_server, tmp_path)


def encode(body: dict[str, Any], ascii_only: bool) -> bytes:
    # surrogatepass: a lone surrogate goes out as the invalid UTF-8 a broken client sends.
    return json.dumps(body, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@st.composite
def hostile_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A valid payload with one to three fields replaced by hostile values."""
    body: dict[str, Any] = dict(VALID)
    fields = draw(st.permutations(FIELDS))[:draw(st.integers(1, 3))]
    for name in fields:
        body[name] = draw(VALUES[name])
    return {key: value for key, value in body.items() if value is not None}


def intended_recipient(to: str) -> str:
    """The address as it must be sent: the local part unchanged, the domain in ASCII."""
    local, _, domain = to.rpartition("@")
    ascii_domain = domain.lower() if domain.isascii() else idna.encode(domain, uts46=True).decode()
    return f"{local}@{ascii_domain}"


def header_block(data: bytes) -> list[bytes]:
    """The raw header lines: every one ends in CRLF, none hides a CR, LF or NUL, all ASCII."""
    head, separator, _ = data.partition(b"\r\n\r\n")
    assert separator, "no end of the header block"
    lines = head.split(b"\r\n")
    for line in lines:
        assert b"\r" not in line and b"\n" not in line and b"\x00" not in line, line
        assert line.isascii() and len(line) <= 998, line[:80]
    return lines


def check_delivered(received: Received, *, body: dict[str, Any], answer: dict[str, Any],
                    message_id: str, display_name: str) -> None:
    """Exactly the intended headers, each once, with the intended values; the envelope too."""
    sender = f"{body.get('fromLocalPart') or 'no-reply'}@{DOMAIN}"
    recipient = intended_recipient(body["to"])
    assert answer["to"] == recipient
    assert (received.mail_from, received.rcpt_tos) == (sender, [recipient])
    raw_names = [line.split(b":", 1)[0].decode().lower() for line in header_block(received.data)
                 if line[:1] not in (b" ", b"\t")]
    parsed = received.parsed()
    assert raw_names == [name.lower() for name in parsed]  # the raw and a client's view agree
    intended = list(INTENDED_HEADERS)
    if parsed.get_content_type() == "text/plain":  # one part: its encoding is a top header
        intended.append("content-transfer-encoding")
    assert sorted(raw_names) == sorted(intended)
    assert not parsed.defects
    (to,) = parsed["To"].addresses
    assert (to.addr_spec, to.display_name) == (recipient, "")
    (sent_from,) = parsed["From"].addresses
    assert (sent_from.addr_spec, sent_from.display_name) == (sender, display_name)
    # The default template is "{{ subject }}"; rendering folds whitespace runs to one space.
    assert str(parsed["Subject"]) == " ".join(body["subject"].split())
    assert parsed["Message-ID"] == message_id
    assert parsed["MIME-Version"] == "1.0"
    text = parsed.get_body(preferencelist=("plain",))
    assert isinstance(text, EmailMessage)
    content = text.get_content()
    assert body["token"] in content  # data, never template: {{7*7}} stays {{7*7}}
    if "link" in body:
        assert body["link"] in content


def exchange(stack: Stack, body: dict[str, Any], ascii_only: bool) -> None:
    """Post `body` signed: either refused with nothing stored, or delivered exactly."""
    raw = encode(body, ascii_only)
    before = stack.rows()
    (response,) = Receiver(stack.engine).exchange(post_signed(raw))
    answer = response.json()
    if response.status_code != 202:
        allowed = {400, 422} | ({413} if len(raw) > MAX_BODY else set())
        assert response.status_code in allowed, response.text
        assert answer["ok"] is False and answer["error"]
        assert stack.rows() == before
        return
    queue_id = answer["queued_id"]
    if queue_id in stack.delivered_ids:  # the same request again: answered, not re-sent
        assert stack.rows() == before
        return
    message_id = stack.message_id(queue_id)
    received = stack.deliver()
    stack.delivered_ids.add(queue_id)
    check_delivered(received, body=body, answer=answer, message_id=message_id,
                    display_name=stack.display_name)
    assert stack.rows() == before  # delivered, so deleted


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(body=hostile_bodies(), ascii_only=st.booleans(),
       display_name=st.sampled_from(DISPLAY_NAMES))
@example(body=VALID | {"subject": "Grüße =?utf-8?q?x?= \"quoted\" <angle>"}, ascii_only=False,
         display_name=DISPLAY_NAMES[2])
@example(body=VALID | {"link": "http://["}, ascii_only=True, display_name="")
@example(body=VALID | {"link": "https://a\uff03b/"}, ascii_only=False, display_name="")
@example(body=VALID | {"expiresAt": "9999-12-31T23:59:59-01:00"}, ascii_only=True,
         display_name="")
@example(body=VALID | {"subject": "Hi \ud800"}, ascii_only=True, display_name="")
@example(body=VALID | {"to": "user@bücher.de", "fromLocalPart": "o'brien+{x}"},
         ascii_only=False, display_name=DISPLAY_NAMES[4])
@example(body=VALID | {"subject": "a" * 500}, ascii_only=True, display_name="")
@example(body=VALID | {"to": "=?utf-8?q?evil=40evil.example?=@example.com"}, ascii_only=True,
         display_name="")
@example(body=VALID | {"fromLocalPart": "=?utf-8?q?ceo=40bank.example?="}, ascii_only=True,
         display_name="")
def test_hostile_webhooks_are_refused_or_arrive_with_exactly_the_intended_headers(
        stack: Stack, body: dict[str, Any], ascii_only: bool, display_name: str) -> None:
    stack.use_display_name(display_name)
    exchange(stack, body, ascii_only)


@st.composite
def hiding_words(draw: st.DrawFn) -> str:
    """Text around an RFC 2047 encoded word that decodes to a line break or control."""
    hidden = draw(st.sampled_from(["\r\n", "\n", "\r", "\x00", "\x85", "\u2028", "\u2029",
                                   "\x0b"]))
    charset = draw(st.sampled_from(["utf-8", "UTF-8", "utf-16", "latin-1"]))
    if hidden in ("\u2028", "\u2029") and charset == "latin-1":
        charset = "utf-8"  # latin-1 cannot carry them
    data = f"a{hidden}Bcc: evil@evil.example".encode(charset)
    encoding = draw(st.sampled_from(["q", "Q", "b", "B"]))
    if encoding in "bB":
        payload = base64.b64encode(data).decode()
    else:
        payload = "".join(chr(byte) if 33 <= byte < 127 and chr(byte) not in "=?_" else
                          f"={byte:02X}" for byte in data)
    before = draw(st.sampled_from(["", "Hello ", "x"]))
    after = draw(st.sampled_from(["", " there", "y"]))
    return f"{before}=?{charset}?{encoding}?{payload}?={after}"


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["subject", "token", "fromLocalPart", "link"]), word=hiding_words(),
       ascii_only=st.booleans())
def test_encoded_words_decoding_to_line_breaks_are_refused(stack: Stack, name: str, word: str,
                                                           ascii_only: bool) -> None:
    value = VALID["link"] + word if name == "link" else word
    rows = stack.rows()
    (response,) = Receiver(stack.engine).exchange(
        post_signed(encode(VALID | {name: value}, ascii_only)))
    answer = response.json()
    assert answer["field"] == name, (value, response.text)
    # Refused for what it hides, or (a long local part) for its length, checked first.
    assert (response.status_code, "encoded word hiding" in answer["error"]) == (400, True) \
        or (response.status_code, "at most" in answer["error"]) == (422, True), response.text
    assert stack.rows() == rows
