"""Sustained and burst webhook load on the real processes, for test_load.py and `make soak`."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import resource
import secrets
import socket
import sqlite3
import statistics
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from aiosmtpd.smtp import SMTP, Envelope, Session

from mailapi.db import open_engine
from tests.support.database import configure, migrated_engine
from tests.support.livepanel import ADMIN, ADMIN_PASSWORD, panel_suite
from tests.support.load import WEBHOOK_PATH, signed_request
from tests.support.ports import free_port
from tests.support.processes import Daemon, Suite, wait_until, write_config
from tests.support.smtpd import ClosingController

MB = 1024 * 1024
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
# What SQLite lets the WAL reach: the auto-checkpoint runs once a commit leaves 1,000 pages
# (4 KiB each, plus a 24-byte frame header: ~4 MiB) in the WAL, and the WAL is rewritten from
# its start once a checkpoint has caught up. It outgrows that only while checkpoints cannot
# catch up (a reader pinning an old snapshot, a long write); mailapi/db.py truncates it back
# to `journal_size_limit` (64 MiB) after such a checkpoint. 16 MiB is four auto-checkpoints'
# worth: a WAL beyond it means checkpoints are being starved.
WAL_BOUND_BYTES = 16 * MB
RSS_GROWTH_BYTES = 20 * MB  # "flat": last third vs middle third, the larger of this ...
RSS_GROWTH_RATIO = 0.25  # ... and this fraction of the middle third's median
FD_GROWTH = 5
WORKER_RSS_BOUND_BYTES = 150 * MB


# -- the upstream: a real aiosmtpd that counts tokens instead of keeping messages ---------------


class TokenCounter:
    """Counts each token (found by `pattern` in the raw message) and when it first arrived."""

    def __init__(self, pattern: re.Pattern[bytes]) -> None:
        self.pattern = pattern
        self.lock = threading.Lock()
        self.delivered: Counter[str] = Counter()
        self.first_at: dict[str, float] = {}
        self.without_token = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or envelope.content or b""
        raw = content.encode("utf-8") if isinstance(content, str) else bytes(content)
        found = self.pattern.search(raw)
        now = time.time()
        with self.lock:
            if found is None:
                self.without_token += 1
            else:
                token = found.group(0).decode("ascii")
                self.delivered[token] += 1
                self.first_at.setdefault(token, now)
        return "250 2.0.0 Message accepted"

    def snapshot(self) -> tuple[Counter[str], dict[str, float], int]:
        with self.lock:
            return Counter(self.delivered), dict(self.first_at), self.without_token


class Upstream:
    """The SMTP server on a fixed port. Until `start`, the port is held by a socket that is
    bound but not listening: connections are refused and no other process can take it."""

    def __init__(self, pattern: re.Pattern[bytes]) -> None:
        self.counter = TokenCounter(pattern)
        self._hold: socket.socket | None = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._hold.bind(("127.0.0.1", 0))
        self.port = int(self._hold.getsockname()[1])
        self._controller: ClosingController | None = None

    def start(self) -> None:
        if self._hold is not None:
            self._hold.close()
            self._hold = None
        self._controller = ClosingController(self.counter, hostname="127.0.0.1", port=self.port,
                                      server_hostname="localhost", ready_timeout=10)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
        if self._hold is not None:
            self._hold.close()
            self._hold = None


# -- measuring the processes ----------------------------------------------------------------------


def rss_bytes(pid: int) -> int | None:
    """VmRSS of a live process, None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return None


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return None


def queue_counts(database: Path) -> dict[str, int]:
    """Rows in the outbound queue by state, read on a read-only connection of our own."""
    uri = f"{database.as_uri()}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True, timeout=10)) as connection:
        rows = connection.execute(
            "SELECT state, count(*) FROM outbound_queue GROUP BY state").fetchall()
    return {str(state): int(count) for state, count in rows}


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


@dataclass(frozen=True)
class Sample:
    at: float  # seconds since the run started
    phase: str
    rss: dict[str, int | None]
    fds: dict[str, int | None]
    wal_bytes: int
    db_bytes: int
    queue: dict[str, int]

    @property
    def backlog(self) -> int:
        return self.queue.get("queued", 0) + self.queue.get("leased", 0)


class Sampler:
    """A thread taking a Sample of the daemons, the database files and the queue every
    `interval` seconds (and once more on `stop`). `phase` labels the samples taken next."""

    def __init__(self, daemons: dict[str, Daemon], database: Path, interval: float) -> None:
        self.pids = {name: daemon.process.pid for name, daemon in daemons.items()}
        self.database = database
        self.interval = interval
        self.phase = "start"
        self.samples: list[Sample] = []
        self.errors: list[str] = []
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> Sample | None:
        """Stop the thread and take one last sample."""
        self._stop.set()
        self._thread.join(timeout=30)
        return self.take()

    def take(self) -> Sample | None:
        try:
            queue = queue_counts(self.database)
        except sqlite3.Error as exc:  # the read is best effort; a failure is reported
            self.errors.append(f"{time.monotonic() - self._started:.1f}s: {exc}")
            return None
        sample = Sample(
            at=time.monotonic() - self._started, phase=self.phase,
            rss={name: rss_bytes(pid) for name, pid in self.pids.items()},
            fds={name: fd_count(pid) for name, pid in self.pids.items()},
            wal_bytes=file_size(self.database.with_name(self.database.name + "-wal")),
            db_bytes=file_size(self.database), queue=queue)
        self.samples.append(sample)
        return sample

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.take()

    def of_phase(self, phase: str) -> list[Sample]:
        return [sample for sample in self.samples if sample.phase == phase]


@dataclass(frozen=True)
class Trend:
    """One figure over a run: first value, medians of the middle and last thirds, max."""

    first: float
    middle: float
    last: float
    peak: float

    @property
    def growth(self) -> float:
        return self.last - self.middle

    @classmethod
    def of(cls, values: list[float]) -> Trend:
        if not values:
            return cls(0.0, 0.0, 0.0, 0.0)
        third = max(1, len(values) // 3)
        middle = values[third:2 * third] or values
        last = values[-third:]
        return cls(values[0], statistics.median(middle), statistics.median(last), max(values))


def trends(samples: list[Sample], figure: Callable[[Sample], int | None]) -> Trend:
    return Trend.of([float(value) for value in map(figure, samples) if value is not None])


def rss_growth_limit(trend: Trend) -> float:
    return max(RSS_GROWTH_BYTES, RSS_GROWTH_RATIO * trend.middle)


# -- the clients ----------------------------------------------------------------------------


def webhook(token: str, index: int) -> dict[str, Any]:
    """A distinct, valid webhook carrying `token` in its subject (found there at the SMTP
    server whatever the body's transfer encoding)."""
    expires = (datetime.now(UTC) + timedelta(hours=1)).isoformat(timespec="milliseconds")
    return {"type": "email_verification", "to": f"user{index}@example.net",
            "subject": f"Verify {token}", "token": token,
            "expiresAt": expires.replace("+00:00", "Z"),
            "link": f"https://app.example.com/verify?token={token}"}


class KeepAliveConnection:
    """One HTTP/1.1 keep-alive connection to the receiver, spoken by hand: at 200 connections
    a full client library costs the test process more CPU than the receiver spends serving.
    Reconnects on the next request after the server closed it or a request failed."""

    def __init__(self, port: int, timeout: float) -> None:
        self.port = port
        self.timeout = timeout
        self.opened = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes,
                   headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        """(status, headers with lower-case names, body)."""
        try:
            return await asyncio.wait_for(self._exchange(path, body, headers), self.timeout)
        except BaseException:
            self.close()
            raise

    async def _exchange(self, path: str, body: bytes,
                        headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        if self._reader is None or self._writer is None:
            self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
            self.opened += 1
        reader, writer = self._reader, self._writer
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                     f"Content-Length: {len(body)}\r\n{head}\r\n".encode("latin-1") + body)
        await writer.drain()
        status_line = await reader.readline()
        if not status_line:
            raise ConnectionResetError("closed without an answer")
        status = int(status_line.split()[1])
        answer_headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            answer_headers[name.strip().lower()] = value.strip()
        answer = await reader.readexactly(int(answer_headers.get("content-length", "0")))
        if "close" in answer_headers.get("connection", "").lower():
            self.close()
        return status, answer_headers, answer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


@dataclass
class ClientTally:
    """What a load client sent and heard."""

    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    transport_errors: Counter[str] = field(default_factory=Counter)
    accepted: dict[str, float] = field(default_factory=dict)  # token -> time.time() of the 2xx
    queued_ids: dict[str, int] = field(default_factory=dict)
    refused: dict[int, list[str]] = field(default_factory=dict)  # status -> tokens
    odd_answers: Counter[str] = field(default_factory=Counter)  # non-2xx status and body
    without_retry_after: int = 0  # 429 and 503 answers that did not say when to retry
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    connections_opened: int = 0
    peak_in_flight: int = 0
    _in_flight: int = 0

    async def post(self, connection: KeepAliveConnection, secret: str, token: str,
                   index: int) -> None:
        raw, headers = signed_request(secret, webhook(token, index))
        self.sent += 1
        self._in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
        started = time.monotonic()
        try:
            status, answer_headers, answer = await connection.post(WEBHOOK_PATH, raw, headers)
        except (OSError, EOFError, TimeoutError, ValueError, IndexError) as exc:
            self.transport_errors[type(exc).__name__] += 1
            return
        finally:
            self._in_flight -= 1
        self.latencies.append(time.monotonic() - started)
        self.statuses[status] += 1
        if 200 <= status < 300:
            self.accepted[token] = time.time()
            self.queued_ids[token] = int(json.loads(answer)["queued_id"])
            return
        self.refused.setdefault(status, []).append(token)
        if status in (429, 503) and not answer_headers.get("retry-after", "").isdigit():
            self.without_retry_after += 1
        key = f"{status} {answer[:200].decode('utf-8', 'replace')}"
        if key in self.odd_answers or len(self.odd_answers) < 20:
            self.odd_answers[key] += 1


async def _senders(port: int, connections: int, timeout: float, tally: ClientTally,
                   send: Callable[[KeepAliveConnection], Awaitable[None]]) -> None:
    """`send` run once per connection, all at once; the connections closed at the end."""
    pool = [KeepAliveConnection(port, timeout) for _ in range(connections)]
    started = time.monotonic()
    try:
        await asyncio.gather(*(send(connection) for connection in pool))
    finally:
        for connection in pool:
            connection.close()
        tally.seconds = time.monotonic() - started
        tally.connections_opened = sum(connection.opened for connection in pool)


async def steady_load(port: int, secret: str, prefix: str, *, rate: float, connections: int,
                      seconds: float) -> ClientTally:
    """`rate` webhooks per second, each due at start + i / rate, over `connections` keep-alive
    connections for `seconds`: a sender that falls behind catches up without bursting past
    its connections."""
    tally = ClientTally()
    total = int(rate * seconds)
    indices = itertools.count()
    started = time.monotonic()

    async def send(connection: KeepAliveConnection) -> None:
        for index in indices:
            if index >= total:
                return
            delay = started + index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await tally.post(connection, secret, f"{prefix}-{index:07d}", index)

    await _senders(port, connections, 30.0, tally, send)
    return tally


async def one_shot_load(port: int, secret: str, prefix: str, *, requests: int,
                        rate: float) -> ClientTally:
    """`requests` webhooks at `rate` per second, each on a connection of its own that the
    client closes after the answer without having said `Connection: close` (curl's way)."""
    tally = ClientTally()
    started = time.monotonic()
    for index in range(requests):
        delay = started + index / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        connection = KeepAliveConnection(port, 30.0)
        await tally.post(connection, secret, f"{prefix}-{index:07d}", index)
        tally.connections_opened += connection.opened
        connection.close()
    tally.seconds = time.monotonic() - started
    return tally


async def burst_load(port: int, secret: str, prefix: str, *, requests: int,
                     connections: int) -> ClientTally:
    """`requests` webhooks sent once each, as fast as `connections` concurrent connections
    allow; no retries: every answer is counted as it came."""
    tally = ClientTally()
    indices = itertools.count()

    async def send(connection: KeepAliveConnection) -> None:
        for index in indices:
            if index >= requests:
                return
            await tally.post(connection, secret, f"{prefix}-{index:07d}", index)

    await _senders(port, connections, 60.0, tally, send)
    return tally


class PanelPoller:
    """A logged-in admin's browser: GET / and /queue every `interval` seconds in a thread.
    Anything but a 200 (a redirect to the login page included) is counted as an error."""

    def __init__(self, base_url: str, interval: float = 1.0) -> None:
        self.base_url = base_url
        self.interval = interval
        self.statuses: Counter[str] = Counter()
        self.errors: list[str] = []
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="panel-poller", daemon=True)

    def start(self) -> PanelPoller:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=30.0) as http:
            try:
                self._log_in(http)
            except (httpx.HTTPError, AssertionError) as exc:
                self.errors.append(f"login: {exc!r}")
                return
            next_at = time.monotonic() + self.interval
            while not self._stop.wait(max(0.0, next_at - time.monotonic())):
                next_at = max(next_at + self.interval, time.monotonic())  # no catching up
                for path in ("/", "/queue"):
                    self._get(http, path)

    @staticmethod
    def _log_in(http: httpx.Client) -> None:
        form = http.get("/login")
        token = CSRF.search(form.text)
        assert form.status_code == 200 and token is not None, form.status_code
        response = http.post("/login", data={"csrf_token": token.group(1), "username": ADMIN,
                                             "password": ADMIN_PASSWORD, "next": "/"})
        assert response.status_code == 303, response.status_code

    def _get(self, http: httpx.Client, path: str) -> None:
        started = time.monotonic()
        try:
            response = http.get(path)
        except httpx.HTTPError as exc:
            self.statuses[f"{path} {type(exc).__name__}"] += 1
            self.errors.append(f"GET {path}: {exc!r}")
            return
        self.latencies.append(time.monotonic() - started)
        self.statuses[f"{path} {response.status_code}"] += 1
        if response.status_code != 200 or "Signed in as" not in response.text:
            self.errors.append(f"GET {path}: {response.status_code} "
                               f"{response.headers.get('location', '')}")

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())


# -- setting up ------------------------------------------------------------------------------


def token_pattern(prefix: str) -> re.Pattern[bytes]:
    return re.compile(re.escape(prefix.encode("ascii")) + rb"-\d{7}")


def _append_config(config: Path, text: str) -> None:
    with config.open("a", encoding="utf-8") as handle:
        handle.write(text)


def _configure(database: Path, **values: Any) -> None:
    engine = open_engine(database, durability="FULL", busy_timeout_ms=5000)
    try:
        configure(engine, **values)
    finally:
        engine.dispose()


def _smtp_settings(secret: str, port: int, rate_limit: int, **more: Any) -> dict[str, Any]:
    # Short backoff: a message deferred while the upstream was down is retried within
    # seconds of its return (connection refusals never open the circuit breaker).
    return {"webhook_secret": secret, "allowed_sender_domain": "example.com",
            "smtp_host": "127.0.0.1", "smtp_port": port, "smtp_security": "plain",
            "smtp_timeout": 5, "retry_base_seconds": 1, "retry_max_seconds": 5,
            "rate_limit_per_minute": rate_limit, **more}


WORKER_SECTION = "\n[worker]\nsessions = 4\nbatch_size = 64\n"


def receiver_suite(directory: Path, *, smtp_port: int, rate_limit: int,
                   **settings: Any) -> Suite:
    """A migrated, configured database in `directory` for a receiver and a worker (4 sessions,
    batches of 64) delivering to 127.0.0.1:`smtp_port`; nothing started yet."""
    secret = secrets.token_hex(16)
    port = free_port()
    config = write_config(directory, receiver_port=port, extra=WORKER_SECTION)
    database = directory / "mail-api.sqlite3"
    migrated_engine(database).dispose()
    _configure(database, **_smtp_settings(secret, smtp_port, rate_limit=rate_limit, **settings))
    return Suite(config, port, secret)


def start_worker(suite: Suite) -> Daemon:
    """mailapi-worker, once it says it is ready."""
    daemon = suite.start("worker")
    wait_until(lambda: daemon.process.poll() is not None or "worker ready" in daemon.output(),
               timeout=30, message="worker ready")
    assert daemon.process.poll() is None, daemon.output()
    return daemon


@contextmanager
def running(suite: Suite) -> Iterator[Suite]:
    """Kill (by PID) whatever the suite still runs when the block ends."""
    try:
        yield suite
    finally:
        suite.stop_all()


def stop_gracefully(daemons: dict[str, Daemon]) -> dict[str, int | None]:
    """SIGTERM each daemon (by its PID) and wait: the exit codes, None if it had to be killed."""
    codes: dict[str, int | None] = {}
    for name, daemon in daemons.items():
        try:
            codes[name] = daemon.stop(timeout=40)
        except Exception:  # noqa: BLE001 - killed after the timeout; reported as None
            codes[name] = None
    return codes


def integrity(database: Path) -> str:
    with closing(sqlite3.connect(database, timeout=10)) as connection:
        return ", ".join(str(row[0]) for row in connection.execute("PRAGMA integrity_check"))


def wait_for(predicate: Callable[[], bool], timeout: float) -> float | None:
    """Seconds until `predicate` held, or None if it did not within `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.1)
    return None


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _mb(value: float) -> str:
    return f"{value / MB:.1f} MB"


def _ms(value: float) -> str:
    return f"{value * 1000:.0f} ms"


def _deliveries(tally: ClientTally, counter: TokenCounter) -> tuple[
        list[str], list[str], list[str], list[float]]:
    """(missing, duplicated, unexpected tokens, accept-to-delivery delays)."""
    delivered, first_at, _ = counter.snapshot()
    missing = sorted(token for token in tally.accepted if delivered[token] == 0)
    duplicated = sorted(token for token, count in delivered.items() if count > 1)
    unexpected = sorted(token for token in delivered if token not in tally.accepted)
    delays = [max(0.0, first_at[token] - accepted_at)
              for token, accepted_at in tally.accepted.items() if token in first_at]
    return missing, duplicated, unexpected, delays


# -- sustained ---------------------------------------------------------------------------------


@dataclass
class SustainedReport:
    seconds: float
    rate: float
    connections: int
    tally: ClientTally
    panel: PanelPoller
    samples: list[Sample]  # during the load
    drain_samples: list[Sample]
    drain_seconds: float | None
    final_queue: dict[str, int]
    delivered: int
    without_token: int
    missing: list[str]
    duplicated: list[str]
    unexpected: list[str]
    delays: list[float]
    exit_codes: dict[str, int | None]
    died: list[str]  # daemons that had exited before the end of the run
    integrity: str
    sampler_errors: list[str]
    rss: dict[str, Trend] = field(default_factory=dict)
    fds: dict[str, Trend] = field(default_factory=dict)
    wal: Trend = field(default_factory=lambda: Trend.of([]))
    backlog: Trend = field(default_factory=lambda: Trend.of([]))

    def __post_init__(self) -> None:
        names = self.samples[0].rss if self.samples else {}
        self.rss = {name: Trend.of([float(v) for s in self.samples
                                    if (v := s.rss[name]) is not None]) for name in names}
        self.fds = {name: Trend.of([float(v) for s in self.samples
                                    if (v := s.fds[name]) is not None]) for name in names}
        everything = self.samples + self.drain_samples
        self.wal = trends(everything, lambda s: s.wal_bytes)
        self.backlog = trends(self.samples, lambda s: s.backlog)

    def text(self) -> str:
        tally = self.tally
        lines = [
            f"sustained load: {self.seconds:.0f} s at {self.rate:g}/s target over "
            f"{self.connections} connections, panel polled every "
            f"{self.panel.interval:g} s",
            f"  webhooks: sent {tally.sent} in {tally.seconds:.1f} s "
            f"({tally.sent / max(tally.seconds, 1e-9):.1f}/s), answers "
            f"{dict(sorted(tally.statuses.items()))}, transport errors "
            f"{dict(tally.transport_errors) or 0}",
            f"  latency: p50 {_ms(percentile(tally.latencies, 0.5))}, p99 "
            f"{_ms(percentile(tally.latencies, 0.99))}, max "
            f"{_ms(max(tally.latencies, default=0.0))}",
            f"  panel: {self.panel.requests} GETs {dict(sorted(self.panel.statuses.items()))}, "
            f"errors {len(self.panel.errors)}, p99 {_ms(percentile(self.panel.latencies, 0.99))}",
            f"  delivery: {len(tally.accepted)} accepted, {self.delivered} delivered, "
            f"missing {len(self.missing)}, duplicated {len(self.duplicated)}, unexpected "
            f"{len(self.unexpected)}; accept-to-delivery p50 "
            f"{_ms(percentile(self.delays, 0.5))}, p99 {_ms(percentile(self.delays, 0.99))}",
            f"  backlog during load: median {self.backlog.last:.0f} (last third), peak "
            f"{self.backlog.peak:.0f}; drained to zero "
            + (f"{self.drain_seconds:.1f} s after the load stopped"
               if self.drain_seconds is not None else "NOT within the deadline")
            + f"; final queue {self.final_queue or '{}'}",
            f"  WAL: peak {_mb(self.wal.peak)} (bound {_mb(WAL_BOUND_BYTES)}), database "
            f"{_mb(max((s.db_bytes for s in self.samples + self.drain_samples), default=0))}",
            f"  samples: {len(self.samples)} during load (+{len(self.drain_samples)} draining), "
            "flatness = median of the last third minus median of the middle third",
        ]
        for name, trend in self.rss.items():
            lines.append(
                f"  {name:<8} RSS first {_mb(trend.first)}, middle {_mb(trend.middle)}, last "
                f"{_mb(trend.last)}, peak {_mb(trend.peak)}, growth {_mb(trend.growth)} "
                f"(limit {_mb(rss_growth_limit(trend))})")
        for name, trend in self.fds.items():
            lines.append(
                f"  {name:<8} fds first {trend.first:.0f}, middle {trend.middle:.0f}, last "
                f"{trend.last:.0f}, peak {trend.peak:.0f}, growth {trend.growth:+.0f} "
                f"(limit +{FD_GROWTH})")
        lines.append(f"  exit codes after SIGTERM: {self.exit_codes}, died early: "
                     f"{self.died or 'none'}; integrity_check: {self.integrity}")
        if tally.odd_answers:
            lines.append(f"  non-2xx answers: {dict(tally.odd_answers)}, "
                         f"{tally.without_retry_after} without Retry-After")
        if self.panel.errors:
            lines.append(f"  first panel errors: {self.panel.errors[:5]}")
        if self.sampler_errors:
            lines.append(f"  sampler errors: {self.sampler_errors[:5]}")
        return "\n".join(lines)

    def sample_table(self) -> str:
        """Every sample, one line each, for the report file."""
        names = list(self.samples[0].rss) if self.samples else []
        header = ["t(s)", "phase", "backlog", "failed", "wal(MB)", "db(MB)"]
        header += [f"{name} rss(MB)" for name in names] + [f"{name} fds" for name in names]
        rows = ["\t".join(header)]
        for sample in self.samples + self.drain_samples:
            row = [f"{sample.at:.1f}", sample.phase, str(sample.backlog),
                   str(sample.queue.get("failed", 0)), f"{sample.wal_bytes / MB:.2f}",
                   f"{sample.db_bytes / MB:.2f}"]
            row += [f"{(sample.rss[n] or 0) / MB:.1f}" for n in names]
            row += [str(sample.fds[n]) for n in names]
            rows.append("\t".join(row))
        return "\n".join(rows)


def run_sustained(directory: Path, seconds: float, *, rate: float = 50.0,
                  connections: int = 4, panel_interval: float = 1.0,
                  sample_every: float | None = None,
                  drain_timeout: float = 40.0) -> SustainedReport:
    """Receiver, worker and panel on a fresh database in `directory`, an SMTP server, `rate`
    signed webhooks per second for `seconds` while an admin polls the panel; then the drain.
    """
    prefix = f"soak-{secrets.token_hex(4)}"
    secret = secrets.token_hex(16)
    upstream = Upstream(token_pattern(prefix))
    upstream.start()
    suite = panel_suite(directory)
    suite.secret = secret
    _append_config(suite.config, WORKER_SECTION)
    database = suite.config.parent / "mail-api.sqlite3"
    # The whole load comes from 127.0.0.1: lift the per-address limit well above the rate.
    _configure(database, **_smtp_settings(secret, upstream.port,
                                          rate_limit=int(rate * 60 * 10)))
    interval = sample_every or max(1.0, min(5.0, seconds / 60))
    try:
        with running(suite):
            daemons = {"receiver": suite.start_receiver(), "worker": start_worker(suite),
                       "panel": suite.start_panel()}
            sampler = Sampler(daemons, database, interval).start()
            poller = PanelPoller(suite.panel_url, panel_interval).start()
            sampler.phase = "load"
            try:
                tally = asyncio.run(steady_load(suite.receiver_port, secret, prefix,
                                                rate=rate, connections=connections,
                                                seconds=seconds))
                sampler.phase = "drain"

                def drained() -> bool:
                    delivered, _, _ = upstream.counter.snapshot()
                    return (all(delivered[token] for token in tally.accepted)
                            and not any(queue_counts(database).values()))

                drain_seconds = wait_for(drained, drain_timeout)
                time.sleep(min(2.0, interval))  # a late duplicate would show up here
            finally:
                poller.stop()
                sampler.stop()
            died = [name for name, daemon in daemons.items() if daemon.process.poll() is not None]
            exit_codes = stop_gracefully(daemons)
    finally:
        upstream.stop()
    missing, duplicated, unexpected, delays = _deliveries(tally, upstream.counter)
    delivered, _, without_token = upstream.counter.snapshot()
    return SustainedReport(
        seconds=seconds, rate=rate, connections=connections, tally=tally, panel=poller,
        samples=sampler.of_phase("load"), drain_samples=sampler.of_phase("drain"),
        drain_seconds=drain_seconds, final_queue=queue_counts(database),
        delivered=sum(delivered.values()), without_token=without_token, missing=missing,
        duplicated=duplicated, unexpected=unexpected, delays=delays, exit_codes=exit_codes,
        died=died, integrity=integrity(database), sampler_errors=sampler.errors)


# -- burst -------------------------------------------------------------------------------------


@dataclass
class BurstReport:
    requests: int
    connections: int
    rate_limit: int
    nofile: tuple[int, int]
    tally: ClientTally
    outage_samples: list[Sample]
    before: Sample | None  # the daemons started, before the first request
    after: Sample | None  # drained, before they were stopped
    backlog_at_recovery: int
    drain_seconds: float | None
    final_queue: dict[str, int]
    delivered: int
    without_token: int
    missing: list[str]
    duplicated: list[str]
    unexpected: list[str]
    exit_codes: dict[str, int | None]
    died: list[str]  # daemons that had exited before the end of the run
    integrity: str
    deferred_attempts: int

    def _rss(self, name: str) -> str:
        values = [(sample.rss[name] or 0) if sample else 0 for sample in (self.before, self.after)]
        return " -> ".join(_mb(value) for value in values)

    def _count(self, name: str) -> str:
        values = [(sample.fds[name] or 0) if sample else 0 for sample in (self.before, self.after)]
        return " -> ".join(str(value) for value in values)

    def fd_growth(self, name: str) -> int:
        """Descriptors held after the drain beyond those held before the burst."""
        if self.before is None or self.after is None:
            return 10**6
        return (self.after.fds[name] or 0) - (self.before.fds[name] or 0)

    @property
    def wal_peak(self) -> int:
        samples = [*self.outage_samples, *(s for s in (self.before, self.after) if s)]
        return max((sample.wal_bytes for sample in samples), default=0)

    @property
    def worker_rss_peak(self) -> int:
        return max((s.rss["worker"] or 0 for s in self.outage_samples), default=0)

    def text(self) -> str:
        tally = self.tally
        rss = {name: max((s.rss[name] or 0 for s in self.outage_samples), default=0)
               for name in ("receiver", "worker")}
        fds = {name: max((s.fds[name] or 0 for s in self.outage_samples), default=0)
               for name in ("receiver", "worker")}
        lines = [
            f"burst: {self.requests} webhooks over {self.connections} connections with the "
            f"SMTP server down; rate_limit_per_minute {self.rate_limit}; client RLIMIT_NOFILE "
            f"{self.nofile[0]}/{self.nofile[1]}",
            f"  answers in {tally.seconds:.1f} s: {dict(sorted(tally.statuses.items()))}, "
            f"transport errors {dict(tally.transport_errors) or 0}, {tally.connections_opened} "
            f"connections opened, peak in flight {tally.peak_in_flight}; latency p50 "
            f"{_ms(percentile(tally.latencies, 0.5))}, p99 "
            f"{_ms(percentile(tally.latencies, 0.99))}, max "
            f"{_ms(max(tally.latencies, default=0.0))}",
            f"  outage: {len(self.outage_samples)} samples, peak RSS receiver "
            f"{_mb(rss['receiver'])}, worker {_mb(rss['worker'])} (bound "
            f"{_mb(WORKER_RSS_BOUND_BYTES)}); peak fds receiver {fds['receiver']}, worker "
            f"{fds['worker']}; {self.deferred_attempts} deferred attempts recorded",
            f"  before / after: RSS receiver {self._rss('receiver')}, worker "
            f"{self._rss('worker')}; fds receiver {self._count('receiver')}, worker "
            f"{self._count('worker')}; peak WAL {_mb(self.wal_peak)}",
            f"  recovery: backlog {self.backlog_at_recovery} when the SMTP server came up, "
            + (f"drained in {self.drain_seconds:.1f} s"
               if self.drain_seconds is not None else "NOT drained within the deadline")
            + f"; final queue {self.final_queue or '{}'}",
            f"  delivery: {len(tally.accepted)} accepted, {self.delivered} delivered, missing "
            f"{len(self.missing)}, duplicated {len(self.duplicated)}, unexpected "
            f"{len(self.unexpected)}, without token {self.without_token}",
            f"  exit codes after SIGTERM: {self.exit_codes}, died early: {self.died or 'none'}; "
            f"integrity_check: {self.integrity}",
        ]
        if tally.odd_answers:
            lines.append(f"  non-2xx answers: {dict(tally.odd_answers)}, "
                         f"{tally.without_retry_after} without Retry-After")
        return "\n".join(lines)


def deferred_attempts(database: Path) -> int:
    with closing(sqlite3.connect(database, timeout=10)) as connection:
        row = connection.execute(
            "SELECT count(*) FROM delivery_events WHERE outcome = 'deferred'").fetchone()
    return int(row[0])


def run_burst(directory: Path, *, requests: int = 2000, connections: int = 200,
              rate_limit: int = 1200, outage_after: float = 5.0,
              drain_timeout: float = 40.0) -> BurstReport:
    """Receiver and worker on a fresh database, the SMTP port closed; `requests` webhooks over
    `connections` connections at once; `outage_after` seconds more of outage; then the SMTP
    server comes up on the port and the queue must drain."""
    prefix = f"burst-{secrets.token_hex(4)}"
    upstream = Upstream(token_pattern(prefix))  # holds the port: nothing listens yet
    # Every deferral spends an attempt: with retries every few seconds, the default 20 would
    # fail messages after about a minute of outage; the test's outage must not depend on it.
    suite = receiver_suite(directory, smtp_port=upstream.port, rate_limit=rate_limit,
                           retry_max_attempts=200)
    port, secret = suite.receiver_port, suite.secret
    database = directory / "mail-api.sqlite3"
    try:
        with running(suite):
            daemons = {"receiver": suite.start_receiver(), "worker": start_worker(suite)}
            sampler = Sampler(daemons, database, 0.5)
            before = sampler.take()
            sampler.start()
            sampler.phase = "outage"
            try:
                tally = asyncio.run(burst_load(port, secret, prefix, requests=requests,
                                               connections=connections))
                time.sleep(outage_after)
                sampler.phase = "recovery"
                recovery = sampler.take()
                upstream.start()

                def drained() -> bool:
                    delivered, _, _ = upstream.counter.snapshot()
                    return (all(delivered[token] for token in tally.accepted)
                            and not any(queue_counts(database).values()))

                drain_seconds = wait_for(drained, drain_timeout)
                time.sleep(1.0)  # a late duplicate would show up here
            finally:
                after = sampler.stop()
            died = [name for name, daemon in daemons.items() if daemon.process.poll() is not None]
            exit_codes = stop_gracefully(daemons)
    finally:
        upstream.stop()
    missing, duplicated, unexpected, _ = _deliveries(tally, upstream.counter)
    delivered, _, without_token = upstream.counter.snapshot()
    return BurstReport(
        requests=requests, connections=connections, rate_limit=rate_limit,
        nofile=resource.getrlimit(resource.RLIMIT_NOFILE), tally=tally,
        outage_samples=sampler.of_phase("outage"), before=before, after=after,
        backlog_at_recovery=recovery.backlog if recovery is not None else -1,
        drain_seconds=drain_seconds, final_queue=queue_counts(database),
        delivered=sum(delivered.values()), without_token=without_token, missing=missing,
        duplicated=duplicated, unexpected=unexpected, exit_codes=exit_codes,
        died=died, integrity=integrity(database), deferred_attempts=deferred_attempts(database))

