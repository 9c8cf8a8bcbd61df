"""A real browser against the real panel: log in, SMTP settings and test, template preview, CSP."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect

from tests.support.livepanel import ADMIN, ADMIN_PASSWORD
from tests.support.processes import Suite
from tests.support.smtpd import SmtpServer

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.timeout(90)]
STEP_TIMEOUT_MS = 15_000
# Injected over CDP before any page script, so the page's own CSP does not stop it.
RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolations.push({directive: event.violatedDirective, blocked: event.blockedURI,
                               source: event.sourceFile, line: event.lineNumber,
                               sample: event.sample});
});
"""


class Watch:
    """What the page reported: CSP violations (events and console lines) and script errors."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.console: list[str] = []
        self.violations: list[dict[str, Any]] = []
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.add_init_script(RECORD_VIOLATIONS)

    def _console(self, message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            self.console.append(message.text)

    def collect(self) -> None:
        """Read the violations of every frame (the sandboxed previews too) before navigating."""
        for frame in self.page.frames:
            self.violations += frame.evaluate(
                "window.__cspViolations ? window.__cspViolations.splice(0) : []")


def log_in(page: Page, base: str, watch: Watch) -> None:
    page.goto(f"{base}/login")
    page.fill("#username", ADMIN)
    page.fill("#password", ADMIN_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{base}/")
    expect(page.locator(".who")).to_contain_text(f"Signed in as {ADMIN}")
    watch.collect()


def configure_smtp(page: Page, base: str, smtp_port: int, watch: Watch) -> None:
    page.goto(f"{base}/smtp")
    page.fill("#f-smtp_host", "127.0.0.1")
    port = page.locator("#f-smtp_port")
    port.fill("")
    # panel.js (an external script, the only kind the CSP allows) fills the mode's usual port.
    page.select_option("#f-smtp_security", "ssl")
    expect(port).to_have_value("465")
    page.select_option("#f-smtp_security", "plain")
    expect(port).to_have_value("25")
    port.fill(str(smtp_port))
    page.get_by_role("button", name="Save SMTP settings").click()
    expect(page.locator(".flash-success")).to_have_text("SMTP settings saved.")
    expect(page.locator("#f-smtp_host")).to_have_value("127.0.0.1")
    expect(page.locator("#f-smtp_security")).to_have_value("plain")
    expect(port).to_have_value(str(smtp_port))
    watch.collect()


def send_test_message(page: Page, smtp_server: SmtpServer, smtp_port: int, watch: Watch
                      ) -> None:
    page.fill("#f-test_to", "alice@example.org")
    page.get_by_role("button", name="Send test message").click()
    result = page.locator("#test-result")
    expect(result).to_contain_text(f"Accepted by 127.0.0.1:{smtp_port}")
    received = smtp_server.recorder.wait_for(1)[0]
    message = received.parsed()
    assert received.rcpt_tos == ["alice@example.org"]
    assert received.mail_from == "no-reply@example.com"
    assert message["To"] == "alice@example.org"
    assert message["Subject"] == "MAIL_API test message"
    # The page shows what the server said to the final dot.
    expect(result.locator("pre.answer")).to_have_text("250 2.0.0 Message accepted")
    watch.collect()


def preview_edited_template(page: Page, base: str, watch: Watch) -> None:
    page.goto(f"{base}/templates")
    subject = page.locator("#f-template_email_verification_subject")
    text = page.locator("#f-template_email_verification_text")
    saved_subject = subject.input_value()
    watch.collect()
    subject.fill("Browser check for {{ to }}")
    text.fill(text.input_value() + "\nEdited in the browser for {{ to }}.\n")
    page.get_by_role("button", name="Preview without saving").click()
    expect(page.locator(".flash-info")).to_contain_text("Nothing has been saved")
    preview = page.locator("#type-email_verification .template-preview")
    expect(preview.locator("dd").first).to_have_text("Browser check for someone@example.com")
    expect(preview.locator("pre.preview").first).to_contain_text(
        "Edited in the browser for someone@example.com.")
    watch.collect()
    page.goto(f"{base}/templates")  # a preview saves nothing
    expect(subject).to_have_value(saved_subject)
    watch.collect()


def test_admin_configures_and_tests_smtp_and_previews_a_template(
        browser: Browser, live_panel: Suite, smtp_server: SmtpServer) -> None:
    page = browser.new_page()
    page.set_default_timeout(STEP_TIMEOUT_MS)
    watch = Watch(page)
    base = live_panel.panel_url
    log_in(page, base, watch)
    configure_smtp(page, base, smtp_server.port, watch)
    send_test_message(page, smtp_server, smtp_server.port, watch)
    preview_edited_template(page, base, watch)
    assert watch.violations == []
    assert watch.console == []
    assert watch.errors == []

    # The watch does see a violation: an inline script is refused, reported both ways.
    with page.expect_console_message(lambda line: "Content Security Policy" in line.text):
        ran = page.evaluate("""() => {
            const script = document.createElement("script");
            script.textContent = "window.__inlineRan = true;";
            document.body.appendChild(script);
            return window.__inlineRan === true;
        }""")
    assert ran is False
    page.wait_for_function("window.__cspViolations.length > 0")
    watch.collect()
    assert [violation["directive"] for violation in watch.violations] == ["script-src-elem"]
    page.close()
