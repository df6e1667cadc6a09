"""Pacing the source's reads, so archiving leaves a production database its headroom.

A :class:`SourceThrottle` given to :class:`~deswm.SqlSourceProvider` (``[source]
max_rows_per_second``, ``max_pages_per_second``, ``sleep_coef``, ``replica_url``) waits
*between* keyset pages, never inside one: a streamed page is closed and its connection
back in the pool before the wait, so no cursor, snapshot or lock is held while it sleeps.
Before each page it waits until

* ``rows / max_rows_per_second`` seconds have passed since the previous page started
  (a page of ``rows`` rows), and ``1 / max_pages_per_second`` seconds likewise;
* ``sleep_coef`` times the previous page's query time has passed since that page was
  consumed (pt-archiver's ``--sleep-coef``: a slow query means a busy server, so the
  pause grows with it). The query time is the time to the page's first row (or to its
  end when empty): executing the query and, on PostgreSQL and SQLite, fetching the page;
* a replica lags at most ``max_replica_lag`` seconds, checked through a
  :class:`LagProbe` at most every ``replica_check_interval`` seconds. While it lags more,
  reads pause (one warning per pause, with the lag) and resume when it falls back.

Time and sleep are injectable (``clock``, ``sleep``), so the pacing is tested
deterministically; the probes are tested on real PostgreSQL and MariaDB servers, and the
pause with a :class:`LagProbe` whose lag the test sets (simulated lag, because a real
replica cannot be made in CI).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol, TypeVar, runtime_checkable

import attrs

from deswm import _publish
from deswm._errors import ConfigError, WaitInterrupted
from deswm._sql.replica import SqlReplicaLagProbe

__all__ = ["LagProbe", "SourceThrottle", "SqlReplicaLagProbe"]

log = logging.getLogger("deswm.throttle")

_T = TypeVar("_T")


@runtime_checkable
class LagProbe(Protocol):
    """How far a replica trails its primary (:class:`SqlReplicaLagProbe` reads a server's)."""

    def replica_lag(self) -> float:
        """Seconds the replica is behind now (zero or more).

        Raise :class:`~deswm.ReplicaLagError` when it is not replicating (no
        replica status, a NULL lag): there is then no lag to wait for.
        """
        ...


def _optional_rate(key: str) -> Callable[[object, attrs.Attribute[float | None], object], None]:
    def check(_instance: object, _attribute: attrs.Attribute[float | None], value: object) -> None:
        if value is None:
            return
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= 0
        ):
            raise ConfigError(f"must be a positive number or unset, got {value!r}", key=key)

    return check


def _non_negative(key: str, *, positive: bool = False) -> Callable[..., None]:
    def check(_instance: object, _attribute: object, value: object) -> None:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
            or (positive and value == 0)
        ):
            wanted = "a positive number" if positive else "zero or a positive number"
            raise ConfigError(f"must be {wanted}, got {value!r}", key=key)

    return check


@attrs.frozen
class SourceThrottle:
    """How fast a source may read; see the module docstring for the rules.

    Args:
        max_rows_per_second: rows a second, averaged over each page (``None``: no limit).
        max_pages_per_second: page queries a second (``None``: no limit).
        sleep_coef: after each page, wait this many times its query time (0: no wait).
        lag_probe: pause while the replica it reads lags more than ``max_replica_lag``.
        max_replica_lag: seconds of replica lag to tolerate.
        replica_check_interval: seconds between two lag checks (and between checks while
            paused).
        clock, sleep: monotonic seconds and how to wait (injectable for tests).
    """

    max_rows_per_second: float | None = attrs.field(
        default=None, validator=_optional_rate("source.max_rows_per_second")
    )
    max_pages_per_second: float | None = attrs.field(
        default=None, validator=_optional_rate("source.max_pages_per_second")
    )
    sleep_coef: float = attrs.field(default=0.0, validator=_non_negative("source.sleep_coef"))
    lag_probe: LagProbe | None = None
    max_replica_lag: float = attrs.field(
        default=10.0, validator=_non_negative("source.max_replica_lag")
    )
    replica_check_interval: float = attrs.field(
        default=1.0, validator=_non_negative("source.replica_check_interval", positive=True)
    )
    clock: Callable[[], float] = attrs.field(default=time.monotonic, repr=False, eq=False)
    sleep: Callable[[float], None] = attrs.field(default=time.sleep, repr=False, eq=False)

    @property
    def limits_anything(self) -> bool:
        """Whether this throttle can ever wait (an all-default one never does)."""
        return bool(
            self.max_rows_per_second
            or self.max_pages_per_second
            or self.sleep_coef
            or self.lag_probe is not None
        )

    def pacer(self, stop: threading.Event | None = None) -> Pacer:
        """The pacing state of one stream of pages (one window).

        With ``stop``, every wait ends as soon as it is set and raises
        :class:`~deswm._errors.WaitInterrupted` (a SIGTERM during a long replica pause
        must not wait for the replica).
        """
        return Pacer(self, stop)


class Pacer:
    """Paces the pages of one stream: call :meth:`before_page`, :meth:`timed`, :meth:`page_done`.

    ``slept`` and ``paused`` total the seconds waited for the rate limits and
    ``sleep_coef``, and for the replica; ``query_seconds`` the pages' query times.
    """

    def __init__(self, throttle: SourceThrottle, stop: threading.Event | None = None) -> None:
        self._throttle = throttle
        self._stop = stop
        self._ready_at: float | None = None
        self._page_started = 0.0
        self._query_seconds = 0.0
        self._lag_checked: float | None = None
        self.pages = 0
        self.rows = 0
        self.slept = 0.0
        self.paused = 0.0
        self.query_seconds = 0.0

    def before_page(self) -> None:
        """Wait until the next page may be queried (the limits, then the replica)."""
        throttle = self._throttle
        if self._ready_at is not None:
            wait = self._ready_at - throttle.clock()
            if wait > 0:
                self._wait(wait)
                self.slept += wait
        if throttle.lag_probe is not None:
            now = throttle.clock()
            if self._lag_checked is None or now - self._lag_checked >= (
                throttle.replica_check_interval
            ):
                self._await_replica(throttle.lag_probe)
        self._page_started = throttle.clock()
        self._query_seconds = 0.0

    def timed(self, rows: Iterable[_T]) -> Iterator[_T]:
        """``rows``, recording the time to the first row (or the end) as the query time."""
        iterator = iter(rows)
        clock = self._throttle.clock
        started = clock()
        try:
            first = next(iterator)
        except StopIteration:
            self._query_seconds = clock() - started
            return
        self._query_seconds = clock() - started
        yield first
        yield from iterator

    def page_done(self, rows: int) -> None:
        """Record a consumed page of ``rows`` rows; the next page waits as it requires."""
        throttle = self._throttle
        done = throttle.clock()
        self.pages += 1
        self.rows += rows
        self.query_seconds += self._query_seconds
        ready = done + throttle.sleep_coef * self._query_seconds
        if throttle.max_rows_per_second:
            ready = max(ready, self._page_started + rows / throttle.max_rows_per_second)
        if throttle.max_pages_per_second:
            ready = max(ready, self._page_started + 1 / throttle.max_pages_per_second)
        self._ready_at = ready

    def _wait(self, seconds: float) -> None:
        """Sleep ``seconds``; with a stop, wake when it is set and raise ``WaitInterrupted``.

        An injected ``sleep`` (tests) is used as it is, the stop checked after it.
        """
        stop = self._stop
        if stop is None:
            self._throttle.sleep(seconds)
            return
        if self._throttle.sleep is time.sleep:
            stop.wait(seconds)
        else:
            self._throttle.sleep(seconds)
        if stop.is_set():
            log.info("stopped while waiting to read the source")
            raise WaitInterrupted()

    def _await_replica(self, probe: LagProbe) -> None:
        throttle = self._throttle
        lag = probe.replica_lag()
        self._lag_checked = throttle.clock()
        if lag <= throttle.max_replica_lag:
            return
        log.warning(
            "pausing reads of the source: replica %r is %.1f s behind "
            "(source.max_replica_lag = %g s); checking again every %g s",
            probe,
            lag,
            throttle.max_replica_lag,
            throttle.replica_check_interval,
        )
        started = self._lag_checked
        while lag > throttle.max_replica_lag:
            self._wait(throttle.replica_check_interval)
            lag = probe.replica_lag()
            self._lag_checked = throttle.clock()
        paused = self._lag_checked - started
        self.paused += paused
        log.info(
            "resuming reads of the source after %.1f s: replica %r is %.1f s behind",
            paused,
            probe,
            lag,
        )


_publish(globals())
