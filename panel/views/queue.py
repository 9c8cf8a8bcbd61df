"""The queue pages: messages by state, one message with its attempts, retry and purge."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailapi import audit, events
from mailapi import queue as outbound
from mailapi.settings import load_settings
from panel.auth import require_post, require_session
from panel.web import (
    Page,
    flash,
    panel_state,
    query_string,
    read,
    redirect,
    render,
    source_address,
    write,
)

PAGE_SIZE = 50
STATE_FILTERS = ("all", *outbound.STATES)
MAX_RECIPIENT_FILTER = 254
# SQLite integers are signed 64-bit; a larger id in the path is simply not a message.
MAX_QUEUE_ID = 2**63 - 1
EXPIRED = ("its token expired or it is older than message_max_age_seconds, so it may "
           "never be sent")


@dataclass(frozen=True)
class Outcome:
    """What an action on one message did, in words for a flash or an API error."""

    done: bool
    text: str
    found: bool = True


def queue_id_of(request: Request) -> int:
    """The {queue_id} path parameter, or 404 when no message could have that id."""
    queue_id: int = request.path_params["queue_id"]
    if not 0 < queue_id <= MAX_QUEUE_ID:
        raise HTTPException(404)
    return queue_id


def retry_message(connection: Connection, queue_id: int, *, now: float, actor: str,
                  source: str) -> Outcome:
    """Retry now: a failed message goes back in the queue, a waiting one becomes due."""
    row = outbound.get_message(connection, queue_id)
    if row is None:
        return Outcome(False, f"Message {queue_id} is not in the queue (delivered, purged or "
                       "unknown).", found=False)
    if row.state == outbound.LEASED:
        return Outcome(False, f"Message {queue_id} is being delivered right now; wait for "
                       "the outcome.")
    max_age = load_settings(connection).message_max_age_seconds
    if row.state == outbound.FAILED:
        done = outbound.retry(connection, queue_id, now=now, max_age_seconds=max_age)
    else:
        done = outbound.expedite(connection, queue_id, now=now, max_age_seconds=max_age)
    if not done:
        return Outcome(False, f"Message {queue_id} cannot be retried: {EXPIRED}.")
    audit.record(connection, actor=actor, action="queue.retry", target=str(queue_id),
                 source=source, detail="1 message(s)", at=now)
    return Outcome(True, f"Message {queue_id} will be tried at the worker's next pass.")


def delete_message(connection: Connection, queue_id: int, *, now: float, actor: str,
                   source: str) -> Outcome:
    """Delete one failed message for good (as `mailapi queue purge ID` does)."""
    row = outbound.get_message(connection, queue_id)
    if row is None:
        return Outcome(False, f"Message {queue_id} is not in the queue.", found=False)
    if not outbound.purge(connection, queue_id):
        return Outcome(False, f"Message {queue_id} is {row.state}: only failed messages can "
                       "be deleted.")
    audit.record(connection, actor=actor, action="queue.purge", target=str(queue_id),
                 source=source, detail="1 message(s)", at=now)
    return Outcome(True, f"Message {queue_id} was deleted.")


def retry_failed(connection: Connection, *, now: float, actor: str,
                 source: str) -> tuple[int, int]:
    """Requeue every failed message that may still be sent: (requeued, still failed)."""
    max_age = load_settings(connection).message_max_age_seconds
    count = outbound.retry_all_failed(connection, now=now, max_age_seconds=max_age)
    if count:
        audit.record(connection, actor=actor, action="queue.retry", target="all failed",
                     source=source, detail=f"{count} message(s)", at=now)
    return count, outbound.counts_by_state(connection)[outbound.FAILED]


def purge_failed(connection: Connection, *, now: float, actor: str, source: str) -> int:
    count = outbound.purge_all_failed(connection)
    if count:
        audit.record(connection, actor=actor, action="queue.purge", target="all failed",
                     source=source, detail=f"{count} message(s)", at=now)
    return count


def _filters(request: Request) -> tuple[str, str]:
    state = request.query_params.get("state", "all")
    recipient = request.query_params.get("recipient", "").strip()[:MAX_RECIPIENT_FILTER]
    return (state if state in STATE_FILTERS else "all"), recipient


async def queue_page(request: Request) -> Response:
    await require_session(request)
    state_filter, recipient = _filters(request)
    page = Page.from_request(request, PAGE_SIZE)
    chosen = None if state_filter == "all" else state_filter

    def gather(connection: Connection) -> dict[str, Any]:
        total = outbound.count_messages(connection, state=chosen, recipient_contains=recipient)
        return {
            "counts": outbound.counts_by_state(connection),
            "page": page.with_total(total),
            "rows": outbound.list_messages(connection, state=chosen,
                                           recipient_contains=recipient, limit=page.size,
                                           offset=page.offset, newest_first=True),
        }

    context = await read(request, gather)
    context.update({
        "state_filter": state_filter, "recipient": recipient, "states": STATE_FILTERS,
        "now": panel_state(request).clock(),
        "query": lambda **changes: query_string(request, **changes),
    })
    return render(request, "queue.html", context, title="Queue")


async def message_page(request: Request) -> Response:
    await require_session(request)
    queue_id = queue_id_of(request)
    state = panel_state(request)

    def gather(connection: Connection) -> tuple[outbound.QueueRow | None,
                                                list[events.DeliveryEvent]]:
        return (outbound.get_message(connection, queue_id),
                events.recent_events(connection, queue_id=queue_id, limit=200))

    row, attempts = await read(request, gather)
    if row is None and not attempts:
        raise HTTPException(404)
    now = state.clock()
    max_age = state.settings.get().message_max_age_seconds
    sendable = row is not None and row.expires_at > now and row.created_at > now - max_age
    return render(request, "queue_message.html", {
        "queue_id": queue_id, "row": row, "attempts": attempts, "now": now,
        "can_retry": sendable and row is not None and row.state != outbound.LEASED,
        "can_delete": row is not None and row.state == outbound.FAILED,
    }, title=f"Message #{queue_id}")


async def retry_action(request: Request) -> Response:
    session, _ = await require_post(request)
    queue_id = queue_id_of(request)
    now, source = panel_state(request).clock(), source_address(request)
    outcome = await write(request, lambda c: retry_message(
        c, queue_id, now=now, actor=session.username, source=source))
    await flash(request, "success" if outcome.done else "error", outcome.text)
    return redirect(request, f"/queue/{queue_id}" if outcome.found else "/queue")


async def delete_action(request: Request) -> Response:
    session, form = await require_post(request)
    queue_id = queue_id_of(request)
    if not form.checkbox("confirm"):
        await flash(request, "error", "Tick the confirmation box to delete the message.")
        return redirect(request, f"/queue/{queue_id}")
    now, source = panel_state(request).clock(), source_address(request)
    outcome = await write(request, lambda c: delete_message(
        c, queue_id, now=now, actor=session.username, source=source))
    await flash(request, "success" if outcome.done else "error", outcome.text)
    if outcome.done or not outcome.found:
        return redirect(request, "/queue")
    return redirect(request, f"/queue/{queue_id}")


async def retry_failed_action(request: Request) -> Response:
    session, _ = await require_post(request)
    now, source = panel_state(request).clock(), source_address(request)
    count, left = await write(request, lambda c: retry_failed(
        c, now=now, actor=session.username, source=source))
    text = f"{count} failed message(s) queued again."
    if left:
        text += f" {left} stay failed: {EXPIRED}."
    await flash(request, "success" if count or not left else "error", text)
    return redirect(request, "/queue", state="queued" if count else "failed")


async def purge_failed_action(request: Request) -> Response:
    session, form = await require_post(request)
    if not form.checkbox("confirm"):
        await flash(request, "error", "Tick the confirmation box to delete every failed "
                    "message.")
        return redirect(request, "/queue", state="failed")
    now, source = panel_state(request).clock(), source_address(request)
    count = await write(request, lambda c: purge_failed(
        c, now=now, actor=session.username, source=source))
    await flash(request, "success", f"{count} failed message(s) deleted for good.")
    return redirect(request, "/queue")


routes = [
    Route("/queue", queue_page, methods=["GET"]),
    Route("/queue/retry-failed", retry_failed_action, methods=["POST"]),
    Route("/queue/purge-failed", purge_failed_action, methods=["POST"]),
    Route("/queue/{queue_id:int}", message_page, methods=["GET"]),
    Route("/queue/{queue_id:int}/retry", retry_action, methods=["POST"]),
    Route("/queue/{queue_id:int}/delete", delete_action, methods=["POST"]),
]
