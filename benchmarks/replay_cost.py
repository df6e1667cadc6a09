"""What a replay of unchanged days costs, and how much of it is the repair check (G16).

One full cycle over the benchmark's data set into a fresh local archive, then the
watermark set back to the start and the same cycle replayed ``--replays`` times. For each
run: wall time, bytes written, bytes read back from the archive (every ranged read of a
shard: indexes, and the comparison of parts holding re-read entries with their published
bytes), and the wall and CPU time spent in that comparison::

    python -m benchmarks.replay_cost --files 100000 --days 20 --replays 2
"""

from __future__ import annotations

import argparse
import shutil
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from benchmarks.dataset import DatasetSpec, ensure_dataset, warm_page_cache
from deswm import DesPacker, DesRouter, FsspecFileReader, SqlSourceProvider, WatermarkOrchestrator
from deswm._packer import DesBucketWriter
from deswm._shardio import ShardStore
from deswm.testing import MemoryWatermarkStore


class _Meter:
    """Counts archive bytes read and the time spent comparing parts (monkeypatched)."""

    def __init__(self) -> None:
        self.read = 0
        self.wall = 0.0
        self.cpu = 0.0
        read_range = ShardStore.read_range
        unchanged = DesBucketWriter._unchanged

        def counting(store: ShardStore, part: Any, start: int, end: int) -> bytes:
            self.read += end - start
            return read_range(store, part, start, end)

        def timed(writer: DesBucketWriter, group: Any, part: Any) -> bool:
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return unchanged(writer, group, part)
            finally:
                self.wall += time.perf_counter() - wall
                self.cpu += time.process_time() - cpu

        ShardStore.read_range = counting  # type: ignore[method-assign]
        DesBucketWriter._unchanged = timed  # type: ignore[method-assign]

    def reset(self) -> None:
        self.read, self.wall, self.cpu = 0, 0.0, 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=20)
    parser.add_argument("--replays", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, default=Path("benchmarks/work"))
    args = parser.parse_args()
    data = ensure_dataset(args.work_dir, DatasetSpec(files=args.files, days=args.days))
    archive = args.work_dir / "replay-cost-archive"
    shutil.rmtree(archive, ignore_errors=True)
    start, end = data.spec.window
    router = DesRouter(8)
    store = MemoryWatermarkStore()
    meter = _Meter()
    for run in range(1 + args.replays):
        if run:
            (watermark,) = store.list()
            store.set(watermark.key, start, reason="replay")
        orchestrator = WatermarkOrchestrator(
            store,
            SqlSourceProvider(data.sqlite_url, data.table),
            FsspecFileReader(root=str(data.files_root)),
            router,
            DesPacker(archive, router),
            pipeline="replay-cost",
            lag=timedelta(0),
            initial=start,
            clock=lambda: end,
        )
        warm_page_cache(data)
        meter.reset()
        began = time.perf_counter()
        result = orchestrator.run_cycle()
        print(
            f"{'replay' if run else 'first '}: {time.perf_counter() - began:6.2f} s, "
            f"{result.files:,} files, {result.bytes_out:,} bytes written, "
            f"{meter.read:,} bytes read from the archive, comparing parts "
            f"{meter.wall:.2f} s wall / {meter.cpu:.2f} s CPU"
        )
    shutil.rmtree(archive, ignore_errors=True)


if __name__ == "__main__":
    main()
