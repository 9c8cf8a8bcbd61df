"""Logging in and out: sessions, cookies, CSRF on login and logout, the dashboard."""

from __future__ import annotations

from tests.support.panel import PASSWORD, Panel, PanelClient


def test_pages_redirect_to_login_without_a_session(panel: Panel) -> None:
    client = panel.client()
    response = client.get("/?view=x")
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login?next=")


def test_login_sets_a_strict_httponly_cookie_and_shows_the_dashboard(panel: Panel) -> None:
    panel.create_admin()
    client = panel.client()
    response = client.login()
    assert response.status_code == 303
    cookie = next(v for k, v in response.headers.multi_items()
                  if k == "set-cookie" and v.startswith("mailapi_session="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Secure" not in cookie  # plain http on loopback, no trusted proxy
    dashboard = client.page("/")
    assert "Signed in as <strong>admin</strong>" in dashboard.text
    assert "Queued" in dashboard.text


def test_wrong_password_and_unknown_user_get_the_same_answer(panel: Panel) -> None:
    panel.create_admin()
    client = panel.client()
    wrong = client.login("admin", "not the password at all")
    unknown = client.login("nobody", PASSWORD)
    assert wrong.status_code == unknown.status_code == 401
    assert "Invalid user name or password." in wrong.text
    assert "Invalid user name or password." in unknown.text


def test_logout_ends_the_session_server_side(admin_client: PanelClient) -> None:
    cookie = admin_client.http.cookies.get("mailapi_session")
    response = admin_client.post("/logout")
    assert response.status_code == 303
    # Replaying the old cookie gets nowhere: the row is gone.
    admin_client.http.cookies.set("mailapi_session", cookie or "")
    assert admin_client.get("/").status_code == 303
