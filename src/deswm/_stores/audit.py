"""The optional SQL audit table: one row per archived file and committed bucket.

For sites that want the archive's whereabouts in SQL next to their other compliance
data. Append-only: the orchestrator inserts a bucket's rows in one bulk ``INSERT`` right
after the bucket's manifest is written and before the watermark passes it; nothing is
ever updated or deleted, so a replay appends the bucket again (the latest row of a uid
is the current one). The table may live in its own database (``[audit] url``) and is
never the source table. What it records (uid, created_at, shard group, manifest, commit
time, runner) is also answered without it, from the archive alone, by ``deswm audit``.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Sequence
from datetime import datetime
from typing import Final

import sqlalchemy as sa

from deswm import _publish
from deswm._defaults import AUDIT_TABLE
from deswm._errors import ConfigError, DeswmError
from deswm._manifest import BucketManifest
from deswm._protocols import ShardRouter
from deswm._sql.engines import EngineOwner
from deswm._sql.errors import db_errors
from deswm._sql.schema import LazyTables, key_string
from deswm._sqltypes import UtcDateTime
from deswm._timeutil import parse_day, require_utc

__all__ = ["DEFAULT_AUDIT_TABLE", "SqlAuditLog"]

DEFAULT_AUDIT_TABLE: Final = AUDIT_TABLE

_DB_HINT: Final = (
    "Check that the audit database is reachable and that this account may create and "
    "insert into the audit table; the cause is chained. Nothing was committed for the "
    "bucket: the next cycle writes it again"
)


def _audit_table(metadata: sa.MetaData, name: str, schema: str | None) -> sa.Table:
    return sa.Table(
        name,
        metadata,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("pipeline", key_string(255), nullable=False),
        sa.Column("partition_index", sa.Integer, nullable=False),
        sa.Column("partition_count", sa.Integer, nullable=False),
        sa.Column("uid", sa.Text, nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False, index=True),
        sa.Column("shard_group", sa.String(64), nullable=False),
        sa.Column("manifest", sa.String(255), nullable=False),
        sa.Column("archived_at", UtcDateTime(), nullable=False),
        sa.Column("runner", sa.String(255), nullable=False),
        schema=schema,
    )


class SqlAuditLog(EngineOwner):
    """Appends a row per archived file of each committed bucket (``deswm_audit``).

    Args:
        engine_or_url: the audit database (``[audit] url``; may differ from the source's
            and the watermark's).
        router: the pipeline's router, to name each row's shard group.
        table, schema: where the rows go (created on first use).
    """

    def __init__(
        self,
        engine_or_url: sa.Engine | sa.URL | str,
        router: ShardRouter,
        *,
        table: str = DEFAULT_AUDIT_TABLE,
        schema: str | None = None,
    ) -> None:
        if not isinstance(table, str) or not table.strip():
            raise ConfigError(f"must be a non-empty table name, got {table!r}", key="audit.table")
        self._hold_engine(engine_or_url, "audit.url")
        self._router = router
        self._metadata = sa.MetaData()
        self._table = _audit_table(self._metadata, table, schema)
        self._created = LazyTables(self._engine, self._metadata, (self._table,))
        self.runner = f"{socket.gethostname()}:{os.getpid()}"[:255]

    def __repr__(self) -> str:
        return f"SqlAuditLog({self._table.fullname!r}, url={self.url!r})"

    @property
    def table(self) -> sa.Table:
        return self._table

    def record(
        self,
        manifest: BucketManifest,
        rows: Sequence[tuple[str, datetime]],
        archived_at: datetime,
    ) -> None:
        """Insert the bucket's archived rows in one statement and transaction."""
        if not rows:
            return
        at = require_utc(archived_at, "archived_at")
        common = {
            "pipeline": manifest.pipeline,
            "partition_index": manifest.partition.index,
            "partition_count": manifest.partition.count,
            "manifest": manifest.name,
            "archived_at": at,
            "runner": self.runner,
        }
        # Every row is in the manifest's day: its group is the day and its shard index.
        bucket = parse_day(manifest.day, "manifest.day")
        router = self._router
        groups: dict[int, str] = {}
        values = []
        for uid, created_at in rows:
            index = router.shard_index(uid)
            group = groups.get(index)
            if group is None:
                key = router.group(bucket, index)
                group = groups[index] = f"{key.day}_{key.hex}"
            values.append({"uid": uid, "created_at": created_at, "shard_group": group, **common})
        self._created.ensure(self._db_errors, "create the audit table")
        with (
            self._db_errors(f"insert {len(values)} audit row(s) of {manifest.name}"),
            self._engine.begin() as conn,
        ):
            conn.execute(sa.insert(self._table), values)

    def _db_errors(self, action: str) -> contextlib.AbstractContextManager[None]:
        return db_errors(action, self._table.fullname, self._engine, DeswmError, _DB_HINT)


_publish(globals())
