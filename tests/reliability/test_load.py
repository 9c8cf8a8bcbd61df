"""Sustained webhooks with the panel polling, a burst into an SMTP outage, connection churn."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tests.reliability.soak import (
    FD_GROWTH,
    WAL_BOUND_BYTES,
    WORKER_RSS_BOUND_BYTES,
    BurstReport,
    SustainedReport,
    fd_count,
    one_shot_load,
    receiver_suite,
    rss_growth_limit,
    run_burst,
    run_sustained,
    running,
    wait_for,
)
from tests.support.ports import free_port

pytestmark = pytest.mark.e2e

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "120"))
SOAK_RATE = float(os.environ.get("SOAK_RATE", "50"))
DRAIN_SECONDS = 40.0


def publish(report: SustainedReport | BurstReport, path: Path, capsys: pytest.CaptureFixture[str],
            extra: str = "") -> None:
    """The figures on the terminal (even without -s) and in a file whose path is printed."""
    text = report.text()
    path.write_text(text + "\n" + (extra + "\n" if extra else ""), encoding="utf-8")
    with capsys.disabled():
        print(f"\n{text}\n  report: {path}")


@pytest.mark.timeout(SOAK_SECONDS + DRAIN_SECONDS + 150)
def test_sustained_webhooks_with_the_panel_polling(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    report = run_sustained(tmp_path, SOAK_SECONDS, rate=SOAK_RATE, connections=4,
                           drain_timeout=DRAIN_SECONDS)
    publish(report, tmp_path / "sustained-report.txt", capsys, report.sample_table())
    tally = report.tally

    # Every webhook was answered 2xx; the panel answered every poll.
    assert tally.sent == int(SOAK_RATE * SOAK_SECONDS)
    assert not tally.transport_errors, tally.transport_errors
    assert set(tally.statuses) == {202}, tally.odd_answers
    assert len(tally.accepted) == tally.sent
    assert len(set(tally.queued_ids.values())) == tally.sent  # one row each
    assert report.panel.requests >= SOAK_SECONDS, report.panel.statuses
    assert not report.panel.errors, report.panel.errors[:5]

    # Each accepted message reached the SMTP server exactly once; the backlog drained.
    assert report.drain_seconds is not None, report.final_queue
    assert report.final_queue == {}
    assert (report.missing, report.duplicated, report.unexpected) == ([], [], [])
    assert report.delivered == tally.sent and report.without_token == 0

    # Bounded WAL; memory and descriptors flat once warmed up.
    assert len(report.samples) >= 9
    assert report.wal.peak < WAL_BOUND_BYTES
    for name, trend in report.rss.items():
        assert trend.growth <= rss_growth_limit(trend), (name, trend)
    for name, trend in report.fds.items():
        assert trend.growth <= FD_GROWTH, (name, trend)

    # Nothing died, everything stopped cleanly, the file is sound.
    assert report.died == []
    assert report.exit_codes == {"receiver": 0, "worker": 0, "panel": 0}
    assert report.integrity == "ok"


@pytest.mark.timeout(120)
def test_a_burst_into_an_smtp_outage_is_refused_or_delivered_once(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = run_burst(tmp_path, requests=2000, connections=200, rate_limit=1200)
    publish(report, tmp_path / "burst-report.txt", capsys)
    tally = report.tally

    # Every request answered, only accepted, rate-limited or busy; a good part accepted, and
    # no more than the limiter's bucket (1,200) plus what it refilled meanwhile (20/s).
    assert not tally.transport_errors, tally.transport_errors
    assert sum(tally.statuses.values()) == 2000
    assert set(tally.statuses) <= {202, 429, 503}, tally.odd_answers
    assert 1000 <= tally.statuses[202] <= 1200 + 20 * tally.seconds + 1
    assert tally.without_retry_after == 0  # each refusal says when to come back
    assert tally.connections_opened == 200 and tally.peak_in_flight == 200

    # While the upstream was down the worker kept trying and its memory stayed bounded.
    assert report.deferred_attempts > 0
    assert 0 < report.worker_rss_peak < WORKER_RSS_BOUND_BYTES
    assert report.backlog_at_recovery == tally.statuses[202]

    # Once it is up: every accepted message once, nothing refused sent, the queue empty.
    assert report.drain_seconds is not None, report.final_queue
    assert report.final_queue == {}
    assert (report.missing, report.duplicated, report.unexpected) == ([], [], [])
    assert report.delivered == tally.statuses[202] and report.without_token == 0

    # The burst's connections and the outage left no descriptor behind; the WAL stayed small.
    assert report.fd_growth("receiver") <= FD_GROWTH and report.fd_growth("worker") <= FD_GROWTH
    assert report.wal_peak < WAL_BOUND_BYTES
    assert report.died == []
    assert report.exit_codes == {"receiver": 0, "worker": 0}
    assert report.integrity == "ok"


@pytest.mark.timeout(60)
def test_connections_their_clients_closed_are_freed_at_once(tmp_path: Path) -> None:
    """One webhook per connection, closed by the client without `Connection: close`.

    Hypercorn alone keeps each such socket in CLOSE_WAIT for keep_alive_timeout (30 s): at a
    hundred a second that is 3,000 descriptors, past a service's default limit of 1,024.
    """
    suite = receiver_suite(tmp_path, smtp_port=free_port(), rate_limit=0)
    with running(suite):
        pid = suite.start_receiver().process.pid
        before = fd_count(pid)
        assert before is not None
        tally = asyncio.run(one_shot_load(suite.receiver_port, suite.secret, "churn-0000",
                                          requests=300, rate=100))
        assert tally.statuses == {202: 300} and not tally.transport_errors
        assert tally.connections_opened == 300
        freed = wait_for(lambda: (fd_count(pid) or 0) <= before + FD_GROWTH, 3.0)
        assert freed is not None, f"{fd_count(pid)} descriptors, {before} before"
