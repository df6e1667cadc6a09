"""Engines: URL checks, session timeouts that end lock waits, read-only SQLite (issue 18)."""

from __future__ import annotations

import contextlib
import io
import json
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from deswm._config import Config, load_config
from deswm._engines import create_engine, timeout_kind
from deswm._errors import ConfigError, DatabaseTimeoutError
from deswm._model import WatermarkKey
from deswm.cli import main

WAIT = 1
"""The lock timeout the tests configure, in seconds."""
GIVE_UP = 120.0
"""How long a test waits for the typed error before it calls the statement hung."""


def _outcome(action: Callable[[], Any]) -> BaseException | None:
    """Run ``action`` on a thread; its exception. A hang fails the test instead of the run."""
    caught: list[BaseException] = []

    def target() -> None:
        try:
            action()
        except BaseException as exc:
            caught.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(GIVE_UP)
    assert not thread.is_alive(), "the statement hung: no timeout fired"
    return caught[0] if caught else None


class Site:
    """A ``files`` table with three small files, and a config whose timeouts are short."""

    def __init__(self, url: str, root: Path, watermark_url: str | None = None) -> None:
        self.url = url
        self.root = root
        self.engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        self.backend = self.engine.dialect.name
        metadata = sa.MetaData()
        table = sa.Table(
            "files",
            metadata,
            sa.Column("uid", sa.String(64), primary_key=True),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("file_location", sa.String(500), nullable=False),
            sa.Column("size_bytes", sa.BigInteger),
        )
        metadata.create_all(self.engine)
        (root / "files").mkdir()
        day = datetime.now(UTC).replace(hour=1, minute=0, second=0, microsecond=0)
        self.start = day - timedelta(days=5)
        rows = []
        for index in range(3):
            name = f"f{index}.dat"
            (root / "files" / name).write_bytes(b"x" * (index + 1))
            created = day - timedelta(days=4 - index)
            if self.backend != "postgresql":
                created = created.replace(tzinfo=None)
            rows.append(
                {"uid": f"u{index}", "created_at": created, "file_location": name, "size_bytes": 1}
            )
        with self.engine.begin() as conn:
            conn.execute(sa.insert(table), rows)
        self.config_path = root / "deswm.toml"
        self.config_path.write_text(
            f'[source]\nurl = "{url}"\ntable = "files"\nlock_timeout = {WAIT}\n'
            f'[files]\nroot = "{root / "files"}"\n'
            f"[watermark]\n{f'url = {json.dumps(watermark_url)}' if watermark_url else ''}\n"
            f'pipeline = "locks"\nlag_days = 1\nlock_timeout = {WAIT}\n'
            f'initial = "{self.start.date().isoformat()}"\n'
            f'[archive]\nurl = "{root / "archive"}"\nn_bits = 4\n'
        )

    def config(self) -> Config:
        return load_config(self.config_path)

    def position(self) -> datetime | None:
        store = self.config().build_store(self.engine)
        mark = store.get(WatermarkKey("locks"))
        return None if mark is None else mark.position

    @contextlib.contextmanager
    def locked(self, table: str) -> Iterator[None]:
        """Another session holds an exclusive lock on ``table`` meanwhile."""
        with self.engine.connect() as conn:
            if self.backend == "postgresql":
                conn.exec_driver_sql(f'LOCK TABLE "{table}" IN ACCESS EXCLUSIVE MODE')
            else:
                conn.exec_driver_sql(f"LOCK TABLES `{table}` WRITE")
            try:
                yield
            finally:
                if self.backend != "postgresql":
                    conn.exec_driver_sql("UNLOCK TABLES")
                conn.rollback()


@pytest.fixture(params=["postgresql", "mysql"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    from conftest import database_url

    with database_url(str(request.param), tmp_path) as url:
        built = Site(url, tmp_path)
        try:
            yield built
        finally:
            built.engine.dispose()


def _cli(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    import logging

    logger = logging.getLogger("deswm")
    handlers = (list(logger.handlers), logger.level, logger.propagate)
    try:
        code = main(args)
    finally:
        sys.stdout, sys.stderr = saved
        logger.handlers[:], logger.level, logger.propagate = handlers
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(
    ("locked", "setting"), [("files", "source"), ("deswm_watermark", "watermark")]
)
def test_a_locked_table_gives_a_typed_timeout(site: Site, locked: str, setting: str) -> None:
    orchestrator = site.config().build_orchestrator()
    orchestrator.store.initialize(orchestrator.key, site.start)
    before = site.position()
    with site.locked(locked):
        failed = _outcome(site.config().build_orchestrator().run_cycle)
        results: list[tuple[int, str, str]] = []
        assert (
            _outcome(lambda: results.append(_cli(["stats", "-c", str(site.config_path)]))) is None
        )
    assert isinstance(failed, DatabaseTimeoutError), repr(failed)
    assert locked in str(failed)
    assert f"{setting}.lock_timeout" in str(failed)
    assert failed.table and locked in failed.table
    code, _out, err = results[0]
    assert code == 1
    assert "DatabaseTimeoutError" in err and locked in err and "timed out" in err
    assert site.position() == before, "nothing moved"
    assert not (site.root / "archive").exists() or not any((site.root / "archive").rglob("*.des"))
    # Unlocked, the same cycle runs.
    result = site.config().build_orchestrator().run_cycle()
    assert result.files == 3


def test_a_statement_timeout_is_typed_too(site: Site) -> None:
    engine = create_engine(site.url, key="source.url", statement_timeout=0.5)
    sleep = sa.func.pg_sleep(5) if site.backend == "postgresql" else sa.func.sleep(5)
    files = sa.table("files", sa.column("uid"))
    try:
        with engine.connect() as conn:
            failed = _outcome(lambda: conn.execute(sa.select(sleep).select_from(files)).all())
    finally:
        engine.dispose()
    if site.backend != "postgresql" and failed is None:
        pytest.skip("this MySQL server has no statement time limit for SLEEP()")
    assert isinstance(failed, DatabaseTimeoutError), repr(failed)
    assert "source.statement_timeout" in str(failed)
    assert "'files'" in str(failed)


def test_sqlite_waits_for_a_writer_only_as_long_as_lock_timeout(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'busy.db'}"
    holder = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with holder.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    engine = create_engine(url, key="watermark.url", lock_timeout=0.2)
    try:
        with holder.connect() as conn:
            conn.exec_driver_sql("BEGIN EXCLUSIVE")
            failed = _outcome(lambda: engine.connect().execute(sa.text("SELECT x FROM t")).all())
            conn.rollback()
    finally:
        engine.dispose()
        holder.dispose()
    assert isinstance(failed, DatabaseTimeoutError), repr(failed)
    assert "watermark.lock_timeout" in str(failed)


def test_timeout_kind_reads_driver_codes() -> None:
    class PgError(Exception):
        sqlstate = "55P03"

    class Cancelled(Exception):
        sqlstate = "57014"

    assert timeout_kind(PgError()) == "lock"
    assert timeout_kind(Cancelled()) == "statement"
    assert timeout_kind(ValueError("x")) is None


def test_read_only_sqlite_is_never_created(tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    with pytest.raises(ConfigError) as caught:
        create_engine(f"sqlite:///{missing}", key="source.url", read_only=True)
    assert caught.value.key == "source.url"
    assert "does not exist" in str(caught.value)
    assert not missing.exists()
    existing = tmp_path / "odd name?#%.db"
    with sa.create_engine(f"sqlite:///{existing}").begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    engine = create_engine(f"sqlite:///{existing}", key="source.url", read_only=True)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM t")).scalar_one() == 0
            with pytest.raises(sa.exc.OperationalError, match="readonly"):
                conn.exec_driver_sql("CREATE TABLE u (x INTEGER)")
    finally:
        engine.dispose()


@pytest.mark.parametrize("kills", ["once", "every attempt"])
def test_a_watermark_connection_killed_mid_cycle_moves_nothing_past_published_work(
    tmp_path: Path, kills: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The store's session is terminated inside the watermark UPDATE of the first day.

    Once: the transient error is retried on a new connection and the cycle commits every
    day exactly once (a replay then finds nothing new). On every attempt: the retries run
    out, the cycle fails with a typed error, the watermark stays where it was, and the
    next cycle rewrites the day's published shards idempotently.
    """
    from conftest import postgres_url
    from deswm._errors import DeswmError
    from deswm.testing import Checkpoint, at_checkpoint

    with postgres_url() as url:
        name = f"deswm-kill-{uuid.uuid4().hex[:8]}"
        store_url = sa.make_url(url).update_query_dict({"application_name": name})
        site = Site(url, tmp_path, store_url.render_as_string(hide_password=False))
        try:
            orchestrator = site.config().build_orchestrator()
            orchestrator.store.initialize(orchestrator.key, site.start)

            def kill(_point: str, _hit: int) -> None:
                with site.engine.begin() as conn:
                    conn.execute(
                        sa.text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE application_name = :name AND pid <> pg_backend_pid()"
                        ),
                        {"name": name},
                    )

            if kills == "once":
                with at_checkpoint(Checkpoint.STORE_ADVANCE_IN_TRANSACTION, kill, on=1):
                    first = site.config().build_orchestrator().run_cycle()
                assert first.files == 3 and first.buckets_committed == 3
                assert "failed transiently" in caplog.text
                replay = site.config().build_orchestrator().run_cycle()
                assert replay.files == 0 and replay.buckets_committed == 0
            else:
                with (
                    at_checkpoint(Checkpoint.STORE_ADVANCE_IN_TRANSACTION, kill),
                    pytest.raises(DeswmError) as caught,
                ):
                    site.config().build_orchestrator().run_cycle()
                assert "deswm_watermark" in str(caught.value), caught.value
                assert site.position() == site.start
                result = site.config().build_orchestrator().run_cycle()
                assert result.files == 3
            archive = site.config().build_archive()
            for index in range(3):
                created = datetime.now(UTC).replace(
                    hour=1, minute=0, second=0, microsecond=0
                ) - timedelta(days=4 - index)
                assert archive.get(f"u{index}", created) == b"x" * (index + 1)
        finally:
            site.engine.dispose()
