"""Prometheus metrics for cycles, as a :class:`~deswm.orchestrator.CycleObserver`.

Needs ``pip install 'deswm[prometheus]'``. Metric names follow the earlier DES tooling so
existing dashboards and alerts keep working::

    des_watermark_lag_seconds{pipeline,partition}          target - watermark after a cycle
    des_watermark_window_size_seconds{pipeline,partition}  the last window's length
    des_migration_files_total{pipeline,partition}          files archived
    des_migration_bytes_total{pipeline,partition,direction}  bytes read (in) and written (out)
    des_migration_shards_total{pipeline,partition}         shard objects written
    des_migration_duration_seconds{pipeline,partition}     cycle durations (histogram)
    des_migration_failures_total{pipeline,partition}       files that failed
    des_db_operations_total{operation}                      SQL statements by verb
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from deswm._extras import require
from deswm.model import BucketResult, CycleResult, Watermark, WatermarkKey, Window
from deswm.orchestrator import CycleObserver

__all__ = ["PrometheusObserver", "instrument_engine"]


def _client() -> Any:
    return require("prometheus_client", extra="prometheus", feature="Prometheus metrics")


class _Metrics:
    def __init__(self, registry: Any) -> None:
        prom = _client()
        labels = ("pipeline", "partition")
        self.lag = prom.Gauge(
            "des_watermark_lag_seconds",
            "Seconds the watermark trails the target after the last cycle",
            labels,
            registry=registry,
        )
        self.window = prom.Gauge(
            "des_watermark_window_size_seconds",
            "Length of the last cycle's window in seconds",
            labels,
            registry=registry,
        )
        self.files = prom.Counter(
            "des_migration_files_total", "Files archived", labels, registry=registry
        )
        self.bytes = prom.Counter(
            "des_migration_bytes_total",
            "Bytes read from source files (in) and written to shards (out)",
            (*labels, "direction"),
            registry=registry,
        )
        self.shards = prom.Counter(
            "des_migration_shards_total", "Shard objects written", labels, registry=registry
        )
        self.failures = prom.Counter(
            "des_migration_failures_total", "Files that failed", labels, registry=registry
        )
        self.duration = prom.Histogram(
            "des_migration_duration_seconds",
            "Duration of cycles in seconds",
            labels,
            buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600),
            registry=registry,
        )
        self.db = prom.Counter(
            "des_db_operations_total",
            "SQL statements sent by deswm, by verb",
            ("operation",),
            registry=registry,
        )


class PrometheusObserver(CycleObserver):
    """Updates Prometheus metrics from a running orchestrator.

    Args:
        registry: a ``prometheus_client.CollectorRegistry`` (default: the global one).
    """

    _shared: dict[int, _Metrics] = {}

    def __init__(self, registry: Any = None) -> None:
        prom = _client()
        self.registry = registry if registry is not None else prom.REGISTRY
        # One set of metric objects per registry: registering a name twice fails.
        key = id(self.registry)
        if key not in self._shared:
            self._shared[key] = _Metrics(self.registry)
        self.metrics = self._shared[key]

    def _labels(self, key: WatermarkKey) -> dict[str, str]:
        return {"pipeline": key.pipeline, "partition": str(key.partition)}

    def cycle_started(self, key: WatermarkKey, window: Window) -> None:
        self.metrics.window.labels(**self._labels(key)).set(window.duration.total_seconds())

    def bucket_committed(
        self, key: WatermarkKey, result: BucketResult, watermark: Watermark
    ) -> None:
        labels = self._labels(key)
        self.metrics.files.labels(**labels).inc(result.files)
        self.metrics.bytes.labels(**labels, direction="in").inc(result.bytes_in)
        self.metrics.bytes.labels(**labels, direction="out").inc(result.bytes_out)
        self.metrics.shards.labels(**labels).inc(len(result.shards))

    def cycle_finished(self, result: CycleResult) -> None:
        labels = self._labels(result.key)
        behind = max(result.window.end - result.watermark_after, timedelta(0))
        self.metrics.lag.labels(**labels).set(behind.total_seconds())
        self.metrics.duration.labels(**labels).observe(result.duration.total_seconds())
        if result.failures:
            self.metrics.failures.labels(**labels).inc(len(result.failures))

    def instrument(self, engine: sa.Engine) -> None:
        """Count this engine's SQL statements in ``des_db_operations_total``."""
        instrument_engine(engine, self.metrics.db)


def instrument_engine(engine: sa.Engine, counter: Any) -> None:
    """Count ``engine``'s statements by verb (select, insert, update, ...) on ``counter``."""

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        verb = statement.lstrip().split(None, 1)[0].lower() if statement.strip() else "other"
        counter.labels(operation=verb).inc()

    sa.event.listen(engine, "before_cursor_execute", count)
