"""The benchmark's data set: seeded files on disk and the source table that names them.

Two profiles (docs/performance.md and /work/shared/design/performance.md):

* ``mixed``: sizes log-normal with median 6.5 KiB and mean about 11 KiB, capped at 1 MiB;
  70 % compressible JSON lines (``.json``), 20 % random bytes (``.bin``), 10 % random bytes
  behind a JPEG header (``.jpg``); optionally a few files above the big-file threshold;
* ``small``: the same mix at about 200 bytes per file, for the scaling series up to
  1,000,000 rows (per-file costs dominate, disk and time stay sane).

Rows are spread uniformly over ``days`` UTC days starting at ``START``; the source table
``files(uid, created_at, file_location, size_bytes)`` has ``uid`` as its primary key and
an index on ``(created_at, uid)``. It is written to SQLite (``source.sqlite3`` in the
data set folder) and, on request, copied to PostgreSQL (schema ``deswm_bench``).

Everything is a pure function of the spec: a data set folder whose ``manifest.json``
matches the spec is reused as is, so repeated runs do not regenerate.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

__all__ = [
    "BENCH_SCHEMA",
    "START",
    "Dataset",
    "DatasetSpec",
    "ensure_dataset",
    "ensure_postgres_table",
    "warm_page_cache",
]

START = datetime(2024, 5, 1, tzinfo=UTC)
"""First day of every data set (fixed, so runs are comparable)."""

BENCH_SCHEMA = "deswm_bench"
"""PostgreSQL schema holding the benchmark's tables."""

_FORMAT = 3
"""Bumped whenever the generator changes, so stale caches are rebuilt."""

_MIXED = {"median": 6.5 * 1024, "sigma": math.sqrt(2 * math.log(11 / 6.5)), "cap": 2**20}
_SMALL = {"median": 180.0, "sigma": 0.45, "cap": 4096}
_MIN_SIZE = 16
_BIG_SIZE = 12 * 2**20
"""Size of the optional big files: above deswm's default 10 MiB big-file threshold."""
_EVENTS = (b"view", b"click", b"scroll", b"purchase", b"login", b"logout", b"search", b"share")
_JPEG_HEAD = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
_BATCH = 20_000


@dataclass(frozen=True)
class DatasetSpec:
    """What to generate; equal specs give byte-identical data sets."""

    files: int
    profile: str = "mixed"
    days: int = 20
    seed: int = 20241122
    big_files: int = 0

    def __post_init__(self) -> None:
        if self.profile not in ("mixed", "small"):
            raise ValueError(f"profile must be 'mixed' or 'small', got {self.profile!r}")
        if self.files < 1 or self.days < 1 or self.big_files < 0:
            raise ValueError(f"bad data set spec {self}")

    @property
    def key(self) -> str:
        big = f"-big{self.big_files}" if self.big_files else ""
        return f"{self.profile}-{self.files}-d{self.days}-s{self.seed}{big}"

    @property
    def window(self) -> tuple[datetime, datetime]:
        return START, START + timedelta(days=self.days)


@dataclass(frozen=True)
class Dataset:
    """A generated data set on disk."""

    spec: DatasetSpec
    root: Path
    manifest: dict[str, Any]

    @property
    def files_root(self) -> Path:
        return self.root / "files"

    @property
    def sqlite_path(self) -> Path:
        return self.root / "source.sqlite3"

    @property
    def sqlite_url(self) -> str:
        return f"sqlite:///{self.sqlite_path}"

    @property
    def list_path(self) -> Path:
        """Relative paths (to :attr:`files_root`) in ``(created_at, uid)`` order."""
        return self.root / "list.txt"

    @property
    def table(self) -> str:
        return "files"

    @property
    def pg_table(self) -> str:
        return "files_" + self.spec.key.replace("-", "_")

    @property
    def count(self) -> int:
        return int(self.manifest["files"])

    @property
    def bytes(self) -> int:
        return int(self.manifest["bytes"])

    def paths(self) -> Iterator[Path]:
        with self.list_path.open() as listing:
            for line in listing:
                yield self.files_root / line.rstrip("\n")


def ensure_dataset(work_dir: Path, spec: DatasetSpec, *, log: Any = print) -> Dataset:
    """The data set for ``spec`` under ``work_dir/datasets``, generated if missing."""
    root = work_dir / "datasets" / spec.key
    manifest_path = root / "manifest.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("spec") == asdict(spec) and manifest.get("format") == _FORMAT:
            return Dataset(spec, root, manifest)
    if root.exists():
        shutil.rmtree(root)
    log(f"generating data set {spec.key} in {root} ...")
    started = time.perf_counter()
    manifest = _generate(root, spec)
    manifest["generated_in_s"] = round(time.perf_counter() - started, 1)
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")  # written last: complete
    log(
        f"  {manifest['files']:,} files, {manifest['bytes'] / 1e6:,.1f} MB "
        f"in {manifest['generated_in_s']} s"
    )
    return Dataset(spec, root, manifest)


# --- generation -------------------------------------------------------------------------


def _sizes(rng: random.Random, spec: DatasetSpec) -> tuple[float, float, int]:
    shape = _MIXED if spec.profile == "mixed" else _SMALL
    return math.log(shape["median"]), shape["sigma"], int(shape["cap"])


def _json_payload(rng: random.Random, size: int, ident: int) -> bytes:
    lines = []
    total = 0
    seq = 0
    base = 1_714_521_600_000 + ident
    while total < size:
        line = b'{"id":%d,"seq":%d,"ts":%d,"user":"u%06d","event":"%s","value":%d,"ok":%s}\n' % (
            ident,
            seq,
            base + rng.randrange(86_400_000),
            rng.randrange(1_000_000),
            _EVENTS[rng.randrange(8)],
            rng.getrandbits(32),
            b"true" if rng.getrandbits(1) else b"false",
        )
        lines.append(line)
        total += len(line)
        seq += 1
    return b"".join(lines)[:size]


def _payload(rng: random.Random, kind: str, size: int, ident: int) -> bytes:
    if kind == "json":
        return _json_payload(rng, size, ident)
    if kind == "jpg":
        head = _JPEG_HEAD[:size]
        return head + rng.randbytes(size - len(head))
    return rng.randbytes(size)


def _kind(rng: random.Random) -> str:
    r = rng.random()
    return "json" if r < 0.7 else "bin" if r < 0.9 else "jpg"


def _generate(root: Path, spec: DatasetSpec) -> dict[str, Any]:
    files_root = root / "files"
    files_root.mkdir(parents=True)
    rng = random.Random(spec.seed)
    mu, sigma, cap = _sizes(rng, spec)
    # Rows per day: as even as possible; big files (if any) go to the middle day.
    per_day = [
        spec.files // spec.days + (1 if d < spec.files % spec.days else 0) for d in range(spec.days)
    ]
    big_day = spec.days // 2
    kinds: dict[str, dict[str, int]] = {}
    db = sqlite3.connect(root / "source.sqlite3")
    db.execute(
        "CREATE TABLE files (uid VARCHAR(64) NOT NULL PRIMARY KEY, created_at DATETIME NOT NULL, "
        "file_location TEXT NOT NULL, size_bytes BIGINT)"
    )
    total_bytes = 0
    index = 0
    biggest = 0
    with (root / "list.txt").open("w") as listing:
        for day in range(spec.days):
            day_start = START + timedelta(days=day)
            folder = day_start.strftime("%Y%m%d")
            (files_root / folder).mkdir()
            count = per_day[day]
            offsets = sorted(rng.randrange(86_400_000_000) for _ in range(count))
            big_at = set()
            if day == big_day and spec.big_files:
                big_at = set(range(0, count, max(1, count // spec.big_files))[: spec.big_files])
            rows = []
            for position, micros in enumerate(offsets):
                kind = _kind(rng)
                if position in big_at:
                    kind, size = "bin", _BIG_SIZE
                else:
                    size = min(cap, max(_MIN_SIZE, int(rng.lognormvariate(mu, sigma))))
                uid = f"f{index:08d}.{kind}"
                data = _payload(rng, kind, size, index)
                relative = f"{folder}/{uid}"
                with open(files_root / folder / uid, "wb") as handle:
                    handle.write(data)
                created = (day_start + timedelta(microseconds=micros)).replace(tzinfo=None)
                rows.append((uid, created.strftime("%Y-%m-%d %H:%M:%S.%f"), relative, size))
                listing.write(relative + "\n")
                stats = kinds.setdefault(kind, {"files": 0, "bytes": 0})
                stats["files"] += 1
                stats["bytes"] += size
                total_bytes += size
                biggest = max(biggest, size)
                index += 1
                if len(rows) >= _BATCH:
                    db.executemany("INSERT INTO files VALUES (?, ?, ?, ?)", rows)
                    rows = []
            db.executemany("INSERT INTO files VALUES (?, ?, ?, ?)", rows)
    db.execute("CREATE INDEX ix_files_created_at_uid ON files (created_at, uid)")
    db.commit()
    db.execute("ANALYZE")
    db.close()
    sizes_mean = total_bytes / max(index, 1)
    window = spec.window
    return {
        "format": _FORMAT,
        "spec": asdict(spec),
        "files": index,
        "bytes": total_bytes,
        "mean_size": round(sizes_mean, 1),
        "largest": biggest,
        "kinds": kinds,
        "window": [window[0].isoformat(), window[1].isoformat()],
    }


# --- PostgreSQL -------------------------------------------------------------------------


def ensure_postgres_table(dataset: Dataset, pg_url: str, *, log: Any = print) -> str:
    """Copy the data set's table to ``deswm_bench.<pg_table>`` unless it is there; its name."""
    import psycopg
    import sqlalchemy as sa

    url = sa.make_url(pg_url)
    conninfo = _conninfo(url)
    table = dataset.pg_table
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{BENCH_SCHEMA}"')
        found = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s "
            "AND table_name = %s",
            (BENCH_SCHEMA, table),
        ).fetchone()
        if found and found[0]:
            rows = conn.execute(f'SELECT count(*) FROM "{BENCH_SCHEMA}"."{table}"').fetchone()
            if rows and rows[0] == dataset.count:
                return table
            conn.execute(f'DROP TABLE "{BENCH_SCHEMA}"."{table}"')
        log(f"copying {dataset.count:,} rows to PostgreSQL {BENCH_SCHEMA}.{table} ...")
        conn.execute(
            f'CREATE TABLE "{BENCH_SCHEMA}"."{table}" (uid VARCHAR(64) NOT NULL PRIMARY KEY, '
            "created_at TIMESTAMPTZ NOT NULL, file_location TEXT NOT NULL, size_bytes BIGINT)"
        )
        source = sqlite3.connect(dataset.sqlite_path)
        try:
            with (
                conn.cursor() as cursor,
                cursor.copy(
                    f'COPY "{BENCH_SCHEMA}"."{table}" (uid, created_at, file_location, size_bytes) '
                    "FROM STDIN"
                ) as copy,
            ):
                for uid, created, location, size in source.execute(
                    "SELECT uid, created_at, file_location, size_bytes FROM files"
                ):
                    copy.write_row((uid, created + "+00", location, size))
        finally:
            source.close()
        conn.execute(
            f'CREATE INDEX "ix_{table}_created_at_uid" ON "{BENCH_SCHEMA}"."{table}" '
            "(created_at, uid)"
        )
        conn.execute(f'ANALYZE "{BENCH_SCHEMA}"."{table}"')
    return table


def _conninfo(url: Any) -> str:
    parts = {
        "host": url.host,
        "port": url.port,
        "dbname": url.database,
        "user": url.username,
        "password": url.password,
    }
    return " ".join(f"{k}={v}" for k, v in parts.items() if v is not None)


# --- page cache -------------------------------------------------------------------------


def warm_page_cache(dataset: Dataset) -> float:
    """Read every file (and the SQLite database) once; return the seconds it took."""
    started = time.perf_counter()
    for path in [*dataset.paths(), dataset.sqlite_path]:
        fd = os.open(path, os.O_RDONLY)
        try:
            while os.read(fd, 1 << 20):
                pass
        finally:
            os.close(fd)
    return time.perf_counter() - started
