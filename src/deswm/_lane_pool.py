"""Where the packing engine's lanes run: a ``concurrent.futures`` executor, chosen once.

``[run] executor`` picks it: ``"inline"`` (no engine: the serial in-process path),
``"threads"``, ``"processes"`` (a ``ProcessPoolExecutor`` on a ``spawn`` context,
since the parent has threads), ``"dask"`` (``Client(scheduler).get_executor(pure=False)``)
or ``"auto"``: processes when there is more than one lane and the reader and packer
survive a pickle round trip (and the destination is not ``memory://``, which lives in one
process), otherwise threads, or inline for one lane. An embedding host may pass its own
executor object; it is used as it is and never shut down here.

The pool is created at the first bucket and lives across cycles; :meth:`LanePool.close`
shuts it down. A lane that died or hung leaves a broken pool behind: :meth:`LanePool.fail`
kills or waits for every lane still running and drops the pool so the next bucket gets
a new one; no lane of a failed cycle still writes when the next cycle starts (G7).
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib
import logging
import os
import pickle
import signal
from collections.abc import Iterable
from typing import Any

from deswm._defaults import EXECUTORS
from deswm._errors import ConfigError
from deswm._extras import require
from deswm._protocols import FileReader, Packer

__all__ = ["EXECUTORS", "LanePool", "cpu_count", "resolve_pool"]

log = logging.getLogger("deswm.engine")


def cpu_count() -> int:
    """The CPUs this process may use (its affinity mask where the OS has one)."""
    counter = getattr(os, "process_cpu_count", None)  # Python 3.13+
    if counter is not None:
        return int(counter() or 1)
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def _lanes(workers: int | str) -> int:
    if workers == "auto":
        return cpu_count()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f'must be "auto" or an integer >= 1, got {workers!r}', key="run.workers")
    return workers


def _unpicklable(reader: FileReader, packer: Packer) -> str | None:
    """Why the components cannot be sent to another process, or None."""
    store = getattr(packer, "store", None)
    if getattr(store, "kind", None) == "memory":
        return "the destination is memory://, which exists in this process only"
    try:
        pickle.loads(pickle.dumps((reader, packer)))  # noqa: S301 - our own objects
    except Exception as exc:
        return f"the reader or packer cannot be pickled ({type(exc).__name__}: {exc})"
    return None


def _warm_up() -> int:
    """Runs first in each new lane process: imports what a lane job needs while the
    coordinator starts streaming the window, so the first bucket's lanes start at once."""
    for module in ("deswm._lanes", "deswm._packer", "deswm._readers"):
        importlib.import_module(module)
    return os.getpid()


def _lane_process_started() -> None:
    """Lane processes ignore SIGINT/SIGTERM: Ctrl-C reaches the whole process group, and
    the coordinator alone decides to stop (after the buckets in flight are committed)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class LanePool:
    """The executor lanes run on (created lazily), and what to do when lanes fail."""

    def __init__(
        self,
        kind: str,
        lanes: int,
        *,
        executor: cf.Executor | None = None,
        scheduler: str | None = None,
        why: str = "",
    ) -> None:
        self.kind = kind
        self.why = why
        self.lanes = lanes
        self._scheduler = scheduler
        self._given = executor
        self._executor: cf.Executor | None = executor
        self._client: Any = None
        self._stragglers: set[cf.Future[Any]] = set()

    def __repr__(self) -> str:
        return f"LanePool({self.kind}, lanes={self.lanes})"

    @property
    def local(self) -> bool:
        """Lanes run on this machine and see its files (threads, processes); lanes of Dask
        or of a given executor may run elsewhere."""
        return self.kind in ("threads", "processes")

    def submit(self, fn: Any, job: Any) -> cf.Future[Any]:
        if self._stragglers:
            # Lanes of a failed bucket that could not be killed: wait until they are
            # done before anything new is written (one writer per object, G7).
            cf.wait(self._stragglers)
            self._stragglers.clear()
        return self._pool().submit(fn, job)

    def _pool(self) -> cf.Executor:
        if self._executor is None:
            self._executor = self._create()
        return self._executor

    def start(self) -> bool:
        """Create the executor now, not at the first lane job: lane processes start (and
        import deswm) while the coordinator queries the source. True if it was created
        now (once per pool: what is done once per pool goes with it)."""
        if self._executor is not None:
            return False
        executor = self._pool()
        if self.kind == "processes":
            # One job per worker, so every process is spawned now; their futures are
            # not waited for (a worker that fails to start breaks the pool, which the
            # first lane job reports).
            for _ in range(self.lanes):
                executor.submit(_warm_up)
        return True

    def _create(self) -> cf.Executor:
        log.info("packing engine: %d lane(s) on %s%s", self.lanes, self.kind, self.why)
        if self.kind == "threads":
            return cf.ThreadPoolExecutor(self.lanes, thread_name_prefix="deswm-lane")
        if self.kind == "processes":
            import multiprocessing  # only here: it costs the other paths' start-up

            # "spawn", not "fork" (the parent has threads: a forked child may inherit a
            # held lock) nor "forkserver" (its socket lives in TMPDIR, whose path may be
            # too long for AF_UNIX). Workers start once per pool, which lives across cycles.
            return cf.ProcessPoolExecutor(
                self.lanes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_lane_process_started,
            )
        if self.kind == "dask":
            distributed = require("distributed", extra="dask", feature='executor = "dask"')
            self._client = distributed.Client(self._scheduler, set_as_default=False)
            executor: cf.Executor = self._client.get_executor(pure=False)
            return executor
        raise ConfigError(f"unknown executor {self.kind!r}", key="run.executor")

    def fail(self, futures: Iterable[cf.Future[Any]], *, hung: bool, broken: bool = False) -> None:
        """A lane failed: make sure no lane of the failed cycle still runs afterwards.

        ``hung``: a lane ran past its timeout; ``broken``: a lane's process died. A process
        pool is then killed and dropped (every future fails; a new pool is created on
        demand). Lanes on threads or Dask cannot be killed: a hung one is waited for
        before the next lane starts. Otherwise lanes not started are cancelled and the
        running ones waited for.
        """
        futures = list(futures)
        if self.kind == "processes" and (hung or broken):
            executor = self._executor
            if executor is not None:
                # Not cancelled first: the pool's own thread fails every pending future.
                processes = getattr(executor, "_processes", None) or {}
                for process in list(processes.values()):
                    process.kill()
                cf.wait(futures)
                executor.shutdown(wait=True)
                self._executor = None
            return
        running = [f for f in futures if not f.cancel()]
        if hung:
            self._stragglers.update(f for f in running if not f.done())
        else:
            cf.wait(running)

    def close(self) -> None:
        """Shut the pool down (waiting for running lanes); a given executor stays open."""
        if self._stragglers:
            cf.wait(self._stragglers)
            self._stragglers.clear()
        if self._executor is not None and self._executor is not self._given:
            self._executor.shutdown(wait=True)
        self._executor = None
        if self._client is not None:
            self._client.close()
            self._client = None


def resolve_pool(
    executor: str | cf.Executor | None,
    workers: int | str | None,
    *,
    reader: FileReader,
    packer: Packer,
    scheduler: str | None = None,
) -> LanePool | None:
    """The pool the settings ask for, or None for the serial in-process path.

    Neither ``executor`` nor ``workers`` given: in-process (the constructor's default).
    """
    if executor is None and workers is None:
        return None
    lanes = _lanes("auto" if workers is None else workers)
    if isinstance(executor, cf.Executor):
        return LanePool("given", lanes, executor=executor)
    name = "auto" if executor is None else executor
    if name not in EXECUTORS:
        raise ConfigError(
            f"must be one of {', '.join(map(repr, EXECUTORS))} or an executor object, got {name!r}",
            key="run.executor",
        )
    if name == "dask":
        if not scheduler:
            raise ConfigError(
                'executor = "dask" needs the scheduler address',
                key="run.scheduler",
                hint='set [run] scheduler = "tcp://host:8786", or pass '
                "executor=client.get_executor(pure=False)",
            )
        require("distributed", extra="dask", feature='executor = "dask"')
        return LanePool("dask", lanes, scheduler=scheduler)
    if name == "inline":
        return None
    if name == "processes":
        why = _unpicklable(reader, packer)
        if why is not None:
            raise ConfigError(
                f"lanes cannot run in processes: {why}",
                key="run.executor",
                hint='use executor = "threads" (or make the component picklable)',
            )
        return LanePool("processes", lanes)
    if name == "threads":
        return LanePool("threads", lanes)
    # auto
    if lanes == 1:
        log.debug("packing engine: 1 lane, so cycles run in-process (executor auto)")
        return None
    why = _unpicklable(reader, packer)
    kind = "threads" if why is not None else "processes"
    return LanePool(kind, lanes, why=f" (executor auto: {why})" if why else " (executor auto)")
