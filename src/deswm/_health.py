"""A health file for long-running ``deswm run --interval``: touched while cycles succeed.

A liveness probe (``find PATH -mmin -N``) then restarts a runner whose cycles keep
failing or that hangs; see docs/operations.md. The file is touched after every committed
bucket (a long cycle is making progress) and after every cycle that did not fail (also
one with nothing to do), never after a failed one.
"""

from __future__ import annotations

import os
from pathlib import Path

from deswm import _publish
from deswm._errors import ConfigError
from deswm._model import BucketResult, CycleResult, Watermark, WatermarkKey
from deswm._orchestrator import CycleObserver

__all__ = ["HealthFile"]


class HealthFile(CycleObserver):
    """Touches ``path`` (creating it) whenever the runner shows it is healthy.

    Args:
        path: the file; its folder must exist.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise ConfigError(
                f"the folder of the health file {self.path} does not exist",
                key="health_file",
                hint="create it (e.g. an emptyDir volume) or choose another path",
            )

    def touch(self) -> None:
        """Create the file or set its modification time to now."""
        self.path.touch()

    def bucket_committed(
        self, key: WatermarkKey, result: BucketResult, watermark: Watermark
    ) -> None:
        self.touch()

    def cycle_finished(self, result: CycleResult) -> None:
        self.touch()


_publish(globals())
