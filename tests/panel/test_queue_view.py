"""The queue pages: filters, paging, one message, retry / delete / bulk actions, escaping."""

from __future__ import annotations

import hashlib
import re

from sqlalchemy import select

from mailapi import events
from mailapi import queue as outbound
from mailapi.db import read_transaction, write_transaction
from mailapi.models import audit_log
from mailapi.queue import NewMessage, QueueRow
from tests.support.panel import Panel, PanelClient

HOSTILE = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
TOKEN = "TOKEN-d41d8cd98f00b204"


def add_message(panel: Panel, name: str, *, recipient: str | None = None,
                subject: str | None = None, expires_in: float = 3600.0) -> int:
    """Enqueue one message at the panel's clock; returns its queue id."""
    now = panel.clock()
    message = NewMessage(
        digest=hashlib.sha256(name.encode()).hexdigest(), message_type="password_reset",
        recipient=recipient or f"{name}@example.com", envelope_sender="no-reply@example.org",
        subject=subject or f"Reset {name}", message_id=f"<{name}@example.org>",
        message=f"Subject: x\r\n\r\nyour token is {TOKEN}\r\n".encode(),
        expires_at=now + expires_in, keep_key_until=now + 7200)
    with write_transaction(panel.engine) as connection:
        [result] = outbound.enqueue_many(connection, [message], now)
    return result.queue_id


def fail_due(panel: Panel, error: str = "550 5.1.1 mailbox unknown") -> list[int]:
    """Claim every due message and fail it, as the worker does after a 5xx."""
    now = panel.clock()
    claimed = outbound.claim_batch(panel.engine, now=now, limit=1000, lease_seconds=60,
                                   max_age_seconds=86_400)
    with write_transaction(panel.engine) as connection:
        for message in claimed:
            assert outbound.fail(connection, message.queue_id, message.lease_token,
                                 reason="permanent", error=error, now=now)
    return [message.queue_id for message in claimed]


def defer_due(panel: Panel, delay: float, error: str = "451 try later") -> list[int]:
    now = panel.clock()
    claimed = outbound.claim_batch(panel.engine, now=now, limit=1000, lease_seconds=60,
                                   max_age_seconds=86_400)
    with write_transaction(panel.engine) as connection:
        for message in claimed:
            assert outbound.defer(connection, message.queue_id, message.lease_token,
                                  next_attempt_at=now + delay, error=error, now=now)
    return [message.queue_id for message in claimed]


def record(panel: Panel, queue_id: int, outcome: str, *, code: int | None = None,
           detail: str | None = None, recipient: str = "a@example.com", at: float = 0) -> None:
    with write_transaction(panel.engine) as connection:
        events.record_event(connection, events.DeliveryEvent(
            queue_id=queue_id, message_id=f"<{queue_id}@example.org>", recipient=recipient,
            outcome=outcome, smtp_code=code, detail=detail, at=at or panel.clock()))


def message(panel: Panel, queue_id: int) -> QueueRow | None:
    with read_transaction(panel.engine) as connection:
        return outbound.get_message(connection, queue_id)


def audit_rows(panel: Panel) -> list[tuple[str, str, str, str, str | None]]:
    a = audit_log.c
    with read_transaction(panel.engine) as connection:
        return [(row.actor, row.action, row.target, row.source, row.detail)
                for row in connection.execute(
                    select(a.actor, a.action, a.target, a.source, a.detail)
                    .where(a.action.like("queue.%")).order_by(a.id))]


def listed_ids(html: str) -> list[int]:
    return [int(found) for found in re.findall(r'href="/queue/(\d+)">#', html)]


def test_queue_needs_a_session(panel: Panel) -> None:
    response = panel.client().get("/queue")
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login")


def test_counts_state_and_recipient_filters(panel: Panel, admin_client: PanelClient) -> None:
    failed = add_message(panel, "alice")
    fail_due(panel)
    bob = add_message(panel, "bob")
    carol = add_message(panel, "carol", recipient="Carol.Smith@example.net")
    page = admin_client.page("/queue").text
    assert re.search(r'Queued</span><span class="value">2<', page)
    assert re.search(r'Failed</span><span class="value">1<', page)
    assert listed_ids(page) == [carol, bob, failed]  # newest first
    assert listed_ids(admin_client.page("/queue?state=failed").text) == [failed]
    assert listed_ids(admin_client.page("/queue?state=queued").text) == [carol, bob]
    assert listed_ids(admin_client.page("/queue?recipient=carol.smith").text) == [carol]
    # The filter text is matched literally, not as a LIKE pattern.
    assert listed_ids(admin_client.page("/queue?recipient=%25").text) == []
    # An unknown state falls back to all.
    assert len(listed_ids(admin_client.page("/queue?state=bogus").text)) == 3
    failed_page = admin_client.page("/queue?state=failed").text
    assert "permanent" in failed_page and "550 5.1.1 mailbox unknown" in failed_page


def test_queue_is_paged_fifty_rows_at_a_time(panel: Panel, admin_client: PanelClient) -> None:
    ids = [add_message(panel, f"user{index}") for index in range(60)]
    first = admin_client.page("/queue").text
    assert listed_ids(first) == ids[::-1][:50]
    assert "Page 1 of 2 · 60 rows" in first
    second = admin_client.page("/queue?page=2").text
    assert listed_ids(second) == ids[::-1][50:]
    filtered = admin_client.page("/queue?recipient=user5&page=1").text
    assert listed_ids(filtered) == [ids[59], *ids[50:59][::-1], ids[5]]


def test_hostile_fields_are_escaped_everywhere(panel: Panel,
                                               admin_client: PanelClient) -> None:
    queue_id = add_message(panel, "evil", subject=HOSTILE, recipient=f"{HOSTILE}@example.com")
    fail_due(panel, error=f"550 {HOSTILE}")
    record(panel, queue_id, events.FAILED, code=550, detail=HOSTILE)
    for path in ("/queue", f"/queue/{queue_id}", "/deliveries"):
        page = admin_client.page(path).text
        assert HOSTILE not in page, path
        assert ESCAPED in page, path


def test_message_page_shows_fields_and_attempts_but_never_the_body(
        panel: Panel, admin_client: PanelClient) -> None:
    queue_id = add_message(panel, "dora")
    defer_due(panel, 600)
    record(panel, queue_id, events.DEFERRED, code=451, detail="greylisted, come back later")
    page = admin_client.page(f"/queue/{queue_id}").text
    assert "dora@example.com" in page and "Reset dora" in page
    assert "&lt;dora@example.org&gt;" in page  # the Message-ID
    assert "451" in page and "greylisted, come back later" in page
    assert "in 10m 0s" in page  # the next attempt
    assert TOKEN not in page


def test_unknown_and_impossible_ids_are_404(admin_client: PanelClient) -> None:
    assert admin_client.get("/queue/999").status_code == 404
    assert admin_client.get("/queue/0").status_code == 404
    assert admin_client.get(f"/queue/{2**64}").status_code == 404
    assert admin_client.get("/queue/abc").status_code == 404


def test_a_delivered_message_still_shows_its_attempts(panel: Panel,
                                                      admin_client: PanelClient) -> None:
    record(panel, 4242, events.DELIVERED, code=250, detail="2.0.0 queued as ABC")
    page = admin_client.page("/queue/4242").text
    assert "no longer in the queue" in page and "2.0.0 queued as ABC" in page


def test_retry_puts_a_failed_message_back_and_is_audited(
        panel: Panel, admin_client: PanelClient) -> None:
    [queue_id] = [add_message(panel, "erin")]
    fail_due(panel)
    admin_client.page(f"/queue/{queue_id}")
    response = admin_client.post(f"/queue/{queue_id}/retry")
    assert response.status_code == 303
    assert response.headers["location"] == f"/queue/{queue_id}"
    row = message(panel, queue_id)
    assert row is not None and (row.state, row.attempts, row.failed_reason) == (
        "queued", 0, None)
    assert audit_rows(panel) == [("admin", "queue.retry", str(queue_id), "127.0.0.1",
                                  "1 message(s)")]
    assert "will be tried at the worker" in admin_client.page(f"/queue/{queue_id}").text


def test_retry_now_makes_a_waiting_message_due(panel: Panel,
                                               admin_client: PanelClient) -> None:
    queue_id = add_message(panel, "fred")
    defer_due(panel, 3600)
    admin_client.page(f"/queue/{queue_id}")
    assert admin_client.post(f"/queue/{queue_id}/retry").status_code == 303
    row = message(panel, queue_id)
    assert row is not None and row.state == "queued"
    assert row.next_attempt_at == panel.clock()


def test_retry_refuses_an_expired_message(panel: Panel, admin_client: PanelClient) -> None:
    queue_id = add_message(panel, "gina", expires_in=60)
    fail_due(panel)
    panel.clock.advance(120)
    page = admin_client.page(f"/queue/{queue_id}").text
    assert "Retry now" not in page and "cannot be retried" in page
    admin_client.post(f"/queue/{queue_id}/retry")
    row = message(panel, queue_id)
    assert row is not None and row.state == "failed"
    assert audit_rows(panel) == []
    assert f"Message {queue_id} cannot be retried: its token expired" in admin_client.page(
        f"/queue/{queue_id}").text


def test_delete_needs_confirmation_and_only_takes_failed_messages(
        panel: Panel, admin_client: PanelClient) -> None:
    failed = add_message(panel, "hank")
    fail_due(panel)
    waiting = add_message(panel, "iris")
    admin_client.page(f"/queue/{failed}")
    admin_client.post(f"/queue/{failed}/delete")
    assert message(panel, failed) is not None
    response = admin_client.post(f"/queue/{failed}/delete", {"confirm": "on"})
    assert response.headers["location"] == "/queue"
    assert message(panel, failed) is None
    admin_client.post(f"/queue/{waiting}/delete", {"confirm": "on"})
    assert message(panel, waiting) is not None
    assert "only failed messages can be deleted" in admin_client.page(f"/queue/{waiting}").text
    assert audit_rows(panel) == [("admin", "queue.purge", str(failed), "127.0.0.1",
                                  "1 message(s)")]


def test_bulk_retry_skips_expired_messages(panel: Panel, admin_client: PanelClient) -> None:
    short = add_message(panel, "jack", expires_in=60)
    long = add_message(panel, "kate", expires_in=7200)
    fail_due(panel)
    panel.clock.advance(120)
    admin_client.page("/queue")
    response = admin_client.post("/queue/retry-failed")
    assert response.status_code == 303
    short_row, long_row = message(panel, short), message(panel, long)
    assert short_row is not None and short_row.state == "failed"
    assert long_row is not None and long_row.state == "queued"
    assert audit_rows(panel) == [("admin", "queue.retry", "all failed", "127.0.0.1",
                                  "1 message(s)")]
    assert "1 failed message(s) queued again. 1 stay failed" in admin_client.page(
        "/queue").text


def test_bulk_purge_needs_confirmation(panel: Panel, admin_client: PanelClient) -> None:
    failed = [add_message(panel, "liam"), add_message(panel, "mona")]
    fail_due(panel)
    waiting = add_message(panel, "nick")
    admin_client.page("/queue")
    admin_client.post("/queue/purge-failed")
    assert all(message(panel, queue_id) is not None for queue_id in failed)
    assert "Tick the confirmation box" in admin_client.page("/queue").text
    admin_client.post("/queue/purge-failed", {"confirm": "on"})
    assert [message(panel, queue_id) for queue_id in failed] == [None, None]
    assert message(panel, waiting) is not None
    assert audit_rows(panel) == [("admin", "queue.purge", "all failed", "127.0.0.1",
                                  "2 message(s)")]


def test_actions_refuse_a_missing_csrf_token(panel: Panel, admin_client: PanelClient) -> None:
    queue_id = add_message(panel, "olga")
    fail_due(panel)
    for path in (f"/queue/{queue_id}/retry", f"/queue/{queue_id}/delete",
                 "/queue/retry-failed", "/queue/purge-failed"):
        response = admin_client.post(path, {"confirm": "on"}, csrf=False)
        assert response.status_code == 403, path
    row = message(panel, queue_id)
    assert row is not None and row.state == "failed"
    assert audit_rows(panel) == []


def test_a_message_being_delivered_is_left_alone(panel: Panel,
                                                 admin_client: PanelClient) -> None:
    queue_id = add_message(panel, "pete")
    [claimed] = outbound.claim_batch(panel.engine, now=panel.clock(), limit=1,
                                     lease_seconds=60, max_age_seconds=86_400)
    page = admin_client.page(f"/queue/{queue_id}").text
    assert "Retry now" not in page and "Delete</button>" not in page
    admin_client.post(f"/queue/{queue_id}/retry")
    row = message(panel, queue_id)
    assert row is not None and row.state == "leased" and row.attempts == claimed.attempts
    assert "is being delivered right now" in admin_client.page(f"/queue/{queue_id}").text
    assert audit_rows(panel) == []
