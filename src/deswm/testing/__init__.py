"""Fakes, fault injectors, strategies, checks and contract suites for code built on deswm.

A public, versioned API: users import it to prove their own providers replay safely.

* in-memory implementations of the protocols: :class:`MemoryWatermarkStore`,
  :class:`MemorySourceProvider`, :class:`MemoryFileReader`, :class:`RecordingRouter`
  (records the calls to any router), :func:`memory_packer` (the real ``DesPacker`` on a
  private ``memory://`` root) and :class:`MemoryErrorStore`; each keeps its state on the
  instance and records calls as named tuples;
* fault injection: :func:`inject` with :func:`fail_on`, :func:`fail_after`,
  :func:`missing_on`, :func:`fail_mid_stream`, ... for any component, and
  :func:`at_checkpoint` for named points inside the write path (:class:`Checkpoint`);
* checks: :func:`assert_no_loss`, :func:`assert_idempotent_replay`, :func:`snapshot`;
* a stateful property test of a whole archive life (needs ``hypothesis``):
  :class:`LifecycleMachine` (runs, replays, retries, purges, changed files, damage);
* hypothesis strategies (need ``hypothesis``): :func:`uids`, :func:`created_ats`,
  :func:`file_contents`, :func:`source_records`, :func:`datasets`,
  :func:`interruptions`;
* contract suites (need ``pytest`` and ``hypothesis``): one mixin class per protocol.

Strategies and contracts are imported on first use, so the fakes, faults and checks
work without ``hypothesis`` or ``pytest`` installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from deswm.testing._checks import (
    BuildOrchestrator,
    Contents,
    ReadsBack,
    ReplayReport,
    ReplayWorld,
    StepOutcome,
    assert_idempotent_replay,
    assert_no_loss,
)
from deswm.testing._dataset import Dataset
from deswm.testing._error_store import MemoryErrorStore
from deswm.testing._faults import (
    Action,
    Checkpoint,
    CheckpointAction,
    CheckpointHit,
    Fault,
    FaultCall,
    FaultyComponent,
    InjectedFault,
    at_checkpoint,
    corrupt_on,
    delay_on,
    drop_on,
    fail_after,
    fail_mid_stream,
    fail_on,
    inject,
    missing_on,
)
from deswm.testing._packers import (
    Destination,
    archive_for,
    clear_destination,
    memory_packer,
    read_objects,
    snapshot,
)
from deswm.testing._readers import MemoryFileReader, ReaderCall
from deswm.testing._routers import RecordingRouter, RouterCall
from deswm.testing._schedules import Cycle, Interruption, Rewind, Step, Target
from deswm.testing._sources import MemorySourceProvider, SourceCall
from deswm.testing._stores import MemoryWatermarkStore

if TYPE_CHECKING:
    from deswm.testing._contracts import (
        FileReaderContract,
        MakePacker,
        MakeReader,
        MakeSource,
        PackerContract,
        ShardRouterContract,
        SourceProviderContract,
        WatermarkStoreContract,
    )
    from deswm.testing._lifecycle import LifecycleMachine, lifecycle_tables
    from deswm.testing._strategies import (
        DEFAULT_CHECKPOINTS,
        created_ats,
        datasets,
        file_contents,
        interruptions,
        source_records,
        uids,
    )

__all__ = [
    "DEFAULT_CHECKPOINTS",
    "Action",
    "BuildOrchestrator",
    "Checkpoint",
    "CheckpointAction",
    "CheckpointHit",
    "Contents",
    "Cycle",
    "Dataset",
    "Destination",
    "Fault",
    "FaultCall",
    "FaultyComponent",
    "FileReaderContract",
    "InjectedFault",
    "Interruption",
    "LifecycleMachine",
    "MakePacker",
    "MakeReader",
    "MakeSource",
    "MemoryErrorStore",
    "MemoryFileReader",
    "MemorySourceProvider",
    "MemoryWatermarkStore",
    "PackerContract",
    "ReaderCall",
    "ReadsBack",
    "RecordingRouter",
    "ReplayReport",
    "ReplayWorld",
    "Rewind",
    "RouterCall",
    "ShardRouterContract",
    "SourceCall",
    "SourceProviderContract",
    "Step",
    "StepOutcome",
    "Target",
    "WatermarkStoreContract",
    "archive_for",
    "assert_idempotent_replay",
    "assert_no_loss",
    "at_checkpoint",
    "clear_destination",
    "corrupt_on",
    "created_ats",
    "datasets",
    "delay_on",
    "drop_on",
    "fail_after",
    "fail_mid_stream",
    "fail_on",
    "file_contents",
    "inject",
    "interruptions",
    "lifecycle_tables",
    "memory_packer",
    "missing_on",
    "read_objects",
    "snapshot",
    "source_records",
    "uids",
]

_LAZY = {
    "deswm.testing._lifecycle": ("LifecycleMachine", "lifecycle_tables"),
    "deswm.testing._strategies": (
        "DEFAULT_CHECKPOINTS",
        "created_ats",
        "datasets",
        "file_contents",
        "interruptions",
        "source_records",
        "uids",
    ),
    "deswm.testing._contracts": (
        "FileReaderContract",
        "MakePacker",
        "MakeReader",
        "MakeSource",
        "PackerContract",
        "ShardRouterContract",
        "SourceProviderContract",
        "WatermarkStoreContract",
    ),
}
_LAZY_MODULE = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name: str) -> Any:
    """Import strategies (hypothesis) and contracts (pytest) only when first used."""
    module = _LAZY_MODULE.get(name)
    if module is None:
        raise AttributeError(f"module 'deswm.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
