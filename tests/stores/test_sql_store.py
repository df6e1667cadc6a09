"""SqlWatermarkStore and UtcDateTime on SQLite, PostgreSQL and MariaDB.

The store contract runs on every backend; the tests below it cover what only a SQL
store can get wrong: table creation races, identifier quoting, schemas, column types,
write counts, cross-process compare-and-set, and leaking the password.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from deswm._errors import ConfigError, NaiveDatetimeError, WatermarkConflict, WatermarkError
from deswm._model import Watermark, WatermarkKey
from deswm._sqltypes import UtcDateTime
from deswm._stores.sql import SqlWatermarkStore
from deswm.testing._contracts.store import WatermarkStoreContract

T0 = datetime(2024, 5, 1, tzinfo=UTC)
DAY = timedelta(days=1)
KEY = WatermarkKey("orders")
ODD_NAME = 'Deswm "Water" Mark\'s'
WRITE_VERBS = {"INSERT", "UPDATE", "DELETE", "REPLACE", "MERGE", "CREATE", "ALTER", "DROP"}


class TestSqlWatermarkStore(WatermarkStoreContract):
    shared_across_processes = True

    @pytest.fixture
    def store(self, engine: sa.Engine) -> SqlWatermarkStore:
        return SqlWatermarkStore(engine, actor="tester@sql")

    @pytest.fixture
    def store_opener(self, db_url: str) -> Callable[..., SqlWatermarkStore]:
        return partial(SqlWatermarkStore, db_url)


class TestSqlWatermarkStoreOddTableName(WatermarkStoreContract):
    """The whole contract again on a table name that needs quoting everywhere."""

    race_rounds = 2

    @pytest.fixture
    def store(self, engine: sa.Engine) -> SqlWatermarkStore:
        return SqlWatermarkStore(engine, table=ODD_NAME)


# --- table creation ---------------------------------------------------------------


def _table_names(engine: sa.Engine, schema: str | None = None) -> set[str]:
    with engine.connect() as conn:
        return set(sa.inspect(conn).get_table_names(schema=schema))


def test_tables_are_created_on_first_write_not_by_reads(engine: sa.Engine) -> None:
    store = SqlWatermarkStore(engine)
    assert _table_names(engine) == set()
    assert store.get(KEY) is None
    assert store.list() == []
    assert store.history(KEY) == []
    assert not store.exists()
    assert _table_names(engine) == set()
    store.initialize(KEY, T0)
    assert _table_names(engine) == {"deswm_watermark", "deswm_watermark_history"}
    assert store.exists()


def test_racing_stores_both_create_the_tables(db_url: str) -> None:
    for round_ in range(3):
        table = f"race_{round_}"
        stores = [SqlWatermarkStore(db_url, table=table) for _ in range(2)]
        barrier = threading.Barrier(len(stores))
        errors: list[BaseException] = []

        def first_use(
            store: SqlWatermarkStore,
            barrier: threading.Barrier = barrier,
            errors: list[BaseException] = errors,
        ) -> None:
            barrier.wait(timeout=30)
            try:
                store.initialize(KEY, T0)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=first_use, args=(s,)) for s in stores]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == []
        assert {s.get(KEY) is not None for s in stores} == {True}
        for store in stores:
            store.close()


def test_creation_tolerates_tables_created_after_the_check(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    SqlWatermarkStore(engine).initialize(KEY, T0)
    late = SqlWatermarkStore(engine)
    create_all = late._metadata.create_all

    def create_without_checking(bind: Any, checkfirst: bool = True, **kw: Any) -> None:
        # As if another process created the tables between our check and our CREATE.
        create_all(bind, checkfirst=False, **kw)

    monkeypatch.setattr(late._metadata, "create_all", create_without_checking)
    stored = late.get(KEY)
    assert stored is not None
    assert stored.position == T0


def test_table_and_history_names_are_configurable(engine: sa.Engine) -> None:
    store = SqlWatermarkStore(engine, table=ODD_NAME, history_table="Audit Trail")
    current = store.initialize(KEY, T0)
    store.advance(current, T0 + DAY)
    store.set(KEY, T0, reason="quoted")
    assert _table_names(engine) == {ODD_NAME, "Audit Trail"}
    with engine.connect() as conn:
        count = conn.execute(
            sa.select(sa.func.count()).select_from(sa.table("Audit Trail"))
        ).scalar_one()
    assert count == 1
    assert "Deswm" in repr(store)


@pytest.mark.parametrize("sql_backend", ["postgresql", "mysql"])
def test_schema_qualified_tables(engine: sa.Engine, sql_backend: str) -> None:
    # On MySQL/MariaDB a schema is a database.
    schema = f"deswm_s_{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        conn.execute(sa.schema.CreateSchema(schema))
    try:
        store = SqlWatermarkStore(engine, table=ODD_NAME, schema=schema)
        current = store.initialize(KEY, T0)
        store.advance(current, T0 + DAY)
        store.set(KEY, T0, reason="in a schema")
        assert _table_names(engine, schema) == {ODD_NAME, f"{ODD_NAME}_history"}
        assert _table_names(engine) == set()
        assert schema in repr(store)
        assert [w.version for w in store.list()] == [3]
        assert len(store.history()) == 1
    finally:
        with engine.begin() as conn:
            conn.execute(sa.schema.DropSchema(schema, cascade=sql_backend == "postgresql"))


# --- columns and time ----------------------------------------------------------------


def test_instants_are_stored_as_utc_with_microseconds(engine: sa.Engine, sql_backend: str) -> None:
    store = SqlWatermarkStore(engine)
    local = datetime(2024, 5, 1, 14, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    store.initialize(KEY, local)
    raw_table = sa.table("deswm_watermark", sa.column("position"))
    with engine.connect() as conn:
        raw = conn.execute(sa.select(raw_table.c.position)).scalar_one()
        if sql_backend == "mysql":
            column_type = conn.execute(
                sa.text(
                    "SELECT column_type FROM information_schema.columns "
                    "WHERE table_schema = DATABASE() AND table_name = :t AND column_name = :c"
                ),
                {"t": "deswm_watermark", "c": "position"},
            ).scalar_one()
            assert column_type == "datetime(6)"
    expected_utc = datetime(2024, 5, 1, 12, 0, 0, 123456)
    if sql_backend == "sqlite":
        assert raw == "2024-05-01 12:00:00.123456"
    elif sql_backend == "mysql":
        assert raw == expected_utc
    else:
        assert raw == expected_utc.replace(tzinfo=UTC)


@pytest.mark.parametrize("sql_backend", ["postgresql", "mysql"])
def test_session_time_zone_does_not_shift_instants(db_url: str, sql_backend: str) -> None:
    shifted = sa.create_engine(db_url)
    statement = (
        "SET TIME ZONE 'Asia/Kolkata'"
        if sql_backend == "postgresql"
        else "SET time_zone = '+05:30'"
    )

    def set_zone(dbapi_connection: Any, record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(statement)
        cursor.close()

    sa.event.listen(shifted, "connect", set_zone)
    instant = datetime(2024, 5, 1, 23, 30, 0, 654321, tzinfo=UTC)
    try:
        written = SqlWatermarkStore(shifted).initialize(KEY, instant)
        again = SqlWatermarkStore(shifted).get(KEY)
    finally:
        shifted.dispose()
    plain = sa.create_engine(db_url)
    try:
        read = SqlWatermarkStore(plain).get(KEY)
    finally:
        plain.dispose()
    assert written.position == instant
    assert again is not None
    assert read is not None
    assert again.position == read.position == instant
    assert again.position.utcoffset() == timedelta(0)


def test_utc_datetime_round_trip_and_naive_binding(engine: sa.Engine) -> None:
    metadata = sa.MetaData()
    table = sa.Table(
        "instants",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", UtcDateTime(), nullable=True),
    )
    metadata.create_all(engine)
    zone = timezone(timedelta(hours=-5))
    instant = datetime(2023, 12, 31, 23, 59, 59, 999999, tzinfo=zone)
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"id": 1, "at": instant}, {"id": 2, "at": None}])
    with engine.connect() as conn:
        rows = dict(conn.execute(sa.select(table.c.id, table.c.at)).all())
        # Comparisons bind through the type too.
        found = conn.execute(sa.select(table.c.id).where(table.c.at == instant)).scalar_one()
    assert rows[1] == instant
    assert rows[1].utcoffset() == timedelta(0)
    assert rows[1].tzinfo is UTC
    assert rows[2] is None
    assert found == 1
    with pytest.raises(NaiveDatetimeError), engine.begin() as conn:
        conn.execute(table.insert(), {"id": 3, "at": datetime(2024, 1, 1)})


def test_keys_longer_than_the_columns_are_refused(engine: sa.Engine) -> None:
    store = SqlWatermarkStore(engine)
    with pytest.raises(ConfigError, match="pipeline"):
        store.initialize(WatermarkKey("p" * 256), T0)
    with pytest.raises(ConfigError, match="stage"):
        store.get(WatermarkKey("p", "s" * 65))


# --- writes -------------------------------------------------------------------------


@pytest.fixture
def statements(engine: sa.Engine) -> Iterator[list[str]]:
    """Every SQL statement ``engine`` sends, in order."""
    sent: list[str] = []

    def record(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        sent.append(statement)

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def _writes(sent: list[str]) -> list[str]:
    return [s for s in sent if s.lstrip().split(None, 1)[0].upper() in WRITE_VERBS]


def test_advance_is_exactly_one_update(engine: sa.Engine, statements: list[str]) -> None:
    store = SqlWatermarkStore(engine)
    current = store.initialize(KEY, T0)
    statements.clear()
    assert store.advance(current, T0) is current
    assert statements == []
    advanced = store.advance(current, T0 + DAY)
    writes = _writes(statements)
    assert len(writes) == 1
    assert writes[0].lstrip().upper().startswith("UPDATE")
    statements.clear()
    with pytest.raises(WatermarkConflict):
        store.advance(current, T0 + 2 * DAY)
    stored = store.get(KEY)
    assert stored is not None
    assert (stored.position, stored.version) == (advanced.position, 2)


def test_advance_conflict_on_a_missing_row_says_missing(engine: sa.Engine) -> None:
    store = SqlWatermarkStore(engine)
    with pytest.raises(WatermarkConflict) as caught:
        store.advance(Watermark(KEY, T0, 1), T0 + DAY)
    assert caught.value.actual == "missing"


def test_writes_record_actor_and_time(engine: sa.Engine) -> None:
    store = SqlWatermarkStore(engine, actor="ops@bastion")
    before = datetime.now(UTC)
    current = store.initialize(KEY, T0)
    advanced = store.advance(current, T0 + DAY)
    stored = store.get(KEY)
    assert stored is not None
    assert stored.updated_by == "ops@bastion"
    assert stored.updated_at == advanced.updated_at
    assert stored.updated_at is not None
    assert stored.updated_at >= before
    store.set(KEY, T0, reason="audit")
    (change,) = store.history()
    assert change.actor == "ops@bastion"


def test_sqlite_write_waits_for_a_reader(sqlite_db_url: str, tmp_path: Path) -> None:
    store = SqlWatermarkStore(sqlite_db_url)
    current = store.initialize(KEY, T0)
    reader = sqlite3.connect(tmp_path / "deswm-test.sqlite3", check_same_thread=False)
    reader.isolation_level = None
    reader.execute("BEGIN")
    reader.execute("SELECT * FROM deswm_watermark").fetchall()  # holds a SHARED lock
    release = threading.Timer(0.5, reader.execute, args=("COMMIT",))
    release.start()
    try:
        advanced = store.advance(current, T0 + DAY)
    finally:
        release.join()
        reader.close()
        store.close()
    assert advanced.version == 2


# --- configuration and errors ---------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://deswm:s3cr3t-pw@127.0.0.1:1/nowhere",
        "mysql+pymysql://root:s3cr3t-pw@127.0.0.1:1/nowhere",
    ],
)
def test_password_is_never_shown(url: str) -> None:
    store = SqlWatermarkStore(url, table="wm")
    assert "s3cr3t-pw" not in repr(store)
    assert "***" in repr(store)
    assert "s3cr3t-pw" not in store.url
    with pytest.raises(WatermarkError) as caught:
        store.get(KEY)
    message = str(caught.value)
    assert "s3cr3t-pw" not in message
    assert "'wm'" in message
    assert "127.0.0.1:1" in message
    assert isinstance(caught.value.__cause__, sa.exc.SQLAlchemyError)
    store.close()


def test_passed_in_engine_password_is_hidden() -> None:
    engine = sa.create_engine("postgresql+psycopg://deswm:s3cr3t-pw@127.0.0.1:1/nowhere")
    assert "s3cr3t-pw" not in repr(SqlWatermarkStore(engine))
    engine.dispose()


def test_database_errors_name_the_table(engine: sa.Engine) -> None:
    # Tables of that name exist but are not watermark tables: every query fails.
    foreign = sa.MetaData()
    for name in ("broken", "broken_history"):
        sa.Table(name, foreign, sa.Column("x", sa.Integer))
    foreign.create_all(engine)
    store = SqlWatermarkStore(engine, table="broken")
    with pytest.raises(WatermarkError) as caught:
        store.get(KEY)
    assert "'broken'" in str(caught.value)
    assert isinstance(caught.value.__cause__, sa.exc.DBAPIError)


def test_url_string_gets_its_own_engine(db_url: str) -> None:
    store = SqlWatermarkStore(db_url)
    store.initialize(KEY, T0)
    assert SqlWatermarkStore(sa.make_url(db_url)).get(KEY) is not None
    store.close()


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"table": ""}, "table"),
        ({"table": "wm", "history_table": "wm"}, "history_table"),
        ({"schema": " "}, "schema"),
        ({"actor": ""}, "actor"),
    ],
)
def test_bad_settings_are_config_errors(kwargs: dict[str, Any], setting: str) -> None:
    with pytest.raises(ConfigError) as caught:
        SqlWatermarkStore("sqlite://", **kwargs)
    assert caught.value.key == setting


def test_unparseable_url_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as caught:
        SqlWatermarkStore("not a url with s3cr3t-pw")
    assert "s3cr3t-pw" not in str(caught.value)
