"""GET /deliveries (recent attempt outcomes from the database) and GET /log (the log file)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailapi import events
from mailapi.deliverylog import DeliveryLog
from panel.auth import require_session
from panel.web import Page, panel_state, query_string, read, render

PAGE_SIZE = 50
LOG_PAGE_SIZE = 100
OUTCOME_FILTERS: dict[str, tuple[str, ...] | None] = {
    "all": None,
    "delivered": (events.DELIVERED,),
    "errors": events.ERROR_OUTCOMES,
    **{outcome: (outcome,) for outcome in events.ERROR_OUTCOMES},
}


@dataclass(frozen=True)
class LogLine:
    """One delivery log entry with every field present (lines are JSON, possibly damaged)."""

    at: str
    queue_id: int | None
    message_id: str
    recipient: str
    outcome: str
    code: str
    attempt: str
    detail: str

    @classmethod
    def parse(cls, entry: object) -> LogLine:
        if not isinstance(entry, dict):
            return cls("", None, "", "", "unreadable", "", "", str(entry))

        def text(name: str) -> str:
            value = entry.get(name)
            return "" if value is None else str(value)

        queue_id = entry.get("queue_id")
        return cls(text("at"), queue_id if type(queue_id) is int and queue_id > 0 else None,
                   text("message_id"), text("to"), text("outcome") or "unreadable",
                   text("code"), text("attempt"), text("detail"))


@dataclass(frozen=True)
class LogPage:
    exists: bool
    lines: list[LogLine]
    total: int


def _count_lines(path: Path) -> int:
    count = 0
    last = b"\n"
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                count += chunk.count(b"\n")
                last = chunk[-1:]
    except FileNotFoundError:
        return 0
    # A final line still being written has no newline yet but is shown all the same.
    return count + (last != b"\n")


def read_log_page(path: Path, max_total_bytes: int, *, offset: int, limit: int) -> LogPage:
    """One page of the log newest first; never creates the file or its directory."""
    rotated = path.with_name(path.name + ".1")
    if not path.exists() and not rotated.exists():
        return LogPage(False, [], 0)
    log = DeliveryLog(path, max_total_bytes)
    entries = log.read_newest_first(offset=offset, limit=limit)
    total = _count_lines(path) + _count_lines(rotated)
    return LogPage(True, [LogLine.parse(entry) for entry in entries], total)


async def deliveries_page(request: Request) -> Response:
    await require_session(request)
    name = request.query_params.get("outcome", "all")
    if name not in OUTCOME_FILTERS:
        name = "all"
    outcomes = OUTCOME_FILTERS[name]
    page = Page.from_request(request, PAGE_SIZE)

    def gather(connection: Connection) -> dict[str, Any]:
        return {
            "page": page.with_total(events.count_events(connection, outcomes=outcomes)),
            "rows": events.recent_events(connection, limit=page.size, offset=page.offset,
                                         outcomes=outcomes),
        }

    context = await read(request, gather)
    context.update({"outcome": name, "filters": list(OUTCOME_FILTERS),
                    "query": lambda **changes: query_string(request, **changes)})
    return render(request, "deliveries.html", context, title="Recent deliveries")


async def log_page(request: Request) -> Response:
    await require_session(request)
    config = panel_state(request).config.logging
    page = Page.from_request(request, LOG_PAGE_SIZE)
    path = config.delivery_log
    result = LogPage(False, [], 0)
    if path is not None:
        result = await asyncio.to_thread(read_log_page, path, config.delivery_log_max_bytes,
                                         offset=page.offset, limit=page.size)
    return render(request, "log.html", {
        "configured": path is not None, "log_path": str(path or ""), "exists": result.exists,
        "lines": result.lines, "page": page.with_total(result.total),
        "cap_mb": config.delivery_log_max_bytes / (1024 * 1024),
        "query": lambda **changes: query_string(request, **changes),
    }, title="Delivery log")


routes = [
    Route("/deliveries", deliveries_page, methods=["GET"]),
    Route("/log", log_page, methods=["GET"]),
]
