"""CPU a packing lane pays per object against per file: the lane step at two ``n_bits``.

A lane creates, writes, ``fsync``s and renames one object per shard part, so on a sparse
table (few files per group and day) the per-object cost dominates its CPU per file. This
runs the benchmark's lane step (:func:`benchmarks.scenarios.lane`) on one data set with
``n_bits`` 8 and 4 alternately, then the Python loop, and a micro-benchmark of the file
system steps alone (create, write, ``fsync``, rename; no deswm code)::

    python -m benchmarks.object_cost --files 20000 --repeat 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks import scenarios
from benchmarks.cli import _base_params
from benchmarks.dataset import DatasetSpec, ensure_dataset

_REPO = Path(__file__).resolve().parent


def _cpu_us(run: dict[str, object]) -> float:
    cpu = run["cpu"]
    assert isinstance(cpu, dict)
    files = run["files"]
    assert isinstance(files, int)
    return (cpu["user"] + cpu["system"]) / files * 1e6


def _file_steps(folder: Path, count: int, size: int, *, fsync: bool) -> tuple[float, float]:
    """CPU (user, system) in µs per file of create + write + (fsync) + rename."""
    data = b"x" * size
    before = os.times()
    for i in range(count):
        temp = folder / f".tmp-{i:06d}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        os.write(fd, data)
        if fsync:
            os.fsync(fd)
        os.close(fd)
        os.replace(temp, folder / f"object-{i:06d}")
    after = os.times()
    return (after.user - before.user) / count * 1e6, (after.system - before.system) / count * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, default=_REPO / "work")
    args = parser.parse_args(argv)
    dataset = ensure_dataset(args.work_dir, DatasetSpec(args.files))
    print(f"load average {os.getloadavg()[0]:.2f}; {dataset.count} files")
    params = _base_params(dataset, args.work_dir / "runs" / "object-cost")
    for _ in range(args.repeat):
        for n_bits in (8, 4):
            params["n_bits"] = n_bits
            run = scenarios.lane(params)
            print(
                f"lane n_bits={n_bits}: {run['shards']} objects, {_cpu_us(run):.1f} us CPU per file"
            )
    loop = scenarios.python_loop(params)
    print(f"Python loop: {_cpu_us(loop):.1f} us CPU per file")
    with tempfile.TemporaryDirectory(dir=args.work_dir) as scratch:
        for fsync in (False, True):
            folder = Path(scratch) / ("fsync" if fsync else "plain")
            folder.mkdir()
            user, system = _file_steps(folder, 3_000, 40_000, fsync=fsync)
            what = "create+write+fsync+rename" if fsync else "create+write+rename"
            print(f"{what}: user {user:.1f} us, system {system:.1f} us per file")
            shutil.rmtree(folder)
            time.sleep(1.0)
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
