"""A stop during a replica-lag pause ends the cycle at once (issue 11).

The pause waits on the orchestrator's stop, not in ``time.sleep``: a SIGTERM while the
replica lags ends the cycle with ``stopped == "signal"`` without waiting for the next lag
check, and what was committed before stays. The lag is simulated (a probe the script
controls), because a real replica cannot be made in CI; the signal is real.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from deswm import SourceThrottle, SqlSourceProvider
from deswm._orchestrator import WatermarkOrchestrator
from deswm._packer import DesPacker
from deswm._routing import DesRouter
from deswm.testing import MemoryFileReader, MemoryWatermarkStore

SCRIPT = textwrap.dedent(
    """
    import sys, time
    from datetime import UTC, datetime, timedelta
    import sqlalchemy as sa
    from deswm import SourceThrottle, SqlSourceProvider
    from deswm._orchestrator import CycleObserver, WatermarkOrchestrator
    from deswm._packer import DesPacker
    from deswm._routing import DesRouter
    from deswm.testing import MemoryFileReader, MemoryWatermarkStore

    url, root = sys.argv[1], sys.argv[2]
    committed = []

    class Lagging:
        '''No lag until a bucket is committed, then an hour behind.'''
        def replica_lag(self):
            if committed:
                print("PAUSED", flush=True)
                return 3600.0
            return 0.0

    class Committed(CycleObserver):
        def bucket_committed(self, key, result, watermark):
            committed.append(result.bucket)

    ticks = iter(range(0, 10**9, 100))  # every page may check the lag
    throttle = SourceThrottle(lag_probe=Lagging(), max_replica_lag=5,
                              replica_check_interval=120, clock=lambda: next(ticks))
    source = SqlSourceProvider(url, "files", page_size=2, throttle=throttle)
    files = {f"f/{i}": b"x" * 10 for i in range(80)}
    orchestrator = WatermarkOrchestrator(
        MemoryWatermarkStore(), source, MemoryFileReader(files), DesRouter(4),
        DesPacker(root, DesRouter(4)), pipeline="files", lag=timedelta(days=1),
        initial=datetime(2024, 5, 10, tzinfo=UTC),
        clock=lambda: datetime(2024, 5, 20, tzinfo=UTC), observers=[Committed()],
    )
    started = time.monotonic()
    with orchestrator.stop_on_signals():
        result = orchestrator.run_cycle()
    print(f"stopped={result.stopped} buckets={result.buckets_committed} "
          f"after={result.watermark_after.isoformat()} "
          f"waited={time.monotonic() - started:.1f}", flush=True)
    """
)


def _table(url: str) -> None:
    """Eighty rows: forty on May 10, forty on May 11."""
    table = sa.Table(
        "files",
        sa.MetaData(),
        sa.Column("uid", sa.String(32), primary_key=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("file_location", sa.String(200), nullable=False),
        sa.Column("size_bytes", sa.BigInteger),
    )
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        table.metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(
                table.insert(),
                [
                    {
                        "uid": f"u{i:02d}",
                        "created_at": datetime(2024, 5, 10 + i // 40, 1, i % 40),
                        "file_location": f"f/{i}",
                        "size_bytes": 10,
                    }
                    for i in range(80)
                ],
            )
    finally:
        engine.dispose()


def test_sigterm_during_a_replica_pause_ends_the_cycle_at_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'source.db'}"
    _table(url)
    script = tmp_path / "pause.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path("src").resolve()), *sys.path])}
    child = subprocess.Popen(
        [sys.executable, str(script), url, str(tmp_path / "archive")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stdout is not None
        first = child.stdout.readline()
        assert first.strip() == "PAUSED", first + child.communicate(timeout=30)[1]
        time.sleep(0.3)  # well inside the 120 s wait before the next lag check
        sent = time.monotonic()
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err
    summary = out.strip().splitlines()[-1]
    # Day 10 was committed before the pause; day 11, being read, was not.
    assert summary.startswith("stopped=signal buckets=1 after=2024-05-11T00:00:00+00:00"), out
    assert took < 20, f"the stop waited {took:.1f} s for the pause"


class _Lag:
    def __init__(self) -> None:
        self.lag = 0.0
        self.checked = threading.Event()

    def replica_lag(self) -> float:
        self.checked.set()
        return self.lag


def test_request_stop_during_a_pause_returns_requested(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'source.db'}"
    _table(url)
    probe = _Lag()
    probe.lag = 3600.0  # lagging from the first page: nothing is read or committed
    throttle = SourceThrottle(lag_probe=probe, max_replica_lag=5, replica_check_interval=120)
    source = SqlSourceProvider(url, "files", page_size=2, throttle=throttle)
    files = {f"f/{i}": b"x" for i in range(80)}
    store = MemoryWatermarkStore()
    orchestrator = WatermarkOrchestrator(
        store,
        source,
        MemoryFileReader(files),
        DesRouter(4),
        DesPacker(str(tmp_path / "archive"), DesRouter(4)),
        pipeline="files",
        lag=timedelta(days=1),
        initial=datetime(2024, 5, 10, tzinfo=UTC),
        clock=lambda: datetime(2024, 5, 20, tzinfo=UTC),
    )

    def stop_once_paused() -> None:
        if probe.checked.wait(30):
            orchestrator.request_stop()

    threading.Thread(target=stop_once_paused, daemon=True).start()
    started = time.monotonic()
    result = orchestrator.run_cycle()
    assert time.monotonic() - started < 20
    assert (result.stopped, result.buckets_committed, result.files) == ("requested", 0, 0)
    assert result.watermark_after == datetime(2024, 5, 10, tzinfo=UTC)
    # The binding ends with the cycle: the source's own waits are plain sleeps again.
    assert source._stop_waits is None
