"""What the optional SQL audit table costs per row, next to the per-record flag.

Fills a ``files`` table with ``--rows`` rows over ``--days`` days, then times on the same
database (each statement's time, wall clock):

* ``audit``: :class:`~deswm._stores.audit.SqlAuditLog` appending every row, one bulk
  ``INSERT`` per day bucket, as the orchestrator does after each manifest;
* ``flag``: :class:`~deswm._flagging.FlagJob` setting the legacy ``archived`` column of
  every row (``UPDATE ... WHERE uid IN (...)`` in batches of ``[flag] batch_size``);
* ``digest``: the manifest's row digest (:class:`~deswm._manifest.RowDigest`), per row in
  Python, which every cycle pays whether or not an audit table is configured::

    python -m benchmarks.audit_cost --url sqlite:////tmp/audit-bench.db --rows 100000
    python -m benchmarks.audit_cost --url postgresql+psycopg://postgres@127.0.0.1/test
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from deswm._flagging import FlagJob
from deswm._manifest import BucketManifest, ManifestStore, RowDigest
from deswm._model import Partition, WatermarkKey
from deswm._routing import DesRouter
from deswm._shardio import ShardStore
from deswm._sources.sql import SqlSourceProvider
from deswm._sqltypes import UtcDateTime
from deswm._stores.audit import SqlAuditLog
from deswm.testing import MemoryWatermarkStore

START = datetime(2024, 5, 1, tzinfo=UTC)


def _fill(engine: sa.Engine, rows: int, days: int) -> list[tuple[str, datetime]]:
    metadata = sa.MetaData()
    for name in ("files", "deswm_audit"):
        sa.Table(name, metadata)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS deswm_audit"))
        conn.execute(sa.text("DROP TABLE IF EXISTS files"))
    table = sa.Table(
        "files",
        sa.MetaData(),
        sa.Column("uid", sa.String(64), primary_key=True),
        sa.Column("created_at", UtcDateTime(), nullable=False, index=True),
        sa.Column("file_location", sa.String(200), nullable=False),
        sa.Column("archived", sa.Boolean, nullable=False),
    )
    table.create(engine)
    step = timedelta(days=days) / rows
    made = [(f"file-{n:09d}", START + n * step) for n in range(rows)]
    with engine.begin() as conn:
        for first in range(0, rows, 10_000):
            conn.execute(
                table.insert(),
                [
                    {"uid": u, "created_at": c, "file_location": f"/d/{u}", "archived": False}
                    for u, c in made[first : first + 10_000]
                ],
            )
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=10)
    args = parser.parse_args()
    engine = sa.create_engine(args.url)
    router = DesRouter(8)
    rows = _fill(engine, args.rows, args.days)

    started = time.perf_counter()
    digest = RowDigest.of(rows)
    digest_s = time.perf_counter() - started

    audit = SqlAuditLog(engine, router)
    by_day: dict[datetime, list[tuple[str, datetime]]] = {}
    for uid, created_at in rows:
        by_day.setdefault(created_at.replace(hour=0, minute=0, second=0, microsecond=0), []).append(
            (uid, created_at)
        )
    now = datetime.now(UTC)
    started = time.perf_counter()
    for day, day_rows in sorted(by_day.items()):
        manifest = BucketManifest(
            day.strftime("%Y%m%d"), Partition(), "bench", len(day_rows), "0" * 64, 0, ()
        )
        audit.record(manifest, day_rows, now)
    audit_s = time.perf_counter() - started

    with tempfile.TemporaryDirectory() as folder:
        manifests = ManifestStore(ShardStore(folder), router)
        for day in by_day:
            manifests.record(day, Partition(), "bench", RowDigest(), 0)
        store = MemoryWatermarkStore()
        store.initialize(WatermarkKey("bench"), START + timedelta(days=args.days + 1))
        job = FlagJob(
            store,
            SqlSourceProvider(engine, "files", size_column=None),
            router,
            pipeline="bench",
            initial=START,
            manifests=manifests,
        )
        started = time.perf_counter()
        result = job.run()
        flag_s = time.perf_counter() - started
    assert result.rows_updated == args.rows, result
    assert digest.count == args.rows
    n = args.rows
    print(f"database: {engine.dialect.name}, {n:,} rows over {args.days} days")
    print(f"audit  : {audit_s:7.2f} s  {audit_s / n * 1e6:7.1f} us/row  ({len(by_day)} inserts)")
    print(f"flag   : {flag_s:7.2f} s  {flag_s / n * 1e6:7.1f} us/row  ({result.batches} updates)")
    print(f"digest : {digest_s:7.2f} s  {digest_s / n * 1e6:7.1f} us/row")
    print(f"audit/flag ratio: {audit_s / flag_s:.2f}")


if __name__ == "__main__":
    main()
