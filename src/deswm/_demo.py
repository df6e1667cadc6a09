"""``deswm demo``: a complete run on the embedded default, for a newcomer's first minute.

It creates a SQLite source table and sample files spread over past days, writes a config
file, runs one cycle, reads one file back from the archive and checks it byte for byte.
Everything is deterministic and idempotent: running it again reuses the data and the
watermark, so the second cycle finds nothing new to do.

It only ever works in a folder it owns: a new or empty one, or one holding the config it
wrote itself. Any other folder is refused, so ``--dir`` pointed at a real project cannot
run its config, touch its database or overwrite its files; and the demo writes its sample
files without following symlinks out of the folder.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
import sqlalchemy as sa

from deswm._config import load_config
from deswm._errors import ConfigError, DeswmError
from deswm._humanize import human_bytes, human_time
from deswm._model import CycleResult
from deswm._timeutil import floor_day, format_day, format_utc

__all__ = ["DemoReport", "run_demo"]

CONFIG_NAME = "deswm.toml"
LAG_DAYS = 7
DAYS = 14

_HEADER = "# Written by `deswm demo`."
_CONFIG = (
    _HEADER
    + """ Paths are relative to this file's folder.
[source]
url = "sqlite:///source.sqlite3"
table = "files"
uid_column = "uid"
created_at_column = "created_at"
location_column = "file_location"
size_column = "size_bytes"

[files]
root = "."

[watermark]
pipeline = "demo"
lag_days = {lag_days}
initial = "{initial}"

[archive]
url = "archive"
n_bits = 4
compression = "zstd"
compression_level = 3
"""
)


@attrs.frozen
class DemoReport:
    """What the demo did."""

    directory: Path
    config: Path
    rows: int
    created: bool
    result: CycleResult
    checked_uid: str | None
    checked_created_at: datetime | None


def _sample(rng: random.Random, number: int) -> tuple[str, bytes]:
    kind = rng.random()
    if number % 97 == 0:
        return ".txt", b""  # zero-byte files are valid and archived too
    if kind < 0.7:
        lines = [
            json.dumps({"id": number, "seq": i, "value": rng.randint(0, 10**6), "tag": "demo"})
            for i in range(rng.randint(1, 60))
        ]
        return ".json", "\n".join(lines).encode()
    return ".bin", rng.randbytes(rng.randint(64, 8192))


def _create_source(directory: Path, files: int, today: datetime) -> int:
    engine = sa.create_engine(f"sqlite:///{directory / 'source.sqlite3'}")
    metadata = sa.MetaData()
    table = sa.Table(
        "files",
        metadata,
        sa.Column("uid", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("file_location", sa.Text, nullable=False),
        sa.Column("size_bytes", sa.BigInteger),
        sa.Index("ix_files_created_at_uid", "created_at", "uid"),
    )
    try:
        metadata.create_all(engine)
        with engine.begin() as conn:
            existing = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            if existing:
                return 0
            rng = random.Random(20241121)
            rows = []
            for number in range(files):
                day = today - timedelta(days=1 + number % DAYS)
                # Every 50th file lands exactly on midnight: it belongs to the day it starts.
                offset = (
                    timedelta(0) if number % 50 == 0 else timedelta(seconds=rng.randrange(86400))
                )
                created_at = day + offset
                suffix, data = _sample(rng, number)
                uid = f"demo-{number:06d}{suffix}"
                relative = Path("files") / format_day(created_at) / uid
                _write_inside(directory, relative, data)
                rows.append(
                    {
                        "uid": uid,
                        "created_at": created_at.replace(tzinfo=None),
                        "file_location": relative.as_posix(),
                        "size_bytes": len(data),
                    }
                )
            conn.execute(table.insert(), rows)
            return len(rows)
    finally:
        engine.dispose()


def _claim(directory: Path) -> None:
    """Refuse a folder the demo did not create: it would run, write and read there."""
    if not directory.exists():
        return
    if not directory.is_dir():
        raise ConfigError(f"{directory} is not a folder", key="--dir", hint=_DIR_HINT)
    if next(directory.iterdir(), None) is None:
        return
    config = directory / CONFIG_NAME
    if config.is_file() and not config.is_symlink():
        with config.open("rb") as handle:
            if handle.read(len(_HEADER)) == _HEADER.encode():
                return
    raise ConfigError(
        f"{directory} is not empty and is not a folder of deswm demo (it has no "
        f"{CONFIG_NAME} written by the demo); the demo creates a database, sample files and "
        "a config there and runs that config, so it only uses a new or empty folder or "
        "its own",
        key="--dir",
        hint=_DIR_HINT,
    )


_DIR_HINT = "Pass --dir with a new or empty folder, e.g. --dir deswm-demo"


def _write_inside(directory: Path, relative: Path, data: bytes) -> None:
    """Write a sample file below ``directory``, never through a symlink out of it."""
    path = directory / relative
    for _ in range(2):  # before creating its folder, and after
        if not os.path.realpath(path.parent).startswith(str(directory) + os.sep):
            raise DeswmError(
                f"refusing to write {path}: its folder leads outside {directory} (a symlink?)",
                hint=_DIR_HINT,
            )
        path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    with open(os.open(path, flags, 0o666), "wb") as handle:
        handle.write(data)


def run_demo(
    directory: Path,
    files: int = 1000,
    *,
    echo: Callable[[str], None] = print,
    now: datetime | None = None,
) -> DemoReport:
    """Run the demo in ``directory`` and report; raises DeswmError if verification fails."""
    if files < 1:
        raise DeswmError("the demo needs at least one file", hint="pass --files 1000")
    directory = directory.resolve()
    _claim(directory)
    directory.mkdir(parents=True, exist_ok=True)
    today = floor_day(now or datetime.now(UTC))
    config_path = directory / CONFIG_NAME
    if not config_path.exists():
        initial = (today - timedelta(days=DAYS + 1)).date().isoformat()
        config_path.write_text(_CONFIG.format(lag_days=LAG_DAYS, initial=initial), encoding="utf-8")
    created = _create_source(directory, files, today)
    echo(
        f"source: {directory / 'source.sqlite3'} "
        + (f"({created} rows and files created)" if created else "(reusing existing rows)")
    )
    config = load_config(config_path)
    orchestrator = (
        config.build_orchestrator(clock=lambda: now)
        if now is not None
        else config.build_orchestrator()
    )
    plan = orchestrator.plan()
    echo(
        f"watermark {human_time(plan.watermark)}, target {human_time(plan.target)} "
        f"(delay {LAG_DAYS} days): {plan.pending.files} files pending"
    )
    result = orchestrator.run_cycle()
    if result.files:
        echo(
            f"archived {result.files} files of {result.buckets_committed} days into "
            f"{result.shards_written} shards under {config.archive.url} "
            f"({human_bytes(result.bytes_in)} -> {human_bytes(result.bytes_out)}); "
            f"watermark now {human_time(result.watermark_after)}"
        )
    else:
        echo(f"nothing new to archive; watermark stays at {human_time(result.watermark_after)}")

    engine = sa.create_engine(config.source.url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                sa.text(
                    "SELECT uid, created_at, file_location FROM files "
                    "WHERE created_at < :cutoff ORDER BY created_at DESC, uid LIMIT 1"
                ),
                {"cutoff": result.watermark_after.replace(tzinfo=None)},
            ).first()
    finally:
        engine.dispose()
    checked_uid = checked_at = None
    if row is not None:
        checked_uid = str(row.uid)
        created_at = row.created_at
        if isinstance(created_at, str):
            created_at = datetime.fromisoformat(created_at)
        checked_at = created_at.replace(tzinfo=UTC)
        archived = config.build_archive().get(checked_uid, checked_at)
        # Through the reader: a location is contained in files.root like any other.
        original = config.build_reader().read(str(row.file_location))
        if archived != original:
            raise DeswmError(
                f"read-back check failed for {checked_uid!r}: archive and source differ"
            )
        echo(f"read back {checked_uid!r} ({len(archived)} bytes) from the archive: identical")
    rel = config_path
    echo("")
    echo("next, try:")
    echo(f"  deswm stats -c {rel}")
    echo(f"  deswm watermark get -c {rel}")
    echo(f"  deswm run -c {rel} --dry-run")
    if checked_uid is not None and checked_at is not None:
        echo(f"  deswm get -c {rel} {checked_uid} --created-at {format_utc(checked_at)} -o out.bin")
    echo(f"  deswm watermark adjust -c {rel} --days-offset -2   # replay two days, safely")
    echo(f"  deswm verify -c {rel}")
    return DemoReport(
        directory=directory,
        config=config_path,
        rows=created,
        created=bool(created),
        result=result,
        checked_uid=checked_uid,
        checked_created_at=checked_at,
    )
