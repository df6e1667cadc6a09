"""SqlErrorStore on SQLite, PostgreSQL and MariaDB, and the in-memory one."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from conftest import SQL_BACKENDS, database_url
from deswm._model import FileFailure, SourceRecord, WatermarkKey
from deswm._stores.error_store import SqlErrorStore
from deswm.testing._error_store import MemoryErrorStore

KEY = WatermarkKey("files")
OTHER = WatermarkKey("files", partition=1)
WHEN = datetime(2024, 5, 11, 7, 30, 15, 123456, tzinfo=UTC)


def failure(uid: str, message: str = "boom", created_at: datetime = WHEN) -> FileFailure:
    return FileFailure(uid, created_at, f"/data/{uid[:50]}", "read", "FileReadError", message)


@pytest.fixture(params=["memory", *SQL_BACKENDS])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "memory":
        yield MemoryErrorStore()
        return
    with database_url(request.param, tmp_path) as url:
        sql = SqlErrorStore(url)
        yield sql
        sql.close()


def test_record_list_and_attempts(store: Any) -> None:
    store.record(KEY, [failure("b"), failure("a")])
    store.record(KEY, [failure("a", "boom again")])
    store.record(OTHER, [failure("c")])

    rows = store.list(KEY)
    assert [r.failure.uid for r in rows] == ["a", "b"]
    first = rows[0]
    assert first.attempts == 2
    assert first.failure.message == "boom again"
    assert first.failure.created_at == WHEN  # microseconds and UTC survive
    assert first.first_failure <= first.last_failure
    assert rows[1].attempts == 1
    assert [r.failure.uid for r in store.list()] == ["a", "b", "c"]
    assert len(store.list(KEY, limit=1)) == 1


def test_resolve_removes_only_the_given_rows(store: Any) -> None:
    store.record(KEY, [failure("a"), failure("b")])
    removed = store.resolve(
        KEY, [SourceRecord("a", WHEN, "/data/a"), SourceRecord("zz", WHEN, "x")]
    )
    assert removed == 1
    assert [r.failure.uid for r in store.list(KEY)] == ["b"]


def test_long_and_case_sensitive_uids(store: Any) -> None:
    long_uid = "x" * 5000
    store.record(KEY, [failure(long_uid), failure("Ab"), failure("ab")])
    uids = sorted(r.failure.uid for r in store.list(KEY))
    assert uids == sorted([long_uid, "Ab", "ab"])
    assert store.resolve(KEY, [SourceRecord(long_uid, WHEN, "x")]) == 1


def test_messages_are_redacted(engine: sa.Engine) -> None:
    store = SqlErrorStore(engine)
    store.record(KEY, [failure("a", "GET s3://key:sekrit@bucket/a?X-Amz-Signature=abc failed")])
    message = store.list(KEY)[0].failure.message
    assert "sekrit" not in message
    assert "abc" not in message


def test_repr_hides_the_password() -> None:
    store = SqlErrorStore("postgresql+psycopg://user:hunter2@127.0.0.1:1/db")
    assert "hunter2" not in repr(store)


def test_reads_do_not_create_the_error_table(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'errors.db'}"
    store = SqlErrorStore(url)
    key = WatermarkKey("p")
    assert store.list(key) == []
    assert store.count() == 0
    assert not store.exists()
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert sa.inspect(conn).get_table_names() == []
    engine.dispose()
    store.close()
