"""Benchmark 3: idle end-to-end latency, webhook accepted -> DATA ended at the upstream.

Receiver and worker run on an empty queue; single signed webhooks go out one at a time,
spaced by a random 20-50 ms; an aiosmtpd recorder stamps time.time() when each DATA ends.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from pathlib import Path
from typing import Any

from bench.environment import create_installation
from bench.httpclient import KeepAliveConnection
from bench.loadgen import signed_request
from bench.procs import HOST, VENV_BIN, Process, free_port, wait_for_http, wait_for_port
from bench.stats import summary

WARMUP_MESSAGES = 5


def _recorded(recorder: Process) -> dict[str, float]:
    stamps: dict[str, float] = {}
    try:
        text = recorder.log_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return stamps
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].startswith("lat-"):
            stamps.setdefault(parts[0], float(parts[1]))
    return stamps


async def _wait_recorded(recorder: Process, tokens: set[str], timeout: float) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    stamps = _recorded(recorder)
    for _ in range(int(timeout / 0.05) + 2):
        if tokens <= set(stamps) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
        stamps = _recorded(recorder)
    return stamps


async def _wait_for_log(process: Process, needle: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.05) + 2):
        if needle in process.tail(50):
            return
        if not process.alive() or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{process.name} never logged {needle!r}:\n{process.tail()}")


async def _send_all(connection: KeepAliveConnection, requests: list[tuple[str, bytes]],
                    rng: random.Random, spacing: tuple[float, float]
                    ) -> dict[str, tuple[float, float]]:
    """token -> (sent at, response received at), time.time() clock; only 202 answers."""
    sent: dict[str, tuple[float, float]] = {}
    for token, raw in requests:
        started = time.time()
        status, body = await connection.request(raw)
        answered = time.time()
        if status != 202:
            raise RuntimeError(f"webhook answered {status}: {body[:200]!r}")
        sent[token] = (started, answered)
        await asyncio.sleep(rng.uniform(*spacing))
    return sent


async def run_latency_bench(parent: Path, *, count: int,
                            spacing: tuple[float, float] = (0.02, 0.05)) -> dict[str, Any]:
    installation = create_installation(parent, "latency")
    smtp_port = free_port()
    installation.configure(smtp_host=HOST, smtp_port=smtp_port, smtp_security="plain")
    processes: list[Process] = []
    connection: KeepAliveConnection | None = None
    run = uuid.uuid4().hex[:8]
    rng = random.Random(2555)
    ceiling_sent: dict[str, tuple[float, float]] = {}
    try:
        recorder = Process("smtp-recorder", [str(VENV_BIN / "python"), "-m",
                                             "bench.smtp_recorder", "--port", str(smtp_port)],
                           installation.root / "smtp-recorder.log")
        processes.append(recorder)
        receiver = installation.start_receiver()
        processes.append(receiver)
        worker = installation.start_worker()
        processes.append(worker)
        ceiling_port = free_port()
        ceiling = Process("ceiling", [str(VENV_BIN / "python"), "-m", "bench.ceiling",
                                      "--port", str(ceiling_port)],
                          installation.root / "ceiling.log")
        processes.append(ceiling)
        await wait_for_port(recorder, smtp_port)
        await wait_for_http(ceiling, ceiling_port)
        await wait_for_http(receiver, installation.receiver_port)
        await _wait_for_log(worker, "worker ready", 20.0)
        # Baseline: the same requests, one at a time, to the trivial endpoint (HTTP only).
        connection = await KeepAliveConnection.open(HOST, ceiling_port)
        ceiling_sent = await _send_all(connection, [
            (f"lat-{run}-{80_000 + index}",
             signed_request(installation.secret, ceiling_port, f"lat-{run}-{80_000 + index}",
                            index)) for index in range(count)], random.Random(2555), spacing)
        await connection.close()
        connection = await KeepAliveConnection.open(HOST, installation.receiver_port)

        # Warm-up: the SMTP session opens, caches fill; not counted.
        warm_requests = [
            (f"lat-{run}-{90_000 + index}",
             signed_request(installation.secret, installation.receiver_port,
                            f"lat-{run}-{90_000 + index}", index))
            for index in range(WARMUP_MESSAGES)]
        await _send_all(connection, warm_requests, rng, (0.1, 0.1))
        await _wait_recorded(recorder, {token for token, _ in warm_requests}, 10.0)

        requests = [(f"lat-{run}-{index}",
                     signed_request(installation.secret, installation.receiver_port,
                                    f"lat-{run}-{index}", index)) for index in range(count)]
        sent = await _send_all(connection, requests, rng, spacing)
        stamps = await _wait_recorded(recorder, set(sent), 10.0)
        memory = {"receiver_vmhwm_kb": receiver.vm_hwm_kb(),
                  "worker_vmhwm_kb": worker.vm_hwm_kb()}
    finally:
        if connection is not None:
            await connection.close()
        for process in reversed(processes):
            process.stop()
    from_sent = [1000 * (stamps[token] - times[0]) for token, times in sent.items()
                 if token in stamps]
    from_response = [1000 * (stamps[token] - times[1]) for token, times in sent.items()
                     if token in stamps]
    http = [1000 * (times[1] - times[0]) for times in sent.values()]
    ceiling_http = [1000 * (times[1] - times[0]) for times in ceiling_sent.values()]
    return {"count": count, "spacing_ms": [1000 * spacing[0], 1000 * spacing[1]],
            "delivered": len(from_sent), "missing": count - len(from_sent),
            "from_request_sent_ms": summary(from_sent),
            "from_response_received_ms": summary(from_response),
            "http_response_ms": summary(http),
            "ceiling_http_response_ms": summary(ceiling_http), "memory": memory}
