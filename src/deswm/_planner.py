"""The part planner: which entry of a group goes into which object (pure).

:func:`plan_group` decides every part of one group (``{day}_{hex}``) from the parts
already published and the new entries; the packer only carries the plan out. Its rules:

Canonical order: inside a part, entries are sorted by ``(created_at as fixed-width UTC
text, uid)`` in Python, so the bytes never depend on query order or collation (G2).

Fresh group: greedy split, an entry joins the current part while the part's exact total
size stays within ``max_size`` (an entry too big for any part gets one of its own);
parts are numbered 0000, 0001, ...

Merge with published parts (G3). The plan is the **clean run's layout** (the fresh split
of every entry, old and new, in canonical order) whenever no entry has to move to a
lower-numbered part for it. Inserting entries only ever pushes a greedy split's
boundaries towards higher numbers, so this holds for every group deswm wrote itself; the
packer then publishes the group's parts from the highest number down, so an entry's new
object is always published before its old object is rewritten without it: a crash in
between leaves the entry in both (same bytes; the lower part owns it), never in neither.
That is what makes a merge of late rows or retried files byte-identical to a clean run
over the same rows (G2). Otherwise (a layout a clean run cannot produce: parts of other
writers, a gap in the numbers) **no entry moves between objects**, so each object
replacement is safe on its own in any crash order:

* every old uid belongs to the lowest-numbered part holding it (a duplicate in a higher
  part is dropped there);
* a new entry whose uid is in old part *i* replaces it in part *i* (new bytes) only when
  it is the same entry, ``(uid, created_at)`` (G14): the bucket writer refuses a row
  whose uid is published with another ``created_at`` (or with none, as entries of other
  writers are) with :class:`~deswm.ArchivedDuplicateError`, and the plan raises
  :class:`~deswm.PackError` rather than replace such an entry;
* a new uid goes to the part with the greatest first key at or before its key (the first
  part if before all); keys after the last key of the last part are the tail, appended
  to the last part while it fits and overflowing into new parts, exactly like a fresh
  split, so a rerun after a crash that published only some parts reproduces the clean
  run byte for byte;
* old entries without ``created_at`` meta (other writers) sort with key ``("", uid)``;
* mid-range inserts can make a part exceed ``max_size`` (there, moving entries between
  objects could not be ordered safely, so it is not done);
* a part whose content would be byte-identical is marked ``identical``: the packer does
  not rewrite it (a replay of an unchanged day costs no writes), unless it holds entries
  re-read from their sources whose rendered bytes differ from the published ones (G16);
  a part left empty by dropped duplicates is listed in ``deletions``, deleted after the
  others are published;
* kept old entries point at their stored bytes in a published part (``IN_OLD_PART``,
  ``origin`` is its number: another part's when the entry moved), which the packer copies
  verbatim (adjacent ones in runs, :func:`copy_runs`), so a
  replay after the sources were deleted reproduces the original objects.

Sizes come from the format (:func:`deswm._container.record_size`), so a planned part's
``size`` is exactly the size of the object the packer writes (the packer checks it).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Final, NamedTuple

import attrs

from deswm._container import (
    EMPTY_SHARD_SIZE,
    HEADER_SIZE,
    IndexEntry,
    PartInfo,
    ShardIndex,
    index_record_size,
)
from deswm._errors import PackError
from deswm._model import Codec

__all__ = [
    "COPY_CHUNK",
    "IN_BUFFER",
    "IN_OLD_PART",
    "IN_SPILL",
    "SPILL_CHUNK",
    "GroupPlan",
    "PartPlan",
    "PlannedEntry",
    "copy_runs",
    "old_entry",
    "part_size",
    "plan_group",
]

COPY_CHUNK: Final = 8 * 2**20
"""Largest ranged read when copying kept entries (adjacent entries are read together)."""
SPILL_CHUNK: Final = 2**20
"""Largest read of spilled payloads (adjacent ones in the spill file are read together)."""

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
    origin: int = -1
    """For ``IN_OLD_PART``: the number of the published part holding the stored bytes."""

    @property
    def copyable(self) -> bool:
        """An old inline entry, copied verbatim from the published part."""
        return self.source == IN_OLD_PART and self.big_sha256 is None


def old_entry(entry: IndexEntry, origin: int = -1) -> PlannedEntry:
    """A published entry of part ``origin`` as the plan carries it over (its key, cost
    and stored bytes)."""
    length = 0 if entry.big else entry.length
    cost = length + index_record_size(entry.uid, entry.meta, entry.big_sha256)
    key = (entry.created_at_text or "", entry.uid)
    return PlannedEntry(
        key, entry.uid, entry.codec, entry.size, length, entry.meta, entry.big_sha256, cost,
        IN_OLD_PART, entry.offset, origin,
    )  # fmt: skip


def part_size(items: Sequence[PlannedEntry]) -> int:
    """The exact size of a part holding ``items``."""
    return EMPTY_SHARD_SIZE + sum(item.cost for item in items)


@attrs.frozen
class PartPlan:
    """One part of a planned group: its entries in canonical order and exact size.

    ``old`` is the published object of the same number the plan was made from (the
    packer refuses to replace it if it changed since), ``identical`` whether writing
    ``items`` would reproduce it byte for byte.
    """

    number: int
    items: tuple[PlannedEntry, ...]
    size: int
    old: PartInfo | None
    identical: bool
    replaced: int = 0
    """New entries that take the place of a published entry with the same uid."""
    sources: tuple[PartInfo, ...] = ()
    """The published parts whose stored bytes ``items`` copy (``PlannedEntry.origin``)."""


@attrs.frozen
class GroupPlan:
    """Every part of a group, the emptied parts to delete, and how many old entries stay."""

    parts: tuple[PartPlan, ...]
    deletions: tuple[PartInfo, ...]
    kept: int
    moves: bool = False
    """Whether old entries change objects (the clean layout): publish ``parts`` from the
    last to the first, so no crash can leave an entry in neither object."""


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
                items[entry.uid] = old_entry(entry, part.part)
        contents[part.part] = items
    kept = sum(len(items) for items in contents.values())
    ordered = sorted(new, key=lambda item: item.key)
    for item in ordered:
        number = owner.get(item.uid)
        if number is not None:  # the same entry (uid and created_at) replaced in place
            _require_same_entry(contents[number][item.uid], item, number)
            kept -= 1
    final = _clean_layout(contents, ordered, max_size)
    moves = final is not None and any(
        owner.get(item.uid, number) != number for number, items in final.items() for item in items
    )
    if final is None:
        final = _in_place(contents, ordered, max_size)
    previous = {part.part: (part, index) for part, index in old}
    parts = []
    for number in sorted(final):
        items_sorted = tuple(sorted(final[number], key=lambda item: item.key))
        size = part_size(items_sorted)
        before = previous.get(number)
        identical = before is not None and _identical(items_sorted, size, before[1])
        replaced = sum(1 for i in items_sorted if i.source != IN_OLD_PART and i.uid in owner)
        old_part = before[0] if before else None
        origins = {i.origin for i in items_sorted if i.source == IN_OLD_PART}
        sources = tuple(previous[n][0] for n in sorted(origins))
        parts.append(PartPlan(number, items_sorted, size, old_part, identical, replaced, sources))
    deletions = tuple(part for part, _ in old if part.part not in final)
    return GroupPlan(tuple(parts), deletions, kept, moves)


def _clean_layout(
    contents: dict[int, dict[str, PlannedEntry]],
    new: Sequence[PlannedEntry],
    max_size: int,
) -> dict[int, list[PlannedEntry]] | None:
    """The fresh split of every entry (old ones replaced by ``new`` of the same uid), or
    ``None`` when it would move an old entry to a lower-numbered part.

    A group deswm wrote itself is a clean split of its entries, and adding entries to a
    greedy split only pushes the boundaries up, so this is ``None`` only for layouts a
    clean run cannot produce (gaps in the numbers, parts of other writers).
    """
    owner = {uid: number for number, items in contents.items() for uid in items}
    merged = {uid: item for items in contents.values() for uid, item in items.items()}
    for item in new:
        merged[item.uid] = item
    final: dict[int, list[PlannedEntry]] = {}
    current: list[PlannedEntry] = []
    number, size = 0, EMPTY_SHARD_SIZE
    for item in sorted(merged.values(), key=lambda item: item.key):
        if current and size + item.cost > max_size:
            final[number] = current
            number, current, size = number + 1, [], EMPTY_SHARD_SIZE
        if owner.get(item.uid, number) > number:
            return None
        current.append(item)
        size += item.cost
    if current:
        final[number] = current
    return final


def _in_place(
    contents: dict[int, dict[str, PlannedEntry]],
    new: Sequence[PlannedEntry],
    max_size: int,
) -> dict[int, list[PlannedEntry]]:
    """The layout that moves no old entry: new uids go to the part whose range holds
    them, the tail is split like a fresh group after the last part."""
    contents = {number: dict(items) for number, items in contents.items()}
    owner = {uid: number for number, items in contents.items() for uid in items}
    filled = [number for number, items in contents.items() if items]
    firsts = [min(item.key for item in contents[number].values()) for number in filled]
    last_key = max(item.key for item in contents[filled[-1]].values()) if filled else None
    tail: list[PlannedEntry] = []
    for item in new:
        number = owner.get(item.uid)
        if number is not None:
            contents[number][item.uid] = item
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
                number, current, size = number + 1, [], EMPTY_SHARD_SIZE
            current.append(item)
            size += item.cost
        final[number] = current
    return final


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
    """Split planned items into runs read with one request each: adjacent old inline
    entries of one published part (at most ``COPY_CHUNK`` bytes per run), adjacent
    spilled payloads (at most ``SPILL_CHUNK`` bytes: a bucket's new entries come in the
    order they were spilled, so most of a group's are next to each other), and single
    other items."""
    run: list[PlannedEntry] = []
    for item in items:
        if run and not _joins(run[0], run[-1], item):
            yield run
            run = []
        run.append(item)
    if run:
        yield run


def _joins(head: PlannedEntry, last: PlannedEntry, item: PlannedEntry) -> bool:
    if item.loc != last.loc + last.length:
        return False
    if item.copyable:
        return (
            head.copyable
            and item.origin == head.origin
            and item.loc + item.length - head.loc <= COPY_CHUNK
        )
    return (
        item.source == IN_SPILL
        and item.big_sha256 is None
        and head.source == IN_SPILL
        and head.big_sha256 is None
        and item.loc + item.length - head.loc <= SPILL_CHUNK
    )
