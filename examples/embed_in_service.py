"""Embed deswm in a service: build the components in code and run a cycle.

This is what a host application does from its own scheduler (cron, a Kubernetes CronJob,
Celery beat): build a ``WatermarkOrchestrator`` once, call ``run_cycle()`` on a schedule,
and read files back with ``Archive``. Here the "service" owns a SQLite table and a folder
of files in a temporary directory, so the example runs anywhere:

    python examples/embed_in_service.py
"""

from __future__ import annotations

import logging
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

import deswm


def create_service_data(root: Path, now: datetime) -> str:
    """The host application's own table and files (what deswm archives)."""
    url = f"sqlite:///{root / 'service.db'}"
    engine = sa.create_engine(url)
    metadata = sa.MetaData()
    files = sa.Table(
        "uploads",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("uploaded_at", sa.DateTime, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Index("ix_uploads_time_id", "uploaded_at", "id"),
    )
    metadata.create_all(engine)
    rows = []
    for number in range(200):
        uploaded_at = now - timedelta(days=2 + number % 10, minutes=number)
        path = root / "uploads" / f"{number}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f'{{"upload": {number}, "payload": "{"x" * (number % 50)}"}}')
        rows.append(
            {"id": number, "uploaded_at": uploaded_at.replace(tzinfo=None), "path": str(path)}
        )
    with engine.begin() as conn:
        conn.execute(files.insert(), rows)
    engine.dispose()
    return url


def build_orchestrator(url: str, archive_url: str, now: datetime) -> deswm.WatermarkOrchestrator:
    router = deswm.DesRouter(n_bits=8)
    return deswm.WatermarkOrchestrator(
        store=deswm.SqlWatermarkStore(url),
        source=deswm.SqlSourceProvider(
            url,
            "uploads",
            uid_column="id",  # integer uids become their decimal string
            created_at_column="uploaded_at",
            location_column="path",
            size_column=None,
        ),
        reader=deswm.FsspecFileReader(max_workers=8),
        router=router,
        packer=deswm.DesPacker(archive_url, router),
        pipeline="uploads",
        lag=timedelta(days=7),
        initial=now - timedelta(days=30),
        clock=lambda: now,  # production code leaves the default clock
    )


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        url = create_service_data(root, now)
        archive_url = str(root / "archive")

        orchestrator = build_orchestrator(url, archive_url, now)
        plan = orchestrator.plan()
        print(f"pending: {plan.pending.files} files in {plan.window}")
        result = orchestrator.run_cycle()
        print(result.summary())

        # Reading a file back needs only its uid and created_at: routing is computed.
        archive = deswm.Archive(archive_url, deswm.DesRouter(n_bits=8))
        uid, created_at = "156", now - timedelta(days=2 + 156 % 10, minutes=156)
        if created_at < result.watermark_after:
            print(f"uid {uid}: {archive.get(uid, created_at)[:40]!r}...")


if __name__ == "__main__":
    main()
