"""The measured runs. Each function runs in a fresh child process (:mod:`benchmarks.child`)
and returns a JSON-able dict; setup (copying tables, creating the watermark) is done
before the clock starts and is not timed.

* :func:`deswm_cycle`: deswm's full cycle through the public config API;
* :func:`lane`: one packing lane's work (read, add, publish) over the window's rows,
  fetched before the clock starts;
* :func:`native`: ``tar --sort=name -cf - -T list | zstd -3 -T0``;
* :func:`per_record`: ``archived = false`` batches of 1,000, packed with deswm's
  container writer, then ``UPDATE ... SET archived = true WHERE uid IN (...)``;
* :func:`python_loop`: read, sha256, zstd-3, append to one file, one thread;
* :func:`retrieval`: cold and warm ``Archive.get``, local and on a moto S3 server;
* :func:`pending_stats`: the pending-stats aggregate of a window.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.probes import (
    SqlTimer,
    load_average,
    other_pg_activity,
    peak_rss_mib,
    wal_bytes_since,
    wal_lsn,
)

__all__ = [
    "SCENARIOS",
    "deswm_cycle",
    "lane",
    "native",
    "pending_stats",
    "per_record",
    "python_loop",
    "retrieval",
]

_PIPELINE = "bench"
_WM_TABLE = "deswm_bench_watermark"
_BATCH = 1000


def _window(params: dict[str, Any]) -> tuple[datetime, datetime]:
    start, end = (datetime.fromisoformat(v) for v in params["window"])
    return start, end


def _clock(end: datetime) -> Any:
    now = end + timedelta(days=1, hours=1)  # lag 1 day: the target is the window's end
    return lambda: now


def _dir_bytes(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # another partition's temp file
                total += os.stat(os.path.join(root, name)).st_size
    return total


def _times() -> dict[str, float]:
    """CPU of this process and of its children that ended (the engine's lane processes
    end when the orchestrator is closed, before the CPU is read)."""
    t = os.times()
    return {"user": t.user + t.children_user, "system": t.system + t.children_system}


def _cpu_since(before: dict[str, float]) -> dict[str, float]:
    now = _times()
    return {k: round(now[k] - before[k], 3) for k in now}


def _worker_times() -> tuple[float, float]:
    t = os.times()
    return t.user, t.system


class _DaskWorkers:
    """CPU of a Dask cluster's worker processes (not children of this process), read
    through a client of its own so the engine's client stays the one under test."""

    def __init__(self, scheduler: str | None) -> None:
        self._client: Any = None
        if scheduler:
            from distributed import Client

            self._client = Client(scheduler)  # type: ignore[no-untyped-call]

    def times(self) -> dict[str, tuple[float, float]]:
        if self._client is None:
            return {}
        return dict(self._client.run(_worker_times))

    def since(self, before: dict[str, tuple[float, float]]) -> dict[str, float]:
        """CPU the workers used since ``before`` (empty without a cluster)."""
        now = self.times()
        if not now:
            return {}
        return {
            kind: sum(times[i] - before.get(worker, (0.0, 0.0))[i] for worker, times in now.items())
            for i, kind in enumerate(("user", "system"))
        }

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


# --- deswm ----------------------------------------------------------------------------------


def _toml(value: Any) -> str:
    return json.dumps(value)  # JSON strings, numbers and booleans are valid TOML


def _deswm_config(params: dict[str, Any], run_dir: Path) -> Path:
    start, _ = _window(params)
    db = params["db"]
    lines = ["[source]"]
    if db == "sqlite":
        lines += [f"url = {_toml(params['sqlite_url'])}", 'table = "files"']
        watermark = [f"url = {_toml('sqlite:///' + str(run_dir / 'watermark.sqlite3'))}"]
    else:
        lines += [
            f"url = {_toml(params['pg_url'])}",
            f"table = {_toml(params['pg_table'])}",
            f"schema = {_toml(params['pg_schema'])}",
        ]
        watermark = [f"table = {_toml(_WM_TABLE)}", f"schema = {_toml(params['pg_schema'])}"]
    lines += ["", "[files]", f"root = {_toml(params['files_root'])}"]
    if params.get("reader_workers"):
        lines.append(f"max_workers = {int(params['reader_workers'])}")
    lines += [
        "",
        "[watermark]",
        *watermark,
        f"pipeline = {_toml(_PIPELINE)}",
        "lag_days = 1",
        f"initial = {_toml(start.isoformat())}",
        "",
        "[archive]",
        f"url = {_toml(str(_archive_dir(params)))}",
        f"n_bits = {int(params.get('n_bits', 8))}",
        'compression = "zstd"',
        "compression_level = 3",
    ]
    if params.get("pack_workers") is not None:
        lines.append(f"workers = {int(params['pack_workers'])}")
    lines += ["", "[run]", f"partitions = {int(params.get('partitions', 1))}"]
    # The packing engine's lanes: 1 (in-process, the figures before the engine) unless
    # a run asks for more (--workers, --engine-variant).
    lines.append(f"workers = {int(params.get('lanes', 1))}")
    if params.get("executor"):
        lines.append(f"executor = {_toml(params['executor'])}")
    if params.get("scheduler"):
        lines.append(f"scheduler = {_toml(params['scheduler'])}")
    lines.append("")
    path = run_dir / "deswm.toml"
    path.write_text("\n".join(lines))
    return path


def _archive_dir(params: dict[str, Any]) -> Path:
    return Path(params.get("archive_dir") or Path(params["run_dir"]) / "archive")


def _barrier(params: dict[str, Any]) -> None:
    """For concurrent partitions: say ready, wait for the parent's go."""
    ready, go = params.get("ready_file"), params.get("go_file")
    if not ready or not go:
        return
    Path(ready).write_text("ready")
    deadline = time.monotonic() + 600
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            raise TimeoutError("the parent never said go")
        time.sleep(0.002)


def deswm_cycle(params: dict[str, Any]) -> dict[str, Any]:
    """One deswm cycle over the whole window (one partition of ``partitions``)."""
    import sqlalchemy as sa

    from deswm import Archive, DesRouter, load_config

    run_dir = Path(params["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    archive_dir = _archive_dir(params)
    clean = not params.get("keep_archive")
    if clean:
        shutil.rmtree(archive_dir, ignore_errors=True)
    os.environ["TMPDIR"] = str(run_dir)  # spill files (none expected) stay in the run dir
    if params["db"] == "sqlite" and not params.get("keep_watermark"):
        (run_dir / "watermark.sqlite3").unlink(missing_ok=True)  # every run starts afresh
    config = load_config(_deswm_config(params, run_dir))
    timer = SqlTimer().install()
    partition = int(params.get("partition", 0))
    _, end = _window(params)
    orchestrator = config.build_orchestrator(partition=partition, clock=_clock(end))
    engine = orchestrator.store.engine  # type: ignore[attr-defined]
    pg = params["db"] == "postgresql"
    if pg and partition == 0 and not params.get("keep_watermark"):
        with engine.begin() as conn:
            for table in (_WM_TABLE + "_history", _WM_TABLE):
                conn.execute(sa.text(f'DROP TABLE IF EXISTS "{params["pg_schema"]}"."{table}"'))
    # Setup, not timed: reflect the source table, create and initialise the watermark
    # (one-time costs of a pipeline, not of a cycle).
    orchestrator.source.table  # type: ignore[attr-defined]  # noqa: B018
    if orchestrator.store.get(orchestrator.key) is None:
        orchestrator.store.initialize(
            orchestrator.key,
            orchestrator.initial_position(),
            lag=orchestrator.lag,
            partitions=orchestrator.partition.count,
        )
    fetched = _count_source_rows(orchestrator, pushdown=bool(params.get("pushdown", True)))
    before_lsn = wal_lsn(engine) if pg else None
    busy = other_pg_activity(engine) if pg else None
    timer.reset()
    rss_before = peak_rss_mib()
    load = load_average()
    _barrier(params)
    workers = _DaskWorkers(params.get("scheduler"))
    cpu = _times()
    workers_cpu = workers.times()
    wall_start = time.time()
    started = time.perf_counter()
    result = orchestrator.run_cycle()
    seconds = time.perf_counter() - started
    wall_end = time.time()
    orchestrator.close()  # lane processes end: their CPU counts (os.times children)
    cpu_used = _cpu_since(cpu)
    for kind, used in workers.since(workers_cpu).items():
        cpu_used[kind] = round(cpu_used[kind] + used, 3)  # Dask workers are no children
    workers.close()
    sql = timer.snapshot()
    wal = wal_bytes_since(engine, before_lsn) if before_lsn is not None else None
    peak = peak_rss_mib()
    out: dict[str, Any] = {
        "seconds": round(seconds, 3),
        "wall_start": wall_start,
        "wall_end": wall_end,
        "cpu": cpu_used,
        "load_before": load,
        "load_after": load_average(),
        "files": result.files,
        "bytes_in": result.bytes_in,
        "bytes_out": result.bytes_out,
        "shards": result.shards_written,
        "n_bits": int(params.get("n_bits", 8)),
        "lanes": int(params.get("lanes", 1)),
        "executor": params.get("executor") or "auto",
        "buckets": result.buckets_committed,
        "failures": len(result.failures),
        "sql": sql,
        "source_rows_updated": sum(
            n for table, n in sql["rows_changed"].items() if table.endswith(_source_table(params))
        ),
        "watermark_writes": sum(
            n
            for table, n in sql["rows_changed"].items()
            if _WM_TABLE in table or "deswm_watermark" in table
        ),
        "wal_bytes": wal,
        "other_pg_backends_busy": busy,
        "peak_rss_mib": round(peak, 1),
        "rss_before_cycle_mib": round(rss_before, 1),
        "source_rows": None if fetched is None else fetched[0],
    }
    shared = int(params.get("partitions", 1)) > 1
    expected = params.get("expect_files")
    if expected is not None and result.files != expected:
        raise RuntimeError(f"the cycle packed {result.files} files, expected {expected}")
    out["archive_bytes"] = _dir_bytes(archive_dir) if archive_dir.exists() and not shared else 0
    out["verified"] = _verify(params, archive_dir, Archive, DesRouter)
    # The archive stays until the parent cleans up at the end: deleting thousands of
    # files right before the next run makes its file creation slower (ext4 skips
    # recently freed inodes), which would tax whichever run comes next.
    return out


def lane(params: dict[str, Any]) -> dict[str, Any]:
    """One packing lane over the whole window: ``read_many``, ``DesBucketWriter.add`` and
    ``publish`` per bucket, the work a lane process does for its batches of rows.

    The rows are fetched and decoded before the clock starts (that is the coordinator's
    work); what counts is the process CPU (user + system, every thread) of the lane's
    part, to be compared per file with the Python loop's over the same files.
    """
    from deswm import load_config
    from deswm._errors import FileReadError
    from deswm._model import Window

    run_dir = Path(params["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    archive_dir = _archive_dir(params)
    shutil.rmtree(archive_dir, ignore_errors=True)
    os.environ["TMPDIR"] = str(run_dir)
    (run_dir / "watermark.sqlite3").unlink(missing_ok=True)
    config = load_config(_deswm_config(params, run_dir))
    start, end = _window(params)
    orchestrator = config.build_orchestrator(clock=_clock(end))
    router, reader, packer = orchestrator.router, orchestrator.reader, orchestrator.packer
    batches: dict[datetime, list[Any]] = {}
    for record in orchestrator.source.iter_records(Window(start, end)):
        batches.setdefault(router.bucket_start(record.created_at), []).append(record)
    load = load_average()
    cpu = _times()
    started = time.perf_counter()
    files = bytes_in = bytes_out = shards = 0
    for bucket, records in batches.items():
        with packer.open_bucket(bucket) as writer:
            for record, data in reader.read_many(records):
                if isinstance(data, FileReadError):
                    raise data
                writer.add(record, data)
            result = writer.publish()
        files += result.files
        bytes_in += result.bytes_in
        bytes_out += result.bytes_out
        shards += len(result.shards)
    seconds = time.perf_counter() - started
    cpu_used = _cpu_since(cpu)
    expected = params.get("expect_files")
    if expected is not None and files != expected:
        raise RuntimeError(f"the lane packed {files} files, expected {expected}")
    return {
        "seconds": round(seconds, 3),
        "cpu": cpu_used,
        "load_before": load,
        "load_after": load_average(),
        "files": files,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "shards": shards,
        "buckets": len(batches),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


class _WholeWindow:
    """A source without partition pushdown: the orchestrator filters in Python."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def iter_records(self, window: Any) -> Any:
        return self.inner.iter_records(window)

    def pending_stats(self, window: Any) -> Any:
        return self.inner.pending_stats(window)

    def location_references(self, locations: Any) -> Any:
        return self.inner.location_references(locations)


def _count_source_rows(orchestrator: Any, *, pushdown: bool) -> list[int] | None:
    """For partitions: count the rows the source hands over (a one-item list, filled
    while the cycle runs). ``pushdown=False`` hides the source's partition filter."""
    if orchestrator.partition.count == 1:
        return None
    if not pushdown:
        orchestrator.source = _WholeWindow(orchestrator.source)
    counter = [0]
    source = orchestrator.source
    for name in ("iter_records", "iter_partition_records"):
        inner = getattr(source, name, None)
        if inner is None:
            continue

        def counted(*args: Any, _inner: Any = inner, **kwargs: Any) -> Any:
            for record in _inner(*args, **kwargs):
                counter[0] += 1
                yield record

        setattr(source, name, counted)
    return counter


def _source_table(params: dict[str, Any]) -> str:
    return "files" if params["db"] == "sqlite" else str(params["pg_table"]).lower()


def _verify(params: dict[str, Any], archive_dir: Path, archive_type: Any, router_type: Any) -> int:
    """Read a sample of rows back from the archive and compare bytes (not timed)."""
    sample = int(params.get("verify_sample", 50))
    if sample <= 0 or int(params.get("partitions", 1)) > 1:
        return 0
    rows = _sample_rows(params["sqlite_path"], sample)
    archive = archive_type(str(archive_dir), router_type(int(params.get("n_bits", 8))))
    for uid, created_at, location in rows:
        data = archive.get(uid, created_at)
        expected = Path(params["files_root"], location).read_bytes()
        if data != expected:
            raise AssertionError(f"archived bytes of {uid} differ from the source")
    return len(rows)


def _sample_rows(sqlite_path: str, count: int, seed: int = 7) -> list[tuple[str, datetime, str]]:
    db = sqlite3.connect(sqlite_path)
    try:
        total = db.execute("SELECT max(rowid) FROM files").fetchone()[0]
        rng = random.Random(seed)
        picks = sorted(rng.sample(range(1, total + 1), min(count, total)))
        rows = []
        for rowid in picks:
            uid, created, location = db.execute(
                "SELECT uid, created_at, file_location FROM files WHERE rowid = ?", (rowid,)
            ).fetchone()
            rows.append((uid, _aware(created), location))
        return rows
    finally:
        db.close()


# --- native ---------------------------------------------------------------------------------


def native(params: dict[str, Any]) -> dict[str, Any]:
    """``tar --sort=name -cf - -C root -T list | zstd -3 -T0 -o out.tar.zst``."""
    run_dir = Path(params["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    out = run_dir / "out.tar.zst"
    out.unlink(missing_ok=True)
    timer = shutil.which("time") or ("/usr/bin/time" if os.path.exists("/usr/bin/time") else None)
    tar_rss, zstd_rss = run_dir / "tar.rss", run_dir / "zstd.rss"
    tar_cmd = ["tar", "--sort=name", "-cf", "-", "-C", params["files_root"], "-T", params["list"]]
    zstd_cmd = ["zstd", "-3", "-T0", "-q", "-f", "-o", str(out)]
    if timer:
        tar_cmd = [timer, "-f", "%M", "-o", str(tar_rss), *tar_cmd]
        zstd_cmd = [timer, "-f", "%M", "-o", str(zstd_rss), *zstd_cmd]
    load = load_average()
    started = time.perf_counter()
    tar = subprocess.Popen(tar_cmd, stdout=subprocess.PIPE)
    zstd = subprocess.Popen(zstd_cmd, stdin=tar.stdout)
    assert tar.stdout is not None
    tar.stdout.close()
    zstd_code = zstd.wait()
    tar_code = tar.wait()
    seconds = time.perf_counter() - started
    if tar_code or zstd_code:
        raise RuntimeError(f"tar exited {tar_code}, zstd exited {zstd_code}")
    usage = os.times()
    result = {
        "seconds": round(seconds, 3),
        "cpu": {"user": round(usage.children_user, 3), "system": round(usage.children_system, 3)},
        "load_before": load,
        "load_after": load_average(),
        "bytes_out": out.stat().st_size,
        "files": _count_lines(params["list"]),
        "peak_rss_mib": {
            "tar": _read_rss(tar_rss),
            "zstd": _read_rss(zstd_rss),
        },
    }
    out.unlink()
    return result


def _count_lines(path: str) -> int:
    with open(path) as handle:
        return sum(1 for _ in handle)


def _read_rss(path: Path) -> float | None:
    try:
        return round(int(path.read_text().split()[-1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        return None


# --- per-record -------------------------------------------------------------------------------


def _per_record_table(params: dict[str, Any], run_dir: Path) -> tuple[Any, Any, str]:
    """A fresh copy of the source table with an ``archived`` flag (setup, not timed)."""
    import sqlalchemy as sa

    if params["db"] == "sqlite":
        path = run_dir / "per_record.sqlite3"
        shutil.copyfile(params["sqlite_path"], path)
        db = sqlite3.connect(path)
        db.execute("ALTER TABLE files ADD COLUMN archived BOOLEAN NOT NULL DEFAULT 0")
        db.execute(
            "CREATE INDEX ix_files_created_archived ON files (created_at, archived) "
            "WHERE archived = 0"
        )
        db.commit()
        db.close()
        engine = sa.create_engine(f"sqlite:///{path}")
        table_name, schema = "files", None
    else:
        engine = sa.create_engine(params["pg_url"])
        schema = params["pg_schema"]
        table_name = f"per_record_{params['pg_table']}"
        ref = f'"{schema}"."{table_name}"'
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {ref}"))
            conn.execute(
                sa.text(
                    f"CREATE TABLE {ref} AS SELECT uid, created_at, file_location, size_bytes, "
                    f'false AS archived FROM "{schema}"."{params["pg_table"]}"'
                )
            )
            conn.execute(sa.text(f"ALTER TABLE {ref} ADD PRIMARY KEY (uid)"))
            conn.execute(sa.text(f"ALTER TABLE {ref} ALTER COLUMN archived SET NOT NULL"))
            conn.execute(
                sa.text(
                    f'CREATE INDEX "ix_{table_name}_created_archived" ON {ref} '
                    "(created_at, archived) WHERE archived = false"
                )
            )
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text(f"VACUUM ANALYZE {ref}"))
            conn.execute(sa.text("CHECKPOINT"))
    table = sa.Table(table_name, sa.MetaData(), schema=schema, autoload_with=engine)
    return engine, table, table_name


def per_record(params: dict[str, Any]) -> dict[str, Any]:
    """The flag-per-row pipeline deswm replaces, on a copy of the table."""
    import sqlalchemy as sa

    from deswm._container import Compressor, ShardWriter, make_meta
    from deswm._model import SourceRecord
    from deswm._readers import FsspecFileReader

    run_dir = Path(params["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    out_dir = run_dir / "per_record_out"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir()
    timer = SqlTimer().install()
    engine, table, table_name = _per_record_table(params, run_dir)
    _, end = _window(params)
    cutoff = end if params["db"] != "sqlite" else end.replace(tzinfo=None)
    if params["db"] == "sqlite":
        cutoff_value: Any = cutoff.strftime("%Y-%m-%d %H:%M:%S")
        cutoff_bind: Any = sa.literal(cutoff_value, sa.String())
    else:
        cutoff_bind = sa.literal(cutoff, table.c.created_at.type)
    select = (
        sa.select(table.c.uid, table.c.created_at, table.c.file_location)
        .where(table.c.created_at < cutoff_bind, table.c.archived == sa.false())
        .order_by(table.c.created_at)
        .limit(_BATCH)
    )
    reader = FsspecFileReader(root=params["files_root"])
    compressor = Compressor("zstd", 3)
    before_lsn = wal_lsn(engine) if params["db"] == "postgresql" else None
    busy = other_pg_activity(engine) if params["db"] == "postgresql" else None
    timer.reset()
    load = load_average()
    cpu = _times()
    started = time.perf_counter()
    files = batches = bytes_in = bytes_out = 0
    while True:
        with engine.connect() as conn:
            rows = conn.execute(select).fetchall()
        if not rows:
            break
        records = [
            SourceRecord(str(uid), _aware(created), str(location))
            for uid, created, location in rows
        ]
        path = out_dir / f"batch_{batches:06d}.des"
        temp = out_dir / f".batch_{batches:06d}.tmp"
        with open(temp, "wb") as handle:
            writer = ShardWriter(handle)
            for record, data in reader.read_many(records):
                if isinstance(data, BaseException):
                    raise data
                codec, stored = compressor.compress(data)
                meta = make_meta(hashlib.sha256(data).hexdigest(), record.created_at)
                writer.add(record.uid, stored, codec=codec, size=len(data), meta=meta)
                bytes_in += len(data)
            bytes_out += writer.finish()
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
        with engine.begin() as conn:
            conn.execute(
                sa.update(table)
                .where(table.c.uid.in_([r.uid for r in records]))
                .values(archived=True)
            )
        files += len(records)
        batches += 1
    _fsync_dir(out_dir)
    seconds = time.perf_counter() - started
    cpu_used = _cpu_since(cpu)
    sql = timer.snapshot()
    wal = wal_bytes_since(engine, before_lsn) if before_lsn is not None else None
    result = {
        "seconds": round(seconds, 3),
        "cpu": cpu_used,
        "load_before": load,
        "load_after": load_average(),
        "files": files,
        "batches": batches,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "sql": sql,
        "source_rows_updated": sql["rows_changed"].get(
            table_name if table.schema is None else f"{table.schema}.{table_name}".lower(), 0
        )
        or sum(sql["rows_changed"].values()),
        "wal_bytes": wal,
        "other_pg_backends_busy": busy,
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }
    if params["db"] == "postgresql":
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP TABLE "{table.schema}"."{table_name}"'))
    engine.dispose()
    shutil.rmtree(out_dir, ignore_errors=True)
    return result


def _aware(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- the Python loop --------------------------------------------------------------------------


def python_loop(params: dict[str, Any]) -> dict[str, Any]:
    """Read, sha256, zstd-3, append to one file: the floor of per-file work in CPython."""
    import zstandard

    run_dir = Path(params["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    out_path = run_dir / "loop.out"
    root = params["files_root"]
    with open(params["list"]) as listing:
        paths = [os.path.join(root, line.rstrip("\n")) for line in listing]
    compressor = zstandard.ZstdCompressor(level=3)
    load = load_average()
    cpu = _times()
    started = time.perf_counter()
    files = bytes_in = 0
    with open(out_path, "wb") as out:
        for path in paths:
            with open(path, "rb") as handle:
                data = handle.read()
            digest = hashlib.sha256(data).digest()
            packed = compressor.compress(data)
            out.write(len(packed).to_bytes(8, "little") + digest)
            out.write(packed)
            files += 1
            bytes_in += len(data)
        out.flush()
        os.fsync(out.fileno())
    seconds = time.perf_counter() - started
    result = {
        "seconds": round(seconds, 3),
        "cpu": _cpu_since(cpu),
        "load_before": load,
        "load_after": load_average(),
        "files": files,
        "bytes_in": bytes_in,
        "bytes_out": out_path.stat().st_size,
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }
    out_path.unlink()
    return result


# --- retrieval (P7) ---------------------------------------------------------------------------


class _Counter:
    """Counts the calls an archive's store makes to its backend (local) or HTTP (S3)."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def take(self) -> list[str]:
        sent, self.sent = self.sent, []
        return sent

    def local(self, archive: Any) -> None:
        from deswm._objectstore.counting import count_reads

        count_reads(archive.store, self.sent.append)

    def s3(self, archive: Any) -> None:
        archive.store.fs.s3.meta.events.register("before-send.s3", self._seen)

    def _seen(self, request: Any, **_: Any) -> None:
        self.sent.append(f"{request.method} {request.url.split('?')[0].rsplit('/', 1)[-1]}")


def _gets(
    make_archive: Any, count: Any, rows: list[tuple[str, datetime, str]], root: str
) -> dict[str, Any]:
    cold_ms, warm_ms, cold_req, warm_req = [], [], [], []
    for uid, created_at, location in rows:
        archive = make_archive()
        count(archive)
        counter = archive._bench_counter
        expected = Path(root, location).read_bytes()
        started = time.perf_counter()
        data = archive.get(uid, created_at)
        cold_ms.append((time.perf_counter() - started) * 1000)
        cold_req.append(len(counter.take()))
        started = time.perf_counter()
        again = archive.get(uid, created_at)
        warm_ms.append((time.perf_counter() - started) * 1000)
        warm_req.append(len(counter.take()))
        if data != expected or again != expected:
            raise AssertionError(f"Archive.get({uid!r}) returned other bytes")
    return {
        "gets": len(rows),
        "cold_ms_median": round(statistics.median(cold_ms), 3),
        "cold_ms_max": round(max(cold_ms), 3),
        "warm_ms_median": round(statistics.median(warm_ms), 3),
        "warm_ms_max": round(max(warm_ms), 3),
        "cold_requests_max": max(cold_req),
        "cold_requests_median": statistics.median(cold_req),
        "warm_requests_max": max(warm_req),
        "warm_requests_median": statistics.median(warm_req),
    }


def retrieval(params: dict[str, Any]) -> dict[str, Any]:
    """Cold (new ``Archive``) and warm (same ``Archive``) gets, local and on moto S3."""
    from deswm import Archive, DesPacker, DesRouter
    from deswm._model import SourceRecord

    rows = _sample_rows(params["sqlite_path"], int(params.get("gets", 20)), seed=11)
    root = params["files_root"]
    n_bits = int(params.get("n_bits", 8))
    result: dict[str, Any] = {}

    local_dir = params.get("local_archive")
    if local_dir and os.path.isdir(local_dir):

        def local_archive() -> Any:
            return Archive(local_dir, DesRouter(n_bits))

        def count_local(archive: Any) -> None:
            archive._bench_counter = _Counter()
            archive._bench_counter.local(archive)

        result["local"] = _gets(local_archive, count_local, rows, root)

    if params.get("s3", True):
        try:
            from moto.server import ThreadedMotoServer
        except ImportError as exc:
            result["s3"] = {"skipped": f"moto is not installed ({exc})"}
            return result
        import s3fs

        os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            options = {
                "key": "testing",
                "secret": "testing",
                "client_kwargs": {"endpoint_url": f"http://{host}:{port}"},
                "skip_instance_cache": True,
            }
            s3fs.S3FileSystem(**options).mkdir("deswm-bench")
            url = "s3://deswm-bench/archive"
            # One day's first files (a few hundred): with n_bits 4 (16 groups) its
            # parts are larger than the 64 KiB tail, the case that also needs a header
            # read. The gets sample those files.
            s3_bits = int(params.get("s3_n_bits", 4))
            day_rows = _first_rows_of_a_day(params["sqlite_path"], int(params.get("s3_files", 400)))
            bucket = datetime.combine(day_rows[0][1].date(), datetime.min.time(), UTC)
            packer = DesPacker(url, DesRouter(s3_bits), storage_options=options, workers=0)
            with packer.open_bucket(bucket) as writer:
                for uid, created_at, location in day_rows:
                    data = Path(root, location).read_bytes()
                    writer.add(SourceRecord(uid, created_at, location), data)
                writer.publish()
            sizes = [
                part.size
                for part in Archive(url, DesRouter(s3_bits), storage_options=options).shards(bucket)
            ]
            picks = random.Random(13).sample(day_rows, min(len(rows), len(day_rows)))

            def s3_archive() -> Any:
                archive = Archive(url, DesRouter(s3_bits), storage_options=options)
                archive.store.fs.connect()
                return archive

            def count_s3(archive: Any) -> None:
                archive._bench_counter = _Counter()
                archive._bench_counter.s3(archive)

            result["s3"] = _gets(s3_archive, count_s3, picks, root)
            result["s3"]["n_bits"] = s3_bits
            result["s3"]["shard_bytes_median"] = int(statistics.median(sizes)) if sizes else 0
        finally:
            server.stop()
    return result


def _first_rows_of_a_day(sqlite_path: str, limit: int) -> list[tuple[str, datetime, str]]:
    """The first ``limit`` rows of the data set's first day, in ``(created_at, uid)`` order."""
    db = sqlite3.connect(sqlite_path)
    try:
        (first,) = db.execute("SELECT min(created_at) FROM files").fetchone()
        day = datetime.fromisoformat(first).replace(tzinfo=UTC)
        start = day.strftime("%Y-%m-%d")
        end = (day + timedelta(days=1)).strftime("%Y-%m-%d")
        return [
            (uid, _aware(created), location)
            for uid, created, location in db.execute(
                "SELECT uid, created_at, file_location FROM files WHERE created_at >= ? "
                "AND created_at < ? ORDER BY created_at, uid LIMIT ?",
                (start, end, limit),
            )
        ]
    finally:
        db.close()


# --- pending stats (P8) -----------------------------------------------------------------------


def pending_stats(params: dict[str, Any]) -> dict[str, Any]:
    """``SqlSourceProvider.pending_stats`` of the whole window: statements and time."""
    from deswm import SqlSourceProvider
    from deswm._model import Window

    timer = SqlTimer().install()
    provider = SqlSourceProvider(params["sqlite_url"], "files")
    provider.table  # noqa: B018  # reflection is setup, not part of the figure
    start, end = _window(params)
    window = Window(start, end)
    runs = []
    stats = None
    for _ in range(int(params.get("repeat", 3))):
        timer.reset()
        started = time.perf_counter()
        stats = provider.pending_stats(window)
        runs.append({"seconds": time.perf_counter() - started, "statements": timer.statements})
    provider.close()
    assert stats is not None
    return {
        "rows": stats.files,
        "bytes": stats.bytes,
        "statements": max(r["statements"] for r in runs),
        "seconds_first": round(runs[0]["seconds"], 4),
        "seconds_best": round(min(r["seconds"] for r in runs), 4),
        "seconds_all": [round(r["seconds"], 4) for r in runs],
    }


SCENARIOS = {
    "deswm": deswm_cycle,
    "lane": lane,
    "native": native,
    "per_record": per_record,
    "python_loop": python_loop,
    "retrieval": retrieval,
    "pending_stats": pending_stats,
}
