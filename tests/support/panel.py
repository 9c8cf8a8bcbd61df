"""The panel app in-process over a real migrated database, driven like a browser.

`PanelClient` is synchronous (an asyncio.Runner around httpx's ASGI transport) and keeps
cookies like a browser: Secure cookies only travel over https base URLs.
"""

from __future__ import annotations

import asyncio
import re
from html.parser import HTMLParser
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


def panel_config(directory: Path, extra: str = "", extra_sections: str = "") -> Config:
    """A bootstrap file: `extra` goes into [panel], `extra_sections` (e.g. [smtp]) after it."""
    path = directory / "panel.toml"
    path.write_text(f"""
[database]
path = "mail-api.sqlite3"

[logging]
delivery_log = "log/delivery.log"

[panel]
{extra}

{extra_sections}
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

    def __init__(self, engine: Engine, directory: Path, *, extra_config: str = "",
                 extra_sections: str = "") -> None:
        self.engine = engine
        self.clock = Clock()
        self.config = panel_config(directory, extra_config, extra_sections)
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


class _FormReader(HTMLParser):
    """The fields one <form> would submit as shown: what a browser sends on "submit"."""

    def __init__(self, action: str) -> None:
        super().__init__(convert_charrefs=True)
        self.action = action
        self.inside = False
        self.fields: dict[str, str] = {}
        self._textarea: str | None = None
        self._select: str | None = None
        self._first_option: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "form":
            self.inside = values.get("action", "") == self.action
        if not self.inside:
            return
        name = values.get("name", "")
        if tag == "input" and name and values.get("type", "text") not in ("submit", "button"):
            if values.get("type") in ("checkbox", "radio") and "checked" not in values:
                return
            self.fields[name] = values.get("value", "on" if values.get("type") in (
                "checkbox", "radio") else "")
        elif tag == "textarea" and name:
            self._textarea = name
            self.fields[name] = ""
        elif tag == "select" and name:
            self._select = name
        elif tag == "option" and self._select:
            self._first_option.setdefault(self._select, values.get("value", ""))
            if "selected" in values:
                self.fields[self._select] = values.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.inside = False
        elif tag == "textarea" and self._textarea:
            # Browsers drop one newline right after <textarea>.
            self.fields[self._textarea] = self.fields[self._textarea].removeprefix("\n")
            self._textarea = None
        elif tag == "select" and self._select:
            self.fields.setdefault(self._select, self._first_option.get(self._select, ""))
            self._select = None

    def handle_data(self, data: str) -> None:
        if self._textarea:
            self.fields[self._textarea] += data


def form_fields(page: str, action: str) -> dict[str, str]:
    """The name/value pairs the form posting to `action` on `page` would send unchanged."""
    reader = _FormReader(action)
    reader.feed(page)
    reader.close()
    return reader.fields
