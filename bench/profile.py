"""Where the receiver's time goes under load: py-spy samples, summarized per function.

py-spy (PyPI, a standalone binary: `pip install py-spy`) samples the running receiver
without stopping it. The raw collapsed stacks are summarized three ways: by thread, by the
innermost frame of our own code (mailapi/, receiver/) and by the library the leaf frame is in.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from bench.procs import VENV_BIN

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^():]+)(?::\d+)?\)$")
_OWN = ("mailapi/", "receiver/", "worker/")
_AREAS = (
    ("email/", "stdlib email (compose/parse)"), ("jinja2/", "jinja2"),
    ("email_validator/", "email_validator"), ("idna/", "email_validator"),
    ("sqlalchemy/", "SQLAlchemy"), ("structlog/", "structlog"), ("logging/", "structlog"),
    ("starlette/", "starlette"), ("hypercorn/", "hypercorn + h11"),
    ("h11/", "hypercorn + h11"), ("asyncio/", "asyncio event loop"),
    ("concurrent/", "asyncio event loop"), ("threading", "threads"), ("json/", "json"),
    ("hmac", "hmac"), ("mailapi/", "mailapi (own code)"), ("receiver/", "mailapi (own code)"),
)


def pyspy_path() -> str | None:
    found = shutil.which("py-spy")
    if found:
        return found
    candidate = VENV_BIN / "py-spy"
    return str(candidate) if candidate.exists() else None


async def record(pid: int, seconds: float, output: Path, rate: int = 250) -> None:
    """Sample `pid` for `seconds` (bounded: killed if it overruns) into raw collapsed stacks."""
    binary = pyspy_path()
    if binary is None:
        raise RuntimeError("py-spy not found: pip install py-spy (or put it on PATH)")
    process = await asyncio.create_subprocess_exec(
        binary, "record", "--pid", str(pid), "--duration", f"{max(1, round(seconds))}",
        "--rate", str(rate), "--format", "raw", "--output", str(output), "--nonblocking",
        "--threads", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        await asyncio.wait_for(process.wait(), seconds + 20)
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


def _frames(stack: str) -> tuple[str, list[tuple[str, str]]]:
    thread, _, rest = stack.partition(";")
    frames: list[tuple[str, str]] = []
    for frame in rest.split(";"):
        match = _FRAME.match(frame)
        if match:
            frames.append((match["function"], match["file"]))
    name = thread.split(":", 1)[1].strip() if ":" in thread else thread
    return name, frames


def _area(path: str) -> str:
    for needle, area in _AREAS:
        if needle in path:
            return area
    return "other"


def summarize(raw: Path, top: int = 15) -> dict[str, Any]:
    threads: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    own: Counter[str] = Counter()
    own_inclusive: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit() or not stack:
            continue
        count = int(count_text)
        thread, frames = _frames(stack)
        if not frames:
            continue
        total += count
        threads["main (event loop)" if thread == "MainThread" else "to_thread (commit)"] += count
        function, path = frames[-1]
        leaf[f"{function} ({path})"] += count
        areas[_area(path)] += count
        mine = [f"{f} ({p})" for f, p in frames if p.startswith(_OWN)]
        if mine:
            own[mine[-1]] += count
        for name in set(mine):
            own_inclusive[name] += count

    def share(counter: Counter[str]) -> list[list[Any]]:
        return [[name, round(100 * count / total, 1)] for name, count in
                counter.most_common(top)] if total else []

    return {"samples": total, "threads_pct": share(threads), "areas_pct": share(areas),
            "innermost_own_function_pct": share(own),
            "own_function_inclusive_pct": share(own_inclusive), "leaf_function_pct": share(leaf)}


def format_summary(summary: dict[str, Any], top: int = 12) -> str:
    lines = [f"py-spy samples: {summary['samples']} (idle time excluded)"]
    for key, title in (("threads_pct", "by thread"),
                       ("areas_pct", "by library of the leaf frame"),
                       ("own_function_inclusive_pct", "our functions, inclusive"),
                       ("innermost_own_function_pct", "innermost own frame (self + libs)"),
                       ("leaf_function_pct", "leaf functions (self time)")):
        lines.append(f"  {title}:")
        lines += [f"    {pct:5.1f}%  {name}" for name, pct in summary[key][:top]]
    return "\n".join(lines)
