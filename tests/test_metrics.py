"""Prometheus metrics and the progress bar, as cycle observers."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import prometheus_client
import sqlalchemy as sa

from deswm.metrics import PrometheusObserver
from deswm.model import SourceRecord
from deswm.orchestrator import CycleObserver, WatermarkOrchestrator
from deswm.packer import DesPacker
from deswm.progress import ProgressObserver
from deswm.routing import DesRouter
from deswm.testing import MemoryFileReader, MemorySourceProvider, MemoryWatermarkStore

NOW = datetime(2024, 5, 20, 15, tzinfo=UTC)


def orchestrator(tmp_path: Path, observer: CycleObserver) -> WatermarkOrchestrator:
    records = [
        SourceRecord(f"u{i}", datetime(2024, 5, 10 + i % 3, 8, i, tzinfo=UTC), f"m/{i}")
        for i in range(12)
    ]
    router = DesRouter(4)
    return WatermarkOrchestrator(
        MemoryWatermarkStore(),
        MemorySourceProvider(records),
        MemoryFileReader({r.location: b"data " * 40 for r in records}),
        router,
        DesPacker(str(tmp_path / "archive"), router),
        pipeline="files",
        lag=timedelta(days=2),
        initial=datetime(2024, 5, 10, tzinfo=UTC),
        clock=lambda: NOW,
        observers=[observer],
    )


def value(registry: prometheus_client.CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    assert found is not None, (name, labels)
    return found


def test_prometheus_metrics_follow_the_cycle(tmp_path: Path) -> None:
    registry = prometheus_client.CollectorRegistry()
    observer = PrometheusObserver(registry)
    result = orchestrator(tmp_path, observer).run_cycle()

    labels = {"pipeline": "files", "partition": "0"}
    assert value(registry, "des_migration_files_total", **labels) == 12
    assert value(registry, "des_migration_bytes_total", **labels, direction="in") == result.bytes_in
    assert (
        value(registry, "des_migration_bytes_total", **labels, direction="out") == result.bytes_out
    )
    assert value(registry, "des_migration_shards_total", **labels) == result.shards_written
    assert value(registry, "des_watermark_window_size_seconds", **labels) == 8 * 86400
    assert value(registry, "des_watermark_lag_seconds", **labels) == 0
    assert value(registry, "des_migration_duration_seconds_count", **labels) == 1


def test_db_operations_are_counted_by_verb() -> None:
    registry = prometheus_client.CollectorRegistry()
    observer = PrometheusObserver(registry)
    engine = sa.create_engine("sqlite://")
    observer.instrument(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (x INTEGER)"))
        conn.execute(sa.text("INSERT INTO t VALUES (1)"))
        conn.execute(sa.text("SELECT x FROM t"))
    assert value(registry, "des_db_operations_total", operation="select") >= 1
    assert value(registry, "des_db_operations_total", operation="insert") == 1


def test_progress_bar_counts_files(tmp_path: Path) -> None:
    out = io.StringIO()
    observer = ProgressObserver(total=12, file=out, bar=True, mininterval=0)
    orchestrator(tmp_path, observer).run_cycle()
    text = out.getvalue()
    assert "12/12" in text
    assert observer.bar is None
