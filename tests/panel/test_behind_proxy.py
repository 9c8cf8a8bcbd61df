"""Behind nginx: a path prefix in links and cookies, client addresses from trusted proxies."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, select

from mailapi.db import read_transaction
from mailapi.models import audit_log
from tests.support.database import configure
from tests.support.panel import Panel


def test_links_redirects_and_cookies_carry_the_prefix(engine: Engine, tmp_path: Path) -> None:
    panel = Panel(engine, tmp_path, extra_config='root_path = "/mail-api"')
    try:
        panel.create_admin()
        client = panel.client()
        assert client.get("/").headers["location"].startswith("/mail-api/login?next=")
        login_page = client.page("/login")
        assert 'action="/mail-api/login"' in login_page.text
        assert 'href="/mail-api/static/panel.css"' in login_page.text
        response = client.post("/login", {"username": "admin",
                                          "password": "correct horse battery staple"})
        assert response.headers["location"] == "/mail-api/"
        cookie = next(v for k, v in response.headers.multi_items()
                      if k == "set-cookie" and v.startswith("mailapi_session="))
        assert "Path=/mail-api" in cookie
    finally:
        panel.close()


def test_the_audit_source_is_the_client_behind_a_trusted_proxy(engine: Engine,
                                                              tmp_path: Path) -> None:
    configure(engine, trusted_proxies=["127.0.0.1/32"])
    panel = Panel(engine, tmp_path)
    try:
        panel.create_admin()
        client = panel.client(peer=("127.0.0.1", 50000))
        client.get("/login")
        response = client.post("/login", {"username": "admin",
                                          "password": "correct horse battery staple"},
                               headers={"X-Forwarded-For": "198.51.100.23",
                                        "X-Forwarded-Proto": "https"})
        assert response.status_code == 303
        cookie = next(v for k, v in response.headers.multi_items()
                      if k == "set-cookie" and v.startswith("mailapi_session="))
        assert "Secure" in cookie  # the proxy terminated TLS and says so
        with read_transaction(engine) as connection:
            sources = connection.execute(select(audit_log.c.source)
                                         .where(audit_log.c.action == "admin.login")).scalars()
            assert list(sources) == ["198.51.100.23"]
    finally:
        panel.close()


def test_an_untrusted_peer_cannot_claim_another_address(engine: Engine,
                                                       tmp_path: Path) -> None:
    panel = Panel(engine, tmp_path)
    try:
        panel.create_admin()
        client = panel.client(peer=("203.0.113.9", 50000))
        client.get("/login")
        client.post("/login", {"username": "admin",
                               "password": "correct horse battery staple"},
                    headers={"X-Forwarded-For": "198.51.100.23"})
        with read_transaction(engine) as connection:
            sources = connection.execute(select(audit_log.c.source)
                                         .where(audit_log.c.action == "admin.login")).scalars()
            assert list(sources) == ["203.0.113.9"]
    finally:
        panel.close()
