"""X-TransLife-Signature: HMAC-SHA256 over timestamp + "." + raw body, and its checks."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from enum import Enum

from mailapi.timestamps import parse_iso8601


class SignatureResult(Enum):
    VALID = "valid"
    MISSING = "missing signature"
    INVALID = "invalid signature"


def sign(secret: str, timestamp: str, raw_body: bytes) -> str:
    """hex(hmac_sha256(secret, timestamp + "." + raw_body)), as the auth service computes it."""
    message = timestamp.encode("utf-8") + b"." + raw_body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def verify(
    *,
    secrets: Sequence[str],
    timestamp_header: str | None,
    signature_header: str | None,
    raw_body: bytes,
    now: float,
    skew_seconds: int,
) -> SignatureResult:
    """Check the two headers against any of the accepted secrets.

    Stale and future timestamps are INVALID (replay protection in both directions). The
    comparison is constant-time over the full hex digest; upper-case hex is accepted.
    """
    if not timestamp_header or not signature_header:
        return SignatureResult.MISSING
    try:
        moment = parse_iso8601(timestamp_header.strip())
    except ValueError:
        return SignatureResult.INVALID
    if abs(moment.timestamp() - now) > skew_seconds:
        return SignatureResult.INVALID
    presented = signature_header.strip().lower()
    if len(presented) != 64 or not presented.isascii():
        return SignatureResult.INVALID
    matched = False
    for secret in secrets:
        expected = sign(secret, timestamp_header.strip(), raw_body)
        # Evaluate every secret so the time taken does not reveal which one matched.
        matched |= hmac.compare_digest(expected.encode("ascii"), presented.encode("ascii"))
    return SignatureResult.VALID if matched else SignatureResult.INVALID
