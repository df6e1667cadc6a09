"""The read side: get a file back by ``(uid, created_at)``.

Lookup: route to the group (day and shard), then search the group's parts in ascending
part order; the first part whose index holds the uid wins. Its stored ``created_at`` must
be the requested instant (G14): another instant is another file, and ``get``/``stat``
raise :class:`~deswm.EntryMismatchError` (a ``NotArchivedError``) instead of
returning it. Entries of other DES writers record no ``created_at`` and are found by uid
and day alone. Indexes are cached by
``(object name, version token)`` and group views (which parts exist, at which version)
are cached too, so a rewritten shard is never served from a stale index.

Request budget on S3 (P7), for a file in part 0 of its group:

* **cold**: no listing. The first request is a suffix-range GET of the last 64 KiB of
  ``{day}_{hex}_0000.des``; its response carries the object size and ETag, and for most
  shards the whole index. A shard larger than the tail needs an 8-byte header read (once
  per object version; an index larger than the tail costs one more read). The payload is
  then one ranged GET pinned with ``IfMatch``: 2 requests for small shards, 3 for big ones.
* **warm**: one ranged GET with ``IfMatch=<cached ETag>``. A 412 means the shard was
  rewritten: the group view is dropped and the lookup runs cold again, so stale bytes are
  never returned. On local disk the same pin is the ``fstat`` of the open descriptor the
  bytes are read from (not a request). Other filesystems compare ``info()`` first.
* a uid found in a later part costs one tail read per part before it; a miss, a missing
  part number, or a group whose cached view does not hold the uid costs a prefix listing,
  which is the truth the answer is based on (so misses are never cached).
* big-file entries read ``_bigFiles/<sha256>`` instead of a payload range; a warm big get
  also checks the shard's version (one HEAD), so it costs 2 requests;
* ``exists``/``stat`` answer from a cached index after one HEAD proving it current.
* :meth:`Archive.batch` (``verify``, ``purge``) answers many rows with one listing per day
  and one index read per part, and reads adjacent payloads together.
* :meth:`Archive.open` locates an entry the same way; an uncompressed entry larger than
  1 MiB and a big file are then read range by range as the caller reads (one request
  per read), smaller or compressed entries are read and decoded whole.

The index cache is bounded by entries (``cache_size``) and by an estimate of the memory
the parsed indexes take (``cache_bytes``). A burst of concurrent lookups in one cold
group loads it once: the first lookup probes or lists the group while the others wait
for it (a per-group lock, held only on the cold path), and an index is read once per
object version however many lookups need it at the same time.

Every entry is verified on read (``CorruptShardError`` on a mismatch, never swallowed);
a meta that is damaged, or names deswm's keys without a valid sha256, is corruption, so
the shard's own bytes cannot switch verification off (G18). Compressed entries are
decoded with a bound: at most ``max_inline_size`` declared bytes, and never more than
declared. A mismatch seen through a cached index is confirmed by one fresh read before
it is raised (a local version token, ``mtime_ns:inode:size``, could in theory repeat if
a shard were rewritten twice within one timestamp tick). Entries written by other DES
writers carry no checksum (empty meta): they are refused with
:class:`~deswm.UnverifiedEntryError` unless ``allow_unverified`` is set, and then
returned with a logged warning; for them the guarantee is only that the bytes come from
the same object version as the index entry (pinned reads), that compressed frames
decode, and that the decoded size matches the index.

The warm path trusts the packer's rule that an entry never moves to a lower-numbered part
(G3): it returns the entry from the first cached part holding it, pinned to that part's
current version.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime
from functools import partial
from typing import Any, Final, Generic, TypeVar

import attrs

from deswm import _publish
from deswm._archived_file import ArchivedFile, BytesSource, archived_file
from deswm._codecs import RAW_CODECS
from deswm._container import (
    MAX_INLINE_SIZE,
    MAX_PART_NUMBER,
    IndexEntry,
    PartInfo,
    ShardIndex,
    decode_payload,
    entry_checksum,
    parse_part_name,
    verify_checksum,
)
from deswm._errors import (
    ConfigError,
    CorruptShardError,
    EntryMismatchError,
    NotArchivedError,
    ObjectChangedError,
    ShardError,
    UnverifiedEntryError,
)
from deswm._manifest import BucketManifest, ManifestStore
from deswm._model import ArchivedEntry, Partition, ShardKey
from deswm._objectstore import ObjectStore
from deswm._protocols import ShardRouter
from deswm._routing import DesRouter, uid_text
from deswm._shardio import ShardStore, describe, shard_store
from deswm._timeutil import format_day, parse_day, require_utc

__all__ = ["Archive", "ArchiveBatch", "ArchivedFile", "IndexCacheStats"]

log = logging.getLogger("deswm.archive")  # a stable logger name (docs/operations.md)

_ATTEMPTS: Final = 3
"""Lookups retried when a shard changes under the reader (each retry starts cold)."""

_VERIFY_CHUNK: Final = 8 * 2**20
"""Largest ranged read ``verify`` issues (runs of adjacent entries are read together)."""

_OPEN_WHOLE: Final = 1024 * 1024
"""``open`` reads an uncompressed inline entry up to this size whole (one verified read)."""

_BATCH_GAP: Final = 256 * 1024
"""Bytes between two wanted entries that a batch read fetches and skips (one request)."""

_BATCH_DAYS: Final = 8
"""Day listings a batch lookup keeps (verify and purge walk the days in order)."""

_ENTRY_WEIGHT: Final = 256
"""Estimated bytes a parsed index entry takes beyond its uid and meta (``cache_bytes``)."""

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
T = TypeVar("T")


class _LRU(Generic[K, V]):
    """A small thread-safe LRU map; ``capacity == 0`` caches nothing.

    With ``weigh``, the summed weight of the items is kept at most ``max_weight`` too
    (an item heavier than that on its own is not cached).
    """

    def __init__(
        self,
        capacity: int,
        *,
        max_weight: int | None = None,
        weigh: Callable[[V], int] | None = None,
    ) -> None:
        self._capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()
        self._max_weight = max_weight
        self._weigh = weigh
        self._weights: dict[K, int] = {}
        self.weight = 0

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        if self._capacity <= 0:
            return
        weight = 0 if self._weigh is None else self._weigh(value)
        limit = self._max_weight
        if limit is not None and weight > limit:
            return
        with self._lock:
            self._drop(key)
            self._items[key] = value
            self._weights[key] = weight
            self.weight += weight
            while len(self._items) > self._capacity or (limit is not None and self.weight > limit):
                self._drop(next(iter(self._items)))

    def _drop(self, key: K) -> None:
        if self._items.pop(key, None) is not None:
            self.weight -= self._weights.pop(key)

    def pop(self, key: K) -> None:
        with self._lock:
            self._drop(key)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._weights.clear()
            self.weight = 0

    def __len__(self) -> int:
        return len(self._items)


class _KeyedLocks:
    """One lock per key while someone holds or waits for it (single-flight loads)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[Hashable, tuple[threading.Lock, int]] = {}

    @contextlib.contextmanager
    def hold(self, key: Hashable) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


@attrs.frozen
class IndexCacheStats:
    """The index cache of an :class:`Archive` (``Archive.cache_stats``).

    ``hits`` count lookups answered by a cached index, ``loads`` the indexes read from
    storage; ``entries`` and ``bytes`` (an estimate of the memory held) are its size now.
    """

    hits: int
    loads: int
    entries: int
    bytes: int


def _index_weight(index: ShardIndex) -> int:
    """An estimate of the memory a parsed index holds (its uids, metas, and per entry)."""
    return sum(len(e.uid) + len(e.meta) + _ENTRY_WEIGHT for e in index.entries)


@attrs.frozen
class _GroupView:
    """The parts of a group known so far, ascending; ``complete`` after a listing."""

    parts: tuple[PartInfo, ...]
    complete: bool


@attrs.frozen
class _Hit:
    part: PartInfo
    entry: IndexEntry
    fresh: bool
    """Whether the part's version was read from storage during this lookup."""


class Archive:
    """Reads files back from DES shards on any fsspec destination.

    Args:
        url: where the shards live (local path, ``s3://bucket/prefix``, ...).
        router: the router the packer used (``DesRouter(8)`` by default).
        storage_options: fsspec options (credentials, endpoint); never shown in reprs.
        store: an object store to read instead of opening ``url`` (then neither ``url``
            nor ``storage_options`` is given); see ``deswm._objectstore``.
        cache_size: how many parsed indexes and group views to keep (0 disables caching).
        cache_bytes: the most memory (estimated) the cached indexes may hold (256 MiB).
        max_inline_size: the largest uncompressed size of a compressed inline entry this
            reader decodes (1 GiB); larger declared sizes are refused before decoding, so
            a hostile shard cannot make a read allocate more.
        allow_unverified: return entries without a checksum (other DES writers) with a
            logged warning instead of raising :class:`~deswm.UnverifiedEntryError`.
    """

    def __init__(
        self,
        url: str | None = None,
        router: ShardRouter | None = None,
        *,
        storage_options: Mapping[str, Any] | None = None,
        store: ObjectStore | None = None,
        cache_size: int = 1024,
        cache_bytes: int = 256 * 2**20,
        max_inline_size: int = MAX_INLINE_SIZE,
        allow_unverified: bool = False,
    ) -> None:
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise ConfigError(
                f"must be a non-negative integer, got {cache_size!r}", key="cache_size"
            )
        if isinstance(cache_bytes, bool) or not isinstance(cache_bytes, int) or cache_bytes < 0:
            raise ConfigError(
                f"must be a non-negative integer, got {cache_bytes!r}", key="cache_bytes"
            )
        if (
            isinstance(max_inline_size, bool)
            or not isinstance(max_inline_size, int)
            or max_inline_size < 0
        ):
            raise ConfigError(
                f"Archive max_inline_size must be a non-negative integer, got {max_inline_size!r}"
            )
        self._max_inline_size = max_inline_size
        self._allow_unverified = bool(allow_unverified)
        self._router: ShardRouter = router if router is not None else DesRouter(8)
        self._store = shard_store(url, storage_options, store)
        self._cache_size = cache_size
        self._indexes: _LRU[tuple[str, str], ShardIndex] = _LRU(
            cache_size, max_weight=cache_bytes, weigh=_index_weight
        )
        self._groups: _LRU[tuple[str, str], _GroupView] = _LRU(cache_size)
        self._flights = _KeyedLocks()
        self._counts_lock = threading.Lock()
        self._hits = 0
        self._loads = 0
        self._manifests = ManifestStore(self._store, self._router)

    def __repr__(self) -> str:
        return describe("Archive", self._store, self._router, cache_size=self._cache_size)

    @property
    def store(self) -> ShardStore:
        """The object store this archive reads (for tools and tests)."""
        return self._store

    @property
    def router(self) -> ShardRouter:
        return self._router

    def clear_cache(self) -> None:
        """Forget every cached index and group view."""
        self._indexes.clear()
        self._groups.clear()

    def cache_stats(self) -> IndexCacheStats:
        """Hits, loads and the size of the index cache (for metrics)."""
        with self._counts_lock:
            hits, loads = self._hits, self._loads
        return IndexCacheStats(hits, loads, len(self._indexes), self._indexes.weight)

    def _count(self, *, hits: int = 0, loads: int = 0) -> None:
        with self._counts_lock:
            self._hits += hits
            self._loads += loads

    # --- files ---------------------------------------------------------------------------

    def get(
        self, uid: str | int, created_at: datetime, *, allow_unverified: bool | None = None
    ) -> bytes:
        """The verified bytes of a file.

        Raises :class:`~deswm.NotArchivedError` when the uid is not in its group,
        :class:`~deswm.CorruptShardError` when its bytes fail verification, and
        :class:`~deswm.UnverifiedEntryError` (a ``CorruptShardError``) when the
        entry has no checksum, unless ``allow_unverified`` (default: the archive's).
        """
        allow = self._allow_unverified if allow_unverified is None else allow_unverified
        key, name = self._route(uid, created_at)
        return self._retrying(key, name, created_at, lambda hit: self._read(hit, allow))

    def open(
        self, uid: str | int, created_at: datetime, *, allow_unverified: bool | None = None
    ) -> ArchivedFile:
        """A seekable, read-only binary file of an archived file, read on demand.

        Big files (``_bigFiles/``) and uncompressed entries above 1 MiB are read range by
        range as the caller reads, pinned to the shard version that was indexed (a
        rewrite in between is followed to the entry's new place, if its bytes are the
        same), so a 1 GB file is never held in memory; smaller or compressed entries
        (at most ``max_inline_size`` when decoded) are read, decoded and verified at
        once. A file read start to end is verified against its sha256 as it is read:
        the read that reaches the end raises :class:`~deswm.CorruptShardError`
        on a mismatch. Bytes read out of order cannot be hash-checked. Errors as for
        :meth:`get`; the file's ``entry`` is what :meth:`stat` returns.
        """
        allow = self._allow_unverified if allow_unverified is None else allow_unverified
        key, name = self._route(uid, created_at)
        return self._retrying(
            key, name, created_at, lambda hit: self._open(key, name, created_at, hit, allow)
        )

    def _retrying(
        self, key: ShardKey, name: str, created_at: datetime, action: Callable[[_Hit], T]
    ) -> T:
        """Locate ``name`` and run ``action`` on it, starting cold when a shard changed."""
        for _ in range(_ATTEMPTS):
            hit: _Hit | None = None
            try:
                hit = self._locate(key, name, created_at)
                _require_instant(hit, name, created_at)
                return action(hit)
            except ObjectChangedError:
                self._forget(key)
            except EntryMismatchError:
                if hit is None or hit.fresh:
                    raise
                self._forget(key, hit.part)  # confirm a cached answer with a fresh read
            except CorruptShardError as exc:
                if hit is None or hit.fresh or isinstance(exc, UnverifiedEntryError):
                    raise
                # Bad bytes through a cached index: confirm with a fresh read before
                # blaming the shard (a version token can, rarely, repeat on local disk).
                self._forget(key, hit.part)
        raise ShardError(
            f"group {key.prefix}* changed {_ATTEMPTS} times while reading {name!r}",
            hint="A writer is rewriting this group right now; retry later",
        )

    def exists(self, uid: str | int, created_at: datetime) -> bool:
        """Whether the file is archived (its part's version is checked, not assumed)."""
        try:
            self.stat(uid, created_at)
        except NotArchivedError:
            return False
        return True

    def stat(self, uid: str | int, created_at: datetime) -> ArchivedEntry:
        """What the archive holds for a file, without reading its bytes."""
        key, name = self._route(uid, created_at)
        for _ in range(_ATTEMPTS):
            try:
                hit = self._locate(key, name, created_at)
            except ObjectChangedError:
                hit = None
            if hit is not None and (hit.fresh or self._store.current(hit.part.name) == hit.part):
                _require_instant(hit, name, created_at)
                return _archived_entry(hit.part, hit.entry)
            self._forget(key)
        raise ShardError(f"group {key.prefix}* changed {_ATTEMPTS} times while looking up {name!r}")

    def batch(self) -> ArchiveBatch:
        """A lookup of many files whose requests grow with the shards touched, not the files.

        For ``verify`` and ``purge``: see :class:`ArchiveBatch`.
        """
        return ArchiveBatch(self)

    # --- objects -------------------------------------------------------------------------

    def shards(self, day: date | datetime | str) -> list[PartInfo]:
        """The shard objects of one UTC day (a ``date``, an aware ``datetime`` or ``YYYYMMDD``).

        Only names this archive's router can produce are listed (the hex width and range of
        its ``n_bits``), so shards of a differently configured writer are not mixed in.
        """
        text = _day_text(day)
        sample = self._router.group(parse_day(text, "day"), 0)
        count = self._router.shard_count
        return [
            part
            for part in self._store.list_day(text)
            if len(part.hex) == len(sample.hex) and int(part.hex, 16) < count
        ]

    @property
    def manifests(self) -> ManifestStore:
        """The bucket manifests beside the shards (:mod:`deswm._manifest`)."""
        return self._manifests

    def manifest(
        self, day: date | datetime | str, *, partition: Partition | None = None
    ) -> BucketManifest:
        """The manifest of one committed day and partition.

        Without ``partition``, the day's only manifest (one partition, or a day packed by
        one runner). Raises :class:`~deswm._errors.ManifestMissingError` when there is none,
        :class:`~deswm._errors.CorruptManifestError` when it does not parse, and
        :class:`~deswm._errors.ConfigError` when several partitions wrote the day.
        """
        text = _day_text(day)
        if partition is None:
            found = self._manifests.partitions(text)
            if len(found) > 1:
                names = ", ".join(f"{p.index}/{p.count}" for p in found)
                raise ConfigError(
                    f"day {text} has manifests of partitions {names}",
                    key="partition",
                    hint="Pass partition=Partition(index, count) (deswm manifest --partition)",
                )
            partition = found[0] if found else Partition()
        return self._manifests.require(text, partition)

    def entries(self, object_name: str) -> Iterator[IndexEntry]:
        """The index entries of one shard object, in index order."""
        part = self._current(object_name)
        yield from self._index(part).entries

    def verify(self, object_name: str) -> int:
        """Read and verify every entry of one shard object; return how many were checked.

        Adjacent payloads are read together (up to 8 MiB per request); big files are read
        and hashed. The first bad entry raises :class:`~deswm.CorruptShardError`;
        an entry without a checksum raises :class:`~deswm.UnverifiedEntryError`
        (after it decoded) unless the archive allows unverified entries.
        """
        part = self._current(object_name)
        index = self._index(part)
        inline = sorted((e for e in index.entries if not e.big), key=lambda e: e.offset)
        for run in _runs(inline, _VERIFY_CHUNK):
            start, end = run[0].offset, run[-1].offset + run[-1].length
            chunk = memoryview(self._store.read_range(part, start, end))
            for entry in run:
                stored = bytes(chunk[entry.offset - start : entry.offset - start + entry.length])
                decode_payload(entry, stored, name=part.name, max_size=self._max_inline_size)
                self._require_checksum(part, entry, self._allow_unverified)
        for entry in index.entries:
            if entry.big:
                self._read_big(part, entry)
        return len(index.entries)

    # --- internals -----------------------------------------------------------------------

    def _forget(self, key: ShardKey, part: PartInfo | None = None) -> None:
        self._groups.pop(_group_id(key))
        if part is not None:
            self._indexes.pop((part.name, part.version))

    def _route(self, uid: str | int, created_at: datetime) -> tuple[ShardKey, str]:
        return self._router.route(uid, created_at), uid_text(uid)

    def _current(self, object_name: str) -> PartInfo:
        if parse_part_name(object_name) is None:
            raise ValueError(f"{object_name!r} is not a shard object name (DAY_HEX_NNNN.des)")
        part = self._store.current(object_name)
        if part is None:
            raise ShardError(f"shard {object_name} does not exist in {self._store!r}")
        return part

    def _index(self, part: PartInfo) -> ShardIndex:
        ident = (part.name, part.version)
        cached = self._indexes.get(ident)
        if cached is None:
            with self._flights.hold(("index", *ident)):  # concurrent lookups read it once
                cached = self._indexes.get(ident)
                if cached is None:
                    index = self._store.read_index(part)
                    self._count(loads=1)
                    self._indexes.put(ident, index)
                    return index
        self._count(hits=1)
        return cached

    def _cached_hit(self, gid: tuple[str, str], uid: str) -> tuple[_Hit | None, _GroupView | None]:
        view = self._groups.get(gid)
        if view is not None:
            for part in view.parts:
                entry = self._index(part).get(uid)
                if entry is not None:
                    return _Hit(part, entry, fresh=False), view
        return None, view

    def _locate(self, key: ShardKey, uid: str, created_at: datetime) -> _Hit:
        gid = _group_id(key)
        hit, _ = self._cached_hit(gid, uid)
        if hit is not None:
            return hit
        with self._flights.hold(("group", *gid)):  # one cold load per group; the others wait
            hit, view = self._cached_hit(gid, uid)
            if hit is not None:
                return hit
            return self._locate_cold(key, uid, created_at, view)

    def _locate_cold(
        self, key: ShardKey, uid: str, created_at: datetime, view: _GroupView | None
    ) -> _Hit:
        gid = _group_id(key)
        if view is None:
            view = _GroupView((), complete=False)
        if not view.complete:
            hit = self._probe(key, uid, view)
            if hit is not None:
                return hit
        # A missing part number, or a view without the uid: a listing decides.
        listed = tuple(self._store.list_parts(key))
        self._groups.put(gid, _GroupView(listed, complete=True))
        for part in listed:
            entry = self._index(part).get(uid)
            if entry is not None:
                return _Hit(part, entry, fresh=True)
        raise NotArchivedError(uid, created_at, [p.name for p in listed])

    def _probe(self, key: ShardKey, uid: str, view: _GroupView) -> _Hit | None:
        """Read the next parts by name (no listing) until the uid is found or one is missing."""
        parts = list(view.parts)
        number = parts[-1].part + 1 if parts else 0
        while number <= MAX_PART_NUMBER:
            probed = self._store.probe(key.object_name(number))
            if probed is None:
                return None
            part, index = probed
            self._count(loads=1)
            self._indexes.put((part.name, part.version), index)
            parts.append(part)
            self._groups.put(_group_id(key), _GroupView(tuple(parts), complete=False))
            entry = index.get(uid)
            if entry is not None:
                return _Hit(part, entry, fresh=True)
            number += 1
        return None

    def _open(
        self, key: ShardKey, uid: str, created_at: datetime, hit: _Hit, allow: bool
    ) -> ArchivedFile:
        part, entry = hit.part, hit.entry
        info = _archived_entry(part, entry)
        if entry.big:
            if not hit.fresh and self._store.current(part.name) != part:
                raise ObjectChangedError(part.name, "the shard changed since it was indexed")
            big = self._store.big_name(entry, shard=part.name)
            return archived_file(
                _BigRange(self._store, big, entry, part.name),
                info,
                sha256=entry_checksum(entry, name=part.name),
                name=f"{part.name} -> {big}",
            )
        if entry.codec not in RAW_CODECS or entry.size <= _OPEN_WHOLE:
            data = self._read(hit, allow)  # decoded and verified now
            return archived_file(BytesSource(data), info, sha256=None, name=part.name)
        checksum = entry_checksum(entry, name=part.name)
        self._require_checksum(part, entry, allow)
        if entry.length != entry.size:
            raise CorruptShardError(
                part.name,
                entry.offset,
                f"entry {uid!r}: {entry.length} stored bytes, uncompressed size {entry.size}",
            )
        source = _ShardRange(self, key, uid, created_at, hit)
        return archived_file(source, info, sha256=checksum, name=part.name)

    def _relocate(self, key: ShardKey, uid: str, created_at: datetime, old: _Hit) -> _Hit:
        """The entry's place after its shard was rewritten, if its bytes are the same."""
        self._forget(key, old.part)
        hit = self._locate(key, uid, created_at)
        _require_instant(hit, uid, created_at)
        new = hit.entry
        if (
            new.big
            or new.codec not in RAW_CODECS
            or new.size != old.entry.size
            or new.length != new.size
            or new.sha256 != old.entry.sha256
        ):
            raise ObjectChangedError(hit.part.name, f"entry {uid!r} changed while it was read")
        return hit

    def _read(self, hit: _Hit, allow_unverified: bool) -> bytes:
        if hit.entry.big:
            if not hit.fresh and self._store.current(hit.part.name) != hit.part:
                raise ObjectChangedError(hit.part.name, "the shard changed since it was indexed")
            return self._read_big(hit.part, hit.entry)
        stored = self._store.read_stored(hit.part, hit.entry)
        data = decode_payload(hit.entry, stored, name=hit.part.name, max_size=self._max_inline_size)
        self._require_checksum(hit.part, hit.entry, allow_unverified)
        return data

    def _require_checksum(self, part: PartInfo, entry: IndexEntry, allow: bool) -> None:
        """Refuse (or, when allowed, log) an entry that decoded but has no checksum."""
        if entry_checksum(entry, name=part.name) is not None:
            return
        if not allow:
            raise UnverifiedEntryError(part.name, entry.offset, entry.uid)
        log.warning(
            "%s: returning entry %r unverified: it has no checksum (another DES writer)",
            part.name,
            entry.uid,
        )

    def _read_big(self, part: PartInfo, entry: IndexEntry) -> bytes:
        data = self._store.read_big(entry, shard=part.name)
        # The hash names the object, so this also proves the right object was read.
        verify_checksum(
            entry, data, name=f"{part.name} -> {self._store.big_name(entry, shard=part.name)}"
        )
        return data


class ArchiveBatch:
    """Looks many files up with one listing per day and one index read per part.

    :meth:`Archive.stat` proves a cached index current with one HEAD per call, so checking
    every row of a day costs a request per row. A batch lists each day it meets once (the
    listing is the proof of currency), reads each listed part's index once (cached by
    version, as the archive does) and answers every row from them; :meth:`get_many` and
    :meth:`read_each` then read the payloads of adjacent entries together (up to 8 MiB a
    request), each verified against its own entry. An index read that finds its part
    changed since the listing makes the day listed again; a payload read that does reads
    those entries one by one through :meth:`Archive.get`. A miss is confirmed by a fresh
    listing of its day, once per call, before it is reported (misses are never answered
    from an old listing). Results come back in input order,
    each an entry (or bytes) or the :class:`~deswm._errors.ShardError` :meth:`Archive.stat`
    (or :meth:`Archive.get`) would raise for it.
    """

    def __init__(self, archive: Archive) -> None:
        self._archive = archive
        self._days: dict[str, dict[str, list[PartInfo]]] = {}

    def stat_many(
        self, keys: Sequence[tuple[str | int, datetime]]
    ) -> list[ArchivedEntry | ShardError]:
        """What the archive holds for each ``(uid, created_at)``, or why it holds nothing."""
        return [
            hit if isinstance(hit, ShardError) else _archived_entry(hit.part, hit.entry)
            for hit in self._locate_many(keys)
        ]

    def get_many(
        self, keys: Sequence[tuple[str | int, datetime]], *, allow_unverified: bool | None = None
    ) -> list[bytes | ShardError]:
        """The verified bytes of each ``(uid, created_at)``, or why they cannot be returned."""
        results: list[bytes | ShardError] = [b""] * len(keys)

        def keep(position: int, result: bytes | ShardError) -> None:
            results[position] = result

        self.read_each(keys, keep, allow_unverified=allow_unverified)
        return results

    def read_each(
        self,
        keys: Sequence[tuple[str | int, datetime]],
        use: Callable[[int, bytes | ShardError], None],
        *,
        allow_unverified: bool | None = None,
    ) -> None:
        """Call ``use(position in keys, verified bytes or the error)`` once per key.

        The bytes are handed over as they are read (by part and offset, not in input
        order), so a caller that only checks them holds at most one read (8 MiB) at once.
        """
        archive = self._archive
        allow = archive._allow_unverified if allow_unverified is None else allow_unverified
        # Positions by part and entry (offset and uid: a hostile index may point two
        # uids at one payload, and each must be checked against its own checksum).
        by_part: dict[PartInfo, dict[tuple[int, str], list[int]]] = {}
        entries: dict[tuple[PartInfo, int, str], IndexEntry] = {}
        for position, hit in enumerate(self._locate_many(keys)):
            if isinstance(hit, ShardError):
                use(position, hit)
            elif hit.entry.big:  # its own object, named by its hash: one read each
                use(position, _caught(partial(archive._read_big, hit.part, hit.entry)))
            else:
                ident = (hit.entry.offset, hit.entry.uid)
                by_part.setdefault(hit.part, {}).setdefault(ident, []).append(position)
                entries[hit.part, *ident] = hit.entry
        for part, positions in by_part.items():
            wanted = sorted((entries[part, *ident] for ident in positions), key=lambda e: e.offset)
            try:
                self._read_part(part, wanted, positions, use, allow)
            except ObjectChangedError:  # rewritten since listed: read these one by one
                for ident in positions:
                    for position in positions[ident]:
                        uid, created_at = keys[position]
                        use(
                            position,
                            _caught(partial(archive.get, uid, created_at, allow_unverified=allow)),
                        )

    def _read_part(
        self,
        part: PartInfo,
        wanted: list[IndexEntry],
        positions: dict[tuple[int, str], list[int]],
        use: Callable[[int, bytes | ShardError], None],
        allow: bool,
    ) -> None:
        """Read ``wanted`` (sorted by offset) run by run; nothing is used before a run
        is read whole, so a failing part can be read again entry by entry."""
        archive = self._archive
        for run in _runs(wanted, _VERIFY_CHUNK, gap=_BATCH_GAP):
            start, end = run[0].offset, run[-1].offset + run[-1].length
            chunk = memoryview(archive._store.read_range(part, start, end))
            for entry in run:
                stored = bytes(chunk[entry.offset - start : entry.offset - start + entry.length])
                result: bytes | ShardError
                try:
                    result = decode_payload(
                        entry, stored, name=part.name, max_size=archive._max_inline_size
                    )
                    archive._require_checksum(part, entry, allow)
                except CorruptShardError as exc:
                    result = exc
                for position in positions.pop((entry.offset, entry.uid)):
                    use(position, result)

    def _locate_many(self, keys: Sequence[tuple[str | int, datetime]]) -> list[_Hit | ShardError]:
        archive = self._archive
        relisted: set[str] = set()
        found: list[_Hit | ShardError] = []
        for uid, created_at in keys:
            key, name = archive._route(uid, created_at)
            for _ in range(_ATTEMPTS):
                try:
                    hit = self._find(key, name, created_at, relisted)
                    _require_instant(hit, name, created_at)
                except ObjectChangedError:
                    self._days.pop(key.day, None)
                    continue
                except ShardError as exc:
                    found.append(exc)
                else:
                    found.append(hit)
                break
            else:
                found.append(
                    ShardError(
                        f"group {key.prefix}* changed {_ATTEMPTS} times while looking up {name!r}",
                        hint="A writer is rewriting this group right now; retry later",
                    )
                )
        return found

    def _find(self, key: ShardKey, uid: str, created_at: datetime, relisted: set[str]) -> _Hit:
        parts = self._group(key, relisted)
        for part in parts:
            entry = self._archive._index(part).get(uid)
            if entry is not None:
                return _Hit(part, entry, fresh=key.day in relisted)
        if key.day not in relisted:  # confirm a miss with a fresh listing of the day
            self._days.pop(key.day, None)
            return self._find(key, uid, created_at, relisted)
        raise NotArchivedError(uid, created_at, [p.name for p in parts])

    def _group(self, key: ShardKey, relisted: set[str]) -> list[PartInfo]:
        groups = self._days.get(key.day)
        if groups is None:
            groups = {}
            for part in self._archive._store.list_day(key.day):
                groups.setdefault(part.hex, []).append(part)
            for parts in groups.values():
                parts.sort(key=lambda p: p.part)
            self._days[key.day] = groups
            relisted.add(key.day)
            if len(self._days) > _BATCH_DAYS:  # rows come day by day: keep the recent ones
                del self._days[next(iter(self._days))]
        return groups.get(key.hex, [])


class _ShardRange:
    """Ranges of an uncompressed inline entry, pinned to its shard's indexed version.

    A rewrite of the shard between two reads is followed to the entry's new place
    (same size and sha256); anything else raises :class:`ObjectChangedError`.
    """

    def __init__(
        self, archive: Archive, key: ShardKey, uid: str, created_at: datetime, hit: _Hit
    ) -> None:
        self._archive = archive
        self._key = key
        self._uid = uid
        self._created_at = created_at
        self._hit = hit

    def read(self, start: int, end: int) -> bytes:
        for _ in range(_ATTEMPTS):
            hit = self._hit
            offset = hit.entry.offset
            try:
                return self._archive.store.read_range(hit.part, offset + start, offset + end)
            except ObjectChangedError:
                self._hit = self._archive._relocate(self._key, self._uid, self._created_at, hit)
        raise ShardError(
            f"group {self._key.prefix}* changed {_ATTEMPTS} times while reading {self._uid!r}",
            hint="A writer is rewriting this group right now; retry later",
        )


class _BigRange:
    """Ranges of a content-addressed ``_bigFiles/<sha256>`` object.

    Its name is its hash, so any version of it with the right size holds the same bytes
    (a repair only ever replaces damaged bytes): reads are not pinned to a version.
    """

    def __init__(self, store: ShardStore, name: str, entry: IndexEntry, shard: str) -> None:
        self._store = store
        self._name = name
        self._entry = entry
        self._shard = shard

    def read(self, start: int, end: int) -> bytes:
        try:
            with self._store._reading("read", self._name):
                data, found = self._store.backend.get_range(self._name, start, end, None)
            size = found.size
        except FileNotFoundError as exc:
            raise CorruptShardError(
                self._shard, None, f"entry {self._entry.uid!r}: big file {self._name} is missing"
            ) from exc
        if size != self._entry.size:
            raise CorruptShardError(
                self._name,
                None,
                f"big file has {size} bytes, entry {self._entry.uid!r} says {self._entry.size}",
            )
        return data


def _require_instant(hit: _Hit, uid: str, created_at: datetime) -> None:
    """Refuse an entry whose stored ``created_at`` is another instant (G14).

    An entry without ``created_at`` (another DES writer) has no recorded identity beyond
    its uid and day, so it is returned as found.
    """
    stored = hit.entry.created_at
    if stored is None:
        return
    if stored.tzinfo is None:
        stored = stored.replace(tzinfo=UTC)
    if stored != created_at:
        raise EntryMismatchError(uid, created_at, stored, shard=hit.part.name)


def _group_id(key: ShardKey) -> tuple[str, str]:
    return key.day, key.hex


def _archived_entry(part: PartInfo, entry: IndexEntry) -> ArchivedEntry:
    return ArchivedEntry(
        uid=entry.uid,
        shard=part.name,
        part=part.part,
        codec=entry.codec,
        size=entry.size,
        stored_size=entry.size if entry.big else entry.length,
        sha256=entry.sha256,
        created_at=entry.created_at,
        big=entry.big,
    )


def _runs(entries: list[IndexEntry], limit: int, *, gap: int = 0) -> Iterator[list[IndexEntry]]:
    """Group entries sorted by offset into runs of at most ``limit`` bytes.

    Entries of a run are adjacent, or at most ``gap`` bytes apart (read and skipped).
    An entry larger than ``limit`` is a run of its own.
    """
    run: list[IndexEntry] = []
    for entry in entries:
        if run:
            start = run[0].offset
            end = run[-1].offset + run[-1].length
            adjacent = end <= entry.offset <= end + gap
            if not adjacent or entry.offset + entry.length - start > limit:
                yield run
                run = []
        run.append(entry)
    if run:
        yield run


def _caught(read: Callable[[], bytes]) -> bytes | ShardError:
    try:
        return read()
    except ShardError as exc:
        return exc


def _day_text(day: date | datetime | str) -> str:
    if isinstance(day, datetime):
        return format_day(require_utc(day, "day"))
    if isinstance(day, date):
        return f"{day.year:04d}{day.month:02d}{day.day:02d}"
    if isinstance(day, str) and len(day) == 8 and day.isascii() and day.isdigit():
        return day
    raise ConfigError(f"{day!r} is not a day (date, aware datetime or YYYYMMDD)", key="day")


_publish(globals())
