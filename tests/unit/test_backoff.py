"""mailapi.delivery.backoff: equal-jitter exponential retry delays and pause lengths."""

import random

import pytest

from mailapi.delivery.backoff import pause_length, retry_delay


@pytest.mark.parametrize(
    ("attempt", "nominal"),
    [(0, 30), (1, 30), (2, 60), (3, 120), (4, 240), (7, 1920), (8, 3600), (50, 3600),
     (10_000, 3600)],
)
def test_retry_delay_within_upper_half_of_nominal(attempt: int, nominal: float) -> None:
    rng = random.Random(1234)
    for _ in range(200):
        delay = retry_delay(attempt, base_seconds=30, max_seconds=3600, rng=rng)
        assert nominal / 2 <= delay <= nominal


def test_retry_delay_bounds_reached_by_extreme_draws() -> None:
    class Fixed(random.Random):
        def __init__(self, fraction: float) -> None:
            super().__init__(0)
            self.fraction = fraction

        def uniform(self, a: float, b: float) -> float:
            return a + (b - a) * self.fraction

    assert retry_delay(3, base_seconds=10, max_seconds=1000, rng=Fixed(0.0)) == 20.0
    assert retry_delay(3, base_seconds=10, max_seconds=1000, rng=Fixed(1.0)) == 40.0


def test_retry_delay_doubles() -> None:
    def midpoint(attempt: int) -> float:
        return retry_delay(attempt, base_seconds=5, max_seconds=10**6, rng=random.Random(7))

    # The same seed gives the same draw, so the delays double exactly.
    assert midpoint(2) == pytest.approx(2 * midpoint(1))
    assert midpoint(5) == pytest.approx(16 * midpoint(1))


def test_retry_delay_capped() -> None:
    delays = [retry_delay(a, base_seconds=30, max_seconds=100, rng=random.Random(a))
              for a in range(1, 60)]
    assert max(delays) <= 100
    assert min(delays[5:]) >= 50


def test_jitter_varies_and_is_reproducible() -> None:
    rng = random.Random(42)
    delays = [retry_delay(4, base_seconds=30, max_seconds=3600, rng=rng) for _ in range(50)]
    assert len(set(delays)) > 40
    again = random.Random(42)
    assert delays == [retry_delay(4, base_seconds=30, max_seconds=3600, rng=again)
                      for _ in range(50)]


@pytest.mark.parametrize(
    ("failures", "expected"),
    [(0, 60.0), (1, 60.0), (2, 120.0), (3, 240.0), (6, 1920.0), (7, 3600.0), (100, 3600.0)],
)
def test_pause_length_doubles_and_caps(failures: int, expected: float) -> None:
    assert pause_length(failures, base_seconds=60) == expected


def test_pause_length_custom_cap_and_type() -> None:
    value = pause_length(3, base_seconds=10, max_seconds=25)
    assert value == 25.0
    assert isinstance(value, float)
