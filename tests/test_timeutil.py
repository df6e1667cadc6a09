"""timeutil: every formatted date has a four-digit year, over the whole datetime range."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from deswm._timeutil import format_day, format_utc, format_wall, parse_day

INSTANTS = st.datetimes(timezones=st.just(UTC))


def test_years_before_1000_are_zero_padded() -> None:
    instant = datetime(999, 6, 1, 10, 2, 3, 45, tzinfo=UTC)
    assert format_utc(instant) == "0999-06-01T10:02:03.000045Z"
    assert format_day(instant) == "09990601"
    assert format_wall(instant.replace(tzinfo=None)) == "0999-06-01 10:02:03.000045"
    assert format_wall(datetime(1, 1, 1)) == "0001-01-01 00:00:00"
    assert format_wall(datetime(1, 1, 1), micros=True) == "0001-01-01 00:00:00.000000"


@given(INSTANTS)
def test_format_utc_is_fixed_width_and_parses_back(instant: datetime) -> None:
    text = format_utc(instant)
    assert len(text) == 27
    assert datetime.fromisoformat(text) == instant


@given(INSTANTS, INSTANTS)
def test_text_order_is_time_order(a: datetime, b: datetime) -> None:
    assert (format_utc(a) < format_utc(b)) == (a < b)
    naive_a, naive_b = a.replace(tzinfo=None), b.replace(tzinfo=None)
    assert (format_wall(naive_a, micros=True) < format_wall(naive_b, micros=True)) == (a < b)


@given(INSTANTS)
def test_day_names_parse_back(instant: datetime) -> None:
    day = format_day(instant)
    assert len(day) == 8
    assert parse_day(day, "day") == datetime(instant.year, instant.month, instant.day, tzinfo=UTC)
