"""ISO 8601 timestamps as senders really write them, and the UTC strings we answer with."""

from __future__ import annotations

import re
from datetime import UTC, datetime

# Date, 'T' or space, time with optional fraction, then Z or an offset (or nothing: UTC).
_ISO = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?([Zz]|[+-]\d{2}(:?\d{2})?)?$"
)


def parse_iso8601(text: str) -> datetime:
    """Parse `2026-02-21T05:35:10Z`, `...10.123Z` (JavaScript toISOString), `...+02:00`.

    A timestamp without an offset is taken as UTC, as the spec recommends UTC. Raises
    ValueError for anything else.
    """
    if not isinstance(text, str) or len(text) > 40 or not _ISO.match(text):
        raise ValueError("not an ISO 8601 timestamp")
    normalised = text.replace("z", "Z")
    # fromisoformat accepts at most microseconds: trim nanosecond fractions.
    match = re.search(r"\.(\d+)", normalised)
    if match and len(match.group(1)) > 6:
        normalised = normalised.replace(match.group(0), "." + match.group(1)[:6], 1)
    moment = datetime.fromisoformat(normalised)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        moment.astimezone(UTC)  # 9999-12-31T23:59:59-01:00 has no UTC equivalent
    except OverflowError:
        raise ValueError("timestamp out of range") from None
    return moment


def format_utc(epoch_seconds: float) -> str:
    """`2026-02-21T05:35:12.345678Z`, the form of the spec's queued_at example."""
    return datetime.fromtimestamp(epoch_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
