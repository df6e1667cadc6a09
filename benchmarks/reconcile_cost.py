"""What a late-row reconcile costs: the count query and the digest stream.

``deswm reconcile`` first counts a range's rows per day with one ``GROUP BY`` query
(``SqlSourceProvider.bucket_counts``), then streams the rows of the days it must check and
sums their row digest (``RowDigest``, what the manifests record). This fills a fresh
SQLite file and a fresh PostgreSQL schema with ``--rows`` synthetic rows over ``--days``
days (36-character uids, the benchmark data set's shape; no files are needed, none are
read), then times both, best of ``--repeat``, and prints the rows per second and the CPU
seconds of this process. The tables are dropped at the end::

    python -m benchmarks.reconcile_cost --rows 1000000
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa

from benchmarks.partition_reads import _postgres
from benchmarks.source_stream import best_of, fill_files
from deswm import DesRouter, Partition, SqlSourceProvider, Window
from deswm._routing import uid_text
from deswm._rowdigest import RowDigest

_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
_ROUTER = DesRouter(8)


@contextlib.contextmanager
def _sqlite(_url: str) -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="deswm-reconcile-") as folder:
        yield f"sqlite:///{Path(folder) / 'source.sqlite3'}"


def _measure(url: str, window: Window, repeat: int, partitions: int) -> list[str]:
    engine = sa.create_engine(url)
    source = SqlSourceProvider(engine, "files")
    partition = Partition(0, partitions)
    if partitions > 1:
        source.install_functions()  # PostgreSQL: deswm_crc32(), so the count filters in SQL

    def count() -> int:
        counts = source.bucket_counts(window, _ROUTER, partition)
        assert counts is not None
        return sum(counts.values())

    def digest() -> int:
        rows = RowDigest()
        for record in source.iter_records(window):
            rows.add(uid_text(record.uid), record.created_at)
        return rows.count

    lines = []
    for label, run in (("count query", count), ("digest stream", digest)):
        if label == "digest stream" and partitions > 1:
            continue
        wall, cpu, rows = best_of(repeat, run)
        lines.append(
            f"{label:13} {rows:>9,} rows in {wall:6.2f} s: {rows / wall:>11,.0f} rows/s; "
            f"CPU of this process {cpu:.2f} s"
        )
    engine.dispose()
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--partitions", type=int, default=1, help="count one of K partitions (no digest stream)"
    )
    parser.add_argument("--pg-url", default=_PG)
    parser.add_argument("--only", default="sqlite,postgresql")
    args = parser.parse_args(argv)
    wanted = set(args.only.split(","))
    for name, database in (("sqlite", _sqlite), ("postgresql", _postgres)):
        if name not in wanted:
            continue
        with database(args.pg_url) as url:
            engine = sa.create_engine(url)
            started = time.perf_counter()
            window = fill_files(engine, args.rows, args.days)
            engine.dispose()
            print(f"{name}: filled {args.rows:,} rows in {time.perf_counter() - started:.1f} s")
            for line in _measure(url, window, args.repeat, args.partitions):
                print(f"{name:10} {line}", flush=True)
            print(f"{name:10} load average {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
