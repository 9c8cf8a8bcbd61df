"""The worker delivering real messages to a plain aiosmtpd server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from sqlalchemy import Engine

from tests.integration.worker_helpers import (
    LINK,
    SENDER_DOMAIN,
    TOKEN,
    Clock,
    enqueue,
    enqueue_some,
    events,
    make_worker,
    new_message,
    pause,
    row,
    run_passes,
    smtp_settings,
)
from tests.support.ports import free_port
from tests.support.smtpd import SmtpServer


def test_message_arrives_with_envelope_and_headers(engine: Engine, smtp_server: SmtpServer,
                                                   tmp_path: Path) -> None:
    clock = Clock()
    settings = smtp_settings(engine, smtp_server.port, sender_display_name="Example")
    queued = new_message(settings, now=clock.now, to="alice@example.com")
    enqueue(engine, [queued], clock.now)

    assert run_passes(make_worker(engine, tmp_path, clock)) == [1]

    [received] = smtp_server.recorder.wait_for(1)
    assert received.mail_from == f"no-reply@{SENDER_DOMAIN}" == queued.envelope_sender
    assert received.rcpt_tos == ["alice@example.com"]
    assert received.tls is False
    assert received.auth_user is None
    parsed = received.parsed()
    assert parsed["Message-ID"] == queued.message_id
    assert parsed["From"].addresses[0].addr_spec == f"no-reply@{SENDER_DOMAIN}"
    assert parsed["From"].addresses[0].display_name == "Example"
    assert parsed["To"] == "alice@example.com"
    assert parsed["Subject"] == queued.subject
    assert received.data.replace(b"\r\n", b"\n").strip() == (
        queued.message.replace(b"\r\n", b"\n").strip())
    body = parsed.get_body(("plain",))
    assert body is not None and LINK in body.get_content()


def test_delivery_deletes_row_and_records_event(engine: Engine, smtp_server: SmtpServer,
                                                tmp_path: Path) -> None:
    clock = Clock()
    settings = smtp_settings(engine, smtp_server.port)
    queued = new_message(settings, now=clock.now)
    [queue_id] = enqueue(engine, [queued], clock.now)
    worker = make_worker(engine, tmp_path, clock)

    run_passes(worker)

    assert row(engine, queue_id) is None
    [event] = events(engine, queue_id)
    assert event.outcome == "delivered"
    assert event.smtp_code == 250
    assert event.message_id == queued.message_id
    assert event.recipient == "user@example.com"
    assert worker.stats.delivered == 1
    assert worker.stats.last_delivery_at == clock.now
    assert pause(engine).paused_until is None


def test_delivery_log_has_one_line_without_token_or_link(engine: Engine,
                                                         smtp_server: SmtpServer,
                                                         tmp_path: Path) -> None:
    clock = Clock()
    settings = smtp_settings(engine, smtp_server.port)
    queued = new_message(settings, now=clock.now)
    [queue_id] = enqueue(engine, [queued], clock.now)

    run_passes(make_worker(engine, tmp_path, clock))

    smtp_server.recorder.wait_for(1)
    text = (tmp_path / "d.log").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["queue_id"] == queue_id
    assert entry["message_id"] == queued.message_id
    assert entry["to"] == "user@example.com"
    assert entry["outcome"] == "delivered"
    assert entry["code"] == 250
    assert entry["attempt"] == 1
    assert TOKEN not in text
    assert LINK not in text
    assert "token=" not in text


def test_batch_reuses_connections(engine: Engine, smtp_server: SmtpServer,
                                  tmp_path: Path) -> None:
    clock = Clock()
    settings = smtp_settings(engine, smtp_server.port)
    queue_ids = enqueue_some(engine, settings, clock.now, count=8)

    assert run_passes(make_worker(engine, tmp_path, clock, sessions=2)) == [8]

    received = smtp_server.recorder.wait_for(8)
    assert sorted(message.rcpt_tos[0] for message in received) == sorted(
        f"user{index}@example.com" for index in range(8))
    # Two sessions, each opened once: far fewer connections than messages.
    assert 1 <= smtp_server.recorder.connections <= 2
    assert all(row(engine, queue_id) is None for queue_id in queue_ids)
    assert [event.outcome for event in events(engine)] == ["delivered"] * 8


def test_connections_survive_between_passes(engine: Engine, smtp_server: SmtpServer,
                                            tmp_path: Path) -> None:
    clock = Clock()
    settings = smtp_settings(engine, smtp_server.port)
    worker = make_worker(engine, tmp_path, clock, sessions=1)
    enqueue_some(engine, settings, clock.now, count=1)

    async def drive() -> list[int]:
        sizes = [await worker.run_once()]
        enqueue(engine, [new_message(settings, now=clock.now, token="second-token")],
                clock.now)
        sizes.append(await worker.run_once())
        await worker.close()
        return sizes

    assert asyncio.run(drive()) == [1, 1]
    smtp_server.recorder.wait_for(2)
    assert smtp_server.recorder.connections == 1


def test_idle_pass_claims_nothing_and_sends_nothing(engine: Engine, smtp_server: SmtpServer,
                                                    tmp_path: Path) -> None:
    clock = Clock()
    smtp_settings(engine, smtp_server.port)

    assert run_passes(make_worker(engine, tmp_path, clock), passes=2) == [0, 0]

    assert smtp_server.recorder.connections == 0
    assert not (tmp_path / "d.log").exists()


def test_not_yet_due_message_waits(engine: Engine, smtp_server: SmtpServer,
                                   tmp_path: Path) -> None:
    clock = Clock()
    settings = smtp_settings(engine, smtp_server.port)
    [queue_id] = enqueue_some(engine, settings, clock.now + 60)  # due in a minute

    assert run_passes(make_worker(engine, tmp_path, clock)) == [0]
    assert smtp_server.recorder.messages == []
    found = row(engine, queue_id)
    assert found is not None and found.state == "queued" and found.attempts == 0

    clock.advance(61)
    assert run_passes(make_worker(engine, tmp_path, clock)) == [1]
    assert smtp_server.recorder.wait_for(1)


def test_server_restart_between_passes_costs_no_attempt(engine: Engine,
                                                        tmp_path: Path) -> None:
    """The pooled connection dies with its server; the next pass reconnects, not defers."""
    clock = Clock()
    port = free_port()
    first, second = SmtpServer(port), SmtpServer(port)
    running = [first.start()]
    settings = smtp_settings(engine, port)
    worker = make_worker(engine, tmp_path, clock, sessions=1)
    enqueue_some(engine, settings, clock.now)

    async def drive() -> tuple[int, int]:
        try:
            delivered = await worker.run_once()
            running.pop().stop()
            running.append(second.start())
            enqueue(engine, [new_message(settings, now=clock.now, token="after-restart")],
                    clock.now)
            return delivered, await worker.run_once()
        finally:
            await worker.close()

    try:
        assert asyncio.run(drive()) == (1, 1)
        [received] = second.recorder.wait_for(1)
    finally:
        for server in running:
            server.stop()
    assert first.recorder.connections == 1
    assert received.rcpt_tos == ["user@example.com"]
    assert [event.outcome for event in events(engine)] == ["delivered", "delivered"]
