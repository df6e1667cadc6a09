"""Property tests of the whole cycle on the embedded default (SQLite + a local folder).

Random rows over several days (midnight rows, ties on created_at, empty files), random
interruptions (exceptions injected in the reader, the packer and the store, files
missing for a while) and rewinds of the watermark. After every step and at the end:

* G1: every row below the committed watermark reads back byte-identical;
* G2: once everything has run, the archive is byte-identical to a clean run's;
* G4: each successful cycle wrote the watermark once per committed bucket (once for a
  window without rows) and sent no write to the source table; the watermark never moved
  backwards except by a manual rewind;
* G5: the watermark and every window bound are UTC midnights.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deswm._archive import Archive
from deswm._errors import DeswmError, FileReadError, WatermarkError
from deswm._model import SourceRecord, WatermarkKey
from deswm._orchestrator import WatermarkOrchestrator
from deswm._packer import DesPacker
from deswm._readers import FsspecFileReader
from deswm._routing import DesRouter
from deswm._sources.sql import SqlSourceProvider
from deswm._stores.sql import SqlWatermarkStore
from deswm.testing._faults import Fault, fail_after, fail_on, inject
from deswm.testing._strategies import file_contents, source_records

START = datetime(2024, 5, 10, tzinfo=UTC)
NOW = datetime(2024, 5, 16, 9, tzinfo=UTC)  # lag 1 day -> target May 15 00:00
TARGET = datetime(2024, 5, 15, tzinfo=UTC)
KEY = WatermarkKey("props")
EXAMPLES = int(os.environ.get("DESWM_PROPERTY_EXAMPLES", "25"))
EXECUTORS = ["inline", "threads", "auto"]
"""``auto``: lanes in processes when the components pickle (no injected fault)."""


class Setup:
    """A source database with files, a watermark database and an archive folder."""

    def __init__(
        self,
        root: Path,
        records: list[SourceRecord],
        contents: dict[str, bytes],
        executor: str = "inline",
    ) -> None:
        self.root = root
        self.executor = executor
        self.records = records
        self.contents = contents
        self.files = root / "files"
        self.files.mkdir()
        for record in records:
            (self.files / record.location).write_bytes(contents[record.location])
        self.source_engine = sa.create_engine(f"sqlite:///{root / 'source.db'}")
        self.store_engine = sa.create_engine(f"sqlite:///{root / 'watermark.db'}")
        metadata = sa.MetaData()
        table = sa.Table(
            "files",
            metadata,
            sa.Column("uid", sa.String, primary_key=True),
            sa.Column("created_at", sa.DateTime, nullable=False),
            sa.Column("file_location", sa.String, nullable=False),
            sa.Column("size_bytes", sa.Integer),
            sa.Index("ix_files_created_uid", "created_at", "uid"),
        )
        metadata.create_all(self.source_engine)
        if records:
            with self.source_engine.begin() as conn:
                conn.execute(
                    table.insert(),
                    [
                        {
                            "uid": r.uid,
                            "created_at": r.created_at.replace(tzinfo=None),
                            "file_location": r.location,
                            "size_bytes": len(contents[r.location]),
                        }
                        for r in records
                    ],
                )
        self.source_writes: list[str] = []
        self.watermark_updates = 0
        sa.event.listen(self.source_engine, "before_cursor_execute", self._on_source)
        sa.event.listen(self.store_engine, "before_cursor_execute", self._on_store)
        self.router = DesRouter(4)
        self.store = SqlWatermarkStore(self.store_engine)

    def _on_source(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        verb = statement.lstrip().split(None, 1)[0].upper()
        if verb not in ("SELECT", "PRAGMA"):
            self.source_writes.append(statement)

    def _on_store(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE"):
            self.watermark_updates += 1

    def orchestrator(self, archive: Path, **faults: dict[str, Fault]) -> WatermarkOrchestrator:
        store: Any = self.store
        reader: Any = FsspecFileReader(root=str(self.files), max_workers=2)
        packer: Any = DesPacker(str(archive), self.router, max_shard_size=4096, workers=0)
        if faults.get("store"):
            store = inject(store, **faults["store"])
        if faults.get("reader"):
            reader = inject(reader, **faults["reader"])
        if faults.get("packer"):
            packer = inject(packer, **faults["packer"])
        return WatermarkOrchestrator(
            store,
            SqlSourceProvider(self.source_engine, "files", page_size=7),
            reader,
            self.router,
            packer,
            pipeline=KEY.pipeline,
            lag=timedelta(days=1),
            initial=START,
            clock=lambda: NOW,
            executor=self.executor,
            workers=2,
        )

    def close(self) -> None:
        self.source_engine.dispose()
        self.store_engine.dispose()


def objects(folder: Path) -> dict[str, bytes]:
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


def check_no_loss(setup: Setup, archive_dir: Path, position: datetime) -> None:
    """G1: every row below the committed watermark reads back identical."""
    archive = Archive(str(archive_dir), setup.router)
    for record in setup.records:
        if record.created_at < position:
            assert archive.get(record.uid, record.created_at) == setup.contents[record.location], (
                record
            )


@contextmanager
def hidden(setup: Setup, location: str) -> Iterator[None]:
    path = setup.files / location
    away = setup.root / "hidden.dat"
    path.rename(away)
    try:
        yield
    finally:
        away.rename(path)


FAULTS = st.one_of(
    st.none(),
    st.tuples(st.just("reader"), st.just("read_many"), st.integers(1, 30)),
    st.tuples(st.just("packer"), st.sampled_from(["add", "publish"]), st.integers(1, 6)),
    st.tuples(st.just("store"), st.sampled_from(["advance"]), st.integers(1, 4)),
    st.tuples(st.just("store-after"), st.sampled_from(["advance"]), st.integers(1, 4)),
    st.tuples(st.just("hide"), st.just(""), st.integers(0, 200)),
)
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("cycle"), FAULTS),
        st.tuples(st.just("rewind"), st.integers(1, 4)),
    ),
    min_size=1,
    max_size=6,
)


@st.composite
def worlds(draw: st.DrawFn) -> tuple[list[SourceRecord], dict[str, bytes]]:
    records = draw(source_records(max_size=30, start=START, days=6, max_long_uid=400))
    contents = {r.location: draw(file_contents(max_size=1500)) for r in records}
    return records, contents


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(world=worlds(), steps=STEPS)
@pytest.mark.parametrize("executor", EXECUTORS)
def test_interrupted_cycles_never_lose_and_replay_identically(
    executor: str,
    world: tuple[list[SourceRecord], dict[str, bytes]],
    steps: list[tuple[str, Any]],
) -> None:
    """On the in-process path and on the packing engine's lanes (faults injected into
    the reader or packer keep "auto" on threads: the proxies stay in this process)."""
    records, contents = world
    root = Path(tempfile.mkdtemp(prefix="deswm-prop-"))
    setup = Setup(root, records, contents, executor)
    archive_dir = root / "archive"
    try:
        last = START
        for kind, detail in steps:
            if kind == "rewind":
                current = setup.store.get(KEY)
                if current is not None:
                    back = max(START, current.position - timedelta(days=detail))
                    setup.store.set(KEY, back, reason="property test rewind")
                    last = back
                continue
            run_cycle(setup, archive_dir, detail)
            stored = setup.store.get(KEY)
            if stored is None:
                continue
            position = stored.position
            assert position >= last, "the watermark moved backwards"  # G4
            assert position == setup.router.bucket_start(position)  # G5
            last = position
            check_no_loss(setup, archive_dir, position)  # G1

        with setup.orchestrator(archive_dir) as orchestrator:
            result = orchestrator.run_cycle()
        assert result.watermark_after == TARGET
        check_no_loss(setup, archive_dir, TARGET)

        clean_root = root / "clean"
        clean_root.mkdir()
        clean = Setup(clean_root, records, contents)
        try:
            with clean.orchestrator(clean_root / "archive") as orchestrator:
                orchestrator.run_cycle()
            assert objects(archive_dir) == objects(clean_root / "archive")  # G2
        finally:
            clean.close()
        assert setup.source_writes == []  # G4: the source table is only read
    finally:
        setup.close()
        shutil.rmtree(root, ignore_errors=True)


def run_cycle(setup: Setup, archive_dir: Path, fault: tuple[str, str, int] | None) -> None:
    """One cycle with at most one fault; checks G4 and G5 when it succeeds."""
    faults: dict[str, dict[str, Fault]] = {}
    hide: str | None = None
    if fault is not None:
        where, method, number = fault
        if where == "hide":
            if setup.records:
                hide = setup.records[number % len(setup.records)].location
        elif where == "store-after":
            faults["store"] = {method: fail_after(number, error=WatermarkError("lost ack"))}
        elif where == "reader":
            faults["reader"] = {
                method: fail_on(number, error=FileReadError("injected", location="x"))
            }
        else:
            faults[where] = {method: fail_on(number)}
    orchestrator = setup.orchestrator(archive_dir, **faults)
    updates_before = setup.watermark_updates
    try:
        with orchestrator:
            if hide is not None:
                with hidden(setup, hide):
                    result = orchestrator.run_cycle()
            else:
                result = orchestrator.run_cycle()
    except DeswmError:
        return
    assert result.window.start == setup.router.bucket_start(result.window.start)  # G5
    assert result.window.end == TARGET  # G5: the target, computed once
    writes = setup.watermark_updates - updates_before
    if result.window.empty:
        assert writes == 0
    elif result.buckets_committed:
        assert writes == result.buckets_committed  # G4: one write per committed bucket
    else:
        assert writes == 1  # a window without rows moves once
