"""One exception hierarchy for everything deswm raises on purpose.

Every error says what it is about (the row, file, object or setting) and what to do
next, so an operator reading a log line can act on it without the source code::

    DeswmError
    ├── ConfigError                 a setting is missing, unknown or invalid
    │   ├── NaiveDatetimeError      a datetime without a timezone where UTC is required
    │   ├── MissingExtraError       an optional package is not installed (names the extra)
    │   └── WatermarkMoveRefused    a manual watermark move skips rows or passes the target
    ├── SourceError                 the source table could not be read
    │   ├── BadRowError             one row cannot be archived (NULL created_at, bad uid, ...)
    │   │   └── UnplaceableRowError rows whose created_at no window can hold (a number, bytes,
    │   │                           a year outside 0001-9999, the last day 9999-12-31)
    │   └── ReplicaLagError         source.replica_url is not replicating, so its lag is unknown
    ├── FileReadError               a source file could not be read
    │   ├── FileMissingError        the location does not exist
    │   └── LocationOutsideRootError  the location is not inside files.root / allowed_roots
    ├── PackError                   shards could not be built or published
    │   ├── LaneError               a lane of the packing engine raised, died or hung
    │   └── DuplicateUidError       two rows of one shard group share a uid
    │       └── ArchivedDuplicateError  the uid is already archived with another created_at
    ├── ShardError                  problems with published shards
    │   ├── CorruptShardError       bytes that are not a valid DES shard, or a bad checksum
    │   │   └── UnverifiedEntryError  an entry without a checksum, not accepted by the reader
    │   ├── NotArchivedError        the uid is not in the archive
    │   │   └── EntryMismatchError  the uid is archived, but with another created_at
    │   ├── ObjectChangedError      a shard was rewritten while it was being read
    │   ├── ManifestMissingError    a committed bucket has no manifest (purge/flag refuse it)
│   ├── LateRowsError           a committed bucket holds rows its manifest never counted
    │   └── CorruptManifestError    a bucket manifest is not a valid manifest
    ├── DatabaseTimeoutError        a lock or statement waited longer than its setting
    ├── WatermarkError              the watermark store refused a change
    │   └── WatermarkConflict       another runner moved the watermark first
    ├── CycleError                  a cycle stopped because files failed; nothing advanced
    └── RowCountError               a bucket's rows and what was packed do not add up

Errors that wrap a lower-level exception chain it (``raise ... from exc``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from deswm import _publish
from deswm._redact import redact

if TYPE_CHECKING:
    from datetime import datetime

    from deswm._model import CycleResult, FileFailure, WatermarkKey

__all__ = [
    "ArchivedDuplicateError",
    "BadRowError",
    "ConfigError",
    "CorruptManifestError",
    "CorruptShardError",
    "CycleError",
    "DatabaseTimeoutError",
    "DeswmError",
    "DuplicateUidError",
    "EntryMismatchError",
    "FileMissingError",
    "FileReadError",
    "LaneError",
    "LateRowsError",
    "LocationOutsideRootError",
    "ManifestMissingError",
    "MissingExtraError",
    "NaiveDatetimeError",
    "NotArchivedError",
    "ObjectChangedError",
    "PackError",
    "ReplicaLagError",
    "RowCountError",
    "ShardError",
    "SourceError",
    "UnplaceableRowError",
    "UnverifiedEntryError",
    "WaitInterrupted",
    "WatermarkConflict",
    "WatermarkError",
    "WatermarkMoveRefused",
]


class DeswmError(Exception):
    """Base of every error deswm raises on purpose.

    Args:
        message: what went wrong, naming the row, file, object or setting.
        hint: what the reader should do about it.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message}. {hint}" if hint else message)

    def __reduce__(self) -> tuple[object, ...]:
        """Rebuild from the attributes, not ``__init__``: an error raised in a lane process
        or on a Dask worker arrives whole (subclasses take other arguments)."""
        return (_rebuild, (type(self), self.args, self.__dict__.copy()))


def _rebuild(
    cls: type[DeswmError], args: tuple[object, ...], state: dict[str, object]
) -> DeswmError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class ConfigError(DeswmError):
    """A setting is missing, unknown or has the wrong type or value.

    ``key`` is the dotted name of the setting (``source.table``) when there is one.
    """

    def __init__(self, message: str, *, key: str | None = None, hint: str | None = None) -> None:
        self.key = key
        super().__init__(f"{key}: {message}" if key else message, hint=hint)


class NaiveDatetimeError(ConfigError, ValueError):
    """A datetime without tzinfo was given where deswm needs an unambiguous instant."""

    def __init__(self, what: str, value: object) -> None:
        super().__init__(
            f"{what} is a naive datetime ({value!r}); deswm only accepts timezone-aware values",
            key=None,
            hint="Pass an aware datetime, e.g. datetime(..., tzinfo=timezone.utc)",
        )


class MissingExtraError(ConfigError, ImportError):
    """An optional package a feature needs is not installed.

    ``module`` is the missing import and ``extra`` the deswm extra that installs it; the
    hint is the command: ``pip install 'deswm[extra]'``.
    """

    def __init__(self, feature: str, *, module: str, extra: str) -> None:
        self.module = module
        self.extra = extra
        ConfigError.__init__(
            self,
            f"{feature} needs the {module} package, which is not installed",
            hint=f"pip install 'deswm[{extra}]'",
        )

    def __str__(self) -> str:  # ImportError would otherwise show only the first argument
        return Exception.__str__(self)


class SourceError(DeswmError):
    """The source table could not be read (connection, permissions, missing columns)."""


class BadRowError(SourceError):
    """One source row cannot be archived; the message names its uid and created_at."""

    def __init__(self, message: str, *, uid: object, created_at: object = None) -> None:
        self.uid = uid
        self.created_at = created_at
        where = f"row uid={uid!r}" + (f" created_at={created_at}" if created_at is not None else "")
        super().__init__(
            f"{where}: {message}",
            hint="Fix the row in the source table, or exclude it in "
            "SqlSourceProvider.filter_query()",
        )


class UnplaceableRowError(BadRowError):
    """Rows whose ``created_at`` no window can ever hold, so the watermark would pass them.

    A SQLite value stored as a number or bytes (they sort before or after every text
    bound), a MariaDB zero date, a year outside 0001-9999 (PostgreSQL BC dates,
    ``infinity``), or the last day 9999-12-31, whose end ``datetime`` cannot express.
    ``rows`` holds ``(uid, stored value)`` pairs, at most ``limit`` of them; ``more`` says
    whether there are others.
    """

    def __init__(self, rows: Sequence[tuple[str, str]], *, table: str, more: bool) -> None:
        self.rows = tuple(rows)
        self.more = more
        self.uid = self.rows[0][0] if self.rows else None
        self.created_at = self.rows[0][1] if self.rows else None
        shown = ", ".join(f"uid={uid!r} created_at={value}" for uid, value in self.rows)
        SourceError.__init__(
            self,
            f"table {table}: {len(self.rows)}{'+' if more else ''} row(s) have a created_at no "
            f"window can hold, so they would never be archived: {shown}"
            + (" and more" if more else ""),
            hint="Store created_at as a timestamp from 0001-01-01 to 9999-12-30 (on SQLite "
            "the text YYYY-MM-DD HH:MM:SS[.ffffff]), or exclude the rows in "
            "SqlSourceProvider.filter_query(); nothing was archived or moved",
        )


class ReplicaLagError(SourceError):
    """The server at ``source.replica_url`` reports no replication lag to wait on.

    Not a replica (no replica status, a PostgreSQL primary without standbys), or
    replication stopped (a NULL lag): pausing would wait forever, reading on would ignore
    the setting, so the run stops before its next page (what was committed stays).
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.key = "source.replica_url"
        super().__init__(
            f"{self.key}: {message}",
            hint=hint
            or "Point source.replica_url at a replica that is replicating (or at the "
            "PostgreSQL primary it streams from), or remove it to stop waiting on "
            "replica lag",
        )


class WaitInterrupted(SourceError):
    """A stop was requested while the source waited between pages (a replica pause or a
    rate limit), so the stream ends there.

    Raised only when the waits are bound to a stop (the orchestrator binds its own:
    the cycle then ends at once with ``stopped`` set to the stop's reason, committing
    nothing more).
    """

    def __init__(self) -> None:
        super().__init__("a stop was requested while the source waited between pages")


def _printable(text: str) -> str:
    """``text``, escaped if it holds newlines or other control characters.

    A location with a newline would otherwise split an error over lines and could forge
    log records.
    """
    return text if text.isprintable() else repr(text)[1:-1]


class FileReadError(DeswmError):
    """A source file could not be read; ``location`` names it."""

    def __init__(self, message: str, *, location: str, hint: str | None = None) -> None:
        self.location = location
        super().__init__(f"{_printable(location)}: {message}", hint=hint)


class FileMissingError(FileReadError):
    """The source file does not exist (deleted, moved, or a wrong location column)."""

    def __init__(self, location: str) -> None:
        super().__init__(
            "file does not exist",
            location=location,
            hint="Restore the file or correct file_location; the bucket is retried next cycle",
        )


class LocationOutsideRootError(FileReadError):
    """A file location that leads outside the reader's declared roots: a bad row.

    ``..``, an absolute path or ``file://`` URL elsewhere, a symlink out, ``~``, a NUL
    byte, a backslash, another scheme, bucket or prefix. Such a file is never read,
    archived or deleted; ``reason`` says which rule the location broke.
    """

    def __init__(self, location: str, reason: str, *, roots: Sequence[str]) -> None:
        self.reason = reason
        self.roots = tuple(roots)
        declared = ", ".join(self.roots) if self.roots else "none"
        super().__init__(
            f"is outside files.root / files.allowed_roots ({declared}): {reason}; "
            "it is not read, archived or deleted",
            location=location,
            hint="Correct file_location in the source table to name a file under files.root, "
            "or, if deswm owns that folder too, add it to files.allowed_roots",
        )


class PackError(DeswmError):
    """Shards could not be built or published; nothing was committed for the bucket."""


class LaneError(PackError):
    """A lane of the packing engine raised, its process died, or it ran past
    ``run.lane_timeout``: its bucket was not committed (the cause is chained)."""

    def __init__(self, bucket: object, lane: int, lanes: int, reason: str) -> None:
        self.bucket = bucket
        self.lane = lane
        self.lanes = lanes
        self.reason = reason
        super().__init__(
            f"lane {lane} of {lanes} failed in bucket {bucket}: {reason}",
            hint="Nothing was committed for this bucket and the objects already published "
            "stay valid; the next run packs it again (see the chained cause)",
        )


class DuplicateUidError(PackError):
    """Two rows routed to the same shard group share a uid: DES names must be unique."""

    def __init__(self, uid: str, first: object, second: object, *, shard: str) -> None:
        self.uid = uid
        self.first = first
        self.second = second
        super().__init__(
            f"uid {uid!r} appears twice in shard group {shard}: "
            f"rows created_at={first} and created_at={second}",
            hint="uids must be unique per day and shard; remove or rename one of the rows",
        )


def _instant(value: object) -> str:
    """An instant as ISO 8601 text (``None``: the entry records none)."""
    if value is None:
        return "none recorded"
    isoformat = getattr(value, "isoformat", None)
    return str(isoformat()) if callable(isoformat) else str(value)


class ArchivedDuplicateError(DuplicateUidError):
    """A row's uid is already archived in its shard group with another ``created_at`` (G14).

    An archived entry is identified by ``(uid, created_at)``: the row is another file and
    is refused (or listed with ``on_error="record"``), never merged over the entry.
    ``first`` is the archived ``created_at`` (``None`` for an entry of another DES writer,
    which records none: its identity cannot be proved, so it is not replaced either).
    """

    def __init__(self, uid: str, archived: object, row: object, *, shard: str) -> None:
        self.uid = uid
        self.first = archived
        self.second = row
        self.shard = shard
        PackError.__init__(
            self,
            f"uid {uid!r} is already archived in {shard} with created_at="
            f"{_instant(archived)}; the row created_at={_instant(row)} is another file and "
            "is not merged into that entry",
            hint="An archived file is identified by (uid, created_at): give the row its own "
            "uid (or remove it if it is the same file); the archived entry is kept",
        )


class ShardError(DeswmError):
    """A problem with a published shard object."""


class CorruptShardError(ShardError):
    """Bytes that are not a valid DES shard, or an entry whose checksum does not match.

    ``name`` is the object and ``offset`` the byte position where reading failed.
    """

    def __init__(self, name: str, offset: int | None, reason: str) -> None:
        self.name = name
        self.offset = offset
        self.reason = reason
        at = f" at offset {offset}" if offset is not None else ""
        super().__init__(
            f"{name}{at}: {reason}",
            hint="The object is damaged or not a DES shard; restore it from a replica or "
            "replay its day (deswm watermark adjust) while the source files still exist",
        )


class UnverifiedEntryError(CorruptShardError):
    """An entry decoded to its declared size but has no checksum to verify it against.

    Only entries of other DES writers (empty meta) can be like this: deswm always records
    a sha256, and a damaged one is a plain :class:`CorruptShardError`. It subclasses
    :class:`CorruptShardError` so that code that does not opt in (``allow_unverified``)
    treats such bytes like damaged ones: never returned, never trusted by purge.
    """

    def __init__(self, name: str, offset: int | None, uid: str) -> None:
        self.name = name
        self.offset = offset
        self.uid = uid
        self.reason = f"entry {uid!r} has no checksum (written by another DES writer)"
        at = f" at offset {offset}" if offset is not None else ""
        ShardError.__init__(
            self,
            f"{name}{at}: {self.reason}",
            hint="Its bytes decode to the declared size but cannot be verified; accept them "
            "with Archive(allow_unverified=True) or deswm get --allow-unverified",
        )


class NotArchivedError(ShardError, KeyError):
    """The uid is not in any shard of its day and group."""

    def __init__(self, uid: str, created_at: object, looked_in: Sequence[str]) -> None:
        self.uid = uid
        self.created_at = created_at
        self.looked_in = tuple(looked_in)
        where = ", ".join(looked_in) if looked_in else "no shard objects exist for its group"
        DeswmError.__init__(
            self,
            f"uid {uid!r} created_at={created_at} is not archived (looked in: {where})",
            hint="Check the uid and created_at (routing uses the UTC day) and that its day "
            "is below the watermark",
        )

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return Exception.__str__(self)


class EntryMismatchError(NotArchivedError):
    """The uid is archived in its group, but with another ``created_at``: another file (G14).

    Reads, verification and purge never return or delete on such a match.
    """

    def __init__(self, uid: str, created_at: object, archived: object, *, shard: str) -> None:
        self.uid = uid
        self.created_at = created_at
        self.archived_created_at = archived
        self.looked_in = (shard,)
        DeswmError.__init__(
            self,
            f"uid {uid!r} created_at={_instant(created_at)} is not archived: {shard} holds "
            f"uid {uid!r} with created_at={_instant(archived)}, another file",
            hint="Ask for the created_at of the archived row; a row reusing an archived uid "
            "is listed as a duplicate, never merged",
        )


class ObjectChangedError(ShardError):
    """An object is no longer the version that was listed or indexed.

    Raised by version-pinned reads when a shard was rewritten or deleted between two
    requests. The archive reacts by dropping its cached view and reading afresh; the
    packer turns it into a :class:`PackError` (another writer is active).
    """

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        super().__init__(
            f"{name}: {reason}",
            hint="Another process rewrote or deleted the object; read it again",
        )


class ManifestMissingError(ShardError):
    """A bucket below the watermark has no manifest, so nothing proves what it holds.

    The purge and the flag stage refuse such a bucket: deleting or flagging source rows
    needs the record of what was committed (``_manifests/{day}/p{i}-of-{n}.json``).
    """

    def __init__(self, day: str, partition: str, *, name: str) -> None:
        self.day = day
        self.partition = partition
        self.name = name
        super().__init__(
            f"bucket {day} partition {partition} has no manifest ({name})",
            hint=f"Write it with `deswm manifest {day} --rebuild --partition "
            f"{partition.partition('/')[0]}` (from the published shards and the source "
            "rows), or replay the day with `deswm watermark set --to DAY` and `deswm run`; "
            "archives built before manifests existed need this once per day",
        )


class LateRowsError(ShardError):
    """A committed bucket holds more source rows than its manifest counted: rows arrived
    below the watermark after the commit (late rows) and are not archived yet.

    The purge and the flag stage refuse such a bucket before touching any of its files
    or rows; ``deswm reconcile --repair`` archives the late rows and rewrites the manifest.
    """

    def __init__(
        self,
        day: str,
        partition: str,
        *,
        source_rows: int,
        manifest_rows: int,
        late: tuple[str, object] | None = None,
    ) -> None:
        self.day = day
        self.partition = partition
        self.source_rows = source_rows
        self.manifest_rows = manifest_rows
        self.late = late
        """``(uid, created_at)`` of a late row, when the counts alone did not show one."""
        if late is None:
            found = (
                f"bucket {day} partition {partition} holds {source_rows} source row(s) but "
                f"its manifest counted {manifest_rows} when it was committed"
            )
        else:
            found = (
                f"bucket {day} partition {partition} holds row uid={late[0]!r} "
                f"created_at={late[1]}, which is not archived, though the day's "
                f"{source_rows} source row(s) are no more than the {manifest_rows} its "
                "manifests counted (rows were deleted as others arrived; the row digest "
                "differs)"
            )
        super().__init__(
            f"{found}: rows arrived below the watermark afterwards (late rows) and are not "
            "archived",
            hint=f"Run `deswm reconcile --since {day} --until {day} --repair --partition "
            f"{partition.partition('/')[0]}` to archive them and record the day again; "
            "nothing of this day was deleted or flagged",
        )


class CorruptManifestError(ShardError):
    """A bucket manifest object that cannot be parsed or fails its own checks."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(
            f"{name}: {reason}",
            hint="Rebuild it with `deswm manifest DAY --rebuild` (manifests are derived "
            "from the shards and the source rows, never from each other)",
        )


class DatabaseTimeoutError(DeswmError):
    """A statement waited for a lock, or ran, longer than its configured limit.

    ``table`` names what it waited on, ``setting`` the key that sets the limit and
    ``seconds`` its value. The statement was cancelled, so nothing it would have written
    was written; the cycle stops before moving the watermark and a rerun is safe.
    """

    def __init__(
        self, what: str, *, table: str, setting: str, seconds: float | None, detail: str = ""
    ) -> None:
        self.table = table
        self.setting = setting
        self.seconds = seconds
        limit = f" ({setting} = {seconds:g} s)" if seconds is not None else f" ({setting})"
        suffix = f": {detail}" if detail else ""
        super().__init__(
            f"{what} on table {table} timed out{limit}{suffix}",
            hint="Another session holds a lock on it or the statement is slow; find it "
            "(pg_stat_activity / SHOW PROCESSLIST), or raise the setting. Nothing was "
            "committed by this statement; rerun when the table is free",
        )


class WatermarkError(DeswmError):
    """The watermark store refused a change (e.g. moving backwards through ``advance``)."""


class WatermarkConflict(WatermarkError):
    """Compare-and-set lost: another runner changed the watermark since it was read."""

    def __init__(self, key: WatermarkKey, expected_version: int, actual: object) -> None:
        self.key = key
        self.expected_version = expected_version
        self.actual = actual
        super().__init__(
            f"watermark {key} was changed by another runner "
            f"(expected version {expected_version}, found {actual})",
            hint="Another process is archiving the same pipeline and partition; run one "
            "runner per partition. This runner stopped before committing this step "
            "(buckets it committed earlier stay committed); rerun is safe",
        )


class WatermarkMoveRefused(ConfigError):
    """A manual watermark move that needs ``force``: it skips rows or passes the target.

    ``forward`` tells which guard refused (moving forward past rows that may not be
    archived, or beyond the target); ``requested`` is the asked-for position and
    ``position`` the bucket start it was aligned down to. ``unless`` is kept apart from
    the hint so the CLI can say ``--force`` where hosts read ``force=True``.
    """

    def __init__(
        self, message: str, *, forward: bool, requested: datetime, position: datetime
    ) -> None:
        self.forward = forward
        self.requested = requested
        self.position = position
        self.unless = (
            "if those rows are archived already or must be skipped"
            if forward
            else "to set it anyway"
        )
        super().__init__(message, hint=f"pass force=True {self.unless}")


class CycleError(DeswmError):
    """Files failed in a bucket and ``on_error="stop"``: the watermark did not pass it."""

    def __init__(
        self,
        failures: Sequence[FileFailure],
        *,
        bucket: object,
        result: CycleResult | None = None,
        reason: str | None = None,
    ) -> None:
        self.failures = tuple(failures)
        self.bucket = bucket
        self.result = result
        """What the cycle committed before it stopped (earlier buckets stay committed)."""
        self.reason = reason
        shown = "; ".join(
            f"{f.uid!r} ({_printable(redact(f.location))}): {f.error_type}: {f.message}"
            for f in self.failures[:10]
        )
        more = f" and {len(self.failures) - 10} more" if len(self.failures) > 10 else ""
        why = f" ({reason})" if reason else ""
        super().__init__(
            f"{len(self.failures)} file(s) failed in bucket {bucket}{why}: {shown}{more}",
            hint="Nothing was committed for this bucket; fix the files and rerun, or use "
            'on_error="record" to archive the rest and list failures in the error table',
        )


class RowCountError(DeswmError):
    """The rows a bucket's window query returned and the rows packed or listed differ.

    Raised before the watermark passes the bucket: a component dropped rows silently.
    """

    def __init__(self, bucket: object, *, key: object, returned: int, accounted: str) -> None:
        self.bucket = bucket
        self.key = key
        self.returned = returned
        super().__init__(
            f"bucket {bucket} of {key}: the source returned {returned} row(s) for this "
            f"partition but {accounted}",
            hint="A reader or packer lost rows without an error (a bug in a custom "
            "component?); nothing was committed for this bucket, so fix it and run again",
        )


_publish(globals())
