"""ObjectStoreWatermarkStore on a local folder, the memory filesystem and S3 (moto).

The store contract runs on all three; the tests below cover what only an object store can
get wrong: object names built from arbitrary keys, conditional writes (a failed
precondition is a conflict, any other error is an error), a write whose answer was lost,
the history record of a set() interrupted between its two writes, request counts on S3,
cross-process compare-and-set, and leaking credentials.
"""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from deswm import _checkpoints
from deswm._errors import ConfigError, WatermarkConflict, WatermarkError
from deswm._model import WatermarkKey
from deswm._objectstore import local as local_store
from deswm._stores import objectstore
from deswm._stores.objectstore import ObjectStoreWatermarkStore
from deswm.testing._contracts.store import WatermarkStoreContract

T0 = datetime(2024, 5, 1, tzinfo=UTC)
DAY = timedelta(days=1)
KEY = WatermarkKey("orders")


@pytest.fixture
def atomic_moto(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make moto's PutObject check its conditions and write as one step, as S3 does.

    moto 5.2 checks If-Match / If-None-Match and then stores the object without a lock,
    so two simultaneous conditional PUTs can both succeed; real S3 evaluates the
    condition atomically. The tests model S3, not that window.
    """
    from moto.s3.responses import S3Response

    lock = threading.Lock()
    original = S3Response.put_object

    def put_object(self: Any) -> Any:
        with lock:
            return original(self)

    monkeypatch.setattr(S3Response, "put_object", put_object)


def _store(target: Any, **kwargs: Any) -> ObjectStoreWatermarkStore:
    return ObjectStoreWatermarkStore(target.url, storage_options=target.storage_options, **kwargs)


class TestObjectStoreWatermarkStore(WatermarkStoreContract):
    racers = 3
    shared_across_processes = True

    @pytest.fixture
    def store(self, fs_target: Any, request: pytest.FixtureRequest) -> ObjectStoreWatermarkStore:
        if fs_target.kind == "s3":
            request.getfixturevalue("atomic_moto")
        return _store(fs_target, actor="tester@objects")

    @pytest.fixture
    def store_opener(self, fs_target: Any) -> Callable[..., ObjectStoreWatermarkStore]:
        if fs_target.kind == "memory":
            pytest.skip("memory:// exists in one process only")
        return partial(
            ObjectStoreWatermarkStore, fs_target.url, storage_options=fs_target.storage_options
        )


# --- layout ----------------------------------------------------------------------------------


@pytest.fixture
def local_target(fs_target_factory: Callable[[str], Any]) -> Any:
    return fs_target_factory("local")


@pytest.fixture
def s3_target(fs_target_factory: Callable[[str], Any], atomic_moto: None) -> Any:
    return fs_target_factory("s3")


def _files(root: str) -> set[str]:
    found = set()
    for folder, _, files in os.walk(root):
        for file in files:
            found.add(os.path.relpath(os.path.join(folder, file), root).replace(os.sep, "/"))
    return found


def test_objects_are_laid_out_by_key_with_safe_names(local_target: Any) -> None:
    store = _store(local_target)
    keys = [
        WatermarkKey("orders"),
        WatermarkKey("Orders", "purged", 3),
        WatermarkKey("../../escape", "a/b", -1),
        WatermarkKey(".hidden", "..", 0),
        WatermarkKey("50% ü/ß", "x y", 7),
    ]
    for key in keys:
        store.initialize(key, T0)
    names = {n for n in _files(local_target.url) if not n.split("/")[-1].startswith(".")}
    assert names == {
        "watermarks/orders/archived/0.json",
        "watermarks/Orders/purged/3.json",
        "watermarks/%2E.%2F..%2Fescape/a%2Fb/-1.json",
        "watermarks/%2Ehidden/%2E./0.json",
        "watermarks/50%25%20%C3%BC%2F%C3%9F/x%20y/7.json",
    }
    assert not any(p.startswith("..") for p in os.listdir(local_target.url))
    assert [w.key for w in store.list()] == sorted(keys)
    doc = json.loads(Path(local_target.url, "watermarks/orders/archived/0.json").read_text())
    assert doc["format"] == "deswm.watermark/1"
    assert (doc["pipeline"], doc["stage"], doc["partition"]) == ("orders", "archived", 0)
    assert doc["position"] == "2024-05-01T00:00:00.000000Z"
    assert doc["version"] == 1


def test_history_objects_are_named_by_time_key_and_version(local_target: Any) -> None:
    store = _store(local_target)
    store.set(KEY, T0, reason="first")
    store.set(KEY, T0 + DAY, reason="second")
    history = sorted(n for n in _files(local_target.url) if n.startswith("history/"))
    assert len(history) == 2
    digest = objectstore._digest(KEY)
    for name, version in zip(history, (1, 2), strict=True):
        stamp, key_digest, number = name.removeprefix("history/").removesuffix(".json").split("-")
        assert len(stamp) == len("20240501T000000000000Z")
        assert key_digest == digest
        assert int(number) == version
    record = json.loads(Path(local_target.url, history[1]).read_text())
    assert record["reason"] == "second"
    assert record["previous"] == "2024-05-01T00:00:00.000000Z"


def test_an_object_holding_another_key_is_refused(local_target: Any) -> None:
    # What a case-insensitive folder does: "Orders" resolves to the file of "orders".
    store = _store(local_target)
    store.initialize(WatermarkKey("orders"), T0)
    root = Path(local_target.url, "watermarks")
    found_by_folding = root / "Orders" / "archived" / "0.json"
    found_by_folding.parent.mkdir(parents=True)
    found_by_folding.write_bytes((root / "orders" / "archived" / "0.json").read_bytes())
    with pytest.raises(WatermarkError, match="holds watermark orders/archived/0, not Orders"):
        store.get(WatermarkKey("Orders"))


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b'{"format": "other"}'])
def test_a_damaged_object_is_an_error_naming_it(local_target: Any, content: bytes) -> None:
    store = _store(local_target)
    current = store.initialize(KEY, T0)
    Path(local_target.url, "watermarks/orders/archived/0.json").write_bytes(content)
    with pytest.raises(WatermarkError, match=r"watermarks/orders/archived/0\.json") as caught:
        store.advance(current, T0 + DAY)
    assert not isinstance(caught.value, WatermarkConflict)


def test_lock_and_temp_files_stay_hidden(local_target: Any) -> None:
    store = _store(local_target)
    current = store.initialize(KEY, T0)
    store.advance(current, T0 + DAY)
    hidden = {n for n in _files(local_target.url) if n.split("/")[-1].startswith(".")}
    assert hidden == {"watermarks/orders/archived/.0.json.lock"}
    assert [w.version for w in store.list()] == [2]


def test_a_held_lock_makes_the_writer_wait(local_target: Any) -> None:
    import fcntl

    store = _store(local_target)
    current = store.initialize(KEY, T0)
    lock = Path(local_target.url, "watermarks/orders/archived/.0.json.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another process in the middle of a compare-and-set

    def unlock() -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    release = threading.Timer(0.3, unlock)
    started = time.monotonic()
    release.start()
    try:
        advanced = store.advance(current, T0 + DAY)
    finally:
        release.join()
    assert time.monotonic() - started >= 0.25
    assert advanced.version == 2


def test_a_lock_held_too_long_is_an_error(
    local_target: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fcntl

    monkeypatch.setattr(local_store, "_LOCK_TIMEOUT", 0.2)
    store = _store(local_target)
    current = store.initialize(KEY, T0)
    lock = Path(local_target.url, "watermarks/orders/archived/.0.json.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(WatermarkError, match="held the lock") as caught:
            store.advance(current, T0 + DAY)
    finally:
        os.close(fd)
    assert not isinstance(caught.value, WatermarkConflict)
    assert store.get(KEY) == current


def test_two_stores_on_one_memory_url_share_and_compare() -> None:
    url = f"memory://deswm-shared-{os.getpid()}-{time.monotonic_ns()}"
    first = ObjectStoreWatermarkStore(url)
    second = ObjectStoreWatermarkStore(url)
    current = first.initialize(KEY, T0)
    assert second.get(KEY) == current
    second.advance(current, T0 + DAY)
    with pytest.raises(WatermarkConflict) as caught:
        first.advance(current, T0 + 2 * DAY)  # its cached ETag-equivalent is stale
    assert caught.value.actual == 2
    import fsspec

    fsspec.filesystem("memory").rm(url.removeprefix("memory://"), recursive=True)


# --- errors are errors, conflicts are conflicts -------------------------------------------------


def test_other_write_errors_are_never_conflicts(
    local_target: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(local_target)
    current = store.initialize(KEY, T0)

    def broken(name: str, data: bytes, token: str) -> str | None:
        raise OSError(errno.EIO, "disk on fire")

    monkeypatch.setattr(store._backend, "replace", broken)
    with pytest.raises(WatermarkError, match="disk on fire") as caught:
        store.advance(current, T0 + DAY)
    assert not isinstance(caught.value, WatermarkConflict)
    assert isinstance(caught.value.__cause__, OSError)


def test_s3_failed_if_match_is_a_conflict(s3_target: Any) -> None:
    first = _store(s3_target)
    second = _store(s3_target)
    current = first.initialize(KEY, T0)
    second.advance(current, T0 + DAY)
    with pytest.raises(WatermarkConflict) as caught:
        first.advance(current, T0 + 2 * DAY)  # one PUT with a stale ETag: 412
    assert (caught.value.expected_version, caught.value.actual) == (1, 2)


def test_s3_missing_bucket_is_an_error_not_a_missing_watermark(moto_s3: Any) -> None:
    store = ObjectStoreWatermarkStore(
        "s3://deswm-no-such-bucket/wm", storage_options=moto_s3.storage_options
    )
    with pytest.raises(WatermarkError, match="deswm-no-such-bucket"):
        store.get(KEY)
    with pytest.raises(WatermarkError):
        store.initialize(KEY, T0)


def test_s3_write_whose_answer_was_lost_is_recognised_as_ours(
    s3_target: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(s3_target)
    current = store.initialize(KEY, T0)
    backend = store._backend
    real_replace = backend.replace

    def lost_answer(name: str, data: bytes, token: str) -> str | None:
        real_replace(name, data, token)  # it lands ...
        raise OSError(errno.ECONNRESET, "connection reset by peer")  # ... the answer does not

    monkeypatch.setattr(backend, "replace", lost_answer)
    advanced = store.advance(current, T0 + DAY)
    assert advanced.version == 2

    def retried_into_412(name: str, data: bytes, token: str) -> str | None:
        real_replace(name, data, token)  # the first attempt lands, its retry meets it: 412
        return None

    monkeypatch.setattr(backend, "replace", retried_into_412)
    again = store.advance(advanced, T0 + 2 * DAY)
    assert again.version == 3
    assert (
        ObjectStoreWatermarkStore(s3_target.url, storage_options=s3_target.storage_options).get(KEY)
        == again
    )


@pytest.fixture
def s3_calls(s3_target: Any) -> Callable[[ObjectStoreWatermarkStore], list[str]]:
    """Record the S3 operations one store sends."""

    def watch(store: ObjectStoreWatermarkStore) -> list[str]:
        calls: list[str] = []
        fs = store._backend.fs
        original_async, original_sync = fs._call_s3, fs.call_s3

        async def counting(method: str, *args: Any, **kwargs: Any) -> Any:
            calls.append(method)
            return await original_async(method, *args, **kwargs)

        def counting_sync(method: str, *args: Any, **kwargs: Any) -> Any:
            calls.append(method)
            return original_sync(method, *args, **kwargs)

        fs._call_s3, fs.call_s3 = counting, counting_sync
        return calls

    return watch


def test_s3_advance_after_own_write_is_one_conditional_put(
    s3_target: Any, s3_calls: Callable[[ObjectStoreWatermarkStore], list[str]]
) -> None:
    store = _store(s3_target)
    calls = s3_calls(store)
    current = store.initialize(KEY, T0)
    assert calls == ["get_object", "put_object"]
    calls.clear()
    for day in range(1, 4):
        current = store.advance(current, T0 + day * DAY)
    assert calls == ["put_object"] * 3
    other = _store(s3_target)
    other_calls = s3_calls(other)
    other.advance(current, T0 + 4 * DAY)  # nothing cached: read, then one conditional PUT
    assert other_calls == ["get_object", "put_object"]


# --- history ---------------------------------------------------------------------------------


@pytest.fixture
def crash_between_set_writes() -> Iterator[None]:
    def crash(name: str, count: int) -> None:
        raise RuntimeError("crashed between the watermark write and the history write")

    _checkpoints.install("store.set.in_transaction", crash)
    try:
        yield
    finally:
        _checkpoints.uninstall("store.set.in_transaction")


def test_interrupted_set_is_recorded_by_the_next_write(
    fs_target: Any, request: pytest.FixtureRequest
) -> None:
    if fs_target.kind == "s3":
        request.getfixturevalue("atomic_moto")
    store = _store(fs_target)
    current = store.initialize(KEY, T0)
    request.getfixturevalue("crash_between_set_writes")
    with pytest.raises(RuntimeError, match="crashed"):
        store.set(KEY, T0 + 5 * DAY, reason="skip an outage")
    _checkpoints.uninstall("store.set.in_transaction")
    assert list(store.history(KEY)) == []
    moved = store.get(KEY)
    assert moved is not None
    assert (moved.position, moved.version) == (T0 + 5 * DAY, current.version + 1)
    store.advance(moved, T0 + 6 * DAY)  # the next write writes the pending record first
    (change,) = store.history(KEY)
    assert (change.previous, change.position, change.reason) == (T0, T0 + 5 * DAY, "skip an outage")
    store.advance(store.get(KEY), T0 + 7 * DAY)  # type: ignore[arg-type]
    assert len(store.history(KEY)) == 1


def test_failed_history_write_says_the_set_happened(
    local_target: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(local_target)
    store.initialize(KEY, T0)
    backend = store._backend
    real_create = backend.create

    def create(name: str, data: bytes) -> str | None:
        if name.startswith("history/"):
            raise PermissionError(errno.EACCES, "read-only history folder")
        return real_create(name, data)

    monkeypatch.setattr(backend, "create", create)
    with pytest.raises(WatermarkError, match="WAS set to 2024-05-03") as caught:
        store.set(KEY, T0 + 2 * DAY, reason="replay")
    assert "read-only history folder" in str(caught.value)
    monkeypatch.setattr(backend, "create", real_create)
    stored = store.get(KEY)
    assert stored is not None
    assert stored.position == T0 + 2 * DAY
    store.set(KEY, T0 + 3 * DAY, reason="again")
    assert [c.reason for c in store.history(KEY)] == ["again", "replay"]


def test_history_of_one_key_follows_versions_not_clocks(
    local_target: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    clocks = iter([T0 + 10 * DAY, T0 + 10 * DAY, T0, T0])  # the second writer's clock is behind
    monkeypatch.setattr(objectstore, "_now", lambda: next(clocks))
    store = _store(local_target)
    store.set(KEY, T0, reason="first")
    store.set(KEY, T0 + DAY, reason="second")
    assert [c.reason for c in store.history(KEY)] == ["second", "first"]


# --- configuration and secrets -----------------------------------------------------------------


def test_unsupported_filesystems_are_refused() -> None:
    with pytest.raises(ConfigError, match="compare-and-set") as caught:
        ObjectStoreWatermarkStore("http://127.0.0.1:1/watermarks")
    assert caught.value.key == "watermark.url"


def test_bad_keys_are_config_errors(local_target: Any) -> None:
    store = _store(local_target)
    with pytest.raises(ConfigError, match="too long"):
        store.get(WatermarkKey("ü" * 40))
    with pytest.raises(ConfigError, match="pipeline"):
        store.get(WatermarkKey(""))


def test_credentials_never_show(moto_s3: Any) -> None:
    options = {
        **moto_s3.storage_options,
        "key": "AKIDSECRETKEYID1234",
        "secret": "very-secret-value-5678",
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:1"},
        "retries": 1,
        "config_kwargs": {"connect_timeout": 1, "retries": {"max_attempts": 1}},
    }
    store = ObjectStoreWatermarkStore("s3://user:url-password@bucket/wm", storage_options=options)
    shown = [repr(store), store.url]
    with pytest.raises(WatermarkError) as caught:
        store.get(KEY)
    shown.append(str(caught.value))
    for text in shown:
        for secret in ("AKIDSECRETKEYID1234", "very-secret-value-5678", "url-password"):
            assert secret not in text, text
