"""LaneStream: a lane reads its rows while the coordinator still routes them.

The rows come back in order with every string intact, also when the lane reads ahead of
the writer; a stream abandoned, removed, or left behind by a dead coordinator stops its
lane instead of leaving it waiting; the file holds plain data and goes away when the
coordinator discards it.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deswm._lane_stream import STREAM_CHUNK, LaneStream, StreamAbandoned, remove_orphans
from deswm._model import SourceRecord
from test_lanes import rows


def streams(folder: Path) -> list[Path]:
    return sorted(folder.glob("deswm-rows-*.stream"))


@pytest.mark.parametrize("chunk", [1, 3, 7, 50, STREAM_CHUNK])
def test_rows_come_back_in_order_whatever_the_frame(tmp_path: Path, chunk: int) -> None:
    added = rows(50)
    stream = LaneStream(str(tmp_path), chunk)
    for record in added:
        stream.add(record)
        assert stream.in_memory < chunk
    stream.seal()
    assert len(stream) == 50
    assert list(stream.records()) == added
    assert list(pickle.loads(pickle.dumps(stream)).records()) == added
    stream.discard()
    assert streams(tmp_path) == []


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.text(min_size=1), st.text(min_size=1), st.none() | st.integers(0, 2**62)),
        max_size=30,
    ),
    st.integers(1, 8),
)
def test_any_strings_survive_the_frames(
    tmp_path_factory: pytest.TempPathFactory,
    values: list[tuple[str, str, int | None]],
    chunk: int,
) -> None:
    folder = tmp_path_factory.mktemp("streams")
    added = [
        SourceRecord(uid, rows(1)[0].created_at, location, size) for uid, location, size in values
    ]
    stream = LaneStream(str(folder), chunk)
    for record in added:
        stream.add(record)
    stream.seal()
    assert list(pickle.loads(pickle.dumps(stream)).records()) == added
    stream.discard()


def test_a_lane_reads_the_rows_as_they_are_routed(tmp_path: Path) -> None:
    """The lane starts before any row exists and gets each frame while the writer is
    still routing the next ones (it does not wait for the end)."""
    added = rows(42)
    stream = LaneStream(str(tmp_path), 4)
    lane = pickle.loads(pickle.dumps(stream))  # as a lane process gets it
    got: list[SourceRecord] = []

    def read() -> None:
        for record in lane.records():
            got.append(record)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    for record in added:
        stream.add(record)
        time.sleep(0.002)
    deadline = time.monotonic() + 10
    while len(got) < 40 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    assert len(got) == 40  # every whole frame arrived before the stream was sealed
    stream.seal()
    reader.join(10)
    assert not reader.is_alive()
    assert got == added
    stream.discard()


def test_the_file_is_frames_of_plain_json(tmp_path: Path) -> None:
    stream = LaneStream(str(tmp_path), 2)
    for record in rows(3):
        stream.add(record)
    stream.seal()
    data = Path(stream.path).read_bytes()
    frames = []
    offset = 0
    while True:
        (length,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if length == 0:
            break
        frames.append(json.loads(data[offset : offset + length].decode("ascii")))
        offset += length
    assert offset == len(data)
    assert [len(frame[0]) for frame in frames] == [2, 1]
    uids, micros, locations, sizes = frames[0]
    assert uids == [r.uid for r in rows(2)]
    assert sizes == [None, 1000]
    assert all(isinstance(m, int) for m in micros) and locations[0].startswith("/data/")
    stream.discard()


def test_an_abandoned_stream_stops_its_lane_mid_bucket(tmp_path: Path) -> None:
    stream = LaneStream(str(tmp_path), 2)
    lane = pickle.loads(pickle.dumps(stream))
    for record in rows(5):
        stream.add(record)
    records = lane.records()
    assert [next(records) for _ in range(4)] == rows(4)  # two whole frames
    stream.discard()  # the coordinator abandons the bucket before sealing it
    with pytest.raises(StreamAbandoned, match="abandoned"):
        next(records)
    assert streams(tmp_path) == []


def test_a_stream_removed_without_its_mark_stops_its_lane(tmp_path: Path) -> None:
    """The removal alone says it (a full disk may refuse the abandon mark)."""
    stream = LaneStream(str(tmp_path), 2)
    lane = pickle.loads(pickle.dumps(stream))
    stream.add(rows(1)[0])
    ended: list[BaseException] = []

    def read() -> None:
        try:
            list(lane.records())
        except StreamAbandoned as exc:
            ended.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(0.05)  # the lane waits for a frame
    os.unlink(stream.path)
    reader.join(10)
    assert not reader.is_alive()
    assert "removed" in str(ended[0])
    stream.discard()  # idempotent: the file is gone already


def test_a_stream_removed_before_its_lane_began_stops_it(tmp_path: Path) -> None:
    stream = LaneStream(str(tmp_path))
    lane = pickle.loads(pickle.dumps(stream))
    stream.discard()
    stream.discard()
    with pytest.raises(StreamAbandoned, match="removed before the lane began"):
        list(lane.records())


def test_a_lane_stops_waiting_when_the_coordinator_is_gone(tmp_path: Path) -> None:
    """A stream whose coordinator process has ended (not this lane's parent)."""
    stream = LaneStream(str(tmp_path), 5)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    orphan = pickle.loads(pickle.dumps(stream))
    orphan.owner = int(gone.stdout)
    with pytest.raises(StreamAbandoned, match=f"process {orphan.owner}"):
        list(orphan.records())
    stream.discard()


_KILLED_COORDINATOR = """
import multiprocessing, os, sys, time
sys.path[:0] = {paths!r}
from deswm._lane_stream import LaneStream, StreamAbandoned
from test_lanes import rows

def lane(stream, outcome):
    try:
        for _ in stream.records():
            pass
        result = "ended"
    except StreamAbandoned as exc:
        result = "abandoned: " + str(exc)
    with open(outcome, "w") as out:
        out.write(result)

if __name__ == "__main__":
    stream = LaneStream({folder!r}, 2)
    for record in rows(3):
        stream.add(record)
    process = multiprocessing.get_context("spawn").Process(target=lane, args=(stream, {outcome!r}))
    process.start()
    print(process.pid, flush=True)
    time.sleep(600)
"""


def test_a_killed_coordinator_leaves_no_lane_process_waiting(tmp_path: Path) -> None:
    """SIGKILL the coordinator mid-bucket: its lane process (a child, re-parented when the
    coordinator dies) gives up instead of waiting for rows forever."""
    outcome = tmp_path / "outcome.txt"
    script = tmp_path / "coordinator.py"
    tests = str(Path(__file__).parent)
    script.write_text(
        textwrap.dedent(
            _KILLED_COORDINATOR.format(
                paths=[tests, *sys.path], folder=str(tmp_path), outcome=str(outcome)
            )
        )
    )
    coordinator = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert coordinator.stdout is not None
    lane_pid = int(coordinator.stdout.readline())
    time.sleep(0.3)  # the lane has read the first frame and waits for more
    assert not outcome.exists()
    coordinator.send_signal(signal.SIGKILL)
    coordinator.wait(10)
    deadline = time.monotonic() + 20
    while not outcome.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert outcome.read_text() == f"abandoned: the coordinator (process {coordinator.pid}) is gone"
    while time.monotonic() < deadline:
        try:
            os.kill(lane_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"lane process {lane_pid} still runs")


def test_a_pickled_stream_carries_no_rows_and_writes_nothing(tmp_path: Path) -> None:
    stream = LaneStream(str(tmp_path), 10)
    for record in rows(3):
        stream.add(record)
    copy = pickle.loads(pickle.dumps(stream))
    assert (copy.path, copy.owner, copy.chunk, copy.in_memory) == (stream.path, os.getpid(), 10, 0)
    with pytest.raises(RuntimeError, match="no more rows"):
        copy.add(rows(1)[0])
    copy.discard()  # a lane's copy removes nothing
    assert streams(tmp_path) == [Path(stream.path)]
    stream.seal()
    assert list(copy.records()) == rows(3)
    stream.discard()
    assert streams(tmp_path) == []


def test_a_sealed_stream_refuses_rows_and_a_bad_chunk_is_refused(tmp_path: Path) -> None:
    stream = LaneStream(str(tmp_path))
    stream.seal()
    stream.seal()  # idempotent
    with pytest.raises(RuntimeError, match="sealed or discarded"):
        stream.add(rows(1)[0])
    stream.discard()
    with pytest.raises(ValueError, match="chunk"):
        LaneStream(str(tmp_path), 0)
    assert streams(tmp_path) == []


def test_a_killed_coordinators_streams_are_removed_by_the_next_cycle_on_the_host(
    tmp_path: Path,
) -> None:
    """Files of a process that is gone are removed; a live process's, another host's and
    other files stay."""
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    host = socket.gethostname()
    orphan = tmp_path / f"deswm-rows-{int(gone.stdout)}@{host}-abc_123.stream"
    elsewhere = tmp_path / f"deswm-rows-{int(gone.stdout)}@not-{host}-abc_123.stream"
    batch = tmp_path / "deswm-rows-x1y2z3.jsonl"
    for path in (orphan, elsewhere, batch):
        path.write_bytes(b"")
    live = LaneStream(str(tmp_path))
    assert Path(live.path).name.startswith(f"deswm-rows-{os.getpid()}@{host}-")
    assert remove_orphans(str(tmp_path)) == 1
    assert not orphan.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [elsewhere.name, batch.name, Path(live.path).name]
    )
    assert remove_orphans(str(tmp_path / "missing")) == 0
    live.discard()
