"""Each unit's ExecStart=, run as written (paths mapped), speaking sd_notify to the test."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.harness import NotifySocket, installed_database, write_config
from tests.deploy.units import DAEMONS, STATE_DIR, Unit, map_command, seconds, service
from tests.support.ports import free_port

pytestmark = pytest.mark.e2e

# The units say WatchdogSec=30s, so systemd would pass WATCHDOG_USEC=30000000 and the
# processes would ping every 10 s. The processes derive their rhythm from whatever they are
# given (a third of it), so 3 s tests the same contract in a fraction of the time.
WATCHDOG_USEC = 3_000_000
WATCHDOG_SECONDS = WATCHDOG_USEC / 1e6
# Variables systemd sets per unit; none may leak in from whatever runs the tests.
SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS",
                     "LISTEN_PID", "CREDENTIALS_DIRECTORY", "INVOCATION_ID")


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    listener = NotifySocket.bind(tmp_path / "notify")
    yield listener
    listener.sock.close()


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temporary stand-in for /, migrated by the migrate unit's own ExecStart."""
    root = tmp_path_factory.mktemp("tree")
    write_config(root, free_port(), free_port())
    installed_database(root)
    result = run_oneshot(service("migrate"), root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "migrated from 0001 to" in result.stdout
    return root


def test_the_migrate_unit_never_creates_a_missing_database(tmp_path: Path) -> None:
    write_config(tmp_path, free_port(), free_port())
    result = run_oneshot(service("migrate"), tmp_path)
    assert result.returncode == 1
    assert "missing or empty; refusing to create a new one" in result.stderr
    assert not (tmp_path / STATE_DIR.lstrip("/") / "mail-api.sqlite3").exists()


def unit_environment(unit: Unit, notify: NotifySocket | None,
                     credentials: Path | None = None) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if k not in SYSTEMD_VARIABLES}
    if notify is not None:
        environment["NOTIFY_SOCKET"] = str(notify.path)
        assert unit.service("WatchdogSec"), f"{unit.name} sets no WatchdogSec="
        # WATCHDOG_PID stays unset: systemd sets it to the main PID, unknown before spawning,
        # and without it the watchdog applies to the process that reads it, the same thing.
        environment["WATCHDOG_USEC"] = str(WATCHDOG_USEC)
    if credentials is not None:
        environment["CREDENTIALS_DIRECTORY"] = str(credentials)
    return environment


def umask(unit: Unit) -> int:
    return int(unit.service("UMask") or "0022", 8)


def run_oneshot(unit: Unit, root: Path) -> subprocess.CompletedProcess[str]:
    assert unit.service("Type") == "oneshot"
    return subprocess.run(map_command(unit.command(), root), env=unit_environment(unit, None),
                          umask=umask(unit), capture_output=True, text=True, timeout=60,
                          check=False)


def start(unit: Unit, root: Path, notify: NotifySocket, log: Path,
          credentials: Path | None = None) -> subprocess.Popen[bytes]:
    with open(log, "wb") as output:
        return subprocess.Popen(map_command(unit.command(), root),
                                env=unit_environment(unit, notify, credentials),
                                umask=umask(unit), stdout=output, stderr=subprocess.STDOUT)


def accepts(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def healthz(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        return connection.recv(64)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(timeout=10)


def test_migrate_oneshot_is_idempotent(tree: Path) -> None:
    """The fixture ran it once on an empty tree; a second run changes nothing, exit 0."""
    database = tree / STATE_DIR.lstrip("/") / "mail-api.sqlite3"
    assert oct(database.stat().st_mode & 0o777) == oct(0o600), "UMask=0077 applies"
    result = run_oneshot(service("migrate"), tree)
    assert result.returncode == 0, result.stderr
    assert "already at revision" in result.stdout


@pytest.mark.parametrize("name", DAEMONS)
def test_notify_lifecycle(tree: Path, notify: NotifySocket, tmp_path: Path, name: str) -> None:
    unit = service(name)
    assert unit.service("Type") == "notify" and unit.service("NotifyAccess") == "main"
    # The unit names no port: it comes from the bootstrap file.
    ports = {"receiver": free_port(), "panel": free_port()}
    write_config(tree, ports["receiver"], ports["panel"])
    port = ports.get(name)
    if port is not None:
        assert not accepts(port), f"something already listens on {port}"
    process = start(unit, tree, notify, tmp_path / f"{name}.log")
    try:
        ready = notify.wait_for("READY=1", 30, process)
        if port is not None:
            # Right after READY=1 the port takes a connection and answers HTTP.
            assert accepts(port), "READY=1 before the port accepted connections"
            assert healthz(port).startswith(b"HTTP/1.1 200"), "READY=1 before serving"
        assert all(at >= ready for at in notify.states("WATCHDOG=1")), "a ping before READY"

        # Two pings, each within the interval: after READY=1, then after each other.
        notify.wait_for("WATCHDOG=1", WATCHDOG_SECONDS, process)
        notify.wait_for("WATCHDOG=1", WATCHDOG_SECONDS, process)
        pings = [ready, *notify.states("WATCHDOG=1")]
        gaps = [later - earlier for earlier, later in itertools.pairwise(pings)]
        assert max(gaps) < WATCHDOG_SECONDS, gaps

        if unit.service("ExecReload") is not None:
            # Run the unit's ExecReload= as written, with $MAINPID as systemd fills it in.
            command = [str(process.pid) if part == "$MAINPID" else part
                       for part in unit.command("ExecReload")]
            subprocess.run(command, check=True, timeout=10)
            reloading = notify.wait_for("RELOADING=1", 10, process)
            assert notify.wait_for("READY=1", 10, process) >= reloading
            assert process.poll() is None, "the process died on its reload signal"

        kill_signal = getattr(signal, unit.service("KillSignal") or "SIGTERM")
        process.send_signal(kill_signal)
        notify.wait_for("STOPPING=1", 10, process)
        timeout = seconds(unit.service("TimeoutStopSec") or "90s")
        assert process.wait(timeout=timeout) == 0, (tmp_path / f"{name}.log").read_text()
    finally:
        stop(process)
    if port is not None:
        assert not accepts(port), "the port outlived the process"


@pytest.mark.parametrize("name", DAEMONS)
def test_no_ready_on_an_unmigrated_database(notify: NotifySocket, tmp_path: Path,
                                            name: str) -> None:
    """Start-up checks fail before READY=1, with the exit status the unit will not restart."""
    unit = service(name)
    write_config(tmp_path, free_port(), free_port())  # the migrate unit never ran here
    process = start(unit, tmp_path, notify, tmp_path / f"{name}.log")
    try:
        code = process.wait(timeout=30)
    finally:
        stop(process)
    notify.drain()
    assert notify.states("READY=1") == []
    assert str(code) == unit.service("RestartPreventExitStatus"), (
        (tmp_path / f"{name}.log").read_text())


@pytest.mark.parametrize("name", DAEMONS)
def test_absent_credential_stops_without_restart(notify: NotifySocket, tmp_path: Path,
                                                 name: str) -> None:
    """The unit's SetCredential= default (a missing file) is refused, not taken as a secret.

    Every credential the unit loads is asked for by the bootstrap file; each holds exactly
    what systemd puts there when the LoadCredential= source is absent.
    """
    unit = service(name)
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    secrets = {}
    for line in unit.values("Service", "SetCredential"):
        credential, _, value = line.partition(":")
        # systemd unescapes the value C-style ("\\n" is a newline).
        (credentials / credential).write_bytes(value.encode().decode("unicode_escape").encode())
        secrets[credential.replace("-", "_") + "_file"] = f"credential:{credential}"
    assert secrets, f"{unit.name} loads no credential"
    assert sorted(line.partition(":")[0] for line in unit.values("Service", "LoadCredential")
                  ) == sorted(line.partition(":")[0]
                              for line in unit.values("Service", "SetCredential"))
    root = tmp_path / "root"
    # The secrets are read before the database is opened: no migration needed.
    write_config(root, free_port(), free_port(), secrets)
    process = start(unit, root, notify, tmp_path / f"{name}.log", credentials)
    try:
        code = process.wait(timeout=30)
    finally:
        stop(process)
    output = (tmp_path / f"{name}.log").read_text()
    assert str(code) == unit.service("RestartPreventExitStatus"), output
    assert "must hold one non-empty line" in output
    notify.drain()
    assert notify.states("READY=1") == []
