"""Percentiles and summaries of latency samples (milliseconds)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(samples: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile: the smallest sample with at least `fraction` of all <= it."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def summary(samples: Sequence[float]) -> dict[str, float]:
    if not samples:
        return {"n": 0, "min": math.nan, "p50": math.nan, "p90": math.nan, "p99": math.nan,
                "max": math.nan, "mean": math.nan}
    return {
        "n": len(samples),
        "min": round(min(samples), 3),
        "p50": round(percentile(samples, 0.50), 3),
        "p90": round(percentile(samples, 0.90), 3),
        "p99": round(percentile(samples, 0.99), 3),
        "max": round(max(samples), 3),
        "mean": round(sum(samples) / len(samples), 3),
    }
