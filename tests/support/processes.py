"""Starting the real executables as subprocesses on a throwaway configuration."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from mailapi.signatures import sign

BIN = Path(sys.executable).parent


def write_config(directory: Path, *, receiver_port: int, extra: str = "",
                 panel_port: int | None = None, panel_extra: str = "") -> Path:
    """`panel_port` adds a loopback [panel] section; `panel_extra` holds more of its lines."""
    panel = (f'\n[panel]\nhost = "127.0.0.1"\nport = {panel_port}\n{panel_extra}\n'
             if panel_port is not None else "")
    path = directory / "mail-api.toml"
    path.write_text(
        f"""
[database]
path = "mail-api.sqlite3"
busy_timeout_ms = 2000

[receiver]
host = "127.0.0.1"
port = {receiver_port}

[logging]
format = "json"
delivery_log = "log/delivery.log"
{extra}
{panel}""",
        encoding="utf-8",
    )
    return path


def cli(config: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "mailapi"), "--config", str(config), *args],
                          capture_output=True, text=True, input=stdin, timeout=60, check=False)


@dataclass
class Daemon:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            raise

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


@dataclass
class Suite:
    config: Path
    receiver_port: int
    secret: str
    daemons: list[Daemon] = field(default_factory=list)
    panel_port: int | None = None

    def start(self, name: str, *args: str) -> Daemon:
        log_path = self.config.parent / f"{name}-{len(self.daemons)}.log"
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                [str(BIN / f"mailapi-{name}"), "--config", str(self.config), *args],
                stdout=log_file, stderr=subprocess.STDOUT)
        daemon = Daemon(name, process, log_path)
        self.daemons.append(daemon)
        return daemon

    def start_receiver(self) -> Daemon:
        daemon = self.start("receiver")
        wait_http(f"http://127.0.0.1:{self.receiver_port}/healthz", daemon)
        return daemon

    def start_panel(self) -> Daemon:
        """mailapi-panel on the config's panel port, once /healthz answers."""
        assert self.panel_port is not None, "write_config(panel_port=...) first"
        daemon = self.start("panel")
        wait_http(f"{self.panel_url}/healthz", daemon)
        return daemon

    @property
    def panel_url(self) -> str:
        return f"http://127.0.0.1:{self.panel_port}"

    def stop_all(self) -> None:
        for daemon in self.daemons:
            if daemon.process.poll() is None:
                daemon.process.kill()
                daemon.process.wait(timeout=10)

    def post(self, body: dict[str, Any], *, signed: bool = True) -> tuple[int, dict[str, Any]]:
        raw = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if signed:
            timestamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z")
            headers["X-TransLife-Timestamp"] = timestamp
            headers["X-TransLife-Signature"] = sign(self.secret, timestamp, raw)
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.receiver_port}/webhook/outbound-email", data=raw,
            headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())


def webhook_body(to: str, token: str, *, kind: str = "email_verification") -> dict[str, Any]:
    expires = (datetime.now(UTC) + timedelta(hours=1)).isoformat(timespec="milliseconds")
    return {"type": kind, "to": to, "subject": "Verify your email", "token": token,
            "expiresAt": expires.replace("+00:00", "Z"),
            "link": f"https://app.example.com/verify?token={token}"}


def wait_http(url: str, daemon: Daemon, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.process.poll() is not None:
            raise AssertionError(f"{daemon.name} exited early:\n{daemon.output()}")
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.05)
    raise AssertionError(f"{url} did not answer within {timeout}s:\n{daemon.output()}")


def wait_until(predicate: Any, timeout: float = 20.0, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {message}")
