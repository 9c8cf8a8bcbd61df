"""What the deploy tests play of systemd: the notify socket, and the tree standing in for /."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alembic import command

from mailapi.db import open_engine
from mailapi.schema import alembic_config
from tests.deploy.units import CONFIG_PATH, LOGS_DIR, STATE_DIR

EXAMPLE_CONFIG = Path(__file__).resolve().parents[2] / "etc/mail-api.toml.example"


@dataclass
class NotifySocket:
    """The AF_UNIX datagram socket systemd would own: every message with its arrival time."""

    path: Path
    sock: socket.socket
    messages: list[tuple[float, str]] = field(default_factory=list)

    @classmethod
    def bind(cls, path: Path) -> NotifySocket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        return cls(path, sock)

    def wait_for(self, wanted: str, timeout: float,
                 process: subprocess.Popen[bytes] | None = None) -> float:
        """When the first message containing `wanted` arrived (monotonic seconds)."""
        deadline = time.monotonic() + timeout
        seen = len(self.messages)
        while True:
            for arrived, message in self.messages[seen:]:
                if wanted in message.splitlines():
                    return arrived
            seen = len(self.messages)
            if time.monotonic() > deadline:
                raise AssertionError(f"no {wanted} within {timeout}s; got {self.messages}")
            if process is not None and process.poll() is not None:
                self.drain()
                if not any(wanted in m.splitlines() for _, m in self.messages[seen:]):
                    raise AssertionError(f"exited {process.returncode} before {wanted}; "
                                         f"got {self.messages}")
            self.receive(0.1)

    def receive(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return
        self.messages.append((time.monotonic(), data.decode()))

    def drain(self) -> None:
        self.sock.setblocking(False)
        try:
            while True:
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))
        except BlockingIOError:
            pass

    def states(self, name: str) -> list[float]:
        return [arrived for arrived, message in self.messages if name in message.splitlines()]


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return json.dumps(value)  # integers, and strings: JSON escapes are valid TOML


def write_config(tree: Path, receiver_port: int, panel_port: int,
                 secrets: dict[str, str] | None = None) -> Path:
    """The shipped example, with its paths under `tree`, loopback hosts and free ports."""
    config = tomllib.loads(EXAMPLE_CONFIG.read_text(encoding="utf-8"))
    for section in config.values():
        for key, value in section.items():
            if isinstance(value, str) and value.startswith((STATE_DIR, LOGS_DIR)):
                section[key] = str(tree / value.lstrip("/"))
    config["receiver"].update(host="127.0.0.1", port=receiver_port)
    config["panel"].update(host="127.0.0.1", port=panel_port)
    if secrets:
        config["secrets"] = secrets
    path = tree / CONFIG_PATH.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(
        f"[{name}]\n" + "".join(f"{key} = {toml_value(value)}\n" for key, value in body.items())
        for name, body in config.items()), encoding="utf-8")
    # What StateDirectory=/LogsDirectory= would have created before the process starts.
    (tree / STATE_DIR.lstrip("/")).mkdir(mode=0o700, parents=True, exist_ok=True)
    (tree / LOGS_DIR.lstrip("/")).mkdir(mode=0o750, parents=True, exist_ok=True)
    return path


def installed_database(tree: Path, *, revision: str = "0001", owner: tuple[int, int] | None = None
                       ) -> Path:
    """What the installer's first `db upgrade` leaves, at an older schema revision, so the
    migrate unit (which never creates a database: `--no-create`) has a migration to run."""
    path = tree / STATE_DIR.lstrip("/") / "mail-api.sqlite3"
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = open_engine(path, durability="FULL", busy_timeout_ms=5000, create=True)
    config = alembic_config()
    with engine.connect() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        connection.commit()
    engine.dispose()
    path.chmod(0o600)
    if owner is not None:
        os.chown(path, *owner)
    return path
