"""From a validated webhook payload to a queue row: sender, link, render, compose."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import quote

from mailapi.composition import compose, new_message_id
from mailapi.payload import WebhookPayload
from mailapi.queue import NewMessage
from mailapi.rendering import Renderer, TemplateSources
from mailapi.sender import SenderPolicy, resolve_sender
from mailapi.settings import Settings


def sender_policy(settings: Settings) -> SenderPolicy:
    return SenderPolicy(
        domain=settings.allowed_sender_domain,
        default_local_part=settings.default_from_local_part,
        allow_any_local_part=settings.allow_any_local_part,
        allowlist=tuple(settings.sender_allowlist),
        display_name=settings.sender_display_name,
    )


def build_link(payload: WebhookPayload, settings: Settings) -> str | None:
    """The caller's link, or one built from public_web_url when the caller sent none."""
    if payload.link is not None:
        return payload.link
    if not settings.public_web_url:
        return None
    path = (settings.link_path_email_verification if payload.type == "email_verification"
            else settings.link_path_password_reset)
    return f"{settings.public_web_url.rstrip('/')}{path}?token={quote(payload.token, safe='')}"


class RendererCache:
    """One compiled Renderer per settings revision."""

    def __init__(self) -> None:
        self._revision: int | None = None
        self._renderer: Renderer | None = None

    def get(self, settings: Settings) -> Renderer:
        if self._renderer is None or self._revision != settings.revision:
            self._renderer = Renderer(TemplateSources.from_settings(settings))
            self._revision = settings.revision
        return self._renderer


def build_message(payload: WebhookPayload, settings: Settings, renderer: Renderer,
                  *, now: float) -> NewMessage:
    """Everything the worker needs, fixed at enqueue (rendering, Message-ID, Date)."""
    sender = resolve_sender(sender_policy(settings), payload.from_local_part)
    context = {
        "type": payload.type, "to": payload.to, "subject": payload.subject,
        "token": payload.token, "expires_at": payload.expires_at,
        "link": build_link(payload, settings),
    }
    rendered = renderer.render(payload.type, context)
    message_id = new_message_id(settings.allowed_sender_domain)
    data = compose(rendered=rendered, sender=sender, display_name=settings.sender_display_name,
                   recipient=payload.to, message_id=message_id,
                   date=datetime.fromtimestamp(now, UTC))
    expires_at = payload.expires_at.timestamp()
    replay_window = 2 * settings.webhook_timestamp_skew_seconds
    return NewMessage(
        digest=payload.digest(), message_type=payload.type, recipient=payload.to,
        envelope_sender=sender, subject=rendered.subject, message_id=message_id,
        message=data, expires_at=expires_at,
        keep_key_until=max(expires_at, now + replay_window) + 3600,
    )
