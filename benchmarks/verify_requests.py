"""Requests and time of ``verify`` on an S3 endpoint (moto): row by row against batched.

Archives ``--rows`` rows over two days into a moto S3 bucket, then verifies the window
four times on a fresh :class:`~deswm.Archive` each: looking every row up on its own
(what ``verify`` did before :class:`~deswm._archive.ArchiveBatch`) and batched, each
without and with ``--deep``. Prints the HTTP requests sent (by method) and the wall
time; compare the two in the same run::

    python -m benchmarks.verify_requests --rows 10000 --bits 4
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from deswm import _verify as verify_module
from deswm._archive import Archive
from deswm._lookups import _RowByRow
from deswm._model import SourceRecord, Window
from deswm._orchestrator import WatermarkOrchestrator
from deswm._packer import DesPacker
from deswm._routing import DesRouter
from deswm.testing import MemoryFileReader, MemorySourceProvider, MemoryWatermarkStore

START = datetime(2024, 5, 10, tzinfo=UTC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--bits", type=int, default=4, help="DesRouter n_bits (shards a day)")
    args = parser.parse_args()
    import s3fs
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        options: dict[str, Any] = {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": f"http://{host}:{port}"},
            "skip_instance_cache": True,
        }
        s3fs.S3FileSystem(**options).mkdir("bench")
        _measure("s3://bench/des", options, args.rows, DesRouter(args.bits))
    finally:
        server.stop()


def _measure(url: str, options: dict[str, Any], rows: int, router: DesRouter) -> None:
    per_day = rows // 2
    records = [
        SourceRecord(
            f"u{day}-{i:07d}",
            START + timedelta(days=day, seconds=i * 86_400 // per_day),
            f"m/{day}/{i}",
        )
        for day in range(2)
        for i in range(per_day)
    ]
    source = MemorySourceProvider(records)
    files = {r.location: b"x" * 200 + r.uid.encode() for r in records}
    WatermarkOrchestrator(
        MemoryWatermarkStore(),
        source,
        MemoryFileReader(files),
        router,
        DesPacker(url, router, storage_options=options),
        pipeline="bench",
        lag=timedelta(days=1),
        initial=START,
        clock=lambda: START + timedelta(days=10),
    ).run_cycle()
    window = Window(START, START + timedelta(days=2))
    batch_lookup = verify_module.batch_lookup
    for deep in (False, True):
        for label in ("row by row", "batched"):
            archive = Archive(url, router, storage_options=options)
            sent: Counter[str] = Counter()
            archive.store.fs.s3.meta.events.register(  # type: ignore[attr-defined]
                "before-send.s3", lambda request, sent=sent, **_: sent.update([request.method])
            )
            lookup = _RowByRow(archive) if label == "row by row" else archive.batch()
            verify_module.batch_lookup = lambda _archive, chosen=lookup: chosen  # type: ignore[misc]
            try:
                started = time.perf_counter()
                report = verify_module.verify_window(source, archive, window, deep=deep)
                took = time.perf_counter() - started
            finally:
                verify_module.batch_lookup = batch_lookup
            if not report.ok or report.checked != len(records):
                raise AssertionError(f"verify failed: {report}")
            print(
                f"verify{' --deep' if deep else ''} {label}: {len(records)} rows, "
                f"{sum(sent.values())} requests {dict(sent)}, {took:.2f} s"
            )


if __name__ == "__main__":
    main()
