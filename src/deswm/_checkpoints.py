"""Named points on the write path where a test can crash the process or inject a fault.

Crash tests prove "never lose a file" by killing a real process at each interesting
moment (mid-write, after fsync before rename, between publish and commit, inside the
commit transaction, ...). Set ``DESWM_CRASH_AT="<point>"`` or ``"<point>:<n>"`` and the
process sends itself SIGKILL the n-th time (default: first) it reaches ``<point>``; no
cleanup, no ``finally`` blocks, exactly like a power cut of the process. In-process
tests install hooks with :func:`deswm.testing._faults.at_checkpoint`.

When neither is set, :func:`reach` is one global boolean test.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from enum import StrEnum

__all__ = ["POINTS", "Checkpoint", "install", "installed", "reach", "uninstall"]


class Checkpoint(StrEnum):
    """Every checkpoint, in roughly the order a cycle reaches them.

    Code names a point by its member (``Checkpoint.BUCKET_AFTER_PUBLISH``), so a typo fails
    at import and under mypy; the value (``"bucket.after_publish"``) is what
    ``DESWM_CRASH_AT`` and ``at_checkpoint`` also accept as a string.
    """

    CYCLE_STARTED = "cycle.started"
    BUCKET_BEFORE_PUBLISH = "bucket.before_publish"
    LANE_BEFORE_PUBLISH = "lane.before_publish"
    LANE_AFTER_PUBLISH = "lane.after_publish"
    BUCKET_AFTER_PUBLISH = "bucket.after_publish"
    BUCKET_AFTER_MANIFEST = "bucket.after_manifest"
    BUCKET_AFTER_COMMIT = "bucket.after_commit"
    PACKER_AFTER_ADD = "packer.after_add"
    PACKER_BEFORE_GROUP = "packer.before_group"
    PACKER_MERGE_BEFORE_WRITE = "packer.merge.before_write"
    PACKER_PART_MID_WRITE = "packer.part.mid_write"
    PACKER_AFTER_PART = "packer.after_part"
    PACKER_BEFORE_DELETE = "packer.before_delete"
    PACKER_BEFORE_DIR_SYNC = "packer.before_dir_sync"
    BIG_FILE_BEFORE_WRITE = "big_file.before_write"
    BIG_FILE_AFTER_WRITE = "big_file.after_write"
    SHARDIO_PUBLISH_AFTER_WRITE = "shardio.publish.after_write"
    SHARDIO_PUBLISH_AFTER_FSYNC = "shardio.publish.after_fsync"
    SHARDIO_PUBLISH_AFTER_RENAME = "shardio.publish.after_rename"
    SHARDIO_CREATE_ONLY_AFTER_FSYNC = "shardio.create_only.after_fsync"
    SHARDIO_CREATE_ONLY_AFTER_LINK = "shardio.create_only.after_link"
    STORE_INITIALIZE_IN_TRANSACTION = "store.initialize.in_transaction"
    STORE_ADVANCE_IN_TRANSACTION = "store.advance.in_transaction"
    STORE_ADVANCE_AFTER_COMMIT = "store.advance.after_commit"
    STORE_SET_IN_TRANSACTION = "store.set.in_transaction"
    SOURCE_BETWEEN_PAGES = "source.between_pages"
    RECONCILE_AFTER_PUBLISH = "reconcile.after_publish"
    RECONCILE_AFTER_MANIFEST = "reconcile.after_manifest"


POINTS: tuple[Checkpoint, ...] = tuple(Checkpoint)
"""Every checkpoint (members compare equal to their names as strings)."""

_KNOWN = ", ".join(POINTS)

_lock = threading.Lock()
_hooks: dict[str, Callable[[str, int], None]] = {}
_counts: dict[str, int] = {}


def _crash_target() -> tuple[str, int] | None:
    spec = os.environ.get("DESWM_CRASH_AT", "").strip()
    if not spec:
        return None
    name, _, count = spec.partition(":")
    if name not in POINTS:
        raise ValueError(
            f"DESWM_CRASH_AT names unknown checkpoint {name!r}; known: {', '.join(POINTS)}"
        )
    return name, int(count or 1)


_crash = _crash_target()
_active = _crash is not None


def reach(name: Checkpoint) -> None:
    """Mark that the process reached checkpoint ``name`` (a no-op unless armed)."""
    if not _active:
        return
    if name not in POINTS:  # only checked when armed: the disarmed path stays one test
        raise ValueError(f"unknown checkpoint {name!r}; known: {', '.join(POINTS)}")
    with _lock:
        count = _counts[name] = _counts.get(name, 0) + 1
        hook = _hooks.get(name)
    if _crash is not None and _crash == (name, count):
        os.kill(os.getpid(), signal.SIGKILL)
    if hook is not None:
        hook(name, count)


def install(name: Checkpoint | str, hook: Callable[[str, int], None]) -> None:
    """Call ``hook(name, count)`` each time ``name`` is reached (tests only)."""
    global _active
    if name not in POINTS:
        raise ValueError(f"unknown checkpoint {name!r}; known: {', '.join(POINTS)}")
    with _lock:
        _hooks[name] = hook
        _counts.pop(name, None)
        _active = True


def installed(name: Checkpoint | str) -> Callable[[str, int], None] | None:
    """The hook installed for ``name``, if any (so a test can restore it afterwards)."""
    with _lock:
        return _hooks.get(name)


def uninstall(name: Checkpoint | str | None = None) -> None:
    """Remove one hook, or all of them."""
    global _active
    with _lock:
        if name is None:
            _hooks.clear()
            _counts.clear()
        else:
            _hooks.pop(name, None)
            _counts.pop(name, None)
        _active = bool(_hooks) or _crash is not None
