"""The retrieval service over a real uvicorn server and a real HTTP client (httpx)."""
# ruff: noqa: F811 - the fixtures imported from serving are redefined as parameters

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from serving import Server, path, query, server, start  # noqa: F401 - fixtures

from deswm._archive import Archive
from deswm._objectstore import ObjectStore
from deswm.serve import create_app
from packed_files import FILES, ROUTER, archive_url, at, pack  # noqa: F401 - fixture


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("uid", sorted(FILES))
def test_get_returns_the_file_with_its_headers(server: Server, uid: str) -> None:
    created_at, data = FILES[uid]
    response = server.client.get(path(uid), params=query(created_at))
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["etag"] == f'"{sha(data)}"'
    assert response.headers["content-length"] == str(len(data))
    assert response.headers["accept-ranges"] == "bytes"
    expected_type = {"hello.txt": "text/plain", "dir/a b ż.json": "application/json"}
    assert response.headers["content-type"].split(";")[0] == expected_type.get(
        uid, "application/octet-stream"
    )
    assert response.headers["x-content-type-options"] == "nosniff"


def test_head_sends_the_headers_only(server: Server) -> None:
    created_at, data = FILES["big.bin"]
    response = server.client.head(path("big.bin"), params=query(created_at))
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-length"] == str(len(data))
    assert response.headers["etag"] == f'"{sha(data)}"'


@pytest.mark.parametrize("uid", ["hello.txt", "raw.bin", "big.bin"])
@pytest.mark.parametrize(
    ("header", "select"),
    [
        ("bytes=0-9", slice(0, 10)),
        ("bytes=100-", slice(100, None)),
        ("bytes=-25", slice(-25, None)),
        ("bytes=5-5", slice(5, 6)),
        ("bytes=300-9999999999", slice(300, None)),
    ],
)
def test_ranges(server: Server, uid: str, header: str, select: slice) -> None:
    created_at, data = FILES[uid]
    response = server.client.get(path(uid), params=query(created_at), headers={"Range": header})
    assert response.status_code == 206
    expected = data[select]
    assert response.content == expected
    start = select.start if select.start >= 0 else len(data) + select.start
    assert response.headers["content-range"] == (
        f"bytes {start}-{start + len(expected) - 1}/{len(data)}"
    )
    assert response.headers["content-length"] == str(len(expected))


def test_a_range_inside_a_big_file_reads_only_that_range(archive_url: str, start: Any) -> None:
    archive = Archive(archive_url, ROUTER)
    server = start(archive)
    created_at, data = FILES["big.bin"]
    fetched: list[int] = []
    backend: Any = archive.store.backend
    original = backend.get_range

    def read(name: str, begin: int, end: int, version: str | None) -> Any:
        result = original(name, begin, end, version)
        if name.startswith("_bigFiles/"):
            fetched.append(len(result[0]))
        return result

    backend.get_range = read
    middle = len(data) // 2
    response = server.client.get(
        path("big.bin"), params=query(created_at), headers={"Range": f"bytes={middle}-{middle + 9}"}
    )
    assert response.status_code == 206
    assert response.content == data[middle : middle + 10]
    assert sum(fetched) <= 1024 * 1024 < len(data)


@pytest.mark.parametrize("header", ["bytes=5000000-", "bytes=-0"])
def test_an_unsatisfiable_range_is_416(server: Server, header: str) -> None:
    created_at, data = FILES["hello.txt"]
    response = server.client.get(
        path("hello.txt"), params=query(created_at), headers={"Range": header}
    )
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(data)}"
    assert set(response.json()) >= {"error", "hint"}


@pytest.mark.parametrize("header", ["bytes=0-1,5-6", "bytes=9-3", "items=0-5", "bytes=x-"])
def test_several_or_malformed_ranges_get_the_whole_file(server: Server, header: str) -> None:
    created_at, data = FILES["hello.txt"]
    response = server.client.get(
        path("hello.txt"), params=query(created_at), headers={"Range": header}
    )
    assert response.status_code == 200
    assert response.content == data


def test_if_range_with_another_etag_gets_the_whole_file(server: Server) -> None:
    created_at, data = FILES["raw.bin"]
    headers = {"Range": "bytes=0-9", "If-Range": '"other"'}
    response = server.client.get(path("raw.bin"), params=query(created_at), headers=headers)
    assert response.status_code == 200
    assert response.content == data


@pytest.mark.parametrize("uid", ["hello.txt", "big.bin"])
def test_etag_and_if_none_match(server: Server, uid: str) -> None:
    created_at, data = FILES[uid]
    etag = f'"{sha(data)}"'
    response = server.client.get(
        path(uid), params=query(created_at), headers={"If-None-Match": etag}
    )
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == etag
    other = server.client.get(
        path(uid), params=query(created_at), headers={"If-None-Match": '"abc", W/"def"'}
    )
    assert other.status_code == 200
    assert other.content == data


def test_stat(server: Server) -> None:
    created_at, data = FILES["big.bin"]
    response = server.client.get(path("big.bin") + "/stat", params=query(created_at))
    assert response.status_code == 200
    body = response.json()
    assert body["uid"] == "big.bin"
    assert body["object"].startswith("20240517_") and body["object"].endswith(".des")
    assert body["part"] == 0
    assert body["size"] == len(data)
    assert body["checksum"] == sha(data)
    assert body["codec"] == "none"
    assert body["big"] is True
    assert body["created_at"] == "2024-05-17T00:00:04.000000Z"


def test_created_at_in_another_offset_and_with_a_plus_decoded_as_space(server: Server) -> None:
    _, data = FILES["hello.txt"]
    # A raw '+' in a query string reads as a space; the service restores it.
    response = server.client.get(path("hello.txt") + "?created_at=2024-05-17T02:00:01+02:00")
    assert response.status_code == 200
    assert response.content == data


@pytest.mark.parametrize(
    ("created_at", "message"),
    [
        ("2024-05-17T00:00:01", "no UTC offset"),
        ("2024-05-17", "no UTC offset"),
        ("yesterday", "not an ISO 8601"),
        ("", "created_at is required"),
    ],
)
def test_a_bad_created_at_is_400(server: Server, created_at: str, message: str) -> None:
    response = server.client.get(path("hello.txt"), params={"created_at": created_at})
    assert response.status_code == 400
    body = response.json()
    assert message in body["error"]
    assert body["hint"]


def test_a_missing_created_at_is_400(server: Server) -> None:
    response = server.client.get(path("hello.txt"))
    assert response.status_code == 400
    assert "created_at is required" in response.json()["error"]


@pytest.mark.parametrize("uid", ["a%01b", "a%7Fb", "%0A"])
def test_an_invalid_uid_is_400(server: Server, uid: str) -> None:
    response = server.client.get(f"/files/{uid}", params=query(at(1)))
    assert response.status_code == 400
    assert "uid" in response.json()["error"]


def test_an_unknown_file_is_404_naming_the_shard(server: Server) -> None:
    created_at = at(1)
    response = server.client.get(path("missing.txt"), params=query(created_at))
    assert response.status_code == 404
    body = response.json()
    expected = ROUTER.route("missing.txt", created_at).object_name(0)
    assert body["shard"] == expected
    assert "missing.txt" in body["error"]
    assert body["hint"]
    stat = server.client.get(path("missing.txt") + "/stat", params=query(created_at))
    assert stat.status_code == 404


def test_another_instant_is_404(server: Server) -> None:
    response = server.client.get(path("hello.txt"), params=query(at(77)))
    assert response.status_code == 404
    assert "another file" in response.json()["error"]


class FailingBackend:
    """A backend whose every request fails, with a secret in the message."""

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def fail(*args: Any, **kwargs: Any) -> Any:
            raise OSError("connection refused to https://user:hunter2secret@storage.example/x")

        return fail


def test_a_backend_failure_is_503_without_secrets_or_tracebacks(
    archive_url: str, start: Any, caplog: pytest.LogCaptureFixture
) -> None:
    archive = Archive(archive_url, ROUTER)
    archive.store.backend = cast(ObjectStore, FailingBackend())  # fails every call
    server = start(archive)
    with caplog.at_level(logging.INFO):
        for suffix in ("", "/stat"):
            response = server.client.get(path("hello.txt") + suffix, params=query(at(1)))
            assert response.status_code == 503
            assert response.headers["retry-after"] == "1"
            assert set(response.json()) == {"error", "hint"}
            assert "hunter2secret" not in response.text
            assert "Traceback" not in response.text
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "deswm.serve" in {r.name for r in caplog.records}
    assert "hunter2secret" not in logged
    assert all(r.exc_info is None for r in caplog.records if r.name.startswith("deswm"))


def damage(archive_url: str, uid: str) -> None:
    """Flip a stored byte of an inline entry (the shard keeps its size)."""
    archive = Archive(archive_url, ROUTER)
    shard = archive.stat(uid, FILES[uid][0]).shard
    [entry] = [e for e in archive.entries(shard) if e.uid == uid]
    target = Path(archive_url) / shard
    raw = bytearray(target.read_bytes())
    raw[entry.offset + entry.length // 2] ^= 0xFF
    target.write_bytes(bytes(raw))


def test_damaged_bytes_are_502(tmp_path: Path, start: Any) -> None:
    url = str(tmp_path / "archive")
    pack(url)
    damage(url, "hello.txt")
    server = start(Archive(url, ROUTER))
    response = server.client.get(path("hello.txt"), params=query(at(1)))
    assert response.status_code == 502
    assert "failed verification" in response.json()["hint"]


def test_a_damaged_big_file_cuts_the_stream(tmp_path: Path, start: Any) -> None:
    url = str(tmp_path / "archive")
    pack(url)
    [big] = (Path(url) / "_bigFiles").iterdir()
    data = bytearray(big.read_bytes())
    data[-1] ^= 0xFF
    big.write_bytes(bytes(data))
    server = start(Archive(url, ROUTER))
    created_at, _ = FILES["big.bin"]
    with pytest.raises(httpx.RemoteProtocolError):
        server.client.get(path("big.bin"), params=query(created_at))
    # A range is served (it cannot be checked without the whole file).
    partial = server.client.get(
        path("big.bin"), params=query(created_at), headers={"Range": "bytes=0-9"}
    )
    assert partial.status_code == 206


def test_health_and_readiness(tmp_path: Path, start: Any) -> None:
    url = str(tmp_path / "archive")
    pack(url)
    server = start(Archive(url, ROUTER))
    assert server.client.get("/healthz").json() == {"status": "ok"}
    assert server.client.get("/readyz").status_code == 200
    shutil.rmtree(url)
    gone = server.client.get("/readyz")
    assert gone.status_code == 503
    assert server.client.get("/healthz").status_code == 200


def test_metrics(server: Server) -> None:
    created_at, _ = FILES["hello.txt"]
    for _ in range(3):
        assert server.client.get(path("hello.txt"), params=query(created_at)).status_code == 200
    server.client.get(path("missing"), params=query(created_at))
    server.client.get("/nowhere")
    text = server.client.get("/metrics").text
    assert 'deswm_serve_requests_total{method="GET",route="/files/{uid}",status="200"} 3.0' in text
    assert 'deswm_serve_requests_total{method="GET",route="/files/{uid}",status="404"} 1.0' in text
    assert 'deswm_serve_requests_total{method="GET",route="other",status="404"} 1.0' in text
    assert 'deswm_serve_request_duration_seconds_bucket{le="0.005",route="/files/{uid}"}' in text
    assert 'deswm_serve_request_duration_seconds_count{route="/files/{uid}"} 4.0' in text
    assert "deswm_serve_index_cache_hits_total" in text
    assert "deswm_serve_index_cache_loads_total 1.0" in text
    assert "deswm_serve_index_cache_entries" in text
    assert 'deswm_serve_backend_requests_total{op="get_range"}' in text
    assert "missing" not in text  # no uid becomes a label


def test_an_unknown_method_is_counted_as_other(archive_url: str) -> None:
    transport = httpx.ASGITransport(create_app(Archive(archive_url, ROUTER)))

    async def calls() -> str:
        async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
            for i in range(3):  # uvicorn's h11 parser passes any token as a method
                assert (await client.request(f"BREW{i}", "/healthz")).status_code == 405
            return (await client.get("/metrics")).text

    text = asyncio.run(calls())
    assert 'deswm_serve_requests_total{method="other",route="/healthz",status="405"} 3.0' in text
    assert "BREW" not in text


def test_a_burst_on_a_cold_shard_loads_its_index_once(archive_url: str, start: Any) -> None:
    archive = Archive(archive_url, ROUTER)
    tails: list[str] = []
    backend: Any = archive.store.backend
    read_tail = backend.get_tail

    def slow_tail(name: str, length: int) -> Any:
        tails.append(name)
        time.sleep(0.05)
        return read_tail(name, length)

    backend.get_tail = slow_tail
    server: Server = start(archive)
    created_at, data = FILES["hello.txt"]
    statuses: list[int] = []
    barrier = threading.Barrier(50)

    def fetch() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            barrier.wait()
            response = client.get(path("hello.txt"), params=query(created_at))
            assert response.content == data
            statuses.append(response.status_code)

    threads = [threading.Thread(target=fetch) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 50
    assert len(tails) == 1
    assert archive.cache_stats().loads == 1


def test_s3_through_moto(moto_s3: Any, start: Any) -> None:
    bucket = moto_s3.new_bucket()
    url = f"s3://{bucket}/archive"
    pack(url, storage_options=moto_s3.storage_options)
    archive = Archive(url, ROUTER, storage_options=moto_s3.storage_options)
    server: Server = start(archive)
    counted = server.app.state.metrics.backend

    def requests() -> float:
        return sum(
            float(counted.labels(op)._value.get())
            for op in ("get_range", "get_tail", "stat", "list")
        )

    created_at, data = FILES["hello.txt"]  # a small file: one ranged GET when warm
    cold = server.client.get(path("hello.txt"), params=query(created_at))
    assert cold.content == data
    cold_requests = requests()
    assert 1 <= cold_requests <= 3
    warm = server.client.get(path("hello.txt"), params=query(created_at))
    assert warm.content == data
    assert requests() - cold_requests == 1
    created_at, data = FILES["big.bin"]
    response = server.client.get(
        path("big.bin"), params=query(created_at), headers={"Range": "bytes=1000-1999"}
    )
    assert response.status_code == 206
    assert response.content == data[1000:2000]
    assert server.client.get(path("big.bin"), params=query(created_at)).content == data
    stat = server.client.get(path("big.bin") + "/stat", params=query(created_at)).json()
    assert stat["checksum"] == sha(data)
    assert server.client.get("/readyz").status_code == 200
