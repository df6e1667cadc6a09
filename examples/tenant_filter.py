"""Archive one tenant's files: subclass SqlSourceProvider and override filter_query.

``filter_query`` is the one place to narrow what a pipeline archives (a tenant, a file
type) or to join another table. It receives the provider's SELECT, already limited to
the window, and returns it with extra WHERE or JOIN clauses; iteration, pending stats
and the diagnostics all go through it, so they always agree.

Run it: ``python examples/tenant_filter.py`` (SQLite in a temporary folder, no setup).
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from deswm import SqlSourceProvider, Window


class TenantSource(SqlSourceProvider):
    """The files of one tenant only (the ``tenant`` column of the source table)."""

    def __init__(self, *args: Any, tenant: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tenant = tenant

    def filter_query(self, query: sa.Select[Any]) -> sa.Select[Any]:
        # Columns by name through the reflected table: quoted, never an f-string (G13).
        return query.where(self.table.c["tenant"] == self.tenant)


def create_demo_table(engine: sa.Engine) -> None:
    """A tiny ``files`` table with two tenants and the (created_at, uid) index."""
    metadata = sa.MetaData()
    files = sa.Table(
        "files",
        metadata,
        sa.Column("uid", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("file_location", sa.Text, nullable=False),
        sa.Column("size_bytes", sa.BigInteger),
        sa.Column("tenant", sa.String(32), nullable=False),
        sa.Index("ix_files_created_at_uid", "created_at", "uid"),
    )
    metadata.create_all(engine)
    day = datetime(2024, 5, 1)
    rows = [
        ("acme-1", day + timedelta(hours=1), 120, "acme"),
        ("globex-1", day + timedelta(hours=2), 300, "globex"),
        ("acme-2", day + timedelta(hours=3), 80, "acme"),
        ("acme-3", day + timedelta(days=1), 50, "acme"),  # the next day: another window
    ]
    with engine.begin() as conn:
        conn.execute(
            files.insert(),
            [
                {
                    "uid": uid,
                    "created_at": at,
                    "file_location": f"/srv/files/{uid}.bin",
                    "size_bytes": size,
                    "tenant": tenant,
                }
                for uid, at, size, tenant in rows
            ],
        )


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        engine = sa.create_engine(f"sqlite:///{Path(folder) / 'source.db'}")
        try:
            create_demo_table(engine)
            source = TenantSource(engine, "files", tenant="acme")
            window = Window(datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 5, 2, tzinfo=UTC))
            stats = source.pending_stats(window)
            print(f"window {window}")
            print(f"pending: {stats.files} files, {stats.bytes} bytes")
            print("records:")
            for record in source.iter_records(window):
                print(f"  {record.uid} {record.created_at.isoformat()} {record.location}")
        finally:
            engine.dispose()


if __name__ == "__main__":
    main()
