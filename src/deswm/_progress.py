"""Progress of cycles: a tqdm bar on a terminal or in a notebook, plain lines elsewhere.

A bar needs a terminal that understands carriage returns; in a log file or a container's
log stream it turns into a pile of ``\\r`` updates. So the bar is shown only on a TTY (or
as a notebook widget), with the ``deswm`` log lines routed through ``tqdm.write`` so the
two do not overwrite each other; anywhere else one progress log line is written every
``interval`` seconds. The bar needs ``pip install 'deswm[progress]'``; the lines do not.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import IO, Any

from deswm import _publish
from deswm._errors import ConfigError
from deswm._extras import require
from deswm._humanize import human_bytes, human_count, human_duration
from deswm._model import BucketResult, CycleResult, SourceRecord, Watermark, WatermarkKey, Window
from deswm._orchestrator import CycleObserver

__all__ = ["ProgressObserver"]

log = logging.getLogger("deswm.progress")  # a stable logger name (docs/operations.md)


def _tqdm_classes() -> tuple[Any, bool]:
    """``tqdm.auto``'s class, and whether it is the notebook widget."""
    require("tqdm", extra="progress", feature="A progress bar")
    from tqdm.auto import tqdm as auto
    from tqdm.autonotebook import tqdm as chosen
    from tqdm.std import tqdm as std

    return auto, chosen is not std


def wants_bar(file: IO[str] | None) -> bool:
    """A bar when tqdm is installed and ``file`` (stderr by default) is a terminal, or in a
    notebook; otherwise progress is printed as lines."""
    try:
        _, notebook = _tqdm_classes()
    except ConfigError:
        return False
    if notebook:
        return True
    stream = file if file is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


class ProgressObserver(CycleObserver):
    """Shows files and bytes as they are packed, and the day being committed.

    Args:
        total: files expected (e.g. ``orchestrator.plan().pending.files``), for a
            percentage and an ETA; or a function returning it, called when each cycle
            starts (``lambda: orchestrator.plan().pending.files`` for ``run_forever``).
        interval: seconds between two progress lines when there is no bar.
        bar: ``True``/``False`` to force the bar or the lines; ``None`` (default): a bar
            in a notebook or when ``file`` is a terminal.
        file: where the bar goes (default ``sys.stderr``).
        clock: monotonic seconds (injectable for tests).
        tqdm_options: passed to ``tqdm`` (e.g. ``mininterval``).
    """

    def __init__(
        self,
        total: int | Callable[[], int] | None = None,
        *,
        interval: float = 30.0,
        bar: bool | None = None,
        file: IO[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        **tqdm_options: Any,
    ) -> None:
        if interval <= 0:
            raise ConfigError(f"must be positive, got {interval}", key="progress interval")
        self._total = total
        self.total = None if callable(total) else total
        self.interval = interval
        self._file = file
        self._clock = clock
        self.options = {"unit": "file", "dynamic_ncols": True, **tqdm_options}
        self.use_bar = wants_bar(self._file) if bar is None else bar
        self._tqdm: Any = _tqdm_classes()[0] if self.use_bar else None
        self.bar: Any = None
        self._redirect: contextlib.ExitStack | None = None
        self._files = self._bytes = 0
        self._day = "-"
        self._key = WatermarkKey("-")
        self._started = self._last = 0.0

    def cycle_started(self, key: WatermarkKey, window: Window) -> None:
        self._key = key
        self._files = self._bytes = 0
        self._started = self._last = self._clock()
        if callable(self._total):
            self.total = self._total()
        if not self.use_bar:
            return
        from tqdm.contrib.logging import logging_redirect_tqdm

        file = {"file": self._file} if self._file is not None else {}
        self.bar = self._tqdm(total=self.total, desc=str(key), **file, **self.options)
        self._redirect = contextlib.ExitStack()
        self._redirect.enter_context(
            logging_redirect_tqdm([logging.getLogger("deswm")], tqdm_class=self._tqdm)
        )

    def file_done(self, record: SourceRecord, size: int) -> None:
        self._advance(1, size)

    def files_done(self, key: WatermarkKey, bucket: datetime, files: int, size: int) -> None:
        self._advance(files, size)

    def _advance(self, files: int, size: int) -> None:
        self._files += files
        self._bytes += size
        if self.bar is not None:
            self.bar.update(files)
        elif not self.use_bar:
            now = self._clock()
            if now - self._last >= self.interval:
                self._last = now
                self._line(now)

    def _line(self, now: float) -> None:
        elapsed = max(now - self._started, 1e-9)
        rate = self._files / elapsed
        done = human_count(self._files)
        if self.total:
            share = min(self._files / self.total, 1.0)
            done += f" of {human_count(self.total)} files ({share:.0%})"
            left = max(self.total - self._files, 0)
            eta = f", about {human_duration(left / rate)} left" if rate > 0 else ""
        else:
            done += " files"
            eta = ""
        log.info(
            "progress %s: %s, %s read, day %s, %.1f files/s%s",
            self._key,
            done,
            human_bytes(self._bytes),
            self._day,
            rate,
            eta,
            extra={
                "event": "progress",
                "pipeline": self._key.pipeline,
                "partition": self._key.partition,
                "bucket": self._day,
                "files": self._files,
                "total": self.total,
                "bytes": self._bytes,
                "rate": round(rate, 3),
                "duration": round(elapsed, 3),
            },
        )

    def bucket_committed(
        self, key: WatermarkKey, result: BucketResult, watermark: Watermark
    ) -> None:
        self._day = result.bucket.date().isoformat()
        if self.bar is not None:
            self.bar.set_postfix(day=self._day, shards=len(result.shards))

    def cycle_finished(self, result: CycleResult) -> None:
        self._close()

    def cycle_failed(self, key: WatermarkKey, error: Exception) -> None:
        self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self._redirect is not None:
            self._redirect.close()
            self._redirect = None


_publish(globals())
