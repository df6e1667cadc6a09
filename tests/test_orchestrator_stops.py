"""How cycles stop: cancellation, signals, run bounds, and failed cycles in ``run_forever``."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from deswm._errors import ConfigError, SourceError, WatermarkError
from deswm._model import CycleResult, SourceRecord
from deswm._orchestrator import CycleObserver, WatermarkOrchestrator
from deswm._packer import DesPacker
from deswm._routing import DesRouter
from deswm.testing import (
    Checkpoint,
    MemoryFileReader,
    MemorySourceProvider,
    MemoryWatermarkStore,
    at_checkpoint,
    fail_on,
    inject,
)

NOW = datetime(2024, 5, 20, 15, 30, tzinfo=UTC)


def at(day: int, hour: int = 0) -> datetime:
    return datetime(2024, 5, day, hour, tzinfo=UTC)


def _records() -> list[SourceRecord]:
    return [
        SourceRecord(f"u{day}-{i}", at(day, i + 1), f"mem/u{day}-{i}", 10)
        for day in (10, 11, 12, 13, 14, 15)
        for i in range(3)
    ]


class _World:
    def __init__(self, root: Path) -> None:
        self.records = _records()
        self.store = MemoryWatermarkStore()
        self.source = MemorySourceProvider(self.records)
        self.reader = MemoryFileReader({r.location: r.uid.encode() * 5 for r in self.records})
        self.router = DesRouter(4)
        self.packer = DesPacker(str(root / "archive"), self.router)

    def orchestrator(self, **options: Any) -> WatermarkOrchestrator:
        options.setdefault("pipeline", "files")
        options.setdefault("lag", timedelta(days=2))
        options.setdefault("initial", at(10))
        options.setdefault("clock", lambda: NOW)
        return WatermarkOrchestrator(
            self.store, self.source, self.reader, self.router, self.packer, **options
        )

    def position(self, orchestrator: WatermarkOrchestrator) -> datetime | None:
        stored = self.store.get(orchestrator.key)
        return None if stored is None else stored.position


@pytest.fixture
def world(tmp_path: Path) -> _World:
    return _World(tmp_path)


class _Finished(CycleObserver):
    def __init__(self) -> None:
        self.done = threading.Event()

    def cycle_finished(self, result: CycleResult) -> None:
        self.done.set()


# --- cancellation (issue 11, item 10) ------------------------------------------------------


def test_cancel_while_a_bucket_publishes_starts_no_further_bucket(world: _World) -> None:
    """The worker may run on before the event loop handles the cancellation (a busy
    machine): here the loop is kept busy until the worker has either started the next
    bucket or ended. Only the bucket that was publishing may be committed."""
    publishing, release, settled = threading.Event(), threading.Event(), threading.Event()
    finished = _Finished()
    orchestrator = world.orchestrator(observers=[finished])

    def hold_first_publish(_name: str, count: int) -> None:
        if count == 1:
            publishing.set()
            release.wait(10)
        else:
            settled.set()  # a second bucket is about to publish: past the cancellation

    async def main() -> None:
        task = asyncio.create_task(orchestrator.arun_cycle())
        await asyncio.get_running_loop().run_in_executor(None, publishing.wait, 10)
        task.cancel()
        release.set()

        # Block the loop: the task cannot handle its cancellation before the worker
        # has gone as far as it will go on its own.
        def settle() -> None:
            finished.done.wait(10)
            settled.set()

        threading.Thread(target=settle).start()
        settled.wait(10)
        with pytest.raises(asyncio.CancelledError):
            await task

    with at_checkpoint(Checkpoint.BUCKET_BEFORE_PUBLISH, hold_first_publish) as hits:
        asyncio.run(main())
    assert len(hits) == 1
    assert world.position(orchestrator) == at(11)


# --- run bounds and the stop reason --------------------------------------------------------


def test_a_full_window_says_finished(world: _World) -> None:
    result = world.orchestrator().run_cycle()
    assert result.stopped == "finished" and not result.stopped_early
    assert result.summary().endswith("stopped: window finished")


def test_max_buckets_stops_with_its_reason(world: _World) -> None:
    result = world.orchestrator(max_buckets=2).run_cycle()
    assert (result.buckets_committed, result.stopped) == (2, "max-buckets")
    assert result.watermark_after == at(12)
    assert result.summary().endswith("stopped: max-buckets reached")


def test_run_time_stops_at_the_next_bucket_boundary(world: _World) -> None:
    orchestrator = world.orchestrator(run_time=timedelta(seconds=0.2))

    def slow_first_bucket(_name: str, _count: int) -> None:
        time.sleep(0.3)  # the first bucket outlasts the run time; it still commits

    with at_checkpoint(Checkpoint.BUCKET_BEFORE_PUBLISH, slow_first_bucket, on=1):
        result = orchestrator.run_cycle()
    assert (result.buckets_committed, result.stopped) == (1, "run-time")
    assert world.position(orchestrator) == at(11)
    assert result.summary().endswith("stopped: run-time reached")
    rest = world.orchestrator().run_cycle()
    assert rest.stopped == "finished" and rest.watermark_after == at(18)


def test_run_time_must_be_positive(world: _World) -> None:
    with pytest.raises(ConfigError, match=r"run\.run_time"):
        world.orchestrator(run_time=timedelta(0))


def test_request_stop_says_requested(world: _World) -> None:
    orchestrator = world.orchestrator()
    orchestrator.request_stop()
    result = orchestrator.run_cycle()
    assert (result.buckets_committed, result.stopped) == (0, "requested")


# --- signals --------------------------------------------------------------------------------


def test_a_signal_stops_the_cycle_at_a_bucket_boundary(world: _World) -> None:
    orchestrator = world.orchestrator()

    def signal_in_first_bucket(_name: str, _count: int) -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.getsignal(signal.SIGTERM)
    with (
        at_checkpoint(Checkpoint.BUCKET_BEFORE_PUBLISH, signal_in_first_bucket, on=1),
        orchestrator.stop_on_signals(),
    ):
        result = orchestrator.run_cycle()
    assert (result.buckets_committed, result.stopped) == (1, "signal")
    assert world.position(orchestrator) == at(11)
    assert signal.getsignal(signal.SIGTERM) is previous


def test_a_second_signal_exits_at_once(world: _World) -> None:
    orchestrator = world.orchestrator()

    def two_signals(_name: str, _count: int) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)

    with (
        pytest.raises(SystemExit) as caught,
        at_checkpoint(Checkpoint.BUCKET_BEFORE_PUBLISH, two_signals, on=1),
        orchestrator.stop_on_signals(),
    ):
        orchestrator.run_cycle()
    assert caught.value.code == 128 + signal.SIGTERM
    assert world.position(orchestrator) == at(10)  # the interrupted bucket was not committed


def test_a_signal_while_the_main_thread_holds_the_stop_events_lock_does_not_deadlock(
    world: _World,
) -> None:
    """The handler may interrupt the main thread inside ``Event.wait``, which holds the
    event's (non-reentrant) lock; setting the event from the handler would hang there."""
    orchestrator = world.orchestrator()
    lock = orchestrator._stop.event._cond  # type: ignore[attr-defined]  # held inside Event.wait
    with orchestrator.stop_on_signals():
        with lock:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(50):
                time.sleep(0.002)  # the handler runs here, in the main thread
        deadline = time.monotonic() + 5
        while not orchestrator._stop.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
    assert orchestrator._stop.is_set() and orchestrator._stop.reason == "signal"


# --- failed cycles in run_forever (issue 11, item 3) ----------------------------------------


def _failing_source(world: _World, *calls: int) -> None:
    world.source = inject(
        world.source, iter_records=fail_on(*calls, error=SourceError("database is away"))
    )


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The backoff waits of run_forever, recorded instead of slept."""
    recorded: list[float] = []

    def wait(_self: Any, seconds: float) -> None:
        recorded.append(seconds)

    monkeypatch.setattr("deswm._orchestrator._Stop.wait", wait)
    return recorded


def test_run_forever_backs_off_and_gives_up_after_max_failed_cycles(
    world: _World, waits: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    _failing_source(world, 1, 2, 3, 4)
    orchestrator = world.orchestrator()
    with caplog.at_level(logging.INFO, logger="deswm"), pytest.raises(SourceError):
        orchestrator.run_forever(10, handle_signals=False, max_failed_cycles=4, max_backoff=50)
    assert waits == [10, 20, 40]  # doubled from the interval, capped at max_backoff next
    failed = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(failed) == 4
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in failed)
    assert "giving up" in failed[-1].getMessage()
    assert "next try in 20 s" in failed[1].getMessage()


def test_run_forever_backoff_is_capped(world: _World, waits: list[float]) -> None:
    _failing_source(world, 1, 2, 3, 4, 5, 6)
    with pytest.raises(SourceError):
        world.orchestrator().run_forever(
            1, handle_signals=False, max_failed_cycles=6, max_backoff=5
        )
    assert waits == [1, 2, 4, 5, 5]


def test_a_success_resets_the_failure_count(world: _World, waits: list[float]) -> None:
    # Every cycle reads the watermark once; the window is empty after the first cycle.
    world.store = inject(world.store, get=fail_on(1, 2, 4, 5, error=WatermarkError("away")))
    reason = world.orchestrator().run_forever(
        60, handle_signals=False, max_failed_cycles=3, max_cycles=3
    )
    # fail, fail, cycle 1; fail, fail, cycle 2; cycle 3: never three failures in a row
    assert reason == "finished"
    assert waits == [60, 120, 60, 60, 120, 60]


def test_the_traceback_of_a_failed_cycle_is_logged_at_debug(
    world: _World, waits: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    _failing_source(world, 1)
    with caplog.at_level(logging.DEBUG, logger="deswm"):
        world.orchestrator().run_forever(0, handle_signals=False, max_cycles=1)
    traced = [r for r in caplog.records if r.exc_info is not None]
    assert [r.levelno for r in traced] == [logging.DEBUG]


def test_a_stop_while_backing_off_returns(world: _World) -> None:
    _failing_source(world, *range(1, 100))
    orchestrator = world.orchestrator()
    reasons: list[str] = []
    thread = threading.Thread(
        target=lambda: reasons.append(
            orchestrator.run_forever(3600, handle_signals=False, max_failed_cycles=0)
        )
    )
    thread.start()
    time.sleep(0.2)
    orchestrator.request_stop()
    thread.join(10)
    assert not thread.is_alive() and reasons == ["requested"]


def test_run_forever_run_time_ends_it(world: _World) -> None:
    orchestrator = world.orchestrator(run_time=timedelta(seconds=0.3))
    started = time.monotonic()
    assert orchestrator.run_forever(3600, handle_signals=False) == "run-time"
    assert time.monotonic() - started < 5


def test_max_failed_cycles_must_not_be_negative(world: _World) -> None:
    with pytest.raises(ConfigError, match=r"run\.max_failed_cycles"):
        world.orchestrator().run_forever(1, handle_signals=False, max_failed_cycles=-1)


# --- the source's stream ends with the cycle ------------------------------------------


class _StreamWatch(MemorySourceProvider):
    """A memory source that notes when each of its streams is closed."""

    def __init__(self, records: list[SourceRecord]) -> None:
        super().__init__(records)
        self.open_streams = 0

    def iter_records(self, window: Any) -> Any:
        inner = super().iter_records(window)

        def stream() -> Any:
            self.open_streams += 1
            try:
                yield from inner
            finally:
                self.open_streams -= 1

        return stream()


@pytest.mark.parametrize("workers", [None, 2])
@pytest.mark.parametrize("stop", ["max_buckets", "failure"])
def test_a_cycle_that_stops_early_closes_the_source_stream_before_it_returns(
    world: _World, workers: int | None, stop: str
) -> None:
    """An open stream holds a snapshot and locks on the production table: it must end
    with the cycle, not whenever a garbage collection finds it (GC is off here)."""
    import gc

    source = _StreamWatch(world.records)
    world.source = source
    options: dict[str, Any] = {"workers": workers, "executor": "threads" if workers else None}
    gc.disable()
    try:
        if stop == "max_buckets":
            with world.orchestrator(max_buckets=1, **options) as orchestrator:
                assert orchestrator.run_cycle().buckets_committed == 1
                assert source.open_streams == 0
        else:
            with (
                world.orchestrator(**options) as orchestrator,
                at_checkpoint(Checkpoint.BUCKET_AFTER_COMMIT, RuntimeError("stop here"), on=1),
                pytest.raises(RuntimeError, match="stop here"),
            ):
                orchestrator.run_cycle()
            assert source.open_streams == 0
    finally:
        gc.enable()
