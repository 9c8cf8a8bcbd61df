"""mailapi.deliverylog: one JSON line per attempt, never more than the cap on disk."""

from __future__ import annotations

import json
from pathlib import Path

from mailapi.deliverylog import DeliveryLog


def write(log: DeliveryLog, queue_id: int, detail: str = "250 ok") -> None:
    log.write(at=1_800_000_000.0 + queue_id, queue_id=queue_id, message_id=f"<{queue_id}@x>",
              recipient="user@example.org", outcome="delivered", code=250, detail=detail,
              attempt=1)


def test_lines_are_json_with_the_attempt(tmp_path: Path) -> None:
    log = DeliveryLog(tmp_path / "delivery.log", 5 * 1024 * 1024)
    write(log, 7)
    (line,) = (tmp_path / "delivery.log").read_text().splitlines()
    record = json.loads(line)
    assert record["queue_id"] == 7
    assert record["message_id"] == "<7@x>"
    assert record["outcome"] == "delivered"
    assert record["at"].endswith("Z")


def test_total_size_stays_under_the_cap(tmp_path: Path) -> None:
    cap = 64 * 1024
    log = DeliveryLog(tmp_path / "delivery.log", cap)
    for queue_id in range(3000):
        write(log, queue_id, detail="x" * 100)
    files = [tmp_path / "delivery.log", tmp_path / "delivery.log.1"]
    total = sum(path.stat().st_size for path in files)
    assert all(path.exists() for path in files)
    assert total <= cap
    assert total > cap // 2  # rotation keeps history, it does not just truncate
    newest = log.read_newest_first(limit=3)
    assert [entry["queue_id"] for entry in newest] == [2999, 2998, 2997]


def test_read_newest_first_pages_across_the_rotated_file(tmp_path: Path) -> None:
    log = DeliveryLog(tmp_path / "delivery.log", 64 * 1024)
    for queue_id in range(1000):
        write(log, queue_id, detail="y" * 100)
    entries = log.read_newest_first(offset=0, limit=10_000)
    ids = [entry["queue_id"] for entry in entries]
    assert ids == sorted(ids, reverse=True)
    assert ids[0] == 999
    page = log.read_newest_first(offset=5, limit=5)
    assert [entry["queue_id"] for entry in page] == ids[5:10]


def test_details_are_bounded(tmp_path: Path) -> None:
    log = DeliveryLog(tmp_path / "delivery.log", 5 * 1024 * 1024)
    write(log, 1, detail="z" * 10_000)
    record = json.loads((tmp_path / "delivery.log").read_text())
    assert len(record["detail"]) == 500


def test_a_line_separator_inside_a_field_does_not_split_the_entry(tmp_path: Path) -> None:
    log = DeliveryLog(tmp_path / "delivery.log", 5 * 1024 * 1024)
    (tmp_path / "delivery.log").write_text(
        '{"outcome": "failed", "detail": "550 no\u2028such user"}\n', encoding="utf-8")
    assert log.read_newest_first() == [{"outcome": "failed", "detail": "550 no\u2028such user"}]
