"""Named points on the write path where a test can crash the process or inject a fault.

Crash tests prove "never lose a file" by killing a real process at each interesting
moment (mid-write, after fsync before rename, between publish and commit, inside the
commit transaction, ...). Set ``DESWM_CRASH_AT="<point>"`` or ``"<point>:<n>"`` and the
process sends itself SIGKILL the n-th time (default: first) it reaches ``<point>``; no
cleanup, no ``finally`` blocks, exactly like a power cut of the process. In-process
tests install hooks with :func:`deswm.testing._faults.at_checkpoint`.

When neither is set, :func:`reach` is one global boolean test. Lane processes of the
packing engine inherit ``DESWM_CRASH_AT``, so a ``lane.*`` point kills the worker process
that reaches it (the coordinator then fails the bucket typed).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable

__all__ = ["POINTS", "install", "installed", "reach", "uninstall"]

POINTS: tuple[str, ...] = (
    "cycle.started",
    "bucket.before_publish",
    "lane.before_publish",
    "lane.after_publish",
    "bucket.after_publish",
    "bucket.after_manifest",
    "bucket.after_commit",
    "packer.after_add",
    "packer.before_group",
    "packer.merge.before_write",
    "packer.part.mid_write",
    "packer.after_part",
    "packer.before_delete",
    "packer.before_dir_sync",
    "big_file.before_write",
    "big_file.after_write",
    "shardio.publish.after_write",
    "shardio.publish.after_fsync",
    "shardio.publish.after_rename",
    "shardio.create_only.after_fsync",
    "shardio.create_only.after_link",
    "store.initialize.in_transaction",
    "store.advance.in_transaction",
    "store.advance.after_commit",
    "store.set.in_transaction",
    "source.between_pages",
)
"""Every checkpoint, in roughly the order a cycle reaches them."""

_lock = threading.Lock()
_hooks: dict[str, Callable[[str, int], None]] = {}
_counts: dict[str, int] = {}


def _crash_target() -> tuple[str, int] | None:
    spec = os.environ.get("DESWM_CRASH_AT", "").strip()
    if not spec:
        return None
    name, _, count = spec.partition(":")
    if name not in POINTS:
        raise ValueError(f"DESWM_CRASH_AT names unknown checkpoint {name!r}; known: {POINTS}")
    return name, int(count or 1)


_crash = _crash_target()
_active = _crash is not None


def reach(name: str) -> None:
    """Mark that the process reached checkpoint ``name`` (a no-op unless armed)."""
    if not _active:
        return
    with _lock:
        count = _counts[name] = _counts.get(name, 0) + 1
        hook = _hooks.get(name)
    if _crash is not None and _crash == (name, count):
        os.kill(os.getpid(), signal.SIGKILL)
    if hook is not None:
        hook(name, count)


def install(name: str, hook: Callable[[str, int], None]) -> None:
    """Call ``hook(name, count)`` each time ``name`` is reached (tests only)."""
    global _active
    if name not in POINTS:
        raise ValueError(f"unknown checkpoint {name!r}; known: {POINTS}")
    with _lock:
        _hooks[name] = hook
        _counts.pop(name, None)
        _active = True


def installed(name: str) -> Callable[[str, int], None] | None:
    """The hook installed for ``name``, if any (so a test can restore it afterwards)."""
    with _lock:
        return _hooks.get(name)


def uninstall(name: str | None = None) -> None:
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
