"""Prometheus metrics and the progress bar, as cycle observers."""

from __future__ import annotations

import gc
import http.server
import io
import logging
import threading
import weakref
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
import sqlalchemy as sa

from deswm._errors import ConfigError
from deswm._metrics import PrometheusObserver
from deswm._model import SourceRecord
from deswm._orchestrator import CycleObserver, WatermarkOrchestrator
from deswm._packer import DesPacker
from deswm._progress import ProgressObserver
from deswm._routing import DesRouter
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


def test_a_new_registry_never_gets_the_metrics_of_a_collected_one() -> None:
    """Metric objects are shared per registry; a registry that was collected leaves no
    entry behind, so a new one at the same address gets its own (an ``id()`` key would
    hand it the dead registry's metrics, and its samples would never appear)."""
    gc.collect()
    before = len(PrometheusObserver._shared)
    registry = prometheus_client.CollectorRegistry()
    observer = PrometheusObserver(registry)
    assert PrometheusObserver(registry).metrics is observer.metrics
    assert len(PrometheusObserver._shared) == before + 1
    collected = weakref.ref(registry)
    del registry, observer
    gc.collect()
    assert collected() is None
    assert len(PrometheusObserver._shared) == before
    for _ in range(20):  # new registries, some at a freed address: each counts its own
        fresh = prometheus_client.CollectorRegistry()
        PrometheusObserver(fresh).metrics.db.labels(operation="select").inc()
        assert value(fresh, "des_db_operations_total", operation="select") == 1
        del fresh


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


class _Snapshot(CycleObserver):
    """Reads the registry right after the metrics observer handled each bucket."""

    def __init__(self, registry: prometheus_client.CollectorRegistry) -> None:
        self.registry = registry
        self.seen: list[tuple[float | None, ...]] = []

    def bucket_committed(self, key: Any, result: Any, watermark: Any) -> None:
        labels = {"pipeline": "files", "partition": "0"}
        self.seen.append(
            tuple(
                self.registry.get_sample_value(name, labels)
                for name in (
                    "des_watermark_position_timestamp_seconds",
                    "des_watermark_lag_seconds",
                    "des_watermark_behind_rows",
                    "des_last_success_timestamp_seconds",
                )
            )
        )


def with_observers(tmp_path: Path, *observers: CycleObserver) -> WatermarkOrchestrator:
    orch = orchestrator(tmp_path, observers[0])
    orch.observers = observers
    return orch


def test_gauges_move_after_every_bucket_not_only_at_the_end(tmp_path: Path) -> None:
    registry = prometheus_client.CollectorRegistry()
    orch = orchestrator(tmp_path, CycleObserver())
    metrics = PrometheusObserver(registry, plan=orch.plan, clock=lambda: 1234.0)
    snapshot = _Snapshot(registry)
    orch.observers = (metrics, snapshot)
    orch.run_cycle()

    day = 86400.0
    may = datetime(2024, 5, 1, tzinfo=UTC).timestamp()
    # Buckets of May 10, 11, 12 (4 rows each); the target is May 18, where the watermark
    # goes after the last non-empty bucket.
    assert snapshot.seen == [
        (may + 10 * day, 7 * day, 8, None),
        (may + 11 * day, 6 * day, 4, None),
        (may + 17 * day, 0, 0, None),
    ]
    labels = {"pipeline": "files", "partition": "0"}
    assert value(registry, "des_watermark_lag_seconds", **labels) == 0
    assert value(registry, "des_watermark_behind_rows", **labels) == 0
    assert value(registry, "des_watermark_behind_bytes", **labels) == 0
    assert value(registry, "des_watermark_position_timestamp_seconds", **labels) == may + 17 * day
    assert value(registry, "des_last_success_timestamp_seconds", **labels) == 1234.0


def test_a_failed_cycle_is_counted_and_exported(tmp_path: Path) -> None:
    registry = prometheus_client.CollectorRegistry()
    textfile = tmp_path / "deswm.prom"

    class Boom(CycleObserver):
        def bucket_committed(self, key: Any, result: Any, watermark: Any) -> None:
            raise RuntimeError("exporter down")

    metrics = PrometheusObserver(registry, textfile=textfile, clock=lambda: 99.0)
    orch = with_observers(tmp_path, metrics, Boom())
    with pytest.raises(RuntimeError):
        orch.run_cycle()
    labels = {"pipeline": "files", "partition": "0"}
    assert value(registry, "des_cycle_failures_total", **labels) == 1
    assert value(registry, "des_last_failure_timestamp_seconds", **labels) == 99.0
    assert registry.get_sample_value("des_last_success_timestamp_seconds", labels) is None
    content = textfile.read_text()
    assert 'des_cycle_failures_total{partition="0",pipeline="files"} 1.0' in content


def test_textfile_holds_the_metrics_after_every_bucket(tmp_path: Path) -> None:
    registry = prometheus_client.CollectorRegistry()
    textfile = tmp_path / "textfile" / "deswm.prom"
    textfile.parent.mkdir()
    contents: list[str] = []

    class Reader(CycleObserver):
        def bucket_committed(self, key: Any, result: Any, watermark: Any) -> None:
            contents.append(textfile.read_text())

    metrics = PrometheusObserver(registry, textfile=textfile)
    with_observers(tmp_path, metrics, Reader()).run_cycle()
    assert len(contents) == 3
    assert 'des_migration_files_total{partition="0",pipeline="files"} 4.0' in contents[0]
    assert 'des_migration_files_total{partition="0",pipeline="files"} 8.0' in contents[1]
    final = textfile.read_text()
    assert "# TYPE des_watermark_lag_seconds gauge" in final
    assert 'des_migration_files_total{partition="0",pipeline="files"} 12.0' in final
    assert "des_last_success_timestamp_seconds" in final
    assert [p.name for p in textfile.parent.iterdir()] == ["deswm.prom"]  # no temp left


@pytest.mark.parametrize(
    ("name", "words"), [("deswm.txt", "does not end in .prom"), ("nope/deswm.prom", "folder")]
)
def test_a_textfile_node_exporter_would_never_read_is_refused(
    tmp_path: Path, name: str, words: str
) -> None:
    with pytest.raises(ConfigError, match=words) as caught:
        PrometheusObserver(prometheus_client.CollectorRegistry(), textfile=tmp_path / name)
    assert caught.value.key == "metrics_textfile"


class _Gateway(http.server.BaseHTTPRequestHandler):
    received: list[tuple[str, str, bytes]] = []

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.received.append(("PUT", self.path, body))
        self.send_response(200)
        self.end_headers()

    do_POST = do_PUT

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def gateway() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    received: list[tuple[str, str, bytes]] = []
    handler = type("Handler", (_Gateway,), {"received": received})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


def test_metrics_are_pushed_to_a_pushgateway_after_every_bucket(
    tmp_path: Path, gateway: tuple[str, list[tuple[str, str, bytes]]]
) -> None:
    url, received = gateway
    registry = prometheus_client.CollectorRegistry()
    metrics = PrometheusObserver(registry, push_url=url, job="nightly")
    orchestrator(tmp_path, metrics).run_cycle()
    assert len(received) == 4  # three buckets and the end of the cycle
    method, path, body = received[-1]
    assert (method, path) == ("PUT", "/metrics/job/nightly/partition/0/pipeline/files")
    text = body.decode()
    assert 'des_migration_files_total{partition="0",pipeline="files"} 12.0' in text
    assert "des_last_success_timestamp_seconds" in text
    assert 'files_total{partition="0",pipeline="files"} 4.0' in received[0][2].decode()


def test_an_unreachable_pushgateway_warns_and_archiving_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = prometheus_client.CollectorRegistry()
    metrics = PrometheusObserver(registry, push_url="http://user:pw-secret-1@127.0.0.1:9")
    with caplog.at_level(logging.WARNING, logger="deswm.metrics"):
        result = orchestrator(tmp_path, metrics).run_cycle()
    assert result.files == 12
    warnings = [r.getMessage() for r in caplog.records if r.name == "deswm.metrics"]
    assert len(warnings) == 4
    assert all("cannot push metrics" in w and "pw-secret-1" not in w for w in warnings)
