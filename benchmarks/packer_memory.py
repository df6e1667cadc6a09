"""Peak RSS of packing one bucket of N small synthetic files (G9, P5).

Usage::

    python -m benchmarks.packer_memory 200000 [--spill-threshold BYTES] [--n-bits 8]
        [--workers 2] [--dest DIR]

Files are generated on the fly (compressible JSON-like lines of 200 to 4,000 bytes,
deterministic), so the only memory that grows with N is the packer's own. Prints one line
of ``key=value`` pairs: files, bytes, seconds, shards, spilled bytes, and in MiB the RSS
before packing, the peak RSS of this process (``VmHWM`` from /proc/self/status) and
``ru_maxrss``. On Linux ``ru_maxrss`` keeps the parent's peak across fork and exec, so it
overstates the peak when the script is started by a large process (such as pytest).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from benchmarks.probes import peak_rss_mib, ru_maxrss_mib
from deswm._model import SourceRecord
from deswm._packer import DesPacker
from deswm._routing import DesRouter

DAY = datetime(2024, 5, 17, tzinfo=UTC)


def synthetic_files(count: int, seed: int = 7) -> Iterator[tuple[SourceRecord, bytes]]:
    """``count`` records of one day in (created_at, uid) order, with their bytes."""
    rnd = random.Random(seed)
    step = timedelta(microseconds=86_400_000_000 // max(count, 1))
    for i in range(count):
        created = DAY + step * i
        line = b'{"id":%d,"name":"file-%08d","value":%d,"tags":["a","b","c"]}\n' % (
            i,
            i,
            rnd.randrange(10**9),
        )
        data = line * rnd.randrange(3, 60)
        yield SourceRecord(f"file-{i:08d}.json", created, f"/src/{i}"), data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", type=int)
    parser.add_argument("--spill-threshold", type=int, default=8 * 2**20)
    parser.add_argument("--n-bits", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dest", default=None, help="destination folder (a temp dir if unset)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="deswm-bench-") as scratch:
        dest = args.dest or scratch
        packer = DesPacker(
            dest,
            DesRouter(args.n_bits),
            spill_threshold=args.spill_threshold,
            spill_dir=scratch,
            workers=args.workers,
        )
        baseline = peak_rss_mib()
        started = time.perf_counter()
        total = 0
        with packer.open_bucket(DAY) as writer:
            for record, data in synthetic_files(args.files):
                writer.add(record, data)
                total += len(data)
            spilled = writer.spilled_bytes
            result = writer.publish()
        elapsed = time.perf_counter() - started
    print(
        f"files={result.files} bytes={total} seconds={elapsed:.1f} shards={len(result.shards)} "
        f"spilled={spilled} baseline_rss_mib={baseline:.1f} peak_rss_mib={peak_rss_mib():.1f} "
        f"ru_maxrss_mib={ru_maxrss_mib():.1f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
