"""The DES shard index of a uid column computed by the database, for partition pushdown.

A partition runner that filters in Python reads the whole window; when the database can
compute :meth:`deswm._routing.DesRouter.shard_index` itself, the window query keeps only
the partition's rows (``MOD(shard, K) = k``). Per dialect:

* **MySQL/MariaDB**: built in. A text uid of ASCII digits (``NOT REGEXP '[^0-9]'``)
  routes by ``CAST(RIGHT(uid, n_bits) AS SIGNED) & mask``, any other by
  ``CRC32(CONVERT(uid USING utf8mb4)) & mask`` (the UTF-8 bytes whatever the column's
  character set). An integer column: ``uid & mask`` when ``uid >= 0``, the CRC32 of its
  decimal text otherwise.
* **SQLite**: a Python function (:func:`sqlite_shard`) registered on each connection the
  source uses; it reads the value exactly as the source does, so it cannot disagree.
* **PostgreSQL**: no built-in CRC32. Text uids need ``deswm_crc32(bytea)``, a function
  the user installs (:data:`POSTGRES_CRC32_DDL`, ``deswm source install-functions``);
  without it a text uid column is not filtered in SQL at all (testing each row for
  digits only would cost the server more than it saves when the uids are not digits,
  measured). An integer column is filtered with built-ins (``uid & mask``), negative
  uids only with the function.

Every expression is NULL for a value it cannot place (NULL, bytes that are not UTF-8, a
type it does not know): the filter keeps such rows, so the source's row checks still
name them (G12). The orchestrator filters every row again in Python, so a database that
placed a row wrongly would cost reads, never a row in the wrong partition.
"""

from __future__ import annotations

import functools
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles

from deswm._model import Partition
from deswm._routing import DesRouter
from deswm._sql.timecols import MYSQL_FAMILY

__all__ = [
    "POSTGRES_CRC32_DDL",
    "POSTGRES_CRC32_NAME",
    "POSTGRES_CRC32_TABLE",
    "SQLITE_FUNCTION",
    "partition_clause",
    "shard_expression",
    "sqlite_shard",
]

POSTGRES_CRC32_NAME: Final = "deswm_crc32"
POSTGRES_CRC32_TABLE: Final = "deswm_crc32_table"
SQLITE_FUNCTION: Final = "deswm_des_shard"


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xEDB88320 if crc & 1 else crc >> 1
        table.append(crc)
    return table


POSTGRES_CRC32_DDL: Final = f"""\
-- deswm_crc32: zlib's CRC-32 of bytes, so PostgreSQL can compute DES shard indexes
-- (partition pushdown, docs/backends.md). Same result as Python's zlib.crc32.
-- The lookup table is an IMMUTABLE function without arguments: PL/pgSQL folds it to a
-- constant once per session (an array literal in DECLARE is parsed on every call, 9x slower).
CREATE OR REPLACE FUNCTION {POSTGRES_CRC32_TABLE}() RETURNS bigint[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$deswm$ SELECT '{{{",".join(str(v) for v in _crc_table())}}}'::bigint[] $deswm$;

CREATE OR REPLACE FUNCTION {POSTGRES_CRC32_NAME}(data bytea) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $deswm$
DECLARE
  crc bigint := 4294967295;
BEGIN
  FOR i IN 0 .. length(data) - 1 LOOP
    crc := ({POSTGRES_CRC32_TABLE}())[((crc # get_byte(data, i)) & 255) + 1] # (crc >> 8);
  END LOOP;
  RETURN crc # 4294967295;
END
$deswm$;
"""
"""The DDL of the optional PostgreSQL functions (idempotent: ``CREATE OR REPLACE``)."""


def sqlite_shard(raw: object, n_bits: int) -> int | None:
    """The SQLite function ``deswm_des_shard(uid, n_bits)``: the uid read as the source
    reads it (:func:`deswm._sources.sql.uid_text_of`), routed by :class:`DesRouter`;
    ``None`` for a value the source would name as a bad row."""
    from deswm._sources.sql import uid_text_of

    uid = uid_text_of(raw)
    if uid is None:
        return None
    try:
        return _router(n_bits).shard_index(uid)
    except ValueError:  # a lone surrogate: the row checks name it
        return None


@functools.cache
def _router(n_bits: int) -> DesRouter:
    return DesRouter(n_bits)


def shard_expression(
    dialect: str,
    column: sa.ColumnElement[Any],
    column_type: sa.types.TypeEngine[Any],
    n_bits: int,
    *,
    postgres_crc32: bool = False,
) -> sa.ColumnElement[Any] | None:
    """The DES shard index of ``column`` in ``dialect``'s SQL, or ``None`` when that
    dialect cannot compute it for this column type (then nothing is pushed down).

    ``CHAR`` columns are left out: databases pad or strip their trailing spaces in ways
    the value read back does not show.
    """
    mask = (1 << n_bits) - 1
    integer = isinstance(column_type, sa.Integer)
    text = isinstance(column_type, sa.String) and not isinstance(column_type, sa.CHAR)
    if not integer and not text:
        return None
    if dialect == "sqlite":
        return sa.Function(SQLITE_FUNCTION, column, sa.literal(n_bits), type_=sa.Integer)
    if dialect in MYSQL_FAMILY:
        return _mysql(column, integer, n_bits, mask)
    if dialect == "postgresql":
        return _postgres(column, integer, n_bits, mask, postgres_crc32)
    return None


def partition_clause(shard: sa.ColumnElement[Any], partition: Partition) -> sa.ColumnElement[bool]:
    """Rows of ``partition``, and rows whose shard the database could not compute."""
    return sa.or_(shard.is_(None), sa.func.mod(shard, partition.count) == partition.index)


def _mysql(
    column: sa.ColumnElement[Any], integer: bool, n_bits: int, mask: int
) -> sa.ColumnElement[Any]:
    if integer:
        return sa.case(
            (column >= 0, column.op("&")(mask)),
            else_=sa.func.crc32(sa.cast(column, sa.CHAR)).op("&")(mask),
        )
    digits = sa.and_(column != "", sa.not_(column.op("REGEXP", is_comparison=True)("[^0-9]")))
    return sa.case(
        (digits, sa.cast(sa.func.right(column, n_bits), sa.Integer).op("&")(mask)),
        else_=sa.func.crc32(_Utf8mb4(column)).op("&")(mask),
    )


def _postgres(
    column: sa.ColumnElement[Any], integer: bool, n_bits: int, mask: int, crc32: bool
) -> sa.ColumnElement[Any] | None:
    def crc(text: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        utf8 = sa.func.convert_to(text, sa.literal("UTF8"))
        return sa.Function(POSTGRES_CRC32_NAME, utf8, type_=sa.BigInteger).op("&")(mask)

    if integer:
        if crc32:
            return sa.case((column >= 0, column.op("&")(mask)), else_=crc(sa.cast(column, sa.Text)))
        return sa.case((column >= 0, column.op("&")(mask)))
    if not crc32:
        return None
    digits = sa.and_(column != "", sa.not_(column.op("~", is_comparison=True)("[^0-9]")))
    by_digits = sa.cast(sa.func.right(column, n_bits), sa.BigInteger).op("&")(mask)
    return sa.case((digits, by_digits), else_=crc(column))


class _Utf8mb4(sa.sql.functions.GenericFunction[str]):
    """``CONVERT(x USING utf8mb4)``: the UTF-8 bytes whatever the column's charset."""

    name = "convert_utf8mb4"
    inherit_cache = True
    type = sa.String()


@compiles(_Utf8mb4)
def _compile_utf8mb4(element: _Utf8mb4, compiler: Any, **kw: Any) -> str:
    return f"CONVERT({compiler.process(element.clauses, **kw)} USING utf8mb4)"
