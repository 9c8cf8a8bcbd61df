"""The /templates editor: sample-data previews, saving, broken templates refused inline."""

from __future__ import annotations

import html
import re

from mailapi.audit import AuditEntry, list_audit
from mailapi.db import read_transaction
from mailapi.rendering.defaults import DEFAULT_TEMPLATES
from mailapi.settings import save_settings
from tests.support.panel import Panel, PanelClient, form_fields

PREVIEW_POLICY = ("sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                  "frame-ancestors 'self'")


def setting_changes(panel: Panel) -> list[AuditEntry]:
    with read_transaction(panel.engine) as connection:
        return [entry for entry in list_audit(connection, action="setting.changed")
                if entry.actor == "admin"]


def error_next_to(page: str, field: str) -> str:
    block = re.search(rf'<label for="f-{field}">[^<]*</label>\s*<(?:input|textarea)[^>]*>'
                      rf'(?:[^<]*</textarea>)?\s*<p class="error"[^>]*>(.*?)</p>', page, re.S)
    return html.unescape(block.group(1)) if block else ""


def previews(page: str) -> list[str]:
    return [html.unescape(text) for text in re.findall(r'<pre class="preview">(.*?)</pre>',
                                                       page, re.S)]


def test_the_page_previews_the_saved_templates_with_sample_data(
        admin_client: PanelClient) -> None:
    page = admin_client.page("/templates").text
    text_preview, html_source = previews(page)[:2]
    assert "please confirm your e-mail address someone@example.com." in text_preview
    assert "Your verification code: 123456" in text_preview
    assert "https://example.com/verify?token=123456" in text_preview
    assert '<a href="https://example.com/verify?token=123456">' in html_source
    assert re.search(r"<dt>Subject</dt><dd>Verify your email</dd>", page)
    assert ('<iframe class="preview" sandbox src="/templates/preview/email_verification.html"'
            in page)
    for variable in ("to", "subject", "type", "token", "expires_at", "link"):
        assert f"<code>{{{{ {variable} }}}}</code>" in page
    assert 'class="code"' in page and 'name="template_password_reset_html"' in page


def test_the_html_preview_endpoint_is_sandboxed_by_its_own_headers(
        panel: Panel, admin_client: PanelClient) -> None:
    response = admin_client.get("/templates/preview/password_reset.html")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == PREVIEW_POLICY
    assert response.headers["x-frame-options"] == "SAMEORIGIN"
    assert "someone asked to reset the password for someone@example.com." in response.text
    assert "Your reset code: <strong>123456</strong>" in response.text
    assert admin_client.get("/templates/preview/newsletter.html").status_code == 404
    assert panel.client().get("/templates/preview/password_reset.html").status_code == 303


def test_the_preview_button_renders_unsaved_edits_without_saving(
        panel: Panel, admin_client: PanelClient) -> None:
    fields = form_fields(admin_client.page("/templates").text, "/templates")
    fields.update({
        "action": "preview",
        "template_email_verification_subject": "Welcome: {{ subject }}",
        "template_email_verification_text": "Hi {{ to }}, your code is {{ token }}.\n",
        "template_email_verification_html": "<p>Code <b>{{ token }}</b> for {{ to }}</p>",
    })
    response = admin_client.post("/templates", fields)
    assert response.status_code == 200
    page = response.text
    assert "Nothing has been saved" in page
    assert "<dt>Subject</dt><dd>Welcome: Verify your email</dd>" in page
    assert "Hi someone@example.com, your code is 123456.\n" in previews(page)
    assert "<p>Code <b>123456</b> for someone@example.com</p>" in previews(page)
    assert "&lt;p&gt;Code &lt;b&gt;123456&lt;/b&gt;" in page  # shown as escaped source
    # The edits stay in the form, and nothing reached the settings.
    assert "Hi {{ to }}, your code is {{ token }}.\n</textarea>" in page
    saved = panel.state.settings.get()
    assert saved.template_email_verification_text == DEFAULT_TEMPLATES["email_verification_text"]
    assert setting_changes(panel) == []


def test_saving_stores_the_templates_and_the_include_options(
        panel: Panel, admin_client: PanelClient) -> None:
    fields = form_fields(admin_client.page("/templates").text, "/templates")
    del fields["template_include_token"]  # untick
    fields.update({"action": "save", "template_password_reset_subject": "Reset for {{ to }}"})
    response = admin_client.post("/templates", fields)
    assert response.status_code == 303
    saved = panel.state.settings.get()
    assert saved.template_password_reset_subject == "Reset for {{ to }}"
    assert saved.template_include_token is False
    assert {entry.target for entry in setting_changes(panel)} == {
        "template_password_reset_subject", "template_include_token"}

    page = admin_client.page("/templates").text
    assert "Templates saved." in page
    assert "<dt>Subject</dt><dd>Reset for someone@example.com</dd>" in page
    assert "Your verification code" not in previews(page)[0]


def test_textarea_line_endings_from_a_browser_do_not_count_as_changes(
        panel: Panel, admin_client: PanelClient) -> None:
    fields = form_fields(admin_client.page("/templates").text, "/templates")
    crlf = {key: value.replace("\n", "\r\n") for key, value in fields.items()}
    assert admin_client.post("/templates", {**crlf, "action": "save"}).status_code == 303
    assert setting_changes(panel) == []


def test_broken_templates_are_refused_with_the_error_next_to_each_field(
        panel: Panel, admin_client: PanelClient) -> None:
    fields = form_fields(admin_client.page("/templates").text, "/templates")
    fields.update({
        "action": "save",
        "template_email_verification_text": "Hello {% if %}\n",
        "template_password_reset_html": "<p>{{ missing_variable }}</p>",
        "template_password_reset_subject": "Reset <now>",
    })
    response = admin_client.post("/templates", fields)
    assert response.status_code == 400
    page = response.text
    assert "Nothing was saved." in page
    assert error_next_to(page, "template_email_verification_text").startswith("line 1:")
    assert "'missing_variable' is undefined" in error_next_to(
        page, "template_password_reset_html")
    assert "No preview: fix the template error" in page
    assert "Hello {% if %}\n</textarea>" in page
    saved = panel.state.settings.get()
    assert saved.template_password_reset_subject == "{{ subject }}"
    assert setting_changes(panel) == []


def test_an_excluded_value_used_without_a_guard_cannot_be_saved(
        panel: Panel, admin_client: PanelClient) -> None:
    fields = form_fields(admin_client.page("/templates").text, "/templates")
    del fields["template_include_link"]
    fields.update({"action": "save", "template_email_verification_text": "Open {{ link }}\n"})
    response = admin_client.post("/templates", fields)
    assert response.status_code == 400
    assert "'link' is undefined" in error_next_to(response.text,
                                                  "template_email_verification_text")
    assert panel.state.settings.get().template_include_link is True


def test_template_markup_is_never_injected_into_the_panel_page(
        panel: Panel, admin_client: PanelClient) -> None:
    save_settings(panel.engine, {"template_email_verification_html":
                                 "<p>Hi</p><script>alert(1)</script>"},
                  actor="test", source="test")
    page = admin_client.page("/templates").text
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    framed = admin_client.get("/templates/preview/email_verification.html")
    assert framed.headers["content-security-policy"] == PREVIEW_POLICY  # scripts cannot run


def test_saving_templates_needs_the_csrf_token(panel: Panel, admin_client: PanelClient) -> None:
    fields = form_fields(admin_client.page("/templates").text, "/templates")
    fields.pop("csrf_token")
    fields.update({"action": "save", "template_password_reset_subject": "Changed"})
    assert admin_client.post("/templates", fields, csrf=False).status_code == 403
    assert panel.state.settings.get().template_password_reset_subject == "{{ subject }}"
