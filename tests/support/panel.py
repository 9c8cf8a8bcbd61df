"""The panel app in-process over a real migrated database, driven like a browser.

`PanelClient` is synchronous (an asyncio.Runner around httpx's ASGI transport) and keeps
cookies like a browser: Secure cookies only travel over https base URLs.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine

from mailapi import accounts
from mailapi.config import Config, load_config
from mailapi.db import write_transaction
from mailapi.settings import SettingsCache
from panel.app import build_app
from panel.state import PanelState

PASSWORD = "correct horse battery staple"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


class Clock:
    def __init__(self, now: float = 1_790_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def panel_config(directory: Path, extra: str = "") -> Config:
    path = directory / "panel.toml"
    path.write_text(f"""
[database]
path = "mail-api.sqlite3"

[logging]
delivery_log = "log/delivery.log"

[panel]
{extra}
""", encoding="utf-8")
    return load_config(path)


class PanelClient:
    """A browser-like client: cookies, CSRF tokens read from the last page."""

    def __init__(self, app: Any, *, base_url: str, peer: tuple[str, int],
                 root_path: str = "") -> None:
        self._runner = asyncio.Runner()
        # Like a proxy that forwards the prefix unchanged: paths are given without it.
        transport = httpx.ASGITransport(app=app, client=peer, root_path=root_path)
        self.http = httpx.AsyncClient(transport=transport, base_url=base_url + root_path,
                                      follow_redirects=False)
        self.last_csrf = ""

    def close(self) -> None:
        self._runner.run(self.http.aclose())
        self._runner.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._runner.run(self.http.request(method, path, **kwargs))
        found = _CSRF.search(response.text) if "text/html" in response.headers.get(
            "content-type", "") else None
        if found:
            self.last_csrf = found.group(1)
        return response

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, data: dict[str, Any] | None = None, *, csrf: bool = True,
             **kwargs: Any) -> httpx.Response:
        """A form post with the CSRF token of the last page shown (unless csrf=False)."""
        form = dict(data or {})
        if csrf and "csrf_token" not in form:
            form["csrf_token"] = self.last_csrf
        return self.request("POST", path, data=form, **kwargs)

    def login(self, username: str = "admin", password: str = PASSWORD) -> httpx.Response:
        self.get("/login")
        return self.post("/login", {"username": username, "password": password})

    def page(self, path: str) -> httpx.Response:
        """GET a page and load its CSRF token; fails loudly unless it is a 200."""
        response = self.get(path)
        assert response.status_code == 200, (path, response.status_code, response.text[:500])
        return response


class Panel:
    """One panel app over `engine`, with an injected clock and its own bootstrap config."""

    def __init__(self, engine: Engine, directory: Path, *, extra_config: str = "") -> None:
        self.engine = engine
        self.clock = Clock()
        self.config = panel_config(directory, extra_config)
        self.state = PanelState(engine=engine, config=self.config,
                                settings=SettingsCache(engine, check_interval=0),
                                clock=self.clock, monotonic=self.clock)
        self.app = build_app(self.state)
        self._clients: list[PanelClient] = []

    def client(self, *, base_url: str = "http://localhost",
               peer: tuple[str, int] = ("127.0.0.1", 40000)) -> PanelClient:
        client = PanelClient(self.app, base_url=base_url, peer=peer,
                             root_path=self.config.panel.root_path)
        self._clients.append(client)
        return client

    def create_admin(self, username: str = "admin", password: str = PASSWORD
                     ) -> accounts.Admin:
        with write_transaction(self.engine) as connection:
            return accounts.create_admin(connection, username, password, actor="test",
                                         source="test", now=self.clock())

    def logged_in(self, username: str = "admin", **client_options: Any) -> PanelClient:
        """A client with a live session for `username` (created if missing)."""
        with write_transaction(self.engine) as connection:
            exists = accounts.find_admin(connection, username) is not None
        if not exists:
            self.create_admin(username)
        client = self.client(**client_options)
        response = client.login(username)
        assert response.status_code == 303, response.text[:500]
        client.page("/")
        return client

    def close(self) -> None:
        for client in self._clients:
            client.close()
