"""The DES2 format: the container's bytes, the size of every entry, and object names.

This module is the one place that knows the layout; the packer and the part planner
compute sizes with :func:`record_size` and names with :func:`part_name` from here.

Layout (little-endian): ``[HEADER 8][DATA][INDEX][FOOTER 12]``. The header is
``b"DES2"``, a version byte (2; version 1 is read too) and three zero bytes. Payloads
follow back to back. The index is ``u32 count`` and one record per entry; the footer is
``b"DESI"`` and ``u64 index_size``. docs/format.md describes every field. A shard holding
entries is exactly :data:`EMPTY_SHARD_SIZE` plus, per entry, its stored bytes and its
:func:`record_size`.

Objects are named ``{YYYYMMDD}_{HEX}_{NNNN}.des`` (see *object names* below): the name
embeds the UTC day, so buckets are UTC days whatever the router
(:class:`~deswm.ShardRouter`).

deswm adds, in each entry's JSON meta, the sha256 of the uncompressed bytes and the
row's ``created_at`` (fixed-width ISO 8601 UTC), with sorted keys and compact
separators so the same entry always serialises to the same bytes (G2).

Reading treats every byte as hostile (G18): each length, offset, count and size is
checked against the bytes that exist before anything is allocated by it, compressed
payloads are decoded with a bound of the declared size (plus one byte to see an
overrun), and a checksum cannot be switched off by the meta: see :func:`entry_checksum`.
Only entries with an empty meta (other DES writers) have no checksum; the caller decides
whether to accept them (:class:`deswm.Archive` refuses by default).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from functools import cached_property
from typing import IO, Any, Final

import attrs

from deswm import _publish
from deswm._codecs import CODEC_IDS as CODEC_IDS
from deswm._codecs import CODEC_NAMES as CODEC_NAMES
from deswm._codecs import CODECS_BY_NAME, RAW_CODECS, WRITABLE, Codec
from deswm._errors import ConfigError, CorruptShardError
from deswm._timeutil import format_utc

__all__ = [
    "EMPTY_SHARD_SIZE",
    "FOOTER_SIZE",
    "HEADER_SIZE",
    "MAX_INLINE_SIZE",
    "MAX_PART_NUMBER",
    "MAX_UID_BYTES",
    "META_TEMPLATE",
    "PART_NAME",
    "Compressor",
    "IndexEntry",
    "PartInfo",
    "ShardIndex",
    "ShardWriter",
    "build_shard",
    "day_prefix",
    "decode_payload",
    "encode_header",
    "entry_checksum",
    "group_prefix",
    "index_record_size",
    "make_meta",
    "meta_of",
    "parse_footer",
    "parse_header",
    "parse_index",
    "parse_part_name",
    "part_info",
    "part_name",
    "read_shard",
    "record_size",
]

MAGIC: Final = b"DES2"
INDEX_MAGIC: Final = b"DESI"
HEADER_SIZE: Final = 8
FOOTER_SIZE: Final = 12
MAX_UID_BYTES: Final = 0xFFFF
"""A uid is stored with a ``u16`` length, so its UTF-8 form must fit in 65,535 bytes."""

MAX_INLINE_SIZE: Final = 2**30
"""Default largest uncompressed size of an inline entry a reader decodes (1 GiB).

A compressed entry's declared size cannot be checked against anything that exists
before decoding (zstd expands up to ~32,000 times), so it is capped; deswm and the
original DES writers put files above ``big_file_threshold`` (10 MiB) in ``_bigFiles/``.
"""

MAX_SIZE_FIELD: Final = 2**63 - 1
"""Largest size or offset field accepted (a signed 64-bit file size)."""

_SHA256_HEX: Final = re.compile(r"[0-9a-f]{64}")
"""A sha256 as deswm and the DES tools write it: 64 lowercase hex digits."""

FLAG_BIG: Final = 0x01

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_INLINE = struct.Struct("<QQBQQI")  # offset, length, codec, compressed, uncompressed, meta_len
_INLINE_V1 = struct.Struct("<QQBQQ")  # version 1: the same without meta_len
_BIG_TAIL = struct.Struct("<QI")  # size, meta_len
_MIN_RECORD: Final = _U16.size + 1 + min(_INLINE.size, _U16.size + _BIG_TAIL.size)
_MIN_RECORD_V1: Final = _U16.size + _INLINE_V1.size
_FOOTER = struct.Struct("<4sQ")

EMPTY_SHARD_SIZE: Final = HEADER_SIZE + _U32.size + FOOTER_SIZE
"""Size of a shard with no entries: header, entry count, footer."""

_INLINE_RECORD: Final = _U16.size + 1 + _INLINE.size
"""Fixed bytes of a version-2 inline record: name length, flags, the inline fields."""

_BIG_RECORD: Final = _U16.size + 1 + _U16.size + _BIG_TAIL.size
"""Fixed bytes of a big-file record: name length, flags, hash length, size and meta_len."""


def record_size(uid_len: int, meta_len: int, hash_len: int | None = None) -> int:
    """Bytes of a version-2 index record: the one entry-size formula of the format.

    ``uid_len`` and ``meta_len`` are byte lengths (UTF-8 uid, meta); ``hash_len`` is the
    length of a big file's hash, ``None`` for an inline entry. An inline entry adds its
    stored bytes plus this to a shard, a big-file entry only this (the tests check it
    against what :class:`ShardWriter` writes).
    """
    if hash_len is None:
        return _INLINE_RECORD + uid_len + meta_len
    return _BIG_RECORD + uid_len + hash_len + meta_len


def index_record_size(uid: str, meta: bytes, big_sha256: str | None = None) -> int:
    """:func:`record_size` of an entry given by its uid, meta and big-file hash."""
    hash_len = None if big_sha256 is None else len(big_sha256.encode("ascii"))
    return record_size(len(uid.encode("utf-8")), len(meta), hash_len)


@attrs.frozen
class IndexEntry:
    """One index record.

    Inline entries hold ``length`` stored bytes at absolute ``offset``; big-file entries
    (``big_sha256`` set) refer to ``_bigFiles/<sha256>`` beside the shards and have
    ``offset == length == 0``. ``meta`` is the raw JSON bytes (``b""`` when absent).
    """

    uid: str
    offset: int
    length: int
    codec: Codec
    size: int
    meta: bytes = b""
    big_sha256: str | None = None

    @property
    def big(self) -> bool:
        return self.big_sha256 is not None

    @cached_property
    def _meta_value(self) -> object:
        if not self.meta:
            return {}
        try:
            return json.loads(self.meta)
        except (ValueError, RecursionError):  # RecursionError: hostile nesting ("[[[[...")
            return None

    @property
    def meta_dict(self) -> dict[str, Any]:
        value = self._meta_value
        return value if isinstance(value, dict) else {}

    @property
    def meta_valid(self) -> bool:
        """Whether the meta is absent or a JSON object; anything else is corruption.

        A damaged meta must not read as "no checksum", which would skip verification.
        """
        return isinstance(self._meta_value, dict)

    @property
    def sha256(self) -> str | None:
        """The sha256 the entry's bytes are verified against, or ``None``.

        ``None`` both for an entry without a checksum (other DES writers) and for one
        whose meta is damaged (:func:`entry_checksum` tells them apart, raising for the
        second), so nothing that trusts this value (purge, skipping archived rows) ever
        trusts a damaged one.
        """
        try:
            return entry_checksum(self, name="")
        except CorruptShardError:
            return None

    @property
    def created_at_text(self) -> str | None:
        """``created_at`` as written in the meta (fixed-width UTC), if any."""
        value = self.meta_dict.get("created_at")
        return value if isinstance(value, str) else None

    @property
    def created_at(self) -> datetime | None:
        text = self.created_at_text
        if text is None:
            return None
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            return None


@attrs.frozen
class ShardIndex:
    """The parsed index of one shard object."""

    name: str
    version: int
    size: int
    index_start: int
    entries: tuple[IndexEntry, ...]

    @cached_property
    def by_uid(self) -> dict[str, IndexEntry]:
        return {entry.uid: entry for entry in self.entries}

    def get(self, uid: str) -> IndexEntry | None:
        return self.by_uid.get(uid)

    def __contains__(self, uid: object) -> bool:
        return uid in self.by_uid

    def __len__(self) -> int:
        return len(self.entries)


META_TEMPLATE: Final = b'{"created_at":"%s","sha256":"%s"}'
"""The meta deswm writes, filled with ``(created_at text, sha256 hex)`` as ASCII bytes.

Exactly what :func:`make_meta` serialises for these two keys (sorted keys, compact
separators), without ``json``: the packer fills it once per entry.
"""


def meta_of(sha256_hex: str, created_text: str) -> bytes:
    """The meta of an entry from its sha256 hex and ``created_at`` text (``format_utc``)."""
    return META_TEMPLATE % (created_text.encode("ascii"), sha256_hex.encode("ascii"))


def make_meta(
    sha256_hex: str, created_at: datetime, extra: Mapping[str, Any] | None = None
) -> bytes:
    """The deterministic meta deswm writes for an entry (:func:`meta_of` without extras)."""
    meta: dict[str, Any] = dict(extra or {})
    meta["sha256"] = sha256_hex
    meta["created_at"] = format_utc(created_at)
    return json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


class Compressor:
    """Compresses payloads for one codec, reusing the compressor object.

    ``compress`` stores the payload uncompressed when compression does not make it
    smaller, which beats guessing from file extensions.
    """

    def __init__(self, codec: Codec = "zstd", level: int = 3) -> None:
        spec = CODECS_BY_NAME.get(codec)
        if spec is None or not spec.writable:
            raise ConfigError(
                f"deswm writes {' or '.join(map(repr, WRITABLE))}, got {codec!r}",
                key="archive.compression",
                hint=f"{', '.join(sorted(CODECS_BY_NAME.keys() - WRITABLE))} entries are read "
                "but not written",
            )
        self.codec: Codec = codec
        self.level = level
        self._frames = spec.compressor(level)

    def compress(self, data: bytes) -> tuple[Codec, bytes]:
        if self._frames is None or not data:
            return "none", data
        packed: bytes = self._frames.compress(data)
        if len(packed) >= len(data):
            return "none", data
        return self.codec, packed

    def compress_many(self, payloads: Sequence[bytes]) -> list[tuple[Codec, bytes]]:
        """:meth:`compress` of each payload, in one call into zstd where it can.

        With zstandard's C backend, ``multi_compress_to_buffer`` compresses the whole
        batch with the GIL released once (per payload, other threads would take the
        GIL at every release and hand it back late). Each frame is exactly what
        :meth:`compress` makes; the tests check both paths give the same bytes.
        """
        many = getattr(self._frames, "multi_compress_to_buffer", None)
        if many is None or len(payloads) < 2:
            return [self.compress(data) for data in payloads]
        todo = [data for data in payloads if data]
        packed = many(todo, threads=0) if todo else ()
        out: list[tuple[Codec, bytes]] = []
        index = 0
        for data in payloads:
            if not data:
                out.append(("none", data))
                continue
            frame = packed[index]
            index += 1
            if len(frame) >= len(data):
                out.append(("none", data))
            else:
                out.append((self.codec, frame.tobytes()))
        return out


def decode_payload(
    entry: IndexEntry, stored: bytes, *, name: str, max_size: int = MAX_INLINE_SIZE
) -> bytes:
    """Decompress an inline entry's stored bytes and verify its checksum.

    Raises :class:`CorruptShardError` when the bytes do not decompress, decompress to
    another size than the index declares, or do not match the checksum, and when the
    meta is damaged (:func:`entry_checksum`). A compressed entry declaring more than
    ``max_size`` bytes is refused before decoding, and decoding stops one byte past the
    declared size, so memory stays bounded whatever the bytes say. An entry without
    a checksum (empty meta) is returned decoded but unverified: callers that must not
    accept that check :func:`entry_checksum` (``None``).
    """
    if len(stored) != entry.length:
        raise CorruptShardError(
            name, entry.offset, f"entry {entry.uid!r}: read {len(stored)} of {entry.length} bytes"
        )
    expected = entry_checksum(entry, name=name)  # a damaged meta fails before any decoding
    data = _decompress(entry, stored, name=name, max_size=max_size)
    if len(data) != entry.size:
        raise CorruptShardError(
            name,
            entry.offset,
            f"entry {entry.uid!r}: {len(data)} bytes after decoding, index says {entry.size}",
        )
    _check_digest(entry, data, expected, name=name)
    return data


def entry_checksum(entry: IndexEntry, *, name: str) -> str | None:
    """The sha256 an entry's bytes must match, or ``None`` when its writer recorded none.

    The rule that keeps a damaged meta from switching verification off:

    * an empty meta has no checksum (other DES writers): ``None``, *unverified*;
    * a non-empty meta must be a JSON object, else :class:`CorruptShardError`;
    * deswm always writes ``sha256`` and ``created_at`` together, so a meta holding
      either key must hold ``sha256`` as 64 lowercase hex digits, else
      :class:`CorruptShardError` (``{"sha256": 5}``, or a bit flip in the key);
    * a big-file entry's checksum is the hash in its index record (checked when the
      index is parsed); a ``sha256`` in its meta must be the same.
    """
    value = entry._meta_value
    if not isinstance(value, dict):
        raise CorruptShardError(
            name, entry.offset, f"entry {entry.uid!r}: meta is not a JSON object"
        )
    if "sha256" in value or "created_at" in value:
        digest = value.get("sha256")
        if not isinstance(digest, str) or _SHA256_HEX.fullmatch(digest) is None:
            raise CorruptShardError(
                name,
                entry.offset,
                f"entry {entry.uid!r}: meta has no valid sha256 (64 lowercase hex digits) "
                f"though deswm always writes one",
            )
        if entry.big_sha256 is not None and digest != entry.big_sha256:
            raise CorruptShardError(
                name,
                entry.offset,
                f"entry {entry.uid!r}: meta sha256 {digest} is not the big file's "
                f"{entry.big_sha256}",
            )
        return digest
    return entry.big_sha256


def verify_checksum(entry: IndexEntry, data: bytes, *, name: str) -> None:
    """Raise :class:`CorruptShardError` if ``data`` does not match the entry's checksum.

    A damaged meta raises too (:func:`entry_checksum`); an entry without a checksum
    passes (the caller decides whether unverified bytes are acceptable).
    """
    _check_digest(entry, data, entry_checksum(entry, name=name), name=name)


def _check_digest(entry: IndexEntry, data: bytes, expected: str | None, *, name: str) -> None:
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise CorruptShardError(
            name, entry.offset, f"entry {entry.uid!r}: sha256 mismatch (expected {expected})"
        )


def _decompress(entry: IndexEntry, stored: bytes, *, name: str, max_size: int) -> bytes:
    codec = CODECS_BY_NAME[entry.codec]
    if codec.raw:
        return codec.decode(stored, entry.size)
    if entry.size > max_size:
        raise CorruptShardError(
            name,
            entry.offset,
            f"entry {entry.uid!r}: declares {entry.size} bytes uncompressed, more than the "
            f"{max_size} this reader decodes inline (a decompression bomb, or pass a larger "
            f"Archive(max_inline_size=...) if the entry is genuine)",
        )
    try:
        return codec.decode(stored, entry.size)
    except ValueError as exc:
        raise CorruptShardError(
            name, entry.offset, f"entry {entry.uid!r}: {entry.codec} frame does not decode ({exc})"
        ) from exc


def encode_header(version: int = 2) -> bytes:
    return MAGIC + bytes((version, 0, 0, 0))


def _encode_entry(entry: IndexEntry, version: int) -> bytes:
    name = entry.uid.encode("utf-8")
    parts = [_U16.pack(len(name)), name]
    if version >= 2:
        parts.append(bytes((FLAG_BIG if entry.big else 0,)))
    if entry.big:
        assert entry.big_sha256 is not None
        digest = entry.big_sha256.encode("ascii")
        parts += [_U16.pack(len(digest)), digest, _BIG_TAIL.pack(entry.size, len(entry.meta))]
    elif version >= 2:
        parts.append(
            _INLINE.pack(
                entry.offset,
                entry.length,
                CODEC_IDS[entry.codec],
                entry.length,
                entry.size,
                len(entry.meta),
            )
        )
    else:  # version 1 records end after the uncompressed size: no meta_len, no meta
        parts.append(
            _INLINE_V1.pack(
                entry.offset, entry.length, CODEC_IDS[entry.codec], entry.length, entry.size
            )
        )
    parts.append(entry.meta)
    return b"".join(parts)


class ShardWriter:
    """Streams a shard into a binary file object: header, payloads, then index and footer.

    Entries are written in the order they are added; the caller decides that order
    (deswm adds them in canonical ``(created_at, uid)`` order).
    """

    def __init__(self, fp: IO[bytes], *, version: int = 2) -> None:
        if version not in (1, 2):
            raise ValueError(f"DES container version must be 1 or 2, got {version}")
        self._fp = fp
        self.version = version
        self._position = HEADER_SIZE
        self._index: list[bytes] = []
        self._uids: set[str] = set()
        self._finished = False
        fp.write(encode_header(version))

    @property
    def position(self) -> int:
        """Bytes written so far (header and payloads)."""
        return self._position

    @property
    def count(self) -> int:
        return len(self._index)

    def add(
        self, uid: str, stored: bytes, *, codec: Codec, size: int, meta: bytes = b""
    ) -> IndexEntry:
        """Append one inline entry whose payload is already compressed with ``codec``."""
        entry = IndexEntry(uid, self._position, len(stored), codec, size, meta)
        self._append(entry)
        self._fp.write(stored)
        self._position += len(stored)
        return entry

    def append(
        self, uid: str, stored: bytes | memoryview, *, codec: Codec, size: int, meta: bytes = b""
    ) -> None:
        """:meth:`add` without building the :class:`IndexEntry` (the packer's hot path).

        Writes exactly the bytes :meth:`add` writes and checks the same things.
        """
        if self._finished:
            raise ValueError("the shard is already finished")
        if uid in self._uids:
            raise ValueError(f"uid {uid!r} is already in this shard")
        name = uid.encode("utf-8")
        if len(name) > MAX_UID_BYTES:
            raise ValueError(f"uid of {len(name)} UTF-8 bytes exceeds {MAX_UID_BYTES}")
        length = len(stored)
        if self.version >= 2:
            record = b"%s%s\x00%s%s" % (
                _U16.pack(len(name)),
                name,
                _INLINE.pack(self._position, length, CODEC_IDS[codec], length, size, len(meta)),
                meta,
            )
        else:
            if meta:
                raise ValueError("container version 1 has no meta")
            record = (
                _U16.pack(len(name))
                + name
                + _INLINE_V1.pack(self._position, length, CODEC_IDS[codec], length, size)
            )
        self._uids.add(uid)
        self._index.append(record)
        self._fp.write(stored)
        self._position += length

    def add_big(self, uid: str, sha256_hex: str, *, size: int, meta: bytes = b"") -> IndexEntry:
        """Append a big-file entry; its bytes live in ``_bigFiles/<sha256>``."""
        if self.version < 2:
            raise ValueError("big-file entries need container version 2")
        entry = IndexEntry(uid, 0, 0, "none", size, meta, big_sha256=sha256_hex)
        self._append(entry)
        return entry

    def copy_entry(self, entry: IndexEntry, stored: bytes) -> IndexEntry:
        """Append an entry taken from another shard, byte for byte (merges)."""
        if entry.big:
            assert entry.big_sha256 is not None
            return self.add_big(entry.uid, entry.big_sha256, size=entry.size, meta=entry.meta)
        return self.add(entry.uid, stored, codec=entry.codec, size=entry.size, meta=entry.meta)

    def _append(self, entry: IndexEntry) -> None:
        if self._finished:
            raise ValueError("the shard is already finished")
        if entry.uid in self._uids:
            raise ValueError(f"uid {entry.uid!r} is already in this shard")
        if len(entry.uid.encode("utf-8")) > MAX_UID_BYTES:
            raise ValueError(
                f"uid of {len(entry.uid.encode())} UTF-8 bytes exceeds {MAX_UID_BYTES}"
            )
        if self.version < 2 and entry.meta:
            raise ValueError("container version 1 has no meta")
        self._uids.add(entry.uid)
        self._index.append(_encode_entry(entry, self.version))

    def finish(self) -> int:
        """Write the index and footer; return the shard's total size."""
        if self._finished:
            raise ValueError("the shard is already finished")
        self._finished = True
        index = _U32.pack(len(self._index)) + b"".join(self._index)
        self._fp.write(index)
        self._fp.write(_FOOTER.pack(INDEX_MAGIC, len(index)))
        self._position += len(index) + FOOTER_SIZE
        return self._position


def build_shard(
    entries: Iterable[tuple[str, bytes] | tuple[str, bytes, Codec]],
    *,
    level: int = 3,
    meta: Callable[[str, bytes], bytes] | None = None,
    version: int = 2,
) -> bytes:
    """Build a whole shard in memory from ``(uid, data[, codec])`` tuples.

    A convenience for tests and small tools; the packer streams instead. ``meta``
    computes each entry's meta from ``(uid, data)`` (none by default).
    """

    buffer = io.BytesIO()
    writer = ShardWriter(buffer, version=version)
    compressors: dict[Codec, Compressor] = {}
    for item in entries:
        uid, data = item[0], item[1]
        wanted: Codec = item[2] if len(item) == 3 else "zstd"
        codec: Codec
        spec = CODECS_BY_NAME[wanted]
        if spec.writable:
            if wanted not in compressors:
                compressors[wanted] = Compressor(wanted, level)
            codec, stored = compressors[wanted].compress(data)
        else:  # a read-only codec, written as asked so tests can make such entries
            frames = spec.compressor(level)
            assert frames is not None
            codec, stored = wanted, frames.compress(data)
        entry_meta = meta(uid, data) if meta else b""
        writer.add(uid, stored, codec=codec, size=len(data), meta=entry_meta)
    writer.finish()
    return buffer.getvalue()


# --- reading -------------------------------------------------------------------------------


def parse_header(head: bytes, *, name: str) -> int:
    """Validate the 8-byte header and return the container version."""
    if len(head) < HEADER_SIZE:
        raise CorruptShardError(name, 0, f"{len(head)} bytes is too short for a DES header")
    if head[:4] != MAGIC:
        raise CorruptShardError(name, 0, f"bad magic {head[:4]!r}, expected {MAGIC!r}")
    version = head[4]
    if version not in (1, 2):
        raise CorruptShardError(name, 4, f"unsupported container version {version}")
    if head[5:8] != b"\0\0\0":
        raise CorruptShardError(name, 5, "reserved header bytes are not zero")
    return version


def parse_footer(tail: bytes, *, size: int, name: str) -> tuple[int, int]:
    """From the last bytes of a shard (at least 12) return ``(index_start, index_size)``."""
    if size < HEADER_SIZE + FOOTER_SIZE or len(tail) < FOOTER_SIZE:
        raise CorruptShardError(name, size, f"{size} bytes is too short for a DES shard")
    magic, index_size = _FOOTER.unpack_from(tail, len(tail) - FOOTER_SIZE)
    if magic != INDEX_MAGIC:
        raise CorruptShardError(
            name, size - FOOTER_SIZE, f"bad footer magic {magic!r}, expected {INDEX_MAGIC!r}"
        )
    index_start = size - FOOTER_SIZE - index_size
    if index_start < HEADER_SIZE:
        raise CorruptShardError(
            name, size - FOOTER_SIZE, f"index size {index_size} does not fit in {size} bytes"
        )
    return index_start, index_size


def parse_index(
    buf: bytes | memoryview, *, name: str, version: int, index_start: int
) -> tuple[IndexEntry, ...]:
    """Parse and validate an index; offsets in errors are absolute object positions."""
    view = memoryview(buf)
    end = len(view)
    pos = 0

    def need(count: int, what: str) -> None:
        if pos + count > end:
            raise CorruptShardError(name, index_start + pos, f"index truncated in {what}")

    need(4, "entry count")
    (count,) = _U32.unpack_from(view, 0)
    pos = 4
    smallest = _MIN_RECORD if version >= 2 else _MIN_RECORD_V1
    if count * smallest > end - pos:
        raise CorruptShardError(
            name, index_start, f"entry count {count} cannot fit in an index of {end} bytes"
        )
    entries: list[IndexEntry] = []
    seen: set[str] = set()
    spans: list[tuple[int, int, int, str]] = []  # offset, length, record position, uid
    for number in range(count):
        at = index_start + pos
        need(2, f"entry {number} name length")
        (name_len,) = _U16.unpack_from(view, pos)
        pos += 2
        need(name_len, f"entry {number} name")
        try:
            uid = bytes(view[pos : pos + name_len]).decode("utf-8")
        except UnicodeDecodeError:
            raise CorruptShardError(name, at, f"entry {number} name is not UTF-8") from None
        pos += name_len
        if uid in seen:
            raise CorruptShardError(name, at, f"uid {uid!r} appears twice in the index")
        seen.add(uid)
        flags = 0
        if version >= 2:
            need(1, f"entry {uid!r} flags")
            flags = view[pos]
            pos += 1
        if flags & FLAG_BIG:
            need(2, f"entry {uid!r} hash length")
            (hash_len,) = _U16.unpack_from(view, pos)
            pos += 2
            need(hash_len + _BIG_TAIL.size, f"entry {uid!r} big-file record")
            raw = bytes(view[pos : pos + hash_len])
            # The hash names an object (_bigFiles/<hash>): nothing but a sha256 may pass.
            if _SHA256_HEX.fullmatch(raw.decode("latin-1")) is None:
                raise CorruptShardError(
                    name,
                    at,
                    f"entry {uid!r} names big file {raw[:80]!r}, not a sha256 (64 lowercase hex)",
                )
            digest = raw.decode("ascii")
            pos += hash_len
            size, meta_len = _BIG_TAIL.unpack_from(view, pos)
            pos += _BIG_TAIL.size
            if size > MAX_SIZE_FIELD:
                raise CorruptShardError(name, at, f"entry {uid!r} size {size} is impossible")
            entry = IndexEntry(uid, 0, 0, "none", size, b"", big_sha256=digest)
        else:
            need(_INLINE.size if version >= 2 else _INLINE_V1.size, f"entry {uid!r} record")
            if version >= 2:
                offset, length, codec_id, compressed, size, meta_len = _INLINE.unpack_from(
                    view, pos
                )
                pos += _INLINE.size
            else:
                offset, length, codec_id, compressed, size = _INLINE_V1.unpack_from(view, pos)
                pos += _INLINE_V1.size
                meta_len = 0
            codec = CODEC_NAMES.get(codec_id)
            if codec is None:
                raise CorruptShardError(name, at, f"entry {uid!r} has unknown codec {codec_id}")
            if compressed != length:
                raise CorruptShardError(
                    name, at, f"entry {uid!r} length {length} != compressed size {compressed}"
                )
            if offset < HEADER_SIZE or offset + length > index_start:
                raise CorruptShardError(
                    name,
                    at,
                    f"entry {uid!r} spans {offset}..{offset + length}, outside the data "
                    f"region {HEADER_SIZE}..{index_start}",
                )
            if size > MAX_SIZE_FIELD:
                raise CorruptShardError(name, at, f"entry {uid!r} size {size} is impossible")
            if codec in RAW_CODECS and size != length:
                raise CorruptShardError(
                    name, at, f"entry {uid!r} is stored uncompressed: size {size} != {length}"
                )
            spans.append((offset, length, at, uid))
            entry = IndexEntry(uid, offset, length, codec, size, b"")
        need(meta_len, f"entry {uid!r} meta")
        meta = bytes(view[pos : pos + meta_len])
        pos += meta_len
        if meta:
            try:
                meta.decode("utf-8")
            except UnicodeDecodeError:
                raise CorruptShardError(name, at, f"entry {uid!r} meta is not UTF-8") from None
            entry = attrs.evolve(entry, meta=meta)
        entries.append(entry)
    if pos != end:
        raise CorruptShardError(
            name, index_start + pos, f"{end - pos} unexpected bytes after the last index entry"
        )
    _check_overlaps(spans, name=name)
    return tuple(entries)


def _check_overlaps(spans: list[tuple[int, int, int, str]], *, name: str) -> None:
    """Payloads are back to back: two entries sharing a stored byte is corruption."""
    spans.sort()
    reach, owner = HEADER_SIZE, ""
    for offset, length, at, uid in spans:
        if length == 0:
            continue
        if offset < reach:
            raise CorruptShardError(
                name, at, f"entry {uid!r} at {offset}..{offset + length} overlaps entry {owner!r}"
            )
        reach, owner = offset + length, uid


def read_shard(data: bytes, *, name: str = "<shard>") -> ShardIndex:
    """Parse a whole shard held in memory (tests, small tools)."""
    version = parse_header(data[:HEADER_SIZE], name=name)
    index_start, _ = parse_footer(data[-FOOTER_SIZE:], size=len(data), name=name)
    entries = parse_index(
        memoryview(data)[index_start : len(data) - FOOTER_SIZE],
        name=name,
        version=version,
        index_start=index_start,
    )
    return ShardIndex(name, version, len(data), index_start, entries)


# --- object names --------------------------------------------------------------------------
#
# A shard object is ``{day}_{hex}_{part}.des``: the UTC day of its entries' created_at as
# YYYYMMDD (``timeutil.format_day``), the router's shard hex (uppercase), and the part
# number in four digits. The name embeds the day, which is why buckets are UTC days: a
# router chooses the shard within a day, never the length of a bucket.

MAX_PART_NUMBER: Final = 9999
"""The last part number of a group: the DES name holds it in four digits."""

_PART_DIGITS: Final = len(str(MAX_PART_NUMBER))

PART_NAME: Final = re.compile(rf"^(\d{{8}})_([0-9A-F]+)_(\d{{{_PART_DIGITS}}})\.des$")
"""A shard object name: groups day, hex and part number (temp files never match)."""


def day_prefix(day: str) -> str:
    """Name prefix of every part of a ``YYYYMMDD`` day."""
    return f"{day}_"


def group_prefix(day: str, shard_hex: str) -> str:
    """Name prefix of a group's parts; the trailing ``_`` keeps ``5C`` from ``5C3``."""
    return f"{day_prefix(day)}{shard_hex}_"


def part_name(day: str, shard_hex: str, part: int) -> str:
    """The object name of part ``part`` of the group ``{day}_{shard_hex}``."""
    if not 0 <= part <= MAX_PART_NUMBER:
        raise ValueError(f"part number {part} does not fit the {_PART_DIGITS}-digit DES name field")
    return f"{day}_{shard_hex}_{part:0{_PART_DIGITS}d}.des"


def parse_part_name(name: str) -> tuple[str, str, int] | None:
    """``(day, hex, part)`` of a shard object name, or ``None`` for any other name."""
    match = PART_NAME.match(name)
    if match is None:
        return None
    return match.group(1), match.group(2), int(match.group(3))


@attrs.frozen
class PartInfo:
    """One listed shard object: ``{day}_{hex}_{part:04d}.des`` of ``size`` bytes.

    ``version`` is the token that changes whenever the object is replaced; indexes are
    cached and reads are pinned by it.
    """

    name: str
    day: str
    hex: str
    part: int
    size: int
    version: str


def part_info(name: str, size: int, version: str) -> PartInfo | None:
    """The :class:`PartInfo` of a listed object, or ``None`` when it is not a shard."""
    parsed = parse_part_name(name)
    if parsed is None:
        return None
    day, hex_, part = parsed
    return PartInfo(name, day, hex_, part, size, version)


_publish(globals())
