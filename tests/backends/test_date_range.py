"""The whole ``datetime`` range through a real cycle on SQLite, PostgreSQL and MariaDB (G17).

Rows with any ``created_at`` from 0001-01-01 to 9999-12-31 (aware UTC) are archived into
shards named with a four-digit year (``09990601_..``, ``00010101_..``) and read back, or,
on the last day 9999-12-31 whose end no ``datetime`` can name, stop the cycle with a typed
error naming the row: the watermark never passes a row silently.

``DESWM_DATE_EXAMPLES`` sets the number of examples per database (default 12).
"""

from __future__ import annotations

import os
import re
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from deswm._archive import Archive
from deswm._errors import UnplaceableRowError
from deswm._model import WatermarkKey
from deswm._orchestrator import WatermarkOrchestrator
from deswm._packer import DesPacker
from deswm._routing import DesRouter
from deswm._sources.sql import SqlSourceProvider
from deswm._sqltypes import UtcDateTime
from deswm._timeutil import format_day
from deswm.testing import MemoryFileReader, MemoryWatermarkStore

FIRST = datetime(1, 1, 1, tzinfo=UTC)
LAST_DAY = datetime(9999, 12, 31, tzinfo=UTC)
END_OF_TIME = datetime.max.replace(tzinfo=UTC)
EXAMPLES = int(os.environ.get("DESWM_DATE_EXAMPLES", "12"))
SHARD_NAME = re.compile(r"(\d{8})_[0-9A-F]{2}_\d{4}\.des")

instants = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime.max, timezones=st.just(UTC))


def _table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        "files",
        metadata,
        sa.Column("uid", sa.String(32)),
        sa.Column("created_at", UtcDateTime()),
        sa.Column("file_location", sa.String(64)),
        sa.Column("size_bytes", sa.BigInteger),
    )


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(stamps=st.lists(instants, min_size=1, max_size=5))
@example(stamps=[datetime(999, 6, 1, 10, 30, tzinfo=UTC)])
@example(stamps=[FIRST, datetime(1, 1, 1, 23, 59, 59, 999999, tzinfo=UTC)])
@example(stamps=[datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=UTC)])
@example(stamps=[datetime(2024, 5, 1, tzinfo=UTC), datetime(9999, 12, 31, 12, tzinfo=UTC)])
def test_every_year_is_archived_under_its_own_day_or_named(
    engine: sa.Engine, stamps: list[datetime]
) -> None:
    metadata = sa.MetaData()
    table = _table(metadata)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    rows: list[dict[str, Any]] = [
        {"uid": f"u{n}", "created_at": stamp, "file_location": f"mem/{n}", "size_bytes": n}
        for n, stamp in enumerate(stamps)
    ]
    with engine.begin() as conn:
        conn.execute(table.insert(), rows)
    files = {row["file_location"]: f"bytes of {row['uid']}".encode() for row in rows}
    router = DesRouter(8)
    store = MemoryWatermarkStore()
    with tempfile.TemporaryDirectory() as folder:
        orchestrator = WatermarkOrchestrator(
            store,
            SqlSourceProvider(engine, "files", page_size=2),
            MemoryFileReader(files),
            router,
            DesPacker(folder, router),
            pipeline="range",
            lag=timedelta(0),
            initial=FIRST,
            clock=lambda: END_OF_TIME,  # target: 9999-12-31, the last day that has a start
        )
        last_day = [row["uid"] for row in rows if row["created_at"] >= LAST_DAY]
        if last_day:
            with pytest.raises(UnplaceableRowError) as caught:
                orchestrator.run_cycle()
            assert {uid for uid, _ in caught.value.rows} == set(last_day)
            watermark = store.get(WatermarkKey("range"))
            assert watermark is None or watermark.position == FIRST, "nothing moved"
            return
        result = orchestrator.run_cycle()
        assert result.watermark_after == LAST_DAY
        assert result.files == len(rows)
        names = sorted(path.name for path in Path(folder).glob("*.des"))
        days = {SHARD_NAME.fullmatch(name).group(1) for name in names}  # type: ignore[union-attr]
        assert days == {format_day(row["created_at"]) for row in rows}
        archive = Archive(folder, router)
        for row in rows:
            assert archive.get(row["uid"], row["created_at"]) == files[row["file_location"]]
            assert archive.stat(row["uid"], row["created_at"]).created_at == row["created_at"]
