"""Database failures raised as typed deswm errors, with passwords scrubbed out (G13).

Also the one place that decides which database errors are transient (worth the same
statement again after a pause): :func:`is_transient` and :func:`transient_retries`,
used by the source and the stores.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any, Final

import sqlalchemy as sa
import tenacity

from deswm._engines import timeout_error, timeout_kind
from deswm._errors import DeswmError
from deswm._redact import redact, redact_url, scrub, url_secrets

__all__ = [
    "STORE_MESSAGE",
    "TRANSIENT_ATTEMPTS",
    "db_errors",
    "describe",
    "is_transient",
    "transient_retries",
]

log = logging.getLogger("deswm.sql")

TRANSIENT_ATTEMPTS: Final = 4
"""Tries of a statement that fails transiently (the first one included)."""

# PostgreSQL SQLSTATEs: serialization failure, deadlock, the server shutting down or
# restarting (57P01-57P03); class 08 (connection exceptions) is matched by prefix.
_TRANSIENT_SQLSTATES: Final = frozenset({"40001", "40P01", "57P01", "57P02", "57P03"})
# MySQL/MariaDB error numbers: deadlock, server gone away, lost connection during a
# query, cannot connect, connection killed (a server restart or failover).
_TRANSIENT_MYSQL: Final = frozenset({1213, 2003, 2006, 2013, 1927})

STORE_MESSAGE = "could not {action} in table {table!r} at {url}"
"""How a store names a failed action (``table`` is quoted)."""


def describe(exc: BaseException, engine_url: sa.URL) -> str:
    """``Type: first line`` of the driver's message, with URLs and passwords masked."""
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    if not lines:
        return type(orig).__name__
    return scrub(f"{type(orig).__name__}: {redact(lines[0])}", url_secrets(engine_url))


@contextlib.contextmanager
def db_errors(
    action: str,
    table: str,
    engine: sa.Engine,
    error: Callable[..., DeswmError],
    hint: str,
    *,
    message: str = STORE_MESSAGE,
    catch: tuple[type[Exception], ...] = (sa.exc.SQLAlchemyError,),
    timeouts: bool = True,
) -> Iterator[None]:
    """Raise a database failure met inside the block as ``error`` naming table and URL.

    ``message`` is formatted with ``action``, ``table`` and the engine's redacted ``url``;
    the driver's first
    line follows it. With ``timeouts``, a lock or statement timeout becomes a
    :class:`~deswm.DatabaseTimeoutError` instead. The cause is chained.
    """
    try:
        yield
    except catch as exc:
        if timeouts:
            timeout = timeout_error(exc, what=action, table=repr(table))
            if timeout is not None:
                raise timeout from exc
        text = message.format(action=action, table=table, url=redact_url(engine.url))
        raise error(f"{text}: {describe(exc, engine.url)}", hint=hint) from exc


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a database failure that the same statement may not meet again.

    A lost or reset connection, a serialization failure or a deadlock: the database
    rolled the statement back (or never got it), so trying again is correct. Lock and
    statement timeouts are not transient (they have their own error and setting), nor is
    anything about the statement or the data.
    """
    if isinstance(exc, sa.exc.DisconnectionError):
        return True
    if not isinstance(exc, sa.exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    if timeout_kind(exc) is not None:
        return False
    orig = exc.orig
    if isinstance(orig, ConnectionError):
        return True
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if isinstance(sqlstate, str) and (sqlstate in _TRANSIENT_SQLSTATES or sqlstate[:2] == "08"):
        return True
    args: tuple[Any, ...] = getattr(orig, "args", ())
    return bool(args) and isinstance(args[0], int) and args[0] in _TRANSIENT_MYSQL


def transient_retries(action: str, *, attempts: int = TRANSIENT_ATTEMPTS) -> tenacity.Retrying:
    """Retries of ``action`` while it fails transiently, with jittered exponential backoff.

    Use as ``for attempt in transient_retries(...): with attempt: ...``; the last error
    is raised as itself (wrap the loop in :func:`db_errors`). An action that is not
    idempotent must check, on a later attempt, whether an earlier one committed before
    its connection broke (see ``SqlWatermarkStore.advance``).
    """

    def note(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        first = str(getattr(error, "orig", None) or error).strip().splitlines()
        log.warning(
            "%s failed transiently (try %d of %d): %s: %s; trying again in %.1f s",
            action,
            state.attempt_number,
            attempts,
            type(getattr(error, "orig", None) or error).__name__,
            redact(first[0]) if first else "",
            wait,
        )

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_transient),
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_exponential(multiplier=0.2, max=5.0) + tenacity.wait_random(0, 0.2),
        before_sleep=note,
        reraise=True,
    )
