"""The bad-input catalogue (G12): every input users get wrong, and what deswm does about it.

Each test feeds one bad input and checks three things:

(a) the user sees a typed :class:`~deswm._errors.DeswmError` subclass (or, for inputs
    that are odd but valid, that they are archived correctly);
(b) its message names the row, file or setting and says what to do;
(c) when a cycle is involved, no watermark moved past the bad input and nothing is
    lost: after the input is fixed, the next cycle archives every row, checked with
    :func:`deswm.testing.assert_no_loss`.

Cycles run on the embedded default, SQLite and a local folder; PostgreSQL and S3 (moto)
where the backend is what matters. docs/reliability.md is this file as a table. Tests
marked ``xfail(strict=True)`` document a bug found here; the reason says what is wrong.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import sqlalchemy as sa

from deswm import _contain
from deswm import _readers as readers_module
from deswm._archive import Archive
from deswm._config import Config, load_config
from deswm._container import build_shard
from deswm._errors import (
    BadRowError,
    ConfigError,
    CycleError,
    DeswmError,
    DuplicateUidError,
    NaiveDatetimeError,
    PackError,
    SourceError,
    UnplaceableRowError,
    WatermarkError,
)
from deswm._model import CycleResult, SourceRecord, WatermarkKey, Window
from deswm._orchestrator import WatermarkOrchestrator
from deswm._packer import DesPacker
from deswm._protocols import FileReader, SourceProvider
from deswm._readers import FsspecFileReader
from deswm._redact import redact
from deswm._routing import DesRouter
from deswm._sources.sql import SqlSourceProvider
from deswm._stores.sql import SqlWatermarkStore
from deswm._timeutil import format_utc
from deswm.cli import main as cli_main
from deswm.testing import (
    Checkpoint,
    MemorySourceProvider,
    assert_no_loss,
    at_checkpoint,
    read_objects,
    snapshot,
)

START = datetime(2024, 5, 10, tzinfo=UTC)
NOW = datetime(2024, 5, 14, 9, tzinfo=UTC)  # lag 1 day: the target is May 13 00:00
TARGET = datetime(2024, 5, 13, tzinfo=UTC)
KEY = WatermarkKey("bad-input")
HINT_SOURCE_ROW = "Fix the row in the source table, or exclude it in"
NULL = object()
"""Stands for SQL NULL in a column that otherwise gets a default."""


def at(day: int, hour: int = 1, minute: int = 0) -> datetime:
    return datetime(2024, 5, day, hour, minute, tzinfo=UTC)


def says(exc: BaseException, *parts: str) -> str:
    """The message of ``exc``, after checking it contains every part (b)."""
    message = str(exc)
    for part in parts:
        assert part in message, f"{part!r} is not in the message: {message}"
    return message


def has_hint(exc: BaseException) -> None:
    """(b): the error says what to do, in its hint."""
    assert isinstance(exc, DeswmError)
    assert exc.hint, f"{type(exc).__name__} has no hint: {exc}"


class Pipeline:
    """A ``files`` table on SQLite (or ``source_url``), files in a folder, a SQLite
    watermark and an archive folder; every column nullable so bad rows can exist."""

    def __init__(self, root: Path, *, source_url: str | None = None, **packer: Any) -> None:
        self.root = root
        self.files = root / "files"
        self.files.mkdir(parents=True, exist_ok=True)
        self.archive_dir = root / "archive"
        self.contents: dict[str, bytes] = {}
        self.engine = sa.create_engine(source_url or f"sqlite:///{root / 'source.db'}")
        metadata = sa.MetaData()
        self.table = sa.Table(
            "files",
            metadata,
            sa.Column("uid", sa.String(70_010)),
            sa.Column("created_at", sa.DateTime),
            sa.Column("file_location", sa.Text),
            sa.Column("size_bytes", sa.Integer),
        )
        metadata.create_all(self.engine)
        self.store = SqlWatermarkStore(f"sqlite:///{root / 'watermark.db'}")
        self.router = DesRouter(4)
        self.packer_options: dict[str, Any] = {"workers": 0, **packer}
        self._numbers = iter(range(10**6))

    def close(self) -> None:
        self.store.close()
        self.engine.dispose()

    def add(
        self,
        uid: str | None,
        created_at: datetime | None,
        data: bytes | None = b"payload",
        *,
        location: str | None = None,
        size: int | None = None,
        raw_location: object = None,
    ) -> str:
        """Insert one row; write its file unless ``data`` is None. Returns the location."""
        location = location or f"{next(self._numbers)}.dat"
        if data is not None:
            path = self.files / location
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            self.contents[location] = data
        with self.engine.begin() as conn:
            conn.execute(
                self.table.insert().values(
                    uid=uid,
                    created_at=None if created_at is None else created_at.replace(tzinfo=None),
                    file_location=(
                        location
                        if raw_location is None
                        else None
                        if raw_location is NULL
                        else raw_location
                    ),
                    size_bytes=size if size is not None else (len(data) if data else 0),
                )
            )
        return location

    def good_rows(self, days: tuple[int, ...] = (10, 11, 12), per_day: int = 3) -> None:
        for day in days:
            for n in range(per_day):
                self.add(f"good-{day}-{n}", at(day, 2 + n), b"good %d %d" % (day, n))

    def source(self, **options: Any) -> SqlSourceProvider:
        return SqlSourceProvider(self.engine, "files", page_size=4, **options)

    def reader(self, **options: Any) -> FsspecFileReader:
        options.setdefault("retries", 0)
        return FsspecFileReader(root=self.files, **options)

    def packer(self) -> DesPacker:
        return DesPacker(self.archive_dir, self.router, **self.packer_options)

    def orchestrator(
        self,
        *,
        source: SourceProvider | None = None,
        reader: FileReader | None = None,
        packer: DesPacker | None = None,
        **options: Any,
    ) -> WatermarkOrchestrator:
        options.setdefault("pipeline", KEY.pipeline)
        options.setdefault("lag", timedelta(days=1))
        options.setdefault("initial", START)
        options.setdefault("clock", lambda: NOW)
        return WatermarkOrchestrator(
            self.store,
            source or self.source(),
            reader or self.reader(),
            self.router,
            packer or self.packer(),
            **options,
        )

    def run(self, **options: Any) -> CycleResult:
        return self.orchestrator(**options).run_cycle()

    def position(self) -> datetime | None:
        mark = self.store.get(KEY)
        return None if mark is None else mark.position

    def archive(self) -> Archive:
        return Archive(str(self.archive_dir), self.router)

    def assert_nothing_moved(self) -> None:
        """(c): the watermark is where the pipeline started, or was never written."""
        assert self.position() in (None, START), f"the watermark moved to {self.position()}"

    def check_no_loss(self, source: SourceProvider | None = None) -> int:
        """(c): every row below the watermark reads back with its file's bytes."""
        return assert_no_loss(
            source or self.source(), self.archive(), self.store, KEY, self.contents, since=START
        )

    def finish(self, expected_rows: int, **options: Any) -> None:
        """After the input is fixed: one cycle reaches the target and loses nothing."""
        result = self.run(**options)
        assert result.watermark_after == TARGET
        assert self.check_no_loss(options.get("source")) == expected_rows


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    built = Pipeline(tmp_path)
    try:
        yield built
    finally:
        built.close()


def delete_row(pipeline: Pipeline, uid: str | None) -> None:
    table = pipeline.table
    where = table.c.uid.is_(None) if uid is None else table.c.uid == uid
    with pipeline.engine.begin() as conn:
        conn.execute(table.delete().where(where))


# === rows of the source table =============================================================


def test_null_created_at_is_never_in_a_window_and_is_reported(
    pipeline: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Valid for SQL, unroutable for deswm: the row is in no window, so never archived
    (nothing below the watermark is claimed for it); stats warn about it."""
    pipeline.good_rows()
    pipeline.add("no-date", None, b"lost in time")
    result = pipeline.run()
    assert result.watermark_after == TARGET
    assert pipeline.check_no_loss() == 9
    assert pipeline.source().null_created_at() == ["no-date"]
    config = write_config(tmp_path, pipeline)
    with restored_logging():
        code = cli_main(["stats", "-c", str(config)])
    out = capsys.readouterr().out
    assert code == 0
    says_text(out, "warning: rows with NULL created_at are never archived", "no-date")
    with restored_logging():
        cli_main(["stats", "--json", "-c", str(config)])
    assert json.loads(capsys.readouterr().out)["rows_with_null_created_at"] == ["no-date"]


@pytest.mark.parametrize(
    ("stored", "shown"),
    [(1715328000, "1715328000 (INTEGER)"), (2460441.5, "2460441.5 (REAL)"), (b"x", "X'78' (BLOB)")],
    ids=["epoch-integer", "julian-real", "blob"],
)
def test_created_at_stored_as_a_number_or_blob_is_named_by_run_stats_and_verify(
    pipeline: Pipeline,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    stored: object,
    shown: str,
) -> None:
    """SQLite sorts numbers before every text bound and blobs after: no window holds the
    row. Run stops before the watermark moves (G17), stats warns, verify fails."""
    pipeline.good_rows()
    location = pipeline.add("odd-type", at(10, 5), b"a number for a date")
    with pipeline.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE files SET created_at = ? WHERE uid = 'odd-type'", (stored,))
    with pytest.raises(UnplaceableRowError) as caught:
        pipeline.run()
    says(caught.value, "uid='odd-type'", shown, "no window can hold", "filter_query")
    pipeline.assert_nothing_moved()
    config = write_config(tmp_path, pipeline)
    with restored_logging():
        assert cli_main(["stats", "-c", str(config)]) == 0
    says_text(capsys.readouterr().out, "no window can hold", "odd-type")
    with restored_logging():
        cli_main(["stats", "--json", "-c", str(config)])
    assert json.loads(capsys.readouterr().out)["rows_with_unplaceable_created_at"] == ["odd-type"]
    with restored_logging():
        assert cli_main(["run", "-c", str(config)]) != 0
    capsys.readouterr()
    with restored_logging():
        assert cli_main(["verify", "-c", str(config)]) == 1
    says_text(capsys.readouterr().out, "unplaceable: 'odd-type'", shown)
    with pipeline.engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE files SET created_at = '2024-05-10 05:00:00' WHERE uid = 'odd-type'"
        )
    assert pipeline.contents[location] == b"a number for a date"
    pipeline.finish(10)


@pytest.mark.parametrize(
    ("uid", "location", "text"),
    [
        (None, "x.dat", "uid is NULL"),
        ("", "x.dat", "uid is empty"),
        ("no-location", NULL, "file_location is NULL"),
        ("empty-location", "", "file_location is empty"),
    ],
    ids=["null-uid", "empty-uid", "null-location", "empty-location"],
)
def test_null_or_empty_uid_and_location(
    pipeline: Pipeline, uid: str | None, location: object, text: str
) -> None:
    pipeline.good_rows()
    pipeline.add(uid, at(10, 5), None, raw_location=location)
    with pytest.raises(BadRowError) as caught:
        pipeline.run()
    says(caught.value, text, "2024-05-10 05:00:00", "table 'files'", HINT_SOURCE_ROW)
    pipeline.assert_nothing_moved()
    delete_row(pipeline, uid)
    pipeline.finish(9)


def test_duplicate_uid_in_a_day(pipeline: Pipeline) -> None:
    pipeline.good_rows()
    pipeline.add("twice", at(10, 4), b"first")
    pipeline.add("twice", at(10, 6), b"second")
    pipeline.add("twice", at(11, 6), b"another day is fine")
    with pytest.raises(DuplicateUidError) as caught:
        pipeline.run()
    says(
        caught.value,
        "'twice'",
        "2024-05-10 04:00:00",
        "2024-05-10 06:00:00",
        "remove or rename one of the rows",
    )
    pipeline.assert_nothing_moved()
    with pipeline.engine.begin() as conn:
        conn.execute(
            pipeline.table.update()
            .where(pipeline.table.c.created_at == at(10, 6).replace(tzinfo=None))
            .values(uid="twice-renamed")
        )
    pipeline.finish(12)
    assert pipeline.archive().get("twice", at(11, 6)) == b"another day is fine"


def test_uids_that_look_like_paths_are_names_not_paths(pipeline: Pipeline) -> None:
    """``/``, ``..`` and absolute-looking uids are DES entry names: archived as is, and
    nothing is written outside the archive folder."""
    uids = ["a/b/c", "..", "../../escape", "/etc/passwd-ish", "./dot", "back\\slash"]
    for n, uid in enumerate(uids):
        pipeline.add(uid, at(10, 3, n), uid.encode() + b"!")
    pipeline.finish(len(uids))
    archive = pipeline.archive()
    for n, uid in enumerate(uids):
        assert archive.get(uid, at(10, 3, n)) == uid.encode() + b"!"
    written = {
        p.relative_to(pipeline.archive_dir).as_posix()
        for p in pipeline.archive_dir.rglob("*")
        if p.is_file()
    }
    # Shards at the top, and the day's manifest (named after the day, never a uid).
    manifest = "_manifests/20240510/p0-of-1.json"
    assert all(n == manifest or (n.endswith(".des") and "/" not in n) for n in written), written
    assert not (pipeline.root / "escape").exists()


def test_uids_with_nul_and_newline_are_archived_and_shown_escaped(pipeline: Pipeline) -> None:
    pipeline.add("nul\x00inside", at(10, 3), b"nul")
    pipeline.add("two\nlines", at(10, 4), b"newline")
    pipeline.add("tab\tand\rreturn", at(10, 5), None, location="gone.dat")
    with pytest.raises(CycleError) as caught:
        pipeline.run()
    message = says(caught.value, "'tab\\tand\\rreturn'", "gone.dat", "file does not exist")
    assert "\t" not in message
    assert "\r" not in message
    pipeline.assert_nothing_moved()
    delete_row(pipeline, "tab\tand\rreturn")
    pipeline.finish(2)
    assert pipeline.archive().get("nul\x00inside", at(10, 3)) == b"nul"


def test_location_with_a_newline_is_shown_escaped(pipeline: Pipeline) -> None:
    forged = "evil\n2024-05-10 12:00:00 INFO deswm: all good.dat"
    pipeline.add("forger", at(10, 5), None, location=forged)
    with pytest.raises(CycleError) as caught:
        pipeline.run()
    pipeline.assert_nothing_moved()
    says(caught.value, "'forger'", "file does not exist")
    assert "\n" not in str(caught.value), "the location broke the message into lines"


def test_uid_of_70000_bytes(pipeline: Pipeline) -> None:
    pipeline.good_rows()
    pipeline.add("x" * 70_000, at(10, 5), b"long")
    with pytest.raises(BadRowError) as caught:
        pipeline.run()
    says(caught.value, "uid is 70,000 bytes in UTF-8", "at most 65,535", HINT_SOURCE_ROW)
    assert len(str(caught.value)) < 1_000, "the message shows a prefix, not the whole uid"
    pipeline.assert_nothing_moved()
    delete_row(pipeline, "x" * 70_000)
    pipeline.finish(9)


def test_uid_of_70000_bytes_reports_its_real_length(pipeline: Pipeline) -> None:
    pipeline.add("x" * 70_000, at(10, 5), b"long")
    with pytest.raises(BadRowError) as caught:
        pipeline.run()
    says(caught.value, "(70,000 characters)")


def test_location_bytes_that_are_not_utf8(pipeline: Pipeline) -> None:
    """A BLOB location (bytes from the database) that does not decode names its row."""
    pipeline.good_rows()
    pipeline.add("latin1", at(10, 5), None, raw_location=b"caf\xe9.dat")
    with pytest.raises(BadRowError) as caught:
        pipeline.run()
    says(caught.value, "'latin1'", "file_location is not valid UTF-8", HINT_SOURCE_ROW)
    pipeline.assert_nothing_moved()
    delete_row(pipeline, "latin1")
    pipeline.finish(9)


def test_location_text_that_is_not_utf8_names_its_row(pipeline: Pipeline) -> None:
    pipeline.good_rows()
    pipeline.add("latin1", at(10, 5), None)
    with pipeline.engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE files SET file_location = CAST(x'636166e92e646174' AS TEXT) "
            "WHERE uid = 'latin1'"
        )
    with pytest.raises(BadRowError) as caught:
        pipeline.run()
    says(caught.value, "'latin1'", "file_location is not valid UTF-8", HINT_SOURCE_ROW)
    pipeline.assert_nothing_moved()
    delete_row(pipeline, "latin1")
    pipeline.finish(9)


def test_location_with_a_lone_surrogate_names_an_undecodable_file(pipeline: Pipeline) -> None:
    """A provider may hand over ``os.fsdecode`` names: a lone surrogate stands for a byte
    that is not UTF-8 in a POSIX file name. deswm passes it to the OS unchanged, so such
    files are archived, and an error about one stays printable."""
    odd = os.fsdecode(b"caf\xe9.dat")
    (pipeline.files / odd).write_bytes(b"undecodable name")
    gone = os.fsdecode(b"gone\xff.dat")
    rows = [
        SourceRecord("odd-name", at(10, 3), odd, 16),
        SourceRecord("gone-name", at(10, 4), gone, 1),
    ]
    source = MemorySourceProvider(rows)
    with pytest.raises(CycleError) as caught:
        pipeline.run(source=source)
    message = says(caught.value, "'gone-name'", "file does not exist")
    message.encode("utf-8", "backslashreplace")  # what stderr does with it
    json.dumps(message)  # what --json does with it
    pipeline.assert_nothing_moved()
    fixed = MemorySourceProvider(rows[:1])
    pipeline.contents[odd] = b"undecodable name"
    pipeline.finish(1, source=fixed)


def test_created_at_text_in_another_format_on_sqlite(pipeline: Pipeline) -> None:
    """SQLite keeps timestamps as text; another format compares wrongly with the bounds."""
    pipeline.good_rows()
    pipeline.add("iso-t", at(10, 5), b"x")
    with pipeline.engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE files SET created_at = '2024-05-10T05:00:00' WHERE uid = 'iso-t'"
        )
    assert pipeline.source().malformed_created_at() == ["iso-t"]
    with pytest.raises(BadRowError) as caught:
        pipeline.run()
    says(caught.value, "'iso-t'", "YYYY-MM-DD HH:MM:SS[.ffffff]", HINT_SOURCE_ROW)
    pipeline.assert_nothing_moved()
    with pipeline.engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE files SET created_at = '2024-05-10 05:00:00' WHERE uid = 'iso-t'"
        )
    pipeline.finish(10)


class _ZonedSource:
    """A custom provider returning ``created_at`` in the zone (or naivety) it was given."""

    def __init__(self, rows: list[SourceRecord], zone: timezone | None) -> None:
        self.rows = rows
        self.zone = zone

    def iter_records(self, window: Window) -> Iterator[SourceRecord]:
        for row in self.rows:
            if row.created_at in window:
                local = row.created_at.astimezone(self.zone) if self.zone else row.created_at
                yield SourceRecord(
                    row.uid,
                    local.replace(tzinfo=None) if self.zone is None else local,
                    row.location,
                    row.size,
                )

    def pending_stats(self, window: Window) -> Any:
        return MemorySourceProvider(self.rows).pending_stats(window)


@pytest.mark.parametrize(
    "zone", [None, timezone(timedelta(hours=2))], ids=["naive", "plus-two-hours"]
)
def test_custom_provider_returning_non_utc_created_at(
    pipeline: Pipeline, zone: timezone | None
) -> None:
    """The protocol asks for aware UTC: anything else names the row and the rule."""
    location = pipeline.add("zoned", at(10, 5), b"zoned")
    delete_row(pipeline, "zoned")
    rows = [SourceRecord("zoned", at(10, 5), location, 5)]
    with pytest.raises(SourceError) as caught:
        pipeline.run(source=_ZonedSource(rows, zone))
    says(caught.value, "'zoned'", "not aware UTC", "must return aware UTC datetimes")
    pipeline.assert_nothing_moved()
    pipeline.finish(1, source=MemorySourceProvider(rows))


def test_custom_provider_returning_rows_out_of_order(pipeline: Pipeline) -> None:
    first = pipeline.add("first", at(10, 5), b"1")
    second = pipeline.add("second", at(10, 3), b"2")
    rows = [SourceRecord("first", at(10, 5), first), SourceRecord("second", at(10, 3), second)]
    source = _ZonedSource(rows, UTC)
    with pytest.raises(SourceError) as caught:
        pipeline.run(source=source)
    says(caught.value, "'second'", "out of order", "ordered by (created_at, uid)")
    pipeline.assert_nothing_moved()
    pipeline.finish(2)


# === timestamps and settings from the API and config files =================================


def test_naive_datetimes_from_the_api_are_rejected(pipeline: Pipeline) -> None:
    pipeline.good_rows()
    naive = datetime(2024, 5, 10)
    attempts: dict[str, Callable[[], object]] = {
        "watermark.initial": lambda: pipeline.orchestrator(initial=naive),
        "clock()": lambda: pipeline.run(clock=lambda: datetime(2024, 5, 14, 9)),
        "watermark position": lambda: pipeline.store.set(KEY, naive, reason="naive"),
        "created_at": lambda: pipeline.archive().get("good-10-0", naive),
    }
    for what, attempt in attempts.items():
        with pytest.raises(NaiveDatetimeError) as caught:
            attempt()
        says(caught.value, what, "naive datetime", "datetime(..., tzinfo=timezone.utc)")
        assert isinstance(caught.value, ConfigError)
    pipeline.assert_nothing_moved()
    pipeline.finish(9)


def test_aware_datetimes_in_other_zones_are_converted_to_utc(pipeline: Pipeline) -> None:
    pipeline.good_rows()
    warsaw = timezone(timedelta(hours=2))
    # 2024-05-11 01:00 in Warsaw is May 10, 23:00 UTC: the watermark starts at May 10.
    orchestrator = pipeline.orchestrator(initial=datetime(2024, 5, 11, 1, tzinfo=warsaw))
    assert orchestrator.initial_position() == START
    result = orchestrator.run_cycle()
    assert result.window.start == START
    assert result.window.start.utcoffset() == timedelta(0)
    india = timezone(timedelta(hours=5, minutes=30))
    moved = pipeline.store.set(KEY, datetime(2024, 5, 11, 5, 30, tzinfo=india), reason="tz")
    assert moved.position == datetime(2024, 5, 11, tzinfo=UTC)
    assert moved.position.tzinfo is not None
    assert moved.position.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('"2024-05-01"', datetime(2024, 5, 1, tzinfo=UTC)),
        ('"2024-05-01T12:00:00"', datetime(2024, 5, 1, 12, tzinfo=UTC)),  # no offset: UTC
        ('"2024-05-01T01:00:00+02:00"', datetime(2024, 4, 30, 23, tzinfo=UTC)),
        ('"2024-05-01T00:00:00Z"', datetime(2024, 5, 1, tzinfo=UTC)),
    ],
)
def test_timestamps_in_config_files_follow_one_rule(text: str, expected: datetime) -> None:
    config = Config.from_mapping(tomllib.loads(f"{MINIMAL}[watermark]\ninitial = {text}\n"))
    assert config.initial == expected
    assert config.initial is not None
    assert config.initial.utcoffset() == timedelta(0)


def test_unparseable_timestamp_in_config() -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_mapping(tomllib.loads(f'{MINIMAL}[watermark]\ninitial = "yesterday"\n'))
    assert caught.value.key == "watermark.initial"
    says(caught.value, "'yesterday' is not an ISO 8601", "Use e.g. 2024-05-01")


@pytest.mark.parametrize("value", ["2024-05-01", "2024-05-01T00:00:00Z"])
def test_native_toml_dates_in_config(value: str) -> None:
    config = Config.from_mapping(tomllib.loads(f"{MINIMAL}[watermark]\ninitial = {value}\n"))
    assert config.initial == datetime(2024, 5, 1, tzinfo=UTC)


def test_watermark_in_the_future(pipeline: Pipeline) -> None:
    pipeline.good_rows()
    future = NOW + timedelta(days=30)
    pipeline.store.set(KEY, pipeline.router.bucket_start(future), reason="typo in a date")
    with pytest.raises(WatermarkError) as caught:
        pipeline.run()
    says(caught.value, str(KEY), "future")
    has_hint(caught.value)


def test_negative_lag(pipeline: Pipeline) -> None:
    with pytest.raises(ConfigError) as caught:
        pipeline.orchestrator(lag=timedelta(days=-1))
    assert caught.value.key == "watermark.lag_days"
    says(caught.value, "must be zero or positive", "how old a file must be")
    with pytest.raises(ConfigError) as from_file:
        Config.from_mapping(tomllib.loads(f"{MINIMAL}[watermark]\nlag_days = -1\n"))
    assert from_file.value.key == "watermark.lag_days"
    assert pipeline.position() is None


MINIMAL = '[source]\nurl = "sqlite:///source.db"\n[archive]\nurl = "archive"\n'


@pytest.mark.parametrize(
    ("extra", "key", "text"),
    [
        ("[watermark]\nlag_dayz = 3\n", "watermark.lag_dayz", "settings of [watermark]: initial"),
        (
            "[wat]\nx = 1\n",
            "wat",
            "known sections: archive, audit, files, flag, monitoring, run, serve, source, "
            "watermark",
        ),
        ("[run]\non_eror = 'stop'\n", "run.on_eror", "settings of [run]:"),
    ],
    ids=["setting", "section", "typo"],
)
def test_unknown_config_key(tmp_path: Path, extra: str, key: str, text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_mapping(tomllib.loads(MINIMAL + extra))
    assert caught.value.key == key
    says(caught.value, key, text)
    path = tmp_path / "deswm.toml"
    path.write_text(MINIMAL + extra)
    with restored_logging():
        assert cli_main(["stats", "-c", str(path)]) == 2


@pytest.mark.parametrize(
    ("section", "line", "key", "text"),
    [
        ("archive", 'n_bits = "eight"', "archive.n_bits", "must be an integer, got 'eight'"),
        ("archive", "n_bits = 99", "archive.n_bits", "from 4 to 16"),
        ("source", "page_size = true", "source.page_size", "must be an integer, got True"),
        ("watermark", 'lag_days = "seven"', "watermark.lag_days", "must be a number"),
        ("archive", 'max_shard_size = "ten gigs"', "archive.max_shard_size", '"64MiB"'),
        ("archive", "storage_options = [1]", "archive.storage_options", "must be a table"),
        ("run", 'on_error = "skip"', "run.on_error", "'stop', 'record'"),
        ("source", 'timezone = "Mars/Olympus"', "source.timezone", "IANA name"),
        ("run", "partitions = 0", "run.partition", "0 <= index < count"),
        ("files", 'allowed_roots = "/data"', "files.allowed_roots", "must be a list, got str"),
        ("files", "allowed_roots = [1]", "files.allowed_roots[0]", "must be a non-empty string"),
    ],
)
def test_wrong_types_and_values_in_config(
    tmp_path: Path, section: str, line: str, key: str, text: str
) -> None:
    path = tmp_path / "deswm.toml"
    sections = {"source": 'url = "sqlite:///source.db"', "archive": 'url = "archive"'}
    sections[section] = sections.get(section, "") + "\n" + line
    path.write_text("".join(f"[{name}]\n{body}\n" for name, body in sections.items()))
    with pytest.raises(ConfigError) as caught:
        load_config(path).build_router()
    assert caught.value.key == key
    says(caught.value, key, text)


# === files ===============================================================================


def test_missing_file(pipeline: Pipeline) -> None:
    pipeline.good_rows()
    pipeline.add("gone", at(10, 5), None, location="gone.dat")
    with pytest.raises(CycleError) as caught:
        pipeline.run()
    says(
        caught.value,
        "'gone' (gone.dat)",
        "FileMissingError",
        "Restore the file or correct file_location",
        "Nothing was committed for this bucket",
    )
    assert [f.uid for f in caught.value.failures] == ["gone"]
    pipeline.assert_nothing_moved()
    pipeline.add("restored-marker", at(12, 9), b"m")
    (pipeline.files / "gone.dat").write_bytes(b"back again")
    pipeline.contents["gone.dat"] = b"back again"
    pipeline.finish(11)


def test_unreadable_file(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline.good_rows()
    location = pipeline.add("secret", at(10, 5), b"classified")
    victim = pipeline.files / location
    if os.geteuid() == 0:  # root reads anything: simulate the EACCES open() would give
        real = readers_module._read_local

        def denied(path: str, roots: Any = None) -> bytes:
            if Path(path) == victim:
                raise PermissionError(errno.EACCES, "Permission denied", path)
            return real(path, roots)

        monkeypatch.setattr(readers_module, "_read_local", denied)
        native = _contain._NATIVE_READ
        if native is not None:  # the C helper reads relative locations without _read_local

            def denied_natively(dirfd: int, path: str) -> bytes | None:
                if path.endswith(location):
                    raise PermissionError(errno.EACCES, "Permission denied", path)
                return native(dirfd, path)

            monkeypatch.setattr(_contain, "_NATIVE_READ", denied_natively)
    else:  # pragma: no cover - CI runs as root
        victim.chmod(0)
    with pytest.raises(CycleError) as caught:
        pipeline.run()
    failure = caught.value.failures[0]
    assert (failure.uid, failure.error_type) == ("secret", "FileReadError")
    says(caught.value, location, "permission denied (read)", "Grant the archiving process")
    pipeline.assert_nothing_moved()
    monkeypatch.undo()
    victim.chmod(0o644)
    pipeline.finish(10)


def test_directory_as_location(pipeline: Pipeline) -> None:
    pipeline.good_rows()
    (pipeline.files / "a-folder").mkdir()
    pipeline.add("folder", at(10, 5), None, location="a-folder")
    with pytest.raises(CycleError) as caught:
        pipeline.run()
    says(caught.value, "'folder' (a-folder)", "is a directory, not a file", "must name a file")
    pipeline.assert_nothing_moved()
    delete_row(pipeline, "folder")
    pipeline.finish(9)


def test_relative_location_without_a_root(pipeline: Pipeline) -> None:
    pipeline.good_rows()
    with pytest.raises(CycleError) as caught:
        pipeline.run(reader=FsspecFileReader())
    says(caught.value, "is a relative location and the reader has no root", "root=")
    pipeline.assert_nothing_moved()
    pipeline.finish(9)


_ESCAPES: dict[str, Callable[[Any], str]] = {
    "dotdot": lambda p: "../outside/victim.txt",
    "dotdot-to-the-watermark-db": lambda p: "../watermark.db",
    "absolute": lambda p: str(p.root / "outside" / "victim.txt"),
    "symlink-out": lambda p: "link-out.txt",
    "file-url": lambda p: f"file://{p.root / 'outside' / 'victim.txt'}",
    "home": lambda p: "~/victim.txt",
    "nul": lambda p: "ok.txt\x00/../../outside/victim.txt",
    "backslash": lambda p: "..\\outside\\victim.txt",
    "other-scheme": lambda p: "memory://outside/victim.txt",
}


def _outside_files(pipeline: Pipeline) -> dict[Path, bytes]:
    victim = pipeline.root / "outside" / "victim.txt"
    victim.parent.mkdir(exist_ok=True)
    victim.write_bytes(b"not deswm's to archive or delete")
    (pipeline.files / "link-out.txt").symlink_to(victim)
    return {victim: victim.read_bytes(), pipeline.root / "watermark.db": b""}


def _still_there(outside: dict[Path, bytes]) -> None:
    for path, data in outside.items():
        assert path.exists(), f"{path} was deleted"
        if data:
            assert path.read_bytes() == data


@pytest.mark.parametrize("escape", sorted(_ESCAPES))
def test_location_outside_files_root(pipeline: Pipeline, escape: str) -> None:
    """A row must not reach outside files.root: never read, archived or deleted, with
    on_error="stop" (the cycle stops) and "record" (an error-table row), through
    ``errors retry`` and ``purge`` alike."""
    from deswm._purge import PurgeJob
    from deswm._stores.error_store import SqlErrorStore

    outside = _outside_files(pipeline)
    location = _ESCAPES[escape](pipeline)
    pipeline.good_rows()
    pipeline.add("escapee", at(10, 5), None, location=location)
    with pytest.raises(CycleError) as caught:
        pipeline.run()
    [failure] = caught.value.failures
    assert (failure.uid, failure.location) == ("escapee", location)
    assert failure.error_type == "LocationOutsideRootError"
    says(caught.value, "'escapee'", "is outside files.root", "files.allowed_roots")
    assert ("\x00" in location) != (location in str(caught.value))  # NUL is shown escaped
    pipeline.assert_nothing_moved()
    _still_there(outside)

    errors = SqlErrorStore(pipeline.store.url)
    try:
        options: dict[str, Any] = {"on_error": "record", "error_store": errors}
        result = pipeline.run(**options, max_failure_ratio=0.5)
        assert result.watermark_after == TARGET
        [listed] = errors.list(KEY)
        assert (listed.failure.uid, listed.failure.location) == ("escapee", location)
        assert listed.failure.error_type == "LocationOutsideRootError"
        retried = pipeline.orchestrator(**options).retry_errors()
        assert [f.error_type for f in retried.failures] == ["LocationOutsideRootError"]
        purge = PurgeJob(
            pipeline.store,
            pipeline.source(),
            pipeline.reader(),
            pipeline.archive(),
            pipeline.router,
            pipeline=KEY.pipeline,
            initial=START,
            error_store=errors,
        ).run()
        assert (purge.deleted, purge.kept_listed) == (9, 1)
        _still_there(outside)
        checked = assert_no_loss(
            pipeline.source(),
            pipeline.archive(),
            pipeline.store,
            KEY,
            pipeline.contents,
            since=START,
            errors=errors,
        )
        assert checked == 10  # nine archived, the escapee listed
        assert not any(uid == "escapee" for uid in _archived_uids(pipeline)), (
            "the outside file was archived"
        )
    finally:
        errors.close()


def _archived_uids(pipeline: Pipeline) -> set[str]:
    from deswm._container import read_shard

    return {
        entry.uid
        for part in pipeline.archive_dir.glob("*.des")
        for entry in read_shard(part.read_bytes()).entries
    }


@pytest.mark.parametrize(
    "escape",
    [
        "sibling-prefix",
        "other-bucket",
        "other-scheme",
        "dotdot",
        "dotdot-in-url",
        "local-file",
        "credentials-in-url",
    ],
)
def test_s3_location_outside_files_root(
    pipeline: Pipeline, moto_s3: Any, s3_bucket: str, escape: str
) -> None:
    fs = moto_s3.filesystem()
    other = moto_s3.new_bucket()
    fs.pipe_file(f"{s3_bucket}/root2/victim.txt", b"OUTSIDE")
    fs.pipe_file(f"{other}/root/victim.txt", b"OUTSIDE")
    outside_local = _outside_files(pipeline)
    location = {
        "sibling-prefix": f"s3://{s3_bucket}/root2/victim.txt",
        "other-bucket": f"s3://{other}/root/victim.txt",
        "other-scheme": f"memory://{s3_bucket}/root/victim.txt",
        "dotdot": "../root2/victim.txt",
        "dotdot-in-url": f"s3://{s3_bucket}/root/../root2/victim.txt",
        "local-file": str(pipeline.root / "outside" / "victim.txt"),
        "credentials-in-url": f"s3://key:hunter22@{s3_bucket}/root2/victim.txt?X-Amz-Signature=s1g",
    }[escape]
    for n in range(3):
        fs.pipe_file(f"{s3_bucket}/root/good-{n}.dat", b"good %d" % n)
        pipeline.add(f"good-{n}", at(10, 2 + n), None, location=f"good-{n}.dat")
        pipeline.contents[f"good-{n}.dat"] = b"good %d" % n
    pipeline.add("escapee", at(10, 6), None, location=location)
    reader = FsspecFileReader(
        root=f"s3://{s3_bucket}/root", storage_options={"s3": moto_s3.storage_options}
    )
    with pytest.raises(CycleError) as caught:
        pipeline.run(reader=reader)
    says(caught.value, "'escapee'", redact(location), "LocationOutsideRootError", "is outside")
    assert "hunter22" not in str(caught.value)
    assert "s1g" not in str(caught.value)
    pipeline.assert_nothing_moved()
    from deswm._purge import PurgeJob
    from deswm._stores.error_store import SqlErrorStore

    errors = SqlErrorStore(pipeline.store.url)
    try:
        pipeline.run(reader=reader, on_error="record", error_store=errors, max_failure_ratio=0.5)
        [listed] = errors.list(KEY)
        assert (listed.failure.uid, listed.failure.location) == ("escapee", location)
        PurgeJob(
            pipeline.store,
            pipeline.source(),
            reader,
            pipeline.archive(),
            pipeline.router,
            pipeline=KEY.pipeline,
            initial=START,
            error_store=errors,
            verify="index",
        ).run()
    finally:
        errors.close()
    fs.invalidate_cache()
    assert fs.cat_file(f"{s3_bucket}/root2/victim.txt") == b"OUTSIDE"
    assert fs.cat_file(f"{other}/root/victim.txt") == b"OUTSIDE"
    assert not fs.exists(f"{s3_bucket}/root/good-0.dat")  # inside: purged as usual
    _still_there(outside_local)


def test_purge_without_files_root_refuses_to_start(
    pipeline: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline.good_rows()
    config = write_config(tmp_path, pipeline)
    text = config.read_text().replace(f"root = {json.dumps(str(pipeline.files))}\n", "")
    config.write_text(text.replace('table = "files"', 'table = "files"\n', 1))
    with restored_logging():
        code = cli_main(["purge", "-c", str(config)])
    err = capsys.readouterr().err
    assert code == 2
    says_text(err, "files.root", "files.allowed_roots", "which folders it owns")


def test_allowed_roots_keep_absolute_locations_across_folders(
    pipeline: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A table of absolute locations in several folders: list them in allowed_roots."""
    outside = _outside_files(pipeline)
    second = tmp_path / "second-volume"
    second.mkdir()
    (second / "b.dat").write_bytes(b"on the second volume")
    (pipeline.files / "a.dat").write_bytes(b"on the first")
    pipeline.add("a", at(10, 2), None, location=str(pipeline.files / "a.dat"))
    pipeline.add("b", at(10, 3), None, location=str(second / "b.dat"))
    pipeline.add("out", at(11, 3), None, location=str(pipeline.root / "outside" / "victim.txt"))
    config = write_config(tmp_path, pipeline)
    text = config.read_text().replace(
        f"root = {json.dumps(str(pipeline.files))}\n",
        f"allowed_roots = [{json.dumps(str(pipeline.files))}, {json.dumps(str(second))}]\n",
    )
    config.write_text(text + '[run]\non_error = "record"\nmax_failure_ratio = 1\n')
    with restored_logging():
        assert cli_main(["run", "-c", str(config)]) == 0
        assert cli_main(["purge", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    says_text(out, "deleted 2 file(s)", "1 kept (in the error table)")
    assert not (second / "b.dat").exists()
    assert not (pipeline.files / "a.dat").exists()
    _still_there(outside)
    assert pipeline.archive().get("b", at(10, 3)) == b"on the second volume"


def test_get_into_a_folder_never_writes_outside_it(
    pipeline: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``deswm get -o DIR`` names the file after the uid: a uid is a name, not a path."""
    uids = ["plain", "../../escape", "a/b", "..", "back\\slash"]
    for n, uid in enumerate(uids):
        pipeline.add(uid, at(10, 3, n), b"bytes of %d" % n)
    pipeline.finish(len(uids))
    config = str(write_config(tmp_path, pipeline))
    out = tmp_path / "out" / "deep"
    out.mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"OUTSIDE")
    (out / "linked").symlink_to(victim)
    pipeline.add("linked", at(10, 4), b"would overwrite the victim")
    pipeline.store.set(KEY, START, reason="archive the linked row too")
    pipeline.run()

    def get(uid: str, minute: int, target: str, hour: int = 3) -> tuple[int, str]:
        when = format_utc(at(10, hour, minute))
        with restored_logging():
            code = cli_main(["get", "-c", config, uid, "--created-at", when, "-o", target])
        return code, capsys.readouterr().err

    assert get("plain", 0, str(out))[0] == 0
    assert (out / "plain").read_bytes() == b"bytes of 0"
    for n, uid in enumerate(uids[1:], start=1):
        code, err = get(uid, n, str(out) + "/")
        assert code == 2, err
        says_text(err, "--output", repr(uid), "cannot be a file name in", "Pass -o with a file")
    code, err = get("linked", 0, str(out), hour=4)
    assert code == 1
    says_text(err, "cannot write", "linked", "a symlink named after the uid is not followed")
    assert victim.read_bytes() == b"OUTSIDE"
    assert sorted(p.name for p in out.iterdir()) == ["linked", "plain"]
    assert not (tmp_path / "escape").exists()
    assert not (tmp_path / "out" / "escape").exists()
    assert get("../../escape", 1, str(tmp_path / "chosen.bin"))[0] == 0  # -o FILE: any uid
    assert (tmp_path / "chosen.bin").read_bytes() == b"bytes of 1"


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")}


def test_demo_refuses_a_folder_it_did_not_create(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``deswm demo --dir`` runs the config it finds there: only its own, or a new folder."""
    from deswm._demo import run_demo

    project = tmp_path / "project"
    project.mkdir()
    (project / "deswm.toml").write_text("# the production config\n[source]\nurl = 'x'\n")
    (project / "source.sqlite3").write_bytes(b"their database")
    before = _tree_bytes(project)
    with restored_logging():
        code = cli_main(["demo", "--dir", str(project), "--files", "5"])
    assert code == 2
    says_text(capsys.readouterr().err, "--dir", "is not empty and is not a folder of deswm demo")
    (tmp_path / "a-file").write_bytes(b"x")
    with pytest.raises(ConfigError, match="is not a folder"):
        run_demo(tmp_path / "a-file", files=5, echo=lambda _: None)
    assert _tree_bytes(project) == before

    demo = tmp_path / "demo"
    run_demo(demo, files=5, echo=lambda _: None)
    run_demo(demo, files=5, echo=lambda _: None)  # its own folder: reused
    victim = tmp_path / "outside"
    victim.mkdir()
    (demo / "source.sqlite3").unlink()
    shutil.rmtree(demo / "files")
    (demo / "files").symlink_to(victim)
    with pytest.raises(DeswmError, match="leads outside"):
        run_demo(demo, files=5, echo=lambda _: None)
    assert list(victim.iterdir()) == []


def test_empty_file_is_archived(pipeline: Pipeline) -> None:
    pipeline.add("empty", at(10, 5), b"")
    pipeline.finish(1)
    assert pipeline.archive().get("empty", at(10, 5)) == b""
    assert pipeline.archive().stat("empty", at(10, 5)).size == 0


def test_size_column_that_disagrees_with_the_file(pipeline: Pipeline) -> None:
    """The size column is for stats only: the bytes read are archived, whatever it says."""
    pipeline.add("stale-size", at(10, 5), b"12345", size=999)
    pipeline.add("no-size", at(10, 6), b"abc", size=0)
    stats = pipeline.source().pending_stats(Window(START, TARGET))
    assert stats.bytes == 999
    pipeline.finish(2)
    assert pipeline.archive().get("stale-size", at(10, 5)) == b"12345"


class _ChangingReader(FsspecFileReader):
    """A file that is rewritten while deswm reads it: each read sees the next version."""

    def __init__(self, root: Path, versions: list[bytes]) -> None:
        super().__init__(root=root, retries=0)
        self.versions = versions
        self.reads = 0

    def read(self, location: str) -> bytes:
        if location != "changing.dat":
            return super().read(location)
        data = self.versions[min(self.reads, len(self.versions) - 1)]
        self.reads += 1
        return data


def test_file_changing_while_read(pipeline: Pipeline) -> None:
    """deswm reads each file once per cycle and archives exactly those bytes, with their
    sha256; a replay after the file changed archives the new bytes in place (the entry
    is replaced, every other entry is kept)."""
    pipeline.good_rows((10,))
    pipeline.add("changing", at(10, 5), b"version 1", location="changing.dat")
    reader = _ChangingReader(pipeline.files, [b"version 1", b"version 2, longer"])
    pipeline.run(reader=reader)
    assert reader.reads == 1
    archive = pipeline.archive()
    assert archive.get("changing", at(10, 5)) == b"version 1"
    pipeline.store.set(KEY, START, reason="replay after the file changed")
    pipeline.run(reader=reader)
    assert pipeline.archive().get("changing", at(10, 5)) == b"version 2, longer"
    for part in pipeline.archive().shards("20240510"):
        pipeline.archive().verify(part.name)  # every checksum matches its bytes
    pipeline.contents["changing.dat"] = b"version 2, longer"
    assert pipeline.check_no_loss() == 4


# === destinations and services ===========================================================


def test_truncated_shard_in_the_destination(pipeline: Pipeline) -> None:
    pipeline.good_rows((10,), per_day=6)
    pipeline.run()
    victim = sorted(pipeline.archive_dir.glob("*.des"))[0]
    intact = victim.read_bytes()
    victim.write_bytes(intact[:-5])
    pipeline.store.set(KEY, START, reason="replay")
    with pytest.raises(PackError) as caught:
        pipeline.run()
    says(
        caught.value,
        victim.name,
        "cannot be read, so group",
        "was not written (that would lose its entries)",
        "Restore",
        "move it aside and replay its day",
    )
    assert victim.read_bytes() == intact[:-5], "the damaged shard was overwritten"
    pipeline.assert_nothing_moved()
    victim.rename(pipeline.root / victim.name)  # moved aside, as the hint says
    pipeline.finish(6)


def test_foreign_object_named_like_a_shard(pipeline: Pipeline) -> None:
    location = pipeline.add("mine", at(10, 5), b"mine")
    key = pipeline.router.route("mine", at(10, 5))
    pipeline.archive_dir.mkdir()
    foreign = pipeline.archive_dir / key.object_name(0)
    foreign.write_bytes(b"<html>not a DES shard</html>")
    with pytest.raises(PackError) as caught:
        pipeline.run()
    says(caught.value, foreign.name, "bad magic", "Restore")
    assert foreign.read_bytes() == b"<html>not a DES shard</html>"
    pipeline.assert_nothing_moved()
    foreign.unlink()
    pipeline.finish(1)
    assert location in pipeline.contents


def test_foreign_des_shard_of_another_writer_is_merged(pipeline: Pipeline) -> None:
    """A valid shard by another DES writer (no checksums) is kept entry for entry (G3)."""
    pipeline.add("mine", at(10, 5), b"mine")
    key = pipeline.router.route("mine", at(10, 5))
    other = next(
        f"other-{n}" for n in range(1000) if pipeline.router.shard_index(f"other-{n}") == key.index
    )
    pipeline.archive_dir.mkdir()
    (pipeline.archive_dir / key.object_name(0)).write_bytes(build_shard([(other, b"theirs")]))
    pipeline.finish(1)
    assert pipeline.archive().get(other, at(10, 7), allow_unverified=True) == b"theirs"


class _DiskFull:
    """A folder whose disk is full: a tiny tmpfs as root, else ENOSPC from os.write/fsync."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.mounted = False
        self._patches: list[Any] = []

    def __enter__(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0 and shutil.which("mount") and not os.environ.get("DESWM_NO_TMPFS"):
            done = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(self.folder)],
                capture_output=True,
                check=False,
            )
            self.mounted = done.returncode == 0
        if not self.mounted:
            self._patch()
        return self.folder

    def _inside(self, fd: int) -> bool:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return False
        return target.startswith(str(self.folder.resolve()) + os.sep)

    def _patch(self) -> None:
        real_write, real_fsync = os.write, os.fsync

        def write(fd: int, data: Any) -> int:
            if self._inside(fd):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(fd, data)

        def fsync(fd: int) -> None:
            if self._inside(fd):
                raise OSError(errno.ENOSPC, "No space left on device")
            real_fsync(fd)

        self._patches = [mock.patch("os.write", write), mock.patch("os.fsync", fsync)]
        for patch in self._patches:
            patch.start()

    def __exit__(self, *exc: object) -> None:
        for patch in self._patches:
            patch.stop()
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.folder)], check=False)


def incompressible(pipeline: Pipeline, count: int = 6) -> None:
    for n in range(count):
        pipeline.add(f"big-{n}", at(10, 3, n), os.urandom(60_000))


def test_disk_full_in_the_destination(tmp_path: Path) -> None:
    with _DiskFull(tmp_path / "full") as folder:
        pipeline = Pipeline(tmp_path / "p", compression="none")
        pipeline.archive_dir = folder
        try:
            incompressible(pipeline)
            with pytest.raises(PackError) as caught:
                pipeline.run()
            says(caught.value, str(folder), ".des", "No space left on device")
            says(caught.value, "Nothing partial is visible; the bucket can be retried")
            pipeline.assert_nothing_moved()
            assert not [p for p in folder.iterdir() if p.name.startswith(".")], "temp files left"
            for name in read_objects(folder):  # what was published is whole
                pipeline.archive().verify(name)
            pipeline.archive_dir = tmp_path / "bigger-disk"
            pipeline.finish(6)
        finally:
            pipeline.close()


def test_disk_full_writing_a_big_file(tmp_path: Path) -> None:
    with _DiskFull(tmp_path / "full") as folder:
        pipeline = Pipeline(tmp_path / "p", compression="none", big_file_threshold=50_000)
        pipeline.archive_dir = folder
        try:
            incompressible(pipeline)
            with pytest.raises(PackError) as caught:
                pipeline.run()
            says(caught.value, "_bigFiles/", "No space left on device")
            pipeline.assert_nothing_moved()
            has_hint(caught.value)
        finally:
            pipeline.close()


def test_disk_full_in_the_spill_folder(tmp_path: Path) -> None:
    with _DiskFull(tmp_path / "full") as folder:
        pipeline = Pipeline(tmp_path / "p", compression="none", spill_threshold=0, spill_dir=folder)
        try:
            incompressible(pipeline)
            with pytest.raises(PackError) as caught:
                pipeline.run()
            says(caught.value, "spill", "No space left on device", "spill_dir")
        finally:
            pipeline.assert_nothing_moved()
            pipeline.close()


def test_disk_full_in_the_spill_folder_with_workers(tmp_path: Path) -> None:
    with _DiskFull(tmp_path / "full") as folder:
        pipeline = Pipeline(
            tmp_path / "p", compression="none", spill_threshold=0, spill_dir=folder, workers=2
        )
        try:
            incompressible(pipeline)
            with pytest.raises(PackError) as caught:
                pipeline.run()
            pipeline.assert_nothing_moved()
            says(caught.value, "No space left on device", str(folder))
            has_hint(caught.value)
        finally:
            pipeline.close()


# --- S3 (moto) ------------------------------------------------------------------------------


def _s3_error(kind: str, operation: str, endpoint: str) -> Exception:
    import botocore.exceptions

    error: Exception
    if kind == "timeout":
        error = botocore.exceptions.ReadTimeoutError(endpoint_url=f"{endpoint}/{operation}")
        return error
    code, status, text = {
        "503": ("SlowDown", 503, "Please reduce your request rate."),
        "500": ("InternalError", 500, "We encountered an internal error."),
    }[kind]
    error = botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": text}, "ResponseMetadata": {"HTTPStatusCode": status}},
        operation,
    )
    return error


@contextlib.contextmanager
def s3_faults(
    monkeypatch: pytest.MonkeyPatch, moto_s3: Any, operation: str, kind: str, times: int
) -> Iterator[dict[str, int]]:
    """The next ``times`` S3 ``operation`` requests fail with a 5xx or a timeout.

    Injected at the botocore client, so s3fs's error translation and deswm's retries and
    error mapping all run as they would against a real S3.
    """
    from aiobotocore.client import AioBaseClient
    from s3fs import S3FileSystem

    state = {"left": times, "failed": 0}
    original = AioBaseClient._make_api_call

    async def flaky(self: Any, name: str, params: Any) -> Any:
        if name == operation and state["left"] > 0:
            state["left"] -= 1
            state["failed"] += 1
            raise _s3_error(kind, name, moto_s3.endpoint_url)
        return await original(self, name, params)

    with monkeypatch.context() as patch:
        patch.setattr(AioBaseClient, "_make_api_call", flaky)
        patch.setattr(S3FileSystem, "retries", 1)  # s3fs's own retry loop, once
        yield state


def s3_pipeline(pipeline: Pipeline, moto_s3: Any) -> tuple[str, FsspecFileReader]:
    bucket = moto_s3.new_bucket()
    fs = moto_s3.filesystem()
    for n in range(3):
        location = f"s3://{bucket}/src/{n}.dat"
        fs.pipe_file(location, b"s3 file %d" % n)
        pipeline.add(f"s3-{n}", at(10, 3 + n), None, location=location, size=9)
        pipeline.contents[location] = b"s3 file %d" % n
    reader = FsspecFileReader(
        storage_options={"s3": moto_s3.storage_options}, retries=2, retry_backoff=0.01
    )
    return bucket, reader


@pytest.mark.parametrize("kind", ["503", "500", "timeout"])
def test_s3_source_errors_are_retried(
    pipeline: Pipeline, moto_s3: Any, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    _, reader = s3_pipeline(pipeline, moto_s3)
    with s3_faults(monkeypatch, moto_s3, "GetObject", kind, times=2) as state:
        result = pipeline.run(reader=reader)
    assert state["failed"] == 2
    assert result.watermark_after == TARGET
    assert pipeline.check_no_loss() == 3


@pytest.mark.parametrize("kind", ["503", "timeout"])
def test_s3_source_errors_that_last(
    pipeline: Pipeline, moto_s3: Any, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    bucket, reader = s3_pipeline(pipeline, moto_s3)
    with (
        s3_faults(monkeypatch, moto_s3, "GetObject", kind, times=10**6),
        pytest.raises(CycleError) as caught,
    ):
        pipeline.run(reader=reader)
    says(caught.value, f"s3://{bucket}/src/0.dat", "could not read after 3 attempts")
    says(caught.value, "Nothing was committed for this bucket")
    pipeline.assert_nothing_moved()
    pipeline.finish(3, reader=reader)


def test_s3_destination_5xx(
    pipeline: Pipeline, moto_s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline.good_rows()
    bucket = moto_s3.new_bucket()
    options = moto_s3.storage_options
    packer = DesPacker(f"s3://{bucket}/archive", pipeline.router, storage_options=options)
    with (
        s3_faults(monkeypatch, moto_s3, "PutObject", "503", times=10**6),
        pytest.raises(PackError) as caught,
    ):
        pipeline.run(packer=packer)
    says(caught.value, f"s3://{bucket}/archive/2024051", "Please reduce your request rate")
    says(caught.value, "Nothing partial is visible; the bucket can be retried")
    pipeline.assert_nothing_moved()
    assert snapshot(packer) == {}
    pipeline.run(packer=packer)
    archive = Archive(f"s3://{bucket}/archive", pipeline.router, storage_options=options)
    assert (
        assert_no_loss(
            pipeline.source(), archive, pipeline.store, KEY, pipeline.contents, since=START
        )
        == 9
    )


# --- PostgreSQL ---------------------------------------------------------------------------


@pytest.fixture
def pg_url() -> Iterator[str]:
    from conftest import postgres_url

    with postgres_url() as url:
        yield url


def test_database_connection_lost_mid_stream(pg_url: str, tmp_path: Path) -> None:
    name = f"deswm-bad-{uuid.uuid4().hex[:8]}"
    url = sa.make_url(pg_url).update_query_dict({"application_name": name})
    pipeline = Pipeline(tmp_path, source_url=url.render_as_string(hide_password=False))
    admin = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    try:
        pipeline.good_rows(per_day=8)

        def cut_the_connection(_point: str, _hit: int) -> None:
            with admin.begin() as conn:
                conn.execute(
                    sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": name},
                )

        # One row at a time (no read-ahead), so the 10th file is added while the page
        # holding it is still streaming from an open server-side cursor.
        reader = pipeline.reader(max_workers=1, read_ahead=1)
        with (
            at_checkpoint(Checkpoint.PACKER_AFTER_ADD, cut_the_connection, on=10),
            pytest.raises(SourceError) as caught,
        ):
            pipeline.run(reader=reader)
        message = says(
            caught.value,
            "reading a page of rows failed for table 'files'",
            "terminating connection",
            "Check that the database is reachable",
        )
        assert "postgres:" not in message or "***" in message
        # The first day was committed before the connection died; the second was not.
        assert pipeline.position() == datetime(2024, 5, 11, tzinfo=UTC)
        assert pipeline.check_no_loss() == 8
        pipeline.finish(24)
    finally:
        admin.dispose()
        pipeline.close()


def test_password_in_the_url_is_never_printed(
    pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "hunter2-" + uuid.uuid4().hex[:6]
    url = sa.make_url(pg_url).set(password=secret).render_as_string(hide_password=False)
    pipeline = Pipeline(tmp_path, source_url=url)  # trust auth: any password connects
    try:
        pipeline.good_rows()
        pipeline.add("gone", at(11, 5), None, location="gone.dat")  # a failing cycle too
        config = write_config(tmp_path, pipeline, source_url=url)
        outputs = []
        with restored_logging():
            for args in (
                ["-v", "run", "-c", str(config)],
                ["-v", "run", "--json", "-c", str(config)],
                ["-v", "stats", "--json", "-c", str(config)],
                ["-v", "run", "--dry-run", "-c", str(config)],
                ["watermark", "get", "-c", str(config)],
                ["-v", "verify", "-c", str(config)],
            ):
                cli_main(args)
                captured = capsys.readouterr()
                outputs.append(captured.out + captured.err)
        missing_table = tmp_path / "missing.toml"
        missing_table.write_text(config.read_text().replace('table = "files"', 'table = "nope"'))
        with restored_logging():
            assert cli_main(["stats", "-c", str(missing_table)]) == 2
        captured = capsys.readouterr()
        outputs.append(captured.out + captured.err)
        assert "***" in outputs[-1], "the URL in the error is shown, with its password masked"
        built = load_config(config).build_orchestrator()
        outputs += [repr(built), repr(built.source), repr(built.store), repr(built.packer)]
        for text in outputs:
            assert secret not in text
        assert "1 file(s) failed" in outputs[0], "the failing cycle was part of what was checked"
    finally:
        pipeline.close()


def test_password_and_secrets_never_in_config_reprs() -> None:
    config = Config.from_mapping(
        tomllib.loads(
            '[source]\nurl = "postgresql+psycopg://u:pw-source@db/files"\n'
            '[watermark]\nurl = "postgresql+psycopg://u:pw-watermark@db/wm"\n'
            '[archive]\nurl = "s3://bucket/des"\n'
            'storage_options = {key = "AKIAEXAMPLE", secret = "pw-s3"}\n'
            '[files]\nstorage_options = {secret = "pw-files"}\n'
        )
    )
    shown = repr(config) + str(config.source) + str(config.archive) + str(config.files)
    for secret in ("pw-source", "pw-watermark", "pw-s3", "pw-files"):
        assert secret not in shown


# --- helpers for config and CLI tests ---------------------------------------------------------


def write_config(tmp_path: Path, pipeline: Pipeline, *, source_url: str | None = None) -> Path:
    url = source_url or pipeline.engine.url.render_as_string(hide_password=False)
    path = tmp_path / "deswm.toml"
    path.write_text(
        f'[source]\nurl = {json.dumps(url)}\ntable = "files"\n'
        f"[files]\nroot = {json.dumps(str(pipeline.files))}\nretries = 0\n"
        f'[watermark]\nurl = {json.dumps(pipeline.store.url)}\npipeline = "{KEY.pipeline}"\n'
        f'lag_days = 1\ninitial = "{START.date().isoformat()}"\n'
        f"[archive]\nurl = {json.dumps(str(pipeline.archive_dir))}\nn_bits = 4\n"
    )
    return path


def says_text(text: str, *parts: str) -> None:
    for part in parts:
        assert part in text, f"{part!r} is not in: {text}"


@contextlib.contextmanager
def restored_logging() -> Iterator[None]:
    """The CLI configures the ``deswm`` logger; put it back for the tests that follow."""
    logger = logging.getLogger("deswm")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    try:
        yield
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


def test_catalogue_is_documented() -> None:
    """docs/reliability.md lists every test of this file (and nothing that is gone)."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "reliability.md").read_text()
    names = sorted(
        name
        for name, value in globals().items()
        if name.startswith("test_") and callable(value) and name != "test_catalogue_is_documented"
    )
    missing = [name for name in names if f"`{name}`" not in doc]
    assert not missing, f"add to docs/reliability.md: {missing}"
    assert sys.modules[__name__]  # the table is checked against this very module
