"""Signed webhook requests built before timing, and wrk replaying them over keep-alive."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.procs import HOST
from mailapi.signatures import sign

WEBHOOK_PATH = "/webhook/outbound-email"
LUA_SCRIPT = Path(__file__).with_name("wrk_replay.lua")


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def webhook_body(token: str, index: int, expires_at: str) -> bytes:
    """What the auth service sends: a verification e-mail with a unique token and link."""
    return json.dumps({
        "type": "email_verification",
        "to": f"user{index}@example.org",
        "subject": f"Verify your email {token}",
        "token": token,
        "expiresAt": expires_at,
        "link": f"https://app.example.org/verify-email?token={token}",
    }, separators=(",", ":")).encode()


def signed_request(secret: str, port: int, token: str, index: int,
                   now: datetime | None = None) -> bytes:
    """One complete raw HTTP/1.1 keep-alive POST, signed as the auth service signs it."""
    moment = now or datetime.now(UTC)
    body = webhook_body(token, index, _iso(moment + timedelta(hours=1)))
    timestamp = _iso(moment)
    head = (
        f"POST {WEBHOOK_PATH} HTTP/1.1\r\n"
        f"Host: {HOST}:{port}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"X-TransLife-Timestamp: {timestamp}\r\n"
        f"X-TransLife-Signature: {sign(secret, timestamp, body)}\r\n"
        "\r\n"
    )
    return head.encode("ascii") + body


def write_requests(path: Path, secret: str, port: int, count: int, tag: str) -> int:
    """`count` requests with unique tokens, NUL-separated, for wrk_replay.lua. Returns bytes."""
    now = datetime.now(UTC)
    run = uuid.uuid4().hex[:8]
    with path.open("wb") as out:
        for index in range(count):
            out.write(signed_request(secret, port, f"{tag}-{run}-{index}", index, now))
            out.write(b"\0")
    return path.stat().st_size


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    wraps: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "seconds": round(self.seconds, 3),
                "rate": round(self.rate, 1), "errors": self.errors,
                "p50_ms": self.p50_ms, "p90_ms": self.p90_ms, "p99_ms": self.p99_ms,
                "max_ms": self.max_ms, "wraps": self.wraps}


def wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise RuntimeError("wrk is not installed: scripts/ensure-apt.sh wrk (Debian package)")
    return path


async def run_wrk(port: int, requests_file: Path, *, connections: int, seconds: float,
                  threads: int = 1) -> WrkResult:
    """wrk for `seconds` with `connections` keep-alive connections; killed if it overruns."""
    process = await asyncio.create_subprocess_exec(
        wrk_path(), f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s",
        "-s", str(LUA_SCRIPT), f"http://{HOST}:{port}{WEBHOOK_PATH}", "--",
        str(requests_file),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), seconds + 30)
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
    lines = [line for line in stdout.decode().splitlines() if line.startswith('{"requests"')]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({process.returncode}): {stdout.decode()}"
                           f"{stderr.decode()}")
    data = json.loads(lines[-1])
    errors = sum(int(data[key]) for key in data if key.startswith("errors_"))
    return WrkResult(
        requests=int(data["requests"]), seconds=data["duration_us"] / 1e6, errors=errors,
        p50_ms=data["latency_p50_us"] / 1000, p90_ms=data["latency_p90_us"] / 1000,
        p99_ms=data["latency_p99_us"] / 1000, max_ms=data["latency_max_us"] / 1000,
        wraps=int(data["wraps"]),
    )


def requests_needed(rate_estimate: float, seconds: float) -> int:
    """Enough unique requests for `seconds` at 1.6x the estimated rate, within bounds."""
    return max(5_000, min(400_000, int(rate_estimate * seconds * 1.6) + 2_000))

