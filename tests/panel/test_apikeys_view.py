"""The API keys page: a key is shown once, stored as a hash, revocable, and expires."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from mailapi import accounts
from mailapi.db import read_transaction
from mailapi.models import api_keys, audit_log
from tests.support.panel import Panel, PanelClient

DAY = 86400
PLAIN_KEY = re.compile(r'value="(mk_[A-Za-z0-9_-]{43})"')


def audit_rows(engine: Engine, action: str) -> list[dict[str, Any]]:
    with read_transaction(engine) as connection:
        rows = connection.execute(select(audit_log).where(audit_log.c.action == action))
        return [dict(row._mapping) for row in rows]


def stored_keys(engine: Engine) -> list[dict[str, Any]]:
    with read_transaction(engine) as connection:
        return [dict(row._mapping) for row in connection.execute(select(api_keys))]


def authenticate(panel: Panel, plain: str, *, later: float = 0.0) -> accounts.ApiKey | None:
    with read_transaction(panel.engine) as connection:
        return accounts.authenticate_api_key(connection, plain, now=panel.clock() + later)


def create_key(client: PanelClient, **fields: str) -> tuple[str, str]:
    """Create a key through the form; returns (plain key, the page that showed it)."""
    client.page("/api-keys")
    form = {"name": "monitoring", "scope": "read", "expiry": "never", "expires_on": ""}
    form.update(fields)
    response = client.post("/api-keys", form)
    assert response.status_code == 200, response.text[:500]
    found = PLAIN_KEY.search(response.text)
    assert found is not None
    return found.group(1), response.text


def test_a_new_key_is_shown_once_and_only_in_the_creation_response(
        panel: Panel, admin_client: PanelClient) -> None:
    admin_client.page("/api-keys")
    response = admin_client.post("/api-keys", {"name": "monitoring", "scope": "read",
                                               "expiry": "30", "expires_on": ""})
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert "it will not be shown again" in response.text
    found = PLAIN_KEY.search(response.text)
    assert found is not None
    plain = found.group(1)
    listing = admin_client.page("/api-keys")
    assert plain not in listing.text
    assert f"<code>{plain[:9]}…</code>" in listing.text
    assert "read-only" in listing.text and "badge state-active" in listing.text
    key = authenticate(panel, plain)
    assert key is not None and key.scope == "read" and key.created_by == "admin"
    assert key.expires_at == panel.clock() + 30 * DAY
    [row] = audit_rows(panel.engine, "apikey.created")
    assert (row["actor"], row["source"], row["detail"]) == ("admin", "127.0.0.1", "scope=read")
    assert plain not in (row["target"] + (row["detail"] or ""))


def test_only_a_hash_of_the_key_reaches_the_database(panel: Panel, admin_client: PanelClient,
                                                     db_path: Path) -> None:
    plain, _page = create_key(admin_client, scope="admin")
    [row] = stored_keys(panel.engine)
    assert row["key_hash"] == hashlib.sha256(plain.encode()).hexdigest()
    assert row["scope"] == "admin"
    # The main file, the WAL and anything else SQLite keeps beside it.
    files = sorted(db_path.parent.glob(db_path.name + "*"))
    assert db_path in files
    secret_part = plain[len(row["prefix"]):].encode()
    for path in files:
        content = path.read_bytes()
        assert plain.encode() not in content, path
        assert secret_part not in content, path


def test_a_revoked_key_stops_working(panel: Panel, admin_client: PanelClient) -> None:
    plain, _page = create_key(admin_client, name="ci")
    key = authenticate(panel, plain)
    assert key is not None
    admin_client.page("/api-keys")
    response = admin_client.post(f"/api-keys/{key.id}/revoke")
    assert response.status_code == 303 and response.headers["location"] == "/api-keys"
    listing = admin_client.page("/api-keys")
    assert f"API key ci ({key.prefix}…) revoked" in listing.text
    assert "badge state-revoked" in listing.text
    assert f"/api-keys/{key.id}/revoke" not in listing.text
    assert authenticate(panel, plain) is None
    [row] = audit_rows(panel.engine, "apikey.revoked")
    assert (row["actor"], row["target"]) == ("admin", f"ci ({key.prefix}…)")


def test_a_key_with_an_expiry_date_expires(panel: Panel, admin_client: PanelClient) -> None:
    plain, page = create_key(admin_client, expiry="date", expires_on="2026-10-01")
    assert "2026-10-01 00:00:00 UTC" in page
    midnight = 1_790_812_800.0  # 2026-10-01T00:00:00Z; the clock starts ten days before
    assert authenticate(panel, plain, later=midnight - panel.clock() - 1) is not None
    assert "badge state-active" in admin_client.page("/api-keys").text
    panel.clock.now = midnight  # the old session timed out long ago: log in again
    assert "badge state-expired" in panel.logged_in("admin").page("/api-keys").text
    assert authenticate(panel, plain) is None


def test_invalid_keys_are_refused_inline_and_nothing_is_saved(
        panel: Panel, admin_client: PanelClient) -> None:
    admin_client.page("/api-keys")
    cases = [
        ({"name": "  ", "scope": "read", "expiry": "never"}, "name: say what the key is for"),
        ({"name": "x", "scope": "root", "expiry": "never"}, "scope: choose read-only or admin"),
        ({"name": "x", "scope": "read", "expiry": "date", "expires_on": "2020-01-01"},
         "the date must be in the future"),
        ({"name": "x", "scope": "read", "expiry": "date", "expires_on": "15/09/2030"},
         "enter the date as YYYY-MM-DD"),
        ({"name": "x", "scope": "read", "expiry": "never", "expires_on": "2030-01-01"},
         "a date was entered"),
        ({"name": "x", "scope": "read", "expiry": "7"}, "choose one of the offered periods"),
        ({"name": "bad\u202ename", "scope": "read", "expiry": "never"},
         "name: 1 to 128 printable characters"),
    ]
    for form, message in cases:
        response = admin_client.post("/api-keys", form)
        assert response.status_code == 400, form
        assert message in response.text, form
        assert PLAIN_KEY.search(response.text) is None
    assert stored_keys(panel.engine) == []
    assert audit_rows(panel.engine, "apikey.created") == []


def test_key_names_with_html_are_shown_escaped(panel: Panel,
                                               admin_client: PanelClient) -> None:
    _plain, page = create_key(admin_client, name="<script>alert(1)</script>")
    listing = admin_client.page("/api-keys").text
    for text in (page, listing):
        assert "<script>alert(1)" not in text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_posts_without_the_csrf_token_are_refused(panel: Panel,
                                                  admin_client: PanelClient) -> None:
    plain, _page = create_key(admin_client)
    key = authenticate(panel, plain)
    assert key is not None
    admin_client.page("/api-keys")
    refused_create = admin_client.post("/api-keys", {"name": "sneaky", "scope": "admin",
                                                     "expiry": "never"}, csrf=False)
    refused_revoke = admin_client.post(f"/api-keys/{key.id}/revoke", csrf=False)
    assert refused_create.status_code == refused_revoke.status_code == 403
    assert PLAIN_KEY.search(refused_create.text) is None
    assert [row["name"] for row in stored_keys(panel.engine)] == ["monitoring"]
    assert authenticate(panel, plain) is not None


def test_revoking_an_unknown_key_is_reported(panel: Panel, admin_client: PanelClient) -> None:
    admin_client.page("/api-keys")
    response = admin_client.post("/api-keys/42/revoke")
    assert response.status_code == 303
    assert "no API key with id 42" in admin_client.page("/api-keys").text
    assert panel.client().get("/api-keys").status_code == 303
