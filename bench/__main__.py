"""`python -m bench`: every benchmark side by side with its baseline, in one run."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.delivery_bench import run_delivery_bench
from bench.environment import machine_info
from bench.latency_bench import run_latency_bench
from bench.procs import load_average
from bench.profile import pyspy_path
from bench.report import RESULTS_DIR, format_table, rows_from, write_results
from bench.webhook_bench import run_webhook_bench

PHASES = ("webhooks", "delivery", "latency")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", choices=PHASES, action="append",
                        help="run only this benchmark (repeatable)")
    parser.add_argument("--rounds", type=int, default=3, help="webhook rounds per side")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed run per side")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up before each run")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--messages", type=int, default=10_000, help="rows for delivery")
    parser.add_argument("--sessions", type=int, default=4, help="worker [worker] sessions")
    parser.add_argument("--latency-count", type=int, default=200)
    parser.add_argument("--output", type=Path, default=None, help="default: results/latest.json")
    parser.add_argument("--profile", action="store_true",
                        help="after the webhook rounds, sample the receiver with py-spy under "
                        "the same load (needs py-spy: pip install py-spy)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, dbs)")
    return parser


def _megabytes(kilobytes: int | None) -> float | None:
    return round(kilobytes / 1024, 1) if kilobytes is not None else None


def _memory(results: dict[str, Any]) -> dict[str, Any]:
    """Peak VmHWM of each process over every load it ran under, with a baseline process."""
    receiver: list[int] = []
    worker: list[int] = []
    memory: dict[str, Any] = {}
    if "webhooks" in results:
        webhook_memory = results["webhooks"]["memory"]
        receiver.append(webhook_memory["receiver_vmhwm_kb"] or 0)
        memory["receiver_baseline_mb"] = _megabytes(webhook_memory["ceiling_vmhwm_kb"])
        memory["receiver_baseline_name"] = "trivial endpoint"
    if "delivery" in results:
        worker.append(results["delivery"]["worker"]["worker_vmhwm_kb"] or 0)
        memory["worker_baseline_mb"] = _megabytes(results["delivery"]["baseline"]["peak_rss_kb"])
        memory["worker_baseline_name"] = "bare aiosmtplib loop"
    if "latency" in results:
        latency_memory = results["latency"]["memory"]
        receiver.append(latency_memory["receiver_vmhwm_kb"] or 0)
        worker.append(latency_memory["worker_vmhwm_kb"] or 0)
        memory.setdefault("receiver_baseline_name", "none")
        memory.setdefault("worker_baseline_name", "none")
    if receiver:
        memory["receiver_peak_mb"] = _megabytes(max(receiver))
    if worker:
        memory["worker_peak_mb"] = _megabytes(max(worker))
    return memory


async def _run(arguments: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    phases = arguments.only or list(PHASES)
    results: dict[str, Any] = {"machine": machine_info(), "phases": phases}
    results["machine"]["loadavg_at_start"] = load_average()
    if "webhooks" in phases:
        print(f"[1/3] webhooks: real receiver vs trivial endpoint, {arguments.connections} "
              f"connections, {arguments.rounds} x ({arguments.warmup:g} s warm-up + "
              f"{arguments.seconds:g} s) per side", flush=True)
        results["webhooks"] = await run_webhook_bench(
            workdir, rounds=arguments.rounds, warmup=arguments.warmup,
            seconds=arguments.seconds, connections=arguments.connections,
            profile_to=RESULTS_DIR / "receiver-pyspy.txt" if arguments.profile else None)
    if "delivery" in phases:
        print(f"[2/3] delivery: real worker vs bare aiosmtplib, {arguments.messages} messages "
              "into smtp-sink", flush=True)
        results["delivery"] = await run_delivery_bench(
            workdir, messages=arguments.messages, sessions=arguments.sessions)
    if "latency" in phases:
        print(f"[3/3] idle latency: {arguments.latency_count} single webhooks -> aiosmtpd",
              flush=True)
        results["latency"] = await run_latency_bench(workdir, count=arguments.latency_count)
    results["memory"] = _memory(results)
    results["machine"]["loadavg_at_end"] = load_average()
    return results


def _noise_note(results: dict[str, Any]) -> str | None:
    """A warning when other processes competed for the CPU during the webhook runs."""
    webhooks = results.get("webhooks")
    if not webhooks:
        return None
    others = [run["other_cpu_cores"] for side in ("receiver", "ceiling")
              for run in webhooks[side]["runs"]]
    worst = max(others, default=0.0)
    if worst < 0.2:
        return None
    return (f"NOTE: other processes used up to {worst:.2f} of the {os.cpu_count()} cores during "
            "the webhook runs (load average at start "
            f"{results['machine']['loadavg_at_start'][0]:.2f}): the figures are noisy.")


def main() -> None:
    parser = _parser()
    arguments = parser.parse_args()
    if arguments.profile and pyspy_path() is None:
        parser.error("--profile needs py-spy on PATH or in the venv: pip install py-spy")
    workdir = Path(tempfile.mkdtemp(prefix="mailapi-bench-"))
    started = time.monotonic()
    try:
        results = asyncio.run(_run(arguments, workdir))
    finally:
        if arguments.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    results["elapsed_seconds"] = round(time.monotonic() - started, 1)
    rows = rows_from(results)
    path = write_results(results, rows, arguments.output)
    machine = results["machine"]
    print()
    print(f"MAIL_API benchmarks - {machine['date']} - {machine['cpu_count']} x "
          f"{machine['cpu_model']} - Python {machine['python']} - "
          f"{results['elapsed_seconds']:g} s")
    print(format_table(rows))
    note = _noise_note(results)
    if note:
        print(note)
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
