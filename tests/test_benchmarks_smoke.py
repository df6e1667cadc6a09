"""The benchmark harness runs end to end (``python -m benchmarks --smoke``).

It checks the harness, not performance: tiny data, every step, the JSON shape. There
are no timing assertions (timings on shared machines belong to the benchmark's report).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURE_KEYS = {"id", "figure", "deswm", "baseline", "ratio", "target", "met", "unit", "note"}


def _run_module(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m module args`` from the repository, with the benchmarks importable."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    env.pop("DESWM_CRASH_AT", None)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_smoke_run_writes_every_figure(tmp_path: Path) -> None:
    results = tmp_path / "results"
    done = _run_module(
        "benchmarks", "--smoke", "--work-dir", str(tmp_path / "work"), "--results-dir", str(results)
    )
    assert done.returncode == 0, done.stderr[-4000:]
    files = list(results.glob("bench-*-smoke.json"))
    assert len(files) == 1, files
    result = json.loads(files[0].read_text())

    assert result["smoke"] is True
    assert {"nproc", "memory_gib", "python", "load_average_start"} <= set(result["machine"])
    assert result["dataset"]["files"] == 300
    runs = result["runs"]
    for key in ("python_loop", "deswm_sqlite", "lane", "per_record_sqlite", "partitions"):
        assert runs[key]["files"] == 300, key
    # The partition filter runs in SQL: the two partitions fetch the window once between
    # them; with the filter in Python each fetches all of it.
    assert sum(runs["partitions"]["source_rows"]) == 300
    assert runs["partitions_python_filter"]["source_rows"] == [300, 300]
    assert runs["deswm_sqlite"]["verified"] > 0
    assert runs["deswm_sqlite"]["source_rows_updated"] == 0
    assert runs["per_record_sqlite"]["source_rows_updated"] == 300
    assert runs["deswm_sqlite"]["sql"]["statements"] > 0
    assert [r["rows"] for r in runs["scaling"]] == [200, 400, 800]
    assert runs["pending_stats"]["statements"] == 1

    figures = {row["id"]: row for row in result["figures"] if row["id"]}
    assert set(figures) == {f"P{n}" for n in range(1, 9)} | {"P1b"}
    for row in result["figures"]:
        assert set(row) == FIGURE_KEYS
        assert row["met"] in (True, False, None)
    for ident in ("P1b", "P2", "P5", "P6", "P8"):
        assert figures[ident]["met"] is not None, ident
    assert figures["P3"]["met"] is None  # PostgreSQL figures need --db postgresql
    table = done.stdout
    assert "| P1 " in table and "| P8 " in table and "met?" in table


def test_engine_memory_runs_a_cycle_per_bound_and_leaves_no_spill_file(tmp_path: Path) -> None:
    """The harness of benchmarks.engine_memory (no memory assertion: that is the report's).
    It exits non-zero if a cycle archives fewer rows than generated or leaves a spill file."""
    spill = tmp_path / "spill"
    spill.mkdir()
    options = ["--rows", "3000", "--bounds", "0,100", "--spill-dir", str(spill)]
    done = _run_module("benchmarks.engine_memory", *options)
    assert done.returncode == 0, done.stderr[-4000:]
    rows = [
        line for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line
    ]
    assert [row.split("|")[1].strip() for row in rows[1:]] == ["0", "100"]
    assert list(spill.iterdir()) == []


def test_source_stream_times_the_stream_and_the_coordinators_path_on_sqlite() -> None:
    """benchmarks.source_stream on the embedded default (no server needed): both measures
    go over every row of the generated table."""
    options = ["--rows", "2000", "--days", "2", "--repeat", "1", "--only", "sqlite"]
    done = _run_module("benchmarks.source_stream", *options, "--coordinator")
    assert done.returncode == 0, done.stderr[-4000:]
    lines = done.stdout.splitlines()
    assert [line.split()[:3] for line in lines] == [
        ["sqlite", "stream", "2,000"],
        ["sqlite", "coordinator", "2,000"],
    ]
