"""The admin JSON API under /api/: status, settings, the queue and admins, for automation."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mailapi import accounts, events, heartbeat, pause
from mailapi import queue as outbound
from mailapi.settings import SECRET_KEYS, SETTING_KEYS, Settings, SettingsError, masked
from mailapi.settings import save_settings as store_settings
from mailapi.settings.definitions import validate_value
from mailapi.settings.store import MASK
from panel import openapi
from panel.auth import Principal, api_principal, check_origin
from panel.jsonapi import ApiError, Handler, endpoint, int_query, read_json
from panel.views import queue as queue_views
from panel.views.dashboard import ALIVE_SECONDS, PROCESSES
from panel.web import panel_state, read, source_address, write

MAX_LIMIT = 500
MAX_OFFSET = 2**31


async def change(request: Request) -> Principal:
    """An admin-scope caller whose request did not come from another site's page."""
    principal = await api_principal(request, need_admin=True)
    check_origin(request)
    return principal


def message_json(row: outbound.QueueRow) -> dict[str, Any]:
    """Every column the panel shows; never the message body (it carries the token)."""
    values = dataclasses.asdict(row)
    values["id"] = values.pop("queue_id")
    values["type"] = values.pop("message_type")
    return values


def event_json(event: events.DeliveryEvent) -> dict[str, Any]:
    return dataclasses.asdict(event)


def admin_json(admin: accounts.Admin) -> dict[str, Any]:
    return dataclasses.asdict(admin)


def heartbeat_json(process: str, beat: heartbeat.Heartbeat | None, now: float
                   ) -> dict[str, Any]:
    """A process's last heartbeat (all null when it never beat) and whether it is alive."""
    values: dict[str, Any] = (dataclasses.asdict(beat) if beat is not None else dict.fromkeys(
        ("pid", "hostname", "started_at", "beat_at", "status")))
    values.update(process=process,
                  alive=beat is not None and now - beat.beat_at < ALIVE_SECONDS)
    return values


def settings_json(settings: Settings) -> dict[str, Any]:
    values = masked(settings)
    revision = values.pop("revision")
    return {"ok": True, "revision": revision, "settings": values}


async def status(request: Request) -> Response:
    await api_principal(request, need_admin=False)
    state = panel_state(request)
    settings, now = state.settings.get(), state.clock()

    def gather(connection: Connection) -> dict[str, Any]:
        beats = {beat.process: beat for beat in heartbeat.read_all(connection)}
        paused = pause.read_pause(connection)
        return {
            "ok": True,
            "queue": outbound.counts_by_state(connection),
            "oldest_waiting_since": outbound.oldest_waiting_since(connection),
            "last_hour": {outcome: 0 for outcome in events.OUTCOMES}
            | events.outcome_counts_since(connection, now - 3600),
            "paused": {"active": paused.active(now, settings.smtp_fingerprint()),
                       "until": paused.paused_until, "reason": paused.reason},
            "heartbeats": [heartbeat_json(name, beats.get(name), now)
                           for name in sorted({*PROCESSES, *beats})],
        }

    return JSONResponse(await read(request, gather))


async def get_settings(request: Request) -> Response:
    await api_principal(request, need_admin=False)
    return JSONResponse(settings_json(panel_state(request).settings.get()))


async def patch_settings(request: Request) -> Response:
    """All or nothing: every key is checked before one transaction stores them."""
    principal = await change(request)
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(422, "the body must be a JSON object of setting name to value",
                       field=None)
    changes: dict[str, Any] = {}
    for key, value in body.items():
        if key not in SETTING_KEYS:
            raise ApiError(422, f"unknown setting {key!r}", field=key)
        if key in SECRET_KEYS and value == MASK:
            continue  # the mask GET shows: keep the stored secret
        try:
            changes[key] = validate_value(key, value)
        except SettingsError as exc:
            raise ApiError(422, str(exc), field=key) from None
    state = panel_state(request)
    try:
        saved = await asyncio.to_thread(store_settings, state.engine, changes,
                                        actor=principal.actor, source=source_address(request),
                                        clock=state.clock)
    except SettingsError as exc:
        named = str(exc).split(":", 1)[0]
        raise ApiError(422, str(exc), field=named if named in SETTING_KEYS else None) from None
    state.settings.invalidate()
    return JSONResponse(settings_json(saved))


async def list_queue(request: Request) -> Response:
    await api_principal(request, need_admin=False)
    state_name = request.query_params.get("state", "all")
    if state_name not in queue_views.STATE_FILTERS:
        raise ApiError(422, f"state: one of {', '.join(queue_views.STATE_FILTERS)}",
                       field="state")
    chosen = None if state_name == "all" else state_name
    recipient = request.query_params.get("recipient", "")
    if len(recipient) > queue_views.MAX_RECIPIENT_FILTER:
        raise ApiError(422, f"recipient: at most {queue_views.MAX_RECIPIENT_FILTER} "
                       "characters", field="recipient")
    limit = int_query(request, "limit", 50, 1, MAX_LIMIT)
    offset = int_query(request, "offset", 0, 0, MAX_OFFSET)

    def gather(connection: Connection) -> dict[str, Any]:
        rows = outbound.list_messages(connection, state=chosen, recipient_contains=recipient,
                                      limit=limit, offset=offset)
        total = outbound.count_messages(connection, state=chosen,
                                        recipient_contains=recipient)
        return {"ok": True, "total": total, "limit": limit, "offset": offset,
                "messages": [message_json(row) for row in rows]}

    return JSONResponse(await read(request, gather))


async def get_message(request: Request) -> Response:
    await api_principal(request, need_admin=False)
    queue_id = queue_views.queue_id_of(request)
    row, attempts = await read(request, lambda c: (
        outbound.get_message(c, queue_id),
        events.recent_events(c, queue_id=queue_id, limit=200)))
    if row is None:
        raise ApiError(404, f"no message {queue_id} in the queue")
    return JSONResponse({"ok": True, "message": message_json(row),
                         "attempts": [event_json(event) for event in attempts]})


def _acted(outcome: queue_views.Outcome) -> None:
    if not outcome.found:
        raise ApiError(404, outcome.text)
    if not outcome.done:
        raise ApiError(409, outcome.text)


async def retry_message(request: Request) -> Response:
    principal = await change(request)
    queue_id = queue_views.queue_id_of(request)
    now, source = panel_state(request).clock(), source_address(request)

    def work(connection: Connection) -> tuple[queue_views.Outcome, outbound.QueueRow | None]:
        outcome = queue_views.retry_message(connection, queue_id, now=now,
                                            actor=principal.actor, source=source)
        return outcome, outbound.get_message(connection, queue_id)

    outcome, row = await write(request, work)
    _acted(outcome)
    assert row is not None
    return JSONResponse({"ok": True, "detail": outcome.text, "message": message_json(row)})


async def delete_message(request: Request) -> Response:
    principal = await change(request)
    queue_id = queue_views.queue_id_of(request)
    now, source = panel_state(request).clock(), source_address(request)
    outcome = await write(request, lambda c: queue_views.delete_message(
        c, queue_id, now=now, actor=principal.actor, source=source))
    _acted(outcome)
    return JSONResponse({"ok": True, "deleted": queue_id})


async def retry_failed(request: Request) -> Response:
    principal = await change(request)
    now, source = panel_state(request).clock(), source_address(request)
    count, left = await write(request, lambda c: queue_views.retry_failed(
        c, now=now, actor=principal.actor, source=source))
    return JSONResponse({"ok": True, "retried": count, "still_failed": left})


async def purge_failed(request: Request) -> Response:
    principal = await change(request)
    now, source = panel_state(request).clock(), source_address(request)
    count = await write(request, lambda c: queue_views.purge_failed(
        c, now=now, actor=principal.actor, source=source))
    return JSONResponse({"ok": True, "purged": count})


async def list_admins(request: Request) -> Response:
    await api_principal(request, need_admin=False)
    admins = await read(request, accounts.list_admins)
    return JSONResponse({"ok": True, "admins": [admin_json(admin) for admin in admins]})


async def create_admin(request: Request) -> Response:
    principal = await change(request)
    body = await read_json(request)
    if not isinstance(body, dict) or set(body) != {"username", "password"}:
        raise ApiError(422, "the body must be a JSON object with username and password only")
    username, password = body["username"], body["password"]
    if not isinstance(username, str) or not isinstance(password, str):
        raise ApiError(422, "username and password must both be strings")
    now, source = panel_state(request).clock(), source_address(request)

    def work(connection: Connection) -> accounts.Admin:
        if accounts.find_admin(connection, username) is not None:
            raise ApiError(409, f"an admin named {username!r} already exists")
        return accounts.create_admin(connection, username, hashed, actor=principal.actor,
                                     source=source, now=now)

    try:
        accounts.check_username(username)
        # argon2 (~0.1 s) runs on the thread pool, before the write lock is taken.
        hashed = await asyncio.to_thread(accounts.HashedPassword.prepare, password, username)
        admin = await write(request, work)
    except accounts.AccountError as exc:
        raise ApiError(422, str(exc)) from None
    return JSONResponse({"ok": True, "admin": admin_json(admin)}, status_code=201)


async def _set_disabled(request: Request, disabled: bool) -> Response:
    principal = await change(request)
    admin_id: int = request.path_params["admin_id"]
    if not 0 < admin_id <= queue_views.MAX_QUEUE_ID:
        raise ApiError(404, f"no admin with id {admin_id}")
    now, source = panel_state(request).clock(), source_address(request)

    def work(connection: Connection) -> accounts.Admin:
        if accounts.get_admin(connection, admin_id) is None:
            raise ApiError(404, f"no admin with id {admin_id}")
        return accounts.set_disabled(connection, admin_id, disabled, actor=principal.actor,
                                     source=source, now=now)

    try:
        admin = await write(request, work)
    except accounts.AccountError as exc:
        raise ApiError(409, str(exc)) from None
    return JSONResponse({"ok": True, "admin": admin_json(admin)})


async def disable_admin(request: Request) -> Response:
    return await _set_disabled(request, True)


async def enable_admin(request: Request) -> Response:
    return await _set_disabled(request, False)


async def openapi_document(request: Request) -> Response:
    """Public on purpose: it describes the API, it grants nothing."""
    return JSONResponse(openapi.document(panel_state(request).root))


def by_method(handlers: dict[str, Handler]) -> Handler:
    """One route per path, so a 405 answer's Allow header names every method it has."""
    async def run(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)
    return run


OPERATIONS: dict[str, dict[str, Handler]] = {
    "/api/openapi.json": {"GET": openapi_document},
    "/api/status": {"GET": status},
    "/api/settings": {"GET": get_settings, "PATCH": patch_settings},
    "/api/queue": {"GET": list_queue},
    "/api/queue/retry-failed": {"POST": retry_failed},
    "/api/queue/purge-failed": {"POST": purge_failed},
    "/api/queue/{queue_id:int}": {"GET": get_message, "DELETE": delete_message},
    "/api/queue/{queue_id:int}/retry": {"POST": retry_message},
    "/api/admins": {"GET": list_admins, "POST": create_admin},
    "/api/admins/{admin_id:int}/disable": {"POST": disable_admin},
    "/api/admins/{admin_id:int}/enable": {"POST": enable_admin},
}
routes = [Route(path, endpoint(by_method(handlers)), methods=list(handlers))
          for path, handlers in OPERATIONS.items()]
