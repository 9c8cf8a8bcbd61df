"""The worker over STARTTLS and implicit TLS, with AUTH, and its refusals when TLS is wrong."""

from __future__ import annotations

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
    run_passes,
    serve,
    smtp_settings,
)
from tests.support.smtpd import SmtpServer


@pytest.fixture(scope="module")
def other_name_context(ca: trustme.CA) -> ssl.SSLContext:
    """A server certificate from the trusted CA, but issued only for another host name."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("other.example").configure_cert(context)
    return context


@pytest.fixture
def starttls_server(server_context: ssl.SSLContext) -> Iterator[SmtpServer]:
    with serve(mode="starttls", server_context=server_context) as server:
        yield server


def assert_paused_untouched(engine: Engine, queue_ids: list[int], clock: Clock) -> None:
    """Queue paused for the future; every message back in the queue, its attempt uncounted."""
    state = pause(engine)
    assert state.paused_until is not None and state.paused_until > clock.now
    assert state.failures == 1
    for queue_id in queue_ids:
        found = queued_row(engine, queue_id)
        assert (found.state, found.attempts, found.failed_reason) == ("queued", 0, None)
    assert "paused" in [event.outcome for event in events(engine)]


# -- encrypted delivery ----------------------------------------------------------------------

def test_starttls_verified_against_private_ca(engine: Engine, starttls_server: SmtpServer,
                                              ca_file: Path, tmp_path: Path) -> None:
    clock = Clock()
    settings = smtp_settings(engine, starttls_server.port, smtp_security="starttls")
    queue_ids = enqueue_some(engine, settings, clock.now, count=3)

    run_passes(make_worker(engine, tmp_path, clock, ca_file=ca_file))

    received = starttls_server.recorder.wait_for(3)
    assert all(message.tls for message in received)
    assert all(row(engine, queue_id) is None for queue_id in queue_ids)
    assert pause(engine).paused_until is None


def test_starttls_with_auth(engine: Engine, server_context: ssl.SSLContext, ca_file: Path,
                            tmp_path: Path) -> None:
    clock = Clock()
    users = RecordingUsers({"mailer": "s3cret"})
    with serve(mode="starttls", server_context=server_context, users=users,
               require_starttls=True) as server:
        settings = smtp_settings(engine, server.port, smtp_security="starttls",
                                 smtp_username="mailer", smtp_password="s3cret")
        [queue_id] = enqueue_some(engine, settings, clock.now)

        run_passes(make_worker(engine, tmp_path, clock, ca_file=ca_file))

        [received] = server.recorder.wait_for(1)
    assert received.tls is True
    assert received.auth_user == "mailer"
    assert "mailer" in users.lookups
    assert row(engine, queue_id) is None


def test_implicit_tls(engine: Engine, server_context: ssl.SSLContext, ca_file: Path,
                      tmp_path: Path) -> None:
    clock = Clock()
    with serve(mode="ssl", server_context=server_context) as server:
        # The listener speaks only TLS: a plaintext client gets no greeting and times out.
        settings = smtp_settings(engine, server.port, smtp_security="plain", smtp_timeout=1)
        [queue_id] = enqueue_some(engine, settings, clock.now)
        run_passes(make_worker(engine, tmp_path, clock, ca_file=ca_file))
        retried = queued_row(engine, queue_id)
        assert (retried.state, retried.attempts) == ("queued", 1)
        assert "timed out" in (retried.last_error or "").lower()
        assert server.recorder.messages == []

        smtp_settings(engine, server.port, smtp_security="ssl")
        clock.now = retried.next_attempt_at
        run_passes(make_worker(engine, tmp_path, clock, ca_file=ca_file))

        [received] = server.recorder.wait_for(1)
    # Received.tls reflects STARTTLS only; over implicit TLS the listener itself is the proof.
    assert received.rcpt_tos == ["user0@example.com"]
    assert row(engine, queue_id) is None


# -- AUTH over plaintext -----------------------------------------------------------------------

def test_plaintext_auth_refused_by_default(engine: Engine, tmp_path: Path) -> None:
    clock = Clock()
    users = RecordingUsers({"mailer": "s3cret"})
    with serve(mode="plain", users=users) as server:
        settings = smtp_settings(engine, server.port, smtp_username="mailer",
                                 smtp_password="s3cret")
        assert settings.smtp_allow_plaintext_auth is False
        queue_ids = enqueue_some(engine, settings, clock.now, count=2)

        assert run_passes(make_worker(engine, tmp_path, clock)) == [2]

        assert server.recorder.messages == []
        assert server.recorder.connections == 0  # refused before connecting at all
    assert users.lookups == []
    assert_paused_untouched(engine, queue_ids, clock)
    assert "plaintext" in (pause(engine).reason or "")


def test_plaintext_auth_when_allowed(engine: Engine, tmp_path: Path) -> None:
    clock = Clock()
    with serve(mode="plain", users={"mailer": "s3cret"}) as server:
        settings = smtp_settings(engine, server.port, smtp_username="mailer",
                                 smtp_password="s3cret", smtp_allow_plaintext_auth=True)
        [queue_id] = enqueue_some(engine, settings, clock.now)

        run_passes(make_worker(engine, tmp_path, clock))

        [received] = server.recorder.wait_for(1)
    assert received.tls is False
    assert received.auth_user == "mailer"
    assert row(engine, queue_id) is None


# -- certificate and STARTTLS failures ---------------------------------------------------------

def test_unknown_ca_pauses(engine: Engine, starttls_server: SmtpServer,
                           tmp_path: Path) -> None:
    clock = Clock()
    settings = smtp_settings(engine, starttls_server.port, smtp_security="starttls")
    queue_ids = enqueue_some(engine, settings, clock.now, count=2)

    run_passes(make_worker(engine, tmp_path, clock, ca_file=None))  # system roots only

    assert starttls_server.recorder.messages == []
    assert_paused_untouched(engine, queue_ids, clock)
    assert "certificate" in (pause(engine).reason or "").lower()


def test_unknown_ca_over_implicit_tls_pauses(engine: Engine, server_context: ssl.SSLContext,
                                             tmp_path: Path) -> None:
    clock = Clock()
    with serve(mode="ssl", server_context=server_context) as server:
        settings = smtp_settings(engine, server.port, smtp_security="ssl")
        queue_ids = enqueue_some(engine, settings, clock.now)

        run_passes(make_worker(engine, tmp_path, clock))

        assert server.recorder.messages == []
    assert_paused_untouched(engine, queue_ids, clock)


@pytest.mark.parametrize("mode", ["starttls", "ssl"])
def test_wrong_host_name_pauses(engine: Engine, other_name_context: ssl.SSLContext,
                                ca_file: Path, tmp_path: Path, mode: str) -> None:
    clock = Clock()
    with serve(mode=mode, server_context=other_name_context) as server:
        settings = smtp_settings(engine, server.port, smtp_security=mode)
        queue_ids = enqueue_some(engine, settings, clock.now)

        run_passes(make_worker(engine, tmp_path, clock, ca_file=ca_file))

        assert server.recorder.messages == []
    assert_paused_untouched(engine, queue_ids, clock)
    assert "127.0.0.1" in (pause(engine).reason or "")


@pytest.mark.parametrize("mode", ["starttls", "ssl"])
def test_ignore_certificates_accepts_wrong_host_name(engine: Engine,
                                                     other_name_context: ssl.SSLContext,
                                                     tmp_path: Path, mode: str) -> None:
    clock = Clock()
    with serve(mode=mode, server_context=other_name_context) as server:
        settings = smtp_settings(engine, server.port, smtp_security=mode,
                                 smtp_ignore_certificates=True)
        [queue_id] = enqueue_some(engine, settings, clock.now)

        run_passes(make_worker(engine, tmp_path, clock))  # not even the CA is known

        [received] = server.recorder.wait_for(1)
    assert received.tls  # over STARTTLS or implicit TLS alike
    assert row(engine, queue_id) is None


def test_starttls_required_never_falls_back_to_plaintext(engine: Engine,
                                                         smtp_server: SmtpServer,
                                                         ca_file: Path,
                                                         tmp_path: Path) -> None:
    clock = Clock()
    settings = smtp_settings(engine, smtp_server.port, smtp_security="starttls")
    queue_ids = enqueue_some(engine, settings, clock.now, count=2)

    run_passes(make_worker(engine, tmp_path, clock, ca_file=ca_file))

    assert smtp_server.recorder.messages == []
    assert smtp_server.recorder.connections >= 1  # it did talk to the server, then stopped
    assert_paused_untouched(engine, queue_ids, clock)
    assert "STARTTLS" in (pause(engine).reason or "")


def test_no_credentials_sent_without_starttls(engine: Engine, ca_file: Path,
                                              tmp_path: Path) -> None:
    clock = Clock()
    users = RecordingUsers({"mailer": "s3cret"})
    with serve(mode="plain", users=users) as server:  # offers AUTH in the clear, no STARTTLS
        settings = smtp_settings(engine, server.port, smtp_security="starttls",
                                 smtp_username="mailer", smtp_password="s3cret",
                                 smtp_allow_plaintext_auth=True)
        queue_ids = enqueue_some(engine, settings, clock.now)

        run_passes(make_worker(engine, tmp_path, clock, ca_file=ca_file))

        assert server.recorder.messages == []
    assert users.lookups == []
    assert_paused_untouched(engine, queue_ids, clock)


def test_pause_holds_across_passes_until_settings_change(engine: Engine,
                                                         smtp_server: SmtpServer,
                                                         ca_file: Path,
                                                         tmp_path: Path) -> None:
    clock = Clock()
    settings = smtp_settings(engine, smtp_server.port, smtp_security="starttls")
    queue_ids = enqueue_some(engine, settings, clock.now, count=3)
    worker = make_worker(engine, tmp_path, clock, ca_file=ca_file)

    assert run_passes(worker) == [3]
    clock.advance(5)
    assert run_passes(worker) == [0]  # still paused: nothing claimed
    assert smtp_server.recorder.messages == []

    fixed = smtp_settings(engine, smtp_server.port, smtp_security="plain")
    assert pause(engine).active(clock.now, settings.smtp_fingerprint())
    assert not pause(engine).active(clock.now, fixed.smtp_fingerprint())
    clock.advance(5)
    # Half-open: one probe message first, then (the pause cleared) the rest.
    assert run_passes(worker, passes=2) == [1, 2]
    smtp_server.recorder.wait_for(3)
    assert all(row(engine, queue_id) is None for queue_id in queue_ids)
    cleared = pause(engine)
    assert (cleared.paused_until, cleared.failures) == (None, 0)
