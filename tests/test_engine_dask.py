"""The packing engine on a real Dask cluster (``distributed.LocalCluster``, 2 worker
processes): the same objects as the in-process path, and a worker killed mid-bucket
either gets its lane retried by Dask or fails the bucket typed; nothing is lost."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

distributed = pytest.importorskip("distributed")

import dask  # noqa: E402

from deswm._errors import LaneError  # noqa: E402
from deswm._readers import FsspecFileReader  # noqa: E402
from test_engine import DAYS, PER_DAY, FaultyReader, World, at  # noqa: E402

HERE = Path(__file__).resolve().parent


class KillOnceReader(FsspecFileReader):
    """Kills the worker process the first time it reads one uid's file (a marker file
    remembers it across processes); later attempts read normally."""

    def __init__(self, uid: str, marker: str, **options: Any) -> None:
        super().__init__(**options)
        self.uid = uid
        self.marker = marker

    def read(self, location: str) -> bytes:
        if location.endswith(self.uid) and not os.path.exists(self.marker):
            Path(self.marker).touch()
            os._exit(1)  # the worker process dies mid-bucket; its nanny starts a new one
        return super().read(location)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    # Workers are new processes: they import deswm and this module from these paths.
    paths = [str(HERE.parent / "src"), str(HERE), os.environ.get("PYTHONPATH", "")]
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    try:
        # A lane may be retried once after its worker died (Dask's default is 3).
        retries = dask.config.set({"distributed.scheduler.allowed-failures": 1})
        with (
            retries,
            distributed.LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
            ) as local,
        ):
            yield local
    finally:
        if previous is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = previous


@pytest.fixture
def inline(tmp_path: Path) -> World:
    world = World(tmp_path / "inline")
    with world.orchestrator() as orchestrator:
        orchestrator.run_cycle()
    return world


def test_lanes_on_a_dask_cluster_publish_the_in_process_objects(
    cluster: Any, tmp_path: Path, inline: World
) -> None:
    world = World(tmp_path / "dask")
    options = {"executor": "dask", "scheduler": cluster.scheduler_address, "workers": 2}
    with world.orchestrator(**options) as orchestrator:
        assert orchestrator.lanes is not None and orchestrator.lanes.kind == "dask"
        result = orchestrator.run_cycle()
    assert result.files == len(DAYS) * PER_DAY
    assert world.objects() == inline.objects()


def test_an_executor_from_the_host_s_client(cluster: Any, tmp_path: Path, inline: World) -> None:
    world = World(tmp_path / "dask")
    with distributed.Client(cluster, set_as_default=False) as client:
        executor = client.get_executor(pure=False)
        with world.orchestrator(executor=executor, workers=3) as orchestrator:
            orchestrator.run_cycle()
    assert world.objects() == inline.objects()


def test_a_worker_killed_mid_bucket_is_retried_by_dask(
    cluster: Any, tmp_path: Path, inline: World
) -> None:
    world = World(tmp_path / "dask")
    reader = KillOnceReader("u11-006", str(tmp_path / "killed"), root=str(world.files))
    options = {"executor": "dask", "scheduler": cluster.scheduler_address, "workers": 2}
    with world.orchestrator(reader=reader, **options) as orchestrator:
        result = orchestrator.run_cycle()
    assert (tmp_path / "killed").exists()  # a worker did die
    assert result.files == len(DAYS) * PER_DAY
    assert world.objects() == inline.objects()


def test_a_lane_that_kills_every_worker_fails_its_bucket_typed(
    cluster: Any, tmp_path: Path, inline: World
) -> None:
    world = World(tmp_path / "dask")
    reader = FaultyReader("u12-003", "kill", root=str(world.files))
    options = {"executor": "dask", "scheduler": cluster.scheduler_address, "workers": 2}
    with world.orchestrator(reader=reader, **options) as orchestrator:
        with pytest.raises(LaneError, match="KilledWorker") as caught:
            orchestrator.run_cycle()
        # The bucket of u12-003 fails; so may bucket 11 when one of its lanes was
        # queued on a worker that died twice (Dask counts it as suspect too). Either
        # way the watermark stays at or before the failed bucket's start.
        failed = caught.value.bucket
        assert failed in {"2024-05-11", "2024-05-12"}
        assert failed in str(caught.value)
        position = world.position()
        assert position is not None and position <= at(int(failed[-2:]))
        orchestrator.reader = FsspecFileReader(root=str(world.files))
        orchestrator.run_cycle()  # the next run loses nothing
    assert world.objects() == inline.objects()


def test_spilled_rows_travel_inline_to_dask_lanes(
    cluster: Any, tmp_path: Path, inline: World
) -> None:
    """Dask lanes may run where the coordinator's spill folder is not visible: a batch
    past ``lane_batch_rows`` carries its spilled rows in the job (tests/test_lanes.py),
    and the coordinator removes its files once the bucket settles."""
    spill = tmp_path / "spill"
    spill.mkdir()
    world = World(tmp_path / "dask")
    options = {"executor": "dask", "scheduler": cluster.scheduler_address, "workers": 2}
    with world.orchestrator(lane_batch_rows=2, spill_dir=spill, **options) as orchestrator:
        assert orchestrator.lanes is not None and not orchestrator.lanes.local
        result = orchestrator.run_cycle()
    assert result.files == len(DAYS) * PER_DAY
    assert world.objects() == inline.objects()
    assert list(spill.glob("deswm-rows-*")) == []


def test_spilled_rows_travel_inline_to_a_host_s_dask_executor(
    cluster: Any, tmp_path: Path, inline: World
) -> None:
    spill = tmp_path / "spill"
    spill.mkdir()
    world = World(tmp_path / "dask")
    with distributed.Client(cluster, set_as_default=False) as client:
        executor = client.get_executor(pure=False)
        options = {"executor": executor, "workers": 3, "lane_batch_rows": 1, "spill_dir": spill}
        with world.orchestrator(**options) as orchestrator:
            orchestrator.run_cycle()
    assert world.objects() == inline.objects()
    assert list(spill.glob("deswm-rows-*")) == []
