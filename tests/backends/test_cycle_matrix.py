"""The foundation properties of a cycle on real backends, not just SQLite and a folder.

Source table and watermark on PostgreSQL and on MariaDB, source files on S3 (``s3://``
locations read by FsspecFileReader), shards published to S3 (a moto server):

* a property test (few examples: every request is real) with random rows, interruptions
  and rewinds: no loss below the watermark (G1), byte-identical replay (G2), one watermark
  write per committed bucket and none to the source (G4);
* PostgreSQL's own counters and a statement trigger: no tuple of the source table is
  inserted, updated or deleted, and the watermark table sees exactly one updated tuple
  per committed bucket;
* MariaDB streaming: 20,000+ rows in pages of 5,000 while watermark commits happen
  mid-stream (MariaDB silently ends a stream when its connection runs another statement);
* schema-qualified tables and identifiers with capitals and spaces through a full cycle;
* the legacy ``des_archive_config`` table through a full cycle;
* credentials from storage options never reach logs, reprs or errors.

``DESWM_MATRIX_EXAMPLES`` sets the number of property examples per database (default 6).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Collection, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import mysql

from conftest import postgres_schema
from deswm._archive import Archive
from deswm._errors import CycleError, DeswmError, FileReadError, WatermarkError
from deswm._model import LocationReference, PendingStats, SourceRecord, WatermarkKey, Window
from deswm._orchestrator import CycleObserver, WatermarkOrchestrator
from deswm._packer import DesPacker
from deswm._readers import FsspecFileReader
from deswm._routing import DesRouter
from deswm._sources.sql import SqlSourceProvider
from deswm._stores.legacy import LegacyArchiveConfigStore
from deswm._stores.objectstore import ObjectStoreWatermarkStore
from deswm._stores.sql import SqlWatermarkStore
from deswm.testing._faults import Fault, fail_after, fail_on, inject
from deswm.testing._readers import MemoryFileReader
from deswm.testing._strategies import file_contents, source_records

START = datetime(2024, 5, 10, tzinfo=UTC)
NOW = datetime(2024, 5, 16, 9, tzinfo=UTC)  # lag 1 day -> target May 15 00:00
TARGET = datetime(2024, 5, 15, tzinfo=UTC)
DAY = timedelta(days=1)
PIPELINE = "matrix"
KEY = WatermarkKey(PIPELINE)
EXAMPLES = int(os.environ.get("DESWM_MATRIX_EXAMPLES", "6"))
WRITE_VERBS = {"INSERT", "UPDATE", "DELETE", "REPLACE", "MERGE", "CREATE", "ALTER", "DROP"}
REAL_DATABASES = pytest.mark.parametrize("sql_backend", ["postgresql", "mysql"])


def _uid_type(length: int = 500, collation: str = "utf8mb4_nopad_bin") -> Any:
    # MariaDB's utf8mb4_bin pads: 'a' = 'a ', which keyset paging cannot tell apart.
    return sa.String(length).with_variant(
        mysql.VARCHAR(length, charset="utf8mb4", collation=collation), "mysql", "mariadb"
    )


def _instant_type() -> Any:
    return sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def _source_table(
    metadata: sa.MetaData,
    name: str,
    *,
    schema: str | None = None,
    columns: tuple[str, str, str, str] = ("uid", "created_at", "file_location", "size_bytes"),
    uid_collation: str = "utf8mb4_nopad_bin",
) -> sa.Table:
    uid, created_at, location, size = columns
    return sa.Table(
        name,
        metadata,
        sa.Column(uid, _uid_type(collation=uid_collation), nullable=False),
        sa.Column(created_at, _instant_type(), nullable=False),
        sa.Column(location, sa.String(1000), nullable=False),
        sa.Column(size, sa.Integer),
        sa.Index(f"ix_{uuid.uuid4().hex[:12]}", created_at, uid),
        schema=schema,
    )


def _fill(engine: sa.Engine, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """Insert rows (``created_at`` aware UTC; MariaDB's DATETIME gets naive UTC)."""
    if not rows:
        return
    created_at = next(c.name for c in table.c if isinstance(c.type, sa.DateTime))
    if engine.dialect.name in ("mysql", "mariadb"):
        rows = [{**row, created_at: row[created_at].replace(tzinfo=None)} for row in rows]
    with engine.begin() as conn:
        for start in range(0, len(rows), 5_000):
            conn.execute(table.insert(), rows[start : start + 5_000])


def _verb(statement: str) -> str:
    return statement.lstrip().split(None, 1)[0].upper()


class S3Files:
    """Source files and archives under one moto bucket."""

    def __init__(self, moto: Any, bucket: str, tag: str) -> None:
        self.moto = moto
        self.fs = moto.filesystem()
        self.bucket = bucket
        self.tag = tag

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.moto.storage_options)

    def location(self, record: SourceRecord) -> str:
        return f"s3://{self.bucket}/src-{self.tag}/{record.location}"

    def upload(self, records: list[SourceRecord], contents: Mapping[str, bytes]) -> None:
        if records:
            self.fs.pipe({self.location(r): contents[r.location] for r in records})

    def archive_url(self, suffix: str = "") -> str:
        return f"s3://{self.bucket}/archive-{self.tag}{suffix}"

    def objects(self, url: str) -> dict[str, bytes]:
        self.fs.invalidate_cache()
        root = url.removeprefix("s3://")
        names = [n for n in self.fs.find(root) if not n.rsplit("/", 1)[-1].startswith(".")]
        return {name[len(root) :]: self.fs.cat_file(name) for name in sorted(names)}

    def reader(self) -> FsspecFileReader:
        return FsspecFileReader(storage_options={"s3": self.options}, max_workers=4)

    def packer(self, url: str, router: DesRouter) -> DesPacker:
        return DesPacker(url, router, storage_options=self.options, max_shard_size=4096, workers=0)

    def archive(self, url: str, router: DesRouter) -> Archive:
        return Archive(url, router, storage_options=self.options)


class World:
    """One example: source and watermark tables on the database, files and archive on S3."""

    def __init__(
        self,
        db_url: str,
        s3: S3Files,
        records: list[SourceRecord],
        contents: dict[str, bytes],
    ) -> None:
        self.records = records
        self.contents = contents
        self.s3 = s3
        self.tag = s3.tag
        self.source_engine = sa.create_engine(db_url)
        self.store_engine = sa.create_engine(db_url)
        self.table = _source_table(sa.MetaData(), f"files_{self.tag}")
        self.table.metadata.create_all(self.source_engine)
        _fill(
            self.source_engine,
            self.table,
            [
                {
                    "uid": r.uid,
                    "created_at": r.created_at,
                    "file_location": s3.location(r),
                    "size_bytes": len(contents[r.location]),
                }
                for r in records
            ],
        )
        s3.upload(records, contents)
        self.source_writes: list[str] = []
        self.watermark_updates = 0
        sa.event.listen(self.source_engine, "before_cursor_execute", self._on_source)
        sa.event.listen(self.store_engine, "before_cursor_execute", self._on_store)
        self.router = DesRouter(4)
        self.store = SqlWatermarkStore(self.store_engine, table=f"wm_{self.tag}")
        self.archive_url = s3.archive_url()

    def _on_source(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if _verb(statement) in WRITE_VERBS:
            self.source_writes.append(statement)

    def _on_store(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if _verb(statement) == "UPDATE":
            self.watermark_updates += 1

    def orchestrator(
        self, archive_url: str, watermarks: Any = None, **faults: dict[str, Fault]
    ) -> WatermarkOrchestrator:
        store = watermarks or self.store
        reader: Any = self.s3.reader()
        packer: Any = self.s3.packer(archive_url, self.router)
        if faults.get("store"):
            store = inject(store, **faults["store"])
        if faults.get("reader"):
            reader = inject(reader, **faults["reader"])
        if faults.get("packer"):
            packer = inject(packer, **faults["packer"])
        return WatermarkOrchestrator(
            store,
            SqlSourceProvider(self.source_engine, self.table.name, page_size=7),
            reader,
            self.router,
            packer,
            pipeline=PIPELINE,
            lag=DAY,
            initial=START,
            clock=lambda: NOW,
        )

    def check_no_loss(self, archive_url: str, position: datetime) -> None:
        """G1: every row below the committed watermark reads back identical."""
        archive = self.s3.archive(archive_url, self.router)
        for record in self.records:
            if record.created_at < position:
                data = archive.get(record.uid, record.created_at)
                assert data == self.contents[record.location], record

    @contextlib.contextmanager
    def hidden(self, record: SourceRecord) -> Iterator[None]:
        path = self.s3.location(record)
        self.s3.fs.rm_file(path)
        try:
            yield
        finally:
            self.s3.fs.pipe_file(path, self.contents[record.location])

    def close(self) -> None:
        self.source_engine.dispose()
        self.store_engine.dispose()


# --- G1, G2, G4 as properties -------------------------------------------------------------------

FAULTS = st.one_of(
    st.none(),
    st.tuples(st.just("reader"), st.just("read_many"), st.integers(1, 20)),
    st.tuples(st.just("packer"), st.sampled_from(["add", "publish"]), st.integers(1, 4)),
    st.tuples(st.just("store"), st.just("advance"), st.integers(1, 3)),
    st.tuples(st.just("store-after"), st.just("advance"), st.integers(1, 3)),
    st.tuples(st.just("hide"), st.just(""), st.integers(0, 100)),
)
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("cycle"), FAULTS),
        st.tuples(st.just("rewind"), st.integers(1, 3)),
    ),
    min_size=1,
    max_size=4,
)


@st.composite
def worlds(draw: st.DrawFn) -> tuple[list[SourceRecord], dict[str, bytes]]:
    records = draw(source_records(max_size=16, start=START, days=5, max_long_uid=300))
    contents = {r.location: draw(file_contents(max_size=1200)) for r in records}
    return records, contents


def run_cycle(world: World, fault: tuple[str, str, int] | None) -> None:
    """One cycle with at most one fault; checks G4 and G5 when it succeeds."""
    faults: dict[str, dict[str, Fault]] = {}
    hide: SourceRecord | None = None
    if fault is not None:
        where, method, number = fault
        if where == "hide":
            if world.records:
                hide = world.records[number % len(world.records)]
        elif where == "store-after":
            faults["store"] = {method: fail_after(number, error=WatermarkError("lost ack"))}
        elif where == "reader":
            faults["reader"] = {
                method: fail_on(number, error=FileReadError("injected", location="x"))
            }
        else:
            faults[where] = {method: fail_on(number)}
    orchestrator = world.orchestrator(world.archive_url, **faults)
    updates_before = world.watermark_updates
    try:
        with world.hidden(hide) if hide is not None else contextlib.nullcontext():
            result = orchestrator.run_cycle()
    except DeswmError:
        return
    assert result.window.end == TARGET  # G5: the target, computed once
    writes = world.watermark_updates - updates_before
    if result.window.empty:
        assert writes == 0
    elif result.buckets_committed:
        assert writes == result.buckets_committed  # G4: one write per committed bucket
    else:
        assert writes == 1  # a window without rows moves once


@REAL_DATABASES
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    # No shrinking: every step costs real requests, and shrinking a failure here can take
    # minutes. A failure prints its example and seed; reproduce it with --hypothesis-seed.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(world=worlds(), steps=STEPS)
def test_interrupted_cycles_never_lose_and_replay_identically(
    db_url: str,
    moto_s3: Any,
    s3_bucket: str,
    sql_backend: str,
    world: tuple[list[SourceRecord], dict[str, bytes]],
    steps: list[tuple[str, Any]],
) -> None:
    records, contents = world
    s3 = S3Files(moto_s3, s3_bucket, uuid.uuid4().hex[:10])
    setup = World(db_url, s3, records, contents)
    try:
        last = START
        for kind, detail in steps:
            if kind == "rewind":
                current = setup.store.get(KEY)
                if current is not None:
                    back = max(START, current.position - timedelta(days=detail))
                    setup.store.set(KEY, back, reason="matrix rewind")
                    last = back
                continue
            run_cycle(setup, detail)
            stored = setup.store.get(KEY)
            if stored is None:
                continue
            assert stored.position >= last, "the watermark moved backwards"  # G4
            assert stored.position == setup.router.bucket_start(stored.position)  # G5
            last = stored.position
            setup.check_no_loss(setup.archive_url, stored.position)  # G1

        result = setup.orchestrator(setup.archive_url).run_cycle()
        assert result.watermark_after == TARGET
        setup.check_no_loss(setup.archive_url, TARGET)

        clean_url = s3.archive_url("-clean")
        clean_store = SqlWatermarkStore(setup.store_engine, table=f"wmc_{setup.tag}")
        setup.orchestrator(clean_url, watermarks=clean_store).run_cycle()
        assert s3.objects(setup.archive_url) == s3.objects(clean_url)  # G2
        assert setup.source_writes == []  # G4: the source table is only read
    finally:
        setup.close()


# --- PostgreSQL: the server's own counters -----------------------------------------------------


def _pg_counts(admin: sa.Engine, schema: str, tables: list[str]) -> dict[str, tuple[int, ...]]:
    with admin.connect() as conn:
        conn.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
        rows = conn.execute(
            sa.text(
                "SELECT relname, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables "
                "WHERE schemaname = :schema AND relname = ANY(:tables)"
            ),
            {"schema": schema, "tables": tables},
        ).all()
    return {row[0]: (int(row[1]), int(row[2]), int(row[3])) for row in rows}


def _wait_for_backends_to_exit(admin: sa.Engine, application: str) -> None:
    """A backend flushes its table counters when it exits, before it leaves pg_stat_activity.

    Waits for every backend whose name starts with ``application`` but this one: the
    admin engine's own earlier connections (the inserts that fill the table) included.
    """
    deadline = time.monotonic() + 30
    while True:
        with admin.connect() as conn:
            left = conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE application_name LIKE :a AND pid <> pg_backend_pid()"
                ),
                {"a": f"{application}%"},
            ).scalar_one()
        if left == 0:
            return
        assert time.monotonic() < deadline, f"{left} backends of {application} did not exit"
        time.sleep(0.05)


@pytest.mark.parametrize("sql_backend", ["postgresql"])
def test_postgresql_counts_no_source_writes_and_one_update_per_bucket(
    db_url: str, moto_s3: Any, s3_bucket: str, sql_backend: str
) -> None:
    tag = uuid.uuid4().hex[:10]
    application = f"deswm-matrix-{tag}"
    schema = postgres_schema(db_url)
    connect = {"connect_args": {"application_name": application}, "poolclass": sa.pool.NullPool}
    admin = sa.create_engine(
        db_url,
        poolclass=sa.pool.NullPool,
        connect_args={"application_name": f"{application}-admin"},
    )
    source_engine = sa.create_engine(db_url, **connect)
    store_engine = sa.create_engine(db_url, **connect)
    s3 = S3Files(moto_s3, s3_bucket, tag)
    records = [
        SourceRecord(f"u{day}-{n}", START + day * DAY + n * timedelta(hours=2), f"{day}-{n}.dat")
        for day in range(4)
        for n in range(6)
    ]
    contents = {r.location: r.uid.encode() * 10 for r in records}
    table = _source_table(sa.MetaData(), "files")
    table.metadata.create_all(admin)
    _fill(
        admin,
        table,
        [
            {"uid": r.uid, "created_at": r.created_at, "file_location": s3.location(r)}
            for r in records
        ],
    )
    s3.upload(records, contents)
    with admin.begin() as conn:  # statement-level: counts even writes that touch no row
        conn.exec_driver_sql("CREATE TABLE write_audit (op TEXT NOT NULL)")
        conn.exec_driver_sql(
            "CREATE FUNCTION audit_write() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN INSERT INTO write_audit VALUES (TG_OP); RETURN NULL; END $$"
        )
        conn.exec_driver_sql(
            "CREATE TRIGGER files_writes AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE "
            "ON files FOR EACH STATEMENT EXECUTE FUNCTION audit_write()"
        )
    updates: list[str] = []
    sa.event.listen(
        store_engine,
        "before_cursor_execute",
        lambda _c, _cu, statement, *_: (
            updates.append(statement) if _verb(statement) == "UPDATE" else None
        ),
    )
    router = DesRouter(4)
    store = SqlWatermarkStore(store_engine, table="watermark")
    store.create_tables()  # before the baseline (reads never create them)
    _wait_for_backends_to_exit(admin, application)
    before = _pg_counts(admin, schema, ["files", "watermark"])

    def orchestrator(max_buckets: int | None) -> WatermarkOrchestrator:
        return WatermarkOrchestrator(
            store,
            SqlSourceProvider(source_engine, "files", page_size=5),
            s3.reader(),
            router,
            s3.packer(s3.archive_url(), router),
            pipeline=PIPELINE,
            lag=DAY,
            initial=START,
            clock=lambda: NOW,
            max_buckets=max_buckets,
        )

    results = [orchestrator(2).run_cycle(), orchestrator(None).run_cycle()]
    results.append(orchestrator(None).run_cycle())  # caught up: writes nothing
    committed = sum(r.buckets_committed for r in results)
    assert [r.buckets_committed for r in results] == [2, 2, 0]
    source_engine.dispose()
    store_engine.dispose()
    _wait_for_backends_to_exit(admin, application)
    after = _pg_counts(admin, schema, ["files", "watermark"])
    with admin.connect() as conn:
        audited = conn.exec_driver_sql("SELECT op FROM write_audit").scalars().all()
    admin.dispose()
    assert audited == []
    assert after["files"] == before["files"]  # no tuple inserted, updated or deleted
    ins, upd, dele = (a - b for a, b in zip(after["watermark"], before["watermark"], strict=True))
    assert (ins, upd, dele) == (1, committed, 0)  # created once, one update per bucket
    assert len(updates) == committed
    archive = s3.archive(s3.archive_url(), router)
    for record in records:
        assert archive.get(record.uid, record.created_at) == contents[record.location]


# --- MariaDB: streaming while committing ------------------------------------------------------


class CountingSource:
    """A SourceProvider that counts the rows it has handed out."""

    def __init__(self, inner: SqlSourceProvider) -> None:
        self.inner = inner
        self.yielded = 0

    def iter_records(self, window: Window) -> Iterator[SourceRecord]:
        for record in self.inner.iter_records(window):
            self.yielded += 1
            yield record

    def pending_stats(self, window: Window) -> PendingStats:
        return self.inner.pending_stats(window)

    def location_references(self, locations: Collection[str]) -> Iterator[LocationReference]:
        return self.inner.location_references(locations)


class CommitLog(CycleObserver):
    def __init__(self, source: CountingSource) -> None:
        self.source = source
        self.at: list[int] = []

    def bucket_committed(self, key: WatermarkKey, result: Any, watermark: Any) -> None:
        self.at.append(self.source.yielded)


@pytest.mark.parametrize("sql_backend", ["mysql"])
def test_mariadb_streams_every_row_while_commits_happen_mid_page(
    db_url: str, sql_backend: str, tmp_path: Path
) -> None:
    days, per_day, page = 10, 2_050, 5_000
    total = days * per_day
    engine = sa.create_engine(db_url)  # one engine for source and store, as one URL gives
    try:
        table = _source_table(sa.MetaData(), "files")
        table.metadata.create_all(engine)
        step = DAY / per_day
        rows: list[dict[str, Any]] = [
            {
                "uid": f"{d:02d}{n:05d}",
                "created_at": START + d * DAY + n * step,
                "file_location": f"{d}/{n}",
            }
            for d in range(days)
            for n in range(per_day)
        ]
        _fill(engine, table, rows)
        source = CountingSource(SqlSourceProvider(engine, "files", page_size=page))
        commits = CommitLog(source)
        router = DesRouter(4)
        reader = MemoryFileReader({row["file_location"]: row["uid"].encode() for row in rows})
        result = WatermarkOrchestrator(
            SqlWatermarkStore(engine),
            source,
            reader,
            router,
            DesPacker(str(tmp_path / "archive"), router, workers=0),
            pipeline=PIPELINE,
            lag=DAY,
            initial=START,
            clock=lambda: START + (days + 1) * DAY + timedelta(hours=1),
            observers=[commits],
        ).run_cycle()
        assert result.files == total
        assert result.buckets_committed == days
        assert source.yielded == total
        # Commits while a page was open and partly read: the cut-off's conditions.
        mid_page = [n for n in commits.at[:-1] if n % page and n < total]
        assert len(mid_page) >= days - 2, commits.at
        archive = Archive(str(tmp_path / "archive"), router)
        archived: set[str] = set()
        for day in range(days):
            for part in archive.shards(START + day * DAY):
                archived.update(entry.uid for entry in archive.entries(part.name))
        assert archived == {row["uid"] for row in rows}
    finally:
        engine.dispose()


@pytest.mark.parametrize("sql_backend", ["mysql"])
@pytest.mark.parametrize("collation", ["utf8mb4_bin", "utf8mb4_general_ci"])
def test_mysql_collations_keep_uids_they_compare_equal(
    db_url: str, sql_backend: str, collation: str, tmp_path: Path
) -> None:
    """MariaDB's ``_bin`` pads spaces (``'a' = 'a '``) and ``_ci`` folds case too: pages
    of one row must still yield every uid, so the watermark never passes a skipped one."""
    engine = sa.create_engine(db_url)
    try:
        table = _source_table(sa.MetaData(), "files", uid_collation=collation)
        table.metadata.create_all(engine)
        at = START + timedelta(hours=3)
        uids = ["a", "a ", "A", "A  ", "b"] if collation.endswith("_ci") else ["a", "a ", "b"]
        _fill(engine, table, [{"uid": u, "created_at": at, "file_location": u} for u in uids])
        router = DesRouter(4)
        result = WatermarkOrchestrator(
            SqlWatermarkStore(engine),
            SqlSourceProvider(engine, "files", page_size=1),
            MemoryFileReader({u: u.encode() for u in uids}),
            router,
            DesPacker(str(tmp_path / "archive"), router, workers=0),
            pipeline=PIPELINE,
            lag=DAY,
            initial=START,
            clock=lambda: START + 2 * DAY,
        ).run_cycle()
        assert result.watermark_after == START + DAY
        assert result.files == len(uids)
    finally:
        engine.dispose()


# --- identifiers ------------------------------------------------------------------------------


@REAL_DATABASES
def test_schema_qualified_tables_with_odd_identifiers(
    db_url: str, moto_s3: Any, s3_bucket: str, sql_backend: str
) -> None:
    schema = f"Arch Schema {uuid.uuid4().hex[:6]}"
    columns = ("File UID", "Created At", "File Location", "Size Bytes")
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.schema.CreateSchema(schema))
    try:
        table = _source_table(sa.MetaData(), "My Files", schema=schema, columns=columns)
        table.metadata.create_all(engine)
        s3 = S3Files(moto_s3, s3_bucket, uuid.uuid4().hex[:10])
        records = [
            SourceRecord(f"Uid {n}", START + n * timedelta(hours=9), f"{n}.dat") for n in range(8)
        ]
        contents = {r.location: f"content {r.uid}".encode() for r in records}
        _fill(
            engine,
            table,
            [
                {columns[0]: r.uid, columns[1]: r.created_at, columns[2]: s3.location(r)}
                for r in records
            ],
        )
        s3.upload(records, contents)
        router = DesRouter(4)
        store = SqlWatermarkStore(engine, table="Water Mark", schema=schema)
        source = SqlSourceProvider(
            engine,
            "My Files",
            schema=schema,
            uid_column=columns[0],
            created_at_column=columns[1],
            location_column=columns[2],
            size_column=columns[3],
            page_size=3,
        )
        result = WatermarkOrchestrator(
            store,
            source,
            s3.reader(),
            router,
            s3.packer(s3.archive_url(), router),
            pipeline="My Files",
            lag=DAY,
            initial=START,
            clock=lambda: NOW,
        ).run_cycle()
        assert result.files == len(records)
        assert result.watermark_after == TARGET
        archive = s3.archive(s3.archive_url(), router)
        for record in records:
            assert archive.get(record.uid, record.created_at) == contents[record.location]
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names(schema=schema))
        assert tables == {"My Files", "Water Mark", "Water Mark_history"}
        stored = store.get(WatermarkKey("My Files"))
        assert stored is not None
        assert stored.position == TARGET
    finally:
        with engine.begin() as conn:
            conn.execute(sa.schema.DropSchema(schema, cascade=sql_backend == "postgresql"))
        engine.dispose()


# --- the legacy table ---------------------------------------------------------------------------


@REAL_DATABASES
def test_legacy_table_through_a_cycle(
    db_url: str, moto_s3: Any, s3_bucket: str, sql_backend: str
) -> None:
    engine = sa.create_engine(db_url)
    try:
        legacy_value = START + timedelta(days=1, hours=13, minutes=45, seconds=10)
        column = "DATETIME" if sql_backend == "mysql" else "TIMESTAMP WITH TIME ZONE"
        with engine.begin() as conn:
            conn.exec_driver_sql(
                f"CREATE TABLE des_archive_config (id INTEGER PRIMARY KEY, "
                f"archived_until {column} NOT NULL, lag_days INTEGER NOT NULL)"
            )
            conn.execute(
                sa.text("INSERT INTO des_archive_config VALUES (1, :at, 1)"),
                {
                    "at": legacy_value.replace(tzinfo=None)
                    if sql_backend == "mysql"
                    else legacy_value
                },
            )
        table = _source_table(sa.MetaData(), "files")
        table.metadata.create_all(engine)
        s3 = S3Files(moto_s3, s3_bucket, uuid.uuid4().hex[:10])
        records = [
            SourceRecord(f"r{n}", START + n * timedelta(hours=7), f"{n}.dat") for n in range(16)
        ]
        contents = {r.location: r.uid.encode() for r in records}
        _fill(
            engine,
            table,
            [
                {"uid": r.uid, "created_at": r.created_at, "file_location": s3.location(r)}
                for r in records
            ],
        )
        s3.upload(records, contents)
        router = DesRouter(4)
        store = LegacyArchiveConfigStore(engine, pipeline="files")
        result = WatermarkOrchestrator(
            store,
            SqlSourceProvider(engine, "files", page_size=4),
            s3.reader(),
            router,
            s3.packer(s3.archive_url(), router),
            pipeline="files",
            lag=DAY,
            clock=lambda: NOW,
        ).run_cycle()
        replay_from = START + DAY  # the midnight at or before the legacy value
        assert result.window.start == replay_from
        assert result.files == sum(1 for r in records if replay_from <= r.created_at < TARGET)
        archive = s3.archive(s3.archive_url(), router)
        for record in records:
            if replay_from <= record.created_at < TARGET:
                assert archive.get(record.uid, record.created_at) == contents[record.location]
            else:
                assert not archive.exists(record.uid, record.created_at)
        with engine.connect() as conn:
            raw = conn.exec_driver_sql("SELECT archived_until FROM des_archive_config").scalar()
        assert raw in (TARGET, TARGET.replace(tzinfo=None))
    finally:
        engine.dispose()


# --- secrets ------------------------------------------------------------------------------------

ACCESS_KEY = "AKIAMATRIXSECRETKEY7"
SECRET_KEY = "matrix-secret-value-3f9c1e"


@pytest.mark.parametrize("sql_backend", ["postgresql"])
def test_credentials_never_reach_logs_reprs_or_errors(
    db_url: str,
    moto_s3: Any,
    s3_bucket: str,
    sql_backend: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="deswm")
    s3_options = {
        "key": ACCESS_KEY,
        "secret": SECRET_KEY,
        "client_kwargs": {"endpoint_url": moto_s3.endpoint_url},
        "skip_instance_cache": True,
    }
    config: dict[str, Any] = {  # shaped like a config file's sections
        "source": {"url": db_url, "table": "files", "page_size": 3},
        "files": {"storage_options": {"s3": s3_options}},
        "watermark": {
            "kind": "object",
            "url": f"s3://{s3_bucket}/wm",
            "storage_options": s3_options,
        },
        "archive": {"url": f"s3://{s3_bucket}/archive", "storage_options": s3_options},
    }
    engine = sa.create_engine(config["source"]["url"])
    shown: list[str] = []
    try:
        table = _source_table(sa.MetaData(), "files")
        table.metadata.create_all(engine)
        records = [
            SourceRecord(f"s{n}", START + n * timedelta(hours=11), f"{n}.dat") for n in range(6)
        ]
        files = {f"s3://{s3_bucket}/src/{r.location}": r.uid.encode() for r in records}
        moto_s3.filesystem().pipe(files)
        missing = SourceRecord("gone", START + 3 * DAY + timedelta(hours=1), "gone.dat")
        _fill(
            engine,
            table,
            [
                {
                    "uid": r.uid,
                    "created_at": r.created_at,
                    "file_location": f"s3://{s3_bucket}/src/{r.location}",
                }
                for r in [*records, missing]
            ],
        )
        router = DesRouter(4)
        store = ObjectStoreWatermarkStore(
            config["watermark"]["url"], storage_options=config["watermark"]["storage_options"]
        )
        source = SqlSourceProvider(engine, config["source"]["table"], page_size=3)
        reader = FsspecFileReader(storage_options=config["files"]["storage_options"])
        packer = DesPacker(
            config["archive"]["url"],
            router,
            storage_options=config["archive"]["storage_options"],
            workers=0,
        )
        archive = Archive(
            config["archive"]["url"], router, storage_options=config["archive"]["storage_options"]
        )
        orchestrator = WatermarkOrchestrator(
            store,
            source,
            reader,
            router,
            packer,
            pipeline="files",
            lag=DAY,
            initial=START,
            clock=lambda: NOW,
        )
        with pytest.raises(CycleError) as failed:  # the missing file stops its bucket
            orchestrator.run_cycle()
        shown.append(str(failed.value))
        stored = store.get(WatermarkKey("files"))
        assert stored is not None
        assert stored.position == START + 3 * DAY
        assert archive.get("s0", records[0].created_at) == b"s0"
        wrong = ObjectStoreWatermarkStore(
            f"s3://{s3_bucket}-missing/wm", storage_options=config["watermark"]["storage_options"]
        )
        with pytest.raises(WatermarkError) as no_bucket:
            wrong.get(WatermarkKey("files"))
        shown.append(str(no_bucket.value))
        with pytest.raises(FileReadError) as unreadable:
            reader.read(f"s3://{s3_bucket}-missing/x")
        shown.append(str(unreadable.value))
        shown += [repr(c) for c in (store, wrong, source, reader, packer, archive, orchestrator)]
        shown.append(caplog.text)
        shown += [record.getMessage() for record in caplog.records]
    finally:
        engine.dispose()
    assert any("committed" in record.getMessage() for record in caplog.records)
    for text in shown:
        assert ACCESS_KEY not in text
        assert SECRET_KEY not in text
