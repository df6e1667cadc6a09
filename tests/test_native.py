"""The optional C helper ``deswm._native``: the same answers as the Python path.

Its one function, ``read_file``, opens (beneath a root's descriptor through openat2, or
anywhere), checks and reads a local file in one call; ``deswm._contain.read_native``
falls back to the Python path for what it cannot judge. These tests call it directly;
the reader tests (tests/test_readers.py) run every containment case through both paths.
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
from deswm import _contain

AT_FDCWD = -100


@pytest.fixture
def read_file() -> Callable[[int, str, bool], bytes | None]:
    native = _contain._native_read_file
    if native is None:
        service_unavailable("deswm._native", "the package was installed without its C helper")
    assert native is not None
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


def test_is_built_where_a_compiler_is(read_file: Callable[[int, str, bool], bytes | None]) -> None:
    """CI requires it (DESWM_REQUIRE_SERVICES=1): the fast path is what is measured."""
    assert _contain._NATIVE_READ is read_file


def test_reads_files_beneath_the_root(
    read_file: Callable[[int, str, bool], bytes | None], root_fd: int
) -> None:
    assert read_file(root_fd, "a.txt", True) == b"alpha"
    assert read_file(root_fd, "sub/b.txt", True) == b"beta"
    assert read_file(root_fd, "sub/../a.txt", True) == b"alpha"
    assert read_file(root_fd, "link-in", True) == b"beta"  # a relative symlink inside
    assert read_file(root_fd, "empty", True) == b""


@pytest.mark.parametrize(
    "path", ["../outside.txt", "sub/../../outside.txt", "link-out", "link-absolute"]
)
def test_a_path_that_leaves_the_root_is_refused_by_the_kernel(
    read_file: Callable[[int, str, bool], bytes | None], root_fd: int, path: str
) -> None:
    """An absolute symlink too, even to a file inside: deswm._contain.read_native then
    leaves the decision to the Python path, which resolves it and checks the target."""
    with pytest.raises(OSError, match="Invalid cross-device link") as caught:
        read_file(root_fd, path, True)
    assert caught.value.errno == errno.EXDEV
    assert caught.value.filename == path


def test_an_absolute_path_is_refused_beneath_a_root(
    read_file: Callable[[int, str, bool], bytes | None], root: Path, root_fd: int
) -> None:
    with pytest.raises(OSError, match="cross-device") as caught:
        read_file(root_fd, str(root / "a.txt"), True)
    assert caught.value.errno == errno.EXDEV
    # Without ``beneath`` the same path is read wherever it points (a reader without roots).
    assert read_file(AT_FDCWD, str(root / "a.txt"), False) == b"alpha"
    assert read_file(AT_FDCWD, str(root / "link-out"), False) == b"OUTSIDE"


def test_errors_are_the_errno_subclasses_and_name_the_path(
    read_file: Callable[[int, str, bool], bytes | None], root_fd: int
) -> None:
    with pytest.raises(FileNotFoundError) as missing:
        read_file(root_fd, "nope.txt", True)
    assert missing.value.filename == "nope.txt"
    with pytest.raises(IsADirectoryError) as folder:
        read_file(root_fd, "sub", True)
    assert folder.value.filename == "sub"
    with pytest.raises(NotADirectoryError):
        read_file(root_fd, "a.txt/x", True)
    with pytest.raises(OSError, match="Bad file descriptor") as bad:
        read_file(987654, "a.txt", True)
    assert bad.value.errno == errno.EBADF
    with pytest.raises(TypeError):
        read_file(root_fd, 42, True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="null"):
        read_file(root_fd, "a.txt\x00../x", True)


def test_a_fifo_is_not_opened_for_reading_and_does_not_block(
    read_file: Callable[[int, str, bool], bytes | None], root: Path, root_fd: int
) -> None:
    """No writer ever comes: a blocking open would hang the test (pytest-timeout)."""
    os.mkfifo(root / "pipe")
    assert read_file(root_fd, "pipe", True) is None
    assert read_file(AT_FDCWD, str(root / "pipe"), False) is None
    assert read_file(AT_FDCWD, "/dev/null", False) is None  # a device


def test_a_file_longer_than_its_stat_size_is_read_to_its_end(
    read_file: Callable[[int, str, bool], bytes | None],
) -> None:
    """/proc files say size 0: the read goes on past the first, one-byte buffer."""
    expected = Path("/proc/self/mountinfo").read_bytes()
    got = read_file(AT_FDCWD, "/proc/self/mountinfo", False)
    assert got is not None
    assert len(got) > 1
    # The process's own mounts do not change during the test: the same lines.
    assert got.splitlines()[0] == expected.splitlines()[0]


def test_a_file_of_several_mebibytes_is_read_whole(
    read_file: Callable[[int, str, bool], bytes | None], root: Path, root_fd: int
) -> None:
    payload = os.urandom(3 * 2**20 + 17)
    (root / "big.bin").write_bytes(payload)
    assert read_file(root_fd, "big.bin", True) == payload


def test_other_threads_run_while_it_reads(
    read_file: Callable[[int, str, bool], bytes | None], root: Path, root_fd: int
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
            read_file(root_fd, "big.bin", True)
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
    read_file: Callable[[int, str, bool], bytes | None],
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
        assert read_file(root_fd, name, True) == path.read_bytes() == payload
        assert read_file(AT_FDCWD, str(path), False) == payload
    finally:
        path.unlink()
