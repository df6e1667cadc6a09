"""A tqdm progress bar for cycles (notebooks and terminals): ``pip install 'deswm[progress]'``."""

from __future__ import annotations

from typing import Any

from deswm._extras import require
from deswm.model import BucketResult, CycleResult, SourceRecord, Watermark, WatermarkKey, Window
from deswm.orchestrator import CycleObserver

__all__ = ["ProgressObserver"]


class ProgressObserver(CycleObserver):
    """Shows files and bytes as they are packed, and the day being committed.

    Args:
        total: files expected (e.g. ``orchestrator.plan().pending.files``), for a
            percentage and an ETA.
        notebook: use the notebook widget (``tqdm.auto`` picks one by default).
    """

    def __init__(self, total: int | None = None, **tqdm_options: Any) -> None:
        self._tqdm = require("tqdm.auto", extra="progress", feature="A progress bar").tqdm
        self.total = total
        self.options = {"unit": "file", "dynamic_ncols": True, **tqdm_options}
        self.bar: Any = None

    def cycle_started(self, key: WatermarkKey, window: Window) -> None:
        self.bar = self._tqdm(total=self.total, desc=str(key), **self.options)

    def file_done(self, record: SourceRecord, size: int) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def bucket_committed(
        self, key: WatermarkKey, result: BucketResult, watermark: Watermark
    ) -> None:
        if self.bar is not None:
            self.bar.set_postfix(day=result.bucket.date().isoformat(), shards=len(result.shards))

    def cycle_finished(self, result: CycleResult) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
