"""Transient database errors: one classification, retried reads, and an exact-once watermark
compare-and-set when a commit's outcome is unknown (issue 11, item 3)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from deswm._errors import SourceError, WatermarkConflict, WatermarkError
from deswm._model import WatermarkKey, Window
from deswm._sources.sql import SqlSourceProvider
from deswm._sql.errors import TRANSIENT_ATTEMPTS, is_transient
from deswm._stores.sql import SqlWatermarkStore
from deswm.testing import Checkpoint, at_checkpoint

T0 = datetime(2024, 5, 1, tzinfo=UTC)
DAY = timedelta(days=1)
KEY = WatermarkKey("orders")


class _Orig(Exception):
    """A driver exception with the attributes drivers set."""

    def __init__(self, *args: Any, sqlstate: str | None = None) -> None:
        super().__init__(*args)
        self.sqlstate = sqlstate


def _db_error(
    orig: BaseException,
    *,
    kind: type[sa.exc.DBAPIError] = sa.exc.OperationalError,
    lost: bool = False,
) -> sa.exc.DBAPIError:
    return kind("SELECT 1", {}, orig, connection_invalidated=lost)


@pytest.mark.parametrize(
    "error",
    [
        _db_error(_Orig("could not serialize access", sqlstate="40001")),
        _db_error(_Orig("deadlock detected", sqlstate="40P01")),
        _db_error(_Orig("connection failure", sqlstate="08006")),
        _db_error(_Orig("terminating connection", sqlstate="57P01")),
        _db_error(_Orig(1213, "Deadlock found when trying to get lock")),
        _db_error(_Orig(2013, "Lost connection to MySQL server during query")),
        _db_error(ConnectionResetError(104, "Connection reset by peer")),
        _db_error(_Orig("server closed the connection"), lost=True),
        sa.exc.DisconnectionError("gone"),
    ],
    ids=lambda e: str(getattr(e, "orig", e))[:30],
)
def test_transient_errors(error: BaseException) -> None:
    assert is_transient(error)


@pytest.mark.parametrize(
    "error",
    [
        _db_error(_Orig("lock timeout", sqlstate="55P03")),
        _db_error(_Orig("canceling statement due to statement timeout", sqlstate="57014")),
        _db_error(_Orig("duplicate key", sqlstate="23505"), kind=sa.exc.IntegrityError),
        _db_error(_Orig('relation "x" does not exist', sqlstate="42P01")),
        _db_error(_Orig(1146, "Table 'x' doesn't exist")),
        _db_error(_Orig("no such table: x")),
        ValueError("not a database error"),
    ],
    ids=lambda e: str(getattr(e, "orig", e))[:30],
)
def test_errors_that_are_not_transient(error: BaseException) -> None:
    assert not is_transient(error)


# --- the watermark compare-and-set ---------------------------------------------------------


@pytest.fixture
def store(sqlite_db_url: str) -> Iterator[SqlWatermarkStore]:
    store = SqlWatermarkStore(sqlite_db_url, actor="tester@sql")
    try:
        yield store
    finally:
        store.close()


def _connection_lost() -> sa.exc.OperationalError:
    return sa.exc.OperationalError(
        "COMMIT", {}, ConnectionResetError(104, "Connection reset by peer"), True
    )


def _versions(store: SqlWatermarkStore) -> list[tuple[int, datetime]]:
    table = store.watermark_table
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(table.c.version, table.c.position)).all()
    return [(int(version), position) for version, position in rows]


def test_a_commit_whose_connection_broke_after_it_counts_once(
    store: SqlWatermarkStore,
) -> None:
    """The UPDATE committed, then the connection broke: the retry finds its own write
    and returns it, instead of a conflict with itself or a second move."""
    current = store.initialize(KEY, T0)
    with at_checkpoint(Checkpoint.STORE_ADVANCE_AFTER_COMMIT, _connection_lost(), on=1) as hits:
        moved = store.advance(current, T0 + DAY)
    assert len(hits) == 1  # the retry did not write again
    assert (moved.version, moved.position) == (2, T0 + DAY)
    assert _versions(store) == [(2, T0 + DAY)]
    assert store.advance(moved, T0 + 2 * DAY).version == 3


def test_a_transient_failure_before_the_commit_is_retried(store: SqlWatermarkStore) -> None:
    current = store.initialize(KEY, T0)
    with at_checkpoint(Checkpoint.STORE_ADVANCE_IN_TRANSACTION, _connection_lost(), on=1) as hits:
        moved = store.advance(current, T0 + DAY)
    assert len(hits) == 2  # rolled back, then written by the second try
    assert _versions(store) == [(2, T0 + DAY)] and moved.version == 2


def test_another_runners_move_is_still_a_conflict_after_a_retry(
    store: SqlWatermarkStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first try is rolled back; another runner moves the row before the second
    try: that write is not taken for this store's own."""
    current = store.initialize(KEY, T0)
    own_write_found = store._wrote

    def other_runner_first(updated: Any) -> bool:
        SqlWatermarkStore(store.engine, actor="other@host").advance(current, T0 + 2 * DAY)
        return own_write_found(updated)

    monkeypatch.setattr(store, "_wrote", other_runner_first)
    with (
        at_checkpoint(Checkpoint.STORE_ADVANCE_IN_TRANSACTION, _connection_lost(), on=1),
        pytest.raises(WatermarkConflict),
    ):
        store.advance(current, T0 + DAY)
    assert _versions(store) == [(2, T0 + 2 * DAY)]


def test_an_error_that_is_not_transient_is_not_retried(store: SqlWatermarkStore) -> None:
    current = store.initialize(KEY, T0)
    error = sa.exc.ProgrammingError("UPDATE", {}, _Orig("syntax error", sqlstate="42601"))
    with (
        at_checkpoint(Checkpoint.STORE_ADVANCE_IN_TRANSACTION, error) as hits,
        pytest.raises(WatermarkError),
    ):
        store.advance(current, T0 + DAY)
    assert len(hits) == 1
    assert _versions(store) == [(1, T0)]


def test_reads_are_retried(store: SqlWatermarkStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.initialize(KEY, T0)
    failures = [_connection_lost()]
    connect = sa.Engine.connect

    def flaky(engine: sa.Engine) -> sa.Connection:
        if failures:
            raise failures.pop()
        return connect(engine)

    monkeypatch.setattr(sa.Engine, "connect", flaky)
    stored = store.get(KEY)
    assert stored is not None and stored.position == T0 and not failures


def test_a_read_that_keeps_failing_names_the_table(
    store: SqlWatermarkStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.initialize(KEY, T0)
    calls: list[int] = []

    def down(_engine: sa.Engine) -> sa.Connection:
        calls.append(1)
        raise _connection_lost()

    monkeypatch.setattr(sa.Engine, "connect", down)
    with pytest.raises(WatermarkError, match="deswm_watermark"):
        store.get(KEY)
    assert len(calls) == TRANSIENT_ATTEMPTS


# --- the source ----------------------------------------------------------------------------


def test_a_source_page_is_retried_after_a_lost_connection(
    sqlite_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = sa.create_engine(sqlite_db_url)
    metadata = sa.MetaData()
    table = sa.Table(
        "files",
        metadata,
        sa.Column("uid", sa.String(64)),
        sa.Column("created_at", sa.DateTime),
        sa.Column("file_location", sa.Text),
        sa.Column("size_bytes", sa.BigInteger),
    )
    metadata.create_all(engine)
    rows = [
        {"uid": f"u{i}", "created_at": datetime(2024, 5, 1, i), "file_location": f"f{i}"}
        for i in range(5)
    ]
    with engine.begin() as conn:
        conn.execute(table.insert(), rows)
    source = SqlSourceProvider(engine, table="files", page_size=2)
    assert len(list(source.iter_records(Window(T0, T0 + DAY)))) == 5  # reflected now
    failures = [_connection_lost(), _connection_lost()]
    pages: list[str] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def lose_connection(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "ORDER BY files.created_at" in statement:
            pages.append(statement)
            if len(pages) >= 2 and failures:  # the second page, twice
                raise failures.pop()

    records = list(source.iter_records(Window(T0, T0 + DAY)))
    assert [r.uid for r in records] == [f"u{i}" for i in range(5)]
    assert not failures and len(pages) == 3 + 2  # 3 pages, the second tried 3 times
    failures.extend(_connection_lost() for _ in range(10))

    @sa.event.listens_for(engine, "before_cursor_execute")
    def lose_every_statement(*_args: Any) -> None:
        if failures:
            raise failures.pop()

    with pytest.raises(SourceError, match="files"):
        source.pending_stats(Window(T0, T0 + DAY))
    engine.dispose()


# --- real servers: a connection the server ended -------------------------------------------


def _end_other_sessions(engine: sa.Engine) -> int:
    """Terminate every other session of ``engine``'s user (as a DBA or a failover would)."""
    killer = sa.create_engine(engine.url, poolclass=sa.pool.NullPool)
    try:
        with killer.begin() as conn:
            if engine.dialect.name == "postgresql":
                query = (
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE pid <> pg_backend_pid() AND datname = current_database() "
                    "AND usename = current_user AND backend_type = 'client backend'"
                )
                return len(conn.execute(sa.text(query)).all())
            mine = conn.execute(sa.text("SELECT CONNECTION_ID()")).scalar_one()
            database = conn.execute(sa.text("SELECT DATABASE()")).scalar_one()
            ids = conn.execute(
                sa.text(
                    "SELECT id FROM information_schema.processlist WHERE id <> :mine AND db = :db"
                ),
                {"mine": mine, "db": database},
            ).scalars()
            killed = 0
            for session in ids:
                conn.execute(sa.text(f"KILL {int(session)}"))
                killed += 1
            return killed
    finally:
        killer.dispose()


@pytest.mark.parametrize("sql_backend", ["postgresql", "mysql"])
def test_a_session_ended_by_the_server_is_retried(db_url: str) -> None:
    # An engine without pre-ping (the caller's own): its pooled connection is dead.
    engine = sa.create_engine(db_url, pool_size=1, max_overflow=0)
    try:
        store = SqlWatermarkStore(engine, actor="tester@sql")
        current = store.initialize(KEY, T0)
        assert _end_other_sessions(engine) >= 1
        assert store.get(KEY) == current
        _end_other_sessions(engine)
        moved = store.advance(current, T0 + DAY)
        assert _versions(store) == [(2, T0 + DAY)] and moved.version == 2
    finally:
        engine.dispose()
