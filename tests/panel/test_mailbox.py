"""The mailbox connectivity test against a real Dovecot: TLS, certificates, login, guard, limits."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from mailapi.db import read_transaction
from mailapi.models import audit_log
from mailapi.settings import save_settings
from tests.support.dovecot import Dovecot
from tests.support.panel import Panel, PanelClient

PROTOCOLS = ("imap", "imaps", "pop3", "pop3s")
WRONG_PASSWORD = "not-the-Dovecot-password"


def make_panel(engine: Engine, directory: Path, dovecot: Dovecot, *, trust_ca: bool) -> Panel:
    """A panel allowed to reach the test ports, trusting the test CA through [smtp] ca_file."""
    directory.mkdir()
    ports = (dovecot.imap_port, dovecot.imaps_port, dovecot.pop3_port, dovecot.pop3s_port,
             dovecot.imap_no_tls_port, dovecot.pop3_no_tls_port)
    extra = f"extra_test_ports = [{', '.join(str(port) for port in ports)}]\n"
    if trust_ca:
        extra += f'\n[smtp]\nca_file = "{dovecot.ca_file}"\n'
    return Panel(engine, directory, extra_config=extra)


@pytest.fixture
def mailbox_panel(engine: Engine, tmp_path: Path, dovecot: Dovecot) -> Iterator[Panel]:
    instance = make_panel(engine, tmp_path / "trusting", dovecot, trust_ca=True)
    yield instance
    instance.close()


@pytest.fixture
def client(mailbox_panel: Panel) -> PanelClient:
    return mailbox_panel.logged_in("admin")


def configure(panel: Panel, protocol: str, dovecot: Dovecot, **changes: Any) -> None:
    values: dict[str, Any] = {
        f"{protocol}_host": dovecot.host, f"{protocol}_port": dovecot.port(protocol),
        f"{protocol}_username": dovecot.user, f"{protocol}_password": dovecot.password}
    if protocol in ("imap", "pop3"):
        values[f"{protocol}_starttls"] = True
    values.update(changes)
    save_settings(panel.engine, values, actor="test", source="test")


def press_test(client: PanelClient, protocol: str, **kwargs: Any) -> Any:
    client.page(f"/protocols/{protocol}")
    return client.post(f"/protocols/{protocol}/test", **kwargs)


def audit_rows(engine: Engine) -> list[tuple[str, str, str | None]]:
    with read_transaction(engine) as connection:
        rows = connection.execute(
            select(audit_log.c.actor, audit_log.c.target, audit_log.c.detail)
            .where(audit_log.c.action == "mailbox.tested").order_by(audit_log.c.id)).all()
    return [(row.actor, row.target, row.detail) for row in rows]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_test_logs_in_over_verified_tls_for_every_protocol(
        mailbox_panel: Panel, client: PanelClient, dovecot: Dovecot, protocol: str) -> None:
    dovecot.deliver(f"for the {protocol} test")
    configure(mailbox_panel, protocol, dovecot)
    response = press_test(client, protocol)
    assert response.status_code == 200, response.text[-2000:]
    page = response.text
    assert f"{protocol.upper()} connection test: passed" in page
    assert f"connected to {dovecot.host}:{dovecot.port(protocol)}" in page
    upgrade = {"imap": "STARTTLS, ", "pop3": "STLS, "}.get(protocol, "")
    assert re.search(rf"<li>{upgrade}TLS 1\.[23], certificate verified</li>", page)
    assert f"logged in as {dovecot.user}" in page
    count = dovecot.inbox_count()
    assert f"{count} message{'' if count == 1 else 's'} in" in page
    assert "logged out" in page
    assert dovecot.password not in page
    actor, target, detail = audit_rows(mailbox_panel.engine)[-1]
    assert (actor, target) == ("admin", f"{protocol} {dovecot.host}:{dovecot.port(protocol)}")
    assert detail is not None and detail.startswith("passed: ")
    assert dovecot.password not in detail


def test_without_a_user_name_only_the_greeting_and_capabilities_are_checked(
        mailbox_panel: Panel, client: PanelClient, dovecot: Dovecot) -> None:
    configure(mailbox_panel, "imaps", dovecot, imaps_username="", imaps_password="")
    response = press_test(client, "imaps")
    assert response.status_code == 200
    assert "no user name set, login skipped; capabilities: IMAP4REV1" in response.text
    assert "logged in as" not in response.text


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_wrong_password_is_a_login_failure_that_never_shows_the_password(
        mailbox_panel: Panel, client: PanelClient, dovecot: Dovecot, protocol: str) -> None:
    configure(mailbox_panel, protocol, dovecot, **{f"{protocol}_password": WRONG_PASSWORD})
    response = press_test(client, protocol)
    assert response.status_code == 502
    assert "connection test: failed at the login step" in response.text
    assert "Authentication failed." in response.text  # Dovecot's own answer
    assert WRONG_PASSWORD not in response.text
    _actor, _target, detail = audit_rows(mailbox_panel.engine)[-1]
    assert detail is not None and detail.startswith("failed: ")
    assert WRONG_PASSWORD not in detail


@pytest.mark.parametrize("protocol", ["imap", "pop3s"])
def test_an_unknown_ca_is_refused_unless_certificates_are_ignored(
        engine: Engine, tmp_path: Path, dovecot: Dovecot, protocol: str) -> None:
    panel = make_panel(engine, tmp_path / "untrusting", dovecot, trust_ca=False)
    try:
        client = panel.logged_in("admin")
        configure(panel, protocol, dovecot)
        refused = press_test(client, protocol)
        assert refused.status_code == 502
        assert "certificate not trusted (unable to get local issuer certificate)" in \
            refused.text
        assert "logged in as" not in refused.text

        configure(panel, protocol, dovecot, mailbox_ignore_certificates=True)
        accepted = press_test(client, protocol)
        assert accepted.status_code == 200
        assert "certificate NOT verified (ignore certificates is on)" in accepted.text
        assert f"logged in as {dovecot.user}" in accepted.text
    finally:
        panel.close()


def _log_after(dovecot: Dovecot, offset: int, marker: str) -> str:
    """Dovecot's log lines written after `offset` once one holds `marker` (it logs async)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = dovecot.log_path.read_text(errors="replace")[offset:]
        if marker in text:
            return text
        time.sleep(0.05)
    raise AssertionError(f"no {marker!r} in the Dovecot log")


@pytest.mark.parametrize(("protocol", "command"), [("imap", "STARTTLS"), ("pop3", "STLS")])
def test_required_starttls_that_the_server_lacks_fails_before_any_credentials(
        mailbox_panel: Panel, client: PanelClient, dovecot: Dovecot, protocol: str,
        command: str) -> None:
    # The listeners on dovecot.no_tls_host have `ssl = no`: they never offer STARTTLS/STLS.
    port = dovecot.imap_no_tls_port if protocol == "imap" else dovecot.pop3_no_tls_port
    configure(mailbox_panel, protocol, dovecot, **{f"{protocol}_host": dovecot.no_tls_host,
                                                  f"{protocol}_port": port})
    offset = len(dovecot.log_path.read_text(errors="replace"))
    response = press_test(client, protocol)
    assert response.status_code == 502
    assert f"connection test: failed at the {command} step" in response.text
    assert f"the server does not offer {command}; the credentials were not sent" in \
        response.text
    # Dovecot saw the connection end without any authentication attempt.
    session = next(line for line in _log_after(dovecot, offset, f"lip={dovecot.no_tls_host}")
                   .splitlines() if f"lip={dovecot.no_tls_host}" in line)
    assert "no auth attempts" in session
    assert "user=<>" in session


@pytest.mark.parametrize(("target", "reason"), [
    (("169.254.169.254", 993), "a link-local address (cloud metadata lives there)"),
    (("127.0.0.1", 2222), "port 2222 is not a usual IMAPS port"),
    (("", 993), "no host is configured"),
])
def test_refused_targets_are_not_contacted_and_say_why(
        mailbox_panel: Panel, client: PanelClient, dovecot: Dovecot, target: tuple[str, int],
        reason: str) -> None:
    host, port = target
    configure(mailbox_panel, "imaps", dovecot, imaps_host=host, imaps_port=port)
    response = press_test(client, "imaps")
    assert response.status_code == 400
    assert "Not tested: the panel will not connect to this target" in response.text
    assert reason in response.text
    actor, audited, detail = audit_rows(mailbox_panel.engine)[-1]
    assert (actor, audited) == ("admin", f"imaps {host}:{port}")
    assert detail is not None and detail.startswith("refused: ")


def test_tests_are_rate_limited_per_admin(mailbox_panel: Panel, client: PanelClient) -> None:
    mailbox_panel.state.test_limit_per_minute = 2
    # No host is saved, so each allowed press ends at the guard without any network.
    assert press_test(client, "pop3").status_code == 400
    assert press_test(client, "imaps").status_code == 400
    limited = press_test(client, "imap")
    assert limited.status_code == 429
    assert "at most 2 connection tests per minute per admin" in limited.text
    assert int(limited.headers["Retry-After"]) >= 1
    assert len(audit_rows(mailbox_panel.engine)) == 2  # the refused press is not a test

    other = mailbox_panel.logged_in("second-admin")
    assert press_test(other, "imap").status_code == 400
    mailbox_panel.clock.advance(60)
    assert press_test(client, "imap").status_code == 400


def test_the_test_needs_the_csrf_token(mailbox_panel: Panel, client: PanelClient,
                                       dovecot: Dovecot) -> None:
    configure(mailbox_panel, "imaps", dovecot)
    response = press_test(client, "imaps", csrf=False)
    assert response.status_code == 403
    assert audit_rows(mailbox_panel.engine) == []
