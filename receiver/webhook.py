"""POST /webhook/outbound-email: the contract's checks in order, then a durable enqueue."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from mailapi.clientaddress import allowed, client_address
from mailapi.composition import CompositionError
from mailapi.db import StorageError
from mailapi.intake import build_message
from mailapi.logging import get_logger
from mailapi.payload import PayloadError, parse_json_object, validate_payload
from mailapi.ratelimit import retry_after_header
from mailapi.rendering import TemplateError
from mailapi.sender import SenderDomainNotConfigured, SenderPolicyError
from mailapi.signatures import SignatureResult, verify
from mailapi.timestamps import format_utc
from receiver.state import ReceiverState

log = get_logger("receiver.webhook")

SIGNATURE_HEADER = "x-translife-signature"
TIMESTAMP_HEADER = "x-translife-timestamp"
STORAGE_RETRY_AFTER = "2"


@dataclass
class Refusal(Exception):
    status: int
    error: str
    field: str | None = None
    retry_after: str | None = None

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"ok": False, "error": self.error}
        if self.field is not None:
            body["field"] = self.field
        headers = {"Retry-After": self.retry_after} if self.retry_after else None
        return JSONResponse(body, status_code=self.status, headers=headers)


async def outbound_email(request: Request) -> JSONResponse:
    state: ReceiverState = request.app.state.receiver
    try:
        return await _accept(request, state)
    except Refusal as refusal:
        peer = request.client.host if request.client else None
        if refusal.status >= 500:
            log.warning("webhook refused", status=refusal.status, error=refusal.error,
                        peer=peer)
        else:
            log.info("webhook refused", status=refusal.status, error=refusal.error,
                     field=refusal.field, peer=peer)
        return refusal.response()
    except StorageError as exc:
        log.warning("database unavailable", error=str(exc))
        return Refusal(503, "database unavailable, retry later",
                       retry_after=STORAGE_RETRY_AFTER).response()


async def _accept(request: Request, state: ReceiverState) -> JSONResponse:
    settings = state.settings.get()
    peer = request.client.host if request.client else None
    address = client_address(peer, request.headers.getlist("x-forwarded-for"),
                             tuple(settings.trusted_proxies))
    if not allowed(address, tuple(settings.ip_allowlist)):
        raise Refusal(403, "forbidden")
    wait = state.rate_limiter.check(str(address or peer), settings.rate_limit_per_minute)
    if wait > 0:
        raise Refusal(429, "rate limit exceeded", retry_after=retry_after_header(wait))
    raw_body = await _read_body(request, state.max_body_bytes)

    now = state.clock()
    secrets = [settings.webhook_secret] if settings.webhook_secret else []
    if settings.webhook_secret_previous and now < settings.webhook_secret_previous_valid_until:
        secrets.append(settings.webhook_secret_previous)
    timestamp = request.headers.get(TIMESTAMP_HEADER)
    signature = request.headers.get(SIGNATURE_HEADER)
    if settings.webhook_signature_required and not secrets:
        raise Refusal(503, "webhook secret not configured")
    if len(request.headers.getlist(SIGNATURE_HEADER)) > 1 or len(
            request.headers.getlist(TIMESTAMP_HEADER)) > 1:
        raise Refusal(401, "invalid signature")
    if settings.webhook_signature_required or (secrets and (timestamp or signature)):
        result = verify(secrets=secrets, timestamp_header=timestamp,
                        signature_header=signature, raw_body=raw_body, now=now,
                        skew_seconds=settings.webhook_timestamp_skew_seconds)
        if result is not SignatureResult.VALID:
            raise Refusal(401, result.value)
    if not settings.allowed_sender_domain:
        raise Refusal(503, "sender domain not configured")

    try:
        payload = validate_payload(parse_json_object(raw_body), now=now)
        renderer = state.renderers.get(settings)
        message = build_message(payload, settings, renderer, now=now)
    except PayloadError as exc:
        raise Refusal(exc.status, exc.error, exc.field) from None
    except SenderPolicyError as exc:
        raise Refusal(422, str(exc), exc.field) from None
    except SenderDomainNotConfigured:
        raise Refusal(503, "sender domain not configured") from None
    except TemplateError as exc:
        log.error("template failed to render", template=exc.template, detail=exc.detail)
        raise Refusal(503, "message template failed to render; an administrator must fix it",
                      retry_after="60") from None
    except CompositionError as exc:
        raise Refusal(400, f"message could not be composed safely: {exc}") from None

    enqueued = await state.committer.submit(message)
    log.info("webhook accepted", queue_id=enqueued.queue_id, type=payload.type,
             duplicate=enqueued.duplicate)
    return JSONResponse(
        {"ok": True, "to": payload.to, "subject": payload.subject,
         "queued_id": enqueued.queue_id, "queued_at": format_utc(enqueued.queued_at)},
        status_code=202,
    )


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise Refusal(400, "invalid Content-Length")
        if int(declared) > limit:
            raise Refusal(413, f"payload too large (limit {limit} bytes)")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise Refusal(413, f"payload too large (limit {limit} bytes)")
            chunks.append(chunk)
    except ClientDisconnect:
        raise Refusal(400, "client disconnected before the body was complete") from None
    return b"".join(chunks)
