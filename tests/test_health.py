"""The health file of ``run --interval``: touched while cycles succeed, not after failures."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from deswm._errors import ConfigError
from deswm._health import HealthFile
from deswm._orchestrator import CycleObserver
from test_metrics import orchestrator


def test_touched_after_every_bucket_and_cycle(tmp_path: Path) -> None:
    path = tmp_path / "healthy"
    touches: list[float] = []

    class Watch(CycleObserver):
        def bucket_committed(self, key: Any, result: Any, watermark: Any) -> None:
            touches.append(path.stat().st_mtime)
            os.utime(path, (0, 0))  # so the next touch is seen

    orch = orchestrator(tmp_path, HealthFile(path))
    orch.observers = (HealthFile(path), Watch())
    orch.run_cycle()
    assert len(touches) == 3 and all(t > 0 for t in touches)
    assert path.stat().st_mtime > 0  # touched again at the end of the cycle
    os.utime(path, (0, 0))
    orch.run_cycle()  # nothing to do is still a healthy cycle
    assert path.stat().st_mtime > 0


def test_not_touched_by_a_failed_cycle(tmp_path: Path) -> None:
    path = tmp_path / "healthy"

    class Boom(CycleObserver):
        def file_done(self, record: Any, size: int) -> None:
            raise RuntimeError("down")

    orch = orchestrator(tmp_path, HealthFile(path))
    orch.observers = (HealthFile(path), Boom())
    with pytest.raises(RuntimeError):
        orch.run_cycle()
    assert not path.exists()


def test_a_missing_folder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist") as caught:
        HealthFile(tmp_path / "nope" / "healthy")
    assert caught.value.key == "health_file"
