"""Helpers and fixtures of the service tests: a real uvicorn server in a thread (the packed
files and the ``archive_url`` fixture come from ``packed_files``, shared with the
``Archive.open`` tests).

Test modules import the fixtures they use from here (a ``conftest.py`` in this folder
would shadow the suite's root ``conftest`` that other test modules import from).
"""
# ruff: noqa: F811 - the fixtures imported from packed_files are redefined as parameters

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest

pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from deswm._archive import Archive  # noqa: E402
from deswm.serve import create_app  # noqa: E402
from packed_files import FILES, ROUTER, archive_url, at, pack  # noqa: E402, F401 - re-exported


class Server:
    """uvicorn serving ``app`` on a free loopback port until :meth:`stop`."""

    def __init__(self, app: Any) -> None:
        self.app = app
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def stop(self) -> None:
        self.client.close()
        self._server.should_exit = True
        self._thread.join(10)


def path(uid: str) -> str:
    from urllib.parse import quote

    return f"/files/{quote(uid, safe='')}"


def query(created_at: datetime) -> dict[str, str]:
    return {"created_at": created_at.isoformat()}


@pytest.fixture
def start() -> Iterator[Callable[..., Server]]:
    """Start a server over an archive (``create_app`` options pass through)."""
    servers: list[Server] = []

    def starting(archive: Archive, **options: Any) -> Server:
        server = Server(create_app(archive, **options))
        servers.append(server)
        return server

    yield starting
    for server in servers:
        server.stop()


@pytest.fixture
def server(archive_url: str, start: Callable[..., Server]) -> Server:
    return start(Archive(archive_url, ROUTER))
