"""Database failures raised as typed deswm errors, with passwords scrubbed out (G13)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import sqlalchemy as sa

from deswm._engines import timeout_error
from deswm._redact import redact, redact_url, scrub, url_secrets
from deswm.errors import DeswmError

__all__ = ["STORE_MESSAGE", "db_errors", "describe"]

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
    :class:`~deswm.errors.DatabaseTimeoutError` instead. The cause is chained.
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
