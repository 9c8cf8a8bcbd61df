"""mailapi.timestamps: lenient-but-bounded ISO 8601 parsing and UTC formatting."""

from datetime import UTC, datetime, timedelta, timezone

import pytest

from mailapi.timestamps import format_utc, parse_iso8601

BASE = datetime(2026, 2, 21, 5, 35, 10, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-02-21T05:35:10Z", BASE),
        ("2026-02-21t05:35:10z", BASE),
        ("2026-02-21 05:35:10Z", BASE),
        ("2026-02-21T05:35:10", BASE),  # no offset: UTC
        ("2026-02-21T05:35:10.123Z", BASE.replace(microsecond=123000)),
        ("2026-02-21T05:35:10.1Z", BASE.replace(microsecond=100000)),
        ("2026-02-21T05:35:10.123456789Z", BASE.replace(microsecond=123456)),
        ("2026-02-21T07:35:10+02:00", BASE),
        ("2026-02-21T07:35:10+0200", BASE),
        ("2026-02-21T07:35:10+02", BASE),
        ("2026-02-21T00:05:10-05:30", BASE),
        ("2026-02-21T05:35Z", BASE.replace(second=0)),
    ],
)
def test_accepted_forms(text: str, expected: datetime) -> None:
    parsed = parse_iso8601(text)
    assert parsed == expected
    assert parsed.tzinfo is not None


def test_offset_is_kept() -> None:
    parsed = parse_iso8601("2026-02-21T07:35:10+02:00")
    assert parsed.utcoffset() == timedelta(hours=2)
    assert parsed.tzinfo == timezone(timedelta(hours=2))


def test_naive_is_utc() -> None:
    assert parse_iso8601("2026-02-21T05:35:10").tzinfo is UTC


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2026-02-21",
        "05:35:10",
        "1771652110",
        "2026-02-21T05:35:10 Z",
        "2026-02-21T05:35:10.Z",
        "2026-02-21T05:35:10.1234567890Z",  # more than nanoseconds
        "2026-02-30T05:35:10Z",
        "2026-13-01T05:35:10Z",
        "2026-02-21T24:00:00Z",
        "2026-02-21T05:60:00Z",
        "2026-02-21T05:35:10+99:00",
        "2026-02-21T05:35:10Z\n",
        " 2026-02-21T05:35:10Z",
        "\uff12\uff10\uff12\uff16-02-21T05:35:10Z",  # full-width digits match \d
        "2026-02-21T05:35:10Z" + " " * 30,
    ],
)
def test_rejected_forms(text: str) -> None:
    with pytest.raises(ValueError):
        parse_iso8601(text)


def test_non_string_rejected() -> None:
    with pytest.raises(ValueError):
        parse_iso8601(1771652110)  # type: ignore[arg-type]


def test_format_utc_shape() -> None:
    assert format_utc(0) == "1970-01-01T00:00:00.000000Z"
    assert format_utc(BASE.timestamp() + 0.5) == "2026-02-21T05:35:10.500000Z"


def test_format_utc_round_trips_through_parse() -> None:
    epoch = 1_771_652_110.345678
    assert parse_iso8601(format_utc(epoch)).timestamp() == pytest.approx(epoch, abs=1e-6)


def test_a_moment_with_no_utc_equivalent_is_refused() -> None:
    with pytest.raises(ValueError, match="out of range"):
        parse_iso8601("9999-12-31T23:59:59-01:00")
