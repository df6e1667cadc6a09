"""The codec registry: one table of codecs by on-disk id that everything derives from."""

from __future__ import annotations

import struct
import sys
import typing

import pytest

from deswm import _codecs
from deswm import _model as model
from deswm._buffers import BIG, SPILLED
from deswm._codecs import (
    CODEC_IDS,
    CODEC_MASK,
    CODEC_NAMES,
    CODECS_BY_NAME,
    REGISTRY,
    WRITABLE,
    Codec,
    WritableCodec,
)
from deswm._config import ArchiveSettings
from deswm._container import IndexEntry, build_shard, decode_payload, parse_index, read_shard
from deswm._errors import ConfigError, CorruptShardError

PAYLOAD = b"deswm keeps every file; " * 200


def test_ids_and_names_are_unique() -> None:
    assert len({c.id for c in REGISTRY.values()}) == len(REGISTRY)
    assert len({c.name for c in REGISTRY.values()}) == len(REGISTRY)
    assert all(codec.id == key for key, codec in REGISTRY.items())


def test_a_codec_registered_twice_is_refused() -> None:
    twice = (_codecs.ZstdCodec(), _codecs.ZstdCodec())
    with pytest.raises(ValueError, match="registered twice"):
        _codecs._by_id(twice)


def test_the_on_disk_ids_are_the_des_ones() -> None:
    """The bytes of every shard ever written depend on these: they never change."""
    assert dict(CODEC_IDS) == {"none": 0, "zstd": 1, "lz4": 2}
    assert {i: CODEC_NAMES[i] for i in CODEC_NAMES} == {0: "none", 1: "zstd", 2: "lz4"}


def test_the_literals_agree_with_the_registry() -> None:
    assert set(typing.get_args(Codec)) == set(CODECS_BY_NAME)
    assert model.Codec is Codec
    writable = {c.name for c in REGISTRY.values() if c.writable}
    assert set(typing.get_args(WritableCodec)) == writable == set(WRITABLE)
    assert typing.get_type_hints(ArchiveSettings)["compression"] == WritableCodec


def test_codec_ids_fit_the_packer_flags() -> None:
    assert all(codec_id & ~CODEC_MASK == 0 for codec_id in REGISTRY)
    assert CODEC_MASK & (SPILLED | BIG) == 0


@pytest.mark.parametrize("name", sorted(CODECS_BY_NAME))
@pytest.mark.parametrize("data", [b"", b"x", PAYLOAD, bytes(range(256))])
def test_every_codec_round_trips(name: Codec, data: bytes) -> None:
    codec = CODECS_BY_NAME[name]
    frames = codec.compressor(3)
    stored = data if frames is None else frames.compress(data)
    assert codec.decode(stored, len(data)) == data


@pytest.mark.parametrize("name", sorted(CODECS_BY_NAME))
def test_every_codec_round_trips_through_a_shard(name: Codec) -> None:
    shard = build_shard([("a", PAYLOAD, name), ("b", b"", name)])
    index = read_shard(shard)
    decoded = {
        e.uid: decode_payload(e, shard[e.offset : e.offset + e.length], name="x.des")
        for e in index.entries
    }
    assert decoded == {"a": PAYLOAD, "b": b""}
    assert index.by_uid["a"].codec == name


@pytest.mark.parametrize("name", sorted(c.name for c in REGISTRY.values() if not c.raw))
def test_compressed_codecs_decode_at_most_the_declared_size(name: Codec) -> None:
    codec = CODECS_BY_NAME[name]
    frames = codec.compressor(3)
    assert frames is not None
    stored = frames.compress(PAYLOAD)
    for declared in (len(PAYLOAD) - 1, len(PAYLOAD) + 1):
        with pytest.raises(ValueError, match=r"declares|ends after|holds more"):
            codec.decode(stored, declared)
    with pytest.raises(ValueError, match=r"\w"):  # the library's own words for a bad frame
        codec.decode(b"\x00garbage" * 4, len(PAYLOAD))


@pytest.mark.parametrize("codec_id", [3, 0x7F, 0xFF])
def test_an_unknown_codec_id_is_a_corrupt_shard(codec_id: int) -> None:
    assert codec_id not in REGISTRY
    shard = bytearray(build_shard([("a", PAYLOAD, "zstd")]))
    (index_size,) = struct.unpack_from("<Q", shard, len(shard) - 8)
    start = len(shard) - 12 - index_size
    # count u32, uid u16 + b"a", flags byte, then offset u64, length u64 and the codec byte
    codec_at = start + 4 + 2 + 1 + 1 + 16
    assert shard[codec_at] == CODEC_IDS["zstd"]
    shard[codec_at] = codec_id
    with pytest.raises(CorruptShardError, match=f"unknown codec {codec_id}"):
        parse_index(
            bytes(shard[start : len(shard) - 12]), name="x.des", version=2, index_start=start
        )


def test_a_missing_lz4_package_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    stored = CODECS_BY_NAME["lz4"].compressor(0).compress(PAYLOAD)  # type: ignore[union-attr]
    monkeypatch.setitem(sys.modules, "lz4", None)  # import lz4... raises ModuleNotFoundError
    monkeypatch.setitem(sys.modules, "lz4.frame", None)
    entry = IndexEntry("a", 8, len(stored), "lz4", len(PAYLOAD), b"")
    with pytest.raises(ConfigError) as info:
        decode_payload(entry, stored, name="x.des")
    assert "pip install 'deswm[lz4]'" in str(info.value.hint)
