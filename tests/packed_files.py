"""One small packed archive for the tests that read archived files back (``Archive.open``
and the HTTP service): a compressed inline file, a uid that needs percent-encoding, a raw
inline file above 1 MiB (read in ranges, streamed) and a file in ``_bigFiles/``.

Test modules import what they use from here (``from packed_files import ...``).
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from deswm._model import SourceRecord
from deswm._packer import DesPacker
from deswm._routing import DesRouter

DAY = datetime(2024, 5, 17, tzinfo=UTC)
ROUTER = DesRouter(4)
MIB = 1024 * 1024
BIG_THRESHOLD = 4 * MIB


def at(seconds: float) -> datetime:
    return DAY + timedelta(seconds=seconds)


def noise(seed: object, size: int) -> bytes:
    return random.Random(str(seed)).randbytes(size)


FILES: dict[str, tuple[datetime, bytes]] = {
    "hello.txt": (at(1), b"hello, archive\n" * 40),  # compressed, inline
    "dir/a b ż.json": (at(2), b'{"k": "v"}'),
    "raw.bin": (at(3), noise("raw", 2 * MIB + 17)),  # stored raw (noise), inline
    "big.bin": (at(4), noise("big", 8 * MIB + 5)),  # _bigFiles/
}


def pack(
    url: str,
    files: dict[str, tuple[datetime, bytes]] = FILES,
    *,
    storage_options: dict[str, Any] | None = None,
    **options: Any,
) -> None:
    """Pack ``files`` into one bucket of ``DAY`` at ``url`` (``options``: for the packer)."""
    packer = DesPacker(
        url,
        ROUTER,
        storage_options=storage_options,
        big_file_threshold=BIG_THRESHOLD,
        workers=0,
        **options,
    )
    with packer.open_bucket(DAY) as writer:
        for uid, (created_at, data) in files.items():
            writer.add(SourceRecord(uid, created_at, f"/src/{uid}"), data)
        writer.publish()


@pytest.fixture
def archive_dir(tmp_path: Path) -> str:
    """A fresh copy of the archive for one test (it may damage or rewrite it)."""
    url = str(tmp_path / "archive")
    pack(url)
    return url


@pytest.fixture(scope="module")
def archive_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The archive shared by a module's tests that only read it."""
    url = str(tmp_path_factory.mktemp("packed") / "archive")
    pack(url)
    return url
