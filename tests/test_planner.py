"""The part planner (pure): every rule of :func:`deswm._planner.plan_group`.

Where entries go (kept, replaced in place, inserted by first keys, appended to the tail,
split at the size limit), what is refused (another ``created_at`` for a published uid),
what is deleted and what counts as identical; then properties over random groups: a
plan never drops or duplicates an entry, never moves one between objects, never lets
a part the plan fills on its own exceed the limit, and sizes exactly what the container
writes.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deswm._container import (
    EMPTY_SHARD_SIZE,
    PartInfo,
    ShardIndex,
    ShardWriter,
    build_shard,
    index_record_size,
    read_shard,
)
from deswm._errors import PackError
from deswm._planner import (
    COPY_CHUNK,
    IN_BUFFER,
    IN_OLD_PART,
    IN_SPILL,
    SPILL_CHUNK,
    GroupPlan,
    PlannedEntry,
    copy_runs,
    old_entry,
    part_size,
    plan_group,
)

# --- helpers -------------------------------------------------------------------------------


def old_part(number: int, entries: list[tuple[str, str]]) -> tuple[PartInfo, ShardIndex]:
    """A published part holding ``(uid, created_at text)`` entries, as the planner sees it."""
    meta = {uid: json.dumps({"created_at": ts}).encode() for uid, ts in entries}
    built = build_shard([(uid, b"x" * 10, "none") for uid, _ in entries], meta=lambda u, _: meta[u])
    name = f"20240517_0_{number:04d}.des"
    part = PartInfo(name, "20240517", "0", number, len(built), f"v{number}")
    return part, read_shard(built, name=name)


def new_entry(uid: str, ts: str, length: int = 10) -> PlannedEntry:
    cost = length + index_record_size(uid, b"", None)
    return PlannedEntry((ts, uid), uid, "none", length, length, b"", None, cost, IN_BUFFER, 0)


def placement(plan: Any) -> dict[str, int]:
    return {e.uid: part.number for part in plan.parts for e in part.items}


def uids_of(plan: GroupPlan) -> list[list[str]]:
    return [[e.uid for e in part.items] for part in plan.parts]


# --- placement of new and old entries -----------------------------------------------------


def test_plan_routes_new_uids_by_first_keys_and_keeps_old_ones_in_place() -> None:
    old = [old_part(0, [("a", "t1"), ("b", "t3")]), old_part(1, [("c", "t5"), ("d", "t7")])]
    new = [
        new_entry("before", "t0"),  # before every key: the first part
        new_entry("mid0", "t2"),  # between a and b
        new_entry("gap", "t4"),  # between the parts: the lower one
        new_entry("mid1", "t6"),
        new_entry("tail", "t9"),  # after the last key: the tail
        new_entry("a", "t1"),  # the same entry again: replaced where it is
    ]
    plan = plan_group(old, new, max_size=10**6)
    assert placement(plan) == {
        "before": 0, "a": 0, "mid0": 0, "b": 0, "gap": 0,
        "c": 1, "mid1": 1, "d": 1, "tail": 1,
    }  # fmt: skip
    assert [e.uid for e in plan.parts[0].items] == ["before", "a", "mid0", "b", "gap"]
    assert plan.kept == 3
    assert plan.deletions == ()
    shuffled = new[:]
    random.Random(3).shuffle(shuffled)
    assert plan_group(old[::-1], shuffled, max_size=10**6) == plan


def test_plan_never_replaces_an_entry_of_another_created_at() -> None:
    old = [old_part(0, [("a", "2024-05-17T10:00:00.000000Z")])]
    with pytest.raises(PackError, match=r"uid 'a' is published in part 0000 .*10:00:00"):
        plan_group(old, [new_entry("a", "2024-05-17T11:00:00.000000Z")], max_size=10**6)
    foreign = [(PartInfo("20240517_0_0000.des", "20240517", "0", 0, 1, "v"), read_shard(
        build_shard([("a", b"foreign", "none")]), name="20240517_0_0000.des"
    ))]  # fmt: skip
    with pytest.raises(PackError, match="created_at=none recorded"):
        plan_group(foreign, [new_entry("a", "2024-05-17T10:00:00.000000Z")], max_size=10**6)
    same = plan_group(old, [new_entry("a", "2024-05-17T10:00:00.000000Z")], max_size=10**6)
    assert same.kept == 0  # the same (uid, created_at): the entry itself, replaced in place


def test_plan_tail_fills_the_last_part_then_overflows() -> None:
    old = [old_part(0, [("a", "t1")])]
    size_a = old[0][1].size
    tail = [new_entry(f"n{i}", f"t{i + 2}", length=100) for i in range(5)]
    limit = size_a + 2 * tail[0].cost
    plan = plan_group(old, tail, max_size=limit)
    assert [[e.uid for e in p.items] for p in plan.parts] == [
        ["a", "n0", "n1"],
        ["n2", "n3"],
        ["n4"],
    ]
    assert all(p.size <= limit for p in plan.parts)
    assert [p.old is not None for p in plan.parts] == [True, False, False]


def test_plan_drops_duplicates_from_higher_parts_and_deletes_emptied_parts() -> None:
    old = [
        old_part(0, [("a", "t1")]),
        old_part(1, [("a", "t1")]),
        old_part(2, [("a", "t1"), ("b", "t2")]),
    ]
    plan = plan_group(old, [], max_size=10**6)
    assert [p.number for p in plan.parts] == [0, 2]
    assert [p.name for p in plan.deletions] == ["20240517_0_0001.des"]
    assert plan.parts[0].identical
    assert not plan.parts[1].identical  # "a" left part 2
    assert [e.uid for e in plan.parts[1].items] == ["b"]


def test_a_fresh_group_is_split_greedily_and_numbered_from_zero() -> None:
    entries = [new_entry(f"u{i}", f"t{i:02d}", length=100) for i in range(7)]
    cost = entries[0].cost
    limit = EMPTY_SHARD_SIZE + 3 * cost  # exactly three entries fit
    plan = plan_group([], entries, max_size=limit)
    assert uids_of(plan) == [["u0", "u1", "u2"], ["u3", "u4", "u5"], ["u6"]]
    assert [p.number for p in plan.parts] == [0, 1, 2]
    assert [p.size for p in plan.parts] == [limit, limit, EMPTY_SHARD_SIZE + cost]
    assert all(p.old is None and not p.identical for p in plan.parts)
    assert plan.kept == 0
    assert plan.deletions == ()
    tighter = plan_group([], entries, max_size=limit - 1)  # one byte less: two per part
    assert uids_of(tighter) == [["u0", "u1"], ["u2", "u3"], ["u4", "u5"], ["u6"]]


def test_an_entry_bigger_than_the_limit_gets_a_part_of_its_own() -> None:
    entries = [
        new_entry("a", "t1", length=10),
        new_entry("huge", "t2", length=5000),
        new_entry("b", "t3", length=10),
    ]
    plan = plan_group([], entries, max_size=1000)
    assert uids_of(plan) == [["a"], ["huge"], ["b"]]
    assert plan.parts[1].size > 1000
    alone = plan_group([], entries[1:2], max_size=1)
    assert uids_of(alone) == [["huge"]]


def test_entries_are_in_canonical_order_whatever_the_input_order() -> None:
    entries = [
        new_entry("b", "2024-05-17T10:00:00.000000Z"),
        new_entry("a", "2024-05-17T10:00:00.000000Z"),  # a tie: by uid
        new_entry("z", "2024-05-17T09:00:00.000000Z"),
        new_entry("c", "2024-05-17T11:00:00.000000Z"),
    ]
    plan = plan_group([], entries, max_size=10**6)
    assert uids_of(plan) == [["z", "a", "b", "c"]]
    assert plan_group([], entries[::-1], max_size=10**6) == plan


def test_entries_without_created_at_sort_first_and_new_ones_follow_them() -> None:
    foreign = build_shard([("m", b"1", "none"), ("k", b"2", "none")])
    old = [(PartInfo("20240517_0_0000.des", "20240517", "0", 0, len(foreign), "v"),
            read_shard(foreign, name="20240517_0_0000.des"))]  # fmt: skip
    plan = plan_group(old, [new_entry("a", "t1")], max_size=10**6)
    (part,) = plan.parts
    assert [e.key for e in part.items] == [("", "k"), ("", "m"), ("t1", "a")]
    assert not part.identical
    assert plan.kept == 2


def test_the_same_instant_in_other_text_is_the_same_entry() -> None:
    old = [old_part(0, [("a", "2024-05-17T10:00:00+00:00")])]
    plan = plan_group(old, [new_entry("a", "2024-05-17T10:00:00.000000Z")], max_size=10**6)
    assert plan.kept == 0
    assert [e.source for e in plan.parts[0].items] == [IN_BUFFER]


def test_a_replaced_entry_keeps_its_part_and_its_new_bytes() -> None:
    old = [old_part(0, [("a", "t1")]), old_part(1, [("b", "t5")])]
    replaced = new_entry("b", "t5", length=30)
    plan = plan_group(old, [replaced], max_size=10**6)
    assert placement(plan) == {"a": 0, "b": 1}
    (item,) = plan.parts[1].items
    assert item is replaced
    assert plan.parts[0].identical  # untouched
    assert not plan.parts[1].identical  # other bytes (30, not 10)
    assert plan.kept == 1


def test_mid_range_inserts_give_the_clean_layout_moving_entries_up_only() -> None:
    old = [old_part(0, [("a", "t1"), ("c", "t3")]), old_part(1, [("e", "t5")])]
    limit = max(part.size for part, _ in old)
    inserts = [new_entry(f"b{i}", f"t2.{i}", length=50) for i in range(4)]
    plan = plan_group(old, inserts, max_size=limit)
    clean = plan_group([], [*inserts, new_entry("a", "t1"), new_entry("c", "t3"),
                            new_entry("e", "t5")], max_size=limit)  # fmt: skip
    assert uids_of(plan) == uids_of(clean)
    assert plan.moves
    assert all(p.size <= limit for p in plan.parts)
    moved = {item.uid: item.origin for p in plan.parts for item in p.items if item.origin >= 0}
    assert moved == {"a": 0, "c": 0, "e": 1}
    placed = placement(plan)
    assert placed["c"] > 0 and placed["e"] > 1  # pushed up, never down
    sources = {p.number: [s.part for s in p.sources] for p in plan.parts}
    assert sources[placed["c"]] == [0, 1]  # c and e share the last part


def test_a_layout_no_clean_run_makes_keeps_every_entry_in_place() -> None:
    # A gap before the first part: the clean layout would move entries down.
    old = [old_part(1, [("a", "t1"), ("c", "t3")]), old_part(2, [("e", "t5")])]
    limit = max(part.size for part, _ in old)
    inserts = [new_entry(f"b{i}", f"t2.{i}", length=50) for i in range(4)]
    plan = plan_group(old, inserts, max_size=limit)
    assert uids_of(plan) == [["a", "b0", "b1", "b2", "b3", "c"], ["e"]]
    assert plan.parts[0].size > limit
    assert [p.number for p in plan.parts] == [1, 2]
    assert not plan.moves


def test_an_unchanged_group_is_identical_part_by_part() -> None:
    old = [old_part(0, [("a", "t1"), ("b", "t2")]), old_part(3, [("c", "t3")])]
    plan = plan_group(old, [], max_size=10**6)
    assert [(p.number, p.identical) for p in plan.parts] == [(0, True), (3, True)]
    assert [p.size for p in plan.parts] == [part.size for part, _ in old]
    assert plan.kept == 3
    assert all(e.source == IN_OLD_PART for p in plan.parts for e in p.items)
    meta = json.dumps({"created_at": "t3"}).encode()
    cost = 10 + index_record_size("c", meta)
    same = PlannedEntry(("t3", "c"), "c", "none", 10, 10, meta, None, cost, IN_BUFFER, 0)
    again = plan_group(old, [same], max_size=10**6)  # the same entry with the same bytes
    assert [p.identical for p in again.parts] == [True, True]
    assert again.kept == 2
    other = plan_group(old, [new_entry("c", "t3")], max_size=10**6)  # another meta
    assert [p.identical for p in other.parts] == [True, False]


def test_a_part_past_the_last_number_is_new_and_a_gap_stays() -> None:
    old = [old_part(2, [("a", "t1")])]
    tail = [new_entry("z", "t9", length=10**4)]
    plan = plan_group(old, tail, max_size=old[0][1].size + 10)
    assert [(p.number, p.old is not None) for p in plan.parts] == [(2, True), (3, False)]


# --- copy runs --------------------------------------------------------------------------


def test_copy_runs_join_adjacent_old_inline_entries_only() -> None:
    _, index = old_part(0, [("a", "t1"), ("b", "t2"), ("c", "t3"), ("d", "t4")])
    a, b, c, d = (old_entry(entry) for entry in index.entries)
    fresh = new_entry("n", "t2.5")
    runs = list(copy_runs([a, b, fresh, c, d]))
    assert [[e.uid for e in run] for run in runs] == [["a", "b"], ["n"], ["c", "d"]]
    gap = list(copy_runs([a, c]))  # not adjacent in the old part
    assert [[e.uid for e in run] for run in gap] == [["a"], ["c"]]
    assert list(copy_runs([])) == []


def test_copy_runs_stop_at_the_chunk_size() -> None:
    size = COPY_CHUNK // 2
    items = [
        PlannedEntry(("t", f"u{i}"), f"u{i}", "none", size, size, b"", None, size, IN_OLD_PART,
                     8 + i * size)
        for i in range(5)
    ]  # fmt: skip
    runs = list(copy_runs(items))
    assert [len(run) for run in runs] == [2, 2, 1]
    assert all(run[-1].loc + run[-1].length - run[0].loc <= COPY_CHUNK for run in runs)


def test_copy_runs_join_adjacent_spilled_payloads_up_to_the_spill_chunk() -> None:
    """One read of the spill file for a group's new entries that lie side by side."""

    def spilled(i: int, loc: int, length: int, source: int = IN_SPILL) -> PlannedEntry:
        return PlannedEntry(
            ("t", f"s{i}"), f"s{i}", "zstd", length, length, b"", None, length, source, loc
        )

    half = SPILL_CHUNK // 2
    items = [
        spilled(0, 0, 10),
        spilled(1, 10, 20),
        spilled(2, 30, half),
        spilled(3, 30 + half, half),  # would pass SPILL_CHUNK from s0
        spilled(4, 100 * SPILL_CHUNK, 5),  # not adjacent
        spilled(5, 100 * SPILL_CHUNK + 5, 5, IN_BUFFER),  # in memory: read on its own
    ]
    runs = [[e.uid for e in run] for run in copy_runs(items)]
    assert runs == [["s0", "s1", "s2"], ["s3"], ["s4"], ["s5"]]


# --- properties ---------------------------------------------------------------------------

POOL = [f"u{n:02d}" for n in range(24)]
STAMPS = [f"2024-05-17T0{hour}:00:00.000000Z" for hour in range(6)]


def planned(uid: str, stamp: str, size: int, *, big: bool) -> PlannedEntry:
    """A new entry as the packer plans it: inline bytes in the buffer, or a big file."""
    meta = json.dumps({"created_at": stamp}).encode()
    if big:
        digest = hashlib.sha256(uid.encode()).hexdigest()
        cost = index_record_size(uid, meta, digest)
        return PlannedEntry((stamp, uid), uid, "none", size, 0, meta, digest, cost, IN_BUFFER, 0)
    cost = size + index_record_size(uid, meta)
    return PlannedEntry((stamp, uid), uid, "none", size, size, meta, None, cost, IN_BUFFER, 0)


@st.composite
def groups(draw: st.DrawFn) -> tuple[list[tuple[PartInfo, ShardIndex]], list[PlannedEntry], int]:
    """Published parts (duplicates across parts, big and inline entries) and new entries.

    Every uid has one ``created_at`` (the identity refusals have their own tests), so
    a new entry of a published uid is the same entry.
    """
    stamp = {uid: draw(st.sampled_from(STAMPS)) for uid in POOL}
    numbers = draw(st.lists(st.integers(0, 6), unique=True, max_size=4))
    old = []
    for number in sorted(numbers):
        members = draw(st.lists(st.sampled_from(POOL), unique=True, max_size=6))
        buffer = io.BytesIO()
        writer = ShardWriter(buffer)
        for uid in sorted(members, key=lambda u: (stamp[u], u)):
            meta = json.dumps({"created_at": stamp[uid]}).encode()
            size = draw(st.integers(0, 300))
            if draw(st.integers(0, 3)) == 0:  # a big file: only an index record here
                writer.add_big(uid, hashlib.sha256(uid.encode()).hexdigest(), size=size, meta=meta)
            else:
                writer.add(uid, b"o" * size, codec="none", size=size, meta=meta)
        total = writer.finish()
        name = f"20240517_0_{number:04d}.des"
        old.append((PartInfo(name, "20240517", "0", number, total, f"v{number}"),
                    read_shard(buffer.getvalue(), name=name)))  # fmt: skip
    new = [
        planned(uid, stamp[uid], draw(st.integers(0, 400)), big=draw(st.integers(0, 3)) == 0)
        for uid in draw(st.lists(st.sampled_from(POOL), unique=True, max_size=12))
    ]
    limit = draw(st.integers(EMPTY_SHARD_SIZE, 2000))
    return old, new, limit


def owners(old: Sequence[tuple[PartInfo, ShardIndex]]) -> dict[str, int]:
    """Each published uid's part: the lowest part holding it."""
    found: dict[str, int] = {}
    for part, index in sorted(old, key=lambda pair: pair[0].part):
        for entry in index.entries:
            found.setdefault(entry.uid, part.part)
    return found


def render(plan_part: Any, old: dict[int, bytes]) -> int:
    """Write a planned part with the container's writer; return the written size."""
    writer = ShardWriter(io.BytesIO())
    for item in plan_part.items:
        if item.big_sha256 is not None:
            writer.add_big(item.uid, item.big_sha256, size=item.size, meta=item.meta)
        elif item.source == IN_OLD_PART:
            stored = old[item.origin][item.loc : item.loc + item.length]
            writer.append(item.uid, stored, codec=item.codec, size=item.size, meta=item.meta)
        else:
            writer.append(item.uid, b"n" * item.length, codec="none", size=item.size,
                          meta=item.meta)  # fmt: skip
    return writer.finish()


@settings(max_examples=200, deadline=None)
@given(group=groups(), seed=st.integers(0, 2**16))
def test_a_plan_keeps_every_entry_once_and_moves_one_up_only(group: Any, seed: int) -> None:
    old, new, limit = group
    plan = plan_group(old, new, limit)
    placed = [(item.uid, part.number) for part in plan.parts for item in part.items]
    uids = [uid for uid, _ in placed]
    published = owners(old)
    assert len(uids) == len(set(uids)), "an entry is planned twice"
    assert set(uids) == set(published) | {item.uid for item in new}, "an entry was dropped"
    for uid, number in placed:
        if uid in published:
            # Up only, and then the parts are published from the last down.
            assert number >= published[uid], f"{uid} moved down from part {published[uid]}"
            assert number == published[uid] or plan.moves, f"{uid} moved unannounced"
    replaced = {item.uid for item in new} & set(published)
    assert plan.kept == len(published) - len(replaced)
    by_uid = {item.uid: item for part in plan.parts for item in part.items}
    for item in new:
        assert by_uid[item.uid] is item, "a new entry must carry the new bytes"
    if plan.moves:  # then it is the clean run's layout of the same entries
        fresh = [i._replace(source=IN_BUFFER, origin=-1) for p in plan.parts for i in p.items]
        clean = plan_group([], fresh, limit)
        assert uids_of(plan) == uids_of(clean)
        assert [p.number for p in plan.parts] == [p.number for p in clean.parts]
    # The plan is pure: the order of its inputs does not matter.
    rnd = random.Random(seed)
    assert plan_group(rnd.sample(old, len(old)), rnd.sample(new, len(new)), limit) == plan


@settings(max_examples=200, deadline=None)
@given(group=groups())
def test_parts_the_plan_fills_stay_within_the_limit(group: Any) -> None:
    old, new, limit = group
    plan = plan_group(old, new, limit)
    numbers = {part.part for part, _ in old}
    fresh = not owners(old)
    for part in plan.parts:
        assert list(part.items) == sorted(part.items, key=lambda item: item.key)
        assert part.size == part_size(part.items)
        if part.number not in numbers or fresh:  # a part the tail filled: the greedy rule
            assert part.size <= limit or len(part.items) == 1, part
    if fresh:
        assert [part.number for part in plan.parts] == list(range(len(plan.parts)))


@settings(max_examples=150, deadline=None)
@given(group=groups())
def test_planned_sizes_are_what_the_container_writes(group: Any) -> None:
    old, new, limit = group
    plan = plan_group(old, new, limit)
    old_bytes = {}
    for part, index in old:
        data = bytearray(part.size)
        for entry in index.entries:
            if not entry.big:
                data[entry.offset : entry.offset + entry.length] = b"o" * entry.length
        old_bytes[part.part] = bytes(data)
    for part in plan.parts:
        assert render(part, old_bytes) == part.size
        if part.identical:
            assert part.old is not None and part.size == part.old.size


@settings(max_examples=150, deadline=None)
@given(group=groups())
def test_only_parts_left_empty_are_deleted(group: Any) -> None:
    old, new, limit = group
    plan = plan_group(old, new, limit)
    kept_numbers = {part.number for part in plan.parts}
    assert {part.part for part in plan.deletions} == {part.part for part, _ in old} - kept_numbers
    published = owners(old)
    for part in plan.deletions:
        index = dict(old)[part]
        assert all(published[entry.uid] < part.part for entry in index.entries)
    for planned in plan.parts:
        if planned.old is not None:
            assert planned.old.part == planned.number
