"""Running every partition at once: threads and processes give the same archive."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path

import pytest

from deswm._config import load_config
from deswm._demo import run_demo
from deswm._model import Window
from deswm._partitions import run_partitions

NOW = datetime(2024, 3, 10, 15, tzinfo=UTC)


def prepare(root: Path, partitions: int) -> Path:
    run_demo(root, files=60, echo=lambda _: None, now=NOW)  # config, source table, files
    config = root / "deswm.toml"
    text = config.read_text().replace('pipeline = "demo"', 'pipeline = "parts"')
    text = text.replace('initial = "2024-02-24"', 'initial = "2024-02-01"')
    config.write_text(text + f"\n[run]\npartitions = {partitions}\n")
    return config


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_partitions_together_archive_every_file_once(tmp_path: Path, kind: str) -> None:
    config = prepare(tmp_path, 3)
    executor = (
        ThreadPoolExecutor(3)
        if kind == "threads"
        else ProcessPoolExecutor(3, mp_context=get_context("spawn"))
    )
    with executor:
        results = run_partitions(config, executor)
    assert [r.key.partition for r in results] == [0, 1, 2]
    assert all(r.watermark_after == results[0].watermark_after for r in results)
    loaded = load_config(config)
    archive = loaded.build_archive()
    source = loaded.build_orchestrator().source
    rows = list(source.iter_records(Window(results[0].window.start, results[0].watermark_after)))
    assert len(rows) == 60
    assert sum(r.files for r in results) == len(rows)
    assert all(r.files for r in results)
    for row in rows:
        assert archive.exists(row.uid, row.created_at)


def test_unknown_partition_is_a_config_error(tmp_path: Path) -> None:
    from deswm._errors import ConfigError

    config = prepare(tmp_path, 2)
    with pytest.raises(ConfigError, match="partition"):
        run_partitions(config, ThreadPoolExecutor(1), partitions=[5])
