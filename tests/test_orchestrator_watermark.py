"""Manual watermark moves on WatermarkOrchestrator: the guards the CLI and hosts share."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from deswm._errors import ConfigError, NaiveDatetimeError, WatermarkMoveRefused
from deswm._model import WatermarkMove
from deswm._orchestrator import WatermarkOrchestrator
from deswm._packer import DesPacker
from deswm._routing import DesRouter
from deswm.testing import MemoryFileReader, MemorySourceProvider, MemoryWatermarkStore

NOW = datetime(2024, 5, 20, 15, 30, tzinfo=UTC)
DAY = timedelta(days=1)
INITIAL = datetime(2024, 5, 10, tzinfo=UTC)
TARGET = datetime(2024, 5, 18, tzinfo=UTC)  # bucket_start(NOW - 2 days)


def day(number: int, hour: int = 0) -> datetime:
    return datetime(2024, 5, number, hour, tzinfo=UTC)


@pytest.fixture
def store() -> MemoryWatermarkStore:
    return MemoryWatermarkStore()


@pytest.fixture
def orchestrator(store: MemoryWatermarkStore, tmp_path: Path) -> WatermarkOrchestrator:
    router = DesRouter(4)
    return WatermarkOrchestrator(
        store,
        MemorySourceProvider([]),
        MemoryFileReader({}),
        router,
        DesPacker(str(tmp_path), router),
        pipeline="files",
        lag=2 * DAY,
        initial=INITIAL,
        clock=lambda: NOW,
    )


def test_set_backwards_moves_and_records_the_reason(
    orchestrator: WatermarkOrchestrator, store: MemoryWatermarkStore
) -> None:
    store.set(orchestrator.key, day(15), reason="start")
    move = orchestrator.set_watermark(day(12), reason="replay")
    assert isinstance(move, WatermarkMove)
    assert move.previous is not None and move.previous.position == day(15)
    assert move.watermark.position == day(12)
    assert not move.aligned
    assert store.get(orchestrator.key) == move.watermark
    assert store.history(orchestrator.key)[0].reason == "replay"


def test_the_default_reason_names_the_operation(
    orchestrator: WatermarkOrchestrator, store: MemoryWatermarkStore
) -> None:
    store.set(orchestrator.key, day(15), reason="start")
    orchestrator.adjust_watermark(-1)
    assert store.history(orchestrator.key)[0].reason == "adjust_watermark"


def test_forward_move_is_refused_without_force(
    orchestrator: WatermarkOrchestrator, store: MemoryWatermarkStore
) -> None:
    before = store.set(orchestrator.key, day(12), reason="start")
    with pytest.raises(WatermarkMoveRefused, match="skips rows that may not be archived") as info:
        orchestrator.set_watermark(day(14))
    assert isinstance(info.value, ConfigError)
    assert info.value.forward
    assert "force=True" in str(info.value)
    assert store.get(orchestrator.key) == before
    moved = orchestrator.set_watermark(day(14), force=True, reason="archived elsewhere")
    assert moved.watermark.position == day(14)
    assert store.history(orchestrator.key)[0].reason == "archived elsewhere"


def test_past_the_target_is_refused_without_force(
    orchestrator: WatermarkOrchestrator, store: MemoryWatermarkStore
) -> None:
    # No stored watermark: not a forward move, but still beyond the target.
    with pytest.raises(WatermarkMoveRefused, match="is beyond the target") as info:
        orchestrator.set_watermark(TARGET + DAY)
    assert not info.value.forward
    assert store.get(orchestrator.key) is None
    assert orchestrator.set_watermark(TARGET).watermark.position == TARGET
    forced = orchestrator.set_watermark(TARGET + DAY, force=True)
    assert forced.watermark.position == TARGET + DAY


def test_unaligned_positions_are_aligned_down_to_the_bucket_start(
    orchestrator: WatermarkOrchestrator, store: MemoryWatermarkStore
) -> None:
    store.set(orchestrator.key, day(15), reason="start")
    move = orchestrator.set_watermark(day(13, 17))
    assert move.requested == day(13, 17)
    assert move.watermark.position == day(13)
    assert move.aligned


def test_a_refusal_names_the_aligned_position(
    orchestrator: WatermarkOrchestrator, store: MemoryWatermarkStore
) -> None:
    store.set(orchestrator.key, day(12), reason="start")
    with pytest.raises(WatermarkMoveRefused) as info:
        orchestrator.set_watermark(day(14, 6))
    assert info.value.requested == day(14, 6)
    assert info.value.position == day(14)


def test_set_rejects_a_naive_datetime(orchestrator: WatermarkOrchestrator) -> None:
    with pytest.raises(NaiveDatetimeError):
        orchestrator.set_watermark(datetime(2024, 5, 12))


def test_adjust_moves_from_the_stored_position(
    orchestrator: WatermarkOrchestrator, store: MemoryWatermarkStore
) -> None:
    store.set(orchestrator.key, day(15), reason="start")
    assert orchestrator.adjust_watermark(-2).watermark.position == day(13)
    with pytest.raises(WatermarkMoveRefused, match="forward"):
        orchestrator.adjust_watermark(1)


def test_adjust_without_a_watermark_starts_from_the_initial_position(
    orchestrator: WatermarkOrchestrator,
) -> None:
    move = orchestrator.adjust_watermark(-1.5)
    assert move.previous is None
    assert move.requested == INITIAL - timedelta(days=1.5)
    assert move.watermark.position == INITIAL - 2 * DAY


def test_reset_returns_to_the_initial_position(
    orchestrator: WatermarkOrchestrator, store: MemoryWatermarkStore
) -> None:
    store.set(orchestrator.key, day(15), reason="start")
    move = orchestrator.reset_watermark(reason="start over")
    assert move.watermark.position == INITIAL
    assert store.history(orchestrator.key)[0].reason == "start over"


def test_reset_forward_needs_force(
    orchestrator: WatermarkOrchestrator, store: MemoryWatermarkStore
) -> None:
    store.set(orchestrator.key, day(5), reason="start")
    with pytest.raises(WatermarkMoveRefused, match="forward"):
        orchestrator.reset_watermark()
    assert orchestrator.reset_watermark(force=True).watermark.position == INITIAL
