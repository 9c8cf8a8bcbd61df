"""Storage faults on the real processes: a held lock, a full database or disk, a corrupt file."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import re
import secrets
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import Engine, event

from mailapi import accounts
from mailapi.db import integrity_check, open_engine, read_transaction, write_transaction
from mailapi.settings import load_settings
from mailapi.signatures import sign
from tests.integration.receiver_harness import DOMAIN, SECRET, WEBHOOK, Receiver, body, signed
from tests.integration.worker_helpers import new_message
from tests.support.database import configure, migrated_engine
from tests.support.ports import free_port
from tests.support.processes import BIN, Daemon, Suite, wait_until, webhook_body, write_config
from tests.support.smallfs import small_filesystem
from tests.support.smtpd import ClosingController, Recorder, SmtpServer

BUSY_TIMEOUT_MS = 200
ADMIN, ADMIN_PASSWORD = "admin", "correct horse battery staple"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
BUSY_PAGE = "The database is busy or unavailable; nothing was changed."
BACKING_OFF = "database busy or full; backing off"
HOLDING = "cannot record outcomes yet"

# Another process's writer: enqueues one message inside BEGIN IMMEDIATE and keeps the write
# lock until it reads a line, then commits.
LOCK_HOLDER = """
import base64, json, sys
from pathlib import Path
from mailapi.db import open_engine, write_transaction
from mailapi.queue import NewMessage, enqueue_many
spec = json.loads(sys.stdin.readline())
fields = dict(spec["message"], message=base64.b64decode(spec["message"]["message"]))
engine = open_engine(Path(spec["database"]), durability="FULL", busy_timeout_ms=10000)
with write_transaction(engine) as connection:
    enqueue_many(connection, [NewMessage(**fields)], spec["now"])
    print("locked", flush=True)
    sys.stdin.readline()
engine.dispose()
print("released", flush=True)
"""


# -- a suite on a database of our choosing -------------------------------------------------------

def storage_suite(directory: Path, database: Path, smtp_port: int, *, panel: bool = False,
                  smtp_timeout: int = 5) -> Suite:
    """Config in `directory`, database at `database` (migrated, configured), a busy timeout
    of BUSY_TIMEOUT_MS, and with `panel` a loopback panel with one admin."""
    receiver_port = free_port()
    panel_port = free_port() if panel else None
    config = write_config(directory, receiver_port=receiver_port, panel_port=panel_port)
    text = config.read_text(encoding="utf-8")
    changed = text.replace('path = "mail-api.sqlite3"', f"path = {json.dumps(str(database))}"
                           ).replace("busy_timeout_ms = 2000",
                                     f"busy_timeout_ms = {BUSY_TIMEOUT_MS}")
    assert changed.count(str(database)) == 1 and f"= {BUSY_TIMEOUT_MS}\n" in changed
    config.write_text(changed, encoding="utf-8")
    engine = migrated_engine(database)
    secret = secrets.token_hex(16)
    configure(engine, webhook_secret=secret, allowed_sender_domain="example.com",
              smtp_host="127.0.0.1", smtp_port=smtp_port, smtp_security="plain",
              smtp_timeout=smtp_timeout, retry_base_seconds=1)
    if panel:
        with write_transaction(engine) as connection:
            accounts.create_admin(connection, ADMIN, ADMIN_PASSWORD, actor="test",
                                  source="test", now=time.time())
    engine.dispose()
    return Suite(config, receiver_port, secret, panel_port=panel_port)


def post(suite: Suite, payload: dict[str, Any]) -> httpx.Response:
    """A signed webhook; the whole response, headers included."""
    raw = json.dumps(payload).encode()
    timestamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return httpx.post(f"http://127.0.0.1:{suite.receiver_port}/webhook/outbound-email",
                      content=raw, timeout=10,
                      headers={"Content-Type": "application/json",
                               "X-TransLife-Timestamp": timestamp,
                               "X-TransLife-Signature": sign(suite.secret, timestamp, raw)})


def assert_storage_refusal(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json() == {"ok": False, "error": "database unavailable, retry later"}
    assert int(response.headers["Retry-After"]) > 0


def states(database: Path, recipient: str) -> list[str]:
    """The queue rows for `recipient`, read by a separate read-only connection."""
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as connection:
        return [str(state) for (state,) in connection.execute(
            "SELECT state FROM outbound_queue WHERE recipient = ?", (recipient,))]


def queue_size(database: Path) -> int:
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as connection:
        return int(connection.execute("SELECT count(*) FROM outbound_queue").fetchone()[0])


def quick_check(database: Path) -> str:
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as connection:
        return str(connection.execute("PRAGMA quick_check").fetchone()[0])


def records(daemon: Daemon, event_name: str) -> list[dict[str, Any]]:
    found = []
    for line in daemon.output().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == event_name:
                found.append(record)
    return found


def log_in(panel_url: str) -> httpx.Response:
    """The login form, then a POST with the right password (a write: it opens a session)."""
    with httpx.Client(base_url=panel_url, timeout=10) as http:
        form = http.get("/login")
        assert form.status_code == 200, form.text[:300]
        token = CSRF.search(form.text)
        assert token is not None
        return http.post("/login", data={"csrf_token": token.group(1), "username": ADMIN,
                                         "password": ADMIN_PASSWORD, "next": "/"})


def recipients(server: SmtpServer | GatedSmtpServer) -> list[str]:
    return sorted(address for message in server.recorder.messages
                  for address in message.rcpt_tos)


def assert_each_sent_once(server: SmtpServer | GatedSmtpServer, expected: list[str]) -> None:
    assert recipients(server) == sorted(expected)
    ids = [message.parsed()["Message-ID"] for message in server.recorder.messages]
    assert len(set(ids)) == len(ids), ids


# -- 1. a lock held past the busy timeout -----------------------------------------------------

def held_message(database: Path, to: str) -> dict[str, Any]:
    """What the lock holder enqueues: a message built as the receiver would build it."""
    engine = open_engine(database, durability="FULL", busy_timeout_ms=5000)
    try:
        with read_transaction(engine) as connection:
            settings = load_settings(connection)
    finally:
        engine.dispose()
    message = new_message(settings, now=time.time(), to=to, token="tok-held")
    fields = dataclasses.asdict(message)
    fields["message"] = base64.b64encode(message.message).decode()
    return fields


def start_lock_holder(database: Path, message: dict[str, Any]) -> subprocess.Popen[str]:
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdin is not None and holder.stdout is not None
    holder.stdin.write(json.dumps({"database": str(database), "message": message,
                                   "now": time.time()}) + "\n")
    holder.stdin.flush()
    said = holder.stdout.readline().strip()
    if said != "locked":
        holder.kill()
        holder.communicate(timeout=10)
        raise AssertionError(f"the lock holder did not take the lock: {said!r}")
    return holder


def release_lock(holder: subprocess.Popen[str]) -> None:
    """One line tells the holder to commit; it says so and exits."""
    try:
        said, _ = holder.communicate("\n", timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.communicate(timeout=10)
    assert holder.returncode == 0 and said.strip() == "released"


def test_a_lock_past_the_busy_timeout_then_recovery_on_the_first_try(
        tmp_path: Path, smtp_server: SmtpServer) -> None:
    """Held by another process: the receiver 503s (Retry-After, no row), the panel shows its
    503 page for a login (a write), the worker backs off exponentially and keeps running.
    After the release, the very first webhook is accepted, the first login works, and the
    worker delivers both that webhook and the message the lock holder committed."""
    database = tmp_path / "mail-api.sqlite3"
    suite = storage_suite(tmp_path, database, smtp_server.port, panel=True)
    try:
        receiver = suite.start_receiver()
        panel = suite.start_panel()
        worker = suite.start("worker")
        wait_until(lambda: "worker ready" in worker.output(), message="worker ready")
        holder = start_lock_holder(database, held_message(database, "held@example.com"))
        try:
            refused = post(suite, webhook_body("locked@example.com", "tok-locked"))
            assert_storage_refusal(refused)
            assert states(database, "locked@example.com") == []
            login = log_in(suite.panel_url)
            assert login.status_code == 503 and BUSY_PAGE in login.text
            wait_until(lambda: len(records(worker, BACKING_OFF)) >= 4, timeout=20,
                       message="the worker backing off four times")
            waits = [record["seconds"] for record in records(worker, BACKING_OFF)]
            assert waits == sorted(waits) and waits[-1] >= 4 * waits[0], waits  # exponential
            assert worker.process.poll() is None
        finally:
            release_lock(holder)

        accepted = post(suite, webhook_body("locked@example.com", "tok-locked"))
        assert accepted.status_code == 202, accepted.text
        assert log_in(suite.panel_url).status_code == 303
        smtp_server.recorder.wait_for(2, timeout=20)
        wait_until(lambda: queue_size(database) == 0, message="an empty queue")
        assert_each_sent_once(smtp_server, ["held@example.com", "locked@example.com"])
        assert all(daemon.process.poll() is None for daemon in (receiver, panel, worker))
        assert not records(worker, "unexpected error in the delivery loop")
    finally:
        suite.stop_all()


# -- 2a. a database at its page limit: the receiver in-process ---------------------------------

def test_max_page_count_binds_only_the_connection_that_sets_it(db_path: Path,
                                                               engine: Engine) -> None:
    """Why the page limit is tested in-process: a limit set by a test's connection cannot
    reach the daemons' connections, so the real processes are filled with a small disk."""
    with closing(sqlite3.connect(db_path)) as setter, closing(sqlite3.connect(db_path)) as other:
        default = other.execute("PRAGMA max_page_count").fetchone()[0]
        pages = setter.execute("PRAGMA page_count").fetchone()[0]
        assert setter.execute(f"PRAGMA max_page_count = {pages}").fetchone()[0] == pages
        assert other.execute("PRAGMA max_page_count").fetchone()[0] == default > pages


class PageLimit:
    """Sets max_page_count on every connection the engine hands out, so changing `pages`
    reaches the app's pooled connections at their next use."""

    def __init__(self, engine: Engine) -> None:
        self.pages: int | None = None
        self.default = 0
        event.listen(engine, "checkout", self._apply)

    def _apply(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            if not self.default:
                self.default = int(cursor.execute("PRAGMA max_page_count").fetchone()[0])
            # SQLite never sets the limit below the current size: 1 means "no growth".
            cursor.execute(f"PRAGMA max_page_count = {self.pages or self.default}")
        finally:
            cursor.close()


def big_body(index: int) -> bytes:
    """A message that needs new pages (overflow pages) wherever it goes."""
    token = f"tok-{index}-" + "t" * 900
    return body(token=token, link="https://app.example.com/verify?t=" + "x" * 1900 + str(index))


def test_a_database_at_its_page_limit_answers_503_until_it_may_grow(engine: Engine,
                                                                    db_path: Path) -> None:
    configure(engine, webhook_secret=SECRET, allowed_sender_domain=DOMAIN)
    capped = open_engine(db_path, durability="FULL", busy_timeout_ms=BUSY_TIMEOUT_MS)
    limit = PageLimit(capped)
    receiver = Receiver(capped)
    accepted_ids: list[int] = []

    async def scenario(http: httpx.AsyncClient) -> None:
        async def send(raw: bytes) -> httpx.Response:
            response = await http.post(WEBHOOK, content=raw, headers=signed(raw))
            if response.status_code == 202:  # never a 2xx without its row
                queue_id = response.json()["queued_id"]
                assert queue_id in [row.id for row in receiver.rows()]
                accepted_ids.append(queue_id)
            return response

        assert (await send(big_body(0))).status_code == 202
        limit.pages = 1
        answers = [(await send(big_body(index))).status_code for index in range(1, 20)]
        assert 503 in answers, answers  # the limit bit before 19 more messages fitted
        assert set(answers[answers.index(503):]) == {503}  # and kept biting, no crash
        refused = await send(big_body(99))
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "2"
        assert refused.json() == {"ok": False, "error": "database unavailable, retry later"}
        rows_while_full = receiver.row_count()
        assert rows_while_full == len(accepted_ids)

        limit.pages = None  # space returns: the same app, no restart
        assert (await send(big_body(99))).status_code == 202
        for index in range(1, 20):  # the refused ones, retried by their sender
            assert (await send(big_body(index))).status_code == 202

    try:
        receiver.run(scenario)
        assert receiver.row_count() == 21 == len(set(accepted_ids))
        assert integrity_check(capped) == ["ok"]
    finally:
        capped.dispose()


# -- 2b. a real small filesystem under the real processes ---------------------------------------

class GatedRecorder(Recorder):
    """Stores each message, then holds its 250 until `gate` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        await asyncio.to_thread(self.gate.wait, 60)
        return reply


class GatedSmtpServer:
    def __init__(self) -> None:
        self.recorder = GatedRecorder()
        self.port = free_port()
        self.controller = ClosingController(self.recorder, hostname="127.0.0.1", port=self.port,
                                     ready_timeout=10)


@pytest.fixture
def gated_smtp() -> Iterator[GatedSmtpServer]:
    server = GatedSmtpServer()
    server.controller.start()
    yield server
    server.recorder.gate.set()
    server.controller.stop()


def truncate_wal(database: Path) -> None:
    """Checkpoint the WAL into the database and cut it to nothing, so any commit after this
    has to grow it (a WAL reused in place would need no new space)."""
    with closing(sqlite3.connect(database, timeout=10)) as connection:
        busy, _, _ = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0


def test_a_full_filesystem_refuses_holds_and_resumes_by_itself(
        tmp_path: Path, gated_smtp: GatedSmtpServer) -> None:
    """The database and its WAL on a 4 MiB tmpfs, filled to the last byte while the worker
    waits for a 250: the worker keeps the outcome it cannot record, the receiver answers 503
    (no row, no 2xx) and keeps running; once the filler is deleted, the outcome is recorded
    (the message is not sent again), the next webhook is accepted on its first try and
    delivered, and the file passes its integrity check."""
    with small_filesystem(tmp_path / "small", 4 * 1024 * 1024) as disk:
        database = disk.root / "mail-api.sqlite3"
        suite = storage_suite(tmp_path, database, gated_smtp.port, smtp_timeout=30)
        gate = gated_smtp.recorder.gate
        try:
            receiver = suite.start_receiver()
            worker = suite.start("worker")
            wait_until(lambda: "worker ready" in worker.output(), message="worker ready")
            assert post(suite, webhook_body("first@example.com", "tok-1")).status_code == 202
            gated_smtp.recorder.wait_for(1)

            gate.clear()
            assert post(suite, webhook_body("held@example.com", "tok-2")).status_code == 202
            gated_smtp.recorder.wait_for(2)  # stored upstream; its 250 is held back
            truncate_wal(database)
            assert disk.fill() > 0 and disk.free_bytes() == 0
            gate.set()
            wait_until(lambda: len(records(worker, HOLDING)) >= 2, timeout=20,
                       message="the worker holding an outcome it cannot record")
            assert states(database, "held@example.com") == ["leased"]

            for _ in range(3):
                assert_storage_refusal(post(suite, webhook_body("late@example.com", "tok-3")))
            assert states(database, "late@example.com") == []
            assert receiver.process.poll() is None and worker.process.poll() is None

            disk.release()
            wait_until(lambda: states(database, "held@example.com") == [], timeout=20,
                       message="the held outcome recorded once space returned")
            accepted = post(suite, webhook_body("late@example.com", "tok-3"))
            assert accepted.status_code == 202, accepted.text
            gated_smtp.recorder.wait_for(3, timeout=20)
            wait_until(lambda: queue_size(database) == 0, message="an empty queue")
            assert_each_sent_once(gated_smtp,
                                  ["first@example.com", "held@example.com", "late@example.com"])
            assert not records(worker, "unexpected error in the delivery loop")
            assert receiver.process.poll() is None and worker.process.poll() is None
            assert quick_check(database) == "ok"
        finally:
            gate.set()
            suite.stop_all()


# -- 3. a corrupted database file ----------------------------------------------------------------

def overwrite_header(path: Path) -> None:
    with path.open("r+b") as handle:
        handle.write(b"this is not a database!!" * 4)


def overwrite_middle_pages(path: Path) -> None:
    size = path.stat().st_size
    with path.open("r+b") as handle:
        handle.seek((size // 2) // 4096 * 4096 - 3 * 4096)
        handle.write(b"\xab" * 6 * 4096)


def truncate_half(path: Path) -> None:
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


def truncate_all(path: Path) -> None:
    with path.open("r+b") as handle:
        handle.truncate(0)


CORRUPTIONS: dict[str, tuple[Callable[[Path], None], str]] = {
    # how the file is damaged, and what the refusal must say about it
    "garbage header": (overwrite_header, "not a database"),
    "pages overwritten": (overwrite_middle_pages, "malformed|integrity check"),
    "truncated": (truncate_half, "malformed|integrity check"),
    "emptied": (truncate_all, "schema revision none|schema: +none"),
}


def snapshot(directory: Path) -> dict[str, str]:
    """Every file in the database's folder, by its content's hash."""
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(directory.iterdir())}


@pytest.mark.parametrize("damage", list(CORRUPTIONS))
def test_a_corrupted_database_is_refused_by_every_process_and_left_as_found(
        tmp_path: Path, damage: str) -> None:
    """Receiver, worker and panel exit 78 and `mailapi db check` fails, each naming the file
    and what is wrong with it; the file keeps its bytes and no fresh database appears
    beside it (test_startup_refusals covers a file of garbage for receiver and worker)."""
    folder = tmp_path / "data"
    folder.mkdir()
    database = folder / "mail-api.sqlite3"
    config = write_config(tmp_path, receiver_port=free_port(), panel_port=free_port())
    config.write_text(config.read_text(encoding="utf-8").replace(
        'path = "mail-api.sqlite3"', f"path = {json.dumps(str(database))}"), encoding="utf-8")
    migrated_engine(database).dispose()  # closing the last connection removes -wal and -shm
    corrupt, reason = CORRUPTIONS[damage]
    corrupt(database)
    before = snapshot(folder)
    assert list(before) == ["mail-api.sqlite3"]

    commands = {name: [str(BIN / f"mailapi-{name}"), "--config", str(config)]
                for name in ("receiver", "worker", "panel")}
    commands["db check"] = [str(BIN / "mailapi"), "--config", str(config), "db", "check"]
    running = {name: subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True) for name, command in commands.items()}
    results = {name: process.communicate(timeout=60) for name, process in running.items()}

    for name, (stdout, stderr) in results.items():
        code = running[name].returncode
        said = stdout + stderr
        assert str(database) in said, (name, said)
        assert re.search(reason, said), (name, said)
        if name == "db check":
            assert code != 0, said
        else:
            assert code == 78 and stderr.startswith(f"{name}: "), (name, code, said)
    assert snapshot(folder) == before
