"""DesPacker: one bucket's files in, deterministic DES2 shard objects out.

A :class:`DesBucketWriter` collects a bucket (a UTC day): each file is routed to its group
(``{day}_{hex}``), hashed (sha256) and compressed, and its stored bytes are buffered per
group, in memory up to ``spill_threshold`` bytes in total and in one spill file beyond
(G9). Files above ``big_file_threshold`` go to ``_bigFiles/<sha256>`` at once
(created once, shared by identical content; an existing object is hashed first and
rewritten if damaged, so no entry links to bytes that do not verify, G16). ``publish()``
then writes each touched group.

Which entry goes into which part object, both for a fresh group and for a merge with
published parts (G3: no entry is dropped; one moves only to an object published before
its old one is rewritten), is decided by the pure
planner, :func:`deswm._planner.plan_group`, whose module docstring states the rules. The
packer carries a plan out: parts whose content would be byte-identical are not
rewritten (a replay of an unchanged day costs no writes), but a part holding entries
re-read from their sources is first rendered into a sink comparing it with the
published bytes (read once, in 8 MiB chunks) and rewritten if they differ (G16); parts
left empty are deleted after the others are published; stored bytes of kept old
entries are copied verbatim with ranged reads pinned to the version that was indexed.

Sizes, the entry meta and object names come from :mod:`deswm._container`, the one module
that knows the DES2 layout.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import IO, Any, Final, cast

import attrs

from deswm import _publish
from deswm._buffers import (
    BIG,
    CODEC_IDS,
    CODEC_MASK,
    CODEC_NAMES,
    RECORD,
    SPILLED,
    Encoded,
    Encoder,
    Fingerprints,
    Group,
    Spill,
    iter_records,
)
from deswm._checkpoints import Checkpoint, reach
from deswm._container import (
    MAX_PART_NUMBER,
    MAX_UID_BYTES,
    META_TEMPLATE,
    Compressor,
    PartInfo,
    ShardIndex,
    ShardWriter,
    day_prefix,
    record_size,
)
from deswm._errors import (
    ArchivedDuplicateError,
    ConfigError,
    CorruptShardError,
    DeswmError,
    DuplicateUidError,
    ObjectChangedError,
    PackError,
)
from deswm._manifest import ManifestStore
from deswm._model import ArchivedEntry, BucketResult, Codec, PublishedShard, ShardKey, SourceRecord
from deswm._objectstore import ObjectStore
from deswm._planner import (
    COPY_CHUNK,
    IN_BUFFER,
    IN_OLD_PART,
    IN_SPILL,
    PartPlan,
    PlannedEntry,
    copy_runs,
    plan_group,
)
from deswm._protocols import ShardRouter
from deswm._routing import DesRouter, require_day_buckets, uid_text
from deswm._shardio import BIG_FILES, ShardStore, describe, shard_store
from deswm._timeutil import format_day, format_utc, require_utc

__all__ = ["DesBucketWriter", "DesPacker"]

log = logging.getLogger("deswm.packer")

GIB: Final = 2**30
MIB: Final = 2**20

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

_FSYNC_THREADS: Final = 8
"""Threads issuing a bucket's fsyncs together on local disk: the file system completes
concurrent fsyncs in one journal commit (measured here: 0.65 ms per object one at a
time, 0.25 ms with 4 to 8 at once)."""


# --- settings -------------------------------------------------------------------------------


def _int_setting(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"must be an integer >= {minimum}, got {value!r}", key=f"archive.{name}")
    return value


@attrs.frozen
class _Settings:
    compression: Codec
    compression_level: int
    max_shard_size: int
    big_file_threshold: int
    spill_threshold: int
    spill_dir: str | None
    workers: int


# --- the packer -----------------------------------------------------------------------------


class DesPacker:
    """Packs buckets of files into DES2 shards on a local folder or any fsspec URL.

    Args:
        url: destination folder (local path, ``s3://bucket/prefix``, ``memory://x``, ...).
        router: how files map to groups; ``DesRouter(8)`` by default.
        storage_options: fsspec options (credentials, endpoint); never shown in reprs.
        store: an object store to write to instead of opening ``url`` (then neither
            ``url`` nor ``storage_options`` is given); see ``deswm._objectstore``.
        compression: ``"zstd"`` or ``"none"`` (payloads that do not shrink are stored raw).
        compression_level: zstd level.
        max_shard_size: the greedy split limit of a part, in bytes.
        big_file_threshold: files larger than this go to ``_bigFiles/<sha256>``.
        spill_threshold: bytes of payloads kept in memory before spilling to disk.
        spill_dir: where spill directories are created (the system temp dir by default).
        workers: threads compressing (0 = everything in the calling thread, which also
            hashes); at most one fewer than the CPUs this process may use, since the
            calling thread keeps one busy.
    """

    def __init__(
        self,
        url: str | os.PathLike[str] | None = None,
        router: ShardRouter | None = None,
        *,
        storage_options: Mapping[str, Any] | None = None,
        store: ObjectStore | None = None,
        compression: Codec = "zstd",
        compression_level: int = 3,
        max_shard_size: int = GIB,
        big_file_threshold: int = 10 * MIB,
        spill_threshold: int = 64 * MIB,
        spill_dir: str | os.PathLike[str] | None = None,
        workers: int = 2,
    ) -> None:
        destination = shard_store(url, storage_options, store)
        if router is None:
            router = DesRouter(8)
        elif not isinstance(router, ShardRouter):
            raise ConfigError(f"must be a ShardRouter, got {router!r}", key="router")
        require_day_buckets(router)
        level = _int_setting("compression_level", compression_level, -(2**31))
        Compressor(compression, level)  # validates codec and level (ConfigError)
        folder = None if spill_dir is None else os.fspath(spill_dir)
        if folder is not None and not os.path.isdir(folder):
            raise ConfigError(f"{folder!r} is not an existing directory", key="archive.spill_dir")
        self._settings = _Settings(
            compression=compression,
            compression_level=level,
            max_shard_size=_int_setting("max_shard_size", max_shard_size, 1),
            big_file_threshold=_int_setting("big_file_threshold", big_file_threshold, 0),
            spill_threshold=_int_setting("spill_threshold", spill_threshold, 0),
            spill_dir=folder,
            workers=_int_setting("workers", workers, 0),
        )
        self._router: ShardRouter = router
        self._store = destination

    def __repr__(self) -> str:
        s = self._settings
        return describe(
            "DesPacker",
            self._store,
            self._router,
            compression=s.compression,
            max_shard_size=s.max_shard_size,
        )

    @property
    def router(self) -> ShardRouter:
        return self._router

    @property
    def store(self) -> ShardStore:
        """The destination (for tools and tests)."""
        return self._store

    @property
    def manifests(self) -> ManifestStore:
        """The bucket manifests beside the shards, which the orchestrator writes."""
        return ManifestStore(self._store, self._router)

    def open_bucket(self, bucket: datetime) -> DesBucketWriter:
        """A writer for the bucket starting at ``bucket`` (aware, a bucket start)."""
        start = self._router.bucket_start(bucket)
        if start != require_utc(bucket, "bucket"):
            raise ValueError(f"{bucket} is not a bucket start (expected {start})")
        return DesBucketWriter(self._store, self._router, self._settings, start)


# --- the bucket writer -----------------------------------------------------------------------


_MICROSECOND: Final = timedelta(microseconds=1)
_DAY_MICROS: Final = 86_400_000_000


def _micros(created_at: datetime) -> int:
    return (require_utc(created_at, "created_at") - _EPOCH) // _MICROSECOND


def _from_micros(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def _day_prefix(day: int) -> str:
    """``YYYY-MM-DDT`` of the UTC day ``day`` days after the epoch: the ``format_utc``
    prefix shared by every entry of that day."""
    full = format_utc(_from_micros(day * _DAY_MICROS))
    return full[: full.index("T") + 1]


_planned_entries: Callable[..., list[PlannedEntry]] | None
try:
    # Reads RECORD's layout ("<qQQQB32sH", then the uid) as _native.c spells it out;
    # tests/test_native.py holds the two together.
    from deswm._native import planned_entries as _planned_entries
except ImportError:  # built without a C compiler: _new_items_python does the same
    _planned_entries = None

_CODECS_BY_ID: Final = tuple(CODEC_NAMES.get(i) for i in range(CODEC_MASK + 1))
_LAYOUT: Final = (
    record_size(0, 0),
    record_size(0, 0, 0),
    SPILLED,
    BIG,
    CODEC_MASK,
    IN_BUFFER,
    IN_SPILL,
)


def _new_items(records: bytes) -> list[PlannedEntry]:
    """The planned entries of a group's records (the per-entry work of a publish): in
    one call into the C helper where it is built (the same entries, checked by the
    tests), else :func:`_new_items_python`."""
    if _planned_entries is not None:
        return _planned_entries(records, PlannedEntry, _CODECS_BY_ID, _day_prefix, _LAYOUT)
    return _new_items_python(records)


def _new_items_python(records: bytes) -> list[PlannedEntry]:
    """The planned entries of a group's records (the per-entry work of a publish).

    ``created_at`` text is built from the day's ``format_utc`` prefix plus fixed-width
    time fields, which is exactly ``format_utc`` (checked by the tests) at a fraction of
    the cost of a ``datetime`` and ``strftime`` per entry.
    """
    items = []
    days: dict[int, str] = {}
    view = memoryview(records)
    unpack = RECORD.unpack_from
    header = RECORD.size
    position = 0
    end = len(view)
    while position < end:
        micros, size, length, loc, flags, digest, uid_len = unpack(view, position)
        position += header
        uid = bytes(view[position : position + uid_len]).decode("utf-8")
        position += uid_len
        day, rest = divmod(micros, _DAY_MICROS)
        prefix = days.get(day)
        if prefix is None:
            prefix = days[day] = _day_prefix(day)
        seconds, fraction = divmod(rest, 1_000_000)
        minutes, second = divmod(seconds, 60)
        hour, minute = divmod(minutes, 60)
        text = f"{prefix}{hour:02d}:{minute:02d}:{second:02d}.{fraction:06d}Z"
        sha = digest.hex()
        meta = META_TEMPLATE % (text.encode(), sha.encode())
        if flags & BIG:
            cost = record_size(uid_len, len(meta), len(sha))
            items.append(
                PlannedEntry(
                    (text, uid), uid, "none", size, length, meta, sha, cost, IN_BUFFER, loc
                )
            )
            continue
        cost = length + record_size(uid_len, len(meta))
        source = IN_SPILL if flags & SPILLED else IN_BUFFER
        codec: Codec = CODEC_NAMES[flags & CODEC_MASK]
        items.append(
            PlannedEntry((text, uid), uid, codec, size, length, meta, None, cost, source, loc)
        )
    return items


_Tag = tuple[Group, int, int, bytes]
"""What a pending payload is recorded with: group, created_at µs, raw size, UTF-8 uid."""


class DesBucketWriter:
    """Collects one bucket's files and publishes its shards, or nothing (a ``BucketWriter``).

    Use it as a context manager: leaving the block without :meth:`publish` aborts.
    """

    def __init__(
        self, store: ShardStore, router: ShardRouter, settings: _Settings, bucket: datetime
    ) -> None:
        self._store = store
        self._router = router
        self._settings = settings
        self._bucket = bucket
        self._day = format_day(bucket)
        self._groups: dict[int, Group] = {}
        # A router declaring route() to be its parts is asked for the shard index alone.
        composed = getattr(router, "route_is_composed", False) is True
        self._shard_index = router.shard_index if composed else None
        self._bucket_end = bucket + timedelta(days=1)
        self._bucket_micros = _micros(bucket)
        self._big_file_threshold = settings.big_file_threshold
        self._encoder: Encoder[_Tag] = Encoder(
            settings.compression, settings.compression_level, _compress_threads(settings.workers)
        )
        self._spill = Spill(settings.spill_threshold, settings.spill_dir)
        self._state = "open"
        self._files = 0
        self._bytes_in = 0
        self._big_written = 0
        self._big_seen: set[str] = set()
        self._seen = Fingerprints()
        self._listing: dict[str, list[PartInfo]] | None = None
        self._indexes: dict[str, tuple[PartInfo, ShardIndex]] = {}

    def __repr__(self) -> str:
        return f"DesBucketWriter({self._day}, files={self._files}, state={self._state})"

    @property
    def bucket(self) -> datetime:
        return self._bucket

    @property
    def spilled_bytes(self) -> int:
        """Bytes written to the spill file so far (0 when everything fitted in memory)."""
        return self._spill.spilled_bytes

    # --- adding ------------------------------------------------------------------------------

    def add(self, record: SourceRecord, data: bytes) -> None:
        """Add one file.

        Raises :class:`DuplicateUidError` for a second row of a uid in this writer, and
        :class:`~deswm.ArchivedDuplicateError` (a subclass) for a row whose uid is
        already published in its group with another ``created_at`` (G14). The writer
        stays usable after either.
        """
        if self._state != "open":
            self._require("open")
        uid = record.uid
        if type(uid) is not str:
            uid = uid_text(uid)
        try:
            encoded_uid = uid.encode("utf-8")
        except UnicodeEncodeError:
            encoded_uid = _encode_uid(uid)  # raises the PackError naming the uid
        if len(encoded_uid) > MAX_UID_BYTES:
            _encode_uid(uid)  # raises the PackError naming the uid
        created_at = record.created_at
        if (
            self._shard_index is not None
            and created_at.tzinfo is UTC
            and self._bucket <= created_at < self._bucket_end
        ):
            # A composed route (ShardRouter.route_is_composed), an aware UTC instant
            # inside the bucket: route by the shard index alone (what route() computes,
            # without a new ShardKey per file), and the instant from its clock fields
            # (the bucket is a UTC day: what _micros computes, without a timedelta).
            index = self._shard_index(uid)
            group = self._groups.get(index)
            if group is None:
                group = self._groups[index] = Group(self._router.group(self._bucket, index))
            micros = self._bucket_micros + (
                ((created_at.hour * 60 + created_at.minute) * 60 + created_at.second) * 1_000_000
                + created_at.microsecond
            )
        else:
            uid, key = self._route(record)
            group = self._groups.get(key.index)
            if group is None:
                group = self._groups[key.index] = Group(key)
            micros = _micros(created_at)
        if type(data) is not bytes:
            data = bytes(data)  # hashed and compressed later, maybe on another thread
        if not self._seen.add(Fingerprints.of(encoded_uid)):
            first = self._first_created_at(group, uid)
            if first is not None:
                raise DuplicateUidError(uid, first, created_at, shard=group.key.prefix)
        published = group.published
        if published is None:
            published = self._load_published(group)
        if published:
            _check_identity(published, uid, created_at)
        size = len(data)
        self._files += 1
        self._bytes_in += size
        try:
            if size > self._big_file_threshold:
                digest = hashlib.sha256(data).digest()
                self._write_big(digest.hex(), data)
                self._record(group, micros, size, BIG, b"", digest, encoded_uid)
            else:
                done = self._encoder.submit((group, micros, size, encoded_uid), data)
                if done:
                    self._apply(done)
            reach(Checkpoint.PACKER_AFTER_ADD)
        except BaseException:
            self._state = "failed"
            raise

    def revisit(self, index: int) -> None:
        """Plan group ``index`` at :meth:`publish` even when no file is added to it.

        The plan then lays out what is published as a clean run would (a merge that a
        crash interrupted may have left an entry in two parts); parts that are already
        right are not rewritten. Costs one index read per part of the group.
        """
        self._require("open")
        if index not in self._groups:
            self._groups[index] = Group(self._router.group(self._bucket, index))

    def _route(self, record: SourceRecord) -> tuple[str, ShardKey]:
        uid = uid_text(record.uid)
        key = self._router.route(uid, record.created_at)
        if key.bucket != self._bucket:
            raise PackError(
                f"row uid={uid!r} created_at={record.created_at} belongs to bucket "
                f"{format_utc(key.bucket)}, not to this writer's {format_utc(self._bucket)}",
                hint="Open one bucket writer per bucket (router.bucket_start(created_at))",
            )
        return uid, key

    def _apply(self, results: Sequence[tuple[_Tag, Encoded]]) -> None:
        add = self._spill.add
        for (group, micros, size, encoded_uid), (codec, stored, digest) in results:
            add(group, micros, size, CODEC_IDS[codec], digest, encoded_uid, stored)

    def _record(
        self,
        group: Group,
        micros: int,
        size: int,
        flags: int,
        stored: bytes,
        digest: bytes,
        encoded_uid: bytes,
    ) -> None:
        self._spill.add(group, micros, size, flags, digest, encoded_uid, stored)

    def _first_created_at(self, group: Group, uid: str) -> datetime | None:
        """``created_at`` of the uid's earlier row, or ``None`` (a fingerprint collision)."""
        try:
            self._apply(self._encoder.drain())
            records = self._spill.records(group)
        except BaseException:
            self._state = "failed"
            raise
        for micros, *_, found in iter_records(records):
            if found == uid:
                return _from_micros(micros)
        return None

    def _load_published(self, group: Group) -> tuple[tuple[PartInfo, ShardIndex], ...]:
        """The group's published parts with their indexes, read once per writer.

        The day's listing and the indexes are the ones :meth:`archived` and
        :meth:`publish` use, so a fresh day costs one listing and a replay reads each
        touched group's indexes once.
        """
        if self._listing is None:
            self._listing = self._list_day()
        published = tuple(self._existing(group.key, self._listing.get(group.key.hex, [])))
        group.published = published
        return published

    def _write_big(self, sha256_hex: str, data: bytes) -> None:
        if sha256_hex in self._big_seen:
            return
        reach(Checkpoint.BIG_FILE_BEFORE_WRITE)
        # An existing object is stream-hashed and rewritten if it does not verify, so
        # no entry is ever linked to a damaged object (G16).
        if self._store.create_only(f"{BIG_FILES}/{sha256_hex}", data, sha256_hex=sha256_hex):
            self._big_written += len(data)
        reach(Checkpoint.BIG_FILE_AFTER_WRITE)
        self._big_seen.add(sha256_hex)

    # --- lookups ----------------------------------------------------------------------------

    def archived(self, record: SourceRecord) -> ArchivedEntry | None:
        """The published entry of ``record`` (same uid and day, with a sha256), if any.

        The day's listing and the group's indexes are cached for the writer's lifetime;
        :meth:`publish` reuses them when the objects have not changed.
        """
        uid, key = self._route(record)
        if self._listing is None:
            self._listing = self._list_day()
        for part, index in self._existing(key, self._listing.get(key.hex, [])):
            entry = index.get(uid)
            if entry is None:
                continue
            if entry.sha256 is None or not _same_instant(entry.created_at, record.created_at):
                return None
            return ArchivedEntry(
                uid=uid,
                shard=part.name,
                part=part.part,
                codec=entry.codec,
                size=entry.size,
                stored_size=entry.size if entry.big else entry.length,
                sha256=entry.sha256,
                created_at=entry.created_at,
                big=entry.big,
            )
        return None

    def _list_day(self) -> dict[str, list[PartInfo]]:
        by_group: dict[str, list[PartInfo]] = {}
        for part in self._store.list_day(self._day):
            by_group.setdefault(part.hex, []).append(part)
        return by_group

    def _existing(
        self, key: ShardKey, parts: Sequence[PartInfo]
    ) -> list[tuple[PartInfo, ShardIndex]]:
        out = []
        for part in sorted(parts, key=lambda p: p.part):
            cached = self._indexes.get(part.name)
            if cached is not None and cached[0] == part:
                out.append(cached)
                continue
            try:
                index = self._store.read_index(part)
            except ObjectChangedError as exc:
                raise PackError(
                    f"{exc.message} while reading group {key.prefix}*",
                    hint="Another writer is publishing this group; run one runner per partition",
                ) from exc
            except CorruptShardError as exc:
                raise PackError(
                    f"existing shard {part.name} cannot be read, so group {key.prefix}* was "
                    f"not written (that would lose its entries): {exc.message}",
                    hint=f"Restore {part.name} from a replica, or move it aside and replay "
                    "its day while the source files still exist",
                ) from exc
            self._indexes[part.name] = (part, index)
            out.append((part, index))
        return out

    # --- publishing --------------------------------------------------------------------------

    def publish(self) -> BucketResult:
        """Durably publish every touched group, merged with what is already there.

        Groups are written in index order, parts in number order (from the last down
        when the plan moves entries to the clean layout); each object is replaced
        atomically, and on local disk one folder fsync at the end makes the renames
        durable before this returns. On error the writer is failed: objects already
        replaced are complete and valid, every entry is in at least one of them, and a
        rerun with the same input finishes the job byte for byte.

        The result counts ``files``/``bytes_in`` added to this writer; ``bytes_out``
        is what was written (parts rewritten plus big files created; 0 for a replay that
        changed nothing); ``kept`` is the old entries of touched groups carried over
        without new bytes; ``shards`` lists the parts written (unchanged parts are
        neither rewritten nor listed).
        """
        self._require("open")
        self._state = "publishing"
        try:
            self._apply(self._encoder.drain())
            self._encoder.close()
            result = self._publish_groups()
        except DeswmError:
            self._state = "failed"
            raise
        except Exception as exc:
            self._state = "failed"
            raise PackError(f"publishing bucket {self._day} failed: {exc!r}") from exc
        finally:
            self._release()
        self._state = "published"
        return result

    def _publish_groups(self) -> BucketResult:
        if not self._groups:
            return BucketResult(self._bucket, 0, 0, self._big_written, 0)
        listing = self._list_day()
        self._store.cleanup_temp(day_prefix(self._day))
        if self._big_seen:
            self._store.cleanup_temp(folder=BIG_FILES)
        shards: list[PublishedShard] = []
        checked: list[PublishedShard] = []
        kept = unchanged = replaced = shards_unchanged = 0
        bytes_out = self._big_written
        # On local disk, the parts' fsyncs are issued together (see ShardStore.batch);
        # every object is still written, fsynced and renamed on its own (G11), in order.
        with self._store.batch(threads=_FSYNC_THREADS):
            for number in sorted(self._groups):
                group = self._groups.pop(number)
                old = self._existing(group.key, listing.get(group.key.hex, []))
                items = _new_items(self._spill.records(group))
                plan = plan_group(old, items, self._settings.max_shard_size)
                kept += plan.kept
                reach(
                    Checkpoint.PACKER_MERGE_BEFORE_WRITE if old else Checkpoint.PACKER_BEFORE_GROUP
                )
                # A plan that moves entries goes from the last part down: an entry's new
                # object is published before its old one is rewritten without it.
                for part in reversed(plan.parts) if plan.moves else plan.parts:
                    if part.identical and self._unchanged(group, part, checked):
                        shards_unchanged += 1
                        unchanged += sum(1 for item in part.items if item.source != IN_OLD_PART)
                        continue
                    replaced += part.replaced
                    shards.append(self._publish_part(group, part, merged=bool(old)))
                    bytes_out += part.size
                    reach(Checkpoint.PACKER_AFTER_PART)
                for dead in plan.deletions:
                    reach(Checkpoint.PACKER_BEFORE_DELETE)
                    self._store.delete(dead.name, sync=False)
                self._spill.release(group)
        reach(Checkpoint.PACKER_BEFORE_DIR_SYNC)
        self._store.sync()  # one folder fsync makes every rename of the bucket durable
        return BucketResult(
            bucket=self._bucket,
            files=self._files,
            bytes_in=self._bytes_in,
            bytes_out=bytes_out,
            kept=kept,
            shards=tuple(shards),
            unchanged=unchanged,
            replaced=replaced,
            shards_unchanged=shards_unchanged,
            checked=tuple(checked),
        )

    def _publish_part(self, group: Group, part: PartPlan, *, merged: bool) -> PublishedShard:
        if part.number > MAX_PART_NUMBER:
            raise PackError(
                f"group {group.key.prefix}* needs more than {MAX_PART_NUMBER + 1:,} parts",
                hint="Raise archive.max_shard_size or archive.n_bits",
            )
        name = group.key.object_name(part.number)
        if part.old is not None and self._store.current(part.old.name) != part.old:
            # The plan was made from this version (its index may have been read when the
            # rows were added): never replace another writer's newer object with it.
            raise PackError(
                f"{part.old.name}: the object changed since it was indexed, so group "
                f"{group.key.prefix}* was not written from a stale plan",
                hint="Another writer is publishing this group; run one runner per partition",
            )

        digests: list[str] = []

        def write(fp: IO[bytes]) -> None:
            hashing = _Hashing(fp)  # the manifest's sha256, without reading the object back
            size = self._write_part(cast(IO[bytes], hashing), group, part)
            if size != part.size:  # the plan and the container disagree: never publish
                raise PackError(f"{name}: wrote {size} bytes but planned {part.size}")
            digests.append(hashing.hexdigest())

        self._store.publish(name, write, sync=False)
        return PublishedShard(
            name, part.number, len(part.items), part.size, merged=merged, sha256=digests[-1]
        )

    def _unchanged(self, group: Group, part: PartPlan, checked: list[PublishedShard]) -> bool:
        """Whether a part judged identical by its index also holds identical bytes.

        An index cannot show a damaged payload, so when the part holds entries re-read
        from their sources, the part is rendered into a sink that compares it with the
        published object, read in chunks of at most 8 MiB; on any difference the part
        is rewritten (G16). A part found equal goes to ``checked`` with the sha256 of
        its bytes. A part of carried-over entries only is copied verbatim, so it cannot
        differ (and cannot be repaired: the sources are gone).
        """
        if not any(item.source != IN_OLD_PART and item.big_sha256 is None for item in part.items):
            return True
        assert part.old is not None  # identical parts always have a published object
        sink = _Comparison(self._store, part.old)
        try:
            self._write_part(cast(IO[bytes], sink), group, part)
        except ObjectChangedError as exc:
            raise PackError(
                f"{exc.message} while comparing it with its replay",
                hint="Another writer is publishing this group; run one runner per partition",
            ) from exc
        if sink.matches():
            old = part.old
            checked.append(
                PublishedShard(
                    old.name, part.number, len(part.items), old.size, sha256=sink.hexdigest()
                )
            )
            return True
        log.warning(
            "%s differs from its replay at byte %d although its index matches; rewriting it",
            part.old.name,
            sink.mismatch_at,
        )
        return False

    def _write_part(self, fp: IO[bytes], group: Group, part: PartPlan) -> int:
        writer = ShardWriter(fp)
        # A local file takes a view of the buffered bytes; other filesystems get bytes.
        local = self._store.kind == "local"
        read = self._spill.view if local else self._spill.read
        for run in copy_runs(part.items):
            if run[0].copyable:
                self._copy_run(writer, part, run)
                continue
            if len(run) > 1:  # spilled payloads side by side in the spill file
                self._spilled_run(writer, run, local=local)
                continue
            for item in run:
                if item.big_sha256 is not None:
                    writer.add_big(item.uid, item.big_sha256, size=item.size, meta=item.meta)
                else:
                    flags = SPILLED if item.source == IN_SPILL else 0
                    stored = read(group, flags, item.loc, item.length)
                    writer.append(
                        item.uid, stored, codec=item.codec, size=item.size, meta=item.meta
                    )
                if writer.count == 1:
                    reach(Checkpoint.PACKER_PART_MID_WRITE)
        return writer.finish()

    def _spilled_run(
        self, writer: ShardWriter, run: Sequence[PlannedEntry], *, local: bool
    ) -> None:
        """Append a run of adjacent spilled payloads, read from the spill file at once."""
        start = run[0].loc
        chunk = memoryview(self._spill.span(start, run[-1].loc + run[-1].length - start))
        for item in run:
            at = item.loc - start
            stored = chunk[at : at + item.length]
            writer.append(
                item.uid,
                stored if local else stored.tobytes(),
                codec=item.codec,
                size=item.size,
                meta=item.meta,
            )
            if writer.count == 1:
                reach(Checkpoint.PACKER_PART_MID_WRITE)

    def _copy_run(self, writer: ShardWriter, part: PartPlan, run: Sequence[PlannedEntry]) -> None:
        # A run's entries are stored in one published part: this part's, or a lower one's
        # when the plan moves entries (that part is rewritten after this one).
        source = next(info for info in part.sources if info.part == run[0].origin)
        start = run[0].loc
        end = run[-1].loc + run[-1].length
        try:
            chunk = memoryview(self._store.read_range(source, start, end))
        except ObjectChangedError as exc:
            raise PackError(
                f"{exc.message} while copying its entries",
                hint="Another writer is publishing this group; run one runner per partition",
            ) from exc
        for item in run:
            stored = bytes(chunk[item.loc - start : item.loc - start + item.length])
            writer.append(item.uid, stored, codec=item.codec, size=item.size, meta=item.meta)

    # --- ending ------------------------------------------------------------------------------

    def abort(self) -> None:
        """Discard what was added; publish nothing. Safe to call more than once.

        Big files already written stay: they are content-addressed and harmless.
        """
        if self._state in ("published", "aborted"):
            return
        self._state = "aborted"
        self._release()

    def _release(self) -> None:
        self._encoder.close()
        self._groups.clear()
        self._indexes.clear()
        self._listing = None
        self._spill.close()

    def _require(self, state: str) -> None:
        if self._state != state:
            raise PackError(f"bucket writer {self._day} is {self._state}, not {state}")

    def __enter__(self) -> DesBucketWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state != "published":
            self.abort()


class _Hashing:
    """A write-only file passing every write on and hashing it (sha256) on the way."""

    def __init__(self, fp: IO[bytes]) -> None:
        self._fp = fp
        self._sha256 = hashlib.sha256()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._sha256.update(data)
        return self._fp.write(data)

    def hexdigest(self) -> str:
        return self._sha256.hexdigest()


class _Comparison:
    """A write-only file comparing what is written with a published object's bytes.

    The object is read forward in chunks pinned to the indexed version, so memory stays
    at one chunk however big the part is; after the first difference nothing more is read.
    Bytes are compared with ``bytes.startswith`` (a ``memcmp``, no copies).
    """

    def __init__(self, store: ShardStore, part: PartInfo) -> None:
        self._store = store
        self._part = part
        self._chunk = b""
        self._at = 0  # position in the chunk
        self._next = 0  # offset of the next chunk to read
        self._written = 0
        self._sha256 = hashlib.sha256()
        self.mismatch_at: int | None = None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self.mismatch_at is None:
            self._sha256.update(data)
        view = memoryview(data).cast("B")
        count = len(view)
        position = 0
        while self.mismatch_at is None and position < count:
            if self._at == len(self._chunk):
                if self._next >= self._part.size:
                    self.mismatch_at = self._written + position  # longer than the object
                    break
                end = min(self._next + COPY_CHUNK, self._part.size)
                self._chunk = self._store.read_range(self._part, self._next, end)
                self._at = 0
                self._next = end
            take = min(len(self._chunk) - self._at, count - position)
            if not self._chunk.startswith(view[position : position + take], self._at):
                self.mismatch_at = self._written + position
                break
            self._at += take
            position += take
        self._written += count
        return count

    def hexdigest(self) -> str:
        """The sha256 of what was written: the object's, when :meth:`matches`."""
        return self._sha256.hexdigest()

    def matches(self) -> bool:
        """Whether everything written equals the whole object."""
        if self.mismatch_at is None and (
            self._at < len(self._chunk) or self._next < self._part.size
        ):
            self.mismatch_at = self._written  # shorter than the object
        return self.mismatch_at is None


def _compress_threads(workers: int) -> int:
    """``workers``, but at most one fewer than the usable CPUs (and at least one).

    The calling thread runs the Python of the whole pipeline and is the one to keep
    busy: measured on 2 cores, a second compressing thread only took CPU from it.
    """
    if workers <= 0:
        return 0
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 2
    return max(1, min(workers, cpus - 1))


def _encode_uid(uid: str) -> bytes:
    try:
        encoded = uid.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PackError(f"uid {uid!r} cannot be encoded as UTF-8: {exc.reason}") from None
    if len(encoded) > MAX_UID_BYTES:
        raise PackError(
            f"uid {uid[:40]!r}... has {len(encoded)} UTF-8 bytes; DES names hold at most "
            f"{MAX_UID_BYTES}"
        )
    return encoded


def _check_identity(
    published: Sequence[tuple[PartInfo, ShardIndex]], uid: str, created_at: datetime
) -> None:
    """Refuse a row whose uid is published in its group with another ``created_at`` (G14).

    The lowest part holding the uid is its entry (as in :func:`~deswm._planner.plan_group`).
    The same uid and instant is the same entry (a replay or a repair); an entry without
    ``created_at`` (another DES writer) cannot be proved to be this row, so it is refused.
    """
    for part, index in published:
        entry = index.get(uid)
        if entry is None:
            continue
        stored = entry.created_at
        if stored is None or not _same_instant(stored, created_at):
            raise ArchivedDuplicateError(uid, stored, created_at, shard=part.name)
        return


def _same_instant(stored: datetime | None, wanted: datetime) -> bool:
    if stored is None:
        return True
    if stored.tzinfo is None:
        stored = stored.replace(tzinfo=UTC)
    return stored == wanted


_publish(globals())
