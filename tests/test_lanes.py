"""LaneBatch: a lane's rows, the first ``limit`` in memory and the rest in a spill file.

The rows come back in the order they were added, with every string intact (the spill
file is JSON lines, so uids and locations with newlines, quotes, non-BMP characters or
lone surrogates must survive it), across a pickle round trip to a lane process, and the
spill file goes away when the batch is discarded.
"""

from __future__ import annotations

import json
import pickle
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from deswm._lanes import LaneBatch
from deswm._model import SourceRecord

START = datetime(2024, 5, 10, tzinfo=UTC)

ODD = [
    "plain",
    "new\nline",
    "carriage\rreturn\r\n",
    'quote " and \\ backslash',
    "tab\tand\x00nul",
    "ünïcödé ☃ 日本",
    "astral 𝄞 🙂",
    "lone \udc80 surrogate",
    "high \ud800 alone",
    "\u2028line separator\u2029",
    "",
    " ",
]


def rows(count: int) -> list[SourceRecord]:
    """``count`` rows with odd uids and locations, odd sizes and microsecond times."""
    return [
        SourceRecord(
            f"{ODD[i % len(ODD)]}-{i}",
            START + timedelta(microseconds=i * 1_234_567 + 1),
            f"/data/{ODD[(i + 3) % len(ODD)]}/{i}",
            None if i % 4 == 0 else i * 1000,
        )
        for i in range(count)
    ]


def spill_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("deswm-rows-*"))


@pytest.mark.parametrize("limit", [0, 1, 3, 50, 100])
def test_rows_come_back_in_order_whatever_the_bound(tmp_path: Path, limit: int) -> None:
    added = rows(50)
    batch = LaneBatch(limit, str(tmp_path))
    for record in added:
        batch.add(record)
    batch.seal()
    assert list(batch.records()) == added
    assert len(batch) == 50
    assert batch.in_memory == (min(limit, 50) if limit else 50)
    assert batch.spilled == 50 - batch.in_memory
    assert len(spill_files(tmp_path)) == (1 if batch.spilled else 0)
    batch.discard()
    assert spill_files(tmp_path) == []


def test_the_rows_in_memory_never_exceed_the_bound(tmp_path: Path) -> None:
    batch = LaneBatch(3, str(tmp_path))
    for n, record in enumerate(rows(40), start=1):
        batch.add(record)
        assert batch.in_memory == min(n, 3)
        assert len(batch) == n
    batch.discard()


def test_the_spill_file_is_json_lines_of_plain_data(tmp_path: Path) -> None:
    added = rows(len(ODD) + 1)
    batch = LaneBatch(1, str(tmp_path))
    for record in added:
        batch.add(record)
    batch.seal()
    assert batch.path is not None
    path = Path(batch.path)
    assert path.name.startswith("deswm-rows-") and path.suffix == ".jsonl"
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == len(added)  # one line per spilled row
    first = added[1]
    assert json.loads(lines[0]) == [
        first.uid,
        (first.created_at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1),
        first.location,
        first.size,
    ]
    assert all(line.isascii() for line in lines)  # escaped: no encoding can fail
    batch.discard()


def test_odd_strings_survive_the_spill_and_a_pickle_round_trip(tmp_path: Path) -> None:
    added = rows(3 * len(ODD))
    batch = LaneBatch(2, str(tmp_path))
    for record in added:
        batch.add(record)
    batch.seal()
    copy = pickle.loads(pickle.dumps(batch))  # a lane process on this machine
    assert copy.path == batch.path and copy.in_memory == 2  # the file, not the rows
    assert list(copy.records()) == added
    copy.discard()  # the lane removes the file it read
    assert spill_files(tmp_path) == []
    batch.discard()  # and the coordinator's own discard is then a no-op


def test_a_portable_batch_carries_its_spilled_rows_inline(tmp_path: Path) -> None:
    """Dask or a given executor: the lane may run where the spill folder is not visible."""
    added = rows(30)
    batch = LaneBatch(4, str(tmp_path))
    for record in added:
        batch.add(record)
    batch.seal(portable=True)
    sent = pickle.dumps(batch)
    assert batch.path is not None and Path(batch.path).exists()  # the coordinator's copy
    batch.discard()  # the coordinator settles the bucket: the file is gone...
    copy = pickle.loads(sent)
    assert copy.path is None and (copy.in_memory, copy.spilled) == (4, 26)
    assert list(copy.records()) == added  # ...the lane has every row anyway
    assert list(copy.records()) == added  # and can read them again (a retried lane)


def test_a_portable_batch_sends_its_spilled_rows_compressed(tmp_path: Path) -> None:
    """The travelling rows are the spill file's lines, zstd-compressed: a Dask job (and
    the coordinator while it serializes one) holds a fraction of the rows' size, where
    it held them as Python lists before. Random hex uids and paths: the worst case."""
    rng = random.Random(7)
    added = [
        SourceRecord(
            f"{rng.getrandbits(128):032x}{i % 10_000:04d}",
            START + timedelta(microseconds=rng.getrandbits(40)),
            f"/data/archive/2024/01/{rng.getrandbits(128):032x}/{rng.getrandbits(128):032x}.bin",
            rng.randrange(100, 1_000_000),
        )
        for i in range(20_000)
    ]
    inline, portable = LaneBatch(0), LaneBatch(10, str(tmp_path))
    for record in added:
        inline.add(record)
        portable.add(record)
    portable.seal(portable=True)
    spill_size = Path(str(portable.path)).stat().st_size
    sent = pickle.dumps(portable)
    portable.discard()
    assert len(sent) < 0.7 * min(spill_size, len(pickle.dumps(inline)))
    copy = pickle.loads(sent)
    assert list(copy.records()) == added


def test_discard_is_idempotent_and_a_discarded_batch_refuses_to_lose_rows(
    tmp_path: Path,
) -> None:
    batch = LaneBatch(2, str(tmp_path))
    for record in rows(5):
        batch.add(record)
    batch.discard()  # before seal: the open file is closed and removed
    batch.discard()
    assert spill_files(tmp_path) == []
    with pytest.raises(LookupError, match="3 spilled row"):
        list(batch.records())


def test_an_unsealed_batch_with_an_open_spill_file_is_not_sent(tmp_path: Path) -> None:
    batch = LaneBatch(1, str(tmp_path))
    for record in rows(3):
        batch.add(record)
    with pytest.raises(RuntimeError, match="sealed"):
        pickle.dumps(batch)
    batch.discard()


def test_no_bound_and_an_empty_batch_create_no_file(tmp_path: Path) -> None:
    unbounded = LaneBatch(0, str(tmp_path))
    for record in rows(1000):
        unbounded.add(record)
    empty = LaneBatch(1, str(tmp_path))
    empty.seal()
    assert list(empty.records()) == []
    assert (unbounded.spilled, unbounded.in_memory, unbounded.path) == (0, 1000, None)
    assert spill_files(tmp_path) == []
