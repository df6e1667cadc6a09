"""LegacyArchiveConfigStore on SQLite, PostgreSQL and MariaDB.

The store contract runs on every backend, with the clauses a singleton table without a
version column cannot keep adapted (each override says why). The tests below it cover the
legacy table itself: the seed's own DDL per database with values the earlier system
wrote (not midnights, no microseconds, SQLite text), the ``(start, end]`` mapping through
a real cycle, column precision, MySQL ``TIMESTAMP`` session zones, optional audit
columns, the companion history table, write counts and cross-process compare-and-set.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from deswm._archive import Archive
from deswm._errors import ConfigError, WatermarkConflict, WatermarkError
from deswm._model import SourceRecord, Watermark, WatermarkKey
from deswm._orchestrator import WatermarkOrchestrator
from deswm._packer import DesPacker
from deswm._routing import DesRouter
from deswm._stores.legacy import DEFAULT_LAG_DAYS, LegacyArchiveConfigStore, legacy_version
from deswm._stores.sql import SqlWatermarkStore
from deswm.testing._contracts.store import WatermarkStoreContract
from deswm.testing._readers import MemoryFileReader
from deswm.testing._sources import MemorySourceProvider

T0 = datetime(2024, 5, 1, tzinfo=UTC)
DAY = timedelta(days=1)
US = timedelta(microseconds=1)
KEY = WatermarkKey("orders")
WRITE_VERBS = {"INSERT", "UPDATE", "DELETE", "REPLACE", "MERGE", "CREATE", "ALTER", "DROP"}

# The earlier system's DDL, per database, exactly as teams created the table.
SEED_DDL = {
    "postgresql": """
        CREATE TABLE des_archive_config (
            id INTEGER PRIMARY KEY,
            archived_until TIMESTAMP WITH TIME ZONE NOT NULL,
            lag_days INTEGER NOT NULL,
            last_updated TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
            updated_by VARCHAR(100)
        )""",
    "mysql": """
        CREATE TABLE des_archive_config (
            id INT PRIMARY KEY,
            archived_until DATETIME NOT NULL,
            lag_days INT NOT NULL,
            last_updated DATETIME DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP
        ) ENGINE=InnoDB""",
    "sqlite": """
        CREATE TABLE des_archive_config (
            id INTEGER PRIMARY KEY,
            archived_until TIMESTAMP NOT NULL,
            lag_days INTEGER NOT NULL
        )""",
}
# What the earlier system left behind: a position that is not a midnight.
LEGACY_VALUE = datetime(2024, 11, 25, 13, 45, 10, tzinfo=UTC)
SEED_INSERT = {
    "postgresql": "INSERT INTO des_archive_config (id, archived_until, lag_days) "
    "VALUES (1, '2024-11-25 13:45:10+00', 7)",
    "mysql": "INSERT INTO des_archive_config (id, archived_until, lag_days) "
    "VALUES (1, '2024-11-25 13:45:10', 7)",
    "sqlite": "INSERT INTO des_archive_config (id, archived_until, lag_days) "
    "VALUES (1, datetime('2024-11-25 13:45:10'), 7)",
}


def _race(calls: Sequence[Callable[[], Any]]) -> list[Any]:
    """Run ``calls`` in threads released together; return each result or error."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], Any]) -> Any:
        barrier.wait(timeout=30)
        try:
            return call()
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(run, calls))


def _state(watermark: Watermark | None) -> tuple[object, ...] | None:
    """What a watermark says, without who wrote it when."""
    if watermark is None:
        return None
    return (
        watermark.key,
        watermark.position,
        watermark.version,
        watermark.lag,
        watermark.partitions,
    )


def _legacy(engine: sa.Engine, **kwargs: Any) -> LegacyArchiveConfigStore:
    return LegacyArchiveConfigStore(engine, **{"pipeline": "orders", **kwargs})


class TestLegacyArchiveConfigStore(WatermarkStoreContract):
    """The contract, with every clause a one-row table without versions cannot keep adapted.

    Two facts force the adaptations, each restated where it applies:

    * no version column: the version is :func:`legacy_version` of the position, so it is
      not 1 at first and does not grow by one per write;
    * one row: one pipeline, stage "archived", partition 0; ``lag_days`` is an integer;

    The concurrency clauses race on separate rows of one table instead of separate keys.
    """

    shared_across_processes = True

    @pytest.fixture
    def store(self, engine: sa.Engine) -> LegacyArchiveConfigStore:
        return _legacy(engine, actor="tester@legacy")

    @pytest.fixture
    def store_opener(self, db_url: str) -> Callable[..., LegacyArchiveConfigStore]:
        return partial(LegacyArchiveConfigStore, db_url, pipeline="orders")

    def _row(self, store: LegacyArchiveConfigStore, row_id: int, pipeline: str) -> Any:
        return LegacyArchiveConfigStore(store.engine, row_id=row_id, pipeline=pipeline)

    # Adapted: version derived from the position; lag in whole days; one partition.
    def test_initialize_creates_version_one(self, store: Any) -> None:
        created = store.initialize(KEY, T0, lag=6 * DAY, partitions=1)
        assert created.key == KEY
        assert created.position == T0
        assert created.version == legacy_version(T0) == 1_714_521_600_000_000
        assert (created.lag, created.partitions) == (6 * DAY, 1)
        assert created.updated_at is not None
        assert created.updated_at.utcoffset() == timedelta(0)
        assert _state(store.get(KEY)) == _state(created)

    # Adapted: lag_days is NOT NULL in the legacy table, so "no lag" stores the default.
    def test_initialize_defaults(self, store: Any) -> None:
        created = store.initialize(KEY, T0)
        assert (created.lag, created.partitions) == (DEFAULT_LAG_DAYS * DAY, 1)
        assert _state(store.get(KEY)) == _state(created)

    # Adapted: one partition only.
    def test_initialize_is_idempotent(self, store: Any) -> None:
        first = store.initialize(KEY, T0, lag=DAY)
        again = store.initialize(KEY, T0 + 5 * DAY, lag=None)
        assert _state(again) == _state(first)
        assert _state(store.get(KEY)) == _state(first)

    # Adapted: one key per table, so each round races on its own row.
    def test_racing_initializations_agree_on_the_winner(self, store: Any) -> None:
        for round_ in range(self.race_rounds):
            row = self._row(store, 100 + round_, "init-race")
            key = WatermarkKey("init-race")
            results = _race([partial(row.initialize, key, T0 + i * DAY) for i in range(3)])
            assert all(isinstance(r, Watermark) for r in results), results
            states = {_state(r) for r in results if isinstance(r, Watermark)}
            assert states == {_state(row.get(key))}

    # Adapted: the new version is derived from the new position.
    def test_advance_moves_forward_and_bumps_the_version(self, store: Any) -> None:
        current = store.initialize(KEY, T0, lag=DAY)
        advanced = store.advance(current, T0 + DAY)
        assert (advanced.key, advanced.position) == (KEY, T0 + DAY)
        assert advanced.version == legacy_version(T0 + DAY) > current.version
        assert (advanced.lag, advanced.partitions) == (DAY, 1)
        assert _state(store.get(KEY)) == _state(advanced)

    # Adapted: versions grow with the position, not by one.
    def test_advance_chains_from_each_returned_watermark(self, store: Any) -> None:
        current = store.initialize(KEY, T0)
        versions = [current.version]
        for day in range(1, 5):
            current = store.advance(current, T0 + day * DAY)
            versions.append(current.version)
        assert versions == [legacy_version(T0 + d * DAY) for d in range(5)]
        assert _state(store.get(KEY)) == _state(current)

    # Adapted: only the last line (version + 1) differs.
    def test_advance_to_the_same_position_writes_nothing(self, store: Any) -> None:
        current = store.initialize(KEY, T0)
        same = store.advance(current, T0)
        assert _state(same) == _state(current)
        stored = store.get(KEY)
        assert stored is not None
        assert _state(stored) == _state(current)
        assert stored.updated_at == current.updated_at
        assert store.advance(same, T0 + DAY).version == legacy_version(T0 + DAY)

    # Adapted: version derived from the position.
    def test_set_creates_a_missing_watermark(self, store: Any) -> None:
        created = store.set(KEY, T0, reason="bootstrap")
        assert (created.key, created.position, created.version) == (KEY, T0, legacy_version(T0))
        assert _state(store.get(KEY)) == _state(created)
        (change,) = store.history(KEY)
        assert (change.previous, change.position, change.reason) == (None, T0, "bootstrap")

    # Adapted: one partition; a backwards set lowers the (derived) version.
    def test_set_moves_forward_and_backward(self, store: Any) -> None:
        store.initialize(KEY, T0 + 2 * DAY, lag=DAY)
        forward = store.set(KEY, T0 + 5 * DAY, reason="skip an outage")
        assert (forward.position, forward.version) == (T0 + 5 * DAY, legacy_version(T0 + 5 * DAY))
        back = store.set(KEY, T0, reason="replay a corrupted day")
        assert (back.position, back.version) == (T0, legacy_version(T0))
        assert (back.lag, back.partitions) == (DAY, 1)
        assert _state(store.get(KEY)) == _state(back)

    # Adapted: two pipelines can only share the one row through a store that accepts any
    # pipeline name; history still filters by the pipeline each change was made under.
    def test_history_filters_by_key_and_limits(self, store: Any) -> None:
        shared = LegacyArchiveConfigStore(store.engine, pipeline=None)
        other = WatermarkKey("other")
        for day in range(4):
            shared.set(KEY, T0 + day * DAY, reason=f"key {day}")
            shared.set(other, T0 + day * DAY, reason=f"other {day}")
        assert [c.reason for c in store.history(KEY)] == ["key 3", "key 2", "key 1", "key 0"]
        assert [c.reason for c in store.history(KEY, limit=2)] == ["key 3", "key 2"]
        assert [c.reason for c in store.history(limit=3)] == ["other 3", "key 3", "other 2"]
        assert len(store.history()) == 8
        assert list(store.history(WatermarkKey("nobody"))) == []
        assert list(store.history(WatermarkKey("orders", "purged"))) == []

    # Adapted: one watermark to list; other keys are refused.
    def test_list_is_ordered_by_key(self, store: Any) -> None:
        created = store.initialize(KEY, T0)
        assert [_state(w) for w in store.list()] == [_state(created)]
        for key in (
            WatermarkKey("zeta"),
            WatermarkKey("orders", "purged"),
            WatermarkKey("orders", partition=2),
        ):
            with pytest.raises(ConfigError, match="SqlWatermarkStore"):
                store.initialize(key, T0)

    # Adapted: the pipeline filter matches the configured pipeline or nothing.
    def test_list_filters_by_pipeline(self, store: Any) -> None:
        store.initialize(KEY, T0)
        assert [w.key for w in store.list("orders")] == [KEY]
        assert list(store.list("missing")) == []

    # Adapted: a store bound to "orders" refuses "Orders" (it never shares the row).
    def test_keys_are_case_sensitive(self, store: Any) -> None:
        store.initialize(WatermarkKey("orders"), T0)
        with pytest.raises(ConfigError, match="orders/archived/0"):
            store.initialize(WatermarkKey("Orders"), T0 + DAY)
        assert [w.key.pipeline for w in store.list("Orders")] == []

    # Adapted: other stages and partitions cannot be held, and asking writes nothing.
    def test_partitions_and_stages_are_independent(self, store: Any) -> None:
        current = store.initialize(KEY, T0)
        for key in (WatermarkKey("orders", partition=1), WatermarkKey("orders", "purged")):
            with pytest.raises(ConfigError):
                store.get(key)
            with pytest.raises(ConfigError):
                store.set(key, T0 + DAY, reason="no")
        assert _state(store.get(KEY)) == _state(current)
        assert list(store.history()) == []

    # Adapted: rounds race on separate rows; versions are derived, the chain is exact.
    def test_concurrent_sets_are_serialised(self, store: Any) -> None:
        for round_ in range(self.race_rounds):
            row = self._row(store, 200 + round_, "set-race")
            key = WatermarkKey("set-race")
            start = None if round_ % 2 == 0 else row.initialize(key, T0)
            calls = [
                partial(row.set, key, T0 + (i + 1) * DAY, reason=f"racer {i}")
                for i in range(self.racers)
            ]
            results = _race(calls)
            assert all(isinstance(r, Watermark) for r in results), results
            for result in results:
                assert result.version == legacy_version(result.position)
            stored = row.get(key)
            changes = list(reversed(row.history(key)))
            assert len(changes) == self.racers
            assert changes[0].previous == (None if start is None else start.position)
            for older, newer in itertools.pairwise(changes):
                assert newer.previous == older.position
            assert changes[-1].position == stored.position

    # Adapted: rounds race on separate rows; the winner's version is derived.
    def test_concurrent_advances_from_one_version_have_one_winner(self, store: Any) -> None:
        for round_ in range(self.race_rounds):
            row = self._row(store, 300 + round_, "advance-race")
            key = WatermarkKey("advance-race")
            current = row.initialize(key, T0)
            results = _race(
                [partial(row.advance, current, T0 + (i + 1) * DAY) for i in range(self.racers)]
            )
            winners = [r for r in results if isinstance(r, Watermark)]
            losers = [r for r in results if isinstance(r, WatermarkConflict)]
            assert len(winners) == 1, results
            assert len(losers) == self.racers - 1, results
            assert all(loser.expected_version == current.version for loser in losers)
            assert _state(row.get(key)) == _state(winners[0])
            assert winners[0].version == legacy_version(winners[0].position)


# --- the seed's own table ------------------------------------------------------------------


@pytest.fixture
def statements(engine: sa.Engine) -> Iterator[list[str]]:
    """Every SQL statement ``engine`` sends, in order."""
    sent: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        sent.append(statement)

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def _writes(sent: list[str]) -> list[str]:
    return [s for s in sent if s.lstrip().split(None, 1)[0].upper() in WRITE_VERBS]


def _seed(engine: sa.Engine, backend: str) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(SEED_DDL[backend])
        conn.exec_driver_sql(SEED_INSERT[backend])


def _raw(engine: sa.Engine, column: str = "archived_until", row_id: int = 1) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            sa.text(f"SELECT {column} FROM des_archive_config WHERE id = :id"), {"id": row_id}
        ).scalar_one()


def _columns(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return [c["name"] for c in sa.inspect(conn).get_columns("des_archive_config")]


def test_the_seed_table_is_used_as_it_is(
    engine: sa.Engine, sql_backend: str, statements: list[str]
) -> None:
    _seed(engine, sql_backend)
    columns = _columns(engine)
    store = LegacyArchiveConfigStore(engine, pipeline="files", actor="migrator@ops")
    current = store.get(WatermarkKey("files"))
    assert current is not None
    assert current.position == LEGACY_VALUE  # the legacy value is read as the exclusive bound
    assert current.version == legacy_version(LEGACY_VALUE)
    assert current.lag == 7 * DAY
    statements.clear()
    midnight = datetime(2024, 11, 26, tzinfo=UTC)
    advanced = store.advance(current, midnight)
    (write,) = _writes(statements)
    assert write.lstrip().upper().startswith("UPDATE")
    raw = _raw(engine)
    if sql_backend == "sqlite":
        assert raw == "2024-11-26 00:00:00"  # the format SQLite's own datetime() writes
    elif sql_backend == "mysql":
        assert raw == midnight.replace(tzinfo=None)
    else:
        assert raw == midnight
    assert store.get(WatermarkKey("files")) == advanced
    if sql_backend == "postgresql":
        assert _raw(engine, "updated_by") == "migrator@ops"
    if sql_backend != "sqlite":
        assert advanced.updated_at is not None
        assert abs(advanced.updated_at - datetime.now(UTC)) < timedelta(minutes=1)
        stored = store.get(WatermarkKey("files"))
        assert stored is not None and stored.updated_at == advanced.updated_at
    assert _columns(engine) == columns  # no column added, nothing renamed
    with engine.connect() as conn:
        assert not sa.inspect(conn).has_table("des_archive_config_history")  # reads need none
    store.set(WatermarkKey("files"), LEGACY_VALUE, reason="back to the legacy value")
    (change,) = store.history()
    assert (change.previous, change.position) == (midnight, LEGACY_VALUE)
    assert change.actor == "migrator@ops"
    assert _columns(engine) == columns


@pytest.mark.parametrize("sql_backend", ["sqlite"])
def test_without_last_updated_a_set_back_to_a_held_position_lets_it_commit(
    engine: sa.Engine, sql_backend: str
) -> None:
    # The documented limit of a table without last_updated: the compare sees the
    # position only, so a set() back to what a stale runner holds does not fence it.
    _seed(engine, sql_backend)
    store = LegacyArchiveConfigStore(engine)
    held = store.get(KEY)
    assert held is not None
    moved = store.advance(held, datetime(2024, 11, 26, tzinfo=UTC))
    with pytest.raises(WatermarkConflict):
        store.advance(held, datetime(2024, 11, 27, tzinfo=UTC))
    store.set(KEY, LEGACY_VALUE, reason="replay")
    assert store.advance(held, datetime(2024, 11, 27, tzinfo=UTC)).version > moved.version


@pytest.mark.parametrize("sql_backend", ["postgresql", "mysql"])
def test_seed_last_updated_takes_part_in_the_compare(engine: sa.Engine, sql_backend: str) -> None:
    _seed(engine, sql_backend)
    store = LegacyArchiveConfigStore(engine)
    held = store.get(KEY)
    assert held is not None
    assert held.updated_at is not None  # the seed's DEFAULT filled it in
    with engine.begin() as conn:  # someone touches the row without moving the position
        conn.execute(
            sa.text("UPDATE des_archive_config SET last_updated = :t"),
            {
                "t": datetime(2030, 1, 1)
                if sql_backend == "mysql"
                else datetime(2030, 1, 1, tzinfo=UTC)
            },
        )
    with pytest.raises(WatermarkConflict) as caught:
        store.advance(held, datetime(2024, 11, 26, tzinfo=UTC))
    assert caught.value.actual == held.version  # same position, rewritten since
    assert "2030-01-01" in "".join(caught.value.__notes__)
    fresh = store.get(KEY)
    assert fresh is not None
    assert store.advance(fresh, datetime(2024, 11, 26, tzinfo=UTC)).position == datetime(
        2024, 11, 26, tzinfo=UTC
    )


@pytest.mark.parametrize("sql_backend", ["mysql"])
def test_mysql_datetime_without_fraction_refuses_microseconds(
    engine: sa.Engine, sql_backend: str
) -> None:
    _seed(engine, sql_backend)
    store = LegacyArchiveConfigStore(engine)
    current = store.get(KEY)
    assert current is not None
    with pytest.raises(WatermarkError, match="keeps 0 fractional digit"):
        store.advance(current, current.position + DAY + US)
    with pytest.raises(WatermarkError, match="keeps 0 fractional digit"):
        store.set(KEY, T0 + US, reason="sub-second")
    assert _raw(engine) == LEGACY_VALUE.replace(tzinfo=None)
    # Bucket boundaries always fit; the stored value matches the compare exactly.
    assert store.advance(current, datetime(2024, 11, 26, tzinfo=UTC)).version == legacy_version(
        datetime(2024, 11, 26, tzinfo=UTC)
    )


@pytest.mark.parametrize("sql_backend", ["mysql"])
def test_mysql_timestamp_columns_are_read_and_written_in_utc(db_url: str, sql_backend: str) -> None:
    shifted = sa.create_engine(db_url)

    def set_zone(dbapi_connection: Any, record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("SET time_zone = '+05:30'")
        cursor.close()

    sa.event.listen(shifted, "connect", set_zone)
    try:
        with shifted.begin() as conn:
            conn.exec_driver_sql(
                "CREATE TABLE des_archive_config (id INT PRIMARY KEY, "
                "archived_until TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), "
                "lag_days INT NOT NULL)"
            )
        store = LegacyArchiveConfigStore(shifted)
        instant = datetime(2024, 5, 1, 23, 30, 0, 654321, tzinfo=UTC)
        created = store.initialize(KEY, instant)
        advanced = store.advance(created, instant + DAY)
        assert store.get(KEY) == advanced
        with shifted.connect() as conn:
            assert conn.exec_driver_sql("SELECT @@session.time_zone").scalar_one() == "+05:30"
            local = conn.exec_driver_sql("SELECT archived_until FROM des_archive_config").scalar()
        assert local == (instant + DAY).astimezone(
            timezone(timedelta(hours=5, minutes=30))
        ).replace(tzinfo=None)
    finally:
        shifted.dispose()


@pytest.mark.parametrize("sql_backend", ["postgresql"])
def test_naive_postgresql_timestamps_are_utc(engine: sa.Engine, sql_backend: str) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE des_archive_config (id INTEGER PRIMARY KEY, "
            "archived_until TIMESTAMP(3) NOT NULL, lag_days INTEGER NOT NULL)"
        )
        conn.exec_driver_sql(
            "INSERT INTO des_archive_config VALUES (1, '2024-05-01 12:00:00.125', 3)"
        )
    store = LegacyArchiveConfigStore(engine)
    current = store.get(KEY)
    assert current is not None
    assert current.position == datetime(2024, 5, 1, 12, 0, 0, 125000, tzinfo=UTC)
    assert current.lag == 3 * DAY
    with pytest.raises(WatermarkError, match="keeps 3 fractional digit"):
        store.advance(current, current.position + 500 * US)
    store.advance(current, datetime(2024, 5, 2, tzinfo=UTC))
    assert _raw(engine) == datetime(2024, 5, 2)


# --- the (start, end] mapping through a cycle ----------------------------------------------


def test_a_non_midnight_legacy_value_replays_part_of_its_day(
    engine: sa.Engine, sql_backend: str, tmp_path: Path
) -> None:
    _seed(engine, sql_backend)
    day = datetime(2024, 11, 25, tzinfo=UTC)
    instants = [
        day + timedelta(hours=1),  # archived by the legacy system: replayed
        LEGACY_VALUE,  # legacy "<=" archived it; deswm's "<" did not: replayed
        LEGACY_VALUE + timedelta(seconds=1),  # not archived yet
        day + DAY,  # exactly midnight: belongs to the next day
        day + DAY + timedelta(hours=5),
    ]
    records = [SourceRecord(f"u{i}", t, f"f{i}") for i, t in enumerate(instants)]
    router = DesRouter(4)
    archive = tmp_path / "archive"
    store = LegacyArchiveConfigStore(engine, pipeline="files")
    orchestrator = WatermarkOrchestrator(
        store,
        MemorySourceProvider(records),
        MemoryFileReader({r.location: r.uid.encode() * 3 for r in records}),
        router,
        DesPacker(str(archive), router, workers=0),
        pipeline="files",
        lag=DAY,
        clock=lambda: datetime(2024, 11, 28, 6, tzinfo=UTC),
    )
    result = orchestrator.run_cycle()
    assert result.window.start == day  # aligned down from 13:45:10 (G5)
    assert result.files == len(records)  # the part of the day before the legacy value too
    assert result.buckets_committed == 2
    assert result.watermark_after == datetime(2024, 11, 27, tzinfo=UTC)
    reader = Archive(str(archive), router)
    for record in records:
        assert reader.get(record.uid, record.created_at) == record.uid.encode() * 3
    stored = store.get(WatermarkKey("files"))
    assert stored is not None
    assert stored.position == datetime(2024, 11, 27, tzinfo=UTC)


# --- settings and errors ----------------------------------------------------------------------


def test_keys_it_cannot_hold_say_what_to_use(engine: sa.Engine) -> None:
    store = _legacy(engine)
    with pytest.raises(ConfigError) as caught:
        store.get(WatermarkKey("orders", "purged"))
    assert "SqlWatermarkStore" in str(caught.value)
    assert caught.value.key == "watermark.kind"
    with pytest.raises(ConfigError, match="partitions"):
        store.initialize(KEY, T0, partitions=4)
    with pytest.raises(ConfigError, match="whole number of days"):
        store.initialize(KEY, T0, lag=timedelta(hours=36))
    assert store.get(KEY) is None


def test_any_pipeline_maps_to_the_row_without_a_pipeline(engine: sa.Engine) -> None:
    store = LegacyArchiveConfigStore(engine)
    created = store.initialize(WatermarkKey("files"), T0)
    same = store.get(WatermarkKey("anything"))
    assert same is not None
    assert (same.key.pipeline, same.position) == ("anything", created.position)
    assert [w.key.pipeline for w in store.list()] == ["des_archive_config"]
    assert [w.key.pipeline for w in store.list("x")] == ["x"]


def test_rows_are_independent(engine: sa.Engine) -> None:
    first = LegacyArchiveConfigStore(engine, row_id=1)
    second = LegacyArchiveConfigStore(engine, row_id=2)
    first.initialize(KEY, T0)
    assert second.get(KEY) is None
    second.set(KEY, T0 + DAY, reason="second row")
    assert first.get(KEY).position == T0  # type: ignore[union-attr]
    assert first.history() == []
    assert len(second.history()) == 1


def test_tables_are_created_with_portable_types(engine: sa.Engine, sql_backend: str) -> None:
    store = LegacyArchiveConfigStore(engine, table="Legacy Config", actor="a" * 150)
    current = store.initialize(KEY, T0 + 123456 * US)
    assert current.updated_by == "a" * 100  # cut to the column's length
    store.set(KEY, T0, reason="creates the history table")
    with engine.connect() as conn:
        inspector = sa.inspect(conn)
        assert inspector.has_table("Legacy Config_history")
        types: dict[str, Any] = {
            c["name"]: c["type"] for c in inspector.get_columns("Legacy Config")
        }
    assert set(types) == {"id", "archived_until", "lag_days", "last_updated", "updated_by"}
    if sql_backend == "mysql":
        assert types["archived_until"].fsp == 6
    if sql_backend == "postgresql":
        assert types["archived_until"].timezone


def test_missing_columns_are_config_errors(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE des_archive_config (id INTEGER PRIMARY KEY)")
    with pytest.raises(ConfigError, match="no column 'archived_until'"):
        LegacyArchiveConfigStore(engine).get(KEY)


def test_unreadable_values_are_errors_with_a_hint(engine: sa.Engine, sql_backend: str) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE des_archive_config (id INTEGER PRIMARY KEY, "
            "archived_until TIMESTAMP NULL, lag_days INTEGER NOT NULL)"
        )
        conn.exec_driver_sql("INSERT INTO des_archive_config VALUES (1, NULL, 7)")
    store = LegacyArchiveConfigStore(engine)
    with pytest.raises(WatermarkError, match="NULL") as caught:
        store.get(KEY)
    assert "deswm watermark set" in str(caught.value)
    repaired = store.set(KEY, T0, reason="repair a NULL")
    assert (repaired.position, store.history()[0].previous) == (T0, None)
    if sql_backend == "sqlite":  # only SQLite lets a timestamp column hold any text
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE des_archive_config SET archived_until = 'yesterday'")
        with pytest.raises(WatermarkError, match="'yesterday'"):
            store.get(KEY)
        store.set(KEY, T0 + DAY, reason="repair unreadable text")
        assert store.get(KEY).position == T0 + DAY  # type: ignore[union-attr]
        assert store.history()[0].previous is None
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE des_archive_config SET lag_days = 'a week'")
        with pytest.raises(WatermarkError, match="'a week', not a whole number"):
            store.get(KEY)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://deswm:s3cr3t-pw@127.0.0.1:1/nowhere",
        "mysql+pymysql://root:s3cr3t-pw@127.0.0.1:1/nowhere",
    ],
)
def test_password_is_never_shown(url: str) -> None:
    store = LegacyArchiveConfigStore(url)
    assert "s3cr3t-pw" not in repr(store)
    with pytest.raises(WatermarkError) as caught:
        store.get(KEY)
    assert "s3cr3t-pw" not in str(caught.value)
    assert "des_archive_config" in str(caught.value)
    store.close()


# --- writes ------------------------------------------------------------------------------------


def test_set_is_one_update_and_one_history_row(engine: sa.Engine, statements: list[str]) -> None:
    store = _legacy(engine)
    store.initialize(KEY, T0)
    store.set(KEY, T0, reason="create the history table first")
    statements.clear()
    store.set(KEY, T0 + DAY, reason="counted")
    verbs = [w.lstrip().split(None, 1)[0].upper() for w in _writes(statements)]
    assert verbs == ["UPDATE", "INSERT"]


# --- a bug found elsewhere ------------------------------------------------------------------


@pytest.mark.parametrize("sql_backend", ["mysql"])
def test_sql_store_keys_differing_by_trailing_space_are_distinct(
    engine: sa.Engine, sql_backend: str
) -> None:
    store = SqlWatermarkStore(engine)
    store.initialize(WatermarkKey("orders"), T0)
    spaced = store.initialize(WatermarkKey("orders "), T0 + DAY)
    assert spaced.position == T0 + DAY


def test_reads_do_not_create_the_legacy_table(engine: sa.Engine) -> None:
    store = LegacyArchiveConfigStore(engine, pipeline="orders")
    assert store.get(KEY) is None
    assert store.list() == []
    assert store.history(KEY) == []
    assert not store.exists()
    with engine.connect() as conn:
        assert sa.inspect(conn).get_table_names() == []
    store.initialize(KEY, T0)
    assert store.exists()
