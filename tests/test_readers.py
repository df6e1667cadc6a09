"""FsspecFileReader: the FileReader contract on local, memory and S3, and the edge cases."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fsspec
import pytest
from fsspec.spec import AbstractFileSystem
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FsTarget, service_unavailable
from deswm import _contain
from deswm._errors import ConfigError, FileMissingError, FileReadError, LocationOutsideRootError
from deswm._model import SourceRecord
from deswm._objectstore.errors import is_transient
from deswm._readers import FsspecFileReader
from deswm._redact import redact
from deswm.testing._contracts.reader import FileReaderContract, MakeReader

NOW = datetime(2024, 5, 10, tzinfo=UTC)


def _store(target: FsTarget, files: Mapping[str, bytes]) -> dict[str, str]:
    fs = target.filesystem()
    locations = {}
    for name, data in files.items():
        location = target.join(name)
        if target.kind == "local":
            fs.makedirs(os.path.dirname(location), exist_ok=True)
        fs.pipe_file(location, data)
        locations[name] = location
    return locations


class TestFsspecReaderAbsolute(FileReaderContract):
    """Locations as the table would hold them: absolute paths and full URLs."""

    @pytest.fixture
    def make_reader(self, fs_target: FsTarget) -> MakeReader:
        def make(files: Mapping[str, bytes]) -> tuple[FsspecFileReader, dict[str, str]]:
            locations = _store(fs_target, files)
            reader = FsspecFileReader(
                storage_options={fs_target.kind: fs_target.storage_options}
                if fs_target.kind == "s3"
                else None,
                retry_backoff=0,
            )
            return reader, locations

        return make


class TestFsspecReaderRelative(FileReaderContract):
    """Relative locations resolved against ``root`` (a folder or URL).

    S3 shares the URL-root code path with memory (and has its own root tests below), so
    it is left out here to keep the suite fast.
    """

    @pytest.fixture(params=["local", "memory"])
    def fs_backend(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture
    def make_reader(self, fs_target: FsTarget) -> MakeReader:
        def make(files: Mapping[str, bytes]) -> tuple[FsspecFileReader, dict[str, str]]:
            _store(fs_target, files)
            reader = FsspecFileReader(
                root=fs_target.url, storage_options=fs_target.storage_options, retry_backoff=0
            )
            return reader, {name: name for name in files}

        return make


class TestFsspecReaderFileUrl(FileReaderContract):
    """``file://`` URLs take the plain-open fast path."""

    @pytest.fixture
    def make_reader(self, tmp_path: Path) -> MakeReader:
        def make(files: Mapping[str, bytes]) -> tuple[FsspecFileReader, dict[str, str]]:
            locations = {}
            for name, data in files.items():
                path = tmp_path / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                locations[name] = f"file://{path}"
            return FsspecFileReader(max_workers=2), locations

        return make


# --- explicit cases ------------------------------------------------------------------


def test_zero_byte_file_is_valid(fs_target: FsTarget) -> None:
    locations = _store(fs_target, {"empty": b""})
    reader = FsspecFileReader(root=fs_target.url, storage_options=fs_target.storage_options)
    assert reader.read(locations["empty"]) == b""
    assert reader.read("empty") == b""


def test_directory_is_a_read_error(fs_target: FsTarget) -> None:
    _store(fs_target, {"folder/inside.bin": b"x"})
    reader = FsspecFileReader(storage_options=fs_target.storage_options, root=fs_target.url)
    with pytest.raises(FileReadError, match="is a directory") as caught:
        reader.read("folder")
    assert not isinstance(caught.value, FileMissingError)


def test_local_directory_delete_is_an_error(tmp_path: Path) -> None:
    reader = FsspecFileReader()
    with pytest.raises(FileReadError, match="is a directory"):
        reader.delete(str(tmp_path))
    assert tmp_path.is_dir()


def test_local_missing_parent_is_missing(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    reader = FsspecFileReader()
    with pytest.raises(FileMissingError):
        reader.read(str(tmp_path / "file" / "below"))
    reader.delete(str(tmp_path / "file" / "below"))
    reader.delete(str(tmp_path / "never" / "there"))


def test_local_permission_denied(tmp_path: Path) -> None:
    path = tmp_path / "secret.bin"
    path.write_bytes(b"x")
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as a user who can read a mode-000 file (root)")
        with pytest.raises(FileReadError, match="permission denied") as caught:
            FsspecFileReader().read(str(path))
        assert not isinstance(caught.value, FileMissingError)
        assert caught.value.hint is not None
        assert "read access" in caught.value.hint
    finally:
        path.chmod(0o600)


def test_local_permission_error_is_mapped_even_as_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # root reads mode-000 files, so also prove the mapping by making the open refuse.
    def refuse(path: str, roots: Any = None) -> Any:
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr("deswm._readers._read_local", refuse)
    reader = FsspecFileReader(retries=3)
    with pytest.raises(FileReadError, match="permission denied") as caught:
        reader.read(str(tmp_path / "x.bin"))
    assert not isinstance(caught.value, FileMissingError)
    assert isinstance(caught.value.__cause__, PermissionError)


def test_file_url_with_localhost(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"abc")
    reader = FsspecFileReader()
    assert reader.read(f"file://localhost{tmp_path}/a.bin") == b"abc"


def test_local_root_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.bin").write_bytes(b"abc")
    monkeypatch.chdir(tmp_path)
    reader = FsspecFileReader(root="data")
    monkeypatch.chdir("/")
    assert reader.read("a.bin") == b"abc"
    assert reader.root == str(tmp_path / "data")


def test_relative_location_without_root() -> None:
    with pytest.raises(FileReadError, match="relative location and the reader has no root"):
        FsspecFileReader().read("some/file.bin")


def test_empty_location() -> None:
    with pytest.raises(FileReadError, match="not a file location"):
        FsspecFileReader().read("")


def test_unknown_protocol_is_a_read_error() -> None:
    with pytest.raises(FileReadError, match="no fsspec filesystem knows the protocol 'nope'"):
        FsspecFileReader().read("nope://x/y")


def test_missing_backend_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"gcs:// is not installed"):
        FsspecFileReader().read("gcs://bucket/key")


def test_s3_missing_object_and_bad_bucket(moto_s3: Any, s3_bucket: str) -> None:
    reader = FsspecFileReader(storage_options={"s3": moto_s3.storage_options})
    with pytest.raises(FileMissingError):
        reader.read(f"s3://{s3_bucket}/nope.bin")
    with pytest.raises(FileMissingError):
        reader.read("s3://deswm-no-such-bucket-here/nope.bin")
    reader.delete(f"s3://{s3_bucket}/nope.bin")


def test_filesystem_is_cached_per_protocol(moto_s3: Any, s3_bucket: str) -> None:
    fs = moto_s3.filesystem()
    fs.pipe_file(f"{s3_bucket}/a", b"1")
    fs.pipe_file(f"{s3_bucket}/b", b"2")
    reader = FsspecFileReader(storage_options={"s3": moto_s3.storage_options})
    assert reader.read(f"s3://{s3_bucket}/a") == b"1"
    assert reader.read(f"s3://{s3_bucket}/b") == b"2"
    assert list(reader._filesystems) == ["s3"]


@pytest.mark.parametrize(
    ("extra", "per_file"), [({}, ["GET"]), ({"max_concurrency": 4}, ["HEAD", "GET"])]
)
def test_s3_reads_a_file_with_one_request(
    moto_s3: Any, s3_bucket: str, extra: dict[str, Any], per_file: list[str]
) -> None:
    """s3fs asks for an object's size before a whole-object read unless told to read it in
    one request: deswm does, so archiving N small files costs N GETs, not 2N requests.
    A ``max_concurrency`` in the storage options is the user's choice and is kept."""
    fs = moto_s3.filesystem()
    for name in "abc":
        fs.pipe_file(f"{s3_bucket}/{name}", name.encode() * 3)
    reader = FsspecFileReader(storage_options={"s3": {**moto_s3.storage_options, **extra}})
    assert reader.read(f"s3://{s3_bucket}/a") == b"aaa"  # creates the filesystem
    sent: list[str] = []

    def seen(request: Any, **_: Any) -> None:
        sent.append(request.method)

    s3 = reader._filesystems["s3"].s3
    s3.meta.events.register("before-send.s3", seen)
    try:
        assert [reader.read(f"s3://{s3_bucket}/{n}") for n in "bc"] == [b"bbb", b"ccc"]
    finally:
        s3.meta.events.unregister("before-send.s3", seen)
    assert sent == per_file * 2


@pytest.mark.parametrize(
    ("options", "root", "expected"),
    [
        (None, None, {}),
        ({"s3": {"anon": True}, "memory": {}}, None, {"s3": {"anon": True}, "memory": {}}),
        ({"anon": True}, "s3://bucket/prefix", {"s3": {"anon": True}}),
        ({"anon": True}, None, {"s3": {"anon": True}, "gcs": {"anon": True}}),
    ],
)
def test_storage_options_per_protocol(
    options: dict[str, Any] | None, root: str | None, expected: dict[str, dict[str, Any]]
) -> None:
    reader = FsspecFileReader(storage_options=options, root=root)
    for protocol, wanted in expected.items():
        assert reader._options.for_protocol(protocol) == wanted
    if root is not None:
        assert reader._options.for_protocol("gcs") == {}


# --- retries with a fake filesystem --------------------------------------------------


class FlakyFS(AbstractFileSystem):  # type: ignore[misc]  # fsspec has no type information
    """Fails with the queued exceptions, then serves ``data``; logs every call."""

    protocol = "deswmflaky"
    cachable = False

    def __init__(
        self,
        failures: list[BaseException] | None = None,
        calls: list[str] | None = None,
        data: bytes = b"payload",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.failures = failures if failures is not None else []
        self.calls = calls if calls is not None else []
        self.data = data

    def cat_file(self, path: str, start: Any = None, end: Any = None, **kwargs: Any) -> bytes:
        self.calls.append(f"cat {path}")
        if self.failures:
            raise self.failures.pop(0)
        return self.data

    def rm_file(self, path: str) -> None:
        self.calls.append(f"rm {path}")
        if self.failures:
            raise self.failures.pop(0)

    def isdir(self, path: str) -> bool:
        self.calls.append(f"isdir {path}")
        return False


fsspec.register_implementation("deswmflaky", FlakyFS, clobber=True)


class _ClientError(Exception):
    """Shaped like botocore's ClientError (``response`` with a code and status)."""

    def __init__(self, code: str, status: int) -> None:
        super().__init__(f"An error occurred ({code})")
        self.response = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}


def _s3fs_style(code: str, status: int, translated: OSError) -> OSError:
    translated.__cause__ = _ClientError(code, status)
    return translated


def _flaky(failures: list[BaseException], **kwargs: Any) -> tuple[FsspecFileReader, list[str]]:
    calls: list[str] = []
    options = {"deswmflaky": {"failures": failures, "calls": calls}}
    return FsspecFileReader(storage_options=options, retry_backoff=0, **kwargs), calls


@pytest.mark.parametrize(
    "failure",
    [
        ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
        TimeoutError("read timed out"),
        _s3fs_style("SlowDown", 503, OSError(errno.EBUSY, "Please reduce your request rate")),
        _s3fs_style("InternalError", 500, OSError(121, "We encountered an internal error")),
        _ClientError("ThrottlingException", 400),
        OSError(errno.ETIMEDOUT, "timed out"),
    ],
    ids=["reset", "timeout", "slowdown", "http500", "throttling", "etimedout"],
)
def test_transient_errors_are_retried(failure: BaseException) -> None:
    reader, calls = _flaky([failure, failure], retries=3)
    assert reader.read("deswmflaky://bucket/key") == b"payload"
    assert len(calls) == 3


def test_gives_up_after_retries() -> None:
    failure = _s3fs_style("SlowDown", 503, OSError(errno.EBUSY, "Please reduce your request rate"))
    reader, calls = _flaky([failure] * 10, retries=2)
    with pytest.raises(FileReadError, match="after 3 attempts") as caught:
        reader.read("deswmflaky://bucket/key")
    assert len(calls) == 3
    assert caught.value.__cause__ is failure


@pytest.mark.parametrize(
    ("failure", "error", "message"),
    [
        (PermissionError(errno.EACCES, "Access Denied"), FileReadError, "permission denied"),
        (FileNotFoundError(errno.ENOENT, "NoSuchKey"), FileMissingError, "does not exist"),
        (_ClientError("AccessDenied", 403), FileReadError, "AccessDenied"),
        (_s3fs_style("404", 404, OSError(errno.EIO, "Not Found")), FileReadError, "Not Found"),
        (ValueError("bad path"), FileReadError, "ValueError: bad path"),
    ],
    ids=["permission", "missing", "http403", "http404", "unknown"],
)
def test_permanent_errors_are_not_retried(
    failure: BaseException, error: type[Exception], message: str
) -> None:
    reader, calls = _flaky([failure] * 5, retries=3)
    with pytest.raises(error, match=message):
        reader.read("deswmflaky://bucket/key")
    assert [call for call in calls if call.startswith("cat")] == ["cat deswmflaky://bucket/key"]


def test_permission_error_has_a_hint() -> None:
    reader, _ = _flaky([PermissionError(errno.EACCES, "Access Denied")])
    with pytest.raises(FileReadError) as caught:
        reader.read("deswmflaky://bucket/key")
    assert caught.value.hint is not None
    assert "read access" in caught.value.hint


def test_backoff_is_exponential(monkeypatch: pytest.MonkeyPatch) -> None:
    delays: list[float] = []
    monkeypatch.setattr("deswm._readers.time.sleep", delays.append)
    failure = ConnectionResetError("reset")
    calls: list[str] = []
    reader = FsspecFileReader(
        storage_options={"deswmflaky": {"failures": [failure] * 3, "calls": calls}},
        retries=3,
        retry_backoff=0.1,
    )
    assert reader.read("deswmflaky://b/k") == b"payload"
    assert len(delays) == 3
    for n, delay in enumerate(delays):
        assert 0.05 * 2**n <= delay <= 0.1 * 2**n


def test_delete_retries_and_ignores_missing() -> None:
    reader, calls = _flaky([ConnectionResetError("reset"), FileNotFoundError("gone")])
    reader.delete("deswmflaky://b/k")
    assert calls == ["rm deswmflaky://b/k", "rm deswmflaky://b/k"]


def test_read_many_yields_failures_as_values() -> None:
    from datetime import UTC, datetime

    from deswm._model import SourceRecord

    reader, _ = _flaky([PermissionError("denied")], max_workers=1)
    records = [
        SourceRecord(f"u{n}", datetime(2024, 1, 1, tzinfo=UTC), "deswmflaky://b/k")
        for n in range(3)
    ]
    outcomes = [outcome for _, outcome in reader.read_many(records)]
    assert isinstance(outcomes[0], FileReadError)
    assert outcomes[1:] == [b"payload", b"payload"]


# --- no leaks --------------------------------------------------------------------------


def test_credentials_never_in_repr_errors_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    secret = "wJalrXUtnFEMI-very-secret"
    failure = ConnectionResetError(f"reset while signing with {secret}")
    calls: list[str] = []
    reader = FsspecFileReader(
        storage_options={
            "deswmflaky": {"failures": [failure] * 5, "calls": calls, "secret": secret},
        },
        retries=1,
        retry_backoff=0,
    )
    assert secret not in repr(reader)
    with (
        caplog.at_level(logging.DEBUG, logger="deswm.readers"),
        pytest.raises(FileReadError) as caught,
    ):
        reader.read("deswmflaky://user:hunter2pass@bucket/key?X-Amz-Signature=abcdef123")
    text = str(caught.value) + caught.value.location + caplog.text
    assert caplog.records, "the retry was logged"
    for leaked in (secret, "hunter2pass", "abcdef123"):
        assert leaked not in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://user:pw@host/a", "https://user:***@host/a"),
        ("s3://bucket/key?X-Amz-Signature=abc&x=1", "s3://bucket/key?X-Amz-Signature=***&x=1"),
        ("/plain/path:with@chars", "/plain/path:with@chars"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_is_transient_follows_the_cause_chain() -> None:
    inner = ConnectionResetError("reset")
    outer = RuntimeError("wrapped")
    outer.__cause__ = inner
    assert is_transient(outer)
    assert not is_transient(PermissionError("denied"))
    assert not is_transient(_ClientError("NoSuchKey", 404))
    assert is_transient(_ClientError("SlowDown", 503))


def test_real_botocore_errors() -> None:
    botocore = pytest.importorskip("botocore.exceptions")
    slow = botocore.ClientError(
        {"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "GetObject"
    )
    denied = botocore.ClientError(
        {"Error": {"Code": "AccessDenied"}, "ResponseMetadata": {"HTTPStatusCode": 403}},
        "GetObject",
    )
    assert is_transient(slow)
    assert not is_transient(denied)
    assert is_transient(botocore.EndpointConnectionError(endpoint_url="http://x"))
    assert is_transient(botocore.ReadTimeoutError(endpoint_url="http://x"))
    assert not is_transient(botocore.NoCredentialsError())


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"retries": -1}, "reader.retries"),
        ({"retry_backoff": -0.1}, "reader.retry_backoff"),
        ({"storage_options": ["a"]}, "reader.storage_options"),
        ({"max_workers": 0}, "reader.max_workers"),
    ],
)
def test_validates_settings(kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        FsspecFileReader(**kwargs)
    assert caught.value.key == key


# --- containment: a location must stay inside root / allowed_roots ------------------------


class _Tree:
    """``root/`` with files and links, and ``outside/victim.txt`` beside it."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "root"
        self.outside = base / "outside"
        self.victim = self.outside / "victim.txt"
        (self.root / "sub").mkdir(parents=True)
        self.outside.mkdir()
        (base / "root2").mkdir()
        (base / "root2" / "x.txt").write_bytes(b"sibling folder")
        self.victim.write_bytes(b"OUTSIDE")
        (self.root / "inside.txt").write_bytes(b"inside")
        (self.root / "sub" / "deep.txt").write_bytes(b"deep")
        (self.root / "link-out").symlink_to(self.victim)
        (self.root / "dir-out").symlink_to(self.outside)
        (self.root / "link-in").symlink_to(self.root / "sub" / "deep.txt")

    def reader(self, **kwargs: Any) -> FsspecFileReader:
        return FsspecFileReader(root=self.root, retries=0, **kwargs)


@pytest.fixture(params=["c-helper", "python"])
def tree(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> _Tree:
    """Every containment case through both ways of reading a local file: the C helper
    (``deswm._native``, where it is built) and the Python path."""
    if request.param == "python":
        monkeypatch.setattr(_contain, "_NATIVE_READ", None)
    elif _contain._NATIVE_READ is None:
        service_unavailable("deswm._native", "the package was installed without its C helper")
    return _Tree(tmp_path)


LOCAL_ESCAPES: dict[str, Callable[[_Tree], str]] = {
    "dotdot": lambda t: "../outside/victim.txt",
    "dotdot-deep": lambda t: "sub/../../outside/victim.txt",
    "absolute": lambda t: str(t.victim),
    "sibling-prefix": lambda t: str(t.base / "root2" / "x.txt"),
    "symlink-out": lambda t: "link-out",
    "symlink-dir-out": lambda t: "dir-out/victim.txt",
    "absolute-through-symlink": lambda t: str(t.root / "dir-out" / "victim.txt"),
    "file-url": lambda t: f"file://{t.victim}",
    "file-url-host": lambda t: "file://outside/victim.txt",
    "home": lambda t: "~/victim.txt",
    "home-user": lambda t: "~root/victim.txt",
    "nul": lambda t: "inside.txt\x00../../outside/victim.txt",
    "backslash": lambda t: "..\\outside\\victim.txt",
    "other-scheme": lambda t: "memory://outside/victim.txt",
    "the-root-itself": lambda t: ".",
}


@pytest.mark.parametrize("escape", sorted(LOCAL_ESCAPES))
def test_local_location_outside_the_root_is_never_read_or_deleted(tree: _Tree, escape: str) -> None:
    location = LOCAL_ESCAPES[escape](tree)
    reader = tree.reader()
    with pytest.raises(LocationOutsideRootError) as caught:
        reader.read(location)
    assert caught.value.location == redact(location)
    assert "is outside files.root" in str(caught.value)
    assert "files.allowed_roots" in str(caught.value)
    with pytest.raises(LocationOutsideRootError):
        reader.delete(location)
    [(_, outcome)] = list(reader.read_many([SourceRecord("u", NOW, location)]))
    assert isinstance(outcome, LocationOutsideRootError)
    assert tree.victim.read_bytes() == b"OUTSIDE"
    assert (tree.base / "root2" / "x.txt").exists()
    assert (tree.root / "link-out").is_symlink()


@pytest.mark.parametrize("mode", ["openat2", "proc-fd", "realpath"])
def test_symlink_out_is_refused_by_every_resolution_path(
    tree: _Tree, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """openat2 (Linux 5.6+), O_PATH and /proc/self/fd, or realpath elsewhere."""
    if mode != "openat2":
        monkeypatch.setattr(_contain, "_OPENAT2", None)
    if mode == "realpath":
        monkeypatch.setattr(_contain, "_PROC_FD", False)
    reader = tree.reader()
    for location in ("link-out", "dir-out/victim.txt"):
        with pytest.raises(LocationOutsideRootError, match="through a symlink"):
            reader.read(location)
        with pytest.raises(LocationOutsideRootError):
            reader.delete(location)
    assert tree.victim.read_bytes() == b"OUTSIDE"
    assert reader.read("link-in") == b"deep"
    reader.delete("link-in")  # deletes the resolved file, inside the root
    assert not (tree.root / "sub" / "deep.txt").exists()


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("inside.txt", b"inside"),
        ("./inside.txt", b"inside"),
        ("sub/../inside.txt", b"inside"),
        ("sub//deep.txt", b"deep"),
        ("link-in", b"deep"),
        ("ok~/tilde-inside.txt", b"tilde"),
    ],
)
def test_local_locations_inside_the_root_are_read(
    tree: _Tree, location: str, expected: bytes
) -> None:
    (tree.root / "ok~").mkdir()
    (tree.root / "ok~" / "tilde-inside.txt").write_bytes(b"tilde")
    assert tree.reader().read(location) == expected


def test_a_normal_relative_location_is_read_in_one_call(
    tree: _Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The table's common case skips the lexical resolution (the kernel's RESOLVE_BENEATH
    is the check); everything else, and every error, goes the full way."""
    reader = tree.reader()
    resolved: list[str] = []
    full = reader._resolve

    def counting(location: str) -> tuple[str | None, str]:
        resolved.append(location)
        return full(location)

    monkeypatch.setattr(reader, "_resolve", counting)
    assert reader.read("sub/deep.txt") == b"deep"
    assert reader.read("inside.txt") == b"inside"
    one_call = _contain._NATIVE_READ is not None
    assert resolved == ([] if one_call else ["sub/deep.txt", "inside.txt"])
    (tree.root / ".hidden").write_bytes(b"h")
    assert reader.read(".hidden") == b"h"  # a dot segment: the full way
    with pytest.raises(FileMissingError):
        reader.read("sub/nope.txt")
    with pytest.raises(LocationOutsideRootError, match="through a symlink"):
        reader.read("link-out")  # the kernel refuses; the full way says why
    with pytest.raises(FileReadError, match="is a directory"):
        reader.read("sub")
    assert resolved[-4:] == [".hidden", "sub/nope.txt", "link-out", "sub"]


def test_absolute_and_file_url_locations_inside_the_root_are_read(tree: _Tree) -> None:
    reader = tree.reader()
    assert reader.read(str(tree.root / "inside.txt")) == b"inside"
    assert reader.read(f"file://{tree.root / 'inside.txt'}") == b"inside"
    assert reader.read(str(tree.root.resolve() / "sub" / "deep.txt")) == b"deep"


def test_a_root_behind_a_symlink_still_contains_its_files(tree: _Tree) -> None:
    alias = tree.base / "alias"
    alias.symlink_to(tree.root)
    reader = FsspecFileReader(root=alias)
    assert reader.read("inside.txt") == b"inside"
    assert reader.read(str(alias / "sub" / "deep.txt")) == b"deep"
    assert reader.read(str(tree.root / "sub" / "deep.txt")) == b"deep"
    with pytest.raises(LocationOutsideRootError):
        reader.read("link-out")


def test_allowed_roots_contain_absolute_locations_the_same_way(tree: _Tree) -> None:
    reader = FsspecFileReader(allowed_roots=[tree.root, tree.base / "root2"])
    assert reader.roots == (str(tree.root), str(tree.base / "root2"))
    assert reader.read(str(tree.base / "root2" / "x.txt")) == b"sibling folder"
    assert reader.read(str(tree.root / "inside.txt")) == b"inside"
    with pytest.raises(LocationOutsideRootError):
        reader.read(str(tree.victim))
    with pytest.raises(LocationOutsideRootError):
        reader.read(str(tree.root / "link-out"))
    with pytest.raises(FileReadError, match="relative location and the reader has no root"):
        reader.read("inside.txt")
    assert "allowed_roots=" in repr(reader)


def test_without_roots_absolute_locations_are_read_anywhere(tree: _Tree) -> None:
    reader = FsspecFileReader()
    assert reader.roots == ()
    assert reader.read(str(tree.victim)) == b"OUTSIDE"


def test_special_files_inside_the_root_are_refused_without_blocking(tree: _Tree) -> None:
    os.mkfifo(tree.root / "fifo")
    with pytest.raises(FileReadError, match="not a regular file"):
        tree.reader().read("fifo")


def test_delete_refuses_a_folder_swapped_for_a_symlink_out(
    tree: _Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder of the resolved file is re-checked right before the unlink."""
    reader = tree.reader()
    real_open = os.open
    swapped: list[Any] = []

    def swap_then_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & getattr(os, "O_DIRECTORY", 0) and str(path).endswith("/sub") and not swapped:
            (tree.root / "sub").rename(tree.root / "sub-moved")
            (tree.root / "sub").symlink_to(tree.outside)
            (tree.outside / "deep.txt").write_bytes(b"OUTSIDE TOO")
            swapped.append(path)
        return real_open(path, flags, *args, **kwargs)

    if not _contain._PROC_FD:  # pragma: no cover - Linux CI has /proc
        pytest.skip("needs /proc/self/fd")
    monkeypatch.setattr(os, "open", swap_then_open)  # the os module _contain calls
    with pytest.raises(LocationOutsideRootError, match="its folder now resolves to"):
        reader.delete("sub/deep.txt")
    assert swapped
    assert (tree.outside / "deep.txt").read_bytes() == b"OUTSIDE TOO"


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"allowed_roots": "/one/path"}, "reader.allowed_roots"),
        ({"allowed_roots": [""]}, "reader.allowed_roots"),
        ({"allowed_roots": [3]}, "reader.allowed_roots"),
        ({"root": "/a\x00b"}, "files.root"),
        ({"root": "s3://bucket/a/../b"}, "files.root"),
        ({"root": "s3://"}, "files.root"),
        ({"allowed_roots": ["/ok", "/a\\b"]}, "files.allowed_roots"),
    ],
)
def test_validates_roots(kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        FsspecFileReader(**kwargs)
    assert caught.value.key == key


def _url_escapes(bucket: str) -> dict[str, str]:
    return {
        "dotdot": "../root2/victim.txt",
        "dotdot-in-url": f"s3://{bucket}/root/../root2/victim.txt",
        "encoded-dotdot": f"s3://{bucket}/root/%2E%2E/root2/victim.txt",
        "sibling-prefix": f"s3://{bucket}/root2/victim.txt",
        "bucket-itself": f"s3://{bucket}/victim.txt",
        "other-bucket": "s3://other-bucket/root/victim.txt",
        "other-scheme": f"gs://{bucket}/root/victim.txt",
        "memory-scheme": f"memory://{bucket}/root/victim.txt",
        "local-absolute": "/etc/hostname",
        "file-url": "file:///etc/hostname",
        "home": "~/victim.txt",
        "nul": "a\x00b",
        "backslash": "..\\root2\\victim.txt",
        "the-root-itself": f"s3://{bucket}/root",
    }


@pytest.mark.parametrize(
    "escape", sorted(_url_escapes("b")), ids=lambda name: name.replace("_", "-")
)
def test_s3_location_outside_the_root_is_never_read_or_deleted(
    moto_s3: Any, s3_bucket: str, escape: str
) -> None:
    fs = moto_s3.filesystem()
    fs.pipe_file(f"{s3_bucket}/root/inside.txt", b"inside")
    fs.pipe_file(f"{s3_bucket}/root2/victim.txt", b"OUTSIDE")
    fs.pipe_file(f"{s3_bucket}/victim.txt", b"OUTSIDE")
    fs.pipe_file(f"{s3_bucket}/root", b"OUTSIDE: the key the prefix is named after")
    reader = FsspecFileReader(
        root=f"s3://{s3_bucket}/root",
        storage_options={"s3": moto_s3.storage_options},
        retries=0,
    )
    location = _url_escapes(s3_bucket)[escape]
    assert reader.read("inside.txt") == b"inside"
    with pytest.raises(LocationOutsideRootError) as caught:
        reader.read(location)
    assert caught.value.location == redact(location)
    with pytest.raises(LocationOutsideRootError):
        reader.delete(location)
    fs.invalidate_cache()
    assert fs.cat_file(f"{s3_bucket}/root2/victim.txt") == b"OUTSIDE"
    assert fs.cat_file(f"{s3_bucket}/victim.txt") == b"OUTSIDE"
    assert fs.cat_file(f"{s3_bucket}/root").startswith(b"OUTSIDE")


def test_s3_location_outside_redacts_credentials(moto_s3: Any, s3_bucket: str) -> None:
    reader = FsspecFileReader(
        root=f"s3://{s3_bucket}/root", storage_options={"s3": moto_s3.storage_options}
    )
    with pytest.raises(LocationOutsideRootError) as caught:
        reader.read(f"s3://user:hunter22@{s3_bucket}/root/x?X-Amz-Signature=abcdef")
    assert "hunter22" not in str(caught.value)
    assert "abcdef" not in str(caught.value)


def _read_or_error(reader: FsspecFileReader, location: str) -> bytes | FileReadError:
    try:
        return reader.read(location)
    except FileReadError as exc:  # outside, missing, a directory: typed, nothing else
        return exc


_SEGMENTS = st.sampled_from(
    [
        "..",
        ".",
        "",
        "a",
        "sub",
        "link-out",
        "dir-out",
        "link-in",
        "~",
        "~root",
        "\\",
        "a\\..",
        "\x00",
        "inside.txt",
        "victim.txt",
        "outside",
        "root",
        "root2",
        "file:",
        "/",
    ]
)


@pytest.mark.parametrize("mode", ["openat2", "proc-fd", "realpath"])
@settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    segments=st.lists(_SEGMENTS, min_size=1, max_size=6),
    prefix=st.sampled_from(["", "/", "ROOT/", "BASE/", "file://", "file://ROOT/", "~/"]),
)
def test_every_accepted_location_resolves_inside_the_root(
    tree: _Tree, mode: str, segments: list[str], prefix: str
) -> None:
    """Whatever the table holds, a location is either inside the root (and read or
    deleted there) or gets a typed error; the outside never changes."""
    with pytest.MonkeyPatch.context() as patch:
        if mode != "openat2":
            patch.setattr(_contain, "_OPENAT2", None)
        if mode == "realpath":
            patch.setattr(_contain, "_PROC_FD", False)
        _check_one_location(tree, prefix, segments)


def _check_one_location(tree: _Tree, prefix: str, segments: list[str]) -> None:
    location = prefix.replace("ROOT", str(tree.root)).replace("BASE", str(tree.base)) + "/".join(
        segments
    )
    reader = tree.reader()
    outcome = _read_or_error(reader, location)
    if isinstance(outcome, LocationOutsideRootError):
        assert outcome.location == redact(location)
    elif isinstance(outcome, bytes):
        joined = location if location.startswith("/") else str(tree.root / location)
        if location.startswith("file://"):
            joined = location[len("file://") :]
        real = os.path.realpath(os.path.normpath(joined))
        assert real.startswith(str(tree.root.resolve()) + "/"), (location, real)
        assert outcome != b"OUTSIDE"
    with contextlib.suppress(FileReadError):  # only typed errors; anything else fails
        reader.delete(location)
    assert tree.victim.read_bytes() == b"OUTSIDE"
    assert (tree.base / "root2" / "x.txt").exists()
    for name in ("inside.txt", "sub/deep.txt"):  # restore what an inside delete removed
        path = tree.root / name
        if not path.exists():
            path.write_bytes(name.encode())
