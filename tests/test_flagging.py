"""The flag stage on SQLite, PostgreSQL and MariaDB: back-fills the legacy column in
batches, only for rows below the archived watermark (every partition's), never others."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from deswm._config import load_config
from deswm._errors import ConfigError, LateRowsError, ManifestMissingError
from deswm._flagging import FlagJob
from deswm._manifest import ManifestStore, RowDigest
from deswm._model import Partition, WatermarkKey, Window
from deswm._routing import DesRouter
from deswm._shardio import ShardStore
from deswm._sources.sql import SqlSourceProvider
from deswm.testing import MemoryWatermarkStore

START = datetime(2024, 5, 10, tzinfo=UTC)


@pytest.fixture
def files(engine: sa.Engine) -> sa.Table:
    metadata = sa.MetaData()
    table = sa.Table(
        "files",
        metadata,
        sa.Column("uid", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("file_location", sa.String(200), nullable=False),
        sa.Column("tenant", sa.String(20), nullable=False),
        sa.Column("archived", sa.Boolean, nullable=False),
    )
    metadata.create_all(engine)
    rows = [
        {
            "uid": number,
            "created_at": (START + timedelta(hours=5 * number)).replace(tzinfo=None),
            "file_location": f"/data/{number}",
            "tenant": "acme" if number % 3 else "other",
            "archived": False,
        }
        for number in range(60)  # 12.5 days, from May 10
    ]
    with engine.begin() as conn:
        conn.execute(table.insert(), rows)
    return table


def flagged(engine: sa.Engine, table: sa.Table) -> set[int]:
    with engine.connect() as conn:
        return {row.uid for row in conn.execute(sa.select(table.c.uid).where(table.c.archived))}


def committed(
    day: int, partition: Partition, kept: Callable[[int], bool] = lambda n: True
) -> RowDigest:
    """The rows of the table's day ``day`` (from May 10) that ``partition`` owns (and
    ``kept`` keeps: a source's filter)."""
    bucket = START + timedelta(days=day)
    return RowDigest.of(
        (str(n), START + timedelta(hours=5 * n))
        for n in range(60)
        if bucket <= START + timedelta(hours=5 * n) < bucket + timedelta(days=1)
        and partition.owns(DesRouter(8).shard_index(str(n)))
        and kept(n)
    )


def recorded(folder: Path, kept: Callable[[int], bool] = lambda n: True) -> ManifestStore:
    """Manifests of every day of the table, for one and for two partitions."""
    found = ManifestStore(ShardStore(str(folder)), DesRouter(8))
    for day in range(14):
        for partition in (Partition(0, 1), Partition(0, 2), Partition(1, 2)):
            rows = committed(day, partition, kept)
            found.record(START + timedelta(days=day), partition, "files", rows, 0)
    return found


@pytest.fixture
def manifests(tmp_path: Path) -> ManifestStore:
    return recorded(tmp_path / "archive")


def job(
    engine: sa.Engine, store: MemoryWatermarkStore, manifests: ManifestStore, **options: Any
) -> FlagJob:
    source = options.pop("source", None) or SqlSourceProvider(engine, "files", size_column=None)
    return FlagJob(
        store,
        source,
        DesRouter(8),
        pipeline="files",
        initial=START,
        manifests=manifests,
        **options,
    )


def test_flags_rows_below_the_archived_watermark(
    engine: sa.Engine, files: sa.Table, manifests: ManifestStore
) -> None:
    store = MemoryWatermarkStore()
    store.initialize(WatermarkKey("files"), datetime(2024, 5, 15, tzinfo=UTC))

    result = job(engine, store, manifests, batch_size=7).run()

    below = {
        n for n in range(60) if START + timedelta(hours=5 * n) < datetime(2024, 5, 15, tzinfo=UTC)
    }
    assert flagged(engine, files) == below
    assert result.rows_updated == len(below)
    assert result.batches >= len(below) // 7
    assert result.buckets_committed == 5
    mark = store.get(WatermarkKey("files", "flagged"))
    assert mark is not None
    assert mark.position == datetime(2024, 5, 15, tzinfo=UTC)

    again = job(engine, store, manifests).run()  # nothing new: no window, no writes
    assert again.window.empty
    assert again.rows_updated == 0


def test_flagging_follows_filter_query(engine: sa.Engine, files: sa.Table, tmp_path: Path) -> None:
    class AcmeOnly(SqlSourceProvider):
        def filter_query(self, query: Any) -> Any:
            return query.where(self.table.c["tenant"] == "acme")

    store = MemoryWatermarkStore()
    store.initialize(WatermarkKey("files"), datetime(2024, 5, 13, tzinfo=UTC))
    manifests = recorded(tmp_path / "acme", lambda n: n % 3 != 0)  # the cycle's rows
    job(engine, store, manifests, source=AcmeOnly(engine, "files", size_column=None)).run()
    assert flagged(engine, files) == {n for n in range(15) if n % 3}


def test_waits_for_every_partition(
    engine: sa.Engine, files: sa.Table, manifests: ManifestStore
) -> None:
    store = MemoryWatermarkStore()
    store.initialize(
        WatermarkKey("files", partition=0), datetime(2024, 5, 14, tzinfo=UTC), partitions=2
    )
    assert job(engine, store, manifests).run().rows_updated == 0  # partition 1 has not started
    store.initialize(
        WatermarkKey("files", partition=1), datetime(2024, 5, 12, tzinfo=UTC), partitions=2
    )
    job(engine, store, manifests).run()
    assert max(flagged(engine, files)) < 10  # bounded by the slower partition (May 12)


def test_dry_run_and_rate_limit(
    engine: sa.Engine, files: sa.Table, manifests: ManifestStore
) -> None:
    store = MemoryWatermarkStore()
    store.initialize(WatermarkKey("files"), datetime(2024, 5, 12, tzinfo=UTC))
    dry = job(engine, store, manifests).run(dry_run=True)
    assert dry.rows_updated == 10
    assert flagged(engine, files) == set()
    assert store.get(WatermarkKey("files", "flagged")) is None

    sleeps: list[float] = []
    job(engine, store, manifests, batch_size=4, max_rows_per_second=2.0, sleep=sleeps.append).run()
    assert flagged(engine, files) == set(range(10))
    assert sleeps
    assert sum(sleeps) > 3  # 10 rows at 2 rows/s: about 5 s of waiting, minus the work


def test_bad_settings(engine: sa.Engine, files: sa.Table, manifests: ManifestStore) -> None:
    store = MemoryWatermarkStore()
    with pytest.raises(ConfigError, match=r"flag\.batch_size"):
        job(engine, store, manifests, batch_size=0)
    store.initialize(WatermarkKey("files"), datetime(2024, 5, 12, tzinfo=UTC))
    with pytest.raises(ConfigError) as caught:
        job(engine, store, manifests, column="is_archived").run()
    assert caught.value.key == "flag.column"


def test_flagging_depends_on_a_protocol_not_on_the_sql_source() -> None:
    import json
    import subprocess
    import sys

    script = "import json, sys\nimport deswm._flagging\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert "deswm._sources.sql" not in json.loads(done.stdout)


def test_a_day_without_its_manifest_is_refused(
    engine: sa.Engine, files: sa.Table, tmp_path: Path
) -> None:
    """Days 10 and 11 have manifests, day 12 has none: the job flags 10 and 11 and stops
    at 12 before flagging any of its rows (its watermark stays at May 12)."""
    partial = ManifestStore(ShardStore(str(tmp_path / "partial")), DesRouter(8))
    for day in (0, 1):
        partial.record(
            START + timedelta(days=day), Partition(), "files", committed(day, Partition()), 0
        )
    store = MemoryWatermarkStore()
    store.initialize(WatermarkKey("files"), datetime(2024, 5, 14, tzinfo=UTC))

    with pytest.raises(ManifestMissingError, match="bucket 20240512 partition 0/1"):
        job(engine, store, partial).run()

    assert flagged(engine, files) == set(range(10))  # May 10 and 11: 5 hours apart
    mark = store.get(WatermarkKey("files", "flagged"))
    assert mark is not None and mark.position == datetime(2024, 5, 12, tzinfo=UTC)
    with pytest.raises(ManifestMissingError):
        job(engine, store, partial).run(dry_run=True)


def test_a_day_with_late_rows_is_refused_before_any_of_its_rows_is_flagged(
    engine: sa.Engine, files: sa.Table, manifests: ManifestStore
) -> None:
    """A row inserted into May 12 after its commit: May 10 and 11 are flagged, May 12
    is refused whole (one count query), with the partition that holds the late row."""
    late = START + timedelta(days=2, hours=1, minutes=30)
    with engine.begin() as conn:
        conn.execute(
            files.insert(),
            [{"uid": 1000, "created_at": late.replace(tzinfo=None), "file_location": "/x",
              "tenant": "acme", "archived": False}],
        )  # fmt: skip
    store = MemoryWatermarkStore()
    for index in range(2):
        store.initialize(
            WatermarkKey("files", partition=index), datetime(2024, 5, 14, tzinfo=UTC), partitions=2
        )
    owner = DesRouter(8).shard_index("1000") % 2
    with pytest.raises(LateRowsError, match=f"bucket 20240512 partition {owner}/2") as info:
        job(engine, store, manifests).run()
    assert "deswm reconcile" in str(info.value)
    assert flagged(engine, files) == set(range(10))  # May 10 and 11 only
    mark = store.get(WatermarkKey("files", "flagged"))
    assert mark is not None and mark.position == datetime(2024, 5, 12, tzinfo=UTC)


def test_the_job_needs_manifests(engine: sa.Engine, files: sa.Table) -> None:
    source = SqlSourceProvider(engine, "files", size_column=None)
    with pytest.raises(ConfigError, match="manifests"):
        FlagJob(MemoryWatermarkStore(), source, DesRouter(8), pipeline="files", initial=START)


# --- end to end: a real cycle's manifests and shards, then the source changes -------------


def _site(tmp_path: Path, db_url: str, extra: str = "") -> Any:
    from test_reconcile import SqlSite

    site = SqlSite(tmp_path, db_url)
    if extra:
        site.config.write_text(site.config.read_text(encoding="utf-8") + extra, encoding="utf-8")
    return site


def _uids_before(site: Any, end: datetime) -> set[str]:
    return {uid for uid, at in site.rows if at < end}


def test_a_late_row_hidden_by_a_deleted_row_is_not_flagged(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """May 12 loses doc-007 and gains a late row after its commit: the same count as its
    manifest, so only the digest shows the change. The job flags May 10 and 11 and
    refuses May 12 naming the late row; after ``reconcile --repair`` it flags every row."""
    site = _site(tmp_path, db_url)
    code, _, err = site.cli("run", capsys=capsys)
    assert code == 0, err
    site.delete("doc-007")  # May 12, 15:07
    site.insert([("late-1", START + timedelta(days=2, hours=10))])

    code, _, err = site.cli("flag", capsys=capsys)
    assert code == 1
    assert "LateRowsError" in err and "bucket 20240512 partition 0/1" in err
    assert "uid='late-1'" in err and "--repair" in err
    assert site.flagged() == _uids_before(site, START + timedelta(days=2))

    code, _, err = site.cli("reconcile", "--repair", capsys=capsys)
    assert code == 0, err
    code, _, err = site.cli("flag", capsys=capsys)
    assert code == 0, err
    assert site.flagged() == {uid for uid, _ in site.rows}


def test_rows_deleted_since_the_commit_do_not_stop_the_flag(
    sqlite_db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A day with fewer rows than its manifest: the digest differs, every row left is in
    the published indexes, so the day is flagged."""
    site = _site(tmp_path, sqlite_db_url)
    code, _, err = site.cli("run", capsys=capsys)
    assert code == 0, err
    site.delete("doc-007")
    code, _, err = site.cli("flag", capsys=capsys)
    assert code == 0, err
    assert site.flagged() == {uid for uid, _ in site.rows}
    assert len(site.rows) == 29


def test_rows_listed_in_the_error_table_are_never_flagged(
    sqlite_db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """doc-004's file cannot be read, so ``on_error = "record"`` lists it and the cycle
    passes its day without it: the flag must not call that file archived."""
    site = _site(tmp_path, sqlite_db_url, '[run]\non_error = "record"\nmax_failure_ratio = 1\n')
    (tmp_path / "files" / "doc-004").unlink()
    code, _, err = site.cli("run", capsys=capsys)
    assert code == 0, err
    code, out, err = site.cli("flag", "--json", capsys=capsys)
    assert code == 0, err
    assert json.loads(out)["rows_listed"] == 1
    assert site.flagged() == {uid for uid, _ in site.rows} - {"doc-004"}
    code, out, err = site.cli("flag", capsys=capsys)  # nothing left; the text form
    assert code == 0, err


def test_counts_only_skips_the_digest_pass(
    sqlite_db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = _site(tmp_path, sqlite_db_url)
    code, _, err = site.cli("run", capsys=capsys)
    assert code == 0, err
    config = load_config(site.config)
    assert config.flag.verify == "digest"
    job = config.build_flag_job(verify="counts")
    assert job.verify == "counts"
    streamed: list[Window] = []
    iter_records = job.source.iter_records

    def counting(window: Window) -> Any:
        streamed.append(window)
        return iter_records(window)

    job.source.iter_records = counting  # type: ignore[method-assign]
    job.run()
    assert len(streamed) == 1  # the window once, no day streamed again
    assert site.flagged() == {uid for uid, _ in site.rows}
    with pytest.raises(ConfigError, match=r"flag\.verify"):
        FlagJob(
            MemoryWatermarkStore(), job.source, DesRouter(8), pipeline="files",
            initial=START, manifests=job.manifests, verify="nope",  # type: ignore[arg-type]
        )  # fmt: skip
