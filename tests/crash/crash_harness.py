"""The crash harness: worlds to archive, killed child runs, and the checks after each kill.

A :class:`World` is one source table (SQLite or PostgreSQL) with its files on local disk,
a watermark in the same database, a destination (a local folder or an S3 bucket on the
moto server) and the ``deswm.toml`` that ties them together. Triggers in the database
record every committed watermark write and every write to the source table, so checks
see what child processes did, not only what the test process did.

A :class:`Scenario` is a list of steps run before the crash (clean, in the test process),
a mutation of the world (late rows, deleted source files, a foreign shard layout), and
the steps a child process runs with ``DESWM_CRASH_AT`` set. After the kill the checks
are:

* G11: every shard object parses and every entry decodes and matches its checksum;
  every ``_bigFiles/<sha256>`` holds exactly the bytes of its name; nothing else is
  visible except hidden temp files, which the archive ignores;
* G1: every row below the committed watermark reads back byte-identical through
  :class:`deswm._archive.Archive` (rows whose source files were deleted included);
* G4/G5: the audit of committed watermark writes only moves forward (except manual
  ``set`` calls, matched with the history table), by one version per write, to UTC
  midnights; the source table received no write.

Then the temp files are backdated past the cleanup threshold, the rest of the steps is
rerun (in the test process, without crash) and the final objects must equal a clean
run's on a fresh destination byte for byte (G2/G3), with no temp file left.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import pytest
import sqlalchemy as sa
from crash_driver import Action, Recorder, Step, done_steps, run_steps

from deswm._archive import Archive
from deswm._checkpoints import POINTS
from deswm._container import ShardWriter, decode_payload, read_shard
from deswm._manifest import MANIFESTS, BucketManifest
from deswm._model import Watermark, WatermarkKey
from deswm._routing import DesRouter
from deswm._shardio import BIG_FILES, ShardStore, parse_part_name
from deswm._sqltypes import UtcDateTime
from deswm._stores.sql import SqlWatermarkStore
from deswm._timeutil import floor_day

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "crash_driver.py"

# --- the data ---------------------------------------------------------------------------

PIPELINE = "crash"
KEY = WatermarkKey(PIPELINE)
N_BITS = 4  # the smallest DES allows: 16 groups per day
BIG_THRESHOLD = 2048
MAX_SHARD_SIZE = 700
SPILL_THRESHOLD = 4096
PAGE_SIZE = 4
INITIAL = datetime(2024, 5, 9, tzinfo=UTC)
DAYS = tuple(datetime(2024, 5, 10 + i, tzinfo=UTC) for i in range(5))  # 10..14 May
NOW_FIRST = datetime(2024, 5, 14, 9, tzinfo=UTC)  # lag 1 day: target 13 May (10, 11, 12)
NOW_SECOND = datetime(2024, 5, 16, 9, tzinfo=UTC)  # target 15 May (11..14 on a replay)
REPLAY_FROM = DAYS[1]
ROUTER = DesRouter(N_BITS)

EXECUTOR = "threads"
"""Where the crash suite's lanes run: threads of the killed process itself, so a kill at
any point (lane points included) is the whole runner's power cut, and every point is
counted in the process that reaches it. Lanes in processes: test_lane_crashes.py."""
LANES = 2

LOCAL_ONLY_POINTS = frozenset(p for p in POINTS if p.startswith("shardio."))
"""Points of the local-disk publish (temp file, fsync, rename, link): unreachable on S3."""

TEMP_AGE = timedelta(hours=2)
"""How far leftover temp files are backdated (the cleanup threshold is one hour)."""


@dataclass(frozen=True)
class Row:
    """One source row and the bytes of its file."""

    uid: str
    created_at: datetime
    location: str
    data: bytes
    late: bool = False
    """Inserted after the first run, below the committed watermark (needs a replay)."""


def _payload(rng: random.Random, kind: int) -> bytes:
    if kind % 2:
        lines = [json.dumps({"n": rng.randrange(10**6), "tag": "crash"}) for _ in range(8)]
        return "\n".join(lines[: rng.randint(1, 8)]).encode()
    return rng.randbytes(rng.randint(30, 450))


def base_rows(per_day: int) -> list[Row]:
    """Rows over five days: a midnight row, a tie, an empty file, big files (one shared)."""
    rng = random.Random(20240510)
    shared_big = rng.randbytes(BIG_THRESHOLD + 700)
    rows = []
    for day in DAYS:
        for i in range(per_day):
            if i == 0:
                at = day  # exactly midnight: belongs to the day it starts
            elif i in (1, 2):
                at = day + timedelta(hours=3)  # a tie on created_at
            else:
                at = day + timedelta(
                    seconds=rng.randrange(4 * 3600, 86400), microseconds=rng.randrange(10**6)
                )
            if i == 3:
                data = b""
            elif i == 4:
                data = rng.randbytes(rng.randint(BIG_THRESHOLD + 1, 2 * BIG_THRESHOLD))
            elif i == 5:
                data = shared_big  # same content every day: one _bigFiles object
            else:
                data = _payload(rng, i)
            uid = f"{day:%m%d}-{i:02d}-{rng.randrange(16**4):04x}"
            rows.append(Row(uid, at, f"{day:%Y%m%d}/{uid}.dat", data))
    return rows


@dataclass(frozen=True)
class ReplayChange:
    """What the replay scenario does to a world after its first run."""

    deleted: tuple[str, ...]
    late: tuple[Row, ...]
    duplicate_group: int
    """The group of day 1 that gets a foreign part holding only a duplicate entry."""


def _uid_in_group(prefix: str, group: int, rng: random.Random) -> str:
    while True:
        uid = f"{prefix}-{rng.randrange(16**6):06x}"
        if ROUTER.shard_index(uid) == group:
            return uid


def replay_change(rows: Sequence[Row]) -> ReplayChange:
    """Delete some archived files of days 1 and 2 and add late rows to both days.

    One late row lands right after a deleted row in the same group, so its part holds
    both kept bytes (copied from the old part) and new bytes.
    """
    rng = random.Random(7)
    day1 = sorted((r for r in rows if floor_day(r.created_at) == DAYS[1]), key=_order)
    day2 = sorted((r for r in rows if floor_day(r.created_at) == DAYS[2]), key=_order)
    small1 = [r for r in day1 if 0 < len(r.data) <= BIG_THRESHOLD]
    victim = small1[len(small1) // 2]
    big1 = next(r for r in day1 if r.uid.split("-")[1] == "04")
    empty1 = next(r for r in day1 if not r.data)
    small2 = [r for r in day2 if 0 < len(r.data) <= BIG_THRESHOLD]
    deleted = (victim.uid, big1.uid, empty1.uid, small2[-1].uid)
    victim_group = ROUTER.shard_index(victim.uid)

    def late(uid: str, at: datetime, data: bytes) -> Row:
        return Row(uid, at, f"late/{uid}.dat", data, late=True)

    late_rows = (
        late(
            _uid_in_group("late11a", victim_group, rng),
            victim.created_at + timedelta(microseconds=1),
            _payload(rng, 1),
        ),
        late(
            f"late11b-{rng.randrange(16**4):04x}", DAYS[1] + timedelta(hours=12), _payload(rng, 2)
        ),
        late(
            f"late11c-{rng.randrange(16**4):04x}",
            DAYS[1] + timedelta(hours=23, minutes=59, seconds=59, microseconds=999_999),
            rng.randbytes(BIG_THRESHOLD + 300),
        ),
        late(f"late12a-{rng.randrange(16**4):04x}", DAYS[2], _payload(rng, 3)),
        late(f"late12b-{rng.randrange(16**4):04x}", DAYS[2] + timedelta(hours=1), _payload(rng, 4)),
    )
    kept_groups = {ROUTER.shard_index(r.uid) for r in day1 if r.uid not in deleted}
    others = sorted(kept_groups - {victim_group}) or sorted(kept_groups)
    return ReplayChange(deleted, late_rows, others[0])


def _order(row: Row) -> tuple[datetime, str]:
    return row.created_at, row.uid


# --- scenarios ----------------------------------------------------------------------------


def cycle(now: datetime) -> dict[str, str]:
    return {"op": "cycle", "now": now.isoformat()}


def manual_set(position: datetime, reason: str) -> dict[str, str]:
    return {"op": "set", "position": position.isoformat(), "reason": reason}


@dataclass(frozen=True)
class Scenario:
    """Steps before the crash, a change of the world, and the steps a child runs."""

    name: str
    before: tuple[Step, ...]
    crash: tuple[Step, ...]
    final: datetime
    replay: bool = False
    """Whether the world is changed between the two (see :func:`replay_change`)."""
    late: bool = False
    """Whether only the late rows of :func:`replay_change` are inserted between the two
    (below the committed watermark: the crash steps reconcile and repair them)."""


SCENARIOS = {
    "fresh": Scenario(  # an empty store and destination; one cycle archives 10-12 May
        "fresh",
        before=(),
        crash=(cycle(NOW_FIRST),),
        final=datetime(2024, 5, 13, tzinfo=UTC),
    ),
    "replay": Scenario(  # after 10-12 May were archived: set back to 11 May, archive 11-14
        "replay",
        before=(cycle(NOW_FIRST),),
        crash=(manual_set(REPLAY_FROM, "crash test: replay 11 May"), cycle(NOW_SECOND)),
        final=datetime(2024, 5, 15, tzinfo=UTC),
        replay=True,
    ),
    "late": Scenario(  # after 10-12 May were archived: late rows in 11-12 May, repaired
        "late",
        before=(cycle(NOW_FIRST),),
        crash=({"op": "reconcile"},),
        final=datetime(2024, 5, 13, tzinfo=UTC),
        late=True,
    ),
}


# --- backends -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Destination:
    url: str
    storage_options: Mapping[str, Any]
    kind: str  # "local" or "s3"


POSTGRES_URL = os.environ.get(
    "DESWM_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REQUIRE_SERVICES = os.environ.get("DESWM_REQUIRE_SERVICES", "") not in ("", "0")


def unavailable(name: str, reason: str) -> NoReturn:
    message = f"{name} unavailable for the crash tests ({reason})"
    if REQUIRE_SERVICES:
        pytest.fail(f"DESWM_REQUIRE_SERVICES=1 but {message}", pytrace=False)
    pytest.skip(message)


class Provisioner:
    """Fresh databases and destinations on demand; everything is dropped at the end."""

    def __init__(self, root: Path, moto: Any | None) -> None:
        self.root = root
        self.moto = moto
        self._stack = contextlib.ExitStack()

    def close(self) -> None:
        self._stack.close()

    def on_close(self, callback: Callable[[], object]) -> None:
        self._stack.callback(callback)

    def folder(self, name: str) -> Path:
        path = self.root / f"{name}-{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        return path

    def sql_url(self, kind: str, folder: Path) -> str:
        if kind == "sqlite":
            return f"sqlite:///{folder / 'world.sqlite3'}"
        if kind != "postgresql":  # pragma: no cover - a typo in a parametrisation
            raise ValueError(kind)
        admin = sa.create_engine(POSTGRES_URL, poolclass=sa.pool.NullPool)
        schema = f"deswm_crash_{uuid.uuid4().hex[:10]}"
        try:
            with admin.begin() as conn:
                conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        except sa.exc.OperationalError as exc:
            admin.dispose()
            unavailable("postgresql", str(exc).splitlines()[0])
        self._stack.callback(_drop_schema, admin, schema)
        url = sa.make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
        return url.render_as_string(hide_password=False)

    def destination(self, kind: str, folder: Path) -> Destination:
        if kind == "local":
            return Destination(str(folder / "archive"), {}, "local")
        if self.moto is None:  # pragma: no cover - the fixture always sets it
            unavailable("s3", "no moto server")
        bucket = self.moto.new_bucket()
        return Destination(f"s3://{bucket}/archive", dict(self.moto.storage_options), "s3")


def _drop_schema(admin: sa.Engine, schema: str) -> None:
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


# --- a world ------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)  # pragma: no cover


def _toml(sections: Mapping[str, Mapping[str, Any]]) -> str:
    lines = []
    for name, settings in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in settings.items())
        lines.append("")
    return "\n".join(lines)


_AUDIT = sa.MetaData()
AUDIT = sa.Table(
    "crash_audit",
    _AUDIT,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("op", sa.String(64), nullable=False),
    sa.Column("old_position", UtcDateTime(), nullable=True),
    sa.Column("new_position", UtcDateTime(), nullable=True),
    sa.Column("old_version", sa.BigInteger, nullable=True),
    sa.Column("new_version", sa.BigInteger, nullable=True),
)

_SQLITE_TRIGGERS = (
    """CREATE TRIGGER crash_audit_wm_insert AFTER INSERT ON deswm_watermark BEGIN
       INSERT INTO crash_audit (op, new_position, new_version)
       VALUES ('INSERT', NEW.position, NEW.version); END""",
    """CREATE TRIGGER crash_audit_wm_update AFTER UPDATE ON deswm_watermark BEGIN
       INSERT INTO crash_audit (op, old_position, new_position, old_version, new_version)
       VALUES ('UPDATE', OLD.position, NEW.position, OLD.version, NEW.version); END""",
    """CREATE TRIGGER crash_audit_src_update AFTER UPDATE ON files BEGIN
       INSERT INTO crash_audit (op) VALUES ('SOURCE UPDATE'); END""",
    """CREATE TRIGGER crash_audit_src_delete AFTER DELETE ON files BEGIN
       INSERT INTO crash_audit (op) VALUES ('SOURCE DELETE'); END""",
)
_PG_TRIGGERS = (
    """CREATE FUNCTION crash_audit_wm_insert() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN INSERT INTO crash_audit (op, new_position, new_version)
       VALUES ('INSERT', NEW.position, NEW.version); RETURN NEW; END $$""",
    """CREATE FUNCTION crash_audit_wm_update() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN INSERT INTO crash_audit (op, old_position, new_position, old_version, new_version)
       VALUES ('UPDATE', OLD.position, NEW.position, OLD.version, NEW.version); RETURN NEW;
       END $$""",
    """CREATE FUNCTION crash_audit_source() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN INSERT INTO crash_audit (op) VALUES ('SOURCE ' || TG_OP); RETURN NULL; END $$""",
    """CREATE TRIGGER crash_audit_wm_insert AFTER INSERT ON deswm_watermark
       FOR EACH ROW EXECUTE FUNCTION crash_audit_wm_insert()""",
    """CREATE TRIGGER crash_audit_wm_update AFTER UPDATE ON deswm_watermark
       FOR EACH ROW EXECUTE FUNCTION crash_audit_wm_update()""",
    """CREATE TRIGGER crash_audit_source AFTER UPDATE OR DELETE OR TRUNCATE ON files
       FOR EACH STATEMENT EXECUTE FUNCTION crash_audit_source()""",
)


@dataclass(frozen=True)
class AuditRow:
    op: str
    old_position: datetime | None
    new_position: datetime | None
    old_version: int | None
    new_version: int | None


@dataclass
class ChildOutcome:
    """How a child ended: its return code, what it reported, its output."""

    returncode: int
    result: dict[str, Any] | None
    counts: dict[str, int] | None
    stdout: str
    stderr: str
    seconds: float

    def explain(self) -> str:
        return (
            f"returncode={self.returncode} result={self.result} "
            f"stderr={self.stderr[-3000:]!r} stdout={self.stdout[-1000:]!r}"
        )


class Child:
    """A running driver process."""

    def __init__(self, proc: subprocess.Popen[str], run_dir: Path) -> None:
        self.proc = proc
        self.run_dir = run_dir
        self.started = time.monotonic()

    def wait(self, timeout: float = 120.0) -> ChildOutcome:
        try:
            stdout, stderr = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            stdout, stderr = self.proc.communicate()
            pytest.fail(f"crash driver hung for {timeout}s: {stderr[-3000:]}")
        result_file = self.run_dir / "result.json"
        counts_file = self.run_dir / "counts.json"
        return ChildOutcome(
            returncode=self.proc.returncode,
            result=json.loads(result_file.read_text()) if result_file.exists() else None,
            counts=json.loads(counts_file.read_text()) if counts_file.exists() else None,
            stdout=stdout,
            stderr=stderr,
            seconds=time.monotonic() - self.started,
        )


class World:
    """A source table with its files, a watermark, a destination and a config file."""

    def __init__(
        self,
        folder: Path,
        sql_url: str,
        destination: Destination,
        rows: Sequence[Row],
        *,
        scenario: Scenario,
        executor: str = EXECUTOR,
    ) -> None:
        self.folder = folder
        self.executor = executor
        self.sql_url = sql_url
        self.destination = destination
        self.scenario = scenario
        self.rows: list[Row] = list(rows)
        self.change = replay_change(self.rows) if scenario.replay or scenario.late else None
        self.files = folder / "files"
        self.engine = sa.create_engine(sql_url, poolclass=sa.pool.NullPool)
        self.dialect = self.engine.dialect.name
        self._runs = 0
        self.deleted: set[str] = set()
        self.config_path = folder / "deswm.toml"
        self._create_source()
        self._insert(self.rows)
        self._create_audit()
        self._write_config()

    # --- building -------------------------------------------------------------------

    def _create_source(self) -> None:
        metadata = sa.MetaData()
        self.table = sa.Table(
            "files",
            metadata,
            sa.Column("uid", sa.String(64), primary_key=True),
            sa.Column("created_at", sa.DateTime(timezone=self.dialect != "sqlite")),
            sa.Column("file_location", sa.String(255), nullable=False),
            sa.Column("size_bytes", sa.BigInteger),
            sa.Index("ix_files_created_uid", "created_at", "uid"),
        )
        metadata.create_all(self.engine)

    def _insert(self, rows: Sequence[Row]) -> None:
        for row in rows:
            path = self.files / row.location
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(row.data)
        naive = self.dialect == "sqlite"
        with self.engine.begin() as conn:
            conn.execute(
                self.table.insert(),
                [
                    {
                        "uid": r.uid,
                        "created_at": r.created_at.replace(tzinfo=None) if naive else r.created_at,
                        "file_location": r.location,
                        "size_bytes": len(r.data),
                    }
                    for r in rows
                ],
            )

    def _create_audit(self) -> None:
        store = SqlWatermarkStore(self.engine)
        store.create_tables()  # no row: a fresh store
        _AUDIT.create_all(self.engine)
        with self.engine.begin() as conn:
            for ddl in _SQLITE_TRIGGERS if self.dialect == "sqlite" else _PG_TRIGGERS:
                conn.execute(sa.text(ddl))

    def _write_config(self) -> None:
        archive: dict[str, Any] = {
            "url": self.destination.url,
            "n_bits": N_BITS,
            "max_shard_size": MAX_SHARD_SIZE,
            "big_file_threshold": BIG_THRESHOLD,
            "spill_threshold": SPILL_THRESHOLD,
            "workers": 2,
        }
        if self.destination.storage_options:
            archive["storage_options"] = dict(self.destination.storage_options)
        self.config_path.write_text(
            _toml(
                {
                    "source": {"url": self.sql_url, "table": "files", "page_size": PAGE_SIZE},
                    "files": {"root": str(self.files), "max_workers": 2, "retries": 0},
                    "watermark": {
                        "pipeline": PIPELINE,
                        "lag_days": 1,
                        "initial": INITIAL.date().isoformat(),
                    },
                    "archive": archive,
                    "run": {"executor": self.executor, "workers": LANES},
                }
            ),
            encoding="utf-8",
        )

    def apply_replay_change(self) -> None:
        """Delete the chosen source files, insert the late rows, seed a duplicate part."""
        assert self.change is not None
        by_uid = {r.uid: r for r in self.rows}
        for uid in self.change.deleted:
            (self.files / by_uid[uid].location).unlink()
            self.deleted.add(uid)
        self._insert(self.change.late)
        self.rows.extend(self.change.late)
        self._seed_duplicate_part(self.change.duplicate_group)

    def apply_late_change(self) -> None:
        """Insert the late rows only (below the committed watermark)."""
        assert self.change is not None
        self._insert(self.change.late)
        self.rows.extend(self.change.late)

    def _seed_duplicate_part(self, group: int) -> None:
        """Add a part after the last of a day-1 group holding a copy of one entry of part 0.

        deswm never writes such a layout (an entry never moves between parts); another
        DES writer can. The replay must drop the duplicate and delete the empty part.
        """
        store = self.shard_store()
        key = ROUTER.group(DAYS[1], group)
        parts = store.list_parts(key)
        assert parts, f"no parts for group {key.prefix}"
        first = parts[0]
        index = store.read_index(first)
        entry = next(e for e in index.entries if not e.big)
        stored = store.read_stored(first, entry)

        def write(fp: Any) -> None:
            writer = ShardWriter(fp)
            writer.copy_entry(entry, stored)
            writer.finish()

        store.publish(key.object_name(parts[-1].part + 1), write)

    def close(self) -> None:
        self.engine.dispose()

    # --- running --------------------------------------------------------------------

    def run(self, steps: Sequence[Step], progress: Path | None = None) -> list[dict[str, Any]]:
        """Run steps in this process (checkpoints are only counted here, never fatal)."""
        return run_steps(self.config_path, steps, progress)

    def run_counted(self, steps: Sequence[Step]) -> dict[str, int]:
        recorder = Recorder()
        try:
            self.run(steps)
        finally:
            recorder.close()
        return recorder.counts

    def new_run_dir(self, tag: str) -> Path:
        self._runs += 1
        run_dir = self.folder / f"run-{self._runs:02d}-{tag}"
        run_dir.mkdir()
        return run_dir

    def start_child(
        self,
        steps: Sequence[Step],
        run_dir: Path,
        *,
        crash_at: str | None = None,
        actor: str | None = None,
        choreography: Mapping[str, Any] | None = None,
    ) -> Child:
        plan = {
            "config": str(self.config_path),
            "steps": list(steps),
            "progress": str(run_dir / "progress.jsonl"),
            "counts": str(run_dir / "counts.json"),
            "result": str(run_dir / "result.json"),
            "actor": actor,
            "choreography": dict(choreography) if choreography else None,
        }
        plan_file = run_dir / "plan.json"
        plan_file.write_text(json.dumps(plan), encoding="utf-8")
        env = dict(os.environ)
        env.pop("DESWM_CRASH_AT", None)
        if crash_at is not None:
            env["DESWM_CRASH_AT"] = crash_at
        proc = subprocess.Popen(
            [sys.executable, str(DRIVER), str(plan_file)],
            env=env,
            cwd=run_dir,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        return Child(proc, run_dir)

    # --- observing ------------------------------------------------------------------

    def shard_store(self) -> ShardStore:
        return ShardStore(self.destination.url, self.destination.storage_options or None)

    def archive(self) -> Archive:
        return Archive(
            self.destination.url, ROUTER, storage_options=self.destination.storage_options or None
        )

    def watermark(self) -> Watermark | None:
        store = SqlWatermarkStore(self.engine)
        return store.get(KEY)

    def audit(self) -> list[AuditRow]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(AUDIT).order_by(AUDIT.c.id)).mappings().all()
        return [
            AuditRow(
                r["op"], r["old_position"], r["new_position"], r["old_version"], r["new_version"]
            )
            for r in rows
        ]

    def manual_changes(self) -> list[tuple[datetime | None, datetime | None]]:
        store = SqlWatermarkStore(self.engine)
        return [(c.previous, c.position) for c in store.history(KEY, limit=1000)]

    def listing(self) -> dict[str, bytes]:
        """Every object under the destination (hidden temp files included), by name."""
        if self.destination.kind == "local":
            root = Path(self.destination.url)
            if not root.exists():
                return {}
            return {
                p.relative_to(root).as_posix(): p.read_bytes()
                for p in sorted(root.rglob("*"))
                if p.is_file()
            }
        fs = self.shard_store().fs
        base = self.destination.url.removeprefix("s3://").rstrip("/")
        fs.invalidate_cache()
        paths = fs.find(base)
        if not paths:
            return {}
        blobs = fs.cat(paths)  # one concurrent batch of GETs
        return {path[len(base) + 1 :]: bytes(blobs[path]) for path in sorted(paths)}

    def objects(self, listing: Mapping[str, bytes] | None = None) -> dict[str, bytes]:
        """The published objects (temp files excluded): what G2 compares."""
        if listing is None:
            listing = self.listing()
        return {name: data for name, data in listing.items() if not _is_temp(name)}

    def temp_files(self) -> list[Path]:
        if self.destination.kind != "local":
            return []
        root = Path(self.destination.url)
        return [p for p in root.rglob(".*") if p.is_file()] if root.exists() else []

    def backdate_temps(self) -> int:
        temps = self.temp_files()
        stamp = time.time() - TEMP_AGE.total_seconds()
        for path in temps:
            os.utime(path, (stamp, stamp))
        return len(temps)


def _is_temp(name: str) -> bool:
    return name.rsplit("/", 1)[-1].startswith(".")


# --- checks -------------------------------------------------------------------------------


def check_visible_objects(
    world: World, listing: Mapping[str, bytes] | None = None
) -> tuple[int, int]:
    """G11: every visible object is whole. Returns (objects verified, temp files seen).

    Each shard is parsed from its bytes (header, index, footer) and every inline entry
    is decoded and checked against its sha256; every ``_bigFiles/<sha256>`` must hash to
    its name, and every big-file entry must point at a big file that exists (a shard is
    never published before the big files it names).
    """
    if listing is None:
        listing = world.listing()
    verified = temps = 0
    for name, data in listing.items():
        if _is_temp(name):
            temps += 1
            assert world.destination.kind == "local", f"temp object {name} on S3"
            continue
        if name.startswith(f"{BIG_FILES}/"):
            digest = name.split("/", 1)[1]
            assert hashlib.sha256(data).hexdigest() == digest, f"G11: partial big file {name}"
        elif name.startswith(f"{MANIFESTS}/"):
            BucketManifest.from_bytes(data, name=name)  # whole and canonical, or it raises
        else:
            assert parse_part_name(name) is not None, f"unexpected object {name!r}"
            index = read_shard(data, name=name)  # raises CorruptShardError on a fragment
            for entry in index.entries:
                if entry.big:
                    big = listing.get(f"{BIG_FILES}/{entry.big_sha256}")
                    assert big is not None and len(big) == entry.size, (
                        f"G11: {name} names big file {entry.big_sha256} which is not there"
                    )
                else:
                    stored = data[entry.offset : entry.offset + entry.length]
                    decode_payload(entry, stored, name=name)  # size and sha256 checked
        verified += 1
    # A merge into published parts (every scenario but a fresh one) that moves entries
    # publishes from the last part down, so a kill may leave a gap above part 0.
    check_parts_contiguous(listing, merges=bool(world.scenario.before))
    if temps:  # temp files are ignored: each day's listing holds only complete parts
        archive = world.archive()
        for day in DAYS:
            for part in archive.shards(day):
                assert not _is_temp(part.name)
    return verified, temps


def check_committed_manifests(world: World, position: datetime | None) -> int:
    """Every day holding a row below the committed watermark has its manifest: it is
    written before the watermark passes the day. Returns how many were found."""
    if position is None:
        return 0
    listing = world.listing()
    days = {floor_day(row.created_at) for row in expected_rows(world, position)}
    for day in days:
        name = f"{MANIFESTS}/{day.strftime('%Y%m%d')}/p0-of-1.json"
        assert name in listing, f"day {day.date()} is committed but {name} is missing"
    return len(days)


def check_parts_contiguous(names: Iterable[str], *, merges: bool = False) -> None:
    """Each group's visible parts are numbered 0..k without a gap.

    The packer publishes a fresh group's parts in number order, so a crash leaves a
    prefix; that is what lets a rerun reproduce the clean layout byte for byte (G2). A
    gap before the first part (part 0001 without part 0000) makes the rerun merge new
    entries into 0001 instead. A merge that moves entries to the clean layout publishes
    from the last part down (an entry's new object first), so with ``merges`` only part
    0000 is required: the rerun lays out the rest again.
    """
    groups: dict[tuple[str, str], list[int]] = {}
    for name in names:
        parsed = parse_part_name(name)
        if parsed is not None:
            groups.setdefault(parsed[:2], []).append(parsed[2])
    for (day, hex_), numbers in sorted(groups.items()):
        if merges:
            assert 0 in numbers, f"G2: group {day}_{hex_} has parts {sorted(numbers)} but no 0000"
            continue
        assert sorted(numbers) == list(range(len(numbers))), (
            f"G2: parts of group {day}_{hex_} are {sorted(numbers)}: published out of order, "
            "so a rerun cannot reproduce the clean layout"
        )


def differing_objects(found: Mapping[str, bytes], wanted: Mapping[str, bytes]) -> list[str]:
    """Names whose bytes differ between two listings (missing on one side included)."""
    return sorted(n for n in found.keys() | wanted.keys() if found.get(n) != wanted.get(n))


def expected_rows(
    world: World, position: datetime | None, *, late_archived: bool = False
) -> list[Row]:
    """The rows G1 requires at ``position``: below it, and committed after they existed.

    A late row (inserted below a committed watermark) is only required once a manual
    ``set`` moved the watermark back below it and the watermark passed it again, or
    (``late_archived``) once a reconcile repaired it.
    """
    if position is None:
        return []
    replayed = late_archived or bool(world.manual_changes())
    return [r for r in world.rows if r.created_at < position and (not r.late or replayed)]


def check_no_loss(world: World, position: datetime | None, *, late_archived: bool = False) -> int:
    """G1: every required row reads back byte-identical; returns how many were read."""
    archive = world.archive()
    rows = expected_rows(world, position, late_archived=late_archived)

    def read(row: Row) -> None:
        data = archive.get(row.uid, row.created_at)
        assert data == row.data, f"G1: {row.uid} at {row.created_at} reads back different bytes"

    with ThreadPoolExecutor(8) as pool:  # S3 requests cost ~10 ms each against moto
        list(pool.map(read, rows))
    return len(rows)


def check_watermark_audit(world: World) -> int:
    """G4/G5: committed writes only move forward (manual sets aside), one version each.

    Returns the number of committed UPDATEs (advance and set).
    """
    audit = world.audit()
    source_writes = [a.op for a in audit if a.op.startswith("SOURCE")]
    assert source_writes == [], f"G4: the source table was written: {source_writes}"
    manual = world.manual_changes()
    updates = 0
    for row in audit:
        if row.op == "INSERT":
            assert row.new_position is not None
            assert row.new_position == floor_day(row.new_position), row
            continue
        updates += 1
        assert row.old_position is not None and row.new_position is not None
        assert row.new_version == (row.old_version or 0) + 1, f"version skipped: {row}"
        assert row.new_position == floor_day(row.new_position), f"G5: not midnight: {row}"
        if row.new_position < row.old_position:
            change = (row.old_position, row.new_position)
            assert change in manual, f"G4: watermark moved backwards without a set: {row}"
            manual.remove(change)
    stored = world.watermark()
    if stored is not None:
        assert stored.position == floor_day(stored.position)
        assert stored.position.utcoffset() == timedelta(0)
    return updates


# --- statistics ---------------------------------------------------------------------------


@dataclass
class CrashStats:
    """Figures of one run of the crash suite (printed at the end, see docs/crash-tests.md)."""

    kills: int = 0
    reruns: int = 0
    rows_checked: int = 0
    objects_verified: int = 0
    temps_cleaned: int = 0
    points: dict[str, set[str]] = field(default_factory=dict)
    cases: list[dict[str, Any]] = field(default_factory=list)
    races: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "kills": self.kills,
            "reruns": self.reruns,
            "rows_checked": self.rows_checked,
            "objects_verified": self.objects_verified,
            "temps_cleaned": self.temps_cleaned,
            "points_killed": {k: sorted(v) for k, v in self.points.items()},
            "cases": self.cases,
            "races": self.races,
        }


STATS = CrashStats()


# --- references ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """A clean run of a scenario on fresh backends: what every crashed run must equal."""

    objects: dict[str, bytes]
    counts: dict[str, int]
    updates: int
    watermark: datetime


class Worlds:
    """Builds worlds for (scenario, backend) and caches clean reference runs."""

    def __init__(self, provisioner: Provisioner) -> None:
        self.provisioner = provisioner
        self._references: dict[tuple[str, str, str, str], Reference] = {}

    def new(self, scenario: Scenario, sql: str, dest: str, executor: str = EXECUTOR) -> World:
        folder = self.provisioner.folder(f"{scenario.name}-{sql}-{dest}-{executor}")
        world = World(
            folder,
            self.provisioner.sql_url(sql, folder),
            self.provisioner.destination(dest, folder),
            base_rows(rows_per_day(dest)),
            scenario=scenario,
            executor=executor,
        )
        self.provisioner.on_close(world.close)
        return world

    def prepared(self, scenario: Scenario, sql: str, dest: str, executor: str = EXECUTOR) -> World:
        """A world where the steps before the crash ran and the world was changed."""
        world = self.new(scenario, sql, dest, executor)
        world.run(scenario.before)
        if scenario.replay:
            world.apply_replay_change()
        if scenario.late:
            world.apply_late_change()
        return world

    def reference(
        self, scenario: Scenario, sql: str, dest: str, executor: str = EXECUTOR
    ) -> Reference:
        key = (scenario.name, sql, dest, executor)
        if key not in self._references:
            world = self.prepared(scenario, sql, dest, executor)
            counts = world.run_counted(scenario.crash)
            stored = world.watermark()
            assert stored is not None and stored.position == scenario.final
            check_visible_objects(world)
            assert check_no_loss(world, stored.position, late_archived=scenario.late) == len(
                [r for r in world.rows if r.created_at < scenario.final]
            )
            self._references[key] = Reference(
                objects=world.objects(),
                counts=counts,
                updates=check_watermark_audit(world),
                watermark=stored.position,
            )
        return self._references[key]


def rows_per_day(dest: str) -> int:
    """Fewer rows on S3, where each request costs about 10 ms against moto."""
    return 16 if dest == "local" else 8


def conflict_choreography() -> dict[str, list[Action]]:
    """Both runners read the watermark and pack the first bucket; ``a`` publishes,
    then ``b`` publishes (the same bytes), then both commit at once: one must lose."""
    return {
        "a": [
            {"at": "bucket.before_publish", "n": 1, "signal": "a-packed", "wait": ["b-packed"]},
            {
                "at": "bucket.after_publish",
                "n": 1,
                "signal": "a-published",
                "wait": ["b-published"],
            },
        ],
        "b": [
            {
                "at": "bucket.before_publish",
                "n": 1,
                "signal": "b-packed",
                "wait": ["a-packed", "a-published"],
            },
            {"at": "bucket.after_publish", "n": 1, "signal": "b-published", "wait": []},
        ],
    }


def stale_merge_choreography() -> dict[str, list[Action]]:
    """Both runners plan the merge of the first replayed group from the same indexes;
    ``a`` publishes the whole bucket, then ``b`` writes from its stale plan."""
    return {
        "a": [
            {
                "at": "packer.merge.before_write",
                "n": 1,
                "signal": "a-planned",
                "wait": ["b-planned"],
            },
            {"at": "bucket.after_publish", "n": 1, "signal": "a-published", "wait": []},
        ],
        "b": [
            {
                "at": "packer.merge.before_write",
                "n": 1,
                "signal": "b-planned",
                "wait": ["a-planned", "a-published"],
            },
        ],
    }


def progress_of(run_dir: Path) -> int:
    return done_steps(run_dir / "progress.jsonl")


# --- the fixture and the summary ----------------------------------------------------------
#
# No conftest.py here on purpose: other test modules import names from tests/conftest.py
# with ``from conftest import ...``, and a second conftest module would shadow it.


class _LazyMoto:
    """The session's moto server (tests/conftest.py), started only when S3 is needed."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self._request = request

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request.getfixturevalue("moto_s3"), name)


class _Summary:
    """Prints the suite's figures at the end (and writes them to ``$DESWM_CRASH_REPORT``)."""

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not STATS.kills and not STATS.races:
            return
        points = sorted(set().union(*STATS.points.values())) if STATS.points else []
        terminalreporter.section("deswm crash suite")
        for backend, killed in sorted(STATS.points.items()):
            terminalreporter.write_line(f"{backend}: {len(killed)} distinct points killed")
        terminalreporter.write_line(
            f"points killed: {len(points)}; kills: {STATS.kills}; reruns: {STATS.reruns}; "
            f"rows read back: {STATS.rows_checked}; objects verified: {STATS.objects_verified}; "
            f"temp files cleaned: {STATS.temps_cleaned}; races: {len(STATS.races)}; "
            f"failed tests: {len(terminalreporter.stats.get('failed', []))}"
        )
        report = os.environ.get("DESWM_CRASH_REPORT")
        if report:
            Path(report).write_text(json.dumps(STATS.as_json(), indent=2), encoding="utf-8")
            terminalreporter.write_line(f"report written to {report}")


_WORLDS: list[Worlds] = []


@pytest.fixture(name="worlds")
def worlds_fixture(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Worlds:
    """One :class:`Worlds` per session (its clean references are shared by every module)."""
    if not _WORLDS:
        provisioner = Provisioner(tmp_path_factory.mktemp("crash"), None)
        request.config.add_cleanup(provisioner.close)
        request.config.add_cleanup(_WORLDS.clear)
        request.config.pluginmanager.register(_Summary(), "deswm-crash-summary")
        _WORLDS.append(Worlds(provisioner))
    worlds = _WORLDS[0]
    worlds.provisioner.moto = _LazyMoto(request)
    return worlds
