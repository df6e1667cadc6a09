"""Progress of verify, purge, flag and errors retry (issue 11, item 8): the jobs report
the rows they handle, and RowProgress shows them as a bar on a terminal or as plain
lines every interval elsewhere."""

from __future__ import annotations

import io
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from deswm._manifest import ManifestStore
from deswm._model import Partition, WatermarkKey, Window
from deswm._routing import DesRouter
from deswm._rowdigest import RowDigest
from deswm._rowprogress import RowProgress
from deswm._shardio import ShardStore
from deswm._verify import verify_window
from deswm.testing import MemoryWatermarkStore
from test_cli_observability import deswm
from test_flagging import START, job
from test_orchestrator_errors import World as ErrorsWorld
from test_orchestrator_errors import many
from test_purge import World as PurgeWorld


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_lines_every_interval_with_share_and_time_left(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    caplog.set_level(logging.INFO, logger="deswm.progress")
    with RowProgress("verify", total=1000, interval=10, bar=False, clock=clock) as progress:
        progress(100)  # no line before the interval has passed
        clock.now = 10.0
        progress(100)
        clock.now = 15.0
        progress(100)  # within the interval of the last line
        clock.now = 20.0
        progress(300)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "progress verify: 200 rows of 1,000 (20%), 20.0 rows/s, about 40 s left"
    assert lines[1].startswith("progress verify: 600 rows of 1,000 (60%), 30.0 rows/s")
    assert len(lines) == 3  # and the last count when it closes
    assert caplog.records[0].__dict__["done"] == 200


def test_a_bar_when_asked() -> None:
    pytest.importorskip("tqdm")
    out = io.StringIO()
    with RowProgress("purge", total=10, bar=True, file=out) as progress:
        progress(4)
        assert progress.bar is not None and progress.bar.n == 4
    assert "purge" in out.getvalue()


def test_no_bar_without_a_terminal() -> None:
    assert RowProgress("flag", file=io.StringIO()).use_bar is False


def test_verify_reports_every_row(tmp_path: Path) -> None:
    world = PurgeWorld(tmp_path, [10, 11])
    world.orchestrator().run_cycle()
    seen: list[int] = []
    archive = world.purge().archive
    window = Window(datetime(2024, 5, 10, tzinfo=UTC), datetime(2024, 5, 12, tzinfo=UTC))
    report = verify_window(world.source, archive, window, progress=seen.append)
    assert sum(seen) == report.checked == 12


def test_purge_reports_every_row(tmp_path: Path) -> None:
    world = PurgeWorld(tmp_path, [10, 11, 12])
    world.orchestrator().run_cycle()
    seen: list[int] = []
    result = world.purge().run(dry_run=True, progress=seen.append)
    assert sum(seen) == result.deleted == 18
    assert len(seen) == 3  # one report per day here (each under the batch size)


def test_errors_retry_reports_every_file(tmp_path: Path) -> None:
    world = ErrorsWorld(tmp_path, many([10, 11], per_day=20))
    for record in (world.records[1], world.records[27]):
        world.break_file(record)
    world.orchestrator().run_cycle()
    world.broken.clear()
    seen: list[int] = []
    result = world.orchestrator().retry_errors(progress=seen.append)
    assert seen == [1, 1] and result.archived == 2


def test_flag_reports_every_batch(sqlite_db_url: str, tmp_path: Path) -> None:
    engine = sa.create_engine(sqlite_db_url)
    table = sa.Table(
        "files",
        sa.MetaData(),
        sa.Column("uid", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("file_location", sa.String(200), nullable=False),
        sa.Column("archived", sa.Boolean, nullable=False),
    )
    table.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            table.insert(),
            [
                {
                    "uid": n,
                    "created_at": (START + timedelta(hours=5 * n)).replace(tzinfo=None),
                    "file_location": f"/data/{n}",
                    "archived": False,
                }
                for n in range(30)
            ],
        )
    store = MemoryWatermarkStore()
    store.initialize(WatermarkKey("files"), datetime(2024, 5, 15, tzinfo=UTC))
    seen: list[int] = []
    manifests = ManifestStore(ShardStore(str(tmp_path / "archive")), DesRouter(8))
    for day in range(14):
        bucket = START + timedelta(days=day)
        rows = RowDigest.of(  # what a cycle recorded: the day's rows
            (str(n), START + timedelta(hours=5 * n))
            for n in range(30)
            if bucket <= START + timedelta(hours=5 * n) < bucket + timedelta(days=1)
        )
        manifests.record(bucket, Partition(0, 1), "files", rows, 0)
    result = job(engine, store, manifests, batch_size=7).run(progress=seen.append)
    engine.dispose()
    assert sum(seen) == result.rows_updated == 24 and len(seen) == result.batches


def test_cli_commands_print_progress_lines_without_a_terminal(tmp_path: Path) -> None:
    from deswm._demo import run_demo

    run_demo(tmp_path, files=120, echo=lambda _: None)
    config = str(tmp_path / "deswm.toml")
    fast = ["--progress", "--progress-interval", "0.000001"]
    for command in (["verify"], ["verify", "--deep"], ["purge", "--dry-run"]):
        done = deswm(*command, "-c", config, *fast)
        assert "\r" not in done.stderr
        lines = [line for line in done.stderr.splitlines() if f"progress {command[0]}:" in line]
        assert lines and "rows/s" in lines[-1], done.stderr
