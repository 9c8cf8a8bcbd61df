"""Sender policy: which address a message is sent from, decided from settings alone."""

from __future__ import annotations

from dataclasses import dataclass

from mailapi.settings.definitions import SettingsError, check_local_part


class SenderPolicyError(Exception):
    """The requested sender is not allowed; `field` names the webhook field at fault."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class SenderDomainNotConfigured(Exception):
    """No allowed_sender_domain is set: nothing can be sent until an admin sets one."""


@dataclass(frozen=True)
class SenderPolicy:
    domain: str
    default_local_part: str
    allow_any_local_part: bool
    allowlist: tuple[str, ...]
    display_name: str


def resolve_sender(policy: SenderPolicy, requested_local_part: str | None) -> str:
    """The envelope and From address for a message.

    The requested local part is honoured only when any local part is allowed or it is on
    the allowlist; otherwise the request is refused rather than silently rewritten.
    """
    if not policy.domain:
        raise SenderDomainNotConfigured("sender domain not configured")
    if requested_local_part is None or requested_local_part == policy.default_local_part:
        return f"{policy.default_local_part}@{policy.domain}"
    try:
        check_local_part(requested_local_part)
    except SettingsError as exc:
        raise SenderPolicyError(f"fromLocalPart {exc}", "fromLocalPart") from None
    allowed = {entry.lower() for entry in policy.allowlist}
    if policy.allow_any_local_part or requested_local_part.lower() in allowed:
        return f"{requested_local_part}@{policy.domain}"
    raise SenderPolicyError(
        "fromLocalPart is not permitted by the sender policy", "fromLocalPart"
    )
