"""Planning the parts of one group: which entries go into which object (pure).

The rule that makes merges safe is that **an entry never moves between published
objects**: each part is replaced on its own, so any subset of replacements that a crash
leaves behind still holds every entry exactly once, and a rerun completes it into exactly
what an uninterrupted run gives. See :mod:`deswm.packer` for the full rule set.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Final, NamedTuple

import attrs

from deswm.container import FOOTER_SIZE, HEADER_SIZE, IndexEntry, ShardIndex
from deswm.errors import PackError
from deswm.model import Codec
from deswm.shardio import PartInfo

__all__ = [
    "COPY_CHUNK",
    "EMPTY_PART",
    "IN_BUFFER",
    "IN_OLD_PART",
    "IN_SPILL",
    "GroupPlan",
    "PartPlan",
    "PlannedEntry",
    "copy_runs",
    "index_record_size",
    "old_entry",
    "part_size",
    "plan_group",
]

EMPTY_PART: Final = HEADER_SIZE + 4 + FOOTER_SIZE
"""Size of a part with no entries: header, entry count, footer."""

COPY_CHUNK: Final = 8 * 2**20
"""Largest ranged read when copying kept entries (adjacent entries are read together)."""

# Where an entry's stored bytes are while publishing.
IN_BUFFER: Final = 0
IN_SPILL: Final = 1
IN_OLD_PART: Final = 2


class PlannedEntry(NamedTuple):
    """One entry of a planned part: a new file or an old entry carried over."""

    key: tuple[str, str]
    uid: str
    codec: Codec
    size: int
    length: int
    meta: bytes
    big_sha256: str | None
    cost: int
    """Bytes the entry adds to a part: stored bytes plus its index record."""
    source: int
    """Where the stored bytes are: ``IN_BUFFER``, ``IN_SPILL`` or ``IN_OLD_PART``."""
    loc: int
    """Offset of the stored bytes in that place."""

    @property
    def copyable(self) -> bool:
        """An old inline entry, copied verbatim from the published part."""
        return self.source == IN_OLD_PART and self.big_sha256 is None


def index_record_size(uid: str, meta: bytes, big_sha256: str | None) -> int:
    """Bytes of a version-2 index record (container layout, checked against writes)."""
    base = 2 + len(uid.encode("utf-8")) + 1 + len(meta)
    if big_sha256 is None:
        return base + 37  # offset, length, codec, compressed, uncompressed, meta_len
    return base + 2 + len(big_sha256.encode("ascii")) + 12  # hash, size, meta_len


def old_entry(entry: IndexEntry) -> PlannedEntry:
    length = 0 if entry.big else entry.length
    cost = length + index_record_size(entry.uid, entry.meta, entry.big_sha256)
    key = (entry.created_at_text or "", entry.uid)
    return PlannedEntry(
        key, entry.uid, entry.codec, entry.size, length, entry.meta, entry.big_sha256, cost,
        IN_OLD_PART, entry.offset,
    )  # fmt: skip


def part_size(items: Sequence[PlannedEntry]) -> int:
    return EMPTY_PART + sum(item.cost for item in items)


@attrs.frozen
class PartPlan:
    number: int
    items: tuple[PlannedEntry, ...]
    size: int
    old: PartInfo | None
    identical: bool
    replaced: int = 0
    """New entries that take the place of a published entry with the same uid."""


@attrs.frozen
class GroupPlan:
    parts: tuple[PartPlan, ...]
    deletions: tuple[PartInfo, ...]
    kept: int


def plan_group(
    old: Sequence[tuple[PartInfo, ShardIndex]], new: Sequence[PlannedEntry], max_size: int
) -> GroupPlan:
    """Decide every part of a group from its published parts and the new entries.

    Pure: the same published parts and new entries always give the same plan, which is
    what makes a replay (also after a partial crash) byte-identical to a clean run.
    """
    old = sorted(old, key=lambda pair: pair[0].part)
    owner: dict[str, int] = {}
    contents: dict[int, dict[str, PlannedEntry]] = {}
    for part, index in old:
        items: dict[str, PlannedEntry] = {}
        for entry in index.entries:
            if entry.uid not in owner:  # a duplicate stays only in the lowest part
                owner[entry.uid] = part.part
                items[entry.uid] = old_entry(entry)
        contents[part.part] = items
    filled = [number for number, items in contents.items() if items]
    firsts = [min(item.key for item in contents[number].values()) for number in filled]
    last_key = max(item.key for item in contents[filled[-1]].values()) if filled else None
    kept = sum(len(items) for items in contents.values())
    tail: list[PlannedEntry] = []
    for item in sorted(new, key=lambda item: item.key):
        number = owner.get(item.uid)
        if number is not None:  # the same entry (uid and created_at) replaced in place
            _require_same_entry(contents[number][item.uid], item, number)
            contents[number][item.uid] = item
            kept -= 1
        elif last_key is None or item.key > last_key:
            tail.append(item)
        else:
            slot = max(bisect.bisect_right(firsts, item.key) - 1, 0)
            contents[filled[slot]][item.uid] = item
    final = {number: list(items.values()) for number, items in contents.items() if items}
    if tail:
        number = filled[-1] if filled else 0
        current = final.get(number, [])
        size = part_size(current)
        for item in tail:
            if current and size + item.cost > max_size:
                final[number] = current
                number, current, size = number + 1, [], EMPTY_PART
            current.append(item)
            size += item.cost
        final[number] = current
    previous = {part.part: (part, index) for part, index in old}
    parts = []
    for number in sorted(final):
        items_sorted = tuple(sorted(final[number], key=lambda item: item.key))
        size = part_size(items_sorted)
        before = previous.get(number)
        identical = before is not None and _identical(items_sorted, size, before[1])
        replaced = sum(1 for i in items_sorted if i.source != IN_OLD_PART and i.uid in owner)
        old_part = before[0] if before else None
        parts.append(PartPlan(number, items_sorted, size, old_part, identical, replaced))
    deletions = tuple(part for part, _ in old if part.part not in final)
    return GroupPlan(tuple(parts), deletions, kept)


def _require_same_entry(old: PlannedEntry, new: PlannedEntry, number: int) -> None:
    """Refuse to replace an entry by one with another ``created_at`` (G14).

    The bucket writer refuses such rows when they are added; this is the last line of
    defence (a part published by someone else between ``add`` and ``publish``).
    """
    before, after = old.key[0], new.key[0]
    if before == after or (before and _instant(before) == _instant(after)):
        return
    raise PackError(
        f"uid {new.uid!r} is published in part {number:04d} of its group with created_at="
        f"{before or 'none recorded'}; refusing to replace it with the row created_at={after}",
        hint="An archived file is identified by (uid, created_at); the row is another file. "
        "Nothing of this group was written",
    )


def _instant(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _identical(items: Sequence[PlannedEntry], size: int, index: ShardIndex) -> bool:
    """Whether writing ``items`` would reproduce the published object exactly."""
    if index.version != 2 or index.size != size or len(index.entries) != len(items):
        return False
    offset = HEADER_SIZE
    for item, entry in zip(items, index.entries, strict=True):
        expected_offset = 0 if item.big_sha256 is not None else offset
        if (
            entry.uid != item.uid
            or entry.big_sha256 != item.big_sha256
            or entry.codec != item.codec
            or entry.size != item.size
            or entry.meta != item.meta
            or entry.offset != expected_offset
            or (entry.length if not entry.big else 0) != item.length
        ):
            return False
        offset += item.length
    return True


def copy_runs(items: Sequence[PlannedEntry]) -> Iterator[list[PlannedEntry]]:
    """Split planned items into runs: adjacent old inline entries (read together, at most
    ``COPY_CHUNK`` bytes per run), and single other items."""
    run: list[PlannedEntry] = []
    for item in items:
        if run:
            head, last = run[0], run[-1]
            joins = (
                item.copyable
                and head.copyable
                and item.loc == last.loc + last.length
                and item.loc + item.length - head.loc <= COPY_CHUNK
            )
            if not joins:
                yield run
                run = []
        run.append(item)
    if run:
        yield run
