"""Partition pushdown: K partition runners read the window once between them, not K times.

The DES shard index computed by each database equals :meth:`DesRouter.shard_index`
(hypothesis over digits, long digit strings, Unicode and integer columns); each
partition fetches exactly its own rows (PostgreSQL without ``deswm_crc32``: its own
digit rows plus every other row); and the archive is byte-identical to the one built
with Python filtering.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import mysql

from deswm._model import Partition, SourceRecord, Window
from deswm._orchestrator import WatermarkOrchestrator
from deswm._packer import DesPacker
from deswm._protocols import PartitionedSource
from deswm._routing import DesRouter
from deswm._sources.sql import SqlSourceProvider
from deswm._sql.shardsql import POSTGRES_CRC32_DDL, shard_expression
from deswm._stores.sql import SqlWatermarkStore
from deswm.cli import main
from deswm.testing._readers import MemoryFileReader

T0 = datetime(2024, 5, 1, tzinfo=UTC)
WINDOW = Window(T0, T0 + timedelta(days=3))
NOW = T0 + timedelta(days=4)
DIGITS = st.text("0123456789", min_size=1, max_size=40)
UIDS = st.one_of(
    DIGITS,
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=40),
    st.integers(min_value=0, max_value=10**60).map(str),
    st.sampled_from(["007", "0", "²", "12 ", " 12", "1\n", "é", "日本語", "-5", "1.5"]),
)
CREATED = ["deswm_crc32_table()", "deswm_crc32(bytea)"]
INTS = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def _uid_type() -> Any:
    return sa.String(200).with_variant(
        mysql.VARCHAR(200, charset="utf8mb4", collation="utf8mb4_nopad_bin"), "mysql", "mariadb"
    )


def _table(metadata: sa.MetaData, uid: Any) -> sa.Table:
    return sa.Table(
        "files",
        metadata,
        sa.Column("uid", uid, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("file_location", sa.String(300), nullable=False),
        sa.Column("size_bytes", sa.Integer),
        sa.Index("ix_files_created_at_uid", "created_at", "uid"),
    )


def _install(engine: sa.Engine) -> None:
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.exec_driver_sql(POSTGRES_CRC32_DDL)


def _sql_shards(
    engine: sa.Engine, table: sa.Table, values: list[Any], n_bits: int
) -> list[tuple[Any, int | None]]:
    source = SqlSourceProvider(engine, table)
    cols = source._resolve()
    expression = shard_expression(
        engine.dialect.name, table.c.uid, table.c.uid.type, n_bits, postgres_crc32=True
    )
    assert expression is not None
    with engine.begin() as conn:
        conn.execute(table.delete())
        conn.execute(
            table.insert(),
            [
                {"uid": value, "created_at": T0.replace(tzinfo=None), "file_location": "x"}
                for value in values
            ],
        )
    with source._connection(cols) as conn:
        return [(row[0], row[1]) for row in conn.execute(sa.select(table.c.uid, expression))]


@pytest.fixture
def text_table(engine: sa.Engine) -> sa.Table:
    table = _table(sa.MetaData(), _uid_type())
    table.create(engine)
    _install(engine)
    return table


@pytest.fixture
def int_table(engine: sa.Engine) -> sa.Table:
    table = _table(sa.MetaData(), sa.BigInteger)
    table.create(engine)
    _install(engine)
    return table


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(uids=st.lists(UIDS, min_size=1, max_size=30, unique=True), n_bits=st.integers(4, 16))
def test_sql_shard_index_of_text_uids_is_des(
    engine: sa.Engine, text_table: sa.Table, uids: list[str], n_bits: int
) -> None:
    router = DesRouter(n_bits)
    found = _sql_shards(engine, text_table, uids, n_bits)
    assert sorted(found) == sorted((uid, router.shard_index(uid)) for uid in uids)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(uids=st.lists(INTS, min_size=1, max_size=30, unique=True), n_bits=st.integers(4, 16))
def test_sql_shard_index_of_integer_uids_is_des(
    engine: sa.Engine, int_table: sa.Table, uids: list[int], n_bits: int
) -> None:
    router = DesRouter(n_bits)
    found = _sql_shards(engine, int_table, uids, n_bits)
    assert sorted(found) == sorted((uid, router.shard_index(uid)) for uid in uids)


# --- what each partition fetches ---------------------------------------------------------


def _rows(count: int = 240) -> list[dict[str, Any]]:
    rows = []
    for i in range(count):
        uid = str(10_000 + i // 2) if i % 2 else f"file-{i:04d}-é"
        created = T0 + timedelta(hours=i % 70, microseconds=i)
        rows.append(
            {
                "uid": uid,
                "created_at": created.replace(tzinfo=None),
                "file_location": f"loc/{uid}",
                "size_bytes": 3,
            }
        )
    return rows


@pytest.fixture
def loaded(engine: sa.Engine) -> sa.Table:
    table = _table(sa.MetaData(), _uid_type())
    table.create(engine)
    with engine.begin() as conn:
        conn.execute(table.insert(), _rows())
    return table


def _fetched(source: SqlSourceProvider, router: DesRouter, partition: Partition) -> list[str]:
    return [r.uid for r in source.iter_partition_records(WINDOW, router, partition)]


@pytest.mark.parametrize("count", [2, 3])
def test_each_partition_fetches_only_its_rows(
    engine: sa.Engine, loaded: sa.Table, count: int
) -> None:
    _install(engine)
    router = DesRouter(8)
    source = SqlSourceProvider(engine, "files")
    everything = [r.uid for r in source.iter_records(WINDOW)]
    assert isinstance(source, PartitionedSource)
    fetched_total = 0
    for index in range(count):
        partition = Partition(index, count)
        fetched = _fetched(source, router, partition)
        owned = [uid for uid in everything if partition.owns(router.shard_index(uid))]
        assert fetched == owned  # same rows, same (created_at, uid) order
        fetched_total += len(fetched)
    assert fetched_total == len(everything)


@pytest.mark.parametrize("sql_backend", ["postgresql"])
def test_postgresql_without_the_function_reads_text_uids_whole(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = sa.create_engine(db_url)
    try:
        table = _table(sa.MetaData(), _uid_type())
        table.create(engine)
        with engine.begin() as conn:
            conn.execute(table.insert(), _rows())
        router, partition = DesRouter(8), Partition(1, 2)
        source = SqlSourceProvider(engine, "files")
        everything = [r.uid for r in source.iter_records(WINDOW)]
        with caplog.at_level(logging.INFO, logger="deswm"):
            assert _fetched(source, router, partition) == everything
            _fetched(source, router, partition)
        told = [r for r in caplog.records if "deswm_crc32" in r.getMessage()]
        assert len(told) == 1
        assert told[0].levelno == logging.INFO
        assert source.install_functions() == CREATED
        owned = [uid for uid in everything if partition.owns(router.shard_index(uid))]
        assert _fetched(source, router, partition) == owned
    finally:
        engine.dispose()


@pytest.mark.parametrize("sql_backend", ["postgresql"])
def test_postgresql_filters_integer_uids_without_the_function(db_url: str) -> None:
    engine = sa.create_engine(db_url)
    try:
        table = _table(sa.MetaData(), sa.BigInteger)
        table.create(engine)
        with engine.begin() as conn:
            conn.execute(
                table.insert(),
                [
                    {
                        "uid": n,
                        "created_at": (T0 + timedelta(minutes=n + 10)).replace(tzinfo=None),
                        "file_location": f"loc/{n}",
                    }
                    for n in range(-10, 90)
                ],
            )
        router, partition = DesRouter(8), Partition(0, 3)
        source = SqlSourceProvider(engine, "files")
        everything = [r.uid for r in source.iter_records(WINDOW)]
        negatives = [uid for uid in everything if uid.startswith("-")]
        owned = [uid for uid in everything if partition.owns(router.shard_index(uid))]
        fetched = _fetched(source, router, partition)
        # Negative uids route by CRC32: without the function they are read to be filtered.
        assert fetched == [uid for uid in everything if uid in owned or uid in negatives]
        source.install_functions()
        assert _fetched(SqlSourceProvider(engine, "files"), router, partition) == owned
    finally:
        engine.dispose()


def test_install_functions_is_a_no_op_elsewhere(engine: sa.Engine, loaded: sa.Table) -> None:
    expected = CREATED if engine.dialect.name == "postgresql" else []
    assert SqlSourceProvider(engine, "files").install_functions() == expected


def test_a_router_that_is_not_des_is_not_pushed_down(engine: sa.Engine, loaded: sa.Table) -> None:
    class Other(DesRouter):
        def shard_index(self, uid: str | int) -> int:
            return 0

    source = SqlSourceProvider(engine, "files")
    everything = [r.uid for r in source.iter_records(WINDOW)]
    assert _fetched(source, Other(8), Partition(1, 2)) == everything


def test_char_uid_columns_are_not_pushed_down(engine: sa.Engine) -> None:
    table = _table(sa.MetaData(), sa.CHAR(20))
    assert shard_expression(engine.dialect.name, table.c.uid, table.c.uid.type, 8) is None


# --- the cycle ---------------------------------------------------------------------------


class _PythonFiltered:
    """The same source without the capability: the orchestrator filters in Python."""

    def __init__(self, inner: SqlSourceProvider) -> None:
        self.inner = inner
        self.read: list[str] = []

    def iter_records(self, window: Window) -> Iterator[SourceRecord]:
        for record in self.inner.iter_records(window):
            self.read.append(record.uid)
            yield record

    def pending_stats(self, window: Window) -> Any:
        return self.inner.pending_stats(window)

    def location_references(self, locations: Any) -> Any:
        return self.inner.location_references(locations)


class _Counting(SqlSourceProvider):
    read: list[str]

    def iter_partition_records(
        self, window: Window, router: Any, partition: Partition
    ) -> Iterator[SourceRecord]:
        for record in super().iter_partition_records(window, router, partition):
            self.read.append(record.uid)
            yield record


def _archive_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.des"))}


def _run_partitions(engine: sa.Engine, root: Path, pushdown: bool) -> tuple[dict[str, bytes], int]:
    router = DesRouter(4)
    files = {f"loc/{row['uid']}": row["uid"].encode() for row in _rows()}
    read = 0
    for index in range(2):
        inner: Any
        if pushdown:
            inner = _Counting(engine, "files")
            inner.read = []
        else:
            inner = _PythonFiltered(SqlSourceProvider(engine, "files"))
        store = SqlWatermarkStore(engine, table=f"wm_{'push' if pushdown else 'py'}")
        orchestrator = WatermarkOrchestrator(
            store,
            inner,
            MemoryFileReader(files),
            router,
            DesPacker(str(root), router),
            pipeline="p",
            lag=timedelta(0),
            partition=Partition(index, 2),
            initial=T0,
            clock=lambda: NOW,
        )
        orchestrator.run_cycle()
        read += len(inner.read)
    return _archive_bytes(root), read


def test_pushed_down_partitions_build_the_python_filtered_archive(
    engine: sa.Engine, loaded: sa.Table, tmp_path: Path
) -> None:
    _install(engine)
    pushed, pushed_reads = _run_partitions(engine, tmp_path / "push", True)
    python, python_reads = _run_partitions(engine, tmp_path / "py", False)
    assert pushed and pushed == python
    assert python_reads == 2 * len(_rows())
    assert pushed_reads == len(_rows())


def test_the_orchestrator_still_drops_rows_a_source_did_not_filter(
    sqlite_db_url: str, tmp_path: Path
) -> None:
    engine = sa.create_engine(sqlite_db_url)
    table = _table(sa.MetaData(), _uid_type())
    table.create(engine)
    with engine.begin() as conn:
        conn.execute(table.insert(), _rows())

    class Ignores(SqlSourceProvider):
        def iter_partition_records(
            self, window: Window, router: Any, partition: Partition
        ) -> Iterator[SourceRecord]:
            return self.iter_records(window)

    router = DesRouter(4)
    files = {f"loc/{row['uid']}": row["uid"].encode() for row in _rows()}
    orchestrator = WatermarkOrchestrator(
        SqlWatermarkStore(engine),
        Ignores(engine, "files"),
        MemoryFileReader(files),
        router,
        DesPacker(str(tmp_path), router),
        pipeline="p",
        lag=timedelta(0),
        partition=Partition(1, 2),
        initial=T0,
        clock=lambda: NOW,
    )
    result = orchestrator.run_cycle()
    owned = [r for r in _rows() if Partition(1, 2).owns(router.shard_index(r["uid"]))]
    assert result.files == len(owned) < len(_rows())
    engine.dispose()


# --- deswm source install-functions ------------------------------------------------------


def test_cli_prints_the_postgresql_function(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["source", "install-functions", "--print-sql"]) == 0
    out = capsys.readouterr().out
    assert "CREATE OR REPLACE FUNCTION deswm_crc32(data bytea)" in out


@pytest.mark.parametrize("sql_backend", ["postgresql"])
def test_cli_installs_the_postgresql_function(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "deswm.toml"
    config.write_text(
        f'[source]\nurl = "{db_url}"\ntable = "files"\n\n'
        f'[archive]\nurl = "{(tmp_path / "archive").as_posix()}"\n'
    )
    engine = sa.create_engine(db_url)
    lookup = sa.text("SELECT to_regprocedure('deswm_crc32(bytea)') IS NOT NULL")
    try:
        with engine.connect() as conn:
            assert conn.execute(lookup).scalar() is False
        assert main(["source", "install-functions", "-c", str(config), "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == {"created": CREATED}
        with engine.connect() as conn:
            assert conn.execute(lookup).scalar() is True
            assert conn.execute(sa.text("SELECT deswm_crc32('\\x616263'::bytea)")).scalar() == (
                zlib.crc32(b"abc")
            )
    finally:
        engine.dispose()
