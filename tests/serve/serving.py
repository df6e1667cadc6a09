"""Helpers and fixtures of the service tests: packed files, a real uvicorn server in a thread.

Test modules import the fixtures they use from here (a ``conftest.py`` in this folder
would shadow the suite's root ``conftest`` that other test modules import from).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from deswm.archive import Archive  # noqa: E402
from deswm.model import SourceRecord  # noqa: E402
from deswm.packer import DesPacker  # noqa: E402
from deswm.routing import DesRouter  # noqa: E402
from deswm.serve import create_app  # noqa: E402

DAY = datetime(2024, 5, 17, tzinfo=UTC)
ROUTER = DesRouter(4)
BIG_THRESHOLD = 1024 * 1024


def at(seconds: float) -> datetime:
    return DAY + timedelta(seconds=seconds)


def noise(seed: object, size: int) -> bytes:
    return random.Random(str(seed)).randbytes(size)


FILES: dict[str, tuple[datetime, bytes]] = {
    "hello.txt": (at(1), b"hello, archive\n" * 40),  # compressed, inline
    "dir/a b ż.json": (at(2), b'{"k": "v"}'),
    "raw.bin": (at(3), noise("raw", BIG_THRESHOLD - 100)),  # stored raw, inline
    "big.bin": (at(4), noise("big", 3 * BIG_THRESHOLD + 7)),  # _bigFiles/
}


def pack(url: str, storage_options: dict[str, Any] | None = None) -> None:
    packer = DesPacker(
        url, ROUTER, storage_options=storage_options, big_file_threshold=BIG_THRESHOLD, workers=0
    )
    with packer.open_bucket(DAY) as writer:
        for uid, (created_at, data) in FILES.items():
            writer.add(SourceRecord(uid, created_at, f"/src/{uid}"), data)
        writer.publish()


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


@pytest.fixture(scope="module")
def archive_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = str(tmp_path_factory.mktemp("serve") / "archive")
    pack(url)
    return url


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
