"""Prometheus metrics of the retrieval service, in a registry of its own.

* ``deswm_serve_requests_total{route,method,status}`` and
  ``deswm_serve_request_duration_seconds{route}`` (a histogram; until the response ends);
* ``deswm_serve_backend_requests_total{op}``: calls to the archive's storage backend
  (``get_range``, ``get_tail``, ``stat``, ``list``), counted by wrapping the store's backend
  (:func:`deswm._objectstore.counting.count_reads`);
* ``deswm_serve_index_cache_hits_total``, ``deswm_serve_index_cache_loads_total`` (misses:
  indexes read from storage), ``deswm_serve_index_cache_entries`` and
  ``deswm_serve_index_cache_bytes``, read from :meth:`Archive.cache_stats` at scrape time.

Routes are the templates (``/files/{uid}``), never a uid, and methods outside the
standard ones are ``other``, so the label sets stay bounded.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deswm._archive import Archive
from deswm._objectstore.counting import count_reads

__all__ = ["MetricsMiddleware", "ServeMetrics", "route_of"]

_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})
"""Methods counted by name; any other is ``other`` (a client can send any token)."""
_LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def route_of(path: str) -> str:
    """The route template a path belongs to (``other`` for anything unknown)."""
    if path.startswith("/files/"):
        return "/files/{uid}/stat" if path.endswith("/stat") else "/files/{uid}"
    if path in ("/metrics", "/healthz", "/readyz"):
        return path
    return "other"


class _CacheCollector(Collector):
    def __init__(self, archive: Archive) -> None:
        self._archive = archive

    def collect(self) -> Iterator[Any]:
        stats = self._archive.cache_stats()
        yield CounterMetricFamily(
            "deswm_serve_index_cache_hits", "Lookups answered by a cached index", stats.hits
        )
        yield CounterMetricFamily(
            "deswm_serve_index_cache_loads",
            "Indexes read from storage (cache misses)",
            stats.loads,
        )
        yield GaugeMetricFamily(
            "deswm_serve_index_cache_entries", "Indexes in the cache", stats.entries
        )
        yield GaugeMetricFamily(
            "deswm_serve_index_cache_bytes", "Estimated memory of the cached indexes", stats.bytes
        )


class ServeMetrics:
    """The service's metrics and the registry ``/metrics`` renders."""

    def __init__(self, archive: Archive) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "deswm_serve_requests",
            "HTTP requests by route, method and status",
            ("route", "method", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "deswm_serve_request_duration_seconds",
            "Time from request to the end of the response",
            ("route",),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.backend = Counter(
            "deswm_serve_backend_requests",
            "Requests to the archive's storage backend by operation",
            ("op",),
            registry=self.registry,
        )
        self.registry.register(_CacheCollector(archive))
        count_reads(archive.store, lambda op: self.backend.labels(op).inc())
        self._requests: dict[tuple[str, str, int], Any] = {}
        self._latencies: dict[str, Any] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request and its duration."""
        # The labelled children are looked up once per label set (labels() takes a lock
        # and builds a key each call); the label sets are bounded (route_of).
        method = method if method in _METHODS else "other"
        key = (route, method, status)
        counter = self._requests.get(key)
        if counter is None:
            counter = self._requests[key] = self.requests.labels(route, method, str(status))
        counter.inc()
        latency = self._latencies.get(route)
        if latency is None:
            latency = self._latencies[route] = self.latency.labels(route)
        latency.observe(seconds)


class MetricsMiddleware:
    """ASGI middleware: count and time every HTTP request by route and status."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics) -> None:
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self._app(scope, receive, sending)
        finally:
            self._metrics.observe(
                route_of(scope["path"]), scope["method"], status, time.perf_counter() - started
            )
