"""Progress of the row-by-row commands (``verify``, ``purge``, ``flag``, ``errors retry``).

As for ``run`` (:mod:`deswm._progress`): a tqdm bar on a terminal or in a notebook, with
deswm's log lines written through it; anywhere else (a log file, a container's log
stream) one ``INFO`` line every ``interval`` seconds, with the count, the rate and, when
the total is known, the share done and the time left. The bar needs
``pip install 'deswm[progress]'``; the lines do not.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import IO, Any

from deswm._errors import ConfigError
from deswm._humanize import human_count, human_duration
from deswm._progress import _tqdm_classes, wants_bar

__all__ = ["RowProgress"]

log = logging.getLogger("deswm.progress")


class RowProgress:
    """Counts the rows (or files) a command has handled; call it with each batch's count.

    Args:
        label: what is counted, e.g. ``"verify files"`` (the bar's title, the lines' head).
        total: how many there are, when known (a percentage and an ETA).
        unit: the unit shown (``"row"``, ``"file"``).
        interval: seconds between two lines when there is no bar.
        bar: ``True``/``False`` to force the bar or the lines; ``None``: a bar in a
            notebook or when ``file`` is a terminal.
        file: where the bar goes (default ``sys.stderr``).
        clock: monotonic seconds (injectable for tests).

    Use as a context manager; the last count is logged (or the bar closed) on exit.
    """

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        unit: str = "row",
        interval: float = 30.0,
        bar: bool | None = None,
        file: IO[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval <= 0:
            raise ConfigError(f"must be positive, got {interval}", key="progress interval")
        self.label = label
        self.total = total
        self.unit = unit
        self.interval = interval
        self.done = 0
        self._file = file
        self._clock = clock
        self._started = self._last = clock()
        self.use_bar = wants_bar(self._file) if bar is None else bar
        self.bar: Any = None
        self._redirect = contextlib.ExitStack()
        if self.use_bar:
            tqdm = _tqdm_classes()[0]
            from tqdm.contrib.logging import logging_redirect_tqdm

            where = {"file": file} if file is not None else {}
            self.bar = tqdm(total=total, desc=label, unit=unit, dynamic_ncols=True, **where)
            self._redirect.enter_context(
                logging_redirect_tqdm([logging.getLogger("deswm")], tqdm_class=tqdm)
            )

    def __call__(self, count: int) -> None:
        """``count`` more rows were handled."""
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
            return
        now = self._clock()
        if now - self._last >= self.interval:
            self._last = now
            self._line(now)

    def _line(self, now: float) -> None:
        elapsed = max(now - self._started, 1e-9)
        rate = self.done / elapsed
        done = f"{human_count(self.done)} {self.unit}s"
        eta = ""
        if self.total:
            done += f" of {human_count(self.total)} ({min(self.done / self.total, 1.0):.0%})"
            if rate > 0:
                eta = f", about {human_duration(max(self.total - self.done, 0) / rate)} left"
        log.info(
            "progress %s: %s, %.1f %ss/s%s",
            self.label,
            done,
            rate,
            self.unit,
            eta,
            extra={
                "event": "progress",
                "task": self.label,
                "done": self.done,
                "total": self.total,
                "rate": round(rate, 3),
                "duration": round(elapsed, 3),
            },
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            self._redirect.close()
        elif self.done and self._last != self._started:
            self._line(self._clock())  # the final count, if any line was written before

    def __enter__(self) -> RowProgress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
