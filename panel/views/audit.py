"""GET /audit: the append-only audit log, newest first, filtered by actor and action."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailapi import audit
from panel.auth import require_session
from panel.web import Page, query_string, read, render

PAGE_SIZE = 50
MAX_FILTER = 128


async def audit_page(request: Request) -> Response:
    """Read-only by design: the table refuses UPDATE and DELETE, and no page offers them."""
    await require_session(request)
    actor = request.query_params.get("actor", "").strip()[:MAX_FILTER]
    action = request.query_params.get("action", "").strip()[:MAX_FILTER]
    page = Page.from_request(request, PAGE_SIZE)

    def gather(connection: Connection) -> dict[str, Any]:
        total = audit.count_audit(connection, actor_contains=actor, action=action)
        return {
            "page": page.with_total(total),
            "entries": audit.list_audit(connection, limit=page.size, offset=page.offset,
                                        actor_contains=actor, action=action),
            "actions": audit.audit_actions(connection),
        }

    context = await read(request, gather)
    context.update({"actor": actor, "action": action,
                    "query": lambda **changes: query_string(request, **changes)})
    return render(request, "audit.html", context, title="Audit log")


routes = [Route("/audit", audit_page, methods=["GET"])]
