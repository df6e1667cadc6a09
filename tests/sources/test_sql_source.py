"""SqlSourceProvider on SQLite, PostgreSQL and MariaDB: the contract, then the hard parts.

Time zones of every column kind, quoted identifiers, bad rows, streaming a large window
while other statements run (the MariaDB cut-off), one-statement stats, and subclasses.
"""

from __future__ import annotations

import contextlib
import runpy
import tracemalloc
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from deswm._errors import BadRowError, ConfigError, SourceError, UnplaceableRowError
from deswm._model import SourceRecord, Window
from deswm._protocols import SourceProvider
from deswm._sources.sql import SqlSourceProvider
from deswm.testing._contracts.source import MakeSource, SourceProviderContract

T0 = datetime(2024, 5, 1, tzinfo=UTC)
DAY = timedelta(days=1)
US = timedelta(microseconds=1)
WARSAW = ZoneInfo("Europe/Warsaw")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

NAIVE = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
"""A naive timestamp everywhere: SQLite text, PostgreSQL ``timestamp``, MySQL DATETIME(6)."""
AWARE = sa.DateTime(timezone=True).with_variant(mysql.TIMESTAMP(fsp=6), "mysql", "mariadb")
"""PostgreSQL ``timestamptz``; MySQL ``TIMESTAMP(6)`` (stored in UTC, shown in the session zone)."""


def files_table(
    metadata: sa.MetaData,
    name: str = "files",
    *,
    created_at: Any = NAIVE,
    uid: Any = None,
    index: bool = True,
    extra: Sequence[sa.Column[Any]] = (),
    schema: str | None = None,
) -> sa.Table:
    table = sa.Table(
        name,
        metadata,
        sa.Column("uid", uid if uid is not None else sa.String(64)),
        sa.Column("created_at", created_at, nullable=True),
        sa.Column("file_location", sa.Text),
        sa.Column("size_bytes", sa.BigInteger),
        *extra,
        schema=schema,
    )
    if index:
        sa.Index(f"ix_{name}_created_at_uid", table.c.created_at, table.c.uid)
    return table


def stored(engine: sa.Engine, kind: Any, instant: datetime, zone: tzinfo) -> datetime:
    """``instant`` in the form the test table stores it."""
    if kind is AWARE and engine.dialect.name == "postgresql":
        return instant
    if kind is AWARE:  # MySQL TIMESTAMP, inserted with the session in UTC
        return instant.astimezone(UTC).replace(tzinfo=None)
    return instant.astimezone(zone).replace(tzinfo=None)


def load(
    engine: sa.Engine,
    table: sa.Table,
    rows: Sequence[dict[str, Any]],
    *,
    utc_session: bool = False,
) -> None:
    """Create ``table`` and insert ``rows`` on a connection nobody else reuses.

    ``utc_session``: insert MySQL ``TIMESTAMP`` values with the session zone in UTC.
    """
    loader = sa.create_engine(engine.url, poolclass=sa.pool.NullPool)
    try:
        table.metadata.create_all(loader)
        if rows:
            with loader.begin() as conn:
                if utc_session and loader.dialect.name in ("mysql", "mariadb"):
                    conn.exec_driver_sql("SET time_zone = '+00:00'")
                conn.execute(table.insert(), list(rows))
    finally:
        loader.dispose()


def record_rows(
    engine: sa.Engine, records: Sequence[SourceRecord], kind: Any, zone: tzinfo
) -> list[dict[str, Any]]:
    return [
        {
            "uid": r.uid,
            "created_at": stored(engine, kind, r.created_at, zone),
            "file_location": r.location,
            "size_bytes": r.size,
        }
        for r in records
    ]


def window(day: int = 0) -> Window:
    return Window(T0 + day * DAY, T0 + (day + 1) * DAY)


@contextlib.contextmanager
def count_statements(engine: sa.Engine) -> Iterator[list[str]]:
    """Every statement ``engine`` sends while the block runs."""
    seen: list[str] = []

    def listener(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", listener)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", listener)


# --- the contract, on every backend and column kind ----------------------------------


class _SqlContract(SourceProviderContract):
    kind: Any = NAIVE
    zone: tzinfo = UTC

    @pytest.fixture
    def make_source(self, engine: sa.Engine) -> MakeSource:
        def make(
            records: Sequence[SourceRecord], *, page_size: int | None = None
        ) -> SqlSourceProvider:
            table = files_table(sa.MetaData(), created_at=self.kind)
            rows = record_rows(engine, records, self.kind, self.zone)
            load(engine, table, rows, utc_session=self.kind is AWARE)
            return SqlSourceProvider(
                engine, "files", timezone=self.zone, page_size=page_size or 10_000
            )

        return make


class TestNaiveColumnsUtc(_SqlContract):
    """SQLite text, PostgreSQL ``timestamp``, MySQL ``DATETIME(6)``, in UTC."""


class TestNaiveColumnsWarsaw(_SqlContract):
    """The same columns holding Europe/Warsaw wall times."""

    zone = WARSAW


class TestAwareColumns(_SqlContract):
    """PostgreSQL ``timestamptz`` and MySQL ``TIMESTAMP(6)``; SQLite has no such type."""

    kind = AWARE
    zone = ZoneInfo("America/New_York")  # must be ignored for these columns

    @pytest.fixture(params=["postgresql", "mysql"])
    def sql_backend(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)


# --- time zones ----------------------------------------------------------------------


def test_naive_column_in_a_non_utc_zone_across_dst(engine: sa.Engine) -> None:
    table = files_table(sa.MetaData())
    wall = {  # uid -> Warsaw wall time stored in the table
        "a-before-midnight-utc": datetime(2024, 3, 30, 0, 59, 59, 999_999),  # CET 23:59:59Z
        "b-utc-midnight": datetime(2024, 3, 30, 1, 0),  # CET = 00:00Z
        "c-after-spring-gap": datetime(2024, 3, 31, 3, 30),  # CEST = 01:30Z
        "d-summer": datetime(2024, 7, 1, 2, 0, 0, 1),  # CEST = 00:00:00.000001Z
        "e-fall-back-hour": datetime(2024, 10, 27, 2, 30),  # ambiguous: first = 00:30Z
        "f-after-fall-back": datetime(2024, 10, 27, 3, 30),  # CET = 02:30Z
    }
    load(
        engine,
        table,
        [
            {"uid": uid, "created_at": at, "file_location": f"/{uid}", "size_bytes": 1}
            for uid, at in wall.items()
        ],
    )
    source = SqlSourceProvider(engine, "files", timezone="Europe/Warsaw", page_size=2)
    every = list(source.iter_records(Window(T0 - 60 * DAY, T0 + 200 * DAY)))
    assert {r.uid: r.created_at for r in every} == {
        "a-before-midnight-utc": datetime(2024, 3, 29, 23, 59, 59, 999_999, tzinfo=UTC),
        "b-utc-midnight": datetime(2024, 3, 30, 0, 0, tzinfo=UTC),
        "c-after-spring-gap": datetime(2024, 3, 31, 1, 30, tzinfo=UTC),
        "d-summer": datetime(2024, 7, 1, 0, 0, 0, 1, tzinfo=UTC),
        "e-fall-back-hour": datetime(2024, 10, 27, 0, 30, tzinfo=UTC),
        "f-after-fall-back": datetime(2024, 10, 27, 2, 30, tzinfo=UTC),
    }
    day = Window(datetime(2024, 3, 30, tzinfo=UTC), datetime(2024, 3, 31, tzinfo=UTC))
    assert [r.uid for r in source.iter_records(day)] == ["b-utc-midnight"]
    fall = Window(datetime(2024, 10, 27, tzinfo=UTC), datetime(2024, 10, 28, tzinfo=UTC))
    assert [r.uid for r in source.iter_records(fall)] == ["e-fall-back-hour", "f-after-fall-back"]
    stats = source.pending_stats(day)
    assert (stats.files, stats.oldest) == (1, datetime(2024, 3, 30, tzinfo=UTC))


def test_ambiguous_wall_time_is_kept_inside_the_window_that_selected_it(
    engine: sa.Engine,
) -> None:
    # 02:30 on 2024-10-27 happens twice in Warsaw (00:30Z CEST, 01:30Z CET). A window
    # starting at 01:00Z selects it by wall time (>= 02:00); read it as 01:30Z, not 00:30Z.
    table = files_table(sa.MetaData())
    load(
        engine,
        table,
        [{"uid": "x", "created_at": datetime(2024, 10, 27, 2, 30), "file_location": "/x"}],
    )
    source = SqlSourceProvider(engine, "files", timezone=WARSAW)
    hour = Window(datetime(2024, 10, 27, 1, tzinfo=UTC), datetime(2024, 10, 27, 2, tzinfo=UTC))
    (record,) = source.iter_records(hour)
    assert record.created_at == datetime(2024, 10, 27, 1, 30, tzinfo=UTC)
    assert record.created_at in hour


@pytest.mark.parametrize("sql_backend", ["postgresql"])
def test_postgresql_timestamptz_and_timestamp(db_url: str) -> None:
    # The session time zone must not matter for timestamptz, and the configured zone
    # must not apply to it; a plain timestamp column is read in the configured zone.
    url = sa.make_url(db_url)
    options = f"{url.query.get('options', '')} -c timezone=Asia/Tokyo".strip()
    engine = sa.create_engine(url.update_query_dict({"options": options}))
    try:
        metadata = sa.MetaData()
        aware = files_table(metadata, "aware_files", created_at=sa.DateTime(timezone=True))
        naive = files_table(metadata, "naive_files", created_at=sa.DateTime())
        instant = datetime(2024, 5, 1, 23, 30, 0, 123_456, tzinfo=UTC)
        load(engine, aware, [{"uid": "a", "created_at": instant, "file_location": "/a"}])
        load(
            engine,
            naive,
            [
                {
                    "uid": "n",
                    "created_at": instant.astimezone(WARSAW).replace(tzinfo=None),
                    "file_location": "/n",
                }
            ],
        )
        from_aware = SqlSourceProvider(engine, "aware_files", timezone=WARSAW)
        from_naive = SqlSourceProvider(engine, "naive_files", timezone=WARSAW)
        for source, uid in ((from_aware, "a"), (from_naive, "n")):
            (record,) = source.iter_records(window())
            assert record.uid == uid
            assert record.created_at == instant
            assert record.created_at.tzinfo is UTC
            assert list(source.iter_records(window(1))) == []
            assert source.pending_stats(window()).newest == instant
    finally:
        engine.dispose()


@pytest.mark.parametrize("sql_backend", ["mysql"])
def test_mysql_timestamp_is_read_in_utc_whatever_the_session_zone(db_url: str) -> None:
    engine = sa.create_engine(db_url, connect_args={"init_command": "SET time_zone = '+05:00'"})
    try:
        table = files_table(sa.MetaData(), created_at=mysql.TIMESTAMP(fsp=6))
        table.metadata.create_all(engine)
        with engine.begin() as conn:  # a +05:00 session: 05:00 local is 00:00Z
            conn.execute(
                sa.text(
                    "INSERT INTO files (uid, created_at, file_location) VALUES "
                    "('early', '2024-05-01 05:00:00.000001', '/e'), "
                    "('late', '2024-05-02 04:59:59.999999', '/l'), "
                    "('next-day', '2024-05-02 05:00:00', '/n')"
                )
            )
        source = SqlSourceProvider(engine, "files", timezone="Asia/Kolkata", page_size=1)
        got = list(source.iter_records(window()))
        assert [(r.uid, r.created_at) for r in got] == [
            ("early", T0 + US),
            ("late", T0 + DAY - US),
        ]
        stats = source.pending_stats(window())
        assert (stats.files, stats.oldest, stats.newest) == (2, T0 + US, T0 + DAY - US)
        # The provider put the session zone back on the pooled connections it used.
        for _ in range(3):
            with engine.connect() as conn:
                zone = conn.exec_driver_sql("SELECT @@session.time_zone").scalar()
            assert zone == "+05:00"
    finally:
        engine.dispose()


@pytest.mark.parametrize("sql_backend", ["mysql"])
def test_mysql_datetime6_keeps_microseconds_in_the_configured_zone(engine: sa.Engine) -> None:
    table = files_table(sa.MetaData())
    at = datetime(2024, 5, 1, 12, 0, 0, 654_321)
    load(engine, table, [{"uid": "a", "created_at": at, "file_location": "/a"}])
    reflected = SqlSourceProvider(engine, "files", timezone=WARSAW)
    assert isinstance(reflected.created_at_col.type, mysql.DATETIME)
    (record,) = reflected.iter_records(window())
    assert record.created_at == at.replace(tzinfo=WARSAW).astimezone(UTC)
    assert record.created_at.microsecond == 654_321


def test_microseconds_survive_every_backend(engine: sa.Engine) -> None:
    table = files_table(sa.MetaData())
    stamps = [T0 + timedelta(microseconds=n) for n in (0, 1, 2, 999_999, 500_001)]
    load(
        engine,
        table,
        [
            {"uid": f"u{n}", "created_at": at.replace(tzinfo=None), "file_location": "/"}
            for n, at in enumerate(stamps)
        ],
    )
    source = SqlSourceProvider(engine, "files", page_size=2)
    assert [r.created_at for r in source.iter_records(window())] == sorted(stamps)
    narrow = Window(T0 + US, T0 + 2 * US)
    assert [r.uid for r in source.iter_records(narrow)] == ["u1"]


# --- SQLite text -----------------------------------------------------------------------


def _sqlite_rows(engine: sa.Engine, rows: Sequence[tuple[str, object]]) -> SqlSourceProvider:
    load(engine, files_table(sa.MetaData()), [])
    with engine.begin() as conn:
        for uid, text in rows:
            conn.execute(
                sa.text("INSERT INTO files (uid, created_at, file_location) VALUES (:u, :t, '/x')"),
                {"u": uid, "t": text},
            )
    return SqlSourceProvider(engine, "files", page_size=2)


@pytest.mark.parametrize(
    ("text", "wrong_shape"),
    [
        ("2024-05-01T10:00:00", True),
        ("2024-05-01 10:00:00+02:00", True),
        ("2024-05-01 10:00:00.123", True),
        ("2024-05-01 10:00", True),
        ("2024-05-01 10:00:00Z", True),
        ("2024-05-01 25:00:00", False),  # the right shape, but no such time
    ],
)
def test_sqlite_text_in_another_format_is_a_bad_row(
    sqlite_db_url: str, text: str, wrong_shape: bool
) -> None:
    engine = sa.create_engine(sqlite_db_url)
    source = _sqlite_rows(engine, [("good", "2024-05-01 09:00:00.000000"), ("odd", text)])
    with pytest.raises(BadRowError, match="YYYY-MM-DD HH:MM:SS") as caught:
        list(source.iter_records(window()))
    assert caught.value.uid == "odd"
    assert source.malformed_created_at() == (["odd"] if wrong_shape else [])


def test_sqlite_text_without_fraction_is_bounded_correctly(sqlite_db_url: str) -> None:
    # Writers other than SQLAlchemy (CURRENT_TIMESTAMP) store whole seconds without a
    # fraction; such a row exactly at a bound must fall on the right side of it.
    engine = sa.create_engine(sqlite_db_url)
    source = _sqlite_rows(
        engine,
        [
            ("at-start", "2024-05-01 00:00:00"),
            ("at-end", "2024-05-02 00:00:00"),
            ("inside", "2024-05-01 12:00:00.000001"),
        ],
    )
    assert [r.uid for r in source.iter_records(window())] == ["at-start", "inside"]
    assert [r.uid for r in source.iter_records(window(1))] == ["at-end"]
    assert source.pending_stats(window()).oldest == T0
    assert source.malformed_created_at() == []


def test_sqlite_one_instant_in_two_formats_is_a_bad_row(sqlite_db_url: str) -> None:
    engine = sa.create_engine(sqlite_db_url)
    source = _sqlite_rows(
        engine, [("b", "2024-05-01 10:00:00"), ("a", "2024-05-01 10:00:00.000000")]
    )
    with pytest.raises(BadRowError, match="stored both as") as caught:
        list(source.iter_records(window()))
    assert caught.value.uid == "a"


# --- created_at no window can hold (G17) -------------------------------------------


@pytest.mark.parametrize(
    ("stored", "shown"),
    [
        (1714521600, "1714521600 (INTEGER)"),  # epoch seconds
        (2460431.5, "2460431.5 (REAL)"),  # a julian day
        (b"2024-05-01 10:00:00", "X'323032342D30352D30312031303A30303A3030' (BLOB)"),
        ("999-06-01 10:00:00", "'999-06-01 10:00:00' (TEXT)"),  # a year without padding
        ("0000-12-31 10:00:00", "'0000-12-31 10:00:00' (TEXT)"),
        ("9999-12-31 10:00:00", "'9999-12-31 10:00:00' (TEXT)"),  # the day without an end
        ("later", "'later' (TEXT)"),
    ],
    ids=["integer", "real", "blob", "unpadded", "year-0", "last-day", "word"],
)
def test_sqlite_created_at_no_window_can_hold_is_named_before_any_row(
    sqlite_db_url: str, stored: object, shown: str
) -> None:
    engine = sa.create_engine(sqlite_db_url)
    source = _sqlite_rows(
        engine, [("fine", "2024-05-01 10:00:00"), ("odd", stored), ("none", None)]
    )
    if stored == "999-06-01 10:00:00":
        # Sorts between 9989 and 9990: inside the text range, so only the scan finds it.
        assert source.malformed_created_at() == ["odd"]
        assert [r.uid for r in source.iter_records(window())] == ["fine"]
        return
    assert source.unplaceable_created_at() == ["odd"]
    assert source.null_created_at() == ["none"], "NULL is reported separately"
    with pytest.raises(UnplaceableRowError) as caught:
        next(source.iter_records(window()))
    assert caught.value.rows == (("odd", shown),)
    assert "uid='odd'" in str(caught.value)
    assert "filter_query" in str(caught.value)


def test_unplaceable_rows_are_listed_up_to_a_limit(sqlite_db_url: str) -> None:
    engine = sa.create_engine(sqlite_db_url)
    source = _sqlite_rows(engine, [(f"n{i:02d}", 1714521600 + i) for i in range(12)])
    with pytest.raises(UnplaceableRowError) as caught:
        source.check_placeable(limit=10)
    assert [uid for uid, _ in caught.value.rows] == [f"n{i:02d}" for i in range(10)]
    assert caught.value.more
    assert "and more" in str(caught.value)
    assert source.unplaceable_created_at(limit=3) == ["n00", "n01", "n02"]


def test_unplaceable_rows_excluded_by_filter_query_are_not_reported(sqlite_db_url: str) -> None:
    engine = sa.create_engine(sqlite_db_url)
    _sqlite_rows(engine, [("fine", "2024-05-01 10:00:00"), ("odd", 1714521600)])

    class Typed(SqlSourceProvider):
        def filter_query(self, query: Any) -> Any:
            return query.where(sa.func.typeof(self.created_at_col) == "text")

    source = Typed(engine, "files")
    assert source.unplaceable_created_at() == []
    assert [r.uid for r in source.iter_records(window())] == ["fine"]


@pytest.mark.parametrize("sql_backend", ["mysql"])
def test_mariadb_zero_date_is_named(db_url: str, sql_backend: str) -> None:
    engine = sa.create_engine(db_url)
    load(engine, files_table(sa.MetaData()), [])
    with engine.begin() as conn:
        conn.exec_driver_sql("SET SESSION sql_mode = ''")
        conn.exec_driver_sql(
            "INSERT INTO files (uid, created_at, file_location) VALUES "
            "('zero', '0000-00-00 00:00:00', '/z'), ('fine', '2024-05-01 10:00:00', '/f')"
        )
    source = SqlSourceProvider(engine, "files")
    assert source.unplaceable_created_at() == ["zero"]
    with pytest.raises(UnplaceableRowError) as caught:
        list(source.iter_records(window()))
    assert caught.value.rows[0][0] == "zero"
    assert "0000-00-00" in caught.value.rows[0][1]


@pytest.mark.parametrize("sql_backend", ["postgresql"])
def test_postgresql_bc_infinity_and_year_10000_are_named(db_url: str, sql_backend: str) -> None:
    engine = sa.create_engine(db_url)
    load(engine, files_table(sa.MetaData(), created_at=AWARE), [])
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO files (uid, created_at, file_location) VALUES "
            "('bc', '0044-03-15 12:00:00+00 BC', '/a'), ('inf', 'infinity', '/b'), "
            "('minf', '-infinity', '/c'), ('big', '10000-01-01 00:00:00+00', '/d'), "
            "('fine', '2024-05-01 10:00:00+00', '/f')"
        )
    source = SqlSourceProvider(engine, "files")
    assert source.unplaceable_created_at() == ["bc", "big", "inf", "minf"]
    with pytest.raises(UnplaceableRowError) as caught:
        list(source.iter_records(window()))
    assert dict(caught.value.rows)["inf"] == "infinity"
    assert "BC" in dict(caught.value.rows)["bc"]


def test_every_backend_reads_the_first_and_last_archivable_days(engine: sa.Engine) -> None:
    first = datetime(1, 1, 1, tzinfo=UTC)
    last = datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=UTC)
    early = datetime(999, 6, 1, 10, 0, 0, 123456, tzinfo=UTC)
    records = [
        SourceRecord("first", first, "/1", 1),
        SourceRecord("early", early, "/2", 2),
        SourceRecord("last", last, "/3", 3),
    ]
    load(engine, files_table(sa.MetaData()), record_rows(engine, records, NAIVE, UTC))
    source = SqlSourceProvider(engine, "files", page_size=1)
    assert source.unplaceable_created_at() == []
    assert list(source.iter_records(Window(first, first + DAY))) == records[:1]
    assert (
        list(source.iter_records(Window(datetime(999, 6, 1, tzinfo=UTC), first + 1000 * 365 * DAY)))
        == records[1:2]
    )
    assert (
        list(
            source.iter_records(
                Window(datetime(9999, 12, 30, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC))
            )
        )
        == records[2:]
    )


# --- location references (G15) ----------------------------------------------------------


def test_location_references_name_rows_whose_created_at_cannot_be_read(
    sqlite_db_url: str,
) -> None:
    engine = sa.create_engine(sqlite_db_url)
    source = _sqlite_rows(
        engine, [("fine", "2024-05-01 10:00:00"), ("odd", 1714521600), ("none", None)]
    )
    found = sorted(source.location_references(["/x"]), key=lambda ref: ref.uid)
    assert [(ref.uid, ref.created_at) for ref in found] == [
        ("fine", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("none", None),
        ("odd", None),
    ]


def test_location_references_ignore_filter_query(engine: sa.Engine) -> None:
    records = [SourceRecord("acme-1", T0, "/shared", 1), SourceRecord("other-1", T0, "/shared", 1)]
    load(engine, files_table(sa.MetaData()), record_rows(engine, records, NAIVE, UTC))

    class AcmeOnly(SqlSourceProvider):
        def filter_query(self, query: Any) -> Any:
            return query.where(self.uid_col.like("acme-%"))

    source = AcmeOnly(engine, "files")
    assert [r.uid for r in source.iter_records(window())] == ["acme-1"]
    assert sorted(ref.uid for ref in source.location_references(["/shared"])) == [
        "acme-1",
        "other-1",
    ]


# --- identifiers --------------------------------------------------------------------


def test_quoted_identifiers_and_schema(engine: sa.Engine) -> None:
    dialect = engine.dialect.name
    schema = {"sqlite": "main", "mysql": engine.url.database, "postgresql": 'Src "Data" 1'}[dialect]
    assert schema is not None
    if dialect == "postgresql":
        with engine.begin() as conn:
            conn.execute(sa.schema.CreateSchema(schema))
    try:
        name = 'My "Files" it\'s'
        table = sa.Table(
            name,
            sa.MetaData(),
            sa.Column("UID", sa.String(64)),
            sa.Column('Created "At"', NAIVE),
            sa.Column("File Location", sa.Text),
            sa.Column("Size's", sa.BigInteger),
            schema=schema,
        )
        load(
            engine,
            table,
            [
                {"UID": "b", 'Created "At"': datetime(2024, 5, 1, 1), "File Location": "/b"},
                {"UID": "a", 'Created "At"': datetime(2024, 5, 1, 1), "File Location": "/a"},
            ],
        )
        source = SqlSourceProvider(
            engine,
            name,
            schema=schema,
            uid_column="UID",
            created_at_column='Created "At"',
            location_column="File Location",
            size_column="Size's",
            page_size=1,
        )
        assert [r.uid for r in source.iter_records(window())] == ["a", "b"]
        assert source.pending_stats(window()).files == 2
        assert source.null_created_at() == []
    finally:
        if dialect == "postgresql":
            with engine.begin() as conn:
                conn.execute(sa.schema.DropSchema(schema, cascade=True))


def test_missing_table_lists_what_exists(engine: sa.Engine) -> None:
    load(engine, files_table(sa.MetaData()), [])
    source = SqlSourceProvider(engine, "Files2")
    with pytest.raises(ConfigError, match="'files'") as caught:
        list(source.iter_records(window()))
    assert caught.value.key == "source.table"
    assert "does not exist" in str(caught.value)


@pytest.mark.parametrize(
    ("setting", "key"),
    [
        ({"uid_column": "id"}, "source.uid_column"),
        ({"created_at_column": "made"}, "source.created_at_column"),
        ({"location_column": "path"}, "source.location_column"),
        ({"size_column": "bytes"}, "source.size_column"),
    ],
)
def test_missing_column_names_the_setting(
    sqlite_db_url: str, setting: dict[str, Any], key: str
) -> None:
    engine = sa.create_engine(sqlite_db_url)
    load(engine, files_table(sa.MetaData()), [])
    source = SqlSourceProvider(engine, "files", **setting)
    with pytest.raises(ConfigError) as caught:
        source.pending_stats(window())
    assert caught.value.key == key
    for existing in ("'uid'", "'created_at'", "'file_location'", "'size_bytes'"):
        assert existing in str(caught.value)


def test_column_names_match_case_insensitively_when_unambiguous(sqlite_db_url: str) -> None:
    engine = sa.create_engine(sqlite_db_url)
    load(engine, files_table(sa.MetaData()), [])
    source = SqlSourceProvider(engine, "files", uid_column="UID", created_at_column="Created_At")
    assert source.uid_col.name == "uid"
    assert source.created_at_col.name == "created_at"


def test_created_at_of_the_wrong_type(engine: sa.Engine) -> None:
    load(engine, files_table(sa.MetaData(), created_at=sa.Integer()), [])
    with pytest.raises(ConfigError, match="needs a timestamp") as caught:
        SqlSourceProvider(engine, "files").pending_stats(window())
    assert caught.value.key == "source.created_at_column"


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"page_size": 0}, "source.page_size"),
        ({"page_size": True}, "source.page_size"),
        ({"timezone": "Mars/Olympus"}, "source.timezone"),
        ({"uid_column": ""}, "source.uid_column"),
        ({"table": ""}, "source.table"),
    ],
)
def test_validates_settings(kwargs: dict[str, Any], key: str) -> None:
    arguments: dict[str, Any] = {"table": "files", **kwargs}
    with pytest.raises(ConfigError) as caught:
        SqlSourceProvider("sqlite://", arguments.pop("table"), **arguments)
    assert caught.value.key == key


def test_declared_table_needs_no_reflection(sqlite_db_url: str) -> None:
    engine = sa.create_engine(sqlite_db_url)
    table = files_table(sa.MetaData())
    load(engine, table, [{"uid": "a", "created_at": datetime(2024, 5, 1), "file_location": "/a"}])
    source = SqlSourceProvider(engine, table)
    assert source.table is table
    assert [r.uid for r in source.iter_records(window())] == ["a"]


# --- rows ---------------------------------------------------------------------------


BAD_ROWS: dict[str, tuple[dict[str, Any], str]] = {
    "null-uid": ({"uid": None}, "uid is NULL"),
    "empty-uid": ({"uid": ""}, "uid is empty"),
    "long-uid": ({"uid": "ż" * 32_768}, "65,536 bytes in UTF-8"),
    "null-location": ({"file_location": None}, "file_location is NULL"),
    "empty-location": ({"file_location": ""}, "file_location is empty"),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_bad_rows_raise_naming_the_row(engine: sa.Engine, case: str) -> None:
    uid_type = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")
    table = files_table(sa.MetaData(), uid=uid_type, index=False)
    at = datetime(2024, 5, 1, 10, 0, 0, 42)
    good = {"uid": "good", "created_at": datetime(2024, 5, 1, 9), "file_location": "/good"}
    change, message = BAD_ROWS[case]
    bad = {"uid": "bad", "created_at": at, "file_location": "/bad", **change}
    load(engine, table, [good, bad])
    source = SqlSourceProvider(engine, "files")
    records = source.iter_records(window())
    assert next(records).uid == "good"
    with pytest.raises(BadRowError, match=message) as caught:
        next(records)
    assert caught.value.created_at == at.replace(tzinfo=UTC)
    if "uid" not in change:
        assert caught.value.uid == "bad"
    assert len(str(caught.value)) < 1_000, "a long uid is shortened in the message"


def test_uid_that_is_not_utf8(engine: sa.Engine) -> None:
    table = files_table(sa.MetaData(), uid=sa.LargeBinary(), index=False)
    load(
        engine,
        table,
        [
            {"uid": "ż".encode(), "created_at": datetime(2024, 5, 1, 1), "file_location": "/a"},
            {"uid": b"\xff\xfe", "created_at": datetime(2024, 5, 1, 2), "file_location": "/b"},
        ],
    )
    records = SqlSourceProvider(engine, "files").iter_records(window())
    assert next(records).uid == "ż"
    with pytest.raises(BadRowError, match="not valid UTF-8") as caught:
        next(records)
    assert caught.value.uid == b"\xff\xfe"


def test_integer_uids_become_decimal_strings(engine: sa.Engine) -> None:
    table = files_table(sa.MetaData(), uid=sa.BigInteger())
    load(
        engine,
        table,
        [
            {"uid": n, "created_at": datetime(2024, 5, 1, 1), "file_location": f"/{n}"}
            for n in (10, 9, 100, 2**40)
        ],
    )
    source = SqlSourceProvider(engine, "files", page_size=1)
    assert [r.uid for r in source.iter_records(window())] == ["9", "10", "100", str(2**40)]


def test_without_a_size_column(engine: sa.Engine) -> None:
    table = sa.Table(
        "files",
        sa.MetaData(),
        sa.Column("uid", sa.String(64)),
        sa.Column("created_at", NAIVE),
        sa.Column("file_location", sa.Text),
    )
    load(engine, table, [{"uid": "a", "created_at": datetime(2024, 5, 1), "file_location": "/a"}])
    source = SqlSourceProvider(engine, "files", size_column=None)
    assert list(source.iter_records(window())) == [SourceRecord("a", T0, "/a", None)]
    assert source.pending_stats(window()).bytes == 0


def test_null_created_at(engine: sa.Engine) -> None:
    rows: list[dict[str, Any]] = [
        {"uid": f"n{n}", "created_at": None, "file_location": "/"} for n in range(5)
    ]
    rows.append({"uid": "ok", "created_at": datetime(2024, 5, 1), "file_location": "/"})
    load(engine, files_table(sa.MetaData()), rows)
    source = SqlSourceProvider(engine, "files")
    assert source.null_created_at(limit=3) == ["n0", "n1", "n2"]
    assert len(source.null_created_at()) == 5
    assert source.malformed_created_at() == []
    with pytest.raises(ValueError, match="limit"):
        source.null_created_at(limit=0)


# --- streaming ----------------------------------------------------------------------


def test_large_window_streams_fully_while_other_statements_run(engine: sa.Engine) -> None:
    metadata = sa.MetaData()
    table = files_table(metadata)
    side = sa.Table("side_writes", metadata, sa.Column("n", sa.Integer))
    total, page = 25_000, 1_000
    load(
        engine,
        table,
        [
            {
                # 5 rows per created_at: ties straddle page boundaries.
                "uid": f"u{n:06d}",
                "created_at": datetime(2024, 5, 1) + timedelta(milliseconds=n // 5),
                "file_location": f"/f/{n}",
                "size_bytes": n,
            }
            for n in range(total)
        ],
    )
    source = SqlSourceProvider(engine, "files", page_size=page)
    source.table  # noqa: B018 - reflect first: only page queries are spied on
    cursors: list[str] = []

    def spy(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "ORDER BY files.created_at" in statement:  # pages, not the one-off checks
            cursors.append(type(cursor).__name__)

    sa.event.listen(engine, "before_cursor_execute", spy)
    seen = 0
    previous: tuple[datetime, str] | None = None
    for n, record in enumerate(source.iter_records(window())):
        if n % page in (0, page // 2):  # at a page boundary and in the middle of a page
            with engine.begin() as conn:
                conn.execute(side.insert(), {"n": n})
        key = (record.created_at, record.uid)
        assert previous is None or previous < key
        previous = key
        seen += 1
    sa.event.remove(engine, "before_cursor_execute", spy)
    assert seen == total, f"{total - seen} rows were lost"
    with engine.connect() as conn:
        writes = conn.execute(sa.select(sa.func.count()).select_from(side)).scalar()
    assert writes == 2 * total // page
    assert len(cursors) >= total // page
    if engine.dialect.name == "postgresql":
        assert set(cursors) == {"ServerCursor"}
    elif engine.dialect.name == "mysql":
        assert set(cursors) == {"SSCursor"}


class _CutShort(SqlSourceProvider):
    """Every streamed page ends after 3 rows, as MariaDB ends a disturbed stream."""

    def _page(self, cols: Any, query: Any) -> Any:
        page = super()._page(cols, query)
        try:
            for n, row in enumerate(page):
                if n == 3:
                    return
                yield row
        finally:
            page.close()


@pytest.mark.parametrize("sql_backend", ["postgresql", "mysql"])
def test_a_stream_cut_short_resumes_from_the_last_row(engine: sa.Engine) -> None:
    rows = [
        {"uid": f"u{n:03d}", "created_at": datetime(2024, 5, 1, n // 4), "file_location": "/"}
        for n in range(50)
    ]
    load(engine, files_table(sa.MetaData()), rows)
    source = _CutShort(engine, "files", page_size=10)
    assert [r.uid for r in source.iter_records(window())] == [row["uid"] for row in rows]


@pytest.mark.parametrize("sql_backend", ["sqlite"])
def test_memory_is_bounded_by_the_page(engine: sa.Engine) -> None:
    total = 8_000
    load(
        engine,
        files_table(sa.MetaData()),
        [
            {
                "uid": f"u{n:06d}",
                "created_at": datetime(2024, 5, 1) + timedelta(milliseconds=n),
                "file_location": f"/some/longer/location/{n:06d}.bin",
                "size_bytes": n,
            }
            for n in range(total)
        ],
    )

    def peak(page_size: int) -> int:
        source = SqlSourceProvider(engine, "files", page_size=page_size)
        source.table  # noqa: B018 - reflect outside the measurement
        tracemalloc.start()
        try:
            count = sum(1 for _ in source.iter_records(window()))
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            assert count == total

    small, whole = peak(200), peak(total)
    assert small * 5 < whole, f"peak {small} bytes with pages of 200, {whole} with one page"


def test_database_errors_are_source_errors(engine: sa.Engine) -> None:
    # A declared table skips reflection, so the page query itself meets the missing table.
    declared = files_table(sa.MetaData(), "not_created")
    source = SqlSourceProvider(engine, declared)
    # The first statement is the check for rows no window can hold (G17).
    with pytest.raises(SourceError, match="unplaceable created_at failed") as caught:
        list(source.iter_records(window()))
    assert isinstance(caught.value.__cause__, sa.exc.DBAPIError)
    assert "'not_created'" in str(caught.value)
    with pytest.raises(SourceError, match="computing pending stats failed"):
        source.pending_stats(window())


@pytest.mark.parametrize("sql_backend", ["sqlite"])
def test_error_between_pages_is_a_source_error(engine: sa.Engine) -> None:
    # Only SQLite: elsewhere the open page holds a lock the DROP would wait for.
    load(
        engine,
        files_table(sa.MetaData()),
        [
            {"uid": f"u{n}", "created_at": datetime(2024, 5, 1, 1), "file_location": "/"}
            for n in range(4)
        ],
    )
    source = SqlSourceProvider(engine, "files", page_size=2)
    records = source.iter_records(window())
    next(records)
    next(records)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE files"))
    with pytest.raises(
        SourceError, match="reading a page of rows failed for table 'files'"
    ) as caught:
        list(records)
    assert isinstance(caught.value.__cause__, sa.exc.DBAPIError)


@pytest.mark.parametrize("sql_backend", ["postgresql", "mysql"])
def test_password_never_in_repr_or_errors(db_url: str) -> None:
    url = sa.make_url(db_url).set(password="s3cr3t-Pa55", port=1)  # nothing listens on 1
    source = SqlSourceProvider(url, "files")
    try:
        assert "s3cr3t-Pa55" not in repr(source)
        assert "***" in repr(source)
        with pytest.raises(SourceError) as caught:
            source.pending_stats(window())
        assert "s3cr3t-Pa55" not in str(caught.value)
        assert "'files'" in str(caught.value)
        assert caught.value.__cause__ is not None
    finally:
        source.close()


def test_a_bad_url_does_not_echo_it() -> None:
    with pytest.raises(ConfigError) as caught:
        SqlSourceProvider("not a url :pa55word@", "files")
    assert "pa55word" not in str(caught.value)
    assert caught.value.__cause__ is None


def test_provider_from_a_url_owns_its_engine(sqlite_db_url: str) -> None:
    engine = sa.create_engine(sqlite_db_url)
    load(engine, files_table(sa.MetaData()), [])
    with SqlSourceProvider(sqlite_db_url, "files") as source:
        assert source.pending_stats(window()).files == 0
        assert isinstance(source, SourceProvider)


# --- statements ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["naive", "aware"])
def test_pending_stats_is_one_statement(engine: sa.Engine, kind: str) -> None:
    column = NAIVE if kind == "naive" else AWARE
    rows = [
        {
            "uid": f"u{n}",
            "created_at": datetime(2024, 5, 1, n),
            "file_location": "/",
            "size_bytes": n,
        }
        for n in range(10)
    ]
    load(engine, files_table(sa.MetaData(), created_at=column), rows, utc_session=kind == "aware")
    source = SqlSourceProvider(engine, "files")
    source.table  # noqa: B018 - reflect first: only the stats query is counted
    with count_statements(engine) as seen:
        stats = source.pending_stats(window())
    queries = [s for s in seen if s.lstrip().upper().startswith("SELECT")]
    assert len(queries) == 1, queries
    if engine.dialect.name != "mysql" or kind == "naive":
        assert len(seen) == 1, "no statement besides the aggregate"
    assert (stats.files, stats.bytes) == (10, 45)


# --- subclasses -----------------------------------------------------------------------


class OwnerSource(SqlSourceProvider):
    """Keeps the files of one tenant, known through a join on ``owners``."""

    def __init__(self, *args: Any, tenant: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tenant = tenant
        self._owners: sa.Table | None = None

    def filter_query(self, query: sa.Select[Any]) -> sa.Select[Any]:
        if self._owners is None:
            self._owners = sa.Table("owners", sa.MetaData(), autoload_with=self.engine)
        owners = self._owners
        return query.join(owners, owners.c.id == self.table.c.owner_id).where(
            owners.c.tenant == self.tenant
        )


def test_subclass_with_a_join(engine: sa.Engine) -> None:
    metadata = sa.MetaData()
    owners = sa.Table(
        "owners",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("tenant", sa.String(20)),
    )
    files = files_table(metadata, extra=[sa.Column("owner_id", sa.Integer)])
    load(engine, owners, [{"id": 1, "tenant": "acme"}, {"id": 2, "tenant": "globex"}])
    load(
        engine,
        files,
        [
            {
                "uid": f"u{n:03d}",
                "created_at": datetime(2024, 5, 1) + timedelta(hours=n % 24),
                "file_location": f"/{n}",
                "size_bytes": 10,
                "owner_id": 1 + n % 2,
            }
            for n in range(40)
        ],
    )
    source = OwnerSource(engine, "files", tenant="acme", page_size=3)
    got = list(source.iter_records(window()))
    assert len(got) == 20
    assert all(int(r.uid[1:]) % 2 == 0 for r in got)
    assert got == sorted(got, key=lambda r: (r.created_at, r.uid))
    stats = source.pending_stats(window())
    assert (stats.files, stats.bytes) == (20, 200)


def test_tenant_filter_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    runpy.run_path(str(EXAMPLES / "tenant_filter.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "acme-1" in out
    assert "globex" not in out.split("records:")[1]
    assert "pending: 2 files" in out
