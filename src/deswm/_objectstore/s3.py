"""S3 through s3fs's client, so every request is exactly the one deswm means.

s3fs's ``cat_file`` would send a HEAD before a full GET and ``info`` may answer from a
directory cache, so reads, HEADs and listings go to the client directly: a ranged GET
with ``IfMatch`` (a replaced object answers 412), a prefix listing, a ``PutObject`` with
``IfNoneMatch``/``IfMatch`` for conditional writes (409, another conditional write in
flight, is retried), and (inherited from the generic store) a single PUT or a multipart
upload completed on close for a publish, with nothing to sync or clean up afterwards.
s3fs itself is imported by fsspec when an ``s3://`` URL is opened, never here.
"""

from __future__ import annotations

import contextlib
import errno
import random
import time
from collections.abc import Mapping
from typing import Any, Final

import fsspec.asyn

from deswm._errors import ObjectChangedError
from deswm._objectstore.base import ObjectInfo
from deswm._objectstore.errors import (
    is_conditional_conflict,
    is_invalid_range,
    is_missing_key,
    is_precondition_failed,
    object_changed,
)
from deswm._objectstore.fsspec import FsspecStore

__all__ = ["S3Store"]

_CONFLICT_RETRIES: Final = 5
_SINGLE_PUT_MAX: Final = 100 * 2**20
"""Larger create-only objects go as a multipart upload (as s3fs's ``pipe_file`` does)."""


def _total_size(response: Mapping[str, Any]) -> int:
    content_range = response.get("ContentRange")
    if content_range and "/" in content_range:
        return int(str(content_range).rsplit("/", 1)[1])
    return int(response.get("ContentLength", 0))


class S3Store(FsspecStore):
    """An S3 bucket and prefix as an :class:`~deswm._objectstore.base.ObjectStore`.

    Every operation is its own S3 request here; nothing falls back to the generic store.
    """

    kind = "s3"
    atomic_conditional_writes = True

    def __init__(self, url: str, fs: Any, root: str, *, block_size: int) -> None:
        super().__init__(url, fs, root, block_size=block_size)
        bucket, key, _ = fs.split_path(root)
        self.bucket: str = bucket
        self.key_prefix: str = f"{key.strip('/')}/" if key.strip("/") else ""

    def _key(self, name: str) -> str:
        return self.key_prefix + name

    # --- reading -----------------------------------------------------------------------

    def walk(self, folder: str) -> list[str]:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self._key(folder)}
        names: list[str] = []
        while True:
            page = self.fs.call_s3("list_objects_v2", **kwargs)  # a missing bucket raises
            names.extend(
                str(item["Key"])[len(self.key_prefix) :] for item in page.get("Contents", [])
            )
            if not page.get("IsTruncated"):
                return names
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    def list(self, prefix: str) -> list[ObjectInfo]:
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": self._key(prefix),
            "Delimiter": "/",
        }
        out: list[ObjectInfo] = []
        while True:
            try:
                page = self.fs.call_s3("list_objects_v2", **kwargs)
            except FileNotFoundError:  # no such bucket: nothing published yet
                return out
            for item in page.get("Contents", []):
                name = str(item["Key"])[len(self.key_prefix) :]
                out.append(ObjectInfo(name, int(item["Size"]), str(item["ETag"])))
            if not page.get("IsTruncated"):
                return out
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    def stat(self, name: str) -> ObjectInfo | None:
        try:
            head = self.fs.call_s3("head_object", Bucket=self.bucket, Key=self._key(name))
        except FileNotFoundError:
            return None
        return ObjectInfo(name, int(head["ContentLength"]), str(head["ETag"]))

    async def _get(
        self, name: str, byte_range: str | None, if_match: str | None
    ) -> tuple[bytes, Any]:
        """One GET, body included (s3fs's own readers would add a HEAD)."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(name)}
        if byte_range is not None:
            kwargs["Range"] = byte_range
        if if_match is not None:
            kwargs["IfMatch"] = if_match  # S3 answers 412 if the object was replaced
        response = await self.fs._call_s3("get_object", **kwargs)
        body = response["Body"]
        try:
            data = await body.read()
        finally:
            body.close()
        return bytes(data), response

    def _run_get(
        self, name: str, byte_range: str | None, if_match: str | None
    ) -> tuple[bytes, Any]:
        try:
            result: tuple[bytes, Any] = fsspec.asyn.sync(
                self.fs.loop, self._get, name, byte_range, if_match
            )
        except OSError as exc:
            if if_match is not None:
                changed = object_changed(name, exc)
                if changed is not exc:
                    raise changed from exc
            raise
        return result

    def _info(self, name: str, response: Mapping[str, Any]) -> ObjectInfo:
        return ObjectInfo(name, _total_size(response), str(response.get("ETag", "")))

    def get_range(
        self, name: str, start: int, end: int, version: str | None
    ) -> tuple[bytes, ObjectInfo]:
        if end <= start:
            current = self.stat(name)
            if current is None:
                raise FileNotFoundError(errno.ENOENT, "no such object", name)
            if version is not None and current.version != version:
                raise ObjectChangedError(name, "the object's ETag changed")
            return b"", current
        data, response = self._run_get(name, f"bytes={start}-{end - 1}", version)
        return data, self._info(name, response)

    def get_tail(self, name: str, length: int) -> tuple[bytes, ObjectInfo]:
        try:
            data, response = self._run_get(name, f"bytes=-{length}", None)
        except OSError as exc:
            if not is_invalid_range(exc):  # S3 answers 416 for a suffix of an empty object
                raise
            current = self.stat(name)
            if current is None:
                raise FileNotFoundError(errno.ENOENT, "no such object", name) from exc
            return b"", current
        return data, self._info(name, response)

    def read(self, name: str) -> tuple[bytes, str] | None:
        try:
            data, response = self._run_get(name, None, None)
        except FileNotFoundError as exc:
            if is_missing_key(exc):
                return None
            raise
        return data, str(response["ETag"])

    # --- writing -----------------------------------------------------------------------

    def _conditional_put(self, name: str, data: bytes, **condition: str) -> str:
        for attempt in range(_CONFLICT_RETRIES + 1):
            try:
                response = self.fs.call_s3(
                    "put_object", Bucket=self.bucket, Key=self._key(name), Body=data, **condition
                )
            except OSError as exc:
                if attempt < _CONFLICT_RETRIES and is_conditional_conflict(exc):
                    time.sleep(0.05 * 2**attempt * (0.5 + random.random()))
                    continue
                raise
            return str(response["ETag"])
        raise AssertionError("unreachable")  # pragma: no cover

    def create(self, name: str, data: bytes) -> str | None:
        try:
            if len(data) > _SINGLE_PUT_MAX:  # a multipart upload completed with IfNoneMatch
                self.fs.pipe_file(self._path(name), data, mode="create")
                current = self.stat(name)
                return "" if current is None else current.version
            return self._conditional_put(name, data, IfNoneMatch="*")
        except FileExistsError:  # s3fs's translation of a failed If-None-Match
            return None
        except OSError as exc:
            # s3fs only translates a 412 naming its condition; a bare 412 means the same.
            if is_precondition_failed(exc):
                return None
            raise

    def replace(self, name: str, data: bytes, token: str) -> str | None:
        try:
            return self._conditional_put(name, data, IfMatch=token)
        except OSError as exc:
            # A failed If-Match surfaces as a plain OSError: only a 412 is a conflict.
            if is_precondition_failed(exc) or is_missing_key(exc):
                return None
            raise

    def delete(self, name: str, *, sync: bool) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self._key(name))
