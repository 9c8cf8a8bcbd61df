"""The webhook body: strict JSON parsing and field validation, with errors naming the field."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from email_validator import EmailNotValidError, validate_email

from mailapi.headersafety import unsafe_character
from mailapi.rendering import MESSAGE_TYPES
from mailapi.timestamps import parse_iso8601

MAX_SUBJECT = 500
MAX_TOKEN = 1024
MAX_LINK = 2048


class PayloadError(Exception):
    """A request the caller must fix. status is 400 (malformed/injection) or 422 (invalid)."""

    def __init__(self, status: int, error: str, field: str | None = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.field = field


@dataclass(frozen=True)
class WebhookPayload:
    type: str
    to: str
    subject: str
    token: str
    expires_at: datetime
    expires_at_text: str
    link: str | None
    from_local_part: str | None

    def digest(self) -> str:
        """Identity of the message for idempotency: the same request yields the same digest."""
        canonical = json.dumps(
            [self.type, self.to.lower(), self.subject, self.token, self.expires_at_text,
             self.link, self.from_local_part],
            ensure_ascii=False, separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError("number out of range")
    return value


def parse_json_object(raw_body: bytes) -> dict[str, Any]:
    """Strict JSON: UTF-8, no duplicate keys, no NaN/Infinity, an object at the top."""
    try:
        text = raw_body.decode("utf-8")
        value = json.loads(text, object_pairs_hook=_reject_duplicates,
                           parse_constant=_reject_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise PayloadError(400, "invalid json") from None
    if not isinstance(value, dict):
        raise PayloadError(400, "invalid json")
    return value


def _string(body: dict[str, Any], name: str, *, required: bool, max_length: int) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise PayloadError(422, f"{name} is required", name)
        return None
    if not isinstance(value, str):
        raise PayloadError(422, f"{name} must be a string", name)
    if required and not value.strip():
        raise PayloadError(422, f"{name} must not be empty", name)
    if len(value) > max_length:
        raise PayloadError(422, f"{name} must be at most {max_length} characters", name)
    problem = unsafe_character(value)
    if problem:
        raise PayloadError(400, f"{name} contains {problem}", name)
    return value


def validate_payload(body: dict[str, Any], *, now: float) -> WebhookPayload:
    """Validate every field in contract order; the first problem is reported."""
    message_type = body.get("type")
    if message_type is None:
        raise PayloadError(422, "type is required", "type")
    if message_type not in MESSAGE_TYPES:
        raise PayloadError(422, f"type must be one of {', '.join(MESSAGE_TYPES)}", "type")
    to_raw = _string(body, "to", required=True, max_length=320)
    assert to_raw is not None
    if "=?" in to_raw:  # RFC 2047 forbids encoded words in an address; lenient readers decode
        raise PayloadError(422, "to must not contain =? (an RFC 2047 encoded word)", "to")
    try:
        checked = validate_email(
            to_raw, check_deliverability=False, allow_smtputf8=False,
            allow_display_name=False, allow_quoted_local=False, allow_domain_literal=False,
        )
    except EmailNotValidError as exc:
        raise PayloadError(422, f"to is not a single valid e-mail address: {exc}", "to") from None
    subject = _string(body, "subject", required=True, max_length=MAX_SUBJECT)
    token = _string(body, "token", required=True, max_length=MAX_TOKEN)
    expires_text = _string(body, "expiresAt", required=True, max_length=40)
    assert subject is not None and token is not None and expires_text is not None
    try:
        expires_at = parse_iso8601(expires_text)
    except ValueError:
        raise PayloadError(422, "expiresAt must be an ISO 8601 timestamp", "expiresAt") from None
    if expires_at.timestamp() <= now:
        raise PayloadError(422, "expiresAt is in the past", "expiresAt")
    link = _string(body, "link", required=False, max_length=MAX_LINK)
    if link is not None:
        try:
            parts = urlsplit(link)  # ValueError for "http://[" or an NFKC-unsafe host
        except ValueError:
            parts = None
        if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.netloc:
            raise PayloadError(422, "link must be an absolute http:// or https:// URL", "link")
        if any(ch.isspace() or ch in "<>\"" for ch in link):
            raise PayloadError(422, "link must not contain spaces, quotes or <>", "link")
    from_local_part = _string(body, "fromLocalPart", required=False, max_length=64)
    return WebhookPayload(
        type=message_type,
        to=checked.ascii_email or checked.normalized,
        subject=subject,
        token=token,
        expires_at=expires_at,
        expires_at_text=expires_text,
        link=link,
        from_local_part=from_local_part,
    )
