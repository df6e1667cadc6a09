"""The contract of :class:`~deswm.WatermarkStore`, as a reusable test class.

Every clause of the protocol's docstrings is a test here, so an implementation (deswm's
own or yours) proves it keeps the watermark promises the orchestrator relies on: a
compare-and-set that never loses or repeats a commit (G4), and aware UTC instants with
microseconds (G10). Subclass it in a ``Test*`` class and provide a ``store`` fixture
returning a fresh, empty store::

    from deswm.testing import WatermarkStoreContract

    class TestMyStore(WatermarkStoreContract):
        @pytest.fixture
        def store(self, tmp_path):
            return MyStore(tmp_path / "watermarks")

The store is shared between threads in the concurrency tests, as the orchestrator's
runners share one store. A store whose watermarks live outside the process (a database,
a folder, S3) also sets ``shared_across_processes = True`` and provides a
``store_opener`` fixture, and the contract races compare-and-sets from separate
processes too::

    class TestMyStore(WatermarkStoreContract):
        shared_across_processes = True

        @pytest.fixture
        def store_opener(self, tmp_path):
            # picklable: it is sent to child processes
            return functools.partial(MyStore, tmp_path / "watermarks")
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from functools import partial
from typing import Any, TypeVar

import pytest

from deswm._errors import NaiveDatetimeError, WatermarkConflict, WatermarkError
from deswm._model import Watermark, WatermarkKey
from deswm._protocols import WatermarkStore
from deswm._timeutil import format_utc

__all__ = ["WatermarkStoreContract"]

T0 = datetime(2024, 5, 1, tzinfo=UTC)
DAY = timedelta(days=1)
US = timedelta(microseconds=1)
KEY = WatermarkKey("orders")

_T = TypeVar("_T")


def _race(calls: Sequence[Callable[[], _T]]) -> list[_T | Exception]:
    """Run ``calls`` in threads released together; return each result or error."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], _T]) -> _T | Exception:
        barrier.wait(timeout=30)
        try:
            return call()
        except Exception as exc:  # collected and asserted on by the caller
            return exc

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(run, calls))


def _assert_utc(value: datetime | None) -> None:
    assert value is not None
    assert value.tzinfo is not None, f"{value!r} is naive"
    assert value.utcoffset() == timedelta(0), f"{value!r} is not UTC"


def _state(watermark: Watermark | None) -> tuple[object, ...] | None:
    """What a watermark says, without who wrote it when (stores may round those)."""
    if watermark is None:
        return None
    return (
        watermark.key,
        watermark.position,
        watermark.version,
        watermark.lag,
        watermark.partitions,
    )


def _advance_in_process(
    opener: Callable[..., WatermarkStore],
    current: Watermark,
    position: datetime,
    barrier: Any,
    results: Any,
) -> None:
    """Child process: race one compare-and-set against the siblings; report the outcome."""
    store = opener(actor=f"racer-{os.getpid()}")
    try:
        store.get(current.key)  # connect (open, reflect) before the start line
        barrier.wait(timeout=120)
        won = store.advance(current, position)
    except WatermarkConflict:
        results.put(("conflict", None))
    except BaseException as exc:  # reported to the parent, which fails the test
        results.put((f"error: {exc!r}", None))
    else:
        results.put(("won", won))
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            close()


class WatermarkStoreContract:
    """Tests every clause of the :class:`~deswm.WatermarkStore` protocol.

    Subclasses override the ``store`` fixture. ``racers`` and ``race_rounds`` size the
    concurrency tests. ``shared_across_processes`` says that stores opened alike in
    other processes see the same watermarks; then the ``store_opener`` fixture must
    return a picklable callable, taking ``actor=`` and opening the watermarks of
    ``store``, and the compare-and-set is raced between processes as well.
    """

    racers: int = 2
    race_rounds: int = 5
    shared_across_processes: bool = False

    @pytest.fixture
    def store(self) -> WatermarkStore:
        """A fresh, empty store; every subclass must override this fixture."""
        raise NotImplementedError(
            f"{type(self).__name__} must override the `store` fixture to return a fresh, "
            "empty WatermarkStore"
        )

    @pytest.fixture
    def store_opener(self) -> Callable[..., WatermarkStore]:
        """Opens ``store``'s watermarks in another process (see the class docstring)."""
        raise NotImplementedError(
            f"{type(self).__name__} sets shared_across_processes and must override the "
            "`store_opener` fixture"
        )

    # --- get / initialize ---------------------------------------------------------

    def test_satisfies_the_protocol(self, store: WatermarkStore) -> None:
        assert isinstance(store, WatermarkStore)

    def test_get_of_a_missing_watermark_is_none(self, store: WatermarkStore) -> None:
        assert store.get(KEY) is None
        assert list(store.list()) == []

    def test_initialize_creates_version_one(self, store: WatermarkStore) -> None:
        lag = timedelta(hours=6, microseconds=500)
        created = store.initialize(KEY, T0, lag=lag, partitions=4)
        assert created.key == KEY
        assert created.position == T0
        assert created.version == 1
        assert created.lag == lag
        assert created.partitions == 4
        if created.updated_at is not None:
            _assert_utc(created.updated_at)
        assert _state(store.get(KEY)) == _state(created)

    def test_initialize_defaults(self, store: WatermarkStore) -> None:
        created = store.initialize(KEY, T0)
        assert (created.lag, created.partitions) == (None, 1)
        assert _state(store.get(KEY)) == _state(created)

    def test_initialize_is_idempotent(self, store: WatermarkStore) -> None:
        first = store.initialize(KEY, T0, lag=DAY, partitions=2)
        again = store.initialize(KEY, T0 + 5 * DAY, lag=None, partitions=8)
        assert _state(again) == _state(first)
        assert _state(store.get(KEY)) == _state(first)

    def test_initialize_never_changes_an_existing_watermark(self, store: WatermarkStore) -> None:
        advanced = store.advance(store.initialize(KEY, T0), T0 + DAY)
        again = store.initialize(KEY, T0)
        assert _state(again) == _state(advanced)
        assert _state(store.get(KEY)) == _state(advanced)

    def test_racing_initializations_agree_on_the_winner(self, store: WatermarkStore) -> None:
        for round_ in range(self.race_rounds):
            key = WatermarkKey("init-race", partition=round_)
            calls = [partial(store.initialize, key, T0 + i * DAY) for i in range(self.racers)]
            results = _race(calls)
            assert all(isinstance(r, Watermark) for r in results), results
            states = {_state(r) for r in results if isinstance(r, Watermark)}
            assert len(states) == 1, results
            assert states == {_state(store.get(key))}

    # --- advance ------------------------------------------------------------------

    def test_advance_moves_forward_and_bumps_the_version(self, store: WatermarkStore) -> None:
        current = store.initialize(KEY, T0, lag=DAY, partitions=3)
        advanced = store.advance(current, T0 + DAY)
        assert advanced.key == KEY
        assert advanced.position == T0 + DAY
        assert advanced.version == current.version + 1
        assert (advanced.lag, advanced.partitions) == (DAY, 3)
        assert _state(store.get(KEY)) == _state(advanced)

    def test_advance_chains_from_each_returned_watermark(self, store: WatermarkStore) -> None:
        current = store.initialize(KEY, T0)
        for day in range(1, 5):
            current = store.advance(current, T0 + day * DAY)
            assert current.version == day + 1
        assert _state(store.get(KEY)) == _state(current)

    def test_stale_advance_conflicts(self, store: WatermarkStore) -> None:
        stale = store.initialize(KEY, T0)
        winner = store.advance(stale, T0 + DAY)
        with pytest.raises(WatermarkConflict) as caught:
            store.advance(stale, T0 + 2 * DAY)
        assert caught.value.key == KEY
        assert caught.value.expected_version == stale.version
        assert caught.value.actual == winner.version
        assert _state(store.get(KEY)) == _state(winner)

    def test_advance_of_a_missing_watermark_conflicts(self, store: WatermarkStore) -> None:
        ghost = Watermark(key=KEY, position=T0, version=1)
        with pytest.raises(WatermarkConflict) as caught:
            store.advance(ghost, T0 + DAY)
        assert caught.value.expected_version == 1
        assert store.get(KEY) is None

    def test_advance_never_moves_backwards(self, store: WatermarkStore) -> None:
        current = store.advance(store.initialize(KEY, T0), T0 + DAY)
        target = T0 + DAY - US
        with pytest.raises(WatermarkError) as caught:
            store.advance(current, target)
        assert not isinstance(caught.value, WatermarkConflict)
        message = str(caught.value)
        assert format_utc(current.position) in message
        assert format_utc(target) in message
        assert _state(store.get(KEY)) == _state(current)

    def test_advance_to_the_same_position_writes_nothing(self, store: WatermarkStore) -> None:
        current = store.initialize(KEY, T0)
        same = store.advance(current, T0)
        assert _state(same) == _state(current)
        stored = store.get(KEY)
        assert stored is not None
        assert _state(stored) == _state(current)
        assert stored.updated_at == current.updated_at
        # Nothing was written, so the version the caller holds is still current.
        assert store.advance(same, T0 + DAY).version == current.version + 1

    # --- set / history ------------------------------------------------------------

    def test_set_creates_a_missing_watermark(self, store: WatermarkStore) -> None:
        created = store.set(KEY, T0, reason="bootstrap")
        assert (created.key, created.position, created.version) == (KEY, T0, 1)
        assert _state(store.get(KEY)) == _state(created)
        (change,) = store.history(KEY)
        assert (change.previous, change.position, change.reason) == (None, T0, "bootstrap")

    def test_set_moves_forward_and_backward(self, store: WatermarkStore) -> None:
        current = store.initialize(KEY, T0 + 2 * DAY, lag=DAY, partitions=2)
        forward = store.set(KEY, T0 + 5 * DAY, reason="skip an outage")
        assert (forward.position, forward.version) == (T0 + 5 * DAY, current.version + 1)
        back = store.set(KEY, T0, reason="replay a corrupted day")
        assert (back.position, back.version) == (T0, current.version + 2)
        assert (back.lag, back.partitions) == (DAY, 2)
        assert _state(store.get(KEY)) == _state(back)

    def test_set_records_history_newest_first(self, store: WatermarkStore) -> None:
        store.initialize(KEY, T0)
        store.set(KEY, T0 + 3 * DAY, reason="first")
        store.set(KEY, T0 + DAY, reason="second")
        newest, oldest = store.history(KEY)
        assert (newest.reason, newest.previous, newest.position) == (
            "second",
            T0 + 3 * DAY,
            T0 + DAY,
        )
        assert (oldest.reason, oldest.previous, oldest.position) == ("first", T0, T0 + 3 * DAY)
        for change in (newest, oldest):
            assert change.key == KEY
            assert isinstance(change.actor, str)
            assert change.actor
            _assert_utc(change.changed_at)
        assert newest.changed_at >= oldest.changed_at

    def test_set_makes_older_copies_stale(self, store: WatermarkStore) -> None:
        held = store.initialize(KEY, T0)
        store.set(KEY, T0, reason="same position, still a write")
        with pytest.raises(WatermarkConflict):
            store.advance(held, T0 + DAY)

    def test_history_filters_by_key_and_limits(self, store: WatermarkStore) -> None:
        other = WatermarkKey("orders", partition=1)
        for day in range(4):
            store.set(KEY, T0 + day * DAY, reason=f"key {day}")
            store.set(other, T0 + day * DAY, reason=f"other {day}")
        assert [c.reason for c in store.history(KEY)] == ["key 3", "key 2", "key 1", "key 0"]
        assert [c.reason for c in store.history(KEY, limit=2)] == ["key 3", "key 2"]
        assert [c.reason for c in store.history(limit=3)] == ["other 3", "key 3", "other 2"]
        assert len(store.history()) == 8
        assert list(store.history(WatermarkKey("nobody"))) == []

    def test_history_only_records_manual_changes(self, store: WatermarkStore) -> None:
        current = store.initialize(KEY, T0)
        store.advance(current, T0 + DAY)
        assert list(store.history()) == []

    # --- list ---------------------------------------------------------------------

    def test_list_is_ordered_by_key(self, store: WatermarkStore) -> None:
        keys = [
            WatermarkKey("zeta", "archived", 0),
            WatermarkKey("alpha", "purged", 0),
            WatermarkKey("alpha", "archived", 10),
            WatermarkKey("alpha", "archived", 2),
            WatermarkKey("alpha", "flagged", 1),
            WatermarkKey("Beta", "archived", 0),
        ]
        for key in keys:
            store.initialize(key, T0)
        assert [w.key for w in store.list()] == sorted(keys)

    def test_list_filters_by_pipeline(self, store: WatermarkStore) -> None:
        store.initialize(WatermarkKey("a", partition=1), T0)
        store.initialize(WatermarkKey("b"), T0)
        store.initialize(WatermarkKey("a", partition=0), T0)
        store.initialize(WatermarkKey("a", "purged"), T0)
        assert [w.key for w in store.list("a")] == [
            WatermarkKey("a", "archived", 0),
            WatermarkKey("a", "archived", 1),
            WatermarkKey("a", "purged", 0),
        ]
        assert list(store.list("missing")) == []

    def test_keys_are_case_sensitive(self, store: WatermarkStore) -> None:
        lower = store.initialize(WatermarkKey("orders"), T0)
        upper = store.initialize(WatermarkKey("Orders"), T0 + DAY)
        assert lower.position == T0
        assert upper.position == T0 + DAY
        assert [w.key.pipeline for w in store.list("Orders")] == ["Orders"]

    # --- time ---------------------------------------------------------------------

    def test_instants_keep_microseconds_and_come_back_in_utc(self, store: WatermarkStore) -> None:
        zone = timezone(timedelta(hours=-7, minutes=-30))
        start = datetime(2024, 2, 29, 23, 59, 59, 123456, tzinfo=zone)
        created = store.initialize(KEY, start)
        advanced = store.advance(created, start + 7 * US)
        moved = store.set(KEY, start + 42 * US, reason="microseconds")
        for value, expected in (
            (created.position, start),
            (advanced.position, start + 7 * US),
            (moved.position, start + 42 * US),
        ):
            assert value == expected
            _assert_utc(value)
        stored = store.get(KEY)
        assert stored is not None
        assert stored.position == start + 42 * US
        assert stored.position.microsecond == 123498
        _assert_utc(stored.position)
        _assert_utc(store.list()[0].position)
        (change,) = store.history(KEY)
        assert (change.previous, change.position) == (start + 7 * US, start + 42 * US)
        _assert_utc(change.previous)
        _assert_utc(change.position)

    def test_naive_datetimes_are_rejected(self, store: WatermarkStore) -> None:
        naive = datetime(2024, 5, 1)  # the point of the test
        with pytest.raises(NaiveDatetimeError):
            store.initialize(KEY, naive)
        assert store.get(KEY) is None
        with pytest.raises(NaiveDatetimeError):
            store.set(KEY, naive, reason="naive")
        assert store.get(KEY) is None
        current = store.initialize(KEY, T0)
        with pytest.raises(NaiveDatetimeError):
            store.advance(current, naive + DAY)
        assert _state(store.get(KEY)) == _state(current)
        assert list(store.history()) == []

    # --- isolation and concurrency ------------------------------------------------

    def test_partitions_and_stages_are_independent(self, store: WatermarkStore) -> None:
        p0 = store.initialize(WatermarkKey("orders", partition=0), T0)
        p1 = store.initialize(WatermarkKey("orders", partition=1), T0 + DAY)
        purged = store.initialize(WatermarkKey("orders", "purged", 0), T0)
        p0_next = store.advance(p0, T0 + 3 * DAY)
        assert _state(store.get(p1.key)) == _state(p1)
        assert _state(store.get(purged.key)) == _state(purged)
        p1_next = store.advance(p1, T0 + 2 * DAY)
        assert p1_next.version == 2
        assert _state(store.get(p0.key)) == _state(p0_next)
        store.set(purged.key, T0 + DAY, reason="purge")
        assert list(store.history(p0.key)) == []
        assert _state(store.get(p0.key)) == _state(p0_next)

    def test_concurrent_sets_are_serialised(self, store: WatermarkStore) -> None:
        for round_ in range(self.race_rounds):
            # Even rounds race on a missing row (both try to create it), odd on an existing one.
            key = WatermarkKey("set-race", partition=round_)
            start = None if round_ % 2 == 0 else store.initialize(key, T0)
            calls = [
                partial(store.set, key, T0 + (i + 1) * DAY, reason=f"racer {i}")
                for i in range(self.racers)
            ]
            results = _race(calls)
            assert all(isinstance(r, Watermark) for r in results), results
            stored = store.get(key)
            assert stored is not None
            first_version = 1 if start is None else start.version + 1
            assert sorted(r.version for r in results if isinstance(r, Watermark)) == list(
                range(first_version, first_version + self.racers)
            )
            assert stored.version == first_version + self.racers - 1
            changes = list(reversed(store.history(key)))
            assert len(changes) == self.racers
            # Each change saw the one before it: no write was lost or interleaved.
            assert changes[0].previous == (None if start is None else start.position)
            for older, newer in itertools.pairwise(changes):
                assert newer.previous == older.position
            assert changes[-1].position == stored.position

    def test_concurrent_advances_from_one_version_have_one_winner(
        self, store: WatermarkStore
    ) -> None:
        for round_ in range(self.race_rounds):
            key = WatermarkKey("advance-race", partition=round_)
            current = store.initialize(key, T0)
            calls = [
                partial(store.advance, current, T0 + (i + 1) * DAY) for i in range(self.racers)
            ]
            results = _race(calls)
            winners = [r for r in results if isinstance(r, Watermark)]
            losers = [r for r in results if isinstance(r, WatermarkConflict)]
            assert len(winners) == 1, results
            assert len(losers) == self.racers - 1, results
            assert all(loser.expected_version == current.version for loser in losers)
            assert _state(store.get(key)) == _state(winners[0])
            assert winners[0].version == current.version + 1

    def test_processes_racing_advance_have_one_winner(
        self, store: WatermarkStore, request: pytest.FixtureRequest
    ) -> None:
        if not self.shared_across_processes:
            pytest.skip("the store's watermarks live in one process")
        opener: Callable[..., WatermarkStore] = request.getfixturevalue("store_opener")
        current = store.initialize(KEY, T0)
        racers = 3
        context = multiprocessing.get_context("spawn")
        barrier = context.Barrier(racers)
        results = context.Queue()
        processes = [
            context.Process(
                target=_advance_in_process,
                args=(opener, current, T0 + (i + 1) * DAY, barrier, results),
            )
            for i in range(racers)
        ]
        for process in processes:
            process.start()
        try:
            outcomes = [results.get(timeout=180) for _ in processes]
        except queue.Empty:
            outcomes = [("a racer did not report", None)]
        for process in processes:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
                process.join()
        assert sorted(outcome for outcome, _ in outcomes) == ["conflict"] * (racers - 1) + ["won"]
        (winner,) = [won for _, won in outcomes if won is not None]
        stored = store.get(KEY)
        assert _state(stored) == _state(winner)
        assert stored is not None
        assert stored.version != current.version
        assert stored.updated_by is None or stored.updated_by.startswith("racer-")
