"""Prove a SqlSourceProvider subclass safe with deswm.testing: replay, faults, no loss.

``TenantSource`` archives one tenant's files by overriding ``filter_query``. The tests
load drawn rows into its table (with a ``tenant`` column deswm knows nothing about),
then check that whatever goes wrong (lost commits, missing files, a stream cut short,
a crash between publish and commit, operators rewinding the watermark) no file below
the watermark is lost, a replay writes byte-identical shards, and no other tenant's
file is archived. ``TestTenantSourceContract`` runs deswm's own contract suite for
source providers on it, with another tenant's rows interleaved in the table. Run:
``python -m pytest examples/test_my_provider.py``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings

from deswm import CycleError, DesRouter, SourceRecord, SqlSourceProvider, WatermarkOrchestrator
from deswm.testing import (
    Checkpoint,
    Dataset,
    InjectedFault,
    MemoryFileReader,
    MemoryWatermarkStore,
    ReplayWorld,
    SourceProviderContract,
    Step,
    archive_for,
    assert_idempotent_replay,
    assert_no_loss,
    at_checkpoint,
    clear_destination,
    datasets,
    inject,
    interruptions,
    memory_packer,
    missing_on,
)

START = datetime(2024, 5, 10, tzinfo=UTC)
NOW = datetime(2024, 5, 16, 9, tzinfo=UTC)  # with lag=1 day, cycles archive up to May 15


class TenantSource(SqlSourceProvider):
    """The provider under test: only the rows of one tenant."""

    def __init__(self, *args: Any, tenant: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tenant = tenant

    def filter_query(self, query: sa.Select[Any]) -> sa.Select[Any]:
        return query.where(self.table.c["tenant"] == self.tenant)


def files_table(**tenants: Sequence[SourceRecord]) -> sa.Engine:
    """Our table, in an in-memory SQLite database, holding each tenant's rows."""
    engine = sa.create_engine(
        "sqlite://", poolclass=sa.pool.StaticPool, connect_args={"check_same_thread": False}
    )
    metadata = sa.MetaData()
    files = sa.Table(
        "files",
        metadata,
        sa.Column("uid", sa.String),
        sa.Column("created_at", sa.DateTime),
        sa.Column("file_location", sa.String),
        sa.Column("size_bytes", sa.Integer),
        sa.Column("tenant", sa.String),
        sa.Index("ix_files_created_at_uid", "created_at", "uid"),
    )
    metadata.create_all(engine)
    rows = [
        {
            "uid": r.uid,
            "created_at": r.created_at.replace(tzinfo=None),  # stored as naive UTC
            "file_location": r.location,
            "size_bytes": r.size,
            "tenant": tenant,
        }
        for tenant, records in tenants.items()
        for r in records
    ]
    if rows:
        with engine.begin() as conn:
            conn.execute(files.insert(), rows)
    return engine


def orchestrator_on(source: TenantSource, reader: MemoryFileReader) -> Any:
    """How our service builds its orchestrator, on the state of one test run."""

    def build(world: ReplayWorld) -> WatermarkOrchestrator:
        return WatermarkOrchestrator(
            world.store,
            source,
            reader,
            world.packer.router,
            world.packer,
            pipeline="acme-files",
            lag=timedelta(days=1),
            initial=START,
            clock=lambda: NOW,  # fixed, so every run has the same target
        )

    return build


class TestTenantSourceContract(SourceProviderContract):
    """Every clause of the SourceProvider protocol (half-open windows, order, paging
    with ties, pending stats) holds for our rows, with globex's rows interleaved."""

    @pytest.fixture
    def make_source(self) -> Iterator[Any]:
        engines: list[sa.Engine] = []

        def make(records: Sequence[SourceRecord], *, page_size: int | None = None) -> Any:
            globex = [
                SourceRecord(f"{r.uid}-g", r.created_at, f"globex/{n}", r.size)
                for n, r in enumerate(records)
            ]
            engines.append(files_table(acme=records, globex=globex))
            return TenantSource(engines[-1], "files", tenant="acme", page_size=page_size or 50)

        yield make
        for engine in engines:
            engine.dispose()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    acme=datasets(start=START, days=6, location_prefix="acme/"),
    globex=datasets(start=START, days=6, location_prefix="globex/", max_size=10),
    steps=interruptions(),
)
def test_tenant_source_replays_identically(
    acme: Dataset, globex: Dataset, steps: list[Step]
) -> None:
    engine = files_table(acme=acme.records, globex=globex.records)
    source = TenantSource(engine, "files", tenant="acme", page_size=7)
    reader = MemoryFileReader({**acme.contents, **globex.contents})
    report = assert_idempotent_replay(
        orchestrator_on(source, reader),
        steps,
        make_packer=lambda: memory_packer(DesRouter(4)),
        keep=True,
    )
    try:
        # The filter held under every fault: no file of another tenant was archived.
        archive = archive_for(report.replayed.packer)
        ours = {(r.uid, r.created_at.date()) for r in acme.records}
        for record in globex.records:
            if (record.uid, record.created_at.date()) not in ours:
                assert not archive.exists(record.uid, record.created_at), record
    finally:
        clear_destination(report.replayed.packer)
        clear_destination(report.clean.packer)
        engine.dispose()


def test_a_missing_file_and_a_crash_lose_nothing() -> None:
    acme = Dataset.from_files(
        {f"acme/{n}.bin": b"file %d" % n for n in range(12)},
        start=START,
        every=timedelta(hours=9),
    )
    engine = files_table(acme=acme.records)
    source = TenantSource(engine, "files", tenant="acme")
    store, packer = MemoryWatermarkStore(), memory_packer(DesRouter(4))

    def run(reader: Any) -> Any:
        orchestrator = WatermarkOrchestrator(
            store,
            source,
            reader,
            packer.router,
            packer,
            pipeline="acme-files",
            lag=timedelta(days=1),
            initial=START,
            clock=lambda: NOW,
        )
        return orchestrator.run_cycle()

    # The 5th file is missing for one cycle: its day is not committed.
    with pytest.raises(CycleError, match=r"acme/4\.bin"):
        run(inject(acme.reader(), read_many=missing_on(5)))
    # A crash between publishing the next day's shards and committing the watermark.
    with (
        at_checkpoint(Checkpoint.BUCKET_AFTER_PUBLISH, InjectedFault("power cut"), on=1),
        pytest.raises(InjectedFault),
    ):
        run(acme.reader())
    key = run(acme.reader()).key
    checked = assert_no_loss(source, packer, store, key, acme.contents, since=START)
    assert checked == 12
    engine.dispose()
    clear_destination(packer)
