"""The optional mailbox-protocol pages: labelled optional, saving, validation, passwords."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import Engine, select

from mailapi.db import read_transaction
from mailapi.models import audit_log
from mailapi.settings import Settings, load_settings
from tests.support.panel import Panel, PanelClient

PROTOCOLS = ("imap", "imaps", "pop3", "pop3s")
DEFAULT_PORTS = {"imap": 143, "imaps": 993, "pop3": 110, "pop3s": 995}
SECRET = "s3cret-Mailbox-pass"


def stored(engine: Engine) -> Settings:
    with read_transaction(engine) as connection:
        return load_settings(connection)


def audit_rows(engine: Engine, action: str) -> list[tuple[str, str | None]]:
    with read_transaction(engine) as connection:
        rows = connection.execute(select(audit_log.c.target, audit_log.c.detail)
                                  .where(audit_log.c.action == action)).all()
    return [(row.target, row.detail) for row in rows]


def form(protocol: str, **overrides: str) -> dict[str, str]:
    """A complete post of the protocol's form, as a browser sends it."""
    values = {f"{protocol}_host": "mail.example.com", f"{protocol}_port": "",
              f"{protocol}_username": "alice", f"{protocol}_password": "",
              "mailbox_ignore_certificates__present": "1"}
    if protocol in ("imap", "pop3"):
        values[f"{protocol}_starttls__present"] = "1"
        values[f"{protocol}_starttls"] = "on"
    values.update(overrides)
    return values


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_each_page_is_labelled_optional_and_separate_from_delivery(
        admin_client: PanelClient, protocol: str) -> None:
    page = admin_client.page(f"/protocols/{protocol}").text
    assert "Optional — not used for sending." in page
    assert "<strong>stored and tested only</strong>" in page
    assert "never reads a mailbox" in page
    assert "append a copy of each sent message to a folder such as Sent" in page
    assert "poll a mailbox for bounces and notifications" in page
    # The in-page navigation reaches all four and marks this one.
    for other in PROTOCOLS:
        assert f'href="/protocols/{other}"' in page
    assert re.search(rf'href="/protocols/{protocol}" aria-current="page" class="current"', page)
    assert f'value="{DEFAULT_PORTS[protocol]}"' in page
    assert "[smtp] ca_file" in page


def test_starttls_is_offered_only_where_the_protocol_has_it(admin_client: PanelClient) -> None:
    assert 'name="imap_starttls"' in admin_client.page("/protocols/imap").text
    assert "Require STLS before logging in" in admin_client.page("/protocols/pop3").text
    for implicit in ("imaps", "pop3s"):
        page = admin_client.page(f"/protocols/{implicit}").text
        assert "_starttls" not in page
        assert "implicit TLS" in page


def test_unknown_protocol_is_404_and_the_index_redirects(admin_client: PanelClient) -> None:
    assert admin_client.get("/protocols/smtp").status_code == 404
    response = admin_client.get("/protocols")
    assert response.status_code == 303
    assert response.headers["location"] == "/protocols/imap"


def test_pages_need_a_session(panel: Panel) -> None:
    response = panel.client().get("/protocols/imaps")
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_saving_stores_every_field_and_never_shows_the_password(
        panel: Panel, admin_client: PanelClient, protocol: str) -> None:
    admin_client.page(f"/protocols/{protocol}")
    response = admin_client.post(f"/protocols/{protocol}", form(
        protocol, **{f"{protocol}_port": "10999", f"{protocol}_password": SECRET,
                     "mailbox_ignore_certificates": "on"}))
    assert response.status_code == 303, response.text[:500]
    settings = stored(panel.engine)
    assert getattr(settings, f"{protocol}_host") == "mail.example.com"
    assert getattr(settings, f"{protocol}_port") == 10999
    assert getattr(settings, f"{protocol}_username") == "alice"
    assert getattr(settings, f"{protocol}_password") == SECRET
    assert settings.mailbox_ignore_certificates is True
    page = admin_client.page(f"/protocols/{protocol}").text
    assert f"{protocol.upper()} settings saved." in page
    assert SECRET not in page
    assert '<span class="badge ok">set</span>' in page
    assert "Certificate checking is off for the mailbox-protocol tests" in page
    assert (f"{protocol}_password", "(secret changed)") in audit_rows(panel.engine,
                                                                      "setting.changed")
    assert all(SECRET not in (detail or "")
               for _target, detail in audit_rows(panel.engine, "setting.changed"))


def test_an_empty_port_takes_the_usual_one_and_starttls_can_be_turned_off(
        panel: Panel, admin_client: PanelClient) -> None:
    admin_client.page("/protocols/pop3")
    overrides = {"pop3_port": "1110"}
    assert admin_client.post("/protocols/pop3", form("pop3", **overrides)).status_code == 303
    admin_client.page("/protocols/pop3")
    unticked = form("pop3")
    del unticked["pop3_starttls"]
    assert admin_client.post("/protocols/pop3", unticked).status_code == 303
    settings = stored(panel.engine)
    assert settings.pop3_port == 110
    assert settings.pop3_starttls is False


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_invalid_values_are_shown_inline_and_nothing_is_saved(
        panel: Panel, admin_client: PanelClient, protocol: str) -> None:
    before = stored(panel.engine)
    admin_client.page(f"/protocols/{protocol}")
    response = admin_client.post(f"/protocols/{protocol}", form(
        protocol, **{f"{protocol}_host": "bad host", f"{protocol}_port": "99999",
                     f"{protocol}_password": SECRET}))
    assert response.status_code == 400
    assert "Nothing was saved." in response.text
    assert "must be a host name or IP address" in response.text
    assert "must be between 1 and 65535" in response.text
    assert f'<p class="error" id="d-{protocol}_host">' in response.text  # beside the field
    assert 'value="bad host"' in response.text  # what was typed comes back for correction
    assert SECRET not in response.text  # ...except the password
    assert stored(panel.engine) == before


def test_control_characters_in_the_login_are_refused(panel: Panel,
                                                     admin_client: PanelClient) -> None:
    admin_client.page("/protocols/pop3s")
    response = admin_client.post("/protocols/pop3s", form(
        "pop3s", pop3s_username="alice\r\nDELE 1", pop3s_password="pw\nQUIT"))
    assert response.status_code == 400
    assert "without line breaks or other control characters" in response.text
    assert "must not contain line breaks" in response.text
    assert stored(panel.engine).pop3s_username == ""


def test_an_empty_password_keeps_it_and_clear_removes_it(panel: Panel,
                                                         admin_client: PanelClient) -> None:
    admin_client.page("/protocols/imaps")
    assert admin_client.post("/protocols/imaps",
                             form("imaps", imaps_password=SECRET)).status_code == 303
    admin_client.page("/protocols/imaps")
    assert admin_client.post("/protocols/imaps", form("imaps", imaps_host="other.example.com")
                             ).status_code == 303
    assert stored(panel.engine).imaps_password == SECRET
    assert stored(panel.engine).imaps_host == "other.example.com"

    page = admin_client.page("/protocols/imaps").text
    assert 'name="imaps_password_clear"' in page
    both = admin_client.post("/protocols/imaps", form("imaps", imaps_password="new-one",
                                                      imaps_password_clear="on"))
    assert both.status_code == 400
    assert "not both" in both.text
    assert stored(panel.engine).imaps_password == SECRET

    admin_client.page("/protocols/imaps")
    cleared = admin_client.post("/protocols/imaps", form("imaps", imaps_password_clear="on"))
    assert cleared.status_code == 303
    assert stored(panel.engine).imaps_password == ""
    assert '<span class="badge muted">not set</span>' in admin_client.page(
        "/protocols/imaps").text


def test_saving_without_the_csrf_token_is_forbidden(panel: Panel,
                                                    admin_client: PanelClient) -> None:
    admin_client.page("/protocols/imap")
    response = admin_client.post("/protocols/imap", form("imap"), csrf=False)
    assert response.status_code == 403
    assert stored(panel.engine).imap_host == ""
