"""Bucket manifests: what one committed bucket of one partition holds, as deterministic JSON.

The orchestrator writes a manifest after a bucket's shards are published and before the
watermark passes the bucket, at ``_manifests/{YYYYMMDD}/p{index}-of-{count}.json``
beside the shards (a name no shard listing matches). It records

* every part of the partition's groups of that day: name, size, entry count and the
  sha256 of the object's bytes (computed while the packer wrote it, so no second read);
* the rows the window query returned for the bucket and partition: their count, how
  many were listed in the error table, and an order-independent digest of their
  ``(uid, created_at)`` set: the sum modulo ``2**256`` of ``sha256(uid "\\0"
  format_utc(created_at))`` read as big-endian integers. A sum, unlike an XOR, does not
  cancel a row counted twice, and it can be compared with the same aggregate computed
  from the source later (a reconcile).

The bytes are a pure function of the bucket's content: no write time, sorted keys, no
whitespace. A replay that changes nothing leaves the object untouched (its modification
time stays the commit time that :func:`ManifestStore.written_at` reports); one whose
content changed rewrites it atomically. deswm never deletes a manifest (G3).
The layout is specified in ``docs/format.md`` ("Bucket manifests").
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import IO, Any, Final

import attrs

from deswm import _publish
from deswm._container import PartInfo
from deswm._errors import CorruptManifestError, ManifestMissingError
from deswm._model import Partition, PublishedShard, Window
from deswm._protocols import ShardRouter, SourceProvider
from deswm._routing import uid_text
from deswm._rowdigest import DIGEST_METHOD, RowDigest
from deswm._shardio import ShardStore, WriteFn
from deswm._sources import source_rows
from deswm._timeutil import format_day, format_utc, parse_day

__all__ = [
    "MANIFESTS",
    "BucketManifest",
    "ManifestGroup",
    "ManifestPart",
    "ManifestStore",
    "RowDigest",
    "manifest_name",
]

MANIFESTS: Final = "_manifests"
"""Folder beside the shards holding the manifests (no shard name starts with ``_``)."""

FORMAT: Final = "deswm.bucket-manifest"
VERSION: Final = 1
_NAME = re.compile(r"^p(\d+)-of-(\d+)\.json$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


# --- the value types ----------------------------------------------------------------------


def manifest_name(day: str, partition: Partition) -> str:
    """``_manifests/{day}/p{index}-of-{count}.json``."""
    return f"{MANIFESTS}/{day}/p{partition.index}-of-{partition.count}.json"


@attrs.frozen
class ManifestPart:
    """One shard object of a group as committed: its bytes' sha256, size and entry count."""

    name: str
    part: int
    size: int
    entries: int
    sha256: str


@attrs.frozen
class ManifestGroup:
    """The parts of one shard group (``{day}_{hex}``), by part number."""

    hex: str
    parts: tuple[ManifestPart, ...]

    @property
    def entries(self) -> int:
        return sum(part.entries for part in self.parts)


@attrs.frozen
class BucketManifest:
    """What one committed bucket of one partition holds (see the module docs)."""

    day: str
    partition: Partition
    pipeline: str
    rows: int
    """Rows the window query returned for this bucket and partition."""
    digest: str
    """The row digest (:class:`RowDigest`) of those rows."""
    listed: int
    """Of those rows, how many were listed in the error table instead of archived."""
    groups: tuple[ManifestGroup, ...]

    @property
    def name(self) -> str:
        return manifest_name(self.day, self.partition)

    @property
    def entries(self) -> int:
        """Entries in the listed parts (rows archived now or before, G3)."""
        return sum(group.entries for group in self.groups)

    @property
    def parts(self) -> tuple[ManifestPart, ...]:
        return tuple(part for group in self.groups for part in group.parts)

    def group(self, hex_: str) -> ManifestGroup | None:
        return next((group for group in self.groups if group.hex == hex_), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "day": self.day,
            "bucket": format_utc(parse_day(self.day, "day")),
            "pipeline": self.pipeline,
            "partition": {"index": self.partition.index, "count": self.partition.count},
            "rows": {
                "count": self.rows,
                "listed": self.listed,
                "digest": self.digest,
                "method": DIGEST_METHOD,
            },
            "groups": [
                {
                    "hex": group.hex,
                    "entries": group.entries,
                    "parts": [attrs.asdict(part) for part in group.parts],
                }
                for group in self.groups
            ],
        }

    def to_bytes(self) -> bytes:
        """Canonical JSON: sorted keys, no whitespace, ASCII, one trailing newline."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return text.encode("ascii") + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes, *, name: str) -> BucketManifest:
        """Parse and check a manifest; :class:`CorruptManifestError` names what is wrong."""
        try:
            raw = json.loads(data)
        except (UnicodeDecodeError, ValueError) as exc:
            raise CorruptManifestError(name, f"not JSON: {exc}") from None
        try:
            manifest = _parse(raw)
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptManifestError(name, f"bad manifest: {exc!r}") from None
        if manifest.to_bytes() != data:
            raise CorruptManifestError(name, "not in canonical form (edited or truncated?)")
        return manifest


def _parse(raw: Any) -> BucketManifest:
    if raw.get("format") != FORMAT or raw.get("version") != VERSION:
        raise ValueError(f"format {raw.get('format')!r} version {raw.get('version')!r}")
    rows = raw["rows"]
    if rows["method"] != DIGEST_METHOD or not _SHA256.match(rows["digest"]):
        raise ValueError("unknown row digest")
    groups = []
    for group in raw["groups"]:
        parts = tuple(
            ManifestPart(
                str(p["name"]), int(p["part"]), int(p["size"]), int(p["entries"]), str(p["sha256"])
            )
            for p in group["parts"]
        )
        if any(not _SHA256.match(part.sha256) for part in parts):
            raise ValueError(f"group {group['hex']}: a part sha256 is not 64 hex digits")
        groups.append(ManifestGroup(str(group["hex"]), parts))
    partition = raw["partition"]
    return BucketManifest(
        day=str(raw["day"]),
        partition=Partition(int(partition["index"]), int(partition["count"])),
        pipeline=str(raw["pipeline"]),
        rows=int(rows["count"]),
        digest=str(rows["digest"]),
        listed=int(rows["listed"]),
        groups=tuple(groups),
    )


# --- the store ----------------------------------------------------------------------------


class ManifestStore:
    """Reads and writes the manifests of one destination (the packer's or archive's store)."""

    def __init__(self, store: ShardStore, router: ShardRouter) -> None:
        self._store = store
        self._router = router

    def __repr__(self) -> str:
        return f"ManifestStore({self._store!r})"

    @property
    def store(self) -> ShardStore:
        return self._store

    # --- reading ---------------------------------------------------------------------------

    def read(self, day: str, partition: Partition) -> BucketManifest | None:
        """The manifest of ``day`` (``YYYYMMDD``) and ``partition``, or ``None``."""
        name = manifest_name(day, partition)
        data = self._store.read_object(name)
        return None if data is None else BucketManifest.from_bytes(data, name=name)

    def require(self, day: str, partition: Partition) -> BucketManifest:
        """:meth:`read`, raising :class:`ManifestMissingError` when there is none."""
        manifest = self.read(day, partition)
        if manifest is None:
            raise ManifestMissingError(
                day,
                f"{partition.index}/{partition.count}",
                name=manifest_name(day, partition),
            )
        return manifest

    def partitions(self, day: str) -> list[Partition]:
        """The partitions that have a manifest for ``day``, by index."""
        found = []
        for name in self._store.walk(f"{MANIFESTS}/{day}"):
            match = _NAME.match(name.rpartition("/")[2])
            if match is not None and name.startswith(f"{MANIFESTS}/{day}/"):
                index, count = int(match.group(1)), int(match.group(2))
                if 0 <= index < count:
                    found.append(Partition(index, count))
        return sorted(found, key=lambda p: (p.count, p.index))

    def written_at(self, day: str, partition: Partition) -> datetime | None:
        """When the manifest's current content was written (the commit that produced it),
        from the object's modification time; ``None`` where the store does not say."""
        return self._store.modified(manifest_name(day, partition))

    # --- writing ---------------------------------------------------------------------------

    def record(
        self,
        bucket: datetime,
        partition: Partition,
        pipeline: str,
        rows: RowDigest,
        listed: int,
        written: Sequence[PublishedShard] = (),
        *,
        rehash: bool = False,
    ) -> BucketManifest:
        """Build the manifest of a just published bucket and store it (unless identical).

        ``rehash``: read and hash every part instead of trusting the previous manifest
        for parts left as they were (a rebuild).
        """
        day = format_day(bucket)
        try:
            previous = self.read(day, partition)
        except CorruptManifestError:
            if not rehash:
                raise
            previous = None
        manifest = BucketManifest(
            day=day,
            partition=partition,
            pipeline=pipeline,
            rows=rows.count,
            digest=rows.hexdigest,
            listed=listed,
            groups=self._groups(day, partition, written, None if rehash else previous),
        )
        if previous is None or previous.to_bytes() != manifest.to_bytes():
            self._store.publish(manifest.name, _writer(manifest.to_bytes()))
        # A writer killed while it wrote this manifest leaves a temp file on local disk;
        # the shards' publish cleans theirs, and an unchanged manifest is not rewritten,
        # so its folder is cleaned here (temps older than an hour; none on S3).
        self._store.cleanup_temp(folder=f"{MANIFESTS}/{day}")
        return manifest

    def _groups(
        self,
        day: str,
        partition: Partition,
        written: Sequence[PublishedShard],
        previous: BucketManifest | None,
    ) -> tuple[ManifestGroup, ...]:
        """Every listed part of the partition's groups of ``day``, with its sha256.

        A part written just now carries its digest; one left as it was takes it from the
        previous manifest (same name and size); anything else (an archive written before
        manifests) is read once and hashed.
        """
        known: dict[str, tuple[int, int, str]] = {}
        if previous is not None:
            known = {p.name: (p.size, p.entries, p.sha256) for p in previous.parts}
        for shard in written:
            if shard.sha256 is not None:
                known[shard.name] = (shard.size, shard.entries, shard.sha256)
        width = len(self._router.group(parse_day(day, "day"), 0).hex)
        by_hex: dict[str, list[ManifestPart]] = {}
        for part in self._store.list_day(day):
            if len(part.hex) != width or not partition.owns(int(part.hex, 16)):
                continue
            by_hex.setdefault(part.hex, []).append(self._part(part, known.get(part.name)))
        return tuple(
            ManifestGroup(hex_, tuple(sorted(parts, key=lambda p: p.part)))
            for hex_, parts in sorted(by_hex.items())
        )

    def _part(self, part: PartInfo, known: tuple[int, int, str] | None) -> ManifestPart:
        if known is not None and known[0] == part.size:
            size, entries, sha256 = known
            return ManifestPart(part.name, part.part, size, entries, sha256)
        entries = len(self._store.read_index(part).entries)
        return ManifestPart(part.name, part.part, part.size, entries, self._store.sha256(part))

    def refresh(
        self,
        bucket: datetime,
        partition: Partition,
        written: Sequence[PublishedShard],
        archived: int,
    ) -> BucketManifest | None:
        """After listed files of a committed bucket were archived (a retry): the parts as
        they are now, the same rows, ``archived`` fewer listed. ``None`` without a manifest
        (nothing to keep up to date; ``deswm manifest --rebuild`` writes one)."""
        previous = self.read(format_day(bucket), partition)
        if previous is None:
            return None
        return self.record(
            bucket,
            partition,
            previous.pipeline,
            RowDigest.known(previous.rows, previous.digest),
            max(0, previous.listed - archived),
            written,
        )

    def rebuild(
        self,
        source: SourceProvider,
        bucket: datetime,
        partition: Partition,
        pipeline: str,
        listed: int = 0,
    ) -> BucketManifest:
        """Write a committed bucket's manifest from its published parts (each read and
        hashed once) and the source's current rows of the bucket and partition.

        For archives built before manifests existed, and to replace a damaged manifest;
        the caller makes sure the bucket is below the watermark. Rows that reached the
        source after the bucket was committed are counted too, so run it before a
        reconcile would find them, or replay the day instead.
        """
        rows = RowDigest()
        window = Window(bucket, self._router.next_bucket(bucket))
        with source_rows(source.iter_records(window)) as records:
            for record in records:
                uid = uid_text(record.uid)
                if partition.count == 1 or partition.owns(self._router.shard_index(uid)):
                    rows.add(uid, record.created_at)
        return self.record(bucket, partition, pipeline, rows, listed, rehash=True)


def _writer(data: bytes) -> WriteFn:
    def write(fp: IO[bytes]) -> None:
        fp.write(data)

    return write


def manifest_dict(
    manifest: BucketManifest, written_at: datetime | None = None
) -> Mapping[str, Any]:
    """The manifest as the CLI prints it: its JSON plus where and when it was written."""
    out = dict(manifest.to_dict())
    out["object"] = manifest.name
    out["written_at"] = None if written_at is None else format_utc(written_at)
    return out


_publish(globals())
