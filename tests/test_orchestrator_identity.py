"""Entry identity (G14): an archived entry is ``(uid, created_at)``, never replaced by uid.

Rows ``u @ 10:00 -> a.bin`` and ``u @ 11:00 -> b.bin`` on one day, ``on_error =
"record"``: the first run archives ``a`` and lists ``b``; purge deletes ``a.bin``; then
``deswm errors retry`` and a replay must both refuse ``b`` again, so ``get u @ 10:00``
still returns ``a``'s bytes. End to end through the CLI on SQLite, and through the API
on PostgreSQL with an S3 archive.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from deswm._archive import Archive
from deswm._errors import ArchivedDuplicateError, EntryMismatchError, NotArchivedError
from deswm._model import SourceRecord, WatermarkKey, Window
from deswm._orchestrator import WatermarkOrchestrator
from deswm._packer import DesPacker
from deswm._purge import PurgeError, PurgeJob
from deswm._readers import FsspecFileReader
from deswm._routing import DesRouter
from deswm._sources.sql import SqlSourceProvider
from deswm._stores.error_store import SqlErrorStore
from deswm._stores.sql import SqlWatermarkStore
from deswm._verify import verify_window
from deswm.cli import main
from deswm.testing import MemoryFileReader, MemorySourceProvider, MemoryWatermarkStore
from deswm.testing._error_store import MemoryErrorStore

A_BYTES = b"the first file of uid u, archived first" * 3
B_BYTES = b"a different file that reuses uid u" * 2

_CONFIG = """\
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
pipeline = "ident"
lag_days = 7
initial = "2024-03-01"

[archive]
url = "archive"
n_bits = 4

[run]
on_error = "record"
max_failure_ratio = 0.5
"""


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "deswm.toml").write_text(_CONFIG)
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'source.sqlite3'}")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE files (uid TEXT NOT NULL, created_at DATETIME NOT NULL, "
                "file_location TEXT NOT NULL, size_bytes INTEGER)"
            )
        )
        for created, location, data in (
            ("2024-03-01 10:00:00.000000", "a.bin", A_BYTES),
            ("2024-03-01 11:00:00.000000", "b.bin", B_BYTES),
        ):
            (tmp_path / location).write_bytes(data)
            conn.execute(
                sa.text("INSERT INTO files VALUES ('u', :c, :l, :s)"),
                {"c": created, "l": location, "s": len(data)},
            )
    engine.dispose()
    return tmp_path


def _get(config: str, created_at: str, capsys: pytest.CaptureFixture[str], out: Path) -> int:
    code, _, _ = run(["get", "-c", config, "u", "--created-at", created_at, "-o", str(out)], capsys)
    return code


def test_retry_and_replay_never_replace_an_archived_entry_cli(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(folder / "deswm.toml")
    out = folder / "out.bin"
    code, text, err = run(["run", "-c", config, "--json"], capsys)
    assert code == 0, err
    failures = json.loads(text)["failures"]
    assert [(f["uid"], f["location"]) for f in failures] == [("u", "b.bin")]

    code, text, err = run(["purge", "-c", config], capsys)
    assert code == 0, err
    assert not (folder / "a.bin").exists()  # verified against the archive, then deleted
    assert (folder / "b.bin").exists()  # listed: kept

    code, text, err = run(["errors", "retry", "-c", config], capsys)
    assert code == 1, text  # still refused: u is archived with another created_at
    assert "still failing" in text
    assert _get(config, "2024-03-01T10:00:00", capsys, out) == 0
    assert out.read_bytes() == A_BYTES

    code, _, err = run(["watermark", "set", "-c", config, "--to", "2024-03-01"], capsys)
    assert code == 0, err
    code, text, err = run(["run", "-c", config, "--json"], capsys)
    assert code == 0, err
    assert [f["uid"] for f in json.loads(text)["failures"]] == ["u"]
    assert _get(config, "2024-03-01T10:00:00", capsys, out) == 0
    assert out.read_bytes() == A_BYTES

    # b is not archived: get names both instants, verify counts it, purge keeps its file.
    code, _, err = run(["get", "-c", config, "u", "--created-at", "2024-03-01T11:00"], capsys)
    assert code == 1
    assert "EntryMismatchError" in err
    assert "2024-03-01T10:00:00" in err
    assert "2024-03-01T11:00:00" in err
    code, text, _ = run(["verify", "-c", config, "--deep", "--json"], capsys)
    assert code == 1
    report = json.loads(text)
    assert report["missing_count"] == 1
    assert report["missing"][0]["location"] == "b.bin"
    code, text, err = run(["errors", "list", "-c", config, "--json"], capsys)
    listed = json.loads(text)
    assert [(e["failure"]["uid"], e["failure"]["location"]) for e in listed] == [("u", "b.bin")]
    assert "ArchivedDuplicateError" in listed[0]["failure"]["error_type"]


# --- PostgreSQL + S3 ----------------------------------------------------------------------


DAY = datetime(2024, 3, 1, tzinfo=UTC)
NOW = datetime(2024, 3, 10, 12, tzinfo=UTC)


@pytest.mark.parametrize("sql_backend", ["postgresql"])
def test_retry_and_replay_never_replace_an_archived_entry_postgresql_s3(
    db_url: str, moto_s3: Any
) -> None:
    engine = sa.create_engine(db_url)
    metadata = sa.MetaData()
    table = sa.Table(
        "files",
        metadata,
        sa.Column("uid", sa.String(100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("file_location", sa.String(500), nullable=False),
        sa.Column("size_bytes", sa.Integer),
    )
    metadata.create_all(engine)
    fs = moto_s3.filesystem()
    bucket = moto_s3.new_bucket()
    a_loc, b_loc = f"s3://{bucket}/src/a.bin", f"s3://{bucket}/src/b.bin"
    fs.pipe({a_loc: A_BYTES, b_loc: B_BYTES})
    with engine.begin() as conn:
        conn.execute(
            table.insert(),
            [
                {"uid": "u", "created_at": DAY + timedelta(hours=10), "file_location": a_loc},
                {"uid": "u", "created_at": DAY + timedelta(hours=11), "file_location": b_loc},
            ],
        )
    router = DesRouter(4)
    url = f"s3://{bucket}/archive"
    options = dict(moto_s3.storage_options)
    store = SqlWatermarkStore(engine, table="wm")
    errors = SqlErrorStore(engine, table="errs")
    source = SqlSourceProvider(engine, table="files")
    reader = FsspecFileReader(root=f"s3://{bucket}/src", storage_options={"s3": options})

    def orchestrator() -> WatermarkOrchestrator:
        return WatermarkOrchestrator(
            store,
            source,
            reader,
            router,
            DesPacker(url, router, storage_options=options, workers=0),
            pipeline="ident",
            lag=timedelta(days=2),
            initial=DAY,
            on_error="record",
            error_store=errors,
            max_failure_ratio=0.5,
            clock=lambda: NOW,
        )

    archive = Archive(url, router, storage_options=options)
    try:
        first = orchestrator().run_cycle()
        assert [f.location for f in first.failures] == [b_loc]
        purged = PurgeJob(
            store, source, reader, archive, router, pipeline="ident", initial=DAY,
            error_store=errors,
        ).run()  # fmt: skip
        assert purged.deleted == 1
        assert not fs.exists(a_loc)

        retried = orchestrator().retry_errors()
        assert retried.archived == 0
        assert [f.error_type for f in retried.failures] == [ArchivedDuplicateError.__name__]
        assert archive.get("u", DAY + timedelta(hours=10)) == A_BYTES

        store.set(WatermarkKey("ident"), DAY, reason="replay")
        replay = orchestrator().run_cycle()
        assert [f.location for f in replay.failures] == [b_loc]
        archive.clear_cache()
        assert archive.get("u", DAY + timedelta(hours=10)) == A_BYTES
        with pytest.raises(EntryMismatchError) as caught:
            archive.stat("u", DAY + timedelta(hours=11))
        assert isinstance(caught.value, NotArchivedError)
        report = verify_window(source, archive, Window(DAY, DAY + timedelta(days=1)), deep=True)
        assert report.missing_count == 1
        assert [r.location for r in report.missing] == [b_loc]
        listed = errors.list(WatermarkKey("ident"))
        assert listed[0].failure.error_type == ArchivedDuplicateError.__name__
    finally:
        engine.dispose()


# --- purge checks the stored created_at ----------------------------------------------------


def test_purge_never_deletes_a_file_whose_uid_is_archived_with_another_created_at(
    tmp_path: Path,
) -> None:
    records = [
        SourceRecord("u", DAY + timedelta(hours=10), "a.bin"),
        SourceRecord("u", DAY + timedelta(hours=11), "b.bin"),
    ]
    reader = MemoryFileReader({"a.bin": A_BYTES, "b.bin": B_BYTES})
    store = MemoryWatermarkStore()
    router = DesRouter(4)
    errors = MemoryErrorStore()
    WatermarkOrchestrator(
        store, MemorySourceProvider(records), reader, router,
        DesPacker(tmp_path, router), pipeline="ident", lag=timedelta(days=2), initial=DAY,
        on_error="record", error_store=errors, max_failure_ratio=0.5, clock=lambda: NOW,
    ).run_cycle()  # fmt: skip
    # Without the error table (cleared by hand, or purge run without it), only the
    # stored created_at tells b.bin from the archived a.bin.
    job = PurgeJob(
        store, MemorySourceProvider(records), reader, Archive(str(tmp_path), router), router,
        pipeline="ident", initial=DAY, verify="index",
    )  # fmt: skip
    with pytest.raises(PurgeError, match="not in the archive"):
        job.run()
    assert set(reader.files) == {"b.bin"}  # a.bin verified and deleted, b.bin kept
