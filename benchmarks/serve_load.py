"""Load test of ``deswm serve``: warm GETs from N concurrent clients, and a big download.

``python -m benchmarks.serve_load --requests 10000 --clients 50``

Packs ``--files`` small files (and, with ``--big-mb``, one big file) into a local
archive, starts the service in a child process (uvicorn, one worker, the same app as
``deswm serve``) and drives it with an httpx async client: one warm-up GET per file, then
``--requests`` GETs of random files from ``--clients`` concurrent connections. It
prints requests/s, p50/p99 latency and the server's peak RSS, and with ``--big-mb`` the
server's peak RSS before and after streaming the big file to a client that discards it
(flat memory means it stays put). ``requests_per_server_cpu_second`` is the service's
capacity per core, independent of what else runs on the machine. The client runs on the
same machine, so on a small box it competes with the server for CPU: the figures are a
lower bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

DAY = datetime(2024, 5, 17, tzinfo=UTC)


def created_at(i: int) -> datetime:
    return DAY + timedelta(seconds=i)


def build(folder: Path, files: int, size: int, big_mb: int) -> str:
    from deswm.model import SourceRecord
    from deswm.packer import DesPacker
    from deswm.routing import DesRouter

    url = str(folder / "archive")
    rng = random.Random(7)
    packer = DesPacker(url, DesRouter(8), big_file_threshold=10 * 2**20)
    with packer.open_bucket(DAY) as writer:
        for i in range(files):
            writer.add(SourceRecord(f"f{i}.bin", created_at(i), f"/src/{i}"), rng.randbytes(size))
        if big_mb:
            chunk = rng.randbytes(2**20)
            big = b"".join(chunk[i:] + chunk[:i] for i in range(big_mb))
            writer.add(SourceRecord("big.bin", created_at(files), "/src/big"), big)
            del big
        writer.publish()
    return url


def serve(url: str, port: int) -> None:
    """The child: the service over ``url`` on 127.0.0.1:``port``."""
    import uvicorn

    from deswm.archive import Archive
    from deswm.routing import DesRouter
    from deswm.serve import KEEP_ALIVE_SECONDS, create_app

    app = create_app(Archive(url, DesRouter(8)))
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,  # as deswm serve
    )


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def load(base: str, files: int, requests: int, clients: int) -> dict[str, Any]:
    import httpx

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        for i in range(files):  # warm: every index cached
            (await client.get(f"/files/f{i}.bin", params=_q(i))).raise_for_status()
        rng = random.Random(1)
        targets = [rng.randrange(files) for _ in range(requests)]
        latencies: list[float] = []
        errors = 0
        position = 0

        async def worker() -> None:
            nonlocal position, errors
            while position < len(targets):
                i = targets[position]
                position += 1
                started = time.perf_counter()
                response = await client.get(f"/files/f{i}.bin", params=_q(i))
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(elapsed, 3),
        "requests_per_second": round(len(latencies) / elapsed, 1),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2),
    }


async def download(base: str, files: int) -> int:
    import httpx

    received = 0
    async with (
        httpx.AsyncClient(base_url=base, timeout=600) as client,
        client.stream("GET", "/files/big.bin", params=_q(files)) as response,
    ):
        response.raise_for_status()
        async for chunk in response.aiter_raw():
            received += len(chunk)
    return received


def _q(i: int) -> dict[str, str]:
    return {"created_at": created_at(i).isoformat()}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--size", type=int, default=4096, help="bytes per small file")
    parser.add_argument("--requests", type=int, default=10000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--big-mb", type=int, default=0, help="also stream one file this big")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port)
        return 0
    with tempfile.TemporaryDirectory(prefix="deswm-serve-load-") as work:
        url = build(Path(work), args.files, args.size, args.big_mb)
        port = free_port()
        child = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.serve_load", "--serve", url, "--port", str(port)],
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        try:
            base = f"http://127.0.0.1:{port}"
            _wait(base)
            result: dict[str, Any] = {"files": args.files, "size": args.size}
            result["clients"] = args.clients
            cpu = cpu_seconds(child.pid)
            result |= asyncio.run(load(base, args.files, args.requests, args.clients))
            cpu = cpu_seconds(child.pid) - cpu  # warm-up GETs included
            result["server_cpu_seconds"] = round(cpu, 2)
            total = args.requests + args.files
            result["requests_per_server_cpu_second"] = round(total / cpu, 1)
            result["server_peak_rss_mib"] = round(peak_rss_mib(child.pid), 1)
            if args.big_mb:
                result["big_mib"] = args.big_mb
                result["server_rss_before_big_mib"] = round(rss_mib(child.pid), 1)
                started = time.perf_counter()
                received = asyncio.run(download(base, args.files))
                result["big_seconds"] = round(time.perf_counter() - started, 2)
                assert received == args.big_mb * 2**20, received
                result["server_peak_rss_after_big_mib"] = round(peak_rss_mib(child.pid), 1)
        finally:
            child.terminate()
            child.wait(30)
    print(json.dumps(result, indent=2))
    return 0


def _wait(base: str) -> None:
    import httpx

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError("the service did not start")


if __name__ == "__main__":
    sys.exit(main())
