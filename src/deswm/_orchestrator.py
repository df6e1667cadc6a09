"""The watermark orchestrator: one window per cycle, one watermark write per bucket.

A cycle reads the watermark ``W``, computes the target ``T = bucket_start(now - lag)``
once, streams the rows of ``[W, T)`` in ``(created_at, uid)`` order, packs each day
bucket as a whole, and only after a bucket's shards are published moves the watermark
past it with a compare-and-set. Before each move, the rows the window query returned
below the new position must equal the rows archived, kept or listed
(:class:`~deswm.RowCountError` otherwise): no component can drop a row silently.
The source table is only ever read.

It depends on the five protocols and nothing else, so every component can be replaced.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import logging
import os
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any, Final, Literal

import attrs
import tenacity

from deswm import _publish
from deswm._checkpoints import Checkpoint, reach
from deswm._defaults import (
    BUCKETS_IN_FLIGHT,
    LAG_DAYS,
    LANE_BATCH_ROWS,
    LANE_TIMEOUT,
    MAX_FAILURE_RATIO,
    ON_ERROR,
)
from deswm._errors import (
    ConfigError,
    CycleError,
    DeswmError,
    DuplicateUidError,
    FileMissingError,
    FileReadError,
    LaneError,
    RowCountError,
    SourceError,
    WaitInterrupted,
    WatermarkError,
    WatermarkMoveRefused,
)
from deswm._lane_pool import LanePool, resolve_pool
from deswm._lane_stream import STREAM_CHUNK, LaneStream, StreamAbandoned, remove_orphans
from deswm._lanes import LaneBatch, LaneJob, LaneOutcome, LaneRows, merge_results, pack_lane
from deswm._model import (
    DEFAULT_STAGE,
    BucketResult,
    CyclePlan,
    CycleResult,
    FileFailure,
    Partition,
    PendingStats,
    PublishedShard,
    RetryResult,
    SourceRecord,
    StopReason,
    Watermark,
    WatermarkKey,
    WatermarkMove,
    Window,
)
from deswm._protocols import (
    AuditLog,
    ErrorStore,
    FileReader,
    ManifestRecorder,
    Packer,
    PartitionedSource,
    ReadResult,
    ShardRouter,
    SourceProvider,
    TransactionGuard,
    WatermarkStore,
)
from deswm._routing import require_day_buckets, uid_text
from deswm._rowdigest import RowDigest
from deswm._sources import source_rows
from deswm._timeutil import format_utc, require_utc

__all__ = ["CycleObserver", "WatermarkOrchestrator", "utc_now"]

log = logging.getLogger("deswm.orchestrator")

OnError = Literal["stop", "record"]
DEFAULT_INITIAL_AGE = timedelta(days=30)
DEFAULT_MAX_FAILED_CYCLES = 5
"""Consecutive failed cycles after which :meth:`WatermarkOrchestrator.run_forever` gives up."""
DEFAULT_MAX_BACKOFF = 3600.0
"""The longest wait (seconds) between failed cycles, unless the interval is longer."""
_FIRST_INSTANT = datetime(1, 1, 1, tzinfo=UTC)


def utc_now() -> datetime:
    """The default clock."""
    return datetime.now(UTC)


class CycleObserver:
    """Hooks called by the orchestrator; subclass and override what you need.

    Metrics exporters and progress bars plug in here. Hooks run on the cycle's thread;
    an exception in a hook propagates (a broken exporter should be noticed).
    """

    def cycle_started(self, key: WatermarkKey, window: Window) -> None:
        """A non-empty window is about to be streamed."""

    def file_done(self, record: SourceRecord, size: int) -> None:
        """One file was handed to the packer (``size`` bytes read); in-process path only."""

    def files_done(self, key: WatermarkKey, bucket: datetime, files: int, size: int) -> None:
        """A lane of the packing engine packed ``files`` files (``size`` bytes read) of
        ``bucket``; called by the coordinator as lane results arrive (lanes may run in
        other processes, where no per-file hook can be called)."""

    def bucket_committed(
        self, key: WatermarkKey, result: BucketResult, watermark: Watermark
    ) -> None:
        """A bucket was published and the watermark moved past it."""

    def cycle_finished(self, result: CycleResult) -> None:
        """A cycle ended without raising."""

    def cycle_failed(self, key: WatermarkKey, error: Exception) -> None:
        """A cycle raised ``error`` (committed buckets stay committed); it is re-raised."""


_ZERO: Final = timedelta(0)

_SIGNAL_SLICE = 0.5
"""Longest blocking wait of the main thread, in seconds, so SIGTERM/SIGINT handlers run."""


def _wait_for_lanes(
    futures: Iterable[cf.Future[LaneOutcome]], timeout: float | None
) -> tuple[set[cf.Future[LaneOutcome]], set[cf.Future[LaneOutcome]]]:
    """``cf.wait(futures, timeout, FIRST_EXCEPTION)`` in slices (see :meth:`_Stop.wait`), so
    a second signal can end the process while lanes run."""
    pending = list(futures)
    end = None if timeout is None else time.monotonic() + timeout
    while True:
        left = _SIGNAL_SLICE if end is None else min(_SIGNAL_SLICE, end - time.monotonic())
        done, waiting = cf.wait(pending, timeout=max(left, 0), return_when=cf.FIRST_EXCEPTION)
        failed = any(f.cancelled() or f.exception() is not None for f in done)
        if not waiting or failed or (end is not None and time.monotonic() >= end):
            return done, waiting


class _Stop:
    """A stop request and its reason: set from any thread, checked at bucket boundaries."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason: StopReason = "requested"

    def set(self, reason: StopReason = "requested") -> None:
        if not self.event.is_set():
            self.reason = reason
        self.event.set()

    def is_set(self) -> bool:
        return self.event.is_set()

    def wait(self, seconds: float) -> None:
        # In slices: a signal the kernel hands to another thread (the lane pool's manager
        # and feeder threads) does not interrupt a blocked wait in the main thread, and
        # Python runs signal handlers only once the main thread returns to bytecode.
        end = time.monotonic() + seconds
        while not self.event.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return
            self.event.wait(min(left, _SIGNAL_SLICE))

    def clear(self) -> None:
        self.event.clear()
        self.reason = "requested"


class _StopOnCancel(asyncio.Future[CycleResult]):
    """What :meth:`WatermarkOrchestrator.arun_cycle` awaits: ``inner``'s outcome, and a
    ``cancel()`` that sets the cycle's stop flag before it returns.

    ``Task.cancel()`` calls ``cancel()`` on the future the task waits for synchronously,
    so the worker thread sees the stop flag from that moment on. Setting it later, when
    the task handles its ``CancelledError`` at a turn of the event loop, let the worker
    commit one more bucket in between on a busy machine.
    """

    def __init__(
        self, inner: asyncio.Future[CycleResult], stop: _Stop, loop: asyncio.AbstractEventLoop
    ) -> None:
        super().__init__(loop=loop)
        self._stop = stop
        inner.add_done_callback(self._copy)

    def cancel(self, msg: Any | None = None) -> bool:
        self._stop.set("cancelled")
        return super().cancel(msg=msg)

    def _copy(self, inner: asyncio.Future[CycleResult]) -> None:
        if self.done():
            return
        if inner.cancelled():
            super().cancel()
        elif (error := inner.exception()) is not None:
            self.set_exception(error)
        else:
            self.set_result(inner.result())


@attrs.define
class _Totals:
    files: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    kept: int = 0
    shards: int = 0
    buckets: int = 0
    failures: list[FileFailure] = attrs.Factory(list)
    unchanged: int = 0
    replaced: int = 0
    shards_merged: int = 0
    shards_unchanged: int = 0


class WatermarkOrchestrator:
    """Moves a watermark over a source table, packing each day bucket it passes.

    Args:
        store: where the watermark lives.
        source: the rows to archive.
        reader: the bytes of each row's file.
        router: routing and bucket arithmetic (UTC days for :class:`~deswm.DesRouter`).
        packer: builds and publishes the shards of a bucket.
        pipeline: the watermark's name; one per source table.
        lag: only rows older than ``now - lag`` (rounded down to a bucket) are archived.
        partition: this runner's partition; with ``count > 1`` it only packs the
            shard indexes it owns and keeps its own watermark row.
        initial: where a new watermark starts (aligned down to a bucket boundary);
            default 30 days before the first run.
        on_error: ``"stop"`` (default): any failed file aborts the cycle before the
            watermark passes its bucket, raising :class:`~deswm.CycleError`.
            ``"record"``: failed files go to ``error_store`` and the rest of the bucket
            is committed, unless more than ``max_failure_ratio`` of the bucket failed.
        error_store: where ``"record"`` lists failed files (required for it).
        max_failure_ratio: the share of a bucket's files that may fail in ``"record"``
            mode before the bucket is refused (nothing committed for it).
        clock: returns the current aware time; injectable for tests.
        max_buckets: commit at most this many buckets per cycle (``None``: all).
        run_time: stop at the first bucket boundary after a cycle (or
            :meth:`run_forever`) has run this long (``None``: no limit).
        observers: hooks for metrics and progress.
        workers: lanes of the packing engine (``"auto"``: the CPUs this process may
            use). With neither ``workers`` nor ``executor`` a cycle runs in-process,
            serially (the config file and ``deswm run`` default to the engine).
        executor: where lanes run: ``"auto"``, ``"inline"``, ``"threads"``,
            ``"processes"``, ``"dask"`` (with ``scheduler``) or an executor object
            (e.g. ``client.get_executor(pure=False)``), which is never shut down here.
        scheduler: the Dask scheduler address for ``executor="dask"``.
        buckets_in_flight: buckets streamed and dispatched before the oldest commits.
        lane_batch_rows: lanes on threads or processes get their rows as they are
            routed, through a ``deswm-rows-*.stream`` file in ``spill_dir`` written in
            frames of at most this many rows (and at most 1,024): the coordinator holds
            less than ``lanes * lane_batch_rows`` rows. Lanes of Dask or a given
            executor get each bucket's rows when it is routed: the first
            ``lane_batch_rows`` per lane in memory, the rest in a ``deswm-rows-*.jsonl``
            file (0: every row in memory), about
            ``buckets_in_flight * lanes * lane_batch_rows`` rows in all.
        spill_dir: the folder of those files (default: the system temp folder).
        lane_timeout: seconds the coordinator waits for a bucket's lanes (``None``: no
            limit); past it the bucket fails with :class:`~deswm._errors.LaneError`.

        lag_guard: also keeps the target at or before the bucket in which the source's
            oldest open transaction began (``[watermark] lag_guard = "transactions"``).
        manifests: where each committed bucket's manifest is written before the
            watermark passes it (:mod:`deswm._manifest`); by default the packer's
            destination when it has one (a :class:`~deswm.DesPacker`'s
            ``manifests``), else none.
        audit_log: also append each committed bucket's archived rows there (one bulk
            insert per bucket, after its manifest); needs ``manifests``.

    The engine's pool lives across cycles: call :meth:`close` (or use a ``with`` block).
    """

    def __init__(
        self,
        store: WatermarkStore,
        source: SourceProvider,
        reader: FileReader,
        router: ShardRouter,
        packer: Packer,
        *,
        pipeline: str,
        lag: timedelta = timedelta(days=LAG_DAYS),
        partition: Partition | int = 0,
        initial: datetime | None = None,
        on_error: OnError = ON_ERROR,
        error_store: ErrorStore | None = None,
        max_failure_ratio: float = MAX_FAILURE_RATIO,
        clock: Callable[[], datetime] = utc_now,
        max_buckets: int | None = None,
        observers: tuple[CycleObserver, ...] | list[CycleObserver] = (),
        stage: str = DEFAULT_STAGE,
        run_time: timedelta | None = None,
        workers: int | Literal["auto"] | None = None,
        executor: str | cf.Executor | None = None,
        scheduler: str | None = None,
        buckets_in_flight: int = BUCKETS_IN_FLIGHT,
        lane_timeout: float | None = LANE_TIMEOUT,
        lane_batch_rows: int = LANE_BATCH_ROWS,
        spill_dir: str | os.PathLike[str] | None = None,
        lag_guard: TransactionGuard | None = None,
        manifests: ManifestRecorder | None = None,
        audit_log: AuditLog | None = None,
    ) -> None:
        if not pipeline or not isinstance(pipeline, str):
            raise ConfigError("must be a non-empty string", key="watermark.pipeline")
        if not isinstance(lag, timedelta) or lag < timedelta(0):
            raise ConfigError(
                f"must be zero or positive, got {lag!r}",
                key="watermark.lag_days",
                hint="lag is how old a file must be before it is archived, e.g. 7 days",
            )
        if on_error not in ("stop", "record"):
            raise ConfigError(f'must be "stop" or "record", got {on_error!r}', key="run.on_error")
        if on_error == "record" and error_store is None:
            raise ConfigError(
                'on_error="record" needs an error store',
                key="run.on_error",
                hint="pass error_store=SqlErrorStore(...) (the config file does this for you)",
            )
        if not 0 <= max_failure_ratio <= 1:
            raise ConfigError(
                f"must be from 0 to 1, got {max_failure_ratio}", key="run.max_failure_ratio"
            )
        if max_buckets is not None and max_buckets < 1:
            raise ConfigError(f"must be at least 1, got {max_buckets}", key="run.max_buckets")
        if run_time is not None and (
            not isinstance(run_time, timedelta) or run_time <= timedelta(0)
        ):
            raise ConfigError(f"must be a positive duration, got {run_time!r}", key="run.run_time")
        if (
            isinstance(buckets_in_flight, bool)
            or not isinstance(buckets_in_flight, int)
            or (buckets_in_flight < 1)
        ):
            raise ConfigError(
                f"must be an integer >= 1, got {buckets_in_flight!r}", key="run.buckets_in_flight"
            )
        if lane_timeout is not None and not lane_timeout > 0:
            raise ConfigError(f"must be positive, got {lane_timeout!r}", key="run.lane_timeout")
        if (
            isinstance(lane_batch_rows, bool)
            or not isinstance(lane_batch_rows, int)
            or lane_batch_rows < 0
        ):
            raise ConfigError(
                f"must be an integer >= 0 (0: no bound), got {lane_batch_rows!r}",
                key="run.lane_batch_rows",
            )
        folder = None if spill_dir is None else os.fspath(spill_dir)
        if folder is not None and not os.path.isdir(folder):
            raise ConfigError(f"{folder!r} is not an existing directory", key="archive.spill_dir")
        self.store = store
        self.source = source
        self.reader = reader
        self.router = router
        self.packer = packer
        require_day_buckets(router)
        self.partition = partition if isinstance(partition, Partition) else Partition(partition, 1)
        if self.partition.count > router.shard_count:
            raise ConfigError(
                f"{self.partition.count} partitions but only {router.shard_count} shards per day",
                key="run.partitions",
                hint="use at most as many partitions as shards (2**n_bits)",
            )
        self.key = WatermarkKey(pipeline, stage, self.partition.index)
        self.lag = lag
        self.initial = require_utc(initial, "watermark.initial") if initial is not None else None
        self.on_error = on_error
        self.error_store = error_store
        self.max_failure_ratio = max_failure_ratio
        self.clock = clock
        self.max_buckets = max_buckets
        self.run_time = run_time
        self.observers = tuple(observers)
        self.buckets_in_flight = buckets_in_flight
        self.lane_timeout = lane_timeout
        self.lane_batch_rows = lane_batch_rows
        self.spill_dir = folder
        self._lanes: LanePool | None = resolve_pool(
            executor, workers, reader=reader, packer=packer, scheduler=scheduler
        )
        self.lag_guard = lag_guard
        self.manifests = manifests if manifests is not None else _manifests_of(packer)
        if audit_log is not None and self.manifests is None:
            raise ConfigError(
                "an audit log needs manifests: its rows name their bucket's manifest",
                key="audit.url",
                hint="Use a DesPacker, or pass manifests=ManifestStore(...)",
            )
        self.audit_log = audit_log
        self._stop = _Stop()
        self._resources = contextlib.ExitStack()

    def __repr__(self) -> str:
        lanes = "" if self._lanes is None else f", lanes={self._lanes.lanes} on {self._lanes.kind}"
        return (
            f"WatermarkOrchestrator({self.key}, lag={self.lag}, "
            f"partition={self.partition.index}/{self.partition.count}{lanes})"
        )

    @property
    def lanes(self) -> LanePool | None:
        """The packing engine's pool, or None when cycles run in-process."""
        return self._lanes

    def close(self) -> None:
        """Shut the packing engine's pool down (lanes running finish first), then release
        what :meth:`close_with` registered (the engines a config built), once."""
        try:
            if self._lanes is not None:
                self._lanes.close()
        finally:
            self._resources.close()

    def close_with(self, *callbacks: Callable[[], object]) -> None:
        """Call ``callbacks`` (last first) when the orchestrator closes: for resources its
        builder created and nobody else holds, such as the engines
        :meth:`deswm.Config.build_orchestrator` made. Components passed in are never
        closed here; their owner closes them."""
        for callback in callbacks:
            self._resources.callback(callback)

    def __enter__(self) -> WatermarkOrchestrator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- positions ----------------------------------------------------------------------

    def _now(self) -> datetime:
        return require_utc(self.clock(), "clock()")

    def target(self, now: datetime | None = None) -> datetime:
        """The exclusive end of what may be archived at ``now``: ``bucket_start(now - lag)``,
        or earlier while :attr:`lag_guard` sees an older open transaction."""
        return self._target(now or self._now())[0]

    def _target(self, now: datetime) -> tuple[datetime, datetime | None]:
        """The target, and the start of the open transaction that held it back (or None)."""
        target = self.router.bucket_start(now - self.lag)
        if self.lag_guard is None:
            return target, None
        oldest = self.lag_guard.oldest_open_transaction()
        if oldest is None:
            return target, None
        guarded = self.router.bucket_start(require_utc(oldest, "oldest_open_transaction()"))
        if guarded >= target:
            return target, None
        log.info(
            "%s: target held at %s instead of %s: a transaction open on the source since %s "
            "may still commit rows from then on (watermark.lag_guard)",
            self.key,
            format_utc(guarded),
            format_utc(target),
            format_utc(oldest),
        )
        return guarded, oldest

    def initial_position(self, now: datetime | None = None) -> datetime:
        """Where a new watermark starts: ``initial`` or 30 days back, aligned down (G5)."""
        start = (
            self.initial if self.initial is not None else (now or self._now()) - DEFAULT_INITIAL_AGE
        )
        return self.router.bucket_start(start)

    def _before_start(self, position: datetime) -> PendingStats:
        """The rows older than ``position``, where a new watermark starts: one aggregate
        query. This pipeline never archives them (unless the watermark is moved back)."""
        return self.source.pending_stats(Window(_FIRST_INSTANT, position))

    def _warn_before_start(self, position: datetime, before: PendingStats) -> None:
        if not before.files:
            return
        oldest = format_utc(before.oldest) if before.oldest else "?"
        if self.initial is None:
            where = (
                f"{format_utc(position)}, {DEFAULT_INITIAL_AGE.days} days before the first "
                "run ([watermark] initial is not set)"
            )
            level = logging.WARNING
        else:
            where = f"{format_utc(position)} ([watermark] initial)"
            level = logging.INFO
        log.log(
            level,
            "%s: the new watermark starts at %s; %d row(s) older than that, the oldest from "
            "%s, are never archived by this pipeline. To archive them move the watermark "
            "back: `deswm watermark set --to %s`",
            self.key,
            where,
            before.files,
            oldest,
            format_utc(self.router.bucket_start(before.oldest)) if before.oldest else "DATE",
        )

    def _load(self, now: datetime) -> Watermark:
        watermark = self.store.get(self.key)
        if watermark is None:
            position = self.initial_position(now)
            self._warn_before_start(position, self._before_start(position))
            watermark = self.store.initialize(
                self.key,
                position,
                lag=self.lag,
                partitions=self.partition.count,
            )
        if watermark.partitions != self.partition.count:
            raise ConfigError(
                f"watermark {self.key} was created for {watermark.partitions} partition(s), "
                f"this runner is configured for {self.partition.count}",
                key="run.partitions",
                hint="changing the partition count changes which runner owns which shard; "
                "use a new pipeline name for the new layout",
            )
        return watermark

    # --- manual moves -------------------------------------------------------------------

    def set_watermark(
        self, to: datetime, *, force: bool = False, reason: str | None = None
    ) -> WatermarkMove:
        """Move the watermark to ``to`` (aligned down to its bucket start), keeping history.

        Moving back only makes the next cycle replay (safe). Without ``force`` a move
        forward (rows in between may not be archived) or beyond :meth:`target` raises
        :class:`~deswm.WatermarkMoveRefused` and writes nothing.
        """
        return self._move(require_utc(to, "to"), force, reason or "set_watermark")

    def adjust_watermark(
        self, days_offset: float, *, force: bool = False, reason: str | None = None
    ) -> WatermarkMove:
        """Move the watermark by ``days_offset`` days (negative replays); see :meth:`set_watermark`.

        Without a stored watermark the offset counts from :meth:`initial_position`.
        """
        current = self.store.get(self.key)
        base = current.position if current is not None else self.initial_position()
        return self._move(
            base + timedelta(days=days_offset), force, reason or "adjust_watermark", current
        )

    def reset_watermark(self, *, force: bool = False, reason: str | None = None) -> WatermarkMove:
        """Move the watermark back to :meth:`initial_position`; see :meth:`set_watermark`."""
        return self._move(self.initial_position(), force, reason or "reset_watermark")

    def _move(
        self,
        requested: datetime,
        force: bool,
        reason: str,
        current: Watermark | None = None,
    ) -> WatermarkMove:
        current = current if current is not None else self.store.get(self.key)
        position = self.router.bucket_start(requested)
        if not force:
            if current is not None and position > current.position:
                raise WatermarkMoveRefused(
                    f"moving {self.key} forward from {format_utc(current.position)} to "
                    f"{format_utc(position)} skips rows that may not be archived",
                    forward=True,
                    requested=requested,
                    position=position,
                )
            target = self.target()
            if position > target:
                raise WatermarkMoveRefused(
                    f"{format_utc(position)} is beyond the target {format_utc(target)}",
                    forward=False,
                    requested=requested,
                    position=position,
                )
        updated = self.store.set(self.key, position, reason=reason)
        return WatermarkMove(previous=current, requested=requested, watermark=updated)

    # --- planning -----------------------------------------------------------------------

    def plan(self) -> CyclePlan:
        """The window the next cycle would process and what it holds. Writes nothing."""
        now = self._now()
        stored = self.store.get(self.key)
        position = stored.position if stored is not None else self.initial_position(now)
        target, held_by = self._target(now)
        start = min(self.router.bucket_start(position), target)
        window = Window(start, target)
        if window.empty:
            pending = PendingStats(window, 0, 0, None, None)
        else:
            pending = self.source.pending_stats(window)
        return CyclePlan(
            key=self.key,
            watermark=position,
            target=target,
            window=window,
            pending=pending,
            initialised=stored is not None,
            delay=self.lag,
            before_start=None if stored is not None else self._before_start(position),
            held_by=held_by,
        )

    # --- running ------------------------------------------------------------------------

    def run_cycle(self) -> CycleResult:
        """Archive every complete bucket between the watermark and the target.

        Returns what was done. Raises :class:`~deswm.CycleError` when files
        failed (the watermark stays before their bucket; earlier buckets stay
        committed) and :class:`~deswm.WatermarkConflict` when another runner
        moved the watermark.
        """
        return self._run_cycle(self._stop, self._deadline())

    async def arun_cycle(self) -> CycleResult:
        """:meth:`run_cycle` for asyncio hosts, on a worker thread.

        Cancelling the task stops the cycle at the next bucket boundary (what was
        committed stays committed; no bucket is started after the cancellation) and
        then re-raises the cancellation.
        """
        stop = _Stop()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, self._run_cycle, stop, self._deadline())
        try:
            return await _StopOnCancel(future, stop, loop)
        except asyncio.CancelledError:
            stop.set("cancelled")
            with contextlib.suppress(Exception):
                await future
            raise

    def request_stop(self) -> None:
        """Ask a running cycle or :meth:`run_forever` to stop at the next bucket boundary."""
        self._stop.set("requested")

    def _deadline(self) -> float | None:
        """The ``time.monotonic()`` after which no bucket starts (``run_time``), or None."""
        if self.run_time is None:
            return None
        return time.monotonic() + self.run_time.total_seconds()

    def run_forever(
        self,
        interval: float,
        *,
        handle_signals: bool = True,
        max_cycles: int | None = None,
        max_failed_cycles: int | None = DEFAULT_MAX_FAILED_CYCLES,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
        after_cycle: Callable[[int], None] | None = None,
    ) -> StopReason:
        """Run cycles every ``interval`` seconds until SIGTERM/SIGINT or :meth:`request_stop`.

        A signal lets the current bucket finish and commit, then returns (a second one
        exits at once, see :meth:`stop_on_signals`); so does ``run_time``, counted from
        this call. A cycle that fails with a :class:`~deswm.DeswmError` (other
        than a configuration error) is logged in one line (the traceback at DEBUG) and
        tried again after an exponential backoff: ``interval`` (at least 1 s), doubled
        per failure up to ``max(max_backoff, interval)``. After ``max_failed_cycles``
        failures in a row (``None`` or 0: never) the last error is raised.

        ``after_cycle`` is called with the number of cycles done after each successful
        one, between cycles (where this runner is the only writer of its shard groups):
        the place for periodic jobs such as ``[run] reconcile_every``. A
        :class:`~deswm.DeswmError` it raises is logged and the loop goes on.

        Returns why it stopped: ``"signal"``, ``"requested"``, ``"run-time"``, or
        ``"finished"`` after ``max_cycles`` cycles.
        """
        if interval < 0:
            raise ConfigError(f"must be zero or positive, got {interval}", key="run.interval")
        if max_failed_cycles is not None and max_failed_cycles < 0:
            raise ConfigError(
                f"must be zero (never) or positive, got {max_failed_cycles}",
                key="run.max_failed_cycles",
            )
        self._stop.clear()
        deadline = self._deadline()
        signals = self.stop_on_signals() if handle_signals else contextlib.nullcontext()
        with signals:
            cycles = 0
            while not self._stop.is_set():
                if not self._cycle_with_retries(interval, max_failed_cycles, max_backoff, deadline):
                    break
                cycles += 1
                if after_cycle is not None and not self._stop.is_set():
                    try:
                        after_cycle(cycles)
                    except ConfigError:
                        raise
                    except DeswmError as exc:
                        log.error("after cycle %d: %s", cycles, _one_line(exc))
                if deadline is not None and time.monotonic() >= deadline:
                    return "run-time"
                if max_cycles is not None and cycles >= max_cycles:
                    return "finished"
                wait = interval if deadline is None else min(interval, deadline - time.monotonic())
                self._stop.wait(max(wait, 0.0))
        return self._stop.reason

    def _cycle_with_retries(
        self,
        interval: float,
        max_failed_cycles: int | None,
        max_backoff: float,
        deadline: float | None,
    ) -> bool:
        """One cycle, tried again with backoff while it fails; False if stopped meanwhile."""
        base = max(interval, 1.0)
        stop: tenacity.stop.stop_base = tenacity.stop_when_event_set(self._stop.event)
        if max_failed_cycles:
            stop = stop | tenacity.stop_after_attempt(max_failed_cycles)
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(
                lambda exc: isinstance(exc, DeswmError) and not isinstance(exc, ConfigError)
            ),
            stop=stop,
            wait=tenacity.wait_exponential(multiplier=base, max=max(max_backoff, base)),
            sleep=self._stop.wait,
            before_sleep=self._failed_cycle,
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    self._run_cycle(self._stop, deadline)
        except DeswmError as exc:
            if isinstance(exc, ConfigError) or not self._stop.is_set():
                failed = retrying.statistics.get("attempt_number", 1)
                log.error(
                    "cycle for %s failed %d time(s) in a row; giving up: %s",
                    self.key,
                    failed,
                    _one_line(exc),
                )
                raise
            return False  # stopped while failing; the failure was logged
        return True

    def _failed_cycle(self, state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        log.error(
            "cycle for %s failed (%d in a row): %s; next try in %.0f s",
            self.key,
            state.attempt_number,
            _one_line(error),
            wait,
        )
        log.debug("the failed cycle's traceback", exc_info=error)

    @contextlib.contextmanager
    def stop_on_signals(self) -> Iterator[None]:
        """While inside: SIGTERM or SIGINT stops the cycle at the next bucket boundary.

        What is published is committed and the cycle returns normally (``stopped ==
        "signal"``). A second signal raises ``SystemExit(128 + signum)`` at once (143 for
        SIGTERM, 130 for SIGINT); that is safe too, since the watermark only moves
        after a bucket is published. Outside the main thread this does nothing (Python
        delivers signals there only).
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        received: list[int] = []
        # The handler runs in the main thread between two bytecodes, possibly inside
        # Event.wait while it holds the event's lock: setting the event there would
        # deadlock. SimpleQueue.put is safe in a signal handler; a relay thread sets it.
        wakeups: queue.SimpleQueue[int | None] = queue.SimpleQueue()

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            # State first, logging after: a second signal may interrupt this handler
            # (while it writes the log line) and must see the first one counted.
            received.append(signum)
            name = signal.Signals(signum).name
            if len(received) > 1:
                log.warning("received %s again; exiting now (nothing is lost)", name)
                raise SystemExit(128 + signum)
            wakeups.put(signum)
            log.info("received %s; stopping after the current bucket", name)

        def relay() -> None:
            while wakeups.get() is not None:
                self._stop.set("signal")

        relay_thread = threading.Thread(target=relay, name="deswm-signal-relay", daemon=True)
        relay_thread.start()
        previous: dict[int, Any] = {}
        try:
            for number in (signal.SIGTERM, signal.SIGINT):
                previous[number] = signal.getsignal(number)
                signal.signal(number, on_signal)
            yield
        finally:
            for restored, handler in previous.items():
                signal.signal(restored, handler)
            wakeups.put(None)
            relay_thread.join()

    # --- the cycle ----------------------------------------------------------------------

    def _run_cycle(self, stop: _Stop, deadline: float | None) -> CycleResult:
        try:
            return self._cycle(stop, deadline)
        except Exception as exc:
            for observer in self.observers:
                observer.cycle_failed(self.key, exc)
            raise

    def _cycle(self, stop: _Stop, deadline: float | None) -> CycleResult:
        started = time.monotonic()
        now = self._now()
        watermark = self._load(now)
        target = self.target(now)
        before = watermark.position
        if before > now:
            raise WatermarkError(
                f"watermark {self.key} is at {format_utc(before)}, in the future "
                f"(now {format_utc(now)}): rows created before it would never be archived",
                hint="Set it back with `deswm watermark set --to <date>` (store.set); "
                "nothing was archived or moved",
            )
        start = self.router.bucket_start(before)
        window = Window(min(start, target), target)
        totals = _Totals()
        stopped: StopReason = "finished"
        reach(Checkpoint.CYCLE_STARTED)
        if not window.empty:
            for observer in self.observers:
                observer.cycle_started(self.key, window)
            with self._source_waits_stop(stop):
                watermark, stopped = self._archive(
                    window, before, watermark, totals, (stop, deadline), started
                )
        result = self._result(window, before, watermark, totals, started, stopped=stopped)
        log.info("cycle done: %s", result.summary(), extra=result.log_fields())
        for observer in self.observers:
            observer.cycle_finished(result)
        return result

    def _source_waits_stop(self, stop: _Stop) -> contextlib.AbstractContextManager[object]:
        """Bind ``stop`` to the source's waits between pages (its throttle), if it has any."""
        bind = getattr(self.source, "stop_waits_on", None)
        return bind(stop.event) if callable(bind) else contextlib.nullcontext()

    def _result(
        self,
        window: Window,
        before: datetime,
        watermark: Watermark,
        totals: _Totals,
        started: float,
        *,
        stopped: StopReason = "finished",
        failures: tuple[FileFailure, ...] | None = None,
    ) -> CycleResult:
        return CycleResult(
            key=self.key,
            window=window,
            watermark_before=before,
            watermark_after=watermark.position,
            files=totals.files,
            bytes_in=totals.bytes_in,
            bytes_out=totals.bytes_out,
            kept=totals.kept,
            shards_written=totals.shards,
            buckets_committed=totals.buckets,
            failures=tuple(totals.failures) if failures is None else failures,
            duration=timedelta(seconds=time.monotonic() - started),
            stopped=stopped,
            unchanged=totals.unchanged,
            replaced=totals.replaced,
            shards_merged=totals.shards_merged,
            shards_unchanged=totals.shards_unchanged,
        )

    def _owned(self, window: Window) -> Generator[SourceRecord, None, None]:
        """The window's rows this partition owns, checked for order and bounds."""
        router, partition = self.router, self.partition
        whole = partition.count == 1
        if not whole and isinstance(self.source, PartitionedSource):
            # The source narrows the read; the owns() check below stays the guarantee.
            rows = self.source.iter_partition_records(window, router, partition)
        else:
            rows = self.source.iter_records(window)
        # Per row, so in locals: this loop is part of what bounds one coordinator.
        last, end, zero = window.start, window.end, _ZERO
        with source_rows(rows) as records:
            for record in records:
                created_at = record.created_at
                if not isinstance(created_at, datetime) or created_at.utcoffset() != zero:
                    raise SourceError(
                        f"source returned created_at {created_at!r} for uid {record.uid!r}, "
                        "which is not aware UTC",
                        hint="SourceProvider.iter_records must return aware UTC datetimes",
                    )
                if not last <= created_at < end:
                    raise SourceError(
                        f"source returned uid {record.uid!r} at {format_utc(created_at)} out of "
                        f"order or outside window {window}",
                        hint="SourceProvider.iter_records must return the window's rows ordered "
                        "by (created_at, uid)",
                    )
                last = created_at
                if whole or partition.owns(router.shard_index(record.uid)):
                    yield record

    def _archive(
        self,
        window: Window,
        before: datetime,
        watermark: Watermark,
        totals: _Totals,
        until: tuple[_Stop, float | None],
        started: float,
    ) -> tuple[Watermark, StopReason]:
        """Stream the window bucket by bucket; return the last watermark and why it ended."""
        if self._lanes is not None:
            return self._archive_in_lanes(
                self._lanes, window, before, watermark, totals, until, started
            )
        owned = self._owned(window)
        rows = _RowCounter(owned, self.router, digest=self.manifests is not None)
        results = self.reader.read_many(rows)
        accounted = 0  # rows of committed buckets: archived, kept or listed
        try:
            with contextlib.closing(_ClosingIterator(results)) as items:
                pending = next(items, None)
                if pending is None:
                    self._check_count(rows, window.end, accounted, None, None)
                while pending is not None:
                    stopped = self._stop_reason(until, totals.buckets)
                    if stopped is not None:
                        return watermark, stopped
                    bucket = self.router.bucket_start(pending[0].created_at)
                    outcome = self._pack_bucket(bucket, pending, items, totals)
                    pending = outcome.next_item
                    if outcome.result is None:
                        partial = self._result(
                            window, before, watermark, totals, started, failures=outcome.failures
                        )
                        raise CycleError(
                            outcome.failures,
                            bucket=format_utc(bucket),
                            result=partial,
                            reason=outcome.reason,
                        )
                    end = (
                        window.end
                        if pending is None
                        else self.router.bucket_start(pending[0].created_at)
                    )
                    accounted += outcome.accounted
                    watermark = self._commit(
                        rows, bucket, end, accounted, outcome, watermark, totals
                    )
                if watermark.position < window.end:
                    # The rest of the window holds no rows for this partition.
                    watermark = self.store.advance(watermark, window.end)
        except WaitInterrupted:
            # A stop while the source waited between pages (a replica pause): the
            # bucket being read was not published; the last commit stands.
            return watermark, until[0].reason
        finally:
            # A cycle that stops early (max_buckets, a deadline, an error) ends the
            # source's read now, not when a garbage collection finds the generator:
            # an open stream holds a snapshot and a lock on the production table.
            owned.close()
        return watermark, "finished"

    def _commit(
        self,
        rows: _RowCounter,
        bucket: datetime,
        end: datetime,
        accounted: int,
        outcome: _Outcome,
        watermark: Watermark,
        totals: _Totals,
    ) -> Watermark:
        """Move the watermark past a published bucket to ``end`` (both paths, in order).

        ``outcome.result`` is the bucket's whole result (every lane's part merged).
        """
        assert outcome.result is not None
        self._check_count(rows, end, accounted, bucket, outcome)
        if outcome.failures:
            # Listed before the watermark passes them: archived or listed (G1).
            self._error_store().record(self.key, outcome.failures)
            totals.failures.extend(outcome.failures)
        reach(Checkpoint.BUCKET_AFTER_PUBLISH)
        self._record_manifest(bucket, outcome, rows)
        reach(Checkpoint.BUCKET_AFTER_MANIFEST)
        watermark = self.store.advance(watermark, end)
        reach(Checkpoint.BUCKET_AFTER_COMMIT)
        self._committed(bucket, outcome.result, watermark, totals)
        return watermark

    # --- the packing engine -------------------------------------------------------------

    def _archive_in_lanes(
        self,
        pool: LanePool,
        window: Window,
        before: datetime,
        watermark: Watermark,
        totals: _Totals,
        until: tuple[_Stop, float | None],
        started: float,
    ) -> tuple[Watermark, StopReason]:
        """:meth:`_archive` on lanes: stream the window once, route each row to lane
        ``shard_index % lanes``, keep at most ``buckets_in_flight`` buckets on lanes,
        commit strictly in bucket order.

        Lanes on this machine (threads, processes) start with their first row of a bucket
        and read the rest as it is routed (:class:`LaneStream`); lanes that may run
        elsewhere get their whole batch once the bucket is routed."""
        if pool.start() and pool.local:
            remove_orphans(self.spill_dir)  # of a coordinator killed on this host
        owned = self._owned(window)
        # The lanes digest their own rows for the manifests (put back in _settle).
        rows = _RowCounter(owned, self.router)
        flight: deque[_InFlight] = deque()
        state = _LaneState(watermark)
        stopped: StopReason = "finished"
        shard_index, lanes = self.router.shard_index, pool.lanes
        routing: _InFlight | None = None  # the bucket being routed
        batches: list[LaneRows | None] = []
        bucket_end = window.start
        dispatched = 0
        try:
            try:
                for record in rows:
                    if routing is None or record.created_at >= bucket_end:
                        if routing is not None:
                            flight.append(self._routed(pool, routing))
                            dispatched += 1
                            routing = None
                        bucket = self.router.bucket_start(record.created_at)
                        if flight:
                            flight[-1].end = bucket
                        while len(flight) >= self.buckets_in_flight:
                            self._settle(pool, flight, rows, state, totals, window, before, started)
                        reason = self._stop_reason(until, dispatched)
                        if reason is not None:
                            stopped = reason
                            break
                        bucket_end = self.router.next_bucket(bucket)
                        batches = [None] * lanes
                        routing = _InFlight(bucket, None, {}, batches)
                    lane = shard_index(record.uid) % lanes
                    batch = batches[lane]
                    if batch is None:
                        batch = batches[lane] = self._lane_rows(pool, routing, lane)
                    batch.add(record)
                    if not batch.in_memory and _a_lane_failed(routing):
                        # A stream's frame was written and a lane of this bucket has
                        # already failed: stop routing it. The buckets before it commit
                        # first, its other lanes stop, and the lane's error is raised.
                        while flight:
                            self._settle(pool, flight, rows, state, totals, window, before, started)
                        _discard(routing.batches)
                        flight.append(routing)
                        routing = None
                        self._collect(pool, flight)
                else:
                    if routing is not None:
                        flight.append(self._routed(pool, routing))
                        flight[-1].end = window.end
                        routing = None
                    elif not flight:
                        self._check_count(rows, window.end, 0, None, None)
            except WaitInterrupted:
                # A stop while the source waited between pages (a replica pause): the
                # bucket being routed is abandoned (its lanes publish nothing); those in
                # flight still commit.
                stopped = until[0].reason
                if routing is not None:
                    self._abandon(pool, routing)
                    routing = None
            while flight:
                self._settle(pool, flight, rows, state, totals, window, before, started)
        except BaseException as exc:
            # Nothing of a failed cycle may still write when the next one starts (G7). On
            # SystemExit/KeyboardInterrupt (a second signal) do not wait for lanes:
            # processes are killed, threads are waited for before any new lane starts.
            urgent = not isinstance(exc, Exception)
            if routing is not None:
                _discard(routing.batches)  # its streaming lanes stop, publishing nothing
                flight.append(routing)
            pool.fail([f for item in flight for f in item.futures.values()], hung=urgent)
            raise
        finally:
            owned.close()
            # Spill files of buckets not committed (a stop, a failure); no-ops otherwise.
            _discard(*(item.batches for item in flight))
        watermark = state.watermark
        if stopped == "finished" and watermark.position < window.end:
            # The rest of the window holds no rows for this partition.
            watermark = self.store.advance(watermark, window.end)
        return watermark, stopped

    def _lane_rows(self, pool: LanePool, routing: _InFlight, lane: int) -> LaneRows:
        """The rows of ``lane`` in the bucket being routed: a stream whose lane starts now
        (lanes on this machine), or a batch dispatched when the bucket is routed."""
        if not pool.local:
            return LaneBatch(self.lane_batch_rows, self.spill_dir)
        stream = LaneStream(self.spill_dir, min(STREAM_CHUNK, self.lane_batch_rows or STREAM_CHUNK))
        if not routing.futures:
            # No object of this bucket is published before this point (its lanes publish).
            reach(Checkpoint.BUCKET_BEFORE_PUBLISH)
        routing.futures[lane] = pool.submit(pack_lane, self._lane_job(routing, lane, stream))
        return stream

    def _lane_job(self, item: _InFlight, lane: int, rows: LaneRows) -> LaneJob:
        return LaneJob(
            item.bucket,
            lane,
            len(item.batches),
            self.reader,
            self.packer,
            self.on_error,
            rows,
            audit=self.audit_log is not None,
            digest=self.manifests is not None,
        )

    def _routed(self, pool: LanePool, item: _InFlight) -> _InFlight:
        """Every row of ``item``'s bucket is routed: end its lanes' streams, or dispatch
        its batches to lanes."""
        routed = sum(len(rows) for rows in item.batches if rows is not None)
        streams = [rows for rows in item.batches if isinstance(rows, LaneStream)]
        for stream in streams:
            stream.seal()
        if streams:
            log.debug(
                "bucket %s: %d row(s) streamed to %d lane(s) in frames of up to %d rows "
                "(run.lane_batch_rows=%d)",
                item.bucket.date().isoformat(),
                routed,
                len(streams),
                streams[0].chunk,
                self.lane_batch_rows,
            )
        batches = [rows for rows in item.batches if isinstance(rows, LaneBatch)]
        for batch in batches:
            # Lanes that may not see this machine's files get the spilled rows inline.
            batch.seal(portable=not pool.local)
        spilled = sum(batch.spilled for batch in batches)
        if spilled:
            log.debug(
                "bucket %s: %d of %d row(s) spilled past run.lane_batch_rows=%d",
                item.bucket.date().isoformat(),
                spilled,
                routed,
                self.lane_batch_rows,
            )
        if batches:
            # No object of this bucket is published before this point (its lanes publish).
            reach(Checkpoint.BUCKET_BEFORE_PUBLISH)
            for lane, rows in enumerate(item.batches):
                if isinstance(rows, LaneBatch):
                    item.futures[lane] = pool.submit(pack_lane, self._lane_job(item, lane, rows))
        return item

    def _abandon(self, pool: LanePool, item: _InFlight) -> None:
        """Drop the bucket being routed: its streaming lanes stop without publishing, and
        are waited for (one writer per object, G7)."""
        _discard(item.batches)
        running = [f for f in item.futures.values() if not f.cancel()]
        _, waiting = cf.wait(running, timeout=self.lane_timeout)
        if waiting:
            pool.fail(waiting, hung=True)

    def _settle(
        self,
        pool: LanePool,
        flight: deque[_InFlight],
        rows: _RowCounter,
        state: _LaneState,
        totals: _Totals,
        window: Window,
        before: datetime,
        started: float,
    ) -> None:
        """Wait for the oldest bucket's lanes, merge their parts, commit or refuse it."""
        item = flight[0]
        outcomes = self._collect(pool, flight)
        flight.popleft()
        _discard(item.batches)  # its lanes are done (they removed their files already)
        for lane in outcomes:
            totals.files += lane.files
            totals.bytes_in += lane.bytes_in
            for observer in self.observers:
                observer.files_done(self.key, item.bucket, lane.files, lane.bytes_in)
        failures = tuple(f for o in outcomes for f in o.failures)
        kept = sum(o.kept for o in outcomes)
        seen = sum(o.seen for o in outcomes)
        totals.kept += kept
        reason = self._refusal(list(failures), seen)
        parts = [o.result for o in outcomes if o.result is not None]
        if reason is None and len(parts) < len(outcomes):
            reason = 'on_error="stop"'  # a lane aborted: the bucket is not whole
        if reason is not None:
            partial = self._result(
                window, before, state.watermark, totals, started, failures=failures
            )
            raise CycleError(
                failures, bucket=format_utc(item.bucket), result=partial, reason=reason
            )
        archived = tuple(row for o in outcomes for row in o.archived)
        if self.manifests is not None:
            digest = RowDigest.combined(o.digest or (0, 0) for o in outcomes)
            if digest.count != rows.of(item.bucket):  # a reader that skipped rows unread
                raise RowCountError(
                    format_utc(item.bucket),
                    key=self.key,
                    returned=rows.of(item.bucket),
                    accounted=f"its lanes' readers took {digest.count}",
                )
            rows.put_digest(item.bucket, digest)
        outcome = _Outcome(None, failures, merge_results(item.bucket, parts), None, kept, archived)
        end = item.end
        assert end is not None  # known once the next bucket's first row (or the end) arrived
        state.accounted += outcome.accounted
        state.watermark = self._commit(
            rows, item.bucket, end, state.accounted, outcome, state.watermark, totals
        )

    def _collect(self, pool: LanePool, flight: deque[_InFlight]) -> list[LaneOutcome]:
        """The oldest bucket's lane outcomes in lane order, or a typed error once every
        lane in flight has stopped."""
        item = flight[0]
        day = item.bucket.date().isoformat()
        lanes = pool.lanes
        done, waiting = _wait_for_lanes(item.futures.values(), self.lane_timeout)
        everything = [f for entry in flight for f in entry.futures.values()]
        abandoned = [entry.batches for entry in flight]
        # A lane's own failure, not that of a lane stopped because of it.
        failed = min(
            (f for f in done if f.cancelled() or f.exception() is not None),
            key=_stopped_by_the_coordinator,
            default=None,
        )
        if waiting or failed is not None:
            flight.clear()  # handled here: the caller must not wait for them again
        if waiting and failed is None:
            lane = next(n for n, f in item.futures.items() if f in waiting)
            pool.fail(everything, hung=True)
            _discard(*abandoned)
            raise LaneError(day, lane, lanes, f"ran past run.lane_timeout={self.lane_timeout:g}s")
        if failed is not None:
            lane = next(n for n, f in item.futures.items() if f is failed)
            error = cf.CancelledError() if failed.cancelled() else failed.exception()
            pool.fail(everything, hung=False, broken=isinstance(error, cf.BrokenExecutor))
            _discard(*abandoned)
            if isinstance(error, LaneError):
                raise error
            if isinstance(error, DeswmError):
                error.add_note(f"raised in lane {lane} of {lanes}, bucket {day}")
                raise error
            raise LaneError(day, lane, lanes, _one_line(error)) from error
        return [item.futures[lane].result() for lane in sorted(item.futures)]

    def _record_manifest(self, bucket: datetime, outcome: _Outcome, rows: _RowCounter) -> None:
        """Write the bucket's manifest (published parts and the rows counted), and its
        audit rows, before the watermark passes it, so every committed bucket has one."""
        if self.manifests is None or outcome.result is None:
            return
        manifest = self.manifests.record(
            bucket,
            self.partition,
            self.key.pipeline,
            rows.digest(bucket),
            len(outcome.failures),
            outcome.result.shards + outcome.result.checked,
        )
        if self.audit_log is not None:
            self.audit_log.record(manifest, outcome.archived, self._now())

    def _stop_reason(self, until: tuple[_Stop, float | None], buckets: int) -> StopReason | None:
        """Why no further bucket may start now, or None (checked at each bucket boundary).

        ``buckets``: the buckets started so far (committed or in flight)."""
        stop, deadline = until
        if stop.is_set():
            return stop.reason
        if self.max_buckets is not None and buckets >= self.max_buckets:
            return "max-buckets"
        if deadline is not None and time.monotonic() >= deadline:
            return "run-time"
        return None

    def _check_count(
        self,
        rows: _RowCounter,
        end: datetime,
        accounted: int,
        bucket: datetime | None,
        outcome: _Outcome | None,
    ) -> None:
        """Before the watermark moves to ``end``: every row the window query returned
        below ``end`` for this partition was archived, kept or listed.

        Rows are counted as the reader pulls them; once it has handed over a row at or
        after ``end`` (or ended: then the query is drained here), every row below
        ``end`` has been counted. A reader or packer that loses a row without an error
        (or a whole bucket) shows up as a difference, and nothing is committed.
        """
        if not rows.counted_below(end):
            rows.drain()
        returned = rows.below(end)
        if returned == accounted:
            return
        if bucket is not None and outcome is not None and outcome.result is not None:
            own = rows.of(bucket)
            where = format_utc(bucket)
            detail = (
                f"{outcome.result.files} archived + {outcome.kept} kept (archived before) + "
                f"{len(outcome.failures)} listed = {outcome.accounted} were accounted for"
            )
            if own == outcome.accounted:  # this bucket adds up: a whole bucket went missing
                skipped = ", ".join(format_utc(b) for b in rows.buckets_between(bucket, end))
                detail = f"rows of bucket(s) {skipped} were never packed"
                returned = rows.below(end) - rows.below(bucket)
            else:
                returned = own
        else:
            where = f"{format_utc(rows.first_bucket() or end)}..{format_utc(end)}"
            detail = "the reader returned none of them"
        raise RowCountError(where, key=self.key, returned=returned, accounted=detail)

    def _committed(
        self, bucket: datetime, result: BucketResult, watermark: Watermark, totals: _Totals
    ) -> None:
        totals.buckets += 1
        totals.shards += len(result.shards)
        totals.bytes_out += result.bytes_out
        totals.unchanged += result.unchanged
        totals.replaced += result.replaced
        totals.shards_merged += sum(1 for shard in result.shards if shard.merged)
        totals.shards_unchanged += result.shards_unchanged
        log.info(
            "committed %s bucket %s: %d files (%d unchanged), %d shards, %d -> %d bytes; "
            "watermark -> %s",
            self.key,
            bucket.date().isoformat(),
            result.files,
            result.unchanged,
            len(result.shards),
            result.bytes_in,
            result.bytes_out,
            format_utc(watermark.position),
            extra={
                "event": "bucket_committed",
                "pipeline": self.key.pipeline,
                "partition": self.key.partition,
                "bucket": bucket.date().isoformat(),
                "files": result.files,
                "unchanged": result.unchanged,
                "bytes": result.bytes_in,
                "bytes_out": result.bytes_out,
                "shards": len(result.shards),
                "watermark": format_utc(watermark.position),
            },
        )
        for observer in self.observers:
            observer.bucket_committed(self.key, result, watermark)

    def _pack_bucket(
        self,
        bucket: datetime,
        first: ReadResult,
        items: Iterator[ReadResult],
        totals: _Totals,
    ) -> _Outcome:
        """Pack one bucket: publish it, or abort it when files failed and may not be skipped."""
        failures: list[FileFailure] = []
        bucket_end = self.router.next_bucket(bucket)
        item: ReadResult | None = first
        seen = kept = 0
        archived: list[tuple[str, datetime]] | None = [] if self.audit_log is not None else None
        with self.packer.open_bucket(bucket) as writer:
            while item is not None:
                record, data = item
                if record.created_at >= bucket_end:
                    break
                seen += 1
                if isinstance(data, FileReadError):
                    if isinstance(data, FileMissingError) and writer.archived(record) is not None:
                        kept += 1
                        totals.kept += 1
                        if archived is not None:
                            archived.append((uid_text(record.uid), record.created_at))
                    else:
                        failures.append(FileFailure.from_exception(record, "read", data))
                else:
                    try:
                        writer.add(record, data)
                    except DuplicateUidError as exc:
                        if self.on_error == "stop":
                            raise
                        failures.append(FileFailure.from_exception(record, "pack", exc))
                    else:
                        if archived is not None:
                            archived.append((uid_text(record.uid), record.created_at))
                        totals.files += 1
                        totals.bytes_in += len(data)
                        for observer in self.observers:
                            observer.file_done(record, len(data))
                item = next(items, None)
            reason = self._refusal(failures, seen)
            if reason is not None:
                writer.abort()
                return _Outcome(item, tuple(failures), None, reason, kept)
            reach(Checkpoint.BUCKET_BEFORE_PUBLISH)
            return _Outcome(
                item, tuple(failures), writer.publish(), None, kept, tuple(archived or ())
            )

    def _refusal(self, failures: list[FileFailure], seen: int) -> str | None:
        """Why the bucket must not be committed with these failures, or ``None``."""
        if not failures:
            return None
        if self.on_error == "stop":
            return 'on_error="stop"'
        ratio = len(failures) / seen
        if ratio > self.max_failure_ratio:
            return (
                f"{len(failures)} of {seen} files failed ({ratio:.1%}), more than "
                f"run.max_failure_ratio={self.max_failure_ratio:.1%}"
            )
        return None

    def _error_store(self) -> ErrorStore:
        if self.error_store is None:  # guarded in __init__; kept for type narrowing
            raise ConfigError('on_error="record" needs an error store', key="run.on_error")
        return self.error_store

    # --- retrying recorded failures ------------------------------------------------------

    def retry_errors(
        self, *, limit: int | None = None, progress: Callable[[int], None] | None = None
    ) -> RetryResult:
        """Read recorded failures again and merge the files that now work into their shards.

        Each day is merged into what is already published (G3: nothing is dropped); a
        retried file that succeeds leaves the error table, one that fails again counts
        another attempt. Run it where the cycles of this partition run (one writer per
        shard group), e.g. between cycles. ``progress`` is called with each day's number
        of files once the day is merged.

        Raises :class:`~deswm._errors.ConfigError` when the orchestrator has no error
        store (with ``on_error="stop"`` nothing is recorded, so pass the store the
        recording runs used).
        """
        if self.error_store is None:
            raise ConfigError(
                "retry_errors() reads the failures recorded in an error store, and this "
                'orchestrator has none (on_error="stop" records nothing)',
                key="error_store",
                hint='Pass error_store= the store the runs with on_error="record" wrote to '
                "(SqlErrorStore(engine) for [run] error_table)",
            )
        store = self.error_store
        started = time.monotonic()
        recorded = store.list(self.key, limit=limit)
        by_bucket: dict[datetime, list[SourceRecord]] = {}
        for entry in recorded:
            record = entry.record
            by_bucket.setdefault(self.router.bucket_start(record.created_at), []).append(record)
        archived = shards = 0
        still: list[FileFailure] = []
        for bucket in sorted(by_bucket):
            done, failed, written = self._retry_bucket(bucket, by_bucket[bucket])
            store.resolve(self.key, done)
            store.record(self.key, failed)
            archived += len(done)
            shards += written
            still.extend(failed)
            if progress is not None:
                progress(len(by_bucket[bucket]))
        result = RetryResult(
            key=self.key,
            attempted=len(recorded),
            archived=archived,
            failures=tuple(still),
            shards_written=shards,
            duration=timedelta(seconds=time.monotonic() - started),
        )
        log.info(
            "retried %d recorded failure(s) of %s: %d archived, %d still failing",
            result.attempted,
            self.key,
            result.archived,
            len(result.failures),
        )
        return result

    def _retry_bucket(
        self, bucket: datetime, records: list[SourceRecord]
    ) -> tuple[list[SourceRecord], list[FileFailure], int]:
        done, failed, shards = self.merge_bucket(bucket, records)
        if self.manifests is not None and done:  # fewer listed; maybe new parts
            self.manifests.refresh(bucket, self.partition, shards, len(done))
        return done, failed, len(shards)

    def merge_bucket(
        self,
        bucket: datetime,
        records: Sequence[SourceRecord],
        *,
        revisit: Sequence[int] = (),
        all_or_nothing: bool = False,
    ) -> tuple[list[SourceRecord], list[FileFailure], tuple[PublishedShard, ...]]:
        """Read ``records`` (rows of one committed bucket) and merge them into its published
        shards: the one merge path of ``errors retry`` and ``reconcile --repair``.

        Returns the records archived (or found archived already), the failures, and the
        parts written. Nothing is dropped (G3) and the groups come out as a clean run
        over their entries lays them out (see :mod:`deswm._planner`). ``revisit``: group
        indexes to lay out again even without a new file (finishes a merge a crash
        interrupted). ``all_or_nothing``: publish nothing when any record fails.
        """
        done: list[SourceRecord] = []
        failed: list[FileFailure] = []
        shards: tuple[PublishedShard, ...] = ()
        added = False
        with self.packer.open_bucket(bucket) as writer:
            for record, data in self.reader.read_many(records):
                if isinstance(data, FileReadError):
                    if isinstance(data, FileMissingError) and writer.archived(record) is not None:
                        done.append(record)  # archived meanwhile, e.g. by a replay
                    else:
                        failed.append(FileFailure.from_exception(record, "read", data))
                    continue
                try:
                    writer.add(record, data)
                except DuplicateUidError as exc:
                    failed.append(FileFailure.from_exception(record, "pack", exc))
                    continue
                done.append(record)
                added = True
            touch = getattr(writer, "revisit", None)
            if callable(touch):
                for index in revisit:
                    touch(index)
            if (failed and all_or_nothing) or not (added or revisit):
                writer.abort()
            else:
                shards = writer.publish().shards
        return done, failed, shards


def _a_lane_failed(item: _InFlight) -> bool:
    """Whether a lane of ``item`` has already ended in an error (its future is done)."""
    return any(
        f.done() and (f.cancelled() or f.exception() is not None) for f in item.futures.values()
    )


def _stopped_by_the_coordinator(future: cf.Future[LaneOutcome]) -> bool:
    """Whether a failed lane ended because the coordinator abandoned its rows."""
    error = None if future.cancelled() else future.exception()
    return isinstance(error, LaneError) and error.reason.startswith(StreamAbandoned.__name__)


def _discard(*groups: Iterable[LaneRows | None]) -> None:
    """Remove the spill files of these lanes' rows (of an abandoned or settled bucket); a
    stream not yet sealed is abandoned: its lane stops without publishing."""
    for group in groups:
        for batch in group:
            if batch is not None:
                batch.discard()


def _manifests_of(packer: Packer) -> ManifestRecorder | None:
    """The manifests a packer keeps beside its shards (``DesPacker.manifests``), if any."""
    found = getattr(packer, "manifests", None)
    return found if callable(getattr(found, "record", None)) else None


def _one_line(error: BaseException | None) -> str:
    """``Type: message`` of ``error`` on one line (the log line of a failed cycle)."""
    if error is None:
        return "unknown error"
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}"


@attrs.frozen
class _Outcome:
    next_item: ReadResult | None
    failures: tuple[FileFailure, ...]
    result: BucketResult | None
    """``None`` when the bucket was aborted (see ``reason``)."""
    reason: str | None
    kept: int = 0
    """Rows whose file is gone but whose entry is published (archived before)."""
    archived: tuple[tuple[str, datetime], ...] = ()
    """``(uid, created_at)`` of the rows archived or kept (only kept for an audit log)."""

    @property
    def accounted(self) -> int:
        """Rows of the bucket archived, kept or listed, as the packer reports them."""
        files = self.result.files if self.result is not None else 0
        return files + self.kept + len(self.failures)


@attrs.define
class _InFlight:
    """A bucket dispatched to its lanes, not yet committed."""

    bucket: datetime
    end: datetime | None
    """Where the watermark moves once it commits: the next bucket with rows (or the
    window's end); ``None`` until the coordinator has seen that row."""
    futures: dict[int, cf.Future[LaneOutcome]]
    batches: list[LaneRows | None]
    """Each lane's rows, ``None`` for a lane without any (their spill files are removed
    once the bucket settles or fails)."""


@attrs.define
class _LaneState:
    watermark: Watermark
    accounted: int = 0
    """Rows of committed buckets: archived, kept or listed."""


class _RowCounter(Iterator[SourceRecord]):
    """The window's rows on their way to the reader, counted per bucket.

    Rows arrive ordered by ``created_at``, so a bucket is only computed when a row
    passes the current bucket's end. The reader may pull rows on its own thread; counts
    are only read for buckets the reader has already passed.
    """

    def __init__(
        self, rows: Iterator[SourceRecord], router: ShardRouter, *, digest: bool = False
    ) -> None:
        self._rows = rows
        self._router = router
        self._counts: dict[datetime, int] = {}
        self._digesting = digest
        self._digests: dict[datetime, RowDigest] = {}
        self._bucket: datetime | None = None
        self._end: datetime | None = None
        self._done = False

    def __next__(self) -> SourceRecord:
        try:
            record = next(self._rows)
        except StopIteration:
            self._done = True
            raise
        created_at = record.created_at
        if self._end is None or created_at >= self._end:
            self._bucket = self._router.bucket_start(created_at)
            self._end = self._router.next_bucket(self._bucket)
        bucket = self._bucket
        assert bucket is not None
        self._counts[bucket] = self._counts.get(bucket, 0) + 1
        if self._digesting:
            digest = self._digests.get(bucket)
            if digest is None:
                digest = self._digests[bucket] = RowDigest()
            digest.add(uid_text(record.uid), created_at)
        return record

    def counted_below(self, end: datetime) -> bool:
        """Whether every row below ``end`` (a bucket boundary) has been counted."""
        return self._done or (self._bucket is not None and self._bucket >= end)

    def drain(self) -> None:
        """Count the rows nobody pulled (a reader that ended early)."""
        for _ in self:
            pass

    def below(self, end: datetime) -> int:
        return sum(count for bucket, count in list(self._counts.items()) if bucket < end)

    def of(self, bucket: datetime) -> int:
        return self._counts.get(bucket, 0)

    def digest(self, bucket: datetime) -> RowDigest:
        """The count and digest of the bucket's rows (kept with ``digest=True``, or put)."""
        found = self._digests.get(bucket)
        if found is not None:
            return found
        if not self._digesting:
            raise ValueError(f"no digest of bucket {format_utc(bucket)} was kept or put")
        return RowDigest()

    def put_digest(self, bucket: datetime, digest: RowDigest) -> None:
        """The bucket's digest as its lanes computed it (the engine's path)."""
        self._digests[bucket] = digest

    def first_bucket(self) -> datetime | None:
        return min(self._counts, default=None)

    def buckets_between(self, after: datetime, end: datetime) -> list[datetime]:
        return sorted(b for b in list(self._counts) if after < b < end)


class _ClosingIterator(Iterator[ReadResult]):
    """Wraps the reader's iterator so leaving a cycle early shuts its threads down."""

    def __init__(self, inner: Iterator[ReadResult]) -> None:
        self._inner = inner

    def __next__(self) -> ReadResult:
        return next(self._inner)

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()


_publish(globals())
