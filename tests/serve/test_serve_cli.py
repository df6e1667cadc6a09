"""``deswm serve``: the command runs the service, refuses unsafe binds, names a missing extra."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from deswm.cli import main
from deswm.demo import run_demo


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("serve-demo")
    run_demo(directory, files=50, echo=lambda _: None)
    return directory


def first_row(demo_dir: Path) -> tuple[str, str, bytes]:
    engine = sa.create_engine(f"sqlite:///{demo_dir / 'source.sqlite3'}")
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT uid, created_at, file_location FROM files ORDER BY created_at LIMIT 1")
        ).one()
    engine.dispose()
    created = str(row.created_at).replace(" ", "T") + "Z"
    return row.uid, created, (demo_dir / row.file_location).read_bytes()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_deswm_serve_serves_until_sigterm(demo_dir: Path) -> None:
    uid, created_at, data = first_row(demo_dir)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("DESWM_SERVE_TOKEN", None)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deswm",
            "serve",
            "-c",
            str(demo_dir / "deswm.toml"),
            "--port",
            f"{port}",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "deswm serve did not start"
            time.sleep(0.1)
        response = httpx.get(f"{base}/files/{uid}", params={"created_at": created_at})
        assert response.status_code == 200
        assert response.content == data
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status shows it.
    assert process.returncode in (0, -signal.SIGTERM), err.decode()
    assert b"Application shutdown complete" in err


def test_a_public_host_without_a_token_is_refused(
    demo_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DESWM_SERVE_TOKEN", raising=False)
    code = main(["serve", "-c", str(demo_dir / "deswm.toml"), "--host", "0.0.0.0"])
    err = capsys.readouterr().err
    assert code == 2
    assert "DESWM_SERVE_TOKEN" in err
    assert "--insecure-no-auth" in err


def test_a_missing_extra_is_named(
    demo_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [m for m in sys.modules if m == "deswm.serve" or m.startswith("deswm.serve.")]:
        monkeypatch.delitem(sys.modules, name)
    for name in [m for m in sys.modules if m == "starlette" or m.startswith("starlette.")]:
        monkeypatch.setitem(sys.modules, name, None)  # None: the import fails
    monkeypatch.setitem(sys.modules, "starlette", None)
    code = main(["serve", "-c", str(demo_dir / "deswm.toml")])
    err = capsys.readouterr().err
    assert code == 2
    assert "pip install 'deswm[serve]'" in err
    assert "starlette" in err
