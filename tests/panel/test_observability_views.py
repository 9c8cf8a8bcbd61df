"""Recent deliveries, the delivery log file and the audit log pages."""

from __future__ import annotations

import dataclasses
import re

from mailapi import audit, events
from mailapi.db import write_transaction
from mailapi.deliverylog import DeliveryLog
from mailapi.settings import save_settings
from tests.panel.test_queue_view import ESCAPED, HOSTILE, record
from tests.support.panel import Panel, PanelClient


def outcomes_listed(html: str) -> list[str]:
    return re.findall(r'<span class="badge state-(\w+)">', html)


def test_deliveries_filter_by_outcome(panel: Panel, admin_client: PanelClient) -> None:
    for queue_id, outcome in enumerate(events.OUTCOMES, start=1):
        record(panel, queue_id, outcome, code=250 if outcome == "delivered" else 451,
               detail=f"detail of {outcome}")
    everything = admin_client.page("/deliveries").text
    assert outcomes_listed(everything) == ["paused", "failed", "deferred", "delivered"]
    errors = admin_client.page("/deliveries?outcome=errors").text
    assert outcomes_listed(errors) == ["paused", "failed", "deferred"]
    delivered = admin_client.page("/deliveries?outcome=delivered").text
    assert outcomes_listed(delivered) == ["delivered"]
    assert "detail of delivered" in delivered and 'href="/queue/1"' in delivered
    assert outcomes_listed(admin_client.page("/deliveries?outcome=nonsense").text) == \
        outcomes_listed(everything)


def test_deliveries_are_paged(panel: Panel, admin_client: PanelClient) -> None:
    for queue_id in range(1, 61):
        record(panel, queue_id, events.DELIVERED, code=250, at=panel.clock() + queue_id)
    first = admin_client.page("/deliveries").text
    assert "Page 1 of 2 · 60 rows" in first
    assert 'href="/queue/60"' in first and 'href="/queue/10"' not in first
    second = admin_client.page("/deliveries?page=2").text
    assert 'href="/queue/10"' in second and 'href="/queue/11"' not in second


def test_log_page_says_when_no_log_is_configured(panel: Panel,
                                                 admin_client: PanelClient) -> None:
    logging = dataclasses.replace(panel.config.logging, delivery_log=None)
    panel.state.config = dataclasses.replace(panel.config, logging=logging)
    assert "No delivery log is configured" in admin_client.page("/log").text


def test_log_page_says_when_the_file_does_not_exist_yet(panel: Panel,
                                                        admin_client: PanelClient) -> None:
    path = panel.config.logging.delivery_log
    assert path is not None
    page = admin_client.page("/log").text
    assert "does not exist yet" in page and str(path) in page
    assert not path.parent.exists()  # looking never creates the directory


def test_log_page_reads_the_real_file_newest_first(panel: Panel,
                                                   admin_client: PanelClient) -> None:
    path = panel.config.logging.delivery_log
    assert path is not None
    log = DeliveryLog(path, 5 * 1024 * 1024)
    for number in range(1, 151):
        log.write(at=panel.clock() + number, queue_id=number,
                  message_id=f"<m{number}@example.org>", recipient=f"r{number}@example.com",
                  outcome="delivered" if number % 2 else "deferred",
                  code=250 if number % 2 else 451, detail=f"line {number}", attempt=1)
    log.write(at=panel.clock(), queue_id=151, message_id="<evil@example.org>",
              recipient=HOSTILE, outcome="failed", code=550, detail=HOSTILE, attempt=3)
    with path.open("a", encoding="utf-8") as handle:
        handle.write("not json at all\n")
    first = admin_client.page("/log").text
    assert "Page 1 of 2 · 152 rows" in first
    assert first.index("not json at all") < first.index(ESCAPED) < first.index("line 150")
    assert HOSTILE not in first
    assert "unreadable" in first and "r150@example.com" in first
    assert "&lt;m150@example.org&gt;" in first
    assert "line 53</td>" in first and "line 52</td>" not in first
    second = admin_client.page("/log?page=2").text
    assert "line 52</td>" in second and "line 1</td>" in second
    assert "line 53</td>" not in second


def test_log_page_spans_the_rotated_file(panel: Panel, admin_client: PanelClient) -> None:
    path = panel.config.logging.delivery_log
    assert path is not None
    log = DeliveryLog(path, 64 * 1024)
    for number in range(1, 400):
        log.write(at=panel.clock(), queue_id=number, message_id=f"<m{number}@example.org>",
                  recipient="r@example.com", outcome="delivered", code=250,
                  detail=f"line {number} " + "x" * 100, attempt=1)
    assert log.rotated_path.exists()
    rotated_lines = log.rotated_path.read_text().count("\n")
    current_lines = path.read_text().count("\n")
    total = rotated_lines + current_lines
    last_page = -(-total // 100)
    page = admin_client.page(f"/log?page={last_page}").text
    assert f"Page {last_page} of {last_page} · {total} rows" in page
    oldest = 400 - total
    assert f"line {oldest} " in page


def add_audit(panel: Panel, actor: str, action: str, target: str, *,
              detail: str | None = None, at: float = 0) -> None:
    with write_transaction(panel.engine) as connection:
        audit.record(connection, actor=actor, action=action, target=target,
                     source="192.0.2.7", detail=detail, at=at or panel.clock())


def test_audit_lists_newest_first_and_filters(panel: Panel, admin_client: PanelClient) -> None:
    add_audit(panel, "alice", "queue.purge", "all failed", detail="3 message(s)",
              at=1_700_000_001)
    add_audit(panel, "apikey:deploy (mk_abc…)", "setting.changed", "smtp_port",
              detail="= 2525", at=1_700_000_002)
    add_audit(panel, "alice", "queue.retry", "17", detail=HOSTILE, at=1_700_000_003)
    page = admin_client.page("/audit").text
    assert page.index("queue.retry</code>") < page.index("setting.changed</code>") < \
        page.index("queue.purge</code>")
    assert HOSTILE not in page and ESCAPED in page
    assert "192.0.2.7" in page and "2023-11-14 22:13:21 UTC" in page
    by_actor = admin_client.page("/audit?actor=ALICE").text
    assert "queue.retry</code>" in by_actor and "queue.purge</code>" in by_actor
    assert "setting.changed</code>" not in by_actor
    by_action = admin_client.page("/audit?action=setting.changed").text
    assert "= 2525" in by_action and "3 message(s)" not in by_action
    both = admin_client.page("/audit?actor=alice&action=queue.purge").text
    assert "3 message(s)" in both and "queue.retry</code>" not in both
    assert '<option value="queue.purge" selected>' in both


def test_audit_is_paged_and_offers_no_way_to_change_it(panel: Panel,
                                                       admin_client: PanelClient) -> None:
    for number in range(60):
        add_audit(panel, "bob", "admin.created", f"user{number}", at=1_700_000_000 + number)
    first = admin_client.page("/audit?actor=bob").text
    assert "Page 1 of 2 · 60 rows" in first
    assert ">user59<" in first and ">user9<" not in first
    assert ">user9<" in admin_client.page("/audit?actor=bob&page=2").text
    # Only the logout form posts anywhere; nothing edits or deletes entries.
    assert re.findall(r'<form method="post" action="([^"]+)"', first) == ["/logout"]
    assert admin_client.post("/audit", {"id": "1"}).status_code == 405
    assert admin_client.request("DELETE", "/audit").status_code == 405


def test_audit_never_shows_a_secret(panel: Panel, admin_client: PanelClient) -> None:
    save_settings(panel.engine, {"webhook_secret": "s3cr3t-webhook-value-123"},
                  actor="carol", source="127.0.0.1")
    page = admin_client.page("/audit").text
    assert "webhook_secret" in page and "(secret changed)" in page
    assert "s3cr3t-webhook-value-123" not in page
