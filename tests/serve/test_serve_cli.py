"""``deswm serve``: the command runs the service, refuses unsafe binds, names a missing extra."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from deswm._demo import run_demo
from deswm.cli import main


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


def serve_once(config: Path, *options: str, token: str | None = None) -> tuple[int | None, str]:
    """Run ``deswm serve``, GET the demo's first file, SIGTERM it: (exit status, stderr).

    With ``token``, the service gets it in its environment, a GET without it must be
    refused and the file is read with it.
    """
    uid, created_at, data = first_row(config.parent)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("DESWM_SERVE_TOKEN", None)
    headers = {}
    if token is not None:
        env["DESWM_SERVE_TOKEN"] = token
        headers["Authorization"] = f"Bearer {token}"
    process = subprocess.Popen(
        [sys.executable, "-m", "deswm", "serve", "-c", str(config), "--port", f"{port}", *options],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "deswm serve did not start"
            time.sleep(0.1)
        params = {"created_at": created_at}
        if token is not None:
            assert httpx.get(f"{base}/files/{uid}", params=params).status_code == 401
        response = httpx.get(f"{base}/files/{uid}", params=params, headers=headers)
        assert response.status_code == 200
        assert response.content == data
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    return process.returncode, err.decode()


def archive_only_config(demo_dir: Path) -> Path:
    """A config file beside the demo's with only ``[archive]``: what a reader needs."""
    config = demo_dir / "serve-only.toml"
    config.write_text('[archive]\nurl = "archive"\nn_bits = 4\n')
    return config


def test_deswm_serve_serves_until_sigterm(demo_dir: Path) -> None:
    code, err = serve_once(demo_dir / "deswm.toml")
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status shows it.
    assert code in (0, -signal.SIGTERM), err
    assert "Application shutdown complete" in err


def test_deswm_serve_needs_only_the_archive_section(demo_dir: Path) -> None:
    code, err = serve_once(archive_only_config(demo_dir))
    assert code in (0, -signal.SIGTERM), err


def test_several_workers_share_the_port(demo_dir: Path) -> None:
    token = "a-test-token-of-enough-length"
    code, err = serve_once(archive_only_config(demo_dir), "--workers", "2", token=token)
    assert code in (0, -signal.SIGTERM), err
    assert len(set(re.findall(r"Started server process \[(\d+)\]", err))) == 2, err


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
