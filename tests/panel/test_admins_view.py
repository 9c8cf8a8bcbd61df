"""The Admins page: creating, disabling, enabling, password resets, rotating the secret."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select

from mailapi import accounts
from mailapi.db import read_transaction
from mailapi.models import audit_log, panel_secret
from tests.support.panel import PASSWORD, Panel, PanelClient

NEW_PASSWORD = "a different long passphrase"


def audit_rows(engine: Engine, action: str) -> list[dict[str, Any]]:
    with read_transaction(engine) as connection:
        rows = connection.execute(select(audit_log).where(audit_log.c.action == action)
                                  .order_by(audit_log.c.id))
        return [dict(row._mapping) for row in rows]


def admin_named(engine: Engine, username: str) -> accounts.Admin:
    with read_transaction(engine) as connection:
        admin = accounts.find_admin(connection, username)
    assert admin is not None
    return admin


def usernames(engine: Engine) -> list[str]:
    with read_transaction(engine) as connection:
        return [admin.username for admin in accounts.list_admins(connection)]


def logged_out(client: PanelClient) -> bool:
    response = client.get("/")
    return response.status_code == 303 and response.headers["location"].startswith("/login")


def test_the_page_lists_admins_and_needs_a_session(panel: Panel,
                                                    admin_client: PanelClient) -> None:
    panel.create_admin("bob")
    page = admin_client.page("/admins")
    assert "admin <span class=\"muted\">(you)</span>" in page.text
    assert "bob" in page.text and page.text.count("badge ok\">active") == 2
    assert "Rotate the secret and log everyone out" in page.text
    assert page.headers["cache-control"] == "no-store"
    anonymous = panel.client().get("/admins")
    assert anonymous.status_code == 303
    assert anonymous.headers["location"] == "/login?next=%2Fadmins"


def test_creating_an_admin_who_can_then_log_in(panel: Panel,
                                               admin_client: PanelClient) -> None:
    admin_client.page("/admins")
    response = admin_client.post("/admins", {"username": "carol", "password": NEW_PASSWORD,
                                             "password_confirm": NEW_PASSWORD})
    assert response.status_code == 303 and response.headers["location"] == "/admins"
    page = admin_client.page("/admins")
    assert "Admin carol created." in page.text
    [row] = audit_rows(panel.engine, "admin.created")[-1:]
    assert (row["actor"], row["target"], row["source"]) == ("admin", "carol", "127.0.0.1")
    assert panel.client().login("carol", NEW_PASSWORD).status_code == 303


def test_invalid_new_admins_are_refused_inline_and_nothing_is_saved(
        panel: Panel, admin_client: PanelClient) -> None:
    admin_client.page("/admins")
    differ = admin_client.post("/admins", {"username": "dave", "password": NEW_PASSWORD,
                                           "password_confirm": NEW_PASSWORD + "x"})
    assert differ.status_code == 400
    assert "The two passwords differ" in differ.text
    assert 'value="dave"' in differ.text and NEW_PASSWORD not in differ.text
    short = admin_client.post("/admins", {"username": "dave", "password": "short",
                                          "password_confirm": "short"})
    assert short.status_code == 400 and "at least 12 characters" in short.text
    taken = admin_client.post("/admins", {"username": "ADMIN", "password": NEW_PASSWORD,
                                          "password_confirm": NEW_PASSWORD})
    assert taken.status_code == 400 and "already exists" in taken.text
    html = admin_client.post("/admins", {"username": "<script>alert(1)</script>",
                                         "password": NEW_PASSWORD,
                                         "password_confirm": NEW_PASSWORD})
    assert html.status_code == 400 and "user name: 1 to 64 characters" in html.text
    assert "<script>alert(1)" not in html.text
    assert 'value="&lt;script&gt;alert(1)&lt;/script&gt;"' in html.text
    assert usernames(panel.engine) == ["admin"]
    assert [row["target"] for row in audit_rows(panel.engine, "admin.created")] == ["admin"]


def test_disabling_ends_the_live_session_and_enabling_restores_login(
        panel: Panel, admin_client: PanelClient) -> None:
    bob = panel.logged_in("bob")
    bob_id = admin_named(panel.engine, "bob").id
    assert not logged_out(bob)
    admin_client.page("/admins")
    response = admin_client.post(f"/admins/{bob_id}/disable")
    assert response.status_code == 303 and response.headers["location"] == "/admins"
    assert "Admin bob disabled; their sessions have ended." in admin_client.page("/admins").text
    assert logged_out(bob)
    assert panel.client().login("bob").status_code == 401
    assert admin_client.post(f"/admins/{bob_id}/enable").status_code == 303
    assert not admin_named(panel.engine, "bob").disabled
    assert panel.client().login("bob").status_code == 303
    actions = [(row["actor"], row["target"]) for name in ("admin.disabled", "admin.enabled")
               for row in audit_rows(panel.engine, name)]
    assert actions == [("admin", "bob"), ("admin", "bob")]


def test_the_last_active_admin_cannot_be_disabled(panel: Panel,
                                                  admin_client: PanelClient) -> None:
    own_id = admin_named(panel.engine, "admin").id
    page = admin_client.page("/admins")
    assert "last active admin" in page.text and f"/admins/{own_id}/disable" not in page.text
    response = admin_client.post(f"/admins/{own_id}/disable")
    assert response.status_code == 303 and response.headers["location"] == "/admins"
    shown = admin_client.page("/admins")
    assert "flash-error" in shown.text
    assert "admin is the last active admin and cannot be disabled" in shown.text
    assert not admin_named(panel.engine, "admin").disabled
    assert audit_rows(panel.engine, "admin.disabled") == []


def test_disabling_yourself_needs_another_active_admin_and_logs_you_out(
        panel: Panel, admin_client: PanelClient) -> None:
    panel.create_admin("bob")
    own_id = admin_named(panel.engine, "admin").id
    page = admin_client.page("/admins")
    assert "Disable (logs you out)" in page.text
    response = admin_client.post(f"/admins/{own_id}/disable")
    assert response.status_code == 303 and response.headers["location"] == "/login?bye=1"
    assert logged_out(admin_client)
    assert admin_named(panel.engine, "admin").disabled
    assert not admin_named(panel.engine, "bob").disabled


def test_a_password_reset_ends_the_admins_sessions(panel: Panel,
                                                   admin_client: PanelClient) -> None:
    bob = panel.logged_in("bob")
    bob_id = admin_named(panel.engine, "bob").id
    form = admin_client.page(f"/admins/{bob_id}/password")
    assert "Setting a new password for <strong>bob</strong>" in form.text
    mismatch = admin_client.post(f"/admins/{bob_id}/password",
                                 {"password": NEW_PASSWORD, "password_confirm": "other"})
    assert mismatch.status_code == 400 and "The two passwords differ" in mismatch.text
    assert not logged_out(bob)
    response = admin_client.post(f"/admins/{bob_id}/password",
                                 {"password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD})
    assert response.status_code == 303 and response.headers["location"] == "/admins"
    assert "Password of bob changed; 1 session(s) of theirs ended." in admin_client.page(
        "/admins").text
    assert logged_out(bob)
    assert panel.client().login("bob", PASSWORD).status_code == 401
    assert panel.client().login("bob", NEW_PASSWORD).status_code == 303
    [row] = audit_rows(panel.engine, "admin.password_reset")
    assert (row["actor"], row["target"], row["detail"]) == ("admin", "bob",
                                                            "1 session(s) ended")


def test_resetting_your_own_password_logs_you_out(panel: Panel,
                                                  admin_client: PanelClient) -> None:
    own_id = admin_named(panel.engine, "admin").id
    page = admin_client.page(f"/admins/{own_id}/password")
    assert "you will be logged out" in page.text
    response = admin_client.post(f"/admins/{own_id}/password",
                                 {"password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD})
    assert response.status_code == 303 and response.headers["location"] == "/login?bye=1"
    assert logged_out(admin_client)


def test_rotating_the_session_secret_logs_everyone_out(panel: Panel,
                                                       admin_client: PanelClient) -> None:
    bob = panel.logged_in("bob")
    with read_transaction(panel.engine) as connection:
        before = connection.execute(select(panel_secret)).one()._mapping
    admin_client.page("/admins")
    unconfirmed = admin_client.post("/rotate-session-secret")
    assert unconfirmed.status_code == 303
    assert "Tick the box to confirm" in admin_client.page("/admins").text
    assert not logged_out(bob)
    response = admin_client.post("/rotate-session-secret", {"confirm": "on"})
    assert response.status_code == 303 and response.headers["location"] == "/login?bye=1"
    assert logged_out(admin_client) and logged_out(bob)
    with read_transaction(panel.engine) as connection:
        after = connection.execute(select(panel_secret)).one()._mapping
    assert after["generation"] == before["generation"] + 1
    assert after["session_secret"] != before["session_secret"]
    [row] = audit_rows(panel.engine, "session_secret.rotated")
    assert (row["actor"], row["detail"]) == ("admin", "2 session(s) ended")


def test_every_post_without_the_csrf_token_is_refused(panel: Panel,
                                                      admin_client: PanelClient) -> None:
    panel.create_admin("bob")
    bob_id = admin_named(panel.engine, "bob").id
    admin_client.page("/admins")
    posts = {
        "/admins": {"username": "eve", "password": NEW_PASSWORD,
                    "password_confirm": NEW_PASSWORD},
        f"/admins/{bob_id}/disable": {},
        f"/admins/{bob_id}/enable": {},
        f"/admins/{bob_id}/password": {"password": NEW_PASSWORD,
                                       "password_confirm": NEW_PASSWORD},
        "/rotate-session-secret": {"confirm": "on"},
    }
    for path, data in posts.items():
        response = admin_client.post(path, data, csrf=False)
        assert response.status_code == 403, path
        assert "security token is missing or stale" in response.text
    cross_site = admin_client.post(f"/admins/{bob_id}/disable",
                                   headers={"origin": "https://evil.example"})
    assert cross_site.status_code == 403
    assert usernames(panel.engine) == ["admin", "bob"]
    assert not admin_named(panel.engine, "bob").disabled
    assert not logged_out(admin_client)
    assert panel.client().login("bob", PASSWORD).status_code == 303


def test_unknown_admin_ids_are_reported_not_crashed_on(panel: Panel,
                                                       admin_client: PanelClient) -> None:
    admin_client.page("/admins")
    for path in ("/admins/999/disable", f"/admins/{2**70}/enable"):
        response = admin_client.post(path)
        assert response.status_code == 303 and response.headers["location"] == "/admins"
    assert "no admin with id 999" in admin_client.page("/admins").text
    missing = admin_client.get("/admins/999/password")
    assert missing.status_code == 303
    assert "No such admin." in admin_client.page("/admins").text
