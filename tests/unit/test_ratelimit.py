"""mailapi.ratelimit: per-key token buckets under a fake clock."""

import pytest

from mailapi.ratelimit import RateLimiter, retry_after_header


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_burst_then_refused() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock)
    assert [limiter.check("a", 5) for _ in range(5)] == [0.0] * 5
    wait = limiter.check("a", 5)
    assert wait > 0
    assert wait == pytest.approx(12.0)  # one token per 60/5 seconds


def test_refused_again_without_time_passing() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock)
    for _ in range(3):
        limiter.check("a", 3)
    assert limiter.check("a", 3) == pytest.approx(20.0)
    assert limiter.check("a", 3) == pytest.approx(20.0)


def test_refills_over_time() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock)
    for _ in range(6):
        limiter.check("a", 6)
    clock.advance(5)  # half a token
    assert limiter.check("a", 6) == pytest.approx(5.0)
    clock.advance(5)
    assert limiter.check("a", 6) == 0.0
    assert limiter.check("a", 6) > 0


def test_refill_capped_at_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock)
    limiter.check("a", 2)
    clock.advance(3600)
    assert [limiter.check("a", 2) for _ in range(2)] == [0.0, 0.0]
    assert limiter.check("a", 2) == pytest.approx(30.0)


def test_clock_going_backwards_gives_no_tokens() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock)
    limiter.check("a", 1)
    clock.advance(-100)
    assert limiter.check("a", 1) > 0


@pytest.mark.parametrize("per_minute", [0, -1])
def test_zero_disables(per_minute: int) -> None:
    limiter = RateLimiter(FakeClock())
    assert all(limiter.check("a", per_minute) == 0.0 for _ in range(10_000))


def test_keys_independent() -> None:
    limiter = RateLimiter(FakeClock())
    assert limiter.check("a", 1) == 0.0
    assert limiter.check("a", 1) > 0
    assert limiter.check("b", 1) == 0.0
    assert limiter.check("b", 1) > 0


def test_max_keys_forgets_least_recent() -> None:
    limiter = RateLimiter(FakeClock(), max_keys=2)
    limiter.check("a", 1)
    limiter.check("b", 1)
    assert limiter.check("a", 1) > 0  # "a" is now the most recently seen
    limiter.check("c", 1)  # evicts "b"
    assert limiter.check("b", 1) == 0.0  # forgotten: a fresh bucket (evicts "a")
    assert limiter.check("c", 1) > 0  # still remembered
    assert len(limiter._buckets) == 2


@pytest.mark.parametrize(("seconds", "header"),
                         [(0.0, "1"), (0.2, "1"), (1.0, "1"), (1.01, "2"), (59.5, "60")])
def test_retry_after_header(seconds: float, header: str) -> None:
    assert retry_after_header(seconds) == header
