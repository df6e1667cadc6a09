"""What K partitions cost the source database: rows fetched and read time per partition.

The benchmark's data set (text uids) is copied to a fresh PostgreSQL schema and a fresh
MariaDB database, then each partition of ``--partitions`` reads the whole window three
ways: the filter in SQL (``iter_partition_records``), on PostgreSQL also before the
optional ``deswm_crc32`` function is installed (then a text uid column is not filtered in
SQL), and the filter in Python (``iter_records``, what every partition did before).
Only the source read is timed (no file is read or packed); the best of ``--repeat`` runs
counts. The tables are dropped at the end::

    python -m benchmarks.partition_reads --files 100000 --partitions 2
"""

from __future__ import annotations

import argparse
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from benchmarks.dataset import DatasetSpec, ensure_dataset
from deswm import DesRouter, Partition, SqlSourceProvider, Window
from deswm._sql.shardsql import POSTGRES_CRC32_DDL

_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
_MYSQL = "mysql+pymysql://root@127.0.0.1:3306/test?charset=utf8mb4"


@contextmanager
def _postgres(url: str) -> Iterator[str]:
    schema = f"deswm_pr_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(url)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        yield (
            sa.make_url(url)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


@contextmanager
def _mariadb(url: str) -> Iterator[str]:
    database = f"deswm_pr_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(url)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4")
    try:
        yield sa.make_url(url).set(database=database).render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP DATABASE `{database}`")
        admin.dispose()


def _load(engine: sa.Engine, sqlite_path: str) -> Window:
    aware = engine.dialect.name == "postgresql"
    table = sa.Table(
        "files",
        sa.MetaData(),
        sa.Column("uid", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=aware), nullable=False),
        sa.Column("file_location", sa.Text, nullable=False),
        sa.Column("size_bytes", sa.BigInteger),
        sa.Index("ix_files_created_at_uid", "created_at", "uid"),
    )
    table.create(engine)
    source = sqlite3.connect(sqlite_path)
    rows = source.execute("SELECT uid, created_at, file_location, size_bytes FROM files")
    first = last = None
    while batch := rows.fetchmany(20_000):
        values = []
        for uid, created, location, size in batch:
            instant = datetime.fromisoformat(created).replace(tzinfo=UTC)
            first = instant if first is None or instant < first else first
            last = instant if last is None or instant > last else last
            stored = instant if aware else instant.replace(tzinfo=None)
            values.append(
                {"uid": uid, "created_at": stored, "file_location": location, "size_bytes": size}
            )
        with engine.begin() as conn:
            conn.execute(table.insert(), values)
    source.close()
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE files" if aware else "ANALYZE TABLE files")
    if first is None or last is None:
        raise SystemExit("the data set has no rows")
    router = DesRouter(8)
    return Window(router.bucket_start(first), router.next_bucket(router.bucket_start(last)))


def _best(repeat: int, read: Callable[[], int]) -> tuple[float, int]:
    best, rows = float("inf"), 0
    for _ in range(repeat):
        started = time.perf_counter()
        rows = read()
        best = min(best, time.perf_counter() - started)
    return best, rows


def _measure(url: str, window: Window, k: int, repeat: int, mode: str) -> dict[str, Any]:
    engine = sa.create_engine(url)
    source = SqlSourceProvider(engine, "files")
    router = DesRouter(8)
    per_partition = []
    for index in range(k):
        partition = Partition(index, k)
        if mode == "python":
            read: Callable[[], int] = lambda: sum(1 for _ in source.iter_records(window))  # noqa: E731
        else:
            read = lambda p=partition: sum(  # noqa: E731
                1 for _ in source.iter_partition_records(window, router, p)
            )
        seconds, rows = _best(repeat, read)
        per_partition.append({"seconds": round(seconds, 3), "rows": rows})
    engine.dispose()
    return {"mode": mode, "partitions": per_partition}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=20)
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pg-url", default=_PG)
    parser.add_argument("--mysql-url", default=_MYSQL)
    parser.add_argument("--work-dir", type=Path, default=Path("benchmarks/work"))
    args = parser.parse_args(argv)
    dataset = ensure_dataset(args.work_dir, DatasetSpec(args.files, days=args.days))
    for name, database in (
        ("postgresql", _postgres(args.pg_url)),
        ("mariadb", _mariadb(args.mysql_url)),
    ):
        with database as url:
            engine = sa.create_engine(url)
            window = _load(engine, str(dataset.sqlite_path))
            # On PostgreSQL the function is installed after the run without it.
            modes = (
                ["python", "sql-no-function", "sql"] if name == "postgresql" else ["python", "sql"]
            )
            for mode in modes:
                if mode == "sql" and name == "postgresql":
                    with engine.begin() as conn:
                        conn.exec_driver_sql(POSTGRES_CRC32_DDL)
                result = _measure(url, window, args.partitions, args.repeat, mode)
                total = sum(p["seconds"] for p in result["partitions"])
                print(
                    f"{name:10} {mode:16} rows per partition "
                    f"{[p['rows'] for p in result['partitions']]}, read seconds "
                    f"{[p['seconds'] for p in result['partitions']]} (sum {total:.3f})",
                    flush=True,
                )
            engine.dispose()


if __name__ == "__main__":
    main()
