"""Retry timing: exponential backoff with jitter, and the circuit breaker's pause length."""

from __future__ import annotations

import random


def retry_delay(attempt: int, *, base_seconds: float, max_seconds: float,
                rng: random.Random) -> float:
    """Delay before retry number `attempt` (1 after the first failure).

    Doubles from `base_seconds` up to `max_seconds`, then takes a uniform draw from the upper
    half of that window ("equal jitter"): senders that failed together spread out, and no
    retry comes sooner than half the nominal delay.
    """
    exponent = min(max(attempt, 1) - 1, 32)
    nominal = min(max_seconds, base_seconds * (2 ** exponent))
    return float(nominal / 2 + rng.uniform(0, nominal / 2))


def pause_length(failures: int, *, base_seconds: float, max_seconds: float = 3600) -> float:
    """How long the queue stays paused after the n-th consecutive auth/TLS failure."""
    exponent = min(max(failures, 1) - 1, 16)
    return float(min(max_seconds, base_seconds * (2 ** exponent)))
