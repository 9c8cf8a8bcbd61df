"""mailapi.signatures: HMAC over timestamp + "." + body, with a skew window both ways."""

import hashlib
import hmac
from datetime import UTC, datetime

import pytest

from mailapi.signatures import SignatureResult, sign, verify

SECRET = "current-secret"
PREVIOUS = "previous-secret"
BODY = b'{"type":"email_verification","to":"user@example.com"}'
TIMESTAMP = "2026-02-21T05:35:10Z"
NOW = datetime(2026, 2, 21, 5, 35, 10, tzinfo=UTC).timestamp()
SKEW = 300


def _verify(
    timestamp: str | None = TIMESTAMP,
    signature: str | None = None,
    *,
    secrets: tuple[str, ...] = (SECRET,),
    now: float = NOW,
    body: bytes = BODY,
) -> SignatureResult:
    if signature is None and timestamp is not None:
        signature = sign(SECRET, timestamp, body)
    return verify(secrets=secrets, timestamp_header=timestamp, signature_header=signature,
                  raw_body=body, now=now, skew_seconds=SKEW)


def test_sign_is_hex_sha256_over_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET.encode(), TIMESTAMP.encode() + b"." + BODY,
                        hashlib.sha256).hexdigest()
    assert sign(SECRET, TIMESTAMP, BODY) == expected
    assert len(expected) == 64


def test_valid_signature() -> None:
    assert _verify() is SignatureResult.VALID


@pytest.mark.parametrize(
    ("timestamp", "signature"),
    [(None, "a" * 64), (TIMESTAMP, None), (None, None), ("", "a" * 64), (TIMESTAMP, "")],
)
def test_missing_header(timestamp: str | None, signature: str | None) -> None:
    result = verify(secrets=[SECRET], timestamp_header=timestamp, signature_header=signature,
                    raw_body=BODY, now=NOW, skew_seconds=SKEW)
    assert result is SignatureResult.MISSING


def test_wrong_secret_is_invalid() -> None:
    signature = sign("another-secret", TIMESTAMP, BODY)
    assert _verify(signature=signature) is SignatureResult.INVALID


def test_tampered_body_is_invalid() -> None:
    signature = sign(SECRET, TIMESTAMP, BODY)
    assert _verify(signature=signature, body=BODY + b" ") is SignatureResult.INVALID


def test_signature_bound_to_timestamp() -> None:
    other = "2026-02-21T05:35:11Z"
    assert _verify(timestamp=other, signature=sign(SECRET, TIMESTAMP, BODY)) is (
        SignatureResult.INVALID)


def test_previous_secret_accepted_while_listed() -> None:
    signature = sign(PREVIOUS, TIMESTAMP, BODY)
    assert _verify(signature=signature, secrets=(SECRET, PREVIOUS)) is SignatureResult.VALID
    assert _verify(signature=signature, secrets=(SECRET,)) is SignatureResult.INVALID


def test_no_secrets_never_valid() -> None:
    assert _verify(secrets=()) is SignatureResult.INVALID


@pytest.mark.parametrize(
    ("now_offset", "expected"),
    [
        (SKEW, SignatureResult.VALID),  # stale, just inside
        (SKEW + 1, SignatureResult.INVALID),  # stale, just outside
        (SKEW + 0.001, SignatureResult.INVALID),
        (-SKEW, SignatureResult.VALID),  # from the future, just inside
        (-SKEW - 1, SignatureResult.INVALID),  # from the future, just outside
        (-SKEW - 0.001, SignatureResult.INVALID),
    ],
)
def test_skew_window_both_directions(now_offset: float, expected: SignatureResult) -> None:
    assert _verify(now=NOW + now_offset) is expected


def test_upper_case_hex_accepted() -> None:
    signature = sign(SECRET, TIMESTAMP, BODY).upper()
    assert _verify(signature=signature) is SignatureResult.VALID


def test_surrounding_whitespace_tolerated() -> None:
    signature = sign(SECRET, TIMESTAMP, BODY)
    assert _verify(timestamp=f" {TIMESTAMP} ", signature=f" {signature}\t") is (
        SignatureResult.VALID)


@pytest.mark.parametrize("length", [63, 65])
def test_wrong_length_signature_invalid(length: int) -> None:
    good = sign(SECRET, TIMESTAMP, BODY)
    signature = (good + "0")[:length]
    assert _verify(signature=signature) is SignatureResult.INVALID


@pytest.mark.parametrize("bad", ["é" * 64, "\uff10" * 64])
def test_non_ascii_signature_invalid(bad: str) -> None:
    assert _verify(signature=bad) is SignatureResult.INVALID


def test_non_ascii_character_replacing_one_hex_digit_is_invalid() -> None:
    good = sign(SECRET, TIMESTAMP, BODY)
    assert _verify(signature=good[:-1] + "ß") is SignatureResult.INVALID


def test_javascript_toisostring_with_milliseconds() -> None:
    timestamp = "2026-02-21T05:35:10.123Z"
    assert _verify(timestamp=timestamp, now=NOW + 0.123) is SignatureResult.VALID
    assert _verify(timestamp=timestamp, now=NOW + SKEW + 0.124) is SignatureResult.INVALID


def test_offset_timestamp_is_compared_in_utc() -> None:
    timestamp = "2026-02-21T07:35:10+02:00"  # the same instant as TIMESTAMP
    assert _verify(timestamp=timestamp) is SignatureResult.VALID
    # Read naively (ignoring the offset) it would be two hours in the future.
    assert _verify(timestamp="2026-02-21T07:35:10Z") is SignatureResult.INVALID


@pytest.mark.parametrize(
    "timestamp", ["yesterday", "1771652110", "2026-02-21", "2026-02-30T05:35:10Z", "null"]
)
def test_garbage_timestamp_invalid(timestamp: str) -> None:
    assert _verify(timestamp=timestamp) is SignatureResult.INVALID
