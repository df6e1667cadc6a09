"""Load test of ``deswm serve``: warm GETs from N concurrent clients, and big downloads.

``python -m benchmarks.serve_load --seconds 10 --clients 50 --workers 2 --big-mb 1024``

Packs ``--files`` small files (and, with ``--big-mb``, one big file) into a local
archive, starts ``deswm serve`` on it in a child process (``--workers`` processes; the
access log off unless ``--access-log``) and drives it with a load generator: ``wrk``
when it is installed (``--seconds`` of load; it costs the machine little CPU), else an
httpx async client (``--requests`` GETs). One warm-up GET per file first, so every index
is cached; then random files from ``--clients`` concurrent connections.

It prints requests/s, p50/p99 latency, the server's CPU seconds per 1,000 requests (its
cost, independent of what else runs on the machine: 2 cores serve 2,000 requests/s when
this is below 1.0) and its resident memory (VmRSS, all server processes added up) before
the load and at its peak during it. With ``--big-mb``, ``--big-clients`` clients then
each download the big file at once and discard it: the server's RSS before and its peak
during the downloads (flat memory means they stay close). The client runs on the same
machine, so on a small box it competes with the server for CPU: requests/s is a lower
bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

DAY = datetime(2024, 5, 17, tzinfo=UTC)
N_BITS = 8


def created_at(i: int) -> datetime:
    return DAY + timedelta(seconds=i)


def build(folder: Path, files: int, size: int, big_mb: int) -> str:
    from deswm._model import SourceRecord
    from deswm._packer import DesPacker
    from deswm._routing import DesRouter

    url = str(folder / "archive")
    rng = random.Random(7)
    packer = DesPacker(url, DesRouter(N_BITS), big_file_threshold=10 * 2**20)
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


def write_config(folder: Path, url: str, *, access_log: bool) -> Path:
    config = folder / "serve.toml"
    config.write_text(
        f"[archive]\nurl = {json.dumps(url)}\nn_bits = {N_BITS}\n\n"
        f"[serve]\naccess_log = {str(access_log).lower()}\n"
    )
    return config


# --- the server's processes ---------------------------------------------------------------


def processes(root: int) -> list[int]:
    """``root`` and its descendants (the uvicorn supervisor and its workers)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, added = [root], True
    while added:
        added = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.append(pid)
                added = True
    return tree


def cpu_seconds(root: int) -> float:
    """User + system CPU time of the server's processes so far."""
    total = 0
    for pid in processes(root):
        with _gone_is_zero():
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _status_mib(root: int, field: str) -> float:
    total = 0
    for pid in processes(root):
        with _gone_is_zero():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(f"{field}:"):
                    total += int(line.split()[1])
    return round(total / 1024, 1)


def rss_mib(root: int) -> float:
    """Resident memory of the server's processes now, added up."""
    return _status_mib(root, "VmRSS")


def peak_rss_mib(root: int) -> float:
    """Peak resident memory of each server process since :func:`reset_peaks`, added up."""
    return _status_mib(root, "VmHWM")


def reset_peaks(root: int) -> None:
    """Start each process's peak RSS afresh (Linux: ``5`` to ``/proc/PID/clear_refs``)."""
    for pid in processes(root):
        with _gone_is_zero():
            Path(f"/proc/{pid}/clear_refs").write_text("5")


class _gone_is_zero:
    """Ignore a process that ended between listing and reading it."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> bool:
        return kind is not None and issubclass(kind, FileNotFoundError | ProcessLookupError)


# --- load generators -------------------------------------------------------------------------


def paths(files: int) -> list[str]:
    """The GET targets of the load: every file once, in a random order."""
    order = list(range(files))
    random.Random(1).shuffle(order)
    return [f"/files/f{i}.bin?created_at={_q(i)['created_at'].replace('+', '%2B')}" for i in order]


_WRK_SCRIPT = """
local paths = {%s}
local n = #paths
local i = 0
request = function()
  i = i %% n + 1
  return wrk.format("GET", paths[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %%d, "errors": %%d, "seconds": %%.3f, "p50_ms": %%.2f, "p99_ms": %%.2f}\\n',
    summary.requests, e.connect + e.read + e.write + e.status + e.timeout,
    summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


def load_wrk(base: str, files: int, seconds: int, clients: int, folder: Path) -> dict[str, Any]:
    script = folder / "paths.lua"
    script.write_text(_WRK_SCRIPT % ", ".join(json.dumps(p) for p in paths(files)))
    done = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{clients}",
            f"-d{seconds}s",
            "--timeout",
            "30s",
            "-s",
            str(script),
            base,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["requests_per_second"] = round(result["requests"] / result["seconds"], 1)
    return result


async def load_httpx(base: str, files: int, requests: int, clients: int) -> dict[str, Any]:
    import httpx

    targets = paths(files)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        latencies: list[float] = []
        errors = 0
        position = 0

        async def worker() -> None:
            nonlocal position, errors
            while position < requests:
                target = targets[position % len(targets)]
                position += 1
                started = time.perf_counter()
                response = await client.get(target)
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


async def warm(base: str, files: int) -> None:
    """GET every file once: every index cached before the measured load."""
    import httpx

    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        for target in paths(files):
            (await client.get(target)).raise_for_status()


async def download(base: str, files: int, clients: int) -> list[int]:
    """``clients`` concurrent downloads of the big file; the bytes each received."""
    import httpx

    async def one(client: httpx.AsyncClient) -> int:
        received = 0
        async with client.stream("GET", "/files/big.bin", params=_q(files)) as response:
            response.raise_for_status()
            async for chunk in response.aiter_raw():
                received += len(chunk)
        return received

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as client:
        return list(await asyncio.gather(*(one(client) for _ in range(clients))))


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
    parser.add_argument("--clients", type=int, default=50, help="concurrent connections")
    parser.add_argument("--seconds", type=int, default=10, help="seconds of load (wrk)")
    parser.add_argument("--requests", type=int, default=10000, help="GETs sent (httpx)")
    parser.add_argument("--generator", choices=("auto", "wrk", "httpx"), default="auto")
    parser.add_argument("--workers", type=int, default=1, help="deswm serve --workers")
    parser.add_argument("--access-log", action="store_true", help="serve.access_log = true")
    parser.add_argument("--big-mb", type=int, default=0, help="also download one file this big")
    parser.add_argument("--big-clients", type=int, default=1, help="concurrent big downloads")
    args = parser.parse_args(argv)
    generator = args.generator
    if generator == "auto":
        generator = "wrk" if shutil.which("wrk") else "httpx"
    with tempfile.TemporaryDirectory(prefix="deswm-serve-load-") as work:
        folder = Path(work)
        config = write_config(
            folder, build(folder, args.files, args.size, args.big_mb), access_log=args.access_log
        )
        port = free_port()
        command = [sys.executable, "-m", "deswm", "serve", "-c", str(config)]
        with (folder / "serve.log").open("wb") as log:
            child = subprocess.Popen(
                [*command, "--port", str(port), "--workers", str(args.workers)],
                env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            base = f"http://127.0.0.1:{port}"
            _wait(base, child)
            result: dict[str, Any] = {
                "generator": generator,
                "workers": args.workers,
                "access_log": args.access_log,
                "files": args.files,
                "size": args.size,
                "clients": args.clients,
            }
            asyncio.run(warm(base, args.files))
            result["server_rss_before_load_mib"] = rss_mib(child.pid)
            reset_peaks(child.pid)
            cpu = cpu_seconds(child.pid)
            if generator == "wrk":
                result |= load_wrk(base, args.files, args.seconds, args.clients, folder)
            else:
                result |= asyncio.run(load_httpx(base, args.files, args.requests, args.clients))
            cpu = cpu_seconds(child.pid) - cpu
            result["server_cpu_seconds"] = round(cpu, 2)
            result["server_cpu_seconds_per_1000_requests"] = round(
                cpu / result["requests"] * 1000, 3
            )
            result["server_peak_rss_during_load_mib"] = peak_rss_mib(child.pid)
            if args.big_mb:
                result["big_mib"] = args.big_mb
                result["big_clients"] = args.big_clients
                result["server_rss_before_big_mib"] = rss_mib(child.pid)
                reset_peaks(child.pid)
                started = time.perf_counter()
                received = asyncio.run(download(base, args.files, args.big_clients))
                result["big_seconds"] = round(time.perf_counter() - started, 2)
                assert received == [args.big_mb * 2**20] * args.big_clients, received
                result["server_peak_rss_during_big_mib"] = peak_rss_mib(child.pid)
        finally:
            child.terminate()
            child.wait(30)
    print(json.dumps(result, indent=2))
    return 0


def _wait(base: str, child: subprocess.Popen[bytes]) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"deswm serve exited with status {child.returncode}")
        try:
            if httpx.get(f"{base}/healthz").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError("the service did not start")


if __name__ == "__main__":
    sys.exit(main())
