"""SqlReplicaLagProbe: its queries run on the real PostgreSQL and MariaDB and their real
answers are read.

Neither test server is a replica, and a real replica cannot be made in CI, so these
tests see what a server that is not replicating answers: on PostgreSQL
``pg_last_xact_replay_timestamp()`` is NULL and ``pg_stat_replication`` is empty; on
MariaDB the replica status is empty, or (for a replication connection that is configured
but not running) holds a row whose ``Seconds_Behind_Master`` is NULL. Each is a
ReplicaLagError naming ``source.replica_url``. The pause itself is tested with simulated
lag in tests/test_throttle.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from deswm import ReplicaLagError, SourceThrottle, SqlReplicaLagProbe, SqlSourceProvider
from deswm._errors import ConfigError, SourceError
from deswm._model import Window
from deswm._sql.replica import (
    mysql_replica_lag,
    mysql_replica_status,
    postgres_primary_lag,
    postgres_standby_lag,
)
from test_throttle import make_table


@pytest.fixture
def engine_of(db_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.mark.parametrize("sql_backend", ["postgresql"], indirect=True)
def test_postgres_queries_read_a_primary_that_has_no_standby(engine_of: sa.Engine) -> None:
    with engine_of.connect() as conn:
        assert postgres_standby_lag(conn) == (False, None)  # replay timestamp: NULL
        assert postgres_primary_lag(conn) == (0, 0, 0, None)  # pg_stat_replication: empty
    probe = SqlReplicaLagProbe(engine_of)
    with pytest.raises(ReplicaLagError) as caught:
        probe.replica_lag()
    message = str(caught.value)
    assert message.startswith("source.replica_url: ")
    assert "is a PostgreSQL primary with no standby in pg_stat_replication" in message
    assert "pg_last_xact_replay_timestamp() is NULL" in message
    assert caught.value.key == "source.replica_url"


@pytest.mark.parametrize("sql_backend", ["mysql"], indirect=True)
def test_mariadb_that_is_not_a_replica_has_an_empty_status(engine_of: sa.Engine) -> None:
    with engine_of.connect() as conn:
        assert mysql_replica_status(conn) == []
    with pytest.raises(ReplicaLagError, match="is not a replica: its replica status is empty"):
        SqlReplicaLagProbe(engine_of).replica_lag()


@pytest.fixture
def stopped_replication(engine_of: sa.Engine) -> Iterator[str]:
    """A named MariaDB replication connection that is configured but never started."""
    name = f"deswm_t_{uuid.uuid4().hex[:8]}"
    with engine_of.connect() as conn:
        conn.exec_driver_sql(
            f"CHANGE MASTER '{name}' TO MASTER_HOST='127.0.0.1', MASTER_PORT=9, "
            "MASTER_USER='nobody'"
        )
    try:
        yield name
    finally:
        with engine_of.connect() as conn:
            conn.exec_driver_sql(f"RESET SLAVE '{name}' ALL")


@pytest.mark.parametrize("sql_backend", ["mysql"], indirect=True)
def test_mariadb_replication_that_is_not_running_reads_as_null_lag(
    engine_of: sa.Engine, stopped_replication: str
) -> None:
    with engine_of.connect() as conn:
        rows = mysql_replica_status(conn)
    assert mysql_replica_lag(rows) == [(stopped_replication, None)]
    with pytest.raises(ReplicaLagError) as caught:
        SqlReplicaLagProbe(engine_of).replica_lag()
    message = str(caught.value)
    assert "is not running (Seconds_Behind_Master is NULL" in message
    assert f"for connection {stopped_replication}" in message
    assert "Slave_IO_Running=No, Slave_SQL_Running=No" in message
    assert "START REPLICA" in message


@pytest.mark.parametrize("sql_backend", ["postgresql", "mysql"], indirect=True)
def test_a_source_whose_replica_is_not_replicating_stops_before_its_first_page(
    db_url: str, engine_of: sa.Engine
) -> None:
    make_table(db_url, 10)
    limits = SourceThrottle(lag_probe=SqlReplicaLagProbe(engine_of))
    source = SqlSourceProvider(db_url, "files", throttle=limits)
    start = datetime(2024, 5, 1, tzinfo=UTC)
    rows = source.iter_records(Window(start, start + timedelta(days=1)))
    with source, pytest.raises(ReplicaLagError, match=r"source\.replica_url"):
        next(rows)


def test_the_lag_is_the_largest_over_replication_connections() -> None:
    rows = [
        {"Connection_name": "a", "Seconds_Behind_Master": 3},
        {"Connection_name": "b", "Seconds_Behind_Master": 12},
    ]
    assert mysql_replica_lag(rows) == [("a", 3.0), ("b", 12.0)]
    mysql8 = [{"Channel_Name": "", "Seconds_Behind_Source": -1}]  # clock skew reads as 0
    assert mysql_replica_lag(mysql8) == [("", 0.0)]
    with pytest.raises(SourceError, match="no Seconds_Behind_Master or Seconds_Behind_Source"):
        mysql_replica_lag([{"Connection_name": "x"}])


def test_only_postgres_and_mariadb_have_a_replica_lag() -> None:
    with pytest.raises(ConfigError, match=r"source\.replica_url: replica lag is read from"):
        SqlReplicaLagProbe("sqlite://")


@pytest.mark.parametrize("sql_backend", ["postgresql"], indirect=True)
def test_an_unreachable_replica_is_a_source_error_without_the_password(db_url: str) -> None:
    url = sa.make_url(db_url).set(password="hunter2", port=1)
    probe = SqlReplicaLagProbe(url.render_as_string(hide_password=False))
    with pytest.raises(SourceError) as caught:
        probe.replica_lag()
    assert not isinstance(caught.value, ReplicaLagError)
    assert "reading the replication lag" in str(caught.value)
    assert "hunter2" not in str(caught.value)
    probe.close()


# --- the answers a real replica gives, which no CI server can: fed to the same decisions ---


class _Conn:
    """Enough of a connection for the messages (the queries are replaced)."""

    class engine:
        url = sa.make_url("postgresql://reader:pw@replica.internal/db")


@pytest.mark.parametrize(
    ("standby", "primary", "expected"),
    [
        ((True, 4.5), None, 4.5),
        ((True, None), None, "has replayed no transaction"),
        ((False, None), (2, 2, 2, 7.25), 7.25),
        ((False, None), (1, 1, 1, None), 0.0),  # caught up and idle
        ((False, None), (2, 0, 0, None), "hides the state of its standbys"),
        ((False, None), (1, 1, 0, None), "streams WAL only to clients that replay nothing"),
    ],
)
def test_postgres_lag_decisions(
    monkeypatch: pytest.MonkeyPatch, standby: Any, primary: Any, expected: float | str
) -> None:
    from deswm._sql import replica

    monkeypatch.setattr(replica, "postgres_standby_lag", lambda _conn: standby)
    monkeypatch.setattr(replica, "postgres_primary_lag", lambda _conn: primary)
    if isinstance(expected, float):
        assert replica._postgres_lag(_Conn()) == expected  # type: ignore[arg-type]
        return
    with pytest.raises(ReplicaLagError, match=expected) as caught:
        replica._postgres_lag(_Conn())  # type: ignore[arg-type]
    assert "pw" not in str(caught.value)


def test_mariadb_lag_is_the_largest_running_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    from deswm._sql import replica

    rows = [
        {"Connection_name": "", "Seconds_Behind_Master": 2},
        {"Connection_name": "eu", "Seconds_Behind_Master": 40},
    ]
    monkeypatch.setattr(replica, "mysql_replica_status", lambda _conn: rows)
    assert replica._mysql_lag(_Conn()) == 40.0  # type: ignore[arg-type]
