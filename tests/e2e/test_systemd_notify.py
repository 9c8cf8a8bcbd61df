"""sd_notify: READY only once serving, watchdog pings, STOPPING and exit 0 on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ports import free_port
from tests.support.processes import BIN, cli, write_config

pytestmark = pytest.mark.e2e


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    yield sock, path
    sock.close()


def receive_until(sock: socket.socket, wanted: str, timeout: float) -> list[str]:
    messages: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            messages.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
        if any(wanted in message for message in messages):
            return messages
    raise AssertionError(f"no {wanted!r} within {timeout}s; got {messages}")


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("name", ["receiver", "worker"])
def test_notify_protocol(tmp_path: Path, notify_socket: tuple[socket.socket, Path],
                         name: str) -> None:
    sock, path = notify_socket
    port = free_port()
    config = write_config(tmp_path, receiver_port=port)
    assert cli(config, "db", "upgrade").returncode == 0
    environment = dict(os.environ, NOTIFY_SOCKET=str(path), WATCHDOG_USEC="3000000")
    process = subprocess.Popen([str(BIN / f"mailapi-{name}"), "--config", str(config)],
                               env=environment, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        messages = receive_until(sock, "READY=1", 20)
        if name == "receiver":
            assert port_open(port), "READY=1 before the port accepted connections"
        receive_until(sock, "WATCHDOG=1", 3)
        status = [m for m in messages if "STATUS=" in m]
        assert status or name == "worker"
        process.send_signal(signal.SIGTERM)
        receive_until(sock, "STOPPING=1", 10)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_silent_without_notify_socket(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, receiver_port=port)
    assert cli(config, "db", "upgrade").returncode == 0
    environment = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    process = subprocess.Popen([str(BIN / "mailapi-receiver"), "--config", str(config)],
                               env=environment, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not port_open(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert port_open(port)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
