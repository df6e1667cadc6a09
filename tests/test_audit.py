"""``deswm audit`` and ``deswm manifest`` through the CLI: SQLite with a local archive,
PostgreSQL with an S3 archive (moto). The audit answers from the manifest and the shard
index alone (the source database is dropped first), and purge refuses a day whose
manifest is gone until ``deswm manifest --rebuild`` writes it back byte for byte."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from deswm._manifest import RowDigest
from deswm._shardio import ShardStore
from deswm._sqltypes import UtcDateTime
from deswm._timeutil import format_utc
from deswm.cli import main

START = datetime(2024, 5, 10, tzinfo=UTC)
ROWS = 40  # every 9 hours from May 10: 15 days


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


class Site:
    """A source table with files, a config file and an archive destination."""

    def __init__(self, tmp_path: Path, db_url: str, archive_url: str, options: dict[str, Any]):
        self.tmp_path = tmp_path
        self.db_url = db_url
        self.archive_url = archive_url
        self.options = options
        self.engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
        metadata = sa.MetaData()
        self.table = sa.Table(
            "files",
            metadata,
            sa.Column("uid", sa.String(64), primary_key=True),
            sa.Column("created_at", UtcDateTime(), nullable=False),
            sa.Column("file_location", sa.String(200), nullable=False),
            sa.Column("size_bytes", sa.Integer, nullable=False),
            sa.Column("archived", sa.Boolean, nullable=False),
        )
        metadata.create_all(self.engine)
        (tmp_path / "files").mkdir()
        self.rows: list[dict[str, Any]] = []
        for number in range(ROWS):
            uid = f"doc-{number:03d}"
            content = f"contents of {uid}\n".encode() * 20
            (tmp_path / "files" / uid).write_bytes(content)
            self.rows.append(
                {
                    "uid": uid,
                    "created_at": START + timedelta(hours=9 * number),
                    "file_location": uid,
                    "size_bytes": len(content),
                    "archived": False,
                }
            )
        with self.engine.begin() as conn:
            conn.execute(self.table.insert(), self.rows)
        self.config = tmp_path / "deswm.toml"
        archive = {"url": archive_url, "n_bits": 4}
        if options:
            archive["storage_options"] = options
        self.config.write_text(
            "[source]\n"
            f"url = {_toml(db_url)}\n"
            'table = "files"\nuid_column = "uid"\ncreated_at_column = "created_at"\n'
            'location_column = "file_location"\n'
            "[files]\n"
            f"root = {_toml(str(tmp_path / 'files'))}\n"
            "[watermark]\n"
            'pipeline = "docs"\nlag_days = 0\n'
            f'initial = "{format_utc(START)}"\n'
            "[archive]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in archive.items()),
            encoding="utf-8",
        )

    def cli(self, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
        code = main([args[0], "-c", str(self.config), *args[1:]])
        out, err = capsys.readouterr()
        return code, out, err

    def day_rows(self, day: datetime) -> list[dict[str, Any]]:
        return [r for r in self.rows if day <= r["created_at"] < day + timedelta(days=1)]

    def store(self) -> ShardStore:
        return ShardStore(self.archive_url, self.options or None)


@pytest.fixture(params=["sqlite-local", "postgresql-s3"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    if request.param == "sqlite-local":
        yield Site(tmp_path, f"sqlite:///{tmp_path / 'source.sqlite3'}", str(tmp_path / "a"), {})
        return
    from conftest import postgres_url

    moto = request.getfixturevalue("moto_s3")
    bucket = moto.new_bucket()
    with postgres_url() as url:
        yield Site(tmp_path, url, f"s3://{bucket}/archive", moto.storage_options)


def test_audit_and_manifest_from_the_archive_alone(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = site.cli("run", "--json", capsys=capsys)
    assert code == 0, err
    row = site.rows[7]
    day = row["created_at"].replace(hour=0)
    # The manifest of its day: row count and digest of the source's rows of that day.
    code, out, err = site.cli("manifest", day.strftime("%Y%m%d"), "--json", capsys=capsys)
    assert code == 0, err
    manifest = json.loads(out)
    expected = RowDigest.of((r["uid"], r["created_at"]) for r in site.day_rows(day))
    assert manifest["rows"]["count"] == expected.count == len(site.day_rows(day))
    assert manifest["rows"]["digest"] == expected.hexdigest
    assert manifest["written_at"] is not None
    parts = [part for group in manifest["groups"] for part in group["parts"]]
    assert sum(part["entries"] for part in parts) == expected.count
    store = site.store()
    for part in parts:
        data = store.read_object(part["name"])
        assert data is not None
        assert hashlib.sha256(data).hexdigest() == part["sha256"]
        assert len(data) == part["size"]

    with site.engine.begin() as conn:  # the audit must not need the source
        conn.execute(site.table.delete())
    site.engine.dispose()
    code, out, err = site.cli(
        "audit", row["uid"], "--created-at", format_utc(row["created_at"]), "--json", capsys=capsys
    )
    assert code == 0, err
    audit = json.loads(out)
    assert audit["uid"] == row["uid"]
    assert audit["pipeline"] == "docs"
    assert audit["partition"] == "0/1"
    assert audit["manifest"] == f"_manifests/{day.strftime('%Y%m%d')}/p0-of-1.json"
    assert audit["archived_at"] is not None
    assert audit["part_unchanged"] is True
    committed = next(part for part in parts if part["name"] == audit["object"])
    assert audit["part_sha256"] == committed["sha256"]
    content = (site.tmp_path / "files" / row["uid"]).read_bytes()
    assert audit["sha256"] == hashlib.sha256(content).hexdigest()
    assert audit["size"] == len(content)
    data = store.read_object(audit["object"])
    assert data is not None
    stored = data[audit["offset"] : audit["offset"] + audit["stored_size"]]
    assert len(stored) == audit["stored_size"] > 0

    code, _, err = site.cli(
        "audit", "nobody", "--created-at", format_utc(row["created_at"]), capsys=capsys
    )
    assert code == 1
    assert "'nobody'" in err and "is not archived" in err


def test_purge_refuses_a_day_without_manifest_until_it_is_rebuilt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = Site(tmp_path, f"sqlite:///{tmp_path / 'source.sqlite3'}", str(tmp_path / "a"), {})
    assert site.cli("run", capsys=capsys)[0] == 0
    day = "20240511"
    path = tmp_path / "a" / "_manifests" / day / "p0-of-1.json"
    original = path.read_bytes()
    path.unlink()

    code, _, err = site.cli("purge", "--dry-run", capsys=capsys)
    assert code == 1
    assert f"bucket {day} partition 0/1 has no manifest" in err
    assert "--rebuild" in err
    code, _, err = site.cli("flag", "--dry-run", capsys=capsys)
    assert code == 1
    assert f"bucket {day} partition 0/1 has no manifest" in err
    code, out, err = site.cli("manifest", day, capsys=capsys)
    assert code == 1
    assert "has no manifest" in err

    code, out, err = site.cli("manifest", day, "--rebuild", capsys=capsys)
    assert code == 0, err
    assert "rebuilt" in out
    assert path.read_bytes() == original  # the same bytes as the commit wrote

    code, out, err = site.cli("purge", "--dry-run", "--json", capsys=capsys)
    assert code == 0, err
    assert json.loads(out)["deleted"] == ROWS  # lag 0: every day is committed


def test_rebuild_refuses_a_day_that_is_not_committed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = Site(tmp_path, f"sqlite:///{tmp_path / 'source.sqlite3'}", str(tmp_path / "a"), {})
    code, _, err = site.cli("manifest", "20240511", "--rebuild", capsys=capsys)
    assert code == 2
    assert "is not below the watermark" in err
