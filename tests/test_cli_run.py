"""``deswm run`` as an operator runs it: real processes, real signals, run bounds, failed
cycles (issue 11, items 1 and 3, and the run bounds)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

import pytest
import sqlalchemy as sa

from deswm.testing import snapshot

SRC = str(Path(__file__).resolve().parents[1] / "src")
DAY0 = datetime(2024, 1, 1, tzinfo=UTC)
DAYS = 6


def _env() -> dict[str, str]:
    """This worktree's deswm in the child, whatever is installed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("DESWM_CRASH_AT", None)
    return env


def make_setup(folder: Path, *, per_day: int = 20) -> Path:
    """A SQLite source of ``DAYS`` days of files, a local archive folder and a config."""
    folder.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(f"sqlite:///{folder / 'source.sqlite3'}")
    metadata = sa.MetaData()
    table = sa.Table(
        "files",
        metadata,
        sa.Column("uid", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("file_location", sa.Text, nullable=False),
        sa.Column("size_bytes", sa.BigInteger),
    )
    metadata.create_all(engine)
    rows = []
    for day in range(DAYS):
        for number in range(per_day):
            created = DAY0 + timedelta(days=day, minutes=7 * number + 1)
            uid = f"f{day}-{number:04d}"
            data = (f"{uid} " * (50 + number)).encode()
            path = folder / "files" / uid
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(data)
            rows.append(
                {
                    "uid": uid,
                    "created_at": created.replace(tzinfo=None),
                    "file_location": f"files/{uid}",
                    "size_bytes": len(data),
                }
            )
    with engine.begin() as conn:
        conn.execute(table.insert(), rows)
    engine.dispose()
    config = folder / "deswm.toml"
    config.write_text(
        textwrap.dedent(
            f"""\
            [source]
            url = "sqlite:///source.sqlite3"
            [files]
            root = "."
            [watermark]
            pipeline = "ops"
            lag_days = 1
            initial = "{DAY0.date().isoformat()}"
            [archive]
            url = "archive"
            n_bits = 4
            """
        )
    )
    return config


def watermark(folder: Path) -> datetime | None:
    engine = sa.create_engine(f"sqlite:///{folder / 'source.sqlite3'}")
    try:
        with engine.connect() as conn:
            value = conn.execute(sa.text("SELECT position FROM deswm_watermark")).scalar()
    finally:
        engine.dispose()
    if value is None:
        return None
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


def deswm(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deswm", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        check=False,
    )


@pytest.fixture(scope="module")
def clean_archive(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """What one uninterrupted run publishes, to compare interrupted runs with."""
    folder = tmp_path_factory.mktemp("clean")
    config = make_setup(folder)
    done = deswm("run", "-c", str(config))
    assert done.returncode == 0, done.stderr
    return snapshot(folder / "archive")


# The real CLI in a child process, held inside the publish of bucket ``HOLD_AT`` until
# the test has seen its signal handled (or forever, for the second signal), so the
# signal arrives mid-bucket on any machine.
HOLD_AT = 3
_HELD_RUN = textwrap.dedent(
    """
    import pathlib, sys, time
    from deswm.cli import main
    from deswm.testing import at_checkpoint

    release = pathlib.Path(sys.argv[2])

    def hold(_name, _count):
        print("HOLDING", file=sys.stderr, flush=True)
        while not release.exists():
            time.sleep(0.01)

    with at_checkpoint("bucket.before_publish", hold, on=int(sys.argv[3])):
        code = main(["run", "-c", sys.argv[1]])
    sys.exit(code)
    """
)


@pytest.fixture
def held_run(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path, Path]]:
    folder = tmp_path / "run"
    config = make_setup(folder)
    release = tmp_path / "release"
    process = subprocess.Popen(
        [sys.executable, "-c", _HELD_RUN, str(config), str(release), str(HOLD_AT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        yield process, folder, release
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _read_until(stream: IO[str] | None, text: str) -> list[str]:
    assert stream is not None
    seen = []
    for line in stream:
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"{text!r} never came; stderr was:\n{''.join(seen)}")


def test_sigterm_mid_bucket_commits_it_and_exits_0(
    held_run: tuple[subprocess.Popen[str], Path, Path], clean_archive: dict[str, str]
) -> None:
    process, folder, release = held_run
    _read_until(process.stderr, "HOLDING")
    process.send_signal(signal.SIGTERM)
    _read_until(process.stderr, "received SIGTERM")
    release.touch()
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert re.search(r"stopped:\s+signal received", out)
    assert "Traceback" not in err
    # The bucket that was publishing is committed; none after it was started.
    assert watermark(folder) == DAY0 + timedelta(days=HOLD_AT)
    rest = deswm("run", "-c", str(folder / "deswm.toml"), "--json")
    assert rest.returncode == 0, rest.stderr
    result = json.loads(rest.stdout)
    assert (result["stopped"], result["buckets_committed"]) == ("finished", DAYS - HOLD_AT)
    assert snapshot(folder / "archive") == clean_archive


def test_a_second_sigterm_exits_at_once_and_loses_nothing(
    held_run: tuple[subprocess.Popen[str], Path, Path], clean_archive: dict[str, str]
) -> None:
    process, folder, _release = held_run  # never released: only the signal ends it
    _read_until(process.stderr, "HOLDING")
    process.send_signal(signal.SIGTERM)
    _read_until(process.stderr, "received SIGTERM")
    process.send_signal(signal.SIGTERM)
    _out, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "exiting now" in err
    # The held bucket is not committed; on the packing engine the one before it may still
    # have been in flight (buckets_in_flight = 2), and is not committed either.
    position = watermark(folder)
    assert position is not None
    committed = (position - DAY0).days
    assert HOLD_AT - 2 <= committed <= HOLD_AT - 1
    rest = deswm("run", "-c", str(folder / "deswm.toml"), "--json")
    assert rest.returncode == 0, rest.stderr
    result = json.loads(rest.stdout)
    assert (result["stopped"], result["buckets_committed"]) == ("finished", DAYS - committed)
    assert snapshot(folder / "archive") == clean_archive


def test_sigterm_to_the_console_script_mid_cycle(
    tmp_path: Path, clean_archive: dict[str, str]
) -> None:
    """No hooks: the signal follows the first committed bucket, wherever the run is."""
    folder = tmp_path / "plain"
    config = make_setup(folder)
    process = subprocess.Popen(
        [sys.executable, "-m", "deswm", "run", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        _read_until(process.stderr, "committed ops")
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert re.search(r"stopped:\s+\w", out)
    position = watermark(folder)
    assert position is not None and position == position.replace(hour=0, minute=0)
    assert deswm("run", "-c", str(config)).returncode == 0
    assert snapshot(folder / "archive") == clean_archive


# --- run bounds ---------------------------------------------------------------------------


def test_max_buckets_flag_and_its_stop_reason(tmp_path: Path) -> None:
    config = make_setup(tmp_path)
    done = deswm("run", "-c", str(config), "--max-buckets", "2", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["buckets_committed"], result["stopped"]) == (2, "max-buckets")
    text = deswm("run", "-c", str(config), "--max-buckets", "1")
    assert text.returncode == 0 and re.search(r"stopped:\s+max-buckets reached", text.stdout)
    assert watermark(tmp_path) == DAY0 + timedelta(days=3)


def test_max_buckets_setting_is_honoured(tmp_path: Path) -> None:
    config = make_setup(tmp_path)
    config.write_text(config.read_text() + "[run]\nmax_buckets = 4\n")
    done = deswm("run", "-c", str(config), "--json")
    assert json.loads(done.stdout)["buckets_committed"] == 4, done.stderr


def test_run_time_setting_stops_with_its_reason(tmp_path: Path) -> None:
    config = make_setup(tmp_path)
    config.write_text(config.read_text() + "[run]\nrun_time = 1\n")
    # Each bucket outlasts the run time: exactly one is committed.
    code = textwrap.dedent(
        """
        import sys, time
        from deswm.cli import main
        from deswm.testing import at_checkpoint
        with at_checkpoint("bucket.before_publish", lambda *_: time.sleep(1.2)):
            sys.exit(main(["run", "-c", sys.argv[1]]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(config)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"stopped:\s+run-time reached", done.stdout)
    assert re.search(r"buckets:\s+1 committed", done.stdout)


@pytest.mark.parametrize("value", ["0", "-5", "soon", "15x"])
def test_a_bad_run_time_is_a_usage_error(tmp_path: Path, value: str) -> None:
    done = deswm("run", "-c", str(tmp_path / "none.toml"), f"--run-time={value}")
    assert done.returncode == 2
    assert "--run-time" in done.stderr and "Traceback" not in done.stderr


def test_run_time_accepts_units(tmp_path: Path) -> None:
    config = make_setup(tmp_path)
    done = deswm("run", "-c", str(config), "--run-time", "2h", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["stopped"] == "finished"


# --- --interval: failed cycles ------------------------------------------------------------


def test_interval_gives_up_after_max_failed_cycles(tmp_path: Path) -> None:
    config = make_setup(tmp_path)
    (tmp_path / "files" / "f0-0003").unlink()  # every cycle stops at day 0 (on_error=stop)
    done = deswm("run", "-c", str(config), "--interval", "0", "--max-failed-cycles", "2")
    assert done.returncode == 1, done.stderr
    failed = [line for line in done.stderr.splitlines() if "deswm.orchestrator: cycle" in line]
    assert len(failed) == 2, done.stderr
    assert "next try in 1 s" in failed[0]
    assert "giving up" in failed[1]
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("deswm: CycleError: ")


def test_interval_setting_max_failed_cycles_and_debug_tracebacks(tmp_path: Path) -> None:
    config = make_setup(tmp_path)
    config.write_text(config.read_text() + "[run]\nmax_failed_cycles = 1\n")
    (tmp_path / "files" / "f0-0003").unlink()
    done = deswm("run", "-c", str(config), "--interval", "0", "--debug")
    assert done.returncode == 1
    assert "giving up" in done.stderr
    assert "Traceback" in done.stderr  # --debug shows where it failed


def test_interval_stops_on_sigterm_and_says_why(tmp_path: Path) -> None:
    config = make_setup(tmp_path)
    process = subprocess.Popen(
        [sys.executable, "-m", "deswm", "run", "-c", str(config), "--interval", "3600"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        _read_until(process.stderr, "cycle done")
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert out.strip() == "stopped: signal received"
