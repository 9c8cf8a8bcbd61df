"""Property-based: whatever a signed caller sends, no 500, no row unless 202, no stray header."""

from __future__ import annotations

import email
import email.policy
import json
from pathlib import Path
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailapi.composition import EXPECTED_HEADERS
from tests.integration.receiver_harness import DOMAIN, NOW, SECRET, Receiver, body, iso, post_signed
from tests.support.database import configure, migrated_engine

ALLOWED = {202, 400, 401, 413, 422}
# Text that likes to break headers: controls, separators, encoded words, quotes, angles.
PIECES = [*"aZ09 @.<>\",:;\\=?_-", "\r", "\n", "\x00", "\t", "\u2028", "\u2029", "\x85",
          "=?utf-8?q?", "=0D=0A", "?=", "ü", "\U0001f600", "Bcc:", "user@example.com"]
HOSTILE = st.lists(st.sampled_from(PIECES), max_size=12).map("".join)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False,
                                                          allow_infinity=False) | HOSTILE,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(HOSTILE, children,
                                                                      max_size=3),
    max_leaves=8)
FIELDS = ("type", "to", "subject", "token", "expiresAt", "link", "fromLocalPart")


_RECEIVERS: dict[Path, Receiver] = {}


def make_receiver(tmp_path: Path) -> Receiver:
    """One database per test function, shared by its examples (tmp_path is per function)."""
    if tmp_path not in _RECEIVERS:
        engine = migrated_engine(tmp_path / "props.sqlite3")
        configure(engine, webhook_secret=SECRET, allowed_sender_domain=DOMAIN,
                  rate_limit_per_minute=0, sender_allowlist=["support"])
        _RECEIVERS[tmp_path] = Receiver(engine)
    return _RECEIVERS[tmp_path]


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    """A valid payload with some fields replaced by hostile values, or arbitrary JSON."""
    if draw(st.booleans()):
        return json.dumps(draw(JSON_VALUES)).encode()
    changes: dict[str, Any] = {}
    for field in draw(st.lists(st.sampled_from(FIELDS), max_size=3, unique=True)):
        changes[field] = draw(JSON_VALUES | HOSTILE)
    raw = json.loads(body())
    raw.update(changes)
    return json.dumps(raw).encode()


def check_stored_message(receiver: Receiver, queue_id: int) -> None:
    row = next(r for r in receiver.rows() if r.id == queue_id)
    parsed = email.message_from_bytes(row.message, policy=email.policy.default)
    names = [name.lower() for name in parsed]
    assert set(names) <= EXPECTED_HEADERS and len(names) == len(set(names))
    assert [a.addr_spec for a in parsed["To"].addresses] == [row.recipient]
    assert parsed["From"].addresses[0].domain == DOMAIN


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(raw=payloads())
def test_any_signed_body_gets_a_contract_answer(tmp_path: Path, raw: bytes) -> None:
    receiver = make_receiver(tmp_path)
    before = receiver.row_count()
    (response,) = receiver.exchange(post_signed(raw))
    assert response.status_code in ALLOWED, response.text
    answer = response.json()
    assert answer["ok"] is (response.status_code == 202)
    if response.status_code == 202:
        check_stored_message(receiver, answer["queued_id"])
    else:
        assert receiver.row_count() == before
        assert isinstance(answer["error"], str) and answer["error"]


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(timestamp=HOSTILE, signature=HOSTILE)
def test_any_signature_headers_get_401_or_pass(tmp_path: Path, timestamp: str,
                                               signature: str) -> None:
    receiver = make_receiver(tmp_path)
    raw = body()
    headers = {"X-TransLife-Timestamp": timestamp.encode("utf-8", "replace").decode("latin-1"),
               "X-TransLife-Signature": signature.encode("utf-8", "replace").decode("latin-1")}
    try:
        (response,) = receiver.exchange(lambda http: http.post(
            "/webhook/outbound-email", content=raw, headers=headers))
    except (httpx.LocalProtocolError, ValueError):
        return  # the client itself refuses to send a header with CR/LF in it
    assert response.status_code == 401
    assert receiver.row_count() == 0
    assert iso(NOW)  # the harness clock is fixed: no signature made above can be valid
