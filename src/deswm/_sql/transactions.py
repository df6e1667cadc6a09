"""The start of the oldest transaction open on the source, for ``lag_guard = "transactions"``.

A transaction that is still open may commit rows whose ``created_at`` is its own start
(``DEFAULT now()`` is the transaction's start on PostgreSQL) or later, so a watermark that
passed that instant would never see them. The orchestrator keeps its target at or before
the bucket holding the instant this probe returns.

* **PostgreSQL**: the oldest ``pg_stat_activity.xact_start`` of client backends and
  logical replication workers in the current database (other than the probe's own), and
  the oldest ``pg_prepared_xacts.prepared`` of the database; both ``timestamptz``, so
  read as aware instants whatever the session's ``TimeZone``. Sessions of other users
  show a NULL ``xact_start`` to an account without ``pg_read_all_stats``: the probe
  refuses to guess and raises :class:`~deswm._errors.SourceError`.
* **MariaDB/MySQL**: the oldest ``information_schema.innodb_trx.trx_started`` (the
  ``PROCESS`` privilege is needed). ``trx_started`` is a ``DATETIME`` in the server's
  *system* time zone, whatever the session's ``time_zone`` (measured on MariaDB 10.11),
  so the probe reads its age against ``NOW(6)`` with the session at ``'SYSTEM'`` and
  subtracts it from ``UTC_TIMESTAMP(6)``: a server clock, never the local one. Across a
  DST change of the system zone the age is off by the shift; the target is a UTC day
  boundary, so that only matters for a transaction opened within an hour of midnight.
  InnoDB refreshes the view at most every 0.1 s, so a transaction is seen up to 0.1 s
  late (and a committed one held the target for up to 0.1 s more). ``innodb_trx`` lists
  the transactions of every database on the server, not only the source's.
* **SQLite** has no view of other connections' transactions:
  :class:`~deswm._errors.ConfigError` naming ``watermark.lag_guard``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from deswm import _publish
from deswm._engines import engine_from
from deswm._errors import ConfigError, SourceError
from deswm._redact import redact_url
from deswm._sql.errors import db_errors
from deswm._sql.timecols import MYSQL_FAMILY

__all__ = ["SqlTransactionProbe"]

_KEY = "watermark.lag_guard"
_PG_OLDEST = sa.text(
    "SELECT "
    "(SELECT min(xact_start) FROM pg_stat_activity WHERE datname = current_database() "
    "AND pid <> pg_backend_pid() "
    "AND backend_type IN ('client backend', 'logical replication worker')), "
    "(SELECT min(prepared) FROM pg_prepared_xacts WHERE database = current_database()), "
    "(SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
    "AND pid <> pg_backend_pid() AND backend_type = 'client backend' AND state IS NULL)"
)
_MYSQL_OLDEST = (
    "SELECT TIMESTAMPDIFF(MICROSECOND, MIN(trx_started), NOW(6)), UTC_TIMESTAMP(6) "
    "FROM information_schema.innodb_trx WHERE trx_mysql_thread_id <> CONNECTION_ID()"
)


class SqlTransactionProbe:
    """Reads when the oldest open transaction on a PostgreSQL or MariaDB/MySQL server began.

    ``engine_or_url``: the source database (an engine is shared, a URL's engine is
    created here and disposed by :meth:`close`). One short statement per call.
    """

    def __init__(self, engine_or_url: sa.Engine | sa.URL | str) -> None:
        self.engine, self._owns_engine = engine_from(engine_or_url, key="source.url")
        name = self.engine.dialect.name
        if name != "postgresql" and name not in MYSQL_FAMILY:
            raise ConfigError(
                f'"transactions" reads the open transactions of PostgreSQL or MariaDB/MySQL; '
                f"{name} does not show them",
                key=_KEY,
                hint='remove watermark.lag_guard (or set it to "none"); on SQLite a writer '
                "holds the whole database, so a cycle cannot run beside an open write anyway",
            )

    def __repr__(self) -> str:
        return f"SqlTransactionProbe({redact_url(self.engine.url)})"

    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()

    def oldest_open_transaction(self) -> datetime | None:
        """The aware UTC start of the oldest open transaction, or ``None`` when none is open."""
        with (
            db_errors(
                "reading the open transactions",
                "open transactions",
                self.engine,
                SourceError,
                "The account of source.url must see other sessions' transactions "
                "(PostgreSQL: pg_read_all_stats; MariaDB/MySQL: the PROCESS privilege), "
                "or remove watermark.lag_guard",
                message="{action} ({table}) failed on {url}",
            ),
            self.engine.connect() as conn,
        ):
            if self.engine.dialect.name == "postgresql":
                return self._postgres(conn)
            return _mysql(conn)

    def _postgres(self, conn: sa.Connection) -> datetime | None:
        started, prepared, hidden = conn.execute(_PG_OLDEST).one()
        if hidden:
            raise SourceError(
                f"{hidden} session(s) on {redact_url(self.engine.url)} hide their "
                "transaction start from this account, so the oldest open transaction is "
                "unknown (watermark.lag_guard)",
                hint="GRANT pg_read_all_stats TO the account of source.url, or remove "
                "watermark.lag_guard",
            )
        found = [value.astimezone(UTC) for value in (started, prepared) if value is not None]
        return min(found, default=None)


def _mysql(conn: sa.Connection) -> datetime | None:
    previous = conn.exec_driver_sql("SELECT @@session.time_zone").scalar()
    conn.exec_driver_sql("SET time_zone = 'SYSTEM'")
    try:
        age, utc_now = conn.exec_driver_sql(_MYSQL_OLDEST).one()
    except BaseException:
        conn.invalidate()  # do not hand a connection in another zone back to the pool
        raise
    conn.execute(sa.text("SET time_zone = :zone"), {"zone": previous})
    if age is None:
        return None
    now: datetime = utc_now.replace(tzinfo=UTC)
    return now - timedelta(microseconds=int(age))


_publish(globals())
