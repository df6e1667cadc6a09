"""The in-memory watermark store keeps the whole store contract."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from deswm._errors import WatermarkConflict
from deswm._model import Watermark, WatermarkKey
from deswm.testing._contracts.store import WatermarkStoreContract
from deswm.testing._stores import MemoryWatermarkStore

T0 = datetime(2024, 5, 1, tzinfo=UTC)


class TestMemoryWatermarkStore(WatermarkStoreContract):
    @pytest.fixture
    def store(self) -> MemoryWatermarkStore:
        return MemoryWatermarkStore(actor="tester@memory")


def test_state_is_per_instance() -> None:
    one, two = MemoryWatermarkStore(), MemoryWatermarkStore()
    one.initialize(WatermarkKey("p"), T0)
    assert two.get(WatermarkKey("p")) is None


def test_writes_counts_only_real_writes() -> None:
    store = MemoryWatermarkStore()
    current = store.initialize(WatermarkKey("p"), T0)
    store.initialize(WatermarkKey("p"), T0)
    store.advance(current, T0)
    assert store.writes == 1
    store.advance(current, datetime(2024, 5, 2, tzinfo=UTC))
    with pytest.raises(WatermarkConflict):
        store.advance(current, datetime(2024, 5, 3, tzinfo=UTC))
    assert store.writes == 2


def test_missing_watermark_conflict_says_missing() -> None:
    store = MemoryWatermarkStore()
    with pytest.raises(WatermarkConflict) as caught:
        store.advance(Watermark(WatermarkKey("p"), T0, 1), datetime(2024, 5, 2, tzinfo=UTC))
    assert caught.value.actual == "missing"


def test_clock_and_actor_are_recorded() -> None:
    store = MemoryWatermarkStore(actor="ops@host", clock=lambda: T0)
    created = store.set(WatermarkKey("p"), T0, reason="r")
    assert (created.updated_at, created.updated_by) == (T0, "ops@host")
    (change,) = store.history()
    assert (change.changed_at, change.actor) == (T0, "ops@host")
