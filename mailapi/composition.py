"""Build the RFC 5322 message and prove, by parsing it back, that its headers are ours."""

from __future__ import annotations

import email
import email.policy
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

from mailapi.headersafety import unsafe_character
from mailapi.rendering import RenderedMessage

EXPECTED_HEADERS = frozenset(
    {"from", "to", "subject", "date", "message-id", "mime-version", "content-type",
     "content-transfer-encoding"}
)
_REQUIRED_HEADERS = EXPECTED_HEADERS - {"content-transfer-encoding"}


class CompositionError(Exception):
    """The composed bytes do not parse back to exactly the headers we meant to write."""


@dataclass(frozen=True)
class Envelope:
    sender: str
    recipient: str


def new_message_id(domain: str) -> str:
    """A Message-ID fixed at enqueue, so a duplicate delivery is recognisable."""
    return f"<{uuid.uuid4().hex}@{domain}>"


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
                        ("display name", display_name), ("recipient", recipient)):
        problem = unsafe_character(value)
        if problem:
            raise CompositionError(f"{name} contains {problem}")
    message = EmailMessage(policy=email.policy.SMTP)
    local, _, domain = sender.partition("@")
    message["From"] = Address(display_name=display_name, username=local, domain=domain)
    to_local, _, to_domain = recipient.rpartition("@")
    message["To"] = Address(username=to_local, domain=to_domain)
    message["Subject"] = rendered.subject
    message["Date"] = format_datetime(date.astimezone(UTC))
    message["Message-ID"] = message_id
    message.set_content(rendered.text, subtype="plain", charset="utf-8")
    if rendered.html is not None:
        message.add_alternative(rendered.html, subtype="html", charset="utf-8")
    data = message.as_bytes(policy=email.policy.SMTP)
    verify_composed(data, rendered=rendered, sender=sender, recipient=recipient,
                    message_id=message_id)
    return data


def verify_composed(
    data: bytes, *, rendered: RenderedMessage, sender: str, recipient: str, message_id: str
) -> None:
    """Parse the bytes back: exactly one of each expected header, values as intended."""
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    names = [name.lower() for name in parsed]
    unexpected = set(names) - EXPECTED_HEADERS
    if unexpected:
        raise CompositionError(f"unexpected header(s) {sorted(unexpected)}")
    missing = _REQUIRED_HEADERS - set(names)
    if missing:
        raise CompositionError(f"missing header(s) {sorted(missing)}")
    if len(names) != len(set(names)):
        raise CompositionError("a header appears more than once")
    if str(parsed["Subject"]) != rendered.subject:
        raise CompositionError("the Subject header does not parse back to the rendered subject")
    to_addresses = parsed["To"].addresses
    if len(to_addresses) != 1 or to_addresses[0].addr_spec.lower() != recipient.lower():
        raise CompositionError("the To header does not parse back to the one recipient")
    from_addresses = parsed["From"].addresses
    if len(from_addresses) != 1 or from_addresses[0].addr_spec.lower() != sender.lower():
        raise CompositionError("the From header does not parse back to the sender")
    if str(parsed["Message-ID"]).strip() != message_id:
        raise CompositionError("the Message-ID header changed")
