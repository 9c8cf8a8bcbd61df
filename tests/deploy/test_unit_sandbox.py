"""The suite works inside its units' sandboxes: a webhook in, a message out, clean stops."""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from mailapi.db import open_engine
from tests.deploy.harness import NotifySocket, installed_database, write_config
from tests.deploy.units import (
    CONFIG_PATH,
    DAEMONS,
    INSTALLED_BIN,
    LOGS_DIR,
    STATE_DIR,
    map_command,
    service,
)
from tests.support.database import configure
from tests.support.livepanel import ADMIN_PASSWORD
from tests.support.ports import free_port
from tests.support.processes import Suite, wait_until, webhook_body
from tests.support.smtpd import SmtpServer

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0,
                       reason="building the sandbox needs root (namespaces, a service user)"),
]
PROJECT = Path(__file__).resolve().parents[2]
# mail_api does not exist on the test machine: nobody/nogroup play it.
SERVICE_UID = pwd.getpwnam("nobody").pw_uid
SERVICE_GID = grp.getgrnam("nogroup").gr_gid
CLI = f"{INSTALLED_BIN}/mailapi"
WATCHDOG_USEC = "3000000"  # a third of it is one second: see test_unit_execstart.py


@dataclass
class Sandboxed:
    name: str
    process: subprocess.Popen[bytes]
    notify: NotifySocket
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def tree() -> Iterator[Path]:
    # Not under pytest's tmp_path: its parents are private to root, and the service user
    # must reach the tree as it reaches / on a real host.
    root = Path(tempfile.mkdtemp(prefix="mail-api-sandbox-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root)


def install(root: Path, receiver_port: int, panel_port: int) -> tuple[str, str]:
    """The layout the installer and the units create, with credential files in place."""
    webhook_secret, smtp_password = secrets.token_hex(16), secrets.token_hex(16)
    config = write_config(root, receiver_port, panel_port, {
        "webhook_secret_file": "credential:webhook-secret",
        "smtp_password_file": "credential:smtp-password"})
    etc = config.parent
    credentials = etc / "credentials"
    credentials.mkdir(mode=0o700)
    (credentials / "webhook-secret").write_text(webhook_secret + "\n", encoding="utf-8")
    (credentials / "smtp-password").write_text(smtp_password + "\n", encoding="utf-8")
    for path in credentials.iterdir():
        path.chmod(0o600)
    os.chown(etc, 0, SERVICE_GID)
    etc.chmod(0o750)
    os.chown(config, 0, SERVICE_GID)
    config.chmod(0o640)
    for directory, mode in ((STATE_DIR, 0o700), (LOGS_DIR, 0o750)):
        path = root / directory.lstrip("/")
        os.chown(path, SERVICE_UID, SERVICE_GID)
        path.chmod(mode)
    return webhook_secret, smtp_password


def sandbox_command(name: str, root: Path, command: list[str]) -> list[str]:
    return [sys.executable, "-m", "tests.deploy.sandbox", "--unit", name, "--tree", str(root),
            "--uid", str(SERVICE_UID), "--gid", str(SERVICE_GID), "--", *command]


def start(name: str, root: Path) -> Sandboxed:
    notify = NotifySocket.bind(root / f"notify-{name}")
    (root / f"notify-{name}").chmod(0o777)  # the service user sends to it
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("NOTIFY_SOCKET", "WATCHDOG_PID", "CREDENTIALS_DIRECTORY")}
    environment.update(NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC=WATCHDOG_USEC)
    log = root / f"{name}.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            sandbox_command(name, root, map_command(service(name).command(), root)),
            cwd=PROJECT, env=environment, stdout=output, stderr=subprocess.STDOUT)
    return Sandboxed(name, process, notify, log)


def log_in(http: httpx.Client, password: str) -> httpx.Response:
    form = http.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert form.status_code == 200 and token is not None
    return http.post("/login", data={"csrf_token": token.group(1), "username": "admin",
                                     "password": password, "next": "/"})


def confinement(pid: int) -> dict[str, str]:
    fields = dict(line.split(":\t", 1) for line in
                  Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines())
    return {key: fields[key].split()[0] for key in ("Uid", "NoNewPrivs", "Seccomp", "CapBnd")}


def test_the_suite_inside_its_sandboxes(tree: Path) -> None:
    receiver_port, panel_port = free_port(), free_port()
    webhook_secret, smtp_password = install(tree, receiver_port, panel_port)
    installed_database(tree, owner=(SERVICE_UID, SERVICE_GID))
    migrate = subprocess.run(
        sandbox_command("migrate", tree, map_command(service("migrate").command(), tree)),
        cwd=PROJECT, capture_output=True, text=True, timeout=60, check=False)
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    database = tree / STATE_DIR.lstrip("/") / "mail-api.sqlite3"
    status = database.stat()
    assert (status.st_uid, status.st_mode & 0o777) == (SERVICE_UID, 0o600)

    smtp_server = SmtpServer(free_port(), users={"relay": smtp_password}).start()
    engine = open_engine(database, durability="FULL", busy_timeout_ms=5000)
    configure(engine, allowed_sender_domain="example.com", smtp_host="127.0.0.1",
              smtp_port=smtp_server.port, smtp_security="plain", smtp_username="relay",
              smtp_allow_plaintext_auth=True)
    engine.dispose()
    # An admin made by the real CLI as the service user would run it (`runuser -u mail_api`),
    # here inside the migration's sandbox: argon2 hashing under MemoryDenyWriteExecute=.
    password_file = tree / "admin-password"
    password_file.write_text(ADMIN_PASSWORD + "\n", encoding="utf-8")
    os.chown(password_file, SERVICE_UID, SERVICE_GID)
    password_file.chmod(0o600)
    admin = subprocess.run(sandbox_command("migrate", tree, map_command(
        [CLI, "--config", CONFIG_PATH, "admin", "create", "admin", "--password-file",
         str(password_file)], tree)), cwd=PROJECT, capture_output=True, text=True, timeout=60,
        check=False)
    assert admin.returncode == 0, admin.stdout + admin.stderr
    daemons = [start(name, tree) for name in DAEMONS]
    try:
        for daemon in daemons:
            daemon.notify.wait_for("READY=1", 30, daemon.process)
            assert confinement(daemon.process.pid) == {
                "Uid": str(SERVICE_UID), "NoNewPrivs": "1", "Seccomp": "2",
                "CapBnd": "0000000000000000"}, daemon.name

        # The receiver reads its secret from $CREDENTIALS_DIRECTORY and writes the queue.
        suite = Suite(tree / "etc/mail_api/mail-api.toml", receiver_port, webhook_secret)
        code, answer = suite.post(webhook_body("someone@example.org", "token-1"))
        assert code == 202, answer
        # The worker reads its password the same way, reaches out, and writes its log.
        received = smtp_server.recorder.wait_for(1, timeout=20)
        assert received[0].auth_user == "relay"
        assert received[0].rcpt_tos == ["someone@example.org"]
        delivery_log = tree / LOGS_DIR.lstrip("/") / "delivery.log"
        wait_until(lambda: delivery_log.exists() and any(
            json.loads(line)["queue_id"] == answer["queued_id"]
            for line in delivery_log.read_text(encoding="utf-8").splitlines()),
            message="the delivery log line")
        # The panel verifies the password and reads the worker's log, which it cannot write.
        with httpx.Client(base_url=f"http://127.0.0.1:{panel_port}", timeout=10) as http:
            assert log_in(http, ADMIN_PASSWORD).status_code == 303
            page = http.get("/log")
            assert page.status_code == 200
            assert f"#{answer['queued_id']}</a>" in page.text

        for daemon in daemons:
            if service(daemon.name).service("ExecReload") is not None:
                daemon.process.send_signal(signal.SIGHUP)
                daemon.notify.wait_for("RELOADING=1", 10, daemon.process)
                daemon.notify.wait_for("READY=1", 10, daemon.process)
        for daemon in daemons:
            daemon.process.send_signal(signal.SIGTERM)
        for daemon in daemons:
            daemon.notify.wait_for("STOPPING=1", 10, daemon.process)
            assert daemon.process.wait(timeout=30) == 0, daemon.output()
    finally:
        for daemon in daemons:
            if daemon.process.poll() is None:
                daemon.process.kill()
                daemon.process.wait(timeout=10)
            daemon.notify.sock.close()
        smtp_server.stop()
