"""A group's parts become visible in number order, whatever the packer parallelises.

The crash matrix kills at fixed checkpoint counts, so an ordering bug that depends on
thread timing shows up there only sometimes. Here the first part of every multi-part
group is slowed down, so parts of one group published concurrently would deterministically
appear out of order; after every rename the destination is checked for a gap.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from crash_harness import (  # noqa: F401 (worlds_fixture is the fixture)
    SCENARIOS,
    Worlds,
    check_parts_contiguous,
    worlds_fixture,
)

from deswm import _checkpoints
from deswm._container import parse_part_name
from deswm._objectstore.local import LocalStore

SLOW_FIRST_PART = 0.1


def test_parts_of_a_group_are_renamed_in_number_order(
    worlds: Worlds, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenario = SCENARIOS["fresh"]
    reference = worlds.reference(scenario, "sqlite", "local")
    multi_part = {
        name[: -len("0001.des")] for name in reference.objects if name.endswith("_0001.des")
    }
    assert multi_part, "the fresh scenario must have groups of several parts"
    world = worlds.prepared(scenario, "sqlite", "local")
    root = Path(world.destination.url)
    original: Callable[..., None] = LocalStore.publish

    def slow_first_part(self: LocalStore, name: str, write: Any, *, sync: bool) -> None:
        if name.endswith("_0000.des") and name[: -len("0000.des")] in multi_part:
            time.sleep(SLOW_FIRST_PART)
        original(self, name, write, sync=sync)

    gaps: list[str] = []
    lock = threading.Lock()

    def after_rename(_point: str, _count: int) -> None:
        names = [p.name for p in root.iterdir() if parse_part_name(p.name)]
        try:
            check_parts_contiguous(names)
        except AssertionError as exc:
            with lock:
                gaps.append(str(exc).splitlines()[0])

    monkeypatch.setattr(LocalStore, "publish", slow_first_part)
    _checkpoints.install("shardio.publish.after_rename", after_rename)
    try:
        world.run(scenario.crash)
    finally:
        _checkpoints.uninstall()
    assert gaps == []
    assert world.objects() == reference.objects
