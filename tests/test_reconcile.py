"""Late rows (``deswm._reconcile``): rows that reach committed days after their commit are
found by one count query and a digest per day, and ``repair`` merges them so the archive
is byte-identical to a clean run over the current rows (G2); nothing archived is dropped
(G3), rows deleted from the source are only reported."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import mysql

from deswm._archive import Archive
from deswm._config import load_config
from deswm._errors import ConfigError, CycleError, LateRowsError, NaiveDatetimeError, PackError
from deswm._manifest import ManifestStore
from deswm._model import Partition, SourceRecord, Window
from deswm._orchestrator import WatermarkOrchestrator
from deswm._packer import DesPacker
from deswm._reconcile import ReconcileJob, check_late_rows
from deswm._routing import DesRouter
from deswm._rowdigest import RowDigest
from deswm._shardio import ShardStore
from deswm._sources import bucket_counts
from deswm._timeutil import format_utc
from deswm.cli import _reconcile_every, main
from deswm.testing import (
    MemoryErrorStore,
    MemoryFileReader,
    MemorySourceProvider,
    MemoryWatermarkStore,
)

NOW = datetime(2024, 5, 20, 15, tzinfo=UTC)
ROUTER = DesRouter(4)


def at(day: int, hour: int = 12, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2024, 5, day, hour, minute, second, tzinfo=UTC)


def rows(days: list[int], per_day: int, prefix: str = "u") -> list[SourceRecord]:
    return [
        SourceRecord(f"{prefix}{day}-{i}", at(day, i % 24, (7 * i) % 60), f"mem/{prefix}{day}/{i}")
        for day in days
        for i in range(per_day)
    ]


def payload(record: SourceRecord) -> bytes:
    """Bytes that do not compress, so part sizes follow the number of entries."""
    return random.Random(record.uid).randbytes(200 + len(record.uid) * 13)


class World:
    """A source, files, a watermark store and a local archive; ``orchestrator()`` runs it."""

    def __init__(self, root: Path, records: list[SourceRecord], **options: Any) -> None:
        self.root = root
        self.source = MemorySourceProvider(records)
        self.reader = MemoryFileReader({r.location: payload(r) for r in records})
        self.store = MemoryWatermarkStore()
        self.errors = MemoryErrorStore()
        self.options = options

    def add(self, *records: SourceRecord) -> None:
        for record in records:
            self.reader.put(record.location, payload(record))
        self.source.add(*records)

    def orchestrator(self, partition: Partition | None = None, **options: Any) -> Any:
        return WatermarkOrchestrator(
            self.store,
            self.source,
            self.reader,
            ROUTER,
            DesPacker(str(self.root), ROUTER, max_shard_size=self.options.get("max", 4000)),
            pipeline="files",
            lag=timedelta(days=2),
            initial=at(10, 0),
            clock=lambda: NOW,
            partition=partition or Partition(),
            error_store=self.errors,
            **options,
        )

    def job(self, partition: Partition | None = None, **options: Any) -> ReconcileJob:
        return ReconcileJob(self.orchestrator(partition, **options))

    def objects(self) -> dict[str, bytes]:
        return {
            str(path.relative_to(self.root)): path.read_bytes()
            for path in sorted(self.root.rglob("*"))
            if path.is_file()
        }


def clean_run(root: Path, records: list[SourceRecord], partitions: int = 1) -> dict[str, bytes]:
    world = World(root, records)
    for index in range(partitions):
        world.orchestrator(Partition(index, partitions)).run_cycle()
    return world.objects()


LATE = [  # below the watermark (May 18), in the middle of committed days
    SourceRecord("late-a", at(11, 5, 30), "mem/late/a"),
    SourceRecord("late-b", at(11, 5, 31), "mem/late/b"),
    SourceRecord("late-c", at(13, 0, 0), "mem/late/c"),  # exactly at midnight
]


def test_late_rows_are_found_and_repair_gives_the_clean_runs_bytes(tmp_path: Path) -> None:
    first = rows([10, 11, 12, 13], 30)
    world = World(tmp_path / "a", first)
    world.orchestrator().run_cycle()
    assert world.job().run().ok  # nothing late yet
    before = world.objects()
    world.add(*LATE)

    report = world.job().run()
    assert not report.ok
    assert report.late_rows == 3
    assert {b.day for b in report.changed} == {"20240511", "20240513"}
    changed = {b.day: b for b in report.changed}
    assert changed["20240511"].late == (("late-a", at(11, 5, 30)), ("late-b", at(11, 5, 31)))
    assert (changed["20240511"].source_rows, changed["20240511"].manifest_rows) == (32, 30)
    assert changed["20240511"].digest_matches is False
    assert not changed["20240511"].deleted
    assert world.objects() == before  # detecting writes nothing

    watermark = world.store.get(world.orchestrator().key)
    repaired = world.job().run(repair=True)
    assert repaired.ok and repaired.late_rows == 3
    assert all(b.repaired for b in repaired.changed)
    assert world.store.get(world.orchestrator().key) == watermark  # no watermark moved
    assert world.objects() == clean_run(tmp_path / "clean", first + LATE)
    again = world.job().run()
    assert again.ok and not again.changed
    assert all(b.digest_matches for b in again.buckets)
    archive = Archive(str(world.root), ROUTER)
    for record in LATE:
        assert archive.get(record.uid, record.created_at) == payload(record)


def test_a_late_row_that_splits_a_group_into_more_parts_is_laid_out_like_a_clean_run(
    tmp_path: Path,
) -> None:
    # Digit uids 16 apart share one group (the last digits pick it): many parts.
    first = [SourceRecord(str(16 * i + 3), at(11, i % 24, i), f"mem/{i}") for i in range(40)]
    world = World(tmp_path / "a", first, max=2500)
    world.orchestrator().run_cycle()
    parts = [name for name in world.objects() if name.endswith(".des")]
    assert len(parts) > 4
    late = [
        SourceRecord(str(16 * (100 + i) + 3), at(11, 0, 1, i), f"mem/mid/{i}") for i in range(6)
    ]
    world.add(*late)
    world.job().run(repair=True)
    clean = World(tmp_path / "clean", first + late, max=2500)
    clean.orchestrator().run_cycle()
    assert world.objects() == clean.objects()


def test_a_repair_cut_between_two_parts_loses_nothing_and_the_rerun_finishes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = [SourceRecord(str(16 * i + 3), at(11, i % 24, i), f"mem/{i}") for i in range(40)]
    world = World(tmp_path / "a", first, max=2500)
    world.orchestrator().run_cycle()
    late = [
        SourceRecord(str(16 * (100 + i) + 3), at(11, 0, 1, i), f"mem/mid/{i}") for i in range(6)
    ]
    world.add(*late)
    original = ShardStore.publish
    published: list[str] = []

    def cut(self: ShardStore, name: str, write: Any, **options: Any) -> None:
        if name.endswith("_0000.des"):  # the lowest part goes last in a merge that moves
            raise PackError(f"simulated crash before {name}")
        original(self, name, write, **options)
        published.append(name)

    with monkeypatch.context() as patched:
        patched.setattr(ShardStore, "publish", cut)
        with pytest.raises(PackError, match="simulated crash"):
            world.job().run(repair=True)
    assert published  # higher parts went first, each with the entries it gained
    archive = Archive(str(world.root), ROUTER)
    for record in first:  # every archived entry is still in some object (G3)
        assert archive.get(record.uid, record.created_at) == payload(record)
    assert not world.job().run().ok  # the manifest was not rewritten

    assert world.job().run(repair=True).ok  # the rerun lays every group out again
    clean = World(tmp_path / "clean", first + late, max=2500)
    clean.orchestrator().run_cycle()
    assert world.objects() == clean.objects()


def test_counts_only_trusts_equal_counts_and_the_digest_finds_a_swap(tmp_path: Path) -> None:
    first = rows([11, 12], 10)
    world = World(tmp_path / "a", first)
    world.orchestrator().run_cycle()
    gone = first[3]
    # One row deleted from the source, one late row added: the same count.
    world.source = MemorySourceProvider([r for r in first if r != gone])
    world.add(LATE[0])

    assert world.job().run(counts_only=True).ok
    report = world.job().run()
    (day,) = report.changed
    assert day.source_rows == day.manifest_rows == 10
    assert day.digest_matches is False
    assert day.late == (("late-a", LATE[0].created_at),)
    assert day.deleted == ((gone.uid, gone.created_at),)

    world.job().run(repair=True)
    manifest = world.job().manifests.require("20240511", Partition())
    current = [r for r in world.source.records if r.created_at < at(12, 0)]
    expected = RowDigest.of((r.uid, r.created_at) for r in current)
    assert (manifest.rows, manifest.digest) == (expected.count, expected.hexdigest)
    assert manifest.entries == manifest.rows + 1  # the deleted row's entry stays (G3)
    archive = Archive(str(world.root), ROUTER)
    assert archive.get(gone.uid, gone.created_at) == payload(gone)
    assert world.job().run().ok  # the manifest now records the current rows


def test_rows_listed_in_the_error_table_are_not_late(tmp_path: Path) -> None:
    first = rows([11], 20)
    world = World(tmp_path / "a", first)
    world.reader.delete(first[5].location)  # fails, listed (on_error="record")
    world.orchestrator(on_error="record", max_failure_ratio=0.5).run_cycle()
    assert [e.failure.uid for e in world.errors.list()] == [first[5].uid]
    report = world.job().run()
    assert report.ok and report.late_rows == 0


def test_a_late_file_that_cannot_be_read_stops_or_is_listed(tmp_path: Path) -> None:
    first = rows([11], 10)
    world = World(tmp_path / "a", first)
    world.orchestrator().run_cycle()
    before = world.objects()
    world.source.add(LATE[0])  # its file does not exist
    with pytest.raises(CycleError, match="late-a") as info:
        world.job().run(repair=True)
    assert "reconcile --repair" in str(info.value)
    assert world.objects() == before  # nothing published, the manifest as it was

    world.add(LATE[1])  # readable: archived; the unreadable one is listed
    report = world.job(on_error="record").run(repair=True)
    (day,) = report.changed
    assert day.repaired and day.listed == 1
    assert [e.failure.uid for e in world.errors.list()] == ["late-a"]
    manifest = world.job().manifests.require("20240511", Partition())
    assert (manifest.rows, manifest.listed) == (12, 1)
    assert world.job().run().ok  # a listed row is not late


def test_partitions_reconcile_and_repair_their_own_groups(tmp_path: Path) -> None:
    first = rows([11, 12], 24)
    world = World(tmp_path / "a", first)
    for index in range(2):
        world.orchestrator(Partition(index, 2)).run_cycle()
    late = [SourceRecord(f"p-{i}", at(11, 3, i), f"mem/p/{i}") for i in range(8)]
    world.add(*late)
    owner = {r.uid: ROUTER.shard_index(r.uid) % 2 for r in late}
    assert set(owner.values()) == {0, 1}
    for index in range(2):
        report = world.job(Partition(index, 2)).run(repair=True)
        assert {uid for b in report.changed for uid, _ in b.late} == {
            uid for uid, p in owner.items() if p == index
        }
    assert world.objects() == clean_run(tmp_path / "clean", first + late, partitions=2)


def test_a_late_row_in_a_partition_without_a_manifest_for_the_day_is_repaired(
    tmp_path: Path,
) -> None:
    # One row on May 11: only its partition commits a manifest for that day.
    first = [SourceRecord("0", at(11), "mem/0"), *rows([12], 6)]
    world = World(tmp_path / "a", first)
    for index in range(2):
        world.orchestrator(Partition(index, 2)).run_cycle()
    late = SourceRecord("1", at(11, 13), "mem/1")  # uid 1: shard 1, partition 1
    assert ROUTER.shard_index("1") % 2 == 1
    world.add(late)
    report = world.job(Partition(1, 2)).run(since=at(11, 0))
    (day,) = report.changed
    assert day.manifest_rows is None and day.late == (("1", late.created_at),)
    world.job(Partition(1, 2)).run(since=at(11, 0), repair=True)
    assert world.objects() == clean_run(tmp_path / "clean", [*first, late], partitions=2)


def test_the_range_is_committed_days_only_and_bad_bounds_are_refused(tmp_path: Path) -> None:
    world = World(tmp_path / "a", rows([10, 11, 12], 3))
    job = world.job()
    assert job.window().empty  # nothing committed yet
    world.orchestrator().run_cycle()
    assert job.window() == Window(at(10, 0), at(18, 0))  # the watermark: now - 2 days
    assert job.window(since=at(11, 7), until=at(11, 9)) == Window(at(11, 0), at(12, 0))
    assert job.window(until=datetime(2030, 1, 1, tzinfo=UTC)).end == at(18, 0)
    report = job.run(since=at(12, 0))
    assert [b.day for b in report.buckets] == ["20240512"]
    with pytest.raises(NaiveDatetimeError, match="since"):
        job.run(since=datetime(2024, 5, 11))
    with pytest.raises(ConfigError, match="until") as info:
        job.run(since=at(12, 0), until=at(11, 0))
    assert info.value.hint is not None and "both included" in info.value.hint


def test_a_packer_without_manifests_is_refused(tmp_path: Path) -> None:
    world = World(tmp_path / "a", [])
    orchestrator = world.orchestrator()
    orchestrator.manifests = None
    with pytest.raises(ConfigError, match="manifests"):
        ReconcileJob(orchestrator)


def test_the_count_check_names_the_day_and_partition(tmp_path: Path) -> None:
    first = rows([11, 12], 5)
    world = World(tmp_path / "a", first)
    world.orchestrator().run_cycle()
    manifests = ManifestStore(Archive(str(world.root), ROUTER).store, ROUTER)
    check_late_rows(world.source, manifests, ROUTER, at(11, 0), Partition())
    check_late_rows(world.source, manifests, ROUTER, at(11, 0))
    world.add(LATE[0])
    for partition in (Partition(), None):
        with pytest.raises(LateRowsError) as info:
            check_late_rows(world.source, manifests, ROUTER, at(11, 0), partition)
        error = info.value
        assert (error.day, error.partition) == ("20240511", "0/1")
        assert (error.source_rows, error.manifest_rows) == (6, 5)
        assert "deswm reconcile" in str(error) and "--repair" in str(error)
    check_late_rows(world.source, manifests, ROUTER, at(12, 0))  # another day is fine


def test_the_fallback_counts_stream_what_the_cycle_owns() -> None:
    records = rows([11, 12], 9)
    source = MemorySourceProvider(records)
    window = Window(at(11, 0), at(13, 0))
    assert bucket_counts(source, window, ROUTER, Partition()) == {at(11, 0): 9, at(12, 0): 9}
    halves = [bucket_counts(source, window, ROUTER, Partition(i, 2)) for i in range(2)]
    for day in (at(11, 0), at(12, 0)):
        assert sum(half.get(day, 0) for half in halves) == 9
    expected = sum(1 for r in records if ROUTER.shard_index(r.uid) % 2 == 1)
    assert sum(halves[1].values()) == expected


STAMPS = [at(day, hour, minute) for day in (11, 12) for hour in (0, 9, 23) for minute in (0, 1)]


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[SourceRecord], list[SourceRecord], int]:
    """Rows archived by a cycle, rows that arrive late below the watermark, a part size."""
    uids = draw(st.lists(st.integers(0, 400), unique=True, min_size=1, max_size=30))
    records = [SourceRecord(str(uid), draw(st.sampled_from(STAMPS)), f"mem/{uid}") for uid in uids]
    late = draw(st.lists(st.booleans(), min_size=len(records), max_size=len(records)))
    size = draw(st.sampled_from([600, 1500, 10**6]))
    early = [r for r, is_late in zip(records, late, strict=True) if not is_late]
    return early, [r for r, is_late in zip(records, late, strict=True) if is_late], size


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(history=histories())
def test_reconcile_and_repair_equal_a_clean_run_over_the_current_rows(
    tmp_path_factory: pytest.TempPathFactory, history: Any
) -> None:
    early, late, size = history
    base = tmp_path_factory.mktemp("property")
    world = World(base / "a", early, max=size)
    world.orchestrator().run_cycle()
    world.add(*late)
    report = world.job().run(repair=True)
    assert report.ok
    assert report.late_rows == len(late)
    clean = World(base / "clean", early + late, max=size)
    clean.orchestrator().run_cycle()
    assert world.objects() == clean.objects()
    assert world.job().run().ok


# --- through the CLI, on every SQL backend ------------------------------------------------

START = datetime(2024, 5, 10, tzinfo=UTC)


class SqlSite:
    """A ``files`` table with files on disk and two configs: the archive under test, and
    a clean archive (own watermark database) to compare it with."""

    def __init__(self, tmp_path: Path, db_url: str) -> None:
        self.tmp_path = tmp_path
        self.engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
        self.naive = self.engine.dialect.name != "postgresql"
        self.table = sa.Table(
            "files",
            sa.MetaData(),
            sa.Column("uid", sa.String(64), primary_key=True),
            sa.Column(
                "created_at",
                sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb"),
                nullable=False,
            ),
            sa.Column("file_location", sa.String(200), nullable=False),
            sa.Column("size_bytes", sa.Integer, nullable=False),
            sa.Column("archived", sa.Boolean, nullable=False),
            mysql_engine="InnoDB",
        )
        self.table.create(self.engine)
        (tmp_path / "files").mkdir()
        self.rows: list[tuple[str, datetime]] = []
        self.insert(
            [(f"doc-{n:03d}", START + timedelta(hours=9 * n, minutes=n)) for n in range(30)]
        )
        self.config = self._config("test", tmp_path / "archive", None)
        self.clean = self._config("clean", tmp_path / "clean", tmp_path / "clean-wm.sqlite3")

    def insert(self, rows: list[tuple[str, datetime]]) -> None:
        values = []
        self.rows.extend(rows)
        for uid, created_at in rows:
            content = random.Random(uid).randbytes(300)
            (self.tmp_path / "files" / uid).write_bytes(content)
            stored = created_at.replace(tzinfo=None) if self.naive else created_at
            values.append(
                {
                    "uid": uid,
                    "created_at": stored,
                    "file_location": uid,
                    "size_bytes": len(content),
                    "archived": False,
                }
            )
        with self.engine.begin() as conn:
            conn.execute(self.table.insert(), values)

    def delete(self, uid: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.delete(self.table).where(self.table.c.uid == uid))
        self.rows = [row for row in self.rows if row[0] != uid]

    def flagged(self) -> set[str]:
        """The uids whose legacy ``archived`` column is set."""
        with self.engine.connect() as conn:
            found = conn.execute(sa.select(self.table.c.uid).where(self.table.c.archived))
            return set(found.scalars())

    def _config(self, name: str, archive: Path, watermark: Path | None) -> Path:
        path = self.tmp_path / f"{name}.toml"
        url = self.engine.url.render_as_string(hide_password=False)
        path.write_text(
            f'[source]\nurl = {json.dumps(url)}\ntable = "files"\n'
            f"[files]\nroot = {json.dumps(str(self.tmp_path / 'files'))}\n"
            '[watermark]\npipeline = "docs"\nlag_days = 0\n'
            f'initial = "{format_utc(START)}"\n'
            + (f"url = {json.dumps(f'sqlite:///{watermark}')}\n" if watermark else "")
            + f"[archive]\nurl = {json.dumps(str(archive))}\nn_bits = 4\n"
            "max_shard_size = 1500\n",
            encoding="utf-8",
        )
        return path

    def cli(
        self, *args: str, capsys: pytest.CaptureFixture[str], config: Path | None = None
    ) -> tuple[int, str, str]:
        code = main([args[0], "-c", str(config or self.config), *args[1:]])
        out, err = capsys.readouterr()
        return code, out, err


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_a_late_insert_is_found_refused_repaired_and_then_purged_on_every_backend(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = SqlSite(tmp_path, db_url)
    code, _, err = site.cli("run", capsys=capsys)
    assert code == 0, err
    code, out, err = site.cli("reconcile", "--json", capsys=capsys)
    assert code == 0, err
    assert json.loads(out)["ok"] is True

    late = [("late-1", START + timedelta(days=1, hours=2)), ("late-2", START + timedelta(days=3))]
    site.insert(late)  # below the watermark: no cycle reads these days again
    code, _, err = site.cli("run", capsys=capsys, config=site.clean)  # over the current rows
    assert code == 0, err
    code, out, err = site.cli("reconcile", "--json", capsys=capsys)
    assert code == 1, err
    report = json.loads(out)
    assert report["late_rows"] == 2 and report["changed"] == ["20240511", "20240513"]
    found = [uid for bucket in report["buckets"] for uid, _ in bucket["late"]]
    assert found == ["late-1", "late-2"]
    code, out, _ = site.cli("reconcile", "--counts-only", capsys=capsys)
    assert code == 1 and "'late-1'" in out and "--repair" in out

    # purge and flag refuse the day before touching a file or a row
    for command in (("purge",), ("purge", "--dry-run"), ("flag",)):
        code, _, err = site.cli(*command, capsys=capsys)
        assert code == 1, command
        assert "LateRowsError" in err and "bucket 20240511 partition 0/1" in err
        assert "deswm reconcile" in err and "--repair" in err
    # May 10 comes before the late day: purged and flagged; nothing from May 11 on.
    first_day = {uid for uid, at in site.rows if at < START + timedelta(days=1)}
    assert len(first_day) == 3
    for uid, _ in site.rows:
        assert (tmp_path / "files" / uid).exists() == (uid not in first_day), uid
    assert site.flagged() == first_day

    code, out, err = site.cli("reconcile", "--repair", capsys=capsys)
    assert code == 0, err
    assert "2 late row(s)" in out and "(repaired)" in out
    assert _tree(tmp_path / "archive") == _tree(tmp_path / "clean")

    code, out, err = site.cli("reconcile", "--json", capsys=capsys)
    assert code == 0, err
    code, out, err = site.cli("purge", "--json", capsys=capsys)
    assert code == 0, err
    assert json.loads(out)["deleted"] == 32 - len(first_day)
    assert not any((tmp_path / "files" / uid).exists() for uid, _ in site.rows)


def test_bad_bounds_exit_2_naming_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = SqlSite(tmp_path, f"sqlite:///{tmp_path / 'source.sqlite3'}")
    assert site.cli("run", capsys=capsys)[0] == 0
    code, _, err = site.cli("reconcile", "--since", "yesterday-ish", capsys=capsys)
    assert code == 2 and "--since" in err
    code, _, err = site.cli(
        "reconcile", "--since", "2024-05-12", "--until", "2024-05-11", capsys=capsys
    )
    assert code == 2 and "until" in err and "both included" in err
    code, _, err = site.cli("reconcile", "--partition", "3", capsys=capsys)
    assert code == 2 and "partition" in err
    # A day given without an offset is UTC on the command line (docs/cli.md).
    code, out, err = site.cli(
        "reconcile", "--since", "2024-05-11", "--until", "2024-05-11T23:00", "--json", capsys=capsys
    )
    assert code == 0, err
    assert [b["day"] for b in json.loads(out)["buckets"]] == ["20240511"]


# --- [run] reconcile_every: the interval loop -------------------------------------------


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("reconcile_every = -1", "zero or positive"),
        ("reconcile_every = 2.5", "integer"),
        ('reconcile_every = "often"', "integer"),
        ('reconcile_repair = "yes"', "true or false"),
        ("reconcile_repair = 1", "true or false"),
    ],
)
def test_bad_reconcile_settings_name_their_key(tmp_path: Path, line: str, fragment: str) -> None:
    path = tmp_path / "deswm.toml"
    path.write_text(
        f'[source]\nurl = "sqlite:///source.db"\n[archive]\nurl = "archive"\n[run]\n{line}\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=fragment) as info:
        load_config(path)
    assert info.value.key == f"run.{line.split(' ')[0]}"


def test_the_interval_loop_reconciles_every_n_cycles_and_repairs_when_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = SqlSite(tmp_path, f"sqlite:///{tmp_path / 'source.sqlite3'}")
    text = site.config.read_text(encoding="utf-8")
    site.config.write_text(text + "[run]\nreconcile_every = 2\nreconcile_repair = true\n")
    config = load_config(site.config)
    assert (config.run.reconcile_every, config.run.reconcile_repair) == (2, True)
    orchestrator = config.build_orchestrator()
    hook = _reconcile_every(config, orchestrator)
    assert hook is not None
    calls: list[int] = []

    def after_cycle(cycles: int) -> None:
        calls.append(cycles)
        if cycles == 1:  # a late row below the watermark, after the first cycle
            site.insert([("late-x", START + timedelta(days=2, hours=1))])
        hook(cycles)

    with orchestrator:
        orchestrator.run_forever(0, handle_signals=False, max_cycles=3, after_cycle=after_cycle)
    assert calls == [1, 2, 3]
    code, _, err = site.cli("reconcile", capsys=capsys)
    assert code == 0, err  # repaired by the loop at cycle 2
    archive = Archive(str(tmp_path / "archive"), DesRouter(4))
    assert archive.get("late-x", START + timedelta(days=2, hours=1)) == random.Random(
        "late-x"
    ).randbytes(300)
    assert _reconcile_every(attrs.evolve(config, run=attrs.evolve(config.run, reconcile_every=0)),
                            orchestrator) is None  # fmt: skip


def test_a_failing_after_cycle_job_is_logged_and_the_loop_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    world = World(tmp_path / "a", rows([11], 3))
    seen: list[int] = []

    def failing(cycles: int) -> None:
        seen.append(cycles)
        raise LateRowsError("20240511", "0/1", source_rows=4, manifest_rows=3)

    world.orchestrator().run_forever(0, handle_signals=False, max_cycles=2, after_cycle=failing)
    assert seen == [1, 2]
    assert "after cycle 2: LateRowsError: bucket 20240511" in caplog.text
