"""The delivery log file: one JSON line per attempt, capped in total size by rotation."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from mailapi.timestamps import format_utc


class DeliveryLog:
    """Appends to `path`; when it would pass half the cap it becomes `path.1` (replacing the
    previous one), so the two files together never exceed `max_total_bytes`.

    Lines name the message (queue id, Message-ID, recipient) and the outcome; never the token,
    the link or the body.
    """

    def __init__(self, path: Path, max_total_bytes: int) -> None:
        self.path = path
        self.rotated_path = path.with_name(path.name + ".1")
        self._max_file_bytes = max_total_bytes // 2
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, *, at: float, queue_id: int, message_id: str, recipient: str, outcome: str,
              code: int | None, detail: str, attempt: int) -> None:
        record: dict[str, Any] = {
            "at": format_utc(at), "queue_id": queue_id, "message_id": message_id,
            "to": recipient, "outcome": outcome, "code": code, "attempt": attempt,
            "detail": detail[:500],
        }
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                size = 0
            if size + len(line) > self._max_file_bytes and size > 0:
                os.replace(self.path, self.rotated_path)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)

    def read_newest_first(self, *, offset: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """Entries newest first, for the panel's paged view."""
        lines: list[str] = []
        for candidate in (self.rotated_path, self.path):
            try:
                # Only "\n" ends a record: str.splitlines() would also split on U+2028 and
                # friends inside a JSON string.
                text = candidate.read_text(encoding="utf-8", errors="replace")
                lines.extend(line for line in text.split("\n") if line)
            except FileNotFoundError:
                continue
        lines.reverse()
        entries = []
        for line in lines[offset:offset + limit]:
            try:
                entries.append(json.loads(line))
            except ValueError:
                entries.append({"detail": line, "outcome": "unreadable"})
        return entries
