"""SourceThrottle: the pacing rules on a fake clock, then the limits holding on real servers.

The rules are checked with an injected clock and sleep (deterministic, instant). The
real-server tests read a table through SqlSourceProvider on PostgreSQL and MariaDB (and
SQLite) and check the wall time the limits impose. The replica pause is driven by a
LagProbe whose lag the test sets: simulated lag, because a real replica cannot be made
in CI (tests/test_replica_lag.py runs the probes' queries on the real servers).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
import sqlalchemy as sa

from deswm import LagProbe, ReplicaLagError, SourceThrottle, SqlSourceProvider
from deswm._config import Config
from deswm._errors import ConfigError
from deswm._model import Window

T0 = datetime(2024, 5, 1, tzinfo=UTC)


class FakeTime:
    """A monotonic clock that only moves when someone sleeps (or a test advances it)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(round(seconds, 9))
        self.now += seconds


class ScriptedLag:
    """A LagProbe returning the lags a test scripted, then the last one forever."""

    def __init__(self, *lags: float) -> None:
        self.lags = list(lags)
        self.calls = 0

    def replica_lag(self) -> float:
        self.calls += 1
        return self.lags.pop(0) if len(self.lags) > 1 else self.lags[0]

    def __repr__(self) -> str:
        return "scripted-replica"


def throttle(fake: FakeTime, **settings: Any) -> SourceThrottle:
    return SourceThrottle(clock=fake.clock, sleep=fake.sleep, **settings)


def slow_rows(fake: FakeTime, count: int, query_seconds: float) -> Iterator[int]:
    """A page whose first row takes ``query_seconds`` to arrive."""
    fake.now += query_seconds
    yield from range(count)


def read_page(
    pacer: Any, fake: FakeTime, rows: int, *, query: float = 0.0, consume: float = 0.0
) -> None:
    pacer.before_page()
    for _ in pacer.timed(slow_rows(fake, rows, query)):
        pass
    fake.now += consume
    pacer.page_done(rows)


# --- the rules, on a fake clock ----------------------------------------------------------


def test_no_limit_never_waits() -> None:
    fake = FakeTime()
    pacer = throttle(fake).pacer()
    for _ in range(5):
        read_page(pacer, fake, 1000, query=0.2)
    assert fake.sleeps == []
    assert not SourceThrottle().limits_anything


def test_rows_per_second_spaces_page_starts_by_rows_over_rate() -> None:
    fake = FakeTime()
    pacer = throttle(fake, max_rows_per_second=100).pacer()
    read_page(pacer, fake, 50)  # the first page never waits
    read_page(pacer, fake, 50, consume=0.1)
    read_page(pacer, fake, 20)
    read_page(pacer, fake, 0)
    # 50 rows at 100/s: the next page starts 0.5 s after this one did (less the
    # 0.1 s the consumer already spent on the second), 20 rows: 0.2 s.
    assert fake.sleeps == [0.5, 0.4, 0.2]
    assert (pacer.pages, pacer.rows) == (4, 120)


def test_pages_per_second_spaces_page_starts() -> None:
    fake = FakeTime()
    pacer = throttle(fake, max_pages_per_second=4).pacer()
    read_page(pacer, fake, 10)
    read_page(pacer, fake, 10, query=0.05, consume=0.1)
    read_page(pacer, fake, 10)
    assert fake.sleeps == [0.25, 0.1]


def test_sleep_coef_waits_a_multiple_of_the_query_time_after_the_page() -> None:
    fake = FakeTime()
    pacer = throttle(fake, sleep_coef=2).pacer()
    read_page(pacer, fake, 10, query=0.2, consume=5.0)  # consuming does not count
    read_page(pacer, fake, 10, query=0.05)
    read_page(pacer, fake, 0, query=0.01)
    assert fake.sleeps == [0.4, 0.1]
    assert pacer.query_seconds == pytest.approx(0.26)
    assert pacer.slept == pytest.approx(0.5)


def test_the_longest_of_the_limits_wins() -> None:
    fake = FakeTime()
    pacer = throttle(fake, max_rows_per_second=1000, max_pages_per_second=10, sleep_coef=1).pacer()
    read_page(pacer, fake, 500, query=0.01)  # rows: 0.5 s, pages: 0.1 s, coef: 0.01 s
    read_page(pacer, fake, 10, query=0.3)  # rows: 0.01 s, pages: 0.1 s, coef: 0.3 s
    read_page(pacer, fake, 10)
    assert fake.sleeps == pytest.approx([0.49, 0.3])


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("max_rows_per_second", 0),
        ("max_rows_per_second", -5),
        ("max_pages_per_second", float("inf")),
        ("sleep_coef", -1),
        ("max_replica_lag", float("nan")),
        ("replica_check_interval", 0),
        ("max_rows_per_second", True),
    ],
)
def test_bad_settings_name_the_key(setting: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=f"source.{setting}: must be"):
        SourceThrottle(**{setting: value})


# --- the replica pause, with simulated lag -------------------------------------------------


def test_pauses_while_the_replica_lags_and_logs_once_per_pause(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeTime()
    probe = ScriptedLag(30.0, 25.0, 12.0, 4.0)
    assert isinstance(probe, LagProbe)
    pacer = throttle(fake, lag_probe=probe, max_replica_lag=10, replica_check_interval=2).pacer()
    with caplog.at_level(logging.INFO, logger="deswm.throttle"):
        read_page(pacer, fake, 10)
    assert fake.sleeps == [2, 2, 2]  # three checks above 10 s, then 4 s: resume
    assert pacer.paused == pytest.approx(6)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "pausing reads of the source: replica scripted-replica is 30.0 s behind" in messages[0]
    assert "source.max_replica_lag = 10 s" in messages[0]
    assert "resuming reads of the source after 6.0 s" in messages[1]
    assert "4.0 s behind" in messages[1]


def test_checks_the_lag_at_most_every_interval() -> None:
    fake = FakeTime()
    probe = ScriptedLag(0.0)
    pacer = throttle(fake, lag_probe=probe, replica_check_interval=1.0).pacer()
    for _ in range(10):
        read_page(pacer, fake, 10, consume=0.25)
    assert probe.calls == 3  # at t=0, 1.0 and 2.0 of 2.5 s of pages
    assert fake.sleeps == []


def test_a_replica_that_is_not_replicating_stops_before_the_next_page() -> None:
    fake = FakeTime()

    class Broken:
        def replica_lag(self) -> float:
            raise ReplicaLagError("replication is not running")

    pacer = throttle(fake, lag_probe=Broken()).pacer()
    with pytest.raises(ReplicaLagError, match=r"^source.replica_url: replication is not"):
        pacer.before_page()


# --- through SqlSourceProvider ------------------------------------------------------------


def make_table(url: str, rows: int, name: str = "files") -> sa.Table:
    table = sa.Table(
        name,
        sa.MetaData(),
        sa.Column("uid", sa.String(32), primary_key=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("file_location", sa.String(200), nullable=False),
        sa.Column("size_bytes", sa.BigInteger),
    )
    sa.Index(f"ix_{name}_created_at_uid", table.c.created_at, table.c.uid)
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        table.metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(
                table.insert(),
                [
                    {
                        "uid": f"u{i:06d}",
                        "created_at": (T0 + timedelta(seconds=i)).replace(tzinfo=None),
                        "file_location": f"f/{i}",
                        "size_bytes": i,
                    }
                    for i in range(rows)
                ],
            )
    finally:
        engine.dispose()
    return table


WHOLE_DAY = Window(T0, T0 + timedelta(days=1))


def test_the_provider_waits_between_pages_on_sqlite(sqlite_db_url: str) -> None:
    make_table(sqlite_db_url, 250)
    fake = FakeTime()
    limits = throttle(fake, max_rows_per_second=100)
    with SqlSourceProvider(sqlite_db_url, "files", page_size=100, throttle=limits) as source:
        assert len(list(source.iter_records(WHOLE_DAY))) == 250
    # pages of 100, 100 and 50 rows (a short buffered page ends the window)
    assert fake.sleeps == pytest.approx([1.0, 1.0], abs=0.05)


def test_a_replica_lag_error_stops_the_stream(sqlite_db_url: str) -> None:
    make_table(sqlite_db_url, 30)
    fake = FakeTime()

    class StopsAfterTwo:
        calls = 0

        def replica_lag(self) -> float:
            self.calls += 1
            if self.calls > 2:
                raise ReplicaLagError("replication is not running")
            return 0.0

    limits = throttle(fake, lag_probe=StopsAfterTwo(), replica_check_interval=1.0)
    seen: list[str] = []

    def consume(rows: Iterator[Any]) -> None:
        for record in rows:
            seen.append(record.uid)
            fake.now += 0.125  # a page of 10 takes 1.25 s: a check before every page

    source = SqlSourceProvider(sqlite_db_url, "files", page_size=10, throttle=limits)
    with source, pytest.raises(ReplicaLagError):
        consume(source.iter_records(WHOLE_DAY))
    assert len(seen) == 20


def test_a_provider_without_a_throttle_is_unchanged() -> None:
    with pytest.raises(ConfigError, match="throttle: must be a SourceThrottle"):
        SqlSourceProvider("sqlite://", "files", throttle=1.5)  # type: ignore[arg-type]


# --- real servers: the limits hold in wall time ---------------------------------------------


class SlowQuerySource(SqlSourceProvider):
    """Every page query takes ``DELAY`` seconds on the server (run once per query)."""

    DELAY = 0.1

    def filter_query(self, query: Any) -> Any:
        if self.engine.dialect.name == "postgresql":  # an InitPlan: once per statement
            return query.where(sa.text(f"(SELECT pg_sleep({self.DELAY})::text) IS NOT NULL"))
        # MariaDB materialises a LIMITed derived table once (a scalar subquery in the
        # WHERE clause would sleep once per row)
        slow = sa.select(sa.func.sleep(self.DELAY).label("slept")).limit(1).subquery("slow")
        return query.join(slow, slow.c.slept == 0)


@pytest.mark.parametrize("sql_backend", ["postgresql", "mysql", "sqlite"], indirect=True)
def test_rows_per_second_holds_on_a_real_server(db_url: str) -> None:
    make_table(db_url, 2000)
    with SqlSourceProvider(db_url, "files", page_size=500) as free:
        started = time.monotonic()
        assert len(list(free.iter_records(WHOLE_DAY))) == 2000
        unthrottled = time.monotonic() - started
    limits = SourceThrottle(max_rows_per_second=1000)
    with SqlSourceProvider(db_url, "files", page_size=500, throttle=limits) as source:
        started = time.monotonic()
        assert len(list(source.iter_records(WHOLE_DAY))) == 2000
        elapsed = time.monotonic() - started
    # Four pages of 500 at 1,000 rows/s: the empty fifth query starts 2 s after the first.
    assert elapsed >= 2.0
    assert unthrottled < 1.5


@pytest.mark.parametrize("sql_backend", ["postgresql", "mysql"], indirect=True)
def test_pages_per_second_holds_on_a_real_server(db_url: str) -> None:
    make_table(db_url, 400)
    limits = SourceThrottle(max_pages_per_second=5)
    with SqlSourceProvider(db_url, "files", page_size=100, throttle=limits) as source:
        started = time.monotonic()
        assert len(list(source.iter_records(WHOLE_DAY))) == 400
        elapsed = time.monotonic() - started
    assert elapsed >= 4 / 5  # five page queries, 0.2 s apart


@pytest.mark.parametrize("sql_backend", ["postgresql", "mysql"], indirect=True)
def test_sleep_coef_adds_time_in_proportion_to_the_query_time(db_url: str) -> None:
    make_table(db_url, 400)
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        time.sleep(seconds)

    with SlowQuerySource(db_url, "files", page_size=100) as free:
        started = time.monotonic()
        assert len(list(free.iter_records(WHOLE_DAY))) == 400
        unthrottled = time.monotonic() - started
    limits = SourceThrottle(sleep_coef=3, sleep=sleep)
    with SlowQuerySource(db_url, "files", page_size=100, throttle=limits) as source:
        started = time.monotonic()
        assert len(list(source.iter_records(WHOLE_DAY))) == 400
        elapsed = time.monotonic() - started
    # Each of the four full pages took at least 0.1 s to query, so 0.3 s of sleep follows.
    assert len(slept) == 4
    assert all(s >= 3 * SlowQuerySource.DELAY * 0.95 for s in slept)
    assert elapsed - unthrottled >= 4 * 3 * SlowQuerySource.DELAY * 0.9


def test_config_builds_the_throttle(tmp_path: Path) -> None:
    config = Config.from_mapping(
        {
            "source": {
                "url": "sqlite:///x.db",
                "max_rows_per_second": 500,
                "max_pages_per_second": 2.5,
                "sleep_coef": 1.5,
            },
            "archive": {"url": "a"},
        },
        base=tmp_path,
    )
    built = config.build_throttle()
    assert built is not None
    assert (built.max_rows_per_second, built.max_pages_per_second, built.sleep_coef) == (
        500,
        2.5,
        1.5,
    )
    assert built.lag_probe is None
    engine = sa.create_engine("sqlite://")
    assert config.build_source(engine).throttle == built
    plain = attrs.evolve(config, source=attrs.evolve(config.source, max_rows_per_second=None))
    plain = attrs.evolve(plain, source=attrs.evolve(plain.source, max_pages_per_second=None))
    plain = attrs.evolve(plain, source=attrs.evolve(plain.source, sleep_coef=0.0))
    assert plain.build_throttle() is None
    assert plain.build_source(engine).throttle is None


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_rows_per_second": 0}, "source.max_rows_per_second: must be from 1e-06"),
        ({"sleep_coef": -1}, "source.sleep_coef: must be zero or positive"),
        ({"replica_url": "sqlite:///r.db"}, "source.replica_url: replica lag is read from"),
        ({"max_replica_lag": "soon"}, "source.max_replica_lag: must be a number"),
    ],
)
def test_config_checks_the_limits(tmp_path: Path, settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Config.from_mapping(
            {"source": {"url": "sqlite:///x.db", **settings}, "archive": {"url": "a"}},
            base=tmp_path,
        )


def test_config_builds_a_replica_probe_with_a_redacted_url(tmp_path: Path) -> None:
    config = Config.from_mapping(
        {
            "source": {
                "url": "sqlite:///x.db",
                "replica_url": "postgresql+psycopg://reader:s3cret@replica.internal/files",
                "max_replica_lag": 30,
                "replica_check_interval": 5,
            },
            "archive": {"url": "a"},
        },
        base=tmp_path,
    )
    assert "s3cret" not in repr(config)
    built = config.build_throttle()
    assert built is not None
    assert built.lag_probe is not None
    assert (built.max_replica_lag, built.replica_check_interval) == (30, 5)
    assert "s3cret" not in repr(built)
    assert "replica.internal" in repr(built.lag_probe)
