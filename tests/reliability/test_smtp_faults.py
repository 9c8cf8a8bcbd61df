"""Each SMTP stage refusing, stalling, hanging up or babbling: state, escaped reason, no leak."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, delete

from mailapi.db import write_transaction
from mailapi.models import idempotency_keys, outbound_queue
from mailapi.pause import clear_pause
from tests.integration.worker_helpers import (
    Clock,
    enqueue_some,
    events,
    make_worker,
    pause,
    queued_row,
    row,
    serve,
    smtp_settings,
)
from tests.support.badsmtp import STAGES, Script, ScriptedSmtp, Step, run_worker_checked
from tests.support.database import migrated_engine
from tests.support.panel import Panel, PanelClient

HOSTILE = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
BASE = 30  # retry_base_seconds: the first retry comes between BASE/2 and BASE later
PAUSE = 60  # queue_pause_seconds: the first circuit-breaker pause
# The stage a failure is stored under ("rcpt: 550 ..."), per stage of the session.
LABEL = {"greeting": "connect", "ehlo": "ehlo", "starttls": "tls", "auth": "auth",
         "mail": "mail", "rcpt": "rcpt", "data": "data", "dot": "data"}
# The codes each stage can really answer (RFC 5321, 3207, 4954 and common practice).
CODES = {
    "greeting": (421, 554),
    "ehlo": (421, 451, 550, 554),
    "starttls": (421, 454, 501, 554),
    "auth": (421, 451, 454, 534, 535, 554),
    "mail": (421, 450, 451, 452, 550, 552, 553, 554),
    "rcpt": (421, 450, 451, 452, 550, 552, 553, 554),
    "data": (421, 451, 452, 554),  # instead of 354 to the DATA command
    "dot": (421, 450, 451, 452, 550, 552, 553, 554),  # the reply to the final dot
}
# Stages a real aiosmtpd server can be told to refuse (tests/support/smtpd.py Faults); the
# others are played by the scripted peer.
AIOSMTPD_FAULT = {"mail": "mail_reply", "rcpt": "rcpt_reply", "dot": "data_reply"}


def expected(stage: str, code: int) -> str:
    """The documented outcome (mailapi.delivery.outcome.classify), written out as a table.

    - 4xx anywhere: retry with backoff.
    - 5xx greeting or EHLO: retry (a server refusing service now may accept later).
    - 5xx to STARTTLS or AUTH: pause the queue, the message goes back untried.
    - 5xx to MAIL FROM, RCPT, DATA or the final dot: fail the message ("rejected"). MAIL FROM
      is treated like RCPT: the refusal is taken as concerning this message, so a sender the
      upstream refuses for every message fails them one by one rather than pausing the queue.
    """
    if code < 500 or stage in ("greeting", "ehlo"):
        return "retry"
    if stage in ("starttls", "auth"):
        return "pause"
    return "fail"


MATRIX = [pytest.param(stage, code, expected(stage, code), id=f"{stage}-{code}")
          for stage in STAGES for code in CODES[stage]]


@dataclass
class Bench:
    """One migrated database and one logged-in panel for the whole module (argon2 logins
    are too slow to repeat for every cell); each test leaves the queue empty and running."""

    engine: Engine
    panel: Panel
    client: PanelClient


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    directory = tmp_path_factory.mktemp("smtp-faults")
    engine = migrated_engine(directory / "mail-api.sqlite3")
    panel = Panel(engine, directory)
    panel.clock.now = time.time()  # before every test's clock: a pause shows as active
    bench = Bench(engine, panel, panel.logged_in())
    yield bench
    panel.close()
    engine.dispose()


@pytest.fixture
def bench(shared: Bench) -> Iterator[Bench]:
    yield shared
    with write_transaction(shared.engine) as connection:
        connection.execute(delete(outbound_queue))
        connection.execute(delete(idempotency_keys))  # the next test reuses the same payloads
        clear_pause(connection, now=time.time())


def reply(stage: str, code: int) -> str:
    return f"{code} {code // 100}.0.0 {stage} says no {HOSTILE}"


def assert_state(engine: Engine, queue_id: int, clock: Clock, outcome: str, label: str, *,
                 code: int | None = None) -> str:
    """The row, its last_error and its delivery event as `outcome` calls for; the error."""
    found = queued_row(engine, queue_id)
    error = found.last_error or ""
    prefix = f"{label}: {code}" if code is not None else f"{label}: "
    assert error.startswith(prefix), (prefix, error)
    [event] = events(engine, queue_id)
    assert event.smtp_code == code
    assert event.detail == error
    state = pause(engine)
    if outcome == "retry":
        assert (found.state, found.attempts, found.failed_reason) == ("queued", 1, None)
        assert clock.now + BASE / 2 <= found.next_attempt_at <= clock.now + BASE
        assert event.outcome == "deferred"
        assert state.paused_until is None
    elif outcome == "fail":
        assert (found.state, found.attempts, found.failed_reason) == ("failed", 1, "rejected")
        assert event.outcome == "failed"
        assert state.paused_until is None
    else:
        assert outcome == "pause"
        assert (found.state, found.attempts, found.failed_reason) == ("queued", 0, None)
        assert found.next_attempt_at <= clock.now  # untried: due again once the pause ends
        assert event.outcome == "paused"
        assert (state.paused_until, state.failures) == (clock.now + PAUSE, 1)
        assert state.reason == error
    return error


def assert_shown_escaped(bench: Bench, queue_id: int, paused: bool = False) -> None:
    pages = [f"/queue/{queue_id}", "/"] if paused else [f"/queue/{queue_id}"]
    for path in pages:
        page = bench.client.page(path).text
        assert HOSTILE not in page, path
        assert ESCAPED in page, path


def one_message(bench: Bench, port: int, clock: Clock, **values: object) -> int:
    """Point the (shared) settings at `port`, every SMTP option given; enqueue one message."""
    defaults: dict[str, object] = {
        "smtp_security": "plain", "smtp_username": "", "smtp_password": "",
        "smtp_allow_plaintext_auth": False, "smtp_timeout": 5, "retry_base_seconds": BASE,
        "queue_pause_seconds": PAUSE}
    settings = smtp_settings(bench.engine, port, **(defaults | values))
    [queue_id] = enqueue_some(bench.engine, settings, clock.now)
    return queue_id


def script_for(stage: str, step: Step) -> tuple[Script, dict[str, object]]:
    """A script playing `step` at `stage`, and the settings that make the worker reach it."""
    values: dict[str, object] = {}
    script = Script(steps={stage: step})
    if stage == "starttls":
        script.offer_starttls = True
        values["smtp_security"] = "starttls"
    if stage == "auth":
        script.offer_auth = True
        values.update(smtp_username="mailer", smtp_password="s3cret-pw",
                      smtp_allow_plaintext_auth=True)
    return script, values


# -- the reply matrix ------------------------------------------------------------------------

@pytest.mark.parametrize(("stage", "code", "outcome"), MATRIX)
def test_reply_matrix(bench: Bench, tmp_path: Path, *, stage: str, code: int,
                      outcome: str) -> None:
    clock = Clock()
    text = reply(stage, code)
    if stage in AIOSMTPD_FAULT:
        with serve() as server:
            setattr(server.recorder.faults, AIOSMTPD_FAULT[stage], text)
            queue_id = one_message(bench, server.port, clock)
            assert run_worker_checked(make_worker(bench.engine, tmp_path, clock)) == [1]
            assert server.recorder.messages == []
    else:
        script, values = script_for(stage, Step(reply=text))
        with ScriptedSmtp(script).start() as peer:
            queue_id = one_message(bench, peer.port, clock, **values)
            assert run_worker_checked(make_worker(bench.engine, tmp_path, clock)) == [1]
        assert peer.messages == []
        if stage in ("greeting", "ehlo", "starttls"):
            # Nothing past the refused step, and never a plaintext fallback after STARTTLS.
            assert not {"AUTH", "MAIL", "RCPT", "DATA"} & set(peer.commands())

    error = assert_state(bench.engine, queue_id, clock, outcome, LABEL[stage], code=code)
    assert f"{stage} says no {HOSTILE}" in error
    assert_shown_escaped(bench, queue_id, paused=outcome == "pause")


# -- stalls ------------------------------------------------------------------------------------

@pytest.mark.parametrize("stage", STAGES)
def test_a_silent_stage_times_out_and_is_retried(bench: Bench, tmp_path: Path,
                                                 stage: str) -> None:
    """No greeting, no answer to EHLO ... or to the final dot: the timeout decides, then a
    retry with backoff (even at STARTTLS: silence says nothing about TLS)."""
    clock = Clock()
    script, values = script_for(stage, Step(silent=True))
    with ScriptedSmtp(script).start() as peer:
        queue_id = one_message(bench, peer.port, clock, smtp_timeout=1, **values)
        assert run_worker_checked(make_worker(bench.engine, tmp_path, clock)) == [1]
    assert peer.messages == []
    error = assert_state(bench.engine, queue_id, clock, "retry", LABEL[stage])
    assert "timed out" in error.lower()


def test_slow_replies_within_the_timeout_deliver(bench: Bench, tmp_path: Path) -> None:
    clock = Clock()
    slow = Step(delay=0.25)  # six slow answers, each well within the 2 s allowed
    script = Script(steps=dict.fromkeys(("greeting", "ehlo", "mail", "rcpt", "data", "dot"),
                                        slow))
    with ScriptedSmtp(script).start() as peer:
        queue_id = one_message(bench, peer.port, clock, smtp_timeout=2)
        assert run_worker_checked(make_worker(bench.engine, tmp_path, clock)) == [1]
    assert len(peer.messages) == 1
    assert row(bench.engine, queue_id) is None
    assert [event.outcome for event in events(bench.engine, queue_id)] == ["delivered"]


def test_slow_reply_to_the_final_dot_is_retried_and_may_duplicate(bench: Bench,
                                                                  tmp_path: Path) -> None:
    """The server stored the message but its 250 came after smtp_timeout: the worker cannot
    know, so it retries, and the server gets the message twice with the same Message-ID.

    DESIGN.md names one duplicate window (a crash between the 250 and the DELETE); a lost
    reply to the final dot (timeout, or a hang-up after storing) is the same window seen from
    the network side, inherent to SMTP (RFC 1047), and the fixed Message-ID marks it alike.
    """
    clock = Clock()
    with serve() as server:
        server.recorder.faults.reply_delay_after_store = 4
        queue_id = one_message(bench, server.port, clock, smtp_timeout=1)
        worker = make_worker(bench.engine, tmp_path, clock)
        assert run_worker_checked(worker) == [1]
        error = assert_state(bench.engine, queue_id, clock, "retry", "data")
        assert "timed out" in error.lower()
        assert len(server.recorder.messages) == 1  # stored, but the 250 was never heard

        server.recorder.faults.reply_delay_after_store = 0
        clock.now = queued_row(bench.engine, queue_id).next_attempt_at
        assert run_worker_checked(worker) == [1]
        first, second = server.recorder.wait_for(2)
    assert row(bench.engine, queue_id) is None
    assert first.parsed()["Message-ID"] == second.parsed()["Message-ID"]
    assert sorted(e.outcome for e in events(bench.engine, queue_id)) == ["deferred",
                                                                        "delivered"]


# -- hang-ups and garbage ----------------------------------------------------------------------

@pytest.mark.parametrize(("name", "script", "label"), [
    ("at-greeting", Script(steps={"greeting": Step(reply=b"", close=True)}), "connect"),
    ("after-rcpt", Script(steps={"rcpt": Step(reply=b"", close=True)}), "rcpt"),
    ("mid-data", Script(cut_data_after=64), "data"),
])
def test_a_hang_up_is_retried_then_delivered_once(bench: Bench, tmp_path: Path, name: str,
                                                  script: Script, label: str) -> None:
    clock = Clock()
    with ScriptedSmtp(script).start() as peer:
        queue_id = one_message(bench, peer.port, clock)
        worker = make_worker(bench.engine, tmp_path, clock)
        assert run_worker_checked(worker) == [1]
        assert peer.messages == []  # a cut-off message is not a delivered one
        assert_state(bench.engine, queue_id, clock, "retry", label)

        peer.script = Script()  # the server is healthy again
        clock.now = queued_row(bench.engine, queue_id).next_attempt_at
        assert run_worker_checked(worker) == [1]
    assert len(peer.messages) == 1
    assert row(bench.engine, queue_id) is None


GARBAGE = [
    ("greeting", b"\x00\xff\xfe " + HOSTILE.encode() + b" this is not SMTP\r\n", "connect"),
    ("ehlo", b"HELLO " + HOSTILE.encode() + b"\r\n", "ehlo"),
    ("rcpt", b"2x0 " + HOSTILE.encode() + b"\r\n", "rcpt"),
    ("dot", b"\x1b[31m" + HOSTILE.encode() + b"\x07\r\n", "data"),
]


@pytest.mark.parametrize(("stage", "garbage", "label"), GARBAGE,
                         ids=[stage for stage, _, _ in GARBAGE])
def test_garbage_is_retried_without_a_crash_and_shown_escaped(bench: Bench, tmp_path: Path,
                                                              stage: str, garbage: bytes,
                                                              label: str) -> None:
    clock = Clock()
    with ScriptedSmtp(Script(steps={stage: Step(reply=garbage)})).start() as peer:
        queue_id = one_message(bench, peer.port, clock)
        worker = make_worker(bench.engine, tmp_path, clock)
        assert run_worker_checked(worker) == [1]
        error = assert_state(bench.engine, queue_id, clock, "retry", label)
        assert "malformed reply" in error
        assert error.isprintable()
        assert_shown_escaped(bench, queue_id)

        peer.script = Script()  # the same worker goes on delivering
        clock.now = queued_row(bench.engine, queue_id).next_attempt_at
        assert run_worker_checked(worker) == [1]
    assert len(peer.messages) == 1


TWO_MB = 2 * 1024 * 1024
HUGE = [
    ("greeting", b"220 " + b"x" * TWO_MB + b"\r\n", "connect"),
    ("ehlo", b"250-" + b"\r\n250-".join([b"X-EXTENSION"] * (TWO_MB // 16)) + b"\r\n250 OK\r\n",
     "ehlo"),
    ("dot", b"250 " + b"y" * TWO_MB + b"\r\n", "data"),
]


@pytest.mark.parametrize(("stage", "huge", "label"), HUGE, ids=[s for s, _, _ in HUGE])
def test_a_2mb_reply_is_cut_off_with_bounded_memory(bench: Bench, tmp_path: Path, stage: str,
                                                    huge: bytes, label: str) -> None:
    clock = Clock()
    with ScriptedSmtp(Script(steps={stage: Step(reply=huge)})).start() as peer:
        queue_id = one_message(bench, peer.port, clock)
        worker = make_worker(bench.engine, tmp_path, clock)
        tracemalloc.start()
        try:
            assert run_worker_checked(worker) == [1]
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    # The client never holds the reply: aiosmtplib drops a response past 32 KB.
    assert peak < TWO_MB // 2, f"peak {peak} bytes while reading a {len(huge)}-byte reply"
    assert peer.messages == []
    error = assert_state(bench.engine, queue_id, clock, "retry", label)
    assert error == f"{label}: malformed reply: Response too long"


def test_a_long_refusal_is_stored_truncated_and_escaped(bench: Bench, tmp_path: Path) -> None:
    clock = Clock()
    text = f"550 5.1.1 {HOSTILE} " + "z" * 7000  # one line, under aiosmtplib's 8 KB limit
    with ScriptedSmtp(Script(steps={"rcpt": Step(reply=text)})).start() as peer:
        queue_id = one_message(bench, peer.port, clock)
        assert run_worker_checked(make_worker(bench.engine, tmp_path, clock)) == [1]
    error = assert_state(bench.engine, queue_id, clock, "fail", "rcpt", code=550)
    assert len(error) <= len("rcpt: 550 ") + 301 and error.endswith("…")
    assert_shown_escaped(bench, queue_id)
