"""Fixtures of the service tests: a real uvicorn server on 127.0.0.1 over a packed archive."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")

from serving import ROUTER, Server, pack

from deswm.archive import Archive
from deswm.serve import create_app


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
