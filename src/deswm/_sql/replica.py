"""Replication lag of a PostgreSQL or MariaDB/MySQL server, for ``source.replica_url``.

* **PostgreSQL, on a standby** (``pg_is_in_recovery()``): ``now() -
  pg_last_xact_replay_timestamp()``, or 0 when everything received is replayed (an idle
  primary sends no transactions, so the last replay timestamp ages without any lag).
  NULL (nothing replayed yet, not streaming) is a :class:`~deswm.ReplicaLagError`.
* **PostgreSQL, on a primary**: the largest ``pg_stat_replication.replay_lag`` over its
  standbys (NULL there means caught up and idle, so 0). No standby is a
  ``ReplicaLagError``; so are rows whose details are hidden (an account without
  ``pg_monitor`` sees NULL columns, which would read as no lag) and senders that only
  feed WAL receivers (``pg_receivewal``: no replay position).
* **MariaDB / MySQL**: ``Seconds_Behind_Master`` (MySQL 8.0.22+: ``Seconds_Behind_Source``)
  of ``SHOW ALL REPLICAS STATUS`` (MariaDB, every named connection), ``SHOW REPLICA
  STATUS`` (MySQL, every channel) or ``SHOW SLAVE STATUS`` (older servers), the largest
  one. No row (not a replica) or a NULL (a replication thread stopped) is a
  ``ReplicaLagError``. The account needs ``REPLICA MONITOR`` (MariaDB 10.5+),
  ``REPLICATION CLIENT`` or ``SUPER``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from deswm._engines import engine_from
from deswm._errors import ConfigError, ReplicaLagError, SourceError
from deswm._redact import redact_url
from deswm._sql.errors import db_errors
from deswm._sql.timecols import MYSQL_FAMILY

__all__ = [
    "SqlReplicaLagProbe",
    "mysql_replica_lag",
    "mysql_replica_status",
    "postgres_primary_lag",
    "postgres_standby_lag",
]

_KEY = "source.replica_url"

_PG_STANDBY = sa.text(
    "SELECT pg_is_in_recovery(), CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() "
    "THEN 0 ELSE EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()) END"
)
_PG_PRIMARY = sa.text(
    "SELECT count(*), count(state), count(replay_lsn), max(EXTRACT(EPOCH FROM replay_lag)) "
    "FROM pg_stat_replication"
)
_LAG_COLUMNS = ("Seconds_Behind_Master", "Seconds_Behind_Source")


class SqlReplicaLagProbe:
    """A :class:`~deswm.LagProbe` reading a server's own replication status.

    ``engine_or_url``: a PostgreSQL server (a standby, or the primary whose standbys to
    watch) or a MariaDB/MySQL replica. A URL's engine is created here and disposed by
    :meth:`close`. Each check is one short statement on a pooled connection.
    """

    def __init__(self, engine_or_url: sa.Engine | sa.URL | str) -> None:
        self.engine, self._owns_engine = engine_from(engine_or_url, key=_KEY)
        name = self.engine.dialect.name
        if name != "postgresql" and name not in MYSQL_FAMILY:
            raise ConfigError(
                f"replica lag is read from PostgreSQL or MariaDB/MySQL, not {name}",
                key=_KEY,
                hint="remove source.replica_url, or point it at the replica of the source",
            )

    def __repr__(self) -> str:
        return redact_url(self.engine.url)

    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()

    def replica_lag(self) -> float:
        """Seconds the server (or its slowest standby, on a PostgreSQL primary) is behind."""
        with (
            db_errors(
                "reading the replication lag",
                "replication status",
                self.engine,
                SourceError,
                "Check that source.replica_url is reachable and that its account may read "
                "the replication status (PostgreSQL: pg_monitor; MariaDB: REPLICA MONITOR "
                "or REPLICATION CLIENT)",
                message="{action} ({table}) failed on {url}",
            ),
            self.engine.connect() as conn,
        ):
            if self.engine.dialect.name == "postgresql":
                lag = _postgres_lag(conn)
            else:
                lag = _mysql_lag(conn)
        return lag


def _where(conn: sa.Connection) -> str:
    return redact_url(conn.engine.url)


def postgres_standby_lag(conn: sa.Connection) -> tuple[bool, float | None]:
    """``(in recovery, seconds behind)`` of a PostgreSQL server; the lag is ``None``
    on a primary and on a standby that has replayed nothing."""
    in_recovery, lag = conn.execute(_PG_STANDBY).one()
    return bool(in_recovery), None if lag is None else max(float(lag), 0.0)


def postgres_primary_lag(conn: sa.Connection) -> tuple[int, int, int, float | None]:
    """``(WAL senders, those whose state this account sees, those that replay, largest
    replay lag)`` of a primary (a WAL receiver such as pg_receivewal replays nothing)."""
    senders, visible, replaying, lag = conn.execute(_PG_PRIMARY).one()
    return (
        int(senders),
        int(visible),
        int(replaying),
        None if lag is None else max(float(lag), 0.0),
    )


def _postgres_lag(conn: sa.Connection) -> float:
    in_recovery, lag = postgres_standby_lag(conn)
    if in_recovery:
        if lag is None:
            raise ReplicaLagError(
                f"the standby {_where(conn)} has replayed no transaction from its primary "
                "(pg_last_xact_replay_timestamp() is NULL), so its lag is unknown"
            )
        return lag
    standbys, visible, replaying, lag = postgres_primary_lag(conn)
    if standbys == 0:
        raise ReplicaLagError(
            f"{_where(conn)} is a PostgreSQL primary with no standby in "
            "pg_stat_replication (and not a standby: pg_last_xact_replay_timestamp() is NULL)"
        )
    if visible < standbys:
        raise ReplicaLagError(
            f"{_where(conn)} hides the state of its standbys from this account "
            "(pg_stat_replication columns are NULL), so their lag would read as none",
            hint="GRANT pg_monitor TO the account of source.replica_url, or point it at a standby",
        )
    if replaying == 0:
        raise ReplicaLagError(
            f"{_where(conn)} streams WAL only to clients that replay nothing (pg_receivewal, "
            "backup tools): no standby in pg_stat_replication reports a replay position"
        )
    return lag or 0.0


def mysql_replica_status(conn: sa.Connection) -> Sequence[Mapping[str, Any]]:
    """The rows of the server's replica status: one per replication connection."""
    dialect = conn.dialect
    version = dialect.server_version_info or ()
    if getattr(dialect, "is_mariadb", False):
        statement = (
            "SHOW ALL REPLICAS STATUS" if version >= (10, 5, 1) else "SHOW ALL SLAVES STATUS"
        )
    else:
        statement = "SHOW REPLICA STATUS" if version >= (8, 0, 22) else "SHOW SLAVE STATUS"
    return [dict(row) for row in conn.exec_driver_sql(statement).mappings()]


def mysql_replica_lag(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, float | None]]:
    """``(connection name, Seconds_Behind_Master)`` of each status row."""
    found = []
    for row in rows:
        column = next((name for name in _LAG_COLUMNS if name in row), None)
        if column is None:
            raise SourceError(
                f"the replica status has no {' or '.join(_LAG_COLUMNS)} column "
                f"(columns: {', '.join(sorted(row))})",
                hint="deswm reads the lag of MariaDB 10.x+ and MySQL 5.7+",
            )
        name = str(row.get("Connection_name") or row.get("Channel_Name") or "")
        value = row[column]
        found.append((name, None if value is None else max(float(value), 0.0)))
    return found


def _mysql_lag(conn: sa.Connection) -> float:
    rows = mysql_replica_status(conn)
    lags = mysql_replica_lag(rows)
    if not lags:
        raise ReplicaLagError(f"{_where(conn)} is not a replica: its replica status is empty")
    stopped = [name or "(default)" for name, lag in lags if lag is None]
    if stopped:
        row = next(r for r, (_n, lag) in zip(rows, lags, strict=True) if lag is None)
        threads = ", ".join(
            f"{name}={row[name]}"
            for name in (
                "Slave_IO_Running",
                "Slave_SQL_Running",
                "Replica_IO_Running",
                "Replica_SQL_Running",
            )
            if name in row
        )
        raise ReplicaLagError(
            f"replication on {_where(conn)} is not running (Seconds_Behind_Master is NULL "
            f"for connection {', '.join(stopped)}: {threads})",
            hint="Start replication on the replica (START REPLICA), or remove "
            "source.replica_url to stop waiting on its lag",
        )
    return max(lag for _name, lag in lags if lag is not None)
