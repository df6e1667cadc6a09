"""What ``deswm`` shows operators, run as the real process: output, metrics, logs, health."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deswm._demo import run_demo

SRC = Path(__file__).resolve().parent.parent / "src"


def deswm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    env.pop("DESWM_CONFIG", None)
    done = subprocess.run(
        [sys.executable, "-m", "deswm", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    run_demo(tmp_path, files=120, echo=lambda _: None)
    config = tmp_path / "deswm.toml"
    deswm("watermark", "adjust", "-c", str(config), "--days-offset", "-2")
    return config


def test_a_replay_shows_what_it_found_once(demo: Path) -> None:
    done = deswm("run", "-c", str(demo))
    out = done.stdout
    assert "unchanged" in out and "nothing changed: every file was already archived" in out
    assert "0 new, 0 rewritten" in out
    assert ".000000" not in out
    assert "bytes out" not in out
    assert out.count("watermark:") == 1
    # The summary is printed once: the log's copy of it is left out of a terminal.
    assert "cycle done" not in done.stderr
    assert "committed demo/archived/0 bucket" in done.stderr


def test_delay_and_behind_are_named_apart(demo: Path) -> None:
    stats = json.loads(deswm("stats", "-c", str(demo), "--json").stdout)
    assert stats["delay_seconds"] == 7 * 86400
    assert stats["behind_seconds"] == 2 * 86400
    assert not [key for key in stats if "lag" in key]
    mark = json.loads(deswm("watermark", "get", "-c", str(demo), "--json").stdout)
    assert mark["delay_seconds"] == 7 * 86400 and "lag_seconds" not in mark
    text = deswm("stats", "-c", str(demo)).stdout
    rows = dict(line.strip().split(": ", 1) for line in text.splitlines() if ": " in line)
    assert (rows["delay"].strip(), rows["behind"].strip()) == ("7 days", "2 days")
    assert "lag" not in text


def test_json_logs_textfile_and_health_file(demo: Path, tmp_path: Path) -> None:
    textfile, health = tmp_path / "deswm.prom", tmp_path / "healthy"
    done = deswm(
        "--log-format", "json", "run", "-c", str(demo),
        "--metrics-textfile", str(textfile), "--health-file", str(health),
    )  # fmt: skip
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    events = [line["event"] for line in lines]
    assert events.count("bucket_committed") == 2 and events[-1] == "cycle_finished"
    assert all({"ts", "level", "event", "message"} <= set(line) for line in lines)
    assert lines[-1]["pipeline"] == "demo" and lines[-1]["unchanged"] == lines[-1]["files"]
    metrics = textfile.read_text()
    assert 'des_watermark_lag_seconds{partition="0",pipeline="demo"} 0.0' in metrics
    assert 'des_watermark_behind_rows{partition="0",pipeline="demo"} 0.0' in metrics
    assert "des_last_success_timestamp_seconds{" in metrics
    assert health.exists()


def test_monitoring_section_of_the_config(demo: Path) -> None:
    text = demo.read_text() + (
        '\n[monitoring]\nlog_format = "json"\nhealth_file = "healthy"\n'
        'metrics_textfile = "out.prom"\n'
    )
    demo.write_text(text)
    done = deswm("run", "-c", str(demo))
    assert json.loads(done.stderr.splitlines()[-1])["event"] == "cycle_finished"
    assert (demo.parent / "healthy").exists()  # relative to the config file
    assert "des_migration_files_total" in (demo.parent / "out.prom").read_text()


def test_a_bad_textfile_is_a_usage_error(demo: Path, tmp_path: Path) -> None:
    done = deswm("run", "-c", str(demo), "--metrics-textfile", str(tmp_path / "x.txt"), check=False)
    assert done.returncode == 2
    assert "does not end in .prom" in done.stderr and "Traceback" not in done.stderr


class _Gateway(http.server.BaseHTTPRequestHandler):
    received: list[tuple[str, bytes]] = []

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.received.append((self.path, body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def gateway() -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    received: list[tuple[str, bytes]] = []
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), type("Handler", (_Gateway,), {"received": received})
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


def test_metrics_are_pushed_by_a_job_that_exits(
    demo: Path, gateway: tuple[str, list[tuple[str, bytes]]]
) -> None:
    url, received = gateway
    deswm("run", "-c", str(demo), "--metrics-push", url, "--metrics-job", "nightly")
    assert len(received) == 3  # two buckets and the end of the cycle
    path, body = received[-1]
    assert path == "/metrics/job/nightly/partition/0/pipeline/demo"
    assert 'des_watermark_lag_seconds{partition="0",pipeline="demo"} 0.0' in body.decode()


def test_progress_without_a_terminal_is_plain_lines(demo: Path) -> None:
    done = deswm("run", "-c", str(demo), "--progress", "--progress-interval", "0.000001")
    assert "\r" not in done.stderr
    progress = [line for line in done.stderr.splitlines() if "progress demo/archived/0" in line]
    assert progress and "files/s" in progress[-1]
