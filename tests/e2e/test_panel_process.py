"""The real mailapi-panel: serves on loopback, logs an admin in over HTTP, beats, stops on TERM."""

from __future__ import annotations

import re
import socket
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.livepanel import ADMIN_PASSWORD, panel_suite
from tests.support.ports import free_port
from tests.support.processes import BIN, Suite, wait_until

pytestmark = pytest.mark.e2e
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def live_panel(tmp_path: Path) -> Iterator[Suite]:
    """A migrated database with one admin, created by the real `mailapi admin create`."""
    running = panel_suite(tmp_path)
    yield running
    running.stop_all()


def heartbeat(suite: Suite) -> tuple[int, float] | None:
    with sqlite3.connect(suite.config.parent / "mail-api.sqlite3") as connection:
        row = connection.execute(
            "SELECT pid, beat_at FROM heartbeats WHERE process = 'panel'").fetchone()
    return None if row is None else (int(row[0]), float(row[1]))


def log_in(http: httpx.Client, password: str) -> httpx.Response:
    form = http.get("/login")
    assert form.status_code == 200
    token = CSRF.search(form.text)
    assert token is not None
    return http.post("/login", data={"csrf_token": token.group(1), "username": "admin",
                                     "password": password, "next": "/"})


def test_panel_serves_logs_in_beats_and_stops_cleanly(live_panel: Suite) -> None:
    daemon = live_panel.start_panel()
    with httpx.Client(base_url=live_panel.panel_url, timeout=10) as http:
        health = http.get("/healthz")
        assert health.status_code == 200 and health.json() == {"ok": True}
        assert "no-store" in health.headers["cache-control"]
        refused = log_in(http, "not the password at all")
        assert refused.status_code == 401
        assert "Invalid user name or password." in refused.text
        response = log_in(http, ADMIN_PASSWORD)
        assert response.status_code == 303, response.text[:300]
        assert response.headers["location"] == "/"
        session_cookie = response.headers["set-cookie"]
        assert "HttpOnly" in session_cookie and "SameSite=strict" in session_cookie
        assert "Secure" not in session_cookie  # plain http on loopback
        wait_until(lambda: heartbeat(live_panel) is not None, message="panel heartbeat")
        beat = heartbeat(live_panel)
        assert beat is not None and beat[0] == daemon.process.pid
        dashboard = http.get("/")
        assert dashboard.status_code == 200
        assert "Signed in as <strong>admin</strong>" in dashboard.text
        assert re.search(r">panel</th>\s*<td><span class=\"badge ok\">alive", dashboard.text)
        assert http.get("/", headers={"Host": "evil.example"}).status_code == 421
    assert daemon.stop() == 0
    assert '"stopped"' in daemon.output()


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_panel_refuses_a_public_bind_unless_allowed(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "public.toml"
    config.write_text(f'[database]\npath = "mail-api.sqlite3"\n'
                      f'[panel]\nhost = "0.0.0.0"\nport = {port}\n', encoding="utf-8")
    result = subprocess.run([str(BIN / "mailapi-panel"), "--config", str(config)],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 78
    assert "allow_public_bind" in result.stderr
    assert not port_open(port)
