"""Build the RFC 5322 message and prove, by parsing it back, that its headers are ours.

The message is written directly rather than through `email.message.EmailMessage`: its
structure is fixed (one text part, optionally an HTML alternative), and the policy-based
machinery costs milliseconds per message, which would cap the receiver far below the
database's speed. The parse-back check reads the header block with a parser stricter than
any mail client's (see parse_header_block).
"""

from __future__ import annotations

import base64
import binascii
import secrets
from datetime import UTC, datetime
from email.header import decode_header, make_header
from email.utils import format_datetime

from mailapi.headersafety import unsafe_character
from mailapi.rendering import RenderedMessage

EXPECTED_HEADERS = frozenset(
    {"from", "to", "subject", "date", "message-id", "mime-version", "content-type",
     "content-transfer-encoding"}
)
_REQUIRED_HEADERS = EXPECTED_HEADERS - {"content-transfer-encoding"}
# RFC 5322 "specials" that force a display name into a quoted string.
_SPECIALS = set('()<>[]:;@\\,."')
_ENCODED_WORD_BYTES = 45  # 45 bytes -> 60 base64 characters: a 72-character encoded word


class CompositionError(Exception):
    """The composed bytes do not parse back to exactly the headers we meant to write."""


def new_message_id(domain: str) -> str:
    """A Message-ID fixed at enqueue, so a duplicate delivery is recognisable."""
    return f"<{secrets.token_hex(16)}@{domain}>"


def _encoded_words(text: str) -> list[str]:
    """RFC 2047 B-encoded words, never splitting a character across two words."""
    words: list[str] = []
    chunk = bytearray()
    for char in text:
        encoded = char.encode("utf-8")
        if len(chunk) + len(encoded) > _ENCODED_WORD_BYTES:
            words.append(f"=?utf-8?b?{base64.b64encode(bytes(chunk)).decode()}?=")
            chunk.clear()
        chunk.extend(encoded)
    if chunk:
        words.append(f"=?utf-8?b?{base64.b64encode(bytes(chunk)).decode()}?=")
    return words


def _needs_encoding(text: str) -> bool:
    return not text.isascii() or "=?" in text


def _fold(name: str, words: list[str]) -> str:
    """`Name: w1 w2 ...`, folded before a word that would pass 78 characters."""
    lines = [f"{name}:"]
    for word in words:
        if len(lines[-1]) + 1 + len(word) > 78 and lines[-1] != f"{name}:":
            lines.append("")
        lines[-1] += f" {word}"
    return "\r\n".join(lines)


def encode_subject(subject: str) -> str:
    if _needs_encoding(subject):
        return _fold("Subject", _encoded_words(subject))
    return _fold("Subject", subject.split(" "))


def encode_mailbox(display_name: str, address: str) -> str:
    if not display_name:
        return address
    if _needs_encoding(display_name):
        phrase = " ".join(_encoded_words(display_name))
    elif any(char in _SPECIALS for char in display_name):
        escaped = display_name.replace("\\", "\\\\").replace('"', '\\"')
        phrase = f'"{escaped}"'
    else:
        phrase = display_name
    return f"{phrase} <{address}>"


def _text_part(content: str, subtype: str) -> bytes:
    body = binascii.b2a_qp(content.encode("utf-8"), istext=True)
    body = body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    return (f"Content-Type: text/{subtype}; charset=\"utf-8\"\r\n"
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n").encode("ascii") + body


def compose(
    *,
    rendered: RenderedMessage,
    sender: str,
    display_name: str,
    recipient: str,
    message_id: str,
    date: datetime,
) -> bytes:
    for name, value in (("subject", rendered.subject), ("sender", sender),
                        ("display name", display_name), ("recipient", recipient),
                        ("message id", message_id)):
        problem = unsafe_character(value)
        if problem:
            raise CompositionError(f"{name} contains {problem}")
    if not (sender.isascii() and recipient.isascii() and message_id.isascii()):
        raise CompositionError("addresses must be ASCII (IDN domains in punycode)")
    headers = [
        "From: " + encode_mailbox(display_name, sender),
        f"To: {recipient}",
        encode_subject(rendered.subject),
        "Date: " + format_datetime(date.astimezone(UTC)),
        f"Message-ID: {message_id}",
        "MIME-Version: 1.0",
    ]
    if any(len(line) > 998 for header in headers for line in header.split("\r\n")):
        raise CompositionError("a header line would exceed 998 characters")
    text_part = _text_part(rendered.text, "plain")
    if rendered.html is None:
        head = "\r\n".join(headers).encode("ascii") + b"\r\n"
        data = head + text_part
    else:
        boundary = f"=_{secrets.token_hex(16)}"  # "=_" cannot occur in quoted-printable text
        headers.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
        delimiter = f"--{boundary}\r\n".encode("ascii")
        data = ("\r\n".join(headers) + "\r\n\r\n").encode("ascii") + b"".join((
            delimiter, text_part, b"\r\n", delimiter, _text_part(rendered.html, "html"),
            f"\r\n--{boundary}--\r\n".encode("ascii"),
        ))
    verify_composed(data, rendered=rendered, sender=sender, recipient=recipient,
                    message_id=message_id)
    return data


def parse_header_block(data: bytes) -> list[tuple[str, str]]:
    """The header fields of `data` as (lower-case name, unfolded value), strictly.

    Stricter than a mail client: every line must end in CRLF, a stray CR or LF anywhere in
    the block is an error, and a field name is printable ASCII without a colon. Whatever a
    lenient reader could take for an extra header therefore fails here first.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        raise CompositionError("no blank line after the header block")
    fields: list[tuple[str, str]] = []
    for line in data[:end].split(b"\r\n"):
        if b"\r" in line or b"\n" in line or b"\x00" in line:
            raise CompositionError("a bare CR, LF or NUL in the header block")
        if not line.isascii():
            raise CompositionError("8-bit data in the header block")
        text = line.decode("ascii")
        if text[:1] in (" ", "\t"):
            if not fields:
                raise CompositionError("the header block starts with a continuation line")
            name, value = fields[-1]
            fields[-1] = (name, value + text)
            continue
        name, colon, value = text.partition(":")
        if not colon or not name or any(ord(c) < 33 or ord(c) > 126 for c in name):
            raise CompositionError(f"malformed header line {text[:40]!r}")
        fields.append((name.lower(), value.strip()))
    return fields


def verify_composed(
    data: bytes, *, rendered: RenderedMessage, sender: str, recipient: str, message_id: str
) -> None:
    """Parse the header block back: exactly one of each expected header, values as intended."""
    fields = parse_header_block(data)
    names = [name for name, _ in fields]
    unexpected = set(names) - EXPECTED_HEADERS
    if unexpected:
        raise CompositionError(f"unexpected header(s) {sorted(unexpected)}")
    missing = _REQUIRED_HEADERS - set(names)
    if missing:
        raise CompositionError(f"missing header(s) {sorted(missing)}")
    if len(names) != len(set(names)):
        raise CompositionError("a header appears more than once")
    values = dict(fields)
    subject = values["subject"]
    if "=?" in subject:  # encoded words: decode them as a mail client would
        subject = str(make_header(decode_header(subject)))
    if subject != rendered.subject:
        raise CompositionError("the Subject header does not parse back to the rendered subject")
    if values["to"].lower() != recipient.lower():
        raise CompositionError("the To header does not parse back to the one recipient")
    from_value = values["from"].lower()
    if from_value != sender.lower() and not from_value.endswith(f"<{sender.lower()}>"):
        raise CompositionError("the From header does not parse back to the sender")
    if values["message-id"] != message_id:
        raise CompositionError("the Message-ID header changed")
