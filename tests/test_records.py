"""Entries and watermark history as rows (to_records) and data frames (to_pandas)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from deswm import to_pandas, to_records
from deswm._archive import Archive
from deswm._errors import ConfigError
from deswm._model import WatermarkKey
from deswm._orchestrator import CycleObserver
from deswm._routing import DesRouter
from deswm.testing import MemoryWatermarkStore
from test_metrics import orchestrator

T = datetime(2024, 5, 10, tzinfo=UTC)


def test_archive_entries_as_records_with_meta_decoded(tmp_path: Path) -> None:
    orchestrator(tmp_path, CycleObserver()).run_cycle()
    archive = Archive(str(tmp_path / "archive"), DesRouter(4))
    (part, *_) = archive.shards("20240510")
    rows = to_records(archive.entries(part.name))
    assert rows
    row = rows[0]
    assert isinstance(row["meta"], dict) and row["meta"]["sha256"] == row["sha256"]
    assert row["created_at"] == datetime.fromisoformat(row["meta"]["created_at"])
    assert row["big"] is False and isinstance(row["uid"], str)


def test_watermark_history_as_records() -> None:
    store = MemoryWatermarkStore()
    key = WatermarkKey("files")
    store.set(key, T, reason="start")
    store.set(key, T + timedelta(days=1), reason="replay")
    rows = to_records(store.history(key))
    assert [r["reason"] for r in rows] == ["replay", "start"]  # newest first
    assert rows[0]["key.pipeline"] == "files"
    assert rows[0]["position"] == T + timedelta(days=1)


def test_to_records_refuses_other_values() -> None:
    with pytest.raises(TypeError, match="deswm value types"):
        to_records([{"a": 1}])


def test_to_pandas_without_pandas_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ConfigError, match=r"pip install 'deswm\[pandas\]'"):
        to_pandas([])


def test_to_pandas_builds_a_frame() -> None:
    pandas = pytest.importorskip("pandas")
    store = MemoryWatermarkStore()
    key = WatermarkKey("files")
    store.set(key, T, reason="start")
    store.set(key, T + timedelta(days=1), reason="replay")
    frame = to_pandas(store.history(key))
    assert isinstance(frame, pandas.DataFrame) and "reason" in frame.columns
