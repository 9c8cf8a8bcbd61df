"""Schemathesis over the receiver's and the admin API's published OpenAPI documents, in-process."""

from __future__ import annotations

import inspect
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import BaseSchema, Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.transport import Response
from schemathesis.python import asgi as schemathesis_asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import Engine, func, select
from starlette.applications import Starlette
from starlette.routing import Route

from mailapi import accounts, payload
from mailapi import queue as outbound
from mailapi.db import read_transaction, write_transaction
from mailapi.intake import RendererCache
from mailapi.models import admins, audit_log, outbound_queue, settings_revision
from mailapi.ratelimit import RateLimiter
from mailapi.settings import SettingsCache
from mailapi.signatures import sign
from panel import openapi as panel_openapi
from receiver import openapi as receiver_openapi
from receiver import webhook
from receiver.app import build_app
from receiver.groupcommit import GroupCommitter
from receiver.state import ReceiverState
from tests.panel.test_queue_view import add_message, fail_due
from tests.support.database import configure, migrated_engine
from tests.support.panel import Panel

SECRET = "fuzz-webhook-secret"
DOMAIN = "example.org"
WEBHOOK = receiver_openapi.WEBHOOK_PATH
MAX_BODY = 64 * 1024
# Every answer must be no 5xx, a documented status, the documented media type, headers and
# body: the documents describe what the apps really answer.
CONFORMANCE = [status_code_conformance, content_type_conformance, response_headers_conformance,
               response_schema_conformance]
CHECKS = [not_a_server_error, *CONFORMANCE]
MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]


def run_examples(strategy: st.SearchStrategy[Any], test: Callable[[Any], None], *,
                 examples: int) -> None:
    """`test` over `examples` draws, derandomized so every run (and CI) sees the same cases."""
    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(drawn=strategy)
    def run(drawn: Any) -> None:
        test(drawn)

    run()


def iso_now(offset: float = 0.0) -> str:
    return datetime.fromtimestamp(time.time() + offset, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def wire_body(case: Case) -> bytes:
    """The exact bytes schemathesis sends as `case`'s body (what a signature must cover)."""
    kwargs = case.as_transport_kwargs(base_url="http://testserver")
    body = requests.Request("POST", "http://testserver/", data=kwargs.get("data"),
                            json=kwargs.get("json")).prepare().body
    if body is None:
        return b""
    return body if isinstance(body, bytes) else body.encode("utf-8")


def signature_headers(raw: bytes, *, secret: str = SECRET, offset: float = 0.0
                      ) -> dict[str, str]:
    timestamp = iso_now(offset)
    return {"X-TransLife-Timestamp": timestamp,
            "X-TransLife-Signature": sign(secret, timestamp, raw)}


# --- the receiver -------------------------------------------------------------------------

@dataclass
class FuzzedReceiver:
    engine: Engine
    app: Starlette
    schema: BaseSchema
    statuses: Counter[int] = field(default_factory=Counter)
    accepted: dict[int, dict[str, Any]] = field(default_factory=dict)

    def record(self, response: Response) -> None:
        self.statuses[response.status_code] += 1
        if response.status_code == 202:
            answer = response.json()
            self.accepted[answer["queued_id"]] = answer

    def rows(self) -> dict[int, tuple[str, str]]:
        q = outbound_queue.c
        with read_transaction(self.engine) as connection:
            return {row.id: (row.recipient, row.subject)
                    for row in connection.execute(select(q.id, q.recipient, q.subject))}

    def assert_rows_only_from_202(self) -> None:
        """One row per distinct 202 answer (a repeat answers the same id), none otherwise."""
        rows = self.rows()
        assert set(rows) == set(self.accepted), (sorted(rows), sorted(self.accepted))
        for queue_id, answer in self.accepted.items():
            assert rows[queue_id][0] == answer["to"]


@pytest.fixture
def receiver(engine: Engine) -> Iterator[FuzzedReceiver]:
    configure(engine, webhook_secret=SECRET, allowed_sender_domain=DOMAIN,
              rate_limit_per_minute=0, allow_any_local_part=True)
    app = build_app(ReceiverState(
        engine=engine, settings=SettingsCache(engine, check_interval=0),
        renderers=RendererCache(), committer=GroupCommitter(engine, time.time),
        rate_limiter=RateLimiter(time.monotonic), clock=time.time, max_body_bytes=MAX_BODY))
    # Loaded from the app itself: what is fuzzed is the document the receiver publishes.
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    yield FuzzedReceiver(engine, app, schema)
    schemathesis_asgi.shutdown_lifespans()  # commits what is pending, stops the committer


def served_operations(app: Starlette) -> set[tuple[str, str]]:
    return {(route.path, method.lower()) for route in app.routes if isinstance(route, Route)
            for method in route.methods or () if method != "HEAD"}


def test_receiver_document_describes_its_routes_and_statuses(receiver: FuzzedReceiver
                                                            ) -> None:
    document = public_get(receiver, "/openapi.json")
    assert document["openapi"] == "3.1.0"
    documented = {(path, method) for path, item in document["paths"].items()
                  for method in item}
    assert documented == served_operations(receiver.app)
    # Every status the webhook's code can answer is documented, and nothing else is.
    code = inspect.getsource(webhook) + inspect.getsource(payload)
    answered = {"202"} | set(re.findall(r"(?:Refusal|PayloadError)\((\d{3})", code))
    assert set(document["paths"][WEBHOOK]["post"]["responses"]) == answered
    # Each of them, provoked for real, conforms to the document (503 included, which
    # not_a_server_error would count as a failure).
    operation = receiver.schema[WEBHOOK]["POST"]
    good = (b'{"type":"email_verification","to":"user@example.com","subject":"Hi",'
            b'"token":"123456","expiresAt":"' + iso_now(3600).encode() + b'"}')

    def send(raw: bytes, *, signed: bool = True) -> int:
        case = operation.Case(body={}, media_type="application/json")
        headers = {"Content-Type": "application/json",
                   **(signature_headers(raw) if signed else {})}
        response = case.call(data=raw, headers=headers)
        case.validate_response(response, checks=CONFORMANCE)
        receiver.record(response)
        return response.status_code

    assert send(good) == 202
    assert send(b"{") == 400
    assert send(good, signed=False) == 401
    assert send(good.replace(b'"Hi"', b'"Hi\\r\\nBcc: x@evil.example"')) == 400
    assert send(good.replace(b'"email_verification"', b'"sms"')) == 422
    assert send(b" " * (MAX_BODY + 1)) == 413
    configure(receiver.engine, ip_allowlist=["192.0.2.0/24"])
    assert send(good) == 403
    configure(receiver.engine, ip_allowlist=[], rate_limit_per_minute=1)
    assert [send(good), send(good)] == [202, 429]
    configure(receiver.engine, rate_limit_per_minute=0, allowed_sender_domain="")
    assert send(good) == 503
    configure(receiver.engine, webhook_secret="")
    assert send(good, signed=False) == 503
    receiver.assert_rows_only_from_202()


def public_get(receiver: FuzzedReceiver, path: str) -> Any:
    """GET through schemathesis' own ASGI client (no signature: the document is public)."""
    with schemathesis_asgi.get_client(receiver.app) as client:
        response = client.get(path)
    assert response.status_code == 200, response.text
    return response.json()


def future_expiry(drawn: tuple[Case, int]) -> Case:
    """Two thirds of the positive cases get a future expiresAt (and half of those a plain
    address), so the fuzzer gets past the first checks to rendering and storage."""
    case, choice = drawn
    if isinstance(case.body, dict) and choice:
        case.body["expiresAt"] = iso_now(3600)
        if choice == 2:
            case.body["to"] = "user@example.com"
    return case


@pytest.mark.parametrize("mode", MODES, ids=str)
def test_signed_fuzzed_webhooks_never_500_and_store_only_what_got_202(
        receiver: FuzzedReceiver, mode: GenerationMode) -> None:
    operation = receiver.schema[WEBHOOK]["POST"]
    strategy: st.SearchStrategy[Case] = operation.as_strategy(generation_mode=mode)
    if mode is GenerationMode.POSITIVE:
        strategy = st.tuples(strategy, st.sampled_from([0, 1, 2])).map(future_expiry)

    def check(case: Case) -> None:
        raw = wire_body(case)
        # Signed per generated body with the current time: the fuzzer gets past the
        # signature to the payload checks.
        response = case.call(data=raw, headers=signature_headers(raw))
        receiver.record(response)
        case.validate_response(response, checks=CHECKS)
        assert response.status_code in {202, 400, 413, 422}, response.text

    run_examples(strategy, check, examples=100)
    receiver.assert_rows_only_from_202()
    if mode is GenerationMode.POSITIVE:
        assert receiver.statuses[202] >= 5 and receiver.statuses[422] >= 5, receiver.statuses


def missigned(drawn: tuple[Case, str]) -> tuple[Case, dict[str, str]]:
    """Headers as generated, or a signature that is wrong in one way."""
    case, how = drawn
    raw = wire_body(case)
    headers = {
        "as generated": {},
        "wrong secret": signature_headers(raw, secret="not-" + SECRET),
        "stale": signature_headers(raw, offset=-301),
        "future": signature_headers(raw, offset=301),
        "other body": signature_headers(raw + b" "),
        "no timestamp": {"X-TransLife-Signature": signature_headers(raw)[
            "X-TransLife-Signature"]},
    }[how]
    return case, headers


@pytest.mark.parametrize("mode", MODES, ids=str)
def test_unsigned_or_missigned_fuzzed_webhooks_get_401_and_store_nothing(
        receiver: FuzzedReceiver, mode: GenerationMode) -> None:
    operation = receiver.schema[WEBHOOK]["POST"]
    ways = ["as generated", "wrong secret", "stale", "future", "other body", "no timestamp"]
    strategy = st.tuples(operation.as_strategy(generation_mode=mode),
                         st.sampled_from(ways)).map(missigned)

    def check(drawn: tuple[Case, dict[str, str]]) -> None:
        case, headers = drawn
        response = case.call(headers=headers)
        receiver.record(response)
        case.validate_response(response, checks=CHECKS)
        assert response.status_code == 401, response.text

    run_examples(strategy, check, examples=60)
    assert receiver.rows() == {}


@pytest.mark.parametrize("path", ["/healthz", "/openapi.json"])
def test_receiver_get_operations_conform(receiver: FuzzedReceiver, path: str) -> None:
    # Positive only: an operation without parameters has no invalid request to generate.
    operation = receiver.schema[path]["GET"]

    def check(case: Case) -> None:
        case.call_and_validate(checks=CHECKS)

    run_examples(operation.as_strategy(), check, examples=5)


# --- the admin API ------------------------------------------------------------------------

def admin_cases() -> list[tuple[str, str, GenerationMode]]:
    """Every documented operation, positive and negative; negative needs something to break
    (a parameter, a body or the API key: only the public document itself has none)."""
    cases = []
    for path, item in panel_openapi.document()["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            breakable = ("parameters" in item or "parameters" in operation
                         or "requestBody" in operation or operation.get("security") != [])
            cases += [(path, method, mode) for mode in MODES
                      if breakable or mode is GenerationMode.POSITIVE]
    return cases


ADMIN_CASES = admin_cases()


@dataclass
class FuzzedPanel:
    panel: Panel
    schema: BaseSchema
    key: str

    def snapshot(self) -> tuple[Any, ...]:
        """What a request could change: settings, audit log, admins, queue."""
        q, a = outbound_queue.c, admins.c
        with read_transaction(self.panel.engine) as connection:
            return (
                connection.execute(select(settings_revision.c.revision)).scalar_one(),
                connection.execute(select(func.count()).select_from(audit_log)).scalar_one(),
                sorted(connection.execute(select(a.id, a.username, a.disabled)).all()),
                sorted(connection.execute(select(q.id, q.state, q.next_attempt_at)).all()),
            )


@pytest.fixture(scope="module")
def admin_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzedPanel]:
    """One panel for every admin API operation: a throwaway database, destroyed freely."""
    directory = tmp_path_factory.mktemp("admin-api")
    engine = migrated_engine(directory / "mail-api.sqlite3", durability="NORMAL")
    # schemathesis' in-process client calls itself "testserver".
    panel = Panel(engine, directory, extra_config='allowed_hosts = ["localhost", "testserver"]')
    panel.create_admin("admin")
    panel.create_admin("second")
    with write_transaction(engine) as connection:
        _, key = accounts.create_api_key(connection, "fuzz", "admin", expires_at=None,
                                         actor="test", source="test", now=panel.clock())
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", panel.app)
    yield FuzzedPanel(panel, schema, key)
    schemathesis_asgi.shutdown_lifespans()
    panel.close()
    engine.dispose()


def seed_queue(panel: Panel) -> list[int]:
    """Failed, leased and queued messages for the queue operations to act on; their ids."""
    base = f"m{time.monotonic_ns()}"
    for name in ("a", "b"):
        add_message(panel, base + name)
    fail_due(panel)
    for name in ("c", "d"):
        add_message(panel, base + name)
    outbound.claim_batch(panel.engine, now=panel.clock(), limit=1, lease_seconds=600,
                         max_age_seconds=86_400)
    with read_transaction(panel.engine) as connection:
        return list(connection.execute(select(outbound_queue.c.id)).scalars())


def with_known_ids(operation: Any, mode: GenerationMode, ids: list[int]
                   ) -> st.SearchStrategy[Case]:
    """Generated cases, and as many whose path ids name rows that exist."""
    generated: st.SearchStrategy[Case] = operation.as_strategy(generation_mode=mode)
    names = re.findall(r"\{(\w+)\}", operation.path)
    if not names:
        return generated
    known = st.sampled_from(ids).flatmap(lambda number: operation.as_strategy(
        generation_mode=mode, path_parameters=dict.fromkeys(names, number)))
    return st.one_of(generated, known)


@pytest.mark.parametrize(("path", "method", "mode"), ADMIN_CASES,
                         ids=[f"{m.upper()} {p} {mode}" for p, m, mode in ADMIN_CASES])
def test_admin_api_operations_conform_and_refusals_change_nothing(
        admin_api: FuzzedPanel, path: str, method: str, mode: GenerationMode) -> None:
    operation = admin_api.schema[path][method.upper()]
    statuses: Counter[int] = Counter()
    ids = (seed_queue(admin_api.panel) if path.startswith("/api/queue/")
           else [1, 2])  # the two admins

    def check(case: Case) -> None:
        before = admin_api.snapshot()
        # An admin-scope key always: the fuzzing is of the requests, not of the key.
        response = case.call(headers={"Authorization": f"Bearer {admin_api.key}"})
        statuses[response.status_code] += 1
        case.validate_response(response, checks=CHECKS)
        if method == "get" or not 200 <= response.status_code < 300:
            assert admin_api.snapshot() == before, response.text

    run_examples(with_known_ids(operation, mode, ids), check,
                 examples=25 if path == "/api/admins" and method == "post" else 40)
    assert statuses, "no request was sent"
