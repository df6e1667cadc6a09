"""Run every partition of a pipeline at once, on any ``concurrent.futures.Executor``.

Partition ``p`` of ``K`` owns shard indexes ``i % K == p`` and its own watermark, so the
runs need no coordination (G7). Each task builds its orchestrator from the config file
inside the worker (orchestrators hold connections and are not picklable), so a
``ProcessPoolExecutor`` or a Dask cluster (``client.get_executor(pure=False)``) works as
well as threads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path

from deswm import _publish
from deswm._config import load_config
from deswm._model import CycleResult

__all__ = ["run_partition", "run_partitions"]


def run_partition(config_path: str, partition: int) -> CycleResult:
    """One cycle of one partition (module-level, so executors can pickle it)."""
    with load_config(config_path).build_orchestrator(partition=partition) as orchestrator:
        return orchestrator.run_cycle()


def run_partitions(
    config_path: str | os.PathLike[str],
    executor: Executor | None = None,
    *,
    partitions: Sequence[int] | None = None,
) -> list[CycleResult]:
    """A cycle of each partition (default: all of ``run.partitions``), results in order.

    Without an executor, one process per partition is started. The first failure is
    raised after every partition has finished (the others commit independently).
    """
    path = str(Path(config_path).resolve())
    count = load_config(path).run.partitions
    indexes = list(range(count)) if partitions is None else list(partitions)
    own = executor is None
    pool = executor or ProcessPoolExecutor(max_workers=len(indexes) or 1)
    try:
        futures = [pool.submit(run_partition, path, index) for index in indexes]
        errors = [f.exception() for f in futures]
    finally:
        if own:
            pool.shutdown()
    for error in errors:
        if error is not None:
            raise error
    return [f.result() for f in futures]


_publish(globals())
