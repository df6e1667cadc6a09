"""The formatters of text output: sizes, durations, instants, HTML tables."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from deswm._humanize import html_table, human_bytes, human_count, human_duration, human_time


@pytest.mark.parametrize(
    ("count", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1153434, "1.1 MiB"), (5 * 2**40, "5.0 TiB")],
)
def test_human_bytes(count: int, text: str) -> None:
    assert human_bytes(count) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.42, "0.42 s"),
        (3.25, "3.2 s"),
        (12, "12 s"),
        (184, "3 min 4 s"),
        (180, "3 min"),
        (7500, "2 h 5 min"),
        (7200, "2 h"),
        (86400, "1 day"),
        (3 * 86400 + 4 * 3600 + 59, "3 days 4 h"),
        (-90, "-1 min 30 s"),
    ],
)
def test_human_duration(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text
    assert human_duration(timedelta(seconds=seconds)) == text


def test_human_time_drops_zero_microseconds_only() -> None:
    assert human_time(datetime(2024, 5, 17, 10, tzinfo=UTC)) == "2024-05-17T10:00:00Z"
    assert human_time(datetime(2024, 5, 17, 10, 0, 1, 5, tzinfo=UTC)) == (
        "2024-05-17T10:00:01.000005Z"
    )
    assert human_time(None) == "-"
    # What it prints reads back as the same instant (the CLI takes it as --to).
    instant = datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert datetime.fromisoformat(human_time(instant)) == instant


def test_human_count() -> None:
    assert human_count(1234567) == "1,234,567"


def test_html_table_escapes_labels_values_and_title() -> None:
    html = html_table("<b>t</b>", [("<i>", "<script>alert(1)</script>")])
    assert "<script>" not in html and "<i>" not in html and "<b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
