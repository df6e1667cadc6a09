"""The error table and the legacy watermark table retry transient database failures
as SqlWatermarkStore does: a lost connection or a killed session is tried again, and a
failure on every try is a typed error naming the table."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from test_sql_transient import _connection_lost, _end_other_sessions

from deswm._errors import DeswmError, WatermarkError
from deswm._model import FileFailure, SourceRecord, WatermarkKey
from deswm._sql.errors import TRANSIENT_ATTEMPTS
from deswm._stores.error_store import SqlErrorStore
from deswm._stores.legacy import LegacyArchiveConfigStore
from deswm.testing import at_checkpoint

T0 = datetime(2024, 5, 1, tzinfo=UTC)
DAY = timedelta(days=1)
KEY = WatermarkKey("orders")
FAILURE = FileFailure("u1", T0, "/files/u1", "read", "FileReadError", "gone")


def _flaky_connect(monkeypatch: pytest.MonkeyPatch, failures: int) -> list[int]:
    """``Engine.connect`` raises a lost connection ``failures`` times, then works."""
    calls: list[int] = []
    connect = sa.Engine.connect

    def flaky(engine: sa.Engine) -> sa.Connection:
        calls.append(1)
        if len(calls) <= failures:
            raise _connection_lost()
        return connect(engine)

    monkeypatch.setattr(sa.Engine, "connect", flaky)
    return calls


# --- SqlErrorStore --------------------------------------------------------------------------


@pytest.fixture
def errors(sqlite_db_url: str) -> Iterator[SqlErrorStore]:
    store = SqlErrorStore(sqlite_db_url)
    store.create_table()
    try:
        yield store
    finally:
        store.close()


def test_error_store_writes_are_retried_after_a_lost_connection(
    errors: SqlErrorStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _flaky_connect(monkeypatch, 1)
    errors.record(KEY, [FAILURE])
    assert len(calls) == 2
    calls.clear()
    [listed] = errors.list(KEY)
    assert (listed.failure.uid, listed.attempts) == ("u1", 1)
    assert errors.count(KEY) == 1
    calls.clear()
    assert errors.resolve(KEY, [SourceRecord("u1", T0, "/files/u1")]) == 1
    assert len(calls) == 2 and errors.count(KEY) == 0


def test_error_store_reads_are_retried(
    errors: SqlErrorStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    errors.record(KEY, [FAILURE])
    calls = _flaky_connect(monkeypatch, 1)
    assert [r.failure.uid for r in errors.list(KEY)] == ["u1"]
    assert len(calls) == 2


def test_error_store_failing_every_try_is_typed(
    errors: SqlErrorStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _flaky_connect(monkeypatch, 10**6)
    with pytest.raises(DeswmError, match="deswm_errors") as caught:
        errors.record(KEY, [FAILURE])
    assert len(calls) == TRANSIENT_ATTEMPTS
    assert "ConnectionResetError" in str(caught.value)


# --- LegacyArchiveConfigStore ---------------------------------------------------------------


@pytest.fixture
def legacy(sqlite_db_url: str) -> Iterator[LegacyArchiveConfigStore]:
    store = LegacyArchiveConfigStore(sqlite_db_url, pipeline="orders", actor="tester@legacy")
    try:
        yield store
    finally:
        store.close()


def test_legacy_reads_are_retried(
    legacy: LegacyArchiveConfigStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    current = legacy.initialize(KEY, T0)
    calls = _flaky_connect(monkeypatch, 1)
    assert legacy.get(KEY) == current
    assert len(calls) == 2


def test_legacy_advance_is_retried_before_the_commit(legacy: LegacyArchiveConfigStore) -> None:
    current = legacy.initialize(KEY, T0)
    with at_checkpoint("store.advance.in_transaction", _connection_lost(), on=1) as hits:
        moved = legacy.advance(current, T0 + DAY)
    assert len(hits) == 2  # rolled back, then written by the second try
    stored = legacy.get(KEY)
    assert stored is not None and stored.position == moved.position == T0 + DAY


def test_legacy_commit_whose_connection_broke_after_it_counts_once(
    legacy: LegacyArchiveConfigStore,
) -> None:
    current = legacy.initialize(KEY, T0)
    with at_checkpoint("store.advance.after_commit", _connection_lost(), on=1) as hits:
        moved = legacy.advance(current, T0 + DAY)
    assert len(hits) == 1  # the retry found its own write and did not write again
    assert moved.position == T0 + DAY
    assert legacy.advance(moved, T0 + 2 * DAY).position == T0 + 2 * DAY


def test_legacy_failing_every_try_is_typed(
    legacy: LegacyArchiveConfigStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    legacy.initialize(KEY, T0)
    calls = _flaky_connect(monkeypatch, 10**6)
    with pytest.raises(WatermarkError, match="des_archive_config"):
        legacy.get(KEY)
    assert len(calls) == TRANSIENT_ATTEMPTS


# --- real servers: a session the server ended ---------------------------------------------


@pytest.mark.parametrize("sql_backend", ["postgresql", "mysql"])
def test_killed_sessions_are_retried_by_both_stores(db_url: str) -> None:
    # Engines without pre-ping (the caller's own): their pooled connection is dead.
    engine = sa.create_engine(db_url, pool_size=1, max_overflow=0)
    table = f"deswm_errors_{abs(hash(db_url)) % 10**6}"
    try:
        errors = SqlErrorStore(engine, table=table)
        errors.record(KEY, [FAILURE])
        assert _end_other_sessions(engine) >= 1
        assert errors.count(KEY) == 1
        _end_other_sessions(engine)
        errors.record(KEY, [FAILURE])
        assert errors.list(KEY)[0].attempts == 2

        legacy = LegacyArchiveConfigStore(engine, table=f"legacy_{table}", pipeline="orders")
        current = legacy.initialize(KEY, T0)
        _end_other_sessions(engine)
        assert legacy.get(KEY) == current
        _end_other_sessions(engine)
        assert legacy.advance(current, T0 + DAY).position == T0 + DAY
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
            conn.execute(sa.text(f"DROP TABLE IF EXISTS legacy_{table}"))
        engine.dispose()
