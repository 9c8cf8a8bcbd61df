"""The receiver app in-process: every response of the contract, and no row for any refusal."""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from mailapi.db import open_engine
from mailapi.timestamps import format_utc
from tests.integration.receiver_harness import (
    DOMAIN,
    MAX_BODY,
    NOW,
    SECRET,
    WEBHOOK,
    Receiver,
    assert_refused,
    body,
    iso,
    post,
    post_signed,
    signed,
)
from tests.support.database import configure


@pytest.fixture
def receiver(engine: Engine, db_path: Path) -> Iterator[Receiver]:
    configure(engine, webhook_secret=SECRET, allowed_sender_domain=DOMAIN)
    receiver_engine = open_engine(db_path, durability="FULL", busy_timeout_ms=200)
    yield Receiver(receiver_engine)
    receiver_engine.dispose()


def test_a_signed_webhook_is_queued_and_answered_with_exactly_the_contract(
        receiver: Receiver) -> None:
    [response] = receiver.exchange(post_signed(body()))
    assert response.status_code == 202
    answer = response.json()
    assert set(answer) == {"ok", "to", "subject", "queued_id", "queued_at"}
    assert answer["queued_at"] == format_utc(NOW) and answer["queued_at"].endswith("Z")
    [row] = receiver.rows()
    assert answer == {"ok": True, "to": "user@example.com", "subject": "Verify your email",
                      "queued_id": row.id, "queued_at": "2026-02-21T05:35:10.000000Z"}
    assert (row.state, row.recipient, row.envelope_sender) == (
        "queued", "user@example.com", f"no-reply@{DOMAIN}")
    assert row.expires_at == NOW + 3600 and b"Subject: Verify your email" in row.message


def test_the_same_signed_request_twice_answers_the_same_id_and_queues_once(
        receiver: Receiver) -> None:
    raw = body()
    first, second = receiver.exchange(post_signed(raw), post_signed(raw))
    assert first.status_code == second.status_code == 202
    assert first.json() == second.json()
    assert receiver.row_count() == 1


@pytest.mark.parametrize("keep", [(), ("X-TransLife-Timestamp",), ("X-TransLife-Signature",)])
def test_a_missing_signature_is_401(receiver: Receiver, keep: tuple[str, ...]) -> None:
    raw = body()
    headers = {k: v for k, v in signed(raw).items() if k in keep}
    [response] = receiver.exchange(post(raw, headers))
    assert_refused(response, 401, "missing signature")
    assert receiver.row_count() == 0


@pytest.mark.parametrize(
    "headers",
    [
        signed(body(), secret="some-other-secret"),
        signed(body(), at=NOW - 301),  # stale: outside the default 300 s window
        signed(body(), at=NOW + 301),  # from the future
        signed(body(token="654321")),  # signature over another body
        {**signed(body()), "X-TransLife-Timestamp": "yesterday"},
        {**signed(body()), "X-TransLife-Signature": "ab" * 31},
    ],
    ids=["wrong-secret", "stale", "future", "other-body", "bad-timestamp", "short"],
)
def test_an_invalid_signature_is_401(receiver: Receiver, headers: dict[str, str]) -> None:
    [response] = receiver.exchange(post(body(), headers))
    assert_refused(response, 401, "invalid signature")
    assert receiver.row_count() == 0


def test_duplicate_signature_headers_are_401(receiver: Receiver) -> None:
    raw = body()
    good = signed(raw)
    for name in ("X-TransLife-Signature", "X-TransLife-Timestamp"):
        headers = [*good.items(), (name, good[name])]
        [response] = receiver.exchange(post(raw, headers))
        assert_refused(response, 401, "invalid signature")
    assert receiver.row_count() == 0


def test_a_peer_outside_the_allowlist_is_403_and_forwarded_for_needs_a_trusted_proxy(
        receiver: Receiver, engine: Engine) -> None:
    configure(engine, ip_allowlist=["203.0.113.0/24"])
    raw = body()
    forwarded = {**signed(raw), "X-Forwarded-For": "203.0.113.9"}
    plain, spoofed = receiver.exchange(post_signed(raw), post(raw, forwarded))
    assert_refused(plain, 403, "forbidden")
    assert_refused(spoofed, 403, "forbidden")  # the peer is not a trusted proxy
    assert receiver.row_count() == 0
    [direct] = receiver.exchange(post_signed(raw), peer=("203.0.113.7", 4000))
    assert direct.status_code == 202
    configure(engine, trusted_proxies=["127.0.0.1"])
    outside = {**signed(raw), "X-Forwarded-For": "198.51.100.1"}
    proxied, refused = receiver.exchange(post(raw, forwarded), post(raw, outside))
    assert proxied.status_code == 202
    assert_refused(refused, 403, "forbidden")
    assert receiver.row_count() == 1


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b'{"type": NaN}', body()[:-1] + b', "to": "other@example.com"}',
     b"[]", b'"a string"', b"", b'{"to": "caf\xe9"}'],
    ids=["garbage", "nan", "duplicate-key", "array", "string", "empty", "not-utf8"],
)
def test_a_body_that_is_not_one_strict_json_object_is_400(receiver: Receiver,
                                                          raw: bytes) -> None:
    [response] = receiver.exchange(post_signed(raw))
    assert_refused(response, 400, "invalid json")
    assert receiver.row_count() == 0


@pytest.mark.parametrize(
    ("changes", "field", "error"),
    [
        ({"to": None}, "to", "to is required"),
        ({"to": 42}, "to", "to must be a string"),
        ({"type": "newsletter"}, "type", None),
        ({"token": ["123"]}, "token", "token must be a string"),
        ({"subject": ""}, "subject", "subject must not be empty"),
        ({"to": "Someone <a@example.com>"}, "to", None),
        ({"expiresAt": iso(NOW - 1)}, "expiresAt", "expiresAt is in the past"),
        ({"expiresAt": "tomorrow"}, "expiresAt", None),
        ({"link": "javascript:alert(1)"}, "link", None),
    ],
)
def test_an_invalid_field_is_422_naming_it(receiver: Receiver, changes: dict[str, Any],
                                          field: str, error: str | None) -> None:
    [response] = receiver.exchange(post_signed(body(**changes)))
    assert response.status_code == 422
    answer = response.json()
    assert (answer["ok"], answer["field"]) == (False, field)
    assert answer["error"] == error if error else answer["error"].startswith(field)
    assert receiver.row_count() == 0


def encoded_word(text: str) -> str:
    return "=?utf-8?b?" + base64.b64encode(text.encode()).decode() + "?="


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"subject": "Hi\r\nBcc: victim@example.net"}, "subject"),
        ({"subject": "Hi\nBcc: victim@example.net"}, "subject"),
        ({"subject": "Hi\u2028Bcc: victim@example.net"}, "subject"),
        ({"subject": "Hi\x00there"}, "subject"),
        ({"subject": encoded_word("Hi\r\nBcc: victim@example.net")}, "subject"),
        ({"subject": "=?utf-8?q?Hi=0D=0ABcc:_victim@example.net?="}, "subject"),
        ({"to": "user@example.com\r\nBcc: victim@example.net"}, "to"),
        ({"fromLocalPart": "x\r\nBcc: y"}, "fromLocalPart"),
    ],
)
def test_header_injection_is_400_and_queues_nothing(receiver: Receiver,
                                                    changes: dict[str, Any],
                                                    field: str) -> None:
    [response] = receiver.exchange(post_signed(body(**changes)))
    assert response.status_code == 400
    answer = response.json()
    assert (answer["ok"], answer["field"]) == (False, field)
    assert answer["error"].startswith(f"{field} contains")
    assert receiver.row_count() == 0


def test_a_required_signature_without_a_secret_is_503(receiver: Receiver,
                                                       engine: Engine) -> None:
    configure(engine, webhook_secret="")
    raw = body()
    unsigned, with_headers = receiver.exchange(post(raw), post_signed(raw))
    assert_refused(unsigned, 503, "webhook secret not configured")
    assert_refused(with_headers, 503, "webhook secret not configured")
    assert receiver.row_count() == 0


def test_unsigned_is_accepted_when_not_required_and_no_secret(receiver: Receiver,
                                                              engine: Engine) -> None:
    configure(engine, webhook_secret="", webhook_signature_required=False)
    [response] = receiver.exchange(post(body(), {"Content-Type": "application/json"}))
    assert response.status_code == 202
    assert receiver.row_count() == 1


def test_optional_signature_is_still_checked_when_presented(receiver: Receiver,
                                                            engine: Engine) -> None:
    configure(engine, webhook_signature_required=False)
    bad, unsigned = receiver.exchange(post_signed(body(), secret="wrong"), post(body()))
    assert_refused(bad, 401, "invalid signature")
    assert unsigned.status_code == 202
    assert receiver.row_count() == 1


def test_no_sender_domain_is_503(receiver: Receiver, engine: Engine) -> None:
    configure(engine, allowed_sender_domain="")
    [response] = receiver.exchange(post_signed(body()))
    assert_refused(response, 503, "sender domain not configured")
    assert receiver.row_count() == 0


def test_a_declared_body_over_the_limit_is_413(receiver: Receiver) -> None:
    raw = body(subject="x" * 400, token="t" * MAX_BODY)
    [response] = receiver.exchange(post_signed(raw))
    assert_refused(response, 413, f"payload too large (limit {MAX_BODY} bytes)")
    assert receiver.row_count() == 0


def test_a_streamed_body_over_the_limit_is_413_before_it_is_all_read(
        receiver: Receiver) -> None:
    produced: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:
        for index in range(100):
            produced.append(index)
            yield b" " * 1024

    def send(http: httpx.AsyncClient) -> Awaitable[httpx.Response]:
        request = http.build_request("POST", WEBHOOK, content=chunks())
        assert "content-length" not in request.headers
        assert request.headers["transfer-encoding"] == "chunked"
        return http.send(request)

    [response] = receiver.exchange(send)
    assert_refused(response, 413, f"payload too large (limit {MAX_BODY} bytes)")
    assert len(produced) <= MAX_BODY // 1024 + 2
    assert receiver.row_count() == 0


def test_past_the_rate_limit_is_429_with_retry_after(receiver: Receiver,
                                                     engine: Engine) -> None:
    configure(engine, rate_limit_per_minute=2)
    responses = receiver.exchange(*(post_signed(body(token=f"t{i}")) for i in range(3)))
    assert [r.status_code for r in responses] == [202, 202, 429]
    assert_refused(responses[2], 429, "rate limit exceeded")
    assert responses[2].headers["Retry-After"] == "30"  # one token per 30 s at 2/min
    assert receiver.row_count() == 2


def test_a_locked_database_is_503_with_retry_after(receiver: Receiver,
                                                   db_path: Path) -> None:
    raw = body()
    holder = sqlite3.connect(db_path, isolation_level=None)  # another process's writer
    try:
        holder.execute("BEGIN IMMEDIATE")
        [response] = receiver.exchange(post_signed(raw))
    finally:
        holder.close()  # closing rolls the open transaction back
    assert_refused(response, 503, "database unavailable, retry later")
    assert response.headers["Retry-After"] == "2"
    assert receiver.row_count() == 0
    [retried] = receiver.exchange(post_signed(raw))
    assert retried.status_code == 202 and receiver.row_count() == 1


def test_the_previous_secret_works_until_its_deadline(receiver: Receiver,
                                                      engine: Engine) -> None:
    configure(engine, webhook_secret="new-secret", webhook_secret_previous=SECRET,
              webhook_secret_previous_valid_until=NOW + 60)
    old, new = receiver.exchange(post_signed(body(token="a")),
                                 post_signed(body(token="b"), secret="new-secret"))
    assert (old.status_code, new.status_code) == (202, 202)
    receiver.clock.now = late = NOW + 61
    old, new = receiver.exchange(post_signed(body(token="c"), at=late),
                                 post_signed(body(token="d"), secret="new-secret", at=late))
    assert_refused(old, 401, "invalid signature")
    assert new.status_code == 202
    assert receiver.row_count() == 3


def test_from_local_part_needs_the_sender_policy(receiver: Receiver, engine: Engine) -> None:
    raw = body(fromLocalPart="support")
    default = body(fromLocalPart="no-reply")
    refused, accepted = receiver.exchange(post_signed(raw), post_signed(default))
    assert_refused(refused, 422, "fromLocalPart is not permitted by the sender policy",
                   "fromLocalPart")
    assert accepted.status_code == 202
    configure(engine, sender_allowlist=["support"])
    other = body(fromLocalPart="billing")
    listed, unlisted = receiver.exchange(post_signed(raw), post_signed(other))
    assert listed.status_code == 202
    assert unlisted.status_code == 422 and unlisted.json()["field"] == "fromLocalPart"
    configure(engine, allow_any_local_part=True)
    [anything] = receiver.exchange(post_signed(other))
    assert anything.status_code == 202
    assert [row.envelope_sender for row in receiver.rows()] == [
        f"no-reply@{DOMAIN}", f"support@{DOMAIN}", f"billing@{DOMAIN}"]


def test_a_settings_change_takes_effect_without_rebuilding_the_app(receiver: Receiver,
                                                                   engine: Engine) -> None:
    statuses: list[int] = []

    async def scenario(http: httpx.AsyncClient) -> None:
        statuses.append((await post_signed(body(token="a"))(http)).status_code)
        configure(engine, allowed_sender_domain="mail.example.net")
        statuses.append((await post_signed(body(token="b"))(http)).status_code)
        configure(engine, allowed_sender_domain="")
        statuses.append((await post_signed(body(token="c"))(http)).status_code)

    receiver.run(scenario)
    assert statuses == [202, 202, 503]
    assert [row.envelope_sender for row in receiver.rows()] == [
        f"no-reply@{DOMAIN}", "no-reply@mail.example.net"]


def test_health_unknown_paths_and_wrong_methods(receiver: Receiver) -> None:
    health, missing, wrong = receiver.exchange(
        lambda http: http.get("/healthz"), lambda http: http.post("/nowhere"),
        lambda http: http.get(WEBHOOK))
    assert (health.status_code, health.json()) == (200, {"ok": True, "database": "ok"})
    assert_refused(missing, 404, "not found")
    assert_refused(wrong, 405, "method not allowed")
    assert wrong.headers["Allow"] == "POST"
    assert receiver.row_count() == 0
