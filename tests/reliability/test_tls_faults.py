"""Bad certificates, no STARTTLS, a STARTTLS-stripping MITM: a pause, never a byte in clear."""

from __future__ import annotations

import base64
import datetime
import itertools
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from sqlalchemy import Engine

from tests.integration.worker_helpers import (
    Clock,
    RecordingUsers,
    enqueue_some,
    events,
    make_worker,
    pause,
    queued_row,
    row,
    serve,
    smtp_settings,
)
from tests.support.badsmtp import Script, ScriptedSmtp, StripTlsProxy, TapProxy, run_worker_checked
from tests.support.panel import Panel

USER, PASSWORD = "mailer", "tls-only-S3cret-9f2"
# Every form the password could take on the wire: as is, AUTH PLAIN, AUTH LOGIN.
SECRETS = (PASSWORD.encode(), base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()),
           base64.b64encode(PASSWORD.encode()))
PAUSE = 60
FAULTS = ("unknown-ca", "wrong-name", "expired")
MODES = ("starttls", "ssl")
# What OpenSSL says, and so what the pause reason must name.
REASONS = {"unknown-ca": "unable to get local issuer certificate",
           "wrong-name": "IP address mismatch",
           "expired": "certificate has expired"}


def server_context(leaf: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(context)
    return context


@pytest.fixture(scope="module")
def bad_contexts(ca: trustme.CA) -> dict[str, ssl.SSLContext]:
    """Server certificates that must be refused by a client trusting only `ca`."""
    now = datetime.datetime.now(datetime.UTC)
    return {
        # Right names, but signed by a CA the worker was not told about.
        "unknown-ca": server_context(trustme.CA().issue_cert("localhost", "127.0.0.1")),
        # The trusted CA, but for another host (the worker connects to 127.0.0.1).
        "wrong-name": server_context(ca.issue_cert("mail.other.example")),
        # The trusted CA and the right names, but its validity ended yesterday.
        "expired": server_context(ca.issue_cert(
            "localhost", "127.0.0.1", not_before=now - datetime.timedelta(days=30),
            not_after=now - datetime.timedelta(days=1))),
    }


@pytest.fixture
def panel(engine: Engine, tmp_path: Path) -> Iterator[Panel]:
    instance = Panel(engine, tmp_path)
    yield instance
    instance.close()


def dashboard(panel: Panel, clock: Clock) -> str:
    panel.clock.now = clock.now
    return panel.logged_in().page("/").text


def assert_never_in_clear(sent: bytes) -> None:
    """No password in any encoding, no AUTH or envelope command, in what the client sent."""
    for secret in SECRETS:
        assert secret not in sent
    for command in (b"AUTH", b"MAIL FROM", b"RCPT TO", b"DATA\r\n"):
        assert command not in sent.upper(), command


def assert_paused_untouched(engine: Engine, queue_ids: list[int], clock: Clock,
                            reason: str) -> None:
    state = pause(engine)
    assert (state.paused_until, state.failures) == (clock.now + PAUSE, 1)
    assert reason in (state.reason or ""), state.reason
    tried = 0
    for queue_id in queue_ids:
        found = queued_row(engine, queue_id)
        assert (found.state, found.attempts, found.failed_reason) == ("queued", 0, None)
        if found.last_error is not None:  # the ones a session had started on
            assert reason in found.last_error
            tried += 1
    outcomes = [event.outcome for event in events(engine)]
    # Each session stops at its first failure; the rest go back without an attempt.
    assert outcomes == ["paused"] * tried and 1 <= tried <= 2


# -- certificates ------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fault", FAULTS)
def test_a_bad_certificate_pauses_and_nothing_goes_in_clear(
        engine: Engine, tmp_path: Path, *,
        bad_contexts: dict[str, ssl.SSLContext], ca_file: Path, fault: str, mode: str) -> None:
    clock = Clock()
    users = RecordingUsers({USER: PASSWORD})
    with serve(mode=mode, server_context=bad_contexts[fault], users=users,
               require_starttls=mode == "starttls") as server:
        with TapProxy(server.port).start() as tap:
            settings = smtp_settings(engine, tap.port, smtp_security=mode, smtp_username=USER,
                                     smtp_password=PASSWORD, queue_pause_seconds=PAUSE)
            queue_ids = enqueue_some(engine, settings, clock.now, count=3)
            worker = make_worker(engine, tmp_path, clock, ca_file=ca_file)
            assert run_worker_checked(worker) == [3]
        streams = tap.client_streams()
        assert server.recorder.messages == []
    assert users.lookups == []  # the server was never asked to check a password
    assert 1 <= len(streams) <= 2  # one connection per session that started
    for sent in streams:
        assert_never_in_clear(sent)
        if mode == "starttls":
            clear, _, handshake = sent.partition(b"STARTTLS\r\n")
            assert clear.upper().startswith(b"EHLO ") and clear.count(b"\r\n") == 1
            assert handshake[:1] == b"\x16"  # after STARTTLS: a TLS handshake record
        else:
            assert sent[:1] == b"\x16"  # implicit TLS: not one byte of SMTP in clear
    assert_paused_untouched(engine, queue_ids, clock, REASONS[fault])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fault", FAULTS)
def test_ignoring_certificates_delivers_over_tls_and_the_dashboard_warns(
        engine: Engine, panel: Panel, tmp_path: Path, *,
        bad_contexts: dict[str, ssl.SSLContext], fault: str, mode: str) -> None:
    clock = Clock()
    users = RecordingUsers({USER: PASSWORD})
    with serve(mode=mode, server_context=bad_contexts[fault], users=users,
               require_starttls=mode == "starttls") as server:
        with TapProxy(server.port).start() as tap:
            settings = smtp_settings(engine, tap.port, smtp_security=mode, smtp_username=USER,
                                     smtp_password=PASSWORD, smtp_ignore_certificates=True)
            queue_ids = enqueue_some(engine, settings, clock.now, count=2)
            assert run_worker_checked(make_worker(engine, tmp_path, clock)) == [2]
        received = server.recorder.wait_for(2)
        streams = tap.client_streams()
    assert {message.auth_user for message in received} == {USER}  # AUTH, inside TLS
    if mode == "starttls":
        assert all(message.tls for message in received)
    for sent, secret in itertools.product(streams, SECRETS):
        assert secret not in sent  # encrypted, even though the certificate was not checked
    assert all(row(engine, queue_id) is None for queue_id in queue_ids)
    assert pause(engine).paused_until is None
    page = dashboard(panel, clock)
    assert "Certificate checking is off for the SMTP upstream" in page


# -- STARTTLS missing or stripped ----------------------------------------------------------------

@pytest.mark.parametrize("allow_plaintext_auth", [False, True])
def test_a_mitm_stripping_starttls_gets_no_credentials_and_no_mail(
        engine: Engine, server_context: ssl.SSLContext, ca_file: Path, tmp_path: Path,
        allow_plaintext_auth: bool) -> None:
    """The MITM relays to a real STARTTLS server but hides STARTTLS and offers AUTH in clear.

    Even with smtp_allow_plaintext_auth on (it concerns `plain` upstreams only), a
    `starttls` upstream that does not offer STARTTLS is refused: no fallback."""
    clock = Clock()
    users = RecordingUsers({USER: PASSWORD})
    with serve(mode="starttls", server_context=server_context, users=users,
               require_starttls=True) as server:
        with StripTlsProxy(server.port).start() as mitm:
            settings = smtp_settings(engine, mitm.port, smtp_security="starttls",
                                     smtp_username=USER, smtp_password=PASSWORD,
                                     smtp_allow_plaintext_auth=allow_plaintext_auth,
                                     queue_pause_seconds=PAUSE)
            queue_ids = enqueue_some(engine, settings, clock.now, count=2)
            worker = make_worker(engine, tmp_path, clock, ca_file=ca_file)
            assert run_worker_checked(worker) == [2]
        assert server.recorder.messages == []
    # The real server did offer STARTTLS, on every connection; the MITM hid it each time.
    assert mitm.stripped == mitm.connections >= 1
    assert set(mitm.commands()) <= {"EHLO", "QUIT"}, mitm.commands()
    assert_never_in_clear(mitm.client_bytes())
    assert users.lookups == []
    assert_paused_untouched(engine, queue_ids, clock, "does not offer STARTTLS")


def test_a_587_server_without_starttls_offering_auth_gets_nothing(engine: Engine,
                                                                  ca_file: Path,
                                                                  tmp_path: Path) -> None:
    clock = Clock()
    with ScriptedSmtp(Script(offer_auth=True)).start() as peer:
        settings = smtp_settings(engine, peer.port, smtp_security="starttls",
                                 smtp_username=USER, smtp_password=PASSWORD,
                                 queue_pause_seconds=PAUSE)
        queue_ids = enqueue_some(engine, settings, clock.now, count=2)
        assert run_worker_checked(make_worker(engine, tmp_path, clock, ca_file=ca_file)) == [2]
    assert set(peer.commands()) <= {"EHLO", "QUIT"}, peer.commands()
    assert_never_in_clear(peer.received_bytes())
    assert peer.messages == []
    assert_paused_untouched(engine, queue_ids, clock, "does not offer STARTTLS")


def test_starttls_accepted_then_answered_in_plaintext_pauses(engine: Engine, ca_file: Path,
                                                             tmp_path: Path) -> None:
    """A peer says 220 to STARTTLS, then answers the handshake in plaintext (a downgrade that
    hopes the client carries on unencrypted): a TLS failure, so a pause."""
    clock = Clock()
    with ScriptedSmtp(Script(offer_starttls=True, offer_auth=True)).start() as peer:
        settings = smtp_settings(engine, peer.port, smtp_security="starttls",
                                 smtp_username=USER, smtp_password=PASSWORD,
                                 queue_pause_seconds=PAUSE)
        queue_ids = enqueue_some(engine, settings, clock.now)
        assert run_worker_checked(make_worker(engine, tmp_path, clock, ca_file=ca_file)) == [1]
    assert peer.commands() == ["EHLO", "STARTTLS"]
    assert_never_in_clear(peer.received_bytes())
    assert_paused_untouched(engine, queue_ids, clock, "tls: ")
