"""Peak RSS of the packing engine's coordinator over 1,000,000 rows (issue 10 P5/P9, G9).

Usage::

    python -m benchmarks.engine_memory [--rows 1000000] [--days 2] [--lanes 2]
        [--in-flight 2] [--bounds 0,50000,10000] [--spill-dir DIR]

One real cycle of :class:`~deswm.WatermarkOrchestrator` on the engine (lanes in
processes, ``--lanes`` W, ``buckets_in_flight`` B) per ``lane_batch_rows`` bound, each in a
fresh Python process (a peak RSS is a high-water mark). The rows are generated on the fly
(36-character uids, 75-character locations, the shape of benchmarks.source_stream), the
reader returns ``b""`` without touching a disk and the packer's writer only counts: the
coordinator's path (stream, route, batch, spill, dispatch, settle, commit) is the real
one, and nothing else in it grows with the rows. Prints one table row per bound: the
coordinator's peak RSS (``VmHWM``) and its RSS before the cycle, the largest lane's peak
(``ru_maxrss`` of the lane processes, read after the pool shut down), and the seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from types import TracebackType

from benchmarks.probes import peak_rss_mib
from deswm._model import (
    ArchivedEntry,
    BucketResult,
    LocationReference,
    PendingStats,
    SourceRecord,
    Window,
)
from deswm._protocols import ReadResult

START = datetime(2024, 1, 1, tzinfo=UTC)


class GeneratedSource:
    """``rows`` rows spread evenly over ``days`` UTC days from :data:`START`, made as they
    are read (the source holds none of them)."""

    def __init__(self, rows: int, days: int) -> None:
        self.rows = rows
        self.days = days
        self.step = timedelta(microseconds=days * 86_400_000_000 // rows)

    def iter_records(self, window: Window) -> Iterator[SourceRecord]:
        for i in range(self.rows):
            created = START + self.step * i
            if not window.start <= created < window.end:
                continue
            digest = hashlib.md5(b"%d" % i).hexdigest()  # names, not security
            uid = f"{digest}{i % 10_000:04d}"
            location = f"/data/archive/2024/01/{digest}/{digest[:16]}.bin"
            yield SourceRecord(uid, created, location, 1000 + i % 20_000)

    def pending_stats(self, window: Window) -> PendingStats:
        return PendingStats(window, self.rows, 0, START, START + self.step * (self.rows - 1))

    def location_references(self, locations: Collection[str]) -> Iterator[LocationReference]:
        return iter(())


class NullReader:
    """Every file is empty and present: the lane's reading costs nothing."""

    def read(self, location: str) -> bytes:
        return b""

    def read_many(self, records: Iterable[SourceRecord]) -> Iterator[ReadResult]:
        for record in records:
            yield record, b""

    def delete(self, location: str) -> None:
        pass


class CountingWriter:
    """A bucket writer that counts its files and publishes nothing."""

    def __init__(self, bucket: datetime) -> None:
        self._bucket = bucket
        self.files = 0

    @property
    def bucket(self) -> datetime:
        return self._bucket

    def add(self, record: SourceRecord, data: bytes) -> None:
        self.files += 1

    def archived(self, record: SourceRecord) -> ArchivedEntry | None:
        return None

    def publish(self) -> BucketResult:
        return BucketResult(self._bucket, self.files, 0, 0, 0)

    def abort(self) -> None:
        pass

    def __enter__(self) -> CountingWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pass


class CountingPacker:
    def open_bucket(self, bucket: datetime) -> CountingWriter:
        return CountingWriter(bucket)


def measure(args: argparse.Namespace, bound: int) -> str:
    """One cycle with ``lane_batch_rows = bound``: a ``key=value`` line."""
    from deswm import DesRouter, WatermarkOrchestrator
    from deswm.testing import MemoryWatermarkStore

    lag = timedelta(days=1)
    orchestrator = WatermarkOrchestrator(
        MemoryWatermarkStore(),
        GeneratedSource(args.rows, args.days),
        NullReader(),
        DesRouter(8),
        CountingPacker(),
        pipeline="engine-memory",
        lag=lag,
        initial=START,
        clock=lambda: START + timedelta(days=args.days) + lag,
        workers=args.lanes,
        executor="processes",
        buckets_in_flight=args.in_flight,
        lane_batch_rows=bound,
        spill_dir=args.spill_dir,
    )
    baseline = peak_rss_mib()
    started = time.perf_counter()
    with orchestrator:
        result = orchestrator.run_cycle()
    seconds = time.perf_counter() - started
    lanes = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if result.files != args.rows:
        raise SystemExit(f"archived {result.files} of {args.rows} rows")
    return (
        f"bound={bound} rows={result.files} buckets={result.buckets_committed} "
        f"seconds={seconds:.1f} baseline_rss_mib={baseline:.1f} "
        f"peak_rss_mib={peak_rss_mib():.1f} lane_peak_rss_mib={lanes:.1f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--lanes", type=int, default=2)
    parser.add_argument("--in-flight", type=int, default=2)
    parser.add_argument("--bounds", default="0,50000,10000", help="lane_batch_rows values")
    parser.add_argument("--spill-dir", default=None, help="default: a new temp folder")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one is not None:
        print(measure(args, args.one), flush=True)
        return 0
    with tempfile.TemporaryDirectory(prefix="deswm-bench-") as scratch:
        spill = args.spill_dir or scratch
        print(
            f"{args.rows:,} rows over {args.days} day(s), W = {args.lanes} lanes in processes, "
            f"B = {args.in_flight}; load average {os.getloadavg()[0]:.2f}"
        )
        print(
            "| lane_batch_rows | seconds | coordinator RSS before (MiB) | coordinator peak "
            "(MiB) | growth (MiB) | largest lane peak (MiB) |"
        )
        print("| ---: | ---: | ---: | ---: | ---: | ---: |")
        for bound in (int(b) for b in args.bounds.split(",")):
            command = [sys.executable, "-m", "benchmarks.engine_memory", "--one", str(bound)]
            options = ["--rows", str(args.rows), "--days", str(args.days)]
            options += ["--lanes", str(args.lanes), "--in-flight", str(args.in_flight)]
            done = subprocess.run(
                [*command, *options, "--spill-dir", spill],
                capture_output=True,
                text=True,
                check=True,
            )
            line = done.stdout.strip().splitlines()[-1]
            got = dict(item.split("=", 1) for item in line.split())
            before, peak = float(got["baseline_rss_mib"]), float(got["peak_rss_mib"])
            print(
                f"| {bound:,} | {got['seconds']} | {before:.1f} | {peak:.1f} | "
                f"{peak - before:.1f} | {got['lane_peak_rss_mib']} |",
                flush=True,
            )
            leftover = [n for n in os.listdir(spill) if n.startswith("deswm-rows-")]
            if leftover:
                raise SystemExit(f"spill files left behind: {leftover}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
