"""kill -9 and SIGSTOP of the real worker at each delivery stage: nothing lost, one duplicate."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from mailapi.db import open_engine
from tests.support.database import configure
from tests.support.ports import free_port
from tests.support.processes import Daemon, Suite, wait_until, webhook_body, write_config
from tests.support.smtpd import Received, Recorder, SmtpServer

pytestmark = pytest.mark.e2e

HOLD_LIMIT_SECONDS = 60.0  # a hold never outlives a failed test by long
LEASES_LOST = "leases lost before recording; another worker owns them"


@dataclass
class Hold:
    """One DATA the server holds: the final dot is in, the reply is not sent until released."""

    reply: str | None = None  # None: store the message and answer 250
    reached: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    abandoned: threading.Event = field(default_factory=threading.Event)  # client went away

    def let_go(self, reply: str | None = None) -> None:
        self.reply = reply
        self.release.set()


@dataclass
class HoldingRecorder(Recorder):
    """The n-th DATA of the server's life waits on holds[n]; the ones after pass straight.

    A held client that disconnects cancels the hold (aiosmtpd cancels the session's handler
    when the connection is lost), so a message is stored only if its sender heard the 250.
    """

    holds: list[Hold] = field(default_factory=list)
    data_seen: int = 0

    def hold_next(self) -> Hold:
        hold = Hold()
        self.holds.append(hold)
        return hold

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        index = self.data_seen
        self.data_seen += 1
        if index < len(self.holds):
            hold = self.holds[index]
            hold.reached.set()
            deadline = time.monotonic() + HOLD_LIMIT_SECONDS
            try:
                while not hold.release.is_set() and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                hold.abandoned.set()
                raise
            if hold.reply is not None:
                return hold.reply
        return await super().handle_DATA(server, session, envelope)


class HoldingServer(SmtpServer):
    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.holding = HoldingRecorder()
        self.recorder = self.holding
        self.controller.handler = self.holding  # each new session is built with it


@pytest.fixture
def smtp_server() -> Iterator[HoldingServer]:
    """Overrides the shared fixture, so the suite's worker delivers to a holding server."""
    server = HoldingServer(free_port())
    server.start()
    yield server
    for hold in server.holding.holds:
        hold.release.set()
    server.stop()


# -- helpers ---------------------------------------------------------------------------------

def reconfigure(suite: Suite, *, crash_at: str | None = None) -> None:
    """Rewrite the bootstrap file: a short lease floor, and the test-only crash point if any."""
    extra = "[worker]\nlease_seconds = 1\n"
    if crash_at:
        extra += f'\n[testing]\ncrash_at = "{crash_at}"\n'
    write_config(suite.config.parent, receiver_port=suite.receiver_port, extra=extra)


def set_settings(suite: Suite, **values: Any) -> None:
    engine = open_engine(suite.config.parent / "mail-api.sqlite3", durability="FULL",
                         busy_timeout_ms=5000)
    configure(engine, **values)
    engine.dispose()


def query(suite: Suite, sql: str, *parameters: object) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(suite.config.parent / "mail-api.sqlite3")) as connection:
        return list(connection.execute(sql, parameters).fetchall())


@dataclass(frozen=True)
class Lease:
    state: str
    token: int | None
    expires_at: float | None
    reclaims: int
    message_id: str


def lease(suite: Suite, queue_id: int) -> Lease:
    [row] = query(suite, "SELECT state, lease_token, lease_expires_at, reclaims, message_id "
                         "FROM outbound_queue WHERE id = ?", queue_id)
    return Lease(*row)


def rows(suite: Suite) -> int:
    return int(query(suite, "SELECT count(*) FROM outbound_queue")[0][0])


def assert_integrity(suite: Suite) -> None:
    assert query(suite, "PRAGMA integrity_check") == [("ok",)]


def end_lease_now(suite: Suite, queue_id: int) -> None:
    """A lease lasts 14 x smtp_timeout at least; end it now instead of waiting (the real
    expiry is waited for in test_worker_killed_after_claim_delivers_once_the_lease_expires)."""
    with closing(sqlite3.connect(suite.config.parent / "mail-api.sqlite3")) as connection:
        ended = connection.execute("UPDATE outbound_queue SET lease_expires_at = ? WHERE id = ? "
                                   "AND state = 'leased'", (time.time() - 1, queue_id))
        assert ended.rowcount == 1
        connection.commit()


def log_events(daemon: Daemon, event: str) -> list[dict[str, Any]]:
    found = []
    for line in daemon.output().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") == event:
            found.append(entry)
    return found


def enqueue(suite: Suite, recipient: str, token: str, *, expires_in: float | None = None
            ) -> int:
    webhook = webhook_body(recipient, token)
    if expires_in is not None:
        expires = datetime.now(UTC) + timedelta(seconds=expires_in)
        webhook["expiresAt"] = expires.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    status, body = suite.post(webhook)
    assert status == 202, body
    return int(body["queued_id"])


def assert_killed(daemon: Daemon) -> None:
    assert daemon.process.wait(timeout=20) == -signal.SIGKILL, daemon.output()


def wait_delivered(suite: Suite, server: HoldingServer, copies: int) -> list[Received]:
    """Once the row is deleted nothing can send it again: the count at the server is final."""
    server.recorder.wait_for(copies, timeout=30)
    wait_until(lambda: rows(suite) == 0, timeout=20, message="row deleted after delivery")
    return list(server.recorder.messages)


# -- fixed kill points -----------------------------------------------------------------------

def test_worker_killed_after_claim_delivers_once_the_lease_expires(
        suite: Suite, smtp_server: HoldingServer) -> None:
    set_settings(suite, smtp_timeout=1)  # the lease: max(lease_seconds, 14 x 1 s) = 14 s
    reconfigure(suite, crash_at="worker.after_claim")
    suite.start_receiver()
    doomed = suite.start("worker")
    queue_id = enqueue(suite, "claimed@example.org", "tok-after-claim")
    assert_killed(doomed)
    assert_integrity(suite)
    held = lease(suite, queue_id)
    assert (held.state, held.reclaims) == ("leased", 0)
    assert held.token is not None and held.expires_at is not None

    reconfigure(suite)
    rescuer = suite.start("worker")
    wait_until(lambda: bool(log_events(rescuer, "worker ready")), message="worker ready")
    if time.time() < held.expires_at - 0.5:  # the dead worker's lease still runs: untouched
        assert lease(suite, queue_id) == held
        assert smtp_server.recorder.messages == []
    [received] = wait_delivered(suite, smtp_server, 1)
    assert received.rcpt_tos == ["claimed@example.org"]
    assert received.parsed()["Message-ID"] == held.message_id
    [reclaimed] = log_events(rescuer, "reclaimed expired leases")
    assert reclaimed["count"] == 1
    assert_integrity(suite)


def test_token_expiring_while_a_dead_worker_held_the_lease_is_never_sent(
        suite: Suite, smtp_server: HoldingServer) -> None:
    reconfigure(suite, crash_at="worker.after_claim")
    suite.start_receiver()
    doomed = suite.start("worker")
    wait_until(lambda: bool(log_events(doomed, "worker ready")), message="worker ready")
    queue_id = enqueue(suite, "late@example.org", "tok-expires-soon", expires_in=4.0)
    assert_killed(doomed)  # claimed it (before expiry: claims skip expired tokens) and died
    [(expires_at,)] = query(suite, "SELECT expires_at FROM outbound_queue WHERE id = ?",
                            queue_id)
    wait_until(lambda: time.time() > expires_at, timeout=10, message="the token expired")

    reconfigure(suite)
    end_lease_now(suite, queue_id)
    suite.start("worker")
    wait_until(lambda: lease(suite, queue_id).state == "failed", message="expired row failed")
    assert query(suite, "SELECT failed_reason FROM outbound_queue WHERE id = ?",
                 queue_id) == [("expired",)]
    assert smtp_server.recorder.messages == []  # a failed row is never claimed again
    assert_integrity(suite)


def test_worker_killed_mid_data_is_delivered_later_and_the_server_kept_nothing(
        suite: Suite, smtp_server: HoldingServer) -> None:
    set_settings(suite, smtp_timeout=30)  # the worker waits for the held reply, never gives up
    hold = smtp_server.holding.hold_next()
    suite.start_receiver()
    worker = suite.start("worker")
    queue_id = enqueue(suite, "middata@example.org", "tok-mid-data")
    assert hold.reached.wait(20), worker.output()  # the final dot is in, unanswered
    worker.kill()  # kill -9
    assert hold.abandoned.wait(10)  # the server saw the sender go and stored nothing
    assert smtp_server.recorder.messages == []
    assert_integrity(suite)
    held = lease(suite, queue_id)
    assert held.state == "leased"

    end_lease_now(suite, queue_id)
    rescuer = suite.start("worker")
    [received] = wait_delivered(suite, smtp_server, 1)
    assert received.rcpt_tos == ["middata@example.org"]
    assert received.parsed()["Message-ID"] == held.message_id
    assert log_events(rescuer, "reclaimed expired leases")[0]["count"] == 1


def test_worker_killed_after_the_250_duplicates_once_with_the_same_message_id(
        suite: Suite, smtp_server: HoldingServer) -> None:
    """The design's one duplicate window: the upstream took it, the DELETE never committed."""
    reconfigure(suite, crash_at="worker.after_accept")
    suite.start_receiver()
    doomed = suite.start("worker")
    queue_id = enqueue(suite, "accepted@example.org", "tok-after-accept")
    assert_killed(doomed)
    assert_integrity(suite)
    assert len(smtp_server.recorder.messages) == 1  # stored, and answered 250
    held = lease(suite, queue_id)
    assert held.state == "leased"  # the outcome was never recorded

    reconfigure(suite)
    end_lease_now(suite, queue_id)
    rescuer = suite.start("worker")
    first, second = wait_delivered(suite, smtp_server, 2)
    assert first.data == second.data  # the same bytes, fixed at enqueue
    assert first.parsed()["Message-ID"] == second.parsed()["Message-ID"] == held.message_id
    assert log_events(rescuer, "reclaimed expired leases")[0]["count"] == 1
    assert len(smtp_server.recorder.messages) == 2  # and no third copy
    assert_integrity(suite)


# -- a stale worker --------------------------------------------------------------------------

def test_stale_worker_resumed_after_its_lease_was_reclaimed_changes_nothing(
        suite: Suite, smtp_server: HoldingServer) -> None:
    """SIGSTOP a worker mid-DATA, let another reclaim the row, then let the first one record a
    permanent refusal: its fencing token is stale, so the row stays with the second worker
    (a refusal applied there would have failed a message that is being delivered)."""
    set_settings(suite, smtp_timeout=30)
    first_hold = smtp_server.holding.hold_next()
    second_hold = smtp_server.holding.hold_next()
    suite.start_receiver()
    stale = suite.start("worker")
    queue_id = enqueue(suite, "stale@example.org", "tok-stale")
    assert first_hold.reached.wait(20), stale.output()
    os.kill(stale.process.pid, signal.SIGSTOP)
    try:
        first = lease(suite, queue_id)
        assert first.state == "leased" and first.token is not None

        end_lease_now(suite, queue_id)
        current = suite.start("worker")
        assert second_hold.reached.wait(20), current.output()
        second = lease(suite, queue_id)
        assert second.state == "leased" and second.reclaims == 1
        assert second.token is not None and second.token > first.token

        first_hold.let_go("554 5.7.1 refused by policy")  # what the stale worker will hear
    finally:
        os.kill(stale.process.pid, signal.SIGCONT)
    wait_until(lambda: bool(log_events(stale, LEASES_LOST)) or lease(suite, queue_id) != second,
               message="the stale worker recording its outcome")
    assert lease(suite, queue_id) == second  # not failed, not requeued: untouched
    [lost] = log_events(stale, LEASES_LOST)  # the stale outcome was discarded
    assert lost["count"] == 1
    assert query(suite, "SELECT count(*) FROM delivery_events WHERE queue_id = ?",
                 queue_id) == [(0,)]

    second_hold.let_go()  # the current owner's delivery completes
    [received] = wait_delivered(suite, smtp_server, 1)
    assert received.parsed()["Message-ID"] == second.message_id
    assert [event for (event,) in query(
        suite, "SELECT outcome FROM delivery_events WHERE queue_id = ?", queue_id)
            ] == ["delivered"]
    # The stale worker's refusal changed nothing, so the delivery log does not claim it did.
    log_path = suite.config.parent / "log" / "delivery.log"
    wait_until(lambda: log_path.exists() and '"outcome": "delivered"' in log_path.read_text(),
               message="the delivery logged")
    assert "failed" not in log_path.read_text()
    assert stale.stop() == 0 and current.stop() == 0
    assert_integrity(suite)
