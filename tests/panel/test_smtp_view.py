"""The /smtp form and Test SMTP against a real aiosmtpd server: delivery, refusals, limits."""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from mailapi.audit import AuditEntry, list_audit
from mailapi.db import read_transaction
from mailapi.settings import save_settings
from tests.support.panel import Panel, PanelClient, form_fields
from tests.support.ports import free_port
from tests.support.smtpd import SmtpServer

SENDER_SETTINGS = {"allowed_sender_domain": "example.com", "default_from_local_part": "no-reply",
                   "sender_display_name": "Example Accounts"}


def configure(panel: Panel, **changes: Any) -> None:
    save_settings(panel.engine, {**SENDER_SETTINGS, **changes}, actor="test", source="test")


def audited_tests(panel: Panel) -> list[AuditEntry]:
    with read_transaction(panel.engine) as connection:
        return list_audit(connection, action="smtp.tested")


def error_next_to(page: str, field: str) -> str:
    block = re.search(rf'<label for="f-{field}">.*?<p class="error"[^>]*>(.*?)</p>', page, re.S)
    return block.group(1) if block else ""


@pytest.fixture
def reachable_panel(engine: Engine, tmp_path: Path, smtp_server: SmtpServer) -> Iterator[Panel]:
    """A panel whose test button may reach the test server's unusual port."""
    instance = Panel(engine, tmp_path, extra_config=f"extra_test_ports = [{smtp_server.port}]")
    yield instance
    instance.close()


def test_the_form_fills_the_preset_port_and_treats_the_password_as_write_only(
        panel: Panel, admin_client: PanelClient) -> None:
    page = admin_client.page("/smtp").text
    assert 'id="f-smtp_security"' in page and 'id="f-smtp_port"' in page
    fields = form_fields(page, "/smtp")
    fields.update({"smtp_host": "smtp.example.net", "smtp_security": "ssl", "smtp_port": "",
                   "smtp_username": "relay", "smtp_password": "Pa55-word-not-shown"})
    assert admin_client.post("/smtp", fields).status_code == 303
    saved = panel.state.settings.get()
    assert (saved.smtp_host, saved.smtp_security, saved.smtp_port) == (
        "smtp.example.net", "ssl", 465)
    assert saved.smtp_password == "Pa55-word-not-shown"

    page = admin_client.page("/smtp").text
    assert "SMTP settings saved." in page
    assert "Pa55-word-not-shown" not in page
    assert re.search(r'Password <span class="badge ok">set</span>', page)
    # Submitting again with the password field empty keeps the stored one.
    fields = form_fields(page, "/smtp")
    assert fields["smtp_password"] == ""
    fields["smtp_timeout"] = "12"
    assert admin_client.post("/smtp", fields).status_code == 303
    saved = panel.state.settings.get()
    assert (saved.smtp_timeout, saved.smtp_password) == (12, "Pa55-word-not-shown")

    fields = form_fields(admin_client.page("/smtp").text, "/smtp")
    fields["smtp_password_clear"] = "on"
    assert admin_client.post("/smtp", fields).status_code == 303
    assert panel.state.settings.get().smtp_password == ""


def test_invalid_fields_are_reported_inline_and_nothing_is_saved(
        panel: Panel, admin_client: PanelClient) -> None:
    fields = form_fields(admin_client.page("/smtp").text, "/smtp")
    fields.update({"smtp_host": "smtp.example.net", "smtp_port": "70000", "smtp_timeout": "0",
                   "sender_display_name": "Accounts\r\nBcc: victim@example.org",
                   "smtp_password": "Secret-typed-into-a-bad-form"})
    response = admin_client.post("/smtp", fields)
    assert response.status_code == 400
    page = response.text
    assert "Nothing was saved." in page
    assert "between 1 and 65535" in error_next_to(page, "smtp_port")
    assert "between 1 and 600" in error_next_to(page, "smtp_timeout")
    assert error_next_to(page, "sender_display_name").startswith("must not contain")
    assert 'value="70000"' in page
    assert "Secret-typed-into-a-bad-form" not in page
    saved = panel.state.settings.get()
    assert (saved.smtp_host, saved.smtp_port, saved.smtp_password) == ("", 587, "")


def test_ignoring_certificates_shows_a_warning(panel: Panel, admin_client: PanelClient) -> None:
    assert "Certificate checking is off" not in admin_client.page("/smtp").text
    configure(panel, smtp_ignore_certificates=True)
    page = admin_client.page("/smtp").text
    assert "Certificate checking is off for the SMTP upstream" in page
    assert "Warning: with this on" in page


def test_the_test_button_sends_a_real_message_with_the_saved_settings(
        reachable_panel: Panel, smtp_server: SmtpServer) -> None:
    configure(reachable_panel, smtp_host="127.0.0.1", smtp_port=smtp_server.port,
              smtp_security="plain")
    client = reachable_panel.logged_in()
    client.page("/smtp")
    response = client.post("/smtp/test", {"test_to": "Someone@Example.com"})
    assert response.status_code == 200, response.text[:2000]

    received = smtp_server.recorder.wait_for(1)[0]
    assert received.mail_from == "no-reply@example.com"
    assert received.rcpt_tos == ["Someone@example.com"]
    message = received.parsed()
    assert message["From"] == "Example Accounts <no-reply@example.com>"
    assert message["To"] == "Someone@example.com"
    assert message["Subject"] == "MAIL_API test message"
    assert message["Message-ID"].endswith("@example.com>") and message["Date"]
    body = message.get_body(("plain",))
    assert body is not None and "Sent by admin at " in body.get_content()

    assert "Accepted by 127.0.0.1" in response.text
    assert '<pre class="answer">250 2.0.0 Message accepted</pre>' in response.text
    [entry] = audited_tests(reachable_panel)
    assert (entry.actor, entry.target) == ("admin", "Someone@example.com")
    assert entry.detail == "sent: 250 2.0.0 Message accepted"


def test_the_test_button_uses_starttls_auth_and_the_configured_ca(
        engine: Engine, tmp_path: Path, ca_file: Path, server_context: ssl.SSLContext) -> None:
    server = SmtpServer(free_port(), mode="starttls", server_context=server_context,
                        users={"relay": "relay-password"}, require_starttls=True).start()
    panel = Panel(engine, tmp_path, extra_config=f"extra_test_ports = [{server.port}]",
                  extra_sections=f'[smtp]\nca_file = "{ca_file}"')
    try:
        configure(panel, smtp_host="127.0.0.1", smtp_port=server.port, smtp_security="starttls",
                  smtp_username="relay", smtp_password="relay-password")
        client = panel.logged_in()
        client.page("/smtp")
        response = client.post("/smtp/test", {"test_to": "someone@example.com"})
        assert response.status_code == 200, response.text[:2000]
        received = server.recorder.wait_for(1)[0]
        assert received.tls and received.auth_user == "relay"
        assert received.parsed()["Subject"] == "MAIL_API test message"
        assert "relay-password" not in response.text
    finally:
        panel.close()
        server.stop()


def test_a_refusal_shows_the_stage_the_code_and_the_escaped_answer(
        reachable_panel: Panel, smtp_server: SmtpServer) -> None:
    configure(reachable_panel, smtp_host="127.0.0.1", smtp_port=smtp_server.port,
              smtp_security="plain")
    smtp_server.recorder.faults.rcpt_reply = "550 5.1.1 <script>alert(1)</script> unknown user"
    client = reachable_panel.logged_in()
    client.page("/smtp")
    response = client.post("/smtp/test", {"test_to": "nobody@example.com"})
    assert response.status_code == 502
    assert "the RCPT step failed with 550" in response.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in response.text
    assert "<script>alert" not in response.text
    [entry] = audited_tests(reachable_panel)
    assert entry.detail is not None and entry.detail.startswith("failed: 5.1.1")
    assert smtp_server.recorder.messages == []


@pytest.mark.parametrize(("host", "port", "reason"), [
    ("169.254.169.254", 25, "a link-local address (cloud metadata lives there)"),
    ("127.0.0.1", 8080, "port 8080 is not a usual SMTP port"),
])
def test_the_test_button_refuses_forbidden_targets(
        panel: Panel, admin_client: PanelClient, host: str, port: int, reason: str) -> None:
    configure(panel, smtp_host=host, smtp_port=port, smtp_security="plain")
    admin_client.page("/smtp")
    response = admin_client.post("/smtp/test", {"test_to": "someone@example.com"})
    assert response.status_code == 400
    assert "the panel will not connect to this target" in response.text
    assert reason in response.text
    [entry] = audited_tests(panel)
    assert entry.detail is not None and entry.detail.startswith("refused: ")


def test_the_test_server_port_needs_the_operator_to_allow_it(
        panel: Panel, admin_client: PanelClient, smtp_server: SmtpServer) -> None:
    configure(panel, smtp_host="127.0.0.1", smtp_port=smtp_server.port, smtp_security="plain")
    admin_client.page("/smtp")
    response = admin_client.post("/smtp/test", {"test_to": "someone@example.com"})
    assert response.status_code == 400
    assert "extra_test_ports" in response.text
    assert smtp_server.recorder.connections == 0


def test_tests_are_rate_limited_per_admin(panel: Panel, admin_client: PanelClient) -> None:
    panel.state.test_limit_per_minute = 2
    configure(panel, smtp_host="169.254.169.254", smtp_port=25)
    admin_client.page("/smtp")
    statuses = [admin_client.post("/smtp/test", {"test_to": "someone@example.com"})
                for _ in range(3)]
    assert [r.status_code for r in statuses] == [400, 400, 429]
    assert "at most 2 SMTP tests per minute per admin" in statuses[2].text
    assert int(statuses[2].headers["retry-after"]) > 0
    assert len(audited_tests(panel)) == 2
    # Another admin has a budget of their own.
    other = panel.logged_in("second")
    other.page("/smtp")
    assert other.post("/smtp/test", {"test_to": "someone@example.com"}).status_code == 400


def test_the_test_button_needs_a_csrf_token_a_valid_address_and_a_sender_domain(
        panel: Panel, admin_client: PanelClient) -> None:
    save_settings(panel.engine, {"smtp_host": "169.254.169.254"}, actor="test", source="test")
    admin_client.page("/smtp")
    no_token = admin_client.post("/smtp/test", {"test_to": "someone@example.com"}, csrf=False)
    assert no_token.status_code == 403

    invalid = admin_client.post("/smtp/test", {"test_to": "not an address"})
    assert invalid.status_code == 400
    assert error_next_to(invalid.text, "test_to").startswith("not a valid address")
    assert 'value="not an address"' in invalid.text

    no_domain = admin_client.post("/smtp/test", {"test_to": "someone@example.com"})
    assert no_domain.status_code == 400
    assert "no sender domain is set" in no_domain.text
    assert [entry.detail for entry in audited_tests(panel)] == [
        "refused: Not sent: no sender domain is set. Set allowed_sender_domain on the Sender "
        "page first."]


def test_a_password_from_a_credential_file_is_announced(engine: Engine, tmp_path: Path) -> None:
    panel = Panel(engine, tmp_path)
    panel.state.settings.overrides["smtp_password"] = "from-a-credential-file"
    try:
        page = panel.logged_in().page("/smtp")
        assert "[secrets] smtp_password_file" in page.text
        assert "from-a-credential-file" not in page.text
    finally:
        panel.close()
