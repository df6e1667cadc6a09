"""Where is a file, and since when: answered from the bucket manifest and the shard index.

:func:`locate` needs only the destination, never the source database: the uid's route
names its day and group, the day's manifest names the group's committed parts (with
their sha256), and those parts' indexes hold the entry (offset, stored length, size,
checksum). *Archived when* is the time the manifest's current content was written (the
object's modification time): the manifest's bytes are deterministic, so a replay that
changes nothing leaves that time alone, and one that changes the bucket moves it.

The optional SQL audit table (:class:`~deswm._stores.audit.SqlAuditLog`) is a copy of the
same facts for sites that want them in SQL.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import attrs

from deswm import _publish
from deswm._archive import Archive
from deswm._container import IndexEntry
from deswm._errors import (
    EntryMismatchError,
    ManifestMissingError,
    NotArchivedError,
    ObjectChangedError,
)
from deswm._manifest import BucketManifest, ManifestPart
from deswm._routing import uid_text
from deswm._timeutil import format_utc, require_utc

__all__ = ["AuditRecord", "locate"]


@attrs.frozen
class AuditRecord:
    """Where one archived file is, as a compliance answer."""

    uid: str
    created_at: datetime
    pipeline: str
    partition: str
    """``index/count`` of the runner partition that committed the bucket."""
    manifest: str
    archived_at: datetime | None
    """When the manifest's current content was written (``None``: the store does not say)."""
    object: str
    part: int
    offset: int
    stored_size: int
    size: int
    codec: str
    sha256: str | None
    """The file's own sha256 (from the entry's metadata)."""
    big_file: str | None
    """``_bigFiles/<sha256>`` for a big file (its bytes live there, not in the part)."""
    part_sha256: str
    """The sha256 of the part object's bytes as committed (from the manifest)."""
    part_size: int
    part_unchanged: bool
    """Whether the part's current size is the committed one (its bytes are not re-read)."""

    def to_dict(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        out["created_at"] = format_utc(self.created_at)
        out["archived_at"] = None if self.archived_at is None else format_utc(self.archived_at)
        return out


def locate(archive: Archive, uid: str | int, created_at: datetime) -> AuditRecord:
    """Find ``uid`` through its day's manifest; see the module docs.

    Raises :class:`~deswm._errors.ManifestMissingError` when no manifest covers its group,
    :class:`~deswm._errors.NotArchivedError` when none of the committed parts holds it and
    :class:`~deswm._errors.EntryMismatchError` when it is there with another ``created_at``.
    """
    name = uid_text(uid)
    created_at = require_utc(created_at, "created_at")
    key = archive.router.route(name, created_at)
    manifest = _manifest_of(archive, key.day, key.hex, key.index)
    group = manifest.group(key.hex)
    parts = group.parts if group is not None else ()
    for committed in parts:
        found = _entry(archive, committed, name)
        if found is None:
            continue
        entry, current_size = found
        if entry.created_at is not None and entry.created_at != created_at:
            raise EntryMismatchError(name, created_at, entry.created_at, shard=committed.name)
        return AuditRecord(
            uid=name,
            created_at=created_at,
            pipeline=manifest.pipeline,
            partition=f"{manifest.partition.index}/{manifest.partition.count}",
            manifest=manifest.name,
            archived_at=archive.manifests.written_at(key.day, manifest.partition),
            object=committed.name,
            part=committed.part,
            offset=entry.offset,
            stored_size=entry.size if entry.big else entry.length,
            size=entry.size,
            codec=entry.codec,
            sha256=entry.sha256,
            big_file=f"_bigFiles/{entry.big_sha256}" if entry.big else None,
            part_sha256=committed.sha256,
            part_size=committed.size,
            part_unchanged=current_size == committed.size,
        )
    raise NotArchivedError(name, created_at, [p.name for p in parts])


def _manifest_of(archive: Archive, day: str, hex_: str, index: int) -> BucketManifest:
    """The manifest of the partition owning shard ``index`` on ``day``."""
    owners = [p for p in archive.manifests.partitions(day) if p.owns(index)]
    manifests = [archive.manifests.require(day, p) for p in owners]
    for manifest in manifests:
        if manifest.group(hex_) is not None:
            return manifest
    if manifests:
        return manifests[0]
    raise ManifestMissingError(day, "?", name=f"_manifests/{day}/p*-of-*.json (none owns {hex_})")


def _entry(archive: Archive, committed: ManifestPart, uid: str) -> tuple[IndexEntry, int] | None:
    """The uid's entry in the part as it is now, and the part's current size."""
    for _ in range(3):
        part = archive.store.current(committed.name)
        if part is None:
            return None
        try:
            entry = archive.store.read_index(part).get(uid)
        except ObjectChangedError:
            continue
        return (entry, part.size) if entry is not None else None
    return None


_publish(globals())
