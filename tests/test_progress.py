"""Progress output: a bar only on a terminal (logs routed around it), lines elsewhere."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import pytest
from tqdm.contrib.logging import _TqdmLoggingHandler

from deswm._errors import ConfigError
from deswm._orchestrator import CycleObserver
from deswm._progress import ProgressObserver
from test_metrics import orchestrator


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_without_a_terminal_one_line_every_interval_and_no_carriage_returns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ticks = iter(range(0, 1000, 10))  # every file takes 10 "seconds"
    out = io.StringIO()
    observer = ProgressObserver(total=12, interval=30, file=out, clock=lambda: next(ticks))
    assert not observer.use_bar
    with caplog.at_level(logging.INFO, logger="deswm.progress"):
        orchestrator(tmp_path, observer).run_cycle()
    lines = [r for r in caplog.records if r.name == "deswm.progress"]
    assert len(lines) == 4  # at 30, 60, 90, 120 s of 12 files x 10 s
    first = lines[0].getMessage()
    assert "3 of 12 files (25%)" in first and "about 1 min 30 s left" in first
    assert getattr(lines[0], "event") == "progress"  # noqa: B009 - set via extra=
    assert getattr(lines[-1], "files") == 12  # noqa: B009
    assert out.getvalue() == ""  # no bar, no \r


def test_the_bar_is_used_on_a_terminal_and_log_lines_go_around_it(tmp_path: Path) -> None:
    out = _Tty()
    seen: list[list[Any]] = []

    class Peek(CycleObserver):
        def file_done(self, record: Any, size: int) -> None:
            seen.append(list(logging.getLogger("deswm").handlers))

    observer = ProgressObserver(total=12, file=out, mininterval=0)
    assert observer.use_bar
    before = list(logging.getLogger("deswm").handlers)
    orch = orchestrator(tmp_path, observer)
    orch.observers = (observer, Peek())
    orch.run_cycle()
    assert "12/12" in out.getvalue()
    # While the bar runs, deswm's log records are written through tqdm.write.
    assert all(any(isinstance(h, _TqdmLoggingHandler) for h in hs) for hs in seen)
    assert logging.getLogger("deswm").handlers == before  # restored afterwards


def test_a_failed_cycle_closes_the_bar_and_restores_logging(tmp_path: Path) -> None:
    class Boom(CycleObserver):
        def file_done(self, record: Any, size: int) -> None:
            raise RuntimeError("stop here")

    observer = ProgressObserver(total=12, file=_Tty())
    before = list(logging.getLogger("deswm").handlers)
    orch = orchestrator(tmp_path, observer)
    orch.observers = (observer, Boom())
    with pytest.raises(RuntimeError):
        orch.run_cycle()
    assert observer.bar is None
    assert logging.getLogger("deswm").handlers == before


def test_interval_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="positive"):
        ProgressObserver(interval=0)


def test_a_callable_total_is_asked_at_every_cycle(tmp_path: Path) -> None:
    asked: list[int] = []

    def total() -> int:
        asked.append(1)
        return 12

    observer = ProgressObserver(total=total, bar=False)
    orch = orchestrator(tmp_path, observer)
    orch.run_cycle()
    assert observer.total == 12 and len(asked) == 1
