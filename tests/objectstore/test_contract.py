"""One contract, run against every ObjectStore implementation.

local (a tmp folder), memory, S3 (the moto server) and the generic fsspec store (over the
memory filesystem, which exercises the code path of GCS, Azure and the rest).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import fsspec
import pytest

from deswm._errors import ObjectChangedError
from deswm._objectstore import ObjectStore, open_store
from deswm._objectstore.fsspec import FsspecStore

KINDS = ["local", "memory", "s3", "fsspec"]


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    yield from _open(str(request.param), request, tmp_path)


def _open(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if kind == "local":
        yield open_store(tmp_path / "root", key="test.url")
    elif kind == "s3":
        moto = request.getfixturevalue("moto_s3")
        url = f"s3://{moto.new_bucket()}/root"
        yield open_store(url, moto.storage_options, key="test.url")
    else:
        url = f"memory://deswm-{uuid.uuid4().hex}"
        if kind == "memory":
            opened = open_store(url, key="test.url")
        else:
            fs = fsspec.filesystem("memory")
            opened = FsspecStore(url, fs, url[len("memory:/") :], block_size=2**20)
        yield opened
        with contextlib.suppress(FileNotFoundError):
            opened.fs.rm(opened.root, recursive=True)


def _put(store: ObjectStore, name: str, data: bytes) -> None:
    def write(f: IO[bytes]) -> None:
        f.write(data)

    store.publish(name, write, sync=True)


def test_the_registry_picks_the_implementation_of_the_kind(store: ObjectStore) -> None:
    assert store.kind in {"local", "memory", "s3", "other"}
    assert store.atomic_conditional_writes is (store.kind != "other")


def test_a_missing_object(store: ObjectStore) -> None:
    assert store.stat("nope") is None
    assert store.read("nope") is None
    assert store.list("") == []
    with pytest.raises(FileNotFoundError):
        store.get_range("nope", 0, 10, None)
    with pytest.raises(FileNotFoundError):
        store.get_tail("nope", 10)
    store.delete("nope", sync=True)  # a missing object is not an error
    assert store.replace("nope", b"x", "any-token") is None


def test_list_is_flat_by_prefix_and_agrees_with_stat(store: ObjectStore) -> None:
    for name, data in [("a_1", b"one"), ("a_2", b"two!"), ("b_1", b"x"), ("a_dir/x", b"y")]:
        _put(store, name, data)
    listed = sorted(store.list("a_"), key=lambda info: info.name)
    assert [(i.name, i.size) for i in listed] == [("a_1", 3), ("a_2", 4)]
    assert listed == [store.stat("a_1"), store.stat("a_2")]
    assert {i.name for i in store.list("")} == {"a_1", "a_2", "b_1"}


def test_walk_finds_every_object_below_a_folder(store: ObjectStore) -> None:
    for name in ["w/p/a.json", "w/p/b.json", "w/q/c.json", "h/d.json"]:
        _put(store, name, b"{}")
    assert sorted(store.walk("w/")) == ["w/p/a.json", "w/p/b.json", "w/q/c.json"]
    assert store.walk("none/") == []


def test_range_reads_are_typed_and_pinned_to_a_version(store: ObjectStore) -> None:
    _put(store, "obj", b"0123456789")
    info = store.stat("obj")
    assert info is not None and info.size == 10
    data, got = store.get_range("obj", 2, 5, info.version)
    assert (data, got) == (b"234", info)
    assert store.get_range("obj", 8, 50, None)[0] == b"89"  # never past the end
    assert store.get_range("obj", 4, 4, info.version)[0] == b""
    assert store.get_tail("obj", 4) == (b"6789", info)
    assert store.get_tail("obj", 100) == (b"0123456789", info)
    _put(store, "obj", b"replaced, and longer")
    with pytest.raises(ObjectChangedError):
        store.get_range("obj", 0, 3, info.version)
    with pytest.raises(ObjectChangedError):
        store.get_range("obj", 3, 3, info.version)


def test_the_tail_of_an_empty_object(store: ObjectStore) -> None:
    _put(store, "empty", b"")
    data, info = store.get_tail("empty", 64)
    assert (data, info.size) == (b"", 0)


def test_create_is_create_only(store: ObjectStore) -> None:
    etag = store.create("dir/obj", b"first")
    assert etag is not None
    assert store.read("dir/obj") == (b"first", etag)
    assert store.create("dir/obj", b"second") is None
    assert store.read("dir/obj") == (b"first", etag)


def test_replace_is_a_compare_and_set_on_the_etag(store: ObjectStore) -> None:
    first = store.create("obj", b"v1")
    assert first is not None
    second = store.replace("obj", b"v2", first)
    assert second is not None and second != first
    assert store.read("obj") == (b"v2", second)
    assert store.replace("obj", b"v3", first) is None  # stale: nothing written
    assert store.read("obj") == (b"v2", second)


def test_delete(store: ObjectStore) -> None:
    _put(store, "obj", b"x")
    store.delete("obj", sync=True)
    assert store.stat("obj") is None
    assert store.list("") == []


@pytest.mark.parametrize("kind", ["local", "memory", "s3"])  # memory files cannot discard
def test_publish_replaces_atomically_and_a_failed_write_leaves_the_old_object(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    opened = _open(kind, request, tmp_path)
    store = next(opened)
    request.addfinalizer(lambda: next(opened, None))
    _put(store, "obj", b"old")

    def broken(f: IO[bytes]) -> None:
        f.write(b"half")
        raise RuntimeError("writer died")

    with pytest.raises(RuntimeError, match="writer died"):
        store.publish("obj", broken, sync=True)
    assert store.read("obj") is not None
    assert store.get_tail("obj", 10)[0] == b"old"
    if store.kind == "local":
        assert sorted(p.name for p in Path(store.root).iterdir()) == ["obj"]  # no temp left
