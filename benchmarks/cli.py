"""``python -m benchmarks``: deswm against its baselines on one seeded data set.

Everything runs in one invocation on the same files, each measured run in a fresh child
process after the page cache was warmed the same way (every file read once):

1. the data set (``--files`` rows, ``mixed`` profile, cached under ``--work-dir``);
2. ``native``, ``python_loop``, ``deswm`` (SQLite source, local destination, zstd-3, one
   process), ``lane`` (one packing lane's read, add and publish over the same files, for
   its CPU per file against the Python loop's) and ``per_record`` on SQLite, ``--repeat``
   times interleaved (the best run of each counts);
3. P2: two partitions in two processes started together, with the partition filter in
   SQL and (for comparison) in Python, counting the rows each partition fetched;
4. with ``--db postgresql``: deswm and per-record on PostgreSQL (database time, WAL);
5. P7: cold and warm ``Archive.get``, local and on a moto S3 server;
6. the scaling series on ``small`` files (P5, P6) and pending stats on its largest
   table (P8).

The JSON result goes to ``--results-dir`` and the table to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from benchmarks.dataset import (
    BENCH_SCHEMA,
    Dataset,
    DatasetSpec,
    ensure_dataset,
    ensure_postgres_table,
    warm_page_cache,
)
from benchmarks.report import figures, format_table
from benchmarks.runner import REPO, Child, run_child

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
SMOKE_FILES = 300
SMOKE_SERIES = (200, 400, 800)
SERIES = (10_000, 100_000, 1_000_000)
_RECENT_DELETES = 300
"""Seconds after mass deletes during which ext4 creates files more slowly (it avoids
reusing recently freed inodes: fs/ext4/ialloc.c, ``RECENTCY_DIRTY``)."""
STEPS = (
    "native",
    "python_loop",
    "deswm",
    "lane",
    "per_record",
    "partitions",
    "postgresql",
    "retrieval",
    "scaling",
    "pending_stats",
)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--files", type=int, default=100_000, help="rows of the main data set")
    parser.add_argument("--days", type=int, default=20, help="UTC days the rows span")
    parser.add_argument("--big-files", type=int, default=0, help="files above 10 MiB to add")
    parser.add_argument("--seed", type=int, default=20241122)
    parser.add_argument(
        "--db",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="postgresql adds the database figures P3/P4 (SQLite figures always run)",
    )
    parser.add_argument("--pg-url", default=os.environ.get("DESWM_BENCH_POSTGRES_URL", DEFAULT_PG))
    parser.add_argument("--work-dir", type=Path, default=REPO / "benchmarks" / "work")
    parser.add_argument("--results-dir", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each timed scenario")
    parser.add_argument(
        "--series",
        default=",".join(str(n) for n in SERIES),
        help="row counts of the scaling series (small files); empty to skip",
    )
    parser.add_argument("--skip", default="", help=f"comma-separated steps of {', '.join(STEPS)}")
    parser.add_argument("--only", default="", help="comma-separated steps to run (and no other)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the harness")
    parser.add_argument("--no-s3", action="store_true", help="skip the moto S3 retrieval")
    parser.add_argument("--keep", action="store_true", help="keep run folders (archives)")
    parser.add_argument(
        "--settle",
        action="store_true",
        help="wait until the last run's cleanup is 5 minutes old before the first timed run "
        "(ext4 creates files more slowly after mass deletes)",
    )
    parser.add_argument(
        "--n-bits-variant",
        type=int,
        default=4,
        help="also run the full cycle with this n_bits (fewer, larger shards); 0 to skip",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="[run] workers of the main deswm runs (1: in-process, as before the engine)",
    )
    parser.add_argument(
        "--engine-variant",
        type=int,
        default=2,
        metavar="N",
        help="also run the full cycle on N lanes in processes (the engine); 0 to skip",
    )
    parser.add_argument(
        "--engine-executor",
        default="processes",
        metavar="KINDS",
        help="comma-separated executors of the engine variant: processes, dask (a "
        "distributed.LocalCluster of N single-threaded worker processes started before the "
        "run, not timed)",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.files = SMOKE_FILES
        args.days = 3
        args.series = ",".join(str(n) for n in SMOKE_SERIES)
        args.repeat = 1
        args.n_bits_variant = 0
    return args


def _steps(args: argparse.Namespace) -> set[str]:
    only = {s for s in args.only.split(",") if s}
    skip = {s for s in args.skip.split(",") if s}
    unknown = (only | skip) - set(STEPS)
    if unknown:
        raise SystemExit(
            f"unknown step(s): {', '.join(sorted(unknown))}; steps: {', '.join(STEPS)}"
        )
    chosen = only or set(STEPS)
    if args.db != "postgresql":
        chosen.discard("postgresql")
    return chosen - skip


def _version(command: list[str]) -> str | None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout or done.stderr).strip().splitlines()
    return text[0] if text else None


def machine() -> dict[str, Any]:
    import sqlalchemy
    import zstandard

    import deswm

    memory = None
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemTotal:"):
                    memory = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    commit = _version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = _version(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"])
    return {
        "nproc": os.cpu_count(),
        "memory_gib": memory,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "deswm": getattr(deswm, "__version__", "?"),
        "sqlalchemy": sqlalchemy.__version__,
        "zstandard": zstandard.__version__,
        "tar": _version(["tar", "--version"]),
        "zstd": _version(["zstd", "--version"]),
        "git": f"{commit}{' (modified)' if dirty else ''}" if commit else None,
        "load_average_start": round(os.getloadavg()[0], 2),
    }


_ENGINE_RUNS: Final = {"processes": "deswm_sqlite_engine", "dask": "deswm_sqlite_engine_dask"}


def _executors(text: str) -> list[str]:
    kinds = [kind.strip() for kind in text.split(",") if kind.strip()]
    unknown = sorted(set(kinds) - set(_ENGINE_RUNS))
    if unknown or not kinds:
        raise SystemExit(f"--engine-executor: unknown {unknown or text!r}; use processes, dask")
    return kinds


@contextlib.contextmanager
def _cluster(executor: str, workers: int) -> Iterator[str | None]:
    """For ``dask``: a LocalCluster of ``workers`` single-threaded worker processes, up
    before the timed run starts (as a site's cluster would be) and closed after it."""
    if executor != "dask":
        yield None
        return
    from distributed import LocalCluster

    with LocalCluster(  # type: ignore[no-untyped-call]
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        yield cluster.scheduler_address


def _base_params(dataset: Dataset, run_dir: Path) -> dict[str, Any]:
    window = dataset.spec.window
    return {
        "expect_files": dataset.count,
        "files_root": str(dataset.files_root),
        "list": str(dataset.list_path),
        "sqlite_path": str(dataset.sqlite_path),
        "sqlite_url": dataset.sqlite_url,
        "window": [window[0].isoformat(), window[1].isoformat()],
        "run_dir": str(run_dir),
        "db": "sqlite",
    }


def _warm(dataset: Dataset) -> None:
    """The same start for every timed run: dirty pages of the previous run written out
    (native's output is never fsynced: its write-back would tax the next run), then every
    input file read once, so all of them are in the page cache."""
    os.sync()
    time.sleep(1.0)
    warm_page_cache(dataset)


def _run(name: str, scenario: str, dataset: Dataset, params: dict[str, Any]) -> dict[str, Any]:
    _warm(dataset)
    _log(f"  {name} ...")
    result = run_child(scenario, params)
    _log(f"  {name}: {result.get('seconds', '')} s" if "seconds" in result else f"  {name}: done")
    return result


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    best = min(runs, key=lambda r: r["seconds"])
    best = dict(best)
    best["all_seconds"] = [r["seconds"] for r in runs]
    if all("cpu" in r for r in runs):
        best["all_cpu"] = [r["cpu"] for r in runs]  # the CPU figures take the least
    if any(r.get("wal_bytes") is not None for r in runs):
        # The WAL counter is server-wide and a checkpoint inside a run adds a full-page
        # image to its first write: P4 uses the median of every run, not the fastest's.
        best["all_wal_bytes"] = [r.get("wal_bytes") for r in runs]
    return best


def _partitions(dataset: Dataset, run_root: Path, *, pushdown: bool = True) -> dict[str, Any]:
    """Partitions 0 and 1 of 2 in two processes over the same data, started together.

    ``pushdown=False``: the source's partition filter is hidden, so each partition reads
    the whole window and filters in Python (the comparison for the rows fetched)."""
    tag = "partitions" if pushdown else "partitions-python"
    archive = run_root / f"{tag}-archive"
    shutil.rmtree(archive, ignore_errors=True)
    go = run_root / f"{tag}.go"
    go.unlink(missing_ok=True)
    children = []
    _warm(dataset)
    _log(f"  {tag} (2 processes) ...")
    for index in (0, 1):
        params = _base_params(dataset, run_root / f"{tag}-{index}")
        shutil.rmtree(params["run_dir"], ignore_errors=True)
        ready = run_root / f"{tag}-{index}.ready"
        ready.unlink(missing_ok=True)
        params.pop("expect_files")  # each packs its own share; the sum is checked below
        params.update(
            partitions=2,
            partition=index,
            archive_dir=str(archive),
            keep_archive=True,
            ready_file=str(ready),
            go_file=str(go),
            verify_sample=0,
            pushdown=pushdown,
        )
        children.append((ready, Child("deswm", params)))
    deadline = time.monotonic() + 300
    while not all(ready.exists() for ready, _ in children):
        if time.monotonic() > deadline or any(c.process.poll() is not None for _, c in children):
            break
        time.sleep(0.01)
    go.write_text("go")
    results = [child.result() for _, child in children]
    go.unlink(missing_ok=True)  # the archive goes with the run folder, at the end
    start = min(r["wall_start"] for r in results)
    end = max(r["wall_end"] for r in results)
    files = sum(r["files"] for r in results)
    if files != dataset.count:
        raise RuntimeError(f"the two partitions packed {files} files, expected {dataset.count}")
    _log(f"  {tag}: {end - start:.3f} s, rows fetched {[r['source_rows'] for r in results]}")
    return {
        "seconds": round(end - start, 3),
        "files": files,
        "window_rows": dataset.count,
        "source_rows": [r["source_rows"] for r in results],
        "partitions": results,
        "peak_rss_mib": max(r["peak_rss_mib"] for r in results),
    }


def _postgres(dataset: Dataset, args: argparse.Namespace, run_root: Path) -> dict[str, Any]:
    table = ensure_postgres_table(dataset, args.pg_url, log=_log)
    out: dict[str, Any] = {}
    for name in ("deswm", "per_record"):
        runs = []
        for attempt in range(1, args.repeat + 1):
            params = _base_params(dataset, run_root / f"{name}-postgresql-{attempt}")
            params.update(
                db="postgresql", pg_url=args.pg_url, pg_table=table, pg_schema=BENCH_SCHEMA
            )
            if name == "deswm":
                params["lanes"] = args.workers  # --workers: the engine, as on SQLite
            runs.append(_run(f"{name} (PostgreSQL)", name, dataset, params))
        out[f"{name}_postgresql"] = _best(runs)
    return out


def _scaling(
    args: argparse.Namespace, series: list[int], run_root: Path
) -> tuple[list[Any], Dataset | None]:
    rows = []
    largest = None
    for count in series:
        spec = DatasetSpec(count, profile="small", days=args.days, seed=args.seed)
        dataset = ensure_dataset(args.work_dir, spec, log=_log)
        params = _base_params(dataset, run_root / f"scaling-{count}")
        params["verify_sample"] = 20
        result = _run(f"deswm on {count:,} small files", "deswm", dataset, params)
        result["rows"] = count
        result["us_per_file"] = round(result["seconds"] / count * 1e6, 2)
        rows.append(result)
        largest = dataset
    return rows, largest


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    steps = _steps(args)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    info = machine()
    load = info["load_average_start"]
    _log(f"machine: {info['nproc']} cores, {info['memory_gib']} GiB, load {load}")
    spec = DatasetSpec(args.files, days=args.days, seed=args.seed, big_files=args.big_files)
    dataset = ensure_dataset(args.work_dir, spec, log=_log)
    cleanup_mark = args.work_dir / ".last-cleanup"
    if cleanup_mark.exists():
        ago = time.time() - cleanup_mark.stat().st_mtime
        info["seconds_since_last_cleanup"] = round(ago)
        if ago < _RECENT_DELETES and args.settle:
            _log(f"settling: the last run's files were deleted {ago:.0f} s ago; waiting ...")
            time.sleep(_RECENT_DELETES - ago)
            info["seconds_since_last_cleanup"] = _RECENT_DELETES
        elif ago < _RECENT_DELETES:
            _log(
                f"warning: the last run's files were deleted {ago:.0f} s ago; for about "
                f"{_RECENT_DELETES // 60} minutes ext4 creates files more slowly after mass "
                "deletes, which makes deswm (thousands of objects) look slower (--settle "
                "waits)"
            )
    run_root = args.work_dir / "runs"
    stale = None
    if run_root.exists():  # left by an interrupted run: removed at the end, not now
        stale = run_root.with_name(f"runs.stale-{started.strftime('%Y%m%dT%H%M%S')}")
        run_root.rename(stale)
    run_root.mkdir()
    runs: dict[str, Any] = {}
    sqlite_runs: dict[str, list[dict[str, Any]]] = {}
    plan = [
        ("native", "native"),
        ("python_loop", "python_loop"),
        ("deswm", "deswm_sqlite"),
        ("lane", "lane"),
        ("per_record", "per_record_sqlite"),
    ]
    if "native" in steps and not (shutil.which("tar") and shutil.which("zstd")):
        _log("  native: skipped, the tar and zstd commands are needed (apt-get install zstd)")
        steps.discard("native")
    local_archive = run_root / "deswm-sqlite-1" / "archive"
    for attempt in range(1, args.repeat + 1):
        for scenario, key in plan:
            if scenario not in steps:
                continue
            params = _base_params(dataset, run_root / f"{key.replace('_', '-')}-{attempt}")
            if scenario == "deswm":
                params["lanes"] = args.workers
            sqlite_runs.setdefault(key, []).append(_run(key, scenario, dataset, params))
            if scenario == "deswm" and args.engine_variant:
                # The same cycle on the engine's lanes, right after (same machine state).
                for executor in _executors(args.engine_executor):
                    key = _ENGINE_RUNS[executor]
                    params = _base_params(dataset, run_root / f"deswm-engine-{executor}-{attempt}")
                    params.update(lanes=args.engine_variant, executor=executor)
                    name = f"deswm_sqlite (engine, {args.engine_variant} lanes, {executor})"
                    with _cluster(executor, args.engine_variant) as scheduler:
                        if scheduler:
                            params["scheduler"] = scheduler
                        sqlite_runs.setdefault(key, []).append(
                            _run(name, scenario, dataset, params)
                        )
    runs.update({key: _best(found) for key, found in sqlite_runs.items()})
    if "deswm" in steps and args.n_bits_variant:
        params = _base_params(dataset, run_root / f"deswm-nbits-{args.n_bits_variant}")
        params["n_bits"] = args.n_bits_variant
        runs["deswm_sqlite_variant"] = _run(
            f"deswm_sqlite (n_bits {args.n_bits_variant})", "deswm", dataset, params
        )
    if "partitions" in steps:
        runs["partitions"] = _partitions(dataset, run_root)
        runs["partitions_python_filter"] = _partitions(dataset, run_root, pushdown=False)
    if "postgresql" in steps:
        runs.update(_postgres(dataset, args, run_root))
    if "retrieval" in steps:
        params = _base_params(dataset, run_root / "retrieval")
        params.update(
            local_archive=str(local_archive) if local_archive.exists() else None,
            s3=not args.no_s3,
            gets=5 if args.smoke else 20,
            s3_files=60 if args.smoke else 400,
        )
        _log("  retrieval ...")
        runs["retrieval"] = run_child("retrieval", params)
    series = [int(n) for n in args.series.split(",") if n.strip()]
    largest = None
    if "scaling" in steps and series:
        runs["scaling"], largest = _scaling(args, series, run_root)
    if "pending_stats" in steps:
        if largest is None and series:
            biggest = DatasetSpec(max(series), profile="small", days=args.days, seed=args.seed)
            largest = ensure_dataset(args.work_dir, biggest, log=_log)
        target = largest or dataset
        _log(f"  pending stats on {target.count:,} rows ...")
        runs["pending_stats"] = run_child("pending_stats", _base_params(target, run_root / "stats"))
    if not args.keep:
        # Removed only now: deleting thousands of files right before a timed run makes
        # its file creation slower (ext4 skips recently freed inodes).
        shutil.rmtree(run_root, ignore_errors=True)
    if stale is not None:
        shutil.rmtree(stale, ignore_errors=True)
    if stale is not None or not args.keep:
        cleanup_mark.touch()
    rows = figures(runs)
    finished = datetime.now(UTC)
    result = {
        "format": 1,
        "smoke": args.smoke,
        "started": started.isoformat(),
        "finished": finished.isoformat(),
        "seconds": round((finished - started).total_seconds(), 1),
        "command": " ".join(
            ["python", "-m", "benchmarks", *(sys.argv[1:] if argv is None else argv)]
        ),
        "machine": {**info, "load_average_end": round(os.getloadavg()[0], 2)},
        "dataset": {"key": spec.key, "root": str(dataset.root), **dataset.manifest},
        "runs": runs,
        "figures": rows,
    }
    name = f"bench-{started.strftime('%Y%m%dT%H%M%SZ')}{'-smoke' if args.smoke else ''}.json"
    path = args.results_dir / name
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(format_table(rows))
    print(
        f"\nmachine: {info['nproc']} cores, {info['memory_gib']} GiB; data set {spec.key}: "
        f"{dataset.count:,} files, {dataset.bytes / 1e6:,.1f} MB"
    )
    print(f"result: {path}")
    return 0
