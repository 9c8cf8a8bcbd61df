"""Subprocesses the benchmarks start: spawn, wait until ready, read memory, stop by PID."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


class Process:
    """One child process with its output in a log file; stop() is idempotent."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.popen = subprocess.Popen(
            self.argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
        self.pid = self.popen.pid
        self.peak_rss_kb: int | None = None

    def alive(self) -> bool:
        return self.popen.poll() is None

    def vm_hwm_kb(self) -> int | None:
        """Peak resident set size (VmHWM) so far, from /proc/PID/status."""
        if not self.alive():
            return self.peak_rss_kb
        try:
            text = Path(f"/proc/{self.pid}/status").read_text(encoding="ascii")
        except OSError:
            return self.peak_rss_kb
        for line in text.splitlines():
            if line.startswith("VmHWM:"):
                value = int(line.split()[1])
                self.peak_rss_kb = max(value, self.peak_rss_kb or 0)
        return self.peak_rss_kb

    def cpu_seconds(self) -> float:
        """User + system CPU time of all its threads so far, from /proc/PID/stat."""
        try:
            text = Path(f"/proc/{self.pid}/stat").read_text(encoding="ascii")
        except OSError:
            return 0.0
        fields = text.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def wait_exit(self, timeout: float) -> int:
        """Wait (polling, bounded) for the process to exit by itself; stop it past timeout."""
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / 0.05) + 2):
            if not self.alive() or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        if self.alive():
            self.stop()
            raise RuntimeError(f"{self.name} did not finish within {timeout} s:\n{self.tail()}")
        return int(self.popen.returncode)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait, then SIGKILL this PID; records VmHWM first. Returns the exit code."""
        try:
            if self.alive():
                self.vm_hwm_kb()
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGTERM)
                try:
                    self.popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.pid, signal.SIGKILL)
                    self.popen.wait(5)
            return self.popen.returncode
        finally:
            self._log.close()

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


async def wait_for_port(process: Process, port: int, timeout: float = 20.0) -> None:
    """Until something accepts on HOST:port; fails early if the process died."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.02) + 1):
        if not process.alive():
            raise RuntimeError(f"{process.name} exited with {process.popen.returncode}:\n"
                               f"{process.tail()}")
        try:
            _, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return
    raise RuntimeError(f"{process.name} did not listen on port {port} within {timeout} s:\n"
                       f"{process.tail()}")


async def wait_for_http(process: Process, port: int, path: str = "/healthz",
                        timeout: float = 20.0) -> None:
    """Until GET path answers 200 (the server is really serving, not only bound)."""
    await wait_for_port(process, port, timeout)
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.05) + 1):
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            reader, writer = await asyncio.open_connection(HOST, port)
            try:
                writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
                             .encode())
                line = await asyncio.wait_for(reader.readline(), 2.0)
            finally:
                writer.close()
            if line.startswith(b"HTTP/1.1 200"):
                return
        if time.monotonic() > deadline or not process.alive():
            break
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{process.name} did not answer GET {path} with 200:\n{process.tail()}")


def system_cpu_seconds() -> float:
    """Core-seconds the whole machine has spent busy since boot (all processes)."""
    fields = Path("/proc/stat").read_text(encoding="ascii").splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """User + system CPU of this process's finished (reaped) children, e.g. wrk."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def load_average() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text(encoding="ascii").split()[:3]]


def run_checked(argv: Sequence[str], timeout: float = 60.0) -> str:
    """Run a short command to completion; its output, or an error with that output."""
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                            check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {result.returncode}:\n"
                           f"{result.stdout}{result.stderr}")
    return result.stdout
