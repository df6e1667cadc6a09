"""Type-check only: proves with mypy --strict that each fake satisfies its Protocol.

Never imported or run (its name does not match test_*.py); test_typing.py runs mypy on
it. Each ``# type: ignore`` marks an assignment that *must* be an error: mypy --strict
reports an unused ignore, so a protocol that accepted anything would fail the check.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from deswm._model import SourceRecord
from deswm._orchestrator import WatermarkOrchestrator
from deswm._protocols import (
    BucketWriter,
    ErrorStore,
    FileReader,
    Packer,
    ShardRouter,
    SourceProvider,
    WatermarkStore,
)
from deswm.testing import (
    BuildOrchestrator,
    CheckpointHit,
    Contents,
    MakePacker,
    MakeSource,
    MemoryErrorStore,
    MemoryFileReader,
    MemorySourceProvider,
    MemoryWatermarkStore,
    RecordingRouter,
    ReplayWorld,
    Step,
    at_checkpoint,
    fail_after,
    fail_on,
    inject,
    memory_packer,
    missing_on,
)

# The in-memory implementations, one per protocol.
store: WatermarkStore = MemoryWatermarkStore()
source: SourceProvider = MemorySourceProvider()
reader: FileReader = MemoryFileReader()
router: ShardRouter = RecordingRouter()
packer: Packer = memory_packer(router)
writer: BucketWriter = packer.open_bucket(datetime(2024, 5, 10, tzinfo=UTC))
errors: ErrorStore = MemoryErrorStore()

# A fault proxy keeps the type of what it wraps.
faulty_store: WatermarkStore = inject(MemoryWatermarkStore(), advance=fail_after(1))
faulty_reader: FileReader = inject(MemoryFileReader(), read_many=missing_on(2))
faulty_packer: Packer = inject(memory_packer(), publish=fail_on(1))

# The wrong fake for a protocol is refused.
not_a_store: WatermarkStore = MemorySourceProvider()  # type: ignore[assignment]
not_a_source: SourceProvider = MemoryWatermarkStore()  # type: ignore[assignment]
not_a_reader: FileReader = MemorySourceProvider()  # type: ignore[assignment]
not_a_router: ShardRouter = MemoryFileReader()  # type: ignore[assignment]
not_a_packer: Packer = RecordingRouter()  # type: ignore[assignment]


# What users write for the contracts and checks type-checks.
def make_source(records: Sequence[SourceRecord], *, page_size: int | None = None) -> SourceProvider:
    return MemorySourceProvider(records)


def make_packer(router: ShardRouter) -> Packer:
    return memory_packer(router)


def build(world: ReplayWorld) -> WatermarkOrchestrator:
    return WatermarkOrchestrator(
        world.store, source, reader, world.packer.router, world.packer, pipeline="typed"
    )


source_factory: MakeSource = make_source
packer_factory: MakePacker = make_packer
builder: BuildOrchestrator = build
expected_bytes: Contents = {"a.bin": b"x"}
expected_reader: Contents = MemoryFileReader()
schedule: list[Step] = []

with at_checkpoint("cycle.started") as hits:
    first: list[CheckpointHit] = hits
