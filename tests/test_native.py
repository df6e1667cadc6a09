"""The optional C helper ``deswm._native``: the same answers as the Python path.

``read_file`` opens (beneath a root's descriptor through openat2, or anywhere), checks
and reads a local file in one call; ``deswm._contain.read_native`` falls back to the
Python path for what it cannot judge. ``planned_entries`` is the packer's
``_new_items``. These tests call them directly; the reader tests
(tests/test_readers.py) run every containment case through both paths.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import service_unavailable
from deswm import _contain, _packer
from deswm._buffers import BIG, RECORD, SPILLED
from deswm._codecs import CODEC_NAMES
from deswm._planner import PlannedEntry


@pytest.fixture
def read_file() -> Callable[[int, str], bytes | None]:
    try:
        from deswm._native import read_file as native
    except ImportError:
        service_unavailable("deswm._native", "the package was installed without its C helper")
    return native


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "root" / "sub").mkdir(parents=True)
    (tmp_path / "outside.txt").write_bytes(b"OUTSIDE")
    (tmp_path / "root" / "a.txt").write_bytes(b"alpha")
    (tmp_path / "root" / "sub" / "b.txt").write_bytes(b"beta")
    (tmp_path / "root" / "empty").write_bytes(b"")
    (tmp_path / "root" / "link-in").symlink_to("sub/b.txt")
    (tmp_path / "root" / "link-absolute").symlink_to(tmp_path / "root" / "sub" / "b.txt")
    (tmp_path / "root" / "link-out").symlink_to(tmp_path / "outside.txt")
    return tmp_path / "root"


@pytest.fixture
def root_fd(root: Path) -> Iterator[int]:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def test_is_built_where_a_compiler_is(read_file: Callable[[int, str], bytes | None]) -> None:
    """CI requires it (DESWM_REQUIRE_SERVICES=1): the fast path is what is measured."""
    assert _contain._NATIVE_READ is read_file


def test_reads_files_beneath_the_root(
    read_file: Callable[[int, str], bytes | None], root_fd: int
) -> None:
    assert read_file(root_fd, "a.txt") == b"alpha"
    assert read_file(root_fd, "sub/b.txt") == b"beta"
    assert read_file(root_fd, "sub/../a.txt") == b"alpha"
    assert read_file(root_fd, "link-in") == b"beta"  # a relative symlink inside
    assert read_file(root_fd, "empty") == b""


@pytest.mark.parametrize(
    "path", ["../outside.txt", "sub/../../outside.txt", "link-out", "link-absolute"]
)
def test_a_path_that_leaves_the_root_is_refused_by_the_kernel(
    read_file: Callable[[int, str], bytes | None], root_fd: int, path: str
) -> None:
    """An absolute symlink too, even to a file inside: deswm._contain.read_native then
    leaves the decision to the Python path, which resolves it and checks the target."""
    with pytest.raises(OSError, match="Invalid cross-device link") as caught:
        read_file(root_fd, path)
    assert caught.value.errno == errno.EXDEV
    assert caught.value.filename == path


def test_an_absolute_path_is_refused_beneath_a_root(
    read_file: Callable[[int, str], bytes | None], root: Path, root_fd: int
) -> None:
    with pytest.raises(OSError, match="cross-device") as caught:
        read_file(root_fd, str(root / "a.txt"))
    assert caught.value.errno == errno.EXDEV


def test_errors_are_the_errno_subclasses_and_name_the_path(
    read_file: Callable[[int, str], bytes | None], root_fd: int
) -> None:
    with pytest.raises(FileNotFoundError) as missing:
        read_file(root_fd, "nope.txt")
    assert missing.value.filename == "nope.txt"
    with pytest.raises(IsADirectoryError) as folder:
        read_file(root_fd, "sub")
    assert folder.value.filename == "sub"
    with pytest.raises(NotADirectoryError):
        read_file(root_fd, "a.txt/x")
    with pytest.raises(OSError, match="Bad file descriptor") as bad:
        read_file(987654, "a.txt")
    assert bad.value.errno == errno.EBADF
    with pytest.raises(TypeError):
        read_file(root_fd, 42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="null"):
        read_file(root_fd, "a.txt\x00../x")


def test_a_fifo_is_not_opened_for_reading_and_does_not_block(
    read_file: Callable[[int, str], bytes | None], root: Path, root_fd: int
) -> None:
    """No writer ever comes: a blocking open would hang the test (pytest-timeout)."""
    os.mkfifo(root / "pipe")
    assert read_file(root_fd, "pipe") is None
    dev = os.open("/dev", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert read_file(dev, "null") is None  # a device
    finally:
        os.close(dev)


def test_a_file_longer_than_its_stat_size_is_read_to_its_end(
    read_file: Callable[[int, str], bytes | None],
) -> None:
    """/proc files say size 0: the read goes on past the first, one-byte buffer."""
    expected = Path("/proc/self/mountinfo").read_bytes()
    proc = os.open("/proc/self", os.O_RDONLY | os.O_DIRECTORY)
    try:
        got = read_file(proc, "mountinfo")
    finally:
        os.close(proc)
    assert got is not None
    assert len(got) > 1
    # The process's own mounts do not change during the test: the same lines.
    assert got.splitlines()[0] == expected.splitlines()[0]


def test_a_file_of_several_mebibytes_is_read_whole(
    read_file: Callable[[int, str], bytes | None], root: Path, root_fd: int
) -> None:
    payload = os.urandom(3 * 2**20 + 17)
    (root / "big.bin").write_bytes(payload)
    assert read_file(root_fd, "big.bin") == payload


def test_other_threads_run_while_it_reads(
    read_file: Callable[[int, str], bytes | None], root: Path, root_fd: int
) -> None:
    """The GIL is released around the system calls: a thread of Python work makes
    progress during a long series of reads."""
    (root / "big.bin").write_bytes(os.urandom(8 * 2**20))
    ticks = 0
    stop = threading.Event()

    def count() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1

    thread = threading.Thread(target=count)
    thread.start()
    try:
        before = ticks
        for _ in range(20):
            read_file(root_fd, "big.bin")
        assert ticks > before
    finally:
        stop.set()
        thread.join()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    payload=st.binary(max_size=70_000),
    name=st.text(
        st.characters(exclude_categories=["Cs"], exclude_characters="/\x00"),
        min_size=1,
        max_size=40,
    ).filter(lambda n: n not in (".", "..")),
)
def test_reads_what_python_reads(
    read_file: Callable[[int, str], bytes | None],
    root: Path,
    root_fd: int,
    payload: bytes,
    name: str,
) -> None:
    path = root / name
    if len(os.fsencode(name)) > 255:  # too long for a file name here
        return
    path.write_bytes(payload)
    try:
        assert read_file(root_fd, name) == path.read_bytes() == payload
    finally:
        path.unlink()


# --- planned_entries ---------------------------------------------------------------------


@pytest.fixture
def planned_entries() -> object:
    native = _packer._planned_entries
    if native is None:
        service_unavailable("deswm._native", "the package was installed without its C helper")
    return native


def test_the_record_layout_is_the_one_the_c_helper_reads() -> None:
    """_native.c spells RECORD out (offsets 0, 8, 16, 24, 32, 33, 65; 67 bytes): a change
    to RECORD must change it too."""
    assert RECORD.format == "<qQQQB32sH"
    assert RECORD.size == 67


_MICROS = st.integers(-62_135_596_800 * 10**6, 253_402_300_799 * 10**6 + 999_999)
_U64 = st.integers(0, 2**64 - 1)
_CODEC_IDS = st.sampled_from(sorted(CODEC_NAMES))
_UIDS = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)


@st.composite
def _records(draw: st.DrawFn) -> bytes:
    out = bytearray()
    for _ in range(draw(st.integers(0, 12))):
        uid = draw(_UIDS).encode("utf-8")
        flags = draw(_CODEC_IDS) | draw(st.sampled_from([0, SPILLED, BIG, SPILLED | BIG]))
        out += RECORD.pack(
            draw(_MICROS),
            draw(_U64),
            draw(_U64),
            draw(_U64),
            flags,
            draw(st.binary(min_size=32, max_size=32)),
            len(uid),
        )
        out += uid
    return bytes(out)


@settings(max_examples=300, deadline=None)
@given(records=_records())
def test_planned_entries_are_the_python_ones(records: bytes) -> None:
    native = _packer._planned_entries
    if native is None:
        service_unavailable("deswm._native", "the package was installed without its C helper")
    assert native is not None
    expected = _packer._new_items_python(records)
    got = _packer._new_items(records)
    assert got == expected
    for mine, theirs in zip(got, expected, strict=True):
        assert type(mine) is PlannedEntry
        assert [type(v) for v in mine] == [type(v) for v in theirs]
        assert mine.origin == -1


def test_planned_entries_refuse_damaged_records(planned_entries: object) -> None:
    good = RECORD.pack(0, 1, 1, 0, 1, bytes(32), 3) + b"abc"
    assert len(_packer._new_items(good)) == 1
    with pytest.raises(ValueError, match="truncated"):
        _packer._new_items(good[:-1])
    with pytest.raises(ValueError, match="truncated"):
        _packer._new_items(good + good[:30])
    with pytest.raises(UnicodeDecodeError):
        _packer._new_items(RECORD.pack(0, 1, 1, 0, 1, bytes(32), 1) + b"\xff")
    unknown = [i for i, name in enumerate(_packer._CODECS_BY_ID) if name is None]
    if unknown:  # an id no codec has: a KeyError, as the Python function raises
        bad = RECORD.pack(0, 1, 1, 0, unknown[0], bytes(32), 1) + b"u"
        with pytest.raises(KeyError):
            _packer._new_items(bad)
        with pytest.raises(KeyError):
            _packer._new_items_python(bad)
