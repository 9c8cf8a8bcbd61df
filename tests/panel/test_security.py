"""The panel's security model, one test per promise: hashes, cookies, sessions, CSRF."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import argon2
import httpx
import pytest
from sqlalchemy import select

from mailapi import accounts
from mailapi.db import read_transaction, write_transaction
from mailapi.models import admins, panel_sessions
from panel import sessions, throttle
from tests.support.database import configure
from tests.support.panel import PASSWORD, Panel, PanelClient

FAILURE = "Invalid user name or password."
NEW_PASSWORD = "another long enough passphrase"


def set_cookie(response: httpx.Response, name: str) -> str:
    found = [value for key, value in response.headers.multi_items()
             if key == "set-cookie" and value.startswith(f"{name}=")]
    assert len(found) == 1, (name, response.headers.get_list("set-cookie"))
    return found[0]


def cookie_attributes(response: httpx.Response, name: str) -> set[str]:
    """The attributes after name=value, lower case: {"httponly", "samesite=strict", ...}."""
    return {part.strip().lower() for part in set_cookie(response, name).split(";")[1:]}


def cookie_value(response: httpx.Response, name: str) -> str:
    return set_cookie(response, name).split(";", 1)[0].split("=", 1)[1]


def has_session_cookie(response: httpx.Response) -> bool:
    return any(key == "set-cookie" and value.startswith(f"{sessions.COOKIE}=")
               for key, value in response.headers.multi_items())


def logged_in(client: PanelClient) -> bool:
    return client.get("/").status_code == 200


def session_rows(panel: Panel) -> int:
    with read_transaction(panel.engine) as connection:
        return len(connection.execute(select(panel_sessions.c.id_hash)).all())


def admin_id(panel: Panel, username: str = "admin") -> int:
    with read_transaction(panel.engine) as connection:
        admin = accounts.find_admin(connection, username)
    assert admin is not None
    return admin.id


# --- passwords ------------------------------------------------------------------------

def test_passwords_are_stored_as_argon2id_hashes(panel: Panel) -> None:
    panel.create_admin("admin")
    panel.create_admin("bob")
    with write_transaction(panel.engine) as connection:
        accounts.set_password(connection, admin_id(panel, "bob"), NEW_PASSWORD, actor="test",
                              source="test", now=panel.clock())
    with read_transaction(panel.engine) as connection:
        hashes = [row[0] for row in connection.execute(select(admins.c.password_hash))]
    assert len(hashes) == 2
    for stored in hashes:
        assert stored.startswith("$argon2id$")
        assert PASSWORD not in stored and NEW_PASSWORD not in stored


# --- cookies --------------------------------------------------------------------------

def test_cookies_are_httponly_strict_and_not_secure_on_plain_loopback_http(panel: Panel
                                                                           ) -> None:
    panel.create_admin()
    client = panel.client()
    form = client.get("/login")
    response = client.post("/login", {"username": "admin", "password": PASSWORD})
    assert response.status_code == 303
    for reply, name in ((form, "mailapi_login"), (response, sessions.COOKIE)):
        attributes = cookie_attributes(reply, name)
        assert {"httponly", "samesite=strict"} <= attributes
        assert "secure" not in attributes


def test_session_cookie_is_secure_when_the_panel_is_reached_over_https(panel: Panel) -> None:
    panel.create_admin()
    client = panel.client(base_url="https://localhost")
    form = client.get("/login")
    response = client.post("/login", {"username": "admin", "password": PASSWORD})
    assert response.status_code == 303
    assert "secure" in cookie_attributes(form, "mailapi_login")
    assert {"secure", "httponly", "samesite=strict"} <= cookie_attributes(
        response, sessions.COOKIE)
    assert logged_in(client)  # the Secure cookie travels back over https


def test_session_cookie_is_secure_behind_a_trusted_proxy_sending_https(panel: Panel) -> None:
    configure(panel.engine, trusted_proxies=["127.0.0.1/32"])
    panel.create_admin()
    client = panel.client(peer=("127.0.0.1", 40000))
    proxied = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.4"}
    form = client.get("/login", headers=proxied)
    assert "secure" in cookie_attributes(form, "mailapi_login")
    # The browser spoke https to the proxy, so it sends the Secure cookie; the proxy passes
    # it on over plain http, which httpx's jar would not do by itself.
    login_cookie = f"mailapi_login={cookie_value(form, 'mailapi_login')}"
    response = client.post("/login", {"username": "admin", "password": PASSWORD},
                           headers={**proxied, "Cookie": login_cookie})
    assert response.status_code == 303, response.text[:300]
    assert {"secure", "httponly", "samesite=strict"} <= cookie_attributes(
        response, sessions.COOKIE)


@pytest.mark.parametrize(("trusted", "peer"), [
    ([], "127.0.0.1"),
    (["10.0.0.1/32"], "192.0.2.7"),
])
def test_forwarded_proto_from_an_untrusted_peer_does_not_make_cookies_secure(
        panel: Panel, trusted: list[str], peer: str) -> None:
    configure(panel.engine, trusted_proxies=trusted)
    panel.create_admin()
    client = panel.client(peer=(peer, 40000))
    spoofed = {"X-Forwarded-Proto": "https"}
    form = client.get("/login", headers=spoofed)
    response = client.post("/login", {"username": "admin", "password": PASSWORD},
                           headers=spoofed)
    assert response.status_code == 303
    assert "secure" not in cookie_attributes(form, "mailapi_login")
    assert "secure" not in cookie_attributes(response, sessions.COOKIE)


# --- session lifetime -----------------------------------------------------------------

def test_each_login_issues_a_new_session_id_and_the_old_one_dies(panel: Panel) -> None:
    panel.create_admin()
    client = panel.client()
    # A value planted before login (session fixation) is replaced, never adopted.
    client.http.cookies.set(sessions.COOKIE, "planted-by-an-attacker")
    first = client.login()
    assert first.status_code == 303
    old = cookie_value(first, sessions.COOKIE)
    assert old != "planted-by-an-attacker"
    assert logged_in(client)
    # Log in again from a login form opened earlier, still carrying the first session.
    client.http.cookies.delete(sessions.COOKIE)
    client.get("/login")
    client.http.cookies.set(sessions.COOKIE, old)
    second = client.post("/login", {"username": "admin", "password": PASSWORD})
    assert second.status_code == 303
    new = cookie_value(second, sessions.COOKIE)
    assert new != old
    assert logged_in(client)
    replay = panel.client()
    replay.http.cookies.set(sessions.COOKIE, old)
    assert replay.get("/").status_code == 303
    assert session_rows(panel) == 1


def test_a_session_ends_after_fifteen_idle_minutes(panel: Panel) -> None:
    client = panel.logged_in()
    panel.clock.advance(sessions.IDLE_SECONDS - 1)
    assert logged_in(client)  # activity restarts the idle window
    panel.clock.advance(sessions.IDLE_SECONDS - 1)
    assert logged_in(client)
    panel.clock.advance(sessions.IDLE_SECONDS + 1)
    response = client.get("/")
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login")


def test_a_session_ends_eight_hours_after_login_even_when_active(panel: Panel) -> None:
    client = panel.logged_in()
    elapsed = 0.0
    step = 14 * 60
    while elapsed + step < sessions.ABSOLUTE_SECONDS:
        panel.clock.advance(step)
        elapsed += step
        assert logged_in(client), f"ended early, after {elapsed / 3600:.2f} h"
    panel.clock.advance(sessions.ABSOLUTE_SECONDS - elapsed + 1)  # still inside the idle window
    assert sessions.ABSOLUTE_SECONDS - elapsed + 1 < sessions.IDLE_SECONDS
    assert client.get("/").status_code == 303


def test_logout_ends_the_session_server_side(panel: Panel) -> None:
    client = panel.logged_in()
    cookie = client.http.cookies.get(sessions.COOKIE)
    assert session_rows(panel) == 1
    assert client.post("/logout").status_code == 303
    assert session_rows(panel) == 0
    replay = panel.client()
    replay.http.cookies.set(sessions.COOKIE, cookie or "")
    assert replay.get("/").status_code == 303


def test_a_password_change_ends_the_admins_sessions_server_side(panel: Panel) -> None:
    client = panel.logged_in()
    other = panel.logged_in()
    with write_transaction(panel.engine) as connection:
        ended = accounts.set_password(connection, admin_id(panel), NEW_PASSWORD,
                                      actor="test", source="test", now=panel.clock())
    assert ended == 2
    assert session_rows(panel) == 0
    assert not logged_in(client)
    assert not logged_in(other)
    assert panel.client().login("admin", PASSWORD).status_code == 401
    assert panel.client().login("admin", NEW_PASSWORD).status_code == 303


# --- CSRF and origin ------------------------------------------------------------------

@pytest.mark.parametrize("token", [None, "", "wrong-token"])
def test_logout_without_the_right_csrf_token_is_refused(panel: Panel, token: str | None
                                                        ) -> None:
    client = panel.logged_in()
    data = {} if token is None else {"csrf_token": token}
    response = client.post("/logout", data, csrf=False)
    assert response.status_code == 403
    assert logged_in(client)


def _login_post(client: PanelClient, **overrides: Any) -> httpx.Response:
    form = {"username": "admin", "password": PASSWORD, "csrf_token": client.last_csrf}
    form.update(overrides)
    return client.post("/login", {k: v for k, v in form.items() if v is not None},
                       csrf=False)


@pytest.mark.parametrize("case", ["missing token", "wrong token", "no cookie",
                                  "another client's cookie", "unsigned cookie"])
def test_login_without_a_matching_double_submit_token_is_refused(panel: Panel, case: str
                                                                  ) -> None:
    panel.create_admin()
    client = panel.client()
    client.get("/login")
    token = client.last_csrf
    if case == "missing token":
        response = _login_post(client, csrf_token=None)
    elif case == "wrong token":
        response = _login_post(client, csrf_token=token + "x")
    elif case == "no cookie":
        client.http.cookies.delete("mailapi_login")
        response = _login_post(client)
    elif case == "another client's cookie":
        other = panel.client()
        other.get("/login")
        client.http.cookies.set("mailapi_login", other.http.cookies["mailapi_login"])
        response = _login_post(client)
    else:
        client.http.cookies.set("mailapi_login", token)
        response = _login_post(client)
    assert response.status_code == 403
    assert not has_session_cookie(response)
    assert session_rows(panel) == 0


@pytest.mark.parametrize("headers", [
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
    {"Origin": "https://evil.example"},
    {"Origin": "http://localhost.evil.example"},
    {"Origin": "null"},
])
def test_cross_site_state_changes_are_refused(panel: Panel, headers: dict[str, str]) -> None:
    client = panel.logged_in()
    assert client.post("/logout", headers=headers).status_code == 403
    assert logged_in(client)
    stranger = panel.client()
    stranger.get("/login")
    response = stranger.post("/login", {"username": "admin", "password": PASSWORD},
                             headers=headers)
    assert response.status_code == 403
    assert not has_session_cookie(response)


def test_same_origin_posts_pass_the_origin_check(panel: Panel) -> None:
    client = panel.logged_in()
    response = client.post("/logout", headers={"Sec-Fetch-Site": "same-origin",
                                               "Origin": "http://localhost"})
    assert response.status_code == 303


# --- login throttling and failures ----------------------------------------------------

def test_five_failures_lock_the_account_even_against_the_right_password(panel: Panel
                                                                        ) -> None:
    panel.create_admin()
    client = panel.client()
    for _ in range(throttle.ACCOUNT_LIMIT):
        assert client.login("admin", "wrong password!!").status_code == 401
    refused = client.login("admin", PASSWORD)
    assert refused.status_code == 401
    assert FAILURE in refused.text
    assert not has_session_cookie(refused)
    # Another address is locked out of this name too: the lock is on the account.
    assert panel.client(peer=("127.0.0.9", 40000)).login().status_code == 401
    panel.clock.advance(throttle.LOCK_SECONDS + 1)
    assert client.login().status_code == 303


def test_twenty_failures_from_one_address_lock_that_address(panel: Panel) -> None:
    panel.create_admin()
    client = panel.client(peer=("127.0.0.1", 40000))
    for attempt in range(throttle.ADDRESS_LIMIT):
        # Spread over names so that no single account reaches its own limit.
        assert client.login(f"guess{attempt % 5}", f"wrong password {attempt}").status_code \
            == 401
    refused = client.login("admin", PASSWORD)
    assert refused.status_code == 401
    assert FAILURE in refused.text
    assert panel.client(peer=("127.0.0.2", 40000)).login().status_code == 303


def _normalised(response: httpx.Response, username: str) -> str:
    text = re.sub(r'name="csrf_token" value="[^"]*"', "", response.text)
    return text.replace(f'value="{username}"', 'value=""')


def test_every_login_failure_shows_one_generic_message(panel: Panel) -> None:
    panel.create_admin("admin")
    panel.create_admin("bob")
    with write_transaction(panel.engine) as connection:
        accounts.set_disabled(connection, admin_id(panel, "bob"), True, actor="test",
                              source="test", now=panel.clock())
    panel.create_admin("carol")
    for _ in range(throttle.ACCOUNT_LIMIT):
        panel.client(peer=("127.0.0.5", 40000)).login("carol", "wrong password!!")
    cases = {
        "wrong password": ("admin", "not the password at all"),
        "unknown user": ("nobody", PASSWORD),
        "disabled user": ("bob", PASSWORD),
        "locked account": ("carol", PASSWORD),
    }
    pages = {}
    for case, (username, password) in cases.items():
        response = panel.client().login(username, password)
        assert response.status_code == 401, case
        assert FAILURE in response.text, case
        pages[case] = _normalised(response, username)
    assert len(set(pages.values())) == 1, "failure pages differ"


def test_every_login_path_runs_exactly_one_argon2_verification(
        panel: Panel, monkeypatch: pytest.MonkeyPatch) -> None:
    """The structural form of "no timing difference": the same expensive work on each path."""
    panel.create_admin("admin")
    panel.create_admin("bob")
    with write_transaction(panel.engine) as connection:
        accounts.set_disabled(connection, admin_id(panel, "bob"), True, actor="test",
                              source="test", now=panel.clock())
    panel.create_admin("carol")
    for _ in range(throttle.ACCOUNT_LIMIT):
        panel.client(peer=("127.0.0.5", 40000)).login("carol", "wrong password!!")
    calls: list[str] = []
    real_verify: Callable[..., bool] = argon2.PasswordHasher.verify

    def counting_verify(self: argon2.PasswordHasher, encoded: str | bytes,
                        password: str | bytes) -> bool:
        calls.append(str(encoded)[:10])
        return real_verify(self, encoded, password)

    monkeypatch.setattr(argon2.PasswordHasher, "verify", counting_verify)
    for username, password, status in (("admin", "not the password at all", 401),
                                       ("nobody", PASSWORD, 401),
                                       ("bob", PASSWORD, 401),
                                       ("carol", PASSWORD, 401),
                                       ("admin", PASSWORD, 303)):
        calls.clear()
        assert panel.client().login(username, password).status_code == status
        assert len(calls) == 1, (username, calls)
        assert calls[0].startswith("$argon2id$")
