"""The comparison table (printed) and bench/results/latest.json."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).with_name("results")


@dataclass(frozen=True)
class Row:
    what: str
    measured: float | None
    baseline: float | None
    unit: str
    target: str
    met: bool | None
    ratio: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"what": self.what, "measured": self.measured, "baseline": self.baseline,
                "unit": self.unit, "ratio": self.ratio, "target": self.target,
                "met": self.met}


def _number(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit == "MB" or value < 100:
        return f"{value:.1f}"
    return f"{value:,.0f}"


def rows_from(results: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    webhooks = results.get("webhooks")
    if webhooks:
        receiver, ceiling = webhooks["receiver"], webhooks["ceiling"]
        connections = webhooks["connections"]
        rows += [
            Row(f"webhooks accepted/s, {connections} conns (vs trivial endpoint)",
                receiver["median_rate"], ceiling["median_rate"], "req/s", "ratio >= 0.85",
                webhooks["ratio"] >= 0.85, webhooks["ratio"]),
            Row("webhook latency p50 under that load", receiver["median_p50_ms"],
                ceiling["median_p50_ms"], "ms", "(info)", None),
            Row("webhook latency p99 under that load", receiver["median_p99_ms"],
                ceiling["median_p99_ms"], "ms", "< 50 ms", receiver["median_p99_ms"] < 50),
            Row("server CPU per request", receiver["median_cpu_ms_per_request"],
                ceiling["median_cpu_ms_per_request"], "ms", "(info)", None),
        ]
    delivery = results.get("delivery")
    if delivery:
        worker, baseline = delivery["worker"], delivery["baseline"]
        rows.append(Row(f"delivered msg/s, {delivery['messages']:,} queued, "
                        f"{delivery['sessions']} sessions (vs bare aiosmtplib)",
                        worker["rate"], baseline["rate"], "msg/s", ">= 1,000 msg/s",
                        worker["rate"] >= 1000, delivery["ratio"]))
    latency = results.get("latency")
    if latency:
        sent, answered = latency["from_request_sent_ms"], latency["from_response_received_ms"]
        http, ceiling_http = latency["http_response_ms"], latency["ceiling_http_response_ms"]
        rows += [
            Row("idle e2e p50, request sent -> DATA end", sent["p50"], None, "ms", "< 30 ms",
                sent["p50"] < 30),
            Row("idle e2e p99, request sent -> DATA end", sent["p99"], None, "ms", "< 100 ms",
                sent["p99"] < 100),
            Row("idle e2e p50, response received -> DATA end", answered["p50"], None, "ms",
                "< 30 ms", answered["p50"] < 30),
            Row("idle e2e p99, response received -> DATA end", answered["p99"], None, "ms",
                "< 100 ms", answered["p99"] < 100),
            Row("idle webhook HTTP response p50 (vs trivial endpoint)", http["p50"],
                ceiling_http["p50"], "ms", "(info)", None),
            Row("idle webhook HTTP response p99 (vs trivial endpoint)", http["p99"],
                ceiling_http["p99"], "ms", "(info)", None),
        ]
    memory = results.get("memory")
    if memory:
        for name in ("receiver", "worker"):
            peak = memory.get(f"{name}_peak_mb")
            if peak is not None:
                rows.append(Row(f"peak RSS (VmHWM) {name}, under load "
                                f"(vs {memory[f'{name}_baseline_name']})", peak,
                                memory.get(f"{name}_baseline_mb"), "MB", "< 80 MB", peak < 80))
    return rows


def format_table(rows: list[Row]) -> str:
    header = ("what", "measured", "baseline", "ratio", "unit", "target", "result")
    cells = [header]
    for row in rows:
        result = "-" if row.met is None else ("met" if row.met else "MISSED")
        cells.append((row.what, _number(row.measured, row.unit),
                      _number(row.baseline, row.unit),
                      f"{row.ratio:.2f}" if row.ratio is not None else "-", row.unit,
                      row.target, result))
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    aligned_right = {1, 2, 3}

    def line(values: tuple[str, ...]) -> str:
        return " | ".join(value.rjust(widths[i]) if i in aligned_right else
                          value.ljust(widths[i]) for i, value in enumerate(values))

    separator = "-+-".join("-" * width for width in widths)
    return "\n".join([line(cells[0]), separator, *(line(c) for c in cells[1:])])


def write_results(results: dict[str, Any], rows: list[Row], path: Path | None = None) -> Path:
    target = path or RESULTS_DIR / "latest.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    document = {**results, "table": [row.as_dict() for row in rows]}
    temporary = target.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
    temporary.replace(target)
    return target
