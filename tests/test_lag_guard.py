"""``[watermark] lag_guard = "transactions"``: an open transaction holds the target back.

With a real second connection holding ``BEGIN`` and an insert on PostgreSQL and MariaDB,
the watermark stops at the bucket in which that transaction began; once it commits, the
next cycle archives its row. Without the guard the same row is passed and never archived.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from conftest import POSTGRES_URL, mysql_url
from deswm._archive import Archive
from deswm._config import load_config
from deswm._errors import ConfigError, NotArchivedError
from deswm._model import CyclePlan
from deswm._orchestrator import WatermarkOrchestrator
from deswm._packer import DesPacker
from deswm._protocols import TransactionGuard
from deswm._routing import DesRouter
from deswm._sources.sql import SqlSourceProvider, SqlTransactionProbe
from deswm._stores.sql import SqlWatermarkStore
from deswm._timeutil import format_utc
from deswm.cli import main
from deswm.testing._readers import MemoryFileReader

REAL_DATABASES = pytest.mark.parametrize("sql_backend", ["postgresql", "mysql"])
DAY = timedelta(days=1)
_TRX_CACHE = 0.25
"""InnoDB refreshes information_schema.innodb_trx at most every 0.1 s."""


def _table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        "files",
        metadata,
        sa.Column("uid", sa.String(64), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb"),
            nullable=False,
        ),
        sa.Column("file_location", sa.String(200), nullable=False),
        sa.Column("size_bytes", sa.Integer),
        mysql_engine="InnoDB",
    )


def _row(engine: sa.Engine, uid: str, created_at: datetime) -> dict[str, Any]:
    stored = created_at.replace(tzinfo=None) if engine.dialect.name != "postgresql" else created_at
    return {"uid": uid, "created_at": stored, "file_location": uid, "size_bytes": 1}


class _Setup:
    def __init__(self, engine: sa.Engine, root: Path, guard: TransactionGuard | None) -> None:
        self.engine = engine
        self.table = _table(sa.MetaData())
        self.table.create(engine)
        self.now = datetime.now(UTC)
        self.router = DesRouter(4)
        self.root = root
        files = {uid: uid.encode() for uid in ("old", "late")}
        self.orchestrator = WatermarkOrchestrator(
            SqlWatermarkStore(engine),
            SqlSourceProvider(engine, "files"),
            MemoryFileReader(files),
            self.router,
            DesPacker(str(root), self.router),
            pipeline="guard",
            lag=timedelta(0),
            initial=self.now - 3 * DAY,
            clock=lambda: self.now + 2 * DAY,  # the target without the guard: 2 days ahead
            lag_guard=guard,
        )

    @property
    def today(self) -> datetime:
        return self.router.bucket_start(self.now)

    def archived(self, uid: str, created_at: datetime) -> bool:
        try:
            Archive(str(self.root), self.router).stat(uid, created_at)
        except NotArchivedError:
            return False
        return True


@contextlib.contextmanager
def _private_postgres_database() -> Iterator[str]:
    """A database of its own: pg_stat_activity is read per database, and the test server
    is shared with other test runs whose transactions would hold the target too."""
    name = f"deswm_guard_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield sa.make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture
def real_url(db_url: str, sql_backend: str) -> Iterator[str]:
    if sql_backend != "postgresql":
        yield db_url
        return
    with _private_postgres_database() as url:
        yield url


@pytest.fixture
def real_engine(real_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(real_url)
    yield engine
    engine.dispose()


def _open_transaction(engine: sa.Engine, table: sa.Table, row: dict[str, Any]) -> sa.Connection:
    """A second connection holding BEGIN and an uncommitted insert."""
    conn = engine.connect()
    conn.execute(table.insert(), [row])  # SQLAlchemy began the transaction: it stays open
    time.sleep(_TRX_CACHE)
    return conn


def _quiet(probe: SqlTransactionProbe) -> None:
    """Wait until no transaction is open on the server (MariaDB's innodb_trx lists every
    database's, and the test server is shared); fail after a minute."""
    deadline = time.monotonic() + 60
    while probe.oldest_open_transaction() is not None:
        assert time.monotonic() < deadline, "a transaction stayed open on the server for 60 s"
        time.sleep(_TRX_CACHE)


@REAL_DATABASES
def test_an_open_transaction_holds_the_watermark_until_it_commits(
    real_engine: sa.Engine, tmp_path: Path
) -> None:
    probe = SqlTransactionProbe(real_engine)
    setup = _Setup(real_engine, tmp_path, probe)
    old = setup.now - DAY
    with real_engine.begin() as conn:
        conn.execute(setup.table.insert(), [_row(real_engine, "old", old)])
    other = _open_transaction(real_engine, setup.table, _row(real_engine, "late", setup.now))
    opened = datetime.now(UTC)
    try:
        plan = setup.orchestrator.plan()
        assert plan.held_by is not None and plan.held_by <= opened
        assert plan.target == setup.router.bucket_start(plan.held_by) <= setup.today
        assert "held back" in str(plan)
        first = setup.orchestrator.run_cycle()
        assert first.watermark_after <= setup.today  # not past the transaction's start
        other.commit()
    finally:
        other.close()
    _quiet(probe)
    assert setup.orchestrator.plan().held_by is None
    setup.orchestrator.run_cycle()
    assert setup.archived("late", setup.now) and setup.archived("old", old)


@REAL_DATABASES
def test_without_the_guard_the_late_row_is_passed(real_engine: sa.Engine, tmp_path: Path) -> None:
    setup = _Setup(real_engine, tmp_path, None)
    other = _open_transaction(real_engine, setup.table, _row(real_engine, "late", setup.now))
    try:
        setup.orchestrator.run_cycle()
        other.commit()
    finally:
        other.close()
    assert setup.orchestrator.run_cycle().files == 0
    assert not setup.archived("late", setup.now)


@pytest.mark.parametrize("sql_backend", ["postgresql"])
def test_no_open_transaction_reads_none(real_engine: sa.Engine) -> None:
    with real_engine.connect() as idle:  # open but not in a transaction
        idle.exec_driver_sql("SELECT 1")
        idle.commit()
        assert SqlTransactionProbe(real_engine).oldest_open_transaction() is None


def test_mariadb_trx_started_is_read_whatever_the_session_time_zone(
    tmp_path: Path,
) -> None:
    with mysql_url() as url:
        engine = sa.create_engine(url)
        table = _table(sa.MetaData())
        table.create(engine)
        before = datetime.now(UTC).replace(microsecond=0)
        other = _open_transaction(engine, table, _row(engine, "late", before))
        try:
            probe = SqlTransactionProbe(engine)
            with engine.connect() as conn:  # a pooled connection in another zone
                conn.exec_driver_sql("SET time_zone = '+05:00'")
                conn.commit()
            started = probe.oldest_open_transaction()
            assert started is not None
            assert before - timedelta(minutes=30) <= started <= datetime.now(UTC)
            with engine.connect() as conn:
                zone = conn.exec_driver_sql("SELECT @@session.time_zone").scalar()
            assert zone == "+05:00"  # the probe put the session's zone back
        finally:
            other.rollback()
            other.close()
            engine.dispose()


# --- configuration -------------------------------------------------------------------------


def _config(tmp_path: Path, url: str, guard: str) -> Path:
    path = tmp_path / "deswm.toml"
    path.write_text(
        f'[source]\nurl = "{url}"\n\n[archive]\nurl = "{(tmp_path / "a").as_posix()}"\n\n'
        f'[watermark]\nlag_days = 0\nlag_guard = "{guard}"\n'
    )
    return path


def test_sqlite_refuses_the_transaction_guard(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    with pytest.raises(ConfigError) as caught:
        load_config(_config(tmp_path, url, "transactions"))
    assert caught.value.key == "watermark.lag_guard"
    with pytest.raises(ConfigError) as direct:
        SqlTransactionProbe(sa.create_engine(url))
    assert direct.value.key == "watermark.lag_guard"


def test_unknown_guard_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_config(tmp_path, f"sqlite:///{tmp_path / 'x.db'}", "locks"))
    assert caught.value.key == "watermark.lag_guard"


@REAL_DATABASES
def test_the_config_builds_the_guard_and_stats_show_it(
    real_url: str,
    real_engine: sa.Engine,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    table = _table(sa.MetaData())
    table.create(real_engine)
    path = _config(tmp_path, real_url, "transactions")
    later = lambda: datetime.now(UTC) + 2 * DAY  # noqa: E731
    orchestrator = load_config(path).build_orchestrator(clock=later)
    assert isinstance(orchestrator.lag_guard, SqlTransactionProbe)
    now = datetime.now(UTC)
    other = _open_transaction(real_engine, table, _row(real_engine, "late", now))
    try:
        assert orchestrator.target() <= orchestrator.router.bucket_start(now)
    finally:
        other.rollback()
        other.close()
    assert isinstance(orchestrator.lag_guard, SqlTransactionProbe)
    _quiet(orchestrator.lag_guard)
    assert orchestrator.target() == orchestrator.router.bucket_start(now + 2 * DAY)
    # The command runs on the real clock: a transaction open since two days ago holds it.
    since = now - 2 * DAY
    monkeypatch.setattr(SqlTransactionProbe, "oldest_open_transaction", lambda self: since)
    assert main(["stats", "-c", str(path), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["held_by_transaction"] == format_utc(since)
    assert payload["target"] == format_utc(orchestrator.router.bucket_start(since))
    assert main(["stats", "-c", str(path)]) == 0
    assert "held back" in capsys.readouterr().out


def test_plan_display_names_the_transaction() -> None:
    from deswm._model import PendingStats, WatermarkKey, Window

    start = datetime(2024, 5, 1, tzinfo=UTC)
    window = Window(start, start + DAY)
    plan = CyclePlan(
        key=WatermarkKey("p"),
        watermark=start,
        target=start + DAY,
        window=window,
        pending=PendingStats(window, 0, 0, None, None),
        initialised=True,
        held_by=start + DAY + timedelta(hours=3),
    )
    assert "held back" in str(plan) and "2024-05-02" in str(plan)
