"""benchmarks/serve_load.py runs end to end on tiny numbers (no timing assertions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_serve_load_smoke() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.serve_load",
            "--files",
            "20",
            "--requests",
            "100",
            "--clients",
            "5",
            "--big-mb",
            "2",
            "--big-clients",
            "2",
            "--generator",
            "httpx",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["requests"] == 100
    assert result["errors"] == 0
    assert result["requests_per_second"] > 0
    assert result["p99_ms"] >= result["p50_ms"] > 0
    assert result["server_cpu_seconds_per_1000_requests"] > 0
    assert result["server_peak_rss_during_load_mib"] >= result["server_rss_before_load_mib"] > 0
    assert result["server_peak_rss_during_big_mib"] > 0
