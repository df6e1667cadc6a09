"""Log output of the command: text or JSON with stable keys, never a secret."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from deswm._errors import ConfigError
from deswm._logs import setup_logging, skip_events
from deswm._orchestrator import CycleObserver
from deswm._redact import remember
from test_metrics import orchestrator


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    logger = logging.getLogger("deswm")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_json_logs_carry_stable_keys_for_buckets_and_cycles(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging(logging.INFO, "json")
    orchestrator(tmp_path, CycleObserver()).run_cycle()
    lines = json_lines(capsys.readouterr().err)
    buckets = [line for line in lines if line["event"] == "bucket_committed"]
    assert [b["bucket"] for b in buckets] == ["2024-05-10", "2024-05-11", "2024-05-12"]
    first = buckets[0]
    assert {"ts", "level", "logger", "message", "pipeline", "files", "bytes", "shards"} <= set(
        first
    )
    assert (first["pipeline"], first["partition"], first["files"], first["level"]) == (
        "files",
        0,
        4,
        "info",
    )
    assert str(first["ts"]).endswith("Z")
    (cycle,) = [line for line in lines if line["event"] == "cycle_finished"]
    assert cycle["files"] == 12 and cycle["buckets"] == 3
    assert isinstance(cycle["duration"], float)
    assert cycle["watermark"] == "2024-05-18T00:00:00.000000Z"


def test_no_secret_in_any_json_field(capsys: pytest.CaptureFixture[str]) -> None:
    remember("postgresql://app:hunter2-long@db/prod")
    setup_logging(logging.INFO, "json")
    log = logging.getLogger("deswm.test")
    log.warning(
        "connecting to %s",
        "postgresql://app:hunter2-long@db/prod",
        extra={"pipeline": "p hunter2-long", "event": "connect"},
    )
    try:
        raise RuntimeError("failed with password hunter2-long")
    except RuntimeError:
        log.exception("boom")
    err = capsys.readouterr().err
    assert "hunter2-long" not in err
    lines = json_lines(err)
    assert lines[0]["event"] == "connect" and "***" in str(lines[0]["message"])
    assert lines[1]["event"] == "log" and "RuntimeError" in str(lines[1]["exception"])


def test_text_logs_are_redacted_lines(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(logging.INFO, "text")
    logging.getLogger("deswm.test").info("at s3://key:sekrit-value-9@bucket/x")
    err = capsys.readouterr().err
    assert "INFO deswm.test: at s3://" in err and "sekrit-value-9" not in err


def test_skip_events_leaves_one_kind_out_of_text_logs(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(logging.INFO, "text")
    log = logging.getLogger("deswm.test")
    with skip_events("cycle_finished"):
        log.info("summary", extra={"event": "cycle_finished"})
        log.info("other")
    log.info("summary again", extra={"event": "cycle_finished"})
    err = capsys.readouterr().err
    assert "summary" not in err.splitlines()[0]
    assert "other" in err and "summary again" in err


def test_missing_structlog_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "structlog", None)
    with pytest.raises(ConfigError) as caught:
        setup_logging(logging.INFO, "json")
    assert "pip install 'deswm[json-logs]'" in str(caught.value)
