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

Every name is imported on first use (PEP 562), so the fakes, faults and checks work
without ``hypothesis`` or ``pytest`` installed; strategies and contracts need them.
"""

# Helpers are imported under private names: every public name in vars() is exported.
import importlib as _importlib
import typing as _typing

# What type checkers see (``X as X`` marks a re-export); a test keeps it equal to _EXPORTS.
if _typing.TYPE_CHECKING:
    from deswm.testing._checks import BuildOrchestrator as BuildOrchestrator
    from deswm.testing._checks import Contents as Contents
    from deswm.testing._checks import ReadsBack as ReadsBack
    from deswm.testing._checks import ReplayReport as ReplayReport
    from deswm.testing._checks import ReplayWorld as ReplayWorld
    from deswm.testing._checks import StepOutcome as StepOutcome
    from deswm.testing._checks import assert_idempotent_replay as assert_idempotent_replay
    from deswm.testing._checks import assert_no_loss as assert_no_loss
    from deswm.testing._contracts import FileReaderContract as FileReaderContract
    from deswm.testing._contracts import MakePacker as MakePacker
    from deswm.testing._contracts import MakeReader as MakeReader
    from deswm.testing._contracts import MakeSource as MakeSource
    from deswm.testing._contracts import PackerContract as PackerContract
    from deswm.testing._contracts import ShardRouterContract as ShardRouterContract
    from deswm.testing._contracts import SourceProviderContract as SourceProviderContract
    from deswm.testing._contracts import WatermarkStoreContract as WatermarkStoreContract
    from deswm.testing._dataset import Dataset as Dataset
    from deswm.testing._error_store import MemoryErrorStore as MemoryErrorStore
    from deswm.testing._faults import Action as Action
    from deswm.testing._faults import Checkpoint as Checkpoint
    from deswm.testing._faults import CheckpointAction as CheckpointAction
    from deswm.testing._faults import CheckpointHit as CheckpointHit
    from deswm.testing._faults import Fault as Fault
    from deswm.testing._faults import FaultCall as FaultCall
    from deswm.testing._faults import FaultyComponent as FaultyComponent
    from deswm.testing._faults import InjectedFault as InjectedFault
    from deswm.testing._faults import at_checkpoint as at_checkpoint
    from deswm.testing._faults import corrupt_on as corrupt_on
    from deswm.testing._faults import delay_on as delay_on
    from deswm.testing._faults import drop_on as drop_on
    from deswm.testing._faults import fail_after as fail_after
    from deswm.testing._faults import fail_mid_stream as fail_mid_stream
    from deswm.testing._faults import fail_on as fail_on
    from deswm.testing._faults import inject as inject
    from deswm.testing._faults import missing_on as missing_on
    from deswm.testing._lifecycle import LifecycleMachine as LifecycleMachine
    from deswm.testing._lifecycle import lifecycle_tables as lifecycle_tables
    from deswm.testing._packers import Destination as Destination
    from deswm.testing._packers import archive_for as archive_for
    from deswm.testing._packers import clear_destination as clear_destination
    from deswm.testing._packers import memory_packer as memory_packer
    from deswm.testing._packers import read_objects as read_objects
    from deswm.testing._packers import snapshot as snapshot
    from deswm.testing._readers import MemoryFileReader as MemoryFileReader
    from deswm.testing._readers import ReaderCall as ReaderCall
    from deswm.testing._routers import RecordingRouter as RecordingRouter
    from deswm.testing._routers import RouterCall as RouterCall
    from deswm.testing._schedules import Cycle as Cycle
    from deswm.testing._schedules import Interruption as Interruption
    from deswm.testing._schedules import Rewind as Rewind
    from deswm.testing._schedules import Step as Step
    from deswm.testing._schedules import Target as Target
    from deswm.testing._sources import MemorySourceProvider as MemorySourceProvider
    from deswm.testing._sources import SourceCall as SourceCall
    from deswm.testing._stores import MemoryWatermarkStore as MemoryWatermarkStore
    from deswm.testing._strategies import DEFAULT_CHECKPOINTS as DEFAULT_CHECKPOINTS
    from deswm.testing._strategies import created_ats as created_ats
    from deswm.testing._strategies import datasets as datasets
    from deswm.testing._strategies import file_contents as file_contents
    from deswm.testing._strategies import interruptions as interruptions
    from deswm.testing._strategies import source_records as source_records
    from deswm.testing._strategies import uids as uids

_EXPORTS: dict[str, str] = {
    "BuildOrchestrator": "deswm.testing._checks",
    "Contents": "deswm.testing._checks",
    "ReadsBack": "deswm.testing._checks",
    "ReplayReport": "deswm.testing._checks",
    "ReplayWorld": "deswm.testing._checks",
    "StepOutcome": "deswm.testing._checks",
    "assert_idempotent_replay": "deswm.testing._checks",
    "assert_no_loss": "deswm.testing._checks",
    "FileReaderContract": "deswm.testing._contracts",
    "MakePacker": "deswm.testing._contracts",
    "MakeReader": "deswm.testing._contracts",
    "MakeSource": "deswm.testing._contracts",
    "PackerContract": "deswm.testing._contracts",
    "ShardRouterContract": "deswm.testing._contracts",
    "SourceProviderContract": "deswm.testing._contracts",
    "WatermarkStoreContract": "deswm.testing._contracts",
    "Dataset": "deswm.testing._dataset",
    "MemoryErrorStore": "deswm.testing._error_store",
    "Action": "deswm.testing._faults",
    "Checkpoint": "deswm.testing._faults",
    "CheckpointAction": "deswm.testing._faults",
    "CheckpointHit": "deswm.testing._faults",
    "Fault": "deswm.testing._faults",
    "FaultCall": "deswm.testing._faults",
    "FaultyComponent": "deswm.testing._faults",
    "InjectedFault": "deswm.testing._faults",
    "at_checkpoint": "deswm.testing._faults",
    "corrupt_on": "deswm.testing._faults",
    "delay_on": "deswm.testing._faults",
    "drop_on": "deswm.testing._faults",
    "fail_after": "deswm.testing._faults",
    "fail_mid_stream": "deswm.testing._faults",
    "fail_on": "deswm.testing._faults",
    "inject": "deswm.testing._faults",
    "missing_on": "deswm.testing._faults",
    "LifecycleMachine": "deswm.testing._lifecycle",
    "lifecycle_tables": "deswm.testing._lifecycle",
    "Destination": "deswm.testing._packers",
    "archive_for": "deswm.testing._packers",
    "clear_destination": "deswm.testing._packers",
    "memory_packer": "deswm.testing._packers",
    "read_objects": "deswm.testing._packers",
    "snapshot": "deswm.testing._packers",
    "MemoryFileReader": "deswm.testing._readers",
    "ReaderCall": "deswm.testing._readers",
    "RecordingRouter": "deswm.testing._routers",
    "RouterCall": "deswm.testing._routers",
    "Cycle": "deswm.testing._schedules",
    "Interruption": "deswm.testing._schedules",
    "Rewind": "deswm.testing._schedules",
    "Step": "deswm.testing._schedules",
    "Target": "deswm.testing._schedules",
    "MemorySourceProvider": "deswm.testing._sources",
    "SourceCall": "deswm.testing._sources",
    "MemoryWatermarkStore": "deswm.testing._stores",
    "DEFAULT_CHECKPOINTS": "deswm.testing._strategies",
    "created_ats": "deswm.testing._strategies",
    "datasets": "deswm.testing._strategies",
    "file_contents": "deswm.testing._strategies",
    "interruptions": "deswm.testing._strategies",
    "source_records": "deswm.testing._strategies",
    "uids": "deswm.testing._strategies",
}
"""Every public name of deswm.testing, by the private module that defines it."""

__all__ = sorted(_EXPORTS, key=lambda name: (not name.isupper(), name))


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'deswm.testing' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
