"""Benchmark 1: durable webhooks/s and latency of the real receiver next to the ceiling."""

from __future__ import annotations

import asyncio
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import profile
from bench.environment import Installation, create_installation, queue_counts
from bench.loadgen import WrkResult, requests_needed, run_wrk, write_requests
from bench.procs import (
    VENV_BIN,
    Process,
    children_cpu_seconds,
    free_port,
    system_cpu_seconds,
    wait_for_http,
)

SETTLE_SECONDS = 0.5  # in-flight commits of a finished wrk run land before rows are counted


@dataclass
class Side:
    name: str
    process: Process
    port: int
    rate_estimate: float
    runs: list[dict[str, Any]] = field(default_factory=list)

    def median(self, key: str) -> float:
        return float(statistics.median(run[key] for run in self.runs)) if self.runs else 0.0


async def _round(side: Side, installation: Installation, *, round_no: int, warmup: float,
                 seconds: float, connections: int) -> None:
    root = installation.root
    warm_file = root / f"{side.name}-{round_no}-warm.bin"
    timed_file = root / f"{side.name}-{round_no}-timed.bin"
    try:
        write_requests(warm_file, installation.secret, side.port,
                       requests_needed(side.rate_estimate, warmup), f"w{round_no}{side.name}")
        warm = await run_wrk(side.port, warm_file, connections=connections, seconds=warmup)
        side.rate_estimate = max(warm.rate, 50.0)
        write_requests(timed_file, installation.secret, side.port,
                       requests_needed(side.rate_estimate, seconds), f"t{round_no}{side.name}")
        await asyncio.sleep(SETTLE_SECONDS)
        engine = installation.engine(pool_size=1)
        try:
            rows_before = queue_counts(engine)[0]
            cpu_before = side.process.cpu_seconds()
            client_before = children_cpu_seconds()
            system_before = system_cpu_seconds()
            result: WrkResult = await run_wrk(side.port, timed_file, connections=connections,
                                              seconds=seconds)
            system = system_cpu_seconds() - system_before
            client = children_cpu_seconds() - client_before
            cpu = side.process.cpu_seconds() - cpu_before
            await asyncio.sleep(SETTLE_SECONDS)
            rows_after = queue_counts(engine)[0]
        finally:
            engine.dispose()
    finally:
        warm_file.unlink(missing_ok=True)
        timed_file.unlink(missing_ok=True)
    run = result.as_dict()
    run["round"] = round_no
    run["server_cpu_seconds"] = round(cpu, 3)
    run["server_cpu_ms_per_request"] = round(1000 * cpu / result.requests, 3) if (
        result.requests) else None
    run["server_cpu_cores"] = round(cpu / result.seconds, 2)
    run["wrk_cpu_cores"] = round(client / result.seconds, 2)
    # Everything else the machine did meanwhile (other users' tests, this process...):
    # well above zero means the figures are noisy.
    run["other_cpu_cores"] = round(max(0.0, system - cpu - client) / result.seconds, 2)
    if side.name == "receiver":
        # Rows committed during the run, in-flight ones at its end included; every 2xx that
        # wrk counted must be among them.
        run["durable_rows"] = rows_after - rows_before
        if run["durable_rows"] < result.requests:
            print(f"  WARNING: {result.requests} answers but only {run['durable_rows']} new rows",
                  flush=True)
    side.runs.append(run)
    print(f"  round {round_no} {side.name:8s}: {result.rate:8.1f} req/s  "
          f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  errors {result.errors}"
          f"  wraps {result.wraps}\n{'':22s}server CPU {run['server_cpu_ms_per_request']} ms/req"
          f" ({run['server_cpu_cores']} cores), wrk {run['wrk_cpu_cores']} cores, "
          f"others {run['other_cpu_cores']} cores",
          flush=True)


async def _profile(side: Side, installation: Installation, *, seconds: float,
                   connections: int, output: Path) -> dict[str, Any]:
    """One more loaded run of the receiver with py-spy sampling it; the summary."""
    requests_file = installation.root / "profile.bin"
    try:
        write_requests(requests_file, installation.secret, side.port,
                       requests_needed(side.rate_estimate, seconds + 2), "profile")
        sampler = asyncio.create_task(profile.record(side.process.pid, seconds, output))
        result = await run_wrk(side.port, requests_file, connections=connections,
                               seconds=seconds + 1)
        await sampler
    finally:
        requests_file.unlink(missing_ok=True)
    summary = profile.summarize(output)
    summary["raw_stacks"] = str(output)
    summary["load"] = result.as_dict()
    print(profile.format_summary(summary), flush=True)
    return summary


async def run_webhook_bench(parent: Path, *, rounds: int, warmup: float, seconds: float,
                            connections: int, profile_to: Path | None = None
                            ) -> dict[str, Any]:
    installation = create_installation(parent, "webhooks")
    ceiling_port = free_port()
    processes: list[Process] = []
    try:
        ceiling = Process("ceiling", [str(VENV_BIN / "python"), "-m", "bench.ceiling",
                                      "--port", str(ceiling_port)],
                          installation.root / "ceiling.log")
        processes.append(ceiling)
        receiver = installation.start_receiver()
        processes.append(receiver)
        await wait_for_http(ceiling, ceiling_port)
        await wait_for_http(receiver, installation.receiver_port)
        sides = [Side("receiver", receiver, installation.receiver_port, 500.0),
                 Side("ceiling", ceiling, ceiling_port, 3000.0)]
        for round_no in range(1, rounds + 1):
            order = sides if round_no % 2 else list(reversed(sides))
            for side in order:
                await _round(side, installation, round_no=round_no, warmup=warmup,
                             seconds=seconds, connections=connections)
        memory = {"receiver_vmhwm_kb": receiver.vm_hwm_kb(),
                  "ceiling_vmhwm_kb": ceiling.vm_hwm_kb()}
        profiled = None
        if profile_to is not None:
            print(f"  profiling the receiver with py-spy for {seconds:g} s", flush=True)
            profiled = await _profile(sides[0], installation, seconds=seconds,
                                      connections=connections, output=profile_to)
    finally:
        for process in processes:
            process.stop()
    receiver_side, ceiling_side = sides
    ratio = (receiver_side.median("rate") / ceiling_side.median("rate")
             if ceiling_side.median("rate") else 0.0)
    return {
        "connections": connections, "rounds": rounds, "warmup_seconds": warmup,
        "seconds": seconds,
        "receiver": {"median_rate": receiver_side.median("rate"),
                     "median_p50_ms": receiver_side.median("p50_ms"),
                     "median_p99_ms": receiver_side.median("p99_ms"),
                     "median_cpu_ms_per_request": receiver_side.median(
                         "server_cpu_ms_per_request"),
                     "runs": receiver_side.runs},
        "ceiling": {"median_rate": ceiling_side.median("rate"),
                    "median_p50_ms": ceiling_side.median("p50_ms"),
                    "median_p99_ms": ceiling_side.median("p99_ms"),
                    "median_cpu_ms_per_request": ceiling_side.median(
                        "server_cpu_ms_per_request"),
                    "runs": ceiling_side.runs},
        "ratio": ratio,
        "memory": memory,
        "receiver_profile": profiled,
    }
