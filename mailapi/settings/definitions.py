"""Every runtime option, its type, default and validation, named after the spec."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

from mailapi.headersafety import unsafe_character
from mailapi.rendering.defaults import DEFAULT_TEMPLATES

SMTP_SECURITY_MODES = ("plain", "starttls", "ssl")
SMTP_SECURITY_PRESETS = {"plain": 25, "starttls": 587, "ssl": 465}
MAILBOX_PROTOCOLS = ("imap", "imaps", "pop3", "pop3s")
LOG_LEVELS = ("debug", "info", "warning", "error")

_DOMAIN = re.compile(
    r"^(?=.{1,253}$)(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))+$"
)
# RFC 5322 dot-atom: what a local part may be without quoting.
_LOCAL_PART = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")


class SettingsError(ValueError):
    """A settings key is unknown or a value does not validate; the message says which."""


def _meta(description: str, *, secret: bool = False, check: Callable[[Any], None] | None = None,
          **kwargs: Any) -> Any:
    return field(metadata={"description": description, "secret": secret, "check": check},
                 **kwargs)


def _range(low: float, high: float) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if not low <= value <= high:
            raise SettingsError(f"must be between {low:g} and {high:g}")
    return check


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if value not in choices:
            raise SettingsError(f"must be one of {', '.join(choices)}")
    return check


def check_domain(value: str) -> None:
    if value and not _DOMAIN.match(value):
        raise SettingsError("must be a domain name such as example.com (lower case, ASCII or "
                            "punycode)")


def check_local_part(value: str) -> None:
    if not _LOCAL_PART.match(value) or len(value) > 64:
        raise SettingsError("must be an e-mail local part such as no-reply (letters, digits, "
                            "dots and !#$%&'*+/=?^_`{|}~- , at most 64 characters)")
    if "=?" in value:  # RFC 2047 forbids encoded words in an address; lenient readers decode
        raise SettingsError("must not contain =? (an RFC 2047 encoded word)")


def _check_local_parts(values: list[str]) -> None:
    for value in values:
        check_local_part(value)


def _check_networks(values: list[str]) -> None:
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError as exc:
            raise SettingsError(f"{value!r} is not an IP address or CIDR network") from exc


def _check_url(value: str) -> None:
    if not value:
        return
    try:
        parts = urlsplit(value)  # ValueError for "http://[" or an NFKC-unsafe host
    except ValueError:
        raise SettingsError("must be an absolute http:// or https:// URL") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SettingsError("must be an absolute http:// or https:// URL")
    if any(ord(ch) < 0x21 or ch in "<>\"" for ch in value):
        raise SettingsError("must not contain spaces, control characters, quotes or <>")


def _check_display_name(value: str) -> None:
    problem = unsafe_character(value)
    if problem:
        raise SettingsError(f"must not contain {problem}")
    if len(value) > 128:
        raise SettingsError("must be at most 128 characters")


def _check_host(value: str) -> None:
    if value and (len(value) > 253 or any(ch.isspace() or ord(ch) < 0x20 for ch in value)):
        raise SettingsError("must be a host name or IP address")


def _check_link_path(value: str) -> None:
    if not value.startswith("/") or any(ord(ch) < 0x21 for ch in value):
        raise SettingsError("must be a path starting with / and without spaces")


def _check_template(value: str) -> None:
    if len(value) > 100_000:
        raise SettingsError("must be at most 100,000 characters")


@dataclass(frozen=True)
class Settings:
    """A consistent snapshot of every runtime option."""

    revision: int = 0
    # Webhook signature
    webhook_signature_required: bool = _meta(
        "Refuse unsigned webhooks; without a secret every webhook gets 503", default=True)
    webhook_secret: str = _meta("Shared HMAC secret for X-TransLife-Signature", secret=True,
                                default="")
    webhook_secret_previous: str = _meta(
        "The secret before the last rotation, still accepted until the time below",
        secret=True, default="")
    webhook_secret_previous_valid_until: float = _meta(
        "Unix time until which the previous secret is accepted", default=0.0,
        check=_range(0, 2**40))
    webhook_timestamp_skew_seconds: int = _meta(
        "Accepted distance between X-TransLife-Timestamp and now, either direction",
        default=300, check=_range(1, 86_400))
    # Access
    ip_allowlist: list[str] = _meta(
        "Peer addresses or CIDR networks allowed to post webhooks (empty: any)",
        default_factory=list, check=_check_networks)
    trusted_proxies: list[str] = _meta(
        "Proxies whose X-Forwarded-For is believed", default_factory=list,
        check=_check_networks)
    rate_limit_per_minute: int = _meta(
        "Webhooks accepted per client address per minute (0: no limit)", default=1200,
        check=_range(0, 1_000_000))
    log_level: str = _meta("Request log level", default="info", check=_one_of(LOG_LEVELS))
    # Links
    public_web_url: str = _meta(
        "Base URL used to build a link when the webhook carries none", default="",
        check=_check_url)
    link_path_email_verification: str = _meta(
        "Path appended to public_web_url for verification links (token added as ?token=)",
        default="/verify-email", check=_check_link_path)
    link_path_password_reset: str = _meta(
        "Path appended to public_web_url for password-reset links (token added as ?token=)",
        default="/reset-password", check=_check_link_path)
    # Sender policy
    allowed_sender_domain: str = _meta("Domain every sender address belongs to", default="",
                                       check=check_domain)
    default_from_local_part: str = _meta("Local part used when the webhook names none",
                                         default="no-reply", check=check_local_part)
    allow_any_local_part: bool = _meta("Honour any fromLocalPart within the domain",
                                       default=False)
    sender_allowlist: list[str] = _meta(
        "Local parts a webhook may request when any local part is not allowed",
        default_factory=list, check=_check_local_parts)
    sender_display_name: str = _meta("Display name in the From header", default="",
                                     check=_check_display_name)
    # SMTP submission
    smtp_host: str = _meta("Upstream SMTP host", default="", check=_check_host)
    smtp_port: int = _meta("Upstream SMTP port (25 plain, 587 STARTTLS, 465 SSL/TLS)",
                           default=587, check=_range(1, 65535))
    smtp_security: str = _meta("plain, starttls (required, never opportunistic) or ssl",
                               default="starttls", check=_one_of(SMTP_SECURITY_MODES))
    smtp_timeout: int = _meta("Seconds allowed for each SMTP step", default=30,
                              check=_range(1, 600))
    smtp_username: str = _meta("SMTP AUTH user name (empty: no AUTH)", default="")
    smtp_password: str = _meta("SMTP AUTH password", secret=True, default="")
    smtp_ignore_certificates: bool = _meta("Skip certificate verification (unsafe)",
                                           default=False)
    smtp_allow_plaintext_auth: bool = _meta("Allow AUTH over an unencrypted connection",
                                            default=False)
    # Mailbox protocols (optional, separate from outbound delivery: stored and tested only)
    imap_host: str = _meta("IMAP server host (optional)", default="", check=_check_host)
    imap_port: int = _meta("IMAP port (143)", default=143, check=_range(1, 65535))
    imap_starttls: bool = _meta("Require STARTTLS before LOGIN on IMAP", default=True)
    imap_username: str = _meta("IMAP user name", default="")
    imap_password: str = _meta("IMAP password", secret=True, default="")
    imaps_host: str = _meta("IMAPS server host (optional)", default="", check=_check_host)
    imaps_port: int = _meta("IMAPS port (993)", default=993, check=_range(1, 65535))
    imaps_username: str = _meta("IMAPS user name", default="")
    imaps_password: str = _meta("IMAPS password", secret=True, default="")
    pop3_host: str = _meta("POP3 server host (optional)", default="", check=_check_host)
    pop3_port: int = _meta("POP3 port (110)", default=110, check=_range(1, 65535))
    pop3_starttls: bool = _meta("Require STLS before USER/PASS on POP3", default=True)
    pop3_username: str = _meta("POP3 user name", default="")
    pop3_password: str = _meta("POP3 password", secret=True, default="")
    pop3s_host: str = _meta("POP3S server host (optional)", default="", check=_check_host)
    pop3s_port: int = _meta("POP3S port (995)", default=995, check=_range(1, 65535))
    pop3s_username: str = _meta("POP3S user name", default="")
    pop3s_password: str = _meta("POP3S password", secret=True, default="")
    mailbox_ignore_certificates: bool = _meta(
        "Skip certificate verification in the mailbox-protocol tests (unsafe)", default=False)
    # Retry policy and lifetime
    retry_base_seconds: int = _meta("First retry delay; doubles per attempt", default=30,
                                    check=_range(1, 86_400))
    retry_max_seconds: int = _meta("Longest retry delay", default=3600,
                                   check=_range(1, 7 * 86_400))
    retry_max_attempts: int = _meta("Attempts before a message is failed", default=20,
                                    check=_range(1, 1000))
    message_max_age_seconds: int = _meta("A message older than this is failed, never sent",
                                         default=86_400, check=_range(60, 30 * 86_400))
    queue_pause_seconds: int = _meta(
        "First circuit-breaker pause after an authentication or TLS failure", default=60,
        check=_range(1, 86_400))
    max_lease_reclaims: int = _meta(
        "Times a message may be reclaimed from a dead worker before it is failed as poison",
        default=5, check=_range(1, 100))
    # Templates
    template_include_token: bool = _meta("Pass the token to the templates", default=True)
    template_include_expiry: bool = _meta("Pass expiresAt to the templates", default=True)
    template_include_link: bool = _meta("Pass the link to the templates", default=True)
    template_email_verification_subject: str = _meta(
        "Subject template for email_verification", check=_check_template,
        default=DEFAULT_TEMPLATES["email_verification_subject"])
    template_email_verification_text: str = _meta(
        "Plain-text body template for email_verification", check=_check_template,
        default=DEFAULT_TEMPLATES["email_verification_text"])
    template_email_verification_html: str = _meta(
        "HTML body template for email_verification (empty: text only)", check=_check_template,
        default=DEFAULT_TEMPLATES["email_verification_html"])
    template_password_reset_subject: str = _meta(
        "Subject template for password_reset", check=_check_template,
        default=DEFAULT_TEMPLATES["password_reset_subject"])
    template_password_reset_text: str = _meta(
        "Plain-text body template for password_reset", check=_check_template,
        default=DEFAULT_TEMPLATES["password_reset_text"])
    template_password_reset_html: str = _meta(
        "HTML body template for password_reset (empty: text only)", check=_check_template,
        default=DEFAULT_TEMPLATES["password_reset_html"])

    def smtp_fingerprint(self) -> str:
        """Changes whenever an SMTP setting changes (resets the circuit breaker)."""
        return self._smtp_fingerprint

    @cached_property
    def _smtp_fingerprint(self) -> str:
        # A snapshot is immutable: hash its SMTP settings once, not on every worker pass.
        values = {f.name: getattr(self, f.name) for f in fields(self)
                  if f.name.startswith("smtp_")}
        encoded = json.dumps(values, sort_keys=True).encode()
        return hashlib.sha256(encoded).hexdigest()[:32]


_FIELDS = {f.name: f for f in fields(Settings) if f.name != "revision"}
SETTING_KEYS: tuple[str, ...] = tuple(_FIELDS)
SECRET_KEYS: frozenset[str] = frozenset(k for k, f in _FIELDS.items() if f.metadata["secret"])


def check_consistency(settings: Settings) -> None:
    """Rules that span several keys, checked on the merged snapshot before it is saved."""
    if settings.retry_max_seconds < settings.retry_base_seconds:
        raise SettingsError("retry_max_seconds: must not be below retry_base_seconds")


def describe(key: str) -> str:
    return str(_field(key).metadata["description"])


def default_value(key: str) -> Any:
    return getattr(Settings(), _field(key).name)


def _field(key: str) -> Any:
    try:
        return _FIELDS[key]
    except KeyError:
        raise SettingsError(f"unknown setting {key!r}") from None


def parse_value(key: str, text: str) -> Any:
    """Turn the text an operator typed (CLI, form) into the typed value, validated."""
    kind = str(_field(key).type)
    value: Any
    if kind == "bool":
        lowered = text.strip().lower()
        if lowered in ("true", "yes", "on", "1"):
            value = True
        elif lowered in ("false", "no", "off", "0"):
            value = False
        else:
            raise SettingsError(f"{key}: must be true or false")
    elif kind == "int":
        try:
            value = int(text.strip())
        except ValueError:
            raise SettingsError(f"{key}: must be a whole number") from None
    elif kind == "float":
        try:
            value = float(text.strip())
        except ValueError:
            raise SettingsError(f"{key}: must be a number") from None
    elif kind == "list[str]":
        stripped = text.strip()
        if stripped.startswith("["):
            try:
                value = json.loads(stripped)
            except ValueError:
                raise SettingsError(f"{key}: not a valid JSON list") from None
        else:
            value = [item.strip() for item in re.split(r"[,\s]+", stripped) if item.strip()]
    else:
        value = text
    return validate_value(key, value)


def validate_value(key: str, raw: object) -> Any:
    """Check a typed value against the key's type and rules; returns it normalised."""
    definition = _field(key)
    kind = str(definition.type)
    value: Any = raw
    expected: dict[str, tuple[type, ...]] = {
        "bool": (bool,), "int": (int,), "float": (int, float), "str": (str,),
        "list[str]": (list,),
    }
    if not isinstance(value, expected[kind]) or (kind in ("int", "float")
                                                 and isinstance(value, bool)):
        raise SettingsError(f"{key}: expected {kind}, got {type(value).__name__}")
    if kind == "list[str]":
        items: list[Any] = list(raw) if isinstance(raw, list) else []
        if not all(isinstance(item, str) for item in items):
            raise SettingsError(f"{key}: every item must be a string")
        value = [item.strip() for item in items if item.strip()]
    if kind == "float":
        try:
            value = float(value)
        except OverflowError:  # an integer beyond float's range, e.g. 10**400
            raise SettingsError(f"{key}: number out of range") from None
    if kind == "str" and key in ("allowed_sender_domain",):
        value = value.strip().lower().rstrip(".")
    check = definition.metadata["check"]
    if check is not None:
        try:
            check(value)
        except SettingsError as exc:
            raise SettingsError(f"{key}: {exc}") from None
    return value
