"""Readable ``__str__`` and notebook ``_repr_html_`` of the value types people look at."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from deswm._config import Config
from deswm._model import (
    CyclePlan,
    CycleResult,
    PendingStats,
    SourceRecord,
    WatermarkChange,
    WatermarkKey,
    Window,
)
from deswm._verify import VerifyReport

DAY = datetime(2024, 5, 1, tzinfo=UTC)
KEY = WatermarkKey("files")
WINDOW = Window(DAY, DAY + timedelta(days=2))
EVIL = "<script>alert(1)</script>"


def replay() -> CycleResult:
    return CycleResult(
        KEY,
        WINDOW,
        DAY,
        DAY + timedelta(days=2),
        files=1000,
        bytes_in=1153434,
        unchanged=1000,
        shards_unchanged=12,
        buckets_committed=2,
        duration=timedelta(seconds=7500),
    )


def test_a_replay_says_what_it_found_not_zero_bytes() -> None:
    text = str(replay())
    assert "1,000 read (1.1 MiB): 0 new, 0 rewritten, 1,000 unchanged" in text
    assert "12 unchanged" in text
    assert "nothing changed" in text
    assert "2 h 5 min" in text
    assert ".000000" not in text
    assert "0 bytes out" not in text
    assert len(text.splitlines()) > 5
    # One line for logs, with the same words.
    line = replay().summary()
    assert "\n" not in line and "1,000 unchanged" in line and ".000000" not in line


def test_new_files_and_merges_are_counted_apart() -> None:
    result = CycleResult(
        KEY, WINDOW, DAY, DAY, files=10, replaced=3, unchanged=2, shards_written=4,
        shards_merged=1, bytes_out=2048,
    )  # fmt: skip
    assert result.new == 5
    assert "5 new, 3 rewritten, 2 unchanged" in str(result)
    assert "4 written (2.0 KiB, 1 merged with earlier entries)" in str(result)


def test_repr_stays_exact() -> None:
    assert repr(replay()).startswith("CycleResult(key=WatermarkKey(")


def test_plan_names_delay_and_behind() -> None:
    pending = PendingStats(WINDOW, 5, 2048, DAY, DAY + timedelta(hours=3))
    plan = CyclePlan(KEY, DAY, DAY + timedelta(days=2), WINDOW, pending, True, timedelta(days=7))
    assert plan.behind == timedelta(days=2)
    text = str(plan)
    assert "delay:" in text and "7 days" in text
    assert "behind:" in text and "2 days" in text
    assert "lag" not in text
    assert "5 files, 2.0 KiB" in text
    assert "2024-05-01T03:00:00Z" in text
    assert "2.0 KiB" in str(pending) and "<td" in pending._repr_html_()


def test_html_escapes_what_came_from_rows_and_people() -> None:
    record = SourceRecord(EVIL, DAY, f"/files/{EVIL}")
    report = VerifyReport(WINDOW, 1, (record,), ((record, EVIL),), 1, 1)
    change = WatermarkChange(KEY, DAY, EVIL, None, DAY, EVIL)
    for value in (report, change):
        html = value._repr_html_()
        assert "<script>" not in html
        assert "&lt;script&gt;" in html
        assert EVIL in str(value)
    assert "FAILED" in str(report)


def test_config_shows_its_settings_without_secrets(tmp_path: Path) -> None:
    config = Config.from_mapping(
        {
            "source": {"url": "postgresql://app:s3cr3t-pw@db/prod", "table": "photos"},
            "archive": {"url": str(tmp_path / "archive"), "n_bits": 6},
        }
    )
    text, html = str(config), config._repr_html_()
    assert "s3cr3t-pw" not in text and "s3cr3t-pw" not in html
    assert "source.table:" in text and "photos" in text
    assert "archive.n_bits:" in text
    assert "page_size" not in text  # defaults are left out
    assert len(text) < len(repr(config))
