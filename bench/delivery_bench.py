"""Benchmark 2: messages/s delivered by the real worker from a full queue into smtp-sink,
next to a bare aiosmtplib loop sending the same messages into the same sink."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from bench.environment import create_installation
from bench.procs import (
    HOST,
    VENV_BIN,
    Process,
    free_port,
    system_cpu_seconds,
    wait_for_port,
)
from bench.queue_fill import composed_messages, fill_queue
from mailapi.db import read_transaction
from mailapi.queue import counts_by_state

SMTP_SINK = "/usr/sbin/smtp-sink"
POLL_SECONDS = 0.025
_COUNTER = re.compile(rb"mesg=(\d+)")


def start_sink(root: Path, port: int) -> Process:
    """Postfix's smtp-sink: accepts everything, prints running counters (-c)."""
    if not Path(SMTP_SINK).exists():
        raise RuntimeError(f"{SMTP_SINK} missing: scripts/ensure-apt.sh postfix")
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    return Process("smtp-sink", [SMTP_SINK, "-c", *user, f"{HOST}:{port}", "1000"],
                   root / "smtp-sink.log")


def sink_count(sink: Process) -> int:
    """Messages the sink has received so far (the last mesg= counter it printed)."""
    try:
        data = sink.log_path.read_bytes()
    except OSError:
        return 0
    found = _COUNTER.findall(data[-200:])
    return int(found[-1]) if found else 0


async def _wait_for_sink(sink: Process, expected: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / POLL_SECONDS) + 2):
        count = sink_count(sink)
        if count >= expected or time.monotonic() > deadline:
            return count
        await asyncio.sleep(POLL_SECONDS)
    return sink_count(sink)


async def _baseline(database: Path, root: Path, port: int, sessions: int,
                    count: int) -> dict[str, Any]:
    baseline = Process("smtp-baseline", [
        str(VENV_BIN / "python"), "-m", "bench.smtp_baseline", "--database", str(database),
        "--port", str(port), "--sessions", str(sessions), "--limit", str(count)],
        root / "smtp-baseline.log")
    try:
        code = await baseline.wait_exit(180.0)
    finally:
        baseline.stop()
    lines = [line for line in baseline.tail(5).splitlines() if line.startswith("{")]
    if code != 0 or not lines:
        raise RuntimeError(f"smtp baseline failed ({code}):\n{baseline.tail()}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


async def _drain(installation_engine: Any, worker: Process, total: int,
                 timeout: float) -> dict[str, Any]:
    """Poll the queue until it is empty; times from spawn, from the first claim, to empty."""
    spawned = time.perf_counter()
    first_claim: float | None = None
    cpu_at_claim = system_at_claim = 0.0
    counts: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / POLL_SECONDS) + 2):
        if not worker.alive():
            raise RuntimeError(f"worker exited:\n{worker.tail()}")
        with read_transaction(installation_engine) as connection:
            counts = counts_by_state(connection)
        now = time.perf_counter()
        if first_claim is None and counts["queued"] < total:
            first_claim = now
            cpu_at_claim, system_at_claim = worker.cpu_seconds(), system_cpu_seconds()
        if counts["queued"] + counts["leased"] == 0 or time.monotonic() > deadline:
            break
        await asyncio.sleep(POLL_SECONDS)
    finished = time.perf_counter()
    worker_cpu = worker.cpu_seconds() - cpu_at_claim
    system = system_cpu_seconds() - system_at_claim
    start = first_claim if first_claim is not None else spawned
    delivered = total - sum(counts.values())
    seconds = finished - start
    return {"delivered_rows": delivered, "left": counts, "seconds_from_first_claim": seconds,
            "seconds_from_spawn": finished - spawned,
            "rate": delivered / seconds if seconds > 0 else 0.0,
            "rate_from_spawn": delivered / (finished - spawned),
            "worker_cpu_cores": round(worker_cpu / seconds, 2) if seconds > 0 else None,
            "worker_cpu_ms_per_message": round(1000 * worker_cpu / delivered, 3)
            if delivered else None,
            # the sink, this process's polling and anything else running meanwhile
            "other_cpu_cores": round(max(0.0, system - worker_cpu) / seconds, 2)
            if seconds > 0 else None}


async def run_delivery_bench(parent: Path, *, messages: int, sessions: int) -> dict[str, Any]:
    installation = create_installation(parent, "delivery", sessions=sessions)
    sink_port = free_port()
    installation.configure(smtp_host=HOST, smtp_port=sink_port, smtp_security="plain")
    engine = installation.engine(pool_size=1)
    processes: list[Process] = []
    try:
        sink = start_sink(installation.root, sink_port)
        processes.append(sink)
        await wait_for_port(sink, sink_port)
        started = time.perf_counter()
        batch = composed_messages(messages, "delivery")
        composed_seconds = time.perf_counter() - started
        fill_seconds = fill_queue(engine, batch)
        del batch
        print(f"  queue filled: {messages} rows in {fill_seconds:.2f} s "
              f"(+{composed_seconds:.2f} s to compose)", flush=True)

        before = sink_count(sink)
        baseline = await _baseline(installation.database, installation.root, sink_port,
                                   sessions, messages)
        baseline["sink_received"] = await _wait_for_sink(sink, before + messages, 5.0) - before
        print(f"  bare aiosmtplib: {baseline['rate']:8.1f} msg/s "
              f"({baseline['messages']} in {baseline['seconds']:.2f} s)", flush=True)

        before = sink_count(sink)
        worker = installation.start_worker()
        processes.append(worker)
        drained = await _drain(engine, worker, messages, timeout=180.0)
        drained["sink_received"] = await _wait_for_sink(sink, before + messages, 5.0) - before
        drained["worker_vmhwm_kb"] = worker.vm_hwm_kb()
        print(f"  worker:          {drained['rate']:8.1f} msg/s "
              f"({drained['delivered_rows']} in {drained['seconds_from_first_claim']:.2f} s "
              f"from the first claim, {drained['seconds_from_spawn']:.2f} s from spawn; "
              f"worker CPU {drained['worker_cpu_ms_per_message']} ms/msg, "
              f"{drained['worker_cpu_cores']} cores; others {drained['other_cpu_cores']} cores)",
              flush=True)
    finally:
        for process in reversed(processes):
            process.stop()
        engine.dispose()
    return {"messages": messages, "sessions": sessions,
            "fill": {"seconds": fill_seconds, "rows_per_second": messages / fill_seconds},
            "worker": drained, "baseline": baseline,
            "ratio": drained["rate"] / baseline["rate"] if baseline["rate"] else 0.0}
