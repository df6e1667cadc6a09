"""A stateful property test of an archive's whole life: nothing silent, nothing lost.

:class:`LifecycleMachine` is a ``hypothesis`` rule-based state machine. Each example draws
a source table built to hurt (a uid used twice, locations shared by several rows, rows
in the year 1 and 999, empty and big files), then any interleaving of

* ``run``: one cycle (``on_error`` drawn per example, ``"stop"`` or ``"record"``);
* ``replay``: the watermark set back some days (``deswm watermark set``);
* ``retry``: ``retry_errors()`` (what ``deswm errors retry`` does);
* ``purge``: a :class:`~deswm.PurgeJob` run, verifying by content or by index;
* ``change_file`` / ``delete_file``: the world changing a source file under deswm;
* ``damage``: one byte of a published payload or ``_bigFiles/`` object flipped.

After every step it checks (G1, G14, G15, G17):

* every row below the watermark reads back from the archive with bytes its location held
  at some point, or is listed in the error table; a read may only fail because the test
  damaged an object (and then only with :class:`~deswm.CorruptShardError`);
* a row's entry never holds another row's bytes (an entry is ``(uid, created_at)``);
* every file a purge deleted was, at that moment, readable from the archive with exactly
  the deleted bytes for *every* row referencing its location, and every such row was
  below the watermark;
* after a full replay that succeeds, no entry whose source still exists is damaged (G16).

Use it as it is (``TestLifecycle = LifecycleMachine.TestCase``) or subclass it and
override :meth:`LifecycleMachine.build_packer` to run the same life on your destination.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from deswm._archive import Archive
from deswm._container import FOOTER_SIZE, HEADER_SIZE
from deswm._errors import CorruptShardError, DeswmError, NotArchivedError
from deswm._model import SourceRecord, WatermarkKey, Window
from deswm._orchestrator import OnError, WatermarkOrchestrator
from deswm._packer import DesPacker
from deswm._purge import PurgeJob
from deswm._routing import DesRouter
from deswm._timeutil import format_utc
from deswm.testing._error_store import MemoryErrorStore
from deswm.testing._packers import (
    _fs_root,
    archive_for,
    clear_destination,
    memory_packer,
    read_objects,
)
from deswm.testing._readers import MemoryFileReader
from deswm.testing._sources import MemorySourceProvider
from deswm.testing._stores import MemoryWatermarkStore

__all__ = ["LifecycleMachine", "lifecycle_tables"]

NOW: Final = datetime(2024, 5, 20, 9, tzinfo=UTC)
"""The machine's fixed clock; with a lag of 2 days the target is 2024-05-18."""
INITIAL: Final = datetime(1, 1, 1, tzinfo=UTC)
"""Where the watermark starts: below every row, so year-1 rows are in the first window."""
BIG_FILE_THRESHOLD: Final = 48
"""Files above this many bytes go to ``_bigFiles/`` (small, so examples have some)."""

_DAYS: Final = (
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(999, 6, 1, tzinfo=UTC),
    datetime(2024, 5, 10, tzinfo=UTC),
    datetime(2024, 5, 11, tzinfo=UTC),
    datetime(2024, 5, 17, tzinfo=UTC),
    datetime(2024, 5, 18, tzinfo=UTC),  # at the target: above the watermark for now
    datetime(2024, 5, 19, tzinfo=UTC),
)


@st.composite
def lifecycle_tables(
    draw: st.DrawFn, *, max_rows: int = 10
) -> tuple[list[SourceRecord], dict[str, bytes]]:
    """A source table and its files, drawn to collide.

    uids come from a pool of four (so one uid often has rows at two instants),
    locations from a pool of five (so rows share files), instants from a few days
    (year 1, year 999, days below and above the target) at a few times of day.
    """
    count = draw(st.integers(1, max_rows))
    rows: dict[tuple[str, datetime], SourceRecord] = {}
    for _ in range(count):
        uid = draw(st.sampled_from(["7", "0007", "a/b", "u"]))
        day = draw(st.sampled_from(_DAYS))
        created_at = day + timedelta(
            hours=draw(st.sampled_from([0, 10, 11, 23])),
            microseconds=draw(st.sampled_from([0, 1])),
        )
        location = draw(st.sampled_from(["f0", "f1", "f2", "f3", "f4"]))
        rows.setdefault((uid, created_at), SourceRecord(uid, created_at, location))
    files = {record.location: draw(_contents()) for record in rows.values()}
    return sorted(rows.values(), key=lambda r: (r.created_at, r.uid)), files


def _contents() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=16),
        st.binary(min_size=BIG_FILE_THRESHOLD + 1, max_size=BIG_FILE_THRESHOLD + 40),
    )


class _RecordingReader(MemoryFileReader):
    """A memory reader that remembers what each delete removed."""

    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__(files)
        self.deleted: list[tuple[str, bytes]] = []

    def delete(self, location: str) -> None:
        data = self.files.get(location)
        if data is not None:
            self.deleted.append((location, data))
        super().delete(location)


class LifecycleMachine(RuleBasedStateMachine):
    """Runs, replays, retries, purges and damage in any order; checks nothing is lost.

    See the module docstring for the rules and the invariants.
    """

    pipeline = "lifecycle"
    lag = timedelta(days=2)

    def __init__(self) -> None:
        super().__init__()
        self.router = DesRouter(4)
        self.key = WatermarkKey(self.pipeline)
        self.store = MemoryWatermarkStore()
        self.errors = MemoryErrorStore()
        self.source = MemorySourceProvider()
        self.reader = _RecordingReader({})
        self.packer = self.build_packer()
        self.archive: Archive = archive_for(self.packer)
        self.history: dict[str, list[bytes]] = {}
        self.damaged: set[str] = set()
        self.on_error: OnError = "stop"
        self.steps: list[str] = []

    # --- what a subclass may replace -----------------------------------------------------

    def build_packer(self) -> DesPacker:
        """The destination under test: a private ``memory://`` root by default."""
        return memory_packer(self.router, big_file_threshold=BIG_FILE_THRESHOLD, workers=0)

    def build_orchestrator(self) -> WatermarkOrchestrator:
        return WatermarkOrchestrator(
            self.store,
            self.source,
            self.reader,
            self.router,
            self.packer,
            pipeline=self.pipeline,
            lag=self.lag,
            initial=INITIAL,
            on_error=self.on_error,
            error_store=self.errors,
            max_failure_ratio=1.0,
            clock=lambda: NOW,
        )

    def teardown(self) -> None:
        with contextlib.suppress(Exception):
            clear_destination(self.packer)

    # --- the world -------------------------------------------------------------------------

    @initialize(table=lifecycle_tables(), on_error=st.sampled_from(["stop", "record"]))
    def make_world(
        self, table: tuple[list[SourceRecord], dict[str, bytes]], on_error: OnError
    ) -> None:
        records, files = table
        self.on_error = on_error
        self.source.add(*records)
        for location, data in files.items():
            self.reader.put(location, data)
            self.history[location] = [data]
        self.steps.append(f"table {records!r} on_error={on_error}")

    @property
    def locations(self) -> list[str]:
        return sorted(self.history)

    # --- rules -----------------------------------------------------------------------------

    @rule()
    def run(self) -> None:
        self.steps.append("run")
        with contextlib.suppress(DeswmError):
            self.build_orchestrator().run_cycle()

    @rule(days=st.integers(1, 3))
    def replay(self, days: int) -> None:
        self.steps.append(f"replay {days} day(s)")
        mark = self.store.get(self.key)
        if mark is None:
            return
        if mark.position - INITIAL <= timedelta(days=days):
            back = INITIAL
        else:
            back = self.router.bucket_start(mark.position - timedelta(days=days))
        self.store.set(self.key, back, reason="lifecycle: replay")

    @rule()
    def retry(self) -> None:
        self.steps.append("retry")
        if self.on_error == "record":
            with contextlib.suppress(DeswmError):
                self.build_orchestrator().retry_errors()

    @rule(verify=st.sampled_from(["content", "index"]))
    def purge(self, verify: str) -> None:
        self.steps.append(f"purge verify={verify}")
        job = PurgeJob(
            self.store,
            self.source,
            self.reader,
            self.archive,
            self.router,
            pipeline=self.pipeline,
            initial=INITIAL,
            verify=verify,  # type: ignore[arg-type]
            error_store=self.errors,
        )
        before = len(self.reader.deleted)
        with contextlib.suppress(DeswmError):
            job.run()
        self._check_deletions(self.reader.deleted[before:], exact=verify == "content")

    @rule(data=st.data())
    def change_file(self, data: st.DataObject) -> None:
        location = data.draw(st.sampled_from(self.locations))
        new = data.draw(_contents())
        self.steps.append(f"change {location} to {len(new)} bytes")
        self.reader.put(location, new)
        self.history[location].append(new)

    @rule(data=st.data())
    def delete_file(self, data: st.DataObject) -> None:
        location = data.draw(st.sampled_from(self.locations))
        self.steps.append(f"delete {location}")
        MemoryFileReader.delete(self.reader, location)  # not a purge: not recorded

    @rule(data=st.data())
    def damage(self, data: st.DataObject) -> None:
        objects = read_objects(self.packer)
        targets = sorted(name for name, body in objects.items() if _payload_span(name, body))
        if not targets:
            return
        name = data.draw(st.sampled_from(targets))
        body = bytearray(objects[name])
        start, end = _payload_span(name, body) or (0, 0)
        position = data.draw(st.integers(start, end - 1))
        body[position] ^= 0x01
        self.steps.append(f"damage {name} at byte {position}")
        fs, root = self._fs()
        fs.pipe_file(f"{root}/{name}", bytes(body))
        self.damaged.add(name)
        self.archive = archive_for(self.packer)  # a fresh index cache, as a new process

    @precondition(lambda self: bool(self.damaged))
    @rule()
    def repair(self) -> None:
        """Replay everything: where sources still exist, every damaged entry is repaired."""
        self.steps.append("repair (replay all)")
        if self.store.get(self.key) is None:
            return
        self.store.set(self.key, INITIAL, reason="lifecycle: repair")
        try:
            self.build_orchestrator().run_cycle()
        except DeswmError:
            return
        self.archive = archive_for(self.packer)
        mark = self.store.get(self.key)
        assert mark is not None
        current = self.reader.files
        broken, unrepairable = [], False
        for record in self._below(mark.position):
            if self._listed(record):
                continue
            try:
                self.archive.get(record.uid, record.created_at)
            except CorruptShardError as exc:
                if record.location in current:
                    broken.append(f"{self._row(record)}: {exc}")
                else:
                    unrepairable = True  # its source is gone: copied verbatim, still bad
            except DeswmError:
                continue
        assert not broken, (
            "G16: a full replay left damaged entries whose sources exist:\n  "
            + "\n  ".join(broken)
            + self._story()
        )
        if not unrepairable:
            self.damaged.clear()

    # --- invariants ------------------------------------------------------------------------

    @invariant()
    def below_the_watermark_is_archived_or_listed(self) -> None:
        mark = self.store.get(self.key)
        if mark is None:
            return
        problems = []
        for record in self._below(mark.position):
            try:
                got = self.archive.get(record.uid, record.created_at)
            except CorruptShardError as exc:
                if not self.damaged:
                    problems.append(f"{self._row(record)}: {exc}")
                continue
            except NotArchivedError as exc:
                if not self._listed(record):
                    problems.append(f"{self._row(record)}: neither archived nor listed: {exc}")
                continue
            if got not in self.history[record.location]:
                problems.append(
                    f"{self._row(record)}: the archive returns {len(got)} bytes that its "
                    "location never held (another row's bytes?)"
                )
        assert not problems, (
            f"G1/G14/G17 violated below watermark {format_utc(mark.position)}:\n  "
            + "\n  ".join(problems)
            + self._story()
        )

    # --- helpers ---------------------------------------------------------------------------

    def _check_deletions(self, deleted: list[tuple[str, bytes]], *, exact: bool) -> None:
        """Each deleted file: every row referencing it is below the watermark and reads
        back (with exactly the deleted bytes when the purge verified content; with bytes
        the location held when it trusted the index, which cannot see an object damaged
        after it was published)."""
        mark = self.store.get(self.key)
        problems = []
        for location, data in deleted:
            for record in self.source.records:
                if record.location != location:
                    continue
                if mark is None or record.created_at >= mark.position:
                    problems.append(
                        f"{self._row(record)}: its file was deleted while the row is at or "
                        "above the watermark (not archived yet)"
                    )
                    continue
                try:
                    got = self.archive.get(record.uid, record.created_at)
                except CorruptShardError as exc:
                    if exact or not self.damaged:  # index mode cannot see later damage
                        problems.append(f"{self._row(record)}: file deleted, archive says {exc}")
                    continue
                except DeswmError as exc:
                    problems.append(f"{self._row(record)}: file deleted, archive says {exc}")
                    continue
                if got != data if exact else got not in self.history[location]:
                    problems.append(
                        f"{self._row(record)}: file deleted but the archive holds other bytes"
                    )
        assert not problems, "G8/G15 violated by purge:\n  " + "\n  ".join(problems) + self._story()

    def _below(self, position: datetime) -> Iterator[SourceRecord]:
        return iter(self.source.iter_records(Window(INITIAL, position)))

    def _listed(self, record: SourceRecord) -> bool:
        return any(
            (entry.failure.uid, entry.failure.created_at) == (record.uid, record.created_at)
            for entry in self.errors.list(self.key)
        )

    def _fs(self) -> tuple[Any, str]:
        return _fs_root(self.packer, None)

    @staticmethod
    def _row(record: SourceRecord) -> str:
        return f"uid {record.uid!r} at {format_utc(record.created_at)} ({record.location})"

    def _story(self) -> str:
        return "\nsteps:\n  " + "\n  ".join(self.steps)


def _payload_span(name: str, body: bytes | bytearray) -> tuple[int, int] | None:
    """The byte range a flip may hit: a shard's data region, or a whole big file."""
    if name.startswith("_bigFiles/"):
        return (0, len(body)) if body else None
    if len(body) < HEADER_SIZE + FOOTER_SIZE:
        return None
    index_size = int.from_bytes(body[-8:], "little")
    index_start = len(body) - FOOTER_SIZE - index_size
    return (HEADER_SIZE, index_start) if index_start > HEADER_SIZE else None
