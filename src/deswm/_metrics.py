"""Prometheus metrics for cycles, as a :class:`~deswm.CycleObserver`.

Needs ``pip install 'deswm[prometheus]'``. Metric names follow the earlier DES tooling so
existing dashboards and alerts keep working (the first eight); the gauges after them are
for batch jobs and alerts. All but the last carry ``{pipeline,partition}``::

    des_watermark_lag_seconds              how far the watermark is *behind* its target
                                           (target - watermark; the configured delay is
                                           not included), after each bucket and cycle
    des_watermark_window_size_seconds      the current cycle's window length
    des_migration_files_total              files archived (read and packed)
    des_migration_bytes_total{direction}   bytes read (in) and written to shards (out)
    des_migration_shards_total             shard objects written
    des_migration_duration_seconds         cycle durations (histogram)
    des_migration_failures_total           files that failed
    des_db_operations_total{operation}     SQL statements by verb (no pipeline label)
    des_watermark_position_timestamp_seconds  the watermark, as a Unix time
    des_watermark_behind_rows              rows between the watermark and the target
    des_watermark_behind_bytes             their bytes, as the size column claims
    des_last_success_timestamp_seconds     end of the last cycle that did not fail
    des_last_failure_timestamp_seconds     end of the last cycle that failed
    des_cycle_failures_total               cycles that failed

A process that exits (a cron job, a Kubernetes CronJob) cannot be scraped: give
``push_url`` (a Prometheus Pushgateway) or ``textfile`` (a ``.prom`` file for
node_exporter's textfile collector), and the metrics are pushed or written after every
bucket and at the end of every cycle.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from deswm import _publish
from deswm._errors import ConfigError
from deswm._extras import require
from deswm._model import BucketResult, CyclePlan, CycleResult, Watermark, WatermarkKey, Window
from deswm._orchestrator import CycleObserver
from deswm._redact import redact, redact_url

__all__ = ["PrometheusObserver", "instrument_engine"]

log = logging.getLogger("deswm.metrics")  # a stable logger name (docs/operations.md)


def _client() -> Any:
    return require("prometheus_client", extra="prometheus", feature="Prometheus metrics")


_GAUGES: tuple[tuple[str, str, str], ...] = (
    (
        "lag",
        "des_watermark_lag_seconds",
        "Seconds the watermark is behind its target (target - watermark; the configured "
        "delay not included), after the last bucket or cycle",
    ),
    (
        "position",
        "des_watermark_position_timestamp_seconds",
        "The watermark position as a Unix time: every row created before it is archived",
    ),
    (
        "behind_rows",
        "des_watermark_behind_rows",
        "Rows between the watermark and the target, still to archive",
    ),
    (
        "behind_bytes",
        "des_watermark_behind_bytes",
        "Bytes of the rows between the watermark and the target (the size column's claim)",
    ),
    (
        "last_success",
        "des_last_success_timestamp_seconds",
        "Unix time the last cycle that did not fail ended",
    ),
    ("last_failure", "des_last_failure_timestamp_seconds", "Unix time the last failed cycle ended"),
    (
        "window",
        "des_watermark_window_size_seconds",
        "Length of the last cycle's window in seconds",
    ),
)
"""The ``{pipeline,partition}`` gauges: (attribute of ``_Metrics``, name, help)."""


class _Metrics:
    lag: Any
    position: Any
    behind_rows: Any
    behind_bytes: Any
    last_success: Any
    last_failure: Any
    window: Any

    def __init__(self, registry: Any) -> None:
        prom = _client()
        labels = ("pipeline", "partition")
        for attribute, name, documentation in _GAUGES:
            setattr(self, attribute, prom.Gauge(name, documentation, labels, registry=registry))
        self.cycle_failures = prom.Counter(
            "des_cycle_failures_total", "Cycles that failed", labels, registry=registry
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
    """Updates Prometheus metrics from a running orchestrator, and exports them.

    Args:
        registry: a ``prometheus_client.CollectorRegistry`` (default: the global one).
        plan: called when a cycle starts (e.g. ``orchestrator.plan``) for the rows and
            bytes behind; one aggregate query per cycle. Without it those two gauges
            stay unset.
        push_url: a Pushgateway to push the registry to after every bucket and cycle,
            grouped by ``job``, ``pipeline`` and ``partition``.
        job: the Pushgateway job name.
        textfile: a ``*.prom`` file for node_exporter's textfile collector, rewritten
            atomically after every bucket and cycle.
        clock: Unix time for the last-success/failure gauges (injectable for tests).
    """

    _shared: weakref.WeakKeyDictionary[Any, _Metrics] = weakref.WeakKeyDictionary()
    """One set of metric objects per live registry. Keyed by the registry itself, not its
    ``id()``: a registry collected and a new one at the same address would get metrics
    registered on the dead one."""

    def __init__(
        self,
        registry: Any = None,
        *,
        plan: Callable[[], CyclePlan] | None = None,
        push_url: str | None = None,
        job: str = "deswm",
        textfile: str | os.PathLike[str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        prom = _client()
        self.registry = registry if registry is not None else prom.REGISTRY
        # One set of metric objects per registry: registering a name twice fails.
        metrics = self._shared.get(self.registry)
        if metrics is None:
            metrics = self._shared[self.registry] = _Metrics(self.registry)
        self.metrics = metrics
        self._plan = plan
        self.push_url = push_url
        self.job = job
        self.textfile = None if textfile is None else _textfile_path(textfile)
        self._clock = clock
        self._target: dict[WatermarkKey, Any] = {}
        self._behind: dict[WatermarkKey, tuple[int, int]] = {}

    def _labels(self, key: WatermarkKey) -> dict[str, str]:
        return {"pipeline": key.pipeline, "partition": str(key.partition)}

    def cycle_started(self, key: WatermarkKey, window: Window) -> None:
        labels = self._labels(key)
        self.metrics.window.labels(**labels).set(window.duration.total_seconds())
        self._target[key] = window.end
        if self._plan is not None:
            pending = self._plan().pending
            self._set_behind(key, pending.files, pending.bytes)

    def _set_behind(self, key: WatermarkKey, rows: int, size: int) -> None:
        rows, size = max(rows, 0), max(size, 0)
        self._behind[key] = (rows, size)
        labels = self._labels(key)
        self.metrics.behind_rows.labels(**labels).set(rows)
        self.metrics.behind_bytes.labels(**labels).set(size)

    def _set_position(self, key: WatermarkKey, position: Any, target: Any) -> None:
        labels = self._labels(key)
        self.metrics.position.labels(**labels).set(position.timestamp())
        if target is not None:
            behind = max(target - position, timedelta(0))
            self.metrics.lag.labels(**labels).set(behind.total_seconds())

    def bucket_committed(
        self, key: WatermarkKey, result: BucketResult, watermark: Watermark
    ) -> None:
        labels = self._labels(key)
        self.metrics.files.labels(**labels).inc(result.files)
        self.metrics.bytes.labels(**labels, direction="in").inc(result.bytes_in)
        self.metrics.bytes.labels(**labels, direction="out").inc(result.bytes_out)
        self.metrics.shards.labels(**labels).inc(len(result.shards))
        self._set_position(key, watermark.position, self._target.get(key))
        if key in self._behind:
            rows, size = self._behind[key]
            self._set_behind(key, rows - result.files - result.kept, size - result.bytes_in)
        self.export(key)

    def cycle_finished(self, result: CycleResult) -> None:
        key = result.key
        labels = self._labels(key)
        self._set_position(key, result.watermark_after, result.window.end)
        if result.watermark_after >= result.window.end and (self._plan or key in self._behind):
            self._set_behind(key, 0, 0)  # caught up: nothing is left behind the target
        self.metrics.duration.labels(**labels).observe(result.duration.total_seconds())
        if result.failures:
            self.metrics.failures.labels(**labels).inc(len(result.failures))
        self.metrics.last_success.labels(**labels).set(self._clock())
        self._target.pop(key, None)
        self.export(key)

    def cycle_failed(self, key: WatermarkKey, error: Exception) -> None:
        labels = self._labels(key)
        self.metrics.cycle_failures.labels(**labels).inc()
        self.metrics.last_failure.labels(**labels).set(self._clock())
        self._target.pop(key, None)
        self.export(key)

    def export(self, key: WatermarkKey) -> None:
        """Write the textfile and push to the gateway (whichever are configured).

        A failure is logged as a warning and does not stop archiving: the next bucket
        exports again, and the last-success gauge tells an alert what it missed.
        """
        prom = _client()
        if self.textfile is not None:
            try:
                prom.write_to_textfile(str(self.textfile), self.registry)
            except OSError as exc:
                log.warning("cannot write the metrics textfile %s: %s", self.textfile, exc)
        if self.push_url is not None:
            try:
                prom.push_to_gateway(
                    self.push_url,
                    job=self.job,
                    registry=self.registry,
                    grouping_key=self._labels(key),
                )
            except OSError as exc:
                log.warning(
                    "cannot push metrics to %s: %s", redact_url(self.push_url), redact(str(exc))
                )

    def instrument(self, engine: sa.Engine) -> None:
        """Count this engine's SQL statements in ``des_db_operations_total``."""
        instrument_engine(engine, self.metrics.db)


def instrument_engine(engine: sa.Engine, counter: Any) -> None:
    """Count ``engine``'s statements by verb (select, insert, update, ...) on ``counter``."""

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        verb = statement.lstrip().split(None, 1)[0].lower() if statement.strip() else "other"
        counter.labels(operation=verb).inc()

    sa.event.listen(engine, "before_cursor_execute", count)


def _textfile_path(path: str | os.PathLike[str]) -> Path:
    """node_exporter only reads ``*.prom`` files of an existing folder: check both now."""
    textfile = Path(path)
    if textfile.suffix != ".prom":
        raise ConfigError(
            f"{textfile} does not end in .prom, so node_exporter's textfile collector "
            "would never read it",
            key="metrics_textfile",
            hint="name the file like /var/lib/node_exporter/textfile/deswm.prom",
        )
    if not textfile.parent.is_dir():
        raise ConfigError(
            f"the folder of {textfile} does not exist",
            key="metrics_textfile",
            hint="create it, or point --metrics-textfile at node_exporter's textfile folder",
        )
    return textfile


_publish(globals())
