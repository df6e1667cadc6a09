"""Reusable assertions of deswm's guarantees, for your components as much as for ours.

* :func:`assert_no_loss` (G1): every source row below the committed watermark reads back
  from the archive with the bytes of its file, or is listed in the error table.
* :func:`assert_idempotent_replay` (G1, G2, G4, G5): put a pipeline through a schedule of
  interrupted cycles and rewinds, and check after every step that nothing below the
  watermark is lost, and at the end that the archive is byte-identical to a clean run's.

They take what a test has in hand: your :class:`~deswm.SourceProvider` (a
``SqlSourceProvider`` subclass with a tenant filter, a from-scratch provider), the
``FileReader`` or a ``{location: bytes}`` mapping for the expected bytes, and a function
that builds your orchestrator. They raise ``AssertionError`` with a message that names
each row or object at fault, so they work in pytest, unittest and hypothesis alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, NamedTuple, Protocol

import attrs

from deswm._errors import DeswmError, FileMissingError, FileReadError, NotArchivedError
from deswm._model import SourceRecord, WatermarkKey, Window
from deswm._orchestrator import WatermarkOrchestrator
from deswm._packer import DesPacker
from deswm._protocols import ErrorStore, FileReader, SourceProvider, WatermarkStore
from deswm._timeutil import format_utc
from deswm.testing._error_store import MemoryErrorStore
from deswm.testing._packers import archive_for, clear_destination, memory_packer, snapshot
from deswm.testing._schedules import Cycle, Rewind, Step
from deswm.testing._stores import MemoryWatermarkStore

__all__ = [
    "BuildOrchestrator",
    "Contents",
    "ReadsBack",
    "ReplayReport",
    "ReplayWorld",
    "StepOutcome",
    "assert_idempotent_replay",
    "assert_no_loss",
]

Contents = Mapping[str, bytes] | FileReader
"""The expected bytes of each location: a mapping, or the reader the pipeline reads with."""

_SHOWN = 20


class ReadsBack(Protocol):
    """What :func:`assert_no_loss` needs from the read side (``deswm.Archive`` has it)."""

    def get(self, uid: str, created_at: datetime) -> bytes: ...


def assert_no_loss(
    source: SourceProvider,
    archive: ReadsBack | DesPacker,
    store: WatermarkStore,
    key: WatermarkKey,
    contents: Contents,
    *,
    since: datetime,
    owns: Callable[[SourceRecord], bool] | None = None,
    errors: ErrorStore | None = None,
) -> int:
    """Check G1: every row in ``[since, watermark)`` reads back with its file's bytes.

    Args:
        source: the provider whose rows the pipeline archives (yours, subclass or not).
        archive: an :class:`~deswm.Archive` (or anything with ``get``), or the
            :class:`~deswm.DesPacker` that wrote it.
        store, key: the watermark to check below; no watermark means nothing to check.
        contents: the expected bytes by location, or a ``FileReader`` to read them from.
            Through a reader, a file that is gone (purged) cannot be compared: the row
            must still read back, and its checksum is verified by the archive.
        since: where the pipeline started (``orchestrator.initial_position()``); rows
            before it were never meant to be archived.
        owns: for a partitioned runner, which rows are its own.
        errors: the error table of ``on_error="record"``: rows listed there for ``key``
            may be missing from the archive (G1's "or is listed in the error table").

    Returns the number of rows checked. Raises ``AssertionError`` naming every row that
    is missing, corrupt or different (the first 20), with its uid, created_at and
    location.
    """
    watermark = store.get(key)
    if watermark is None or watermark.position <= since:
        return 0
    reader = archive_for(archive) if isinstance(archive, DesPacker) else archive
    excused = set()
    if errors is not None:
        excused = {(f.failure.uid, f.failure.created_at) for f in errors.list(key)}
    window = Window(since, watermark.position)
    checked = 0
    problems: list[str] = []
    for record in source.iter_records(window):
        if owns is not None and not owns(record):
            continue
        checked += 1
        problem = _check_row(record, reader, contents)
        if problem is not None and (record.uid, record.created_at) not in excused:
            problems.append(f"{_row(record)}: {problem}")
    if problems:
        shown = "\n  ".join(problems[:_SHOWN])
        more = f"\n  ... and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
        raise AssertionError(
            f"G1 violated: {len(problems)} of {checked} rows below watermark {key} at "
            f"{format_utc(watermark.position)} (window {window}) cannot be read back:\n"
            f"  {shown}{more}"
        )
    return checked


def _row(record: SourceRecord) -> str:
    return f"uid {record.uid!r} created_at {format_utc(record.created_at)} ({record.location})"


def _check_row(record: SourceRecord, archive: ReadsBack, contents: Contents) -> str | None:
    expected: bytes | None
    if isinstance(contents, Mapping):
        if record.location not in contents:
            return "the test's contents have no bytes for this location"
        expected = contents[record.location]
    else:
        try:
            expected = contents.read(record.location)
        except FileMissingError:
            expected = None  # purged: only that it reads back can be checked
        except FileReadError as exc:
            return f"cannot read the expected bytes from the source: {exc}"
    try:
        got = archive.get(record.uid, record.created_at)
    except NotArchivedError:
        return "not archived"
    except DeswmError as exc:
        return f"{type(exc).__name__}: {exc}"
    if expected is not None and got != expected:
        return f"archived {len(got)} bytes differ from the file's {len(expected)} bytes"
    return None


# --- idempotent replay ----------------------------------------------------------------------


@attrs.frozen
class ReplayWorld:
    """The state a replay test keeps per run: where the watermark and shards live.

    :func:`assert_idempotent_replay` makes two: ``"replayed"`` goes through the schedule,
    ``"clean"`` runs once without faults. Build your orchestrator on a world's ``store``,
    ``packer`` (and ``errors`` for ``on_error="record"``), never on state of your own, so
    the two runs cannot see each other.
    """

    name: str
    store: WatermarkStore
    packer: DesPacker
    errors: MemoryErrorStore


BuildOrchestrator = Callable[[ReplayWorld], WatermarkOrchestrator]
"""Builds your orchestrator on one :class:`ReplayWorld` (called once per cycle)."""


class StepOutcome(NamedTuple):
    """What one step did: the error it ended with (if any) and the watermark after it."""

    step: Step
    error: BaseException | None
    watermark: datetime | None


@attrs.frozen
class ReplayReport:
    """What :func:`assert_idempotent_replay` ran and saw, for further assertions."""

    outcomes: tuple[StepOutcome, ...]
    replayed: ReplayWorld
    clean: ReplayWorld
    watermark: datetime
    """Where both runs ended (the target of the last cycle)."""
    objects: Mapping[str, str]
    """``{name: sha256}`` of the published objects, identical in both runs."""
    rows_checked: int

    @property
    def failed_steps(self) -> tuple[StepOutcome, ...]:
        return tuple(o for o in self.outcomes if o.error is not None)


def assert_idempotent_replay(
    build_orchestrator: BuildOrchestrator,
    steps: Iterable[Step] = (),
    *,
    contents: Contents | None = None,
    make_store: Callable[[], WatermarkStore] = MemoryWatermarkStore,
    make_packer: Callable[[], DesPacker] = memory_packer,
    storage_options: Mapping[str, Any] | None = None,
    keep: bool = False,
) -> ReplayReport:
    """Run ``steps`` on one pipeline and a clean run on another; check G1, G2, G4, G5.

    Args:
        build_orchestrator: ``build(world) -> WatermarkOrchestrator`` on
            ``world.store`` and ``world.packer`` with your source, reader, router and
            settings. Use a fixed ``clock`` so both runs have the same target.
        steps: the schedule (see :func:`deswm.testing._strategies.interruptions`): each
            :class:`~deswm.testing._schedules.Cycle` runs one cycle suffering its
            interruption (a :class:`~deswm.DeswmError` ending it is expected and
            recorded); each :class:`~deswm.testing._schedules.Rewind` moves the watermark
            back with ``store.set``.
        contents: the expected bytes by location; the orchestrator's reader by default.
        make_store, make_packer: fresh state for each run; an in-memory store and
            :func:`~deswm.testing.memory_packer` by default.
        storage_options: to read a remote destination back (what ``make_packer`` used).
        keep: keep the objects of in-memory destinations after a success (they are
            deleted otherwise, so long hypothesis runs do not pile them up).

    After every step: the watermark is a bucket start (G5), never moved backwards except
    by a rewind (G4), and every row below it reads back (G1). At the end a clean cycle
    must succeed on the replayed pipeline; its archive must then be byte-identical to a
    run without faults (G2). With ``on_error="record"``, rows in the error table may be
    missing along the way, and ``retry_errors()`` runs before the comparison.

    Any error that is not a :class:`~deswm.DeswmError` propagates: deswm should
    never answer a fault with an unexpected exception.
    """
    replayed = ReplayWorld("replayed", make_store(), make_packer(), MemoryErrorStore())
    clean = ReplayWorld("clean", make_store(), make_packer(), MemoryErrorStore())
    schedule = tuple(steps)
    outcomes: list[StepOutcome] = []
    previous: datetime | None = None

    def context() -> str:
        done = ", ".join(repr(o.step) + (" !" if o.error else "") for o in outcomes)
        return f"after steps [{done}]"

    for step in schedule:
        orchestrator = build_orchestrator(replayed)
        error: BaseException | None = None
        if isinstance(step, Rewind):
            _rewind(orchestrator, step)
        elif isinstance(step, Cycle):
            error = _run(orchestrator, step)
        else:
            raise TypeError(f"a step is a Cycle or a Rewind, got {step!r}")
        mark = replayed.store.get(orchestrator.key)
        position = None if mark is None else mark.position
        outcomes.append(StepOutcome(step, error, position))
        if position is None:
            continue
        if orchestrator.router.bucket_start(position) != position:
            raise AssertionError(
                f"G5 violated {context()}: watermark {format_utc(position)} is not a bucket start"
            )
        if previous is not None and position < previous and not isinstance(step, Rewind):
            raise AssertionError(
                f"G4 violated {context()}: the watermark moved back from "
                f"{format_utc(previous)} to {format_utc(position)} without a rewind"
            )
        previous = position
        _check(orchestrator, replayed, contents, context())

    last = build_orchestrator(replayed)
    try:
        result = last.run_cycle()
        if last.on_error == "record":
            last.retry_errors()
    except DeswmError as exc:
        raise AssertionError(
            f"a clean cycle failed {context()}: {type(exc).__name__}: {exc}"
        ) from exc
    reference = build_orchestrator(clean).run_cycle()
    if result.watermark_after != reference.watermark_after:
        raise AssertionError(
            f"{context()}, the replayed run ended at {format_utc(result.watermark_after)} "
            f"but a clean run at {format_utc(reference.watermark_after)}; use a fixed clock"
        )
    checked = _check(last, replayed, contents, context())
    got = snapshot(replayed.packer, storage_options=storage_options)
    want = snapshot(clean.packer, storage_options=storage_options)
    if got != want:
        raise AssertionError(f"G2 violated {context()}: {_diff(got, want)}")
    if not keep:
        for world in (replayed, clean):
            if world.packer.store.kind == "memory":
                clear_destination(world.packer)
    return ReplayReport(
        outcomes=tuple(outcomes),
        replayed=replayed,
        clean=clean,
        watermark=result.watermark_after,
        objects=got,
        rows_checked=checked,
    )


def _run(orchestrator: WatermarkOrchestrator, step: Cycle) -> BaseException | None:
    try:
        if step.interruption is None:
            orchestrator.run_cycle()
        else:
            with step.interruption.applied(orchestrator):
                orchestrator.run_cycle()
    except DeswmError as exc:
        return exc
    return None


def _rewind(orchestrator: WatermarkOrchestrator, step: Rewind) -> None:
    store = orchestrator.store
    mark = store.get(orchestrator.key)
    if mark is None:
        return
    floor = orchestrator.initial_position()
    back = orchestrator.router.bucket_start(mark.position - timedelta(days=step.days))
    store.set(orchestrator.key, max(back, floor), reason=f"replay test: {step!r}")


def _check(
    orchestrator: WatermarkOrchestrator,
    world: ReplayWorld,
    contents: Contents | None,
    context: str,
) -> int:
    partition, router = orchestrator.partition, orchestrator.router
    try:
        return assert_no_loss(
            orchestrator.source,
            world.packer,
            world.store,
            orchestrator.key,
            orchestrator.reader if contents is None else contents,
            since=orchestrator.initial_position(),
            owns=None
            if partition.count == 1
            else lambda record: partition.owns(router.shard_index(record.uid)),
            errors=world.errors if orchestrator.on_error == "record" else None,
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{context}") from None


def _diff(got: Mapping[str, str], want: Mapping[str, str]) -> str:
    only_replayed = sorted(set(got) - set(want))
    only_clean = sorted(set(want) - set(got))
    differ = sorted(name for name in set(got) & set(want) if got[name] != want[name])
    parts = []
    for label, names in (
        ("only in the replayed archive", only_replayed),
        ("only in the clean archive", only_clean),
        ("with different bytes", differ),
    ):
        if names:
            shown = ", ".join(names[:10]) + (
                f" and {len(names) - 10} more" if len(names) > 10 else ""
            )
            parts.append(f"{len(names)} object(s) {label}: {shown}")
    return "the archive differs from a clean run's: " + "; ".join(parts)
