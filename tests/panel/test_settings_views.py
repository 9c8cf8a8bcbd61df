"""The /settings and /sender forms: saving, inline validation, write-only secrets, rotation."""

from __future__ import annotations

import re

from mailapi.audit import AuditEntry, list_audit
from mailapi.db import read_transaction
from mailapi.settings import save_settings
from tests.support.panel import Panel, PanelClient, form_fields

OLD_SECRET = "old-shared-secret-0123456789"


def audit_entries(panel: Panel, action: str) -> list[AuditEntry]:
    with read_transaction(panel.engine) as connection:
        return list_audit(connection, action=action, limit=200)


def error_next_to(page: str, field: str) -> str:
    """The inline message shown in the field block of `field` (empty when there is none)."""
    block = re.search(rf'<div class="field[^"]*has-error">\s*(?:<input type="hidden" '
                      rf'name="{field}__present"[^>]*>\s*)?<label[^>]*(?:for="f-{field}"|>'
                      rf'<input type="checkbox" name="{field}")(.*?)</div>', page, re.S)
    if block is None:
        return ""
    message = re.search(r'<p class="error"[^>]*>(.*?)</p>', block.group(1), re.S)
    return message.group(1) if message else ""


def test_settings_page_shows_every_group_and_only_whether_a_secret_is_set(
        panel: Panel, admin_client: PanelClient) -> None:
    save_settings(panel.engine, {"webhook_secret": OLD_SECRET}, actor="test", source="test")
    page = admin_client.page("/settings").text
    for legend in ("Webhook signature", "Receiver access", "Links in messages",
                   "Retries and message lifetime", "Logging"):
        assert f"<legend>{legend}</legend>" in page
    assert OLD_SECRET not in page
    assert re.search(r'Webhook secret\s*<span class="badge ok">set</span>', page)
    assert 'id="f-webhook_timestamp_skew_seconds"' in page and 'value="300"' in page


def test_saving_changes_the_shown_settings_and_audits_each_one(
        panel: Panel, admin_client: PanelClient) -> None:
    save_settings(panel.engine, {"webhook_secret": OLD_SECRET, "smtp_host": "mail.example.net"},
                  actor="test", source="test")
    fields = form_fields(admin_client.page("/settings").text, "/settings")
    fields.pop("webhook_signature_required")  # untick the box: only __present is sent
    fields.update({
        "webhook_timestamp_skew_seconds": "120",
        "ip_allowlist": "10.0.0.0/8, 192.0.2.7\r\n2001:db8::/32",
        "trusted_proxies": "127.0.0.1",
        "rate_limit_per_minute": "50",
        "public_web_url": "https://app.example.com",
        "retry_max_attempts": "7",
        "log_level": "debug",
    })
    response = admin_client.post("/settings", fields)
    assert response.status_code == 303
    assert response.headers["location"] == "/settings"

    saved = panel.state.settings.get()
    assert saved.webhook_signature_required is False
    assert saved.webhook_timestamp_skew_seconds == 120
    assert saved.ip_allowlist == ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]
    assert saved.trusted_proxies == ["127.0.0.1"]
    assert (saved.rate_limit_per_minute, saved.retry_max_attempts) == (50, 7)
    assert saved.public_web_url == "https://app.example.com"
    assert saved.log_level == "debug"
    # Keys the form does not show, and the untouched secret, stay as they were.
    assert saved.webhook_secret == OLD_SECRET
    assert saved.smtp_host == "mail.example.net"

    changed = {entry.target for entry in audit_entries(panel, "setting.changed")
               if entry.actor == "admin"}
    assert changed == {"webhook_signature_required", "webhook_timestamp_skew_seconds",
                       "ip_allowlist", "trusted_proxies", "rate_limit_per_minute",
                       "public_web_url", "retry_max_attempts", "log_level"}
    page = admin_client.page("/settings").text
    assert "Settings saved." in page
    assert "10.0.0.0/8\n192.0.2.7\n2001:db8::/32</textarea>" in page


def test_every_invalid_field_is_reported_inline_and_nothing_is_saved(
        panel: Panel, admin_client: PanelClient) -> None:
    fields = form_fields(admin_client.page("/settings").text, "/settings")
    fields.update({
        "webhook_timestamp_skew_seconds": "five minutes",
        "ip_allowlist": "10.0.0.0/8\nnot-an-address",
        "public_web_url": "ftp://files.example.com",
        "retry_base_seconds": "0",
        "rate_limit_per_minute": "60",  # valid, but must not be saved either
    })
    response = admin_client.post("/settings", fields)
    assert response.status_code == 400
    page = response.text
    assert "Nothing was saved." in page
    assert error_next_to(page, "webhook_timestamp_skew_seconds") == "must be a whole number"
    assert "is not an IP address or CIDR network" in error_next_to(page, "ip_allowlist")
    assert "absolute http:// or https:// URL" in error_next_to(page, "public_web_url")
    assert "between 1 and 86400" in error_next_to(page, "retry_base_seconds")
    assert error_next_to(page, "rate_limit_per_minute") == ""
    # What was typed stays in the form.
    assert 'value="five minutes"' in page
    assert "10.0.0.0/8\nnot-an-address</textarea>" in page
    saved = panel.state.settings.get()
    assert (saved.webhook_timestamp_skew_seconds, saved.rate_limit_per_minute) == (300, 1200)
    assert audit_entries(panel, "setting.changed") == []


def test_a_rule_spanning_two_fields_is_shown_at_the_field_it_names(
        panel: Panel, admin_client: PanelClient) -> None:
    fields = form_fields(admin_client.page("/settings").text, "/settings")
    fields.update({"retry_base_seconds": "600", "retry_max_seconds": "60"})
    response = admin_client.post("/settings", fields)
    assert response.status_code == 400
    assert error_next_to(response.text, "retry_max_seconds") == (
        "must not be below retry_base_seconds")
    assert panel.state.settings.get().retry_base_seconds == 30


def test_rotation_shows_the_generated_secret_once_and_keeps_the_old_one_for_the_grace(
        panel: Panel, admin_client: PanelClient) -> None:
    save_settings(panel.engine, {"webhook_secret": OLD_SECRET}, actor="test", source="test")
    fields = form_fields(admin_client.page("/settings").text, "/settings")
    assert fields["secret_action"] == "keep" and fields["webhook_secret"] == ""
    fields.update({"secret_action": "generate", "secret_grace": "86400"})
    response = admin_client.post("/settings", fields)
    assert response.status_code == 200

    saved = panel.state.settings.get()
    assert len(saved.webhook_secret) >= 40 and saved.webhook_secret != OLD_SECRET
    shown = re.search(r'<p class="key-once">([^<]+)</p>', response.text)
    assert shown is not None and shown.group(1) == saved.webhook_secret
    assert saved.webhook_secret_previous == OLD_SECRET
    assert saved.webhook_secret_previous_valid_until == panel.clock() + 86400
    assert OLD_SECRET not in response.text

    later = admin_client.page("/settings").text
    assert saved.webhook_secret not in later
    assert "previous secret accepted until" in later
    details = {entry.target: entry.detail for entry in audit_entries(panel, "setting.changed")
               if entry.actor == "admin"}
    assert details["webhook_secret"] == details["webhook_secret_previous"] == "(secret changed)"
    assert not any(saved.webhook_secret in (d or "") or OLD_SECRET in (d or "")
                   for d in details.values())


def test_a_typed_secret_replaces_the_old_one_at_once_without_grace(
        panel: Panel, admin_client: PanelClient) -> None:
    save_settings(panel.engine, {"webhook_secret": OLD_SECRET}, actor="test", source="test")
    fields = form_fields(admin_client.page("/settings").text, "/settings")
    fields.update({"secret_action": "replace", "webhook_secret": "Typed-Replacement-Secret-42",
                   "secret_grace": "0"})
    response = admin_client.post("/settings", fields)
    assert response.status_code == 303
    saved = panel.state.settings.get()
    assert saved.webhook_secret == "Typed-Replacement-Secret-42"
    assert (saved.webhook_secret_previous, saved.webhook_secret_previous_valid_until) == ("", 0)
    page = admin_client.page("/settings").text
    assert "the webhook secret was replaced" in page
    assert "Typed-Replacement-Secret-42" not in page


def test_typed_secrets_are_checked_and_never_echoed_back(
        panel: Panel, admin_client: PanelClient) -> None:
    fields = form_fields(admin_client.page("/settings").text, "/settings")
    fields.update({"webhook_secret": "tiny$ecret"})
    response = admin_client.post("/settings", fields)
    assert response.status_code == 400
    assert "at least 16 characters" in error_next_to(response.text, "webhook_secret")
    assert "tiny$ecret" not in response.text

    # A good secret in a form that fails elsewhere is neither saved nor shown again.
    fields.update({"webhook_secret": "A-Perfectly-Good-Secret-99", "rate_limit_per_minute": "-1"})
    response = admin_client.post("/settings", fields)
    assert response.status_code == 400
    assert "A-Perfectly-Good-Secret-99" not in response.text
    assert panel.state.settings.get().webhook_secret == ""


def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(
        panel: Panel, admin_client: PanelClient) -> None:
    fields = form_fields(admin_client.page("/settings").text, "/settings")
    fields.pop("csrf_token")
    fields["log_level"] = "error"
    response = admin_client.post("/settings", fields, csrf=False)
    assert response.status_code == 403
    assert panel.state.settings.get().log_level == "info"


def test_sender_policy_is_saved_and_its_effect_explained(
        panel: Panel, admin_client: PanelClient) -> None:
    page = admin_client.page("/sender").text
    assert "No sender domain is set" in page
    fields = form_fields(page, "/sender")
    fields.update({"allowed_sender_domain": "Example.COM.", "default_from_local_part": "hello",
                   "sender_allowlist": "support, billing"})
    response = admin_client.post("/sender", fields)
    assert response.status_code == 303
    saved = panel.state.settings.get()
    assert saved.allowed_sender_domain == "example.com"
    assert saved.default_from_local_part == "hello"
    assert saved.sender_allowlist == ["support", "billing"]
    assert saved.allow_any_local_part is False

    page = admin_client.page("/sender").text
    assert "Sender settings saved." in page
    assert "<code>hello@example.com</code>" in page
    assert "<code>support@example.com</code>, <code>billing@example.com</code>" in page

    fields = form_fields(page, "/sender")
    fields["allow_any_local_part"] = "on"
    assert admin_client.post("/sender", fields).status_code == 303
    assert panel.state.settings.get().allow_any_local_part is True
    assert "Any <code>…@example.com</code>" in admin_client.page("/sender").text


def test_sender_errors_are_inline_and_keep_the_typed_values(
        panel: Panel, admin_client: PanelClient) -> None:
    fields = form_fields(admin_client.page("/sender").text, "/sender")
    fields.update({"allowed_sender_domain": "not a domain", "default_from_local_part": "no reply",
                   "sender_allowlist": "ok, <b>bad</b>"})
    response = admin_client.post("/sender", fields)
    assert response.status_code == 400
    page = response.text
    assert "must be a domain name" in error_next_to(page, "allowed_sender_domain")
    assert "must be an e-mail local part" in error_next_to(page, "default_from_local_part")
    assert "must be an e-mail local part" in error_next_to(page, "sender_allowlist")
    assert 'value="not a domain"' in page
    assert "ok, &lt;b&gt;bad&lt;/b&gt;</textarea>" in page and "<b>bad</b>" not in page
    saved = panel.state.settings.get()
    assert (saved.allowed_sender_domain, saved.default_from_local_part) == ("", "no-reply")
