"""The codec registry: every codec deswm knows, keyed by its on-disk id.

A DES2 inline entry names its codec with one byte. Everything else in deswm (the
index parser, the payload decoder, the packer's compressor and spill flags, the
``[archive] compression`` setting) derives from :data:`REGISTRY` and the tables
below, so adding a codec is one class here and one entry in :data:`_REGISTERED`
(plus its name in the :data:`Codec` Literal, which mypy needs spelled out; a test
checks that the two agree).

Decoding is bounded: ``decode(stored, size)`` holds at most ``size + 1`` bytes of
output whatever the frame expands to, and raises :class:`ValueError` when the frame
is bad or does not decode to exactly ``size`` bytes; the container turns that into a
:class:`~deswm.CorruptShardError` naming the shard and entry.
"""

from __future__ import annotations

import io
import typing
from collections.abc import Callable, Mapping
from typing import ClassVar, Final, Literal, Protocol

import zstandard

from deswm._errors import ConfigError
from deswm._extras import require

__all__ = [
    "CODECS_BY_NAME",
    "CODEC_IDS",
    "CODEC_MASK",
    "CODEC_NAMES",
    "RAW_CODECS",
    "REGISTRY",
    "WRITABLE",
    "Codec",
    "EntryCodec",
    "FrameCompressor",
    "WritableCodec",
]

Codec = Literal["none", "zstd", "lz4"]
"""The name of a registered codec (as :class:`deswm.IndexEntry` and the packer carry it)."""

WritableCodec = Literal["zstd", "none"]
"""The codecs the packer writes (``[archive] compression``); the order is the one the
config error lists."""

_DECODE_CHUNK: Final = 2**20
"""Bytes decoded per step by the bounded stream decoders."""


class FrameCompressor(Protocol):
    """Compresses one payload into one frame (zstandard's ``ZstdCompressor`` is one)."""

    def compress(self, data: bytes, /) -> bytes: ...


class EntryCodec(Protocol):
    """One codec: its on-disk id, its name, a bounded decoder and (maybe) a compressor."""

    id: ClassVar[int]
    name: ClassVar[Codec]
    raw: ClassVar[bool]
    """Stored bytes are the payload: the size must equal the stored length, no bound applies."""
    writable: ClassVar[bool]
    """The packer may write it (``[archive] compression``); others are read-only."""

    def decode(self, stored: bytes, size: int) -> bytes:
        """Exactly ``size`` bytes decoded from ``stored``, or :class:`ValueError`."""
        ...

    def compressor(self, level: int) -> FrameCompressor | None:
        """A compressor at ``level`` (None: payloads are stored as they are)."""
        ...


class NoneCodec:
    """Payloads stored as they are (id 0)."""

    id: ClassVar[int] = 0
    name: ClassVar[Codec] = "none"
    raw: ClassVar[bool] = True
    writable: ClassVar[bool] = True

    def decode(self, stored: bytes, size: int) -> bytes:
        return stored  # the index parser and the caller check the size against the bytes

    def compressor(self, level: int) -> FrameCompressor | None:
        return None


class ZstdCodec:
    """Zstandard frames (id 1), what deswm writes."""

    id: ClassVar[int] = 1
    name: ClassVar[Codec] = "zstd"
    raw: ClassVar[bool] = False
    writable: ClassVar[bool] = True

    def decode(self, stored: bytes, size: int) -> bytes:
        """At most ``size + 1`` bytes of the zstd frames in ``stored``.

        python-zstandard's one-shot ``decompress`` allocates what the frame header
        declares (ignoring ``max_output_size``), so it is used only when that equals
        ``size`` (then libzstd itself refuses to write more); otherwise a stream is read
        in bounded steps.
        """
        try:
            declared = zstandard.frame_content_size(stored)
            if declared == size:
                return bytes(zstandard.ZstdDecompressor().decompress(stored))
            if declared > size:
                raise ValueError(f"the frame declares {declared} bytes, the index {size}")
            reader = zstandard.ZstdDecompressor().stream_reader(stored, read_across_frames=True)
            with reader:
                return _bounded(reader.read, size)
        except zstandard.ZstdError as exc:
            raise ValueError(str(exc)) from exc

    def compressor(self, level: int) -> FrameCompressor | None:
        if not -7 <= level <= 22:
            raise ConfigError(
                f"zstd level must be from -7 to 22, got {level}", key="archive.compression_level"
            )
        return zstandard.ZstdCompressor(level=level)


class Lz4Codec:
    """LZ4 frames (id 2): read from older DES writers, written only by test tools.

    The lz4 package is optional and imported when an lz4 entry is first met.
    """

    id: ClassVar[int] = 2
    name: ClassVar[Codec] = "lz4"
    raw: ClassVar[bool] = False
    writable: ClassVar[bool] = False

    def decode(self, stored: bytes, size: int) -> bytes:
        """At most ``size + 1`` bytes of the one lz4 frame in ``stored``.

        ``lz4.frame.decompress`` has no output limit, so a streaming decompressor is
        driven with ``max_length``; bytes after the frame are corruption.
        """
        frame = _lz4_frame()
        try:
            info = frame.get_frame_info(stored)
        except RuntimeError as exc:  # lz4 reports bad frames as RuntimeError
            raise ValueError(str(exc)) from exc
        declared = info.get("content_size") or 0  # 0: not recorded
        if declared and declared != size:
            raise ValueError(f"the frame declares {declared} bytes, the index {size}")
        decoder = frame.LZ4FrameDecompressor()
        pending = [stored]

        def read(limit: int) -> bytes:
            stalled = 0
            while not decoder.eof:
                data = pending.pop() if pending else b""
                try:
                    chunk: bytes = decoder.decompress(data, max_length=limit)
                except RuntimeError as exc:  # lz4 reports bad frames as RuntimeError
                    raise ValueError(str(exc)) from exc
                if chunk:
                    return chunk
                stalled += 1
                if not decoder.eof and (decoder.needs_input or stalled > 8):
                    raise ValueError("the frame is truncated")
            if decoder.unused_data:
                raise ValueError(f"{len(decoder.unused_data)} bytes follow the frame")
            return b""

        return _bounded(read, size)  # it ends early only at the frame's end, checked in read

    def compressor(self, level: int) -> FrameCompressor | None:
        """lz4.frame at its default level (``level`` is ignored: only test tools write lz4)."""
        return _Lz4Compressor()


class _Lz4Compressor:
    def compress(self, data: bytes, /) -> bytes:
        return bytes(_lz4_frame().compress(data))


def _lz4_frame() -> _Lz4FrameModule:
    frame: _Lz4FrameModule = require("lz4.frame", extra="lz4", feature="lz4 compression")
    return frame


class _Lz4FrameModule(Protocol):
    """The part of ``lz4.frame`` deswm uses (the package has no type hints)."""

    def get_frame_info(self, frame: bytes, /) -> dict[str, int]: ...
    def compress(self, data: bytes, /) -> bytes: ...
    def LZ4FrameDecompressor(self) -> _Lz4Decompressor: ...


class _Lz4Decompressor(Protocol):
    eof: bool
    needs_input: bool
    unused_data: bytes

    def decompress(self, data: bytes, max_length: int = ...) -> bytes: ...


def _bounded(read: Callable[[int], bytes], size: int) -> bytes:
    """Exactly ``size`` bytes from ``read(n)`` calls, which return ``b""`` at the end.

    Reads at most one byte more than ``size`` (to see an overrun), so the memory held
    is bounded by the declared size whatever the frame expands to.
    """
    out = io.BytesIO()
    want = size + 1
    while out.tell() < want:
        chunk = read(min(_DECODE_CHUNK, want - out.tell()))
        if not chunk:
            break
        out.write(chunk)
    if out.tell() > size:
        raise ValueError(f"it holds more than the {size} bytes the index declares")
    if out.tell() < size:
        raise ValueError(f"it ends after {out.tell()} of the {size} bytes the index declares")
    return out.getvalue()


_REGISTERED: Final[tuple[EntryCodec, ...]] = (NoneCodec(), ZstdCodec(), Lz4Codec())
"""Every codec deswm knows; register a new one by adding it here."""


def _by_id(codecs: tuple[EntryCodec, ...]) -> dict[int, EntryCodec]:
    table: dict[int, EntryCodec] = {}
    for codec in codecs:
        if not 0 <= codec.id <= 0xFF:
            raise ValueError(f"codec {codec.name!r} id {codec.id} does not fit the index byte")
        if codec.id in table or any(c.name == codec.name for c in table.values()):
            raise ValueError(f"codec {codec.name!r} id {codec.id} is registered twice")
        table[codec.id] = codec
    return table


REGISTRY: Final[Mapping[int, EntryCodec]] = _by_id(_REGISTERED)
"""Codecs by on-disk id; the flat tables below (what the hot loops use) derive from it."""

CODECS_BY_NAME: Final[Mapping[str, EntryCodec]] = {c.name: c for c in _REGISTERED}
CODEC_IDS: Final[Mapping[str, int]] = {c.name: c.id for c in _REGISTERED}
CODEC_NAMES: Final[Mapping[int, Codec]] = {c.id: c.name for c in _REGISTERED}
RAW_CODECS: Final[frozenset[str]] = frozenset(c.name for c in _REGISTERED if c.raw)
"""Names of the codecs that store payloads as they are (a set for the index parser's loop)."""
WRITABLE: Final[tuple[Codec, ...]] = tuple(
    name for name in typing.get_args(WritableCodec) if CODECS_BY_NAME[name].writable
)
"""The codecs the packer writes, in the order of :data:`WritableCodec` (a test checks the
Literal names exactly the registry's writable codecs)."""

CODEC_MASK: Final = (1 << max(REGISTRY).bit_length()) - 1
"""The low bits of a packer flag byte that hold a codec id (0x03 for ids 0..2)."""
