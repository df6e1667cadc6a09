"""The deswm process: source rate limits on ``run``, and rows older than a new watermark.

Every test runs the real command (``python -m deswm`` with this tree's ``src`` first on
the path) on a demo's SQLite source.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from deswm._demo import run_demo

SRC = Path(__file__).resolve().parents[1] / "src"

FRESH_CONFIG = """
[source]
url = "sqlite:///source.sqlite3"
table = "files"
page_size = 25

[files]
root = "."

[watermark]
pipeline = "fresh"
lag_days = 7
{initial}

[archive]
url = "archive-fresh"
n_bits = 4
"""


def deswm(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run(
        [sys.executable, "-m", "deswm", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    """A demo folder (100 files over the last 14 days) and a fresh pipeline's config."""
    run_demo(tmp_path, files=100, echo=lambda _: None)
    (tmp_path / "fresh.toml").write_text(FRESH_CONFIG.format(initial=""))
    return tmp_path


def add_old_rows(folder: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{folder / 'source.sqlite3'}")
    table = sa.Table("files", sa.MetaData(), autoload_with=engine)
    with engine.begin() as conn:
        conn.execute(
            table.insert(),
            [
                {
                    "uid": "old-1",
                    "created_at": datetime(2021, 3, 4, 5, 6, 7),
                    "file_location": "gone/old-1",
                    "size_bytes": 1000,
                },
                {
                    "uid": "old-2",
                    "created_at": datetime(2022, 8, 1),
                    "file_location": "gone/old-2",
                    "size_bytes": 24,
                },
            ],
        )
    engine.dispose()


def test_stats_and_the_first_run_report_rows_older_than_the_new_watermark(demo: Path) -> None:
    add_old_rows(demo)
    stats = deswm("stats", "-c", "fresh.toml", cwd=demo)
    assert stats.returncode == 0, stats.stderr
    assert "warning: 2 row(s) (1.0 KiB) are older than" in stats.stdout
    assert "will never be archived (the oldest from 2021-03-04T05:06:07" in stats.stdout
    assert "set [watermark] initial" in stats.stdout
    as_json = json.loads(deswm("stats", "-c", "fresh.toml", "--json", cwd=demo).stdout)
    assert as_json["rows_before_start"] == 2
    assert as_json["bytes_before_start"] == 1024
    assert as_json["oldest_before_start"].startswith("2021-03-04T05:06:07")
    dry = deswm("run", "-c", "fresh.toml", "--dry-run", cwd=demo)
    assert "warning: 2 row(s)" in dry.stdout

    first = deswm("run", "-c", "fresh.toml", cwd=demo)
    assert first.returncode == 0, first.stderr
    assert "WARNING deswm.orchestrator: fresh/archived/0: the new watermark starts at" in (
        first.stderr
    )
    assert "2 row(s) older than that, the oldest from 2021-03-04T05:06:07" in first.stderr
    assert "[watermark] initial is not set" in first.stderr

    # The watermark exists now: where it started is not kept, so nothing more is said.
    after = deswm("stats", "-c", "fresh.toml", "--json", cwd=demo)
    assert json.loads(after.stdout)["rows_before_start"] is None


def test_no_warning_when_no_row_is_older(demo: Path) -> None:
    stats = deswm("stats", "-c", "fresh.toml", "--json", cwd=demo)
    assert json.loads(stats.stdout)["rows_before_start"] == 0
    assert "warning" not in deswm("stats", "-c", "fresh.toml", cwd=demo).stdout


def test_run_flags_limit_the_source_reads(demo: Path) -> None:
    text = FRESH_CONFIG.format(initial='initial = "2000-01-01"')
    (demo / "fresh.toml").write_text(text.replace("page_size = 25", "page_size = 10"))
    started = time.monotonic()
    done = deswm("run", "-c", "fresh.toml", "--max-rows-per-second", "20", "--json", cwd=demo)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    files = json.loads(done.stdout)["files"]
    assert files >= 10 * 3  # at least three full pages of 10
    # Each full page of 10 rows holds the next page query back 0.5 s from its own start.
    assert elapsed >= (files // 10) * 0.5
    throttled = float(done.stderr.split("throttled ")[1].split(" s")[0])
    assert throttled > 0


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--max-rows-per-second", "0"),
        ("--max-pages-per-second", "-1"),
        ("--sleep-coef", "lots"),
        ("--max-replica-lag", "nan"),
    ],
)
def test_bad_limit_flags_exit_2_naming_the_flag(demo: Path, flag: str, value: str) -> None:
    done = deswm("run", "-c", "fresh.toml", flag, value, cwd=demo)
    assert done.returncode == 2
    assert f"argument {flag}: " in done.stderr


def test_max_replica_lag_without_a_replica_exits_2(demo: Path) -> None:
    done = deswm("run", "-c", "fresh.toml", "--max-replica-lag", "5", cwd=demo)
    assert done.returncode == 2
    assert "--max-replica-lag: has nothing to watch: source.replica_url is not set" in done.stderr


def test_config_limits_apply_and_flags_override_them(demo: Path) -> None:
    text = FRESH_CONFIG.format(initial='initial = "2000-01-01"').replace(
        "page_size = 25", "page_size = 25\nmax_pages_per_second = 0.001"
    )
    (demo / "fresh.toml").write_text(text)
    # The config would take 1,000 s a page; the flag allows 50 pages a second.
    done = deswm("run", "-c", "fresh.toml", "--max-pages-per-second", "50", "--json", cwd=demo)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["files"] > 0
