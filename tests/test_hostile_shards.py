"""Hostile shard bytes (G18): any bytes give the entry or ``CorruptShardError``, in bounded
memory, and the shard's own bytes can never switch a checksum off.

Two kinds of test: decompression bombs read through :class:`~deswm._archive.Archive` in a
child process whose peak RSS is measured, and a hypothesis fuzz of byte flips and
truncations of a real shard (every codec, a big file, deswm and foreign meta) read back
through ``Archive.get``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lz4.frame
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deswm._archive import Archive
from deswm._container import ShardWriter, build_shard, make_meta
from deswm._errors import CorruptShardError, NotArchivedError, UnverifiedEntryError
from deswm._routing import DesRouter

DAY = datetime(2024, 5, 17, tzinfo=UTC)
ROUTER = DesRouter(4)
SHARD = "20240517_0_0000.des"  # uids "16", "32", ... (multiples of 16) route here
GIB = 2**30


# --- decompression bombs -----------------------------------------------------------------


def zstd_rle_frame(size: int, *, content_size: bool) -> bytes:
    """A zstd frame of ``size`` zero bytes from 4-byte RLE blocks (49 KB for 1.5 GiB)."""
    header = struct.pack("<I", 0xFD2FB528)
    header += (b"\xc0" if content_size else b"\x00") + bytes((7 << 3,))  # 128 KiB window
    if content_size:
        header += struct.pack("<Q", size)
    block, full = 128 * 1024, (128 * 1024 << 3) | (1 << 1)
    count, rest = divmod(size, block)
    if rest == 0:
        count, rest = count - 1, block
    blocks = struct.pack("<I", full)[:3] + b"\0"
    last = struct.pack("<I", (rest << 3) | (1 << 1) | 1)[:3] + b"\0"
    return header + blocks * count + last


def lz4_zero_frame(size_mib: int) -> bytes:
    """An lz4 frame of ``size_mib`` MiB of zeros without a content size (independent
    4 MiB blocks, so one compressed block repeated is a valid frame)."""
    one: bytes = lz4.frame.compress(
        bytes(4 * 2**20),
        block_size=lz4.frame.BLOCKSIZE_MAX4MB,
        block_linked=False,
        store_size=False,
        content_checksum=False,
    )
    header, block, end = one[:7], one[7:-4], one[-4:]
    return header + block * (size_mib // 4) + end


def bomb_shard() -> bytes:
    """One honest entry, then members that expand far beyond what the index declares."""
    buffer = io.BytesIO()
    writer = ShardWriter(buffer)
    honest = b"honest bytes"
    meta = make_meta(hashlib.sha256(honest).hexdigest(), DAY)
    writer.add("0", honest, codec="none", size=len(honest), meta=meta)
    bombs = [
        ("16", zstd_rle_frame(GIB * 3 // 2, content_size=True), "zstd", 1000),
        ("32", zstd_rle_frame(GIB * 3 // 2, content_size=False), "zstd", 1000),
        ("48", zstd_rle_frame(GIB * 3 // 2, content_size=True), "zstd", GIB * 3 // 2),
        ("64", lz4_zero_frame(768), "lz4", 1000),
    ]
    for uid, frame, codec, size in bombs:
        fake = make_meta(hashlib.sha256(bytes(size if size < GIB else 0)).hexdigest(), DAY)
        writer.add(uid, frame, codec=codec, size=size, meta=fake)  # type: ignore[arg-type]
    writer.finish()
    return buffer.getvalue()


CHILD = textwrap.dedent(
    """
    import json, resource, sys
    from datetime import datetime, timezone
    from deswm._archive import Archive
    from deswm._errors import CorruptShardError
    from deswm._packer import DesPacker
    from deswm._model import SourceRecord
    from deswm._routing import DesRouter

    url, shard = sys.argv[1], sys.argv[2]
    day = datetime(2024, 5, 17, tzinfo=timezone.utc)
    router = DesRouter(4)
    archive = Archive(url, router, cache_size=0)
    assert archive.get("0", day) == b"honest bytes"  # everything imported and warm
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {}
    for uid in ("16", "32", "48", "64"):
        try:
            archive.get(uid, day)
            out[uid] = "returned bytes"
        except CorruptShardError as exc:
            out[uid] = exc.reason
    try:
        archive.verify(shard)
        out["verify"] = "passed"
    except CorruptShardError as exc:
        out["verify"] = exc.reason
    # A merge on replay copies the old entries verbatim: it must not decode them.
    packer = DesPacker(url, router)
    with packer.open_bucket(day) as writer:
        writer.add(SourceRecord("80", day, "/src/80"), b"new file")
        writer.publish()
    out["merged"] = Archive(url, router).get("80", day).decode()
    out["growth_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    print(json.dumps(out))
    """
)


def test_decompression_bombs_fail_in_bounded_memory(tmp_path: Path) -> None:
    """A 49 KB member declaring 1.5 GiB once made a get peak at 1.6 GB of RSS."""
    archive_dir = tmp_path / "archive"
    archive_dir.mkdir()
    (archive_dir / SHARD).write_bytes(bomb_shard())
    assert (archive_dir / SHARD).stat().st_size < 4 * 2**20
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(archive_dir), SHARD],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert "the frame declares 1610612736 bytes, the index 1000" in out["16"]
    assert "more than the 1000 bytes the index declares" in out["32"]
    assert "more than the 1073741824 this reader decodes" in out["48"]
    assert "more than the 1000 bytes the index declares" in out["64"]
    assert "does not decode" in out["verify"]
    assert out["merged"] == "new file"
    assert out["growth_mib"] < 200, out


# --- fuzz: byte flips and truncations through Archive.get ----------------------------------


def _meta(data: bytes) -> bytes:
    return make_meta(hashlib.sha256(data).hexdigest(), DAY)


BIG = b"big file bytes " * 40
BIG_SHA = hashlib.sha256(BIG).hexdigest()
FILES: dict[str, bytes] = {
    "16": b"zstd entry " * 60,
    "32": b"stored as is",
    "48": b"lz4 entry " * 50,
    "64": BIG,
    "80": b"foreign, no meta",
    "96": b"",
}


def fuzz_shard() -> bytes:
    buffer = io.BytesIO()
    writer = ShardWriter(buffer)
    built = build_shard([("16", FILES["16"], "zstd"), ("48", FILES["48"], "lz4")])
    from deswm._container import read_shard

    parsed = read_shard(built)
    for uid in ("16", "48"):
        entry = parsed.get(uid)
        assert entry is not None
        stored = built[entry.offset : entry.offset + entry.length]
        writer.add(uid, stored, codec=entry.codec, size=entry.size, meta=_meta(FILES[uid]))
    writer.add("32", FILES["32"], codec="none", size=len(FILES["32"]), meta=_meta(FILES["32"]))
    writer.add_big("64", BIG_SHA, size=len(BIG), meta=_meta(BIG))
    writer.add("80", FILES["80"], codec="none", size=len(FILES["80"]))
    writer.add("96", b"", codec="none", size=0, meta=_meta(b""))
    writer.finish()
    return buffer.getvalue()


ORIGINAL = fuzz_shard()

damage = st.one_of(
    st.lists(
        st.tuples(st.integers(0, len(ORIGINAL) - 1), st.integers(1, 255)), min_size=1, max_size=4
    ).map(lambda flips: ("flip", flips)),
    st.integers(0, len(ORIGINAL) - 1).map(lambda n: ("truncate", n)),
    st.tuples(st.integers(0, len(ORIGINAL) - 1), st.integers(1, 64)).map(lambda cut: ("cut", cut)),
)


def damaged(how: tuple[str, Any]) -> bytes:
    kind, what = how
    data = bytearray(ORIGINAL)
    if kind == "flip":
        for at, mask in what:
            data[at] ^= mask
        return bytes(data)
    if kind == "truncate":
        return bytes(data[:what])
    at, length = what
    return bytes(data[:at] + data[at + length :])


def read_all(root: Path, allow_unverified: bool) -> dict[str, object]:
    archive = Archive(str(root), ROUTER, cache_size=0, allow_unverified=allow_unverified)
    out: dict[str, object] = {}
    for uid in FILES:
        try:
            out[uid] = archive.get(uid, DAY)
        except CorruptShardError as exc:
            out[uid] = type(exc)
        except NotArchivedError:
            out[uid] = NotArchivedError
    return out


@pytest.fixture(scope="module")
def fuzz_root() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "_bigFiles").mkdir()
        (root / "_bigFiles" / BIG_SHA).write_bytes(BIG)
        yield root


def test_the_undamaged_fuzz_shard_reads_back(fuzz_root: Path) -> None:
    (fuzz_root / SHARD).write_bytes(ORIGINAL)
    strict = read_all(fuzz_root, allow_unverified=False)
    assert strict == {**FILES, "80": UnverifiedEntryError}
    assert read_all(fuzz_root, allow_unverified=True) == FILES


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(damage)
def test_damaged_shard_bytes_give_the_entry_or_corrupt_shard_error(
    fuzz_root: Path, how: tuple[str, object]
) -> None:
    """Flips (up to 4 bytes), truncations and cut-out ranges of a real shard: every uid
    reads back as its exact bytes or raises ``CorruptShardError``; a flipped uid name may
    make its entry not found. Nothing else escapes, and wrong bytes never come out."""
    data = damaged(how)
    temp = fuzz_root / ".next"
    temp.write_bytes(data)
    os.replace(temp, fuzz_root / SHARD)  # a new inode: no version token repeats
    for allow in (False, True):
        for uid, got in read_all(fuzz_root, allow_unverified=allow).items():
            if isinstance(got, bytes):
                # Entry "80" has no checksum: with allow_unverified its bytes are taken on
                # trust (documented); everything else is verified.
                if not (allow and uid == "80"):
                    assert got == FILES[uid], (uid, how)
                assert allow or uid != "80", "unverified bytes returned without opt-in"
            else:
                assert got in (CorruptShardError, UnverifiedEntryError, NotArchivedError)
                assert not (allow and got is UnverifiedEntryError), (uid, how)
