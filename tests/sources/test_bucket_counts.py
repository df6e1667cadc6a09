"""``SqlSourceProvider.bucket_counts`` on SQLite, PostgreSQL and MariaDB: one ``GROUP BY``
per range places every row in the day the window query places it (time zones, DST,
midnight), narrows to a partition like the cycle, and applies ``filter_query``."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from test_sql_source import (
    AWARE,
    NAIVE,
    WARSAW,
    count_statements,
    files_table,
    load,
    record_rows,
)

from deswm._model import Partition, SourceRecord, Window
from deswm._routing import DesRouter
from deswm._sources import bucket_counts, owned_records
from deswm._sources.sql import SqlSourceProvider

ROUTER = DesRouter(8)
T0 = datetime(2024, 3, 25, tzinfo=UTC)  # the spring DST change of Warsaw inside the range


def sample(days: int, seed: int = 5) -> list[SourceRecord]:
    """Rows at midnights, a microsecond before them, and at random instants."""
    rng = random.Random(seed)
    out = []
    for day in range(days):
        start = T0 + timedelta(days=day)
        for at in (start, start - timedelta(microseconds=1), start + timedelta(hours=23)):
            out.append(at)
        out.extend(
            start + timedelta(seconds=rng.randrange(86_400)) for _ in range(rng.randrange(5))
        )
    return [SourceRecord(f"u{n:05d}-{rng.randrange(16**6):06x}", at, f"/f/{n}", 1)
            for n, at in enumerate(out)]  # fmt: skip


def expected(
    source: SqlSourceProvider, window: Window, partition: Partition
) -> dict[datetime, int]:
    """What the cycle archives per day: the window's rows the partition owns, streamed."""
    return dict(
        Counter(
            ROUTER.bucket_start(r.created_at)
            for r in owned_records(source, window, ROUTER, partition)
        )
    )


@pytest.mark.parametrize(("kind", "zone"), [(NAIVE, UTC), (NAIVE, WARSAW), (AWARE, WARSAW)])
def test_every_row_is_counted_in_the_day_the_window_query_gives_it(
    engine: sa.Engine, sql_backend: str, kind: Any, zone: Any
) -> None:
    if kind is AWARE and sql_backend == "sqlite":
        pytest.skip("SQLite has no time zone aware column")
    records = sample(12)
    table = files_table(sa.MetaData(), created_at=kind)
    load(engine, table, record_rows(engine, records, kind, zone), utc_session=kind is AWARE)
    source = SqlSourceProvider(engine, "files", timezone=zone)
    window = Window(T0 + timedelta(days=1), T0 + timedelta(days=11))
    with count_statements(engine) as statements:
        counts = source.bucket_counts(window, ROUTER)
    assert counts == expected(source, window, Partition())
    assert sum(counts.values()) > 40
    assert len([s for s in statements if "GROUP BY" in s and "per_day" in s]) == 1


def test_partitions_are_counted_as_the_cycle_filters_them(
    engine: sa.Engine, sql_backend: str
) -> None:
    records = sample(6, seed=9)
    table = files_table(sa.MetaData())
    load(engine, table, record_rows(engine, records, NAIVE, UTC))
    source = SqlSourceProvider(engine, "files")
    window = Window(T0, T0 + timedelta(days=6))
    total: Counter[datetime] = Counter()
    for index in range(3):
        partition = Partition(index, 3)
        counted = source.bucket_counts(window, ROUTER, partition)
        wanted = expected(source, window, partition)
        if counted is None:  # PostgreSQL without deswm_crc32(): no pushdown for text uids
            assert sql_backend == "postgresql"
        else:
            assert counted == wanted
        assert bucket_counts(source, window, ROUTER, partition) == wanted
        total.update(wanted)
    assert dict(total) == expected(source, window, Partition())


def test_a_range_longer_than_one_statement_and_the_filter_query(engine: sa.Engine) -> None:
    first = datetime(2022, 1, 1, tzinfo=UTC)
    rows = [
        SourceRecord(f"r{n}", first + timedelta(days=97 * n, hours=n), f"/{n}", 1)
        for n in range(10)
    ]
    table = files_table(sa.MetaData())
    load(engine, table, record_rows(engine, rows, NAIVE, UTC))

    class EvenOnly(SqlSourceProvider):
        def filter_query(self, query: Any) -> Any:
            return query.where(
                self.table.c["file_location"].in_([f"/{n}" for n in range(0, 10, 2)])
            )

    window = Window(datetime(2022, 1, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC))
    source = SqlSourceProvider(engine, "files")
    with count_statements(engine) as statements:
        counts = source.bucket_counts(window, ROUTER)
    assert counts == {ROUTER.bucket_start(r.created_at): 1 for r in rows}
    assert len([s for s in statements if "GROUP BY" in s and "per_day" in s]) == 3  # 1096 days
    even = EvenOnly(engine, "files").bucket_counts(window, ROUTER)
    assert even == {ROUTER.bucket_start(r.created_at): 1 for r in rows[::2]}
    assert source.bucket_counts(Window(window.start, window.start), ROUTER) == {}
