"""Test-only fault injection: a process kills itself with SIGKILL at one named point.

Enabled only by the bootstrap config's `[testing] crash_at` (documented as test-only in
etc/mail-api.toml.example); without it every `reached()` call is a no-op. The reliability
suite uses it to stop a real process at an exact moment (between a commit and its answer,
between the upstream's 250 and the DELETE) that a `kill -9` from outside can only hit by
chance.
"""

from __future__ import annotations

import os
import signal

# Every point a process calls; the config refuses any other name.
POINTS = (
    "receiver.before_commit",  # rows inserted, COMMIT not yet issued
    "receiver.after_commit",  # committed and durable, no answer sent yet
    "worker.after_claim",  # rows leased, nothing sent
    "worker.after_accept",  # the upstream answered 250, the outcome not yet recorded
)


class FaultInjector:
    """Dies at the `after`-th time `point` is reached."""

    def __init__(self, point: str, after: int = 1) -> None:
        if point not in POINTS:
            raise ValueError(f"unknown fault point {point!r}; known: {', '.join(POINTS)}")
        self.point = point
        self.remaining = max(1, after)

    def reached(self, point: str) -> None:
        if point != self.point:
            return
        self.remaining -= 1
        if self.remaining == 0:
            os.kill(os.getpid(), signal.SIGKILL)


def reached(injector: FaultInjector | None, point: str) -> None:
    """Call at a fault point; a no-op unless the test-only setting armed this point."""
    if injector is not None:
        injector.reached(point)
