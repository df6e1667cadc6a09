"""Check that every source row below the watermark can be read back from the archive."""

from __future__ import annotations

from collections.abc import Callable

import attrs

from deswm._humanize import Displayed, human_count, human_time
from deswm.errors import CorruptShardError, NotArchivedError, UnverifiedEntryError
from deswm.model import SourceRecord, Window
from deswm.protocols import ArchiveLookup, SourceProvider

__all__ = ["ArchiveLookup", "VerifyReport", "verify_window"]


@attrs.frozen
class VerifyReport(Displayed):
    """Rows checked, and those missing from or corrupt in the archive (first 100 each).

    ``unverified`` (deep only) are entries of other DES writers that decoded to their
    declared size but carry no checksum: reported apart, not counted as corrupt.
    """

    window: Window
    checked: int
    missing: tuple[SourceRecord, ...]
    corrupt: tuple[tuple[SourceRecord, str], ...]
    missing_count: int
    corrupt_count: int
    unverified: tuple[SourceRecord, ...] = ()
    unverified_count: int = 0

    @property
    def ok(self) -> bool:
        return self.missing_count == 0 and self.corrupt_count == 0

    def _display(self) -> tuple[str, list[tuple[str, object]]]:
        rows: list[tuple[str, object]] = [
            ("window", self.window),
            ("result", "ok" if self.ok else "FAILED"),
            ("checked", f"{human_count(self.checked)} rows"),
            ("missing", human_count(self.missing_count)),
            ("corrupt", human_count(self.corrupt_count)),
        ]
        if self.unverified_count:
            rows.append(("unverified", f"{human_count(self.unverified_count)} (no checksum)"))
        rows += [
            ("missing row", f"{r.uid!r} created_at={human_time(r.created_at)} ({r.location})")
            for r in self.missing
        ]
        rows += [("corrupt row", f"{r.uid!r}: {reason}") for r, reason in self.corrupt]
        return "verify report", rows


def verify_window(
    source: SourceProvider,
    archive: ArchiveLookup,
    window: Window,
    *,
    deep: bool = False,
    owns: Callable[[SourceRecord], bool] | None = None,
    keep: int = 100,
) -> VerifyReport:
    """Look every row of ``window`` up in the archive.

    The default checks the shard indexes (cheap: one index read per shard); ``deep``
    reads every file back and verifies its checksum (entries without one are decoded,
    size-checked and counted as ``unverified``). A uid archived with another
    ``created_at`` is another file: the row counts as missing (G14).
    """
    checked = missing_count = corrupt_count = unverified_count = 0
    unverified: list[SourceRecord] = []
    missing: list[SourceRecord] = []
    corrupt: list[tuple[SourceRecord, str]] = []
    for record in source.iter_records(window):
        if owns is not None and not owns(record):
            continue
        checked += 1
        try:
            if deep:
                archive.get(record.uid, record.created_at)
            else:
                archive.stat(record.uid, record.created_at)
        except NotArchivedError:
            missing_count += 1
            if len(missing) < keep:
                missing.append(record)
        except UnverifiedEntryError:
            unverified_count += 1
            if len(unverified) < keep:
                unverified.append(record)
        except CorruptShardError as exc:
            corrupt_count += 1
            if len(corrupt) < keep:
                corrupt.append((record, str(exc)))
    return VerifyReport(
        window=window,
        checked=checked,
        missing=tuple(missing),
        corrupt=tuple(corrupt),
        missing_count=missing_count,
        corrupt_count=corrupt_count,
        unverified=tuple(unverified),
        unverified_count=unverified_count,
    )
