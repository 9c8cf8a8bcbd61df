"""Hostile admin API input: never a 500, all or nothing, and nothing a page shows unescaped."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select

from mailapi import accounts
from mailapi.db import read_transaction, write_transaction
from mailapi.models import admins, audit_log, outbound_queue
from mailapi.settings import SECRET_KEYS, SETTING_KEYS, Settings, load_settings
from mailapi.settings.definitions import validate_value
from mailapi.settings.store import MASK
from panel.views import sender as sender_view
from panel.views import settings as settings_view
from panel.views import smtp as smtp_view
from panel.views import templates as templates_view
from tests.panel.test_queue_view import add_message, fail_due
from tests.support.panel import Panel, PanelClient

# Markup that must only ever reach a page escaped; each is unmistakable in a page's source.
MARKUP = ['<script>alert("x1")</script>', '"><img src=x onerror=alert(2)>',
          "</textarea><b>x3</b>", "'><svg/onload=alert(4)>", "<a href=javascript:alert(5)>"]
RAW_MARKERS = ("<script>alert(", "<img src=x", "</textarea><b>", "<svg/onload", "<a href=java")
PIECES = [*MARKUP, "{{ 7*7 }}", "{% raw %}", "&amp;", "&lt;", "\\", '"', "'", "\r\n", "\x00",
          "\x1b", "\u2028", "\u202e", "\ufeff", "ü", "\U0001f600", " ", "a", "-", ".", "@",
          "127.0.0.1", "http://[", "https://a\uff03b/", "10.0.0.0/8", "example.com", "/path"]
TEXT = st.lists(st.sampled_from(PIECES) | st.text(max_size=5), max_size=6).map("".join)
NUMBERS = st.one_of(
    st.integers(), st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([10**400, -(10**400), 2**63, 2**64, -1, 0, 1, 1e308, -0.0, 5e-324]))
JSON = st.recursive(st.none() | st.booleans() | NUMBERS | TEXT,
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(TEXT, inner, max_size=3), max_leaves=6)
KINDS: dict[str, st.SearchStrategy[Any]] = {
    "bool": st.booleans(), "int": st.integers(1, 3600) | NUMBERS, "float": NUMBERS,
    "str": TEXT | st.sampled_from(PIECES),
    "list[str]": st.lists(TEXT, max_size=3),
}
KIND_OF = {key: str(Settings.__dataclass_fields__[key].type) for key in SETTING_KEYS}


@dataclass
class Admin:
    """The panel in-process: an admin-scope key for the API, a logged-in browser for pages."""

    panel: Panel
    api: PanelClient
    browser: PanelClient
    key: str

    @property
    def engine(self) -> Engine:
        return self.panel.engine

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.key}", **kwargs.pop("headers", {})}
        response = self.api.request(method, path, headers=headers, **kwargs)
        assert response.status_code < 500, (method, path, response.status_code, response.text)
        if response.status_code not in (307, 308):
            assert response.headers["content-type"] == "application/json"
            assert response.json()["ok"] is (response.status_code < 300)
        return response

    def audit_count(self) -> int:
        with read_transaction(self.engine) as connection:
            return int(connection.execute(select(func.count()).select_from(audit_log))
                       .scalar_one())

    def settings(self) -> Settings:
        with read_transaction(self.engine) as connection:
            return load_settings(connection)

    def page(self, path: str) -> str:
        """A panel page as the browser gets it, checked for markup that escaped escaping."""
        response = self.browser.get(path)
        assert response.status_code == 200, (path, response.status_code, response.text[:300])
        for marker in RAW_MARKERS:
            assert marker not in response.text, (path, marker)
        return response.text


@pytest.fixture
def admin(engine: Engine, tmp_path: Path) -> Iterator[Admin]:
    panel = Panel(engine, tmp_path)
    browser = panel.logged_in("admin")
    with write_transaction(engine) as connection:
        _, key = accounts.create_api_key(connection, "hostile", "admin", expires_at=None,
                                         actor="test", source="test", now=panel.clock())
    yield Admin(panel, panel.client(), browser, key)
    panel.close()


def pages_showing(key: str) -> list[str]:
    """The page that shows (and edits) a setting; every change is also on the audit page."""
    for view, path in ((settings_view, "/settings"), (smtp_view, "/smtp"),
                       (sender_view, "/sender"), (templates_view, "/templates")):
        if key in view.KEYS:
            return [path, "/audit"]
    if key.startswith(("imap", "pop3")):
        return [f"/protocols/{key.split('_', 1)[0]}", "/audit"]
    return ["/", "/audit"]


@st.composite
def settings_bodies(draw: st.DrawFn) -> bytes:
    """Mostly objects of real setting names to typed or arbitrary values; sometimes junk."""
    shape = draw(st.sampled_from(["settings", "settings", "markup", "markup", "unknown key",
                                  "json", "bytes"]))
    if shape == "bytes":
        return draw(st.binary(max_size=40) | st.sampled_from(
            [b"", b"{", b'{"smtp_port": NaN}', b'{"smtp_port": Infinity}', b"\xff\xfe",
             b'{"smtp_host": "\\ud800"}', b"[" * 5000 + b"]" * 5000,
             b'{"smtp_port": 1' + b"0" * 5000 + b"}"]))
    if shape == "json":
        return json.dumps(draw(JSON)).encode()
    if shape == "markup":  # text settings carrying markup: stored when valid, then shown
        keys = st.sampled_from([key for key, kind in KIND_OF.items() if kind == "str"])
        text = st.tuples(TEXT, st.sampled_from(MARKUP), TEXT).map("".join)
        return json.dumps(draw(st.dictionaries(keys, text, min_size=1, max_size=2))).encode()
    body: dict[str, Any] = {}
    for key in draw(st.lists(st.sampled_from(SETTING_KEYS), min_size=1, max_size=3,
                             unique=True)):
        typed = KINDS[KIND_OF[key]]
        masked = st.just(MASK) if key in SECRET_KEYS else typed
        body[key] = draw(st.one_of(typed, typed, typed, masked, JSON))
    if shape == "unknown key":
        body[draw(TEXT)] = draw(JSON)
    return json.dumps(body).encode()


def expected_changes(raw: bytes) -> dict[str, Any] | None:
    """What a PATCH must store, validated as the settings definitions say; None: refused."""
    try:
        body = json.loads(raw)
        changes = {key: validate_value(key, value) for key, value in body.items()
                   if not (key in SECRET_KEYS and value == MASK)}
    except (ValueError, AttributeError, RecursionError):  # SettingsError is a ValueError
        return None
    return changes


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(raw=settings_bodies())
@example(raw=b'{"webhook_secret_previous_valid_until": 1' + b"0" * 400 + b"}")
@example(raw=b'{"public_web_url": "http://["}')
@example(raw=json.dumps({"public_web_url": "https://a\uff03b/"}).encode())
@example(raw=json.dumps({"smtp_host": MARKUP[0].replace(" ", ""),
                         "sender_display_name": MARKUP[1], "smtp_username": MARKUP[2],
                         "imap_username": MARKUP[3]}).encode())
@example(raw=json.dumps({"template_email_verification_subject": MARKUP[0] + "{{ subject }}",
                         "template_email_verification_text": MARKUP[2]}).encode())
@example(raw=b'{"smtp_port": 2525, "smtp_security": "carrier-pigeon"}')
@example(raw=b'{"retry_base_seconds": 600, "retry_max_seconds": 60}')
def test_patch_settings_is_all_or_nothing_and_renders_escaped(admin: Admin, raw: bytes
                                                               ) -> None:
    before, audited = admin.settings(), admin.audit_count()
    response = admin.call("PATCH", "/api/settings", content=raw,
                          headers={"Content-Type": "application/json"})
    after = admin.settings()
    if response.status_code != 200:
        assert response.status_code in (400, 413, 422), response.text
        assert after == before  # nothing stored, the revision unchanged
        assert admin.audit_count() == audited
        return
    changes = expected_changes(raw)
    assert changes is not None, f"accepted a body the definitions refuse: {raw[:200]!r}"
    for key, value in changes.items():
        assert getattr(after, key) == value, key
    changed = {key for key, value in changes.items() if getattr(before, key) != value}
    assert after.revision == before.revision + (1 if changed else 0)
    assert admin.audit_count() == audited + len(changed)
    for key in sorted(changed)[:2]:
        for path in pages_showing(key):
            admin.page(path)


USERNAMES = st.one_of(
    st.lists(st.sampled_from([*PIECES, "admin", "Zoë", "ops.bot", "x_y", "a-b", "root@host"]),
             min_size=1, max_size=4).map("".join),
    st.text(max_size=70),
    st.sampled_from(["admin", "ADMIN", "a" * 64, "a" * 65, "admin\n", " admin", "ädmin",
                     "\u0430dmin", "admin\u200b", "0day", "_x", "x" * 63 + "\u0301"]))


@settings(max_examples=30, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(username=USERNAMES, password=st.sampled_from(
    ["correct horse battery staple", "short", "x" * 2000, "pässwörd with ünïcode and \x00"]))
@example(username=MARKUP[0], password="correct horse battery staple")
@example(username="ops.bot", password="correct horse battery staple")
def test_admin_names_with_controls_or_markup_are_refused_or_shown_escaped(
        admin: Admin, username: str, password: str) -> None:
    def names() -> list[tuple[int, str, bool]]:
        a = admins.c
        with read_transaction(admin.engine) as connection:
            return sorted((row.id, row.username, row.disabled) for row in connection.execute(
                select(a.id, a.username, a.disabled)))

    before, audited = names(), admin.audit_count()
    response = admin.call("POST", "/api/admins",
                          json={"username": username, "password": password})
    if response.status_code != 201:
        assert response.status_code in (409, 422), response.text
        assert names() == before and admin.audit_count() == audited
        return
    assert response.json()["admin"]["username"] == username
    assert sorted(name for _, name, _ in names()) == sorted(
        [*(name for _, name, _ in before), username])
    for path in ("/admins", "/audit"):
        assert username in admin.page(path)  # accepted names are plain: shown as they are


QUEUE_IDS = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.text(max_size=12),
    st.sampled_from(["0", "00001", "1e3", "0x1", "\u0661", "\uff11", "1 ", " 1", "1\x00",
                     "..", "%2e%2e", "1/retry", "", "9" * 30, "+1", "-0", "1;DROP TABLE",
                     "2**63", str(2**63 - 1), str(2**63), "\uff11\uff12"]))
QUEUE_CALLS = [("GET", "/api/queue/{}"), ("DELETE", "/api/queue/{}"),
               ("POST", "/api/queue/{}/retry")]


def queue_rows(admin: Admin) -> list[tuple[int, str, float]]:
    q = outbound_queue.c
    with read_transaction(admin.engine) as connection:
        return sorted((row.id, row.state, row.next_attempt_at) for row in connection.execute(
            select(q.id, q.state, q.next_attempt_at)))


_SEEDS = itertools.count()


def ensure_failed_message(admin: Admin) -> None:
    """Keep something for delete and retry to act on: one failed, one queued message."""
    states = {state for _, state, _ in queue_rows(admin)}
    if "failed" not in states:
        add_message(admin.panel, f"failed-{next(_SEEDS)}")
        fail_due(admin.panel)
    if "queued" not in states:
        add_message(admin.panel, f"queued-{next(_SEEDS)}")


@settings(max_examples=80, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(call=st.sampled_from(QUEUE_CALLS), queue_id=QUEUE_IDS | st.sampled_from(["1", "2", "3"]))
def test_hostile_queue_ids_act_on_that_message_or_nothing(admin: Admin, call: tuple[str, str],
                                                          queue_id: str) -> None:
    ensure_failed_message(admin)
    before = queue_rows(admin)
    method, template = call
    response = admin.call(method, template.format(quote(queue_id, safe="")))
    after = queue_rows(admin)
    if method == "GET" or not 200 <= response.status_code < 300:
        assert after == before, response.text
        return
    # Only a canonical number names a message, and only that message changed.
    acted = int(queue_id)
    assert queue_id.isascii() and queue_id.isdecimal()
    assert {row for row in before if row[0] != acted} == {row for row in after
                                                         if row[0] != acted}
    if method == "DELETE":
        assert acted in {row[0] for row in before} - {row[0] for row in after}
    page = admin.page("/queue")
    assert "<script>" not in page


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(params=st.dictionaries(st.sampled_from(["state", "recipient", "limit", "offset",
                                               "x"]), TEXT | QUEUE_IDS, max_size=4))
def test_hostile_queue_filters_answer_a_listing_or_422(admin: Admin, params: dict[str, str]
                                                       ) -> None:
    ensure_failed_message(admin)
    try:
        response = admin.call("GET", "/api/queue", params=params)
    except (httpx.InvalidURL, UnicodeEncodeError):
        return  # the client itself will not put it in a URL
    assert response.status_code in (200, 422), response.text
    if response.status_code == 422:
        assert response.json()["field"] in params


FOREIGN = ["http://[", "https://a\uff03b", "null", "", "http://localhost:80",
           "https://evil.example", "http://[::1", "http://localhost@evil.example",
           "javascript:alert(1)", "http://evil.example/http://localhost"]
ORIGINS = st.one_of(
    st.sampled_from([*FOREIGN, "http://localhost"]),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=30))


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(origin=ORIGINS, fetch_site=st.none() | st.sampled_from(
    ["same-origin", "none", "cross-site", "same-site", "", "SAME-ORIGIN"]))
@example(origin="http://[", fetch_site=None)
def test_hostile_origins_on_a_change_are_403_or_allowed_never_500(
        admin: Admin, origin: str, fetch_site: str | None) -> None:
    ensure_failed_message(admin)
    # As raw bytes (UTF-8): what a hostile client can put on the wire, whatever httpx allows.
    headers = {"Origin": origin.encode(),
               **({"Sec-Fetch-Site": fetch_site} if fetch_site is not None else {})}
    before = queue_rows(admin)
    response = admin.call("POST", "/api/queue/purge-failed", headers=headers)
    assert response.status_code in (200, 403), response.text
    if fetch_site not in (None, "same-origin", "none") or origin in FOREIGN:
        assert response.status_code == 403, (origin, fetch_site)
    elif origin == "http://localhost":
        assert response.status_code == 200, (origin, fetch_site)
    if response.status_code == 403:
        assert queue_rows(admin) == before
