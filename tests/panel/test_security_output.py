"""The panel's answers themselves: Host allowlist, security headers, escaping, redirects."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import Engine
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support.panel import PASSWORD, Panel

PAYLOAD = '<script>alert("x")</script>'


# --- Host allowlist -------------------------------------------------------------------

@pytest.mark.parametrize("host", ["evil.example", "evil.example:2580", "localhost.evil.example",
                                  "127.0.0.2", "[::2]:2580", ""])
def test_an_unknown_host_header_gets_421(panel: Panel, host: str) -> None:
    client = panel.client()
    for path in ("/login", "/healthz", "/static/panel.css"):
        response = client.get(path, headers={"Host": host})
        assert response.status_code == 421, (host, path)
        assert "allowed_hosts" in response.text
        assert not response.headers.get_list("set-cookie")


@pytest.mark.parametrize("host", ["localhost", "localhost:2580", "LOCALHOST:443",
                                  "127.0.0.1:8080", "[::1]:2580"])
def test_allowed_hosts_are_served_whatever_the_port(panel: Panel, host: str) -> None:
    response = panel.client().get("/login", headers={"Host": host})
    assert response.status_code == 200
    assert "Log in to MAIL_API" in response.text


def test_configured_allowed_hosts_replace_the_defaults(engine: Engine, tmp_path: Path) -> None:
    directory = tmp_path / "proxied"
    directory.mkdir()
    proxied = Panel(engine, directory, extra_config='allowed_hosts = ["mail.example.com"]')
    try:
        client = proxied.client()
        assert client.get("/login", headers={"Host": "mail.example.com:443"}).status_code == 200
        assert client.get("/login", headers={"Host": "localhost"}).status_code == 421
    finally:
        proxied.close()


# --- security headers -----------------------------------------------------------------

def _directives(policy: str) -> dict[str, list[str]]:
    found = {}
    for directive in policy.split(";"):
        name, *values = directive.split()
        found[name.lower()] = values
    return found


def assert_security_headers(response: httpx.Response, *, no_store: bool = True) -> None:
    policy = _directives(response.headers["content-security-policy"])
    scripts = policy.get("script-src", policy.get("default-src"))
    assert scripts is not None
    assert "'unsafe-inline'" not in scripts and "'unsafe-eval'" not in scripts
    assert not any(source.startswith(("'nonce-", "'sha")) for source in scripts)
    assert policy["frame-ancestors"] == ["'none'"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    # Under no-referrer browsers post `Origin: null`, which the origin check refuses.
    assert response.headers["referrer-policy"] == "same-origin"
    if no_store:
        assert "no-store" in response.headers["cache-control"]


def lenient_client(panel: Panel, cookies: httpx.Cookies | None = None) -> httpx.AsyncClient:
    """A client that gets the 500 page instead of the re-raised exception."""
    transport = httpx.ASGITransport(app=panel.app, raise_app_exceptions=False,
                                    client=("127.0.0.1", 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://localhost", cookies=cookies)


def get_all(panel: Panel, paths: list[str], cookies: httpx.Cookies | None = None
            ) -> list[httpx.Response]:
    async def fetch() -> list[httpx.Response]:
        async with lenient_client(panel, cookies) as http:
            return [await http.get(path) for path in paths]
    return asyncio.run(fetch())


def inject_fault(panel: Panel, path: str) -> None:
    """A route that raises, standing in for any bug in a view."""
    async def broken(request: Request) -> Response:
        raise RuntimeError("injected fault")

    panel.app.router.routes.append(Route(path, broken))


def test_security_headers_on_every_kind_of_response(panel: Panel) -> None:
    client = panel.logged_in()
    responses = {
        "dashboard": client.get("/"),
        "login page": panel.client().get("/login"),
        "login failure": panel.client().login("nobody", PASSWORD),
        "404": client.get("/no-such-page"),
        "403": client.post("/logout", csrf=False),
        "405": client.request("PUT", "/login"),
        "421": client.get("/", headers={"Host": "evil.example"}),
        "health": client.get("/healthz"),
    }
    inject_fault(panel, "/injected-fault")
    responses["500"] = get_all(panel, ["/injected-fault"])[0]
    expected = {"404": 404, "403": 403, "405": 405, "421": 421, "500": 500,
                "login failure": 401}
    for name, response in responses.items():
        assert response.status_code == expected.get(name, 200), name
        assert_security_headers(response)
    static = client.get("/static/panel.css")
    assert static.status_code == 200
    assert_security_headers(static, no_store=False)


# --- escaping and redirects -----------------------------------------------------------

def test_a_username_in_a_failed_login_is_escaped(panel: Panel) -> None:
    response = panel.client().login(PAYLOAD, PASSWORD)
    assert response.status_code == 401
    assert PAYLOAD not in response.text
    assert "&lt;script&gt;" in response.text


def test_the_next_parameter_is_escaped_on_the_login_page(panel: Panel) -> None:
    for target in (f'/"><{PAYLOAD[1:]}', f"/queue?x={PAYLOAD}"):
        response = panel.client().get("/login", params={"next": target})
        assert response.status_code == 200
        assert PAYLOAD not in response.text and "<script>" not in response.text.lower()


def test_a_user_agent_is_never_echoed_raw(panel: Panel) -> None:
    panel.create_admin()
    client = panel.client()
    client.http.headers["user-agent"] = PAYLOAD
    assert client.login().status_code == 303
    pages = ["/", "/settings", "/smtp", "/sender", "/templates", "/admins", "/api-keys",
             "/queue", "/deliveries", "/log", "/audit", "/no-such-page"]
    # Pages still being built may fail; a failure is not an echo, so those are read too.
    responses = get_all(panel, pages, client.http.cookies)
    for path, response in zip(pages, responses, strict=True):
        assert PAYLOAD not in response.text, path
    assert responses[0].status_code == 200


def test_a_refusal_reason_quoting_a_header_is_escaped(panel: Panel) -> None:
    client = panel.logged_in()
    response = client.post("/logout", headers={"Sec-Fetch-Site": PAYLOAD})
    assert response.status_code == 403
    assert PAYLOAD not in response.text
    assert "&lt;script&gt;" in response.text


OPEN_REDIRECTS = ["//evil.example", "///evil.example", "https://evil.example",
                  "/\\evil.example", "\\\\evil.example", "evil.example", "javascript:alert(1)"]


@pytest.mark.parametrize("target", OPEN_REDIRECTS)
def test_next_cannot_redirect_off_the_panel(panel: Panel, target: str) -> None:
    panel.create_admin()
    client = panel.client()
    page = client.get("/login", params={"next": target})
    hidden = re.search(r'name="next" value="([^"]*)"', page.text)
    assert hidden is not None and hidden.group(1) == "/"
    response = client.post("/login", {"username": "admin", "password": PASSWORD,
                                      "next": hidden.group(1)})
    assert response.headers["location"] == "/"
    # A hand-made post carrying the hostile value directly lands on / as well.
    direct = panel.client()
    direct.get("/login")
    response = direct.post("/login", {"username": "admin", "password": PASSWORD,
                                      "next": target})
    assert response.status_code == 303
    assert response.headers["location"] == "/"


def test_a_redirect_with_control_characters_stays_on_the_panel(panel: Panel) -> None:
    panel.create_admin()
    client = panel.client()
    client.get("/login")
    # Browsers drop tabs and newlines from URLs, turning "/\t/evil" into "//evil".
    response = client.post("/login", {"username": "admin", "password": PASSWORD,
                                      "next": "/\t/evil.example"})
    location = response.headers["location"]
    parts = urlsplit(location)
    assert not parts.scheme and not parts.netloc
    assert not re.sub(r"[\t\r\n]", "", location).startswith("//")
