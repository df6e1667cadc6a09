"""The optional SQL audit table on SQLite, PostgreSQL and MariaDB: one bulk insert per
committed bucket, after its manifest and before the watermark moves; append-only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from deswm._config import Config
from deswm._errors import ConfigError, DeswmError
from deswm._model import SourceRecord, WatermarkKey
from deswm._orchestrator import WatermarkOrchestrator
from deswm._packer import DesPacker
from deswm._routing import DesRouter
from deswm._stores.audit import SqlAuditLog
from deswm.testing import MemoryFileReader, MemorySourceProvider, MemoryWatermarkStore

NOW = datetime(2024, 5, 20, 15, tzinfo=UTC)
ROUTER = DesRouter(4)
KEY = WatermarkKey("files")


def at(day: int, hour: int = 12) -> datetime:
    return datetime(2024, 5, day, hour, tzinfo=UTC)


def world(tmp_path: Path, audit: SqlAuditLog | None) -> tuple[WatermarkOrchestrator, Any]:
    rows = [SourceRecord(f"u{d}-{i}", at(d, i), f"mem/{d}/{i}") for d in (10, 11) for i in range(7)]
    store = MemoryWatermarkStore()
    orchestrator = WatermarkOrchestrator(
        store,
        MemorySourceProvider(rows),
        MemoryFileReader({r.location: r.uid.encode() * 5 for r in rows}),
        ROUTER,
        DesPacker(str(tmp_path / "archive"), ROUTER),
        pipeline="files",
        lag=timedelta(days=2),
        initial=at(10, 0),
        clock=lambda: NOW,
        audit_log=audit,
    )
    return orchestrator, store


def audit_rows(engine: sa.Engine, audit: SqlAuditLog) -> list[sa.RowMapping]:
    table = audit.table
    with engine.connect() as conn:
        return list(conn.execute(sa.select(table).order_by(table.c.id)).mappings())


def test_each_committed_bucket_appends_its_rows_once(engine: sa.Engine, tmp_path: Path) -> None:
    statements: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *args: statements.append(str(args[2])))
    audit = SqlAuditLog(engine, ROUTER)
    orchestrator, store = world(tmp_path, audit)
    orchestrator.run_cycle()

    rows = audit_rows(engine, audit)
    assert len(rows) == 14
    inserts = [s for s in statements if s.lstrip().upper().startswith("INSERT")]
    assert len(inserts) == 2, "one bulk insert per bucket"
    first = rows[0]
    assert first["uid"] == "u10-0"
    assert first["created_at"] == at(10, 0)
    assert first["pipeline"] == "files"
    assert (first["partition_index"], first["partition_count"]) == (0, 1)
    assert first["manifest"] == "_manifests/20240510/p0-of-1.json"
    assert first["archived_at"] == NOW
    key = ROUTER.route("u10-0", at(10, 0))
    assert first["shard_group"] == f"{key.day}_{key.hex}"
    assert first["runner"]

    store.set(KEY, at(10, 0), reason="replay")
    orchestrator.run_cycle()
    assert len(audit_rows(engine, audit)) == 28, "a replay appends; nothing is updated or deleted"


def test_a_failed_audit_insert_leaves_the_bucket_uncommitted(tmp_path: Path) -> None:
    broken = SqlAuditLog(f"sqlite:///{tmp_path / 'missing' / 'audit.db'}", ROUTER)
    orchestrator, store = world(tmp_path, broken)
    with pytest.raises(DeswmError, match="deswm_audit"):
        orchestrator.run_cycle()
    assert store.get(KEY).position == at(10, 0)


def test_the_config_builds_it_in_its_own_database_never_on_the_source_table(
    tmp_path: Path,
) -> None:
    base = {
        "source": {"url": "sqlite:///source.db", "table": "files"},
        "archive": {"url": "archive"},
    }
    config = Config.from_mapping({**base, "audit": {"url": "sqlite:///audit.db"}}, base=tmp_path)
    audit = config.build_audit_log()
    assert isinstance(audit, SqlAuditLog)
    assert str(tmp_path / "audit.db") in audit.url
    assert Config.from_mapping(base, base=tmp_path).build_audit_log() is None
    with pytest.raises(ConfigError) as caught:
        Config.from_mapping(
            {**base, "audit": {"url": "sqlite:///source.db", "table": "files"}}, base=tmp_path
        )
    assert caught.value.key == "audit.table"
