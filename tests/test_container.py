"""The DES2 container: byte layout, round trips, and every way a shard can be corrupt."""

from __future__ import annotations

import hashlib
import io
import struct
from datetime import UTC, datetime

import lz4.frame
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from deswm._container import (
    EMPTY_SHARD_SIZE,
    FOOTER_SIZE,
    HEADER_SIZE,
    MAX_PART_NUMBER,
    MAX_UID_BYTES,
    META_TEMPLATE,
    PART_NAME,
    Compressor,
    IndexEntry,
    PartInfo,
    ShardWriter,
    build_shard,
    day_prefix,
    decode_payload,
    entry_checksum,
    group_prefix,
    index_record_size,
    make_meta,
    meta_of,
    parse_part_name,
    part_info,
    part_name,
    read_shard,
    record_size,
)
from deswm._errors import ConfigError, CorruptShardError
from deswm._timeutil import format_utc

EXAMPLE_71 = bytes.fromhex(
    "44455332" "02" "000000"
    "68656c6c6f"
    "01000000"
    "0200" "6162"
    "00"
    "0800000000000000" "0500000000000000"
    "00"
    "0500000000000000" "0500000000000000"
    "00000000"
    "44455349" "2e00000000000000"
)  # fmt: skip


def payloads(data: bytes, *, name: str = "t.des") -> dict[str, bytes]:
    """Every entry of an in-memory shard, decoded and verified."""
    index = read_shard(data, name=name)
    return {
        e.uid: decode_payload(e, data[e.offset : e.offset + e.length], name=name)
        for e in index.entries
    }


def sha_meta(uid: str, data: bytes) -> bytes:
    return make_meta(hashlib.sha256(data).hexdigest(), datetime(2024, 5, 17, tzinfo=UTC))


# --- layout ------------------------------------------------------------------------------


def test_the_71_byte_example_byte_for_byte() -> None:
    built = build_shard([("ab", b"hello", "none")])
    assert len(built) == 71
    assert built == EXAMPLE_71
    index = read_shard(EXAMPLE_71)
    assert index.version == 2
    assert index.index_start == 13
    assert index.entries == (IndexEntry("ab", 8, 5, "none", 5),)
    assert payloads(EXAMPLE_71) == {"ab": b"hello"}


def test_writer_streams_what_build_shard_builds() -> None:
    buffer = io.BytesIO()
    writer = ShardWriter(buffer)
    writer.add("ab", b"hello", codec="none", size=5)
    assert writer.position == 13
    assert writer.finish() == 71
    assert buffer.getvalue() == EXAMPLE_71


def test_meta_is_deterministic_and_sorted() -> None:
    meta = make_meta("ab" * 32, datetime(2024, 5, 17, 12, tzinfo=UTC), {"z": 1, "a": "x"})
    assert meta == (
        b'{"a":"x","created_at":"2024-05-17T12:00:00.000000Z","sha256":"' + b"ab" * 32 + b'","z":1}'
    )


def test_compressor_stores_raw_when_compression_does_not_shrink() -> None:
    compressor = Compressor("zstd", 3)
    assert compressor.compress(b"") == ("none", b"")
    random_bytes = bytes(range(256)) * 1
    assert compressor.compress(random_bytes)[0] == "none"
    codec, packed = compressor.compress(b"a" * 1000)
    assert codec == "zstd"
    assert len(packed) < 1000
    assert Compressor("none").compress(b"a" * 1000) == ("none", b"a" * 1000)


@pytest.mark.parametrize(("codec", "level", "key"), [
    ("lz4", 3, "archive.compression"),
    ("gzip", 3, "archive.compression"),
    ("zstd", 23, "archive.compression_level"),
])  # fmt: skip
def test_compressor_rejects_bad_settings(codec: str, level: int, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        Compressor(codec, level)  # type: ignore[arg-type]
    assert info.value.key == key


# --- round trips -------------------------------------------------------------------------

uids = st.text(min_size=0, max_size=60) | st.text(
    alphabet=st.sampled_from("aż€😀"), min_size=200, max_size=400
)
contents = st.binary(max_size=3000) | st.builds(
    lambda n, b: b * n, st.integers(0, 500), st.binary(min_size=1, max_size=4)
)
entries = st.lists(
    st.tuples(uids, contents, st.sampled_from(["none", "zstd", "lz4"])),
    max_size=20,
    unique_by=lambda item: item[0],
)


@settings(max_examples=150, deadline=None)
@given(entries, st.booleans())
def test_any_entries_round_trip_and_build_identically(
    items: list[tuple[str, bytes, str]], with_meta: bool
) -> None:
    meta = sha_meta if with_meta else None
    built = build_shard(items, meta=meta)  # type: ignore[arg-type]
    assert build_shard(items, meta=meta) == built  # type: ignore[arg-type]
    index = read_shard(built, name="p.des")
    assert [e.uid for e in index.entries] == [uid for uid, _, _ in items]
    assert payloads(built) == {uid: data for uid, data, _ in items}
    for entry, (_, data, _) in zip(index.entries, items, strict=True):
        assert entry.size == len(data)
        assert entry.sha256 == (hashlib.sha256(data).hexdigest() if with_meta else None)


def test_longest_uid_round_trips_and_longer_is_rejected() -> None:
    uid = "€" * (MAX_UID_BYTES // 3)  # 65,535 UTF-8 bytes
    built = build_shard([(uid, b"x", "none")])
    assert payloads(built) == {uid: b"x"}
    with pytest.raises(ValueError, match="exceeds"):
        build_shard([(uid + "a", b"x", "none")])


def test_big_file_entries_round_trip() -> None:
    buffer = io.BytesIO()
    writer = ShardWriter(buffer)
    digest = hashlib.sha256(b"big").hexdigest()
    meta = make_meta(digest, datetime(2024, 5, 17, tzinfo=UTC))
    writer.add("small", b"s", codec="none", size=1)
    writer.add_big("big", digest, size=3, meta=meta)
    writer.finish()
    index = read_shard(buffer.getvalue())
    big = index.get("big")
    assert big is not None
    assert big.big
    assert (big.offset, big.length, big.size, big.big_sha256, big.meta) == (0, 0, 3, digest, meta)
    assert big.sha256 == digest
    assert big.created_at == datetime(2024, 5, 17, tzinfo=UTC)
    with pytest.raises(ValueError, match="version 2"):
        ShardWriter(io.BytesIO(), version=1).add_big("b", digest, size=3)


def test_version_1_layout_has_no_flags_and_no_meta() -> None:
    expected = bytes.fromhex(
        "44455332" "01" "000000" "68656c6c6f" "01000000" "0200" "6162"
        "0800000000000000" "0500000000000000" "00" "0500000000000000" "0500000000000000"
        "44455349" "2900000000000000"
    )  # fmt: skip
    assert build_shard([("ab", b"hello", "none")], version=1) == expected
    assert payloads(expected) == {"ab": b"hello"}


def test_version_1_entries_are_read() -> None:
    items = [("one", b"first", "none"), ("two", b"second" * 50, "zstd"), ("3", b"", "lz4")]
    built = build_shard(items, version=1)  # type: ignore[arg-type]
    assert built[4] == 1
    index = read_shard(built)
    assert index.version == 1
    assert all(e.meta == b"" and not e.big for e in index.entries)
    assert payloads(built) == {"one": b"first", "two": b"second" * 50, "3": b""}
    with pytest.raises(ValueError, match="no meta"):
        build_shard([("a", b"x", "none")], meta=sha_meta, version=1)


# --- corruption --------------------------------------------------------------------------


def two_entry_shard() -> bytes:
    return build_shard([("aa", b"hello", "none"), ("ab", b"world", "none")], meta=sha_meta)


def index_start(data: bytes) -> int:
    size: int = struct.unpack_from("<Q", data, len(data) - 8)[0]
    return len(data) - FOOTER_SIZE - size


def replace_footer_size(data: bytes, delta: int) -> bytes:
    (size,) = struct.unpack_from("<Q", data, len(data) - 8)
    return data[:-8] + struct.pack("<Q", size + delta)


def corrupt(data: bytes, at: int, new: bytes) -> bytes:
    return data[:at] + new + data[at + len(new) :]


def first_entry_at(data: bytes) -> int:
    return index_start(data) + 4


def second_entry_at(data: bytes) -> int:
    start = first_entry_at(data)
    meta_len: int = struct.unpack_from("<I", data, start + 2 + 2 + 1 + 33)[0]
    return start + 2 + 2 + 1 + 37 + meta_len


def case_magic(data: bytes) -> tuple[bytes, int]:
    return b"XES2" + data[4:], 0


def case_version(data: bytes) -> tuple[bytes, int]:
    return corrupt(data, 4, b"\x03"), 4


def case_reserved(data: bytes) -> tuple[bytes, int]:
    return corrupt(data, 6, b"\x01"), 5


def case_truncated_footer(data: bytes) -> tuple[bytes, int]:
    cut = data[:-3]
    return cut, len(cut) - FOOTER_SIZE


def case_too_short(data: bytes) -> tuple[bytes, int]:
    return data[:19], 19


def case_index_size_too_big(data: bytes) -> tuple[bytes, int]:
    return replace_footer_size(data, len(data)), len(data) - FOOTER_SIZE


def case_truncated_index(data: bytes) -> tuple[bytes, int]:
    # Drop the index's last byte and shrink index_size to match: the last meta is cut,
    # and the error points at the start of that meta.
    end = len(data) - FOOTER_SIZE
    cut = replace_footer_size(data[: end - 1] + data[end:], -1)
    return cut, second_entry_at(data) + 2 + 2 + 1 + 37


def case_offset_past_index(data: bytes) -> tuple[bytes, int]:
    at = second_entry_at(data)
    return corrupt(data, at + 2 + 2 + 1, struct.pack("<Q", index_start(data) - 2)), at


def case_duplicate_uid(data: bytes) -> tuple[bytes, int]:
    at = second_entry_at(data)
    return corrupt(data, at + 2, b"aa"), at


def case_bad_utf8_name(data: bytes) -> tuple[bytes, int]:
    at = first_entry_at(data)
    return corrupt(data, at + 2, b"\xff\xfe"), at


def case_trailing_garbage(data: bytes) -> tuple[bytes, int]:
    garbage = data + b"junk"
    return garbage, len(garbage) - FOOTER_SIZE


def case_garbage_after_last_entry(data: bytes) -> tuple[bytes, int]:
    end = len(data) - FOOTER_SIZE
    return replace_footer_size(data[:end] + b"\0\0" + data[end:], 2), end


def case_unknown_codec(data: bytes) -> tuple[bytes, int]:
    at = first_entry_at(data)
    return corrupt(data, at + 2 + 2 + 1 + 16, b"\x07"), at


def case_bad_meta_utf8(data: bytes) -> tuple[bytes, int]:
    at = first_entry_at(data)
    return corrupt(data, at + 2 + 2 + 1 + 37, b"\xff"), at


STRUCTURAL = [
    case_magic,
    case_version,
    case_reserved,
    case_truncated_footer,
    case_too_short,
    case_index_size_too_big,
    case_truncated_index,
    case_offset_past_index,
    case_duplicate_uid,
    case_bad_utf8_name,
    case_trailing_garbage,
    case_garbage_after_last_entry,
    case_unknown_codec,
    case_bad_meta_utf8,
]


@pytest.mark.parametrize("case", STRUCTURAL, ids=lambda case: case.__name__[5:])
def test_every_structural_corruption_names_object_and_offset(case: object) -> None:
    data, offset = case(two_entry_shard())  # type: ignore[operator]
    with pytest.raises(CorruptShardError) as info:
        read_shard(data, name="20240517_39_0000.des")
    assert info.value.name == "20240517_39_0000.des"
    assert info.value.offset == offset
    assert "20240517_39_0000.des" in str(info.value)
    assert f"offset {offset}" in str(info.value)


def test_checksum_mismatch_raises() -> None:
    data = two_entry_shard()
    bad = data.replace(b"world", b"w0rld")
    index = read_shard(bad, name="x.des")
    entry = index.entries[1]
    with pytest.raises(CorruptShardError, match="sha256 mismatch") as info:
        decode_payload(entry, bad[entry.offset : entry.offset + entry.length], name="x.des")
    assert (info.value.name, info.value.offset) == ("x.des", entry.offset)


def test_undecodable_zstd_raises() -> None:
    frame = zstandard.ZstdCompressor().compress(b"payload" * 100)
    entry = IndexEntry("z", HEADER_SIZE, len(frame), "zstd", 700)
    garbage = frame[:4] + bytes(len(frame) - 4)
    with pytest.raises(CorruptShardError, match="does not decode") as info:
        decode_payload(entry, garbage, name="z.des")
    assert (info.value.name, info.value.offset) == ("z.des", HEADER_SIZE)


def test_undecodable_lz4_raises() -> None:
    frame = lz4.frame.compress(b"payload" * 100)
    entry = IndexEntry("z", HEADER_SIZE, len(frame), "lz4", 700)
    with pytest.raises(CorruptShardError, match="does not decode"):
        decode_payload(entry, b"\0" * len(frame), name="z.des")


def test_wrong_decoded_size_and_short_read_raise() -> None:
    entry = IndexEntry("n", HEADER_SIZE, 5, "none", 6)
    with pytest.raises(CorruptShardError, match="index says 6"):
        decode_payload(entry, b"hello", name="n.des")
    with pytest.raises(CorruptShardError, match="read 4 of 5"):
        decode_payload(IndexEntry("n", HEADER_SIZE, 5, "none", 5), b"hell", name="n.des")


def test_damaged_meta_is_corruption_not_a_missing_checksum() -> None:
    meta = make_meta(hashlib.sha256(b"x").hexdigest(), datetime(2024, 5, 17, tzinfo=UTC))
    entry = IndexEntry("m", HEADER_SIZE, 1, "none", 1, b"{" + meta[1:-1])
    assert entry.sha256 is None
    with pytest.raises(CorruptShardError, match="not a JSON object"):
        decode_payload(entry, b"x", name="m.des")
    assert decode_payload(IndexEntry("m", HEADER_SIZE, 1, "none", 1, meta), b"x", name="m") == b"x"


# --- hostile bytes (G18) -------------------------------------------------------------------


def raw_shard(payload: bytes, records: list[bytes]) -> bytes:
    """A shard from hand-made index records (payload at offset 8), checking nothing."""
    index = struct.pack("<I", len(records)) + b"".join(records)
    return b"DES2\x02\0\0\0" + payload + index + b"DESI" + struct.pack("<Q", len(index))


def inline_record(
    uid: str,
    offset: int,
    length: int,
    size: int,
    *,
    codec: int = 0,
    meta: bytes = b"",
) -> bytes:
    name = uid.encode()
    fields = struct.pack("<QQBQQI", offset, length, codec, length, size, len(meta))
    return struct.pack("<H", len(name)) + name + b"\0" + fields + meta


def big_record(uid: str, digest: bytes, size: int, meta: bytes = b"") -> bytes:
    name = uid.encode()
    return (
        struct.pack("<H", len(name))
        + name
        + b"\x01"
        + struct.pack("<H", len(digest))
        + digest
        + struct.pack("<QI", size, len(meta))
        + meta
    )


def deswm_meta(data: bytes) -> bytes:
    return make_meta(hashlib.sha256(data).hexdigest(), datetime(2024, 5, 17, tzinfo=UTC))


def test_a_size_beyond_64_bits_signed_is_corruption_not_overflow() -> None:
    frame = zstandard.ZstdCompressor().compress(b"payload" * 10)
    shard = raw_shard(frame, [inline_record("z", 8, len(frame), 2**63 + 5, codec=1)])
    with pytest.raises(CorruptShardError, match="size 9223372036854775813 is impossible"):
        payloads(shard)


def test_a_deeply_nested_meta_is_corruption_not_recursion() -> None:
    meta = b"[" * 100_000
    shard = raw_shard(b"hello", [inline_record("m", 8, 5, 5, meta=meta)])
    entry = read_shard(shard).entries[0]
    assert entry.sha256 is None
    assert entry.created_at is None
    with pytest.raises(CorruptShardError, match="not a JSON object"):
        payloads(shard)


def test_overlapping_entries_are_corrupt() -> None:
    shard = raw_shard(b"hello", [inline_record("a", 8, 5, 5), inline_record("b", 10, 3, 3)])
    with pytest.raises(CorruptShardError, match="overlaps entry 'a'") as info:
        read_shard(shard, name="o.des")
    assert info.value.offset == index_start(shard) + 4 + 2 + 1 + 1 + 37
    # Empty entries occupy no byte; adjacent ones do not overlap.
    fine = raw_shard(
        b"hello",
        [inline_record("a", 8, 2, 2), inline_record("e", 10, 0, 0), inline_record("b", 10, 3, 3)],
    )
    assert payloads(fine) == {"a": b"he", "e": b"", "b": b"llo"}


def test_an_entry_count_the_index_cannot_hold_fails_before_parsing() -> None:
    shard = two_entry_shard()
    at = index_start(shard)
    bad = corrupt(shard, at, struct.pack("<I", 0xFFFFFFFF))
    with pytest.raises(CorruptShardError, match="entry count 4294967295 cannot fit") as info:
        read_shard(bad)
    assert info.value.offset == at


def test_an_uncompressed_entry_must_declare_its_stored_length() -> None:
    shard = raw_shard(b"hello", [inline_record("n", 8, 5, 2**40)])
    with pytest.raises(CorruptShardError, match="stored uncompressed: size 1099511627776 != 5"):
        read_shard(shard)


@pytest.mark.parametrize(
    "digest",
    [
        b"../../x",
        hashlib.sha256(b"big").hexdigest().upper().encode(),
        hashlib.sha256(b"big").hexdigest()[:63].encode() + b"/",
        b"\xff" * 64,
        b"",
    ],
    ids=["path", "uppercase", "slash", "non-ascii", "empty"],
)
def test_a_big_file_hash_must_be_64_lowercase_hex(digest: bytes) -> None:
    shard = raw_shard(b"", [big_record("big", digest, 3)])
    with pytest.raises(CorruptShardError, match="not a sha256"):
        read_shard(shard)


def tampered(meta: bytes) -> bytes:
    return raw_shard(b"hello", [inline_record("t", 8, 5, 5, meta=meta)])


GOOD_META = deswm_meta(b"hello")
BAD_HEX = "x" * 64


@pytest.mark.parametrize(
    "meta",
    [
        b'{"created_at":"2024-05-17T00:00:00.000000Z","sha256":5}',
        GOOD_META.replace(b'"sha256"', b'"sHa256"'),
        b'{"created_at":"2024-05-17T00:00:00.000000Z"}',
        GOOD_META.replace(hashlib.sha256(b"hello").hexdigest().encode(), BAD_HEX.encode()),
        GOOD_META.replace(
            hashlib.sha256(b"hello").hexdigest().encode(),
            hashlib.sha256(b"hello").hexdigest().upper().encode(),
        ),
        b'{"sha256":null}',
        b'{"sha256":["' + hashlib.sha256(b"hello").hexdigest().encode() + b'"]}',
        b"[]",
        b"5",
        b'"sha256"',
        GOOD_META[:-1],
    ],
    ids=[
        "number",
        "flipped-key",
        "missing",
        "not-hex",
        "uppercase",
        "null",
        "list",
        "array",
        "scalar",
        "string",
        "truncated-json",
    ],
)
def test_a_tampered_meta_cannot_switch_the_checksum_off(meta: bytes) -> None:
    """Each of these returned the bytes unverified before: now each is corruption."""
    shard = tampered(meta)
    entry = read_shard(shard).entries[0]
    assert entry.sha256 is None  # nothing that trusts the index trusts this entry
    with pytest.raises(CorruptShardError, match="meta"):
        entry_checksum(entry, name="t.des")
    with pytest.raises(CorruptShardError, match="meta"):
        payloads(shard)


def test_only_an_entry_without_deswm_keys_is_unverified() -> None:
    for meta in (b"", b"{}", b'{"content_type":"image/png"}'):
        shard = tampered(meta)
        entry = read_shard(shard).entries[0]
        assert entry_checksum(entry, name="t.des") is None
        assert payloads(shard) == {"t": b"hello"}  # the caller decides (Archive refuses)
    shard = tampered(GOOD_META)
    assert entry_checksum(read_shard(shard).entries[0], name="t.des") == (
        hashlib.sha256(b"hello").hexdigest()
    )


def test_a_big_entry_meta_must_agree_with_its_hash() -> None:
    digest = hashlib.sha256(b"big").hexdigest().encode()
    other = deswm_meta(b"other")
    entry = read_shard(raw_shard(b"", [big_record("big", digest, 3, other)])).entries[0]
    with pytest.raises(CorruptShardError, match="is not the big file's"):
        entry_checksum(entry, name="b.des")
    foreign = read_shard(raw_shard(b"", [big_record("big", digest, 3)])).entries[0]
    assert entry_checksum(foreign, name="b.des") == digest.decode()  # always verified


# zstd frames built by hand: RLE blocks of 128 KiB, 4 bytes each, so any size is cheap.


def zstd_rle_frame(size: int, *, content_size: bool = True) -> bytes:
    block = 128 * 1024
    header = struct.pack("<I", 0xFD2FB528)
    if content_size:
        header += b"\xc0" + bytes((7 << 3,)) + struct.pack("<Q", size)  # 8-byte FCS, 128 KiB
    else:
        header += b"\x00" + bytes((7 << 3,))
    blocks = []
    left = size
    while left > 0:
        n = min(block, left)
        left -= n
        blocks.append(struct.pack("<I", (n << 3) | (1 << 1) | (left == 0))[:3] + b"\0")
    return header + b"".join(blocks)


def test_the_hand_made_rle_frame_is_a_real_zstd_frame() -> None:
    frame = zstd_rle_frame(300_000)
    assert zstandard.ZstdDecompressor().decompress(frame) == bytes(300_000)
    unsized = zstd_rle_frame(300_000, content_size=False)
    entry = IndexEntry("u", HEADER_SIZE, len(unsized), "zstd", 300_000)
    assert decode_payload(entry, unsized, name="u.des") == bytes(300_000)


@pytest.mark.parametrize("content_size", [True, False])
def test_a_zstd_frame_longer_than_declared_is_corrupt(content_size: bool) -> None:
    frame = zstd_rle_frame(10 * 2**20, content_size=content_size)
    entry = IndexEntry("z", HEADER_SIZE, len(frame), "zstd", 1000)
    with pytest.raises(CorruptShardError, match="does not decode"):
        decode_payload(entry, frame, name="z.des")


def test_a_declared_size_above_the_limit_is_refused_before_decoding() -> None:
    frame = zstd_rle_frame(2**20)
    entry = IndexEntry("z", HEADER_SIZE, len(frame), "zstd", 2**20)
    assert decode_payload(entry, frame, name="z.des", max_size=2**20) == bytes(2**20)
    with pytest.raises(CorruptShardError, match="more than the 1048575 this reader decodes"):
        decode_payload(entry, frame, name="z.des", max_size=2**20 - 1)
    huge = IndexEntry("z", HEADER_SIZE, len(frame), "zstd", 3 * 2**30)
    with pytest.raises(CorruptShardError, match="max_inline_size"):
        decode_payload(huge, frame, name="z.des")


def test_zstd_streams_and_concatenated_frames_decode() -> None:
    data = b"stream me " * 5000
    stream = zstandard.ZstdCompressor().compressobj()
    unsized = stream.compress(data) + stream.flush()
    assert zstandard.frame_content_size(unsized) == -1
    entry = IndexEntry("s", HEADER_SIZE, len(unsized), "zstd", len(data))
    assert decode_payload(entry, unsized, name="s.des") == data
    two = zstandard.ZstdCompressor().compress(b"a" * 100) + unsized
    entry = IndexEntry("s", HEADER_SIZE, len(two), "zstd", 100 + len(data))
    assert decode_payload(entry, two, name="s.des") == b"a" * 100 + data
    cut = IndexEntry("s", HEADER_SIZE, len(unsized) - 5, "zstd", len(data))
    with pytest.raises(CorruptShardError, match="does not decode"):
        decode_payload(cut, unsized[:-5], name="s.des")


def test_lz4_is_decoded_with_a_bound() -> None:
    data = b"lz4 " * 10_000
    for framed in (lz4.frame.compress(data), lz4.frame.compress(data, store_size=False)):
        entry = IndexEntry("l", HEADER_SIZE, len(framed), "lz4", len(data))
        assert decode_payload(entry, framed, name="l.des") == data
        short = IndexEntry("l", HEADER_SIZE, len(framed), "lz4", 100)
        with pytest.raises(CorruptShardError, match="does not decode"):
            decode_payload(short, framed, name="l.des")
        trailing = framed + b"junk"
        entry = IndexEntry("l", HEADER_SIZE, len(trailing), "lz4", len(data))
        with pytest.raises(CorruptShardError, match="4 bytes follow the frame"):
            decode_payload(entry, trailing, name="l.des")
        cut = IndexEntry("l", HEADER_SIZE, len(framed) - 3, "lz4", len(data))
        with pytest.raises(CorruptShardError, match="does not decode"):
            decode_payload(cut, framed[:-3], name="l.des")


# --- sizes, meta and names: the format's one definition of each -----------------------------


@settings(max_examples=150, deadline=None)
@given(
    entries=st.lists(
        st.tuples(
            st.text(min_size=1, max_size=20),
            st.binary(max_size=300),
            st.binary(max_size=60),
            st.booleans(),
        ),
        max_size=12,
        unique_by=lambda entry: entry[0],
    )
)
def test_record_size_is_what_the_writer_writes(
    entries: list[tuple[str, bytes, bytes, bool]],
) -> None:
    buffer = io.BytesIO()
    writer = ShardWriter(buffer)
    expected = EMPTY_SHARD_SIZE
    for uid, stored, meta, big in entries:
        if big:
            digest = hashlib.sha256(stored).hexdigest()
            writer.add_big(uid, digest, size=len(stored), meta=meta)
            expected += index_record_size(uid, meta, digest)
            assert index_record_size(uid, meta, digest) == record_size(
                len(uid.encode()), len(meta), 64
            )
        else:
            writer.append(uid, stored, codec="none", size=len(stored), meta=meta)
            expected += len(stored) + record_size(len(uid.encode()), len(meta))
    assert writer.finish() == expected == len(buffer.getvalue())


def test_an_empty_shard_is_its_empty_size() -> None:
    assert len(build_shard([])) == EMPTY_SHARD_SIZE == HEADER_SIZE + 4 + FOOTER_SIZE


@settings(max_examples=200, deadline=None)
@given(
    created_at=st.datetimes(timezones=st.just(UTC)),
    data=st.binary(max_size=64),
)
def test_the_meta_template_is_make_meta(created_at: datetime, data: bytes) -> None:
    digest = hashlib.sha256(data).hexdigest()
    text = format_utc(created_at)
    assert meta_of(digest, text) == make_meta(digest, created_at)
    assert META_TEMPLATE % (text.encode(), digest.encode()) == make_meta(digest, created_at)


@pytest.mark.parametrize(
    ("day", "shard_hex", "part", "name"),
    [
        ("20240517", "39", 0, "20240517_39_0000.des"),
        ("00010101", "BB5C", 12, "00010101_BB5C_0012.des"),
        ("99991231", "F", MAX_PART_NUMBER, "99991231_F_9999.des"),
    ],
)
def test_part_names_round_trip(day: str, shard_hex: str, part: int, name: str) -> None:
    assert part_name(day, shard_hex, part) == name
    assert name.startswith(group_prefix(day, shard_hex))
    assert group_prefix(day, shard_hex).startswith(day_prefix(day))
    assert day_prefix(day) == f"{day}_"
    assert parse_part_name(name) == (day, shard_hex, part)
    info = part_info(name, 71, "v1")
    assert info == PartInfo(name, day, shard_hex, part, 71, "v1")


def test_part_numbers_stop_at_the_four_digit_field() -> None:
    assert MAX_PART_NUMBER == 9999
    for bad in (-1, MAX_PART_NUMBER + 1):
        with pytest.raises(ValueError, match="4-digit"):
            part_name("20240517", "39", bad)
    assert parse_part_name("20240517_39_10000.des") is None  # one digit too many
    assert PART_NAME.match("20240517_39_9999.des")


@pytest.mark.parametrize(
    "name",
    [
        ".20240517_39_0000.des.0123456789ab.tmp",  # a temp file of a publish
        "20240517_39_000.des",
        "2024051_39_0000.des",
        "20240517_3g_0000.des",
        "20240517_39_0000.DES",
        "20240517_39_0000.des/x",
        "_bigFiles/" + "a" * 64,
    ],
)
def test_other_names_are_not_parts(name: str) -> None:
    assert parse_part_name(name) is None
    assert part_info(name, 1, "v") is None
