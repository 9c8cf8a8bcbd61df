"""The shipped nginx site in front of the real panel and receiver: TLS, Secure cookies, XFF."""

from __future__ import annotations

import json
import re
import secrets
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import trustme

from mailapi.signatures import sign
from tests.support.livepanel import ADMIN, ADMIN_PASSWORD, panel_suite
from tests.support.nginx import NGINX, Nginx, site_for_test
from tests.support.ports import free_port
from tests.support.processes import Suite, cli, wait_until, webhook_body

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not NGINX.exists(), reason="Debian's nginx is not installed "
                       "(make test installs it)"),
]
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
SERVER_NAME = "mail-api.test"
# Loopback has a whole /8: the test's "outside" clients connect from these, nginx reaches
# the daemons from 127.0.0.1, the only trusted proxy.
CLIENT = "127.0.0.2"
STRANGER = "127.0.0.3"


@dataclass
class Stack:
    suite: Suite
    nginx: Nginx
    tls: ssl.SSLContext

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.nginx.port}"

    def client(self, source: str = CLIENT, *, host: str = SERVER_NAME) -> httpx.Client:
        """An HTTPS client of nginx, connecting from `source`, naming `host` in Host."""
        transport = httpx.HTTPTransport(verify=self.tls, local_address=source)
        return httpx.Client(base_url=self.url, transport=transport, timeout=10,
                            headers={"Host": f"{host}:{self.nginx.port}"})

    def set(self, key: str, value: str) -> None:
        result = cli(self.suite.config, "settings", "set", key, value)
        assert result.returncode == 0, result.stderr


@pytest.fixture
def stack(tmp_path: Path, ca: trustme.CA) -> Iterator[Stack]:
    secret = secrets.token_hex(16)
    suite = panel_suite(
        tmp_path, panel_extra=f'allowed_hosts = ["{SERVER_NAME}", "127.0.0.1"]',
        settings={"trusted_proxies": "127.0.0.1/32", "webhook_secret": secret,
                  "allowed_sender_domain": "example.com", "ip_allowlist": f"{CLIENT}/32"})
    suite.secret = secret
    certificate, key = tmp_path / "panel.crt", tmp_path / "panel.key"
    issued = ca.issue_cert(SERVER_NAME, "127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(str(certificate))
    issued.private_key_pem.write_to_path(str(key))
    key.chmod(0o600)
    port = free_port()
    nginx = Nginx.create(site_for_test(port=port, certificate=certificate, key=key,
                                       panel_port=suite.panel_port or 0,
                                       receiver_port=suite.receiver_port), port)
    tls = ssl.create_default_context()
    ca.configure_trust(tls)
    try:
        suite.start_receiver()
        suite.start_panel()
        nginx.start()
        yield Stack(suite, nginx, tls)
    finally:
        nginx.stop()
        suite.stop_all()


def test_panel_login_over_tls_gets_a_secure_session_cookie(stack: Stack) -> None:
    with stack.client() as http:
        form = http.get("/login")
        assert form.status_code == 200
        assert form.headers["server"] == "nginx"  # server_tokens off: no version
        assert "Secure" in form.headers["set-cookie"]  # the login form's CSRF cookie
        token = CSRF.search(form.text)
        assert token is not None
        response = http.post("/login", data={"csrf_token": token.group(1), "username": ADMIN,
                                             "password": ADMIN_PASSWORD, "next": "/"})
        assert response.status_code == 303, response.text[:300]
        session_cookie = response.headers["set-cookie"]
        for flag in ("Secure", "HttpOnly", "SameSite=strict"):
            assert flag in session_cookie, session_cookie
        dashboard = http.get("/")
        assert dashboard.status_code == 200
        assert f"Signed in as <strong>{ADMIN}</strong>" in dashboard.text
        assert "frame-ancestors 'none'" in dashboard.headers["content-security-policy"]
    # nginx forwards the Host it was given; the panel answers only its allowed_hosts.
    with stack.client(host="evil.example") as http:
        assert http.get("/login").status_code == 421
    # Plain HTTP on the TLS port is redirected to https.
    plain = httpx.get(f"http://127.0.0.1:{stack.nginx.port}/login", timeout=10)
    assert plain.status_code == 301
    assert plain.headers["location"].startswith("https://")


def test_cookie_is_secure_only_through_a_trusted_proxy(stack: Stack) -> None:
    def secure_cookie() -> bool:
        with stack.client() as http:
            return "Secure" in http.get("/login").headers["set-cookie"]

    assert secure_cookie()
    stack.set("trusted_proxies", "")
    wait_until(lambda: not secure_cookie(), timeout=10, message="X-Forwarded-Proto ignored")


def post_webhook(http: httpx.Client, secret: str, token: str,
                 forwarded_for: str | None = None) -> httpx.Response:
    raw = json.dumps(webhook_body("user@example.org", token)).encode()
    timestamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    headers = {"Content-Type": "application/json", "X-TransLife-Timestamp": timestamp,
               "X-TransLife-Signature": sign(secret, timestamp, raw)}
    if forwarded_for is not None:
        headers["X-Forwarded-For"] = forwarded_for
    return http.post("/webhook/outbound-email", content=raw, headers=headers)


def test_receiver_judges_the_client_nginx_saw(stack: Stack) -> None:
    """ip_allowlist admits only 127.0.0.2: the address nginx saw, believed via the proxy."""
    secret = stack.suite.secret
    with stack.client(CLIENT) as http:
        accepted = post_webhook(http, secret, "t1")
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["ok"] is True
        # A forged entry on the left of the chain is not the client: the right-most
        # address that is not a trusted proxy is, and that is what nginx appended.
        assert post_webhook(http, secret, "t2", forwarded_for="198.51.100.7").status_code == 202
    with stack.client(STRANGER) as http:
        forged = post_webhook(http, secret, "t3", forwarded_for=CLIENT)
        assert forged.status_code == 403 and forged.json() == {"ok": False,
                                                                "error": "forbidden"}
    # Straight to the receiver, X-Forwarded-For from an untrusted peer counts for nothing.
    direct = httpx.HTTPTransport(local_address=STRANGER)
    with httpx.Client(base_url=f"http://127.0.0.1:{stack.suite.receiver_port}",
                      transport=direct, timeout=10) as http:
        assert post_webhook(http, secret, "t4", forwarded_for=CLIENT).status_code == 403
    # Without the trusted proxy the receiver sees only nginx's own address, 127.0.0.1.
    stack.set("trusted_proxies", "")
    with stack.client(CLIENT) as http:
        wait_until(lambda: post_webhook(http, secret, "t5").status_code == 403, timeout=10,
                   message="the receiver to stop believing nginx")


def test_webhook_body_limit_answers_json(stack: Stack) -> None:
    with stack.client(CLIENT) as http:
        too_large = http.post("/webhook/outbound-email", content=b"{" + b" " * 70_000 + b"}",
                              headers={"Content-Type": "application/json"})
    assert too_large.status_code == 413
    assert too_large.headers["content-type"] == "application/json"
    assert too_large.json() == {"ok": False, "error": "payload too large (limit 65536 bytes)"}
