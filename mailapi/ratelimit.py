"""Per-key token buckets: a steady rate per minute with a burst of the same size."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable


class RateLimiter:
    """In-process and per key (a client address). Memory is bounded by `max_keys`: the least
    recently seen keys are forgotten first, which can only make the limiter more lenient."""

    def __init__(self, clock: Callable[[], float], *, max_keys: int = 100_000) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def check(self, key: str, per_minute: int) -> float:
        """Take a token: 0.0 if allowed, else the seconds to wait before the next one."""
        if per_minute <= 0:
            return 0.0
        now = self._clock()
        capacity = float(per_minute)
        rate = per_minute / 60.0
        tokens, updated = self._buckets.pop(key, (capacity, now))
        tokens = min(capacity, tokens + max(0.0, now - updated) * rate)
        if tokens >= 1.0:
            self._store(key, tokens - 1.0, now)
            return 0.0
        self._store(key, tokens, now)
        return (1.0 - tokens) / rate

    def _store(self, key: str, tokens: float, now: float) -> None:
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
